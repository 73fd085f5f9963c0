"""The chain runner: burn-in and draws for a batch of chains, vmapped, optionally compiled, trace kept on device.

One step for all ``C`` chains of a batch is a single call of

.. code-block:: text

    grad, loss = vmap(grad_and_value(loss_fn))(theta[C, D], x, y)     # one batched forward+backward
    state, info = sampler.step(state, loss, grad, noise[C, D], hyper, ctx)

whose loss is the recorded draw. The noise comes from :class:`~lambdahat.rng.ChainNoise` (each chain's own stream,
a block of steps at a time), as an input of the step whether it runs eagerly or compiled. How the steps execute
(eager, compiled, chunks of compiled steps) is decided once per run by :func:`lambdahat.plan.plan_execution`; a
:class:`StepFunction` carries out that plan. The per-step diagnostics (``Info``) are written into a
``[fields, C, steps]`` tensor on the device and copied to the host once, at the end.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
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
from .plan import ExecutionPlan
from .rng import ChainNoise, start_noise
from .samplers import Context, Hyper, Info, Sampler
from .samplers.base import project

__all__ = [
    "Schedule",
    "StepFunction",
    "StepNoise",
    "coarse_pick",
    "compiled_steps",
    "make_step",
    "run_chain_batch",
    "start_positions",
    "static_compiles",
]


def make_step(
    fm: FunctionalModel,
    sampler: Sampler,
    observe: bool = False,
    micro_batches: int = 1,
) -> Callable:
    """The pure step ``(state, frozen, buffers, x, y, noise, hyper, ctx[, ox, oy]) -> (state, info, count)`` for all
    chains, with ``info`` the fields of :class:`~lambdahat.samplers.Info` stacked, ``[fields, chains]``.

    ``noise`` is the standard normal ``[chains, D]`` of the step (:class:`~lambdahat.rng.ChainNoise`).

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
    ``(state, frozen, buffers, xs, ys, noise [steps, chains, D], hyper, ctx) -> (state, info [fields, chains, steps],
    counts [steps])``, with ``xs``, ``ys`` the ``steps`` batches stacked (:func:`stack_batches`): compiled, the
    per-step Python, guard and launch overhead is paid once per chunk, and consecutive steps fuse (the same
    arithmetic as ``steps`` calls of :func:`make_step`)."""
    one = make_step(fm, sampler)

    def chunk(state, frozen, buffers, xs, ys, noise, hyper, ctx):
        infos, counts = [], []
        for k in range(steps):
            x, y = tree_map(lambda leaf, k=k: leaf[k], xs), tree_map(lambda leaf, k=k: leaf[k], ys)
            state, info, count = one(state, frozen, buffers, x, y, noise[k], hyper, ctx)
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
    """The noise of one chain batch at its current step (from :class:`~lambdahat.rng.ChainNoise`);
    :meth:`advance` moves to the next step.

    With ``coarsen = k`` step ``t`` receives ``(ξ_{kt} + … + ξ_{kt+k−1}) / sqrt(k)``, the normalized sum of the
    noise of ``k`` consecutive steps of the uncoarsened chain: a chain at step ``kε`` driven by it follows the same
    Brownian path as the chain at ε (synchronous coupling), so the difference of the two estimates, the step check
    of :mod:`lambdahat.accuracy`, is far less noisy than that of independent runs. Such a chain also takes the
    batch of one of the ``k`` fine steps it spans (:func:`coarse_pick`: every batch of the loader over ``k``
    passes), so both see the same data over the same sampled time, and its gradient noise is that of one batch at
    step ``kε``: the step check measures the minibatch noise's share of the step bias too.
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
        self._stream = ChainNoise(seed, chains, dim, device, dtype)

    def current(self) -> torch.Tensor:
        """The noise ``[chains, D]`` of the current step."""
        if self.coarsen == 1:
            return self._stream.at(self.step)
        first = self.coarsen * self.step
        total = sum(self._stream.at(first + j) for j in range(self.coarsen))
        return total * (1.0 / math.sqrt(self.coarsen))

    def following(self, steps: int) -> torch.Tensor:
        """The noise ``[steps, chains, D]`` of the current step and the ``steps − 1`` after it (uncoarsened)."""
        if self.coarsen != 1:
            raise RuntimeError(
                "StepNoise: a block of coarsened noise is not made; take the steps one by one."
            )
        return self._stream.steps(self.step, steps)

    def advance(self, steps: int = 1) -> None:
        self.step += steps


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


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device out-of-memory error (never a compiler failure: the caller halves the chain batch
    or reports it)."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


