"""Grid search over the sampler's hyper-parameters ε (``learning_rate``), γ (``localization``) and nβ.

Every point of the grid is one LLC estimate of the same model at ``w*``; they share the seed (so differences
between points are not seed noise) and the loss at ``w*``, ``L0``, which does not depend on ε, γ or nβ and is
computed once. A point whose chains diverge, whose MALA acceptance is low or whose R-hat is high says that the
step size is too large or the chains too short at that setting; :func:`~lambdahat.sweeps.plot_grid` marks them.
"""

from __future__ import annotations

import copy
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..data import dataset_size
from ..estimator import LLCEstimator, nbeta_from_effective_size
from ..functional import select_parameters
from ..problem import Problem
from ..rng import resolve_seed
from .runner import (
    callable_name,
    check_run_options,
    data_spec,
    estimate,
    fingerprint,
    params_spec,
    problem_for,
    result_row,
    run_sweep,
    runtime_spec,
)
from .store import stored_seed

__all__ = ["GridSearchConfig", "LLCGridSearch", "grid_values"]

GAMMA_SPACINGS = ("linear", "log")
_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

AxisSpec = float | tuple[float, float] | Sequence[float]


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"GridSearchConfig: {where} must be a number; got {value!r}.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"GridSearchConfig: {where} must be finite; got {value!r}.")
    return value


def _check_axis(name: str, spec: Any, positive: bool) -> float | tuple[float, float] | list[float]:
    """Normalize one axis: a scalar, a ``(lo, hi)`` range, or a list of values."""
    bound = "> 0" if positive else ">= 0"
    ok = (lambda v: v > 0) if positive else (lambda v: v >= 0)
    if isinstance(spec, tuple):
        if len(spec) != 2:
            raise ValueError(
                f"GridSearchConfig: a tuple means a (lo, hi) range, so {name}={spec!r} must have two numbers; "
                f"for a list of values pass a list, e.g. {name}={list(spec)!r}."
            )
        lo, hi = (_number(f"{name} range bound", v) for v in spec)
        if not (ok(lo) and ok(hi)):
            raise ValueError(f"GridSearchConfig: the {name} range {spec!r} must have bounds {bound}.")
        if not lo < hi:
            raise ValueError(
                f"GridSearchConfig: the {name} range {spec!r} must have lo < hi; for a fixed value pass a "
                f"number, e.g. {name}={lo!r}."
            )
        return (lo, hi)
    if isinstance(spec, str | bytes | Mapping):
        raise ValueError(
            f"GridSearchConfig: {name} must be a number, a (lo, hi) tuple or a list of numbers; got {spec!r}."
        )
    if isinstance(spec, Sequence | np.ndarray):
        values = [_number(f"every {name} value", v) for v in np.asarray(spec, dtype=object).reshape(-1)]
        if not values:
            raise ValueError(f"GridSearchConfig: the {name} list is empty; give at least one value.")
        bad = [v for v in values if not ok(v)]
        if bad:
            raise ValueError(f"GridSearchConfig: {name} values must be {bound}; got {bad}.")
        if len(set(values)) != len(values):
            raise ValueError(
                f"GridSearchConfig: the {name} list {values} repeats a value; list each value once."
            )
        return values
    value = _number(name, spec)
    if not ok(value):
        raise ValueError(f"GridSearchConfig: {name} must be {bound}; got {value!r}.")
    return value


def grid_values(spec: float | tuple[float, float] | Sequence[float], num: int, spacing: str) -> list[float]:
    """The values of one axis: ``num`` values from ``lo`` to ``hi`` (both included) spaced ``"linear"`` or
    ``"log"`` for a range, the values themselves for a list, ``[value]`` for a scalar.

    Examples
    --------
    >>> grid_values((1e-6, 1e-4), 3, "log")
    [1e-06, 1e-05, 0.0001]
    >>> grid_values((10.0, 500.0), 5, "linear")
    [10.0, 132.5, 255.0, 377.5, 500.0]
    """
    if isinstance(spec, tuple):
        lo, hi = spec
        values = np.geomspace(lo, hi, num) if spacing == "log" else np.linspace(lo, hi, num)
        out = [float(v) for v in values]
        out[0], out[-1] = float(lo), float(hi)
        if spacing == "log":  # geomspace leaves rounding noise in the last digits; keep 12 significant ones
            out = [float(f"{v:.12g}") for v in out]
        return out
    if isinstance(spec, list):
        return list(spec)
    return [float(spec)]


