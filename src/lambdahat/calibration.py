"""``learning_rate="auto"``: the step size chosen on the measured step bias of λ̂.

A step is judged by what λ̂'s accuracy depends on, its relative step bias, measured directly at any dimension by the
step check of :mod:`lambdahat.accuracy`: λ̂ at ``2ε`` for the same sampled time, against λ̂ at ε (the bias is first
order in ε). The whole-vector MALA acceptance is not a criterion: it multiplies ``d`` per-direction ratios, so at a
fixed per-direction bias it falls with ``d`` (REFERENCE.md §5), and a fixed threshold asked for ever smaller steps
that never relaxed (a 10,000-parameter deep linear network got no step at all).

**The search** is a list of rounds, each one full main run (the config's chains, burn-in and draws) plus its step
companion; its rules:

1. *Start* at ``ε₀ = min(LR_MAX, (4b/(1 + b)) / κ̂)``, the step that biases a quadratic direction of the largest
   curvature at ``w*``, ``κ̂ = nβ |λ_max(∇²L_B(w*))| + γ`` (power iteration on the first batch), by exactly
   ``b = max_step_bias``; ``LR_MAX`` when the probe measured nothing (and for RMSProp-SGLD, whose preconditioner
   rescales the step per coordinate).
2. *Stability*: short pilots (2 chains, at most :data:`STABILITY_STEPS` steps) divide ε by :data:`JUMP` until no
   chain diverges and λ̂ > 0; divergence far from the posterior's scale is cheap to see, so no full round is spent
   on it.
3. *Round* at ε: the main run and its step companion give ``b ± SE``. The round passes when
   ``|b| + SE ≤ max_step_bias`` (default 5 %, half the trust policy's limit). After a failed round the next step is
   ``ε · clip(AIM · b_max / |b|, 1/JUMP, 1/1.5)`` (the bias is linear in ε; ``AIM`` = 0.7 leaves room for the
   noise of ``b``); a round with diverged chains divides ε by :data:`JUMP`. After a passing round whose bias leaves
   room the step grows the same way (at least 1.5x, at most JUMP, never past a failed step): a larger step mixes
   faster at the same accuracy (a language model's first round had a bias of 0.7 % and its chains had not spread).
   The chosen step is the largest that passed.
4. *Budget*: rounds run while their chain-steps fit in ``budget`` (default :data:`BUDGET_RUNS` main runs) and, when
   given, ``budget_seconds``. When no round was accepted, the best one (smallest ``|b| + SE``, no divergence) is
   returned, untrusted by the step check, with the reason.
5. The chosen round then gets the remaining accuracy checks of the config (``checks``), and its result, judged by
   the trust policy, is ``Calibration.result``.

:class:`CalibrationError` is raised only when nothing finite can be sampled: every stability pilot down to
``LR_MIN`` diverged or left the basin of ``w*``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .accuracy import CHECK_RUNS, AccuracyCheck, check_accuracy, with_accuracy
from .config import LLCConfig
from .functional import FunctionalModel
from .problem import Problem, prepare, run_chains
from .result import LLCResult
from .rng import resolve_seed
from .samplers.base import project

if TYPE_CHECKING:  # imported where a table is made: 0.3 s, which a run without calibration does not need
    import pandas as pd

__all__ = [
    "AIM",
    "BUDGET_RUNS",
    "JUMP",
    "LR_MAX",
    "LR_MIN",
    "MAX_STEP_BIAS",
    "STABILITY_STEPS",
    "Calibration",
    "CalibrationError",
    "calibrate",
    "calibrate_problem",
    "calibrated_estimator",
    "following_step",
    "next_step",
    "start_step",
]

#: Default largest ``|b| + SE`` of an accepted round: half the trust policy's limit on the step check (10 %), so the
#: step's bias leaves room for the others within the 10 % the policy aims at; a smaller step costs only mixing.
MAX_STEP_BIAS = 0.05
#: Largest and smallest step sizes the search tries.
LR_MAX = 1e-1
LR_MIN = 1e-10
#: A diverged pilot or round divides the step by this; a biased round by at most this.
JUMP = 10.0
#: A biased round aims at this fraction of ``max_step_bias`` with its next step.
AIM = 0.7
#: Default budget of the search, in main runs (each round costs 1.5: the run and its step companion).
BUDGET_RUNS = 6.0
#: Steps per chain of a stability pilot (at most; never more than the main run's).
STABILITY_STEPS = 200
#: Power iterations for the curvature κ̂.
HVP_ITERATIONS = 12

_COLUMNS = [
    "round",
    "stage",
    "learning_rate",
    "chain_steps",
    "llc_mean",
    "n_diverged",
    "step_bias",
    "step_bias_stderr",
    "accepted",
    "note",
]


class CalibrationError(RuntimeError):
    """Nothing finite could be sampled at any step down to ``LR_MIN``. ``table`` holds the pilots that ran."""

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
        γ (the config's).
    table:
        One row per pilot and round: ``round``, ``stage`` (``"stability"`` or ``"round"``), ``learning_rate``,
        ``chain_steps``, ``llc_mean``, ``n_diverged``, ``step_bias`` and ``step_bias_stderr`` (the step check of a
        round), ``accepted`` and ``note``.
    reason:
        Why this step, in words.
    accepted:
        Whether the chosen step's measured bias is within ``max_step_bias`` (``False``: the best step found within
        the budget, returned with its bias).
    step_bias, step_bias_stderr:
        The chosen round's step check.
    chain_steps:
        Chain-steps of the search (stability pilots, rounds and their step companions).
    budget_chain_steps:
        Its budget.
    curvature:
        κ̂ at ``w*`` (NaN when it could not be estimated).
    max_step_bias:
        The rule's threshold.
    result:
        The main run at the chosen step, with its accuracy checks, judged by the trust policy (``None`` for a
        calibration built by hand).
    """

    learning_rate: float
    localization: float
    table: pd.DataFrame
    reason: str
    accepted: bool = True
    step_bias: float = math.nan
    step_bias_stderr: float = math.nan
    chain_steps: int = 0
    budget_chain_steps: int = 0
    curvature: float = math.nan
    max_step_bias: float = MAX_STEP_BIAS
    result: LLCResult | None = None

    @property
    def pilot_chain_steps(self) -> int:
        """``chain_steps`` (the name of earlier versions)."""
        return self.chain_steps

    def __str__(self) -> str:
        table = self.table.to_string(
            index=False, float_format=lambda v: f"{v:.4g}", formatters={"note": lambda s: str(s)[:60]}
        )
        return (
            f"Calibration: learning_rate = {self.learning_rate:.4g} (localization = {self.localization:.4g})\n"
            f"  {self.reason}\n"
            f"  {self.chain_steps} chain-steps of a budget of {self.budget_chain_steps}\n{table}"
        )

    def __repr__(self) -> str:
        return (
            f"Calibration(learning_rate={self.learning_rate!r}, accepted={self.accepted!r}, "
            f"step_bias={self.step_bias!r}, rounds={len(self.table)})"
        )

    def summary(self) -> dict[str, Any]:
        """The calibration as plain JSON-able data (what :func:`lambdahat.sample` records in
        ``result.settings["calibration"]``): every attribute but ``result``, with ``table`` as ``pilots``.

        Non-finite numbers are ``None``, so ``json.dumps(summary, allow_nan=False)`` works.

        Examples
        --------
        >>> import json
        >>> import pandas as pd
        >>> s = Calibration(1e-3, 10.0, pd.DataFrame(columns=_COLUMNS), "by hand").summary()
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
            "accepted": bool(self.accepted),
            "step_bias": _plain(float(self.step_bias)),
            "step_bias_stderr": _plain(float(self.step_bias_stderr)),
            "chain_steps": int(self.chain_steps),
            "budget_chain_steps": int(self.budget_chain_steps),
            "curvature": _plain(float(self.curvature)),
            "max_step_bias": _plain(float(self.max_step_bias)),
            "pilots": [{str(k): _plain(v) for k, v in row.items()} for row in records],
        }


def calibrated_estimator(estimator: Any, calibration: Calibration) -> Any:
    """A copy of ``estimator`` (an ``LLCEstimator`` or an ``LLCConfig``) with the calibrated ``learning_rate``, all
    else unchanged.

    Examples
    --------
    >>> import pandas as pd
    >>> from lambdahat import LLCEstimator
    >>> cal = Calibration(1e-3, 10.0, pd.DataFrame(), "by hand")
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


