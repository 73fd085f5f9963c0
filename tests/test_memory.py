"""chain_batch="auto": a memory model of a chain batch, the chain batch that fits, and the same results whatever
it chooses (also after a simulated out-of-memory error)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lambdahat.devices as devices
import lambdahat.memory as memory
from lambdahat import LLCEstimator
from lambdahat.functional import FunctionalModel, select_parameters

HP = dict(draws=10, chains=6, burnin_steps=5, learning_rate=1e-3, localization=10.0, nbeta=20.0)


@pytest.fixture
def setup():
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(128, 20, generator=g), torch.randint(0, 3, (128,), generator=g))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 500), nn.Tanh(), nn.Linear(500, 3))
    return model, DataLoader(data, batch_size=64)


def _run(model, loader, **kwargs):
    est = LLCEstimator(**HP)
    llcs = est.estimate_llc(
        model, loader, criterion_fn=F.cross_entropy, seed=3, compile=False, show_progress=False, **kwargs
    )
    return llcs, est.get_metrics()


def test_the_memory_model_counts_the_saved_activations_and_the_state(setup):
    model, loader = setup
    fm = FunctionalModel(
        model, F.cross_entropy, torch.device("cpu"), torch.float32, select_parameters(model, None)
    )
    x, y = next(iter(loader))
    plan = memory.measure_chain_memory(fm, x, y)
    hidden = 64 * 500 * 4  # the tanh output (float32) that the second layer saves for its backward
    state = memory.STATE_COPIES * fm.layout.dim * 4
    assert plan.how == "estimated"
    assert hidden + state <= plan.per_chain < 10 * (hidden + state)


def test_auto_chain_batch_fits_the_memory_and_keeps_the_results(setup, monkeypatch):
    model, loader = setup
    whole, metrics = _run(model, loader)
    auto, metrics = _run(model, loader, chain_batch="auto")
    torch.testing.assert_close(auto, whole, rtol=0, atol=0)
    assert metrics["chain_batch"] == 6  # plenty of RAM here: all chains at once
    assert metrics["chain_memory"]["slots"][0]["how"] == "estimated"
    # with room for two chains only (CPU_FRACTION of the "available" bytes), the batches shrink, the results stay
    per_chain = metrics["chain_memory"]["slots"][0]["per_chain_bytes"]
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2.5 * per_chain / memory.CPU_FRACTION)
    small, metrics = _run(model, loader, chain_batch="auto")
    assert metrics["chain_batch"] == 2
    torch.testing.assert_close(small, whole, rtol=0, atol=0)


def test_an_out_of_memory_chain_batch_is_split_and_repeated(setup, monkeypatch):
    model, loader = setup
    whole, _ = _run(model, loader)
    real = devices.run_chain_batch

    def tight(step_fn, fm, sampler, chains, *args, **kwargs):
        if len(chains) > 2:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return real(step_fn, fm, sampler, chains, *args, **kwargs)

    monkeypatch.setattr(devices, "run_chain_batch", tight)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    split, _ = _run(model, loader, chain_batch="auto")
    torch.testing.assert_close(split, whole, rtol=0, atol=0)
    with pytest.raises(torch.OutOfMemoryError):  # a fixed chain batch is the caller's choice: no retry
        _run(model, loader, chain_batch=6)


def test_chain_batch_rejects_other_strings(setup):
    model, loader = setup
    with pytest.raises(ValueError, match="'auto'"):
        _run(model, loader, chain_batch="max")
