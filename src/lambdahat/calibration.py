"""Automatic choice of the step size ε (and optionally the localization γ) from short pilot runs.

The rule, in one line: **ε is the largest step whose pilots are stable, accept like a well-tuned Langevin chain
and look stationary**, where for a pilot run at step ε

* *stable*: no chain diverged (see :func:`lambdahat.diagnostics.divergence`);
* *accepting*: the mean MALA acceptance ``a`` divided by the acceptance floor ``a₀`` of the minibatch noise is at
  least ``target_acceptance − ACCEPTANCE_MARGIN`` (0.9 − 0.03 = 0.87 by default);
* *stationary*: ``|trend_z| ≤ TREND_Z_MAX`` (4, the threshold at which :class:`~lambdahat.LLCResult` warns).

**Why the acceptance floor.** The MALA acceptance of an SGLD transition ``w → w'`` (Furman & Lau 2024) compares
``U(w)`` on the minibatch of one step with ``U(w')`` on the minibatch of the next, so besides the discretization
error it contains the batch-to-batch noise ``X = nβ (L_{B_t}(w) − L_{B_{t+1}}(w))``, which does not vanish as
``ε → 0``. With ``X ~ N(0, s²)`` this noise alone gives the acceptance

.. math::

    a_0 = \\mathbb E[\\min(1, e^X)] = \\tfrac12 + \\tfrac12\\, \\mathrm{erfcx}(s/\\sqrt2) \\in (\\tfrac12, 1],

measured at ``w*`` from the losses of consecutive batches of the loader (``s = nβ · rms(L_{B_t} − L_{B_{t+1}})``).
Full-batch loaders and deterministic losses have ``a₀ = 1``, and the rule is then the plain "acceptance ≥ 0.87".
On a minibatched MLP (n = 960, batch 32, nβ = 140) ``a₀ = 0.54`` and the raw acceptance stays between 0.49 and
0.58 for every ε from 3e-4 down to 1e-6: without the floor no ε would pass. Treating step and noise rejections as
independent (``a ≈ a_step · a₀``) is a heuristic; the table of pilots shows both numbers. If the ratio does not
rise as ε falls threefold, the search stops and says so (the noise, not the step, limits the acceptance).

**Search.** It starts at a safe upper bound ``ε_top = min(LR_MAX, 1/κ̂)``, ``κ̂ = nβ |λ_max(∇²L_B(w*))| + γ + wd``
the curvature of the localized potential from ``HVP_ITERATIONS`` power iterations with Hessian-vector products
on the first batch (SGLD is unstable for ``εκ ≥ 4``, and ``εκ = 1`` already inflates a Gaussian's variance by
33 %; RMSProp-SGLD rescales the step by its preconditioner, so it starts at ``LR_MAX``). From there it descends:
after a diverged pilot by ``JUMP`` (10), after a pilot that accepts too little to ``0.8 ε (1 − target)/(1 − a/a₀)``
(the rejection rate grows like ε to ε^{3/2}; the linear prediction jumps no further than needed) clamped to
``[ε/JUMP, ε/2]``, after a pilot that accepts enough but drifts by ``LADDER_FACTOR`` (3), never below ``LR_MIN``.
Between the first passing step and the last failing one above it, bisection in ``log ε`` refines until they are
within ``REFINE_RATIO`` (1.35). Every pilot uses the same seed (common random numbers: neighbouring steps are
compared on the same noise) and the same ``L0`` (``init=``). The chosen ε is therefore the largest accepted step
in the table, and every larger tested step was rejected. An explicit ``learning_rates`` ladder is walked from its
largest value down instead, then refined the same way (``refine=False`` keeps the ladder value).

**Bias cap** (``max_step_bias``, off by default). Acceptance does not bound the discretization bias of the
unadjusted chain: SGLD inflates the stationary variance along a direction of curvature κ by ``1/(1 − εκ/4)``,
and on the regular quadratic truth case the 0.9 rule lands at ``εκ`` ≈ 0.6 (d = 10), 0.24 (d = 100), 0.17
(d = 400), i.e. λ̂ too large by about 18 %, 6 %, 4 %. ``max_step_bias = b`` caps the search at ``4b/κ̂``.

**Localization** (``tune_localization=True``). γ is the smallest value of an ascending ladder (default
``γ₀ · [0.1, 0.3, 1, 3, 10]``, ``γ₀`` the estimator's localization; ``[0, 1, 10, 100]`` when ``γ₀ = 0``) at which
an ε passes the rule above *and* the estimate of that pilot is stable: ``λ̂ > 0``. A negative λ̂ means the chains
found loss below ``L0``: the localization does not hold them in the basin of ``w*``; that is not a symptom of the
step, so one such pilot ends the search at that γ. Divergence far inside the stability limit
(``εκ̂ < ESCAPE_EPS_KAPPA``) also counts as leaving the basin and ends the search at that γ. A small γ biases λ̂
least, a large γ keeps the chains in the basin and stationary; the rule takes the least bias that is still stable.
Pilots only see escapes that happen within their length. R-hat is reported but not used: on pilots of a few dozen
autocorrelated draws it exceeds 1.1 even on a quadratic. The ε search at each larger γ starts from the largest
accepting step found at the previous one.

**Cost.** The pilots' chain-steps (chains × (burn-in + draws) per pilot) never exceed
``budget_fraction × chains × (burnin_steps + draws · steps_bw_draws)`` of the main estimator. The search is sized
for ``PLANNED_PILOTS`` (8) pilots, plus ``PILOTS_PER_EXTRA_GAMMA`` (3) per extra γ and ``SGNHT_CONFIRMATIONS`` (2)
for SGNHT, each with an equal share: up to 4 chains (2 when 4 would leave fewer than 48 steps each, 1 when 2 would
leave fewer than 24), one third of the share burn-in, two thirds draws (a draw every step). A pilot at a small step
needs a longer burn-in to be judged stationary: it burns in for ``BURNIN_RELAXATIONS / (εκ̂)`` steps (five
relaxation times of the stiffest mode) when that is longer, but never longer than the main run's
``burnin_steps`` (a drift the main run would not outgrow either is a genuine failure). A pilot that would cross
the budget is not run: refinement then stops early, and a search that has not found a passing step yet raises
:class:`CalibrationError`. The anchor probe (one pass for ``L0``, then reused by every pilot, ``NOISE_BATCHES + 1``
forward passes for the noise floor and ``HVP_ITERATIONS`` Hessian-vector products on one batch) is not a chain
step and is not counted.

SGNHT has no MALA acceptance; its pilots run SGLD at the same ε (the samplers share the stability limit
``εκ < 4``, see :mod:`lambdahat.samplers.sgnht`), and the chosen ε is confirmed by an SGNHT pilot (stable and
stationary), stepping down by ``LADDER_FACTOR`` if it is not.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .anchor import anchor_loss_and_direction
from .data import DataFeed
from .estimator import LLCEstimator, _input_dtype, _resolve_devices
from .functional import FunctionalModel, select_parameters
from .result import LLCResult
from .samplers import SAMPLERS
from .samplers.base import project

__all__ = [
    "ACCEPTANCE_MARGIN",
    "LR_MAX",
    "LR_MIN",
    "TREND_Z_MAX",
    "Calibration",
    "CalibrationError",
    "calibrate",
    "calibrated_estimator",
]

#: A pilot accepts enough when ``mala_acceptance / acceptance_floor >= target_acceptance - ACCEPTANCE_MARGIN``.
ACCEPTANCE_MARGIN = 0.03
#: A pilot is stationary when ``|trend_z| <= TREND_Z_MAX`` (the threshold of the estimator's own warning).
TREND_Z_MAX = 4.0
#: Largest and smallest step sizes the automatic search tries.
LR_MAX = 1e-1
LR_MIN = 1e-8
#: Step down by this factor after a pilot that accepts enough but drifts, and in the SGNHT confirmation.
LADDER_FACTOR = 3.0
#: Step down by this factor after a diverged pilot (largest jump of the search).
JUMP = 10.0
#: A pilot that diverges although ``ε κ̂`` is below this (80x inside the stability limit ``εκ < 4``) has left the
#: basin of ``w*``: the search at that γ stops instead of shrinking ε further (more localization is needed).
ESCAPE_EPS_KAPPA = 0.05
#: Refinement stops when the failing and passing steps are within this ratio.
REFINE_RATIO = 1.35
#: The budget is shared out for this many ε pilots ...
PLANNED_PILOTS = 8
#: ... plus this many per additional γ of the localization ladder ...
PILOTS_PER_EXTRA_GAMMA = 3
#: ... plus this many SGNHT confirmation pilots.
SGNHT_CONFIRMATIONS = 2
#: A pilot's burn-in lasts this many relaxation times ``1/(εκ̂)`` of the stiffest mode (``e^-5 < 1 %`` of the
#: transient left), at least the planned burn-in and at most the main run's ``burnin_steps``.
BURNIN_RELAXATIONS = 5.0
#: Shortest pilot: burn-in and draws (``trend_z`` needs 8 draws, R-hat 4).
MIN_PILOT_BURNIN = 8
MIN_PILOT_DRAWS = 16
#: Consecutive batch pairs used for the acceptance floor, and power iterations for the curvature.
NOISE_BATCHES = 32
HVP_ITERATIONS = 12

_TABLE_COLUMNS = [
    "pilot",
    "stage",
    "sampler",
    "learning_rate",
    "localization",
    "burnin_steps",
    "mala_acceptance",
    "acceptance_ratio",
    "trend_z",
    "n_diverged",
    "llc_mean",
    "rhat",
    "chain_steps",
    "accepted",
    "note",
]


class CalibrationError(RuntimeError):
    """No step size (or localization) passed the calibration rule. ``table`` holds the pilots that ran."""

    def __init__(self, message: str, table: pd.DataFrame | None = None) -> None:
        super().__init__(message)
        self.table = table if table is not None else pd.DataFrame(columns=_TABLE_COLUMNS)


@dataclasses.dataclass(frozen=True, eq=False)
class Calibration:
    """The outcome of :func:`calibrate`.

    Attributes
    ----------
    learning_rate:
        The chosen ε.
    localization:
        The chosen γ (the estimator's own unless ``tune_localization``).
    table:
        One row per pilot: ``pilot``, ``stage`` (``"search"``, ``"refine"``, ``"confirm"``), ``sampler``,
        ``learning_rate``, ``localization``, ``mala_acceptance``, ``acceptance_ratio`` (acceptance / floor),
        ``trend_z``, ``n_diverged``, ``llc_mean``, ``rhat``, ``chain_steps``, ``accepted`` and ``note`` (why it
        passed or failed).
    reason:
        Why these values, in words.
    pilot_chain_steps:
        Chain-steps spent on pilots (≤ ``budget_chain_steps``).
    budget_chain_steps:
        ``floor(budget_fraction × main run's chain-steps)``.
    pilot_chains, pilot_burnin_steps, pilot_draws:
        The size of the pilots: ``pilot_burnin_steps`` is the planned (shortest) burn-in, a pilot at step ε
        burns in for ``BURNIN_RELAXATIONS / (εκ̂)`` steps when that is longer, up to the main run's
        ``burnin_steps`` (the table's ``burnin_steps`` column).
    acceptance_floor:
        ``a₀``, the acceptance the minibatch noise alone allows (1 for full-batch or deterministic losses).
    curvature:
        ``κ̂`` at the chosen γ, the curvature scale of the localized potential (NaN when not estimated).
    target_acceptance:
        The target the rule used.
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
    acceptance_floor: float = math.nan
    curvature: float = math.nan
    target_acceptance: float = 0.9

    def __str__(self) -> str:
        cols = [
            "learning_rate",
            "localization",
            "mala_acceptance",
            "acceptance_ratio",
            "trend_z",
            "n_diverged",
            "llc_mean",
            "accepted",
            "note",
        ]
        table = self.table[cols].to_string(
            index=False,
            float_format=lambda v: f"{v:.4g}",
            formatters={"note": lambda s: str(s)[:60]},
        )
        return (
            f"Calibration: learning_rate = {self.learning_rate:.4g}, localization = {self.localization:.4g}\n"
            f"  {self.reason}\n"
            f"  pilots: {len(self.table)} x {self.pilot_chains} chains x (>= {self.pilot_burnin_steps} burn-in + "
            f"{self.pilot_draws} draws) = {self.pilot_chain_steps} chain-steps of a budget of "
            f"{self.budget_chain_steps}; acceptance floor {self.acceptance_floor:.3f}\n{table}"
        )

    def __repr__(self) -> str:
        return (
            f"Calibration(learning_rate={self.learning_rate!r}, localization={self.localization!r}, "
            f"pilots={len(self.table)}, pilot_chain_steps={self.pilot_chain_steps})"
        )


def calibrated_estimator(estimator: LLCEstimator, calibration: Calibration) -> LLCEstimator:
    """A copy of ``estimator`` with the calibrated ``learning_rate`` and ``localization`` (all else unchanged).

    Examples
    --------
    >>> import pandas as pd
    >>> cal = Calibration(1e-3, 10.0, pd.DataFrame(), "by hand", 0)
    >>> est = calibrated_estimator(LLCEstimator(draws=50), cal)
    >>> est.learning_rate, est.localization, est.draws
    (0.001, 10.0, 50)
    """
    if not isinstance(estimator, LLCEstimator):
        raise ValueError(
            f"calibrated_estimator: estimator must be an LLCEstimator; got {type(estimator).__name__}."
        )
    if not isinstance(calibration, Calibration):
        raise ValueError(
            f"calibrated_estimator: calibration must be the Calibration returned by calibrate; got "
            f"{type(calibration).__name__}."
        )
    return _copy_estimator(
        estimator, learning_rate=calibration.learning_rate, localization=calibration.localization
    )


def _copy_estimator(est: LLCEstimator, **changes: Any) -> LLCEstimator:
    """A new estimator with the settings of ``est`` and ``changes`` (the sampler object, options bound, is kept
    unless ``sampler`` is among the changes)."""
    # An estimator whose learning_rate is still to be calibrated ("auto") gets a placeholder: every pilot passes
    # its own learning_rate to run().
    lr = est.learning_rate if isinstance(est.learning_rate, int | float) else 1e-5
    kwargs = dict(
        draws=est.draws,
        chains=est.chains,
        burnin_steps=est.burnin_steps,
        steps_bw_draws=est.steps_bw_draws,
        learning_rate=lr,
        localization=est.localization,
        nbeta=est.nbeta,
        dtype=est.dtype,
        sampler=est.sampler,
        weight_decay=est.weight_decay,
        restrict_to_orth_grad=est.restrict_to_orth_grad,
        bounding_box_size=est.bounding_box_size,
        sampler_options=dict(est.sampler_options),
    )
    kwargs.update(changes)
    return LLCEstimator(**kwargs)


# ----------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"calibrate: {name} must be an int >= {minimum}; got {value!r}.")
    return value


def _check_float(name: str, value, *, low: float, high: float, low_open: bool, high_open: bool) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ValueError(f"calibrate: {name} must be a number in {lo}{low:g}, {high:g}{hi}; got {value!r}.")
    return float(value)


def _check_ladder(name: str, values, *, allow_zero: bool) -> list[float]:
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"calibrate: {name} must be a non-empty list of numbers; got {values!r}.")
    out = []
    for v in values:
        bad = isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)
        if bad or v < 0 or (v == 0 and not allow_zero):
            need = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"calibrate: every value of {name} must be a finite number {need}; got {v!r}.")
        out.append(float(v))
    return sorted(set(out))


