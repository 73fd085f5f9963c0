"""Fourier analysis of functions on Z_p: mode magnitudes, projections onto modes, "keep one mode" ablations.

A matrix ``W`` of shape ``[p, d]`` whose rows are indexed by the tokens ``t = 0 .. p-1`` (an embedding, or
activations as a function of one operand) is read column by column as ``d`` functions on ``Z_p``. With

    C[k, t] = cos(2π k t / p),    S[k, t] = sin(2π k t / p),

the magnitude of mode (frequency) ``k = 0 .. p//2`` is ``mag_k = sqrt( Σ_j (C W)_{kj}² + (S W)_{kj}² )``.
Modes ``k`` and ``p - k`` are the same real mode, so only ``0 .. p//2`` are reported; mode 0 is the constant.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import pandas as pd
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils.data import TensorDataset

from lambdahat.modadd.model import ModAddModel

if TYPE_CHECKING:
    from lambdahat.modadd.train import Run

__all__ = [
    "ablate_keep_mode",
    "fold_mode",
    "fourier_basis",
    "mode_ablation_table",
    "mode_magnitudes",
    "mode_magnitudes_over_checkpoints",
    "mode_projector",
    "project_to_modes",
]

_EMBED_PARAM = "embed.weight"


def _check_p(p: int, where: str) -> int:
    if isinstance(p, bool) or not isinstance(p, int) or p < 2:
        raise ValueError(f"{where}: p must be an integer >= 2, got {p!r}; pass the modulus, e.g. p=53.")
    return p


def fold_mode(k: int, p: int) -> int:
    """The representative in ``0 .. p//2`` of frequency ``k`` mod ``p``: ``min(k mod p, p - k mod p)``.

    ``cos(2π k t/p)`` and ``cos(2π (p-k) t/p)`` are the same function (and the sines differ by a sign), so
    ``k`` and ``p - k`` label one real Fourier mode.

    Examples
    --------
    >>> fold_mode(40, 53), fold_mode(-1, 53), fold_mode(53, 53)
    (13, 1, 0)
    """
    _check_p(p, "fold_mode")
    r = int(k) % p
    return min(r, p - r)


def fourier_basis(p: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The cosine and sine matrices ``C[i, j] = cos(2π ij/p)`` and ``S[i, j] = sin(2π ij/p)``, each ``[p, p]``.

    The angle is reduced exactly (``ij mod p``) before the trigonometric function, so large ``p`` loses no
    accuracy.

    Examples
    --------
    >>> C, S = fourier_basis(4)
    >>> C.round().int().tolist()
    [[1, 1, 1, 1], [1, 0, -1, 0], [1, -1, 1, -1], [1, 0, -1, 0]]
    """
    _check_p(p, "fourier_basis")
    i = torch.arange(p, dtype=torch.int64)
    angle = (2.0 * math.pi / p) * ((i[:, None] * i[None, :]) % p).to(torch.float64)
    return torch.cos(angle).to(dtype), torch.sin(angle).to(dtype)


def _as_matrix(W: torch.Tensor, p: int | None, where: str) -> tuple[torch.Tensor, int]:
    if not isinstance(W, torch.Tensor):
        raise TypeError(
            f"{where}: W must be a torch.Tensor with rows indexed by token, got {type(W).__name__}."
        )
    W = W.detach()
    if W.ndim == 1:
        W = W[:, None]
    if W.ndim != 2:
        raise ValueError(
            f"{where}: W must have shape [p, d] (rows indexed by token), got shape {tuple(W.shape)}."
        )
    if p is None:
        p = W.shape[0]
    _check_p(p, where)
    if W.shape[0] != p:
        raise ValueError(
            f"{where}: W has {W.shape[0]} rows but p={p}; rows must be indexed by the p tokens "
            "(transpose W if its columns are)."
        )
    return W, p