_COMPILE_LOCK = threading.Lock()
# caller's model object -> {key: (objective, compiled function)}; the function's closure holds the functional copy
# of the model it traced, so each key keeps at most one (the latest objective's): see compiled_steps
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_steps(model, key: tuple, objective, build: Callable[[], Callable]) -> Callable:
    """The compiled function kept for ``(model, key)`` if it was built for ``objective``, else ``build()``, which
    then replaces whatever was kept for that key.

    Compiled steps live as long as the caller's model object, so later calls on it (a notebook's repeated calls,
    a grid search, a checkpoint sweep that loads weights into one model) reuse them. A step computes its
    objective, which its closure holds with a private copy of the model; keeping one entry per key, not one per
    objective, means a new ``loss_fn`` per call (a lambda written in the call) replaces the last one's copy
    instead of adding another for as long as the model lives.
    """
    with _COMPILE_LOCK:
        entries = _COMPILED.setdefault(model, {})
        kept = entries.get(key)
        if kept is not None and kept[0] == objective:
            return kept[1]
        fn = build()
        entries[key] = (objective, fn)
        return fn


def _forget(model, key: tuple) -> None:
    if model is None:
        return
    with _COMPILE_LOCK:
        _COMPILED.get(model, {}).pop(key, None)


class StepFunction:
    """The steps of one device slot as an :class:`~lambdahat.plan.ExecutionPlan` says: eager calls, compiled calls,
    or compiled chunks of ``plan.chunk_steps`` steps.

    Every call that may compile (a compiled function's first call in this run, or a static step meeting a batch
    shape it has not met) runs under the process-wide compile lock, with dynamo's static settings where the batch
    shapes stay fixed (:func:`compile_step`). A compiler failure warns and continues eagerly (recorded in
    :attr:`fell_back`); a device out-of-memory error is raised as it is, so that the chain batch can be halved.
    """

    def __init__(
        self,
        fm: FunctionalModel,
        sampler: Sampler,
        plan: ExecutionPlan,
        model=None,
        key: tuple | None = None,
        observe: bool = False,
        micro_batches: int = 1,
        static_shapes: bool = False,
    ):
        self.plan = plan
        self.eager = make_step(fm, sampler, observe, micro_batches)
        self.micro_batches = micro_batches
        self.compile_seconds = 0.0
        self.fell_back: str | None = None
        self.compiled_fn: Callable | None = None
        self.chunk_fn: Callable | None = None
        self._model, self._key = model, key
        self._static = plan.compiled and static_shapes and static_compiles() is not None
        self._met: set[tuple] = set()
        if plan.compiled:
            build_step = lambda: compile_step(make_step(fm, sampler, observe, micro_batches), static_shapes)  # noqa: E731
            self.compiled_fn = self._kept(key, fm, build_step)
            if plan.mode == "chunked":
                build_chunk = lambda: compile_step(make_chunk(fm, sampler, plan.chunk_steps), static_shapes)  # noqa: E731
                self.chunk_fn = self._kept((*key, "chunk", plan.chunk_steps), fm, build_chunk)

    def _kept(self, key, fm, build):
        if self._model is None:
            return build()
        return compiled_steps(self._model, key, fm.objective, build)

    @property
    def chunk_steps(self) -> int:
        """Steps per call now (1 once a chunk failed to compile)."""
        return self.plan.chunk_steps if self.chunk_fn is not None else 1

    @property
    def is_compiled(self) -> bool:
        return self.compiled_fn is not None

    def executed(self) -> str:
        """What ran: the plan's mode, or what a compiler failure left of it."""
        if self.compiled_fn is None:
            return "eager"
        return "chunked" if self.chunk_fn is not None else "compiled"

    def _run(self, fn: Callable, name: str, args: tuple, shape_key: tuple):
        """Call a compiled function, under the compile lock when the call may compile."""
        met = (name, shape_key if self._static else None)
        if met in self._met:
            return fn(*args)
        static = static_compiles()() if self._static else contextlib.nullcontext()
        with _COMPILE_LOCK, static:
            start = time.perf_counter()
            try:
                out = fn(*args)
            finally:
                self.compile_seconds += time.perf_counter() - start
        self._met.add(met)
        return out

    def _failed(self, exc: Exception, what: str) -> None:
        if is_out_of_memory(exc):
            raise exc
        self.fell_back = f"{what} failed to compile ({type(exc).__name__}: {str(exc)[:300]})"
        warnings.warn(
            f"sample: torch.compile of the {what} failed ({type(exc).__name__}: {str(exc)[:300]}); continuing "
            f"{'eagerly' if what == 'step' else 'step by step'}. Pass compile=False to skip the attempt.",
            RuntimeWarning,
            stacklevel=4,
        )

    def chunk(self, state, frozen, buffers, xs, ys, noise: StepNoise, hyper, ctx):
        """``self.chunk_steps`` compiled steps at once (see :func:`make_chunk`); ``None`` when the chunk cannot run
        (its compile failed: the caller then takes the steps one by one)."""
        if self.chunk_fn is None:
            return None
        args = (state, frozen, buffers, xs, ys, noise.following(self.plan.chunk_steps), hyper, ctx)
        try:
            return self._run(self.chunk_fn, "chunk", args, _shape_key(state, xs, ys))
        except Exception as exc:
            self._failed(exc, "chunk")
            self.chunk_fn = None
            _forget(self._model, (*self._key, "chunk", self.plan.chunk_steps))
            return None

    def __call__(self, state, frozen, buffers, x, y, noise: StepNoise, *rest):
        """One step of every chain of the batch, with the noise of ``noise``'s current step."""
        args = (state, frozen, buffers, x, y, noise.current(), *rest)
        if self.compiled_fn is None:
            return self.eager(*args)
        try:
            return self._run(self.compiled_fn, "step", args, _shape_key(state, x, y))
        except Exception as exc:
            self._failed(exc, "step")
            self.compiled_fn = self.chunk_fn = None
            _forget(self._model, self._key)
            return self.eager(*args)


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


