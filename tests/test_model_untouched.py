"""The caller's model is never modified: weights, buffers, requires_grad, device, dtype, train/eval mode."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST

from lambdahat import LLCEstimator


def snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [p.requires_grad for p in model.parameters()],
        [m.training for m in model.modules()],
        {p.device for p in model.parameters()},
        {p.dtype for p in model.parameters()},
        [p.grad for p in model.parameters()],
    )


def assert_same(model, snap):
    state, req, modes, devices, dtypes, grads = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [p.requires_grad for p in model.parameters()] == req
    assert [m.training for m in model.modules()] == modes
    assert {p.device for p in model.parameters()} == devices
    assert {p.dtype for p in model.parameters()} == dtypes
    assert all(p.grad is None for p in model.parameters()) and all(g is None for g in grads)


@pytest.mark.parametrize("training", [True, False])
def test_model_untouched_after_estimate(tiny_model, loader, training):
    tiny_model.train(training)
    snap = snapshot(tiny_model)
    LLCEstimator(**FAST, restrict_to_orth_grad=True).estimate_llc(
        tiny_model, loader, seed=0, compile=False, show_progress=False
    )
    assert_same(tiny_model, snap)


def test_model_untouched_when_the_run_raises(tiny_model, loader):
    snap = snapshot(tiny_model)

    def bad_criterion(out, y):
        raise RuntimeError("boom")

    with pytest.raises(ValueError, match="criterion_fn failed"):
        LLCEstimator(**FAST).estimate_llc(
            tiny_model, loader, criterion_fn=bad_criterion, compile=False, show_progress=False
        )
    assert_same(tiny_model, snap)


def test_model_untouched_with_reduced_precision_and_frozen_params(tiny_model, loader):
    tiny_model.fc1.weight.requires_grad_(False)
    snap = snapshot(tiny_model)
    LLCEstimator(**FAST, dtype=torch.bfloat16).estimate_llc(
        tiny_model, loader, seed=0, compile=False, show_progress=False, params="fc2"
    )
    assert_same(tiny_model, snap)