def mode_magnitudes(W: torch.Tensor, p: int | None = None) -> torch.Tensor:
    """Magnitude of each Fourier mode of the columns of ``W``.

    ``mag_k = sqrt( Σ_j (C W)_{kj}² + (S W)_{kj}² )`` for ``k = 0 .. p//2`` (unnormalized: a column
    ``A cos(2π k t/p + φ)`` with ``0 < k < p/2`` contributes ``A p / 2`` to ``mag_k``; a constant column ``A``
    contributes ``A p`` to ``mag_0``).

    Parameters
    ----------
    W : torch.Tensor
        Shape ``[p, d]`` (or ``[p]``), rows indexed by token.
    p : int, optional
        The modulus; defaults to ``W.shape[0]`` and must equal it.

    Returns
    -------
    torch.Tensor
        Shape ``[p//2 + 1]``, float64.

    Examples
    --------
    >>> t = torch.arange(7, dtype=torch.float64)
    >>> mode_magnitudes(torch.cos(2 * math.pi * 3 * t / 7)).round(decimals=6).tolist()
    [0.0, 0.0, 0.0, 3.5]
    """
    W, p = _as_matrix(W, p, "mode_magnitudes")
    C, S = fourier_basis(p)
    W64 = W.to(torch.float64)
    n = p // 2 + 1
    cw, sw = C[:n] @ W64, S[:n] @ W64
    return (cw.square().sum(dim=1) + sw.square().sum(dim=1)).sqrt()


def mode_projector(modes: Iterable[int], p: int, keep_constant: bool = True) -> torch.Tensor:
    """The ``[p, p]`` orthogonal projector onto ``span{1, cos(2π k·/p), sin(2π k·/p) : k ∈ modes}`` (float64).

    Every ``k`` is folded to ``0 .. p//2`` (see :func:`fold_mode`). The span uses the orthonormal basis
    ``1/√p`` (the constant, mode 0), ``√(2/p) cos(2π k t/p)`` and ``√(2/p) sin(2π k t/p)`` for ``0 < k < p/2``,
    and ``(-1)^t / √p`` for ``k = p/2`` (even ``p``: that mode has no sine part). ``keep_constant=False`` drops
    the constant unless 0 is in ``modes``.
    """
    _check_p(p, "mode_projector")
    folded = sorted({fold_mode(int(k), p) for k in modes} | ({0} if keep_constant else set()))
    t = torch.arange(p, dtype=torch.int64)
    columns = []
    for k in folded:
        angle = (2.0 * math.pi / p) * ((k * t) % p).to(torch.float64)
        if k == 0:
            columns.append(torch.full((p,), 1.0 / math.sqrt(p), dtype=torch.float64))
        elif 2 * k == p:
            columns.append(torch.cos(angle) / math.sqrt(p))
        else:
            columns.extend([torch.cos(angle) * math.sqrt(2.0 / p), torch.sin(angle) * math.sqrt(2.0 / p)])
    if not columns:
        return torch.zeros(p, p, dtype=torch.float64)
    B = torch.stack(columns, dim=1)
    return B @ B.T


def project_to_modes(
    W: torch.Tensor, modes: Iterable[int], p: int | None = None, keep_constant: bool = True
) -> torch.Tensor:
    """Project each column of ``W`` orthogonally onto the span of the Fourier modes in ``modes``.

    ``W' = P W`` with ``P`` from :func:`mode_projector`: the span is ``{1, cos(2π k·/p), sin(2π k·/p) : k ∈
    modes}`` (the constant is kept unless ``keep_constant=False``). ``P`` is idempotent and symmetric, keeps the
    wanted modes exactly and removes every other one.

    Parameters
    ----------
    W : torch.Tensor
        Shape ``[p, d]`` (or ``[p]``), rows indexed by token.
    modes : iterable of int
        Frequencies to keep (folded to ``0 .. p//2``).
    p : int, optional
        Defaults to ``W.shape[0]``.
    keep_constant : bool, default True
        Include the constant function (mode 0) in the span.

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``W``.

    Examples
    --------
    >>> t = torch.arange(11, dtype=torch.float64)
    >>> W = torch.cos(2 * math.pi * 2 * t / 11) + torch.sin(2 * math.pi * 5 * t / 11)
    >>> bool(torch.allclose(project_to_modes(W, [2]), torch.cos(2 * math.pi * 2 * t / 11)))
    True
    """
    W_in = W
    W2, p = _as_matrix(W, p, "project_to_modes")
    P = mode_projector(modes, p, keep_constant=keep_constant)
    out = (P @ W2.to(torch.float64)).to(W_in.dtype if W_in.is_floating_point() else torch.float64)
    return out.reshape(W_in.shape)


