"""Per-chain random streams: counter-based Gaussian noise keyed on ``(seed, chain)``.

Chain ``c`` of a run with master seed ``s`` has a 64-bit key derived from ``(s, c)`` alone (NumPy's
``SeedSequence`` mixing). The standard normal numbers of its step ``t`` are a pure function of that key and of
``t``: the Philox4x32-10 block cipher (Salmon, Moraes, Dror & Shaw 2011, "Parallel random numbers: as easy as
1, 2, 3") maps the 128-bit counter ``(j, t mod 2³², ⌊t / 2³²⌋, stream)`` under the chain's key to four 32-bit
words, which the Box–Muller transform turns into the numbers ``4j … 4j+3`` of the step. Nothing is stateful: a
chain's noise does not depend on which chains share its batch or its device, on how many steps are generated at
once, or on whether the step is compiled, and the generator runs inside the compiled step, fused into the update
(no noise buffer, no generator objects).

Distinct counters under one key give distinct outputs (Philox is a bijection of the counter for each key), so the
numbers of one chain never repeat within ``2³²`` steps of ``4·2³²`` numbers each; distinct keys give streams that
pass the TestU01 BigCrush battery as independent (the cited paper).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

__all__ = [
    "NOISE_STREAM",
    "START_STREAM",
    "ChainNoise",
    "chain_key",
    "chain_keys",
    "gaussian",
    "gaussian_eager",
    "noise_block_steps",
    "philox4x32",
    "resolve_seed",
]

#: The ``stream`` word of the counter used by the samplers' Langevin noise (other words are free for other uses).
NOISE_STREAM = 0
#: The ``stream`` word of the over-dispersed starting points (:func:`lambdahat.chains.start_positions`), so a start
#: never reuses a number of the Langevin noise.
START_STREAM = 1

_MASK = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # Philox4x32 multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments (golden ratio, sqrt(3) - 1)
_ROUNDS = 10


def resolve_seed(seed: int | None) -> int:
    """The master seed: ``seed`` itself, or a fresh one from the OS when ``None`` (recorded in the result so that
    the run can be repeated)."""
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0] >> 1)
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"estimate_llc: seed must be a non-negative int or None; got {seed!r}.")
    return int(seed)


def chain_key(seed: int, chain: int) -> tuple[int, int]:
    """The Philox key of chain ``chain``: two 32-bit words, a function of ``(seed, chain)`` only."""
    words = np.random.SeedSequence(seed, spawn_key=(chain,)).generate_state(2, dtype=np.uint32)
    return int(words[0]), int(words[1])


def chain_keys(seed: int, chains: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """Keys of the chains ``chains`` (global indices) as an ``int64`` tensor ``[len(chains), 2]`` on ``device``."""
    keys = [chain_key(seed, int(c)) for c in chains]
    return torch.tensor(keys, dtype=torch.int64, device=device).reshape(len(keys), 2)


def _mulhilo(x: torch.Tensor, multiplier: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``multiplier · x`` (``x`` holds uint32 values in int64; the product's bits
    are those of the wrapping 64-bit product)."""
    product = x * multiplier
    return (product >> 32) & _MASK, product & _MASK


