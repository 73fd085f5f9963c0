"""Automatic choice of the step size ε (and optionally the localization γ) from short pilot runs.

**Where.** :func:`calibrate_problem` runs every pilot with :func:`lambdahat.problem.run_chains` on one problem
prepared by :func:`lambdahat.problem.prepare`, so the pilots share its model copies, ``L0``, orthogonal direction
and step functions with each other and with the main run; :func:`lambdahat.sample` calls it for
``learning_rate="auto"``. :func:`calibrate` prepares the problem from a model and a loader first.

**The rule.** ε is the largest tested step at most ``ε_top`` whose pilot run is

* *stable*: no chain diverged (:func:`lambdahat.diagnostics.divergence`);
* *accepting*: its mean MALA acceptance ``result.mala_acceptance`` is at least ``target_acceptance`` (default the
  trust policy's :data:`lambdahat.trust.MIN_ACCEPTANCE`, 0.9);
* *stationary*: the two-sided p-value of its trend statistic, ``diagnostics.trend_p_value(result.trend_z,
  chains kept)``, is at least ``PILOT_TREND_P_VALUE`` (0.01).

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

**Bias cap** (``max_step_bias = b``, default 0.05). Acceptance does not bound the discretization bias of the
unadjusted chain: SGLD inflates the stationary variance along a direction of curvature κ by ``1/(1 − εκ/4)``
(:func:`lambdahat.truth.regular_posterior_mean_nbeta_k`), so the 0.9-acceptance step alone overestimates λ̂ by
about 14 % in d = 10 (6 % in d = 100, 4 % in d = 400). The search never goes above ``ε = (4b/(1 + b)) / κ̂``, the
step at which the stiffest direction is inflated by exactly ``1 + b``; every other direction is inflated less, so on
a quadratic λ̂ is biased by at most ``b`` (``≈ 4b/κ̂`` for small b; 5 % at ``εκ̂ ≈ 0.19``). κ̂ is a Rayleigh
quotient, a lower bound of the top curvature, and comes from one batch at ``w*``: away from quadratics the cap is a
guide, not a guarantee. It is not applied to RMSProp-SGLD, whose preconditioner rescales the step per coordinate.
Each pilot is also checked at the curvature its chains met,
``κ_eff = nβ rms(||∇L_B||) / rms(||w − w*||) + γ`` (:func:`effective_curvature`; exact on a quadratic): a pilot
with ``ε κ_eff`` above the cap fails ("bias") and the next step is ``0.9 · cap / κ_eff``. This matters where the
Hessian at ``w*`` is zero (``K = w₁² w₂⁴``): there the ``w*`` cap alone chose a step at which every chain of the main
run diverged. ``max_step_bias=None`` switches both checks off.

**Curvature.** ``κ̂ = nβ |λ_max(∇²L_B(w*))| + γ + wd``, the curvature of the localized potential along its
stiffest direction, from ``HVP_ITERATIONS`` power iterations with Hessian-vector products on the first batch.

**Search.** It starts at ``ε_top = min(LR_MAX, 1/κ̂, (4b/(1 + b))/κ̂)`` (SGLD is unstable for ``εκ ≥ 4``;
RMSProp-SGLD and a failed curvature probe start at ``LR_MAX``) and descends by ``JUMP`` (10) after a diverged
pilot and by ``LADDER_FACTOR`` (3) after any other failure, down to ``LR_MIN``. Between the first passing step and
the smallest failing one above it, bisection in ``log ε`` refines until their ratio is at most ``REFINE_RATIO``
(1.35), unless that failing step diverged: divergence is a rare event, and a pilot of a few hundred chain-steps
that does not diverge says little about a main run ten times longer, so the search stays a factor ``JUMP`` below
a diverged step. (On ``K = w₁² w₂⁴``, γ = 10, refining towards a diverged 0.019 chose 0.014, where 5 of 8
chains of a 2500-step main run diverged; at 0.0019 none did and λ̂ = 0.129 ± 0.013 against the exact 0.126.) So the chosen ε is the largest accepted step of the table, and every larger tested step failed. The
search stops early, without a step, when two consecutive pilots fail only stationarity: a smaller step will not
help, more localization (or a longer run) will. Divergence far inside the stability limit (``εκ̂ <
ESCAPE_EPS_KAPPA``) only ends the search at a γ while γ is being tuned; otherwise the search keeps stepping down,
because on singular potentials the curvature at ``w*`` (all that ``κ̂`` measures) can be far below the curvature
the chains meet a little further out (``K = ||w||⁴`` has none at ``w*``). Every pilot uses the same seed (neighbouring steps see
the same noise) and the problem's ``L0``.

**Localization** (``tune_localization=True``). γ is the smallest value of an ascending ladder (default
``γ₀ · [0.1, 0.3, 1, 3, 10]`` with ``γ₀`` the estimator's localization, ``[0, 1, 10, 100]`` when ``γ₀ = 0``) at
which the search finds a step that also gives ``λ̂ > 0``. A pilot with ``λ̂ ≤ 0`` (the chains found lower loss
than ``L0``) has left the basin of ``w*``, which ends the search at that γ, as does divergence at ``εκ̂ <
ESCAPE_EPS_KAPPA``. A small γ biases λ̂ least; a large γ keeps the chains in the basin. Pilots only see escapes
that happen within their length.

**Cost.** The pilots' chain-steps (chains × (burn-in + draws) each) never exceed ``budget_fraction × chains ×
(burnin_steps + draws · steps_bw_draws)`` of the main estimator. The budget is shared for ``PLANNED_PILOTS`` (6)
pilots, plus 3 per extra γ and 2 for SGNHT: up to 4 chains (2 when 4 would leave fewer than 48 steps each, 1 when
2 would leave fewer than 24), one third burn-in, two thirds draws (a draw every step). A pilot at a small step
burns in longer, for ``5/(εκ̂)`` steps (five relaxation times of the stiffest mode), but never longer than the
main run's ``burnin_steps``. A pilot that would cross the budget is not run. Neither the preparation of the problem
(its pass for ``L0``) nor the probe (``HVP_ITERATIONS`` Hessian-vector products on the first batch) is counted.

SGNHT has no MALA acceptance: its search runs SGLD at the same ε (same stability limit ``εκ < 4``, see
:mod:`lambdahat.samplers.sgnht`), and an SGNHT pilot then confirms the step (stable and stationary), stepping
down by ``LADDER_FACTOR`` if it is not.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import diagnostics
from .config import LLCConfig
from .functional import FunctionalModel
from .problem import Problem, prepare, run_chains
from .result import LLCResult
from .rng import resolve_seed
from .samplers.base import project
from .trust import MIN_ACCEPTANCE

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
#: Refinement stops when the smallest failing step is within this ratio of the largest passing one.
REFINE_RATIO = 1.35
#: The budget is shared out for this many pilots (+3 per extra γ, +2 for SGNHT's confirmation).
PLANNED_PILOTS = 6
#: A pilot's burn-in lasts at least this many relaxation times ``1/(εκ̂)`` (at most the main run's burn-in).
BURNIN_RELAXATIONS = 5.0
#: Shortest pilot: burn-in and draws.
MIN_PILOT_BURNIN = 8
MIN_PILOT_DRAWS = 16
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
        self.table = table if table is not None else pd.DataFrame(columns=_COLUMNS)


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
        One row per pilot: ``pilot``, ``stage`` (``"search"``, ``"refine"``, ``"confirm"``), ``sampler``,
        ``learning_rate``, ``localization``, ``eps_kappa`` (``ε κ̂``), ``burnin_steps``, ``mala_acceptance``,
        ``trend_z``, ``trend_p``, ``n_diverged``, ``llc_mean``, ``chain_steps``, ``accepted`` and ``note`` (why it
        passed or failed).
    reason:
        Why these values, in words.
    pilot_chain_steps:
        Chain-steps spent on pilots (≤ ``budget_chain_steps``).
    budget_chain_steps:
        ``floor(budget_fraction × main run's chain-steps)``.
    pilot_chains, pilot_burnin_steps, pilot_draws:
        Pilot size; ``pilot_burnin_steps`` is the shortest burn-in (see the table for each pilot's).
    curvature:
        κ̂ at the chosen γ (NaN when it could not be estimated).
    target_acceptance:
        The acceptance target of the rule.
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
            "pilots": [{str(k): _plain(v) for k, v in row.items()} for row in records],
        }


def calibrated_estimator(estimator: Any, calibration: Calibration) -> Any:
    """A copy of ``estimator`` (an ``LLCEstimator`` or an ``LLCConfig``) with the calibrated ``learning_rate`` and
    ``localization``, all else unchanged.

    Examples
    --------
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