# ----------------------------------------------------------------------------------------------------
# The anchor probe: L0, the acceptance floor of the minibatch noise, the curvature scale
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Probe:
    init: tuple[float, torch.Tensor | None]
    nbeta: float
    acceptance_floor: float
    hessian_top: float  # |largest Hessian eigenvalue| of the first batch's loss at w* (NaN if unknown)


def acceptance_floor_from_losses(batch_losses: torch.Tensor, nbeta: float) -> float:
    """The MALA acceptance allowed by minibatch noise alone, ``½ + ½ erfcx(s/√2)``, ``s = nβ·rms(ΔL)``.

    ``batch_losses`` are the losses at ``w*`` of consecutive batches, in the order the sampler sees them.

    Examples
    --------
    >>> acceptance_floor_from_losses(torch.tensor([0.5, 0.5, 0.5]), nbeta=100.0)
    1.0
    >>> round(acceptance_floor_from_losses(torch.tensor([0.50, 0.55, 0.50, 0.55]), nbeta=200.0), 3)
    0.54
    """
    diffs = batch_losses.double().diff()
    if diffs.numel() == 0 or not torch.isfinite(diffs).all():
        return 1.0
    s = float(nbeta * diffs.pow(2).mean().sqrt())
    return float(0.5 + 0.5 * torch.special.erfcx(torch.tensor(s / math.sqrt(2.0), dtype=torch.float64)))


