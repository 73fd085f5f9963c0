"""Spreading chain batches over devices and running them concurrently.

Chains ``0..C-1`` are cut into batches of ``chain_batch`` consecutive chains, dealt round-robin to the device slots;
each slot runs its batches one after the other in its own thread, with its own copy of the model, its own data
feed and its own compiled step (no object is shared between threads). The traces come back ordered by chain.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from .chains import ChainTrace, EvaluationSet, Schedule, StepFunction, is_out_of_memory, run_chain_batch
from .data import DataFeed
from .functional import FunctionalModel
from .samplers import Context, Hyper, Sampler

__all__ = ["SlotJob", "plan_chain_batches", "resolve_devices", "run_slots"]


def resolve_devices(devices) -> list[torch.device]:
    """The device slots: a device or a list of devices (the same device may be listed twice); CUDA without an
    index means the current device. Errors say what to pass."""
    items = list(devices) if isinstance(devices, list | tuple) else [devices]
    if not items:
        raise ValueError("prepare: devices is empty; pass a device such as 'cpu' or ['cuda:0', 'cuda:1'].")
    resolved = []
    for d in items:
        try:
            dev = torch.device(d)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"prepare: {d!r} is not a device; pass e.g. 'cpu', 'cuda:0'.") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"prepare: device {d!r} asked for, but CUDA is not available here; pass 'cpu'.")
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        resolved.append(dev)
    return resolved


def plan_chain_batches(chains: int, chain_batch: int | None, slots: int) -> dict[int, list[list[int]]]:
    """Chain batches per device slot: ``chain_batch`` consecutive chains each (``None``: an even share of the
    chains per slot), dealt round-robin."""
    size = chain_batch or math.ceil(chains / slots)
    batches = [list(range(i, min(i + size, chains))) for i in range(0, chains, size)]
    plan: dict[int, list[list[int]]] = {}
    for k, batch in enumerate(batches):
        plan.setdefault(k % slots, []).append(batch)
    return plan


@dataclass
class SlotJob:
    """Everything one device slot needs; nothing in it is shared with another slot."""

    fm: FunctionalModel
    step_fn: StepFunction
    feed: DataFeed
    observables: DataFeed | None
    hyper: Hyper
    ctx: Context
    evaluation: EvaluationSet | None = None
    start_scale: float = 0.0
    noise_coarsening: int = 1


def run_slots(
    jobs: Sequence[SlotJob],
    plan: dict[int, list[list[int]]],
    sampler: Sampler,
    seed: int,
    schedule: Schedule,
    on_step: Callable[[], None] | None = None,
    records: np.ndarray | None = None,
    split_on_oom: bool = False,
) -> ChainTrace:
    """Run every planned chain batch; returns the traces of all chains, ordered by chain (per-sample losses of the
    evaluation sets go into ``records``, see :func:`~lambdahat.chains.run_chain_batch`). With ``split_on_oom`` a
    chain batch that runs out of CUDA memory is run again as two halves (the same results: a chain's stream and
    data do not depend on its batch)."""

    def run_batch(job: SlotJob, chains: list[int]) -> list[tuple[list[int], ChainTrace]]:
        try:
            trace = run_chain_batch(
                job.step_fn,
                job.fm,
                sampler,
                chains,
                job.feed,
                seed,
                schedule,
                job.hyper,
                job.ctx,
                on_step=on_step,
                observables=job.observables,
                evaluation=job.evaluation,
                records=records,
                start_scale=job.start_scale,
                noise_coarsening=job.noise_coarsening,
            )
        except Exception as exc:
            if not is_out_of_memory(exc) or not split_on_oom or len(chains) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(chains) // 2
            return run_batch(job, chains[:half]) + run_batch(job, chains[half:])
        return [(chains, trace)]

    def run_slot(slot: int) -> list[tuple[list[int], ChainTrace]]:
        job = jobs[slot]
        device_scope = torch.cuda.device(job.fm.device) if job.fm.device.type == "cuda" else nullcontext()
        with device_scope:
            return [piece for chains in plan[slot] for piece in run_batch(job, chains)]

    slots = sorted(plan)
    if len(slots) == 1:
        pieces = run_slot(slots[0])
    else:
        with ThreadPoolExecutor(max_workers=len(slots)) as pool:
            pieces = [piece for part in pool.map(run_slot, slots) for piece in part]
    pieces.sort(key=lambda item: item[0][0])
    traces = [trace for _, trace in pieces]
    return ChainTrace(info=torch.cat([t.info for t in traces], dim=1), counts=traces[0].counts)