def _judge(
    result: LLCResult, target: float, *, confirm: bool, need_positive: bool, bias_cap: float | None = None
) -> tuple[str, str]:
    """``(kind, note)`` of a pilot under the rule (``confirm``: an SGNHT pilot, no acceptance to judge;
    ``bias_cap``: the largest allowed ``ε κ_eff``)."""
    n_div = int(result.diverged.sum())
    if n_div:
        return "diverged", f"{n_div}/{len(result.diverged)} chains diverged"
    if need_positive and not result.llc_mean > 0:
        return "escaped", f"λ̂ = {result.llc_mean:.3g} <= 0: the chains left the basin of w*"
    k_eff = effective_curvature(result) if bias_cap is not None and not confirm else math.nan
    if math.isfinite(k_eff) and result.learning_rate * k_eff > bias_cap:
        return "bias", (
            f"ε κ_eff = {result.learning_rate * k_eff:.2g} > {bias_cap:.2g} (κ_eff = {k_eff:.3g}, the curvature "
            "the chains met): step bias above max_step_bias"
        )
    acc = result.mala_acceptance
    if not confirm and not acc >= target:
        return "acceptance", f"acceptance {acc:.3f} < {target:g}"
    p = _trend_p(result)
    if p < PILOT_TREND_P_VALUE:
        return "trend", f"drifting: trend t = {result.trend_z:+.1f}, p = {p:.2g} < {PILOT_TREND_P_VALUE:g}"
    trend = (
        "trend not tested (one chain)" if math.isnan(p) else f"trend p = {p:.2g} >= {PILOT_TREND_P_VALUE:g}"
    )
    return "ok", ("stable, " if confirm else f"acceptance {acc:.3f} >= {target:g}, ") + trend


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
    ):
        self._run, self._burnin, self.chains, self.draws = run, burnin, chains, draws
        self.budget, self.target, self.spent, self.rows = budget, target, 0, []
        self.bias_cap = bias_cap

    def run(
        self, lr: float, gamma: float, kappa: float, stage: str, *, confirm=False, need_positive=False
    ) -> _Verdict | None:
        """Run and judge one pilot; None (and nothing run) when it would cross the budget."""
        burnin = self._burnin(lr, kappa)
        if self.spent + self.chains * (burnin + self.draws) > self.budget:
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
        return _Verdict(lr, accepted, kind, note, result.mala_acceptance, effective_curvature(result))

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=_COLUMNS)


