"""Sweeps at scale: LLC grid searches over (ε, γ, nβ) and LLC over training checkpoints, run in this process or
on Ray, with every finished point written at once so that an interrupted sweep resumes where it stopped.

.. code-block:: python

    from lambdahat.sweeps import GridSearchConfig, LLCGridSearch, plot_grid

    cfg = GridSearchConfig(learning_rate=(1e-6, 1e-4), localization=(10.0, 500.0), nbeta=57.6, estimates_per_dim=5)
    df = LLCGridSearch(cfg).run_grid_search(model, loader, seed=0, out_dir="runs/grid")
    plot_grid(df)
"""

from typing import TYPE_CHECKING

# Imported on first use (PEP 562), so that the `lambdahat sweep` command's --help needs no torch.
_EXPORTS = {
    "GridSearchConfig": "grid",
    "LLCGridSearch": "grid",
    "llc_over_checkpoints": "checkpoints",
    "plot_grid": "plots",
    "plot_llc_over_checkpoints": "plots",
}

if TYPE_CHECKING:
    from .checkpoints import llc_over_checkpoints
    from .grid import GridSearchConfig, LLCGridSearch
    from .plots import plot_grid, plot_llc_over_checkpoints


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
    "GridSearchConfig",
    "LLCGridSearch",
    "llc_over_checkpoints",
    "plot_grid",
    "plot_llc_over_checkpoints",
]
