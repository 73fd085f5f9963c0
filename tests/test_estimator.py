"""Public estimator API: shapes, metrics, settings, precision, compile, progress."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import FAST
from torch import nn
from torch.utils.data import DataLoader

import lambdahat
from lambdahat import LLCEstimator, LLCResult, nbeta_from_effective_size


def test_public_surface_is_pinned():
    expected = {
        "LLCEstimator",
        "LLCResult",
        "Sampler",
        "nbeta_from_effective_size",
        "__version__",
    }
    assert expected <= set(lambdahat.__all__)
    for name in lambdahat.__all__:
        assert hasattr(lambdahat, name)


def test_nbeta_from_effective_size():
    assert nbeta_from_effective_size(1000) == pytest.approx(1000 / math.log(1000))
    with pytest.raises(ValueError, match="n must be > 1"):
        nbeta_from_effective_size(1)


def test_estimate_returns_per_chain_llcs_and_metrics(tiny_model, loader):
    est = LLCEstimator(**FAST)
    llcs = est.estimate_llc(tiny_model, loader, seed=0, compile=False, show_progress=False)
    assert llcs.shape == (4,) and llcs.dtype == torch.float32
    m = est.get_metrics()
    for key in (
        "llc_mean",
        "llc_std",
        "llcs",
        "losses",
        "losses_mean",
        "losses_std",
        "init_loss",
        "nbeta",
        "mala_acceptance",
        "mala_acceptance_trace",
        "rhat",
        "ess",
        "llc_trace",
        "diverged",
        "learning_rate",
        "seed",
        "grad_norm",
        "distance",
        "noise_norm",
    ):
        assert key in m, key
    assert m["losses"].shape == (4, 12)
    assert m["llc_trace"].shape == (4, 12)
    assert m["nbeta"] == pytest.approx(96 / math.log(96))
    assert m["llc_mean"] == pytest.approx(float(llcs.mean()), rel=1e-5)
    expected = m["nbeta"] * (m["losses"].double().mean(1) - m["init_loss"])
    torch.testing.assert_close(llcs.double(), expected, rtol=1e-5, atol=1e-5)
    # the running estimate ends at the final estimate
    torch.testing.assert_close(m["llc_trace"][:, -1], llcs, rtol=1e-5, atol=1e-5)
    assert isinstance(est.result, LLCResult)


def test_get_metrics_before_estimate_raises():
    with pytest.raises(RuntimeError, match="call estimate_llc first"):
        LLCEstimator().get_metrics()


def test_result_is_immutable(tiny_model, loader):
    est = LLCEstimator(**FAST)
    est.estimate_llc(tiny_model, loader, seed=0, compile=False, show_progress=False)
    with pytest.raises(AttributeError):
        est.result.llc_mean = 0.0


def test_init_loss_is_full_data_loss_in_eval_mode(tiny_model, classification_data, loader):
    est = LLCEstimator(**FAST)
    est.estimate_llc(tiny_model, loader, seed=0, compile=False, show_progress=False)
    ref = tiny_model.__class__()
    ref.load_state_dict(tiny_model.state_dict())
    ref.eval()
    x, y = classification_data.tensors
    with torch.no_grad():
        expected = F.cross_entropy(ref(x), y).item()
    assert est.get_metrics()["init_loss"] == pytest.approx(expected, rel=1e-5)


def test_outputs_with_logits_attribute_are_unwrapped(classification_data):
    class Out:
        def __init__(self, logits):
            self.logits = logits

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return Out(self.lin(x))

    est = LLCEstimator(**FAST)
    llcs = est.estimate_llc(
        Wrapped(), DataLoader(classification_data, batch_size=32), seed=0, compile=False, show_progress=False
    )
    assert torch.isfinite(llcs).all()


def test_dict_batches_with_unpack_fn(classification_data):
    class DictData(torch.utils.data.Dataset):
        def __len__(self):
            return len(classification_data)

        def __getitem__(self, i):
            x, y = classification_data[i]
            return {"inputs": x, "labels": y}

    model = nn.Linear(4, 3)
    est = LLCEstimator(**FAST)
    a = est.estimate_llc(
        model,
        DataLoader(DictData(), batch_size=32),
        unpack_fn=lambda b: (b["inputs"], b["labels"]),
        seed=3,
        compile=False,
        show_progress=False,
    )
    b = est.estimate_llc(
        model, DataLoader(classification_data, batch_size=32), seed=3, compile=False, show_progress=False
    )
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_autocast_on_cpu(tiny_model, loader, dtype):
    est = LLCEstimator(**FAST, dtype=dtype)
    llcs = est.estimate_llc(tiny_model, loader, seed=0, compile=False, show_progress=False)
    m = est.get_metrics()
    assert llcs.dtype == torch.float32 and torch.isfinite(llcs).all()
    assert m["dtype"] == str(dtype).replace("torch.", "")
    # L0 comes from the same autocast forward as the draws: it differs from the float32 value
    full = LLCEstimator(**FAST).run(tiny_model, loader, seed=0, compile=False, show_progress=False)
    assert m["init_loss"] != full.init_loss
    assert m["init_loss"] == pytest.approx(full.init_loss, rel=5e-2)


def test_float64_runs_in_double(classification_data):
    est = LLCEstimator(**FAST, dtype=torch.float64)
    llcs = est.estimate_llc(
        nn.Linear(4, 3),
        DataLoader(classification_data, batch_size=32),
        seed=0,
        compile=False,
        show_progress=False,
    )
    assert torch.isfinite(llcs).all()


def test_progress_bar_can_be_shown(tiny_model, loader, capsys):
    LLCEstimator(**FAST).estimate_llc(tiny_model, loader, seed=0, compile=False, show_progress=True)
    assert "LLC chains" in capsys.readouterr().err


def test_seed_none_is_recorded_and_repeats(tiny_model, loader):
    est = LLCEstimator(**FAST)
    first = est.estimate_llc(tiny_model, loader, seed=None, compile=False, show_progress=False)
    again = est.estimate_llc(
        tiny_model, loader, seed=est.get_metrics()["seed"], compile=False, show_progress=False
    )
    torch.testing.assert_close(first, again, rtol=0, atol=0)


def test_auto_compile_skips_short_runs(tiny_model, loader):
    est = LLCEstimator(**FAST)
    est.estimate_llc(tiny_model, loader, seed=0, compile="auto", show_progress=False)
    assert est.get_metrics()["compiled"] is False


def test_failed_compile_falls_back_to_eager_with_one_warning(tiny_model, loader, monkeypatch):
    def broken_compile(fn, *a, **k):
        def fail(*args, **kwargs):
            raise RuntimeError("simulated compiler failure")

        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    est = LLCEstimator(**FAST)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        llcs = est.estimate_llc(tiny_model, loader, seed=0, compile=True, show_progress=False)
    compile_warnings = [w for w in caught if "torch.compile failed" in str(w.message)]
    assert len(compile_warnings) == 1
    eager = LLCEstimator(**FAST).estimate_llc(tiny_model, loader, seed=0, compile=False, show_progress=False)
    torch.testing.assert_close(llcs, eager, rtol=0, atol=0)
    assert est.get_metrics()["compiled"] is False


@pytest.mark.slow
def test_compiled_run_matches_eager_and_is_reused(classification_data):
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    loader = DataLoader(classification_data, batch_size=32)
    est = LLCEstimator(**FAST)
    eager = est.estimate_llc(model, loader, seed=1, compile=False, show_progress=False)
    compiled = est.estimate_llc(model, loader, seed=1, compile=True, show_progress=False)
    assert est.get_metrics()["compiled"] is True
    assert est.get_metrics()["compile_seconds"] > 0
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3)
    # a second call on the same model reuses the compiled step, also under "auto"
    est.estimate_llc(model, loader, seed=1, compile="auto", show_progress=False)
    assert est.get_metrics()["compiled"] is True
    assert est.get_metrics()["compile_seconds"] == 0.0
