"""The chain runner: burn-in and draws for a batch of chains, vmapped, optionally compiled, trace kept on device.

One step for all ``C`` chains of a batch is a single call of

.. code-block:: text

    grad, loss = vmap(grad_and_value(loss_fn))(theta[C, D], x, y)     # one batched forward+backward
    state, info = sampler.step(state, loss, grad, noise[C, D], hyper, ctx)

whose loss is the recorded draw. The per-step diagnostics (``Info``) are written into a ``[fields, C, steps]``
tensor on the device and copied to the host once, at the end.
"""

from __future__ import annotations

import threading
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.func import grad_and_value, vmap

from .data import DataFeed
from .functional import FunctionalModel
from .rng import ChainNoise
from .samplers import Context, Hyper, Info, Sampler

__all__ = ["COMPILE_SECONDS_GUESS", "Schedule", "StepFunction", "make_step", "run_chain_batch"]

#: What a first ``torch.compile`` of the step is assumed to cost when deciding whether compiling pays
#: (measured 15–40 s on a 2-core CPU for the benchmark models; see benchmarks/RESULTS.md).
COMPILE_SECONDS_GUESS = 20.0
#: Compile under ``compile="auto"`` when the predicted eager time exceeds this multiple of the compile cost
#: (break-even for a compiled step 1.5x faster than eager).
AUTO_COMPILE_FACTOR = 3.0


@dataclass(frozen=True)
class Schedule:
    """``burnin_steps`` discarded steps, then ``draws`` draws taken every ``steps_bw_draws`` steps."""

    draws: int
    burnin_steps: int
    steps_bw_draws: int

    @property
    def total_steps(self) -> int:
        return self.burnin_steps + self.draws * self.steps_bw_draws

    def draw_steps(self) -> torch.Tensor:
        """Indices of the steps whose loss is a draw."""
        return torch.arange(self.burnin_steps, self.total_steps, self.steps_bw_draws)


def make_step(fm: FunctionalModel, sampler: Sampler, observe: bool = False) -> Callable:
    """The pure step ``(state, frozen, buffers, x, y, noise, hyper, ctx[, ox, oy]) -> (state, info)`` for all chains.

    With ``observe`` the recorded loss (``info.loss``) is the loss on the observable batch ``(ox, oy)`` at the same
    positions (data-refined LLC), while the sampler is still driven by ``(x, y)``.
    """
    in_dims = (0, None, None, None, None)
    grad_fn = vmap(grad_and_value(fm.loss), in_dims=in_dims)
    loss_fn = vmap(fm.loss, in_dims=in_dims)

    def chain_step(state, frozen, buffers, x, y, noise, hyper, ctx, ox=None, oy=None):
        grad, loss = grad_fn(state.theta, frozen, buffers, x, y)
        new_state, info = sampler.step(state, loss, grad, noise, hyper, ctx)
        if observe:
            with torch.no_grad():
                info = info._replace(loss=loss_fn(state.theta, frozen, buffers, ox, oy))
        return new_state, info

    return chain_step


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
    ):
        self.eager = make_step(fm, sampler, observe)
        self.compiled_fn = None
        self.first_call = True
        self.compile_seconds = 0.0
        self._cache = _COMPILED.setdefault(model_key, {}) if model_key is not None else {}
        self._signature = signature
        if compiled:
            self.compiled_fn = self._cache.get(signature)
            if self.compiled_fn is not None:
                self.first_call = False
            else:
                self.compiled_fn = self._cache[signature] = torch.compile(make_step(fm, sampler, observe))

    @property
    def is_compiled(self) -> bool:
        return self.compiled_fn is not None

    def __call__(self, *args):
        if self.compiled_fn is None:
            return self.eager(*args)
        if not self.first_call:
            return self.compiled_fn(*args)
        with _COMPILE_LOCK:
            start = time.perf_counter()
            try:
                out = self.compiled_fn(*args)
            except Exception as exc:  # any compiler failure: continue eagerly
                warnings.warn(
                    f"estimate_llc: torch.compile failed ({type(exc).__name__}: {str(exc)[:300]}); "
                    "continuing eagerly. Pass compile=False to skip the attempt.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.compiled_fn = None
                self._cache.pop(self._signature, None)
                return self.eager(*args)
            finally:
                self.compile_seconds = time.perf_counter() - start
                self.first_call = False
        return out


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
) -> torch.Tensor:
    """Run the chains ``chains`` (global indices) from ``w*`` for the whole schedule.

    With ``observables`` the recorded loss is taken on its batches (see :func:`make_step`).

    Returns
    -------
    torch.Tensor
        ``[len(Info._fields), len(chains), total_steps]`` on the host: every field of
        :class:`~lambdahat.samplers.Info` at every step.
    """
    n_chains, dim, steps = len(chains), fm.layout.dim, schedule.total_steps
    state = sampler.init(fm.w_star.expand(n_chains, dim).contiguous())
    noise = ChainNoise(seed, chains, dim, fm.device, fm.param_dtype)
    trace = torch.empty(len(Info._fields), n_chains, steps, device=fm.device, dtype=fm.param_dtype)
    batches = iter(feed)
    observed = iter(observables) if observables is not None else None
    for s in range(steps):
        x, y = next(batches)
        extra = next(observed) if observed is not None else ()
        state, info = step_fn(state, fm.frozen, fm.buffers, x, y, noise.draw(), hyper, ctx, *extra)
        trace[:, :, s] = torch.stack(info)
        if on_step is not None:
            on_step()
    return trace.cpu()


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
    thrown away; it uses no random stream of any chain)."""
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
        _ = out[1].loss.sum().item()
        times.append(time.perf_counter() - start)
    times = sorted(times[1:])
    return times[len(times) // 2] * steps
