"""Shared fixtures for the modadd tests."""

from __future__ import annotations

import pytest
import torch

from lambdahat.modadd import ExperimentParams, train


@pytest.fixture(autouse=True)
def _one_thread():
    """Run these tiny models on one intra-op thread (restored afterwards).

    Multi-threaded matmuls on [128, 32] tensors gain nothing and, on a busy 2-core machine, oversubscription makes
    them 10-20x slower; the library itself never touches the thread count.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = dict(
    p=7,
    embed_dim=4,
    hidden_size=8,
    batch_size=16,
    n_batches=20,
    n_save_model_checkpoints=5,
    train_frac=0.6,
    lr=0.01,
    weight_decay=1e-3,
)


@pytest.fixture
def tiny_params() -> ExperimentParams:
    return ExperimentParams(**TINY)


@pytest.fixture
def tiny_run(tmp_path, tiny_params):
    return train(tiny_params, tmp_path / "run", show_progress=False)
