"""The execution plan of a run: eager, compiled or chunked steps, decided once from the facts of the run.

:func:`plan_execution` is a pure function. What goes in is known before the first step and is the same in every
process: the number of sampled scalars, the counted samples (tokens) per batch, the planned steps, chains and runs,
the device, what the caller asked for (``compile=``) and whether chunks can carry the run. What comes out, an
:class:`ExecutionPlan`, is recorded on the result (``settings["plan"]``). Nothing that changes the numbers depends
on wall-clock timing, on earlier calls in the process or on files left by earlier processes: the same call with
the same seed gives the same bits in any fresh process. (A compiled step made by an earlier call is reused only
when the plan asks for a compiled step anyway; it computes the same numbers.)

The rule for ``compile="auto"``. Compiling a step costs tens of seconds once (9–31 s more than an eager first
call for the benchmark models on a 2-core CPU with a cold cache, benchmarks/RESULTS.md) and then saves a part of
every call: the per-call overhead of the eager operations and a share of the arithmetic, by fusing the update and
the elementwise work (1.9–18 ms per call on those models). So ``"auto"`` compiles when the planned work is large by
either measure:

.. math::

    \\text{calls} = S \\cdot \\lceil \\lceil C / C_b \\rceil / K \\rceil \\cdot R \\ge N_{\\text{calls}}
    \\quad\\text{or}\\quad
    \\text{flops} = 6 \\, D \\, b \\, S \\, C \\, R \\ge N_{\\text{flops}}

with ``S`` steps per chain, ``C`` chains in batches of ``C_b`` over ``K`` device slots, ``R`` planned runs, ``D`` sampled scalars and ``b``
counted samples (tokens) per batch (``6 D b`` is the usual count of a dense model's forward and backward). The
thresholds depend on the kind of device only (:data:`AUTO_COMPILE_CALLS`, :data:`AUTO_COMPILE_FLOPS`). A single
notebook-sized call (thousands of steps) stays eager and starts at once; a long run or a sweep that says how many
points it plans compiles. ``compile=True`` and ``compile=False`` are obeyed.

Chunks (several steps per compiled call, :func:`lambdahat.chains.make_chunk`) pay only where per-call overhead
dominates (small models) and over very long work: their first compile takes several times longer than one step's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = [
    "AUTO_COMPILE_CALLS",
    "AUTO_COMPILE_FLOPS",
    "CHUNK_MAX_DIM",
    "CHUNK_MIN_CALLS",
    "CHUNK_STEPS",
    "ExecutionPlan",
    "RunFacts",
    "plan_execution",
]

#: ``compile="auto"`` compiles from this many planned step calls per device slot. Measured on the development CPU
#: (benchmarks/RESULTS.md, issue 20: the four ../shared/bench workloads, 8 chains): a cold compile costs 9–31 s
#: more than an eager first call and then saves 1.9–18 ms per call, so it pays after 1,700–10,000 calls; 20,000
#: leaves a margin of two over the slowest to pay (modular addition). On CUDA an eager step launches hundreds of
#: kernels (a few µs each), so compiling pays at least as soon; not measured on a GPU here.
AUTO_COMPILE_CALLS = {"cpu": 20_000, "cuda": 20_000}
#: ... or from this many planned floating-point operations (``6 D b`` per chain-step): on the development CPU (about
#: 70 GFLOP/s in an eager transformer step) 2e13 is about five minutes of eager arithmetic, of which compiling saves
#: 10–30 %, the cost of a cold compile.
AUTO_COMPILE_FLOPS = {"cpu": 2e13, "cuda": 1e16}
#: A chunked compiled call takes this many steps ...
CHUNK_STEPS = 8
#: ... for models of at most this many sampled scalars (larger models spend their time in arithmetic) ...
CHUNK_MAX_DIM = 1 << 16
#: ... and work of at least this many planned calls: a chunk compiles several times longer than one step with a
#: cold cache (105–127 s against 10–40 s on a 2-core CPU) and saves 0.1–0.3 ms per step on the small models.
CHUNK_MIN_CALLS = 100_000


@dataclass(frozen=True)
class RunFacts:
    """What the plan is decided from; every field is known before the first step.

    Attributes
    ----------
    dim:
        Sampled scalars ``D``.
    samples_per_batch:
        Counted samples (tokens) per batch, from the ``L0`` pass.
    steps:
        Steps per chain (burn-in and draws; with gradient accumulation, micro-batches).
    chains:
        Chains of the run.
    chain_batch:
        Chains per device call.
    slots:
        Device slots running concurrently.
    planned_runs:
        Runs like this one the caller plans on the same step (a sweep's points on one model).
    device_type:
        ``"cpu"``, ``"cuda"``, ...
    compile:
        ``True``, ``False`` or ``"auto"``, as asked.
    chunkable:
        Whether chunks can carry the run (no observables, no evaluation set, no gradient accumulation, no
        coarsened noise).
    """

    dim: int
    samples_per_batch: float
    steps: int
    chains: int
    chain_batch: int
    slots: int
    planned_runs: int
    device_type: str
    compile: bool | str
    chunkable: bool

    @property
    def calls(self) -> int:
        """Step calls per device slot over the planned runs."""
        batches = math.ceil(self.chains / max(1, self.chain_batch))
        return self.steps * math.ceil(batches / max(1, self.slots)) * max(1, self.planned_runs)

    @property
    def flops(self) -> float:
        """Planned floating-point operations, ``6 D b S C R``."""
        return 6.0 * self.dim * self.samples_per_batch * self.steps * self.chains * max(1, self.planned_runs)


@dataclass(frozen=True)
class ExecutionPlan:
    """How a run executes.

    Attributes
    ----------
    mode:
        ``"eager"``, ``"compiled"`` (one compiled call per step) or ``"chunked"`` (``chunk_steps`` steps per
        compiled call).
    chunk_steps:
        Steps per call (1 unless chunked).
    reason:
        Why, in words.
    """

    mode: str
    chunk_steps: int
    reason: str

    @property
    def compiled(self) -> bool:
        return self.mode != "eager"

    def to_dict(self) -> dict:
        return asdict(self)


def _device_key(device_type: str) -> str:
    return "cuda" if device_type == "cuda" else "cpu"


def plan_execution(facts: RunFacts) -> ExecutionPlan:
    """The plan for ``facts`` (see the module docstring for the rule).

    Examples
    --------
    >>> facts = RunFacts(dim=4433, samples_per_batch=128, steps=150, chains=8, chain_batch=8, slots=1,
    ...                  planned_runs=1, device_type="cpu", compile="auto", chunkable=True)
    >>> plan_execution(facts).mode
    'eager'
    >>> plan_execution(RunFacts(**{**facts.__dict__, "planned_runs": 1000})).mode
    'chunked'
    """
    key = _device_key(facts.device_type)
    if facts.compile is False:
        return ExecutionPlan("eager", 1, "compile=False")
    if facts.compile == "auto":
        calls, flops = facts.calls, facts.flops
        if calls < AUTO_COMPILE_CALLS[key] and flops < AUTO_COMPILE_FLOPS[key]:
            return ExecutionPlan(
                "eager",
                1,
                f"compile='auto': {calls} planned calls < {AUTO_COMPILE_CALLS[key]} and {flops:.2g} planned "
                f"flops < {AUTO_COMPILE_FLOPS[key]:.2g} ({key}): compiling would not pay",
            )
        why = f"compile='auto': {calls} planned calls, {flops:.2g} planned flops ({key})"
    else:
        why = "compile=True"
    if facts.chunkable and facts.dim <= CHUNK_MAX_DIM and facts.calls >= CHUNK_MIN_CALLS:
        return ExecutionPlan("chunked", CHUNK_STEPS, f"{why}; {facts.calls} calls of a small model: chunks")
    return ExecutionPlan("compiled", 1, why)
