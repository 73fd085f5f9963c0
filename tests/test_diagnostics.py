"""R-hat, bulk ESS and the trend test's p-value against the reference implementations (arviz, scipy.stats).

lambdahat computes rank-normalized split R-hat and the bulk effective sample size itself (NumPy), the algorithm of
Vehtari et al. (2021) as arviz implements it: the two must agree to rounding (relative 1e-10; the differences come
from the FFT length and the order of floating-point sums, measured below 3e-15)."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from lambdahat.diagnostics import effective_sample_size, r_hat, trend_p_value

az = pytest.importorskip("arviz")


def _traces():
    """Traces of the kinds the trust policy meets: independent draws, random walks, ties, chains that disagree,
    strongly autocorrelated chains; odd and even draw counts."""
    rng = np.random.default_rng(0)
    for trial in range(120):
        chains, draws = int(rng.integers(2, 12)), int(rng.integers(4, 400))
        x = rng.normal(size=(chains, draws))
        kind = trial % 5
        if kind == 1:
            x = np.cumsum(x, axis=1)
        elif kind == 2:
            x = np.round(x, 1)
        elif kind == 3:
            x = x + np.arange(chains)[:, None]
        elif kind == 4:
            for i in range(1, draws):
                x[:, i] += 0.95 * x[:, i - 1]
        yield x


def _arviz(fn, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(x))


@pytest.mark.parametrize("ours, theirs", [(r_hat, "rhat"), (effective_sample_size, "ess")])
def test_agrees_with_arviz(ours, theirs):
    for x in _traces():
        expected = _arviz(getattr(az, theirs), x)
        assert ours(x) == pytest.approx(expected, rel=1e-10), (x.shape, ours.__name__)


def test_accepts_torch_tensors():
    import torch

    x = np.random.default_rng(1).normal(size=(4, 100))
    assert r_hat(torch.from_numpy(x).float()) == pytest.approx(r_hat(x.astype(np.float32)), rel=1e-12)


@pytest.mark.parametrize(
    "trace",
    [np.zeros((1, 100)), np.zeros((4, 3)), np.zeros(10), np.r_[np.ones((2, 10)), np.full((2, 10), np.nan)]],
    ids=["one chain", "three draws", "1-d", "nan"],
)
def test_undefined_is_nan(trace):
    assert math.isnan(r_hat(trace)) and math.isnan(effective_sample_size(trace))


def test_constant_and_separated_traces_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(r_hat(np.ones((4, 10))))  # no spread at all: undefined, as in arviz
        assert effective_sample_size(np.ones((4, 10))) == 40.0
        separated = np.r_[np.ones((2, 10)), np.zeros((2, 10))]
        assert r_hat(separated) == math.inf
        assert r_hat(separated) == _arviz(az.rhat, separated)


def test_trend_p_value_is_students_t():
    """The finite sums against scipy.stats over 1-59 degrees of freedom and |t| from 0 to 200 (p down to 1e-100):
    relative 1e-9 where p > 1e-4; below, the subtraction 1 - P(|T| < |t|) leaves an absolute error of a few
    1e-16, so p is compared to 1e-14 absolute."""
    from scipy.stats import t as student_t

    for chains in range(2, 61):
        for t in (0.0, 0.3, -1.0, 2.5, 4.0, -7.8, 12.0, 50.7, 200.0):
            expected = 2 * student_t.sf(abs(t), chains - 1)
            got = trend_p_value(t, chains)
            if expected > 1e-4:
                assert got == pytest.approx(expected, rel=1e-9), (t, chains)
            else:
                assert abs(got - expected) < 1e-14, (t, chains)
    assert trend_p_value(math.inf, 8) == 0.0 and math.isnan(trend_p_value(math.nan, 8))
    assert math.isnan(trend_p_value(1.0, 1))


def test_a_run_imports_no_plotting_arviz_scipy_or_pandas():
    """A first call in a fresh process pays for what it imports: arviz (with matplotlib's pyplot and scipy.stats)
    took 2-3 s, pandas and scipy.special 0.3 s each, more than or much of a small model's whole run, so a run
    imports none of them. (Dynamo it cannot avoid: torch.func's vmap imports it on its first call.)"""
    code = textwrap.dedent(
        """
        import sys, warnings
        import torch
        from torch.utils.data import DataLoader, TensorDataset
        from lambdahat import LLCEstimator
        warnings.simplefilter("ignore")
        x = torch.randn(64, 3)
        loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)
        est = LLCEstimator(draws=20, chains=2, burnin_steps=5, learning_rate=1e-4)
        est.estimate_llc(torch.nn.Linear(3, 1), loader, criterion_fn=torch.nn.functional.mse_loss,
                         compile=False, show_progress=False, seed=0)
        assert est.get_metrics()["rhat"] == est.get_metrics()["rhat"]  # computed (not NaN)
        print(sorted(m for m in ("arviz", "matplotlib.pyplot", "scipy", "pandas") if m in sys.modules))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
