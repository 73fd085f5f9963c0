"""Prepare once, sample many: what every run on one model and one data set shares, and the runs themselves.

:func:`prepare` does the work that does not depend on the sampling hyperparameters: a private functional copy of the
model per device slot, the objective (criterion or per-sample ``loss_fn``), the selection of sampled scalars, the
full-data loss at the anchor

.. math::

    L_0 = \\frac{\\sum_b c_b L_b(w^*)}{\\sum_b c_b} \\qquad (c_b = \\text{samples, or tokens, that count in batch } b)

(computed with exactly the loss function, precision and model mode of the draws), the unit full-batch gradient for
``restrict_to_orth_grad`` and the fixed evaluation set whose per-sample losses are recorded at the draws.
:func:`run_chains` then runs the chains of one :class:`~lambdahat.config.LLCConfig` (a numeric ``learning_rate``) on
a prepared :class:`Problem` and returns an :class:`~lambdahat.result.LLCResult`; the compiled step of a problem is
reused by every later run on it that plans a compiled step (:mod:`lambdahat.plan`). ``learning_rate="auto"`` is
resolved one floor up (:func:`lambdahat.sample`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import trust
from .anchor import anchor_pass
from .chains import EvaluationSet, StepFunction
from .config import LLCConfig, dtype_name
from .data import DataFeed, PassLedger, batch_shapes_fixed, dataset_size
from .devices import SlotJob, plan_chain_batches, resolve_devices, run_slots
from .functional import FunctionalModel, Objective, ParamLayout, ParamSelection, select_parameters
from .memory import choose_chain_batch
from .plan import ExecutionPlan, RunFacts, plan_execution
from .result import LLCResult
from .rng import resolve_seed
from .samplers import Context, Hyper, Sampler

__all__ = ["Problem", "acceptance_kind", "nbeta_from_effective_size", "prepare", "run_chains"]

#: The data-feed seed of the pass that computes L0 (L0 sums over a whole pass, so the order only affects rounding).
ANCHOR_SEED = 0


def nbeta_from_effective_size(n: int | float) -> float:
    """The standard inverse temperature times sample size, ``nβ = n / log n`` (β = 1 / log n).

    Examples
    --------
    >>> round(nbeta_from_effective_size(1000), 3)
    144.765
    """
    if isinstance(n, bool) or not isinstance(n, int | float) or not n > 1:
        raise ValueError(
            f"nbeta_from_effective_size: n must be > 1 (n / log n is undefined otherwise); got {n!r}."
        )
    return float(n) / math.log(n)


def _input_dtype(fm: FunctionalModel) -> torch.dtype | None:
    """Floating inputs are cast to the parameters' dtype when the forward runs in it without autocast and it is
    not float32 (float64 runs, ``dtype="model"`` on a bfloat16 model), left as they are otherwise."""
    if fm.autocast_dtype is None and fm.param_dtype != torch.float32:
        return fm.param_dtype
    return None


def _loader_advice(loader, devices: list[torch.device]) -> None:
    """Warn about DataLoader settings that stall a CUDA run (only where they matter)."""
    if not any(d.type == "cuda" for d in devices) or not isinstance(loader, torch.utils.data.DataLoader):
        return
    if isinstance(loader.dataset, torch.utils.data.TensorDataset):
        return
    tips = []
    if not loader.pin_memory:
        tips.append("pin_memory=True")
    if loader.num_workers == 0:
        tips.append("num_workers>0")
    elif not loader.persistent_workers:
        tips.append("persistent_workers=True")
    if tips:
        warnings.warn(
            f"prepare: the loader is iterated for every chain batch; on CUDA set {', '.join(tips)} "
            "to keep the device fed.",
            UserWarning,
            stacklevel=4,
        )


@dataclass(eq=False)
class Problem:
    """A model and its data, prepared for any number of runs (see :func:`prepare`).

    Attributes
    ----------
    model:
        The caller's module (only read: it keys the cache of compiled steps).
    loader, observables:
        The data driving the sampler; the optional data on which draws and L0 are evaluated instead.
    objective:
        How a batch becomes a loss.
    layout:
        The sampled scalars (``layout.dim`` of them).
    devices:
        One entry per device slot.
    slots:
        One private :class:`~lambdahat.functional.FunctionalModel` per device slot.
    structural:
        The settings fixed by the preparation (``dtype``, ``model_mode``, ``restrict_to_orth_grad``).
    init_loss:
        ``L0``.
    direction:
        Unit full-batch gradient at ``w*`` (``restrict_to_orth_grad``), else ``None``.
    n:
        ``len(loader.dataset)`` when known (``nbeta=None`` uses ``n / log n``).
    evaluation:
        Batches of the set whose per-sample losses are recorded at every draw, per slot.
    compile:
        ``True``, ``False`` or ``"auto"`` (see :mod:`lambdahat.plan`).
    samples_per_batch:
        Counted samples (tokens) per batch of the loader, from the ``L0`` pass (a fact of the execution plan).
    full_batch:
        Every step sees the same single batch holding the whole data set (a loader of one batch over a
        ``TensorDataset``, or a list of one batch, and no observables): the samplers then report the *exact* MALA
        acceptance, computed from the full-data potentials, instead of the gradient-based estimate.
    """

    model: nn.Module
    loader: Any
    observables: Any
    objective: Objective
    layout: ParamLayout
    devices: list[torch.device]
    slots: list[FunctionalModel]
    structural: dict[str, Any]
    init_loss: float
    direction: torch.Tensor | None
    n: int | None
    evaluation: list[EvaluationSet] | None
    compile: bool | str
    samples_per_batch: float = 1.0
    full_batch: bool = False
    _steps: dict = field(default_factory=dict, repr=False)

    @property
    def dim(self) -> int:
        """Number of sampled scalars ``D``."""
        return self.layout.dim

    def nbeta(self, config: LLCConfig) -> float:
        """``config.nbeta``, or ``n / log n`` from the data set size when it is ``None``."""
        if config.nbeta is not None:
            return config.nbeta
        if self.n is None:
            raise ValueError(
                "sample: nbeta=None needs the data set size from len(loader.dataset), which this loader "
                "does not have; pass nbeta=nbeta_from_effective_size(n) with your n."
            )
        if self.n < 2:
            raise ValueError(f"sample: the data set has {self.n} sample(s); nβ = n / log n needs n >= 2.")
        return nbeta_from_effective_size(self.n)

    def check(self, config: LLCConfig) -> None:
        """Raise when ``config`` changes a setting that the preparation fixed."""
        differ = {k: (v, getattr(config, k)) for k, v in self.structural.items() if getattr(config, k) != v}
        if differ:
            listed = ", ".join(f"{k}: prepared {a!r}, asked {b!r}" for k, (a, b) in differ.items())
            raise ValueError(
                f"sample: the problem was prepared with other settings ({listed}); prepare it again with this "
                "config, or keep these settings."
            )

    def step_function(
        self, slot: int, config: LLCConfig, sampler: Sampler, plan: ExecutionPlan
    ) -> StepFunction:
        """The step of one slot for ``sampler`` (``config.build_sampler()``) under ``plan`` (built once per problem
        and plan; compiled functions are kept per model object for the life of the process, see
        :func:`lambdahat.chains.compiled_steps`)."""
        signature = self._signature(slot, config, sampler)
        key = (signature, plan.mode, plan.chunk_steps)
        if key not in self._steps:
            self._steps[key] = StepFunction(
                self.slots[slot],
                sampler,
                plan,
                model=self.model,
                key=signature,
                observe=self.observables is not None,
                micro_batches=config.grad_accum_steps,
                static_shapes=self._static_shapes(),
            )
        return self._steps[key]

    def _static_shapes(self) -> bool:
        """Whether the step's batches keep one shape (but a pass's last): compiled steps then use static graphs
        (:func:`lambdahat.chains.compile_step`)."""
        return batch_shapes_fixed(self.loader) and (
            self.observables is None or batch_shapes_fixed(self.observables)
        )

    def _signature(self, slot: int, config: LLCConfig, sampler: Sampler) -> tuple:
        """What a compiled step depends on besides the objective (which :func:`lambdahat.chains.compiled_steps`
        compares): the slot's device and resolved precision, the sampled scalars, the sampler and its settings."""
        fm = self.slots[slot]
        return (
            slot,
            self.observables is not None,
            fm.device,
            fm.param_dtype,
            fm.autocast_dtype,
            config.model_mode,
            self.layout,
            sampler.name,
            repr(sampler.step),
            config.restrict_to_orth_grad,
            config.bounding_box_size,
            config.weight_decay,
            config.grad_accum_steps,
            self._static_shapes(),
        )

    def plan(
        self,
        config: LLCConfig,
        chain_batch: int,
        planned_runs: int | None = None,
        noise_coarsening: int = 1,
    ) -> ExecutionPlan:
        """The execution plan of a run of ``config`` (:func:`lambdahat.plan.plan_execution` on this problem's
        facts)."""
        facts = RunFacts(
            dim=self.dim,
            samples_per_batch=self.samples_per_batch,
            steps=config.total_steps * config.grad_accum_steps,
            chains=config.chains,
            chain_batch=chain_batch,
            slots=len(self.slots),
            planned_runs=max(1, planned_runs or 1),
            device_type=self.devices[0].type,
            compile=self.compile,
            chunkable=self.observables is None
            and self.evaluation is None
            and config.grad_accum_steps == 1
            and noise_coarsening == 1,
        )
        return plan_execution(facts)

    def auto_chain_batch(self, config: LLCConfig, seed: int) -> tuple[int, dict[str, Any]]:
        """``chain_batch="auto"``: the most chains of a slot that fit the free memory of every slot's device
        (:func:`lambdahat.memory.choose_chain_batch` on the first batch of the data), and the memory plan."""
        per_slot = math.ceil(config.chains / len(self.slots))
        chosen, plans = per_slot, []
        for slot, fm in enumerate(self.slots):
            x, y = next(iter(self.feed(slot, seed)))
            batch, model, free = choose_chain_batch(fm, x, y, per_slot)
            chosen = min(chosen, batch)
            plans.append(
                {
                    "device": str(fm.device),
                    "base_bytes": model.base,
                    "per_chain_bytes": model.per_chain,
                    "how": model.how,
                    "free_bytes": free,
                }
            )
        return chosen, {"chain_batch": chosen, "slots": plans}

    def feed(
        self, slot: int, seed: int, observables: bool = False, ledger: PassLedger | None = None
    ) -> DataFeed:
        """A fresh endless data feed on a slot's device (every feed of one seed yields the same batches); feeds
        that share a ``ledger`` (one per loader and run) check that they do."""
        fm = self.slots[slot]
        loader = self.observables if observables else self.loader
        return DataFeed(
            loader,
            self.objective.unpack,
            fm.device,
            seed + (1 if observables else 0),
            _input_dtype(fm),
            ledger=ledger,
        )


