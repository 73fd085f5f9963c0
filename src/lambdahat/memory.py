"""How many chains fit in one device call: ``chain_batch="auto"``.

The memory of a chain batch of ``c`` chains is modelled as ``base + c · per_chain``. On CUDA both are measured: the
peak memory of one eager step of 1 and of 2 chains on the run's first batch. On the CPU, where the allocator keeps
no statistics, ``per_chain`` is the bytes that one chain's forward saves for its backward (counted through
autograd's saved-tensor hooks) plus :data:`STATE_COPIES` copies of the sampled scalars (position, gradient,
drift, noise, proposal and the previous step's records). The chain batch is the largest ``c`` with
``base + c · per_chain`` within :data:`CUDA_FRACTION` of the free device memory (CUDA) or :data:`CPU_FRACTION` of
the available RAM (``MemAvailable`` of ``/proc/meminfo``), at least 1 and at most the chains of a slot. A run
that still runs out of CUDA memory halves its chain batches and repeats them (the same numbers: a chain's result
does not depend on its batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import grad_and_value, vmap

from .functional import FunctionalModel

__all__ = ["ChainMemory", "available_bytes", "choose_chain_batch", "measure_chain_memory"]

#: Copies of the ``[D]`` sampled scalars a chain holds during a step besides the model's activations.
STATE_COPIES = 8
#: Share of the free CUDA memory a chain batch may plan to use (the rest absorbs what the model misses).
CUDA_FRACTION = 0.8
#: Share of the available RAM a chain batch may plan to use on the CPU.
CPU_FRACTION = 0.5


@dataclass(frozen=True)
class ChainMemory:
    """``base + chains · per_chain`` bytes for a chain batch, and how it was obtained (``"measured"`` or
    ``"estimated"``)."""

    base: float
    per_chain: float
    how: str

    def chains_within(self, budget: float) -> int:
        """The most chains whose batch fits in ``budget`` bytes (at least 1)."""
        if self.per_chain <= 0:
            return 1 << 30
        return max(1, math.floor((budget - self.base) / self.per_chain))


def available_bytes(device: torch.device) -> float | None:
    """Free memory on ``device`` in bytes: CUDA's free memory, or ``MemAvailable`` on a Linux CPU (``None`` when
    unknown)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return float(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _saved_bytes(fn: Callable[[], torch.Tensor]) -> float:
    """Bytes of the distinct tensors that autograd saves for the backward of ``fn()``."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), t.device.index or 0)] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return float(sum(seen.values()))


def _estimate(fm: FunctionalModel, x, y) -> ChainMemory:
    theta = fm.w_star.detach().clone().requires_grad_(True)
    saved = _saved_bytes(lambda: fm.loss(theta, fm.frozen, fm.buffers, x, y))
    state = STATE_COPIES * fm.layout.dim * fm.w_star.element_size()
    return ChainMemory(base=0.0, per_chain=saved + state, how="estimated")


def _measure_cuda(fm: FunctionalModel, x, y) -> ChainMemory:
    step = vmap(grad_and_value(fm.loss_and_count, has_aux=True), in_dims=(0, None, None, None, None))
    peaks = []
    for chains in (1, 2):
        theta = fm.w_star.expand(chains, -1).clone()
        torch.cuda.synchronize(fm.device)
        torch.cuda.reset_peak_memory_stats(fm.device)
        start = torch.cuda.memory_allocated(fm.device)
        out = step(theta, fm.frozen, fm.buffers, x, y)
        torch.cuda.synchronize(fm.device)
        peaks.append(torch.cuda.max_memory_allocated(fm.device) - start)
        del out, theta
    state = STATE_COPIES * fm.layout.dim * fm.w_star.element_size()
    per_chain = max(peaks[1] - peaks[0], 0) + state
    return ChainMemory(base=max(peaks[0] - per_chain, 0.0), per_chain=float(per_chain), how="measured")


def measure_chain_memory(fm: FunctionalModel, x, y) -> ChainMemory:
    """The memory model of a chain batch on ``fm``'s device for batches like ``(x, y)``."""
    if fm.device.type == "cuda":
        return _measure_cuda(fm, x, y)
    return _estimate(fm, x, y)


def choose_chain_batch(fm: FunctionalModel, x, y, chains: int) -> tuple[int, ChainMemory, float | None]:
    """``chain_batch="auto"``: the most chains (at most ``chains``) whose batch fits the device's free memory;
    returns it with the memory model and the free bytes it was planned against."""
    model = measure_chain_memory(fm, x, y)
    free = available_bytes(fm.device)
    if free is None:
        return chains, model, None
    fraction = CUDA_FRACTION if fm.device.type == "cuda" else CPU_FRACTION
    return max(1, min(chains, model.chains_within(fraction * free))), model, free
