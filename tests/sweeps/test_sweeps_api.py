"""The public surface of lambdahat.sweeps, its docstring examples, and the figures."""

from __future__ import annotations

import doctest
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.figure import Figure

import lambdahat.sweeps
import lambdahat.sweeps.grid
from lambdahat.sweeps import plot_grid, plot_llc_over_checkpoints
from lambdahat.sweeps.plots import flagged


def test_public_surface():
    assert sorted(lambdahat.sweeps.__all__) == [
        "GridSearchConfig",
        "LLCGridSearch",
        "llc_over_checkpoints",
        "plot_grid",
        "plot_llc_over_checkpoints",
    ]
    for name in lambdahat.sweeps.__all__:
        assert getattr(lambdahat.sweeps, name).__doc__


def test_docstring_examples_run():
    result = doctest.testmod(lambdahat.sweeps.grid, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 3 and result.failed == 0


def grid_table(eps, gam, nb):
    rows = []
    for e in eps:
        for g in gam:
            for b in nb:
                rows.append(
                    dict(
                        learning_rate=e,
                        localization=g,
                        nbeta=b,
                        llc_mean=e * 1e3 + g,
                        llc_std=0.1,
                        mala_acceptance=0.9,
                        rhat=1.0,
                        n_diverged=0,
                        status="ok",
                    )
                )
    return pd.DataFrame(rows)


def test_flags():
    # without a status column, the numbers are judged by the trust policy's thresholds
    df = pd.DataFrame(
        dict(
            mala_acceptance=[0.9, 0.3, 0.9, 0.9, math.nan, 0.87],
            rhat=[1.0, 1.0, 1.2, 1.0, math.nan, 1.0],
            n_diverged=pd.array([0, 0, 0, 2, None, 0], dtype="Int64"),
        )
    )
    assert flagged(df).tolist() == [False, True, True, True, False, True]  # 0.87 < MIN_ACCEPTANCE
    # a standard error above a tenth of λ̂ (the precision rule) flags a row too
    precise = pd.DataFrame(dict(llc_mean=[5.0, 5.0, 5.0], llc_stderr=[0.4, 0.6, math.nan]))
    assert flagged(precise).tolist() == [False, True, False]


def test_flags_follow_the_status_column():
    df = pd.DataFrame(
        dict(
            mala_acceptance=[0.95, 0.95, math.nan, math.nan, 0.5, 0.95],
            rhat=[1.0] * 6,
            status=[
                "ok",
                "untrusted: distance still growing (p = 4e-04)",
                "diverged",
                "failed",
                "ok",
                "untrusted",
            ],
        )
    )
    # untrusted and diverged points are flagged whatever their numbers; failed ones are not (no estimate); an
    # "ok" row whose numbers fail the thresholds (a table written before the status carried the verdict) is
    assert flagged(df).tolist() == [False, True, True, False, True, True]


def test_plot_grid_heatmaps_one_panel_per_nbeta():
    df = grid_table([1e-5, 1e-4, 1e-3], [10.0, 100.0], [5.0, 20.0])
    df.loc[1, "rhat"] = 1.5
    df.loc[2, ["llc_mean", "status"]] = [math.nan, "failed"]
    fig = plot_grid(df)
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 2 and "nβ = 5" in panels[0].get_title()
    texts = [t.get_text() for t in panels[0].texts]
    assert "failed" in texts
    assert any(
        p.get_edgecolor()[:3] == (1.0, 0.0, 0.0) for p in panels[1].patches
    )  # the flagged cell (nβ=20)
    assert not panels[0].patches
    plt.close(fig)


def test_plot_grid_line_when_one_axis_varies():
    fig = plot_grid(grid_table([1e-5, 1e-4, 1e-3], [10.0], [5.0]))
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and "γ (localization) = 10" in ax.get_title()
    plt.close(fig)
    fig = plot_grid(grid_table([1e-4], [1.0, 2.0, 3.0], [5.0]))
    assert fig.axes[0].get_xscale() == "linear"
    plt.close(fig)


def test_plot_llc_over_checkpoints():
    df = pd.DataFrame(
        dict(
            checkpoint=[0, 100, 200],
            llc_mean=[1.0, 2.0, math.nan],
            llc_std=[0.1, 0.2, math.nan],
            mala_acceptance=[0.9, 0.2, math.nan],
            status=["ok", "ok", "failed"],
        )
    )
    fig = plot_llc_over_checkpoints(df)
    ax = fig.axes[0]
    assert "1 checkpoint(s) failed" in ax.get_title()
    assert list(ax.lines[0].get_xdata()) == [0.0, 100.0, 200.0]
    plt.close(fig)
    named = df.assign(checkpoint=["init", "mid", "end"])
    fig = plot_llc_over_checkpoints(named)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["init", "mid", "end"]
    plt.close(fig)
    with pytest.raises(ValueError, match="no column"):
        plot_llc_over_checkpoints(df, x="step")
    untrusted = df.assign(status=["ok", "untrusted: acceptance 0.2 < 0.9", "diverged"])
    fig = plot_llc_over_checkpoints(untrusted)
    ax = fig.axes[0]
    assert "1 checkpoint(s) diverged" in ax.get_title()
    crosses = [line for line in ax.lines if line.get_marker() == "x"]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [100.0]
    plt.close(fig)
    # no finite λ̂ at all (every checkpoint failed or diverged): no empty figure, an error that says why
    gone = df.assign(llc_mean=math.nan, status=["diverged", "diverged", "failed"])
    with pytest.raises(ValueError, match=r"no checkpoint has a finite λ̂ .*'diverged': 2"):
        plot_llc_over_checkpoints(gone)
    with pytest.raises(ValueError, match="no column"):
        plot_grid(df)
