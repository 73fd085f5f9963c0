"""Bayesian influence functions and the posterior loss kernel: covariances of per-sample losses at the draws.

Under the localized tempered posterior ``p`` (REFERENCE.md §1), upweighting training sample ``z_i`` by ``δ``
(``p_δ ∝ p · exp(−δ ℓ_i)``) changes the posterior expectation of any observable ``φ`` by

.. math::

    \\frac{d}{d\\delta} E_{p_\\delta}[\\varphi] \\Big|_{\\delta=0} = -\\mathrm{Cov}_p(\\ell_i, \\varphi),

so this module's **Bayesian influence function** is ``BIF(z_i, z_j) = −Cov_p(ℓ_i, ℓ_j)`` for query sample ``z_j``
(Kreer et al. 2025, arXiv 2509.26544), unscaled: multiply by ``nβ/n`` for the per-sample weight of the tempered
likelihood. A negative entry means that upweighting ``z_i`` lowers the query's expected loss (a proponent), a
positive one that it raises it (an opponent). The **loss kernel** is ``K_ij = Corr_p(ℓ_i, ℓ_j)``, and the **loss
gain** ``E_p[ℓ_i] − ℓ_i(w*)`` is a difficulty score.

Estimates come from the ``[chains, draws, samples]`` (or ``[chains, draws, samples, tokens]``) per-sample losses that
:func:`lambdahat.sample` records for an evaluation set (``LLCResult.per_sample_losses``, in host memory or a
memory-mapped ``.npy``). With ``X`` the ``M = chains · draws`` rows of draws, the chain ``pooling`` options are

``"pooled"``
    ``(X − x̄)ᵀ(X − x̄) / (M − 1)`` with ``x̄`` the mean over all chains and draws;
``"within"``
    centre within each chain and average the per-chain covariances, ``Σ_c (X_c − x̄_c)ᵀ(X_c − x̄_c) / (C (D − 1))``
    (removes between-chain offsets, e.g. chains that have not mixed between modes);
``"each"``
    the per-chain covariances themselves, ``[chains, queries, train]`` (their spread across chains is the Monte
    Carlo error of the pooled estimate).

Correlations divide by the standard deviations computed with the same pooling. The matrix is built from tiles of
``block_size`` columns at a time (float64 accumulation), so only two column blocks of the trace and one tile are in
memory besides the output, which can itself be a memory-mapped ``.npy`` (``out=``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

__all__ = [
    "KINDS",
    "POOLINGS",
    "LossKernel",
    "RecordedLosses",
    "bif",
    "loss_gain",
    "loss_kernel",
    "per_sample_losses_at",
]

KINDS = ("bif", "covariance", "correlation")
POOLINGS = ("pooled", "within", "each")
#: Default number of columns per tile: ``[M, 1024]`` float64 blocks (16 MiB for M = 2000 draws).
BLOCK_SIZE = 1024


def _as_trace(losses) -> np.ndarray:
    """A read-only numpy view of ``[chains, draws, samples(, tokens)]`` losses (memory maps stay lazy)."""
    from .result import LLCResult

    if isinstance(losses, LLCResult):
        if losses.per_sample_losses is None:
            raise ValueError(
                "loss_kernel: the result has no per-sample losses; pass evaluation=loader to lambdahat.prepare."
            )
        losses = losses.per_sample_losses
    if isinstance(losses, str | os.PathLike):
        losses = np.load(os.fspath(losses), mmap_mode="r")
    if isinstance(losses, torch.Tensor):
        losses = losses.detach().cpu().numpy()
    if not isinstance(losses, np.ndarray) or losses.ndim not in (3, 4):
        shape = getattr(losses, "shape", None)
        raise ValueError(
            "loss_kernel: expected per-sample losses [chains, draws, samples] or [chains, draws, samples, tokens] "
            f"(an LLCResult, tensor, array or .npy path); got {type(losses).__name__} of shape {shape}."
        )
    return losses


@dataclass(frozen=True)
class RecordedLosses:
    """Recorded per-sample losses and the chains that enter the estimates.

    Attributes
    ----------
    trace:
        ``[chains, draws, samples(, tokens)]`` (a view: memory maps stay lazy).
    kept:
        Indices of the chains that did not diverge, ascending.
    counted:
        ``[samples, tokens]``: whether a token counts (``None`` for per-sample traces).
    """

    trace: np.ndarray
    kept: np.ndarray
    counted: np.ndarray | None

    @classmethod
    def of(cls, losses, who: str = "loss_kernel") -> RecordedLosses:
        """The losses of an ``LLCResult``, tensor, array or ``.npy`` path, leaving out the chains that diverged,
        with a warning, as λ̂ does: those the result marks ``diverged`` and those with a non-finite loss where a
        token counts (one chain read at a time). A token counts when some chain has a finite loss for it at its
        first draw (tokens that do not count are NaN at every draw of every chain)."""
        from .result import LLCResult

        trace = _as_trace(losses)
        chains = trace.shape[0]
        bad = np.zeros(chains, dtype=bool)
        if isinstance(losses, LLCResult) and losses.diverged is not None:
            bad |= np.asarray(losses.diverged, dtype=bool)
        counted = None
        if trace.ndim == 4:
            counted = np.zeros(trace.shape[2:], dtype=bool)
            for c in range(chains):
                counted |= np.isfinite(np.asarray(trace[c, 0]))
        for c in range(chains):
            if not bad[c]:
                values = np.asarray(trace[c])
                bad[c] = not np.isfinite(values if counted is None else values[:, counted]).all()
        if bad.all():
            raise ValueError(
                f"{who}: every chain diverged (non-finite per-sample losses); rerun with a smaller learning_rate "
                "or a larger localization."
            )
        if bad.any():
            warnings.warn(
                f"{who}: chains {np.flatnonzero(bad).tolist()} diverged (non-finite losses); they are left out "
                "of the estimates, as they are of λ̂.",
                RuntimeWarning,
                stacklevel=3,
            )
        return cls(trace, np.flatnonzero(~bad), counted)

    @property
    def all_kept(self) -> bool:
        return len(self.kept) == self.trace.shape[0]

    def columns(self, samples=None) -> tuple[np.ndarray, pd.Index]:
        """Flat column positions of the chosen samples (all tokens that count) and their index (``sample`` or
        ``(sample, token)``); ``samples``: positions (an int array, a slice) or ``None`` for all."""
        trace = self.trace
        n = trace.shape[2]
        if samples is None:
            samples = np.arange(n)
        elif isinstance(samples, slice):
            samples = np.arange(n)[samples]
        samples = np.asarray(samples, dtype=np.int64).reshape(-1)
        if samples.size and (samples.min() < -n or samples.max() >= n):
            raise ValueError(
                f"loss_kernel: sample indices must lie in [0, {n}); got {samples.min()}..{samples.max()}."
            )
        samples = np.where(samples < 0, samples + n, samples)
        if trace.ndim == 3:
            return samples, pd.Index(samples, name="sample")
        tokens = trace.shape[3]
        s, t = np.nonzero(self.counted[samples])
        index = pd.MultiIndex.from_arrays([samples[s], t], names=["sample", "token"])
        return samples[s] * tokens + t, index


class _Blocks:
    """Centred float64 column blocks ``[M, b]`` (or ``[C, D, b]`` for ``"each"``) of a flat trace view."""

    def __init__(self, recorded: RecordedLosses, pooling: str) -> None:
        trace = recorded.trace
        d = trace.shape[1]
        self.flat = trace.reshape(trace.shape[0], d, -1)  # a view, also of a memory map
        self.kept = None if recorded.all_kept else recorded.kept
        c = len(recorded.kept)
        self.pooling, self.chains, self.draws = pooling, c, d
        self.denom = {"pooled": c * d - 1, "within": c * (d - 1), "each": d - 1}[pooling]
        if self.denom < 1:
            raise ValueError(
                f"loss_kernel: pooling={pooling!r} needs more draws (got {c} chains × {d} draws); "
                "record at least 2 draws per chain."
            )

    def read(self, cols: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The centred block and its variances (same pooling and denominator)."""
        lo, hi = int(cols.min()), int(cols.max()) + 1
        if hi - lo == len(cols) and np.all(np.diff(cols) == 1):
            raw = np.asarray(self.flat[:, :, lo:hi])  # a contiguous slice reads only those columns
        else:
            raw = np.asarray(self.flat[:, :, cols])
        if self.kept is not None:
            raw = raw[self.kept]
        x = torch.from_numpy(np.asarray(raw, dtype=np.float64))
        if self.pooling == "pooled":
            x = x.reshape(self.chains * self.draws, -1)
            x = x - x.mean(0, keepdim=True)
            return x, (x * x).sum(0) / self.denom
        x = x - x.mean(1, keepdim=True)
        if self.pooling == "within":
            x = x.reshape(self.chains * self.draws, -1)
            return x, (x * x).sum(0) / self.denom
        return x, (x * x).sum(1) / self.denom  # each: [C, D, b], variances [C, b]

    def tile(self, a, b) -> torch.Tensor:
        if self.pooling == "each":
            return torch.bmm(a.transpose(1, 2), b) / self.denom
        return (a.T @ b) / self.denom


