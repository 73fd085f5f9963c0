"""Automatic choice of the step size ε (and optionally the localization γ) from short pilot runs.

**Where.** :func:`calibrate_problem` runs every pilot with :func:`lambdahat.problem.run_chains` on one problem
prepared by :func:`lambdahat.problem.prepare`, so the pilots share its model copies, ``L0``, orthogonal direction
and step functions with each other and with the main run; :func:`lambdahat.sample` calls it for
``learning_rate="auto"``. :func:`calibrate` prepares the problem from a model and a loader first.

**The rule.** ε is the largest tested step at most ``ε_top`` whose pilot run is

* *stable*: no chain diverged (:func:`lambdahat.diagnostics.divergence`);
* *accepting*: its mean MALA acceptance ``result.mala_acceptance`` is at least :func:`pilot_acceptance`, 0.92 for
  the default ``target_acceptance`` (the trust policy's :data:`lambdahat.trust.MIN_ACCEPTANCE`, 0.9): pilots burn
  in for less than the main run and accept a little more (:data:`PASS_REJECTION_SHARE`);
* *unbiased*: its predicted step bias at the curvature its chains met, :func:`step_bias`, is at most
  ``max_step_bias`` (see *Bias* below);
* *stationary*: the two-sided p-value of its trend statistic, ``diagnostics.trend_p_value(result.trend_z,
  chains kept)``, is at least ``PILOT_TREND_P_VALUE`` (0.01);
* *spread*: a passing pilot whose configurational temperature is below ``1 − MAX_TEMPERATURE_ERROR`` (its chains
  have not reached the posterior's scale, where the potential is stiffer and acceptance lower) is run again at the
  same step with ``SETTLE_FACTOR`` (4) times its burn-in, up to the main run's, and judged again (stage
  ``"settle"``).

**Acceptance.** The samplers report the exact MALA acceptance of the Langevin step with the potential difference
from the trapezoid rule on the gradients, ``log a = min(0, (ε/8)(‖∇U(w)‖²_G − ‖∇U(w')‖²_G))``
(:func:`~lambdahat.samplers.base.langevin_log_accept`). It contains no offset between the losses of two
minibatches, so ``a → 1`` as ``ε → 0`` on minibatched models too (tests/test_calibration.py checks it on an MLP
classifier with batch 32), and the raw acceptance is judged against the target. A full-batch quadratic gives
``a ≈ 0.9`` at ``εκ ≈ 0.5`` in d = 10, 0.23 in d = 100 and 0.15 in d = 400 (measured with γ = 10, nβ = 145).

**Stationarity.** ``trend_z`` is a t statistic across chains (per chain, the mean of the second half of the draws
minus that of the first half) with ``C − 1`` degrees of freedom. Pilots have few chains (``C ≤ 4``), so the test
is weak: p < 0.01 needs ``|t| > 5.84`` with 4 chains, 9.92 with 3, 63.7 with 2, and a single chain is not tested
(NaN). It still catches the usual failure, a burn-in transient that every chain shares because every chain starts
at ``w*`` (the chains then agree on the sign and size of the drift, so ``sd(d)`` is small and ``|t|`` large); it
does not catch slow wandering that differs between chains. A stationary pilot fails by chance with probability
0.01 (the search then settles on a smaller step). The main run's warning (p < 1e-3, with all its chains) remains
the real check.

**Bias** (``max_step_bias = b``, default 0.05). Acceptance does not bound the discretization bias of the
unadjusted chain: SGLD inflates the stationary variance along a direction of curvature κ by ``1/(1 − εκ/4)``
(:func:`lambdahat.truth.regular_posterior_mean_nbeta_k`), so the 0.9-acceptance step alone overestimates λ̂ by
about 14 % in d = 10. The search starts no higher than ``ε = (4b/(1 + b)) / κ̂``, the step at which the stiffest
direction at ``w*`` is inflated by exactly ``1 + b``. κ̂ is a Rayleigh quotient from one batch at ``w*``, and on
singular potentials it misses the curvature the chains meet further out (``K = ||w||⁴`` has none at ``w*``), so each
pilot is also judged at the curvature its chains met, ``κ_eff = nβ rms(||∇L_B||) / rms(||w − w*||) + γ``
(:func:`effective_curvature`; exact on a quadratic): it fails ("bias") when
``step_bias = ε (1.5 (κ_eff − γ) + γ/4) > b``. The localization's part has the quadratic slope 1/4; the loss part
has the slope measured where the curvature vanishes at ``w*`` (:data:`LOSS_BIAS_SLOPE`): judged at ``εκ_eff ≤ 0.19``
(the quadratic slope) the monomial ``w1² w2⁴`` and the normal crossing ``w1² w2²`` came 20–22 % above their exact
references, at the singular slope 5–6 %. The next step after a "bias" failure is ``0.9 ε b / step_bias``.
``max_step_bias=None`` switches both checks off; neither applies to RMSProp-SGLD, whose preconditioner rescales the
step per coordinate.

**Curvature.** ``κ̂ = nβ |λ_max(∇²L_B(w*))| + γ + wd``, the curvature of the localized potential along its
stiffest direction, from ``HVP_ITERATIONS`` power iterations with Hessian-vector products on the first batch.

**Search.** It starts at ``ε_top = min(LR_MAX, 1/κ̂, (4b/(1 + b))/κ̂)`` (SGLD is unstable for ``εκ ≥ 4``;
not the step bias rule at κ̂: κ̂ is the largest curvature at ``w*``, κ_eff an average over where the chains go, and
the singular slope applied to κ̂ chose 5x smaller steps on reduced-rank regression and the rank-1 deep linear
network, whose chains then did not spread (temperature 0.68, 0.62); RMSProp-SGLD and a failed curvature probe start at ``LR_MAX``) and descends: by ``JUMP`` (10) after a diverged
pilot; after too little acceptance, to the step where the rejection model ``1 − a = c ε^p`` of the pilots so far
predicts a rejection rate of ``AIM (1 − target)`` (acceptance 0.93; ``p`` fitted between two pilots, 1 with one;
:func:`_acceptance_step`); after a "bias" failure as above; by ``LADDER_FACTOR`` (3) otherwise; never by less
than 1.5x nor more than ``JUMP``, down to ``LR_MIN``. Between the first passing step and the smallest failing one
above it, the rejection model (or the geometric midpoint) refines until their ratio is at most ``REFINE_RATIO``
(1.35), unless that failing step diverged: divergence is a rare event, and a pilot of a few hundred chain-steps
that does not diverge says little about a main run ten times longer, so the search stays a factor ``JUMP`` below
a diverged step. (On ``K = w₁² w₂⁴``, γ = 10, refining towards a diverged 0.019 chose 0.014, where 5 of 8
chains of a 2500-step main run diverged; at 0.0019 none did and λ̂ = 0.129 ± 0.013 against the exact 0.126.) So the
chosen ε is the largest accepted step of the table, and every larger tested step failed. The search stops early,
without a step, when two consecutive pilots fail only stationarity: a smaller step will not help, more
localization (or a longer run) will. Divergence far inside the stability limit (``εκ̂ < ESCAPE_EPS_KAPPA``) only
ends the search at a γ while γ is being tuned; otherwise the search keeps stepping down. Every pilot uses the
same seed (neighbouring steps see the same noise) and the problem's ``L0``.

**Localization** (``tune_localization=True``). γ is the smallest value of an ascending ladder (default
``γ₀ · [0.1, 0.3, 1, 3, 10]`` with ``γ₀`` the estimator's localization, ``[0, 1, 10, 100]`` when ``γ₀ = 0``) at
which the search finds a step that gives ``λ̂ > 0`` *and* lets the flat directions (curvature ``γ + wd``) relax at
least :data:`lambdahat.guidance.MIN_RELAXATIONS` (1.5) times in the main run's burn-in, ``ε (γ + wd) B / 2 ≥ 1.5``
(:func:`lambdahat.guidance.relaxations`): a smaller γ would leave λ̂ still rising through the draws. When no γ of
the ladder does, the one that comes closest is chosen and the warning says so. A γ whose step relaxes too little
names the least γ that step would need, ``2 · 1.5 / (ε B) − wd``, and the ladder values below it are skipped
(the step hardly grows with γ, since the curvature only grows): a short run's budget then reaches the γ that can
work. A pilot with ``λ̂ ≤ 0`` (the chains
found lower loss than ``L0``) has left the basin of ``w*``, which ends the search at that γ, as does divergence at
``εκ̂ < ESCAPE_EPS_KAPPA``.

**Guidance.** On the chosen values the checks of :mod:`lambdahat.guidance` run (flat directions that do not relax in
the burn-in, a γ that removes more than 10 % of λ̂ on quadratic directions, an nβ more than 3x off ``n / log n``);
each failed one is a ``RuntimeWarning`` and a line of ``Calibration.warnings``, with its numbers and its fix.

**Cost.** The pilots' chain-steps (chains × (burn-in + draws) each) never exceed the budget,
``max(budget_fraction × chains × (burnin_steps + draws · steps_bw_draws), MIN_BUDGET_CHAIN_STEPS)``: a fraction of
the main run, but at least 384 chain-steps, so that a short main run still gets pilots that can burn in. It is
shared for ``PLANNED_PILOTS`` (4) pilots, plus 2 per extra γ and 1 for SGNHT (kept for its confirmation): up to 4 chains (2 when 4 would leave
fewer than 48 steps each, 1 when 2 would leave fewer than 24), half burn-in, half draws (a draw every step), at
most ``MAX_PILOT_STEPS`` (200) steps: a larger budget buys more pilots, not longer ones. A pilot at a small step
burns in longer, for ``3/(εκ̂)`` steps (three relaxation times of the stiffest mode), but never longer than the main
run's burn-in nor than two planned pilots; when that does not fit in what is left of the budget it burns in for
what fits (at least the planned burn-in). Neither the preparation of the problem (its pass for ``L0``) nor the
probe (``HVP_ITERATIONS`` Hessian-vector products on the first batch) is counted.

SGNHT has no MALA acceptance: its search runs SGLD at the same ε (same stability limit ``εκ < 4``, see
:mod:`lambdahat.samplers.sgnht`), and an SGNHT pilot then confirms the step (stable, stationary and not hotter
than the trust policy allows: configurational temperature at most ``1 + MAX_TEMPERATURE_ERROR`` unless within
``TEMPERATURE_Z`` standard errors), stepping down by ``LADDER_FACTOR`` if it is not.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from . import diagnostics
from .config import LLCConfig
from .functional import FunctionalModel
from .guidance import MIN_RELAXATIONS, localization_advice, nbeta_advice, relaxation_advice, relaxations
from .problem import Problem, prepare, run_chains
from .result import LLCResult
from .rng import resolve_seed
from .samplers.base import project
from .trust import MAX_TEMPERATURE_ERROR, MIN_ACCEPTANCE, TEMPERATURE_Z

if TYPE_CHECKING:  # imported where a table is made: 0.3 s, which a run without calibration does not need
    import pandas as pd

__all__ = [
    "LR_MAX",
    "LR_MIN",
    "PILOT_TREND_P_VALUE",
    "Calibration",
    "CalibrationError",
    "calibrate",
    "calibrate_problem",
    "calibrated_estimator",
]

#: A pilot is stationary when the two-sided p-value of its trend t statistic is at least this.
PILOT_TREND_P_VALUE = 0.01
#: Largest and smallest step sizes the search tries.
LR_MAX = 1e-1
LR_MIN = 1e-8
#: Step down by this factor after a failed pilot that did not diverge (and in the SGNHT confirmation) ...
LADDER_FACTOR = 3.0
#: ... and by this factor after a diverged one.
JUMP = 10.0
#: Chains that diverge although ``εκ̂`` is below this (80x inside the stability limit ``εκ < 4``) have left the
#: basin of ``w*``: the search at that γ stops.
ESCAPE_EPS_KAPPA = 0.05
#: A passing pilot whose chains had not spread yet is run again with this many times its burn-in.
SETTLE_FACTOR = 4
#: Refinement stops when the smallest failing step is within this ratio of the largest passing one.
REFINE_RATIO = 1.35
#: The budget is shared out for this many pilots (+2 per extra γ, +1 for SGNHT's confirmation). A typical search
#: is a pilot at ``ε_top``, one step chosen from its acceptance or curvature, and a refinement; four shares leave one
#: spare. (Six shares, the earlier value, made the pilots of a 4 × (200 + 200) run 2 chains × 40 steps, too short to
#: burn in, and a single pilot at a small step then spent the budget: the MLP and GPT-2 of the tests got no step.)
PLANNED_PILOTS = 4
#: Least pilot budget in chain-steps, whatever ``budget_fraction`` of a short main run gives: four pilots of 2 chains
#: × 48 steps. A main run of 4 chains × 400 steps has a budget of 480 at the default fraction 0.3, so the minimum
#: binds only for shorter runs, where a calibration that cannot see a burnt-in chain would be worth nothing.
MIN_BUDGET_CHAIN_STEPS = 384
#: Longest planned pilot, in steps per chain: a larger budget buys more pilots, not longer ones (a search from
#: ``LR_MAX`` on a potential with no curvature at w* needs several jumps before its first useful pilot).
MAX_PILOT_STEPS = 200
#: Share of a pilot's steps spent on burn-in (the rest are draws, a draw every step).
PILOT_BURNIN_SHARE = 0.5
#: Step bias per unit ``ε κ`` of the loss part ``κ_eff − γ`` of the curvature the chains met, and of the
#: localization part γ: a pilot fails ("bias") when ``ε (LOSS_BIAS_SLOPE (κ_eff − γ) + LOCALIZATION_BIAS_SLOPE γ)``
#: exceeds ``max_step_bias`` (:func:`step_bias`). Along a quadratic direction the relative bias of λ̂ is ``εκ/4``
#: (slope 1/4, exact, REFERENCE.md §2), which is the localization's part. Where the loss curvature vanishes at w* it
#: is far larger: measured against the exact posterior means (8 chains × 8000 draws, γ = 10, nβ = 145),
#: ``K = w1² w2⁴`` gave +20 %, +4.6 %, +1.3 % at ``ε (κ_eff − γ)`` = 0.12, 0.033, 0.016 and ``K = w1² w2²``
#: gave +16 %, +8 % at 0.10, 0.049 (slopes 1.4–1.7 once the γ part is taken off). 1.5 is the singular slope; on a
#: regular loss it errs towards a smaller step, whose bias the references then show to be small.
LOSS_BIAS_SLOPE = 1.5
LOCALIZATION_BIAS_SLOPE = 0.25
#: A pilot's burn-in lasts at least this many relaxation times ``1/(εκ̂)`` of the stiffest mode (``e^{-3}``: 5 %
#: left of the start), within the limits of *Cost* in the module docstring.
BURNIN_RELAXATIONS = 3.0
#: Shortest pilot: burn-in and draws.
MIN_PILOT_BURNIN = 12
MIN_PILOT_DRAWS = 12
#: Power iterations for the curvature κ̂.
HVP_ITERATIONS = 12

_COLUMNS = [
    "pilot",
    "stage",
    "sampler",
    "learning_rate",
    "localization",
    "eps_kappa",
    "burnin_steps",
    "mala_acceptance",
    "trend_z",
    "trend_p",
    "n_diverged",
    "llc_mean",
    "chain_steps",
    "accepted",
    "note",
]


class CalibrationError(RuntimeError):
    """No step size (or localization) passed the calibration rule. ``table`` holds the pilots that ran."""

    def __init__(self, message: str, table: pd.DataFrame | None = None) -> None:
        super().__init__(message)
        if table is None:
            import pandas as pd

            table = pd.DataFrame(columns=_COLUMNS)
        self.table = table


@dataclasses.dataclass(frozen=True, eq=False)
class Calibration:
    """The outcome of :func:`calibrate_problem` (and :func:`calibrate`).

    Attributes
    ----------
    learning_rate:
        The chosen ε.
    localization:
        The chosen γ (the estimator's own unless ``tune_localization``).
    table:
        One row per pilot: ``pilot``, ``stage`` (``"search"``, ``"refine"``, ``"settle"``, ``"confirm"``), ``sampler``,
        ``learning_rate``, ``localization``, ``eps_kappa`` (``ε κ̂``), ``burnin_steps``, ``mala_acceptance``,
        ``trend_z``, ``trend_p``, ``n_diverged``, ``llc_mean``, ``chain_steps``, ``accepted`` and ``note`` (why it
        passed or failed).
    reason:
        Why these values, in words.
    pilot_chain_steps:
        Chain-steps spent on pilots (≤ ``budget_chain_steps``).
    budget_chain_steps:
        ``max(floor(budget_fraction × main run's chain-steps), MIN_BUDGET_CHAIN_STEPS)``.
    pilot_chains, pilot_burnin_steps, pilot_draws:
        Pilot size; ``pilot_burnin_steps`` is the shortest burn-in (see the table for each pilot's).
    curvature:
        κ̂ at the chosen γ (NaN when it could not be estimated).
    target_acceptance:
        The acceptance target of the rule.
    warnings:
        The guidance of :mod:`lambdahat.guidance` on the chosen values (flat directions that do not settle in the
        burn-in, a localization that biases λ̂ low, an nβ off ``n / log n``), each also issued as a
        ``RuntimeWarning``.
    """

    learning_rate: float
    localization: float
    table: pd.DataFrame
    reason: str
    pilot_chain_steps: int
    budget_chain_steps: int = 0
    pilot_chains: int = 0
    pilot_burnin_steps: int = 0
    pilot_draws: int = 0
    curvature: float = math.nan
    target_acceptance: float = MIN_ACCEPTANCE
    warnings: tuple[str, ...] = ()

    def __str__(self) -> str:
        cols = ["learning_rate", "localization", "eps_kappa", "mala_acceptance", "trend_p", "n_diverged"]
        table = self.table[[*cols, "llc_mean", "accepted", "note"]].to_string(
            index=False, float_format=lambda v: f"{v:.4g}", formatters={"note": lambda s: str(s)[:60]}
        )
        return (
            f"Calibration: learning_rate = {self.learning_rate:.4g}, localization = {self.localization:.4g}\n"
            f"  {self.reason}\n"
            f"  pilots: {len(self.table)} x {self.pilot_chains} chains x (>= {self.pilot_burnin_steps} burn-in + "
            f"{self.pilot_draws} draws) = {self.pilot_chain_steps} chain-steps of a budget of "
            f"{self.budget_chain_steps}\n{table}"
        )

    def __repr__(self) -> str:
        return (
            f"Calibration(learning_rate={self.learning_rate!r}, localization={self.localization!r}, "
            f"pilots={len(self.table)}, pilot_chain_steps={self.pilot_chain_steps})"
        )

    def summary(self) -> dict[str, Any]:
        """The calibration as plain JSON-able data (what :func:`lambdahat.sample` records in
        ``result.settings["calibration"]``): every attribute, with ``table`` as ``pilots``, one record per pilot.

        Numbers are Python ``int``, ``float`` and ``bool``; non-finite ones (the trend p-value of a one-chain pilot,
        κ̂ when it could not be estimated) are ``None``, so ``json.dumps(summary, allow_nan=False)`` works.

        Examples
        --------
        >>> import json
        >>> import pandas as pd
        >>> s = Calibration(1e-3, 10.0, pd.DataFrame(columns=_COLUMNS), "by hand", 0).summary()
        >>> s["learning_rate"], s["curvature"], s["pilots"]
        (0.001, None, [])
        >>> json.loads(json.dumps(s, allow_nan=False)) == s
        True
        """
        records = self.table.to_dict(orient="records")
        return {
            "learning_rate": _plain(float(self.learning_rate)),
            "localization": _plain(float(self.localization)),
            "reason": str(self.reason),
            "pilot_chain_steps": int(self.pilot_chain_steps),
            "budget_chain_steps": int(self.budget_chain_steps),
            "pilot_chains": int(self.pilot_chains),
            "pilot_burnin_steps": int(self.pilot_burnin_steps),
            "pilot_draws": int(self.pilot_draws),
            "curvature": _plain(float(self.curvature)),
            "target_acceptance": _plain(float(self.target_acceptance)),
            "warnings": [str(w) for w in self.warnings],
            "pilots": [{str(k): _plain(v) for k, v in row.items()} for row in records],
        }


def calibrated_estimator(estimator: Any, calibration: Calibration) -> Any:
    """A copy of ``estimator`` (an ``LLCEstimator`` or an ``LLCConfig``) with the calibrated ``learning_rate`` and
    ``localization``, all else unchanged.

    Examples
    --------
    >>> import pandas as pd
    >>> from lambdahat import LLCEstimator
    >>> cal = Calibration(1e-3, 10.0, pd.DataFrame(), "by hand", 0)
    >>> est = calibrated_estimator(LLCEstimator(draws=50), cal)
    >>> est.learning_rate, est.localization, est.draws
    (0.001, 10.0, 50)
    >>> calibrated_estimator(LLCConfig(learning_rate="auto"), cal).learning_rate
    0.001
    """
    _config_of(estimator, "calibrated_estimator", allow_none=False)
    if not isinstance(calibration, Calibration):
        raise ValueError(
            "calibrated_estimator: calibration must be the Calibration returned by calibrate; got "
            f"{type(calibration).__name__}."
        )
    return estimator.replace(learning_rate=calibration.learning_rate, localization=calibration.localization)


def _plain(value: Any) -> Any:
    """A JSON-able scalar: numpy scalars as Python ones, non-finite floats as ``None``."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------------------------------
# The probe: the curvature scale at w*
# ----------------------------------------------------------------------------------------------------


def _hessian_top(fm: FunctionalModel, x, y, u: torch.Tensor | None, seed: int) -> float:
    """|largest eigenvalue| of the Hessian of the batch loss at ``w*``, by power iteration.

    The Rayleigh quotient is a lower bound, so ``1/κ̂`` errs towards larger steps, which the pilots then judge.
    Hessian-vector products are forward-over-reverse, or central differences of gradients where forward mode is
    not supported. NaN if neither works.
    """
    w = fm.w_star
    v = torch.randn(fm.layout.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    v = project(v.to(w.device, w.dtype), u)
    if not float(v.norm()) > 0:
        return math.nan

    def grad_at(theta):
        return torch.func.grad(fm.loss)(theta, fm.frozen, fm.buffers, x, y)

    def hvp_forward(vec):
        return torch.func.jvp(grad_at, (w,), (vec,))[1]

    def hvp_difference(vec):
        h = 1e-3 * (1.0 + float(w.abs().max())) if w.dtype != torch.float64 else 1e-5
        return (grad_at(w + h * vec) - grad_at(w - h * vec)) / (2 * h)

    hvp, rayleigh = hvp_forward, math.nan
    for _ in range(HVP_ITERATIONS):
        v = v / v.norm()
        try:
            hv = hvp(v)
        except Exception:
            if hvp is hvp_difference:
                return math.nan
            hvp = hvp_difference
            try:
                hv = hvp(v)
            except Exception:
                return math.nan
        hv = project(hv.to(v.dtype), u)
        rayleigh = abs(float(v @ hv))
        if not (math.isfinite(float(hv.norm())) and float(hv.norm()) > 0):
            break
        v = hv
    return rayleigh if math.isfinite(rayleigh) else math.nan


# ----------------------------------------------------------------------------------------------------
# Pilots and the search
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Verdict:
    learning_rate: float
    accepted: bool
    kind: str  # "ok", "diverged", "escaped", "acceptance", "trend"
    note: str
    acceptance: float = math.nan
    kappa_eff: float = math.nan
    localization: float = 0.0
    temperature: float = math.nan
    burnin: int = 0


def _trend_p(result: LLCResult) -> float:
    """Two-sided p-value of the trend t statistic over the chains kept (NaN with one chain)."""
    return diagnostics.trend_p_value(result.trend_z, int((~result.diverged).sum()))


def effective_curvature(result: LLCResult) -> float:
    """The curvature the chains met, ``κ_eff = nβ rms(||∇L_B||) / rms(||w − w*||) + γ`` over the draws.

    For ``K = a||w − w*||²`` at stationarity ``∇L = 2a (w − w*)`` and this is exactly ``κ = 2nβa + γ``; on a
    singular potential it measures the curvature where the chains actually are, which the Hessian at ``w*`` (zero
    for ``K = ||w||⁴``) misses.
    """
    kept = ~result.diverged
    grad = result.grad_norm[kept].double()
    dist = result.distance[kept].double()
    rms_dist = float(dist.square().mean().sqrt()) if dist.numel() else math.nan
    if not rms_dist > 0:
        return math.nan
    return result.nbeta * float(grad.square().mean().sqrt()) / rms_dist + result.localization


def step_bias(learning_rate: float, kappa_eff: float, localization: float) -> float:
    """The predicted relative step bias of λ̂, ``ε (LOSS_BIAS_SLOPE (κ_eff − γ) + LOCALIZATION_BIAS_SLOPE γ)``.

    ``κ_eff`` is :func:`effective_curvature` (γ included); NaN when it is.

    Examples
    --------
    >>> round(step_bias(1e-3, 30.0, 10.0), 4)  # 1e-3 (1.5 · 20 + 0.25 · 10)
    0.0325
    """
    if not math.isfinite(kappa_eff):
        return math.nan
    loss_part = max(kappa_eff - localization, 0.0)
    return learning_rate * (LOSS_BIAS_SLOPE * loss_part + LOCALIZATION_BIAS_SLOPE * localization)


def _judge(
    result: LLCResult, target: float, *, confirm: bool, need_positive: bool, bias_cap: float | None = None
) -> tuple[str, str]:
    """``(kind, note)`` of a pilot under the rule (``confirm``: an SGNHT pilot, no acceptance to judge;
    ``bias_cap``: the largest allowed :func:`step_bias`)."""
    n_div = int(result.diverged.sum())
    if n_div:
        return "diverged", f"{n_div}/{len(result.diverged)} chains diverged"
    if need_positive and not result.llc_mean > 0:
        return "escaped", f"λ̂ = {result.llc_mean:.3g} <= 0: the chains left the basin of w*"
    k_eff = effective_curvature(result) if bias_cap is not None and not confirm else math.nan
    bias = step_bias(result.learning_rate, k_eff, result.localization)
    if math.isfinite(bias) and bias > bias_cap:
        return "bias", (
            f"predicted step bias {bias:.2g} > {bias_cap:.2g} (κ_eff = {k_eff:.3g}, the curvature "
            "the chains met): step bias above max_step_bias"
        )
    hot = result.temperature - 1
    se = result.temperature_stderr
    if confirm and hot > MAX_TEMPERATURE_ERROR and not (se > 0 and hot <= TEMPERATURE_Z * se):
        return "hot", (
            f"configurational temperature {result.temperature:.3g} > 1 + {MAX_TEMPERATURE_ERROR:g} (the trust "
            "policy's check): the step heats SGNHT's draws"
        )
    acc = result.mala_acceptance
    need = pilot_acceptance(target)
    if not confirm and not acc >= need:
        return "acceptance", f"acceptance {acc:.3f} < {need:.3g}"
    p = _trend_p(result)
    if p < PILOT_TREND_P_VALUE:
        return "trend", f"drifting: trend t = {result.trend_z:+.1f}, p = {p:.2g} < {PILOT_TREND_P_VALUE:g}"
    trend = (
        "trend not tested (one chain)" if math.isnan(p) else f"trend p = {p:.2g} >= {PILOT_TREND_P_VALUE:g}"
    )
    return "ok", ("stable, " if confirm else f"acceptance {acc:.3f} >= {need:.3g}, ") + trend


class _Pilots:
    """Runs pilots within the budget and keeps the table."""

    def __init__(
        self,
        run: Callable,
        burnin: Callable,
        chains: int,
        draws: int,
        budget: int,
        target: float,
        bias_cap: float | None = None,
        min_burnin: int = MIN_PILOT_BURNIN,
        longest_burnin: int = 0,
    ):
        self._run, self._burnin, self.chains, self.draws = run, burnin, chains, draws
        self.budget, self.target, self.spent, self.rows = budget, target, 0, []
        self.bias_cap, self.min_burnin, self.longest_burnin = bias_cap, min_burnin, longest_burnin
        self.reserve = 0  # chain-steps kept for the SGNHT confirmation

    def run(
        self,
        lr: float,
        gamma: float,
        kappa: float,
        stage: str,
        *,
        confirm=False,
        need_positive=False,
        burnin: int | None = None,
    ) -> _Verdict | None:
        """Run and judge one pilot; None (and nothing run) when even its shortest burn-in would cross the budget.

        A pilot whose burn-in of ``BURNIN_RELAXATIONS / (εκ̂)`` steps does not fit in what is left of the budget
        burns in for what fits (at least the planned burn-in), so a small step never ends the search on its own.
        """
        reserve = 0 if stage == "confirm" else self.reserve
        left = (self.budget - reserve - self.spent) // self.chains - self.draws
        burnin = min(self._burnin(lr, kappa) if burnin is None else burnin, left)
        if burnin < self.min_burnin:
            return None
        sampler, result = self._run(lr, gamma, burnin, confirm)
        steps = int(result.loss_trace.numel())
        self.spent += steps
        kind, note = _judge(
            result, self.target, confirm=confirm, need_positive=need_positive, bias_cap=self.bias_cap
        )
        accepted = kind == "ok"
        p = _trend_p(result)
        row = dict(pilot=len(self.rows), stage=stage, sampler=sampler, learning_rate=lr, localization=gamma)
        row.update(eps_kappa=lr * kappa, burnin_steps=burnin, mala_acceptance=result.mala_acceptance)
        row.update(trend_z=result.trend_z, trend_p=p, n_diverged=int(result.diverged.sum()))
        row.update(llc_mean=result.llc_mean, chain_steps=steps, accepted=accepted, note=note)
        self.rows.append(row)
        k_eff = effective_curvature(result)
        return _Verdict(
            lr, accepted, kind, note, result.mala_acceptance, k_eff, gamma, result.temperature, burnin
        )

    def table(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=_COLUMNS)


#: A pilot passes when its rejection rate ``1 − a`` is at most this fraction of ``1 − target_acceptance``
#: (acceptance 0.92 for the target 0.9). Pilots burn in for a fraction of the main run, and chains that have not
#: spread yet accept more: at 4 chains × (200 + 200) the main run's acceptance fell short of its passing pilot's by
#: up to 0.026 (a CNN: 0.923 → 0.897), and by 0.07 in the run of the issue (0.857).
PASS_REJECTION_SHARE = 0.8
#: The search aims at a rejection rate this fraction of ``1 − target_acceptance`` (acceptance 0.93 for the target
#: 0.9), a little inside the pass mark, so that a pilot's noise does not leave the prediction just outside it.
AIM = 0.7


def pilot_acceptance(target: float) -> float:
    """The least acceptance of a passing pilot, ``1 − PASS_REJECTION_SHARE (1 − target)``.

    Examples
    --------
    >>> round(pilot_acceptance(0.9), 3)
    0.92
    """
    return 1 - PASS_REJECTION_SHARE * (1 - target)


#: Bounds of the exponent ``p`` of the rejection model ``1 − a ∝ ε^p`` fitted between two pilots. On a quadratic
#: ``p`` is between 1 and 2; measured on a deep linear network at ``w* = 0`` it was about 0.3 (a 5x smaller step took
#: the acceptance from 0.57 only to 0.74); with one pilot ``p = 1`` is assumed.
REJECTION_EXPONENT = (0.3, 3.0)


def _acceptance_step(history: Sequence[_Verdict], target: float) -> float:
    """The step at which the rejection rate ``1 − a`` is predicted to be ``AIM (1 − target)``, NaN without data.

    The model is ``1 − a = c ε^p``. With pilots at two or more steps, ``p`` is fitted (in log-log) between the two
    whose rejection rates lie closest to the aim on either side (clamped to :data:`REJECTION_EXPONENT`); with
    one, ``p = 1``. The step is ``ε₁ (r*/r₁)^(1/p)`` from the pilot closest to the aim.

    Examples
    --------
    >>> v = lambda lr, a: _Verdict(lr, a >= 0.9, "", "", acceptance=a)
    >>> round(_acceptance_step([v(1e-3, 0.7)], 0.9), 7)  # p = 1: rejection 0.3 -> the aim 0.07
    0.0002333
    >>> round(_acceptance_step([v(1e-3, 0.6), v(1e-4, 0.96)], 0.9), 7)  # p = 1 fitted: 0.07 at 1.75e-4
    0.000175
    """
    aim = AIM * (1 - target)
    points = sorted(
        (v.learning_rate, 1 - v.acceptance)
        for v in history
        if math.isfinite(v.acceptance) and 0 < 1 - v.acceptance < 1 and v.learning_rate > 0
    )
    if not points:
        return math.nan
    below = [pt for pt in points if pt[1] <= aim]
    above = [pt for pt in points if pt[1] > aim]
    if below and above:
        pair = [below[-1], above[0]]
    elif len(points) >= 2:
        pair = sorted(points, key=lambda pt: abs(math.log(pt[1] / aim)))[:2]
    else:
        pair = points
    (e1, r1), p = pair[0], 1.0
    if len(pair) == 2 and pair[0][0] != pair[1][0] and pair[0][1] != pair[1][1]:
        (e2, r2) = pair[1]
        p = math.log(r2 / r1) / math.log(e2 / e1)
        p = min(max(p, REJECTION_EXPONENT[0]), REJECTION_EXPONENT[1])
        e1, r1 = min(pair, key=lambda pt: abs(math.log(pt[1] / aim)))
    return e1 * (aim / r1) ** (1 / p)


def _next_step(
    lr: float,
    verdict: _Verdict,
    target: float,
    bias_cap: float | None = None,
    history: Sequence[_Verdict] = (),
) -> float:
    """The next, smaller step after a failed pilot.

    Divergence: ``ε / JUMP``. Step bias over the cap at the curvature the chains met: ``0.9 ε cap / step_bias``
    (clamped to ``[ε / JUMP², ε / 1.5]``: the bias scales linearly with ε, so this prediction may jump further).
    Too little acceptance: the step the rejection model predicts for the aim (:func:`_acceptance_step`), from the
    pilots with the same burn-in as the failed one (a pilot that failed after a longer "settle" burn-in is compared
    with nothing else), clamped to ``[ε / JUMP, ε / 1.5]``, so the search always descends and never overshoots by
    more than a jump. (This matters where ``κ̂`` says little, e.g. ``K = ||w||⁴``, whose curvature at ``w*`` is
    zero.) Both failed: the smaller. Anything else: ``ε / LADDER_FACTOR``.
    """
    if verdict.kind == "diverged":
        return lr / JUMP
    candidates = []
    if verdict.kind in ("bias", "acceptance"):
        bias = step_bias(lr, verdict.kappa_eff, verdict.localization)
        if bias_cap and bias > bias_cap:
            candidates.append(min(lr / 1.5, max(lr / JUMP**2, 0.9 * lr * bias_cap / bias)))
        alike = {v.learning_rate: v for v in history if v.burnin == verdict.burnin}  # the last at each step
        alike[lr] = verdict
        predicted = _acceptance_step(list(alike.values()), target)
        if math.isfinite(predicted) and verdict.acceptance < pilot_acceptance(target):
            candidates.append(min(lr / 1.5, max(lr / JUMP, predicted)))
    if not candidates:
        return lr / LADDER_FACTOR
    return min(candidates)


def _refine_step(passed: _Verdict, failed: _Verdict, target: float, bias_cap: float | None = None) -> float:
    """A step between a passing and a failing pilot: the rejection model's prediction from the two when the
    failure was the acceptance, ``0.95 ε b / step_bias`` of the failed one when it was the step bias (which is
    linear in ε), the geometric midpoint otherwise; kept inside ``[passed · 1.1, failed / 1.1]``."""
    low, high = passed.learning_rate, failed.learning_rate
    guess = math.sqrt(low * high)
    bias = step_bias(high, failed.kappa_eff, failed.localization)
    if failed.kind == "bias" and bias_cap and bias > 0:
        guess = 0.95 * high * bias_cap / bias
    if failed.kind == "acceptance":
        predicted = _acceptance_step([passed, failed], target)
        if math.isfinite(predicted):
            guess = predicted
    return min(max(guess, low * 1.1), high / 1.1)


def _settled(pilots: _Pilots, v: _Verdict, gamma: float, kappa: float, need_positive: bool, history: list):
    """``v``, or the verdict of longer pilots at the same step while ``v``'s chains had not spread yet.

    Chains that have not spread yet (configurational temperature below ``1 − MAX_TEMPERATURE_ERROR``, the trust
    policy's check) sit where the potential is flatter than where the main run will be, and accept more: on the
    deep linear network at ``w* = 0`` (γ = 1) a pilot of 100 burn-in steps passed at ε = 7.3e-4 and the main run
    (2000 burn-in steps) came in at acceptance 0.79. Such a passing pilot is run again at the same step with
    ``SETTLE_FACTOR`` times its burn-in (at most the main run's, within the budget) until it is spread or fails.
    """
    while v.accepted and v.temperature < 1 - MAX_TEMPERATURE_ERROR and v.burnin < pilots.longest_burnin:
        longer = min(pilots.longest_burnin, SETTLE_FACTOR * v.burnin)
        w = pilots.run(v.learning_rate, gamma, kappa, "settle", need_positive=need_positive, burnin=longer)
        if w is None or w.burnin <= v.burnin:
            break
        history.append(w)
        v = w
    return v


def _search(pilots: _Pilots, gamma: float, top: float, kappa: float, need_positive: bool):
    """Descend from ``top`` to the first passing step, then refine towards the failing step above it.

    Returns ``(passed, failed_above, note)``; ``passed`` is None when no step passed, ``note`` says why (or how
    the refinement ended).
    """
    lr, failed_above, drifting, history = top, None, 0, []
    while True:
        if lr < LR_MIN:
            return None, failed_above, f"the search reached LR_MIN = {LR_MIN:g}"
        v = pilots.run(lr, gamma, kappa, "search", need_positive=need_positive)
        if v is None:
            hint = ""
            if failed_above is not None:
                hint = (
                    f"; the last pilot, at ε = {failed_above.learning_rate:.3g}, failed ({failed_above.note}), "
                    f"and the next step would have been {lr:.3g}: pass learning_rate={lr:.2g} (and check the "
                    "result's status), or a larger budget_fraction"
                )
            return None, failed_above, f"the pilot budget of {pilots.budget} chain-steps ran out{hint}"
        history.append(v)
        v = _settled(pilots, v, gamma, kappa, need_positive, history)
        if v.accepted:
            break
        failed_above = v
        if v.kind == "escaped":
            return None, v, f"at ε = {lr:.3g}, {v.note}; raise localization"
        if need_positive and v.kind == "diverged" and 0 < lr * kappa < ESCAPE_EPS_KAPPA:
            return (
                None,
                v,
                (
                    f"chains diverged at ε = {lr:.3g}, where εκ̂ = {lr * kappa:.2g} is far inside the stability limit "
                    "εκ < 4: they left the basin of w*, so a smaller step will not help; raise localization"
                ),
            )
        drifting = drifting + 1 if v.kind == "trend" else 0
        if drifting == 2:
            return (
                None,
                v,
                f"two consecutive pilots failed only stationarity ({v.note}); smaller steps mix slower",
            )
        lr = _next_step(lr, v, pilots.target, pilots.bias_cap, history)
    passed, note = v, ""
    while failed_above is not None and failed_above.learning_rate / passed.learning_rate > REFINE_RATIO:
        if failed_above.kind == "diverged":
            note = " (no refinement towards a diverged step)"
            break
        m = pilots.run(
            _refine_step(passed, failed_above, pilots.target, pilots.bias_cap),
            gamma,
            kappa,
            "refine",
            need_positive=need_positive,
        )
        if m is None:
            note = " (refinement stopped early: pilot budget spent)"
            break
        history.append(m)
        m = _settled(pilots, m, gamma, kappa, need_positive, history)
        passed, failed_above = (m, failed_above) if m.accepted else (passed, m)
    return passed, failed_above, note


def _budget(config: LLCConfig, fraction: float) -> int:
    """The pilots' budget in chain-steps: ``max(floor(fraction × chains × total_steps), MIN_BUDGET_CHAIN_STEPS)``.

    Examples
    --------
    >>> _budget(LLCConfig(draws=200, chains=4, burnin_steps=200), 0.3)  # 0.3 × 4 × 400
    480
    >>> _budget(LLCConfig(draws=100, chains=2, burnin_steps=50), 0.3)  # 90 < the minimum
    384
    """
    return max(math.floor(fraction * (config.chains * config.total_steps)), MIN_BUDGET_CHAIN_STEPS)


def _pilot_size(est: LLCConfig, budget: int, planned: int) -> tuple[int, int, int]:
    """(chains, shortest burn-in, draws) of the pilots: an equal share of the budget for ``planned`` pilots,
    ``PILOT_BURNIN_SHARE`` of each pilot's steps burn-in, never longer than the main run nor ``MAX_PILOT_STEPS``.

    Examples
    --------
    >>> _pilot_size(LLCConfig(draws=200, chains=4, burnin_steps=200), 480, PLANNED_PILOTS)  # 2 x (30 + 30) x 4
    (2, 30, 30)
    """
    main_len = est.burnin_steps + est.draws * est.steps_bw_draws
    share = budget // planned
    chains = min(est.chains, 4)
    if chains > 2 and share // chains < 48:
        chains = 2
    if chains > 1 and share // chains < MIN_PILOT_BURNIN + MIN_PILOT_DRAWS:
        chains = 1
    length = min(share // chains, main_len, MAX_PILOT_STEPS)
    burnin = math.floor(PILOT_BURNIN_SHARE * length)
    if burnin < MIN_PILOT_BURNIN or length - burnin < MIN_PILOT_DRAWS:
        raise ValueError(
            f"calibrate: the main run is {main_len} steps per chain, and a pilot, never longer than the main run, "
            f"needs at least {MIN_PILOT_BURNIN} burn-in steps and {MIN_PILOT_DRAWS} draws (a budget of {budget} "
            f"chain-steps shared by {planned} pilots gives {length} steps); make the main run longer "
            "(burnin_steps + draws x steps_bw_draws) or pass an explicit learning_rate."
        )
    return chains, burnin, length - burnin


def _check_number(name: str, value, low: float, high: float, *, low_open: bool, high_open: bool) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if not (
        ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    ):
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ValueError(f"calibrate: {name} must be a number in {lo}{low:g}, {high:g}{hi}; got {value!r}.")
    return float(value)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _config_of(estimator: Any, who: str, *, allow_none: bool) -> LLCConfig:
    """The :class:`~lambdahat.LLCConfig` behind ``estimator``: an ``LLCEstimator``'s ``.config``, an ``LLCConfig``
    itself, or (``allow_none``) the defaults for ``None``. Duck-typed, so this module needs no estimator import."""
    if estimator is None and allow_none:
        return LLCConfig()
    config = getattr(estimator, "config", estimator)
    if not isinstance(config, LLCConfig) or not callable(getattr(estimator, "replace", None)):
        allowed = "an LLCEstimator, an LLCConfig or None" if allow_none else "an LLCEstimator or an LLCConfig"
        raise ValueError(f"{who}: estimator must be {allowed}; got {type(estimator).__name__}.")
    return config


def _rule_options(
    config: LLCConfig,
    seed,
    target_acceptance,
    budget_fraction,
    max_step_bias,
    tune_localization,
    localizations,
) -> tuple[float, float, float | None, list[float]]:
    """The validated options of the rule: ``(target, budget_fraction, max_step_bias, γ ladder)``."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0):
        raise ValueError(f"calibrate: seed must be a non-negative int or None; got {seed!r}.")
    target = _check_number("target_acceptance", target_acceptance, 0, 1, low_open=True, high_open=True)
    fraction = _check_number("budget_fraction", budget_fraction, 0, 1, low_open=True, high_open=False)
    if max_step_bias is not None:
        max_step_bias = _check_number("max_step_bias", max_step_bias, 0, 1, low_open=True, high_open=True)
    if not isinstance(tune_localization, bool):
        raise ValueError(f"calibrate: tune_localization must be True or False; got {tune_localization!r}.")
    gamma0 = config.localization
    if localizations is not None:
        if not tune_localization:
            raise ValueError("calibrate: localizations is the γ ladder of tune_localization=True; pass both.")
        if isinstance(localizations, str) or not isinstance(localizations, Sequence) or not localizations:
            raise ValueError(
                f"calibrate: localizations must be a non-empty list of numbers; got {localizations!r}."
            )
        gammas = sorted(
            {
                _check_number("localizations", g, 0, math.inf, low_open=False, high_open=True)
                for g in localizations
            }
        )
    elif tune_localization:
        gammas = [gamma0 * f for f in (0.1, 0.3, 1.0, 3.0, 10.0)] if gamma0 > 0 else [0.0, 1.0, 10.0, 100.0]
    else:
        gammas = [gamma0]
    return target, fraction, max_step_bias, gammas


# ----------------------------------------------------------------------------------------------------
# The public entry points
# ----------------------------------------------------------------------------------------------------


def calibrate_problem(
    problem: Problem,
    config: LLCConfig,
    *,
    seed: int | None = None,
    chain_batch: int | None = None,
    show_progress: bool = False,
    target_acceptance: float = MIN_ACCEPTANCE,
    budget_fraction: float = 0.3,
    max_step_bias: float | None = 0.05,
    tune_localization: bool = False,
    localizations: Sequence[float] | None = None,
) -> Calibration:
    """Choose the step size ε (and, if asked, the localization γ) of ``config`` from short pilot runs on a
    prepared problem.

    ε is the largest tested step, at most the bias cap ``(4b/(1 + b))/κ̂`` (``b = max_step_bias``), whose pilot
    has no divergence, a MALA acceptance of at least ``target_acceptance`` and a trend p-value of at least
    ``PILOT_TREND_P_VALUE`` (0.01); the module docstring gives the search and the thresholds in full. Every pilot
    is :func:`~lambdahat.problem.run_chains` on ``problem`` (its ``L0``, orthogonal direction, nβ and compile
    setting); κ̂ comes from Hessian-vector products of the first slot's model on the first batch of the pilots'
    data order.

    Parameters
    ----------
    problem:
        From :func:`lambdahat.prepare`.
    config:
        The settings of the main run: pilots use its sampler, nβ, localization, weight decay and bounding box,
        and its size sets the budget. Its ``learning_rate`` is not used (it may be ``"auto"``): every pilot runs
        at an explicit ε. The settings fixed by the preparation must match the problem's.
    seed:
        Master seed of every pilot (the same for all: neighbouring steps are compared on the same noise);
        ``None`` draws one.
    chain_batch, show_progress:
        As in :func:`~lambdahat.problem.run_chains`, for each pilot.
    target_acceptance:
        Least mean MALA acceptance of a passing pilot, in (0, 1) (default :data:`lambdahat.trust.MIN_ACCEPTANCE`,
        0.9, the least acceptance of a trusted estimate).
    budget_fraction:
        Upper bound of the pilots' chain-steps, as a fraction in (0, 1] of the main run's
        ``chains × (burnin_steps + draws × steps_bw_draws)`` (default 0.3), but never below
        ``MIN_BUDGET_CHAIN_STEPS`` (384) chain-steps.
    max_step_bias:
        ``b`` in (0, 1): the largest relative step bias of λ̂ allowed. ε is capped at ``(4b/(1 + b))/κ̂`` (SGLD's
        step inflates the stationary variance of the stiffest direction at ``w*``, ``1/(1 − εκ/4)``, by at most
        ``1 + b``), and a pilot fails when :func:`step_bias` at the curvature its chains met exceeds ``b`` (the
        singular slope: on a quadratic this is conservative). Default 0.05: without these the 0.9-acceptance step
        overestimates λ̂ by about 14 % in d = 10 and by 20–22 % on the monomial and normal crossing of
        ``lambdahat validate``. ``None`` disables both. Not applied to RMSProp-SGLD (the reason says so).
    tune_localization:
        Also choose γ: the smallest value of the ladder at which a step passes, gives ``λ̂ > 0`` and lets the flat
        directions relax ``ε (γ + wd) B / 2 ≥ 1.5`` times in the main run's burn-in ``B`` (or, when none does, the
        one closest to that).
    localizations:
        γ ladder for ``tune_localization`` (default ``γ₀ · [0.1, 0.3, 1, 3, 10]``, ``[0, 1, 10, 100]`` when
        ``γ₀ = 0``).

    Returns
    -------
    Calibration

    Raises
    ------
    TypeError
        When ``problem`` or ``config`` is of the wrong type.
    ValueError
        On invalid options, settings that differ from the preparation's, or when the budget cannot pay for useful
        pilots.
    CalibrationError
        When no step passes; the message says why and what to do, ``.table`` holds the pilots.

    Examples
    --------
    >>> from lambdahat import truth
    >>> from lambdahat.problem import prepare, run_chains
    >>> case = truth.regular_case(10, n=1000)
    >>> problem = prepare(case.model, case.loader(100), criterion_fn=case.criterion_fn, compile=False)
    >>> config = LLCConfig(draws=200, chains=4, burnin_steps=100, learning_rate="auto", localization=10.0)
    >>> cal = calibrate_problem(problem, config, seed=0)
    >>> result = run_chains(problem, config.replace(learning_rate=cal.learning_rate), seed=0, show_progress=False)
    >>> result.init_loss == problem.init_loss and result.learning_rate == cal.learning_rate
    True
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"calibrate: problem must come from lambdahat.prepare; got {type(problem).__name__}.")
    if not isinstance(config, LLCConfig):
        raise TypeError(f"calibrate: config must be an LLCConfig; got {type(config).__name__}.")
    problem.check(config)
    target, fraction, max_step_bias, gammas = _rule_options(
        config, seed, target_acceptance, budget_fraction, max_step_bias, tune_localization, localizations
    )
    seed = resolve_seed(seed)

    name = config.sampler
    budget = _budget(config, fraction)
    planned = PLANNED_PILOTS + 2 * (len(gammas) - 1) + (1 if name == "sgnht" else 0)
    p_chains, p_burnin, p_draws = _pilot_size(config, budget, planned)
    nbeta = problem.nbeta(config)
    x, y = next(iter(problem.feed(0, seed)))  # the first batch the pilots see
    hessian_top = _hessian_top(problem.slots[0], x, y, problem.direction, seed)

    def pilot_config(lr: float, gamma: float, burnin: int, confirm: bool) -> LLCConfig:
        """The main run's settings at pilot size, a draw every step, at an explicit ε; SGNHT searches with SGLD."""
        size: dict[str, Any] = dict(draws=p_draws, chains=p_chains, burnin_steps=burnin, steps_bw_draws=1)
        if name == "sgnht" and not confirm:
            size.update(sampler="sgld", sampler_options={})
        elif name == "rmsprop_sgld":
            opts = dict(config.sampler_options)
            opts["adapt_steps"] = min(opts.get("adapt_steps", burnin), burnin)
            size.update(sampler_options=opts)
        return config.replace(**size, learning_rate=lr, localization=gamma)  # never "auto": no recursion

    def run(lr: float, gamma: float, burnin: int, confirm: bool) -> tuple[str, LLCResult]:
        pilot = pilot_config(lr, gamma, burnin, confirm)
        with warnings.catch_warnings():  # a diverged pilot is expected; numpy warns on its empty traces
            warnings.simplefilter("ignore", RuntimeWarning)
            result = run_chains(
                problem, pilot, seed=seed, chain_batch=chain_batch, show_progress=show_progress, warn=False
            )
        return pilot.sampler, result

    def kappa(gamma: float) -> float:
        return nbeta * hessian_top + gamma + config.weight_decay

    def burnin_for(lr: float, k: float) -> int:
        if name == "rmsprop_sgld" or not (k > 0):
            return p_burnin
        longest = min(config.burnin_steps, 2 * p_burnin + p_draws)  # at most two planned pilots' worth
        return max(p_burnin, min(math.ceil(BURNIN_RELAXATIONS / (lr * k)), longest))

    def top(k: float) -> tuple[float, str]:
        """``ε_top`` and how it was set."""
        if name == "rmsprop_sgld" or not (k > 0):
            why = "RMSProp-SGLD rescales the step" if name == "rmsprop_sgld" else "no curvature estimate"
            return LR_MAX, f"ε_top = LR_MAX = {LR_MAX:g} ({why})"
        if max_step_bias is not None and 4 * max_step_bias / (1 + max_step_bias) / k < LR_MAX:
            cap = 4 * max_step_bias / (1 + max_step_bias) / k
            return (
                cap,
                f"ε_top = {_fmt(cap)} = (4b/(1+b))/κ̂, the bias cap of max_step_bias b = {max_step_bias:g}",
            )
        return min(LR_MAX, 1 / k), f"ε_top = min(LR_MAX, 1/κ̂) = {_fmt(min(LR_MAX, 1 / k))}"

    bias_cap = max_step_bias if name != "rmsprop_sgld" else None  # the largest step_bias of a passing pilot
    pilots = _Pilots(
        run, burnin_for, p_chains, p_draws, budget, target, bias_cap, p_burnin, config.burnin_steps
    )
    if name == "sgnht":  # keep one planned pilot's worth for the SGNHT confirmation
        pilots.reserve = p_chains * (p_burnin + p_draws)
    notes: list[str] = []
    chosen, fallback = None, None
    least_gamma = (
        0.0  # from a γ whose step relaxed the flat directions too little: the γ that step would need
    )
    for gamma in gammas:
        if gamma < least_gamma:
            notes.append(f"γ = {_fmt(gamma)}: skipped, below the {_fmt(least_gamma)} a lower γ's step needed")
            continue
        k = kappa(gamma)  # NaN when the probe failed
        start, top_note = top(k)
        passed, failed_above, note = _search(pilots, gamma, start, k, tune_localization)
        if passed is None:
            notes.append(f"γ = {_fmt(gamma)}: {note}")
            continue
        lr = passed.learning_rate
        if name == "sgnht":
            confirmed, why = (
                None,
                "SGNHT was not stable, stationary and at temperature at the SGLD step or below",
            )
            while confirmed is None and lr >= LR_MIN:
                c = pilots.run(lr, gamma, k, "confirm", confirm=True, need_positive=tune_localization)
                if c is None:
                    why = f"the pilot budget ran out before SGNHT confirmed a step (last tried: {_fmt(lr)})"
                    break
                if c.accepted:
                    confirmed = c
                else:
                    lr /= LADDER_FACTOR
            if confirmed is None:
                notes.append(f"γ = {_fmt(gamma)}: {why}")
                continue
        r = relaxations(lr, gamma, config.burnin_steps, config.weight_decay)
        if tune_localization and name != "rmsprop_sgld" and r < MIN_RELAXATIONS:
            notes.append(
                f"γ = {_fmt(gamma)}: its step {_fmt(lr)} relaxes the flat directions only R = ε(γ + wd)B/2 = "
                f"{r:.2g} < {MIN_RELAXATIONS:g} times in the main run's {config.burnin_steps} burn-in steps (λ̂ "
                "would still be rising)"
            )
            fallback = (
                fallback
                if fallback is not None and fallback[-1] >= r
                else (gamma, k, passed, failed_above, note, top_note, lr, r)
            )
            # the step rarely grows with γ (κ only grows), so a γ below what this step needs will not do either
            least_gamma = 2 * MIN_RELAXATIONS / (lr * config.burnin_steps) - config.weight_decay
            continue
        chosen = (gamma, k, passed, failed_above, note, top_note, lr)
        break
    closest = chosen is None and fallback is not None
    if closest:  # no γ settles in the burn-in: the one that comes closest
        chosen = fallback[:-1]

    table = pilots.table()
    if chosen is None:
        if len(table) and bool((table["n_diverged"] > 0).all()):
            message = (
                f"every pilot diverged (learning_rate {', '.join(_fmt(v) for v in table['learning_rate'])}; "
                f"{'; '.join(notes)}). Check that the loss is finite near w* (a model with NaN/inf just off w* "
                "cannot be sampled), or raise localization."
            )
        else:
            message = (
                f"no step passed the rule (no divergence, pilot acceptance >= {pilot_acceptance(target):.3g}, "
                f"step bias <= max_step_bias, trend p >= {PILOT_TREND_P_VALUE:g}): {'; '.join(notes)}. If a "
                "step is named above, pass it as learning_rate; otherwise try tune_localization=True (or a "
                "larger localization), a longer main run or a larger budget_fraction."
            )
        raise CalibrationError(f"calibrate: {message}\n{table.to_string(index=False)}", table)

    gamma, k, passed, failed_above, note, top_note, lr = chosen
    reason = (
        f"learning_rate {_fmt(passed.learning_rate)} is the largest tested step whose pilot passed (no "
        f"divergence, {passed.note})"
    )
    if failed_above is not None:
        reason += (
            f"; the next larger tested step {_fmt(failed_above.learning_rate)} failed ({failed_above.note})"
        )
    else:
        reason += f"; it is the top of the search, {top_note}, κ̂ = {_fmt(k)}"
    reason += note
    if name == "sgnht":
        reason += f"; searched with SGLD, SGNHT confirmed stable and stationary at {_fmt(lr)}"
    if name == "rmsprop_sgld" and max_step_bias is not None:
        reason += "; max_step_bias not applied (RMSProp-SGLD)"
    reason += "."
    advice = [
        text
        for text in (
            None
            if name == "rmsprop_sgld"
            else relaxation_advice(lr, gamma, config.burnin_steps, config.weight_decay),
            localization_advice(gamma, nbeta, hessian_top),
            nbeta_advice(nbeta, problem.n),
        )
        if text
    ]
    for text in advice:
        warnings.warn(f"calibrate: {text}", RuntimeWarning, stacklevel=2)
    ladder = f"[{', '.join(_fmt(g) for g in gammas)}]"
    if tune_localization and closest:
        reason += (
            f" No localization of {ladder} had a passing step at which the flat directions relax at least "
            f"{MIN_RELAXATIONS:g} times in burn-in; localization {_fmt(gamma)} comes closest"
        )
    elif tune_localization:
        reason += (
            f" localization {_fmt(gamma)} is the smallest of {ladder} at which a step passed with λ̂ > 0 and the "
            f"flat directions relax at least {MIN_RELAXATIONS:g} times in burn-in"
        )
        reason += f" ({'; '.join(notes)})." if notes else "."
    return Calibration(
        learning_rate=float(lr),
        localization=float(gamma),
        table=table,
        reason=reason,
        pilot_chain_steps=int(pilots.spent),
        budget_chain_steps=int(budget),
        pilot_chains=p_chains,
        pilot_burnin_steps=p_burnin,
        pilot_draws=p_draws,
        curvature=float(k),
        target_acceptance=float(target),
        warnings=tuple(advice),
    )


def calibrate(
    model: nn.Module,
    loader,
    estimator: Any = None,
    *,
    criterion_fn: Callable | None = None,
    unpack_fn: Callable | None = None,
    loss_fn: Callable | None = None,
    devices="cpu",
    seed: int | None = 0,
    target_acceptance: float = MIN_ACCEPTANCE,
    max_step_bias: float | None = 0.05,
    tune_localization: bool = False,
    localizations: Sequence[float] | None = None,
    budget_fraction: float = 0.3,
    show_progress: bool = False,
    params=None,
    chain_batch: int | None = None,
) -> Calibration:
    """Choose the step size ε (and, if asked, the localization γ) of ``estimator`` from short pilot runs.

    Prepares the problem (:func:`lambdahat.prepare`, eager: pilots are short) and calls :func:`calibrate_problem`
    on it; to calibrate and then sample without preparing twice, use ``prepare`` and ``calibrate_problem`` (or
    :func:`lambdahat.sample` with ``learning_rate="auto"``).

    Parameters
    ----------
    model, loader, criterion_fn, unpack_fn, loss_fn, devices, params:
        As in :meth:`LLCEstimator.estimate_llc <lambdahat.LLCEstimator.estimate_llc>`.
    estimator:
        The estimator of the main run: an ``LLCEstimator``, an ``LLCConfig`` or ``None`` (the defaults). Pilots
        use its sampler, nβ, localization, dtype, weight decay, restriction and bounding box, and its size sets the
        budget. Its ``learning_rate`` is not used (it may be ``"auto"``): every pilot runs at an explicit ε.
    seed:
        Master seed of every pilot (default 0; ``None`` draws one).
    target_acceptance, max_step_bias, tune_localization, localizations, budget_fraction, chain_batch, show_progress:
        As in :func:`calibrate_problem`.

    Returns
    -------
    Calibration

    Raises
    ------
    ValueError
        On invalid arguments, or when the budget cannot pay for useful pilots.
    CalibrationError
        When no step passes; the message says why and what to do, ``.table`` holds the pilots.

    Examples
    --------
    >>> from lambdahat import LLCEstimator, truth
    >>> case = truth.regular_case(10, n=1000)
    >>> est = LLCEstimator(draws=200, chains=4, burnin_steps=100, localization=10.0)
    >>> cal = calibrate(case.model, case.loader(100), est, criterion_fn=case.criterion_fn)
    >>> cal.learning_rate * cal.curvature <= 4 * 0.05 / 1.05 and cal.pilot_chain_steps <= max(0.3 * 4 * 300, 384)
    True
    >>> llcs = calibrated_estimator(est, cal).estimate_llc(
    ...     case.model, case.loader(100), criterion_fn=case.criterion_fn, seed=0, compile=False,
    ...     show_progress=False)
    """
    config = _config_of(estimator, "calibrate", allow_none=True)
    if not isinstance(model, nn.Module):
        raise ValueError(f"calibrate: model must be a torch.nn.Module; got {type(model).__name__}.")
    # Check the options before the preparation's pass over the data (calibrate_problem checks them again).
    _rule_options(
        config, seed, target_acceptance, budget_fraction, max_step_bias, tune_localization, localizations
    )
    problem = prepare(
        model,
        loader,
        config,
        criterion_fn=criterion_fn,
        unpack_fn=unpack_fn,
        loss_fn=loss_fn,
        devices=devices,
        params=params,
        compile=False,
    )
    return calibrate_problem(
        problem,
        config,
        seed=seed,
        chain_batch=chain_batch,
        show_progress=show_progress,
        target_acceptance=target_acceptance,
        budget_fraction=budget_fraction,
        max_step_bias=max_step_bias,
        tune_localization=tune_localization,
        localizations=localizations,
    )