def _fixed_data(loader) -> bool:
    """Whether every pass of the loader gives the same samples (no augmentation can hide in it)."""
    if isinstance(loader, list | tuple):
        return True
    return isinstance(loader, torch.utils.data.DataLoader) and isinstance(
        loader.dataset, torch.utils.data.TensorDataset
    )


def _evaluation_set(fm: FunctionalModel, loader, objective: Objective) -> EvaluationSet:
    feed = DataFeed(loader, objective.unpack, fm.device, ANCHOR_SEED, _input_dtype(fm))
    batches, sizes, tokens, at_init = [], [], 0, []
    for x, y in feed.one_pass():
        with torch.no_grad():
            losses = fm.per_sample_losses(fm.w_star, fm.frozen, fm.buffers, x, y)
        batches.append((x, y))
        sizes.append(losses.shape[0])
        at_init.append(losses.detach().float().cpu())
        tokens = max(tokens, losses.shape[1]) if losses.dim() > 1 else 0
    shape = (sum(sizes), tokens) if tokens else (sum(sizes),)
    init_losses = torch.full(shape, float("nan"))
    offset = 0
    for losses in at_init:  # the layout of the records: shorter batches padded with NaN
        rows = slice(offset, offset + len(losses))
        init_losses[(rows, slice(0, losses.shape[1])) if tokens else rows] = losses
        offset += len(losses)
    return EvaluationSet(tuple(batches), tuple(sizes), shape, init_losses)