@dataclass
class LossKernel:
    """A covariance-type matrix between query and training samples (or tokens), with their indices.

    Attributes
    ----------
    values:
        ``[queries, train]`` (``[chains, queries, train]`` for ``pooling="each"``), float64; NaN in the rows and
        columns of a sample whose loss is NaN at some draw, and in correlations of a loss that does not vary.
    query_index, train_index:
        The sample index (``"sample"``) or the ``("sample", "token")`` pairs of the rows and columns, positions in
        the query and training sets.
    kind:
        ``"bif"`` (``−Cov``), ``"covariance"`` or ``"correlation"``.
    pooling:
        ``"pooled"``, ``"within"`` or ``"each"`` (see the module docstring).
    result, problem:
        The run and the prepared problem the kernel came from, when it was made by :func:`bif`.
    """

    values: np.ndarray
    query_index: pd.Index
    train_index: pd.Index
    kind: str
    pooling: str
    result: Any = field(default=None, repr=False)
    problem: Any = field(default=None, repr=False)
    query_columns: np.ndarray | None = field(default=None, repr=False)
    train_columns: np.ndarray | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    def to_frame(self) -> pd.DataFrame:
        """The matrix as a wide DataFrame (rows: queries, columns: training samples); pooled kinds only."""
        if self.values.ndim != 2:
            raise ValueError("LossKernel.to_frame: pooling='each' has one matrix per chain; index values[c].")
        return pd.DataFrame(self.values, index=self.query_index, columns=self.train_index)

    def to_long(self) -> pd.DataFrame:
        """The tidy long table: one row per (query, train) pair with a ``value`` column (chain too for ``each``)."""
        values = self.values if self.values.ndim == 3 else self.values[None]
        q = self.query_index.to_frame(index=False).add_prefix("query_")
        t = self.train_index.to_frame(index=False).add_prefix("train_")
        nq, nt = len(q), len(t)
        rows = []
        for c, matrix in enumerate(values):
            frame = pd.concat(
                [
                    q.loc[np.repeat(np.arange(nq), nt)].reset_index(drop=True),
                    t.loc[np.tile(np.arange(nt), nq)].reset_index(drop=True),
                ],
                axis=1,
            )
            if self.values.ndim == 3:
                frame.insert(0, "chain", c)
            frame["value"] = np.asarray(matrix).reshape(-1)
            rows.append(frame)
        return pd.concat(rows, ignore_index=True)

    def top_k(self, query, k: int = 10, order: str = "magnitude") -> pd.DataFrame:
        """The ``k`` most influential training samples for one query.

        Parameters
        ----------
        query:
            A label of ``query_index`` (a sample index, or a ``(sample, token)`` pair).
        k:
            How many.
        order:
            ``"magnitude"`` (largest ``|value|``), ``"positive"`` (largest values first) or ``"negative"`` (most
            negative first). For ``kind="bif"``, ``"negative"`` gives the proponents (upweighting them lowers the
            query's loss) and ``"positive"`` the opponents.

        Returns
        -------
        pandas.DataFrame
            The training index, ``value`` and ``rank`` (1 = most influential), best first.
        """
        if self.values.ndim != 2:
            raise ValueError("LossKernel.top_k: needs a pooled matrix (pooling='pooled' or 'within').")
        row = self.values[self.query_index.get_loc(query)]
        key = {"magnitude": -np.abs(row), "positive": -row, "negative": row}.get(order)
        if key is None:
            raise ValueError(
                f"LossKernel.top_k: order must be 'magnitude', 'positive' or 'negative'; got {order!r}."
            )
        best = np.argsort(np.where(np.isnan(key), np.inf, key), kind="stable")[:k]
        frame = self.train_index[best].to_frame(index=False)
        frame["value"] = row[best]
        frame["rank"] = np.arange(1, len(best) + 1)
        return frame

    def loss_gain(self, which: str = "train") -> pd.Series:
        """The posterior loss gain ``E_p[ℓ] − ℓ(w*)`` of the training (``"train"``) or query samples (needs the run:
        kernels made by :func:`bif`)."""
        if self.result is None or self.problem is None:
            raise ValueError(
                "LossKernel.loss_gain: this kernel has no run attached; use lambdahat.influence.loss_gain."
            )
        if which not in ("train", "query"):
            raise ValueError(f"LossKernel.loss_gain: which must be 'train' or 'query'; got {which!r}.")
        columns = self.train_columns if which == "train" else self.query_columns
        index = self.train_index if which == "train" else self.query_index
        gain = _gain(RecordedLosses.of(self.result, "loss_gain"), self.problem).reshape(-1)
        return pd.Series(gain[columns], index=index, name="loss_gain")


