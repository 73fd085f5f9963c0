"""λ̂ against the modulus p: one trained model per p (and per seed), with the random-label control.

The hackathon's observation (REFERENCE.md §3): at the end of training, λ̂ grows linearly with p for models that
generalize, and much faster (like p²) for models that can only memorize (random labels), so that at every p the
control has the larger λ̂.

Every model is one point of a sweep (:func:`lambdahat.sweeps.runner.run_sweep`): the point trains the model if its
run is not complete yet, then samples one :class:`~lambdahat.LLCConfig` at its final checkpoint. Finished points are
stored at once in ``out_dir/llc`` (``results.csv``, ``sweep.json``), so an interrupted sweep resumes where it
stopped; a point that raises is retried, then recorded as ``failed``; the points run in this process or as Ray
tasks.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch.utils.data import DataLoader

from lambdahat.config import LLCConfig
from lambdahat.modadd.llc import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BURNIN_STEPS,
    DEFAULT_CHAINS,
    DEFAULT_DRAWS,
    DEFAULT_LEARNING_RATE,
    DEFAULT_LOCALIZATION,
    DEFAULT_RESTRICT_TO_ORTH_GRAD,
    resolve_aliases,
)
from lambdahat.modadd.train import ExperimentParams, Run, load_run, train
from lambdahat.problem import nbeta_from_effective_size
from lambdahat.rng import resolve_seed
from lambdahat.sweeps.runner import (
    SweepRun,
    check_run_options,
    estimate,
    problem_for,
    result_row,
    run_sweep,
)
from lambdahat.sweeps.store import stored_seed

__all__ = [
    "DEFAULT_LLC_CONFIG",
    "GENERALIZED_TEST_ACC",
    "LLC_DIR",
    "SWEEP_COLUMNS",
    "SWEEP_TABLE",
    "p_sweep",
    "plot_llc_vs_p",
    "sweep_run_dir",
]

#: The columns of :func:`p_sweep`'s table, in order.
SWEEP_COLUMNS = (
    "p",
    "run_id",
    "use_random_dataset",
    "llc_mean",
    "llc_std",
    "llc_stderr",
    "mala_acceptance",
    "train_loss",
    "test_loss",
    "train_acc",
    "test_acc",
    "n_train",
    "nbeta",
    "run_dir",
    "rhat",
    "n_diverged",
    "status",
    "error",
    "warnings",
    "wall_seconds",
    "attempts",
)
#: The table's file name in the sweep directory.
SWEEP_TABLE = "p_sweep.csv"
#: The sub-directory of the sweep directory that stores the λ̂ of every finished model (``results.csv``,
#: ``sweep.json``).
LLC_DIR = "llc"
#: A true-label model counts as generalizing (and enters the fit of :func:`plot_llc_vs_p`) at this final test
#: accuracy or above.
GENERALIZED_TEST_ACC = 0.9
#: The λ̂ settings of :func:`p_sweep` when neither ``config`` nor keywords are given: those of
#: :func:`~lambdahat.modadd.llc_over_training` (γ = 100, ε = 1e-4, 8 chains × 200 draws after 300 burn-in steps,
#: nβ = n / log n of each model's training split, orthogonal restriction).
DEFAULT_LLC_CONFIG = LLCConfig(
    draws=DEFAULT_DRAWS,
    chains=DEFAULT_CHAINS,
    burnin_steps=DEFAULT_BURNIN_STEPS,
    learning_rate=DEFAULT_LEARNING_RATE,
    localization=DEFAULT_LOCALIZATION,
    restrict_to_orth_grad=DEFAULT_RESTRICT_TO_ORTH_GRAD,
)
#: Record columns of the final checkpoint that join the table.
_RECORD_COLUMNS = ("train_loss", "test_loss", "train_acc", "test_acc")


def sweep_run_dir(out_dir: str | os.PathLike[str], p: int, run_id: int, use_random_dataset: bool) -> Path:
    """Where :func:`p_sweep` keeps the training run of one model: ``out_dir/runs/p{p}-run{run_id}-{labels}``."""
    labels = "random" if use_random_dataset else "true"
    return Path(out_dir) / "runs" / f"p{p}-run{run_id}-{labels}"


def _int_list(where: str, name: str, values: Iterable[int], minimum: int | None = None) -> list[int]:
    if isinstance(values, int | str):
        raise TypeError(
            f"{where}: {name} must be a list of integers, got {values!r}; e.g. {name}=[17, 23, 29]."
        )
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise TypeError(f"{where}: {name} must hold integers, got {v!r}.")
        if minimum is not None and v < minimum:
            raise ValueError(f"{where}: every value of {name} must be >= {minimum}, got {int(v)}.")
        out.append(int(v))
    if not out:
        raise ValueError(f"{where}: {name} is empty; pass at least one value.")
    if len(set(out)) != len(out):
        raise ValueError(f"{where}: {name} repeats a value: {out}; pass each once.")
    return out


def _check_run_dir(params: ExperimentParams, path: Path, overwrite: bool) -> None:
    """Refuse, before any work, a run directory that holds a run with other parameters (unless ``overwrite``)."""
    if overwrite or not (path.is_dir() and (path / "params.json").is_file()):
        return
    if load_run(path).params != params:
        raise FileExistsError(
            f"p_sweep: {str(path)!r} holds a run with other parameters than this sweep's; use another out_dir, "
            "or overwrite=True to train it again."
        )


def _trained_run(params: ExperimentParams, path: Path, overwrite: bool) -> Run:
    """The finished run of ``params`` at ``path``: reused when it is there and complete, trained otherwise."""
    if path.is_dir() and (path / "params.json").is_file():
        existing = load_run(path)
        if existing.params == params and existing.n_checkpoints == params.n_save_model_checkpoints:
            return existing
        if not overwrite and existing.params != params:
            raise FileExistsError(
                f"p_sweep: {str(path)!r} holds a run with other parameters than this sweep's; use another out_dir, "
                "or overwrite=True to train it again."
            )
        # same parameters but interrupted, or overwrite: train again
        return train(params, path, show_progress=False, overwrite=True)
    return train(params, path, show_progress=False, overwrite=overwrite)


def _model_point(shared: Mapping[str, Any], task: Mapping[str, Any]) -> dict[str, Any]:
    """One model (runs in this process or in a Ray worker): train it unless its run is complete, then sample the
    sweep's config at its final checkpoint on its training split."""
    run = _trained_run(task["params"], Path(task["run_dir"]), shared["overwrite"])
    config, options = shared["config"], shared["options"]
    loader = DataLoader(run.train_data(), batch_size=shared["batch_size"], shuffle=True)
    problem = problem_for(run.model(-1), loader, config, options)
    return result_row(estimate(problem, config, options))


