"""Modular addition toolkit: data, model, training runs on disk, Fourier analysis, pizza-vs-clock circuits.

Typical use::

    from lambdahat import modadd

    run = modadd.train(modadd.ExperimentParams(), "runs/p53")   # or modadd.load_run("runs/p53")
    modadd.plot_training_curves(run).savefig("curves.png")
    print(modadd.classify_circuit(run).evidence)
    df = modadd.llc_over_training(run)                           # λ̂ at every checkpoint
    modadd.plot_llc_over_training(df).savefig("llc.png")

From the shell, ``lambdahat demo`` does all of this on the default model and writes a report.
"""

from lambdahat.modadd.circuits import (
    CircuitModel,
    CircuitReport,
    ModeDoubling,
    classify_circuit,
    correct_logit_grid,
    distance_irrelevance,
    dominant_mode,
    gradient_symmetricity,
    mode_doubling,
)
from lambdahat.modadd.data import all_pairs, make_dataset, train_test_split
from lambdahat.modadd.demo import run_demo
from lambdahat.modadd.fourier import (
    ablate_keep_mode,
    fold_mode,
    fourier_basis,
    mode_ablation_table,
    mode_magnitudes,
    mode_magnitudes_over_checkpoints,
    mode_projector,
    project_to_modes,
)
from lambdahat.modadd.llc import llc_over_training, plot_llc_over_training
from lambdahat.modadd.model import ModAddModel
from lambdahat.modadd.plots import (
    plot_mode_ablation,
    plot_mode_circle,
    plot_mode_heatmap,
    plot_mode_magnitudes,
    plot_training_curves,
)
from lambdahat.modadd.sweep import p_sweep, plot_llc_vs_p
from lambdahat.modadd.train import (
    ExperimentParams,
    Run,
    build_model,
    checkpoint_steps,
    evaluate,
    load_run,
    train,
)

__all__ = [
    "CircuitModel",
    "CircuitReport",
    "ExperimentParams",
    "ModAddModel",
    "ModeDoubling",
    "Run",
    "ablate_keep_mode",
    "all_pairs",
    "build_model",
    "checkpoint_steps",
    "classify_circuit",
    "correct_logit_grid",
    "distance_irrelevance",
    "dominant_mode",
    "evaluate",
    "fold_mode",
    "fourier_basis",
    "gradient_symmetricity",
    "llc_over_training",
    "load_run",
    "make_dataset",
    "mode_ablation_table",
    "mode_doubling",
    "mode_magnitudes",
    "mode_magnitudes_over_checkpoints",
    "mode_projector",
    "p_sweep",
    "plot_llc_over_training",
    "plot_llc_vs_p",
    "plot_mode_ablation",
    "plot_mode_circle",
    "plot_mode_heatmap",
    "plot_mode_magnitudes",
    "plot_training_curves",
    "project_to_modes",
    "run_demo",
    "train",
    "train_test_split",
]
