"""The local learning coefficient λ̂ of a modular-addition run, at every checkpoint of its training.

For the weights ``w*`` of a checkpoint, with the run's *training* split of ``n`` pairs and its cross-entropy
``L_n``, the estimate is (Lau et al. 2023; see :class:`~lambdahat.LLCEstimator`)

.. math::

    \\hat\\lambda(w^*) = n\\beta \\,\\big(\\mathbb E_{p}[L_n(w)] - L_n(w^*)\\big), \\qquad
    p(w) \\propto \\exp\\big(-n\\beta L_n(w) - \\tfrac{\\gamma}{2}\\|w - w^*\\|^2\\big),

with ``nβ = n / log n`` and SGLD chains (step ``ε``, minibatches of ``batch_size``), optionally restricted to the
hyperplane orthogonal to the full-batch gradient at ``w*``. Every checkpoint uses the same settings and the same
seed (through :func:`lambdahat.sweeps.checkpoints.llc_over_checkpoints`), so the differences along the curve are
not seed noise.

Defaults (measured on the default :class:`~lambdahat.modadd.ExperimentParams`, p = 53, 17k parameters):
``localization γ = 100``, ``learning_rate ε = 1e-4``, 8 chains of 300 burn-in steps and 200 draws, batch 64,
orthogonal restriction on. At each of the 41 checkpoints the MALA acceptance is between 0.91 and 0.95, the chains
have equilibrated (R-hat <= 1.06; the distance from ``w*`` grows by about 1 % between the two halves of the draws,
below the trust policy's 5 %, and λ̂ at 1000 and 3000 burn-in steps agrees within its standard error), λ̂ is
positive, and the curve has the known shape (rise while memorizing, peak at the end of memorization, decay by
about half to a plateau once the test loss has dropped), for run_id 0, 1 and 2 alike. With 4 chains the bulk ESS of the late checkpoints was 70-96, under the trust
policy's 100; 8 chains (vmapped, so not twice the time) give 100 or more: 40 of 41 checkpoints pass every check of
the default demo run (the other one flagged a drifting loss). One estimate costs about 3.5 s on 2 CPU threads. The hackathon's settings (γ = 5, ε = 1e-3) do not suit this model: their MALA acceptance
is 0.55-0.59, and γ = 5 is too weak to hold the chains (at ε = 1e-4 their distance from ``w*`` still grows like
√t after 2000 steps, and λ̂ grows with the chain length).
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch.utils.data import DataLoader

from lambdahat.estimator import LLCEstimator, nbeta_from_effective_size
from lambdahat.modadd.params import (  # the defaults live there, torch-free, for the command line
    DEFAULT_BATCH_SIZE,
    DEFAULT_BURNIN_STEPS,
    DEFAULT_CHAINS,
    DEFAULT_DRAWS,
    DEFAULT_LEARNING_RATE,
    DEFAULT_LOCALIZATION,
    DEFAULT_RESTRICT_TO_ORTH_GRAD,
)
from lambdahat.modadd.train import Run, build_model, load_run
from lambdahat.sweeps.checkpoints import llc_over_checkpoints
from lambdahat.trust import status_kind

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_BURNIN_STEPS",
    "DEFAULT_CHAINS",
    "DEFAULT_DRAWS",
    "DEFAULT_LEARNING_RATE",
    "DEFAULT_LOCALIZATION",
    "DEFAULT_RESTRICT_TO_ORTH_GRAD",
    "LLC_COLUMNS",
    "llc_estimator",
    "llc_over_training",
    "plot_llc_over_training",
    "resolve_aliases",
]

#: The columns of :func:`llc_over_training`'s table, in order (more may follow).
LLC_COLUMNS = (
    "checkpoint",
    "step",
    "llc_mean",
    "llc_std",
    "llc_stderr",
    "mala_acceptance",
    "train_loss",
    "test_loss",
    "train_acc",
    "test_acc",
)
_EXTRA_COLUMNS = ("init_loss", "rhat", "ess", "temperature", "n_diverged", "status", "warnings")


def resolve_aliases(
    where: str,
    localization: float | None,
    gamma: float | None,
    learning_rate: float | None,
    epsilon: float | None,
) -> tuple[float, float]:
    """``(localization, learning_rate)`` from either name style, with the defaults.

    ``gamma`` is the hackathon's name for ``localization`` and ``epsilon`` for ``learning_rate``; giving both
    names of one setting is refused (they could disagree).
    """
    for name, value, alias, alias_value in (
        ("localization", localization, "gamma", gamma),
        ("learning_rate", learning_rate, "epsilon", epsilon),
    ):
        if value is not None and alias_value is not None:
            raise TypeError(
                f"{where}: got both {name}={value!r} and {alias}={alias_value!r}, two names of the same "
                f"setting; pass only one of them ({alias} is the hackathon's name for {name})."
            )
    loc = localization if localization is not None else gamma
    lr = learning_rate if learning_rate is not None else epsilon
    return (DEFAULT_LOCALIZATION if loc is None else loc, DEFAULT_LEARNING_RATE if lr is None else lr)


def _positive_int(where: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}.")
    return value


def llc_estimator(
    n_train: int,
    *,
    localization: float = DEFAULT_LOCALIZATION,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    draws: int = DEFAULT_DRAWS,
    burnin_steps: int = DEFAULT_BURNIN_STEPS,
    chains: int = DEFAULT_CHAINS,
    nbeta: float | None = None,
    restrict_to_orth_grad: bool = DEFAULT_RESTRICT_TO_ORTH_GRAD,
    weight_decay: float = 0.0,
) -> LLCEstimator:
    """The SGLD :class:`~lambdahat.LLCEstimator` used for modular-addition runs.

    ``nbeta=None`` gives ``nβ = n_train / log n_train`` (``n_train``: the size of the training split), fixed in the
    estimator so that it is recorded with the results.
    """
    if nbeta is None:
        if n_train < 2:
            raise ValueError(
                f"llc: the training split has {n_train} pair(s); nβ = n / log n needs n >= 2. Raise train_frac "
                "or p, or pass nbeta."
            )
        nbeta = nbeta_from_effective_size(n_train)
    return LLCEstimator(
        draws=draws,
        chains=chains,
        burnin_steps=burnin_steps,
        learning_rate=learning_rate,
        localization=localization,
        nbeta=nbeta,
        sampler="sgld",
        weight_decay=weight_decay,
        restrict_to_orth_grad=restrict_to_orth_grad,
    )


def _checkpoint_indices(run: Run, checkpoints: Sequence[int] | None) -> list[int]:
    if checkpoints is None:
        if run.n_checkpoints == 0:
            raise ValueError(f"llc_over_training: run {str(run.path)!r} has no checkpoints yet.")
        return list(range(run.n_checkpoints))
    if isinstance(checkpoints, int | str):
        raise TypeError(
            "llc_over_training: checkpoints must be a list of checkpoint indices (or None for all); wrap a "
            "single one in a list, e.g. checkpoints=[-1]."
        )
    indices = []
    for c in checkpoints:
        try:
            indices.append(run.checkpoint_index(c))
        except (IndexError, TypeError) as exc:
            raise type(exc)(f"llc_over_training: {exc}") from None
    if not indices:
        raise ValueError("llc_over_training: checkpoints is empty; pass None for all, or some indices.")
    if len(set(indices)) != len(indices):
        raise ValueError(
            f"llc_over_training: checkpoints {list(checkpoints)} name the same checkpoint twice; pass each once."
        )
    return indices


def llc_over_training(
    run: Run | str | os.PathLike[str],
    *,
    localization: float | None = None,
    learning_rate: float | None = None,
    gamma: float | None = None,
    epsilon: float | None = None,
    draws: int = DEFAULT_DRAWS,
    burnin_steps: int = DEFAULT_BURNIN_STEPS,
    chains: int = DEFAULT_CHAINS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    nbeta: float | None = None,
    restrict_to_orth_grad: bool = DEFAULT_RESTRICT_TO_ORTH_GRAD,
    weight_decay: float = 0.0,
    checkpoints: Sequence[int] | None = None,
    seed: int | None = 0,
    compile: bool | str = "auto",
    show_progress: bool = True,
    out_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    executor: str = "local",
    address: str | None = None,
) -> pd.DataFrame:
    """Estimate λ̂ at the checkpoints of a training run, joined with the run's losses and accuracies.

    The sampler is SGLD on the run's training split (``batch_size`` pairs per step, shuffled)::

        w ← w - (ε/2) [ nβ ∇L_B(w) + γ (w - w*) + wd · w ] + N(0, ε I)

    and λ̂ = nβ (mean draw loss - L_n(w*)) per chain; see the module docstring for the defaults and how they
    were measured.

    Parameters
    ----------
    run : Run or path
        A run from :func:`~lambdahat.modadd.train` / :func:`~lambdahat.modadd.load_run`, or its directory.
    localization, gamma : float, default 100
        γ; ``gamma`` is the hackathon's name (pass one of the two, not both).
    learning_rate, epsilon : float or "auto", default 1e-4
        ε; ``epsilon`` is the hackathon's name (pass one of the two, not both). ``"auto"`` calibrates it at every
        checkpoint (:func:`lambdahat.calibrate`).
    draws, burnin_steps, chains : int, default 200, 300, 8
        Draws per chain after ``burnin_steps`` discarded steps, and the number of chains.
    batch_size : int, default 64
        Minibatch size of the sampler.
    nbeta : float, optional
        nβ; default ``n / log n`` with ``n`` the size of the run's training split.
    restrict_to_orth_grad : bool, default True
        Sample in the hyperplane through ``w*`` orthogonal to the full-batch gradient there.
    weight_decay : float, default 0
        Extra ``(wd/2)||w||²`` in the sampled potential.
    checkpoints : list of int, optional
        Checkpoint indices (negative ones count from the end); default all available ones.
    seed : int, default 0
        Master seed, the same for every checkpoint (``None`` draws one).
    compile : bool or "auto", default "auto"
        Compile the sampler step (see :meth:`~lambdahat.LLCEstimator.estimate_llc`).
    show_progress : bool, default True
        A tqdm bar over the checkpoints.
    out_dir : path, optional
        Keep the results crash-safe there (``results.csv`` and ``sweep.json``): a rerun with the same settings
        resumes, one with other settings is refused unless ``overwrite``.
    overwrite : bool, default False
        Start ``out_dir`` afresh.
    executor, address : str
        ``"local"`` (default) or ``"ray"`` (with an optional cluster address).

    Returns
    -------
    pandas.DataFrame
        One row per checkpoint, in the order given: ``checkpoint, step, llc_mean, llc_std, llc_stderr,
        mala_acceptance, train_loss, test_loss, train_acc, test_acc`` (the last four from the run's record), then
        ``init_loss, rhat, ess, temperature, n_diverged, status, warnings``. ``df.attrs`` holds the settings
        (``localization``, ``learning_rate``, ``nbeta``, ``draws``, ``burnin_steps``, ``chains``, ``batch_size``, ``seed``, ...).
        ``status`` is the trust policy's verdict (:mod:`lambdahat.trust`): ``"ok"``, ``"untrusted: <reasons>"``
        or ``"diverged"`` (every chain diverged: NaN estimates); a checkpoint whose estimate raised has
        ``status == "failed"`` and NaN estimates.

    Warns
    -----
    RuntimeWarning
        When the trust policy distrusts some checkpoints (e.g. MALA acceptance below
        :data:`lambdahat.trust.MIN_ACCEPTANCE`, R-hat above :data:`~lambdahat.trust.MAX_RHAT`, divergent chains).

    Notes
    -----
    This function leaves PyTorch's thread count alone. The models are tiny: on a loaded 2-core machine one
    intra-op thread measured 8-10x faster than two (2 s against 20 s per checkpoint, identical results), so call
    ``torch.set_num_threads(1)`` in your script (the ``lambdahat`` commands do).

    Examples
    --------
    >>> from lambdahat import modadd
    >>> run = modadd.train(modadd.ExperimentParams(), "runs/p53")  # doctest: +SKIP
    >>> df = modadd.llc_over_training(run)  # doctest: +SKIP
    >>> modadd.plot_llc_over_training(df).savefig("llc.png")  # doctest: +SKIP
    """
    where = "llc_over_training"
    loc, lr = resolve_aliases(where, localization, gamma, learning_rate, epsilon)
    if not isinstance(run, Run):
        run = load_run(run)
    batch_size = _positive_int(where, "batch_size", batch_size)
    indices = _checkpoint_indices(run, checkpoints)
    train_data = run.train_data()
    n_train = len(train_data)
    estimator = llc_estimator(
        n_train,
        localization=loc,
        learning_rate=lr,
        draws=draws,
        burnin_steps=burnin_steps,
        chains=chains,
        nbeta=nbeta,
        restrict_to_orth_grad=restrict_to_orth_grad,
        weight_decay=weight_decay,
    )
    loader = DataLoader(train_data, batch_size=batch_size, shuffle=True)
    table = llc_over_checkpoints(
        [run.checkpoint_path(i) for i in indices],
        functools.partial(build_model, run.params),
        loader,
        estimator,
        criterion_fn=F.cross_entropy,
        seed=seed,
        compile=compile,
        show_progress=show_progress,
        executor=executor,
        address=address,
        out_dir=out_dir,
        overwrite=overwrite,
        labels=indices,
    )
    record = run.record.set_index("checkpoint")
    df = pd.DataFrame({"checkpoint": indices, "step": [run.steps[i] for i in indices]})
    for name in ("llc_mean", "llc_std", "llc_stderr", "mala_acceptance"):
        df[name] = table[name].to_numpy(dtype=float)
    for name in ("train_loss", "test_loss", "train_acc", "test_acc"):
        df[name] = [float(record[name].get(i, math.nan)) for i in indices]
    df["init_loss"] = table["init_loss"].to_numpy(dtype=float)
    df["rhat"] = table["rhat"].to_numpy(dtype=float)
    df["ess"] = table["ess"].to_numpy(dtype=float)
    df["temperature"] = table["temperature"].to_numpy(dtype=float)
    df["n_diverged"] = table["n_diverged"].to_numpy()
    df["status"] = table["status"].to_numpy()
    df["warnings"] = table["warnings"].to_numpy()
    df.attrs.update(
        p=run.params.p,
        run=str(run.path),
        localization=float(loc),
        learning_rate=lr if lr == "auto" else float(lr),
        nbeta=float(estimator.nbeta),
        n_train=n_train,
        draws=draws,
        burnin_steps=burnin_steps,
        chains=chains,
        batch_size=batch_size,
        restrict_to_orth_grad=bool(restrict_to_orth_grad),
        weight_decay=float(weight_decay),
        seed=int(table["seed"].iloc[0]) if len(table) and table["seed"].notna().iloc[0] else seed,
    )
    flagged = [
        (int(c), s if not (isinstance(w, str) and w) else w)
        for c, s, w in zip(df["checkpoint"], df["status"], df["warnings"])
        if status_kind(s) in ("untrusted", "diverged")
    ]
    if flagged:
        first_c, first_w = flagged[0]
        warnings.warn(
            f"llc_over_training: the estimator's diagnostics flag {len(flagged)} of {len(df)} checkpoint(s) "
            f"{[c for c, _ in flagged][:10]}{' ...' if len(flagged) > 10 else ''} as untrusted (see the 'status' "
            f"and 'warnings' columns); checkpoint {first_c}: {first_w}",
            RuntimeWarning,
            stacklevel=2,
        )
    return df


def plot_llc_over_training(df: pd.DataFrame) -> Figure:
    """λ̂ ± its standard deviation over chains against the training step, with the train and test loss.

    λ̂ is on the left axis (linear), the losses on a twin right axis (log scale); the peak of λ̂ is marked, and
    so is every checkpoint the trust policy distrusts (status not ``"ok"``, :mod:`lambdahat.trust`: a red
    cross). Takes the table of :func:`llc_over_training`; raises ``ValueError`` when no checkpoint has a finite
    λ̂ (every estimate failed or diverged) rather than drawing an empty figure.
    """
    missing = [c for c in ("step", "llc_mean", "llc_std", "train_loss", "test_loss") if c not in df.columns]
    if missing:
        raise ValueError(
            f"plot_llc_over_training: the table lacks column(s) {missing}; pass the DataFrame returned by "
            "llc_over_training."
        )
    llc = df["llc_mean"].to_numpy(dtype=float)
    if not np.isfinite(llc).any():
        statuses = df["status"].map(status_kind).value_counts().to_dict() if "status" in df else {}
        raise ValueError(
            f"plot_llc_over_training: no checkpoint has a finite λ̂ (statuses: {statuses}), so there is nothing to "
            "plot; see the table's 'status' and 'warnings' columns (every chain diverged: lower learning_rate)."
        )
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.subplots()
    step = df["step"].to_numpy(dtype=float)
    std = df["llc_std"].to_numpy(dtype=float)
    (line,) = ax.plot(step, llc, "o-", color="C0", ms=3, label="λ̂ (mean over chains)")
    ax.fill_between(step, llc - std, llc + std, color="C0", alpha=0.25, lw=0, label="± std over chains")
    if "status" in df:
        bad = df["status"].map(status_kind).isin(["untrusted", "diverged"]).to_numpy() & np.isfinite(llc)
        if bad.any():
            ax.plot(
                step[bad],
                llc[bad],
                "x",
                color="red",
                ms=9,
                mew=2,
                label=f"untrusted ({int(bad.sum())}, see status)",
            )
    if np.isfinite(llc).any():
        i = int(np.nanargmax(llc))
        ax.plot(
            [step[i]], [llc[i]], "*", color="C3", ms=12, label=f"peak λ̂ = {llc[i]:.1f} at step {step[i]:.0f}"
        )
    ax.set_xlabel("training step")
    ax.set_ylabel(r"$\hat\lambda$", color=line.get_color())
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(step, df["train_loss"], "-", color="C1", lw=1.2, label="train loss")
    ax2.plot(step, df["test_loss"], "--", color="C2", lw=1.2, label="test loss")
    ax2.set_yscale("log")
    ax2.set_ylabel("cross-entropy (log scale)")
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], loc="upper right", fontsize=8)
    a = df.attrs
    if "localization" in a:
        ax.set_title(
            f"λ̂ over training (p={a.get('p')}, γ={a['localization']:g}, ε={a['learning_rate']:{'' if a['learning_rate'] == 'auto' else 'g'}}, "
            f"nβ={a['nbeta']:.1f}, {a['chains']} chains × {a['draws']} draws after {a['burnin_steps']})",
            fontsize=10,
        )
    else:
        ax.set_title("λ̂ over training")
    return fig
