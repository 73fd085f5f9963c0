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

import sys
import types
from typing import TYPE_CHECKING, Any

# Imported on first use (PEP 562), so that the `lambdahat modadd ...` commands' --help needs no torch
# (ExperimentParams comes from the torch-free lambdahat.modadd.params).
_EXPORTS = {
    "CircuitModel": "circuits",
    "CircuitReport": "circuits",
    "ModeDoubling": "circuits",
    "classify_circuit": "circuits",
    "correct_logit_grid": "circuits",
    "distance_irrelevance": "circuits",
    "dominant_mode": "circuits",
    "gradient_symmetricity": "circuits",
    "mode_doubling": "circuits",
    "all_pairs": "data",
    "make_dataset": "data",
    "train_test_split": "data",
    "run_demo": "demo",
    "ablate_keep_mode": "fourier",
    "fold_mode": "fourier",
    "fourier_basis": "fourier",
    "mode_ablation_table": "fourier",
    "mode_magnitudes": "fourier",
    "mode_magnitudes_over_checkpoints": "fourier",
    "mode_projector": "fourier",
    "project_to_modes": "fourier",
    "llc_over_training": "llc",
    "plot_llc_over_training": "llc",
    "ModAddModel": "model",
    "plot_mode_ablation": "plots",
    "plot_mode_circle": "plots",
    "plot_mode_heatmap": "plots",
    "plot_mode_magnitudes": "plots",
    "plot_training_curves": "plots",
    "p_sweep": "sweep",
    "plot_llc_vs_p": "sweep",
    "ExperimentParams": "params",
    "Run": "train",
    "build_model": "train",
    "checkpoint_steps": "train",
    "evaluate": "train",
    "load_run": "train",
    "train": "train",
}

if TYPE_CHECKING:
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
    from lambdahat.modadd.params import ExperimentParams
    from lambdahat.modadd.plots import (
        plot_mode_ablation,
        plot_mode_circle,
        plot_mode_heatmap,
        plot_mode_magnitudes,
        plot_training_curves,
    )
    from lambdahat.modadd.sweep import p_sweep, plot_llc_vs_p
    from lambdahat.modadd.train import (
        Run,
        build_model,
        checkpoint_steps,
        evaluate,
        load_run,
        train,
    )


class _Package(types.ModuleType):
    """Keeps the function ``train`` bound when its module ``lambdahat.modadd.train`` is first imported (Python then
    sets the package attribute of that name to the module)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    import importlib

    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


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