def loss_kernel(
    losses,
    query=None,
    train=None,
    *,
    kind: str = "correlation",
    pooling: str = "pooled",
    block_size: int = BLOCK_SIZE,
    out: str | os.PathLike[str] | None = None,
) -> LossKernel:
    """The BIF, covariance or correlation matrix of recorded per-sample losses, computed in tiles.

    Parameters
    ----------
    losses:
        ``[chains, draws, samples]`` or ``[chains, draws, samples, tokens]`` losses: an ``LLCResult``, a tensor, a
        numpy array, or the path of a ``.npy`` file (opened memory-mapped, read one column block at a time).
    query, train:
        Sample positions (an int array, a slice) of the rows and the columns; ``None``: all samples. Per-token
        traces give one row/column per ``(sample, token)`` that counts (tokens NaN at the first draw are dropped).
    kind:
        ``"bif"`` = ``−Cov(ℓ_train, ℓ_query)``, ``"covariance"`` or ``"correlation"`` (the loss kernel; default).
    pooling:
        ``"pooled"``, ``"within"`` or ``"each"`` (see the module docstring).
    block_size:
        Columns per tile (memory ~ ``2 · chains · draws · block_size · 8`` bytes besides the output).
    out:
        Optional ``.npy`` path for the output (memory-mapped; bounded memory for any size).

    Returns
    -------
    LossKernel
        ``values[i, j]`` between query ``i`` and training sample ``j``.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> common = torch.randn(4, 50, 1, generator=g)
    >>> losses = torch.cat([common, common + 0.1 * torch.randn(4, 50, 1, generator=g),
    ...                     torch.randn(4, 50, 1, generator=g)], dim=2)
    >>> kernel = loss_kernel(losses, query=[0], kind="correlation")
    >>> kernel.values.shape, bool(kernel.values[0, 1] > 0.9), bool(abs(kernel.values[0, 2]) < 0.3)
    ((1, 3), True, True)
    """
    if kind not in KINDS:
        raise ValueError(f"loss_kernel: kind must be one of {', '.join(KINDS)}; got {kind!r}.")
    if pooling not in POOLINGS:
        raise ValueError(f"loss_kernel: pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}.")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"loss_kernel: block_size must be an int >= 1; got {block_size!r}.")
    recorded = RecordedLosses.of(losses, "loss_kernel")
    q_cols, q_index = recorded.columns(query)
    t_cols, t_index = recorded.columns(train)
    symmetric = np.array_equal(q_cols, t_cols)
    blocks = _Blocks(recorded, pooling)
    shape = (len(q_cols), len(t_cols))
    if pooling == "each":
        shape = (blocks.chains, *shape)
    if out is None:
        values = np.empty(shape, dtype=np.float64)
    else:
        values = np.lib.format.open_memmap(os.fspath(out), mode="w+", dtype=np.float64, shape=shape)
    q_starts = range(0, len(q_cols), block_size)
    t_starts = range(0, len(t_cols), block_size)
    for qs in q_starts:
        a, a_var = blocks.read(q_cols[qs : qs + block_size])
        for ts in t_starts:
            if symmetric and ts < qs:
                continue  # filled from its mirror image
            b, b_var = (a, a_var) if symmetric and ts == qs else blocks.read(t_cols[ts : ts + block_size])
            tile = blocks.tile(a, b)
            if kind == "correlation":
                with np.errstate(invalid="ignore", divide="ignore"):
                    tile = tile / torch.sqrt(a_var.unsqueeze(-1) * b_var.unsqueeze(-2))
            elif kind == "bif":
                tile = -tile
            tile = tile.numpy()
            values[..., qs : qs + block_size, ts : ts + block_size] = tile
            if symmetric and ts != qs:
                values[..., ts : ts + block_size, qs : qs + block_size] = np.swapaxes(tile, -1, -2)
    if out is not None:
        values.flush()
    return LossKernel(values, q_index, t_index, kind, pooling, query_columns=q_cols, train_columns=t_cols)