def _hessian_top(fm: FunctionalModel, x, y, u: torch.Tensor | None, seed: int) -> float:
    """|largest eigenvalue| of the Hessian of the batch loss at ``w*`` by power iteration (Rayleigh quotient,
    a lower bound, so ``1/κ̂`` stays an upper bound of the step); forward-over-reverse HVPs, finite differences
    of gradients where forward mode is not supported. NaN if neither works."""
    w = fm.w_star
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(fm.layout.dim, generator=gen, dtype=torch.float64).to(w.device, w.dtype)
    v = project(v, u)
    if not float(v.norm()) > 0:
        return math.nan
    v = v / v.norm()

    def grad_at(theta):
        return torch.func.grad(fm.loss)(theta, fm.frozen, fm.buffers, x, y)

    def hvp_forward(vec):
        return torch.func.jvp(grad_at, (w,), (vec,))[1]

    def hvp_difference(vec):
        h = 1e-3 * (1.0 + float(w.abs().max())) if w.dtype == torch.float32 else 1e-5
        return (grad_at(w + h * vec) - grad_at(w - h * vec)) / (2 * h)

    hvp = hvp_forward
    rayleigh = math.nan
    for _ in range(HVP_ITERATIONS):
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
        norm = float(hv.norm())
        if not math.isfinite(norm) or norm == 0:
            break
        v = hv / norm
    return rayleigh if math.isfinite(rayleigh) else math.nan