def coarse_pick(step: int, coarsen: int, steps_per_pass: int | None) -> int:
    """Which of the ``coarsen`` fine steps ``coarsen·step … coarsen·step + coarsen − 1`` gives coarse step ``step``
    its batch.

    The first, except where a pass of the loader holds a multiple of ``coarsen`` steps: there the ``j``-th in the
    passes ``j, j + coarsen, …`` of the fine chain, so that every batch of a pass feeds the coarse chain over
    ``coarsen`` passes, not only every ``coarsen``-th position. Taking the first always gave a loader in a fixed
    order (a list of batches, an unshuffled DataLoader) half its data set (on a language model's 12 fixed batches
    the step check read +120 % at any step), and never took a shuffled loader's smaller last batch. Where a pass holds a number of steps prime to ``coarsen`` (odd
    for 2, the step check's), the first batches already cycle through all of them. ``steps_per_pass`` is ``None``
    while the first pass has not ended (it is pass 0, where the first is taken anyway).

    Examples
    --------
    >>> [coarse_pick(t, 2, 4) for t in range(6)]  # passes of 4 steps: 2 coarse steps each
    [0, 0, 1, 1, 0, 0]
    >>> [coarse_pick(t, 2, 3) for t in range(3)], coarse_pick(5, 1, 4), coarse_pick(0, 2, None)
    ([0, 0, 0], 0, 0)
    """
    if coarsen == 1 or not steps_per_pass or steps_per_pass % coarsen:
        return 0
    return (coarsen * step // steps_per_pass) % coarsen


def _coarse_batch(batches, observed, feed: DataFeed, step: int, coarsen: int, micro_batches: int):
    """``(x, y, extra)`` of coarse step ``step``: the ``coarsen`` fine steps' batches (and observables) are drawn
    and :func:`coarse_pick` chooses one."""
    group = []
    for _ in range(coarsen):
        batch = _next_batch(batches, micro_batches)
        extra = _next_batch(observed, micro_batches) if observed is not None else ()
        group.append((batch, extra))
    n = feed.batches_per_pass  # known here whenever a group reaches past the first pass
    per_pass = n // micro_batches if n and n % micro_batches == 0 else None
    (x, y), extra = group[coarse_pick(step, coarsen, per_pass)]
    return x, y, extra


def start_positions(
    w_star: torch.Tensor,
    seed: int,
    chains: Sequence[int],
    scale: float = 0.0,
    orth_u: torch.Tensor | None = None,
) -> torch.Tensor:
    """The starting points ``[len(chains), D]`` of the chains: ``w*``, or ``w* + scale · (I − u uᵀ) z_c`` with
    ``z_c ~ N(0, I)`` drawn from chain ``c``'s own stream (:data:`~lambdahat.rng.START_STREAM`, so a
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
    z = start_noise(seed, chains, w_star.shape[-1], w_star.device, w_star.dtype)
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
    if step_fn.chunk_steps > 1:  # the plan chunks only runs without observables, evaluation or coarsening
        state, s = _run_chunks(step_fn, fm, state, batches, noise, hyper, ctx, trace, counts, steps, on_step)
    while s < steps:
        if noise.coarsen == 1:
            x, y = _next_batch(batches, step_fn.micro_batches)
            extra = _next_batch(observed, step_fn.micro_batches) if observed is not None else ()
        else:  # a coarse step takes the batch of one of the fine chain's steps it spans
            x, y, extra = _coarse_batch(batches, observed, feed, s, noise.coarsen, step_fn.micro_batches)
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
