"""The public entry points: :func:`sample` on a prepared problem, and ``LLCEstimator``, the canonical-interp facade.

.. math::

    \\hat\\lambda(w^*) = n\\beta \\,\\big(\\mathbb E_{p}[L_n(w)] - L_n(w^*)\\big), \\qquad
    p(w) \\propto \\exp\\big(-n\\beta L_n(w) - \\tfrac{\\gamma}{2}\\|w - w^*\\|^2\\big)

estimated by running ``chains`` SGLD-type chains from ``w*`` and averaging the minibatch loss of their draws.
``LLCEstimator(...).estimate_llc(model, loader, ...)`` is ``sample(prepare(model, loader, config, ...), config)``
with ``config = LLCConfig(...)`` built from the constructor's arguments.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from . import guidance
from .accuracy import CHECK_RUNS, AccuracyCheck, check_accuracy, with_accuracy
from .calibration import BUDGET_RUNS, calibrate_problem
from .config import LLCConfig
from .functional import ParamSelection
from .problem import Problem, nbeta_from_effective_size, prepare, run_chains
from .relaxation import RELAXATION_RUNS, search_burnin
from .result import LLCResult
from .rng import resolve_seed

__all__ = ["LLCEstimator", "nbeta_from_effective_size", "sample"]


def sample(
    problem: Problem,
    config: LLCConfig,
    *,
    seed: int | None = None,
    chain_batch: int | str | None = None,
    show_progress: bool = True,
    warn: bool = True,
    per_sample_path: str | os.PathLike[str] | None = None,
    planned_runs: int | None = None,
) -> LLCResult:
    """Run the chains of ``config`` on a prepared problem; ``learning_rate="auto"`` is calibrated first, and
    ``burnin_steps="auto"`` runs until the chains have relaxed (:mod:`lambdahat.relaxation`).

    Parameters
    ----------
    problem:
        From :func:`lambdahat.prepare`.
    config:
        The sampling settings (:class:`~lambdahat.LLCConfig`).
    seed:
        Master seed (``None``: drawn and recorded). Per-chain results depend on ``(seed, chain)`` only.
    chain_batch:
        Chains per device call (``None``: all chains of a device at once; ``"auto"``: as many as the free memory
        holds, see :func:`lambdahat.problem.run_chains`).
    show_progress, warn:
        A progress bar; the trust policy's warnings.
    per_sample_path:
        With an evaluation set (``prepare(..., evaluation=loader)``): stream its per-sample losses to this ``.npy``
        file (see :func:`lambdahat.problem.run_chains`).
    planned_runs:
        Calls like this one the caller plans (a sweep's points): with the runs of this call
        (:func:`planned_call_runs`), a fact of the execution plan, which ``compile="auto"`` weighs
        (:mod:`lambdahat.plan`).

    Returns
    -------
    LLCResult
        With the calibration's evidence in ``settings["calibration"]`` when ε was chosen, and the accuracy checks
        of ``config.accuracy_checks()`` in ``settings["accuracy"]`` (judged by the trust policy); with
        ``burnin_steps="auto"``, the burn-in it chose in ``settings["burnin_steps"]`` and the search in
        ``settings["burnin_search"]``.

    Examples
    --------
    >>> import torch, torch.nn.functional as F
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from lambdahat import LLCConfig, prepare
    >>> x = torch.randn(128, 3); y = x.sum(1, keepdim=True)
    >>> problem = prepare(torch.nn.Linear(3, 1), DataLoader(TensorDataset(x, y), batch_size=32),
    ...                   criterion_fn=F.mse_loss, compile=False)
    >>> results = [sample(problem, LLCConfig(draws=20, chains=2, burnin_steps=10, learning_rate=lr),
    ...                   seed=0, show_progress=False, warn=False) for lr in (1e-4, 3e-4)]
    >>> [r.llcs.shape for r in results]
    [torch.Size([2]), torch.Size([2])]
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"sample: problem must come from lambdahat.prepare; got {type(problem).__name__}.")
    if not isinstance(config, LLCConfig):
        raise TypeError(f"sample: config must be an LLCConfig; got {type(config).__name__}.")
    seed = resolve_seed(seed)
    planned = planned_call_runs(config, planned_runs)
    options = dict(
        seed=seed,
        chain_batch=chain_batch,
        show_progress=show_progress,
        per_sample_path=per_sample_path,
        planned_runs=planned,
    )
    if config.burnin_steps == "auto":
        result = _sample_relaxed(problem, config, **options)
    else:
        result = _sample_at(problem, config, config.accuracy_checks(), **options)
    advice = guidance.advise(result, n=problem.n)
    return result.rejudged({**result.settings, "guidance": advice}, warn=warn)


