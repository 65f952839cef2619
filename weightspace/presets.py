"""Presets: named sets of notebook parameters.

`default` is the notebooks as written — their `parameters` cells ARE the default preset, so the numbers
live in one place. `tiny` shrinks everything so the whole pipeline runs in minutes (what the tests run).
`paper` points the notebooks at the real public zoos and paper-sized settings (needs a GPU and the
downloads of data_scripts/; it cannot run on the project's CPU machines).

Every notebook also receives the runner's common parameters: preset, zoo_root, figures_dir, results_dir.
"""
from __future__ import annotations

COMMON = ("preset", "zoo_root", "figures_dir", "results_dir")

PRESETS: dict[str, dict[str, dict]] = {
    "tiny": {
        "00_quickstart": dict(n_per_tree=8, root_steps=150),
        "01_vit_model_trees": dict(n_per_tree=12, root_steps=100, steps=[20, 40], head_ablation_models=8),
        "02_probex_motivation": dict(curve_sizes=[2, 4, 7], n_same=4, n_other=[0, 4, 8], seeds=[0], epochs=5),
        "03_probex": dict(epochs=5, ablation_n_probes=[8, 16], ablation_proj_dim=[16], ablation_rep_dim=[32],
                          gentle_models=12, gentle_seeds=[0],
                          scaling_models=24, scaling_split=[0.5, 0.25, 0.25], curve_sizes=[3, 6, 12],
                          curve_seeds=[0, 1], curve_layers=["blocks.1.mlp.fc2.weight"], tune_lr=[1e-3],
                          tune_weight_decay=[1e-5, 1e-3], tune_steps=20, tune_evals=5, long_steps=40,
                          width_models=12, width_split=[0.5, 0.25, 0.25],
                          width_layers=["blocks.1.mlp.fc2.weight"], width_seeds=[0], lora_models=12),
        "04_mother_forests": dict(n_trees=3, n_children=2, root_steps=150, steps=40, embed_dim=32, num_heads=2,
                                  ranks_v=[1, 2, 4], rank_f=2, select_trees=1),
        "05_mother_recovery": dict(n_draws=5, tie_seeds=3, fractions=[1.0, 0.6, 0.3]),
        "07_probex_zeroshot": dict(epochs=10, seeds=[0, 1]),
        "08_probex_retrieval": dict(n_queries=2, top_k=3, n_samples=2),
    },
    "default": {},
    "paper": {
        # a Model-J-sized jungle of our own (GPU) ...
        "01_vit_model_trees": dict(n_per_tree=1000, head_ablation_models=256, workers=8),
        "02_probex_motivation": dict(curve_sizes=[50, 100, 200, 400, 600], n_same=100,
                                     n_other=[0, 100, 200, 400, 800, 1600], seeds=[0, 1, 2, 3, 4], epochs=500),
        # ... and the real Model-J subsets (data_scripts/download_modelj.py), at the paper's sizes
        "03_probex": dict(epochs=500, modelj_root="~/.cache/huggingface/assets/ProbeX/ModelJ/default/models",
                          modelj_subsets=["SupViT", "DINO", "MAE", "ResNet"]),
        # MoTHer: wider forests of our own, and the real VTHR splits (data_scripts/download_vthr.py)
        "04_mother_forests": dict(root_steps=5000, steps=1000, embed_dim=192, num_heads=6, ranks_v=[4, 8, 16, 32],
                                  rank_f=8, workers=8),
        "05_mother_recovery": dict(vthr_root="~/.cache/weightspace/vthr"),
    },
}


def names() -> list[str]:
    return list(PRESETS)


def parameters(preset: str, notebook: str) -> dict:
    """The parameters a preset sets for one notebook (beyond the common ones)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {names()}")
    return dict(PRESETS[preset].get(notebook, {}))
