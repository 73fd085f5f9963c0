"""Endless, non-caching, reproducible iteration of the caller's DataLoader.

Every pass over the loader starts a fresh iterator (nothing is cached, so an augmenting dataset keeps
augmenting). The randomness of pass ``k`` is drawn under a seed derived from ``(seed, k)`` alone, so every chain
batch on every device sees the same batches in the same order and results do not depend on how chains are
batched. The full-data pass used for ``L0`` (:meth:`DataFeed.one_pass`) is pass ``-1``.

Loaders that reproduce
    * A map-style dataset in a ``torch.utils.data.DataLoader`` that shuffles through torch's global generator
      (``shuffle=True``, ``RandomSampler``, ``SubsetRandomSampler``, ``WeightedRandomSampler``, a
      ``BatchSampler`` over one of them), or through generators it owns: ``DataLoader(generator=g)``,
      ``sampler.generator`` and ``batch_sampler.sampler.generator``. While a pass draws its randomness (the
      worker base seed when its iterator is made, the permutation on the first batch) the global generator and
      each owned generator are seeded with the pass seed under a module lock; the sampler's index sequence for
      the whole pass is drawn then too (for samplers with a length), so nothing is drawn from them later. The
      caller's global RNG state and the state of each owned generator are restored exactly afterwards.
      Workers (``num_workers > 0``) are seeded from the pass's base seed, so randomness drawn inside workers
      reproduces as well.
    * A ``TensorDataset`` with the default collation: batches are formed by indexing its tensors with the
      batch sampler's index lists (drawn under the same seeding), without per-sample collation.

Loaders that cannot be controlled
    An ``IterableDataset`` that shuffles itself, a sampler or dataset drawing from another RNG (numpy, Python's
    ``random``), or a main-process dataset drawing from torch's global generator after the first batch of a
    pass. DataFeeds sharing a :class:`PassLedger` detect when such a loader gives different batches on the same
    pass: the first feed to reach a pass records a fingerprint of its first batch, and a later feed whose first
    batch differs raises ``ValueError``. Only the first batch of each pass is compared.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)
from torch.utils.data._utils.collate import default_collate

__all__ = ["DataFeed", "PassLedger", "dataset_size", "default_unpack", "move_to"]

_RNG_LOCK = threading.Lock()
_END = object()


def default_unpack(batch: Any) -> tuple[Any, Any]:
    """Split a batch into ``(inputs, targets)``; accepts 2-tuples and 2-lists, explains what to do otherwise."""
    if isinstance(batch, tuple | list) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, dict):
        keys = list(batch)
        raise TypeError(
            f"default_unpack: the loader yielded a dict with keys {keys}; pass unpack_fn that returns (inputs, "
            f"targets), e.g. unpack_fn=lambda b: (b[{keys[0]!r}], b[{keys[-1]!r}])."
        )
    if isinstance(batch, tuple | list):
        raise TypeError(
            f"default_unpack: the loader yielded a {type(batch).__name__} of {len(batch)} elements, expected "
            f"(inputs, targets); pass unpack_fn, e.g. unpack_fn=lambda b: (b[0], b[1])."
        )
    raise TypeError(
        f"default_unpack: the loader yielded a {type(batch).__name__}, expected an (inputs, targets) pair; "
        "pass unpack_fn=lambda batch: (inputs, targets)."
    )


def move_to(
    obj: Any, device: torch.device, non_blocking: bool = False, float_dtype: torch.dtype | None = None
) -> Any:
    """Move tensors (also inside tuples, lists and dicts) to ``device``; floating tensors are cast to
    ``float_dtype`` when it is given."""
    if isinstance(obj, torch.Tensor):
        dtype = float_dtype if float_dtype is not None and obj.is_floating_point() else None
        return obj.to(device, dtype=dtype, non_blocking=non_blocking)
    if isinstance(obj, tuple | list):
        return type(obj)(move_to(o, device, non_blocking, float_dtype) for o in obj)
    if isinstance(obj, dict):
        return {k: move_to(v, device, non_blocking, float_dtype) for k, v in obj.items()}
    return obj


def dataset_size(loader: DataLoader) -> int | None:
    """``len(loader.dataset)`` when it is known, else ``None``."""
    try:
        return len(loader.dataset)
    except (TypeError, AttributeError, NotImplementedError):
        return None


def _pass_seed(seed: int, pass_index: int) -> int:
    return int(
        np.random.SeedSequence([seed, 0xDA7A, pass_index + 1]).generate_state(1, dtype=np.uint64)[0] >> 1
    )


def _fast_tensor_batches(loader: DataLoader) -> bool:
    """Whether the loader's batches can be formed by indexing its TensorDataset directly (same batches, no
    per-sample Python collation)."""
    return (
        isinstance(loader, DataLoader)
        and isinstance(loader.dataset, TensorDataset)
        and loader.collate_fn is default_collate
        and loader.batch_sampler is not None
    )


def batch_shapes_fixed(loader: Any) -> bool:
    """Whether every batch of the loader has one shape but a pass's last: a ``DataLoader`` over a
    ``TensorDataset`` with the default collation and a batch sampler (compiled steps then use static graphs)."""
    return _fast_tensor_batches(loader)


def _sampler_order(sampler: Any) -> torch.Tensor:
    """One pass of ``sampler``'s indices as a tensor. torch's ``SequentialSampler`` and ``RandomSampler`` without
    replacement are drawn as they draw (the same generator calls: ``randperm`` under the sampler's generator, or
    one seeded from the global generator), without a Python int per index; any other sampler is listed."""
    if type(sampler) is SequentialSampler:
        return torch.arange(len(sampler.data_source))
    if type(sampler) is RandomSampler and not sampler.replacement:
        n, total = len(sampler.data_source), sampler.num_samples
        generator = sampler.generator
        if generator is None:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
            generator = torch.Generator()
            generator.manual_seed(seed)
        parts = [torch.randperm(n, generator=generator) for _ in range(total // n)]
        # RandomSampler draws this one even when none of it is used; the generator is reset after the pass anyway
        if total % n:
            parts.append(torch.randperm(n, generator=generator)[: total % n])
        if len(parts) == 1:
            return parts[0]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
    return torch.as_tensor(list(sampler), dtype=torch.int64)


def _pass_indices(batch_sampler: Any) -> tuple[torch.Tensor, list[int]]:
    """One pass of ``batch_sampler`` as the concatenated indices of its batches and the batches' sizes. For
    torch's own ``BatchSampler`` the pass's indices are drawn from its sampler in one tensor and cut into consecutive
    batches of ``batch_size`` (the last one dropped with ``drop_last`` when it is short), which is what
    ``BatchSampler`` yields, without a Python list per batch."""
    if type(batch_sampler) is BatchSampler:
        order = _sampler_order(batch_sampler.sampler)
        size, total = batch_sampler.batch_size, len(order)
        sizes = [size] * (total // size)
        if total % size and not batch_sampler.drop_last:
            sizes.append(total % size)
        return order[: sum(sizes)], sizes
    batches = [torch.as_tensor(idx, dtype=torch.int64).reshape(-1) for idx in batch_sampler]
    order = torch.cat(batches) if batches else torch.zeros(0, dtype=torch.int64)
    return order, [len(idx) for idx in batches]


#: The fast path gathers the rows of consecutive batches with one indexing operation per tensor, up to this many
#: bytes at a time, and cuts the batches from them as views.
GATHER_BLOCK_BYTES = 16 * 2**20


def _gathered_batches(
    tensors: Sequence[torch.Tensor], order: torch.Tensor, sizes: list[int]
) -> Iterator[tuple]:
    """The batches ``tuple(t[idx] for t in tensors)`` whose indices ``idx`` are consecutive pieces of ``order`` of
    the lengths ``sizes``: the rows of consecutive batches are gathered at once (at most :data:`GATHER_BLOCK_BYTES`
    per group, at least one batch) and the batches are contiguous slices of that block. The same values as one
    indexing per batch, at a fraction of the per-batch cost (one small indexing operation costs about 20 µs per
    tensor)."""
    row_bytes = max(1, sum(t[0].numel() * t.element_size() for t in tensors) if len(tensors[0]) else 1)
    rows_per_block = max(1, GATHER_BLOCK_BYTES // row_bytes)
    start, offset = 0, 0
    while start < len(sizes):
        stop, rows = start + 1, sizes[start]
        while stop < len(sizes) and rows + sizes[stop] <= rows_per_block:
            rows += sizes[stop]
            stop += 1
        index = order[offset : offset + rows]
        yield from zip(*(torch.split(t[index], sizes[start:stop]) for t in tensors))
        start, offset = stop, offset + rows


def _owned_generators(loader: Any) -> list[torch.Generator]:
    """The torch generators the loader shuffles or seeds its workers with, each once."""
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    candidates = (
        getattr(loader, "generator", None),
        getattr(sampler, "generator", None),
        getattr(batch_sampler, "generator", None),
        getattr(getattr(batch_sampler, "sampler", None), "generator", None),
    )
    found: list[torch.Generator] = []
    for g in candidates:
        if isinstance(g, torch.Generator) and not any(g is h for h in found):
            found.append(g)
    return found


@contextlib.contextmanager
def _seeded(loader: Any, seed: int) -> Iterator[None]:
    """Hold the module lock with torch's global generator and every generator the loader owns seeded with
    ``seed``; their states are restored exactly on exit."""
    with _RNG_LOCK, torch.random.fork_rng(devices=[]):
        generators = _owned_generators(loader)
        states = [g.get_state() for g in generators]
        try:
            torch.default_generator.manual_seed(seed)
            for g in generators:
                g.manual_seed(seed)
            yield
        finally:
            for g, state in zip(generators, states):
                g.set_state(state)


def _draw_remaining_indices(iterator: Any, loader: Any) -> None:
    """Draw the rest of the pass's index sequence now (under the seeding), so that samplers drawing lazily
    (``RandomSampler`` draws again when it is exhausted, or every 32 samples with replacement) never draw from
    the caller's generators later. Only for map-style DataLoaders whose index sampler has a length."""
    sampler_iter = getattr(iterator, "_sampler_iter", None)
    if (
        sampler_iter is None
        or not isinstance(loader, DataLoader)
        or isinstance(loader.dataset, IterableDataset)
    ):
        return
    try:
        n = len(loader._index_sampler)
    except (TypeError, NotImplementedError, AttributeError):
        return
    head = list(itertools.islice(sampler_iter, n + 1))  # one more than the length: run the sampler to its end
    iterator._sampler_iter = itertools.chain(head, sampler_iter)