def _probe(model, loader, criterion_fn, unpack_fn, device, est: LLCEstimator, params, seed: int) -> _Probe:
    sampled = select_parameters(model, params)
    fm = FunctionalModel(model, criterion_fn, device, est.dtype, sampled)
    feed = DataFeed(loader, unpack_fn, fm.device, seed, _input_dtype(est.dtype))
    init = anchor_loss_and_direction(fm, feed, est.restrict_to_orth_grad)
    nbeta = est._resolve_nbeta(loader)
    losses, first = [], None
    batches = iter(feed)  # the same batches, in the same order, as the pilots' first steps
    with torch.no_grad():
        for _ in range(NOISE_BATCHES + 1):
            x, y = next(batches)
            if first is None:
                first = (x, y)
            losses.append(fm.loss(fm.w_star, fm.frozen, fm.buffers, x, y).double())
    floor = acceptance_floor_from_losses(torch.stack(losses).cpu(), nbeta)
    top = _hessian_top(fm, *first, init[1], seed)
    return _Probe(init=init, nbeta=nbeta, acceptance_floor=floor, hessian_top=top)


# ----------------------------------------------------------------------------------------------------
# Pilots
# ----------------------------------------------------------------------------------------------------


class _BudgetExhausted(Exception):
    pass


@dataclasses.dataclass
class _Verdict:
    accepted: bool
    kind: str  # "ok", "diverged", "acceptance", "trend", "escaped"
    ratio: float
    note: str
    result: LLCResult | None = None
    learning_rate: float = math.nan


class _Pilots:
    """Runs pilots within the budget and keeps the table."""

    def __init__(
        self, run, budget: int, burnin, chains: int, draws: int, floor: float, target: float
    ) -> None:
        self._run, self.budget, self.burnin, self.floor, self.target = run, budget, burnin, floor, target
        self.chains, self.draws = chains, draws
        self.spent = 0
        self.rows: list[dict] = []

    def cost(self, lr: float | None = None, gamma: float | None = None) -> int:
        """Chain-steps of a pilot at ``(lr, gamma)`` (the cheapest pilot when not given)."""
        burnin = self.burnin(None, None) if lr is None else self.burnin(lr, gamma)
        return self.chains * (burnin + self.draws)

    @property
    def threshold(self) -> float:
        return self.target - ACCEPTANCE_MARGIN

    def affordable(self, lr: float | None = None, gamma: float | None = None) -> bool:
        return self.spent + self.cost(lr, gamma) <= self.budget

    def run(
        self, lr: float, gamma: float, stage: str, *, confirm: bool = False, stable: bool = False
    ) -> _Verdict:
        if not self.affordable(lr, gamma):
            raise _BudgetExhausted
        burnin = self.burnin(lr, gamma)
        est, result = self._run(lr, gamma, burnin, confirm)
        steps = int(result.loss_trace.shape[0] * result.loss_trace.shape[1])
        self.spent += steps
        verdict = self.judge(result, confirm=confirm, stable=stable)
        verdict.learning_rate = lr
        self.rows.append(
            dict(
                pilot=len(self.rows),
                stage=stage,
                sampler=est.sampler.name,
                learning_rate=lr,
                localization=gamma,
                burnin_steps=burnin,
                mala_acceptance=result.mala_acceptance,
                acceptance_ratio=verdict.ratio,
                trend_z=result.trend_z,
                n_diverged=int(result.diverged.sum()),
                llc_mean=result.llc_mean,
                rhat=result.rhat,
                chain_steps=steps,
                accepted=verdict.accepted,
                note=verdict.note,
            )
        )
        return verdict

    def judge(self, result: LLCResult, *, confirm: bool, stable: bool) -> _Verdict:
        n_div = int(result.diverged.sum())
        acc = result.mala_acceptance
        ratio = acc / self.floor if math.isfinite(acc) else math.nan
        if n_div:
            return _Verdict(
                False, "diverged", ratio, f"{n_div}/{len(result.diverged)} chains diverged", result
            )
        if stable and not result.llc_mean > 0:
            return _Verdict(
                False,
                "escaped",
                ratio,
                f"λ̂ = {result.llc_mean:.3g} <= 0: the chains left the basin of w*",
                result,
            )
        if not confirm:
            if not math.isfinite(ratio):
                return _Verdict(False, "diverged", ratio, "MALA acceptance undefined", result)
            if ratio < self.threshold:
                return _Verdict(
                    False,
                    "acceptance",
                    ratio,
                    f"acceptance {acc:.3f}/floor {self.floor:.3f} = {ratio:.4f} < {self.threshold:.2f}",
                    result,
                )
        tz = result.trend_z
        if not (math.isfinite(tz) and abs(tz) <= TREND_Z_MAX):
            return _Verdict(
                False, "trend", ratio, f"not stationary: |trend_z| = {abs(tz):.2f} > {TREND_Z_MAX:g}", result
            )
        if confirm:
            note = f"stable, |trend_z| = {abs(tz):.2f} <= {TREND_Z_MAX:g}"
        else:
            note = f"acceptance ratio {ratio:.3f} >= {self.threshold:.2f}, |trend_z| = {abs(tz):.2f} <= {TREND_Z_MAX:g}"
        return _Verdict(True, "ok", ratio, note, result)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=_TABLE_COLUMNS)


