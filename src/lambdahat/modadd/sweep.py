"""λ̂ against the modulus p: one trained model per p (and per seed), with the random-label control.

The hackathon's observation (REFERENCE.md §3): at the end of training, λ̂ grows linearly with p for models that
generalize, and much faster (like p²) for models that can only memorize (random labels), so that at every p the
control has the larger λ̂.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from lambdahat.modadd.llc import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BURNIN_STEPS,
    DEFAULT_CHAINS,
    DEFAULT_DRAWS,
    llc_over_training,
    resolve_aliases,
)
from lambdahat.modadd.train import ExperimentParams, Run, load_run, train

__all__ = [
    "GENERALIZED_TEST_ACC",
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
)
#: The table's file name in the sweep directory.
SWEEP_TABLE = "p_sweep.csv"
#: A true-label model counts as generalizing (and enters the fit of :func:`plot_llc_vs_p`) at this final test
#: accuracy or above.
GENERALIZED_TEST_ACC = 0.9


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


def p_sweep(
    ps: Sequence[int],
    params: ExperimentParams,
    out_dir: str | os.PathLike[str],
    *,
    run_ids: Sequence[int] = (0,),
    random_label_control: bool = True,
    localization: float | None = None,
    learning_rate: float | None = None,
    gamma: float | None = None,
    epsilon: float | None = None,
    draws: int = DEFAULT_DRAWS,
    burnin_steps: int = DEFAULT_BURNIN_STEPS,
    chains: int = DEFAULT_CHAINS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    nbeta: float | None = None,
    restrict_to_orth_grad: bool = True,
    weight_decay: float = 0.0,
    seed: int | None = 0,
    compile: bool | str = "auto",
    show_progress: bool = True,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Train one model per ``p`` (and per run id, with and without random labels) and estimate its final λ̂.

    Every model is ``dataclasses.replace(params, p=p, run_id=run_id, use_random_dataset=...)``, trained into
    :func:`sweep_run_dir` (a complete run already there with the same parameters is reused, so an interrupted
    sweep resumes); λ̂ is estimated at its last checkpoint by :func:`~lambdahat.modadd.llc_over_training` with
    the given settings (``nβ = n / log n`` of each model's own training split unless ``nbeta`` is given).
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
    localization, gamma, learning_rate, epsilon, draws, burnin_steps, chains, batch_size, nbeta,
    restrict_to_orth_grad, weight_decay, seed, compile
        The λ̂ settings, as in :func:`~lambdahat.modadd.llc_over_training` (same defaults).
    show_progress : bool, default True
        A tqdm bar over the models.
    overwrite : bool, default False
        Train again over a run directory that holds other parameters.

    Returns
    -------
    pandas.DataFrame
        One row per model, ordered by ``p``, ``run_id``, ``use_random_dataset``: ``p, run_id,
        use_random_dataset, llc_mean, llc_std, llc_stderr, mala_acceptance, train_loss, test_loss, train_acc,
        test_acc`` (final checkpoint), ``n_train, nbeta, run_dir``.

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
    loc, lr = resolve_aliases(where, localization, gamma, learning_rate, epsilon)
    variants = [False, True] if random_label_control else [bool(params.use_random_dataset)]
    models = [
        dataclasses.replace(params, p=p, run_id=r, use_random_dataset=v)
        for p in ps
        for r in run_ids
        for v in variants
    ]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    bar = tqdm(models, desc="p sweep", unit="model", disable=not show_progress)
    for prm in bar:
        bar.set_postfix(p=prm.p, run_id=prm.run_id, labels="random" if prm.use_random_dataset else "true")
        path = sweep_run_dir(out, prm.p, prm.run_id, prm.use_random_dataset)
        run = _trained_run(prm, path, overwrite)
        llc = llc_over_training(
            run,
            localization=loc,
            learning_rate=lr,
            draws=draws,
            burnin_steps=burnin_steps,
            chains=chains,
            batch_size=batch_size,
            nbeta=nbeta,
            restrict_to_orth_grad=restrict_to_orth_grad,
            weight_decay=weight_decay,
            checkpoints=[-1],
            seed=seed,
            compile=compile,
            show_progress=False,
        )
        row = llc.iloc[0]
        rows.append(
            {
                "p": prm.p,
                "run_id": prm.run_id,
                "use_random_dataset": prm.use_random_dataset,
                **{c: float(row[c]) for c in SWEEP_COLUMNS[3:11]},
                "n_train": int(llc.attrs["n_train"]),
                "nbeta": float(llc.attrs["nbeta"]),
                "run_dir": str(path),
            }
        )
    bar.close()
    df = pd.DataFrame(rows, columns=list(SWEEP_COLUMNS))
    df = df.sort_values(["p", "run_id", "use_random_dataset"], kind="stable").reset_index(drop=True)
    df.attrs.update(
        localization=float(loc),
        learning_rate=float(lr),
        draws=draws,
        burnin_steps=burnin_steps,
        chains=chains,
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
