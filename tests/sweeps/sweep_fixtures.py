"""Tiny models, data and factories shared by the sweep tests, the CLI configs and the subprocess of the kill test
(importable by name: pytest puts this folder on sys.path, the subprocess gets it on PYTHONPATH)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lambdahat.trust import status_kind

#: Schedule of the test estimates (a point takes ~0.05 s on a 2-core CPU).
FAST = dict(draws=20, chains=2, burnin_steps=5)
#: estimate_llc options of the tests.
RUN = dict(criterion_fn=F.mse_loss, seed=0, compile=False, show_progress=False)


def outcomes(statuses) -> list[str]:
    """``"estimate"`` for a point that ran (status ok, untrusted: ... or diverged: the trust policy's verdict of
    these tiny runs is beside the point of the sweep tests), ``"failed"`` for one that raised."""
    return ["failed" if status_kind(s) == "failed" else "estimate" for s in statuses]


def make_data(seed: int = 0, n: int = 128) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.randn(4, 2, generator=g) + 0.1 * torch.randn(n, 2, generator=g)
    return TensorDataset(x, y)


def make_loader(seed: int = 0) -> DataLoader:
    return DataLoader(make_data(seed), batch_size=32)


def linear_model() -> nn.Module:
    """The architecture of the checkpoint sweeps (a model_fn)."""
    return nn.Linear(4, 2)


def trained_linear(seed: int = 0) -> nn.Module:
    """A Linear(4, 2) with weights drawn from ``seed`` (the caller's global RNG is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(4, 2)


def state_dicts(n: int = 3) -> list[dict[str, torch.Tensor]]:
    return [trained_linear(i).state_dict() for i in range(n)]


# -- factories of the CLI configs -------------------------------------------------------------------------------


def grid_factory():
    return trained_linear(0), make_loader(), F.mse_loss


def checkpoints_factory(data_seed: int = 0):
    return linear_model, make_loader(data_seed), F.mse_loss


# -- a loader factory that fails once, for the kill tests ---------------------------------------------------------


class FlakyLoaders:
    """``label -> loader`` that raises the first time it is asked for ``fail_label`` (remembered in a flag
    file, so that a rerun of the sweep, even in another process, succeeds)."""

    def __init__(self, flag: str | os.PathLike[str], fail_label, always: bool = False) -> None:
        self.flag, self.fail_label, self.always = str(flag), fail_label, always

    def __call__(self, label):
        if label == self.fail_label and (self.always or not os.path.exists(self.flag)):
            Path(self.flag).write_text("failed once\n")
            raise RuntimeError(f"simulated worker failure at checkpoint {label!r}")
        return make_loader()


# -- the sweep that the kill test runs in a subprocess ------------------------------------------------------------

SLOW_SCHEDULE = dict(draws=150, chains=2, burnin_steps=20)


def slow_grid(out_dir: str):
    from lambdahat.sweeps import GridSearchConfig, LLCGridSearch

    cfg = GridSearchConfig(
        learning_rate=[1e-4, 1e-3], localization=[1.0, 10.0, 100.0], nbeta=20.0, **SLOW_SCHEDULE
    )
    return LLCGridSearch(cfg).run_grid_search(trained_linear(0), make_loader(), out_dir=out_dir, **RUN)


if __name__ == "__main__":
    torch.set_num_threads(1)
    slow_grid(sys.argv[1])
