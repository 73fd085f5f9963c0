"""Figures of one run: line counts, labels, the styling of diverged chains, saving, errors."""

from __future__ import annotations

import dataclasses
import doctest

import matplotlib.colors as mcolors
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch.utils.data import DataLoader, TensorDataset

import lambdahat.plotting as plotting_module
from lambdahat import LLCEstimator, truth
from lambdahat.plotting import plot_diagnostics, plot_trace
from lambdahat.trust import MIN_ACCEPTANCE

CHAINS = 3
DRAWS = 20
BURNIN = 5


@pytest.fixture(scope="module")
def result():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-1.0], [0.5]])
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    est = LLCEstimator(draws=DRAWS, chains=CHAINS, burnin_steps=BURNIN, learning_rate=1e-4, localization=10.0)
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    return est.run(
        model, loader, criterion_fn=F.mse_loss, seed=0, compile=False, show_progress=False, warn=False
    )


@pytest.fixture(scope="module")
def diverged_result():
    """A double well K = r² - 5 r⁴ (d = 4) at a step that lets some chains over the barrier: they run off to
    K = -inf and are reported as diverged (chains 1 and 5 with this seed)."""

    def double_well(w):
        r2 = (w * w).sum(-1)
        return r2 - 5.0 * r2 * r2

    case = truth.potential_case("double_well", double_well, d=4, n=200, true_lambda=2.0)
    est = LLCEstimator(draws=100, chains=6, burnin_steps=50, learning_rate=1e-3, localization=40.0)
    res = est.run(
        case.model,
        case.loader(50),
        criterion_fn=case.criterion_fn,
        seed=0,
        compile=False,
        show_progress=False,
        warn=False,
    )
    n_div = int(res.diverged.sum())
    assert 0 < n_div < 6, "the fixture needs some, not all, chains to diverge: pick another seed"
    return res


def _is_red_dashed(line) -> bool:
    return line.get_linestyle() == "--" and mcolors.same_color(line.get_color(), "tab:red")


def _legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend is not None else []


