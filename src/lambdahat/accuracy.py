"""How far λ̂ is from what a better run would give: companion runs that each change one setting.

An LLC estimate carries three biases, and each can be measured at any dimension by running the same chains once
more with one setting improved (REFERENCE.md §5):

* **step** (``"step"``): SGLD's finite step heats the draws, by ``1/(1 − εκ/4)`` along a quadratic direction of
  curvature κ, more along singular ones. The bias is first order in ε, so λ̂ at ``2ε`` run for the same sampled time
  ``ε × steps`` (half the steps) estimates it: ``b_step = (λ̂(2ε) − λ̂(ε)) / λ̂(ε)``.
* **localization** (``"localization"``): γ shrinks λ̂, along singular directions by more than the quadratic
  share ``γ/(nβh + γ)`` can tell. λ̂ at ``γ/2`` against λ̂ at γ measures it, extrapolated to ``γ → 0`` to first
  order as the step check extrapolates to ``ε → 0``: ``b_loc = 2 (λ̂(γ) − λ̂(γ/2)) / λ̂`` (negative when γ pulls
  λ̂ down; :data:`LOCALIZATION_EXTRAPOLATION`).
* **relaxation** (``"start"``): chains started at ``w*`` approach ``E[L]`` from below. Chains started from a draw
  of the localizing Gaussian ``N(w*, I/γ)``, wider than the posterior along every convex direction, approach it from
  above (Gelman & Rubin's over-dispersed starts); the gap between the two groups bounds how far the chains from
  ``w*`` still are from their stationary value: ``b_start = (λ̂_{w*} − λ̂_{dispersed}) / λ̂``. When more than a
  quarter of the dispersed chains diverge (far from ``w*`` the curvature can exceed what the step takes), the
  start's scale is divided by 4 and the companion run again (:data:`START_RETRIES`).

The step companion runs at ``2ε`` for half the steps (the same sampled time), driven by the coupled noise and the
batches of the main run (:class:`lambdahat.chains.StepNoise` with ``coarsen=2``: each coarse step takes the sum of
two fine steps' noise over √2 and one of their two batches, chosen so that it sees every batch of the loader,
:func:`lambdahat.chains.coarse_pick`), so both follow one Brownian path on the same data. The
localization and start companions run at ε for the main run's steps (at ``2ε`` the step bias of a chain that
spreads further would leak into their differences: on a deep linear network, d = 1200, the localization check read
−21 % at 2ε against −9 % at ε). All companions use the main run's seed, so chain ``c`` of each sees the same data
order and noise stream; the standard error of a difference is that of the per-chain differences (paired by chain).
Their cost is ``0.5 + 1 + 1`` main runs with as many chains (``chains=`` fewer).

A check passes when its bias, with one standard error added to its size (``|b| + SE``), is at most its limit in
:data:`MAX_CHECK_BIAS` (10 % each, the accuracy the policy aims at; the gap of the start check is a bound on the
main run's relaxation error, not an estimate of it); the trust policy (:mod:`lambdahat.trust`) reads
the result's checks from ``result.settings["accuracy"]``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from .config import LLCConfig
from .problem import Problem, run_chains
from .result import LLCResult
from .trust import MAX_CHECK_BIAS

__all__ = [
    "CHECKS",
    "CHECK_RUNS",
    "LOCALIZATION_EXTRAPOLATION",
    "MAX_CHECK_BIAS",
    "START_RETRIES",
    "AccuracyCheck",
    "check_accuracy",
    "companion_config",
    "paired_difference",
    "with_accuracy",
]

#: The checks, in the order they run.
CHECKS = ("step", "localization", "start")
#: What each check costs, in main runs of as many chains (the step companion samples the same time in half the
#: steps): a fact of the execution plan (:mod:`lambdahat.plan`), which weighs all the runs a call makes.
CHECK_RUNS = {"step": 0.5, "localization": 1.0, "start": 1.0}
#: The localization check's change on halving γ, times this, is its bias: the first-order (linear in γ) extrapolation
#: of λ̂ to γ → 0. The halving alone read −5 to −7 % on a rank-2 deep linear network at γ = 10 whose λ̂ was 11-14 %
#: below λ (benchmarks/RESULTS.md, the trust policy's confusion matrix).
LOCALIZATION_EXTRAPOLATION = 2.0
#: The over-dispersed starts are drawn from ``N(w*, I/γ)``; when more than a quarter of those chains diverge (the
#: curvature far from w* can exceed what the step can take: a 4-layer deep linear network, d = 1200, γ = 10), the
#: scale is divided by 4 and the companion run again, at most this many times.
START_RETRIES = 2


@dataclasses.dataclass(frozen=True)
class AccuracyCheck:
    """One companion run and the bias of the main λ̂ it measures.

    Attributes
    ----------
    name:
        ``"step"``, ``"localization"`` or ``"start"`` (:data:`CHECKS`).
    change:
        What the companion changed, in words.
    llc_mean, reference_llc:
        λ̂ of the companion and of the run it is compared with.
    bias, bias_stderr:
        The estimated relative bias of the main λ̂ from this source (signed: positive when the main λ̂ reads
        high) and its standard error across the paired chains.
    chains:
        Chains in the comparison (kept in both runs).
    """

    name: str
    change: str
    llc_mean: float
    reference_llc: float
    bias: float
    bias_stderr: float
    chains: int

    @property
    def bound(self) -> float:
        """``|bias| + bias_stderr``, what the trust policy compares with :data:`MAX_CHECK_BIAS` (NaN if
        undefined)."""
        return abs(self.bias) + self.bias_stderr

    @property
    def passed(self) -> bool:
        """``bound <= MAX_CHECK_BIAS[name]`` (False when undefined)."""
        return bool(self.bound <= MAX_CHECK_BIAS[self.name])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (non-finite numbers as ``None``)."""
        out: dict[str, Any] = {}
        for key, value in dataclasses.asdict(self).items():
            out[key] = None if isinstance(value, float) and not math.isfinite(value) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AccuracyCheck:
        """Inverse of :meth:`to_dict`."""
        nums = ("llc_mean", "reference_llc", "bias", "bias_stderr")
        return cls(**{k: (math.nan if k in nums and v is None else v) for k, v in data.items()})


