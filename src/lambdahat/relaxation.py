"""An automatic burn-in: ``burnin_steps="auto"`` runs the chains until they have relaxed, with a cap.

Chains started at ``w*`` approach the stationary value of the mean loss from below; chains started from a draw of
the localizing Gaussian ``N(w*, I/γ)`` approach it from above (the start check of :mod:`lambdahat.accuracy`). Their
gap, relative to λ̂,

.. math::

    b_\\mathrm{start}(B) = \\frac{\\hat\\lambda_{w^*}(B) - \\hat\\lambda_\\mathrm{dispersed}(B)}{\\hat\\lambda_{w^*}(B)},

measured after ``B`` burn-in steps, brackets the stationary λ̂, so ``|b| + SE`` bounds how far the chains from
``w*`` still are from it. It is judged on λ̂ itself, so directions that only the localization moves (they relax in
about ``2/(εγ)`` steps and hardly move the loss) do not hold the burn-in back, while slow singular directions that
bias λ̂ do. The two groups are driven by the same noise and batches, chain by chain (the check pairs them), so
where the potential contracts their paths merge: a gap of zero with a vanishing standard error means each chain
has forgotten where it started, which is what relaxation is (a coupling argument).

The search: ``B`` starts at :func:`first_burnin` (``max(MIN_BURNIN, draws · steps_bw_draws)``: a chain is at
least as old as the window its draws are read over) and doubles while ``|b| + SE > MAX_START_GAP`` and ``2B`` is
within the cap (``max_burnin_steps``, default :data:`CAP_DOUBLINGS` doublings). Every attempt is a fresh run with
the same seed (the result depends on the seed and the settings only), so the search costs at most about twice its
last attempt, each attempt being the main run and its start companion. The last attempt is the answer: relaxed,
or at the cap with its measured gap, which the trust policy's start rule then flags.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import LLCConfig
from .result import LLCResult

__all__ = [
    "CAP_DOUBLINGS",
    "MAX_START_GAP",
    "MIN_BURNIN",
    "RELAXATION_RUNS",
    "BurninSearch",
    "burnin_cap",
    "first_burnin",
    "search_burnin",
    "start_gap",
]

#: Largest ``|b| + SE`` of the start gap at which the chains count as relaxed: half the trust policy's limit on the
#: start check (10 %), as the step search aims at half its own, so that the relaxation error leaves room for the
#: other biases within the 10 % the policy aims at.
MAX_START_GAP = 0.05
#: The first burn-in tried is never shorter than this many steps.
MIN_BURNIN = 100
#: Default cap: the first burn-in doubled this many times (32 times as long).
CAP_DOUBLINGS = 5
#: What the search is planned to cost beyond its last attempt, in main runs (two earlier attempts of a main run
#: and its start companion, each at most half as long as the next): a fact of the execution plan
#: (:func:`lambdahat.estimator.planned_call_runs`).
RELAXATION_RUNS = 3.0


def first_burnin(config: LLCConfig) -> int:
    """The first burn-in ``burnin_steps="auto"`` tries: ``max(MIN_BURNIN, draws · steps_bw_draws)``.

    Examples
    --------
    >>> first_burnin(LLCConfig(burnin_steps="auto")), first_burnin(LLCConfig(burnin_steps="auto", draws=20))
    (200, 100)
    """
    return max(MIN_BURNIN, config.draws * config.steps_bw_draws)


def burnin_cap(config: LLCConfig) -> int:
    """The longest burn-in the search may choose: ``max_burnin_steps``, or ``2**CAP_DOUBLINGS`` times the first.

    Examples
    --------
    >>> burnin_cap(LLCConfig(burnin_steps="auto")), burnin_cap(LLCConfig(burnin_steps="auto", max_burnin_steps=500))
    (6400, 500)
    """
    if config.max_burnin_steps is not None:
        return int(config.max_burnin_steps)
    return first_burnin(config) * 2**CAP_DOUBLINGS


def start_gap(result: LLCResult) -> tuple[float, float]:
    """``(b, SE)`` of the start check recorded on ``result`` (NaN when it did not run or was undefined)."""
    check = (result.settings.get("accuracy") or {}).get("start")
    if not check:
        return math.nan, math.nan
    bias, se = check.get("bias"), check.get("bias_stderr")
    return (math.nan if bias is None else float(bias)), (math.nan if se is None else float(se))


@dataclass(frozen=True)
class BurninSearch:
    """What ``burnin_steps="auto"`` tried and chose (recorded as ``result.settings["burnin_search"]``).

    Attributes
    ----------
    burnin_steps:
        The burn-in of the returned run.
    relaxed:
        Whether its start gap was within ``max_gap``.
    tried, gaps, gap_stderrs, llc_means:
        Each attempt's burn-in, start gap ``b``, its standard error and λ̂.
    cap, max_gap:
        The largest burn-in allowed and the gap the search aimed at.
    reason:
        One sentence: why the search stopped where it did.
    """

    burnin_steps: int
    relaxed: bool
    tried: tuple[int, ...]
    gaps: tuple[float, ...]
    gap_stderrs: tuple[float, ...]
    llc_means: tuple[float, ...]
    cap: int
    max_gap: float
    reason: str

    def summary(self) -> dict[str, Any]:
        """JSON-able fields."""
        return {
            "burnin_steps": self.burnin_steps,
            "relaxed": self.relaxed,
            "tried": list(self.tried),
            "gaps": list(self.gaps),
            "gap_stderrs": list(self.gap_stderrs),
            "llc_means": list(self.llc_means),
            "cap": self.cap,
            "max_gap": self.max_gap,
            "reason": self.reason,
        }


def search_burnin(
    config: LLCConfig,
    attempt: Callable[[int], LLCResult],
    *,
    max_gap: float = MAX_START_GAP,
) -> tuple[LLCResult, BurninSearch]:
    """Double the burn-in until the start gap of ``attempt(burnin)`` is within ``max_gap``, or the cap is reached.

    Parameters
    ----------
    config:
        The settings, ``burnin_steps="auto"`` (they give the first burn-in and the cap).
    attempt:
        Runs the chains with the given burn-in and returns a result with its start check in
        ``settings["accuracy"]`` (:func:`lambdahat.sample` runs the main chains and the start companion).
    max_gap:
        Largest ``|b| + SE`` of a relaxed run.

    Returns
    -------
    (LLCResult, BurninSearch)
        The last attempt and the record of the search.

    Examples
    --------
    >>> import types
    >>> gaps = {200: -0.3, 400: -0.12, 800: -0.02}
    >>> fake = lambda b: types.SimpleNamespace(  # a stand-in whose start gap shrinks with the burn-in
    ...     llc_mean=1.0, settings={"accuracy": {"start": {"bias": gaps[b], "bias_stderr": 0.01}}})
    >>> result, search = search_burnin(LLCConfig(burnin_steps="auto"), fake)
    >>> search.tried, search.burnin_steps, search.relaxed
    ((200, 400, 800), 800, True)
    """
    if not (isinstance(max_gap, int | float) and 0 < max_gap < 1):
        raise ValueError(f"search_burnin: max_gap must be a number in (0, 1); got {max_gap!r}.")
    burnin, cap = first_burnin(config), burnin_cap(config)
    burnin = min(burnin, cap)
    tried: list[int] = []
    gaps: list[float] = []
    stderrs: list[float] = []
    means: list[float] = []
    while True:
        result = attempt(burnin)
        bias, se = start_gap(result)
        tried.append(burnin)
        gaps.append(bias)
        stderrs.append(se)
        means.append(float(result.llc_mean))
        measured = math.isfinite(bias) and math.isfinite(se)
        if measured and abs(bias) + se <= max_gap:
            reason = (
                f"relaxed after {burnin} burn-in steps: chains from w* and from N(w*, I/γ) agree within "
                f"{100 * abs(bias):.1f} % ± {100 * se:.1f} % of λ̂ (limit {100 * max_gap:g} %)"
            )
            relaxed = True
            break
        if not measured:
            reason = (
                f"the start gap could not be measured after {burnin} burn-in steps (diverged chains or λ̂ = 0); "
                "a longer burn-in would not tell more"
            )
            relaxed = False
            break
        if 2 * burnin > cap:
            reason = (
                f"not relaxed at the cap of {cap} burn-in steps: chains from w* and from N(w*, I/γ) still differ "
                f"by {100 * bias:+.1f} % ± {100 * se:.1f} % of λ̂; raise max_burnin_steps, or learning_rate if the "
                "step check allows it"
            )
            relaxed = False
            break
        burnin *= 2
    search = BurninSearch(
        burnin_steps=burnin,
        relaxed=relaxed,
        tried=tuple(tried),
        gaps=tuple(gaps),
        gap_stderrs=tuple(stderrs),
        llc_means=tuple(means),
        cap=cap,
        max_gap=float(max_gap),
        reason=reason,
    )
    return result, search
