"""Per-chain random streams: Gaussian noise keyed on ``(seed, chain)`` alone.

Chain ``c`` of a run with master seed ``s`` owns one stream per purpose (:data:`NOISE_STREAM` for the Langevin
noise, :data:`START_STREAM` for an over-dispersed start), seeded from ``(s, c, purpose)`` by NumPy's
``SeedSequence`` (its hash mixes every bit of the entropy and the spawn key into the generator's state, so distinct
``(s, c, purpose)`` give distinct, statistically independent streams). The numbers of step ``t`` are the
``t``-th ``D`` numbers of the chain's stream:

- on the CPU (and any device other than CUDA), a NumPy ``Generator`` over ``PCG64`` (128-bit state; its standard
  normal is the ziggurat method), chains filled in parallel threads, the numbers then viewed as a tensor;
- on CUDA, a ``torch.Generator`` of the device (Philox, seeded with 64 bits) per chain, drawn in blocks whose shape
  depends on ``D`` only.

Nothing about a chain's numbers depends on which chains share its batch or its device slot, or on whether the step
is compiled (compiled steps take the noise as an input): per-chain results are bitwise equal across ``chain_batch``
and across devices of one kind. The numbers do depend on the kind of device (CPU or CUDA) and on the dtype family
(float64 runs draw float64 numbers, all others float32).

The noise is made a block of steps at a time (:func:`noise_block_steps`), outside any compiled graph: NumPy's
generator costs about 10 ns per number on one core of the development CPU, a quarter of the cost of the
counter-based Philox written in torch operations that lambdahat used before 0.3 (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

__all__ = [
    "NOISE_STREAM",
    "START_STREAM",
    "ChainNoise",
    "chain_sequence",
    "noise_block_steps",
    "resolve_seed",
    "start_noise",
]

#: The stream of the samplers' Langevin noise.
NOISE_STREAM = 0
#: The stream of the over-dispersed starting points (:func:`lambdahat.chains.start_positions`), so a start never
#: reuses a number of the Langevin noise.
START_STREAM = 1


def resolve_seed(seed: int | None, who: str = "sample") -> int:
    """The master seed: ``seed`` itself, or a fresh one from the OS when ``None`` (recorded in the result so that
    the run can be repeated); ``who`` names the caller in the error."""
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0] >> 1)
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"{who}: seed must be a non-negative int or None; got {seed!r}.")
    return int(seed)


def chain_sequence(seed: int, chain: int, stream: int = NOISE_STREAM) -> np.random.SeedSequence:
    """The ``SeedSequence`` of one chain's stream: a function of ``(seed, chain, stream)`` only."""
    return np.random.SeedSequence(int(seed), spawn_key=(int(chain), int(stream)))


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the numbers are drawn in: float64 for float64 runs, float32 for every other."""
    return torch.float64 if dtype == torch.float64 else torch.float32


#: The noise of several steps is made in one call, up to this many numbers per chain ...
NOISE_BLOCK_NUMBERS = 1 << 18
#: ... and never more than this many steps at once.
NOISE_BLOCK_STEPS = 64


def noise_block_steps(dim: int) -> int:
    """Steps of noise made per call, a function of ``D`` alone (CUDA's numbers depend on the shape of a draw)."""
    return max(1, min(NOISE_BLOCK_STEPS, NOISE_BLOCK_NUMBERS // max(dim, 1)))


_POOL: tuple[int, ThreadPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor | None:
    """Threads that fill the chains' blocks on the CPU (NumPy releases the GIL while it draws; the threads run no
    torch operation), or ``None`` on a single core or a single torch thread."""
    global _POOL
    workers = min(torch.get_num_threads(), os.cpu_count() or 1)
    if workers < 2:
        return None
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != workers:
            _POOL = (workers, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lambdahat-noise"))
        return _POOL[1]


class ChainNoise:
    """The noise ``[chains, D]`` of each step of a chain batch, made a block of steps at a time.

    Steps are read in order (:meth:`at` with a step not before the previous one; a step further on skips the
    numbers in between, as a run from the start would have drawn them).

    Parameters
    ----------
    seed:
        Master seed.
    chains:
        Global indices of the chains in this batch.
    dim:
        ``D``, the number of sampled scalars.
    device, dtype:
        Where and in which precision the noise is delivered.
    stream:
        Which of the chain's streams (:data:`NOISE_STREAM` for the samplers).

    Examples
    --------
    >>> together = ChainNoise(7, [0, 1, 2], 5, "cpu", torch.float32)
    >>> alone = ChainNoise(7, [1], 5, "cpu", torch.float32)
    >>> torch.equal(together.at(3)[1], alone.at(3)[0])
    True
    """

    def __init__(
        self,
        seed: int,
        chains: Sequence[int],
        dim: int,
        device: torch.device | str,
        dtype: torch.dtype,
        stream: int = NOISE_STREAM,
    ) -> None:
        self.device = torch.device(device)
        self.dim, self.dtype, self.chains = int(dim), dtype, len(chains)
        self.block = noise_block_steps(self.dim)
        self.first = 0
        self.buffer: torch.Tensor | None = None
        self._previous: tuple[int, torch.Tensor] | None = None
        work = _work_dtype(dtype)
        sequences = [chain_sequence(seed, c, stream) for c in chains]
        if self.device.type == "cuda":
            self._torch = [
                torch.Generator(self.device).manual_seed(int(s.generate_state(1, np.uint64)[0]))
                for s in sequences
            ]
            self._numpy = None
        else:
            self._numpy = [np.random.Generator(np.random.PCG64(s)) for s in sequences]
            self._torch = None
        self._np_dtype = np.float64 if work == torch.float64 else np.float32
        self._work = work

    def _draw(self) -> torch.Tensor:
        """The next block ``[block, chains, D]`` of every chain's stream."""
        shape = (self.block, self.dim)
        if self._torch is not None:
            draws = [
                torch.randn(shape, generator=g, device=self.device, dtype=self._work) for g in self._torch
            ]
            return torch.stack(draws, dim=1).to(self.dtype)
        out = np.empty((self.block, self.chains, self.dim), dtype=self._np_dtype)

        def fill(c: int) -> None:
            out[:, c] = self._numpy[c].standard_normal(shape, dtype=self._np_dtype)

        pool = _pool() if self.chains > 1 and self.block * self.dim >= 4096 else None
        if pool is None:
            for c in range(self.chains):
                fill(c)
        else:
            list(pool.map(fill, range(self.chains)))
        return torch.from_numpy(out).to(device=self.device, dtype=self.dtype)

    def at(self, step: int) -> torch.Tensor:
        """The noise of step ``step``, ``[chains, D]`` (contiguous); the block before the current one stays
        readable (a chunk that reached into the next block may be taken again step by step)."""
        if self.buffer is None:
            self.buffer = self._draw()
        if self._previous is not None and self._previous[0] <= step < self.first:
            return self._previous[1][step - self._previous[0]]
        if step < self.first:
            raise ValueError(f"ChainNoise: steps are read in order; step {step} comes before {self.first}.")
        while step >= self.first + self.block:
            self._previous = (self.first, self.buffer)
            self.first += self.block
            self.buffer = self._draw()
        return self.buffer[step - self.first]

    def steps(self, first: int, count: int) -> torch.Tensor:
        """The noise of steps ``first … first + count − 1``, ``[count, chains, D]``."""
        if self.buffer is not None and first >= self.first and first + count <= self.first + self.block:
            return self.buffer[first - self.first : first - self.first + count]
        return torch.stack([self.at(first + k) for k in range(count)])


def start_noise(
    seed: int, chains: Sequence[int], dim: int, device: torch.device | str, dtype: torch.dtype
) -> torch.Tensor:
    """Standard normal numbers ``[len(chains), D]`` from each chain's :data:`START_STREAM` (made on the host, so
    they are the same on every device)."""
    np_dtype = np.float64 if _work_dtype(dtype) == torch.float64 else np.float32
    rows = [
        np.random.Generator(np.random.PCG64(chain_sequence(seed, c, START_STREAM))).standard_normal(
            int(dim), dtype=np_dtype
        )
        for c in chains
    ]
    return torch.from_numpy(np.stack(rows) if rows else np.empty((0, dim), np_dtype)).to(device, dtype)