def per_sample_losses_at(problem, theta: torch.Tensor | None = None) -> np.ndarray:
    """Per-sample (per-token) losses of a prepared problem's evaluation set at ``theta`` (default ``w*``),
    ``[samples(, tokens)]``, NaN where a token does not count (the layout of ``LLCResult.per_sample_losses``)."""
    if problem.evaluation is None:
        raise ValueError(
            "per_sample_losses_at: the problem has no evaluation set; pass evaluation= to prepare."
        )
    fm, evaluation = problem.slots[0], problem.evaluation[0]
    theta = fm.w_star if theta is None else theta
    out = np.full(evaluation.shape, np.nan)
    start = 0
    with torch.no_grad():
        for (x, y), size in zip(evaluation.batches, evaluation.sizes, strict=True):
            losses = fm.per_sample_losses(theta, fm.frozen, fm.buffers, x, y).double().cpu().numpy()
            out[(slice(start, start + size), *(slice(0, s) for s in losses.shape[1:]))] = losses
            start += size
    return out


def loss_gain(result, problem) -> pd.Series:
    """The posterior loss gain ``E_p[ℓ_i] − ℓ_i(w*)`` of every evaluation sample (token), a difficulty score.

    The mean is over the chains that did not diverge (the others are left out with a warning) and all draws, one
    chain in memory at a time, so memory-mapped traces stay lazy. Indexed like :func:`loss_kernel`'s columns.
    """
    recorded = RecordedLosses.of(result, "loss_gain")
    gain = _gain(recorded, problem)
    cols, index = recorded.columns()
    return pd.Series(gain.reshape(-1)[cols], index=index, name="loss_gain")