# ----------------------------------------------------------------------------------------------------
# The probe: the curvature scale at w*
# ----------------------------------------------------------------------------------------------------


def hessian_top(fm: FunctionalModel, x, y, u: torch.Tensor | None, seed: int) -> float:
    """|largest eigenvalue| of the Hessian of the batch loss at ``w*``, by :data:`HVP_ITERATIONS` power iterations.

    The Rayleigh quotient is a lower bound, so ``1/κ̂`` errs towards larger steps, which the rounds then measure.
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


def start_step(config: LLCConfig, curvature: float, max_step_bias: float) -> float:
    """``ε₀ = min(LR_MAX, (4b/(1 + b)) / κ̂)``: along a quadratic direction of curvature κ̂ SGLD's stationary
    variance is inflated by ``1/(1 − εκ/4)``, which equals ``1 + b`` at this step. ``LR_MAX`` for RMSProp-SGLD
    (its preconditioner rescales the step) and when κ̂ is unknown.

    Examples
    --------
    >>> round(start_step(LLCConfig(), 100.0, 0.05), 6)  # 0.2 / 1.05 / 100
    0.001905
    """
    if config.sampler == "rmsprop_sgld" or not (math.isfinite(curvature) and curvature > 0):
        return LR_MAX
    return min(LR_MAX, 4 * max_step_bias / (1 + max_step_bias) / curvature)


# ----------------------------------------------------------------------------------------------------
# The search
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Round:
    """One round: the main run at ``learning_rate`` and its step check."""

    learning_rate: float
    result: LLCResult
    step: AccuracyCheck | None

    @property
    def diverged(self) -> int:
        return int(self.result.diverged.sum())

    @property
    def bound(self) -> float:
        return self.step.bound if self.step is not None else math.inf


def next_step(learning_rate: float, bias: float, max_step_bias: float) -> float:
    """The step after a round whose step bias ``bias`` was too large: ``ε · clip(AIM b_max/|b|, 1/JUMP, 1/1.5)``.

    Examples
    --------
    >>> round(next_step(1e-3, 0.14, 0.05), 8)  # 1e-3 * 0.7 * 0.05 / 0.14
    0.00025
    >>> round(next_step(1e-3, 0.051, 0.05) * 1.5, 8), round(next_step(1e-3, 5.0, 0.05), 8)
    (0.001, 0.0001)
    """
    if not math.isfinite(bias) or bias == 0:
        return learning_rate / JUMP
    factor = min(max(AIM * max_step_bias / abs(bias), 1 / JUMP), 1 / 1.5)
    return learning_rate * factor


def following_step(rounds: Sequence[Any], max_step_bias: float) -> float | None:
    """The step of the next round after ``rounds`` (objects with ``learning_rate``, ``diverged`` chains, ``bound``
    ``= |b| + SE`` and ``step``, the step check), or ``None`` when the search is done.

    After a round within the bias: a larger step (faster mixing), the linear model's step for ``AIM · b_max`` from
    the round's bound ``|b| + SE``, at most :data:`JUMP` times larger and never past the geometric mean with a failed
    step above; done when that is less than 1.5x. After a failed round: done when a smaller step passed, else down
    as in :func:`next_step` (by :data:`JUMP` after a divergence).
    """

    def ok(r: Any) -> bool:
        return r.diverged == 0 and r.bound <= max_step_bias

    last = rounds[-1]
    if ok(last):
        grow = min(AIM * max_step_bias / max(last.bound, 1e-12), JUMP)
        above = [r.learning_rate for r in rounds if not ok(r) and r.learning_rate > last.learning_rate]
        target = last.learning_rate * grow
        if above:
            target = min(target, math.sqrt(last.learning_rate * min(above)))
        return target if target >= 1.5 * last.learning_rate else None
    if any(ok(r) and r.learning_rate < last.learning_rate for r in rounds):
        return None
    if last.diverged:
        return last.learning_rate / JUMP
    return next_step(last.learning_rate, last.step.bias if last.step else math.nan, max_step_bias)


class _Search:
    """Runs the pilots and rounds within the budget and keeps the table."""

    def __init__(
        self, problem: Problem, config: LLCConfig, seed: int, budget: int, seconds: float | None, **run
    ):
        self.problem, self.config, self.seed, self.run_options = problem, config, seed, run
        self.budget, self.seconds, self.started = budget, seconds, time.perf_counter()
        self.spent, self.rows = 0, []

    def _row(self, stage: str, lr: float, result: LLCResult, steps: int, step, accepted: bool, note: str):
        self.rows.append(
            dict(
                round=len(self.rows),
                stage=stage,
                learning_rate=lr,
                chain_steps=steps,
                llc_mean=result.llc_mean,
                n_diverged=int(result.diverged.sum()),
                step_bias=math.nan if step is None else step.bias,
                step_bias_stderr=math.nan if step is None else step.bias_stderr,
                accepted=accepted,
                note=note,
            )
        )

    def affordable(self, chain_steps: int) -> bool:
        late = self.seconds is not None and time.perf_counter() - self.started > self.seconds
        return self.spent + chain_steps <= self.budget and not late

    def stable(self, lr: float) -> tuple[bool, str]:
        """A stability pilot at ``lr``: ``(passed, note)``."""
        steps = min(STABILITY_STEPS, self.config.total_steps)
        cfg = self.config.replace(
            learning_rate=lr,
            chains=min(2, self.config.chains),
            burnin_steps=steps // 2,
            draws=max(1, steps - steps // 2),
            steps_bw_draws=1,
        )
        result = run_chains(self.problem, cfg, seed=self.seed, warn=False, **self.run_options)
        self.spent += cfg.chains * cfg.total_steps
        n_div = int(result.diverged.sum())
        if n_div:
            note = f"{n_div}/{cfg.chains} chains diverged"
        elif not result.llc_mean > 0:
            note = f"λ̂ = {result.llc_mean:.3g} <= 0: the chains left the basin of w*"
        else:
            note = "stable"
        self._row("stability", lr, result, cfg.chains * cfg.total_steps, None, note == "stable", note)
        return note == "stable", note

    def run_round(self, lr: float, max_step_bias: float, per_sample_path) -> _Round:
        """The main run at ``lr`` and its step check."""
        cfg = self.config.replace(learning_rate=lr)
        result = run_chains(
            self.problem, cfg, seed=self.seed, warn=False, per_sample_path=per_sample_path, **self.run_options
        )
        step = None
        if int(result.diverged.sum()) < cfg.chains:
            step = check_accuracy(self.problem, cfg, result, checks=("step",), **self.run_options).get("step")
        self.spent += round(1.5 * cfg.chains * cfg.total_steps)
        r = _Round(lr, result, step)
        limit = max_step_bias
        accepted = r.diverged == 0 and r.bound <= limit
        if r.diverged:
            note = f"{r.diverged}/{cfg.chains} chains diverged"
        elif step is None or not math.isfinite(step.bound):
            note = "step check undefined"
        else:
            word = "<=" if accepted else ">"
            note = f"step bias {step.bias:+.3f} ± {step.bias_stderr:.3f}: |b| + SE {word} {limit:g}"
        self._row("round", lr, result, round(1.5 * cfg.chains * cfg.total_steps), step, accepted, note)
        return r

    def table(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=_COLUMNS)


def calibrate_problem(
    problem: Problem,
    config: LLCConfig,
    *,
    seed: int | None = None,
    chain_batch: int | str | None = None,
    show_progress: bool = False,
    warn: bool = True,
    max_step_bias: float = MAX_STEP_BIAS,
    budget: int | None = None,
    budget_seconds: float | None = None,
    per_sample_path: str | os.PathLike[str] | None = None,
    planned_runs: int | None = None,
) -> Calibration:
    """Choose the step size ε of ``config`` on a prepared problem by its measured step bias, and run it.

    The rules are in the module docstring: stability pilots, then rounds (the main run and its step check) until
    ``|b| + SE ≤ max_step_bias`` or the budget is spent; the chosen round then gets the config's other accuracy
    checks. Every run is :func:`~lambdahat.problem.run_chains` on ``problem`` with the same seed.

    Parameters
    ----------
    problem:
        From :func:`lambdahat.prepare`.
    config:
        The main run's settings (its ``learning_rate`` is ignored; it may be ``"auto"``).
    seed:
        Master seed of every run (``None``: drawn once).
    chain_batch, show_progress, per_sample_path:
        As for :func:`lambdahat.problem.run_chains` (the progress bar and the per-sample file are the main runs').
    warn:
        Issue the trust policy's warnings on the chosen result.
    max_step_bias:
        Largest ``|b| + SE`` of an accepted round (default: the trust policy's step check).
    budget:
        Chain-steps the search may spend (default :data:`BUDGET_RUNS` main runs); at least one round always runs.
    budget_seconds:
        Wall-clock limit of the search (checked before each round), or ``None``.
    planned_runs:
        Runs the caller plans on this problem's step, the search's included (a fact of every run's execution
        plan, :mod:`lambdahat.plan`; :func:`lambdahat.sample` counts the budget and the checks).

    Returns
    -------
    Calibration
        ``result`` holds the main run at the chosen step.

    Raises
    ------
    CalibrationError
        When nothing finite can be sampled at any step down to ``LR_MIN``.
    """
    if not isinstance(config, LLCConfig):
        raise TypeError(f"calibrate: config must be an LLCConfig; got {type(config).__name__}.")
    if not (isinstance(max_step_bias, int | float) and 0 < max_step_bias < 1):
        raise ValueError(f"calibrate: max_step_bias must be a number in (0, 1); got {max_step_bias!r}.")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise ValueError(f"calibrate: budget must be a positive int of chain-steps or None; got {budget!r}.")
    if budget_seconds is not None and not (isinstance(budget_seconds, int | float) and budget_seconds > 0):
        raise ValueError(
            f"calibrate: budget_seconds must be a positive number or None; got {budget_seconds!r}."
        )
    if config.chains < 2:
        raise ValueError(
            "calibrate: learning_rate='auto' measures the step bias across chains and needs chains >= 2; got "
            f"chains={config.chains}."
        )
    seed = resolve_seed(seed, "calibrate")
    if budget is None:
        budget = math.ceil(BUDGET_RUNS * config.chains * config.total_steps)
    search = _Search(
        problem,
        config,
        seed,
        budget,
        budget_seconds,
        chain_batch=chain_batch,
        show_progress=show_progress,
        planned_runs=planned_runs,
    )
    fm = problem.slots[0]
    x, y = next(iter(problem.feed(0, seed)))
    top = hessian_top(fm, x, y, problem.direction, seed)
    curvature = problem.nbeta(config) * top + config.localization + config.weight_decay
    lr = start_step(config, curvature, max_step_bias)

    while True:  # stability: cheap pilots find a step at which nothing diverges
        ok, note = search.stable(lr)
        if ok:
            break
        lr /= JUMP
        if lr < LR_MIN:
            raise CalibrationError(
                f"calibrate: every step down to {LR_MIN:g} diverged or left the basin of w* (last: {note}); "
                "nothing finite can be sampled. Check the model and the loss at w* (is w* a minimum?), raise "
                "localization, or lower nbeta.",
                search.table(),
            )

    rounds: list[_Round] = []
    cost = round(1.5 * config.chains * config.total_steps)
    while True:
        r = search.run_round(lr, max_step_bias, per_sample_path)
        rounds.append(r)
        lr = following_step(rounds, max_step_bias)
        if lr is None or lr < LR_MIN or not search.affordable(cost):
            break

    good = [r for r in rounds if r.diverged == 0 and r.bound <= max_step_bias]
    finite = [r for r in rounds if r.diverged == 0 and math.isfinite(r.bound)]
    if good:  # the largest step within the bias: the fastest mixing at that accuracy
        chosen = max(good, key=lambda r: r.learning_rate)
    else:
        chosen = rounds[-1] if not finite else min(finite, key=lambda r: r.bound)
    accepted = chosen.diverged == 0 and chosen.bound <= max_step_bias
    step = chosen.step
    if accepted:
        reason = (
            f"learning_rate {chosen.learning_rate:.3g}: its measured step bias {step.bias:+.3f} ± "
            f"{step.bias_stderr:.3f} is within {max_step_bias:g} (round {len(rounds)})"
        )
    else:
        measured = "undefined" if step is None else f"{step.bias:+.3f} ± {step.bias_stderr:.3f}"
        reason = (
            f"no step within the budget ({search.spent} of {budget} chain-steps) had a step bias within "
            f"{max_step_bias:g}; learning_rate {chosen.learning_rate:.3g} had the smallest ({measured}). Give a "
            "larger budget, or more draws (a smaller standard error)."
        )
    final = chosen.result.rejudged(chosen.result.settings, warn=False)
    checks: dict[str, AccuracyCheck] = {} if step is None else {"step": step}
    rest = [name for name in config.accuracy_checks() if name != "step"]
    if rest:
        cfg = config.replace(learning_rate=chosen.learning_rate)
        checks.update(
            check_accuracy(
                problem,
                cfg,
                final,
                checks=rest,
                chain_batch=chain_batch,
                show_progress=False,
                planned_runs=planned_runs,
            )
        )
    calibration = Calibration(
        learning_rate=chosen.learning_rate,
        localization=float(config.localization),
        table=search.table(),
        reason=reason,
        accepted=accepted,
        step_bias=math.nan if step is None else step.bias,
        step_bias_stderr=math.nan if step is None else step.bias_stderr,
        chain_steps=search.spent,
        budget_chain_steps=budget,
        curvature=curvature,
        max_step_bias=max_step_bias,
    )
    settings = {**final.settings, "learning_rate": "auto", "calibration": calibration.summary()}
    final = with_accuracy(final.rejudged(settings, warn=False), checks, warn=warn)
    return dataclasses.replace(calibration, result=final)


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
    max_step_bias: float = MAX_STEP_BIAS,
    budget: int | None = None,
    budget_seconds: float | None = None,
    show_progress: bool = False,
    params=None,
    chain_batch: int | None = None,
    compile: bool | str = "auto",
) -> Calibration:
    """Choose the step size ε of ``estimator`` by its measured step bias (:func:`calibrate_problem`).

    Prepares the problem (:func:`lambdahat.prepare`) and calls :func:`calibrate_problem` on it; the calibration's
    ``result`` is then the main run at the chosen step (:func:`lambdahat.sample` with ``learning_rate="auto"``
    returns that result directly).

    Parameters
    ----------
    model, loader, criterion_fn, unpack_fn, loss_fn, devices, params, compile:
        As in :meth:`LLCEstimator.estimate_llc <lambdahat.LLCEstimator.estimate_llc>` (``compile="auto"`` weighs
        the search's budget and checks as planned runs, :mod:`lambdahat.plan`).
    estimator:
        The estimator of the main run: an ``LLCEstimator``, an ``LLCConfig`` or ``None`` (the defaults). Its
        ``learning_rate`` is not used (it may be ``"auto"``).
    seed, max_step_bias, budget, budget_seconds, chain_batch, show_progress:
        As in :func:`calibrate_problem`.

    Returns
    -------
    Calibration

    Examples
    --------
    >>> from lambdahat import LLCEstimator, truth
    >>> case = truth.regular_case(10, n=1000)
    >>> est = LLCEstimator(draws=200, chains=4, burnin_steps=100, localization=10.0, checks="step")
    >>> cal = calibrate(case.model, case.loader(100), est, criterion_fn=case.criterion_fn)
    >>> cal.accepted, abs(cal.step_bias) + cal.step_bias_stderr <= 0.05, cal.result.learning_rate == cal.learning_rate
    (True, True, True)
    """
    config = _config_of(estimator, "calibrate", allow_none=True)
    if not isinstance(model, nn.Module):
        raise ValueError(f"calibrate: model must be a torch.nn.Module; got {type(model).__name__}.")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0):
        raise ValueError(f"calibrate: seed must be a non-negative int or None; got {seed!r}.")
    problem = prepare(
        model,
        loader,
        config,
        criterion_fn=criterion_fn,
        unpack_fn=unpack_fn,
        loss_fn=loss_fn,
        devices=devices,
        params=params,
        compile=compile,
    )
    planned = BUDGET_RUNS + sum(CHECK_RUNS[name] for name in config.accuracy_checks() if name != "step")
    return calibrate_problem(
        problem,
        config,
        seed=seed,
        chain_batch=chain_batch,
        show_progress=show_progress,
        max_step_bias=max_step_bias,
        budget=budget,
        budget_seconds=budget_seconds,
        planned_runs=math.ceil(planned),
    )
