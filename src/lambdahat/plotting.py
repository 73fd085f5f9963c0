"""Figures of one LLC run: traces per chain, and the sampler's diagnostics.

Every function takes an :class:`~lambdahat.LLCResult`, draws on the given ``ax`` / ``axes`` when passed (and
returns their figure) or on a new :class:`matplotlib.figure.Figure` otherwise. Figures are built without
``pyplot``: nothing is shown, no global figure list grows, and any backend (Agg included) can save them with
``fig.savefig(path)``. In a notebook, display the returned figure.

Chains that diverged are drawn dashed in red, only up to the draw before their divergence, and named in the
legend; the mean ± std band and the headline numbers use the chains that did not diverge, as
:attr:`~lambdahat.LLCResult.llc_mean` does.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .result import LLCResult
from .trust import MIN_ACCEPTANCE, acceptance_kind

__all__ = ["CHAIN_COLORS", "DIVERGED_STYLE", "plot_diagnostics", "plot_trace"]

#: Line style of a diverged chain.
DIVERGED_STYLE = dict(color="tab:red", linestyle="--", linewidth=1.2, alpha=0.9)
_CHAIN_STYLE = dict(linewidth=0.7, alpha=0.55)
#: Colours of the kept chains: the tab10 cycle without its red, which marks divergence.
CHAIN_COLORS = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:gray",
    "tab:olive",
    "tab:cyan",
)
_MEAN_STYLE = dict(color="black", linewidth=1.8)
_BAND_STYLE = dict(color="tab:blue", alpha=0.2, linewidth=0)
#: The reference line of the acceptance panel: the trust policy's least mean acceptance
#: (:data:`lambdahat.trust.MIN_ACCEPTANCE`).
TARGET_ACCEPTANCE = MIN_ACCEPTANCE


def _check_result(result, who: str) -> LLCResult:
    if not isinstance(result, LLCResult):
        raise TypeError(
            f"{who}: expected an LLCResult (from LLCEstimator.run, or LLCEstimator.result after estimate_llc); "
            f"got {type(result).__name__}."
        )
    return result


def _draw_steps(result: LLCResult) -> np.ndarray:
    """Step index of every draw (burn-in + k · steps_bw_draws), or the draw index when the settings lack them."""
    n = result.losses.shape[1]
    burnin = result.settings.get("burnin_steps")
    every = result.settings.get("steps_bw_draws")
    if isinstance(burnin, int) and isinstance(every, int):
        return burnin + every * np.arange(n)
    return np.arange(n)


def _x_label(result: LLCResult) -> str:
    return "step" if "burnin_steps" in result.settings else "draw"


def _masked(values: torch.Tensor, result: LLCResult, x: np.ndarray) -> np.ndarray:
    """``[chains, draws]`` as float64 numpy, NaN from each diverged chain's divergence step on."""
    arr = values.detach().to(torch.float64).cpu().numpy().copy()
    for c in np.flatnonzero(result.diverged.numpy()):
        step = int(result.divergence_step[c])
        if step >= 0 and "burnin_steps" in result.settings:
            arr[c, x >= step] = np.nan
        else:
            arr[c, :] = np.where(np.isfinite(arr[c]), arr[c], np.nan)
    arr[~np.isfinite(arr)] = np.nan
    return arr


def _new_axes(n: int, who: str, ax, figsize) -> tuple[Figure, list[Axes]]:
    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        if n == 1:
            return fig, [fig.subplots()]
        return fig, list(np.asarray(fig.subplots(2, 2)).ravel())
    axes = [ax] if isinstance(ax, Axes) else list(np.asarray(ax, dtype=object).ravel())
    if len(axes) != n or not all(isinstance(a, Axes) for a in axes):
        raise ValueError(f"{who}: expected {'one Axes' if n == 1 else f'{n} Axes'} to draw on; got {ax!r}.")
    return axes[0].figure, axes


def _chains(ax: Axes, x: np.ndarray, values: np.ndarray, result: LLCResult, label: str) -> None:
    """One thin line per chain; diverged chains dashed red and named in the legend."""
    diverged = result.diverged.numpy()
    first = True
    for c in range(values.shape[0]):
        if diverged[c]:
            step = int(result.divergence_step[c])
            ax.plot(x, values[c], label=f"chain {c} diverged (step {step})", **DIVERGED_STYLE)
        else:
            color = CHAIN_COLORS[c % len(CHAIN_COLORS)]
            ax.plot(x, values[c], label=label if first else "_nolegend_", color=color, **_CHAIN_STYLE)
            first = False


def _limit_to_kept(ax: Axes, values: np.ndarray, result: LLCResult, *extra: float) -> None:
    """Scale the y axis to the kept chains (and ``extra`` values), so that a diverged chain's last, exploding
    values run off the plot instead of flattening everything else. Nothing to do without diverged chains."""
    diverged = result.diverged.numpy()
    if not diverged.any() or diverged.all():
        return
    kept = values[~diverged]
    finite = np.concatenate([kept[np.isfinite(kept)], np.asarray([e for e in extra if np.isfinite(e)])])
    if finite.size == 0:
        return
    lo, hi = float(finite.min()), float(finite.max())
    pad = 0.08 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1e-12)
    ax.set_ylim(lo - pad, hi + pad)