def _fingerprint(obj: Any) -> Any:
    """A cheap summary of a raw batch: shape, dtype and float64 sums of every CPU tensor (only shape, dtype and
    device of others, to avoid a device sync), the structure of tuples, lists and dicts, and ``repr`` of other
    leaves (the type name where that repr is the default one, which holds an address)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        head = ("tensor", tuple(t.shape), str(t.dtype))
        if t.device.type != "cpu" or t.layout != torch.strided or t.is_nested or t.is_quantized:
            return (*head, str(t.device), str(t.layout))
        if t.is_complex():
            t = torch.view_as_real(t)
        # numpy sums are single-threaded, so they do not depend on the thread (or thread count) computing them.
        a = t.to(torch.float64).numpy()
        total = float(a.sum())
        # Row-position-weighted sum: a batch holding the same samples in another order differs too.
        rows = a.reshape(a.shape[0], -1).sum(1) if a.ndim > 0 and a.shape[0] > 0 else a.reshape(-1)
        weighted = float((rows * np.arange(1, rows.size + 1, dtype=np.float64)).sum())
        return (*head, total.hex(), weighted.hex())
    if isinstance(obj, tuple | list):
        return (type(obj).__name__, tuple(_fingerprint(o) for o in obj))
    if isinstance(obj, dict):
        return ("dict", tuple((repr(k), _fingerprint(v)) for k, v in obj.items()))
    if type(obj).__repr__ is object.__repr__:
        return ("object", type(obj).__qualname__)
    return ("leaf", repr(obj))


class PassLedger:
    """Shared by the DataFeeds over one loader, so that a loader whose passes differ is caught.

    For each pass (and feed seed), the first feed to reach it records a fingerprint of the pass's first batch;
    a later feed whose first batch of that pass has another fingerprint raises ``ValueError``. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._first: dict[tuple[int, int], Any] = {}

    def __len__(self) -> int:
        """Number of (seed, pass) entries recorded."""
        with self._lock:
            return len(self._first)

    def check(self, pass_index: int, batch: Any, seed: int = 0) -> None:
        """Record the fingerprint of ``batch``, the first raw batch of pass ``pass_index``, or compare it with
        the one recorded first for that pass and ``seed``; raise ``ValueError`` when they differ."""
        fingerprint = _fingerprint(batch)
        with self._lock:
            recorded = self._first.setdefault((seed, pass_index), fingerprint)
        if recorded != fingerprint:
            which = f"pass {pass_index}" + (" (the full-data pass used for L0)" if pass_index == -1 else "")
            raise ValueError(
                f"DataFeed: the loader gave different batches to different chain batches on {which}: its "
                "first batch differs between two reads of that pass with the same seed, so per-chain results "
                "would depend on chain_batch and devices. The loader's randomness is not one lambdahat can "
                "seed (e.g. an IterableDataset that shuffles itself, or a sampler or dataset using numpy or "
                "Python's random). Use a map-style dataset in a torch DataLoader whose shuffling lambdahat "
                "controls (shuffle=True, RandomSampler or SubsetRandomSampler, with or without generator=), "
                "or pass chain_batch=None and a single device."
            )