def _sample_at(problem: Problem, config: LLCConfig, checks: Sequence[str], **options: Any) -> LLCResult:
    """One run of ``config`` (a number of burn-in steps), ``learning_rate="auto"`` calibrated, with ``checks``."""
    if config.learning_rate == "auto":
        return calibrate_problem(
            problem, config.replace(checks=_checks_text(checks)), warn=False, **options
        ).result
    result = run_chains(problem, config, warn=False, **options)
    return _with_checks(problem, config, result, checks, options)


def _with_checks(
    problem: Problem, config: LLCConfig, result: LLCResult, checks: Sequence[str], options: dict[str, Any]
) -> LLCResult:
    """``result`` with the accuracy checks in ``checks`` that it does not carry yet."""
    done = dict(result.settings.get("accuracy") or {})
    missing = [name for name in checks if name not in done]
    if not missing:
        return result
    measured = check_accuracy(
        problem,
        config,
        result,
        checks=missing,
        chain_batch=options["chain_batch"],
        planned_runs=options["planned_runs"],
    )
    recorded = {name: AccuracyCheck.from_dict(check) for name, check in done.items()}
    return with_accuracy(result, {**recorded, **measured}, warn=False)


def _checks_text(checks: Sequence[str]) -> str:
    return ",".join(checks) or "none"


def _sample_relaxed(problem: Problem, config: LLCConfig, **options: Any) -> LLCResult:
    """``burnin_steps="auto"``: the burn-in search of :mod:`lambdahat.relaxation`, each attempt the main run and its
    start check (``learning_rate="auto"`` is calibrated once, at the first burn-in, and kept); the config's other
    checks then run on the chosen attempt."""
    base, calibration = (
        config,
        None,
    )  # with learning_rate="auto": the step once chosen, and its search's record

    def attempt(burnin: int) -> LLCResult:
        nonlocal base, calibration
        result = _sample_at(problem, base.replace(burnin_steps=burnin), ("start",), **options)
        if base.learning_rate == "auto":
            base = base.replace(learning_rate=float(result.learning_rate))
            calibration = result.settings.get("calibration")
        return result

    result, search = search_burnin(config, attempt)
    final = base.replace(burnin_steps=search.burnin_steps)
    result = _with_checks(problem, final, result, config.accuracy_checks(), options)
    settings = {**result.settings, "checks": config.checks, "burnin_search": search.summary()}
    if config.learning_rate == "auto":
        settings.update(learning_rate="auto", calibration=calibration)
    return result.rejudged(settings, warn=False)


def planned_call_runs(config: LLCConfig, planned_runs: int | None = None) -> int:
    """The runs one :func:`sample` call makes on its step, in main runs: the main run, its accuracy checks
    (:data:`lambdahat.accuracy.CHECK_RUNS`) and, with ``learning_rate="auto"``, the search's budget
    (:data:`lambdahat.calibration.BUDGET_RUNS`), with ``burnin_steps="auto"`` the burn-in search's earlier attempts
    (:data:`lambdahat.relaxation.RELAXATION_RUNS`), times the caller's ``planned_runs``: a fact of every run's
    execution plan, so that ``compile="auto"`` weighs the whole call.

    Examples
    --------
    >>> planned_call_runs(LLCConfig()), planned_call_runs(LLCConfig(checks="all")), planned_call_runs(
    ...     LLCConfig(learning_rate="auto"), planned_runs=2), planned_call_runs(LLCConfig(burnin_steps="auto"))
    (1, 4, 19, 5)
    """
    runs = 1.0 + sum(CHECK_RUNS[name] for name in config.accuracy_checks())
    if config.learning_rate == "auto":
        runs += BUDGET_RUNS
    if config.burnin_steps == "auto":
        runs += RELAXATION_RUNS
    return math.ceil(max(1, planned_runs or 1) * runs)