@dataclasses.dataclass
class _Search:
    """Outcome of the ε search at one γ."""

    passed: _Verdict | None  # the chosen pilot
    failed_above: _Verdict | None  # the smallest rejected step above it
    best_accepting: float | None  # largest step whose acceptance passed (stationary or not)
    failure: str  # why nothing passed ("" when something did)
    refine_note: str = ""


def _next_step(lr: float, verdict: _Verdict, target: float) -> float:
    if verdict.kind == "diverged" or not math.isfinite(verdict.ratio) or verdict.ratio < 0.05:
        return lr / JUMP
    if verdict.kind == "acceptance":
        predicted = 0.8 * lr * (1.0 - target) / max(1.0 - verdict.ratio, 1e-12)
        return min(max(predicted, lr / JUMP), lr / 2.0)
    return lr / LADDER_FACTOR


def _search_lr(
    pilots: _Pilots,
    gamma: float,
    start: float,
    ladder: list[float] | None,
    refine: bool,
    stable: bool,
    kappa: float,
) -> _Search:
    """Descend to the first passing step, then bisect in log ε between it and the last failing one."""
    target = pilots.target
    candidates = sorted(ladder, reverse=True) if ladder is not None else None
    lr = candidates[0] if candidates else start
    hi: _Verdict | None = None
    best_accepting = None
    prev_fail: _Verdict | None = None
    drifting = 0
    k = 0
    while True:
        try:
            v = pilots.run(lr, gamma, "search", stable=stable)
        except _BudgetExhausted:
            return _Search(None, hi, best_accepting, "the pilot budget ran out before a step passed")
        if v.kind in ("ok", "trend") and best_accepting is None:
            best_accepting = lr
        if v.accepted:
            break
        hi = v
        if v.kind == "diverged" and math.isfinite(kappa) and 0 < lr * kappa < ESCAPE_EPS_KAPPA:
            return _Search(
                None,
                hi,
                best_accepting,
                f"chains diverged at ε = {lr:.3g}, where εκ̂ = {lr * kappa:.2g} is far inside the stability limit "
                f"εκ < 4 (κ̂ = {kappa:.3g}): they left the basin of w*, so a smaller step will not help; raise "
                "localization",
            )
        if v.kind == "escaped":
            return _Search(None, hi, best_accepting, f"at ε = {lr:.3g}, {v.note}; raise localization")
        if v.kind == "trend":
            drifting += 1
            if drifting >= 2:
                return _Search(
                    None,
                    hi,
                    best_accepting,
                    f"two consecutive pilots accepted enough but failed ({v.note}); smaller steps mix "
                    "more slowly",
                )
        else:
            drifting = 0
        if (
            candidates is None
            and v.kind == "acceptance"
            and prev_fail is not None
            and prev_fail.kind == "acceptance"
            and lr <= prev_fail.learning_rate / LADDER_FACTOR
            and v.ratio <= prev_fail.ratio + 0.01
        ):
            return _Search(
                None,
                hi,
                best_accepting,
                f"the acceptance ratio did not rise as ε fell from {prev_fail.learning_rate:.3g} to {lr:.3g} "
                f"({prev_fail.ratio:.3f} -> {v.ratio:.3f}): rejections come from the minibatch noise, not the "
                "step; use larger batches",
            )
        prev_fail = v if v.kind == "acceptance" else prev_fail
        if candidates is not None:
            k += 1
            if k >= len(candidates):
                return _Search(None, hi, best_accepting, "no value of learning_rates passed")
            lr = candidates[k]
        else:
            lr = _next_step(lr, v, target)
            if lr < LR_MIN:
                return _Search(None, hi, best_accepting, f"the search reached LR_MIN = {LR_MIN:g}")
    lo = v
    note = ""
    if refine and hi is not None:
        while hi.learning_rate / lo.learning_rate > REFINE_RATIO:
            mid = math.sqrt(hi.learning_rate * lo.learning_rate)
            try:
                m = pilots.run(mid, gamma, "refine", stable=stable)
            except _BudgetExhausted:
                note = " (refinement stopped early: pilot budget spent)"
                break
            if m.accepted:
                lo = m
            else:
                hi = m
    return _Search(lo, hi, best_accepting, "", note)