def _kept_mean_std(values: np.ndarray, result: LLCResult) -> tuple[np.ndarray, np.ndarray, int]:
    kept = values[~result.diverged.numpy()]
    if len(kept) == 0:
        nan = np.full(values.shape[1], np.nan)
        return nan, nan, 0
    mean = np.nanmean(kept, axis=0) if np.isfinite(kept).any() else np.full(values.shape[1], np.nan)
    std = np.nanstd(kept, axis=0, ddof=1) if len(kept) > 1 else np.zeros(values.shape[1])
    return mean, std, len(kept)


def _headline(result: LLCResult) -> str:
    kept = int((~result.diverged).sum())
    if kept == 0:
        return "λ̂ undefined: every chain diverged"
    se = result.llc_stderr
    se_txt = f" ± {se:.2g} (s.e.)" if math.isfinite(se) else ""
    trust_txt = "" if result.status == "ok" else f" ({result.status})"
    return f"λ̂ = {result.llc_mean:.4g}{se_txt}, {kept}/{len(result.diverged)} chains{trust_txt}"


def _acceptance_kind(result: LLCResult) -> str:
    """The result's acceptance kind; a result relabelled as SGNHT (no acceptance) counts as such."""
    by_sampler = acceptance_kind(result.settings.get("sampler"))
    return "not available" if by_sampler == "not available" else result.acceptance_kind


def plot_trace(result: LLCResult, kind: str = "llc", ax: Axes | None = None) -> Figure:
    """Per-chain traces over the draws, with the across-chain mean ± std band.

    Parameters
    ----------
    result:
        An :class:`~lambdahat.LLCResult`.
    kind:
        ``"llc"`` (default): the running estimate ``llc_trace`` (``nβ`` × (cumulative mean loss − ``L0``)) of
        every chain; ``"loss"``: the minibatch loss of every draw, with ``L0`` as a dotted line.
    ax:
        Axes to draw on (default: a new figure).

    Returns
    -------
    matplotlib.figure.Figure
        One thin line per chain (diverged chains dashed red, named in the legend), the mean over the kept chains
        (black) and ± one standard deviation across them (band); the title gives λ̂ ± its standard error.

    Examples
    --------
    >>> import torch, torch.nn.functional as F
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from lambdahat import LLCEstimator
    >>> x = torch.randn(64, 3); y = x.sum(1, keepdim=True)
    >>> result = LLCEstimator(draws=20, chains=2, burnin_steps=5, learning_rate=1e-4).run(
    ...     torch.nn.Linear(3, 1), DataLoader(TensorDataset(x, y), batch_size=32), criterion_fn=F.mse_loss,
    ...     seed=0, compile=False, show_progress=False, warn=False)
    >>> fig = plot_trace(result)
    >>> len(fig.axes[0].lines)  # two chains and the mean
    3
    """
    _check_result(result, "plot_trace")
    if kind not in ("llc", "loss"):
        raise ValueError(f"plot_trace: kind must be 'llc' or 'loss'; got {kind!r}.")
    fig, (axis,) = _new_axes(1, "plot_trace", ax, (7, 4))
    x = _draw_steps(result)
    values = _masked(result.llc_trace if kind == "llc" else result.losses, result, x)
    _chains(axis, x, values, result, "chains")
    mean, std, kept = _kept_mean_std(values, result)
    if kept:
        axis.fill_between(x, mean - std, mean + std, label="± 1 std across chains", **_BAND_STYLE)
        axis.plot(x, mean, label=f"mean of {kept} chains", **_MEAN_STYLE)
    if kind == "loss":
        axis.axhline(result.init_loss, color="grey", linestyle=":", linewidth=1, label="L0 (loss at w*)")
    extra = [*(mean - std), *(mean + std), *([result.init_loss] if kind == "loss" else [])]
    _limit_to_kept(axis, values, result, *extra)
    axis.set_xlabel(_x_label(result))
    axis.set_ylabel("running λ̂ (llc_trace)" if kind == "llc" else "minibatch loss")
    axis.set_title(_headline(result))
    axis.legend(loc="best", fontsize="small")
    return fig


