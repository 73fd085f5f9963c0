"""``LLCEstimator``: the public, canonical-interp-compatible entry point.

.. math::

    \\hat\\lambda(w^*) = n\\beta \\,\\big(\\mathbb E_{p}[L_n(w)] - L_n(w^*)\\big), \\qquad
    p(w) \\propto \\exp\\big(-n\\beta L_n(w) - \\tfrac{\\gamma}{2}\\|w - w^*\\|^2\\big)

estimated by running ``chains`` SGLD-type chains from ``w*`` and averaging the minibatch loss of their draws.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .anchor import anchor_loss_and_direction
from .chains import (
    AUTO_COMPILE_FACTOR,
    COMPILE_SECONDS_GUESS,
    Schedule,
    StepFunction,
    predicted_eager_seconds,
)
from .data import DataFeed, dataset_size
from .devices import SlotJob, plan_chain_batches, run_slots
from .functional import FunctionalModel, select_parameters
from .result import LLCResult
from .rng import resolve_seed
from .samplers import Context, Hyper, get_sampler

__all__ = ["LLCEstimator", "nbeta_from_effective_size"]


def nbeta_from_effective_size(n: int | float) -> float:
    """The standard inverse temperature times sample size, ``nβ = n / log n`` (β = 1 / log n).

    Examples
    --------
    >>> round(nbeta_from_effective_size(1000), 3)
    144.765
    """
    if not n > 1:
        raise ValueError(
            f"nbeta_from_effective_size: n must be > 1 (n / log n is undefined otherwise); got {n}."
        )
    return float(n) / math.log(n)


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"LLCEstimator: {name} must be an int >= {minimum}; got {value!r}.")
    return value


def _non_negative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"LLCEstimator: {name} must be a finite number >= 0; got {value!r}.")
    return float(value)


def _resolve_devices(devices) -> list[torch.device]:
    items = list(devices) if isinstance(devices, list | tuple) else [devices]
    if not items:
        raise ValueError(
            "estimate_llc: devices is empty; pass a device such as 'cpu' or ['cuda:0', 'cuda:1']."
        )
    resolved = []
    for d in items:
        try:
            dev = torch.device(d)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"estimate_llc: {d!r} is not a device; pass e.g. 'cpu', 'cuda:0'.") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"estimate_llc: device {d!r} asked for, but CUDA is not available here; pass 'cpu'."
            )
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        resolved.append(dev)
    return resolved


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
            f"estimate_llc: the loader is iterated for every chain batch; on CUDA set {', '.join(tips)} "
            "to keep the device fed.",
            UserWarning,
            stacklevel=3,
        )


class LLCEstimator:
    """Estimate the local learning coefficient of a trained model with vmapped SGLD-type chains.

    Parameters
    ----------
    draws:
        Draws per chain after burn-in (default 200).
    chains:
        Number of independent chains (default 10).
    burnin_steps:
        Steps discarded before the first draw (default 100).
    steps_bw_draws:
        Steps between consecutive draws (default 1).
    learning_rate:
        Step size ε (default 1e-5). Too large diverges or lowers MALA acceptance; too small does not mix.
        ``"auto"``: chosen before every run by :func:`lambdahat.calibrate` from short pilot runs (at most 30 % of
        the run's cost); the choice and its evidence are in ``get_metrics()["calibration"]``.
    localization:
        γ, strength of the pull towards ``w*`` (default 100).
    nbeta:
        nβ; ``None`` uses ``n / log n`` with ``n = len(loader.dataset)``.
    dtype:
        ``torch.float32`` (default) or ``torch.float64``: arithmetic in that precision; ``torch.bfloat16`` /
        ``torch.float16``: forward under autocast, parameters and updates in float32.
    sampler:
        ``"sgld"`` (default), ``"rmsprop_sgld"`` or ``"sgnht"``.
    weight_decay:
        Coefficient of an extra ``(wd/2)||w||²`` term in the potential (default 0).
    restrict_to_orth_grad:
        Sample only in the hyperplane through ``w*`` orthogonal to the full-batch gradient at ``w*`` (default
        False); makes ``w*`` a critical point of the restricted loss when it is not quite one.
    bounding_box_size:
        If given, clamp every coordinate to ``w* ± bounding_box_size`` after each step.
    sampler_options:
        Options of the sampler (``alpha``, ``eps``, ``adapt_steps`` (default ``burnin_steps``) for rmsprop_sgld;
        ``diffusion`` for sgnht).

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
        burnin_steps: int = 100,
        steps_bw_draws: int = 1,
        learning_rate: float = 1e-5,
        localization: float = 100.0,
        nbeta: float | None = None,
        dtype: torch.dtype = torch.float32,
        *,
        sampler: str = "sgld",
        weight_decay: float = 0.0,
        restrict_to_orth_grad: bool = False,
        bounding_box_size: float | None = None,
        sampler_options: dict[str, Any] | None = None,
    ) -> None:
        self.schedule = Schedule(
            draws=_positive_int("draws", draws),
            burnin_steps=_positive_int("burnin_steps", burnin_steps, minimum=0),
            steps_bw_draws=_positive_int("steps_bw_draws", steps_bw_draws),
        )
        self.draws, self.burnin_steps, self.steps_bw_draws = draws, burnin_steps, steps_bw_draws
        self.chains = _positive_int("chains", chains)
        if isinstance(learning_rate, str):
            if learning_rate != "auto":
                raise ValueError(
                    f"LLCEstimator: learning_rate must be a positive float or 'auto'; got {learning_rate!r}."
                )
            self.learning_rate: float | str = "auto"
        else:
            self.learning_rate = _non_negative("learning_rate", learning_rate)
            if self.learning_rate == 0:
                raise ValueError("LLCEstimator: learning_rate must be > 0; got 0.")
        self.localization = _non_negative("localization", localization)
        self.nbeta = None if nbeta is None else _non_negative("nbeta", nbeta)
        if self.nbeta == 0:
            raise ValueError("LLCEstimator: nbeta must be > 0; got 0.")
        self.dtype = dtype
        self.weight_decay = _non_negative("weight_decay", weight_decay)
        self.restrict_to_orth_grad = bool(restrict_to_orth_grad)
        self.bounding_box_size = (
            None if bounding_box_size is None else _non_negative("bounding_box_size", bounding_box_size)
        )
        self._sampler_spec, self._user_sampler_options = sampler, dict(sampler_options or {})
        self.sampler_options = dict(sampler_options or {})
        if sampler == "rmsprop_sgld":
            self.sampler_options.setdefault("adapt_steps", burnin_steps)
        try:
            self.sampler = get_sampler(sampler, **self.sampler_options)
        except TypeError as exc:
            raise ValueError(
                f"LLCEstimator: sampler_options {self.sampler_options} do not fit {sampler!r}: {exc}"
            ) from exc
        self.result: LLCResult | None = None

    def replace(self, **changes: Any) -> LLCEstimator:
        """A new estimator with this one's settings and ``changes`` (constructor arguments).

        Examples
        --------
        >>> LLCEstimator(draws=50).replace(chains=2).chains
        2
        """
        settings = dict(
            draws=self.draws,
            chains=self.chains,
            burnin_steps=self.burnin_steps,
            steps_bw_draws=self.steps_bw_draws,
            learning_rate=self.learning_rate,
            localization=self.localization,
            nbeta=self.nbeta,
            dtype=self.dtype,
            sampler=self._sampler_spec,
            weight_decay=self.weight_decay,
            restrict_to_orth_grad=self.restrict_to_orth_grad,
            bounding_box_size=self.bounding_box_size,
            sampler_options=dict(self._user_sampler_options),
        )
        unknown = sorted(set(changes) - set(settings))
        if unknown:
            raise TypeError(f"LLCEstimator.replace: unknown settings {unknown}; known: {sorted(settings)}.")
        return LLCEstimator(**{**settings, **changes})

    def _resolve_nbeta(self, loader) -> float:
        if self.nbeta is not None:
            return self.nbeta
        n = dataset_size(loader)
        if n is None:
            raise ValueError(
                "LLCEstimator: nbeta=None needs the data set size from len(loader.dataset), which this loader "
                "does not have; pass nbeta=nbeta_from_effective_size(n) with your n."
            )
        if n < 2:
            raise ValueError(f"LLCEstimator: the data set has {n} sample(s); nβ = n / log n needs n >= 2.")
        return nbeta_from_effective_size(n)

    def estimate_llc(
        self,
        model: nn.Module,
        loader,
        criterion_fn: Callable = F.cross_entropy,
        unpack_fn: Callable | None = None,
        devices: str | torch.device | Sequence[str | torch.device] = "cpu",
        chain_batch: int | None = None,
        seed: int | None = None,
        compile: bool | str = "auto",
        show_progress: bool = True,
        params: str | Sequence[str] | dict[str, bool] | Callable[[str], bool] | None = None,
        observables=None,
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
            are unwrapped. The model is evaluated in eval mode.
        unpack_fn:
            ``batch -> (inputs, targets)`` for batches that are not ``(x, y)`` pairs.
        devices:
            A device or a list of devices; chain batches are spread over them and run concurrently.
        chain_batch:
            Chains per device call (``None``: all chains of a device at once). Results do not depend on it.
        seed:
            Master seed. Chain ``c`` draws its noise from a stream derived from ``(seed, c)`` only, and every
            chain sees the same data order, so per-chain results do not depend on ``chain_batch`` or ``devices``.
            ``None`` draws one (recorded in ``get_metrics()["seed"]``).
        compile:
            ``"auto"`` (default): compile the step when a compiled step for this model is already in memory, or
            when the predicted eager run time exceeds ~3x the cost of compiling; ``True``: always compile;
            ``False``: never. A failed compile continues eagerly with one warning.
        show_progress:
            Show a tqdm bar over steps.
        params:
            Restrict sampling to these parameters (names, glob patterns, module prefixes, ``{name: bool}`` or a
            predicate); the others stay at ``w*``. ``None`` samples every parameter that requires grad.
        observables:
            A second loader (same batch format) on which the draw losses and ``L0`` are evaluated while the
            sampler is driven by ``loader`` (data-refined LLC). ``nbeta=None`` still uses ``len(loader.dataset)``.

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
        )
        return self.result.llcs

    def run(
        self,
        model: nn.Module,
        loader,
        criterion_fn: Callable = F.cross_entropy,
        unpack_fn: Callable | None = None,
        devices="cpu",
        chain_batch: int | None = None,
        seed: int | None = None,
        compile: bool | str = "auto",
        show_progress: bool = True,
        params=None,
        observables=None,
        warn: bool = True,
        nbeta: float | None = None,
        learning_rate: float | None = None,
        localization: float | None = None,
        init: tuple[float, torch.Tensor | None] | None = None,
    ) -> LLCResult:
        """Like :meth:`estimate_llc` but returns the whole :class:`LLCResult`.

        ``nbeta``, ``learning_rate`` and ``localization`` override the estimator's values for this run (used by
        the grid search, which also passes ``init``, the ``(L0, u)`` computed once for all grid points).
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"estimate_llc: model must be a torch.nn.Module; got {type(model).__name__}.")
        if compile not in (True, False, "auto"):
            raise ValueError(f"estimate_llc: compile must be True, False or 'auto'; got {compile!r}.")
        dev_list = _resolve_devices(devices)
        if chain_batch is not None:
            _positive_int("chain_batch", chain_batch)
        seed = resolve_seed(seed)
        nbeta = self._resolve_nbeta(loader) if nbeta is None else _non_negative("nbeta", nbeta)
        calibration = None
        if learning_rate is None and self.learning_rate == "auto":
            from .calibration import calibrate

            calibration = calibrate(
                model,
                loader,
                self,
                criterion_fn=criterion_fn,
                unpack_fn=unpack_fn,
                devices=devices,
                seed=seed,
                params=params,
                chain_batch=chain_batch,
                show_progress=show_progress,
            )
            learning_rate = calibration.learning_rate
        lr = self.learning_rate if learning_rate is None else _non_negative("learning_rate", learning_rate)
        gamma = self.localization if localization is None else _non_negative("localization", localization)
        sampled = select_parameters(model, params)
        _loader_advice(loader, dev_list)

        # One functional copy of the model per device slot: threads never share a module object, not even
        # when the same device is listed twice.
        fms = [FunctionalModel(model, criterion_fn, dev, self.dtype, sampled) for dev in dev_list]
        main = fms[0]
        feed0 = DataFeed(loader, unpack_fn, main.device, seed, _input_dtype(self.dtype))
        if init is None:
            init = anchor_loss_and_direction(main, feed0, self.restrict_to_orth_grad)
            if observables is not None:
                obs_feed0 = DataFeed(observables, unpack_fn, main.device, seed, _input_dtype(self.dtype))
                init = (anchor_loss_and_direction(main, obs_feed0, False)[0], init[1])
        init_loss, direction = init
        if not math.isfinite(init_loss):
            raise ValueError(
                f"estimate_llc: the loss at w* is {init_loss}; the model must have a finite loss on the data."
            )

        plan = plan_chain_batches(self.chains, chain_batch, len(dev_list))

        def hyper_on(fm: FunctionalModel) -> Hyper:
            t = lambda v: torch.tensor(v, device=fm.device, dtype=fm.param_dtype)  # noqa: E731
            return Hyper(t(lr), t(nbeta), t(gamma))

        def ctx_on(fm: FunctionalModel) -> Context:
            u = None if direction is None else direction.to(fm.device)
            return Context(fm.w_star, u, self.bounding_box_size, self.weight_decay)

        if compile == "auto":
            use_compile = _compiled_available(model, main, self, criterion_fn, observables is not None) or (
                predicted_eager_seconds(
                    main,
                    self.sampler,
                    len(plan[0][0]),
                    feed0,
                    hyper_on(main),
                    ctx_on(main),
                    self.schedule.total_steps,
                )
                * max(len(batches) for batches in plan.values())
                > AUTO_COMPILE_FACTOR * COMPILE_SECONDS_GUESS
            )
        else:
            use_compile = bool(compile)

        in_dtype = _input_dtype(self.dtype)
        jobs = [
            SlotJob(
                fm=fm,
                step_fn=StepFunction(
                    fm,
                    self.sampler,
                    use_compile,
                    model_key=model,
                    signature=(slot, observables is not None, *_signature(fm, self, criterion_fn)),
                    observe=observables is not None,
                ),
                feed=DataFeed(loader, unpack_fn, fm.device, seed, in_dtype),
                observables=None
                if observables is None
                else DataFeed(observables, unpack_fn, fm.device, seed + 1, in_dtype),
                hyper=hyper_on(fm),
                ctx=ctx_on(fm),
            )
            for slot, fm in enumerate(fms)
        ]
        total_steps = self.schedule.total_steps * sum(len(batches) for batches in plan.values())
        with tqdm(
            total=total_steps, unit="step", desc="LLC chains", disable=not show_progress, leave=False
        ) as bar:
            trace = run_slots(jobs, plan, self.sampler, seed, self.schedule, on_step=lambda: bar.update(1))
        settings = {
            "sampler": self.sampler.name,
            "chains": self.chains,
            "draws": self.draws,
            "burnin_steps": self.burnin_steps,
            "steps_bw_draws": self.steps_bw_draws,
            "weight_decay": self.weight_decay,
            "restrict_to_orth_grad": self.restrict_to_orth_grad,
            "dtype": str(self.dtype).replace("torch.", ""),
            "devices": [str(d) for d in dev_list],
            "chain_batch": len(plan[0][0]),
            "compiled": any(job.step_fn.is_compiled for job in jobs),
            "compile_seconds": sum(job.step_fn.compile_seconds for job in jobs),
            "sampled_parameters": len(sampled),
            "calibration": None if calibration is None else str(calibration),
            "dim": main.layout.dim,
        }
        return LLCResult.from_trace(
            trace, self.schedule, init_loss, nbeta, lr, gamma, seed, settings, warn=warn
        )

    def get_metrics(self) -> dict[str, Any]:
        """Metrics of the last :meth:`estimate_llc` call: ``llc_mean``, ``llc_std``, ``llcs`` ``[chains]``,
        ``losses`` ``[chains, draws]``, ``losses_mean``, ``losses_std`` (of the final draws), ``init_loss``,
        ``nbeta``, diagnostics (``mala_acceptance``, ``rhat``, ``ess``, ``llc_trace``, ``diverged``, ...),
        ``seed`` and the run's settings."""
        if self.result is None:
            raise RuntimeError("LLCEstimator.get_metrics: call estimate_llc first.")
        return self.result.to_metrics()


def _input_dtype(dtype: torch.dtype) -> torch.dtype | None:
    return torch.float64 if dtype == torch.float64 else None


def _signature(fm: FunctionalModel, est: LLCEstimator, criterion_fn) -> tuple:
    return (
        fm.device,
        est.dtype,
        fm.layout,
        criterion_fn,
        est.sampler.name,
        repr(est.sampler.step),
        est.restrict_to_orth_grad,
        est.bounding_box_size,
    )


def _compiled_available(model, fm, est, criterion_fn, observe: bool) -> bool:
    from .chains import _COMPILED

    return (0, observe, *_signature(fm, est, criterion_fn)) in _COMPILED.get(model, {})