def philox4x32(
    c0: torch.Tensor,
    c1: torch.Tensor,
    c2: torch.Tensor,
    c3: torch.Tensor,
    k0: torch.Tensor,
    k1: torch.Tensor,
    rounds: int = _ROUNDS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Philox4x32 block function: counter words ``c0..c3`` under key ``(k0, k1)`` to four 32-bit words.

    All arguments hold uint32 values in ``int64`` tensors that broadcast together. One round is

    .. math::

        (c_0, c_1, c_2, c_3) \\leftarrow \\big(\\mathrm{hi}(M_1 c_2) \\oplus c_1 \\oplus k_0,\\;
        \\mathrm{lo}(M_1 c_2),\\; \\mathrm{hi}(M_0 c_0) \\oplus c_3 \\oplus k_1,\\; \\mathrm{lo}(M_0 c_0)\\big)

    with the key bumped by the Weyl constants between rounds; 10 rounds is the published default (its known-answer
    vectors are checked in the tests).
    """
    for r in range(rounds):
        if r:
            k0 = (k0 + _W0) & _MASK
            k1 = (k1 + _W1) & _MASK
        hi0, lo0 = _mulhilo(c0, _M0)
        hi1, lo1 = _mulhilo(c2, _M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def _open_unit(word: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A uniform number in ``(0, 1)`` from the top 24 bits of a 32-bit word: ``(⌊w / 2⁸⌋ + ½) / 2²⁴``."""
    return ((word >> 8).to(dtype) + 0.5) * (1.0 / 16777216.0)


def gaussian(
    keys: torch.Tensor, steps: torch.Tensor, dim: int, dtype: torch.dtype, stream: int = NOISE_STREAM
) -> torch.Tensor:
    """Standard normal numbers of the chains with keys ``keys`` ``[C, 2]`` at the steps ``steps``.

    Parameters
    ----------
    keys:
        From :func:`chain_keys`.
    steps:
        An ``int64`` tensor: a scalar (one step) or ``[K]`` (``K`` steps at once; identical numbers either way).
    dim:
        Numbers per chain and step, ``D``.
    dtype:
        Of the result; the Box–Muller transform runs in float64 for float64 and in float32 otherwise.
    stream:
        The counter's fourth word (:data:`NOISE_STREAM` for the samplers).

    Returns
    -------
    ``[C, D]`` for a scalar step, ``[K, C, D]`` for ``K`` steps. Number ``4j + i`` of a step is word ``i`` of
    ``philox4x32((j, t mod 2³², ⌊t/2³²⌋, stream), key)`` through Box–Muller:
    ``(r cos 2πu₁, r sin 2πu₁, r' cos 2πu₃, r' sin 2πu₃)`` with ``r = sqrt(-2 log u₀)``, ``r' = sqrt(-2 log u₂)``.
    """
    single = steps.dim() == 0
    t = steps.reshape(-1, 1, 1)
    blocks = (dim + 3) // 4
    j = torch.arange(blocks, dtype=torch.int64, device=keys.device).reshape(1, 1, blocks)
    k0, k1 = keys[:, 0].reshape(1, -1, 1), keys[:, 1].reshape(1, -1, 1)
    w0, w1, w2, w3 = philox4x32(j, t & _MASK, (t >> 32) & _MASK, torch.full_like(t, stream), k0, k1)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    two_pi = 2.0 * math.pi
    r0 = torch.sqrt(-2.0 * torch.log(_open_unit(w0, work)))
    r1 = torch.sqrt(-2.0 * torch.log(_open_unit(w2, work)))
    a0, a1 = two_pi * _open_unit(w1, work), two_pi * _open_unit(w3, work)
    z = torch.stack([r0 * torch.cos(a0), r0 * torch.sin(a0), r1 * torch.cos(a1), r1 * torch.sin(a1)], dim=-1)
    z = z.reshape(z.shape[0], z.shape[1], 4 * blocks)[..., :dim].to(dtype)
    return z[0] if single else z


#: Eager runs generate the noise of several steps in one call, up to this many numbers per chain ...
NOISE_BLOCK_NUMBERS = 1 << 18
#: ... and never more than this many steps at once.
NOISE_BLOCK_STEPS = 64


def noise_block_steps(dim: int) -> int:
    """Steps of noise an eager run generates per call (the numbers do not depend on it)."""
    return max(1, min(NOISE_BLOCK_STEPS, NOISE_BLOCK_NUMBERS // max(dim, 1)))


def _philox_in_place(c0, c1, c2, c3, k0, k1) -> None:
    """:func:`philox4x32` overwriting its four counter tensors with the output (eager runs: no allocation per
    operation; the same integer operations, so the same words)."""
    p0, p1 = torch.empty_like(c0), torch.empty_like(c0)
    for r in range(_ROUNDS):
        if r:
            k0 = (k0 + _W0) & _MASK
            k1 = (k1 + _W1) & _MASK
        torch.mul(c0, _M0, out=p0)
        torch.mul(c2, _M1, out=p1)
        torch.bitwise_right_shift(p1, 32, out=c0)
        c0.bitwise_and_(_MASK).bitwise_xor_(c1).bitwise_xor_(k0)
        torch.bitwise_and(p1, _MASK, out=c1)
        torch.bitwise_right_shift(p0, 32, out=c2)
        c2.bitwise_and_(_MASK).bitwise_xor_(c3).bitwise_xor_(k1)
        torch.bitwise_and(p0, _MASK, out=c3)


#: Eager generation works through slices of at most this many counters (4 numbers each) at a time: its temporary
#: integer tensors stay within a few MiB whatever the model's size, and each operation stays below torch's parallel
#: grain size (32,768 elements), where a thread barrier per operation costs more than the work (measured up to 100
#: times slower with 2 threads on a 2-core machine with another busy process; 21–33 ns per number this way).
EAGER_SLICE_COUNTERS = 30_000


def _fill_slice(z, t, k0, k1, lo: int, hi: int, stream: int) -> None:
    """Numbers of the counters ``j ∈ [lo, hi)`` of every step and chain into ``z[:, :, lo:hi]`` ``[steps, C, j, 4]``."""
    steps, chains, device, work = z.shape[0], z.shape[1], z.device, z.dtype
    shape = (steps, chains, hi - lo)
    words = [
        torch.arange(lo, hi, dtype=torch.int64, device=device).expand(shape).contiguous(),
        (t & _MASK).expand(shape).contiguous(),
        ((t >> 32) & _MASK).expand(shape).contiguous(),
        torch.full(shape, stream, dtype=torch.int64, device=device),
    ]
    _philox_in_place(*words, k0, k1)
    u0, u1, u2, u3 = (w.bitwise_right_shift_(8).to(work).add_(0.5).mul_(1.0 / 16777216.0) for w in words)
    u0.log_().mul_(-2.0).sqrt_()
    u2.log_().mul_(-2.0).sqrt_()
    u1.mul_(2.0 * math.pi)
    u3.mul_(2.0 * math.pi)
    out = z[:, :, lo:hi]
    torch.mul(u0, torch.cos(u1), out=out[..., 0])
    torch.mul(u0, u1.sin_(), out=out[..., 1])
    torch.mul(u2, torch.cos(u3), out=out[..., 2])
    torch.mul(u2, u3.sin_(), out=out[..., 3])


def _slice_workers(device: torch.device, slices: int) -> int:
    """Threads for the slices of an eager block: as many as torch's intra-op threads and the cores allow on the CPU
    (each slice's operations are too small for torch to parallelize), one elsewhere."""
    if device.type != "cpu" or slices < 2:
        return 1
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1, slices))


def gaussian_eager(
    keys: torch.Tensor, first_step: int, steps: int, dim: int, dtype: torch.dtype, stream: int = NOISE_STREAM
) -> torch.Tensor:
    """``gaussian(keys, arange(first_step, first_step + steps), dim, dtype)`` ``[steps, C, D]``, computed with
    in-place operations over slices of the counters, on the CPU in parallel threads (several times faster without
    compilation, temporary memory bounded by :data:`EAGER_SLICE_COUNTERS` per thread; the same numbers)."""
    blocks, chains, device = (dim + 3) // 4, keys.shape[0], keys.device
    work = torch.float64 if dtype == torch.float64 else torch.float32
    z = torch.empty(steps, chains, blocks, 4, device=device, dtype=work)
    t = torch.arange(first_step, first_step + steps, dtype=torch.int64, device=device).reshape(-1, 1, 1)
    k0, k1 = keys[:, 0].reshape(1, -1, 1), keys[:, 1].reshape(1, -1, 1)
    width = max(1, EAGER_SLICE_COUNTERS // (steps * chains))
    bounds = [(lo, min(blocks, lo + width)) for lo in range(0, blocks, width)]
    workers = _slice_workers(device, len(bounds))
    if workers == 1:
        for lo, hi in bounds:
            _fill_slice(z, t, k0, k1, lo, hi, stream)
    else:
        # A pool per block, not one kept for the process: idle threads that have run torch operations keep their
        # OpenMP state, and later parallel work of the process (a compiled step) ran 1.3-1.6x slower while they
        # lived (benchmarks/RESULTS.md). Starting two threads costs well under a millisecond per block.
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lambdahat-noise") as pool:
            list(pool.map(lambda b: _fill_slice(z, t, k0, k1, b[0], b[1], stream), bounds))
    return z.reshape(steps, chains, 4 * blocks)[..., :dim].to(dtype)


class ChainNoise:
    """The noise ``[chains, D]`` of any step for eager runs, generated a block of steps at a time.

    Step ``t`` of chain ``c`` receives ``gaussian(key(seed, c), t, D)``, what a compiled step computes inside its
    graph; blocks only spread the per-call overhead of the generator over several steps.

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
        self, seed: int, chains: Sequence[int], dim: int, device: torch.device | str, dtype: torch.dtype
    ) -> None:
        self.keys = chain_keys(seed, chains, device)
        self.dim, self.dtype = dim, dtype
        self.block = noise_block_steps(dim)
        self.first = 0
        self.buffer: torch.Tensor | None = None

    def at(self, step: int) -> torch.Tensor:
        """The noise of step ``step``, ``[chains, D]``."""
        if self.buffer is None or not self.first <= step < self.first + self.block:
            self.first = step - step % self.block
            self.buffer = gaussian_eager(self.keys, self.first, self.block, self.dim, self.dtype)
        return self.buffer[step - self.first]
