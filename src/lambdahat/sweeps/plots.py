"""Figures of sweep tables: the grid as heatmaps (or a line when one axis varies), the LLC over checkpoints."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .. import trust

__all__ = ["flagged", "plot_grid", "plot_llc_over_checkpoints"]

#: The legend of a flagged point (its reasons are in the table's ``status`` column; the whole policy, eleven rules,
#: in :func:`lambdahat.trust.describe`, is too long for a title or a legend).
FLAG_TEXT = "untrusted by the trust policy (see the status column)"
AXES = ("learning_rate", "localization", "nbeta")
LABELS = {"learning_rate": "ε (learning_rate)", "localization": "γ (localization)", "nbeta": "nβ"}


def flagged(df: pd.DataFrame) -> pd.Series:
    """Whether the trust policy (:mod:`lambdahat.trust`) distrusts each row's estimate.

    A row is flagged when its ``status`` is ``"untrusted..."`` or ``"diverged"``, or when the diagnostics in the
    row fail :func:`lambdahat.trust.assess` (``mala_acceptance``, ``rhat``, ``ess``, ``n_diverged``,
    ``llc_mean``, ``llc_stderr``; this covers tables without a ``status`` column, or written before it carried the
    verdict).
    Failed and missing points are not flagged (they have no estimate), nor are missing diagnostics.
    """
    status = df["status"] if "status" in df else pd.Series(None, index=df.index, dtype=object)

    def column(name: str) -> pd.Series:
        if name not in df:
            return pd.Series(math.nan, index=df.index)
        return pd.to_numeric(df[name], errors="coerce").astype(float)

    acc, rhat, ess, n_div = column("mala_acceptance"), column("rhat"), column("ess"), column("n_diverged")
    llc, llc_stderr = column("llc_mean"), column("llc_stderr")
    flag = []
    for i in df.index:
        kind = trust.status_kind(status.loc[i]) if "status" in df else "ok"
        if kind in ("untrusted", "diverged"):
            flag.append(True)
        elif kind == "ok":
            verdict = trust.assess(
                acceptance=acc.loc[i],
                rhat=rhat.loc[i],
                ess=ess.loc[i],
                diverged=n_div.loc[i],
                llc_mean=llc.loc[i],
                llc_stderr=llc_stderr.loc[i],
            )
            flag.append(not verdict.ok)
        else:
            flag.append(False)
    return pd.Series(flag, index=df.index, dtype=bool)


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
    nβ). Every point the trust policy distrusts (:func:`flagged`: status ``untrusted`` or ``diverged``, see
    :mod:`lambdahat.trust`) is marked with a red frame (a red cross on a line plot); failed points are grey.

    Parameters
    ----------
    df:
        The table of :meth:`~lambdahat.sweeps.LLCGridSearch.run_grid_search` (columns ``learning_rate``,
        ``localization``, ``nbeta``, ``llc_mean`` at least).
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
        return _line(df, varying[0] if varying else "learning_rate", value, flags)
    pair = ("learning_rate", "localization")
    rows_axis, cols_axis = pair if set(pair) <= set(varying) else tuple(varying)
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
            kind = trust.status_kind(r.get("status"))
            failed = kind == "failed"
            text = kind if kind in ("failed", "diverged") else _fmt(v) if math.isfinite(v) else "nan"
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
    if axis in ("learning_rate", "nbeta") and (x > 0).all():
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
        Points the trust policy distrusts (:func:`flagged`) carry a red cross; failed checkpoints and those whose
        chains all diverged leave a gap.

    Raises
    ------
    ValueError
        The table is empty, or no checkpoint has a finite λ̂ (every one failed or diverged): there is nothing to
        draw, and an empty figure would look like a result. The message gives the statuses.
    """
    import matplotlib.pyplot as plt

    _check_columns(df, [x, "llc_mean", "llc_std"], "plot_llc_over_checkpoints")
    if df.empty:
        raise ValueError("plot_llc_over_checkpoints: the table is empty.")
    if not np.isfinite(pd.to_numeric(df["llc_mean"], errors="coerce").to_numpy(dtype=float)).any():
        statuses = (
            df["status"].map(trust.status_kind).value_counts().to_dict()
            if "status" in df
            else "no status column"
        )
        raise ValueError(
            f"plot_llc_over_checkpoints: no checkpoint has a finite λ̂ (statuses: {statuses}), so there is nothing "
            "to plot; see the table's 'status', 'error' and 'warnings' columns (every chain diverged: lower "
            "learning_rate)."
        )
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
    bad = flagged(df).to_numpy()[order] & np.isfinite(y)  # a diverged point has no λ̂ to mark: it is a gap
    if bad.any():
        ax.plot(pos[bad], y[bad], "x", color="red", markersize=12, markeredgewidth=2, label=FLAG_TEXT)
    if numeric and np.all(pos == np.round(pos)):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not numeric:
        ax.set_xticks(pos, [str(v) for v in df[x].to_numpy()[order]], rotation=45, ha="right")
    kinds = df["status"].map(trust.status_kind) if "status" in df else pd.Series(dtype=object)
    n_failed, n_diverged = int((kinds == "failed").sum()), int((kinds == "diverged").sum())
    ax.set_xlabel(x)
    ax.set_ylabel("λ̂ (llc_mean)")
    gaps = [f"{n} checkpoint(s) {what}" for n, what in ((n_failed, "failed"), (n_diverged, "diverged")) if n]
    if gaps:
        ax.set_title(" and ".join(gaps) + " (gaps)", fontsize=9)
    ax.legend(fontsize=8)
    return fig