def _xy(data: TensorDataset | tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, TensorDataset):
        x, y = data.tensors
    else:
        x, y = data
    if len(y) == 0:
        raise ValueError(
            "ablation: the evaluation data is empty (train_frac=1 leaves no test split); pass other data."
        )
    return x, y


@torch.no_grad()
def ablate_keep_mode(
    model: ModAddModel,
    k: int | Iterable[int],
    data: TensorDataset | tuple[torch.Tensor, torch.Tensor],
    keep_constant: bool = True,
) -> float:
    """Mean cross-entropy on ``data`` when the embedding is projected onto Fourier mode ``k`` alone.

    The embedding ``E`` is replaced by ``P_k E`` (:func:`project_to_modes`; the constant is kept) for this one
    evaluation; the model is not modified. With a tied unembedding the same projected ``E`` also unembeds.

    Parameters
    ----------
    model : ModAddModel
    k : int or iterable of int
        The mode (or set of modes) to keep.
    data : TensorDataset or (x, y)
        Evaluation pairs and labels, e.g. ``run.test_data()``.
    keep_constant : bool, default True

    Returns
    -------
    float
        The ablated loss.
    """
    modes = [int(m) for m in k] if isinstance(k, Iterable) else [int(k)]
    return _ablated(model, modes, data, keep_constant)[0]


def _ablated(model: ModAddModel, modes: list[int], data, keep_constant: bool) -> tuple[float, float]:
    x, y = _xy(data)
    E = model.embed_matrix
    E_proj = project_to_modes(E, modes, model.p, keep_constant=keep_constant)
    logits = functional_call(model, {_EMBED_PARAM: E_proj}, (x,))
    loss = F.cross_entropy(logits, y).item()
    acc = (logits.argmax(dim=-1) == y).double().mean().item()
    return loss, acc


@torch.no_grad()
def mode_ablation_table(
    model: ModAddModel,
    data: TensorDataset | tuple[torch.Tensor, torch.Tensor],
    modes: Iterable[int] | None = None,
    keep_constant: bool = True,
) -> pd.DataFrame:
    """The "keep only mode k" ablation for every mode: loss and accuracy with ``E ← P_k E``.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``mode`` (default ``0 .. p//2``), columns ``loss``, ``accuracy`` (of the ablated model) and
        ``magnitude`` (the embedding's :func:`mode_magnitudes`). ``df.attrs["baseline_loss"]`` and
        ``df.attrs["baseline_accuracy"]`` hold the unablated values.
    """
    x, y = _xy(data)
    p = model.p
    ks = list(range(p // 2 + 1)) if modes is None else sorted({fold_mode(int(k), p) for k in modes})
    mags = mode_magnitudes(model.embed_matrix, p)
    rows = [(k, *_ablated(model, [k], (x, y), keep_constant), float(mags[k])) for k in ks]
    df = pd.DataFrame(rows, columns=["mode", "loss", "accuracy", "magnitude"]).set_index("mode")
    logits = model(x)
    df.attrs["baseline_loss"] = F.cross_entropy(logits, y).item()
    df.attrs["baseline_accuracy"] = (logits.argmax(dim=-1) == y).double().mean().item()
    return df


def mode_magnitudes_over_checkpoints(run: Run) -> pd.DataFrame:
    """The embedding's mode magnitudes at every available checkpoint of ``run``.

    Returns
    -------
    pandas.DataFrame
        Shape ``[checkpoints, p//2 + 1]``: indexed by training ``step``, one column per mode ``0 .. p//2``
        (``df.to_numpy()`` is the ``[checkpoints, modes]`` array).
    """
    p = run.params.p
    rows = [mode_magnitudes(run.model(i).embed_matrix, p).numpy() for i in range(run.n_checkpoints)]
    df = pd.DataFrame(rows, index=pd.Index(run.steps, name="step"), columns=list(range(p // 2 + 1)))
    df.columns.name = "mode"
    return df
