"""Validation of the estimator against closed-form learning coefficients (``lambdahat validate``).

For each case of :func:`lambdahat.truth.default_cases` the estimator runs with settings fixed here (``SETTINGS``),
and the table reports the asymptotic truth λ and, where it is computable, the exact finite-sample *reference* the
estimator targets at that nβ, γ and ε. Each case carries its reference (:meth:`lambdahat.truth.TruthCase.reference`):

- regular models: the exact SGLD stationary value ``(d/2)(2nβa/κ)/(1 − εκ/4)`` (REFERENCE.md §2);
- potentials in one or two dimensions: the exact posterior mean of ``nβK`` under the localized posterior, by
  quadrature (:func:`lambdahat.truth.posterior_mean_nbeta_k_numeric`), which lies below λ at finite nβ;
- radial potentials ``K = ||w||^(2k)``: the same posterior mean by one-dimensional quadrature over the radius
  (:func:`lambdahat.truth.radial_posterior_mean`);
- the others (reduced-rank regression, deep linear networks): λ itself.

The cases are the points of one sweep (:func:`lambdahat.sweeps.runner.run_sweep`): with ``out_dir`` every finished
case is stored at once and a rerun resumes, a case that raises is retried and then recorded as ``failed``, and the
cases may run as Ray tasks (``executor="ray"``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from . import truth
from .calibration import CalibrationError
from .config import LLCConfig
from .problem import nbeta_from_effective_size
from .rng import resolve_seed
from .sweeps.executors import PointError
from .sweeps.runner import SweepRun, check_run_options, estimate, problem_for, result_row, run_sweep
from .sweeps.store import stored_seed

__all__ = [
    "SCALE_SETTINGS",
    "SETTINGS",
    "TABLE_COLUMNS",
    "CaseSettings",
    "format_table",
    "reference_value",
    "run_validation",
]


@dataclass(frozen=True)
class CaseSettings:
    """Sampler settings of one validation case."""

    learning_rate: float
    localization: float
    draws: int = 2000
    burnin_steps: int = 500
    chains: int = 8
    batch_size: int = 500
    steps_bw_draws: int = 1

    def config(self, nbeta: float, calibrate: bool = False) -> LLCConfig:
        """The :class:`~lambdahat.LLCConfig` of the case at ``nbeta`` (``learning_rate="auto"`` when
        ``calibrate``).

        Examples
        --------
        >>> CaseSettings(1e-3, 10.0).config(100.0, calibrate=True).learning_rate
        'auto'
        """
        return LLCConfig(
            draws=self.draws,
            chains=self.chains,
            burnin_steps=self.burnin_steps,
            steps_bw_draws=self.steps_bw_draws,
            learning_rate="auto" if calibrate else self.learning_rate,
            localization=self.localization,
            nbeta=nbeta,
        )


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

#: Settings of the scale cases (:func:`lambdahat.truth.scale_cases`), by name: ``learning_rate`` is chosen
#: (``"auto"``, by its measured step bias). γ = 3: at n = 1e5 (nβ = 8686) the 1024-parameter network read 14 % below λ
#: at γ = 10, flagged by the localization check, and 10 % below at γ = 3 with the localization check passing
#: (benchmarks/RESULTS.md); 8000 burn-in steps and 2000 draws 4 steps apart, for the flat directions to relax at
#: ε ≈ 1e-5 and for an ESS above 100.
SCALE_SETTINGS: dict[str, CaseSettings] = {
    case_name: CaseSettings(
        learning_rate=1e-5, localization=3.0, draws=2000, burnin_steps=8000, steps_bw_draws=4
    )
    for case_name in (
        f"dln_{'-'.join(str(w) for w in widths)}_r{r}_rot" for widths, r in truth.SCALE_SHAPES.values()
    )
}

#: The columns of :func:`run_validation`'s table, in order.
TABLE_COLUMNS = (
    "case",
    "d",
    "true_lambda",
    "reference",
    "reference_kind",
    "llc_mean",
    "llc_stderr",
    "rel_error",
    "z",
    "mala_acceptance",
    "rhat",
    "ess",
    "n_diverged",
    "learning_rate",
    "burnin_steps",
    "localization",
    "nbeta",
    "wall_seconds",
    "status",
    "error",
    "warnings",
    "attempts",
)
#: Columns of a case's row in the sweep that only the case's run knows (the step size calibration chose).
_RUN_COLUMNS = (("learning_rate", "float"), ("burnin_steps", "int"))


def reference_value(case: truth.TruthCase, settings: CaseSettings, nbeta: float) -> tuple[float, str]:
    """The value λ̂ should reproduce on ``case`` at this nβ and the γ and ε of ``settings``, and what it is
    (:meth:`lambdahat.truth.TruthCase.reference`)."""
    return case.reference(nbeta, settings.localization, settings.learning_rate)


def _case_point(shared: Mapping[str, Any], task: Mapping[str, Any]) -> dict[str, Any]:
    """One validation case (runs in this process or in a Ray worker): prepare its model on its data and sample
    its config."""
    name = task["case"]
    case, config, batch_size = shared["cases"][name], shared["configs"][name], shared["batch_sizes"][name]
    options = {**shared["options"], "criterion_fn": case.criterion_fn}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the trust policy's notes go to the table
        problem = problem_for(
            case.model, case.loader(batch_size, shuffle=True, seed=options["seed"]), config, options
        )
        try:
            result = estimate(problem, config, options)
        except CalibrationError as exc:  # the same pilots would fail again: recorded, not retried
            raise PointError(f"calibration found no step: {str(exc).splitlines()[0]}") from exc
    return {
        **result_row(result),
        "learning_rate": float(result.learning_rate),
        "burnin_steps": int(result.settings["burnin_steps"]),
    }


def _task(point: dict[str, Any]) -> dict[str, Any]:
    return {"case": point["case"]}


def run_validation(
    quick: bool = False,
    seed: int | None = 0,
    compile: bool | str = False,
    show_progress: bool = False,
    calibrate: bool = False,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    executor: str = "local",
    address: str | None = None,
    devices: str | torch.device | Sequence[str | torch.device] = "cpu",
    resume: bool = True,
    overwrite: bool = False,
    max_retries: int = 2,
    ray_resources: Mapping[str, Any] | None = None,
    ray_init_options: Mapping[str, Any] | None = None,
    cases: Sequence[truth.TruthCase] | None = None,
    settings: Mapping[str, CaseSettings] | None = None,
    checks: str = "all",
    burnin_steps: int | str | None = None,
) -> pd.DataFrame:
    """Estimate λ̂ on every validation case and tabulate it against the truth.

    Parameters
    ----------
    quick:
        Only the three cases of ``truth.default_cases(quick=True)``.
    seed:
        Master seed of every case (and of its data order); ``None`` draws one, or reuses the one stored in
        ``out_dir``.
    compile, devices:
        Passed to :func:`lambdahat.prepare`.
    show_progress:
        A progress bar over the cases.
    calibrate:
        Choose ε per case with :func:`lambdahat.calibrate` (``learning_rate="auto"``) instead of ``SETTINGS``.
    out_dir:
        Store every finished case at once in ``out_dir/results.csv`` (with ``sweep.json``); a rerun with the same
        cases and settings resumes and runs only the cases not yet finished.
    executor, address, resume, overwrite, max_retries, ray_resources, ray_init_options:
        As in :meth:`~lambdahat.sweeps.LLCGridSearch.run_grid_search` (``executor="ray"`` runs every case as a Ray
        task).
    cases:
        The cases (default ``truth.default_cases(quick)``); names must be distinct.
    settings:
        The settings of every case, by name (default ``SETTINGS``).
    checks:
        The accuracy checks of every case (``LLCConfig.checks``; default ``"all"``: the verdicts then rest on the
        measured step, localization and relaxation biases, not on proxies).
    burnin_steps:
        Every case's burn-in instead of its settings' (``"auto"``: run until relaxed, :mod:`lambdahat.relaxation`).

    Returns
    -------
    pandas.DataFrame
        One row per case (``TABLE_COLUMNS``): ``case, d, true_lambda, reference, reference_kind, llc_mean,
        llc_stderr, rel_error`` (against λ), ``z`` (``(λ̂ − reference) / stderr``), ``mala_acceptance, rhat, ess,
        n_diverged, learning_rate, burnin_steps`` (the ones used), ``localization, nbeta, wall_seconds``, then
        ``status`` (the
        trust policy's verdict, or ``"failed"`` for a case that raised, e.g. whose calibration found no step),
        ``error, warnings, attempts``. ``df.attrs["failures"]`` lists the failed cases with their errors.

    Raises
    ------
    RuntimeError
        Every case failed (the message gives the first error).
    """
    check_run_options(executor, address, devices, ray_resources, max_retries)
    if seed is None and resume and not overwrite:
        seed = stored_seed(out_dir)
    seed = resolve_seed(seed, "run_validation")
    cases = truth.default_cases(quick=quick) if cases is None else list(cases)
    settings = SETTINGS if settings is None else settings
    names = [c.name for c in cases]
    if not cases or len(set(names)) != len(names):
        raise ValueError(f"run_validation: cases must be at least one, with distinct names; got {names}.")
    missing = [name for name in names if name not in settings]
    if missing:
        raise ValueError(f"run_validation: no settings for case(s) {missing}; add a CaseSettings for each.")
    nbetas = {c.name: nbeta_from_effective_size(c.n) for c in cases}
    configs = {
        c.name: settings[c.name].config(nbetas[c.name], calibrate).replace(checks=checks) for c in cases
    }
    if burnin_steps is not None:
        configs = {name: config.replace(burnin_steps=burnin_steps) for name, config in configs.items()}
    options = {"devices": devices, "compile": compile, "seed": seed, "chain_batch": None}
    points = [
        {
            "case": c.name,
            "d": c.d,
            "true_lambda": c.true_lambda,
            "nbeta": nbetas[c.name],
            "localization": configs[c.name].localization,
        }
        for c in cases
    ]
    definition = {
        "cases": [
            {
                "name": c.name,
                "description": c.description,
                "n": c.n,
                "config": configs[c.name].to_dict(),
                "batch_size": settings[c.name].batch_size,
            }
            for c in cases
        ],
        "seed": seed,
    }
    table = run_sweep(
        kind="validation",
        points=points,
        point_columns=[
            ("case", "str"),
            ("d", "int"),
            ("true_lambda", "float"),
            ("nbeta", "float"),
            ("localization", "float"),
        ],
        fn=_case_point,
        shared={
            "cases": {c.name: c for c in cases},
            "configs": configs,
            "batch_sizes": {c.name: settings[c.name].batch_size for c in cases},
            "options": options,
        },
        prepare=_task,
        config=definition,
        options=options,
        seed=seed,
        run=SweepRun(
            executor,
            address,
            ray_resources,
            ray_init_options,
            out_dir,
            resume,
            overwrite,
            max_retries,
            show_progress,
        ),
        callback=None,
        desc="validation",
        value_columns=list(_RUN_COLUMNS),
    )
    return _validation_table(cases, configs, table)


def _validation_table(
    cases: Sequence[truth.TruthCase], configs: Mapping[str, LLCConfig], table: pd.DataFrame
) -> pd.DataFrame:
    """The sweep's table with each case's reference, relative error and z-score."""
    rows = []
    for case, (_, r) in zip(cases, table.iterrows()):
        config = configs[case.name]
        used = r.get("learning_rate", math.nan)
        if used is None or not math.isfinite(float(used)):
            used = math.nan if config.learning_rate == "auto" else config.learning_rate
        if case.target is not None and case.target.uses_step and not math.isfinite(used):
            ref, kind = math.nan, case.target.kind  # the step calibration chose is not known
        else:
            ref, kind = case.reference(config.nbeta, config.localization, 0.0 if math.isnan(used) else used)
        llc, se = float(r["llc_mean"]), float(r["llc_stderr"])
        rows.append(
            {
                "case": case.name,
                "d": case.d,
                "true_lambda": case.true_lambda,
                "reference": ref,
                "reference_kind": kind,
                "llc_mean": llc,
                "llc_stderr": se,
                "rel_error": (llc - case.true_lambda) / case.true_lambda,
                "z": (llc - ref) / se if se > 0 else math.nan,
                "mala_acceptance": float(r["mala_acceptance"]),
                "rhat": float(r["rhat"]),
                "ess": float(r["ess"]),
                "n_diverged": r["n_diverged"],
                "learning_rate": float(used),
                "burnin_steps": _burnin_used(r.get("burnin_steps"), config),
                "localization": config.localization,
                "nbeta": config.nbeta,
                "wall_seconds": float(r["wall_seconds"]),
                "status": r["status"],
                "error": r["error"],
                "warnings": r["warnings"],
                "attempts": r["attempts"],
            }
        )
    df = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    df["n_diverged"] = df["n_diverged"].astype("Int64")
    df["attempts"] = df["attempts"].astype("Int64")
    df["burnin_steps"] = df["burnin_steps"].astype("Int64")
    df.attrs["failures"] = [f"{r.case}: {r.error}" for r in df.itertuples() if r.status == "failed"]
    return df


def _burnin_used(recorded: Any, config: LLCConfig) -> Any:
    """The burn-in a case ran (the chosen one with ``burnin_steps="auto"``; missing for a failed case)."""
    if pd.notna(recorded):
        return int(recorded)
    return pd.NA if config.burnin_steps == "auto" else config.burnin_steps


def format_table(df: pd.DataFrame) -> str:
    """The validation table as aligned text, with the trust policy's status of each case (a failed case shows
    its error instead of the estimate)."""
    lines = [
        f"{'case':24s} {'d':>6s} {'true λ':>7s} {'reference':>17s} {'λ̂ ± se':>16s} {'rel.err':>8s} "
        f"{'z':>6s} {'ε':>8s} {'accept':>6s} {'R-hat':>6s} {'ESS':>6s} {'div':>3s} {'time':>6s}  status"
    ]
    for r in df.itertuples():
        head = f"{r.case:24s} {r.d:6d} {r.true_lambda:7.3f} {r.reference:7.3f} {r.reference_kind:>9s} "
        if getattr(r, "status", "ok") == "failed":
            lines.append(f"{head}failed: {r.error}")
            continue
        lines.append(
            f"{head}{r.llc_mean:8.3f} ± {r.llc_stderr:5.3f} {100 * r.rel_error:7.1f}% {r.z:6.2f} "
            f"{r.learning_rate:8.1e} {r.mala_acceptance:6.3f} {r.rhat:6.3f} {r.ess:6.0f} {r.n_diverged:3d} "
            f"{r.wall_seconds:5.1f}s  {getattr(r, 'status', 'ok')}"
        )
    return "\n".join(lines)
