"""The chain runner: burn-in and draws for a batch of chains, vmapped, optionally compiled, trace kept on device.

One step for all ``C`` chains of a batch is a single call of

.. code-block:: text

    grad, loss = vmap(grad_and_value(loss_fn))(theta[C, D], x, y)     # one batched forward+backward
    noise = gaussian(keys[C], t, D)                                    # counter-based, see lambdahat.rng
    state, info = sampler.step(state, loss, grad, noise, hyper, ctx)

whose loss is the recorded draw. A compiled step generates the noise inside its graph, fused into the update;
an eager step receives it from :class:`~lambdahat.rng.ChainNoise`, which makes the same numbers a block of steps
at a time. The per-step diagnostics (``Info``) are written into a ``[fields, C, steps]`` tensor on the device and
copied to the host once, at the end.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import grad_and_value, vmap
from torch.utils._pytree import tree_map

from .config import Schedule
from .data import DataFeed
from .functional import FunctionalModel
from .rng import START_STREAM, ChainNoise, chain_keys, gaussian, gaussian_eager, noise_block_steps
from .samplers import Context, Hyper, Info, Sampler
from .samplers.base import project

__all__ = [
    "CHUNK_STEPS",
    "COMPILE_SECONDS_GUESS",
    "Schedule",
    "StepFunction",
    "StepNoise",
    "chunk_steps_for",
    "chunk_steps_of",
    "compile_kind",
    "compile_pays",
    "compiled_before",
    "compiled_step_available",
    "make_step",
    "run_chain_batch",
    "start_positions",
    "static_compiles",
]

#: What a first ``torch.compile`` of the step is assumed to cost when deciding whether compiling pays
#: (measured 15–40 s on a 2-core CPU for the benchmark models; see benchmarks/RESULTS.md).
COMPILE_SECONDS_GUESS = 20.0
#: Compile under ``compile="auto"`` when the eager time of the planned work exceeds this multiple of the compile
#: cost (break-even for a compiled step 1.5x faster than eager).
AUTO_COMPILE_FACTOR = 3.0
#: Compiled runs take this many steps per call (:func:`make_chunk`) ...
CHUNK_STEPS = 8
#: ... when they sample at most this many scalars (larger models spend their time in arithmetic, not overhead) ...
CHUNK_MAX_DIM = 1 << 16
#: ... and the planned work holds at least this many steps: a chunk compiles several times longer than one step with
#: a cold inductor cache (105–127 s against 10–40 s on a 2-core CPU, benchmarks/RESULTS.md) and saves 0.1–0.3 ms per
#: step on the small models, so a first chunk pays only over long sweeps ...
CHUNK_MIN_STEPS = 100_000
#: ... or this many when a chunk of the kind was compiled on this machine before (the compile record): its graph then
#: comes from inductor's caches, but tracing the 8 steps still costs several seconds more than one step (modular
#: addition: 13.7 s against 4.6 s for a first compiled call in a fresh process).
CHUNK_MIN_STEPS_WARM = 20_000


def chunk_steps_for(dim: int, planned_steps: int | None = None, warm: bool = False) -> int:
    """Steps per compiled call for a model of ``dim`` sampled scalars and ``planned_steps`` steps of planned work
    (``None``: as many as pays, i.e. chunks for a small model); ``warm``: a chunk of this kind was compiled on this
    machine before (:func:`compiled_before`)."""
    if dim > CHUNK_MAX_DIM:
        return 1
    threshold = CHUNK_MIN_STEPS_WARM if warm else CHUNK_MIN_STEPS
    if planned_steps is None or planned_steps >= threshold:
        return CHUNK_STEPS
    return 1


def chunk_steps_of(
    fm: FunctionalModel, sampler: Sampler, planned_steps: int | None, static_shapes: bool = True
) -> int:
    """:func:`chunk_steps_for` this model and sampler, warm when the compile record (:func:`compiled_before`)
    holds a chunk of their kind."""
    dim = fm.layout.dim
    kind = compile_kind(fm, sampler, CHUNK_STEPS, static_shapes)
    warm = dim <= CHUNK_MAX_DIM and compiled_before(kind) is not None
    return chunk_steps_for(dim, planned_steps, warm)


def make_step(
    fm: FunctionalModel,
    sampler: Sampler,
    observe: bool = False,
    micro_batches: int = 1,
    noise_in_graph: bool = False,
) -> Callable:
    """The pure step ``(state, frozen, buffers, x, y, noise, hyper, ctx[, ox, oy]) -> (state, info, count)`` for all
    chains, with ``info`` the fields of :class:`~lambdahat.samplers.Info` stacked, ``[fields, chains]``.

    ``noise`` is the standard normal ``[chains, D]`` of the step, or with ``noise_in_graph`` the pair
    ``(keys, t)`` (the chains' keys ``[chains, 2]`` and the step, a 0-d ``int64`` tensor) from which the step
    generates it (:func:`~lambdahat.rng.gaussian`: the same numbers).

    ``count`` is the number of samples (tokens) that counted in the batch whose loss was recorded (the weight of the
    draw, see :class:`~lambdahat.functional.Objective`). With ``observe`` the recorded loss (``info.loss``) is the
    loss on the observable batch ``(ox, oy)`` at the same positions (data-refined LLC), while the sampler is still
    driven by ``(x, y)``. In train mode the chains draw independent dropout masks (``vmap`` randomness
    ``"different"``, from torch's global generator).

    With ``micro_batches = k > 1`` (gradient accumulation), ``x``, ``y`` (and ``ox``, ``oy``) are tuples of ``k``
    micro-batches, and the step sees them as one batch: with ``c_i`` the counted samples of micro-batch ``i``,

    .. math::

        L_B = \\frac{\\sum_i c_i L_{B_i}}{\\sum_i c_i}, \\qquad \\nabla L_B = \\frac{\\sum_i c_i \\nabla L_{B_i}}{\\sum_i c_i}

    exactly what one batch holding all of them gives, with the memory of one micro-batch.
    """
    in_dims = (0, None, None, None, None)
    randomness = "different" if fm.model_mode == "train" else "error"
    grad_fn = vmap(grad_and_value(fm.loss_and_count, has_aux=True), in_dims=in_dims, randomness=randomness)
    loss_fn = vmap(fm.loss_and_count, in_dims=in_dims, randomness=randomness)

    def accumulate(fn, theta, frozen, buffers, xs, ys, with_grad: bool):
        total_grad, total_loss, total_count = None, None, None
        for x, y in zip(xs, ys):
            if with_grad:
                grad, (loss, count) = fn(theta, frozen, buffers, x, y)
                weighted = grad * count.unsqueeze(-1)
                total_grad = weighted if total_grad is None else total_grad + weighted
            else:
                loss, count = fn(theta, frozen, buffers, x, y)
            total_loss = loss * count if total_loss is None else total_loss + loss * count
            total_count = count if total_count is None else total_count + count
        scale = 1.0 / total_count
        grad = None if total_grad is None else total_grad * scale.unsqueeze(-1)
        return grad, total_loss * scale, total_count

    def chain_step(state, frozen, buffers, x, y, noise, hyper, ctx, ox=None, oy=None):
        if noise_in_graph:
            keys, t = noise
            noise = gaussian(keys, t, fm.layout.dim, fm.param_dtype)
        if micro_batches == 1:
            grad, (loss, count) = grad_fn(state.theta, frozen, buffers, x, y)
        else:
            grad, loss, count = accumulate(grad_fn, state.theta, frozen, buffers, x, y, with_grad=True)
        new_state, info = sampler.step(state, loss, grad, noise, hyper, ctx)
        if observe:
            with torch.no_grad():
                if micro_batches == 1:
                    observed, count = loss_fn(state.theta, frozen, buffers, ox, oy)
                else:
                    _, observed, count = accumulate(
                        loss_fn, state.theta, frozen, buffers, ox, oy, with_grad=False
                    )
            info = info._replace(loss=observed)
        return new_state, torch.stack([field.to(fm.loss_dtype) for field in info]), count[0]

    return chain_step


def make_chunk(fm: FunctionalModel, sampler: Sampler, steps: int) -> Callable:
    """``steps`` consecutive steps in one function
    ``(state, frozen, buffers, xs, ys, (keys, t), hyper, ctx) -> (state, info [fields, chains, steps],
    counts [steps])``, with ``xs``, ``ys`` the ``steps`` batches stacked (:func:`stack_batches`) and the noise of
    step ``t + k`` made in the graph: compiled, the per-step Python, guard and launch overhead is paid once per
    chunk, and consecutive steps fuse (the same arithmetic as ``steps`` calls of :func:`make_step`)."""
    one = make_step(fm, sampler, noise_in_graph=True)

    def chunk(state, frozen, buffers, xs, ys, noise, hyper, ctx):
        keys, t = noise
        infos, counts = [], []
        for k in range(steps):
            x, y = tree_map(lambda leaf, k=k: leaf[k], xs), tree_map(lambda leaf, k=k: leaf[k], ys)
            state, info, count = one(state, frozen, buffers, x, y, (keys, t + k), hyper, ctx)
            infos.append(info)
            counts.append(count)
        return state, torch.stack(infos, dim=-1), torch.stack(counts)

    return chunk


def stack_batches(batches: Sequence) -> object:
    """Batches of one structure and shape stacked leaf by leaf into one of a leading dimension ``len(batches)``:
    a chunk's inputs are then a few fresh tensors, never views of one another (the data feed cuts batches from
    one gathered block, and inputs that share memory make torch.compile build another, much slower, graph)."""
    return tree_map(lambda *leaves: torch.stack(leaves), *batches)


def make_recorder(fm: FunctionalModel) -> Callable:
    """``(theta [C, D], frozen, buffers, x, y) -> [C, B(, T)]`` per-sample (per-token) losses of all chains."""
    randomness = "different" if fm.model_mode == "train" else "error"
    per_sample = vmap(fm.per_sample_losses, in_dims=(0, None, None, None, None), randomness=randomness)

    def record(theta, frozen, buffers, x, y):
        with torch.no_grad():
            return per_sample(theta, frozen, buffers, x, y)

    return record


class StepNoise:
    """The noise of one chain batch at its current step, for an eager step (the numbers, from
    :class:`~lambdahat.rng.ChainNoise`) or a compiled one (the chains' keys and the step, from which the compiled
    graph makes the same numbers). :meth:`advance` moves to the next step.

    With ``coarsen = k`` (eager steps only) step ``t`` receives ``(ξ_{kt} + … + ξ_{kt+k−1}) / sqrt(k)``, the
    normalized sum of the noise of ``k`` consecutive steps of the uncoarsened chain: a chain at step ``kε`` driven by
    it follows the same Brownian path as the chain at ε (synchronous coupling), so the difference of the two
    estimates, the step check of :mod:`lambdahat.accuracy`, is far less noisy than that of independent runs. Such a
    chain also takes the batches ``kt`` of the uncoarsened one (:func:`run_chain_batch` skips the others), so both
    see the same data at the same sampled time, and its gradient noise is that of one batch at step ``kε``: the
    step check measures the minibatch noise's share of the step bias too.
    """

    def __init__(
        self,
        seed: int,
        chains: Sequence[int],
        dim: int,
        device: torch.device,
        dtype: torch.dtype,
        coarsen: int = 1,
    ):
        self.step = 0
        self.coarsen = int(coarsen)
        self._eager = ChainNoise(seed, chains, dim, device, dtype)
        self.keys = self._eager.keys
        self._device = device
        self._t: torch.Tensor | None = None

    def eager(self) -> torch.Tensor:
        if self.coarsen == 1:
            return self._eager.at(self.step)
        first = self.coarsen * self.step
        total = sum(self._eager.at(first + j) for j in range(self.coarsen))
        return total * (1.0 / math.sqrt(self.coarsen))

    def in_graph(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.coarsen != 1:
            raise RuntimeError("StepNoise: coarsened noise is made by eager steps only (compile=False).")
        if self._t is None:
            self._t = torch.tensor(self.step, dtype=torch.int64, device=self._device)
        return self.keys, self._t

    def advance(self, steps: int = 1) -> None:
        self.step += steps
        if self._t is not None:
            self._t.add_(steps)


#: Compiled entries one step function may hold (static graphs: one per model architecture, batch shape and sampler
#: met in the process) before torch would run it eagerly; torch's default is 8.
RECOMPILE_LIMIT = 64


@functools.cache
def static_compiles() -> Callable[[], contextlib.AbstractContextManager] | None:
    """A context under which dynamo compiles static graphs (no automatic dynamic shapes), or ``None`` where this
    torch lacks the two settings (then :func:`compile_step` uses ``dynamic=False``). Looked up on first use, so
    that ``import lambdahat`` does not import dynamo (about a second; a run's first vmapped step imports it)."""
    try:
        from torch._dynamo import config
    except Exception:  # no dynamo
        return None
    if not all(
        hasattr(config, name) for name in ("automatic_dynamic_shapes", "assume_static_by_default", "patch")
    ):
        return None
    return lambda: config.patch(automatic_dynamic_shapes=False, assume_static_by_default=True)


def compile_step(fn: Callable, static_shapes: bool) -> Callable:
    """``torch.compile(fn)``, to be called under :func:`static_compiles` when the batch shapes are known to stay
    fixed.

    ``static_shapes`` (batches from a TensorDataset: one shape, and a pass's last): every batch shape and model gets
    its own static graph, never the slower dynamic-shape graph that torch's automatic dynamic shapes build when the
    same function meets a second shape in one process (a deep linear network's first chunk took 117 s to compile
    after two other models had run). :class:`StepFunction` makes every call that may compile (a shape it has not
    seen) under :func:`static_compiles`, and the others without it: ``torch.compile(dynamic=False)`` does the same
    by switching dynamo's settings on every call, which cost 22-36 µs per step (measured on a model of 10
    parameters, whose whole step takes 145-170 µs). Where torch lacks those settings, ``dynamic=False``. Fresh model
    objects of one architecture still share a graph (a checkpoint sweep compiles once). With many models in one
    process the entries add up, so the limit past which torch would silently run the step eagerly is raised to
    :data:`RECOMPILE_LIMIT` where torch (≥ 2.13) takes a limit per compiled function (this costs nothing per call).
    Otherwise (batches whose shapes may vary, e.g. token sequences padded to the longest of each batch) torch's
    automatic dynamic shapes, so that a new length does not mean a new compile.
    """
    if not static_shapes:
        return torch.compile(fn)
    options: dict[str, object] = {} if static_compiles() is not None else {"dynamic": False}
    if "recompile_limit" in inspect.signature(torch.compile).parameters:
        options["recompile_limit"] = RECOMPILE_LIMIT
    return torch.compile(fn, **options)


def _shape_key(state, x, y) -> tuple:
    """What decides whether a static step needs another graph: the chains' state shape and the batch's shapes."""
    return (tuple(state.theta.shape), _shapes(x), _shapes(y))


_COMPILE_LOCK = threading.Lock()
# caller's model object -> {signature: compiled step (its closure holds the functional model it traced)}
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class StepFunction:
    """The step of one device: eager, or compiled with an eager fallback that warns once.

    Compiled steps are kept per (caller's model object, signature) for the life of the process, so later calls on
    the same model (a grid search, a checkpoint sweep that loads weights into one model, a benchmark) reuse them;
    inductor's on-disk caches make a compile in a new process cheaper too.
    """

    def __init__(
        self,
        fm: FunctionalModel,
        sampler: Sampler,
        compiled: bool,
        model_key=None,
        signature=None,
        observe: bool = False,
        micro_batches: int = 1,
        chunk_steps: int = 1,
        static_shapes: bool = False,
    ):
        self.kind = compile_kind(fm, sampler, chunk_steps, static_shapes)
        self.eager = make_step(fm, sampler, observe, micro_batches)
        self.micro_batches = micro_batches
        self.compiled_fn = None
        self.chunk_fn = None
        self.first_call = True
        self.compile_seconds = 0.0
        self._cache = _COMPILED.setdefault(model_key, {}) if model_key is not None else {}
        self._signature = signature
        self._chunk_first = True
        # static graphs: the shapes met so far; a call with another one may compile, so it runs under static_compiles()
        self._static = compiled and static_shapes and static_compiles() is not None
        self._seen: set[tuple] = set()
        if compiled:
            self.compiled_fn = self._cache.get(signature)
            if self.compiled_fn is not None:
                self.first_call = False
            else:
                self.compiled_fn = self._cache[signature] = compile_step(
                    make_step(fm, sampler, observe, micro_batches, noise_in_graph=True), static_shapes
                )
            if chunk_steps > 1 and not observe and micro_batches == 1:
                key = (signature, "chunk", chunk_steps)
                self.chunk_fn = self._cache.get(key)
                if self.chunk_fn is not None:
                    self._chunk_first = False
                else:
                    self.chunk_fn = self._cache[key] = compile_step(
                        make_chunk(fm, sampler, chunk_steps), static_shapes
                    )
        self.chunk_steps = chunk_steps if self.chunk_fn is not None else 1

    @property
    def is_compiled(self) -> bool:
        return self.compiled_fn is not None

    def chunk(self, state, frozen, buffers, xs, ys, noise: StepNoise, hyper, ctx):
        """``self.chunk_steps`` compiled steps at once (see :func:`make_chunk`); ``None`` when the chunk cannot
        run (its compile failed: the caller then takes the steps one by one, which warns and falls back)."""
        if self.chunk_fn is None or self.compiled_fn is None:
            return None
        first = self._chunk_first
        with _COMPILE_LOCK if first else contextlib.nullcontext(), self._compiling(state, xs, ys, first):
            start = time.perf_counter()
            try:
                out = self.chunk_fn(state, frozen, buffers, xs, ys, noise.in_graph(), hyper, ctx)
            except Exception:  # the single step reports a compiler failure; take the steps one by one
                self.chunk_fn = None
                self._cache.pop((self._signature, "chunk", self.chunk_steps), None)
                return None
            finally:
                if first:
                    self.compile_seconds += time.perf_counter() - start
                    self._chunk_first = False
        if first:
            record_compile(self.kind, self.compile_seconds)
        return out

    def _compiling(self, state, x, y, first: bool) -> contextlib.AbstractContextManager:
        """:func:`static_compiles` for a call of a static step that may compile (its first, or one meeting a shape
        not met before, which is then remembered); nothing for the others."""
        if not self._static:
            return contextlib.nullcontext()
        key = _shape_key(state, x, y)
        if not first and key in self._seen:
            return contextlib.nullcontext()
        self._seen.add(key)
        return static_compiles()()

    def eager_step(self, state, frozen, buffers, x, y, noise: StepNoise, *rest):
        """One eager step (the same numbers as a compiled one, up to rounding)."""
        return self.eager(state, frozen, buffers, x, y, noise.eager(), *rest)

    def __call__(self, state, frozen, buffers, x, y, noise: StepNoise, *rest):
        """One step; ``noise`` supplies the step's noise in the form the eager or the compiled step takes."""
        if self.compiled_fn is None:
            return self.eager(state, frozen, buffers, x, y, noise.eager(), *rest)
        if not self.first_call:
            with self._compiling(state, x, y, first=False):
                return self.compiled_fn(state, frozen, buffers, x, y, noise.in_graph(), *rest)
        with _COMPILE_LOCK, self._compiling(state, x, y, first=True):
            start = time.perf_counter()
            try:
                out = self.compiled_fn(state, frozen, buffers, x, y, noise.in_graph(), *rest)
            except Exception as exc:  # any compiler failure: continue eagerly
                warnings.warn(
                    f"estimate_llc: torch.compile failed ({type(exc).__name__}: {str(exc)[:300]}); "
                    "continuing eagerly. Pass compile=False to skip the attempt.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.compiled_fn = None
                self._cache.pop(self._signature, None)
                return self.eager(state, frozen, buffers, x, y, noise.eager(), *rest)
            finally:
                self.compile_seconds += time.perf_counter() - start
                self.first_call = False
        record_compile(self.kind, self.compile_seconds)
        return out


@dataclass
class ChainTrace:
    """What a chain batch produced, on the host.

    Attributes
    ----------
    info:
        ``[len(Info._fields), chains, steps]``: every field of :class:`~lambdahat.samplers.Info` at every step.
    counts:
        ``[steps]``: samples (tokens) that counted in the batch of each recorded loss.
    """

    info: torch.Tensor
    counts: torch.Tensor


#: Per-sample losses are kept on the device in blocks of at most this many bytes before they go to the host.
RECORD_BLOCK_BYTES = 64 * 2**20


def record_block_draws(chains: int, shape: Sequence[int], draws: int) -> int:
    """Draws per device block of per-sample losses (float32), at most :data:`RECORD_BLOCK_BYTES`."""
    per_draw = 4 * chains * max(1, int(np.prod(shape)))
    return int(max(1, min(draws, RECORD_BLOCK_BYTES // per_draw)))


@dataclass(frozen=True)
class EvaluationSet:
    """A fixed set of batches, already on the device, whose per-sample losses are recorded at every draw.

    ``shape`` is ``(samples,)`` or ``(samples, tokens)`` (the longest ``tokens`` of its batches; shorter batches are
    padded with NaN). ``init_losses`` holds the per-sample losses at ``w*`` in that layout (a float32 CPU tensor, NaN
    where a token does not count), as the recorder computes them at the draws."""

    batches: tuple[tuple[object, object], ...]
    sizes: tuple[int, ...]
    shape: tuple[int, ...]
    init_losses: torch.Tensor | None = None


def _next_batch(batches, micro_batches: int):
    """The next ``(x, y)``, or with gradient accumulation the next ``micro_batches`` of them as ``(xs, ys)``."""
    if micro_batches == 1:
        return next(batches)
    xs, ys = zip(*(next(batches) for _ in range(micro_batches)))
    return xs, ys


def start_positions(
    w_star: torch.Tensor,
    seed: int,
    chains: Sequence[int],
    scale: float = 0.0,
    orth_u: torch.Tensor | None = None,
) -> torch.Tensor:
    """The starting points ``[len(chains), D]`` of the chains: ``w*``, or ``w* + scale · (I − u uᵀ) z_c`` with
    ``z_c ~ N(0, I)`` drawn from chain ``c``'s own counter-based stream (:data:`~lambdahat.rng.START_STREAM`, so a
    start depends on ``(seed, c)`` only, never on the chain batch).

    ``scale = 1/sqrt(γ)`` gives a draw of the localizing Gaussian ``N(w*, I/γ)``: wider than the localized posterior
    along every direction where the loss is convex, so chains started there approach ``E[L]`` from above while
    chains started at ``w*`` approach it from below (:mod:`lambdahat.accuracy`).

    Examples
    --------
    >>> w = torch.zeros(3)
    >>> start_positions(w, 0, [0, 1]).abs().sum().item()
    0.0
    >>> a = start_positions(w, 0, [0, 1], 0.1); b = start_positions(w, 0, [1], 0.1)
    >>> torch.equal(a[1], b[0])
    True
    """
    theta = w_star.expand(len(chains), w_star.shape[-1]).contiguous()
    if not scale:
        return theta
    keys = chain_keys(seed, chains, w_star.device)
    z = gaussian(
        keys, torch.tensor(0, dtype=torch.int64), w_star.shape[-1], w_star.dtype, stream=START_STREAM
    )
    return theta + scale * project(z, None if orth_u is None else orth_u.to(w_star.device))


def run_chain_batch(
    step_fn: StepFunction,
    fm: FunctionalModel,
    sampler: Sampler,
    chains: Sequence[int],
    feed: DataFeed,
    seed: int,
    schedule: Schedule,
    hyper: Hyper,
    ctx: Context,
    on_step: Callable[[], None] | None = None,
    observables: DataFeed | None = None,
    evaluation: EvaluationSet | None = None,
    records: np.ndarray | None = None,
    start_scale: float = 0.0,
    noise_coarsening: int = 1,
) -> ChainTrace:
    """Run the chains ``chains`` (global indices) from ``w*`` (or from :func:`start_positions` when
    ``start_scale > 0``) for the whole schedule.

    With ``observables`` the recorded loss is taken on its batches (see :func:`make_step`). With ``evaluation``
    the per-sample losses of that set are recorded at every draw into ``records[chains]`` (a host array
    ``[all chains, draws, samples(, tokens)]``, in memory or memory-mapped on disk), through a device block of
    :func:`record_block_draws` draws that is copied out when full: the only host copies before the end.
    """
    n_chains, dim, steps = len(chains), fm.layout.dim, schedule.total_steps
    state = sampler.init(start_positions(fm.w_star, seed, chains, start_scale, ctx.orth_u))
    noise = StepNoise(seed, chains, dim, fm.device, fm.param_dtype, coarsen=noise_coarsening)
    trace = torch.empty(len(Info._fields), n_chains, steps, device=fm.device, dtype=fm.loss_dtype)
    counts = torch.empty(steps, device=fm.device, dtype=fm.loss_dtype)
    batches = iter(feed)
    observed = iter(observables) if observables is not None else None
    block, recorder, rows = None, None, list(chains)
    if evaluation is not None:
        size = record_block_draws(n_chains, evaluation.shape, schedule.draws)
        block = torch.full(
            (n_chains, size, *evaluation.shape), float("nan"), device=fm.device, dtype=torch.float32
        )
        recorder = make_recorder(fm)
    first_draw, every = schedule.burnin_steps, schedule.steps_bw_draws
    s, pending = 0, []
    if step_fn.chunk_steps > 1 and observed is None and block is None:
        state, s = _run_chunks(step_fn, fm, state, batches, noise, hyper, ctx, trace, counts, steps, on_step)
    while s < steps:
        x, y = _next_batch(batches, step_fn.micro_batches)
        extra = _next_batch(observed, step_fn.micro_batches) if observed is not None else ()
        for _ in range(noise.coarsen - 1):  # a coarse step takes the fine chain's first batch of its steps
            _next_batch(batches, step_fn.micro_batches)
            if observed is not None:
                _next_batch(observed, step_fn.micro_batches)
        if block is not None and s >= first_draw and (s - first_draw) % every == 0:
            draw, offset = (s - first_draw) // every, 0
            slot = draw % block.shape[1]
            for (ex, ey), size in zip(evaluation.batches, evaluation.sizes):
                losses = recorder(state.theta, fm.frozen, fm.buffers, ex, ey)
                target = block[:, slot, offset : offset + size]
                if losses.dim() > 2:
                    target = target[..., : losses.shape[-1]]
                target.copy_(losses)
                offset += size
            if slot == block.shape[1] - 1 or draw == schedule.draws - 1:
                start = draw - slot
                records[rows, start : draw + 1] = block[:, : slot + 1].cpu().numpy()
        state, info, count = step_fn(state, fm.frozen, fm.buffers, x, y, noise, hyper, ctx, *extra)
        noise.advance()
        pending.append((info, count))
        s += 1
        if len(pending) == TRACE_FLUSH_STEPS or s == steps:
            _flush(pending, trace, counts, s)
        if on_step is not None:
            on_step()
    return ChainTrace(trace.cpu(), counts.cpu())


#: The step loop keeps the infos of this many steps before writing them into the trace with one copy (a copy per
#: step costs about as much as the small kernels of a tiny model's step).
TRACE_FLUSH_STEPS = 64


def _flush(pending: list, trace: torch.Tensor, counts: torch.Tensor, end: int) -> None:
    """Write the ``(info, count)`` pairs of the steps ``end - len(pending) .. end - 1`` into the trace; empty
    ``pending``."""
    start = end - len(pending)
    infos, step_counts = zip(*pending)
    trace[:, :, start:end] = torch.stack(infos, dim=-1)
    counts[start:end] = torch.stack(step_counts)
    pending.clear()


def _run_chunks(step_fn, fm, state, batches, noise, hyper, ctx, trace, counts, steps, on_step):
    """The steps of a chain batch by compiled chunks of ``step_fn.chunk_steps`` batches of one shape.

    Batches are gathered until a chunk is full; a batch of another shape (a pass's last, smaller batch) sends the
    batches gathered so far through single steps and starts the next chunk. The last chunk is trimmed (its extra steps
    are computed and dropped, so no other compile is needed). Returns the state and the number of steps done
    (``steps``, or fewer when the chunk could not be compiled and the caller continues step by step)."""
    size, s, pending = step_fn.chunk_steps, 0, []

    def singles(state, group):  # one step per batch of ``group``, as far as the run goes
        n = min(len(group), steps - s)
        for k, (x, y) in enumerate(group[:n]):
            state, info, count = step_fn(state, fm.frozen, fm.buffers, x, y, noise, hyper, ctx)
            trace[:, :, s + k] = info
            counts[s + k] = count
            noise.advance()
        _progress(on_step, n)
        return state, n

    while s < steps:
        batch = next(batches)
        if pending and _shapes(batch) != _shapes(pending[0]):
            state, n = singles(state, pending)  # another shape: the new batch starts the next chunk
            s, pending = s + n, []
            if s >= steps:
                break
        pending.append(batch)
        if len(pending) < size:
            continue
        xs, ys = zip(*pending)
        out = step_fn.chunk(
            state, fm.frozen, fm.buffers, stack_batches(xs), stack_batches(ys), noise, hyper, ctx
        )
        if out is None:  # the chunk did not compile: these and the remaining steps one by one
            state, n = singles(state, pending)
            return state, s + n
        state, info, count = out
        n = min(size, steps - s)
        trace[:, :, s : s + n] = info[..., :n]
        counts[s : s + n] = count[:n]
        noise.advance(size)
        s, pending = s + n, []
        _progress(on_step, n)
    return state, s


def _progress(on_step, steps: int) -> None:
    if on_step is not None:
        for _ in range(steps):
            on_step()


def _shapes(obj) -> object:
    if isinstance(obj, torch.Tensor):
        return (tuple(obj.shape), obj.dtype)
    if isinstance(obj, tuple | list):
        return tuple(_shapes(o) for o in obj)
    if isinstance(obj, dict):
        return tuple((k, _shapes(v)) for k, v in obj.items())
    return type(obj)


#: Steps of eager noise the ``compile="auto"`` pilot times.
NOISE_PILOT_STEPS = 4


def predicted_eager_seconds(
    fm: FunctionalModel,
    sampler: Sampler,
    n_chains: int,
    feed: DataFeed,
    hyper: Hyper,
    ctx: Context,
    steps: int,
    pilot_steps: int = 3,
) -> float:
    """Predict the eager time of ``steps`` steps for ``n_chains`` chains from a short pilot (its results are
    thrown away): the median time of a step without noise, plus the eager noise of a step, timed on
    :data:`NOISE_PILOT_STEPS` steps of it (numbers of seed 0, thrown away too; a whole block of a small model's noise
    would cost more than the pilot's steps)."""
    keys = chain_keys(0, range(n_chains), fm.device)
    pilot_noise = min(NOISE_PILOT_STEPS, noise_block_steps(fm.layout.dim))
    start = time.perf_counter()
    gaussian_eager(keys, 0, pilot_noise, fm.layout.dim, fm.param_dtype)
    if fm.device.type == "cuda":
        torch.cuda.synchronize(fm.device)
    noise_per_step = (time.perf_counter() - start) / pilot_noise
    step = make_step(fm, sampler)
    state = sampler.init(fm.w_star.expand(n_chains, fm.layout.dim).contiguous())
    zeros = torch.zeros(n_chains, fm.layout.dim, device=fm.device, dtype=fm.param_dtype)
    batches = iter(feed)
    times = []
    for _ in range(pilot_steps + 1):
        x, y = next(batches)
        start = time.perf_counter()
        out = step(state, fm.frozen, fm.buffers, x, y, zeros, hyper, ctx)
        if fm.device.type == "cuda":
            torch.cuda.synchronize(fm.device)
        _ = out[1].sum().item()
        times.append(time.perf_counter() - start)
    times = sorted(times[1:])
    return (times[len(times) // 2] + noise_per_step) * steps


def compiled_step_available(model_key, signature) -> bool:
    """Whether a compiled step for this model object and signature is already in memory."""
    return signature in _COMPILED.get(model_key, {})


# caller's model object -> {signature: predicted eager seconds of the runs made on it so far}
_EAGER_SECONDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


#: What a compile is assumed to cost when a step of the same kind was compiled before on this machine, so that
#: inductor's on-disk caches hold most of it (measured 3–26 s against 40–127 s cold on a 2-core CPU).
WARM_COMPILE_SECONDS_GUESS = 5.0
_RECORD_NAME = "lambdahat_compiles.json"
_RECORD_LOCK = threading.Lock()


def _record_file() -> str | None:
    """The file of compiled step kinds, inside inductor's cache directory (wiped with it), or ``None``."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        return os.path.join(cache_dir(), _RECORD_NAME)
    except Exception:  # no inductor, or another layout of it: no record
        return None


#: Raised whenever the traced step or chunk changes, so that the compile record does not promise a warm cache for
#: a graph inductor has never seen.
STEP_GRAPH_REVISION = 3


def compile_kind(fm: FunctionalModel, sampler: Sampler, chunk_steps: int, static_shapes: bool = True) -> str:
    """What makes a compiled step reusable from inductor's caches by another process: the model's class and
    sampled scalars, the sampler, the precision, the chunk, static or dynamic shapes (:func:`compile_step`), the
    step's graph revision and torch's version."""
    model = type(fm.module)
    shapes = "static" if static_shapes else "dynamic"
    return "|".join(
        (f"{model.__module__}.{model.__qualname__}", str(fm.layout.dim), sampler.name, str(fm.param_dtype),
         str(fm.autocast_dtype), str(chunk_steps), shapes, f"graph{STEP_GRAPH_REVISION}", torch.__version__)
    )  # fmt: skip


# (path, modification time, size) -> the record as read then: a run asks for several kinds, a sweep for every point
_RECORD_READ: dict[tuple, dict] = {}


def _read_record(path: str, fresh: bool = False) -> dict:
    """The compile record at ``path`` (``{}`` when missing or unreadable), read again only when the file changed
    since the last read (or with ``fresh``)."""
    try:
        stat = os.stat(path)
    except OSError:
        return {}
    key = (path, stat.st_mtime_ns, stat.st_size)
    if not fresh and key in _RECORD_READ:
        return _RECORD_READ[key]
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        record = {}
    record = record if isinstance(record, dict) else {}
    _RECORD_READ.clear()
    _RECORD_READ[key] = record
    return record


def compiled_before(kind: str) -> float | None:
    """Seconds of the last recorded compile of a step of this kind on this machine, or ``None``."""
    path = _record_file()
    value = None if path is None else _read_record(path).get(kind)
    return float(value) if isinstance(value, int | float) else None


def record_compile(kind: str, seconds: float) -> None:
    """Note that a step of this kind was compiled (best effort: a failure to write is ignored)."""
    path = _record_file()
    if path is None:
        return
    with _RECORD_LOCK:
        try:
            record = {**_read_record(path, fresh=True), kind: round(float(seconds), 3)}
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(record, f)
            os.replace(tmp, path)
        except OSError:
            pass


def compile_pays(
    model_key, signature, predicted_seconds: float, planned_runs: int | None = None, kind: str | None = None
) -> bool:
    """The ``compile="auto"`` decision for a run predicted to take ``predicted_seconds`` eagerly.

    Compiling pays when the eager time of the planned work exceeds :data:`AUTO_COMPILE_FACTOR` times the
    compile cost: :data:`COMPILE_SECONDS_GUESS`, or :data:`WARM_COMPILE_SECONDS_GUESS` when a step of this
    ``kind`` (:func:`compile_kind`) was compiled on this machine before and inductor's caches still hold it. The
    planned work is the larger of ``planned_runs`` runs like this one (a sweep knows its number of points) and the
    runs made on this model object and signature in this process so far, this one included (a notebook calling
    again and again on one model): the third call of a 25-second run compiles, as does the first point of a
    40-point sweep of 2-second runs.
    """
    with _COMPILE_LOCK:
        made = _EAGER_SECONDS.setdefault(model_key, {})
        made[signature] = made.get(signature, 0.0) + predicted_seconds
        planned = max(made[signature], predicted_seconds * max(1, planned_runs or 1))
    warm = kind is not None and compiled_before(kind) is not None
    return planned > AUTO_COMPILE_FACTOR * (WARM_COMPILE_SECONDS_GUESS if warm else COMPILE_SECONDS_GUESS)