class DataFeed:
    """Endless stream of ``(x, y)`` batches on one device.

    Parameters
    ----------
    loader:
        Any iterable of batches; a ``torch.utils.data.DataLoader`` in the usual case.
    unpack_fn:
        ``batch -> (inputs, targets)``; ``None`` accepts ``(x, y)`` pairs.
    device:
        Where batches are moved.
    seed:
        Seeds the randomness of each pass (see module docstring).
    float_dtype:
        If given, floating tensors of the batches are cast to it (float64 runs).
    ledger:
        A :class:`PassLedger` shared with the other DataFeeds over the same loader; the first batch of every
        pass is checked against it. ``None``: no check.
    """

    def __init__(
        self,
        loader,
        unpack_fn: Callable | None,
        device: torch.device,
        seed: int,
        float_dtype: torch.dtype | None = None,
        *,
        ledger: PassLedger | None = None,
    ) -> None:
        self.loader = loader
        self.unpack = unpack_fn or default_unpack
        self.device = torch.device(device)
        self.seed = seed
        self.non_blocking = self.device.type == "cuda"
        self.fast = _fast_tensor_batches(loader)
        self.float_dtype = float_dtype
        self.ledger = ledger
        #: Batches in one pass of the loader, known once the first pass (index 0) has ended.
        self.batches_per_pass: int | None = None

    def _batches_of_pass(self, pass_index: int) -> Iterator[Any]:
        with _seeded(self.loader, _pass_seed(self.seed, pass_index)):
            if self.fast:
                tensors = self.loader.dataset.tensors
                order, sizes = _pass_indices(self.loader.batch_sampler)
            else:
                source = iter(self.loader)
                first = next(source, _END)  # worker base seed, shuffle and first batch are drawn now
                if first is not _END:
                    _draw_remaining_indices(source, self.loader)
        if self.fast:
            yield from _gathered_batches(tensors, order, sizes)
            return
        if first is _END:
            return
        yield first
        yield from source

    def _pass(self, pass_index: int) -> Iterator[tuple[Any, Any]]:
        empty, count = True, 0
        for batch in self._batches_of_pass(pass_index):
            if empty and self.ledger is not None:
                self.ledger.check(pass_index, batch, self.seed)
            empty = False
            count += 1
            x, y = self.unpack(batch)
            yield (
                move_to(x, self.device, self.non_blocking, self.float_dtype),
                move_to(y, self.device, self.non_blocking, self.float_dtype),
            )
        if pass_index == 0:
            self.batches_per_pass = count
        if empty:
            raise ValueError(
                "DataFeed: the loader yielded no batch; pass a DataLoader over a non-empty dataset "
                "(with drop_last=True, the dataset must hold at least one full batch)."
            )

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        for pass_index in itertools.count():
            yield from self._pass(pass_index)

    def one_pass(self) -> Iterator[tuple[Any, Any]]:
        """Exactly one pass over the loader (used for the full-data loss ``L0``; pass index ``-1``)."""
        return self._pass(-1)
