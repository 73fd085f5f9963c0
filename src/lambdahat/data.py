"""Endless, non-caching, reproducible iteration of the caller's DataLoader.

Every pass over the loader starts a fresh iterator (nothing is cached, so an augmenting dataset keeps
augmenting). When the loader shuffles with the global RNG, the shuffle of pass ``k`` is drawn under a seed derived
from ``(seed, k)`` alone, so every chain batch on every device sees the same batches in the same order and results
do not depend on how chains are batched. The global RNG state of the caller is left as it was.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data._utils.collate import default_collate

__all__ = ["DataFeed", "dataset_size", "default_unpack", "move_to"]

_GLOBAL_RNG_LOCK = threading.Lock()


def default_unpack(batch: Any) -> tuple[Any, Any]:
    """Split a batch into ``(inputs, targets)``; accepts 2-tuples and 2-lists, explains what to do otherwise."""
    if isinstance(batch, tuple | list) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, dict):
        keys = list(batch)
        raise TypeError(
            f"estimate_llc: the loader yielded a dict with keys {keys}; pass unpack_fn that returns (inputs, "
            f"targets), e.g. unpack_fn=lambda b: (b[{keys[0]!r}], b[{keys[-1]!r}])."
        )
    if isinstance(batch, tuple | list):
        raise TypeError(
            f"estimate_llc: the loader yielded a {type(batch).__name__} of {len(batch)} elements, expected "
            f"(inputs, targets); pass unpack_fn, e.g. unpack_fn=lambda b: (b[0], b[1])."
        )
    raise TypeError(
        f"estimate_llc: the loader yielded a {type(batch).__name__}, expected an (inputs, targets) pair; "
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
        Seeds the shuffle of each pass (see module docstring).
    float_dtype:
        If given, floating tensors of the batches are cast to it (float64 runs).
    """

    def __init__(
        self,
        loader,
        unpack_fn: Callable | None,
        device: torch.device,
        seed: int,
        float_dtype: torch.dtype | None = None,
    ) -> None:
        self.loader = loader
        self.unpack = unpack_fn or default_unpack
        self.device = torch.device(device)
        self.seed = seed
        self.non_blocking = self.device.type == "cuda"
        self.fast = _fast_tensor_batches(loader)
        self.float_dtype = float_dtype

    def _batches_of_pass(self, pass_index: int) -> Iterator[Any]:
        with _GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(_pass_seed(self.seed, pass_index))
            if self.fast:
                tensors = self.loader.dataset.tensors
                index_lists = [torch.as_tensor(idx) for idx in self.loader.batch_sampler]
                source = ((tuple(t[idx] for t in tensors)) for idx in index_lists)
                first = None
            else:
                source = iter(self.loader)
                first = next(source, None)  # shuffles and worker seeds are drawn now, under the lock
        if self.fast:
            yield from source
            return
        if first is None:
            return
        yield first
        yield from source

    def _pass(self, pass_index: int) -> Iterator[tuple[Any, Any]]:
        empty = True
        for batch in self._batches_of_pass(pass_index):
            empty = False
            x, y = self.unpack(batch)
            yield (
                move_to(x, self.device, self.non_blocking, self.float_dtype),
                move_to(y, self.device, self.non_blocking, self.float_dtype),
            )
        if empty:
            raise ValueError(
                "estimate_llc: the loader yielded no batch; pass a DataLoader over a non-empty dataset "
                "(with drop_last=True, the dataset must hold at least one full batch)."
            )

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        for pass_index in itertools.count():
            yield from self._pass(pass_index)

    def one_pass(self) -> Iterator[tuple[Any, Any]]:
        """Exactly one pass over the loader (used for the full-data loss ``L0``)."""
        return self._pass(-1)
