"""MoTHer — Unsupervised Model Tree Heritage Recovery (Horwitz, Shul, Hoshen; ICLR 2025).

Given only the weights of a collection of models, recover who was fine-tuned from whom:

    D  distance between every two models (weights move little along one edge)     distances.py
    K  direction from weight kurtosis (fine-tuning lowers it)                       distances.py
    M = D + lambda * mean(D) * K  ->  minimum spanning arborescence, per tree       recover.py

>>> from weightspace.mother import recover, edge_accuracy
>>> g = recover(models, layers="timm-vit", distance="ft", direction_layers="timm-vit")
>>> sorted(g.edges())        # (parent, child) pairs

`python -m weightspace mother DIR` does the same for a folder of checkpoints (cli.py); vthr.py reads
the paper's VTHR benchmark.
"""
from .distances import kurtosis_scores, rank_distances, rms_distances, rms_distances_pairloop, rms_norms
from .layers import PRESETS, Layer, MotherError, detect_preset, select_layers
from .recover import (arborescence, clustering_accuracy, count_trees, direction_matrix, direction_scores,
                      distance_matrix, edge_accuracy, format_tree, kurtosis_only, merged_prior, mst_from_top,
                      recover, relative_distance, roots, solve, truth_graph, ward_clusters)

__all__ = ["Layer", "MotherError", "PRESETS", "arborescence", "clustering_accuracy", "count_trees", "detect_preset",
           "direction_matrix", "direction_scores", "distance_matrix", "edge_accuracy", "format_tree",
           "kurtosis_only", "kurtosis_scores", "merged_prior", "mst_from_top", "rank_distances", "recover",
           "relative_distance", "rms_distances", "rms_distances_pairloop", "rms_norms", "roots", "select_layers",
           "solve", "truth_graph", "ward_clusters"]