def paired_difference(result: LLCResult, reference: LLCResult, scale: float) -> tuple[float, float, int]:
    """``(mean, stderr, chains)`` of ``(llcs[c] − reference.llcs[c]) / scale`` over the chains ``c`` that both runs
    have and kept (the first ``min`` chains of each; paired because both used the same seed).

    Examples
    --------
    >>> import torch
    >>> from types import SimpleNamespace as R
    >>> a = R(llcs=torch.tensor([2.0, 3.0, 4.0]), diverged=torch.tensor([False, False, False]))
    >>> b = R(llcs=torch.tensor([1.0, 2.0, 2.0]), diverged=torch.tensor([False, False, True]))
    >>> paired_difference(a, b, 2.0)
    (0.5, 0.0, 2)
    """
    n = min(len(result.llcs), len(reference.llcs))
    kept = ~result.diverged[:n] & ~reference.diverged[:n]
    diff = (result.llcs[:n].double() - reference.llcs[:n].double())[kept] / scale
    count = int(kept.sum())
    if count == 0 or not math.isfinite(scale) or scale == 0:
        return math.nan, math.nan, count
    se = float(diff.std() / math.sqrt(count)) if count > 1 else math.nan
    return float(diff.mean()), se, count


def companion_config(config: LLCConfig, chains: int, **changes: Any) -> LLCConfig:
    """``config`` at twice its step for the same sampled time (half the burn-in, and half the draws or half the
    steps between draws), with ``chains`` chains and ``changes`` applied.

    Examples
    --------
    >>> c = companion_config(LLCConfig(learning_rate=1e-3, burnin_steps=101, draws=200, chains=8), 4)
    >>> c.learning_rate, c.burnin_steps, c.draws, c.steps_bw_draws, c.chains
    (0.002, 51, 100, 1, 4)
    """
    spacing = config.steps_bw_draws
    draws = config.draws if spacing >= 2 else max(2, math.ceil(config.draws / 2))
    return config.replace(
        learning_rate=2.0 * float(config.learning_rate),
        burnin_steps=math.ceil(config.burnin_steps / 2),
        draws=draws,
        steps_bw_draws=max(1, spacing // 2),
        chains=chains,
        **changes,
    )


def check_accuracy(
    problem: Problem,
    config: LLCConfig,
    result: LLCResult,
    *,
    checks: Sequence[str] = CHECKS,
    chains: int | None = None,
    chain_batch: int | str | None = None,
    show_progress: bool = False,
    planned_runs: int | None = None,
) -> dict[str, AccuracyCheck]:
    """Run the companions of ``result`` (the run of ``config`` on ``problem``) and measure its three biases.

    Parameters
    ----------
    problem, config, result:
        The main run: its problem, its settings (numeric ``learning_rate``) and its result (whose seed the
        companions reuse).
    checks:
        Which of :data:`CHECKS` to run. ``"localization"`` and ``"start"`` need ``localization > 0`` and are
        skipped without it.
    chains:
        Chains per companion (default: the main run's).
    chain_batch, show_progress, planned_runs:
        As for :func:`lambdahat.problem.run_chains`.

    Returns
    -------
    dict
        ``{name: AccuracyCheck}`` for the checks that ran.
    """
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        raise ValueError(f"check_accuracy: unknown checks {unknown}; choose from {list(CHECKS)}.")
    if config.learning_rate == "auto":
        raise ValueError(
            "check_accuracy: config.learning_rate must be the number the main run used, not 'auto'."
        )
    n = config.chains if chains is None else int(chains)
    if n < 2:
        raise ValueError(f"check_accuracy: chains must be >= 2 (a standard error needs two); got {n}.")
    gamma = float(config.localization)
    scale = abs(result.llc_mean) if math.isfinite(result.llc_mean) and result.llc_mean != 0 else math.nan

    def run(cfg: LLCConfig, start_scale: float = 0.0, noise_coarsening: int = 1) -> LLCResult:
        return run_chains(
            problem,
            cfg,
            seed=result.seed,
            chain_batch=chain_batch,
            show_progress=show_progress,
            warn=False,
            start_scale=start_scale,
            noise_coarsening=noise_coarsening,
            planned_runs=planned_runs,
        )

    out: dict[str, AccuracyCheck] = {}
    same = config.replace(chains=n)
    if "step" in checks:
        stepped = run(companion_config(config, n), noise_coarsening=2)
        mean, se, kept = paired_difference(stepped, result, scale)
        out["step"] = AccuracyCheck(
            "step", "learning_rate x2 for half the steps", stepped.llc_mean, result.llc_mean, mean, se, kept
        )
    if gamma > 0 and "localization" in checks:
        loosened = run(same.replace(localization=gamma / 2))
        mean, se, kept = paired_difference(result, loosened, scale / LOCALIZATION_EXTRAPOLATION)
        out["localization"] = AccuracyCheck(
            "localization",
            "localization /2, extrapolated to 0",
            loosened.llc_mean,
            result.llc_mean,
            mean,
            se,
            kept,
        )
    if gamma > 0 and "start" in checks:
        start = 1.0 / math.sqrt(gamma)
        for _ in range(START_RETRIES + 1):
            dispersed = run(same, start_scale=start)
            if int(dispersed.diverged.sum()) * 4 <= n:
                break
            start /= 4
        mean, se, kept = paired_difference(result, dispersed, scale)
        out["start"] = AccuracyCheck(
            "start",
            f"started from w* + {start:.3g} N(0, I)",
            dispersed.llc_mean,
            result.llc_mean,
            mean,
            se,
            kept,
        )
    return out


def with_accuracy(result: LLCResult, checks: dict[str, AccuracyCheck], warn: bool = True) -> LLCResult:
    """``result`` with ``checks`` recorded in ``settings["accuracy"]`` and judged again by the trust policy."""
    settings = {**result.settings, "accuracy": {name: c.to_dict() for name, c in checks.items()}}
    return result.rejudged(settings, warn=warn)
