"""Per-chain random streams.

Chain ``c`` of a run with master seed ``s`` draws all its noise from one ``torch.Generator`` seeded with a value
derived from ``(s, c)`` alone (NumPy's ``SeedSequence`` mixing), so a chain's noise does not depend on which other
chains share its batch or its device.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

__all__ = ["ChainNoise", "chain_seed", "noise_block_steps", "resolve_seed"]


def resolve_seed(seed: int | None) -> int:
    """The master seed: ``seed`` itself, or a fresh one from the OS when ``None`` (recorded in the result so that
    the run can be repeated)."""
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0] >> 1)
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"estimate_llc: seed must be a non-negative int or None; got {seed!r}.")
    return int(seed)


def chain_seed(seed: int, chain: int) -> int:
    """Seed of chain ``chain``'s generator: a function of ``(seed, chain)`` only."""
    return int(np.random.SeedSequence(seed, spawn_key=(chain,)).generate_state(1, dtype=np.uint64)[0] >> 1)


#: Noise is drawn for several steps at once, up to this many numbers per chain (a block of 4 MiB in float32).
NOISE_BLOCK_NUMBERS = 1 << 20
#: ... and never more than this many steps at once.
NOISE_BLOCK_STEPS = 64


#: Refill the chains' blocks in parallel threads (CPU) when a block holds at least this many numbers.
PARALLEL_FILL_NUMBERS = 1 << 16
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _refill_pool() -> ThreadPoolExecutor | None:
    global _POOL
    workers = min(torch.get_num_threads(), os.cpu_count() or 1)
    if workers < 2:
        return None
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lambdahat-noise")
    return _POOL


def noise_block_steps(dim: int) -> int:
    """Steps of noise drawn per refill: a function of ``D`` only, so a chain's stream never depends on how chains
    are batched or spread over devices."""
    return max(1, min(NOISE_BLOCK_STEPS, NOISE_BLOCK_NUMBERS // max(dim, 1)))


class ChainNoise:
    """Standard normal noise ``[chains, D]``, one independent stream per chain.

    Each chain's generator fills ``noise_block_steps(D)`` steps at a time (one ``randn`` call per chain per
    block instead of per step); step ``t`` of chain ``c`` always receives numbers
    ``[t·D, (t+1)·D)`` of the block sequence of ``(seed, c)``.

    Parameters
    ----------
    seed:
        Master seed.
    chains:
        Global indices of the chains in this batch.
    dim:
        ``D``, the number of sampled scalars.
    device, dtype:
        Where and in which precision the noise is made.
    """

    def __init__(
        self, seed: int, chains: Sequence[int], dim: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.generators = [
            torch.Generator(device=device).manual_seed(chain_seed(seed, int(c))) for c in chains
        ]
        self.dim, self.device, self.dtype = dim, torch.device(device), dtype
        self.block = noise_block_steps(dim)
        self.buffer = torch.empty(len(self.generators), self.block, dim, device=self.device, dtype=dtype)
        self.position = self.block

    def _fill(self, row: torch.Tensor, gen: torch.Generator) -> None:
        torch.randn(
            self.block * self.dim, generator=gen, device=self.device, dtype=self.dtype, out=row.view(-1)
        )

    def draw(self) -> torch.Tensor:
        """One step's noise, shape ``[chains, D]`` (a view into the current block)."""
        if self.position == self.block:
            parallel = self.device.type == "cpu" and self.buffer.numel() >= PARALLEL_FILL_NUMBERS
            pool = _refill_pool() if parallel else None
            if pool is None:
                for row, gen in zip(self.buffer, self.generators):
                    self._fill(row, gen)
            else:  # a CPU generator runs single-threaded: fill the chains' rows concurrently, each from its stream
                list(pool.map(self._fill, self.buffer, self.generators))
            self.position = 0
        out = self.buffer[:, self.position]
        self.position += 1
        return out