@dataclass(frozen=True)
class GridSearchConfig:
    """The grid of an :class:`LLCGridSearch` and the schedule of its estimates.

    Each of ``epsilon`` (ε, the step size ``learning_rate``), ``gamma`` (γ, the ``localization``) and ``nbeta``
    (nβ) is one of

    - a ``(lo, hi)`` tuple: ``estimates_per_dim`` values from ``lo`` to ``hi``, both included, spaced
      **logarithmically for ε and nβ** and **linearly for γ** unless ``gamma_spacing="log"``;
    - a list: exactly those values;
    - a number: that value only.

    ``nbeta=None`` (default) uses ``n / log n`` with ``n = len(loader.dataset)``. The grid is the product of the
    three axes, ε outermost and nβ innermost.

    Parameters
    ----------
    epsilon, gamma, nbeta:
        The axes (defaults: ε in ``(1e-6, 1e-4)``, γ in ``(10, 500)``, nβ = n / log n).
    estimates_per_dim:
        Values per range (default 5; at least 2 when some axis is a range).
    draws, chains, burnin_steps, steps_bw_draws:
        The schedule of every estimate (defaults 200, 8, 100, 1).
    gamma_spacing:
        ``"linear"`` (default) or ``"log"``: spacing of a γ range.
    sampler, dtype, weight_decay, restrict_to_orth_grad, bounding_box_size, sampler_options:
        As in :class:`~lambdahat.LLCEstimator` (``dtype`` may be given by name, e.g. ``"float64"``).

    Examples
    --------
    >>> cfg = GridSearchConfig(epsilon=(1e-6, 1e-4), gamma=(10.0, 500.0), nbeta=57.6, estimates_per_dim=3)
    >>> cfg.values("epsilon"), cfg.values("gamma"), cfg.n_points()
    ([1e-06, 1e-05, 0.0001], [10.0, 255.0, 500.0], 9)
    """

    epsilon: AxisSpec = (1e-6, 1e-4)
    gamma: AxisSpec = (10.0, 500.0)
    nbeta: AxisSpec | None = None
    estimates_per_dim: int = 5
    draws: int = 200
    chains: int = 8
    burnin_steps: int = 100
    steps_bw_draws: int = 1
    gamma_spacing: str = "linear"
    sampler: str = "sgld"
    dtype: torch.dtype | str = torch.float32
    weight_decay: float = 0.0
    restrict_to_orth_grad: bool = False
    bounding_box_size: float | None = None
    sampler_options: Mapping[str, Any] | None = field(default=None)

    def __post_init__(self) -> None:
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        if self.gamma_spacing not in GAMMA_SPACINGS:
            raise ValueError(
                f"GridSearchConfig: gamma_spacing must be one of {list(GAMMA_SPACINGS)}; got {self.gamma_spacing!r}."
            )
        put("epsilon", _check_axis("epsilon", self.epsilon, positive=True))
        put("gamma", _check_axis("gamma", self.gamma, positive=self.gamma_spacing == "log"))
        if self.nbeta is not None:
            put("nbeta", _check_axis("nbeta", self.nbeta, positive=True))
        n = self.estimates_per_dim
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"GridSearchConfig: estimates_per_dim must be an int >= 1; got {n!r}.")
        ranges = [a for a in ("epsilon", "gamma", "nbeta") if isinstance(getattr(self, a), tuple)]
        if ranges and n < 2:
            raise ValueError(
                f"GridSearchConfig: {ranges} are (lo, hi) ranges, which need estimates_per_dim >= 2; got {n}. "
                "For a fixed value pass a number."
            )
        if isinstance(self.dtype, str):
            if self.dtype.removeprefix("torch.") not in _DTYPES:
                raise ValueError(
                    f"GridSearchConfig: dtype must be one of {list(_DTYPES)}; got {self.dtype!r}."
                )
            put("dtype", _DTYPES[self.dtype.removeprefix("torch.")])
        if self.sampler_options is not None and not isinstance(self.sampler_options, Mapping):
            raise ValueError(
                f"GridSearchConfig: sampler_options must be a mapping or None; got {self.sampler_options!r}."
            )
        if self.sampler_options is not None:
            put("sampler_options", dict(self.sampler_options))
        try:
            self.estimator()
        except ValueError as exc:
            raise ValueError(f"GridSearchConfig: {str(exc).removeprefix('LLCEstimator: ')}") from exc

    def values(self, axis: str, nbeta_default: float | None = None) -> list[float]:
        """The values of ``axis`` (``"epsilon"``, ``"gamma"`` or ``"nbeta"``); ``nbeta=None`` gives
        ``[nbeta_default]`` (``[]`` when that is unknown)."""
        if axis not in ("epsilon", "gamma", "nbeta"):
            raise ValueError(
                f"GridSearchConfig.values: axis must be 'epsilon', 'gamma' or 'nbeta'; got {axis!r}."
            )
        spec = getattr(self, axis)
        if spec is None:
            return [] if nbeta_default is None else [float(nbeta_default)]
        spacing = {"epsilon": "log", "gamma": self.gamma_spacing, "nbeta": "log"}[axis]
        return grid_values(spec, self.estimates_per_dim, spacing)

    def n_points(self) -> int:
        """Number of grid points (nβ=None counts as one value)."""
        count = 1
        for axis in ("epsilon", "gamma", "nbeta"):
            count *= max(1, len(self.values(axis)))
        return count

    def points(self, nbeta_default: float | None = None) -> list[tuple[float, float, float]]:
        """All ``(epsilon, gamma, nbeta)`` points, ε outermost, nβ innermost."""
        eps, gam, nb = (self.values(a, nbeta_default) for a in ("epsilon", "gamma", "nbeta"))
        if not nb:
            raise ValueError(
                "GridSearchConfig.points: nbeta=None needs nbeta_default (n / log n of the data)."
            )
        return [(e, g, b) for e in eps for g in gam for b in nb]

    def estimator(self) -> LLCEstimator:
        """The estimator that runs every point (ε, γ and nβ are set per point)."""
        eps = self.values("epsilon")[0]
        return LLCEstimator(
            draws=self.draws,
            chains=self.chains,
            burnin_steps=self.burnin_steps,
            steps_bw_draws=self.steps_bw_draws,
            learning_rate=eps,
            localization=self.values("gamma")[0],
            nbeta=None,
            dtype=self.dtype,
            sampler=self.sampler,
            weight_decay=self.weight_decay,
            restrict_to_orth_grad=self.restrict_to_orth_grad,
            bounding_box_size=self.bounding_box_size,
            sampler_options=self.sampler_options,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (a range as ``{"range": [lo, hi]}``, ``dtype`` by name)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = {"range": list(value)}
            elif isinstance(value, torch.dtype):
                value = str(value).removeprefix("torch.")
            out[f.name] = value
        return out


#: The prepared problem of the grid running in this process (a Ray worker keeps its own): every point of a grid
#: shares the model copies, L0 and the compiled step.
_PROBLEM: dict[str, Problem] = {}


def _grid_point(shared: Mapping[str, Any], task: Mapping[str, Any]) -> dict[str, Any]:
    """One grid point (runs in this process or in a Ray worker)."""
    base, options = shared["config"], shared["options"]
    problem = _PROBLEM.get(shared["token"])
    if problem is None:
        _PROBLEM.clear()
        problem = _PROBLEM[shared["token"]] = problem_for(shared["model"], shared["loader"], base, options)
    config = base.replace(learning_rate=task["epsilon"], localization=task["gamma"], nbeta=task["nbeta"])
    return result_row(estimate(problem, config, options))


def _same(task: Any) -> Any:
    return task


def _shippable(model: nn.Module, executor: str) -> nn.Module:
    """The model as it is sent to Ray workers: on the CPU, so a worker needs none of the driver's devices (each
    point moves its private copy to ``devices``). The local executor uses the caller's object itself."""
    tensors = [*model.parameters(), *model.buffers()]
    if executor == "local" or all(t.device.type == "cpu" for t in tensors):
        return model
    return copy.deepcopy(model).to("cpu")


class LLCGridSearch:
    """Estimate the LLC at every point of a :class:`GridSearchConfig` grid.

    Examples
    --------
    >>> import torch, torch.nn.functional as F
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0)); y = x @ torch.ones(4, 1)
    >>> cfg = GridSearchConfig(epsilon=[1e-4, 1e-3], gamma=100.0, nbeta=10.0, draws=10, chains=2, burnin_steps=5)
    >>> df = LLCGridSearch(cfg).run_grid_search(torch.nn.Linear(4, 1), DataLoader(TensorDataset(x, y), batch_size=32),
    ...                                         criterion_fn=F.mse_loss, seed=0, compile=False, show_progress=False)
    >>> df[["epsilon", "gamma", "nbeta", "status"]].values.tolist()
    [[0.0001, 100.0, 10.0, 'ok'], [0.001, 100.0, 10.0, 'ok']]
    """

    def __init__(self, config: GridSearchConfig) -> None:
        if not isinstance(config, GridSearchConfig):
            raise TypeError(
                f"LLCGridSearch: config must be a GridSearchConfig; got {type(config).__name__}. Build one with "
                "GridSearchConfig(epsilon=(lo, hi), gamma=(lo, hi), nbeta=...)."
            )
        self.config = config
        #: The table of the last :meth:`run_grid_search`.
        self.results: pd.DataFrame | None = None

    def run_grid_search(
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
        params: Any = None,
        *,
        executor: str = "local",
        address: str | None = None,
        out_dir: str | None = None,
        resume: bool = True,
        overwrite: bool = False,
        max_retries: int = 2,
        ray_resources: Mapping[str, Any] | None = None,
        ray_init_options: Mapping[str, Any] | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
    ) -> pd.DataFrame:
        """Run every grid point and return one row per point.

        Parameters
        ----------
        model, loader, criterion_fn, unpack_fn, devices, chain_batch, compile, params:
            As in :meth:`~lambdahat.LLCEstimator.estimate_llc`; used by every point.
        seed:
            Master seed, the same at every point. ``None`` draws one (or, when resuming, reuses the stored one);
            it is in the ``seed`` column.
        show_progress:
            A progress bar over the grid points.
        executor:
            ``"local"`` (default): the points one after the other in this process, each on ``devices``.
            ``"ray"``: every point a Ray task (needs ``pip install "lambdahat[ray]"``).
        address:
            Ray cluster to connect to (``executor="ray"``); ``None`` starts or reuses a local Ray instance.
        out_dir:
            Directory where every finished point is written at once (``results.csv``, with the sweep's definition
            in ``sweep.json``). Running the same sweep with the same ``out_dir`` again skips finished points and
            retries failed ones; a different sweep there is refused with its differences.
        resume:
            Continue a sweep stored in ``out_dir`` (default). ``False`` refuses an existing one unless ``overwrite``.
        overwrite:
            Discard a sweep stored in ``out_dir`` and start again.
        max_retries:
            Times a failing point is run again before it is recorded with ``status="failed"`` (default 2).
        ray_resources:
            Resources of one Ray task (default ``{"num_cpus": 1, "num_gpus": 0}``).
        ray_init_options:
            Extra ``ray.init`` options, when this call starts or connects to Ray.
        callback:
            Called with each finished row (a dict) as it is recorded.

        Returns
        -------
        pandas.DataFrame
            One row per point in grid order (ε outermost): ``epsilon, gamma, nbeta, llc_mean, llc_std, loss_mean,
            loss_std`` (``loss_*``: the final draw's loss over the chains, as ``get_metrics()["losses_mean"]``),
            ``llc_stderr, init_loss, mala_acceptance, rhat, ess, n_diverged`` (chains that diverged),
            ``status`` (``"ok"`` or ``"failed"``), ``error`` (``"Type: message"`` of a failed point), ``seed,
            wall_seconds, attempts`` and ``warnings`` (the estimator's advice, ``"; "``-joined). The index is the
            point's number in the sweep (the ``point`` column of ``results.csv``).
        """
        cfg = self.config
        check_run_options(executor, address, devices, ray_resources, max_retries)
        if not isinstance(model, nn.Module):
            raise TypeError(f"run_grid_search: model must be a torch.nn.Module; got {type(model).__name__}.")
        select_parameters(model, params)  # a bad selection fails here, not at every point
        nbeta_default = None
        if cfg.nbeta is None:
            n = dataset_size(loader)
            if n is None or n < 2:
                raise ValueError(
                    "run_grid_search: nbeta=None uses n / log n with n = len(loader.dataset), which this loader "
                    f"does not give (n={n}); set GridSearchConfig(nbeta=...), e.g. nbeta_from_effective_size(n)."
                )
            nbeta_default = nbeta_from_effective_size(n)
        if seed is None and resume and not overwrite:
            seed = stored_seed(out_dir)
        seed = resolve_seed(seed)
        points = [{"epsilon": e, "gamma": g, "nbeta": b} for e, g, b in cfg.points(nbeta_default)]
        estimator = cfg.estimator()
        options = {
            "criterion_fn": criterion_fn,
            "unpack_fn": unpack_fn,
            "devices": devices,
            "chain_batch": chain_batch,
            "seed": seed,
            "compile": compile,
            "params": params,
        }
        config = {
            "grid": cfg.to_dict(),
            "values": {a: [p[a] for p in points] for a in ("epsilon", "gamma", "nbeta")},
            "seed": seed,
            "criterion_fn": callable_name(criterion_fn),
            "unpack_fn": callable_name(unpack_fn),
            "params": params_spec(params),
            "model": {"class": callable_name(type(model)), "fingerprint": fingerprint(model.state_dict())},
            "data": data_spec(loader),
        }
        try:
            df = run_sweep(
                kind="grid",
                points=points,
                point_columns=[("epsilon", "float"), ("gamma", "float"), ("nbeta", "float")],
                fn=_grid_point,
                shared={
                    "model": _shippable(model, executor),
                    "loader": loader,
                    "config": estimator.config,
                    "options": options,
                    "token": uuid.uuid4().hex,
                },
                prepare=_same,
                config=config,
                runtime=runtime_spec(executor, address, options, max_retries),
                seed=seed,
                executor=executor,
                address=address,
                ray_resources=ray_resources,
                ray_init_options=ray_init_options,
                out_dir=out_dir,
                resume=resume,
                overwrite=overwrite,
                max_retries=max_retries,
                show_progress=show_progress,
                callback=callback,
                desc="LLC grid",
            )
        finally:
            _PROBLEM.clear()
        self.results = df
        return df