def _next_step(lr: float, verdict: _Verdict, target: float, bias_cap: float | None = None) -> float:
    """The next, smaller step after a failed pilot.

    Divergence: ``ε / JUMP``. Step bias over the cap at the curvature the chains met: ``0.9 · cap / κ_eff``.
    Too little acceptance ``a``: ``ε · (0.8 (1 − target) / (1 − a))²`` aims below the
    target even where the rejection rate ``1 − a`` grows only like ``sqrt(ε)`` (measured on a deep linear network at
    ``w* = 0``: a 5x smaller step took the acceptance from 0.57 only to 0.74); it is clamped to
    ``[ε / JUMP, ε / 2]`` so that the ladder always descends and never overshoots by more than a jump.
    (This matters where ``κ̂`` says little, e.g. ``K = ||w||⁴``, whose curvature at ``w*`` is zero.) Anything
    else: ``ε / LADDER_FACTOR``.
    """
    if verdict.kind == "diverged":
        return lr / JUMP
    if verdict.kind == "bias" and bias_cap and verdict.kappa_eff > 0:  # just inside the cap at that curvature
        return min(lr / 2, 0.9 * bias_cap / verdict.kappa_eff)
    acc = verdict.acceptance
    if verdict.kind == "acceptance" and math.isfinite(acc) and acc < 1:
        factor = (0.8 * (1 - target) / (1 - acc)) ** 2
        return lr * min(0.5, max(1 / JUMP, factor))
    return lr / LADDER_FACTOR


def _search(pilots: _Pilots, gamma: float, top: float, kappa: float, need_positive: bool):
    """Descend from ``top`` to the first passing step, then bisect in log ε towards the failing step above it.

    Returns ``(passed, failed_above, note)``; ``passed`` is None when no step passed, ``note`` says why (or how
    the refinement ended).
    """
    lr, failed_above, drifting = top, None, 0
    while True:
        if lr < LR_MIN:
            return None, failed_above, f"the search reached LR_MIN = {LR_MIN:g}"
        v = pilots.run(lr, gamma, kappa, "search", need_positive=need_positive)
        if v is None:
            return None, failed_above, "the pilot budget ran out before a step passed"
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
        lr = _next_step(lr, v, pilots.target, pilots.bias_cap)
    passed, note = v, ""
    while failed_above is not None and failed_above.learning_rate / passed.learning_rate > REFINE_RATIO:
        if failed_above.kind == "diverged":
            note = " (no refinement towards a diverged step)"
            break
        m = pilots.run(
            math.sqrt(failed_above.learning_rate * passed.learning_rate),
            gamma,
            kappa,
            "refine",
            need_positive=need_positive,
        )
        if m is None:
            note = " (refinement stopped early: pilot budget spent)"
            break
        passed, failed_above = (m, failed_above) if m.accepted else (passed, m)
    return passed, failed_above, note


