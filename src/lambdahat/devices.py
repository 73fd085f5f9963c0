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

import torch

from .chains import Schedule, StepFunction, run_chain_batch
from .data import DataFeed
from .functional import FunctionalModel
from .samplers import Context, Hyper, Sampler

__all__ = ["SlotJob", "plan_chain_batches", "run_slots"]


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


def run_slots(
    jobs: Sequence[SlotJob],
    plan: dict[int, list[list[int]]],
    sampler: Sampler,
    seed: int,
    schedule: Schedule,
    on_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Run every planned chain batch; returns the ``[fields, chains, steps]`` trace ordered by chain."""

    def run_slot(slot: int) -> list[tuple[list[int], torch.Tensor]]:
        job = jobs[slot]
        device_scope = torch.cuda.device(job.fm.device) if job.fm.device.type == "cuda" else nullcontext()
        with device_scope:
            return [
                (
                    chains,
                    run_chain_batch(
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
                    ),
                )
                for chains in plan[slot]
            ]

    slots = sorted(plan)
    if len(slots) == 1:
        pieces = run_slot(slots[0])
    else:
        with ThreadPoolExecutor(max_workers=len(slots)) as pool:
            pieces = [piece for part in pool.map(run_slot, slots) for piece in part]
    pieces.sort(key=lambda item: item[0][0])
    return torch.cat([trace for _, trace in pieces], dim=1)