class LLCEstimator:
    """Estimate the local learning coefficient of a trained model with vmapped SGLD-type chains.

    A thin facade over :func:`lambdahat.prepare` and :func:`lambdahat.sample` with the names of canonical-interp.
    The constructor's arguments are those of :class:`~lambdahat.LLCConfig` (``self.config``).

    Parameters
    ----------
    draws, chains, burnin_steps, steps_bw_draws, learning_rate, localization, nbeta, dtype:
        See :class:`~lambdahat.LLCConfig` (defaults 200, 10, 100, 1, 1e-5, 100, ``None`` = n / log n, float32).
        ``learning_rate="auto"`` is chosen on every run by its measured step bias
        (:func:`lambdahat.calibrate_problem`); the choice and its evidence are in ``get_metrics()["calibration"]``,
        the accuracy checks in ``get_metrics()["accuracy"]``.
        ``burnin_steps="auto"`` runs until the chains have relaxed (:mod:`lambdahat.relaxation`).
    sampler, weight_decay, restrict_to_orth_grad, bounding_box_size, sampler_options, model_mode, grad_accum_steps,
    checks, max_burnin_steps:
        Keyword-only; see :class:`~lambdahat.LLCConfig` (``checks``: the accuracy checks of
        :mod:`lambdahat.accuracy` made after the chains; ``max_burnin_steps``: the cap of ``burnin_steps="auto"``).

    Examples
    --------
    >>> import torch, torch.nn.functional as F
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> x = torch.randn(256, 4); y = x @ torch.ones(4, 1)
    >>> model = torch.nn.Linear(4, 1)
    >>> est = LLCEstimator(draws=50, chains=2, burnin_steps=20, learning_rate=1e-4, localization=10.0)
    >>> llcs = est.estimate_llc(model, DataLoader(TensorDataset(x, y), batch_size=64), criterion_fn=F.mse_loss,
    ...                         seed=0, compile=False, show_progress=False)
    >>> llcs.shape
    torch.Size([2])
    """

    def __init__(
        self,
        draws: int = 200,
        chains: int = 10,
        burnin_steps: int | str = 100,
        steps_bw_draws: int = 1,
        learning_rate: float | str = 1e-5,
        localization: float = 100.0,
        nbeta: float | None = None,
        dtype: torch.dtype | str = torch.float32,
        *,
        sampler: str = "sgld",
        weight_decay: float = 0.0,
        restrict_to_orth_grad: bool = False,
        bounding_box_size: float | None = None,
        sampler_options: dict[str, Any] | None = None,
        model_mode: str = "eval",
        grad_accum_steps: int = 1,
        checks: str = "auto",
        max_burnin_steps: int | None = None,
    ) -> None:
        self.config = LLCConfig(
            draws=draws,
            chains=chains,
            burnin_steps=burnin_steps,
            steps_bw_draws=steps_bw_draws,
            learning_rate=learning_rate,
            localization=localization,
            nbeta=nbeta,
            dtype=dtype,
            sampler=sampler,
            sampler_options=dict(sampler_options or {}),
            weight_decay=weight_decay,
            bounding_box_size=bounding_box_size,
            restrict_to_orth_grad=restrict_to_orth_grad,
            model_mode=model_mode,
            grad_accum_steps=grad_accum_steps,
            checks=checks,
            max_burnin_steps=max_burnin_steps,
        )
        self.result: LLCResult | None = None

    @classmethod
    def from_config(cls, config: LLCConfig) -> LLCEstimator:
        """An estimator running ``config``."""
        est = cls.__new__(cls)
        est.config, est.result = config, None
        return est

    def __getattr__(self, name: str) -> Any:
        # The settings read as attributes (est.draws, est.learning_rate, ...), as in canonical-interp.
        if name != "config" and name in LLCConfig.field_names():
            return getattr(self.config, name)
        raise AttributeError(f"LLCEstimator has no attribute {name!r}")

    @property
    def schedule(self):
        """The step schedule of the config (burn-in, draws, thinning)."""
        return self.config.schedule

    def __repr__(self) -> str:
        return f"LLCEstimator({self.config!r})"

    def replace(self, **changes: Any) -> LLCEstimator:
        """A new estimator with this one's settings and ``changes`` (names of :class:`~lambdahat.LLCConfig`).

        Examples
        --------
        >>> LLCEstimator(draws=50).replace(chains=2).chains
        2
        """
        try:
            return LLCEstimator.from_config(self.config.replace(**changes))
        except TypeError as exc:
            raise TypeError(str(exc).replace("LLCConfig.replace", "LLCEstimator.replace")) from exc

    def estimate_llc(
        self,
        model: nn.Module,
        loader,
        criterion_fn: Callable | None = None,
        unpack_fn: Callable | None = None,
        devices: str | torch.device | Sequence[str | torch.device] = "cpu",
        chain_batch: int | str | None = None,
        seed: int | None = None,
        compile: bool | str = "auto",
        show_progress: bool = True,
        params: ParamSelection = None,
        observables=None,
        *,
        loss_fn: Callable | None = None,
        evaluation=None,
        per_sample_path: str | os.PathLike[str] | None = None,
    ) -> torch.Tensor:
        """Run the chains and return the per-chain λ̂ (``[chains]`` float tensor on the CPU).

        Parameters
        ----------
        model:
            The trained model at ``w*``; never modified (weights, buffers, device, dtype, mode).
        loader:
            Iterable of batches, re-iterated for every pass (a ``DataLoader`` usually).
        criterion_fn:
            ``(outputs, targets) -> scalar`` mean loss (default ``F.cross_entropy``); outputs with ``.logits``
            are unwrapped; integer targets equal to -100 do not count, in L0 and in every draw alike.
        unpack_fn:
            ``batch -> (inputs, targets)`` for batches that are not ``(x, y)`` pairs. Inputs that are a dict are
            passed to the model as keyword arguments (``input_ids``, ``attention_mask``, ...).
        devices:
            A device or a list of devices; chain batches are spread over them and run concurrently.
        chain_batch:
            Chains per device call (``None``: all chains of a device at once; ``"auto"``: as many as the free memory
            holds, see :func:`lambdahat.problem.run_chains`). Results do not depend on it.
        seed:
            Master seed. Chain ``c`` draws its noise from a stream derived from ``(seed, c)`` only, and every
            chain sees the same data order, so per-chain results do not depend on ``chain_batch`` or ``devices``.
            ``None`` draws one (recorded in ``get_metrics()["seed"]``).
        compile:
            ``"auto"`` (default): compile when the planned work is large (many step calls or many flops, a rule
            of the run's facts alone, :mod:`lambdahat.plan`; the same call gives the same bits in any process);
            ``True``: always compile; ``False``: never. A failed compile continues eagerly with one warning.
        show_progress:
            Show a tqdm bar over steps.
        params:
            Restrict sampling to these parameters (names, glob patterns, module prefixes, ``{name: bool or
            element mask}`` or a predicate); the others stay at ``w*``. ``None`` samples every parameter that
            requires grad.
        observables:
            A second loader (same batch format) on which the draw losses and ``L0`` are evaluated while the
            sampler is driven by ``loader`` (data-refined LLC). ``nbeta=None`` still uses ``len(loader.dataset)``.
        loss_fn:
            ``(model, batch) -> per-sample losses [B]`` (or per-token ``[B, T]``, optionally with a mask);
            replaces ``criterion_fn`` and ``unpack_fn``.
        evaluation:
            A loader of a fixed set whose per-sample losses are recorded at every draw
            (``get_metrics()["per_sample_losses"]``, ``[chains, draws, samples(, tokens)]``).
        per_sample_path:
            Stream those per-sample losses to this ``.npy`` file (memory-mapped in the result).

        Returns
        -------
        torch.Tensor
            ``[chains]`` per-chain λ̂. Use :meth:`get_metrics` or :attr:`result` for traces and diagnostics.
        """
        self.result = self.run(
            model,
            loader,
            criterion_fn=criterion_fn,
            unpack_fn=unpack_fn,
            devices=devices,
            chain_batch=chain_batch,
            seed=seed,
            compile=compile,
            show_progress=show_progress,
            params=params,
            observables=observables,
            loss_fn=loss_fn,
            evaluation=evaluation,
            per_sample_path=per_sample_path,
        )
        return self.result.llcs

    def run(
        self,
        model: nn.Module,
        loader,
        criterion_fn: Callable | None = None,
        unpack_fn: Callable | None = None,
        devices: str | torch.device | Sequence[str | torch.device] = "cpu",
        chain_batch: int | str | None = None,
        seed: int | None = None,
        compile: bool | str = "auto",
        show_progress: bool = True,
        params: ParamSelection = None,
        observables=None,
        *,
        loss_fn: Callable | None = None,
        evaluation=None,
        per_sample_path: str | os.PathLike[str] | None = None,
        warn: bool = True,
    ) -> LLCResult:
        """Like :meth:`estimate_llc` but returns the whole :class:`~lambdahat.LLCResult` (``warn=False``: no
        warnings, the trust policy's notes stay in ``result.warnings``)."""
        problem = prepare(
            model,
            loader,
            self.config,
            criterion_fn=criterion_fn,
            unpack_fn=unpack_fn,
            loss_fn=loss_fn,
            devices=devices,
            params=params,
            observables=observables,
            evaluation=evaluation,
            compile=compile,
        )
        return sample(
            problem,
            self.config,
            seed=seed,
            chain_batch=chain_batch,
            show_progress=show_progress,
            warn=warn,
            per_sample_path=per_sample_path,
        )

    def get_metrics(self) -> dict[str, Any]:
        """Metrics of the last :meth:`estimate_llc` call: ``llc_mean``, ``llc_std``, ``llcs`` ``[chains]``,
        ``losses`` ``[chains, draws]``, ``losses_mean``, ``losses_std`` (of the final draws), ``init_loss``,
        ``nbeta``, diagnostics (``mala_acceptance``, ``rhat``, ``ess``, ``llc_trace``, ``diverged``, ``status``,
        ...), ``seed`` and the run's settings."""
        if self.result is None:
            raise RuntimeError("LLCEstimator.get_metrics: call estimate_llc first.")
        return self.result.to_metrics()