def test_plot_trace_llc(result):
    fig = plot_trace(result)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.lines) == CHAINS + 1  # one per chain and the mean
    assert len(ax.collections) == 1  # the ± std band
    assert ax.get_xlabel() == "step" and "λ̂" in ax.get_ylabel()
    assert ax.get_title().startswith(f"λ̂ = {result.llc_mean:.4g} ± ")
    assert _legend_texts(ax) == ["chains", "± 1 std across chains", f"mean of {CHAINS} chains"]
    # x is the step of every draw, y the running estimate
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), BURNIN + np.arange(DRAWS))
    np.testing.assert_allclose(ax.lines[0].get_ydata(), result.llc_trace[0].double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(ax.lines[-1].get_ydata(), result.llc_trace.double().mean(0).numpy(), rtol=1e-5)
    assert not any(_is_red_dashed(line) for line in ax.lines)


def test_plot_trace_loss(result):
    fig = plot_trace(result, kind="loss")
    ax = fig.axes[0]
    assert len(ax.lines) == CHAINS + 2  # chains, the mean and L0
    assert ax.get_ylabel() == "minibatch loss"
    assert "L0 (loss at w*)" in _legend_texts(ax)
    np.testing.assert_allclose(ax.lines[1].get_ydata(), result.losses[1].double().numpy(), rtol=1e-6)
    assert ax.lines[-1].get_ydata()[0] == pytest.approx(result.init_loss)


def test_plot_trace_styles_diverged_chains(diverged_result):
    res = diverged_result
    bad = np.flatnonzero(res.diverged.numpy()).tolist()
    for kind in ("llc", "loss"):
        ax = plot_trace(res, kind=kind).axes[0]
        red = [line for line in ax.lines if _is_red_dashed(line)]
        assert len(red) == len(bad)
        texts = _legend_texts(ax)
        for c in bad:
            assert f"chain {c} diverged (step {int(res.divergence_step[c])})" in texts
        # a diverged chain is drawn only up to its divergence step
        c = bad[0]
        x, y = red[0].get_xdata(), np.asarray(red[0].get_ydata(), dtype=float)
        step = int(res.divergence_step[c])
        assert np.isnan(y[x >= step]).all()
        assert np.isfinite(y[x < step]).all()
        # kept chains stay solid and never red; the mean covers only them
        solid = [line for line in ax.lines if line.get_linestyle() == "-"]
        assert len(solid) >= 1 + (6 - len(bad))
        assert not any(mcolors.same_color(line.get_color(), "tab:red") for line in solid)
        assert f"mean of {6 - len(bad)} chains" in texts
    assert f"{6 - len(bad)}/6 chains" in plot_trace(res).axes[0].get_title()


def test_plot_diagnostics_panels(result):
    fig = plot_diagnostics(result)
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    ax_acc, ax_dist, ax_grad, ax_text = fig.axes
    # acceptance: the per-draw mean and the trust policy's threshold as reference
    assert len(ax_acc.lines) == 2
    assert list(ax_acc.lines[1].get_ydata()) == [MIN_ACCEPTANCE, MIN_ACCEPTANCE]
    expected = np.nanmean(result.mala_acceptance_trace.double().numpy(), axis=0)
    np.testing.assert_allclose(ax_acc.lines[0].get_ydata(), expected, rtol=1e-6, equal_nan=True)
    assert f"{MIN_ACCEPTANCE:g} (least trusted mean)" in _legend_texts(ax_acc)
    assert ax_acc.get_title() == "MALA acceptance per draw"
    # distance and gradient norm: one line per chain
    assert len(ax_dist.lines) == CHAINS and "||w − w*||" in ax_dist.get_title()
    np.testing.assert_allclose(ax_dist.lines[2].get_ydata(), result.distance[2].double().numpy(), rtol=1e-6)
    assert len(ax_grad.lines) == CHAINS and "gradient norm" in ax_grad.get_title()
    np.testing.assert_allclose(ax_grad.lines[0].get_ydata(), result.grad_norm[0].double().numpy(), rtol=1e-6)
    # the text box
    (text,) = ax_text.texts
    content = text.get_text()
    for piece in (
        f"R-hat: {result.rhat:.3f}",
        f"ESS: {result.ess:.1f}",
        f"trend_z: {result.trend_z:+.2f}",
        f"distance_trend_z: {result.distance_trend_z:+.2f}",
        f"MALA acceptance (mean): {result.mala_acceptance:.3f} (gradient estimate)",
        "diverged chains: none",
        f"status: {result.status}",
    ):
        assert piece in content, piece
    assert text.get_bbox_patch() is not None


def test_plot_diagnostics_names_diverged_chains_and_warnings(diverged_result):
    res = diverged_result
    bad = np.flatnonzero(res.diverged.numpy()).tolist()
    fig = plot_diagnostics(res)
    _, ax_dist, ax_grad, ax_text = fig.axes
    for ax in (ax_dist, ax_grad):
        assert sum(_is_red_dashed(line) for line in ax.lines) == len(bad)
        assert f"chain {bad[0]} diverged (step {int(res.divergence_step[bad[0]])})" in _legend_texts(ax)
    content = ax_text.texts[0].get_text()
    assert f"diverged chains: {bad}" in content
    assert res.warnings and "warnings:" in content
    assert "diverged" in content.split("warnings:")[1]  # the result's own warning, wrapped


def test_sgnht_and_all_diverged_results_still_plot(result):
    nan = torch.full_like(result.mala_acceptance_trace, float("nan"))
    sgnht = dataclasses.replace(
        result,
        mala_acceptance_trace=nan,
        mala_acceptance=float("nan"),
        settings={**result.settings, "sampler": "sgnht"},
    )
    ax_acc, _, _, ax_text = plot_diagnostics(sgnht).axes
    assert "not defined for sgnht" in ax_acc.texts[0].get_text()
    assert "Metropolis–Hastings" in ax_acc.texts[0].get_text()
    assert "MALA acceptance: not available for sgnht (not checked)" in ax_text.texts[0].get_text()
    gone = dataclasses.replace(
        result,
        diverged=torch.ones(CHAINS, dtype=torch.bool),
        divergence_step=torch.full((CHAINS,), BURNIN + 3),
        llc_mean=float("nan"),
        llc_std=float("nan"),
    )
    ax = plot_trace(gone).axes[0]
    assert "every chain diverged" in ax.get_title()
    assert sum(_is_red_dashed(line) for line in ax.lines) == CHAINS
    assert "every chain diverged" in plot_diagnostics(gone).axes[0].texts[0].get_text()


def test_draws_on_given_axes(result):
    fig = Figure()
    ax = fig.subplots()
    assert plot_trace(result, ax=ax) is fig
    assert len(ax.lines) == CHAINS + 1
    fig4 = Figure()
    axes = fig4.subplots(1, 4)
    assert plot_diagnostics(result, axes=axes) is fig4
    assert len(axes[1].lines) == CHAINS
    with pytest.raises(ValueError, match="expected 4 Axes"):
        plot_diagnostics(result, axes=axes[:2])
    with pytest.raises(ValueError, match="expected one Axes"):
        plot_trace(result, ax="left")


def test_bad_arguments(result):
    with pytest.raises(ValueError, match="kind must be 'llc' or 'loss'"):
        plot_trace(result, kind="acceptance")
    with pytest.raises(TypeError, match="expected an LLCResult"):
        plot_trace(result.llcs)
    with pytest.raises(TypeError, match="expected an LLCResult"):
        plot_diagnostics({"llc_mean": 1.0})


def test_saving_to_png(result, diverged_result, tmp_path):
    for name, fig in {
        "trace.png": plot_trace(result),
        "loss.png": plot_trace(diverged_result, kind="loss"),
        "diagnostics.png": plot_diagnostics(diverged_result),
    }.items():
        path = tmp_path / name
        fig.savefig(path, dpi=60)
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_doctests():
    out = doctest.testmod(plotting_module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert out.failed == 0 and out.attempted > 0