def _task(point: Mapping[str, Any]) -> dict[str, Any]:
    return {"params": point["params"], "run_dir": point["task_dir"]}


def _llc_config(
    where: str,
    config: LLCConfig | None,
    localization: float | None,
    gamma: float | None,
    learning_rate: float | None,
    epsilon: float | None,
    settings: Mapping[str, Any],
) -> LLCConfig:
    """The sweep's :class:`~lambdahat.LLCConfig`: ``config``, or :data:`DEFAULT_LLC_CONFIG` with the keywords
    given."""
    aliases = {
        "localization": localization,
        "gamma": gamma,
        "learning_rate": learning_rate,
        "epsilon": epsilon,
    }
    given = sorted(k for k, v in {**aliases, **settings}.items() if v is not None)
    if config is not None:
        if not isinstance(config, LLCConfig):
            raise TypeError(f"{where}: config must be an LLCConfig, got {type(config).__name__}.")
        if given:
            raise TypeError(
                f"{where}: got config and the λ̂ setting(s) {given}; pass every λ̂ setting in config (e.g. "
                f"config.replace({given[0]}=...)) or only keywords."
            )
        return config
    loc, lr = resolve_aliases(where, localization, gamma, learning_rate, epsilon)
    changes = {k: v for k, v in settings.items() if v is not None}
    return DEFAULT_LLC_CONFIG.replace(localization=loc, learning_rate=lr, **changes)


def _final_record(run_dir: Path) -> dict[str, float]:
    """``n_train`` and the final checkpoint's losses and accuracies of a run (NaN where there is no run)."""
    out = {"n_train": math.nan, **{c: math.nan for c in _RECORD_COLUMNS}}
    if not (run_dir / "params.json").is_file():
        return out
    run = load_run(run_dir)
    out["n_train"] = len(run.train_data())
    if run.n_checkpoints:
        record = run.record.set_index("checkpoint")
        for c in _RECORD_COLUMNS:
            out[c] = float(record[c].get(run.n_checkpoints - 1, math.nan))
    return out