def prepare(
    model: nn.Module,
    loader,
    config: LLCConfig | None = None,
    *,
    criterion_fn: Callable | None = None,
    unpack_fn: Callable | None = None,
    loss_fn: Callable | None = None,
    devices: str | torch.device | Sequence[str | torch.device] = "cpu",
    params: ParamSelection = None,
    observables=None,
    evaluation=None,
    compile: bool | str = "auto",
) -> Problem:
    """Prepare a model and its data for :func:`run_chains` / :func:`lambdahat.sample`.

    Parameters
    ----------
    model:
        The trained model at ``w*``; never modified (weights, buffers, device, dtype, mode, generator state).
    loader:
        Iterable of batches, re-iterated for every pass (a ``DataLoader`` usually).
    config:
        Supplies the settings that the preparation fixes (``dtype``, ``model_mode``, ``restrict_to_orth_grad``);
        default ``LLCConfig()``.
    criterion_fn, unpack_fn, loss_fn:
        How a batch becomes a loss (see :class:`~lambdahat.functional.Objective`): ``criterion_fn(outputs,
        targets)`` after ``unpack_fn(batch) -> (inputs, targets)`` (inputs that are a dict are passed as keyword
        arguments), or ``loss_fn(model, batch)`` returning per-sample losses. Default ``F.cross_entropy``.
    devices:
        A device or a list of device slots; chain batches are spread over them and run concurrently.
    params:
        The sampled parameters (names, globs, module prefixes, ``{name: bool or element mask}``, a predicate);
        the rest stay bitwise at ``w*``. ``None``: every parameter that requires grad.
    observables:
        A second loader on which draws and ``L0`` are evaluated while the sampler is driven by ``loader``.
    evaluation:
        A loader of a fixed set whose per-sample (per-token) losses are recorded at every draw
        (``LLCResult.per_sample_losses``, ``[chains, draws, samples(, tokens)]``).
    compile:
        ``"auto"``, ``True`` or ``False`` (see :class:`lambdahat.LLCEstimator`).

    Returns
    -------
    Problem
    """
    config = LLCConfig() if config is None else config
    if not isinstance(config, LLCConfig):
        raise TypeError(f"prepare: config must be an LLCConfig; got {type(config).__name__}.")
    if not isinstance(model, nn.Module):
        raise TypeError(f"prepare: model must be a torch.nn.Module; got {type(model).__name__}.")
    if compile not in (True, False, "auto"):
        raise ValueError(f"prepare: compile must be True, False or 'auto'; got {compile!r}.")
    objective = Objective(criterion_fn, unpack_fn, loss_fn)
    dev_list = resolve_devices(devices)
    layout = select_parameters(model, params)
    _loader_advice(loader, dev_list)
    # One functional copy of the model per device slot: threads never share a module object, not even when the
    # same device is listed twice.
    slots = [
        FunctionalModel(model, objective, dev, config.dtype, layout, config.model_mode) for dev in dev_list
    ]
    main = slots[0]
    in_dtype = _input_dtype(main)
    feed = DataFeed(loader, objective.unpack, main.device, ANCHOR_SEED, in_dtype)
    anchor = anchor_pass(main, feed, config.restrict_to_orth_grad)
    init_loss, direction = anchor.init_loss, anchor.direction
    if observables is not None:
        obs_feed = DataFeed(observables, objective.unpack, main.device, ANCHOR_SEED, in_dtype)
        init_loss = anchor_pass(main, obs_feed, False).init_loss
    if not math.isfinite(init_loss):
        raise ValueError(
            f"prepare: the loss at w* is {init_loss}; the model must have a finite loss on the data."
        )
    evaluation_sets = None
    if evaluation is not None:
        evaluation_sets = [_evaluation_set(fm, evaluation, objective) for fm in slots]
    return Problem(
        model=model,
        loader=loader,
        observables=observables,
        objective=objective,
        layout=main.layout,
        devices=dev_list,
        slots=slots,
        structural=config.structural(),
        init_loss=init_loss,
        direction=direction,
        n=dataset_size(loader),
        evaluation=evaluation_sets,
        compile=compile,
        samples_per_batch=anchor.counted / max(1, anchor.batches),
        full_batch=observables is None and anchor.batches == 1 and _fixed_data(loader),
    )


