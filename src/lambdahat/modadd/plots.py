"""Figures for modular-addition runs: training curves and Fourier-mode views of the embedding.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot, so nothing is shown, no global
backend is selected and no figure is left registered; save it with ``fig.savefig(path)`` or display it in a
notebook.
"""

from __future__ import annotations

import math

import pandas as pd
import torch
from matplotlib.figure import Figure

from lambdahat.modadd.fourier import (
    fold_mode,
    mode_magnitudes,
    mode_magnitudes_over_checkpoints,
    project_to_modes,
)
from lambdahat.modadd.train import Run

__all__ = [
    "plot_mode_ablation",
    "plot_mode_circle",
    "plot_mode_heatmap",
    "plot_mode_magnitudes",
    "plot_training_curves",
]


def _embedding(model_or_embedding: object) -> torch.Tensor:
    if isinstance(model_or_embedding, torch.Tensor):
        E = model_or_embedding
    elif hasattr(model_or_embedding, "embed_matrix"):
        E = model_or_embedding.embed_matrix
    else:
        raise TypeError(
            "expected a model with an embed_matrix (e.g. run.model()) or a [p, d] embedding tensor, got "
            f"{type(model_or_embedding).__name__}."
        )
    E = E.detach().to(torch.float64)
    if E.ndim != 2:
        raise ValueError(f"the embedding must have shape [p, d], got {tuple(E.shape)}.")
    return E


def plot_training_curves(run: Run) -> Figure:
    """Train/test loss (log scale) and accuracy against the training step, one point per checkpoint."""
    rec = run.record
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for split, style in (("train", "-"), ("test", "--")):
        ax_loss.plot(rec["step"], rec[f"{split}_loss"], style, marker=".", label=split)
        ax_acc.plot(rec["step"], rec[f"{split}_acc"], style, marker=".", label=split)
    ax_loss.set_yscale("log")
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="accuracy", ylim=(-0.02, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    prm = run.params
    fig.suptitle(f"p={prm.p}, train_frac={prm.train_frac}, wd={prm.weight_decay}, run_id={prm.run_id}")
    return fig


def plot_mode_heatmap(run_or_table: Run | pd.DataFrame, include_constant: bool = False) -> Figure:
    """Heatmap of the embedding's Fourier-mode magnitudes (colour) over checkpoints (x) and modes (y).

    Accepts a run or the table of :func:`~lambdahat.modadd.fourier.mode_magnitudes_over_checkpoints`.
    Mode 0 (the constant) is hidden unless ``include_constant``.
    """
    table = (
        run_or_table
        if isinstance(run_or_table, pd.DataFrame)
        else mode_magnitudes_over_checkpoints(run_or_table)
    )
    if not include_constant:
        table = table.drop(columns=[0], errors="ignore")
    modes = [int(m) for m in table.columns]
    steps = [int(s) for s in table.index]
    fig = Figure(figsize=(10, 5), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(table.to_numpy().T, aspect="auto", origin="lower", interpolation="nearest", cmap="viridis")
    n_x = len(steps)
    ticks = sorted(set(range(0, n_x, max(1, n_x // 10))) | {n_x - 1})
    ax.set_xticks(ticks, [str(steps[i]) for i in ticks])
    y_ticks = list(range(0, len(modes), max(1, len(modes) // 15)))
    ax.set_yticks(y_ticks, [str(modes[i]) for i in y_ticks])
    ax.set(xlabel="step", ylabel="mode k", title="embedding Fourier-mode magnitudes")
    fig.colorbar(im, ax=ax, label="magnitude")
    return fig


def plot_mode_magnitudes(model_or_embedding: object, include_constant: bool = True) -> Figure:
    """Bar plot of the embedding's Fourier-mode magnitudes, modes ``0 .. p//2``."""
    E = _embedding(model_or_embedding)
    mags = mode_magnitudes(E).numpy()
    ks = list(range(len(mags)))
    if not include_constant:
        ks, mags = ks[1:], mags[1:]
    fig = Figure(figsize=(8, 3.5), layout="constrained")
    ax = fig.subplots()
    ax.bar(ks, mags)
    ax.set(xlabel="mode k", ylabel="magnitude", title="embedding Fourier-mode magnitudes")
    return fig


def plot_mode_circle(model_or_embedding: object, k: int, annotate: bool = True) -> Figure:
    """The embedding of every token in the plane of Fourier mode ``k``: a circle for a clean mode.

    The mode-``k`` part of the embedding, ``P_k E`` (constant removed), spans at most a plane in embedding space;
    its two leading right singular vectors ``v_1, v_2`` are the axes and token ``t`` is drawn at
    ``(E[t]·v_1, E[t]·v_2)`` (after centring ``E``), labelled by ``t``. For a clean mode the tokens sit on an
    ellipse in the order ``t·k mod p``.
    """
    E = _embedding(model_or_embedding)
    p = E.shape[0]
    k = fold_mode(int(k), p)
    if k == 0:
        raise ValueError("plot_mode_circle: mode 0 is the constant and has no circle; pass k in 1 .. p//2.")
    Ek = project_to_modes(E, [k], p, keep_constant=False)
    _, _, Vh = torch.linalg.svd(Ek, full_matrices=False)
    V = Vh[:2].T if Vh.shape[0] >= 2 else torch.cat([Vh.T, torch.zeros_like(Vh.T)], dim=1)
    xy = (E - E.mean(dim=0)) @ V
    angle = 2 * math.pi * ((torch.arange(p) * k) % p) / p
    fig = Figure(figsize=(5.5, 5.5), layout="constrained")
    ax = fig.subplots()
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=angle.numpy(), cmap="hsv", s=25)
    if annotate:
        for t in range(p):
            ax.annotate(
                str(t),
                (float(xy[t, 0]), float(xy[t, 1])),
                fontsize=7,
                xytext=(2, 2),
                textcoords="offset points",
            )
    ax.set_aspect("equal", adjustable="datalim")
    ax.set(
        xlabel="mode-k direction 1",
        ylabel="mode-k direction 2",
        title=f"embedding in the plane of mode k={k}",
    )
    fig.colorbar(sc, ax=ax, label="2π (k t mod p) / p", shrink=0.7)
    return fig


def plot_mode_ablation(table: pd.DataFrame) -> Figure:
    """Bar plot of the loss when only one mode of the embedding is kept (:func:`mode_ablation_table`)."""
    fig = Figure(figsize=(8, 3.5), layout="constrained")
    ax = fig.subplots()
    ax.bar([int(k) for k in table.index], table["loss"])
    if "baseline_loss" in table.attrs:
        ax.axhline(table.attrs["baseline_loss"], color="k", ls="--", lw=1, label="no ablation")
        ax.legend()
    ax.set(xlabel="mode k kept", ylabel="loss", title="keep-only-mode-k ablation of the embedding")
    return fig
