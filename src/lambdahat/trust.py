"""The trust policy: when to believe an LLC estimate, in one table of thresholds.

Every answer to "can I trust this λ̂?" in the package comes from here: the estimator's warnings
(:attr:`~lambdahat.LLCResult.warnings`), the result's :attr:`~lambdahat.LLCResult.status`, the ``status`` column of
the sweep tables, the red frames of :func:`~lambdahat.sweeps.plot_grid`, the reference line of
:func:`~lambdahat.plot_diagnostics` and the modular-addition summaries. The statistics themselves (R-hat, ESS, the
trend test, divergence) live in :mod:`lambdahat.diagnostics`; this module only judges them.

An estimate is

* ``"ok"`` when every check that could be made passed;
* ``"untrusted"`` when one failed: mean MALA acceptance below :data:`MIN_ACCEPTANCE`, R-hat above
  :data:`MAX_RHAT`, bulk ESS below :data:`MIN_ESS`, a loss trace still drifting (:data:`TREND_P_VALUE`), a distance
  ``||w − w*||`` still growing (:data:`DISTANCE_P_VALUE`), a standard error of λ̂ above
  :data:`MAX_RELATIVE_STDERR` of it, some chains diverged, or a negative λ̂;
* ``"diverged"`` when every chain diverged (there is no estimate).

Sweeps add ``"failed"`` for a point that raised. A statistic that is undefined (NaN: one chain, too few draws, a
sampler without acceptance) is not a failed check; the verdict's :attr:`Verdict.notes` say which checks were not
made and why, so a NaN is never silent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ACCEPTANCE_KINDS",
    "DISTANCE_P_VALUE",
    "MAX_CHECK_BIAS",
    "MAX_RELATIVE_STDERR",
    "MAX_RHAT",
    "MAX_TEMPERATURE_ERROR",
    "MIN_ACCEPTANCE",
    "MIN_DISTANCE_GROWTH",
    "MIN_ESS",
    "RULES",
    "SAMPLER_ACCEPTANCE",
    "STATUSES",
    "TEMPERATURE_Z",
    "TREND_P_VALUE",
    "Evidence",
    "Rule",
    "Verdict",
    "acceptance_kind",
    "assess",
    "describe",
    "status_kind",
    "status_line",
]

#: Largest ``|b| + SE`` of each accuracy check of :mod:`lambdahat.accuracy` (b: the relative change of λ̂ it
#: measured, SE its standard error across the paired chains): 10 %, the accuracy the policy aims at ("trusted" means
#: λ̂ within 10 % of the value the run targets). The step check estimates a bias that vanishes as ε → 0 (first order
#: in ε; the calibration aims lower, at 5 %). The start check's gap brackets the stationary value between chains from
#: below and from above, so it bounds the main run's relaxation error (loosely: on reduced-rank regression with γ = 1
#: the dispersed chains were still 12 % above an accurate λ̂ after 6000 steps). The localization check extrapolates
#: λ̂ to γ → 0 to first order; λ̂ at finite n depends on γ even in a well run chain: on a deep linear network
#: (d = 1200, n = 1e5, ε = 1e-5, 16,000 steps) it fell by 8-9 % per doubling of γ between 5 and 20 (54.9, 50.3,
#: 45.8 against λ = 50), so no γ there passes, and by 25 % from 50 to 100 (27.2). The policy's confusion matrix
#: against closed-form values is in benchmarks/RESULTS.md.
MAX_CHECK_BIAS = {"step": 0.10, "localization": 0.10, "start": 0.10}

#: Largest standard error of λ̂ across chains, relative to ``|λ̂|``, of a trusted estimate: the Monte Carlo error of
#: the estimate itself must fit within the 10 % a trusted estimate claims, as each check's ``|b| + SE`` does. The
#: chains are independent, so ``llc_std / sqrt(chains)`` is a valid standard error whatever the autocorrelation
#: within each chain (it does not rest on an ESS estimate); heads of the language-model demo at 4 chains × 50 draws
#: read 6-26 % (benchmarks/RESULTS.md).
MAX_RELATIVE_STDERR = 0.10

#: Least mean MALA acceptance of a trusted estimate. The finite step of SGLD biases λ̂ upward by about
#: ``1/(1 − εκ/4)`` on curvature κ (exact on a quadratic potential), and the acceptance falls as ``εκ`` grows: on a
#: 4-dimensional Gaussian, acceptance 0.84 already came with a 30 % upward bias of λ̂ and 0.6 with a fourfold one
#: (tests/test_estimator.py). 0.9 is the well-tuned reference of Furman & Lau (2024). It is a proxy for small d:
#: the acceptance of the whole vector multiplies d per-direction ratios, so at a fixed per-direction step bias it
#: falls with d (optimal MALA scaling keeps it only with ε ∝ d^(−1/3)); where the step check of
#: :mod:`lambdahat.accuracy` ran, this rule is reported as a note and the measured bias judges instead.
MIN_ACCEPTANCE = 0.9

#: Largest rank-normalized split R-hat of the loss traces (Vehtari et al. 2021). Above 1.1 the chains disagree
#: about the distribution of the loss, the classic cut-off of Gelman & Rubin; Vehtari et al. advise 1.01 for final
#: inference, which needs far longer chains than an LLC estimate uses, while well-mixed runs of 4 chains × 200 draws
#: measured 1.00-1.04.
MAX_RHAT = 1.1

#: Least bulk effective sample size of the loss traces, over all chains together. Below about 100 the estimates of
#: ESS and R-hat are themselves unreliable (Vehtari et al. 2021, which advises 100 per chain for final inference),
#: and the Monte Carlo error of the mean loss exceeds a tenth of its posterior standard deviation. Measured on
#: well-mixed runs of 4 chains × 200 draws (R-hat ≤ 1.04): 130-950; on runs whose R-hat flagged them: 6-16.
MIN_ESS = 100

#: The loss trace counts as drifting when the two halves of the draws differ at this two-sided significance level
#: (the across-chain t-test :func:`~lambdahat.diagnostics.trend_z`): settled chains are flagged once in a thousand
#: runs.
TREND_P_VALUE = 1e-3

#: The distance ``||w − w*||`` counts as still growing when the same across-chain t-test on its trace of draws has
#: a two-sided p-value below this and a positive sign: the chains have not reached the scale of the localized
#: posterior yet, and λ̂ still depends on the chain length.
DISTANCE_P_VALUE = 1e-3

#: ... and only when it grew by more than this fraction between the two halves of the draws (mean over kept chains
#: of the second half's mean distance over the first half's, minus one). A significant but tiny growth does not
#: move λ̂: on the default modular-addition runs (p = 53, 4 chains × 200 draws after 300 burn-in steps) the
#: distance grew 1.1 % (t ≈ 15) while λ̂ at 1000 and 3000 burn-in steps agreed within its standard error.
MIN_DISTANCE_GROWTH = 0.05

#: The configurational temperature ``T = E[(w − w*)·∇U] / d`` of the draws is exactly 1 under the posterior, for any
#: potential and any sampler (:func:`~lambdahat.samplers.base.virial`). An estimate is untrusted when ``|T − 1|``
#: exceeds this *and* ``TEMPERATURE_Z`` standard errors: SGLD's finite step heats the draws by ``1/(1 − εκ/4)``
#: along a direction of curvature κ, and chains that have not spread to the posterior yet read ``T < 1``.
#: Measured on a 2-layer MLP classifier (n = 1024, batch 64, γ = 100, 4 chains × 200 draws): SGLD at ε = 1e-4,
#: 3e-4, 1e-3 gave T = 0.95, 1.01, 1.03 (λ̂ 1.24, 1.38, 1.58); SGNHT at ε = 1e-4 gave T = 1.30 and twice SGLD's
#: λ̂; ε = 1e-5 (chains not spread) gave T = 0.26. T averages over all directions, so a few badly sampled stiff
#: directions can hide among many flat ones: passing it is necessary, not sufficient.
MAX_TEMPERATURE_ERROR = 0.1
#: ... and the deviation must be this many standard errors (across chains) from 1.
TEMPERATURE_Z = 4.0

#: How a mean acceptance was obtained. ``"gradient estimate"``: the closed-form MALA acceptance of the Langevin
#: step with the potential difference from the trapezoid rule on the gradients (what SGLD and RMSProp-SGLD
#: report on minibatches; exact only on quadratic potentials, see
#: :func:`~lambdahat.samplers.base.langevin_log_accept`); ``"exact"``: from the full-data potential itself (when
#: every step sees the whole data set); ``"not available"``: the sampler's update has no Metropolis–Hastings
#: counterpart (SGNHT), so acceptance is not checked. The same threshold applies to both kinds that are checked.
ACCEPTANCE_KINDS = ("gradient estimate", "exact", "not available")

#: The acceptance kind of each built-in sampler.
SAMPLER_ACCEPTANCE = {
    "sgld": "gradient estimate",
    "rmsprop_sgld": "gradient estimate",
    "sgnht": "not available",
}

#: Values of a verdict's status; ``"failed"`` only in sweep tables (a point that raised).
STATUSES = ("ok", "untrusted", "diverged", "failed")

_KIND_TEXT = {
    "gradient estimate": "estimated from the gradients by the trapezoid rule, exact on quadratic potentials",
    "exact": "computed exactly from the full-data potential",
}


@dataclass(frozen=True)
class Verdict:
    """Whether to trust an estimate, and why.

    Attributes
    ----------
    status:
        ``"ok"``, ``"untrusted"`` or ``"diverged"`` (see :data:`STATUSES`).
    reasons:
        One short phrase per failed check (``"acceptance 0.86 < 0.9"``); empty when ``status == "ok"``.
    advice:
        Plain-language sentences, one per problem, each saying what to change (the result's ``warnings``).
    notes:
        Checks that were not made and why (a NaN statistic, a sampler without acceptance); not warnings.
    """

    status: str
    reasons: tuple[str, ...] = ()
    advice: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """``status == "ok"``."""
        return self.status == "ok"

    @property
    def line(self) -> str:
        """The one-line status of tables (:func:`status_line`)."""
        return status_line(self)


def acceptance_kind(sampler: str | None) -> str:
    """How the MALA acceptance of ``sampler`` is obtained on minibatches (one of :data:`ACCEPTANCE_KINDS`); a run
    records its own kind in ``settings["acceptance_kind"]`` (``"exact"`` on full-batch data), which wins.

    Examples
    --------
    >>> acceptance_kind("sgld"), acceptance_kind("sgnht")
    ('gradient estimate', 'not available')
    """
    return SAMPLER_ACCEPTANCE.get(str(sampler), "gradient estimate")


def _num(value: float, limit: float, above: bool, digits: int = 2) -> str:
    """``value`` with enough decimals that it reads as lying on its side of ``limit`` (0.8999 is not "0.90")."""
    for d in range(digits, digits + 5):
        text = f"{value:.{d}f}"
        if (float(text) > limit) if above else (float(text) < limit):
            return text
    return f"{value:.{digits + 4}f}"


def _finite(x: object) -> bool:
    try:
        return math.isfinite(float(x))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Evidence:
    """The plain numbers a verdict is made from (every field of :func:`assess`, NaN when unknown), plus the
    accuracy checks of :mod:`lambdahat.accuracy` (``{name: AccuracyCheck}``, empty when none ran)."""

    acceptance: float = math.nan
    acceptance_kind: str = "gradient estimate"
    rhat: float = math.nan
    ess: float = math.nan
    trend_p: float = math.nan
    trend_z: float = math.nan
    distance_trend_p: float = math.nan
    distance_trend_z: float = math.nan
    distance_growth: float = math.nan
    temperature: float = math.nan
    temperature_stderr: float = math.nan
    llc_mean: float = math.nan
    llc_stderr: float = math.nan
    sampler: str | None = None
    accuracy: Mapping[str, Any] = field(default_factory=dict)

    def measured(self, check: str) -> bool:
        """Whether the accuracy check ``check`` ran (it then supersedes the proxies of the same bias)."""
        return check in self.accuracy


#: What a failed rule reports: ``(reason phrase, advice sentence)``; ``None`` when it passed or was not made.
Finding = tuple[str, str] | None


@dataclass(frozen=True)
class Rule:
    """One check of the trust policy: the statistic it reads, its threshold, why, and what to do when it fails.

    ``judge(evidence)`` returns ``(reason, advice)`` when the check fails and ``None`` otherwise; ``superseded_by``
    names the accuracy check (:mod:`lambdahat.accuracy`) that measures directly the bias this rule only
    indicates: when that check ran, this rule is reported as a note, not judged.
    """

    name: str
    statistic: str
    threshold: str
    reason: str
    judge: Callable[[Evidence], Finding]
    superseded_by: str | None = None
    short: str = ""


def _acceptance_rule(e: Evidence) -> Finding:
    if e.acceptance_kind == "not available" or not _finite(e.acceptance) or e.acceptance >= MIN_ACCEPTANCE:
        return None
    a = _num(e.acceptance, MIN_ACCEPTANCE, above=False)
    return f"acceptance {a} < {MIN_ACCEPTANCE:g}", (
        f"mean MALA acceptance is {a} (< {MIN_ACCEPTANCE:g}; {_KIND_TEXT[e.acceptance_kind]}): the step is too "
        "large for the posterior's curvature κ, which biases λ̂ upward by about 1/(1 − εκ/4); lower "
        "learning_rate (or measure the bias with checks=('step',): the acceptance of the whole vector falls with "
        "the dimension at a fixed per-direction bias)."
    )


def _rhat_rule(e: Evidence) -> Finding:
    if not (_finite(e.rhat) and e.rhat > MAX_RHAT):
        return None
    r = _num(e.rhat, MAX_RHAT, above=True)
    return f"R-hat {r} > {MAX_RHAT:g}", (
        f"R-hat of the loss traces is {r} (> {MAX_RHAT:g}): the chains disagree; run longer (more burnin_steps "
        "and draws) or raise localization."
    )


def _ess_rule(e: Evidence) -> Finding:
    if not (_finite(e.ess) and e.ess < MIN_ESS):
        return None
    n = _num(e.ess, MIN_ESS, above=False, digits=0)
    return f"ESS {n} < {MIN_ESS}", (
        f"the bulk effective sample size of the loss traces is {n} (< {MIN_ESS} over all chains): too few "
        "independent draws to trust R-hat, the drift test and the standard error; raise draws (or "
        "steps_bw_draws), or learning_rate if the acceptance allows it."
    )


def _drift_rule(e: Evidence) -> Finding:
    if not (_finite(e.trend_p) and e.trend_p < TREND_P_VALUE):
        return None
    t = f"t = {e.trend_z:+.1f}, " if _finite(e.trend_z) else ""
    return f"loss still drifting (p = {e.trend_p:.1g})", (
        f"the loss trace is still drifting ({t}between the first and second half of the draws across chains, "
        f"p = {e.trend_p:.1g} < {TREND_P_VALUE:g}): raise burnin_steps, or learning_rate if the chains barely move."
    )


def _distance_rule(e: Evidence) -> Finding:
    material = not _finite(e.distance_growth) or e.distance_growth > MIN_DISTANCE_GROWTH
    if not (
        _finite(e.distance_trend_p)
        and e.distance_trend_p < DISTANCE_P_VALUE
        and e.distance_trend_z > 0
        and material
    ):
        return None
    grew = f", +{100 * e.distance_growth:.0f} %" if _finite(e.distance_growth) else ""
    return f"distance still growing (p = {e.distance_trend_p:.1g}{grew})", (
        f"the distance ||w − w*|| is still growing (t = {e.distance_trend_z:+.1f} between the first and second "
        f"half of the draws across chains{grew}, p = {e.distance_trend_p:.1g} < {DISTANCE_P_VALUE:g}): the chains "
        "have not reached the scale of the localized posterior, so λ̂ may still change with the chain length; "
        "raise burnin_steps (or localization)."
    )


def _temperature_off(e: Evidence, hot: bool) -> Finding:
    if not _finite(e.temperature) or (e.temperature > 1) != hot:
        return None
    off = abs(e.temperature - 1.0)
    significant = not _finite(e.temperature_stderr) or off > TEMPERATURE_Z * e.temperature_stderr
    if not (off > MAX_TEMPERATURE_ERROR and significant):
        return None
    se = f" ± {e.temperature_stderr:.2g}" if _finite(e.temperature_stderr) else ""
    why = (
        "the draws are hotter than the posterior: the step is too large (or the gradient noise too strong) for "
        "the curvature; lower learning_rate"
        if hot
        else "the chains have not spread to the posterior yet; raise burnin_steps, or learning_rate if the "
        "acceptance allows it"
    )
    return f"temperature {e.temperature:.2f} ≠ 1", (
        f"the configurational temperature of the draws, mean (w − w*)·∇U / d, is {e.temperature:.3g}{se}; under "
        f"the posterior it is exactly 1 (tolerance ± {MAX_TEMPERATURE_ERROR:g}): {why}."
    )


def _precision_rule(e: Evidence) -> Finding:
    if not (_finite(e.llc_mean) and _finite(e.llc_stderr) and e.llc_mean != 0):
        return None
    relative = e.llc_stderr / abs(e.llc_mean)
    if relative <= MAX_RELATIVE_STDERR:
        return None
    return f"standard error {100 * relative:.0f} % of λ̂", (
        f"the standard error of λ̂ across chains is {e.llc_stderr:.3g}, {100 * relative:.0f} % of λ̂ (> "
        f"{100 * MAX_RELATIVE_STDERR:g} %): the estimate cannot be told to within {100 * MAX_RELATIVE_STDERR:g} %; "
        "run more chains (the error falls as 1/sqrt(chains)) or more draws."
    )


def _negative_rule(e: Evidence) -> Finding:
    if not (_finite(e.llc_mean) and e.llc_mean < 0):
        return None
    return f"λ̂ = {e.llc_mean:.3g} < 0", (
        f"λ̂ is negative ({e.llc_mean:.3g}): the chains found lower loss than w*, which is then not a local "
        "minimum at this temperature; train further, raise localization or use restrict_to_orth_grad=True."
    )


_ACCURACY_ADVICE = {
    "step": "λ̂ at twice the step (for the same sampled time) differs by {bias}: the step's bias; lower "
    "learning_rate by {factor} (the bias is linear in it).",
    "localization": "λ̂ at half the localization differs by {bias}: γ pulls λ̂ {way}; lower localization (and "
    "run longer, the flat directions then relax more slowly).",
    "start": "chains started from N(w*, I/γ) end {bias} away from those started at w*: the chains have not "
    "relaxed; raise burnin_steps (or learning_rate, if the step check allows it).",
}


def _field(check: Any, key: str) -> float:
    """``check.key`` or ``check[key]`` (an :class:`~lambdahat.accuracy.AccuracyCheck` or its dict) as a float."""
    value = check[key] if isinstance(check, Mapping) else getattr(check, key)
    return math.nan if value is None else float(value)


def _accuracy_rule(name: str) -> Callable[[Evidence], Finding]:
    def judge(e: Evidence) -> Finding:
        check = e.accuracy.get(name)
        if check is None:
            return None
        bias, se = _field(check, "bias"), _field(check, "bias_stderr")
        if not (_finite(bias) and _finite(se)):
            return f"{name} check undefined", (
                f"the {name} check could not be made (its companion chains diverged or λ̂ is 0); the estimate's "
                "accuracy is unknown."
            )
        limit = MAX_CHECK_BIAS[name]
        if abs(bias) + se <= limit:
            return None
        text = f"{100 * bias:+.1f} % ± {100 * se:.1f} %"
        factor = f"{max(2.0, abs(bias) / limit * 1.5):.2g}x"
        advice = _ACCURACY_ADVICE[name].format(bias=text, factor=factor, way="down" if bias < 0 else "up")
        return f"{name} bias {text}", advice

    return judge


#: The trust policy, one rule per check, in the order the reasons are listed. ``describe()``, ``assess()``, the
#: warnings and the tables come from here; docs/concepts.md's table lists the same rules (a test checks it).
RULES: tuple[Rule, ...] = (
    Rule(
        "step",
        "relative change of λ̂ at twice the step, same sampled time (lambdahat.accuracy)",
        f"|b| + SE > {MAX_CHECK_BIAS['step']:g}",
        "SGLD's finite step heats the draws; the bias is first order in ε, so doubling ε measures it",
        _accuracy_rule("step"),
        short=f"step bias |b| + SE > {MAX_CHECK_BIAS['step']:g}",
    ),
    Rule(
        "localization",
        "relative change of λ̂ at half the localization, extrapolated to γ → 0",
        f"|b| + SE > {MAX_CHECK_BIAS['localization']:g}",
        "γ shrinks λ̂, along singular directions by more than any curvature at w* shows",
        _accuracy_rule("localization"),
        short=f"localization bias |b| + SE > {MAX_CHECK_BIAS['localization']:g}",
    ),
    Rule(
        "start",
        "gap between chains started at w* and from N(w*, I/γ)",
        f"|b| + SE > {MAX_CHECK_BIAS['start']:g}",
        "chains from w* approach E[L] from below, over-dispersed ones from above: their gap bounds the relaxation "
        "bias",
        _accuracy_rule("start"),
        short=f"start gap |b| + SE > {MAX_CHECK_BIAS['start']:g}",
    ),
    Rule(
        "acceptance",
        "mean MALA acceptance",
        f"< {MIN_ACCEPTANCE:g}",
        "a proxy of the step bias at small d; it falls with d at a fixed per-direction bias",
        _acceptance_rule,
        superseded_by="step",
        short=f"MALA acceptance < {MIN_ACCEPTANCE:g}",
    ),
    Rule(
        "rhat",
        "rank-normalized split R-hat of the loss",
        f"> {MAX_RHAT:g}",
        "the chains disagree",
        _rhat_rule,
        short=f"R-hat > {MAX_RHAT:g}",
    ),
    Rule(
        "ess",
        "bulk ESS of the loss",
        f"< {MIN_ESS}",
        "too few independent draws",
        _ess_rule,
        short=f"ESS < {MIN_ESS}",
    ),
    Rule(
        "drift",
        "loss trend between the halves of the draws",
        f"p < {TREND_P_VALUE:g}",
        "a relaxation proxy",
        _drift_rule,
        superseded_by="start",
        short=f"a drifting loss (p < {TREND_P_VALUE:g})",
    ),
    Rule(
        "distance",
        "growth of ||w − w*|| between the halves of the draws",
        f"p < {DISTANCE_P_VALUE:g} and > {MIN_DISTANCE_GROWTH:g}",
        "a relaxation proxy; flat directions that only γ moves grow it without moving λ̂",
        _distance_rule,
        superseded_by="start",
        short=f"a growing ||w − w*|| (p < {DISTANCE_P_VALUE:g})",
    ),
    Rule(
        "hot",
        "configurational temperature",
        f"> 1 + {MAX_TEMPERATURE_ERROR:g} ({TEMPERATURE_Z:g} SE)",
        "a proxy of the step bias averaged over all directions",
        lambda e: _temperature_off(e, hot=True),
        superseded_by="step",
        short=f"a temperature above 1 + {MAX_TEMPERATURE_ERROR:g}",
    ),
    Rule(
        "cold",
        "configurational temperature",
        f"< 1 − {MAX_TEMPERATURE_ERROR:g} ({TEMPERATURE_Z:g} SE)",
        "a relaxation proxy; flat directions that only γ moves cool it without moving λ̂",
        lambda e: _temperature_off(e, hot=False),
        superseded_by="start",
        short=f"a temperature below 1 − {MAX_TEMPERATURE_ERROR:g}",
    ),
    Rule(
        "precision",
        "standard error of λ̂ across chains, relative to |λ̂|",
        f"> {MAX_RELATIVE_STDERR:g}",
        "the Monte Carlo error alone exceeds the accuracy a trusted estimate claims",
        _precision_rule,
        short=f"a standard error above {MAX_RELATIVE_STDERR:g} of λ̂",
    ),
    Rule(
        "negative", "λ̂", "< 0", "w* is not a local minimum at this temperature", _negative_rule, short="λ̂ < 0"
    ),
)


def assess(
    *,
    acceptance: float = math.nan,
    acceptance_kind: str = "gradient estimate",
    rhat: float = math.nan,
    ess: float = math.nan,
    trend_p: float = math.nan,
    distance_trend_p: float = math.nan,
    diverged: Sequence[int] | int = (),
    chains: int | None = None,
    llc_mean: float = math.nan,
    llc_stderr: float = math.nan,
    trend_z: float = math.nan,
    distance_trend_z: float = math.nan,
    sampler: str | None = None,
    distance_growth: float = math.nan,
    temperature: float = math.nan,
    temperature_stderr: float = math.nan,
    accuracy: Mapping[str, Any] | None = None,
    guidance: Sequence[str] = (),
) -> Verdict:
    """Judge an estimate from its plain numbers by the rules of :data:`RULES`.

    Without accuracy checks the policy judges by proxies (acceptance, R-hat, ESS, drift, distance growth,
    configurational temperature, divergence, sign). With the checks of :mod:`lambdahat.accuracy` (``accuracy``:
    ``{name: AccuracyCheck}``), each check judges its bias directly (``|b| + SE ≤`` its limit in :data:`MAX_CHECK_BIAS`) and
    the proxies it supersedes become notes: ``"step"`` supersedes the acceptance and a hot temperature,
    ``"start"`` the drift, the distance growth and a cold temperature. A NaN statistic is not checked (a note
    says so); every chain diverged gives status ``"diverged"`` and skips the other checks.

    Parameters
    ----------
    acceptance:
        Mean MALA acceptance over the draws of the kept chains (NaN when undefined).
    acceptance_kind:
        How it was obtained: one of :data:`ACCEPTANCE_KINDS` (``"not available"``: not checked).
    rhat, ess:
        R-hat and bulk ESS of the loss traces of the kept chains.
    trend_p, trend_z:
        Two-sided p-value and t statistic of the loss trend test (:func:`~lambdahat.diagnostics.trend_z`).
    distance_trend_p, distance_trend_z:
        The same for the trace of ``||w − w*||``; only growth (``t > 0``) fails the check.
    distance_growth:
        Relative growth of the mean distance from the first to the second half of the draws; the check fails only
        above :data:`MIN_DISTANCE_GROWTH` (NaN: the size of the growth is not checked).
    diverged:
        Indices of the diverged chains, or their number.
    chains:
        Number of chains (``None``: unknown, then "every chain diverged" cannot be told).
    llc_mean, llc_stderr:
        λ̂ over the kept chains and its standard error across them (see :data:`MAX_RELATIVE_STDERR`).
    sampler:
        The sampler's name, for the text of the notes.
    temperature, temperature_stderr:
        The configurational temperature of the draws and its standard error across chains (1 under the
        posterior; see :data:`MAX_TEMPERATURE_ERROR`).
    accuracy:
        The accuracy checks that ran (objects with ``bias`` and ``bias_stderr``), by name.
    guidance:
        The advice of :func:`lambdahat.guidance.advise` on the run's γ, nβ and burn-in, kept as notes
        (``"guidance: ..."``): it says what the settings mean, it does not judge the estimate.

    Returns
    -------
    Verdict

    Examples
    --------
    >>> v = assess(acceptance=0.86, rhat=1.01, ess=400, trend_p=0.5, chains=4, llc_mean=3.0)
    >>> v.status, v.reasons
    ('untrusted', ('acceptance 0.86 < 0.9',))
    >>> status_line(v)
    'untrusted: acceptance 0.86 < 0.9'
    >>> assess(diverged=[0, 1], chains=2).status
    'diverged'
    """
    if acceptance_kind not in ACCEPTANCE_KINDS:
        raise ValueError(
            f"assess: acceptance_kind must be one of {ACCEPTANCE_KINDS}; got {acceptance_kind!r}."
        )
    evidence = Evidence(
        acceptance=acceptance,
        acceptance_kind=acceptance_kind,
        rhat=rhat,
        ess=ess,
        trend_p=trend_p,
        trend_z=trend_z,
        distance_trend_p=distance_trend_p,
        distance_trend_z=distance_trend_z,
        distance_growth=distance_growth,
        temperature=temperature,
        temperature_stderr=temperature_stderr,
        llc_mean=llc_mean,
        llc_stderr=llc_stderr,
        sampler=sampler,
        accuracy=dict(accuracy or {}),
    )
    if hasattr(diverged, "__iter__"):
        which: list[int] | None = [int(c) for c in diverged]
        n_div = len(which)
    else:
        n_div, which = (int(diverged) if _finite(diverged) else 0), None
    reasons: list[str] = []
    advice: list[str] = []
    notes: list[str] = []
    if n_div:
        where = f"chains {which}" if which is not None else f"{n_div} chain(s)"
        advice.append(
            f"{where} diverged (non-finite or exploding loss) and are left out of llc_mean; lower learning_rate or "
            "raise localization."
        )
    if n_div and chains is not None and n_div >= chains:
        advice.append("every chain diverged: there is no estimate. Lower learning_rate by 10x and try again.")
        return Verdict("diverged", ("every chain diverged",), tuple(advice), ())
    if n_div:
        reasons.append(f"{n_div} of {chains} chains diverged" if chains is not None else f"{n_div} diverged")

    who = f"{sampler}'s" if sampler else "the sampler's"
    if acceptance_kind == "not available":
        notes.append(
            f"MALA acceptance not checked: {who} update has no Metropolis–Hastings counterpart, so it has no "
            "acceptance (reported as NaN); the R-hat, ESS, drift, distance and divergence checks apply."
        )
    elif not _finite(acceptance):
        notes.append(
            "MALA acceptance not checked: no draw of a kept chain has a defined acceptance (NaN; a chain's first "
            "step has none, so use burnin_steps >= 1 or more draws); the other checks apply."
        )
    for rule in RULES:
        finding = rule.judge(evidence)
        if finding is None:
            continue
        if rule.superseded_by is not None and evidence.measured(rule.superseded_by):
            notes.append(
                f"{finding[0]} (a proxy; not judged: the {rule.superseded_by} check measured that bias directly)"
            )
            continue
        reasons.append(finding[0])
        advice.append(finding[1])
    if not _finite(temperature):
        notes.append(
            "configurational temperature not checked (no sampled dimension known, or a bounding box, whose "
            "walls break the identity E[(w − w*)·∇U] = d)."
        )
    missing = [name for name in MAX_CHECK_BIAS if evidence.accuracy and name not in evidence.accuracy]
    if missing:
        notes.append(
            f"accuracy checks not made: {', '.join(missing)} (not asked for, or localization = 0, which the "
            "localization and start checks need); the proxies of those biases judge instead."
        )
    if not evidence.accuracy:
        notes.append(
            "accuracy not measured: the verdict rests on proxies; lambdahat.check_accuracy (or checks= in the "
            "config) measures the step, localization and relaxation biases of λ̂ directly."
        )

    notes.extend(f"guidance: {text}" for text in guidance)
    unchecked = [
        name
        for name, value in (
            ("R-hat", rhat),
            ("ESS", ess),
            ("loss drift", trend_p),
            ("distance growth", distance_trend_p),
            ("λ̂'s standard error", llc_stderr),
        )
        if not _finite(value)
    ]
    if unchecked and chains is not None:
        notes.append(
            f"not checked: {', '.join(unchecked)} (undefined: they need at least 2 chains that did not diverge, "
            "and 4 draws for R-hat and ESS, 8 for the drift and distance tests)."
        )
    return Verdict("untrusted" if reasons else "ok", tuple(reasons), tuple(advice), tuple(notes))


def status_line(verdict: Verdict) -> str:
    """The one-line status of a verdict for tables: ``"ok"``, ``"diverged"`` or ``"untrusted: <reasons>"``.

    Examples
    --------
    >>> status_line(Verdict("untrusted", ("acceptance 0.86 < 0.9", "R-hat 1.23 > 1.1")))
    'untrusted: acceptance 0.86 < 0.9; R-hat 1.23 > 1.1'
    """
    if verdict.status == "untrusted" and verdict.reasons:
        return "untrusted: " + "; ".join(verdict.reasons)
    return verdict.status


def status_kind(text: object) -> str:
    """The status word of a table's status text: ``"untrusted: ..."`` → ``"untrusted"``; ``"ok"``,
    ``"diverged"``, ``"failed"`` as they are; anything else (a missing point, NaN) → ``"missing"``.

    Examples
    --------
    >>> status_kind("untrusted: ESS 40 < 100"), status_kind("ok"), status_kind(None)
    ('untrusted', 'ok', 'missing')
    """
    if not isinstance(text, str):
        return "missing"
    word = text.split(":", 1)[0].strip()
    return word if word in STATUSES else "missing"


def describe() -> str:
    """The policy in one sentence, with its thresholds (for figure legends and reports), from :data:`RULES`.

    The accuracy checks apply where they were measured, and then replace the proxies they supersede.

    Examples
    --------
    >>> describe()[:58]
    'step bias |b| + SE > 0.1, localization bias |b| + SE > 0.1'
    """
    return ", ".join(rule.short for rule in RULES) + ", or a diverged chain"
