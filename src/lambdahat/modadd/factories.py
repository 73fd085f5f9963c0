"""Ready-made factories for ``lambdahat sweep`` configurations over a modular-addition run directory.

Grid search at one checkpoint of a run::

    kind: grid
    model: {kind: python, factory: "lambdahat.modadd.factories:grid_at_checkpoint",
            kwargs: {run_dir: runs/p53, checkpoint: -1, batch_size: 64}}

λ̂ over a run's checkpoints::

    kind: checkpoints
    model: {kind: python, factory: "lambdahat.modadd.factories:checkpoints_of_run",
            kwargs: {run_dir: runs/p53, batch_size: 64}}
    checkpoints_glob: "runs/p53/checkpoints/*.safetensors"

Both use the run's own training split (shuffled, seeded) and cross-entropy.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .model import ModAddModel
from .train import build_model, load_run

__all__ = ["checkpoints_of_run", "grid_at_checkpoint"]


def _train_loader(run, batch_size: int) -> DataLoader:
    generator = torch.Generator().manual_seed(run.params.run_id)
    return DataLoader(run.train_data(), batch_size=batch_size, shuffle=True, generator=generator)


def grid_at_checkpoint(
    run_dir: str | os.PathLike[str], checkpoint: int = -1, batch_size: int = 64
) -> tuple[ModAddModel, DataLoader, Callable]:
    """``(model at the checkpoint, training loader, cross-entropy)`` of a run, for a grid sweep."""
    run = load_run(run_dir)
    return run.model(checkpoint), _train_loader(run, batch_size), F.cross_entropy


def checkpoints_of_run(
    run_dir: str | os.PathLike[str], batch_size: int = 64
) -> tuple[Callable[[], ModAddModel], DataLoader, Callable]:
    """``(fresh-model factory, training loader, cross-entropy)`` of a run, for a checkpoint sweep."""
    run = load_run(run_dir)
    return (lambda: build_model(run.params)), _train_loader(run, batch_size), F.cross_entropy
