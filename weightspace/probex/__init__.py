"""ProbeX: predict a model's training classes from one of its layers, with one expert per Model Tree.

  model.py       ProbeX (probes U, shared projection V, per-probe encoders M_l, head T), Dense, X rules
  train.py       BCE/Adam training on a pre-extracted [N, d_H, d_W] tensor, checkpoint on val accuracy
  baselines.py   chance / majority, ridge (closed-form linear), StatNN
  experts.py     one expert per tree + a router that finds a model's tree from its weights
  motivation.py  the paper's four motivating experiments (a)-(d)
  modelj.py      the real Model-J layout (paper preset)
  zeroshot.py    language-aligned ProbeX: LoRA layer -> text space, zero-shot classification, layer sweep
  retrieval.py   text-to-model and model-to-model retrieval, kNN, one-class ROC-AUC
  modelj_sd.py   Model-J's SD_200 / SD_1k LoRA folders (paper preset), and any folder in that layout
  experiments.py notebook 03: layer sweep, per-tree results, StatNN variants, ablation, kNN in e, section 6
"""
from .baselines import (Ridge, StatNN, fit_ridge, fit_statnn, majority, statnn_features, tensor_keys,
                        weight_statistics)
from .experts import Router, fit_experts, route_and_evaluate
from .model import Dense, ProbeX, layer_matrix, lora_matrix, n_params, probex_params, stack_layer
from .train import PAPER, DEFAULTS, Fit, LayerData, compare_inputs, delta_inputs, elementwise_accuracy, fit, train

__all__ = ["PAPER", "DEFAULTS", "Dense", "Fit", "LayerData", "ProbeX", "Ridge", "Router", "StatNN", "compare_inputs",
           "delta_inputs", "elementwise_accuracy", "fit", "fit_experts", "fit_ridge", "fit_statnn", "layer_matrix",
           "lora_matrix", "majority", "n_params", "probex_params", "route_and_evaluate", "stack_layer",
           "statnn_features", "tensor_keys", "train", "weight_statistics"]
