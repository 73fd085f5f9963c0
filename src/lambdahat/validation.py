"""Validation of the estimator against closed-form learning coefficients (``lambdahat validate``).

For each case of :func:`lambdahat.truth.default_cases` the estimator runs with settings fixed here (``SETTINGS``),
and the table reports the asymptotic truth λ and, where it is computable, the exact finite-sample *reference* the
estimator targets at that nβ, γ and ε:

- regular models: the exact SGLD stationary value ``(d/2)(2nβa/κ)/(1 − εκ/4)`` (REFERENCE.md §2);
- potentials in one or two dimensions: the exact posterior mean of ``nβK`` under the localized posterior, by
  quadrature (:func:`lambdahat.truth.posterior_mean_nbeta_k_numeric`), which lies below λ at finite nβ;
- radial potentials ``K = ||w||^(2k)``: the same posterior mean by one-dimensional quadrature over the radius
  (:func:`radial_posterior_mean`);
- the others (reduced-rank regression, deep linear networks): λ itself.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import truth
from .calibration import CalibrationError
from .estimator import LLCEstimator, nbeta_from_effective_size

__all__ = ["SETTINGS", "CaseSettings", "reference_value", "run_validation"]


@dataclass(frozen=True)
class CaseSettings:
    """Sampler settings of one validation case."""

    learning_rate: float
    localization: float
    draws: int = 2000
    burnin_steps: int = 500
    chains: int = 8
    batch_size: int = 500


#: Settings per case: steps small enough that the εκ/4 step bias stays at a few percent, localization weak enough
#: to leave the singular directions free but strong enough for the chains to mix within the run.
SETTINGS: dict[str, CaseSettings] = {
    "regular_d10": CaseSettings(learning_rate=5e-5, localization=1.0, draws=1000, burnin_steps=300),
    "monomial_k1_2": CaseSettings(learning_rate=1e-3, localization=10.0),
    "normal_crossing_k1_1": CaseSettings(learning_rate=1e-3, localization=10.0),
    "radial_d3_k2": CaseSettings(learning_rate=5e-4, localization=1.0, draws=3000),
    "rrr_M4_H3_N4_r1": CaseSettings(learning_rate=1e-4, localization=1.0, draws=4000, burnin_steps=2000),
    "dln_4-3-3-4_r1": CaseSettings(learning_rate=1e-4, localization=1.0, draws=8000, burnin_steps=2000),
    "dln_5-4-5_r0": CaseSettings(learning_rate=1e-4, localization=1.0, draws=8000, burnin_steps=2000),
}


def radial_posterior_mean(d: int, k: float, nbeta: float, gamma: float, points: int = 400_001) -> float:
    """Exact ``E[nβ ||w||^(2k)]`` under ``p(w) ∝ exp(−nβ ||w||^(2k) − (γ/2)||w||²)`` in ``d`` dimensions.

    In polar coordinates the density of ``r = ||w||`` is ``∝ r^(d−1) exp(−nβ r^(2k) − γ r²/2)``; with
    ``r = e^t`` the integrals become smooth in ``t`` and the trapezoidal rule on a wide, fine grid is exact to
    far below Monte Carlo error. Without localization the value is exactly ``d / (2k)`` (``nβK`` is then
    Gamma(d/(2k), 1) distributed), which the tests check.
    """
    t = np.linspace(-40.0, 10.0, points)
    r = np.exp(t)
    u = nbeta * r ** (2 * k)
    log_w = d * t - u - 0.5 * gamma * r * r  # r^(d-1) dr = r^d dt
    w = np.exp(log_w - log_w.max())
    return float(np.trapezoid(u * w, t) / np.trapezoid(w, t))


def reference_value(case: truth.TruthCase, settings: CaseSettings, nbeta: float) -> tuple[float, str]:
    """The value λ̂ should reproduce at this nβ, γ and ε, and what it is."""
    potential = getattr(case.model, "potential", None)
    if case.name.startswith("regular"):
        a = getattr(potential, "a", 1.0)
        value = truth.regular_posterior_mean_nbeta_k(
            case.d, a, nbeta, settings.localization, settings.learning_rate
        )
        return value, "exact SGLD"
    if potential is not None and case.name.startswith("radial"):
        return radial_posterior_mean(case.d, potential.k, nbeta, settings.localization), "exact posterior"
    if potential is not None and case.d <= 2:
        value = truth.posterior_mean_nbeta_k_numeric(potential, case.d, nbeta, settings.localization)
        return value, "exact posterior"
    return case.true_lambda, "λ"


def run_validation(
    quick: bool = False,
    seed: int = 0,
    compile: bool | str = False,
    show_progress: bool = False,
    calibrate: bool = False,
) -> pd.DataFrame:
    """Estimate λ̂ on every validation case and tabulate it against the truth.

    Parameters
    ----------
    quick:
        Only the three cases of ``truth.default_cases(quick=True)``.
    seed, compile, show_progress:
        Passed to the estimator.
    calibrate:
        Choose ε per case with :func:`lambdahat.calibrate` (``learning_rate="auto"``) instead of ``SETTINGS``.

    Returns
    -------
    pandas.DataFrame
        One row per case: ``case, d, true_lambda, reference, reference_kind, llc_mean, llc_stderr, rel_error``
        (against λ), ``z`` (``(λ̂ − reference) / stderr``), ``mala_acceptance, rhat, ess, n_diverged,
        learning_rate`` (the one used), ``localization, wall_seconds``. Cases whose calibration found no step
        are left out and listed in ``df.attrs["failures"]``.
    """
    rows, failures = [], []
    for case in truth.default_cases(quick=quick):
        s = SETTINGS[case.name]
        nbeta = nbeta_from_effective_size(case.n)
        est = LLCEstimator(
            draws=s.draws,
            chains=s.chains,
            burnin_steps=s.burnin_steps,
            learning_rate="auto" if calibrate else s.learning_rate,
            localization=s.localization,
            nbeta=nbeta,
        )
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                result = est.run(
                    case.model,
                    case.loader(s.batch_size, shuffle=True, seed=seed),
                    criterion_fn=case.criterion_fn,
                    seed=seed,
                    compile=compile,
                    show_progress=show_progress,
                )
            except CalibrationError as exc:  # reported as a row, not hidden and not fatal to the table
                failures.append(f"{case.name}: {str(exc).splitlines()[0]}")
                continue
        wall = time.perf_counter() - start
        ref, kind = reference_value(case, dataclasses.replace(s, learning_rate=result.learning_rate), nbeta)
        rows.append(
            {
                "case": case.name,
                "d": case.d,
                "true_lambda": case.true_lambda,
                "reference": ref,
                "reference_kind": kind,
                "llc_mean": result.llc_mean,
                "llc_stderr": result.llc_stderr,
                "rel_error": (result.llc_mean - case.true_lambda) / case.true_lambda,
                "z": (result.llc_mean - ref) / result.llc_stderr if result.llc_stderr > 0 else math.nan,
                "mala_acceptance": result.mala_acceptance,
                "rhat": result.rhat,
                "ess": result.ess,
                "n_diverged": int(result.diverged.sum()),
                "learning_rate": result.learning_rate,
                "localization": s.localization,
                "wall_seconds": wall,
            }
        )
    df = pd.DataFrame(rows)
    df.attrs["failures"] = failures
    return df


def format_table(df: pd.DataFrame) -> str:
    """The validation table as aligned text."""
    lines = [
        f"{'case':24s} {'d':>3s} {'true λ':>7s} {'reference':>17s} {'λ̂ ± se':>16s} {'rel.err':>8s} "
        f"{'z':>6s} {'ε':>8s} {'accept':>6s} {'R-hat':>6s} {'ESS':>6s} {'div':>3s} {'time':>6s}"
    ]
    for r in df.itertuples():
        lines.append(
            f"{r.case:24s} {r.d:3d} {r.true_lambda:7.3f} {r.reference:7.3f} {r.reference_kind:>9s} "
            f"{r.llc_mean:8.3f} ± {r.llc_stderr:5.3f} {100 * r.rel_error:7.1f}% {r.z:6.2f} "
            f"{r.learning_rate:8.1e} {r.mala_acceptance:6.3f} {r.rhat:6.3f} {r.ess:6.0f} {r.n_diverged:3d} "
            f"{r.wall_seconds:5.1f}s"
        )
    lines += [f"calibration failed: {failure}" for failure in df.attrs.get("failures", [])]
    return "\n".join(lines)