def _records(problem: Problem, config: LLCConfig, path) -> np.ndarray | None:
    """The host array of per-sample losses ``[chains, draws, samples(, tokens)]`` (NaN until written)."""
    if problem.evaluation is None:
        if path is not None:
            raise ValueError("sample: per_sample_path needs an evaluation set; pass evaluation= to prepare.")
        return None
    shape = (config.chains, config.draws, *problem.evaluation[0].shape)
    if path is None:
        return np.full(shape, np.nan, dtype=np.float32)
    records = np.lib.format.open_memmap(os.fspath(path), mode="w+", dtype=np.float32, shape=shape)
    records[...] = np.nan
    return records


def acceptance_kind(sampler: str, full_batch: bool) -> str:
    """How the MALA acceptance of a run is obtained: ``"exact"`` (full-batch data: from the potentials),
    ``"gradient estimate"`` (the trapezoid rule on the gradients, exact on quadratic potentials) or
    ``"not available"`` (SGNHT, whose update has no Metropolis–Hastings counterpart)."""
    kind = trust.acceptance_kind(sampler)
    return "exact" if full_batch and kind == "gradient estimate" else kind


def _executed(plan: ExecutionPlan, jobs: Sequence[SlotJob]) -> dict[str, Any]:
    """The plan as recorded on the result, with what ran where a compiler failure changed it."""
    recorded = plan.to_dict()
    failures = [job.step_fn.fell_back for job in jobs if job.step_fn.fell_back]
    if failures:
        recorded["executed"] = jobs[0].step_fn.executed()
        recorded["fell_back"] = failures[0]
    return recorded