def _gain(recorded: RecordedLosses, problem) -> np.ndarray:
    """``[samples(, tokens)]`` mean over the kept chains and the draws minus the losses at ``w*``."""
    trace = recorded.trace
    total = np.zeros(trace.shape[2:])
    for c in recorded.kept:
        total += np.asarray(trace[c], dtype=np.float64).sum(0)
    return total / (len(recorded.kept) * trace.shape[1]) - per_sample_losses_at(problem)


def fixed_order(loader, name: str):
    """A loader's batches in a fixed order: lists as they are; a shuffling DataLoader is rebuilt without shuffling
    (the positions of its samples are then their dataset indices)."""
    if isinstance(loader, torch.utils.data.DataLoader) and isinstance(
        loader.sampler, torch.utils.data.RandomSampler
    ):
        return torch.utils.data.DataLoader(
            loader.dataset, batch_size=loader.batch_size or 1, shuffle=False, collate_fn=loader.collate_fn
        )
    if isinstance(loader, torch.utils.data.DataLoader) and not isinstance(
        loader.sampler, torch.utils.data.SequentialSampler
    ):
        raise ValueError(
            f"bif: the {name} loader draws its samples with a {type(loader.sampler).__name__}; the kernel's indices "
            "are positions in one pass, so pass a loader in a fixed order (shuffle=False) or a list of batches."
        )
    return loader


