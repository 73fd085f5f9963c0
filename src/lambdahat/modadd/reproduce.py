"""Reproduce the hackathon's λ̂ against p (REFERENCE.md §3), side by side with its numbers.

The hackathon (Panickssery & Vaintrob) reported, for an untied GELU MLP (embed 8, hidden 32, train_frac 0.8, Adam
lr 0.01, weight decay 2e-4, batch 64, 10,000 steps, 15,000 for p = 41 and 53) and SGLD (γ = 5, ε = 1e-3, 5,000 steps,
batch 64, orthogonal restriction, no burn-in, nβ = n / log n):

    p  = 23, 29, 37, 41, 47, 53
    λ̂ ≈ 113, 158, 222, 259, 312, 371      (mean of 5 runs)

linear in p for models that generalize, about p² for models that memorize (random labels).

:func:`reproduce_p_sweep` trains every model of :func:`hackathon_params` *to a criterion* (a true-label model
may stop at a checkpoint with test accuracy >= ``target_test_acc``, a random-label one at a checkpoint with training
accuracy >= ``memorized_train_acc``, but not before ``min_steps_factor`` × the recipe's steps; every model ends at
its step budget otherwise) and records what it became (``outcome``: ``generalized``, ``memorized`` or
``not fitted``), then estimates λ̂ twice on the same prepared
problem: at the hackathon's ε (no burn-in, as they sampled) and at a smaller, *trusted* ε with a burn-in and the
accuracy checks that say whether that estimate is settled (the step check: λ̂ at twice the step; the start check:
chains from ``w*`` against chains from ``N(w*, I/γ)``), so the step-size bias of the hackathon's numbers is
visible beside an estimate the trust policy accepts at the same γ. Every model is one point of the generic sweep engine
(:func:`lambdahat.sweeps.runner.run_sweep`): finished points are stored in ``out_dir/llc`` at once, an interrupted
reproduction resumes, a failing point is retried and then recorded as ``failed``.

:func:`summarize` turns the table into per-(p, group) means with their spread, fits ``λ̂ = a + b·p`` and
``λ̂ = a + c·p²`` per group (and to the hackathon's numbers) with their residuals, and writes what agrees and what
does not from the numbers (:func:`write_reproduction`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch.utils.data import DataLoader

from lambdahat.config import ACCURACY_CHECKS, LLCConfig
from lambdahat.modadd.params import ExperimentParams
from lambdahat.modadd.sweep import _int_list, sweep_run_dir
from lambdahat.modadd.train import Run, load_run, train
from lambdahat.rng import resolve_seed
from lambdahat.sweeps.runner import SweepRun, estimate, problem_for, result_row, run_sweep

__all__ = [
    "FULL",
    "HACKATHON_LLC",
    "HACKATHON_PARAMS",
    "HACKATHON_PS",
    "QUICK",
    "REPRODUCE_COLUMNS",
    "Protocol",
    "Reproduction",
    "fit_groups",
    "hackathon_params",
    "plot_reproduction",
    "reproduce_p_sweep",
    "summarize",
    "write_reproduction",
]

#: The hackathon's moduli and its λ̂ (mean of 5 runs, sd 2-17; REFERENCE.md §3).
HACKATHON_PS: tuple[int, ...] = (23, 29, 37, 41, 47, 53)
HACKATHON_LLC: dict[int, float] = {23: 113.0, 29: 158.0, 37: 222.0, 41: 259.0, 47: 312.0, 53: 371.0}
#: The moduli the hackathon trained for 15,000 steps instead of 10,000.
_LONG_PS = (41, 53)
#: The hackathon's model and optimizer (``p``, ``n_batches`` and ``run_id`` are set per model by
#: :func:`hackathon_params`).
HACKATHON_PARAMS = ExperimentParams(
    p=53,
    embed_dim=8,
    hidden_size=32,
    activation="gelu",
    train_frac=0.8,
    lr=0.01,
    weight_decay=2e-4,
    batch_size=64,
    n_batches=10_000,
    n_save_model_checkpoints=41,
)
#: The groups of the summary: true-label models that generalized, true-label models that only memorized, and the
#: random-label control (whatever it became).
GROUPS = ("generalized", "memorized", "random labels")


@dataclass(frozen=True)
class Protocol:
    """How a reproduction trains and samples (two presets: :data:`QUICK` and :data:`FULL`).

    Parameters
    ----------
    ps : tuple of int
        The moduli.
    run_ids : tuple of int
        Training seeds; one model per ``(p, run_id)`` and label kind.
    draws, chains : int
        SGLD steps per chain (every step is a draw: no burn-in, as in the hackathon) and chains (vmapped, so more
        chains cost little).
    learning_rate : float
        The hackathon's ε.
    trusted_learning_rate : float
        The smaller ε. 3e-4 was chosen on the step check (λ̂ at 2ε against ε) of the run-0 true-label models at
        p = 41 and 53, the largest step biases of the quick preset at 5e-4 (+11.5 % and +8.1 %): +7.0 % and +5.0 %,
        within the policy's 10 %; every model's own step check measures it again. (The hackathon's 1e-3 reads about
        20 % above the ε → 0 value at p = 53, benchmarks/RESULTS.md.)
    trusted_burnin_steps : int
        Burn-in steps before the draws at ``trusted_learning_rate``: at γ = 5 and ε = 3e-4 the directions only γ
        holds relax in about 2 / (εγ) = 1,333 steps.
    trusted_draws : int or None
        Draws per chain at ``trusted_learning_rate`` (default ``draws``).
    trusted_checks : str
        The accuracy checks of the trusted estimate (``LLCConfig.checks``): ``"step,start"`` measures the step
        and relaxation biases at the protocol's γ. ``"all"`` adds the localization check, which on the quick
        preset read −32 % to −85 % on every fitted model at γ = 5 (λ̂ rises as γ falls) and passed only the
        underfit random-label ones: λ̂ here is λ̂ at the hackathon's γ, not its γ → 0 limit.
    localization : float
        γ.
    batch_size : int
        SGLD minibatch size.
    check_every : int
        Training steps between checkpoints, where the criterion is checked.
    min_steps_factor : float
        A model may stop at a checkpoint that meets its criterion only after this fraction of the recipe's steps
        (10,000; 15,000 for p = 41, 53). 1 trains every model at least as long as the hackathon did (λ̂ falls by
        15-20 % after grokking, so stopping right at the criterion reads high: +18 % at p = 53); 0 stops as soon as
        the criterion holds.
    target_test_acc, memorized_train_acc : float
        The criteria: a true-label model generalized at test accuracy >= ``target_test_acc``; a model memorized
        at training accuracy >= ``memorized_train_acc`` (without generalizing).
    step_budget_factor : float
        Multiplies the recipe's steps to give each model's step budget (at least ``min_steps_factor``): a model
        that has not met its criterion by the recipe's steps trains on, up to this budget.
    """

    ps: tuple[int, ...] = HACKATHON_PS
    run_ids: tuple[int, ...] = (0, 1)
    draws: int = 1000
    chains: int = 8
    learning_rate: float = 1e-3
    trusted_learning_rate: float = 3e-4
    trusted_burnin_steps: int = 1500
    trusted_draws: int | None = None
    trusted_checks: str = "step,start"
    localization: float = 5.0
    batch_size: int = 64
    check_every: int = 250
    min_steps_factor: float = 1.0
    target_test_acc: float = 0.95
    memorized_train_acc: float = 0.95
    step_budget_factor: float = 1.0

    def __post_init__(self) -> None:
        where = "Protocol"
        _int_list(where, "ps", self.ps, minimum=2)
        _int_list(where, "run_ids", self.run_ids)
        for name in ("draws", "chains", "batch_size", "check_every", "trusted_draws", "trusted_burnin_steps"):
            v = getattr(self, name)
            if name == "trusted_draws" and v is None:
                continue
            least = 0 if name == "trusted_burnin_steps" else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                kind = "a non-negative" if least == 0 else "a positive"
                raise ValueError(f"{where}: {name} must be {kind} integer, got {v!r}.")
        for name in ("learning_rate", "trusted_learning_rate", "localization", "step_budget_factor"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{where}: {name} must be a positive number, got {v!r}.")
        if isinstance(self.min_steps_factor, bool) or not isinstance(self.min_steps_factor, int | float):
            raise ValueError(f"{where}: min_steps_factor must be a number, got {self.min_steps_factor!r}.")
        if not 0 <= self.min_steps_factor <= self.step_budget_factor:
            raise ValueError(
                f"{where}: min_steps_factor must be in [0, step_budget_factor] = [0, {self.step_budget_factor}], "
                f"got {self.min_steps_factor!r}."
            )
        for name in ("target_test_acc", "memorized_train_acc"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 1:
                raise ValueError(f"{where}: {name} must be in (0, 1], got {v!r}.")
        try:
            self.config(trusted=True)
        except ValueError as exc:  # a bad trusted_checks, in LLCConfig's words
            raise ValueError(f"{where}: trusted_checks: {exc}") from None

    def config(self, trusted: bool = False) -> LLCConfig:
        """The :class:`~lambdahat.LLCConfig` of the estimates at the hackathon's ε: no burn-in, nβ = n / log n,
        orthogonal restriction; with ``trusted``, at ``trusted_learning_rate`` after ``trusted_burnin_steps``, for
        ``trusted_draws`` draws, with the accuracy checks ``trusted_checks``."""
        if trusted:
            draws = self.draws if self.trusted_draws is None else self.trusted_draws
            return self.config().replace(
                learning_rate=self.trusted_learning_rate,
                burnin_steps=self.trusted_burnin_steps,
                draws=draws,
                checks=self.trusted_checks,
            )
        return LLCConfig(
            draws=self.draws,
            chains=self.chains,
            burnin_steps=0,
            learning_rate=self.learning_rate,
            localization=self.localization,
            restrict_to_orth_grad=True,
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


#: The shortened protocol of ``lambdahat modadd reproduce-p-sweep``: the hackathon's six p, 2 seeds, every model
#: trained the recipe's steps (the criterion is checked and recorded; no model may stop earlier), 8 chains × 1,000
#: SGLD steps at ε = 1e-3 (against the hackathon's 5,000: 3-7 % lower on the same models at p = 23 and 53) and
#: 1,500 + 1,000 steps at ε = 3e-4 with the step and start checks (benchmarks/RESULTS.md has its time).
QUICK = Protocol()
#: The hackathon's protocol: 5 seeds, every model trained the recipe's steps, 5,000 SGLD steps at both ε.
FULL = Protocol(run_ids=(0, 1, 2, 3, 4), draws=5000)

#: The columns of :func:`reproduce_p_sweep`'s table, in order.
REPRODUCE_COLUMNS = (
    "p",
    "run_id",
    "use_random_dataset",
    "outcome",
    "steps_trained",
    "train_acc",
    "test_acc",
    "n_train",
    "llc_mean",
    "llc_stderr",
    "mala_acceptance",
    "status",
    "trusted_llc_mean",
    "trusted_llc_stderr",
    "trusted_mala_acceptance",
    "trusted_status",
    "trusted_step_bias",
    "trusted_localization_bias",
    "trusted_start_bias",
    "error",
    "wall_seconds",
    "run_dir",
)
_TABLE = "reproduce_p_sweep.csv"
_TRUSTED = ("llc_mean", "llc_stderr", "mala_acceptance", "status")
_VALUE_COLUMNS = (
    ("trusted_llc_mean", "float"),
    ("trusted_llc_stderr", "float"),
    ("trusted_mala_acceptance", "float"),
    ("trusted_status", "str"),
    ("trusted_step_bias", "float"),
    ("trusted_localization_bias", "float"),
    ("trusted_start_bias", "float"),
    ("outcome", "str"),
    ("steps_trained", "int"),
    ("train_acc", "float"),
    ("test_acc", "float"),
    ("n_train", "int"),
)


def _check_biases(accuracy: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """``{prefix}{check}_bias`` for each accuracy check (the relative bias it measured; NaN when not run or when
    its companion could not measure it)."""
    out = {}
    for name in ACCURACY_CHECKS:
        check = accuracy.get(name) or {}
        bias = check.get("bias")
        out[f"{prefix}{name}_bias"] = float(bias) if bias is not None else math.nan
    return out


def _recipe_steps(p: int) -> int:
    return 15_000 if p in _LONG_PS else 10_000


def hackathon_params(p: int, run_id: int = 0, use_random_dataset: bool = False, protocol: Protocol = QUICK):
    """The hackathon's model of modulus ``p``: :data:`HACKATHON_PARAMS` with 10,000 training steps (15,000 for
    p = 41 and 53) times ``protocol.step_budget_factor``, a checkpoint every ``protocol.check_every`` steps.

    Examples
    --------
    >>> prm = hackathon_params(41)
    >>> prm.p, prm.n_batches, prm.n_save_model_checkpoints, prm.embed_dim, prm.hidden_size
    (41, 15000, 61, 8, 32)
    """
    steps = round(_recipe_steps(p) * protocol.step_budget_factor)
    steps = max(steps, protocol.check_every)
    return dataclasses.replace(
        HACKATHON_PARAMS,
        p=p,
        run_id=run_id,
        use_random_dataset=use_random_dataset,
        n_batches=steps,
        n_save_model_checkpoints=max(2, steps // protocol.check_every + 1),
    )


def _outcome(train_acc: float, test_acc: float, protocol: Protocol) -> str:
    """``generalized`` (test accuracy >= target), ``memorized`` (training accuracy >= its threshold only) or
    ``not fitted``."""
    if test_acc >= protocol.target_test_acc:
        return "generalized"
    if train_acc >= protocol.memorized_train_acc:
        return "memorized"
    return "not fitted"


class _Criterion:
    """The stopping rule of one model (picklable, for Ray): a true-label model stops once it generalized, a
    random-label one once it memorized."""

    def __init__(self, random_labels: bool, protocol: Protocol, min_step: int) -> None:
        self.random_labels = random_labels
        self.min_step = min_step
        self.target_test_acc = protocol.target_test_acc
        self.memorized_train_acc = protocol.memorized_train_acc

    def __call__(self, row: Mapping[str, float]) -> bool:
        if row["step"] < self.min_step:
            return False
        if self.random_labels:
            return row["train_acc"] >= self.memorized_train_acc
        return row["test_acc"] >= self.target_test_acc


def _criterion_run(params: ExperimentParams, path: Path, criterion: _Criterion | None) -> Run:
    """The run of ``params`` trained to ``criterion``: reused when the directory holds it (complete, or stopped
    at a checkpoint that meets the criterion, which is where training would stop again), trained otherwise."""
    if path.is_dir() and (path / "params.json").is_file():
        existing = load_run(path)
        if existing.params == params and existing.n_checkpoints >= 2:
            complete = existing.n_checkpoints == params.n_save_model_checkpoints
            last = existing.record.iloc[-1]
            if complete or (criterion is not None and criterion(last)):
                return existing
        return train(params, path, show_progress=False, overwrite=True, stop_when=criterion)
    return train(params, path, show_progress=False, stop_when=criterion)


def _point(shared: Mapping[str, Any], task: Mapping[str, Any]) -> dict[str, Any]:
    """One model: train it to its criterion (or reuse it), then λ̂ at its last checkpoint at both step sizes on
    one prepared problem."""
    protocol: Protocol = shared["protocol"]
    params: ExperimentParams = task["params"]
    recipe = _recipe_steps(params.p)
    criterion = _Criterion(params.use_random_dataset, protocol, round(recipe * protocol.min_steps_factor))
    run = _criterion_run(params, Path(task["run_dir"]), criterion)
    last = run.record.iloc[-1]
    loader = DataLoader(run.train_data(), batch_size=protocol.batch_size, shuffle=True)
    options = shared["options"]
    config = protocol.config()
    problem = problem_for(run.model(-1), loader, config, options)
    row = result_row(estimate(problem, config, options))
    trusted_result = estimate(problem, protocol.config(trusted=True), options)
    trusted = result_row(trusted_result)
    row.update({f"trusted_{k}": trusted[k] for k in _TRUSTED})
    row.update(_check_biases(trusted_result.settings.get("accuracy") or {}, prefix="trusted_"))
    row.update(
        outcome=_outcome(float(last.train_acc), float(last.test_acc), protocol),
        steps_trained=int(last.step),
        train_acc=float(last.train_acc),
        test_acc=float(last.test_acc),
        n_train=len(run.train_data()),
    )
    return row


@dataclass
class Reproduction:
    """What :func:`reproduce_p_sweep` measured: the per-model ``table``, the per-(p, group) ``summary``, the
    ``fits`` and the wall time; :func:`write_reproduction` writes them with the figure."""

    table: pd.DataFrame
    summary: pd.DataFrame
    fits: pd.DataFrame
    protocol: Protocol
    wall_seconds: float


def reproduce_p_sweep(
    out_dir: str | os.PathLike[str],
    protocol: Protocol = QUICK,
    *,
    seed: int | None = 0,
    compile: bool | str = False,
    show_progress: bool = True,
    overwrite: bool = False,
    executor: str = "local",
    address: str | None = None,
    max_retries: int = 2,
) -> Reproduction:
    """Train the hackathon's models to their criterion and estimate λ̂ at the hackathon's ε and at a trusted one.

    For every ``p`` of ``protocol.ps``, run id and label kind (true labels ``(a + b) mod p`` and the random-label
    control), the model :func:`hackathon_params` is trained into ``out_dir/runs/p{p}-run{id}-{labels}`` until its
    criterion holds at a checkpoint (every ``check_every`` steps) or its step budget ends; λ̂ is then estimated at
    its last checkpoint on its training split, ``λ̂ = nβ (E_w[L_n(w)] − L_n(w*))`` with ``nβ = n / log n``, SGLD at
    γ = ``localization``, no burn-in, orthogonal restriction, once at ``protocol.learning_rate`` (the hackathon's
    ε) and once at ``protocol.trusted_learning_rate`` after ``trusted_burnin_steps``, with the accuracy checks
    ``trusted_checks`` (their measured biases are columns ``trusted_<check>_bias``), with the same chain seeds.

    Parameters
    ----------
    out_dir : path
        The reproduction's directory (runs, ``llc/`` store, tables); rerun with the same arguments to resume.
    protocol : Protocol, default QUICK
        How to train and sample (:data:`QUICK`: about 10 minutes on 2 cores; :data:`FULL`: the hackathon's).
    seed : int, default 0
        Master seed of the chains.
    compile : bool or "auto", default False
        As in :func:`lambdahat.prepare` (eager is faster for these tiny models on a CPU: compiling costs ~30 s).
    show_progress, overwrite, executor, address, max_retries
        As in :func:`~lambdahat.modadd.p_sweep`.

    Returns
    -------
    Reproduction
        ``table`` (one row per model, :data:`REPRODUCE_COLUMNS`), ``summary`` and ``fits`` (:func:`summarize`).
    """
    if not isinstance(protocol, Protocol):
        raise TypeError(f"reproduce_p_sweep: protocol must be a Protocol, got {type(protocol).__name__}.")
    t0 = time.perf_counter()
    out = Path(out_dir)
    points = []
    for p in protocol.ps:
        for run_id in protocol.run_ids:
            for random_labels in (False, True):
                path = sweep_run_dir(out, p, run_id, random_labels)
                points.append(
                    {
                        "p": p,
                        "run_id": run_id,
                        "use_random_dataset": random_labels,
                        "run_dir": str(path),
                        "task_dir": str(path.absolute()),
                        "params": hackathon_params(p, run_id, random_labels, protocol),
                    }
                )
    seed = resolve_seed(seed)
    options = {"criterion_fn": F.cross_entropy, "devices": "cpu", "compile": compile, "seed": seed}
    definition = {
        "protocol": protocol.to_dict(),
        "params": HACKATHON_PARAMS.to_dict(),
        "models": [{k: pt[k] for k in ("p", "run_id", "use_random_dataset")} for pt in points],
        "seed": seed,
    }
    table = run_sweep(
        kind="modadd_reproduce_p_sweep",
        points=points,
        point_columns=[("p", "int"), ("run_id", "int"), ("use_random_dataset", "str"), ("run_dir", "str")],
        fn=_point,
        shared={"protocol": protocol, "options": options},
        prepare=lambda pt: {"params": pt["params"], "run_dir": pt["task_dir"]},
        config=definition,
        options=options,
        seed=seed,
        run=SweepRun(executor, address, None, None, out / "llc", True, overwrite, max_retries, show_progress),
        value_columns=_VALUE_COLUMNS,
        desc="reproduce p sweep",
    )
    df = table.reindex(columns=list(REPRODUCE_COLUMNS))
    df["use_random_dataset"] = df["use_random_dataset"].astype(bool)
    df = df.sort_values(["p", "run_id", "use_random_dataset"], kind="stable").reset_index(drop=True)
    df.attrs.update(protocol=protocol.to_dict(), seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / _TABLE, index=False)
    summary = summarize(df)
    return Reproduction(df, summary, fit_groups(summary), protocol, time.perf_counter() - t0)


def _group(row: Mapping[str, Any]) -> str:
    if bool(row["use_random_dataset"]):
        return "random labels"
    return str(row["outcome"]) if row["outcome"] in ("generalized", "memorized") else "not fitted"


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Per ``(p, group)``: the number of models, the mean λ̂ over them with its sd and standard error (sd/√n; the
    mean chain standard error when n = 1), at both step sizes, the mean acceptances, and the hackathon's λ̂.

    ``group`` is ``generalized`` / ``memorized`` (true labels, by ``outcome``), ``not fitted`` or
    ``random labels``.
    """
    d = df[df["llc_mean"].notna()].copy()
    d["group"] = [_group(r) for r in d.to_dict("records")]
    rows = []
    for (p, group), g in d.groupby(["p", "group"], sort=True):
        row: dict[str, Any] = {"p": int(p), "group": group, "n_models": len(g)}
        for prefix in ("", "trusted_"):
            llc = g[f"{prefix}llc_mean"].to_numpy(dtype=float)
            sd = float(np.std(llc, ddof=1)) if len(llc) > 1 else math.nan
            se = sd / math.sqrt(len(llc)) if len(llc) > 1 else float(g[f"{prefix}llc_stderr"].iloc[0])
            row[f"{prefix}llc"] = float(llc.mean())
            row[f"{prefix}llc_sd"] = sd
            row[f"{prefix}llc_se"] = se
            row[f"{prefix}acceptance"] = float(g[f"{prefix}mala_acceptance"].mean())
        row["train_acc"] = float(g["train_acc"].mean())
        row["test_acc"] = float(g["test_acc"].mean())
        row["steps_trained"] = float(g["steps_trained"].mean())
        row["hackathon_llc"] = HACKATHON_LLC.get(int(p), math.nan) if group == "generalized" else math.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    if len(out):
        out["ratio_to_hackathon"] = out["llc"] / out["hackathon_llc"]
    return out


def _fit(p: np.ndarray, llc: np.ndarray, power: int) -> tuple[float, float, np.ndarray] | None:
    """Least squares ``llc ≈ a + c · p^power``; ``(a, c, residuals)`` or None with fewer than 3 distinct p."""
    ok = np.isfinite(llc)
    if len(np.unique(p[ok])) < 3:
        return None
    c, a = np.polyfit(p[ok] ** power, llc[ok], 1)
    return float(a), float(c), llc - (a + c * p**power)


def fit_groups(summary: pd.DataFrame) -> pd.DataFrame:
    """Fits of the mean λ̂ against p per group and step size, and of the hackathon's numbers:
    ``linear``: ``λ̂ = a + b p``; ``quadratic``: ``λ̂ = a + c p²`` (both two parameters, so their residuals compare).

    One row per (series, model): ``intercept``, ``coefficient``, ``rms_residual`` and the residual at every p
    (``residuals``, a ``p -> value`` dict). Groups with fewer than 3 distinct p are left out.
    """
    series: list[tuple[str, np.ndarray, np.ndarray]] = [
        ("hackathon", np.array(list(HACKATHON_LLC)), np.array(list(HACKATHON_LLC.values())))
    ]
    for group in GROUPS:
        g = summary[summary["group"] == group] if len(summary) else summary
        for prefix, eps in (("", "hackathon ε"), ("trusted_", "trusted ε")):
            if len(g):
                series.append((f"{group}, {eps}", g["p"].to_numpy(float), g[f"{prefix}llc"].to_numpy(float)))
    rows = []
    for name, p, llc in series:
        for model, power in (("linear", 1), ("quadratic", 2)):
            fit = _fit(np.asarray(p, float), llc, power)
            if fit is None:
                continue
            a, c, res = fit
            rows.append(
                {
                    "series": name,
                    "model": model,
                    "intercept": a,
                    "coefficient": c,
                    "rms_residual": float(np.sqrt(np.nanmean(res**2))),
                    "residuals": {int(q): round(float(r), 2) for q, r in zip(p, res)},
                }
            )
    return pd.DataFrame(
        rows, columns=["series", "model", "intercept", "coefficient", "rms_residual", "residuals"]
    )


def plot_reproduction(summary: pd.DataFrame, fits: pd.DataFrame) -> Figure:
    """Left: mean λ̂ against p (± sd over seeds) per group at both step sizes, the hackathon's numbers and the
    better of the linear and quadratic fits of each series; right: the residuals of both fits."""
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax, ax_res = fig.subplots(1, 2)
    colors = {"generalized": "C0", "memorized": "C2", "random labels": "C3", "not fitted": "C7"}
    hp = np.array(list(HACKATHON_LLC))
    ax.plot(hp, list(HACKATHON_LLC.values()), "kx", ms=9, mew=2, label="hackathon (generalizing)")
    for group, g in summary.groupby("group") if len(summary) else []:
        for prefix, fill, eps in (("", True, "ε hackathon"), ("trusted_", False, "ε trusted")):
            ax.errorbar(
                g["p"],
                g[f"{prefix}llc"],
                yerr=g[f"{prefix}llc_sd"].fillna(0),
                fmt="o" if fill else "s",
                color=colors.get(group, "C7"),
                mfc=colors.get(group, "C7") if fill else "none",
                capsize=3,
                label=f"{group}, {eps}",
            )
    grid = np.linspace(min(hp.min(), summary["p"].min() if len(summary) else hp.min()), hp.max(), 60)
    for name, sub in fits.groupby("series", sort=False) if len(fits) else []:
        best = sub.loc[sub["rms_residual"].idxmin()]
        power = 1 if best["model"] == "linear" else 2
        group = name.split(",")[0]
        color = "k" if name == "hackathon" else colors.get(group, "C7")
        ls = ":" if "trusted" in name else "-"
        ax.plot(grid, best["intercept"] + best["coefficient"] * grid**power, ls, color=color, lw=0.8)
        for _, r in sub.iterrows():
            ps = list(r["residuals"])
            ax_res.plot(
                ps,
                list(r["residuals"].values()),
                "-o" if r["model"] == "linear" else "--s",
                color=color,
                ms=3,
                lw=0.8,
                label=f"{name}: {r['model']} (rms {r['rms_residual']:.3g})",
            )
    ax.set(xlabel="p", ylabel=r"$\hat\lambda$", title="λ̂ against p (lines: the better fit of each series)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax_res.axhline(0, color="k", lw=0.5)
    ax_res.set(xlabel="p", ylabel="residual", title="residuals: linear (a + b p) and quadratic (a + c p²)")
    ax_res.grid(alpha=0.3)
    ax_res.legend(fontsize=6)
    return fig


def _gap(a: float, se_a: float, b: float, se_b: float) -> float:
    """How many combined standard errors ``a`` exceeds ``b`` by."""
    return (a - b) / math.sqrt(se_a**2 + se_b**2)


def _fmt(mean: float, sd: float) -> str:
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.1f}" if not math.isfinite(sd) else f"{mean:.1f} ± {sd:.1f}"


def _side_by_side(summary: pd.DataFrame) -> list[str]:
    """The markdown table: per p, the hackathon's λ̂ and each group's mean ± sd at both step sizes."""
    lines = [
        "| p | hackathon | generalized, ε hack. | ratio | generalized, ε trusted | memorized (true labels), ε hack. "
        "| random labels, ε hack. | random labels, ε trusted | random-label train acc | acceptance ε hack. / trusted |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p, g in summary.groupby("p"):
        by = {r["group"]: r for r in g.to_dict("records")}
        gen, mem, rnd = by.get("generalized"), by.get("memorized"), by.get("random labels")

        def cell(r, prefix=""):
            return _fmt(r[f"{prefix}llc"], r[f"{prefix}llc_sd"]) + f" ({r['n_models']})" if r else "–"

        acc = ", ".join(
            f"{r['acceptance']:.2f} / {r['trusted_acceptance']:.2f}" for r in (gen, rnd) if r is not None
        )
        ratio = (
            f"{gen['ratio_to_hackathon']:.2f}" if gen and math.isfinite(gen["ratio_to_hackathon"]) else "–"
        )
        lines.append(
            f"| {p} | {_hack(p)} | {cell(gen)} | {ratio} | {cell(gen, 'trusted_')} "
            f"| {cell(mem)} | {cell(rnd)} | {cell(rnd, 'trusted_')} "
            f"| {rnd['train_acc']:.2f} |" + f" {acc} |"
            if rnd
            else f"| {p} | {_hack(p)} | {cell(gen)} | {ratio} | "
            f"{cell(gen, 'trusted_')} | {cell(mem)} | – | – | – | {acc} |"
        )
    return lines


def _hack(p: int) -> str:
    return f"{HACKATHON_LLC[int(p)]:g}" if int(p) in HACKATHON_LLC else "–"


def _facts(table: pd.DataFrame, summary: pd.DataFrame, fits: pd.DataFrame, protocol: Protocol) -> list[str]:
    """What agrees with the hackathon and what does not, each sentence computed from the numbers."""
    out = []
    true = table[~table["use_random_dataset"]]
    rnd = table[table["use_random_dataset"]]
    gen = true[true["outcome"] == "generalized"]
    others = ", ".join(f"{n} {k}" for k, n in true["outcome"].value_counts().items() if k != "generalized")
    steps = f" after {_range(gen['steps_trained'], '.0f')} steps" if len(gen) else ""
    memorized = rnd["outcome"] == "memorized"
    unfit = rnd.loc[~memorized]
    out.append(
        f"- Training (criterion: true labels stop at test accuracy >= {protocol.target_test_acc:g}, random labels "
        f"at training accuracy >= {protocol.memorized_train_acc:g}, checked every {protocol.check_every} steps "
        f"from {protocol.min_steps_factor:g} × the recipe's steps on, else at the step budget): {len(gen)} of "
        f"{len(true)} true-label models generalized{steps}"
        + (f" ({others})" if others else "")
        + f". Random-label models: {int(memorized.sum())} of {len(rnd)} memorized"
        + (
            f" (p = {', '.join(str(p) for p in sorted(set(rnd.loc[memorized, 'p'])))})"
            if memorized.any()
            else ""
        )
        + (
            f"; {len(unfit)} did not fit their labels within the budget (p = "
            f"{', '.join(str(p) for p in sorted(set(unfit['p'])))}; final training accuracy "
            f"{_range(unfit['train_acc'])})"
            if len(unfit)
            else ""
        )
        + "."
    )
    g = summary[summary["group"] == "generalized"].dropna(subset=["hackathon_llc"])
    if len(g):
        out.append(
            f"- Generalizing models at the hackathon's ε: λ̂ is {_range(100 * (g['ratio_to_hackathon'] - 1), '+.0f')} "
            f"% of the hackathon's numbers (per p: "
            + ", ".join(
                f"{int(r.p)}: {round(100 * (r.ratio_to_hackathon - 1)) + 0:+d} %" for r in g.itertuples()
            )
            + ")."
        )
    for series in ("hackathon", "generalized, hackathon ε", "random labels, hackathon ε"):
        sub = fits[fits["series"] == series].set_index("model") if len(fits) else pd.DataFrame()
        if {"linear", "quadratic"} <= set(sub.index):
            lin, quad = sub.loc["linear"], sub.loc["quadratic"]
            better = "linear" if lin["rms_residual"] < quad["rms_residual"] else "quadratic"
            out.append(
                f"- Fits of {series}: linear λ̂ = {lin['intercept']:.1f} + {lin['coefficient']:.2f} p "
                f"(rms residual {lin['rms_residual']:.1f}), quadratic λ̂ = {quad['intercept']:.1f} + "
                f"{quad['coefficient']:.4f} p² (rms residual {quad['rms_residual']:.1f}): {better} fits better."
            )
    both = summary.pivot_table(index="p", columns="group", values=["llc", "llc_se"])
    if ("llc", "generalized") in both and ("llc", "random labels") in both:
        gaps = {
            int(p): _gap(
                r[("llc", "random labels")],
                r[("llc_se", "random labels")],
                r[("llc", "generalized")],
                r[("llc_se", "generalized")],
            )
            for p, r in both.iterrows()
            if math.isfinite(r[("llc", "random labels")]) and math.isfinite(r[("llc", "generalized")])
        }
        above = [p for p, z in gaps.items() if z > 0]
        out.append(
            f"- Random labels against generalizing models at the same p (hackathon ε): random-label λ̂ is higher at "
            f"{len(above)} of {len(gaps)} p; gap in combined standard errors: "
            + ", ".join(f"{p}: {z:+.1f}" for p, z in gaps.items())
            + "."
        )
    if len(g) >= 2:
        llc, se = g["llc"].to_numpy(), g["llc_se"].to_numpy()
        steps = [_gap(llc[i + 1], se[i + 1], llc[i], se[i]) for i in range(len(llc) - 1)]
        out.append(
            "- λ̂ of generalizing models increases from each p to the next: "
            + ("yes" if all(z > 0 for z in steps) else "no")
            + f", by more than 5 combined standard errors at {sum(z > 5 for z in steps)} of {len(steps)} steps ("
            + ", ".join(f"{int(a)}→{int(b)}: {z:+.1f}" for a, b, z in zip(g["p"], g["p"].iloc[1:], steps))
            + ")."
        )
    if len(summary):
        ratio = summary["trusted_llc"] / summary["llc"]
        out.append(
            f"- Step size: at ε = {protocol.learning_rate:g} (no burn-in) the mean MALA acceptance is "
            f"{_range(summary['acceptance'], '.2f')}; at ε = {protocol.trusted_learning_rate:g} after "
            f"{protocol.trusted_burnin_steps} burn-in steps λ̂ is {_range(100 * ratio, '.0f')} % of the "
            f"ε = {protocol.learning_rate:g} value"
            + "".join(
                f"; its {name} check reads {_range(100 * table[f'trusted_{name}_bias'], '+.1f')} %"
                for name in ACCURACY_CHECKS
                if table[f"trusted_{name}_bias"].notna().any()
            )
            + f". Trust policy verdicts (ε hack. / trusted, checks {protocol.trusted_checks}): "
            f"{_status_counts(table['status'])} / {_status_counts(table['trusted_status'])}."
        )
    return out


def _range(values: Any, spec: str = ".2f") -> str:
    v = pd.Series(values, dtype=float).dropna()
    if v.empty:
        return "–"
    lo, hi = (_no_minus_zero(x, spec) for x in (v.min(), v.max()))
    return lo if lo == hi else f"{lo} to {hi}"


def _no_minus_zero(x: float, spec: str) -> str:
    text = f"{x:{spec}}"
    return text.replace("-", "+" if "+" in spec else "", 1) if float(text) == 0 else text


def _status_counts(statuses: pd.Series) -> str:
    """``"24 untrusted (acceptance 24, distance still growing 20, ...)"``: the verdicts and their reasons."""
    words = statuses.map(lambda s: str(s).split(":", 1)[0] if isinstance(s, str) else "missing")
    reasons: dict[str, int] = {}
    for text in statuses.dropna():
        for reason in str(text).partition(":")[2].split(";"):
            key = re.split(r"[\d(≠<>]", reason.strip(), maxsplit=1)[0].strip().rstrip("+-−").strip()
            if key:
                reasons[key] = reasons.get(key, 0) + 1
    why = ", ".join(f"{k} {n}" for k, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
    return ", ".join(f"{n} {k}" for k, n in words.value_counts().items()) + (f" ({why})" if why else "")


def write_reproduction(rep: Reproduction, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``summary.csv``, ``fits.csv``, ``llc_vs_p_reproduction.png`` and ``summary.md`` (the side-by-side
    table, the fits and what agrees and what does not, from the numbers) into ``out_dir``; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / _TABLE, out / "summary.csv", out / "fits.csv", out / "llc_vs_p_reproduction.png"]
    rep.summary.to_csv(files[1], index=False)
    rep.fits.to_csv(files[2], index=False)
    plot_reproduction(rep.summary, rep.fits).savefig(files[3], dpi=120)
    pr = rep.protocol
    lines = [
        "# λ̂ against p: reproduction of the hackathon (REFERENCE.md §3)",
        "",
        f"Protocol: p = {list(pr.ps)}, run ids {list(pr.run_ids)}, true labels and the random-label control; "
        f"untied GELU MLP (embed 8, hidden 32), train_frac 0.8, Adam lr 0.01, weight decay 2e-4, batch 64, budget "
        f"{pr.step_budget_factor:g} × 10,000 steps (15,000 for p = 41, 53), stopped at the criterion after at "
        f"least {pr.min_steps_factor:g} × those"
        + f"; SGLD γ = {pr.localization:g}, {pr.chains} chains × {pr.draws} steps (no burn-in), batch "
        f"{pr.batch_size}, orthogonal restriction, nβ = n / log n, at ε = {pr.learning_rate:g} (the hackathon's) "
        f"and at ε = {pr.trusted_learning_rate:g} ({pr.trusted_burnin_steps} burn-in steps + "
        f"{pr.config(trusted=True).draws} draws, checks {pr.trusted_checks}). Wall time "
        f"{rep.wall_seconds:.0f} s.",
        "",
        "Mean ± sd over the models of each group (their number in brackets).",
        "",
        *_side_by_side(rep.summary),
        "",
        "## What agrees and what does not (measured)",
        "",
        *_facts(rep.table, rep.summary, rep.fits, pr),
        "",
    ]
    md = out / "summary.md"
    md.write_text("\n".join(lines))
    return [*files, md]