def run_chains(
    problem: Problem,
    config: LLCConfig,
    *,
    seed: int | None = None,
    chain_batch: int | str | None = None,
    show_progress: bool = True,
    warn: bool = True,
    settings: dict[str, Any] | None = None,
    per_sample_path: str | os.PathLike[str] | None = None,
    planned_runs: int | None = None,
    start_scale: float = 0.0,
    noise_coarsening: int = 1,
) -> LLCResult:
    """Run ``config.chains`` chains on a prepared problem.

    Parameters
    ----------
    problem:
        From :func:`prepare`.
    config:
        The sampling settings; ``learning_rate`` must be a number here (``"auto"`` is resolved by
        :func:`lambdahat.sample`), and the settings fixed by the preparation must match.
    seed:
        Master seed. Chain ``c`` draws its noise from a stream derived from ``(seed, c)`` only, and every chain sees
        the same data order, so per-chain results do not depend on ``chain_batch`` or the devices. ``None`` draws
        one (recorded in the result).
    chain_batch:
        Chains per device call (``None``: all chains of a slot at once; ``"auto"``: as many as the device's free
        memory holds, from a measured or estimated memory model, see :mod:`lambdahat.memory`; a CUDA
        out-of-memory error then halves the chain batch and repeats it, with the same results).
    show_progress:
        A tqdm bar over steps.
    warn:
        Issue the trust policy's warnings.
    settings:
        Extra metadata recorded in ``result.settings``.
    per_sample_path:
        With an evaluation set: write its per-sample losses to this ``.npy`` file as they are made (blocks of at
        most 64 MiB leave the device), and give ``result.per_sample_losses`` as a tensor over the memory-mapped
        file; ``None`` keeps them in host memory.
    planned_runs:
        How many runs like this one the caller plans on this step (a sweep passes its number of points): a fact of
        the execution plan (:func:`lambdahat.plan.plan_execution`), which ``compile="auto"`` weighs.
    start_scale:
        ``0``: every chain starts at ``w*``; ``s > 0``: chain ``c`` starts at ``w* + s z_c``, ``z_c ~ N(0, I)``
        from its own stream (:func:`lambdahat.chains.start_positions`; ``s = 1/sqrt(γ)`` is a draw of the
        localizing Gaussian, the over-dispersed start of :mod:`lambdahat.accuracy`).
    noise_coarsening:
        ``k > 1``: step ``t`` takes the normalized sum of the noise of steps ``kt … kt + k − 1`` (eager steps),
        so that a run at ``kε`` follows the Brownian path of the run at ε with the same seed
        (:class:`lambdahat.chains.StepNoise`; the step check of :mod:`lambdahat.accuracy`).
    """
    if not isinstance(config, LLCConfig):
        raise TypeError(f"run_chains: config must be an LLCConfig; got {type(config).__name__}.")
    if config.learning_rate == "auto":
        raise ValueError(
            "run_chains: learning_rate='auto' is chosen by lambdahat.sample or lambdahat.calibrate; pass a number."
        )
    problem.check(config)
    auto_batch = chain_batch == "auto"
    if (
        chain_batch is not None
        and not auto_batch
        and (isinstance(chain_batch, bool) or not isinstance(chain_batch, int) or chain_batch < 1)
    ):
        raise ValueError(f"run_chains: chain_batch must be an int >= 1, 'auto' or None; got {chain_batch!r}.")
    seed = resolve_seed(seed, "run_chains")
    nbeta = problem.nbeta(config)
    sampler = config.build_sampler()
    memory_plan = None
    if auto_batch:
        chain_batch, memory_plan = problem.auto_chain_batch(config, seed)
    batches = plan_chain_batches(config.chains, chain_batch, len(problem.slots))

    def hyper_on(fm: FunctionalModel) -> Hyper:
        t = lambda v: torch.tensor(v, device=fm.device, dtype=fm.param_dtype)  # noqa: E731
        return Hyper(t(config.learning_rate), t(nbeta), t(config.localization))

    def ctx_on(fm: FunctionalModel) -> Context:
        u = None if problem.direction is None else problem.direction.to(fm.device)
        exact = acceptance_kind(sampler.name, problem.full_batch) == "exact"
        return Context(fm.w_star, u, config.bounding_box_size, config.weight_decay, exact)

    plan = problem.plan(config, len(batches[0][0]), planned_runs, noise_coarsening)
    ledgers = (PassLedger(), PassLedger())  # the loader's and the observables' passes, for this run
    jobs = [
        SlotJob(
            fm=fm,
            step_fn=problem.step_function(slot, config, sampler, plan),
            feed=problem.feed(slot, seed, ledger=ledgers[0]),
            observables=None
            if problem.observables is None
            else problem.feed(slot, seed, observables=True, ledger=ledgers[1]),
            hyper=hyper_on(fm),
            ctx=ctx_on(fm),
            evaluation=None if problem.evaluation is None else problem.evaluation[slot],
            start_scale=float(start_scale),
            noise_coarsening=int(noise_coarsening),
        )
        for slot, fm in enumerate(problem.slots)
    ]
    records = _records(problem, config, per_sample_path)
    total_steps = config.total_steps * sum(len(slot_batches) for slot_batches in batches.values())
    with tqdm(
        total=total_steps, unit="step", desc="LLC chains", disable=not show_progress, leave=False
    ) as bar:
        trace = run_slots(
            jobs,
            batches,
            sampler,
            seed,
            config.schedule,
            on_step=lambda: bar.update(1),
            records=records,
            split_on_oom=auto_batch,
        )
    if records is not None and per_sample_path is not None:
        records.flush()
    recorded = {
        **config.to_dict(),
        "nbeta": nbeta,
        "dtype": dtype_name(config.dtype),
        "devices": [str(d) for d in problem.devices],
        "chain_batch": len(batches[0][0]),
        "chain_memory": memory_plan,
        "plan": _executed(plan, jobs),
        "compiled": any(job.step_fn.is_compiled for job in jobs),
        "compile_seconds": sum(job.step_fn.compile_seconds for job in jobs),
        "chunk_steps": jobs[0].step_fn.chunk_steps,
        "sampled_parameters": len(problem.layout.names),
        "dim": problem.dim,
        "acceptance_kind": acceptance_kind(sampler.name, problem.full_batch),
        "calibration": None,
        "start_scale": float(start_scale),
        **(settings or {}),
    }
    result = LLCResult.from_trace(
        trace.info,
        config.schedule,
        problem.init_loss,
        nbeta,
        config.learning_rate,
        config.localization,
        seed,
        recorded,
        warn=warn,
        counts=trace.counts,
        per_sample_losses=None if records is None else torch.from_numpy(records),
    )
    if problem.evaluation is None:
        return result
    return dataclasses.replace(result, per_sample_losses_at_init=problem.evaluation[0].init_losses)
