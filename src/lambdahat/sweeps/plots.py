"""Figures of sweep tables: the grid as heatmaps (or a line when one axis varies), the LLC over checkpoints."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["flagged", "plot_grid", "plot_llc_over_checkpoints"]

#: A point is flagged when its MALA acceptance is below this ...
MIN_MALA_ACCEPTANCE = 0.5
#: ... or its R-hat above this, or any chain diverged.
MAX_RHAT = 1.1
FLAG_TEXT = f"flagged: MALA acceptance < {MIN_MALA_ACCEPTANCE}, R-hat > {MAX_RHAT} or a divergence"
AXES = ("epsilon", "gamma", "nbeta")
LABELS = {"epsilon": "ε (learning_rate)", "gamma": "γ (localization)", "nbeta": "nβ"}


def flagged(df: pd.DataFrame) -> pd.Series:
    """Whether each row's diagnostics distrust its estimate: MALA acceptance < 0.5, R-hat > 1.1 or a diverged
    chain (missing diagnostics do not flag)."""
    flag = pd.Series(False, index=df.index)
    if "mala_acceptance" in df:
        flag |= pd.to_numeric(df["mala_acceptance"], errors="coerce") < MIN_MALA_ACCEPTANCE
    if "rhat" in df:
        flag |= pd.to_numeric(df["rhat"], errors="coerce") > MAX_RHAT
    if "n_diverged" in df:
        flag |= pd.to_numeric(df["n_diverged"], errors="coerce").fillna(0) > 0
    return flag.astype(bool)


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _check_columns(df: pd.DataFrame, needed: Sequence[str], who: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{who}: expected a pandas DataFrame (a sweep's table); got {type(df).__name__}.")
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"{who}: the table has no column(s) {missing}; pass the table the sweep returned.")


def plot_grid(df: pd.DataFrame, value: str = "llc_mean"):
    """Plot a grid search table.

    With ε and γ (or any two axes) varying: a heatmap of ``value`` over them, one panel per nβ (per value of the
    third axis), each cell annotated; with one axis varying: ``value ± llc_std`` against it (log scale for ε and
    nβ). Points whose MALA acceptance is < 0.5, R-hat > 1.1 or with a diverged chain are marked with a red
    frame (a red cross on a line plot); failed points are grey.

    Parameters
    ----------
    df:
        The table of :meth:`~lambdahat.sweeps.LLCGridSearch.run_grid_search` (columns ``epsilon``, ``gamma``,
        ``nbeta``, ``llc_mean`` at least).
    value:
        The column to show (default ``"llc_mean"``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    _check_columns(df, [*AXES, value], "plot_grid")
    if df.empty:
        raise ValueError("plot_grid: the table is empty.")
    varying = [a for a in AXES if df[a].nunique() > 1]
    flags = flagged(df)
    if len(varying) <= 1:
        return _line(df, varying[0] if varying else "epsilon", value, flags)
    rows_axis, cols_axis = ("epsilon", "gamma") if {"epsilon", "gamma"} <= set(varying) else tuple(varying)
    panel_axis = next(a for a in AXES if a not in (rows_axis, cols_axis))
    panel_values = sorted(df[panel_axis].unique())
    fig, axes = plt.subplots(
        1,
        len(panel_values),
        figsize=(4.8 * len(panel_values) + 0.8, 4.2),
        squeeze=False,
        constrained_layout=True,
    )
    finite = pd.to_numeric(df[value], errors="coerce")
    finite = finite[np.isfinite(finite)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    row_vals, col_vals = sorted(df[rows_axis].unique()), sorted(df[cols_axis].unique())
    image = None
    for ax, pv in zip(axes[0], panel_values):
        part = df[df[panel_axis] == pv]
        grid = np.full((len(row_vals), len(col_vals)), np.nan)
        for idx, r in part.iterrows():
            i, j = row_vals.index(r[rows_axis]), col_vals.index(r[cols_axis])
            v = pd.to_numeric(pd.Series([r[value]]), errors="coerce").iloc[0]
            grid[i, j] = v
            failed = r.get("status") == "failed"
            text = "failed" if failed else _fmt(v) if math.isfinite(v) else "nan"
            dark = math.isfinite(v) and (v - vmin) < 0.5 * (vmax - vmin)
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
            if flags.loc[idx] and not failed:
                ax.add_patch(
                    Rectangle((j - 0.47, i - 0.47), 0.94, 0.94, fill=False, edgecolor="red", linewidth=2.5)
                )
        cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
        image = ax.imshow(
            np.ma.masked_invalid(grid), origin="lower", aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax
        )
        ax.set_xticks(range(len(col_vals)), [_fmt(v) for v in col_vals])
        ax.set_yticks(range(len(row_vals)), [_fmt(v) for v in row_vals])
        ax.set_xlabel(LABELS[cols_axis])
        ax.set_ylabel(LABELS[rows_axis])
        ax.set_title(f"{LABELS[panel_axis]} = {_fmt(pv)}")
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), label=value)
    if flags.any():
        fig.suptitle(f"{value}; red frame = {FLAG_TEXT}", fontsize=9)
    else:
        fig.suptitle(value, fontsize=10)
    return fig


