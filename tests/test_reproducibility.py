"""Seeds reproduce per-chain results exactly, whatever the chain batching and the devices."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST

from lambdahat import LLCEstimator


def run(model, loader, **kw):
    est = LLCEstimator(**{**FAST, "chains": 5})
    return est.estimate_llc(
        model, loader, seed=7, compile=False, show_progress=False, **kw
    ), est.get_metrics()


@pytest.mark.parametrize("chain_batch", [1, 3])
def test_chain_batch_does_not_change_results(tiny_model, loader, chain_batch):
    ref, m_ref = run(tiny_model, loader)
    got, m = run(tiny_model, loader, chain_batch=chain_batch)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    torch.testing.assert_close(m["losses"], m_ref["losses"], rtol=0, atol=0)


def test_two_cpu_devices_give_the_same_results(tiny_model, loader):
    ref, _ = run(tiny_model, loader)
    got, m = run(tiny_model, loader, devices=["cpu", "cpu"], chain_batch=2)
    assert m["devices"] == ["cpu", "cpu"]
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_different_seeds_differ(tiny_model, loader):
    a = LLCEstimator(**FAST).estimate_llc(tiny_model, loader, seed=1, compile=False, show_progress=False)
    b = LLCEstimator(**FAST).estimate_llc(tiny_model, loader, seed=2, compile=False, show_progress=False)
    assert not torch.equal(a, b)


def test_chains_differ_from_each_other(tiny_model, loader):
    """Every chain follows its own path (the streams' independence is tested in test_rng.py)."""
    _, m = run(tiny_model, loader)
    losses = m["losses"]
    assert len({tuple(row.tolist()) for row in losses}) == losses.shape[0]


def test_global_rng_state_is_untouched(tiny_model, loader):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    run(tiny_model, loader)
    assert torch.equal(torch.random.get_rng_state(), before)