def _summary_text(result: LLCResult, width: int = 48) -> str:
    div = np.flatnonzero(result.diverged.numpy()).tolist()
    kind = _acceptance_kind(result)
    if kind == "not available":
        accept = f"MALA acceptance: not available for {result.settings.get('sampler')} (not checked)"
    else:
        accept = f"MALA acceptance (mean): {result.mala_acceptance:.3f} ({kind})"
    lines = [
        _headline(result),
        f"ε = {result.learning_rate:.3g}, γ = {result.localization:.3g}, nβ = {result.nbeta:.4g}",
        accept,
        f"R-hat: {result.rhat:.3f}    ESS: {result.ess:.1f}",
        f"trend_z: {result.trend_z:+.2f}    distance_trend_z: {result.distance_trend_z:+.2f}",
        f"diverged chains: {div if div else 'none'}",
    ]
    lines.extend(textwrap.wrap(f"status: {result.status_line}", width, subsequent_indent="  "))
    if result.warnings:
        lines.append("warnings:")
        for note in result.warnings:
            lines.extend(textwrap.wrap(note, width, initial_indent="- ", subsequent_indent="  "))
    else:
        lines.append("warnings: none")
    if result.trust_notes:
        lines.append("notes:")
        for note in result.trust_notes:
            lines.extend(textwrap.wrap(note, width, initial_indent="- ", subsequent_indent="  "))
    return "\n".join(lines)


def plot_diagnostics(result: LLCResult, axes: Sequence[Axes] | None = None) -> Figure:
    """The sampler's diagnostics in four panels.

    Panels: (1) the MALA acceptance of every draw, averaged over the kept chains, with the trust policy's least
    mean acceptance :data:`lambdahat.trust.MIN_ACCEPTANCE` as reference line; (2) the distance ``||w − w*||`` of
    every chain; (3) the norm of the minibatch loss gradient of every chain; (4) a text box with λ̂, ε, γ, nβ, the
    mean MALA acceptance and how it was obtained, R-hat, ESS, the trend statistics of the loss and the distance,
    the diverged chains, the result's status (:attr:`~lambdahat.LLCResult.status_line`), its warnings and the
    checks that could not be made. Diverged chains are dashed red in panels 2 and 3; where chains diverged, the y axes are
    scaled to the kept chains, so a diverged chain's exploding last values run off the panel.

    Parameters
    ----------
    result:
        An :class:`~lambdahat.LLCResult`.
    axes:
        Four axes to draw on, in the order above (default: a new 2 × 2 figure).

    Returns
    -------
    matplotlib.figure.Figure
    """
    _check_result(result, "plot_diagnostics")
    fig, (ax_acc, ax_dist, ax_grad, ax_text) = _new_axes(4, "plot_diagnostics", axes, (11, 7.5))
    x = _draw_steps(result)
    xlabel = _x_label(result)

    accept = _masked(result.mala_acceptance_trace, result, x)
    kept = accept[~result.diverged.numpy()]
    if len(kept) and np.isfinite(kept).any():
        with np.errstate(all="ignore"):
            per_draw = np.array([np.nanmean(col) if np.isfinite(col).any() else np.nan for col in kept.T])
        ax_acc.plot(x, per_draw, color="tab:blue", linewidth=1.2, label="mean over kept chains")
        ax_acc.set_ylim(-0.02, 1.02)
    else:
        if not len(kept):
            reason = "every chain diverged"
        elif _acceptance_kind(result) == "not available":
            sampler = result.settings.get("sampler")
            reason = f"not defined for {sampler}\n(no Metropolis–Hastings counterpart; not checked)"
        else:
            reason = "no draw has a defined value\n(a chain's first step has none; not checked)"
        ax_acc.text(
            0.5, 0.5, f"MALA acceptance: {reason}", ha="center", va="center", transform=ax_acc.transAxes
        )
    ax_acc.axhline(
        TARGET_ACCEPTANCE,
        color="tab:green",
        linestyle="--",
        linewidth=1,
        label=f"{TARGET_ACCEPTANCE:g} (least trusted mean)",
    )
    ax_acc.set_title("MALA acceptance per draw")
    ax_acc.set_xlabel(xlabel)
    ax_acc.set_ylabel("acceptance probability")
    ax_acc.legend(loc="lower right", fontsize="small")

    distance = _masked(result.distance, result, x)
    _chains(ax_dist, x, distance, result, "chains")
    _limit_to_kept(ax_dist, distance, result, 0.0)
    ax_dist.set_title("distance ||w − w*|| per chain")
    ax_dist.set_xlabel(xlabel)
    ax_dist.set_ylabel("||w − w*||")
    ax_dist.legend(loc="best", fontsize="small")

    grad = _masked(result.grad_norm, result, x)
    _chains(ax_grad, x, grad, result, "chains")
    _limit_to_kept(ax_grad, grad, result, 0.0)
    ax_grad.set_title("gradient norm ||∇L_B(w)|| per chain")
    ax_grad.set_xlabel(xlabel)
    ax_grad.set_ylabel("||∇L_B||")
    ax_grad.legend(loc="best", fontsize="small")

    ax_text.axis("off")
    ax_text.text(
        0.02,
        0.98,
        _summary_text(result),
        ha="left",
        va="top",
        fontsize="small",
        transform=ax_text.transAxes,
        bbox=dict(boxstyle="round", facecolor="whitesmoke", edgecolor="grey"),
    )
    ax_text.set_title("summary")
    return fig
