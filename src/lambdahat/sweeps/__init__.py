"""Sweeps at scale: LLC grid searches over (ε, γ, nβ) and LLC over training checkpoints, run in this process or
on Ray, with every finished point written at once so that an interrupted sweep resumes where it stopped.

.. code-block:: python

    from lambdahat.sweeps import GridSearchConfig, LLCGridSearch, plot_grid

    cfg = GridSearchConfig(epsilon=(1e-6, 1e-4), gamma=(10.0, 500.0), nbeta=57.6, estimates_per_dim=5)
    df = LLCGridSearch(cfg).run_grid_search(model, loader, seed=0, out_dir="runs/grid")
    plot_grid(df)
"""

from .checkpoints import llc_over_checkpoints
from .grid import GridSearchConfig, LLCGridSearch
from .plots import plot_grid, plot_llc_over_checkpoints

__all__ = [
    "GridSearchConfig",
    "LLCGridSearch",
    "llc_over_checkpoints",
    "plot_grid",
    "plot_llc_over_checkpoints",
]