def _line(df: pd.DataFrame, axis: str, value: str, flags: pd.Series):
    import matplotlib.pyplot as plt

    order = df.sort_values(axis)
    x = order[axis].to_numpy(dtype=float)
    y = pd.to_numeric(order[value], errors="coerce").to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    if value == "llc_mean" and "llc_std" in order:
        err = pd.to_numeric(order["llc_std"], errors="coerce").to_numpy(dtype=float)
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label="llc_mean ± llc_std")
    else:
        ax.plot(x, y, marker="o", label=value)
    bad = flags.loc[order.index].to_numpy()
    if bad.any():
        ax.plot(x[bad], y[bad], "x", color="red", markersize=12, markeredgewidth=2, label=FLAG_TEXT)
    if axis in ("epsilon", "nbeta") and (x > 0).all():
        ax.set_xscale("log")
    ax.set_xlabel(LABELS[axis])
    ax.set_ylabel(value)
    fixed = [f"{LABELS[a]} = {_fmt(df[a].iloc[0])}" for a in AXES if a != axis and df[a].nunique() == 1]
    ax.set_title(", ".join(fixed), fontsize=9)
    ax.legend(fontsize=8)
    return fig


def plot_llc_over_checkpoints(df: pd.DataFrame, x: str = "checkpoint"):
    """Plot ``llc_mean ± llc_std`` over the checkpoints of :func:`~lambdahat.sweeps.llc_over_checkpoints`.

    Parameters
    ----------
    df:
        The sweep's table (``llc_mean``, ``llc_std`` and the ``x`` column at least).
    x:
        The column on the horizontal axis (default ``"checkpoint"``, the labels; numeric labels such as
        training steps are placed by value, others evenly in table order).

    Returns
    -------
    matplotlib.figure.Figure
        Points with diagnostics that distrust them (MALA acceptance < 0.5, R-hat > 1.1, a divergence) carry a
        red cross; failed checkpoints leave a gap.
    """
    import matplotlib.pyplot as plt

    _check_columns(df, [x, "llc_mean", "llc_std"], "plot_llc_over_checkpoints")
    if df.empty:
        raise ValueError("plot_llc_over_checkpoints: the table is empty.")
    xs = pd.to_numeric(df[x], errors="coerce")
    numeric = bool(xs.notna().all())
    pos = xs.to_numpy(dtype=float) if numeric else np.arange(len(df), dtype=float)
    y = pd.to_numeric(df["llc_mean"], errors="coerce").to_numpy(dtype=float)
    s = pd.to_numeric(df["llc_std"], errors="coerce").to_numpy(dtype=float)
    order = np.argsort(pos, kind="stable")
    pos, y, s = pos[order], y[order], s[order]
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    ax.plot(pos, y, marker="o", label="llc_mean")
    ax.fill_between(pos, y - s, y + s, alpha=0.25, label="± llc_std")
    bad = flagged(df).to_numpy()[order]
    if bad.any():
        ax.plot(pos[bad], y[bad], "x", color="red", markersize=12, markeredgewidth=2, label=FLAG_TEXT)
    if numeric and np.all(pos == np.round(pos)):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not numeric:
        ax.set_xticks(pos, [str(v) for v in df[x].to_numpy()[order]], rotation=45, ha="right")
    n_failed = int((df["status"] == "failed").sum()) if "status" in df else 0
    ax.set_xlabel(x)
    ax.set_ylabel("λ̂ (llc_mean)")
    if n_failed:
        ax.set_title(f"{n_failed} checkpoint(s) failed (gaps)", fontsize=9)
    ax.legend(fontsize=8)
    return fig