def _pilot_size(est: LLCConfig, budget: int, planned: int) -> tuple[int, int, int]:
    """(chains, shortest burn-in, draws) of the pilots: an equal share of the budget for ``planned`` pilots."""
    main_len = est.burnin_steps + est.draws * est.steps_bw_draws
    share = budget // planned
    chains = min(est.chains, 4)
    if chains > 2 and share // chains < 48:
        chains = 2
    if chains > 1 and share // chains < MIN_PILOT_BURNIN + MIN_PILOT_DRAWS:
        chains = 1
    length = min(share // chains, main_len)
    burnin = length // 3
    if burnin < MIN_PILOT_BURNIN or length - burnin < MIN_PILOT_DRAWS:
        need = planned * (MIN_PILOT_BURNIN + MIN_PILOT_DRAWS)
        raise ValueError(
            f"calibrate: a budget of {budget} chain-steps (budget_fraction x {est.chains} chains x {main_len} "
            f"steps) leaves {share} per pilot for the {planned} planned pilots, below the shortest useful pilot "
            f"of 1 chain x {MIN_PILOT_BURNIN + MIN_PILOT_DRAWS} steps; raise budget_fraction (needs {need} "
            "chain-steps) or make the main run longer."
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
        ``chains × (burnin_steps + draws × steps_bw_draws)`` (default 0.3).
    max_step_bias:
        ``b`` in (0, 1): cap ε at ``(4b/(1 + b))/κ̂`` so that SGLD's step inflates the stationary variance of
        the stiffest direction, ``1/(1 − εκ/4)``, by at most ``1 + b``; on a quadratic λ̂ is then biased by at
        most ``b``. Default 0.05 (5 %; ``εκ̂ ≤ 0.19``): without it the 0.9-acceptance step overestimates λ̂ by
        about 14 % in d = 10. ``None`` disables the cap. Not applied to RMSProp-SGLD (the reason says so).
    tune_localization:
        Also choose γ: the smallest value of the ladder at which a step passes and gives ``λ̂ > 0``.
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
    budget = math.floor(fraction * (config.chains * config.total_steps))
    planned = PLANNED_PILOTS + 3 * (len(gammas) - 1) + (2 if name == "sgnht" else 0)
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
        return max(p_burnin, min(math.ceil(BURNIN_RELAXATIONS / (lr * k)), config.burnin_steps))

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

    bias_cap = (
        4 * max_step_bias / (1 + max_step_bias)
        if max_step_bias is not None and name != "rmsprop_sgld"
        else None
    )
    pilots = _Pilots(run, burnin_for, p_chains, p_draws, budget, target, bias_cap)
    notes: list[str] = []
    chosen = None
    for gamma in gammas:
        k = kappa(gamma)  # NaN when the probe failed
        start, top_note = top(k)
        passed, failed_above, note = _search(pilots, gamma, start, k, tune_localization)
        if passed is None:
            notes.append(f"γ = {_fmt(gamma)}: {note}")
            continue
        lr = passed.learning_rate
        if name == "sgnht":
            confirmed = None
            while confirmed is None and lr >= LR_MIN:
                c = pilots.run(lr, gamma, k, "confirm", confirm=True, need_positive=tune_localization)
                if c is None:
                    break
                if c.accepted:
                    confirmed = c
                else:
                    lr /= LADDER_FACTOR
            if confirmed is None:
                notes.append(
                    f"γ = {_fmt(gamma)}: SGNHT was not stable and stationary at the SGLD step or below"
                )
                continue
        chosen = (gamma, k, passed, failed_above, note, top_note, lr)
        break

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
                f"no step passed the rule (no divergence, acceptance >= {target:g}, trend p >= "
                f"{PILOT_TREND_P_VALUE:g}): {'; '.join(notes)}. Try tune_localization=True (or a larger "
                "localization), a longer main run or a larger budget_fraction."
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
    if tune_localization:
        reason += (
            f" localization {_fmt(gamma)} is the smallest of [{', '.join(_fmt(g) for g in gammas)}] at which a "
            "step passed with λ̂ > 0"
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
    >>> cal.learning_rate * cal.curvature <= 4 * 0.05 / 1.05 and cal.pilot_chain_steps <= 0.3 * 4 * 300
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