def p_sweep(
    ps: Sequence[int],
    params: ExperimentParams,
    out_dir: str | os.PathLike[str],
    *,
    run_ids: Sequence[int] = (0,),
    random_label_control: bool = True,
    config: LLCConfig | None = None,
    localization: float | None = None,
    learning_rate: float | None = None,
    gamma: float | None = None,
    epsilon: float | None = None,
    draws: int | None = None,
    burnin_steps: int | None = None,
    chains: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    nbeta: float | None = None,
    restrict_to_orth_grad: bool | None = None,
    weight_decay: float | None = None,
    seed: int | None = 0,
    compile: bool | str = "auto",
    show_progress: bool = True,
    overwrite: bool = False,
    executor: str = "local",
    address: str | None = None,
    devices: str | torch.device | Sequence[str | torch.device] = "cpu",
    max_retries: int = 2,
    ray_resources: Mapping[str, Any] | None = None,
    ray_init_options: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Train one model per ``p`` (and per run id, with and without random labels) and estimate its final λ̂.

    Every model is ``dataclasses.replace(params, p=p, run_id=run_id, use_random_dataset=...)``, trained into
    :func:`sweep_run_dir` (a complete run already there with the same parameters is reused); λ̂ is estimated at
    its last checkpoint on its training split (``batch_size`` pairs per step, shuffled) with the sweep's
    :class:`~lambdahat.LLCConfig` (``nβ = n / log n`` of each model's own training split unless the config sets
    ``nbeta``), as :func:`~lambdahat.modadd.llc_over_training` does. Each model is one point of a sweep stored in
    ``out_dir/llc``: a rerun with the same arguments runs only the models not finished yet; a model whose training
    or estimate raises is retried ``max_retries`` times, then recorded with ``status == "failed"`` and its error.
    The table is also written to ``out_dir/p_sweep.csv``.

    Parameters
    ----------
    ps : list of int
        The moduli, each ``>= 2``. Small ``p`` needs a large ``train_frac`` to generalize (with the default
        model, ``train_frac = 0.8`` generalizes from p = 17 on, ``0.5`` only from about p = 23).
    params : ExperimentParams
        Everything else about the models (its ``p``, ``run_id`` and ``use_random_dataset`` are replaced).
    out_dir : path
        The sweep directory.
    run_ids : list of int, default (0,)
        Seeds; one model per ``(p, run_id)``.
    random_label_control : bool, default True
        Also train every model on random labels (the memorization control). When False, only
        ``params.use_random_dataset`` is used.
    config : LLCConfig, optional
        Every λ̂ setting; default :data:`DEFAULT_LLC_CONFIG` changed by the keywords below (pass ``config`` or
        keywords, not both).
    localization, gamma, learning_rate, epsilon, draws, burnin_steps, chains, nbeta, restrict_to_orth_grad, weight_decay
        The λ̂ settings as keywords, as in :func:`~lambdahat.modadd.llc_over_training` (same defaults).
    batch_size : int, default 64
        Minibatch size of the sampler.
    seed : int, default 0
        Master seed of every estimate (``None`` draws one, or reuses the one stored in ``out_dir/llc``).
    compile, devices : default "auto", "cpu"
        As in :func:`lambdahat.prepare`.
    show_progress : bool, default True
        A tqdm bar over the models.
    overwrite : bool, default False
        Train again over a run directory that holds other parameters, and discard λ̂ results stored in
        ``out_dir/llc`` by a sweep of other settings (a sweep of the same models and settings resumes; one of
        others is refused with the list of differences unless ``overwrite``).
    executor, address, max_retries, ray_resources, ray_init_options
        As in :meth:`~lambdahat.sweeps.LLCGridSearch.run_grid_search`. With ``executor="ray"`` the models are
        trained in the Ray workers, so ``out_dir`` must be on a file system they share with this process (a local
        Ray instance does).

    Returns
    -------
    pandas.DataFrame
        One row per model, ordered by ``p``, ``run_id``, ``use_random_dataset`` (``SWEEP_COLUMNS``): ``p, run_id,
        use_random_dataset, llc_mean, llc_std, llc_stderr, mala_acceptance, train_loss, test_loss, train_acc,
        test_acc`` (final checkpoint), ``n_train, nbeta, run_dir``, then ``rhat, n_diverged, status`` (the trust
        policy's verdict, or ``"failed"``), ``error, warnings, wall_seconds, attempts``. ``df.attrs`` holds the
        λ̂ settings (``config`` and its main fields) and the seed.

    Raises
    ------
    FileExistsError
        A run directory holds a run of other parameters (checked before any work), without ``overwrite``.
    ValueError
        ``out_dir/llc`` holds the results of a sweep of other models or settings, without ``overwrite``.
    RuntimeError
        Every model failed (the message gives the first error).

    Examples
    --------
    >>> import dataclasses
    >>> from lambdahat import modadd
    >>> params = dataclasses.replace(modadd.ExperimentParams(), train_frac=0.8, n_batches=2000)
    >>> df = modadd.p_sweep([17, 23, 29], params, "runs/sweep")  # doctest: +SKIP
    >>> modadd.plot_llc_vs_p(df).savefig("llc_vs_p.png")  # doctest: +SKIP
    """
    where = "p_sweep"
    if not isinstance(params, ExperimentParams):
        raise TypeError(f"{where}: params must be an ExperimentParams, got {type(params).__name__}.")
    ps = _int_list(where, "ps", ps, minimum=2)
    run_ids = _int_list(where, "run_ids", run_ids)
    config = _llc_config(
        where,
        config,
        localization,
        gamma,
        learning_rate,
        epsilon,
        {
            "draws": draws,
            "burnin_steps": burnin_steps,
            "chains": chains,
            "nbeta": nbeta,
            "restrict_to_orth_grad": restrict_to_orth_grad,
            "weight_decay": weight_decay,
        },
    )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{where}: batch_size must be a positive integer, got {batch_size!r}.")
    check_run_options(executor, address, devices, ray_resources, max_retries)
    variants = [False, True] if random_label_control else [bool(params.use_random_dataset)]
    models = [
        dataclasses.replace(params, p=p, run_id=r, use_random_dataset=v)
        for p in ps
        for r in run_ids
        for v in variants
    ]
    out = Path(out_dir)
    points = []
    for prm in models:
        path = sweep_run_dir(out, prm.p, prm.run_id, prm.use_random_dataset)
        _check_run_dir(prm, path, overwrite)
        points.append(
            {
                "p": prm.p,
                "run_id": prm.run_id,
                "use_random_dataset": prm.use_random_dataset,
                "run_dir": str(path),
                "task_dir": str(path.absolute()),
                "params": prm,
            }
        )
    store = out / LLC_DIR
    if seed is None and not overwrite:
        seed = stored_seed(store)
    seed = resolve_seed(seed)
    options = {
        "criterion_fn": F.cross_entropy,
        "devices": devices,
        "compile": compile,
        "seed": seed,
        "chain_batch": None,
    }
    base = {k: v for k, v in params.to_dict().items() if k not in ("p", "run_id", "use_random_dataset")}
    definition = {
        "params": base,
        "models": [{k: pt[k] for k in ("p", "run_id", "use_random_dataset")} for pt in points],
        "llc": config.to_dict(),
        "batch_size": batch_size,
        "seed": seed,
    }
    table = run_sweep(
        kind="p_sweep",
        points=points,
        point_columns=[("p", "int"), ("run_id", "int"), ("use_random_dataset", "str"), ("run_dir", "str")],
        fn=_model_point,
        shared={"config": config, "options": options, "batch_size": batch_size, "overwrite": overwrite},
        prepare=_task,
        config=definition,
        options=options,
        seed=seed,
        run=SweepRun(
            executor,
            address,
            ray_resources,
            ray_init_options,
            store,
            True,
            overwrite,
            max_retries,
            show_progress,
        ),
        callback=None,
        desc="p sweep",
    )
    rows = []
    for point, (_, r) in zip(points, table.iterrows()):
        record = _final_record(Path(point["run_dir"]))
        n_train = record["n_train"]
        if config.nbeta is not None:
            nb = config.nbeta
        else:
            nb = nbeta_from_effective_size(n_train) if n_train >= 2 else math.nan
        rows.append(
            {
                "p": point["p"],
                "run_id": point["run_id"],
                "use_random_dataset": point["use_random_dataset"],
                **{c: float(r[c]) for c in ("llc_mean", "llc_std", "llc_stderr", "mala_acceptance")},
                **{c: record[c] for c in _RECORD_COLUMNS},
                "n_train": n_train,
                "nbeta": nb,
                "run_dir": point["run_dir"],
                "rhat": float(r["rhat"]),
                **{
                    c: r[c] for c in ("n_diverged", "status", "error", "warnings", "wall_seconds", "attempts")
                },
            }
        )
    df = pd.DataFrame(rows, columns=list(SWEEP_COLUMNS))
    df["n_train"] = df["n_train"].astype("Int64")
    df["n_diverged"] = df["n_diverged"].astype("Int64")
    df["attempts"] = df["attempts"].astype("Int64")
    df = df.sort_values(["p", "run_id", "use_random_dataset"], kind="stable").reset_index(drop=True)
    df.attrs.update(
        localization=config.localization,
        learning_rate=config.learning_rate,
        draws=config.draws,
        burnin_steps=config.burnin_steps,
        chains=config.chains,
        batch_size=batch_size,
        seed=seed,
        config=config.to_dict(),
    )
    df.to_csv(out / SWEEP_TABLE, index=False)
    return df


def _fit(p: np.ndarray, llc: np.ndarray) -> tuple[float, float] | None:
    ok = np.isfinite(p) & np.isfinite(llc)
    if len(np.unique(p[ok])) < 2:
        return None
    slope, intercept = np.polyfit(p[ok], llc[ok], 1)
    return float(slope), float(intercept)


def plot_llc_vs_p(df: pd.DataFrame) -> Figure:
    """λ̂ at the end of training against p, with a least-squares line per group.

    Groups: true-label models that generalized (final test accuracy >= ``GENERALIZED_TEST_ACC``, or unknown when
    there is no test split), true-label models that did not (hollow markers, not fitted) and the random-label
    control. Error bars are the standard deviation over chains; the legend gives each line's slope and
    intercept. Takes the table of :func:`p_sweep`.
    """
    missing = [
        c for c in ("p", "use_random_dataset", "llc_mean", "llc_std", "test_acc") if c not in df.columns
    ]
    if missing:
        raise ValueError(
            f"plot_llc_vs_p: the table lacks column(s) {missing}; pass the DataFrame returned by p_sweep."
        )
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    rnd = df["use_random_dataset"].astype(bool).to_numpy()
    test_acc = df["test_acc"].to_numpy(dtype=float)
    generalized = ~rnd & ~(test_acc < GENERALIZED_TEST_ACC)  # NaN (no test split) counts as generalized
    failed = ~rnd & (test_acc < GENERALIZED_TEST_ACC)
    groups = (
        ("true labels, generalized", "true labels", generalized, "C0", "o", True),
        ("random labels (control)", "random labels", rnd, "C3", "s", True),
        (f"true labels, test acc < {GENERALIZED_TEST_ACC:g} (not fitted)", "", failed, "C0", "o", False),
    )
    all_p = df["p"].to_numpy(dtype=float)
    grid = np.linspace(all_p.min(), all_p.max(), 50) if len(all_p) else np.array([])
    for label, short, mask, color, marker, fitted in groups:
        if not mask.any():
            continue
        sub = df[mask]
        p = sub["p"].to_numpy(dtype=float)
        llc = sub["llc_mean"].to_numpy(dtype=float)
        ax.errorbar(
            p,
            llc,
            yerr=sub["llc_std"].to_numpy(dtype=float),
            fmt=marker,
            color=color,
            mfc=color if fitted else "none",
            capsize=3,
            label=label,
        )
        fit = _fit(p, llc) if fitted else None
        if fit is not None:
            slope, intercept = fit
            ax.plot(
                grid,
                slope * grid + intercept,
                "-",
                color=color,
                lw=1,
                label=f"{short} fit: λ̂ = {slope:.3g}·p {'-' if intercept < 0 else '+'} {abs(intercept):.3g}",
            )
    ax.set(xlabel="p", ylabel=r"$\hat\lambda$ (final checkpoint)", title="λ̂ against the modulus p")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return fig