def bif(
    model: torch.nn.Module,
    train_loader,
    config=None,
    *,
    query=None,
    train=None,
    kind: str = "bif",
    pooling: str = "pooled",
    block_size: int = BLOCK_SIZE,
    criterion_fn: Callable | None = None,
    unpack_fn: Callable | None = None,
    loss_fn: Callable | None = None,
    params=None,
    devices: str | torch.device | Sequence[str | torch.device] = "cpu",
    compile: bool | str = "auto",
    seed: int | None = None,
    chain_batch: int | str | None = None,
    per_sample_path: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    show_progress: bool = False,
    warn: bool = True,
) -> LossKernel:
    """Bayesian influence of training samples on query samples: one SGLD run, then :func:`loss_kernel`.

    ``values[j, i] = −Cov_p(ℓ_i, ℓ_j)`` (``kind="bif"``) for query ``j`` and training sample ``i``, under the
    localized tempered posterior sampled with ``config`` (``lambdahat.prepare`` + ``lambdahat.sample``), from the
    per-sample (per-token) losses of the query and training sets recorded at every draw.

    Parameters
    ----------
    model, train_loader, config:
        As for :func:`lambdahat.prepare`: ``train_loader`` drives the sampler (shuffling allowed).
    query:
        A loader (or list of batches) of query samples in a fixed order; ``None``: all pairs of the training set.
    train:
        The training samples whose losses are recorded (fixed order); ``None``: ``train_loader`` itself (rebuilt
        without shuffling, so positions are dataset indices).
    kind, pooling, block_size, out:
        See :func:`loss_kernel` (``kind="covariance"`` or ``"correlation"`` for the loss kernel).
    criterion_fn, unpack_fn, loss_fn, params, devices, compile:
        See :func:`lambdahat.prepare`.
    seed, chain_batch, per_sample_path, show_progress, warn:
        See :func:`lambdahat.sample`; ``per_sample_path`` streams the ``[chains, draws, queries + train(, tokens)]``
        trace to a memory-mapped ``.npy`` (query samples first), which the kernel then reads block by block.

    Returns
    -------
    LossKernel
        ``[queries, train]`` with the run (``.result``: check ``.result.status``) and the problem attached.
    """
    from .config import LLCConfig
    from .estimator import sample
    from .problem import prepare

    config = LLCConfig() if config is None else config
    train_batches = list(fixed_order(train_loader if train is None else train, "train"))
    query_batches = [] if query is None else list(fixed_order(query, "query"))
    problem = prepare(
        model,
        train_loader,
        config,
        criterion_fn=criterion_fn,
        unpack_fn=unpack_fn,
        loss_fn=loss_fn,
        devices=devices,
        params=params,
        evaluation=query_batches + train_batches,
        compile=compile,
    )
    result = sample(
        problem,
        config,
        seed=seed,
        chain_batch=chain_batch,
        show_progress=show_progress,
        warn=warn,
        per_sample_path=per_sample_path,
    )
    sizes = problem.evaluation[0].sizes
    n_query = sum(sizes[: len(query_batches)])
    n_total = problem.evaluation[0].shape[0]
    train_pos = np.arange(n_query, n_total)
    query_pos = np.arange(n_query) if query is not None else None
    kernel = loss_kernel(
        result,
        query=train_pos if query_pos is None else query_pos,
        train=train_pos,
        kind=kind,
        pooling=pooling,
        block_size=block_size,
        out=out,
    )
    # positions relative to each set, not to the concatenated evaluation set
    kernel.query_index = _shift(kernel.query_index, 0 if query is not None else n_query)
    kernel.train_index = _shift(kernel.train_index, n_query)
    kernel.result, kernel.problem = result, problem
    return kernel


def _shift(index: pd.Index, offset: int) -> pd.Index:
    if isinstance(index, pd.MultiIndex):
        return pd.MultiIndex.from_arrays(
            [index.get_level_values(0) - offset, index.get_level_values(1)], names=index.names
        )
    return pd.Index(np.asarray(index) - offset, name=index.name)