def _pilot_size(
    est: LLCEstimator,
    budget: int,
    planned: int,
    pilot_chains: int | None,
    pilot_draws: int | None,
    pilot_burnin_steps: int | None,
) -> tuple[int, int, int]:
    """(chains, planned burn-in, draws) of the pilots."""
    main_len = est.burnin_steps + est.draws * est.steps_bw_draws
    if pilot_chains is None and pilot_draws is None and pilot_burnin_steps is None:
        per_pilot = budget // planned
        # Up to 4 chains; 2 where 4 would make pilots shorter than 48 steps (two chains at least where the
        # budget allows: trend_z and R-hat pool the ESS over chains, a single chain overstates |trend_z|).
        chains = min(est.chains, 4)
        if chains > 2 and per_pilot // chains < 48:
            chains = 2
        if chains > 1 and per_pilot // chains < MIN_PILOT_BURNIN + MIN_PILOT_DRAWS:
            chains = 1
        length = min(per_pilot // chains, main_len)
        burnin = length // 3
        draws = length - burnin
        if burnin < MIN_PILOT_BURNIN or draws < MIN_PILOT_DRAWS:
            need = planned * (MIN_PILOT_BURNIN + MIN_PILOT_DRAWS)
            raise ValueError(
                f"calibrate: a budget of {budget} chain-steps (budget_fraction x {est.chains} chains x "
                f"{main_len} steps) leaves {per_pilot} per pilot for the {planned} planned pilots, below the "
                f"shortest useful pilot of 1 chain x {MIN_PILOT_BURNIN + MIN_PILOT_DRAWS} steps; raise "
                f"budget_fraction (needs {need} chain-steps), or pass pilot_chains/pilot_draws yourself."
            )
        return chains, burnin, draws
    chains = min(est.chains, 4) if pilot_chains is None else pilot_chains
    if pilot_draws is None:
        length = max((budget // planned) // chains, MIN_PILOT_BURNIN + MIN_PILOT_DRAWS)
        pilot_draws = max(length - length // 3, MIN_PILOT_DRAWS)
    burnin = pilot_burnin_steps if pilot_burnin_steps is not None else max(pilot_draws // 2, MIN_PILOT_BURNIN)
    cost = chains * (burnin + pilot_draws)
    if budget // cost < 3:
        raise ValueError(
            f"calibrate: pilots of {chains} chains x ({burnin} + {pilot_draws}) steps cost {cost} chain-steps, "
            f"so the budget of {budget} affords {budget // cost} of them (at least 3 needed); use smaller "
            "pilots or raise budget_fraction."
        )
    return chains, burnin, pilot_draws


def _fmt(x: float) -> str:
    return f"{x:.3g}"


# ----------------------------------------------------------------------------------------------------
# The public entry point
# ----------------------------------------------------------------------------------------------------


def calibrate(
    model: nn.Module,
    loader,
    estimator: LLCEstimator | None = None,
    *,
    criterion_fn: Callable = F.cross_entropy,
    unpack_fn: Callable | None = None,
    devices="cpu",
    seed: int = 0,
    target_acceptance: float = 0.9,
    learning_rates: Sequence[float] | None = None,
    localization: float | None = None,
    tune_localization: bool = False,
    localizations: Sequence[float] | None = None,
    refine: bool = True,
    max_step_bias: float | None = None,
    pilot_chains: int | None = None,
    pilot_draws: int | None = None,
    pilot_burnin_steps: int | None = None,
    budget_fraction: float = 0.3,
    compile: bool | str = False,
    show_progress: bool = False,
    params=None,
    chain_batch: int | None = None,
) -> Calibration:
    """Choose the step size ε (and, if asked, the localization γ) of ``estimator`` from short pilot runs.

    ε is the largest step whose pilots do not diverge, reach a MALA acceptance (relative to the minibatch-noise
    floor ``a₀``) of at least ``target_acceptance − 0.03``, and have ``|trend_z| ≤ 4``; the module docstring
    gives the search, the floor and the localization rule in full.

    Parameters
    ----------
    model, loader, criterion_fn, unpack_fn, devices, params, chain_batch, compile, show_progress:
        As in :meth:`LLCEstimator.estimate_llc` (``compile`` defaults to False: pilots are short; with
        ``"auto"`` the estimator's few timing steps per pilot are not counted as chain-steps).
    estimator:
        The estimator of the main run (default ``LLCEstimator()``): its sampler, nβ, dtype, weight decay,
        restriction and bounding box are used by the pilots, and its size sets the budget.
    seed:
        Master seed of every pilot (the same for all: common random numbers).
    target_acceptance:
        Target MALA acceptance in (0, 1) (default 0.9); a pilot passes at ``target − ACCEPTANCE_MARGIN``.
    learning_rates:
        Explicit ladder of steps to try, largest first (default: the automatic search from ``ε_top``).
    localization:
        γ of the pilots (default ``estimator.localization``); with ``tune_localization`` the base of the γ ladder.
    tune_localization:
        Also choose γ: the smallest value of the ladder whose calibrated pilot is stationary and has λ̂ > 0.
    localizations:
        Explicit γ ladder for ``tune_localization`` (default ``γ₀ · [0.1, 0.3, 1, 3, 10]``).
    refine:
        Bisect between the last failing and the first passing step (default True).
    max_step_bias:
        If given (e.g. 0.02), also cap ε at ``4 · max_step_bias / κ̂``: SGLD inflates the stationary variance of a
        direction of curvature κ by ``1 / (1 − εκ/4)``, so the stiffest direction's share of λ̂ is then biased by
        at most about ``max_step_bias``. The 0.9-acceptance rule alone allows ``εκ̂`` of 0.15–0.6 (a 4–18 %
        bias on the quadratic truth cases, less in high dimension); the cap trades mixing speed for that bias.
        Needs an unpreconditioned sampler (sgld, sgnht). Default None (no cap).
    pilot_chains, pilot_draws, pilot_burnin_steps:
        Size of the pilots (default: an equal share of the budget for the planned number of pilots, up to 4
        chains, one third burn-in; pilots take a draw every step). Unless ``pilot_burnin_steps`` is given, a
        pilot at a small step burns in longer (``5/(εκ̂)`` steps, at most the estimator's ``burnin_steps``).
    budget_fraction:
        Upper bound of the pilots' chain-steps, as a fraction in (0, 1] of the main run's
        ``chains × (burnin_steps + draws × steps_bw_draws)`` (default 0.3).

    Returns
    -------
    Calibration

    Raises
    ------
    ValueError
        On invalid arguments, or when the budget cannot pay for useful pilots.
    CalibrationError
        When no step passes (every pilot diverged, acceptance never reached the target, the chains never
        became stationary, or the budget ran out); the message says which and what to do, ``.table`` holds
        the pilots.

    Examples
    --------
    >>> from lambdahat import truth
    >>> case = truth.regular_case(10, n=1000)
    >>> est = LLCEstimator(draws=200, chains=4, burnin_steps=100, localization=10.0)
    >>> cal = calibrate(case.model, case.loader(100), est, criterion_fn=case.criterion_fn)
    >>> bool(cal.table["accepted"].any()) and cal.pilot_chain_steps <= 0.3 * 4 * 300
    True
    >>> llcs = calibrated_estimator(est, cal).estimate_llc(
    ...     case.model, case.loader(100), criterion_fn=case.criterion_fn, seed=0, compile=False,
    ...     show_progress=False)
    """
    estimator = LLCEstimator() if estimator is None else estimator
    if not isinstance(estimator, LLCEstimator):
        raise ValueError(
            f"calibrate: estimator must be an LLCEstimator or None; got {type(estimator).__name__}."
        )
    if not isinstance(model, nn.Module):
        raise ValueError(f"calibrate: model must be a torch.nn.Module; got {type(model).__name__}.")
    seed = _check_int("seed", seed, 0)
    target = _check_float(
        "target_acceptance", target_acceptance, low=0, high=1, low_open=True, high_open=True
    )
    if target - ACCEPTANCE_MARGIN <= 0:
        raise ValueError(
            f"calibrate: target_acceptance must exceed the margin {ACCEPTANCE_MARGIN}; got {target_acceptance}."
        )
    fraction = _check_float("budget_fraction", budget_fraction, low=0, high=1, low_open=True, high_open=False)
    ladder = (
        None if learning_rates is None else _check_ladder("learning_rates", learning_rates, allow_zero=False)
    )
    gamma0 = (
        estimator.localization
        if localization is None
        else _check_float("localization", localization, low=0, high=math.inf, low_open=False, high_open=True)
    )
    if not isinstance(tune_localization, bool):
        raise ValueError(f"calibrate: tune_localization must be True or False; got {tune_localization!r}.")
    if not isinstance(refine, bool):
        raise ValueError(f"calibrate: refine must be True or False; got {refine!r}.")
    if localizations is not None and not tune_localization:
        raise ValueError(
            "calibrate: localizations is the γ ladder of tune_localization=True; pass both or neither."
        )
    if tune_localization:
        if localizations is not None:
            gammas = _check_ladder("localizations", localizations, allow_zero=True)
        elif gamma0 > 0:
            gammas = [gamma0 * f for f in (0.1, 0.3, 1.0, 3.0, 10.0)]
        else:
            gammas = [0.0, 1.0, 10.0, 100.0]
    else:
        gammas = [gamma0]
    if pilot_chains is not None:
        _check_int("pilot_chains", pilot_chains, 1)
    if pilot_draws is not None:
        _check_int("pilot_draws", pilot_draws, MIN_PILOT_DRAWS)
    if pilot_burnin_steps is not None:
        _check_int("pilot_burnin_steps", pilot_burnin_steps, 0)
    if compile not in (True, False, "auto"):
        raise ValueError(f"calibrate: compile must be True, False or 'auto'; got {compile!r}.")
    name = estimator.sampler.name
    if max_step_bias is not None:
        max_step_bias = _check_float(
            "max_step_bias", max_step_bias, low=0, high=1, low_open=True, high_open=True
        )
        if ladder is not None:
            raise ValueError(
                "calibrate: max_step_bias caps the automatic search; with an explicit learning_rates ladder, "
                "leave out the values you do not want instead."
            )
        if name == "rmsprop_sgld":
            raise ValueError(
                "calibrate: max_step_bias bounds εκ of an unpreconditioned step; RMSProp-SGLD rescales the "
                "step per coordinate. Use sampler='sgld' or leave max_step_bias=None."
            )
    confirm_sampler = name == "sgnht"
    main_steps = estimator.chains * (estimator.burnin_steps + estimator.draws * estimator.steps_bw_draws)
    budget = math.floor(fraction * main_steps)
    planned = PLANNED_PILOTS + PILOTS_PER_EXTRA_GAMMA * (len(gammas) - 1)
    planned += SGNHT_CONFIRMATIONS if confirm_sampler else 0
    p_chains, p_burnin, p_draws = _pilot_size(
        estimator, budget, planned, pilot_chains, pilot_draws, pilot_burnin_steps
    )

    # Pilot estimators: same settings, pilot size, a draw every step. SGNHT searches with SGLD and confirms.
    search_sampler = "sgld" if name == "sgnht" else (name if name in SAMPLERS else estimator.sampler)
    estimators: dict[tuple[int, bool], LLCEstimator] = {}

    def pilot_estimator(burnin: int, confirm: bool) -> LLCEstimator:
        key = (burnin, confirm)
        if key not in estimators:
            size = dict(draws=p_draws, chains=p_chains, burnin_steps=burnin, steps_bw_draws=1)
            if confirm:
                estimators[key] = _copy_estimator(estimator, **size)
            elif name == "rmsprop_sgld":
                opts = dict(estimator.sampler_options)
                opts["adapt_steps"] = min(opts.get("adapt_steps", burnin), burnin)
                estimators[key] = _copy_estimator(estimator, sampler=name, sampler_options=opts, **size)
            elif name == "sgnht":
                estimators[key] = _copy_estimator(estimator, sampler="sgld", sampler_options={}, **size)
            else:
                estimators[key] = _copy_estimator(estimator, **size)
        return estimators[key]

    device = _resolve_devices(devices)[0]
    probe = _probe(model, loader, criterion_fn, unpack_fn, device, estimator, params, seed)

    def run(lr: float, gamma: float, burnin: int, confirm: bool):
        est = pilot_estimator(burnin, confirm)
        with warnings.catch_warnings():  # a pilot that diverges is expected; numpy warns on its empty traces
            warnings.simplefilter("ignore", RuntimeWarning)
            result = est.run(
                model,
                loader,
                criterion_fn=criterion_fn,
                unpack_fn=unpack_fn,
                devices=devices,
                chain_batch=chain_batch,
                seed=seed,
                compile=compile,
                show_progress=show_progress,
                params=params,
                warn=False,
                nbeta=probe.nbeta,
                learning_rate=lr,
                localization=gamma,
                init=probe.init,
            )
        return est, result

    def kappa(gamma: float) -> float:
        if not math.isfinite(probe.hessian_top):
            return math.nan
        return probe.nbeta * probe.hessian_top + gamma + estimator.weight_decay

    def burnin_for(lr: float | None, gamma: float | None) -> int:
        if lr is None or pilot_burnin_steps is not None or search_sampler == "rmsprop_sgld":
            return p_burnin
        k = kappa(gamma)
        if not (math.isfinite(k) and k > 0):
            return p_burnin
        return max(p_burnin, min(math.ceil(BURNIN_RELAXATIONS / (lr * k)), estimator.burnin_steps))

    pilots = _Pilots(run, budget, burnin_for, p_chains, p_draws, probe.acceptance_floor, target)

    def top(gamma: float) -> float:
        k = kappa(gamma)
        if search_sampler == "rmsprop_sgld" or not (k > 0):
            return LR_MAX
        cap = 1.0 / k if max_step_bias is None else min(1.0, 4.0 * max_step_bias) / k
        return min(LR_MAX, cap)

    def fail(message: str) -> CalibrationError:
        return CalibrationError(
            f"calibrate: {message}\n{pilots.table().to_string(index=False)}", pilots.table()
        )

    gamma_notes: list[str] = []
    chosen: tuple[float, _Search, _Verdict | None] | None = None
    start_hint: float | None = None
    for gamma in gammas:
        start = top(gamma) if start_hint is None else min(top(gamma), start_hint)
        search = _search_lr(
            pilots, gamma, start, ladder, refine, stable=tune_localization, kappa=kappa(gamma)
        )
        if search.passed is None:
            gamma_notes.append(f"γ = {_fmt(gamma)}: {search.failure}")
            if search.best_accepting is not None:
                start_hint = search.best_accepting
            if not pilots.affordable():
                break
            continue
        confirmed = None
        if confirm_sampler:
            lr = search.passed.learning_rate
            while confirmed is None and lr >= LR_MIN:
                try:
                    c = pilots.run(lr, gamma, "confirm", confirm=True, stable=tune_localization)
                except _BudgetExhausted:
                    break
                if c.accepted:
                    confirmed = c
                else:
                    lr /= LADDER_FACTOR
            if confirmed is None:
                gamma_notes.append(
                    f"γ = {_fmt(gamma)}: SGNHT was not stable and stationary at the SGLD step or below it"
                )
                continue
        chosen = (gamma, search, confirmed)
        break

    table = pilots.table()
    if chosen is None:
        every_diverged = bool(len(table)) and bool((table["n_diverged"] > 0).all())
        if every_diverged:
            tried = ", ".join(_fmt(v) for v in table["learning_rate"])
            raise fail(
                f"every pilot diverged (learning_rate {tried}; {'; '.join(gamma_notes)}). Check that the loss is finite near w* (a "
                "model with NaN/inf just off w* cannot be sampled), raise localization, or pass smaller "
                "learning_rates."
            )
        detail = "; ".join(gamma_notes)
        raise fail(
            f"no step passed the rule (no divergence, acceptance ratio >= {pilots.threshold:.2f}, |trend_z| <= "
            f"{TREND_Z_MAX:g}): {detail}. Try tune_localization=True (or a larger localization), longer pilots "
            "(pilot_draws, pilot_burnin_steps, budget_fraction), or an explicit learning_rates ladder."
        )

    gamma, search, confirmed = chosen
    v = search.passed
    lr = v.learning_rate if confirmed is None else confirmed.learning_rate
    reason = (
        f"learning_rate {_fmt(v.learning_rate)} is the largest tested step whose pilot passed: no divergence, "
        f"acceptance {v.result.mala_acceptance:.3f} (floor {probe.acceptance_floor:.3f}, ratio {v.ratio:.3f} >= "
        f"{pilots.threshold:.2f} = target {target:g} - margin {ACCEPTANCE_MARGIN:g}), |trend_z| "
        f"{abs(v.result.trend_z):.2f} <= {TREND_Z_MAX:g}"
    )
    if confirmed is not None:
        reason += (
            f" (searched with SGLD; SGNHT confirmed stable and stationary at {_fmt(lr)}, |trend_z| "
            f"{abs(confirmed.result.trend_z):.2f})"
        )
    if search.failed_above is not None:
        reason += (
            f"; the next larger tested step {_fmt(search.failed_above.learning_rate)} failed "
            f"({search.failed_above.note})"
        )
    elif ladder is not None:
        reason += "; it is the largest value of learning_rates"
    elif max_step_bias is not None and math.isfinite(kappa(gamma)):
        reason += (
            f"; it is the top of the search, capped by max_step_bias {max_step_bias:g} at "
            f"4 x {max_step_bias:g} / κ̂ (κ̂ = {_fmt(kappa(gamma))})"
        )
    else:
        reason += f"; it is the top of the search (ε_top = min({LR_MAX:g}, 1/κ̂) = {_fmt(v.learning_rate)})"
    reason += search.refine_note + "."
    if tune_localization:
        ladder_txt = ", ".join(_fmt(g) for g in gammas)
        reason += (
            f" localization {_fmt(gamma)} is the smallest of [{ladder_txt}] whose calibrated pilot was "
            "stable, stationary and had λ̂ > 0"
        )
        reason += f" ({'; '.join(gamma_notes)})." if gamma_notes else "."
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
        acceptance_floor=float(probe.acceptance_floor),
        curvature=float(kappa(gamma)),
        target_acceptance=float(target),
    )
