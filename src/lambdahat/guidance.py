"""Guidance on the localization γ and on nβ: warnings, with the measured numbers, when they look wrong.

The trust policy (:mod:`lambdahat.trust`) says whether the chains sampled *their* posterior well; this module says
whether that posterior is the one λ̂ should come from. Four checks, each a plain function of numbers a run or a
calibration already has:

* **γ too small: the flat directions do not settle.** (A caution: a regular model has no flat direction, and
  nothing here can tell it has none before the run; the run's distance and temperature checks then tell.)
  Along a direction where the loss is flat the localized
  potential has curvature ``γ + wd`` (weight decay ``wd``), and SGLD relaxes there at the rate ``ε(γ + wd)/2`` per
  step, from ``w*`` outwards. After ``B`` burn-in steps the chains have done ``R = ε (γ + wd) B / 2`` relaxation
  times; the mean squared distance along the direction is ``1 − e^{−2R}`` of its stationary value, so with
  ``R < MIN_RELAXATIONS`` (1.5) it is still more than 5 % short at the first draw, the distance ``||w − w*||``
  still grows through the draws and λ̂ is still rising (measured on a CNN classifier, γ = 100, ε = 8e-5, 200 burn-in
  steps, R = 0.8: configurational temperature 0.89). On an MLP, γ = 10 instead of 100
  doubled λ̂.
* **γ too large: λ̂ biased low.** On a quadratic direction of loss curvature ``h`` the localization shrinks that
  direction's share of λ̂ from 1/2 to ``(1/2) nβh / (nβh + γ)``: by the fraction ``γ / (nβh + γ)``. With ``h`` the
  largest Hessian eigenvalue at ``w*`` (the calibration's probe), every direction loses at least
  ``γ / (nβ h_max + γ)``; above :data:`MAX_LOCALIZATION_SHARE` (10 %) the warning gives that bound. It is a bound
  on quadratic directions only (where the loss is flatter than quadratic it is a guide), and nothing is said when
  the probe measured no curvature at ``w*``.
* **SGNHT's thermostat not settled.** SGNHT moves ``h = √ε`` time units per step; its Nosé–Hoover thermostat
  starts at ``ξ = A`` and oscillates about its equilibrium for tens of time units, the chains running hot (λ̂ high)
  meanwhile. Measured on ``regular_d10`` (λ = 5, 8 chains, 1000–3000 draws): λ̂ = 6.37 ± 0.23 after 1.1 time units
  of burn-in, 5.38 ± 0.10 after 2.1, 4.99 ± 0.08 after 35 and 4.97 ± 0.04 after 71 (SGLD at the same settings:
  5.10 ± 0.09). Below :data:`MIN_THERMOSTAT_TIME` (30) time units of burn-in ``B√ε`` the run is flagged.
* **nβ off the data size.** The standard choice is ``nβ = n / log n`` (β = 1 / log n, REFERENCE.md §1); λ̂ scales
  with the loss through nβ, so an nβ more than :data:`NBETA_RATIO` (3) times off ``n / log n`` (e.g. devinterp's
  ``batch_size / log batch_size``) is flagged.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

__all__ = [
    "MAX_LOCALIZATION_SHARE",
    "MIN_RELAXATIONS",
    "MIN_THERMOSTAT_TIME",
    "NBETA_RATIO",
    "advise",
    "burnin_search_advice",
    "localization_advice",
    "nbeta_advice",
    "relaxation_advice",
    "relaxations",
    "step_search_advice",
    "thermostat_advice",
]

#: Least number of relaxation times of the flattest direction (curvature ``γ + wd``) within the burn-in:
#: ``1 − e^{−2 · 1.5} = 95 %`` of the stationary spread at the first draw.
MIN_RELAXATIONS = 1.5
#: Largest tolerated lower bound ``γ / (nβ h_max + γ)`` of the fraction of λ̂ that localization removes.
MAX_LOCALIZATION_SHARE = 0.1
#: Least burn-in of SGNHT in its time units, ``B √ε``, for the thermostat to settle (measured, see above).
MIN_THERMOSTAT_TIME = 30.0
#: nβ is flagged when it is more than this factor away from ``n / log n``.
NBETA_RATIO = 3.0


def relaxations(
    learning_rate: float, localization: float, burnin_steps: int, weight_decay: float = 0.0
) -> float:
    """Relaxation times of the flattest direction during burn-in, ``R = ε (γ + wd) B / 2``.

    Examples
    --------
    >>> relaxations(1e-4, 100.0, 200)
    1.0
    """
    return learning_rate * (localization + weight_decay) * burnin_steps / 2


def relaxation_advice(
    learning_rate: float, localization: float, burnin_steps: int, weight_decay: float = 0.0
) -> str | None:
    """A warning when the flat directions relax fewer than :data:`MIN_RELAXATIONS` times during burn-in, else None.

    It gives the burn-in and the localization that would reach ``MIN_RELAXATIONS`` at this step.

    Examples
    --------
    >>> print(relaxation_advice(1e-4, 100.0, 200))  # doctest: +ELLIPSIS
    γ = 100 is weak for this step and burn-in: the flat directions relax R = ε(γ + wd)B/2 = 1 times ... raise burnin_steps to 300 or localization to 150 ...
    >>> relaxation_advice(1e-3, 100.0, 200) is None
    True
    """
    r = relaxations(learning_rate, localization, burnin_steps, weight_decay)
    if not (learning_rate > 0) or r >= MIN_RELAXATIONS:
        return None
    burnin = (
        math.ceil(2 * MIN_RELAXATIONS / (learning_rate * (localization + weight_decay)))
        if r > 0
        else math.inf
    )
    gamma = 2 * MIN_RELAXATIONS / (learning_rate * burnin_steps) - weight_decay if burnin_steps else math.inf
    return (
        f"γ = {localization:.3g} is weak for this step and burn-in: the flat directions relax R = ε(γ + wd)B/2 = "
        f"{r:.2g} times during the {burnin_steps} burn-in steps (ε = {learning_rate:.3g}; less than "
        f"{MIN_RELAXATIONS:g}, so where the loss is flat, as it is along some directions of every singular model, "
        "the chains still spread through the draws and λ̂ is still rising); "
        f"raise burnin_steps to {burnin} or localization to {gamma:.3g} (which lowers λ̂ where γ is comparable to "
        "nβ × the curvature)."
    )


def thermostat_advice(learning_rate: float, burnin_steps: int) -> str | None:
    """A warning when SGNHT's burn-in lasts fewer than :data:`MIN_THERMOSTAT_TIME` time units ``B √ε``, else None.

    Examples
    --------
    >>> print(thermostat_advice(5e-5, 300))  # doctest: +ELLIPSIS
    sgnht: the burn-in lasts B√ε = 2.1 time units ... raise burnin_steps to 4243.
    >>> thermostat_advice(5e-5, 5000) is None
    True
    """
    if not (learning_rate > 0):
        return None
    time_units = burnin_steps * math.sqrt(learning_rate)
    if time_units >= MIN_THERMOSTAT_TIME:
        return None
    needed = math.ceil(MIN_THERMOSTAT_TIME / math.sqrt(learning_rate))
    return (
        f"sgnht: the burn-in lasts B√ε = {time_units:.2g} time units ({burnin_steps} steps at ε = "
        f"{learning_rate:.3g}); the Nosé–Hoover thermostat needs about {MIN_THERMOSTAT_TIME:g} to settle, and until "
        "it has the chains run hot and λ̂ reads high (on a regular model with λ = 5: +28 % after 1.1 time units, "
        f"+8 % after 2.1, within its standard error after 35); raise burnin_steps to {needed}."
    )


def localization_advice(localization: float, nbeta: float, hessian_top: float) -> str | None:
    """A warning when localization removes at least :data:`MAX_LOCALIZATION_SHARE` of every direction's share of
    λ̂: ``γ / (nβ h_max + γ)`` with ``h_max`` the largest Hessian eigenvalue of the loss at ``w*``; else None.

    Examples
    --------
    >>> print(localization_advice(100.0, 50.0, 0.5))  # doctest: +ELLIPSIS
    γ = 100 is large against nβ × the largest curvature at w* (50 × 0.5 = 25): ... at least 80 %...
    >>> localization_advice(1.0, 50.0, 0.5) is None
    True
    """
    scale = nbeta * hessian_top
    if not (math.isfinite(scale) and scale > 0 and localization > 0):
        return None  # no curvature measured at w*: nothing to bound
    share = localization / (scale + localization)
    if share <= MAX_LOCALIZATION_SHARE:
        return None
    return (
        f"γ = {localization:.3g} is large against nβ × the largest curvature at w* ({nbeta:.3g} × {hessian_top:.3g} "
        f"= {scale:.3g}): on a quadratic, localization shrinks every direction's share of λ̂ by γ/(nβh + γ), here by "
        f"at least {100 * share:.0f} %, so λ̂ is biased low (where the loss is flatter than quadratic, a singular "
        "w*, this is a guide, not a bound); lower localization (and check the chains still settle: burn-in "
        "relaxations of the flat directions)."
    )


def nbeta_advice(nbeta: float, n: int | None) -> str | None:
    """What an nβ more than :data:`NBETA_RATIO` times off ``n / log n`` means (a note, not a failure: a fixed small
    nβ is the practice for language models); None when it is within or ``n`` is unknown.

    Examples
    --------
    >>> print(nbeta_advice(64 / math.log(64), 10_000))  # doctest: +ELLIPSIS
    nβ = 15.4 is 71x below n / log n = 1.09e+03 for n = 10000 ...
    >>> nbeta_advice(1000 / math.log(1000), 1000) is None
    True
    """
    if n is None or not n > 1 or not (nbeta > 0):
        return None
    standard = n / math.log(n)
    ratio = nbeta / standard
    if 1 / NBETA_RATIO <= ratio <= NBETA_RATIO:
        return None
    side = f"{ratio:.2g}x above" if ratio > 1 else f"{1 / ratio:.2g}x below"
    return (
        f"nβ = {nbeta:.3g} is {side} n / log n = {standard:.3g} for n = {n} (β = 1/log n). What it means: the "
        f"chains sample the posterior at {side.split('x')[0]}x {'lower' if ratio > 1 else 'higher'} temperature "
        "than the standard choice. λ̂ approaches λ only where nβ is large enough that γ and the loss's shape away "
        "from w* no longer weigh in; at a small fixed nβ (10-30, the practice for language models, REFERENCE.md "
        "§5) they do, and λ̂ is comparable with estimates at the same nβ and γ across models and data sizes, not "
        "with λ. n / log n (nbeta=None) is the choice that targets λ."
    )


def advise(
    result: Any, *, n: int | None = None, hessian_top: float | None = None, measured: Collection[str] = ()
) -> list[str]:
    """The guidance warnings for a finished run (an :class:`~lambdahat.LLCResult`).

    Parameters
    ----------
    result:
        The run: its ``learning_rate``, ``localization``, ``nbeta`` and ``settings`` (``burnin_steps``,
        ``weight_decay``, ``sampler``; a calibrated run's ``settings["calibration"]["curvature"]`` gives
        ``h_max = (κ̂ − γ − wd) / nβ``).
    n:
        The data set size, for the nβ check (skipped when None).
    hessian_top:
        The largest Hessian eigenvalue of the loss at ``w*`` (overrides the calibration's).
    measured:
        The accuracy checks of :mod:`lambdahat.accuracy` that ran (by default those in
        ``settings["accuracy"]``): ``"start"`` measured the relaxation and ``"localization"`` γ's effect directly,
        so the predictions of the relaxation and localization checks are left out.

    Returns
    -------
    list of str
        One sentence per check that failed, each with its numbers and what to change; empty when none did. The
        relaxation check is made for SGLD and SGNHT (RMSProp-SGLD rescales the step per coordinate), the thermostat
        check for SGNHT.
    """
    settings = dict(getattr(result, "settings", {}) or {})
    measured = set(measured) | set(settings.get("accuracy") or {})
    gamma, nbeta = float(result.localization), float(result.nbeta)
    wd = float(settings.get("weight_decay", 0.0) or 0.0)
    out = []
    lr = float(result.learning_rate)
    sampler = settings.get("sampler", "sgld")
    if sampler != "rmsprop_sgld" and "start" not in measured:
        out.append(relaxation_advice(lr, gamma, int(settings.get("burnin_steps", 0)), wd))
    if sampler == "sgnht":
        out.append(thermostat_advice(lr, int(settings.get("burnin_steps", 0))))
    if hessian_top is None:
        curvature = (settings.get("calibration") or {}).get("curvature")
        if curvature is not None and nbeta > 0:
            hessian_top = (float(curvature) - gamma - wd) / nbeta
    if hessian_top is not None and "localization" not in measured:
        out.append(localization_advice(gamma, nbeta, hessian_top))
    out.append(nbeta_advice(nbeta, n))
    out.append(step_search_advice(settings.get("calibration")))
    out.append(burnin_search_advice(settings.get("burnin_search")))
    return [text for text in out if text]


def step_search_advice(calibration: Mapping[str, Any] | None) -> str | None:
    """Why ``learning_rate="auto"`` returned a step it could not accept (its search's reason,
    :mod:`lambdahat.calibration`), or None when the step was accepted or given.

    Examples
    --------
    >>> step_search_advice({"accepted": False, "reason": "no step within the budget had a step bias within 0.05"})
    "learning_rate='auto': no step within the budget had a step bias within 0.05."
    >>> step_search_advice({"accepted": True, "reason": "learning_rate 1e-4: ..."}) is None
    True
    """
    if not calibration or calibration.get("accepted", True):
        return None
    return _sentence("learning_rate='auto': " + str(calibration.get("reason", "no step was accepted")))


def burnin_search_advice(search: Mapping[str, Any] | None) -> str | None:
    """What ``burnin_steps="auto"`` could not do (its search's reason, :mod:`lambdahat.relaxation`), or None when
    the chains relaxed or the burn-in was given.

    Examples
    --------
    >>> burnin_search_advice({"relaxed": False, "reason": "not relaxed at the cap of 800 burn-in steps"})
    "burnin_steps='auto': not relaxed at the cap of 800 burn-in steps."
    >>> burnin_search_advice({"relaxed": True, "reason": "relaxed after 400 burn-in steps"}) is None
    True
    """
    if not search or search.get("relaxed"):
        return None
    return _sentence("burnin_steps='auto': " + str(search.get("reason", "the chains did not relax")))


def _sentence(text: str) -> str:
    return text if text.endswith(".") else text + "."
