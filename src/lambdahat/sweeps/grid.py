"""Grid search over the sampler's hyper-parameters ``learning_rate`` (ε), ``localization`` (γ) and ``nbeta`` (nβ).

Every point of the grid is one LLC estimate of the same model at ``w*``; they share the seed (so differences
between points are not seed noise) and the loss at ``w*``, ``L0``, which does not depend on ε, γ or nβ and is
computed once. A point whose chains diverge, whose MALA acceptance is low or whose R-hat is high says that the
step size is too large or the chains too short at that setting; :func:`~lambdahat.sweeps.plot_grid` marks them.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..config import LLCConfig
from ..data import dataset_size
from ..functional import select_parameters
from ..problem import Problem, nbeta_from_effective_size
from ..rng import resolve_seed
from .runner import (
    SweepRun,
    callable_name,
    check_run_options,
    data_spec,
    estimate,
    fingerprint,
    params_spec,
    problem_for,
    result_row,
    run_sweep,
)
from .store import stored_seed

__all__ = ["AXES", "GridSearchConfig", "LLCGridSearch", "grid_values"]

#: The grid's axes, outermost first: ``LLCConfig`` fields, also the first columns of the table.
AXES = ("learning_rate", "localization", "nbeta")
#: The seed's names, accepted by the ``GridSearchConfig`` constructor (and in sweep files) and nowhere else.
ALIASES = {"epsilon": "learning_rate", "gamma": "localization", "gamma_spacing": "localization_spacing"}
#: ``GridSearchConfig``'s own settings besides the axes (the others are ``LLCConfig``'s).
GRID_SETTINGS = ("estimates_per_dim", "localization_spacing")
SPACINGS = ("linear", "log")
DEFAULT_ESTIMATES_PER_DIM = 5

AxisSpec = float | tuple[float, float] | Sequence[float]


def _coerce(name: str, value: Any) -> Any:
    """A NumPy scalar as a Python number (LLCConfig judges every value)."""
    if isinstance(value, np.integer | np.floating) and not isinstance(value, np.bool_):
        return float(value)
    if isinstance(value, str | bytes | bool | np.bool_) or not isinstance(value, int | float):
        raise ValueError(f"GridSearchConfig: every {name} value must be a number; got {value!r}.")
    return value


def _check_axis(
    name: str, spec: Any, check: Callable[[float], Any]
) -> float | tuple[float, float] | list[float]:
    """Normalize one axis: a scalar, a ``(lo, hi)`` range, or a list of values; ``check`` judges each value."""
    if isinstance(spec, tuple):
        if len(spec) != 2:
            raise ValueError(
                f"GridSearchConfig: a tuple means a (lo, hi) range, so {name}={spec!r} must have two numbers; "
                f"for a list of values pass a list, e.g. {name}={list(spec)!r}."
            )
        lo, hi = (float(check(_coerce(f"{name} range bound", v))) for v in spec)
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
        values = [float(check(_coerce(name, v))) for v in np.asarray(spec, dtype=object).reshape(-1)]
        if not values:
            raise ValueError(f"GridSearchConfig: the {name} list is empty; give at least one value.")
        if len(set(values)) != len(values):
            raise ValueError(
                f"GridSearchConfig: the {name} list {values} repeats a value; list each value once."
            )
        return values
    return float(check(_coerce(name, spec)))


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


def _settings_error(exc: ValueError) -> ValueError:
    return ValueError(f"GridSearchConfig: {str(exc).removeprefix('LLCConfig: ')}")


@dataclass(frozen=True, init=False)
class GridSearchConfig:
    """The grid of an :class:`LLCGridSearch`: the axes ``learning_rate`` (ε), ``localization`` (γ) and ``nbeta``
    (nβ), and the :class:`~lambdahat.LLCConfig` settings shared by every point.

    Each axis is one of

    - a ``(lo, hi)`` tuple: ``estimates_per_dim`` values from ``lo`` to ``hi``, both included, spaced
      **logarithmically for ε and nβ** and **linearly for γ** unless ``localization_spacing="log"``;
    - a list: exactly those values;
    - a number: that value only.

    ``nbeta=None`` (default) uses ``n / log n`` with ``n = len(loader.dataset)``. The grid is the product of the
    three axes, ε outermost and nβ innermost. Every value is judged by ``LLCConfig`` (ε > 0, γ >= 0, nβ > 0).

    Parameters
    ----------
    learning_rate, localization, nbeta:
        The axes (defaults: ε in ``(1e-6, 1e-4)``, γ in ``(10, 500)``, nβ = n / log n).
    estimates_per_dim:
        Values per ``(lo, hi)`` range (default 5, at least 2). Only for ranges: given together with a list axis
        it is an error (a list gives exactly its values), rather than a grid other than the one meant.
    localization_spacing:
        ``"linear"`` (default) or ``"log"``: spacing of a γ range.
    epsilon, gamma, gamma_spacing:
        The seed's names of ``learning_rate``, ``localization`` and ``localization_spacing``, accepted here (and in
        sweep files) only; giving a name and its alias is an error.
    **settings:
        The other :class:`~lambdahat.LLCConfig` settings of every point (``draws``, ``chains``, ``burnin_steps``,
        ``steps_bw_draws``, ``dtype``, ``sampler``, ``sampler_options``, ``weight_decay``, ``bounding_box_size``,
        ``restrict_to_orth_grad``, ``model_mode``), with ``LLCConfig``'s defaults; they read as attributes
        (``cfg.draws``).

    Attributes
    ----------
    base:
        The ``LLCConfig`` of the grid's first point (``nbeta=None`` when nβ is ``n / log n``); every point is
        ``base.replace(learning_rate=..., localization=..., nbeta=...)``.

    Examples
    --------
    >>> cfg = GridSearchConfig(learning_rate=(1e-6, 1e-4), localization=(10.0, 500.0), nbeta=57.6,
    ...                        estimates_per_dim=3, draws=100)
    >>> cfg.values("learning_rate"), cfg.values("localization"), cfg.n_points(), cfg.draws
    ([1e-06, 1e-05, 0.0001], [10.0, 255.0, 500.0], 9, 100)
    >>> GridSearchConfig(epsilon=[1e-5, 1e-4], gamma=100.0).points(nbeta_default=20.0)
    [(1e-05, 100.0, 20.0), (0.0001, 100.0, 20.0)]
    """

    learning_rate: AxisSpec
    localization: AxisSpec
    nbeta: AxisSpec | None
    estimates_per_dim: int
    localization_spacing: str
    base: LLCConfig

    def __init__(
        self,
        learning_rate: AxisSpec | None = None,
        localization: AxisSpec | None = None,
        nbeta: AxisSpec | None = None,
        estimates_per_dim: int | None = None,
        localization_spacing: str | None = None,
        *,
        epsilon: AxisSpec | None = None,
        gamma: AxisSpec | None = None,
        gamma_spacing: str | None = None,
        **settings: Any,
    ) -> None:
        given = {"learning_rate": learning_rate, "localization": localization}
        given["localization_spacing"] = localization_spacing
        for alias, value in (("epsilon", epsilon), ("gamma", gamma), ("gamma_spacing", gamma_spacing)):
            name = ALIASES[alias]
            if value is not None and given[name] is not None:
                raise TypeError(
                    f"GridSearchConfig: got both {name}={given[name]!r} and {alias}={value!r}, two names of the "
                    f"same setting; pass only {name} ({alias} is its old name)."
                )
            if value is not None:
                given[name] = value
        axes = [a for a in AXES if a in settings]
        unknown = sorted(set(settings) - set(LLCConfig.field_names()))
        if axes or unknown:
            raise TypeError(
                f"GridSearchConfig: unknown argument(s) {axes + unknown}; the grid's own are "
                f"{[*AXES, *GRID_SETTINGS]} (aliases {list(ALIASES)}), the settings of every point "
                f"{[f for f in LLCConfig.field_names() if f not in AXES]}."
            )
        spacing = "linear" if given["localization_spacing"] is None else given["localization_spacing"]
        if spacing not in SPACINGS:
            raise ValueError(
                f"GridSearchConfig: localization_spacing must be one of {list(SPACINGS)}; got {spacing!r}."
            )
        try:
            base = LLCConfig(**settings)
        except ValueError as exc:
            raise _settings_error(exc) from None

        def judge(name: str, extra: Callable[[float], None] | None = None) -> Callable[[float], float]:
            def check(value: float) -> float:
                try:
                    base.replace(**{name: value})
                except ValueError as exc:
                    raise _settings_error(exc) from None
                if extra is not None:
                    extra(value)
                return value

            return check

        def positive_for_log(value: float) -> None:
            if value <= 0:
                raise ValueError(
                    f"GridSearchConfig: a log-spaced localization needs values > 0; got {value!r}. Use "
                    "localization_spacing='linear' for a range from 0."
                )

        lr_spec = (1e-6, 1e-4) if given["learning_rate"] is None else given["learning_rate"]
        loc_spec = (10.0, 500.0) if given["localization"] is None else given["localization"]
        lr = _check_axis("learning_rate", lr_spec, judge("learning_rate"))
        loc = _check_axis(
            "localization", loc_spec, judge("localization", positive_for_log if spacing == "log" else None)
        )
        nb = None if nbeta is None else _check_axis("nbeta", nbeta, judge("nbeta"))
        specs = {"learning_rate": lr, "localization": loc, "nbeta": nb}
        n = DEFAULT_ESTIMATES_PER_DIM if estimates_per_dim is None else estimates_per_dim
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"GridSearchConfig: estimates_per_dim must be an int >= 1; got {n!r}.")
        lists = [a for a, spec in specs.items() if isinstance(spec, list)]
        if estimates_per_dim is not None and lists:
            a = lists[0]
            raise ValueError(
                f"GridSearchConfig: {a} is a list, which gives exactly its values, so estimates_per_dim="
                f"{estimates_per_dim} is ambiguous. Drop estimates_per_dim to run the listed values, or give {a} "
                f"as a range to run {estimates_per_dim} values between lo and hi: {a}=(lo, hi) in Python, "
                f"{a}: {{range: [lo, hi]}} in a sweep file."
            )
        ranges = [a for a, spec in specs.items() if isinstance(spec, tuple)]
        if ranges and n < 2:
            raise ValueError(
                f"GridSearchConfig: {ranges} are (lo, hi) ranges, which need estimates_per_dim >= 2; got {n}. "
                "For a fixed value pass a number."
            )
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        for name, spec in specs.items():
            put(name, spec)
        put("estimates_per_dim", n)
        put("localization_spacing", spacing)
        first = {a: (v[0] if v else None) for a, v in ((a, self.values(a)) for a in AXES)}
        put("base", base.replace(**first))

    def __getattr__(self, name: str) -> Any:
        # the shared settings read as attributes: cfg.draws, cfg.dtype, ...
        if name != "base" and name in LLCConfig.field_names():
            return getattr(self.base, name)
        raise AttributeError(f"GridSearchConfig has no attribute {name!r}")

    def values(self, axis: str, nbeta_default: float | None = None) -> list[float]:
        """The values of ``axis`` (``"learning_rate"``, ``"localization"`` or ``"nbeta"``); ``nbeta=None`` gives
        ``[nbeta_default]`` (``[]`` when that is unknown)."""
        if axis not in AXES:
            raise ValueError(f"GridSearchConfig.values: axis must be one of {list(AXES)}; got {axis!r}.")
        spec = getattr(self, axis)
        if spec is None:
            return [] if nbeta_default is None else [float(nbeta_default)]
        spacing = {"learning_rate": "log", "localization": self.localization_spacing, "nbeta": "log"}[axis]
        return grid_values(spec, self.estimates_per_dim, spacing)

    def n_points(self) -> int:
        """Number of grid points (nβ=None counts as one value)."""
        count = 1
        for axis in AXES:
            count *= max(1, len(self.values(axis)))
        return count

    def points(self, nbeta_default: float | None = None) -> list[tuple[float, float, float]]:
        """All ``(learning_rate, localization, nbeta)`` points, ε outermost, nβ innermost."""
        lrs, locs, nbs = (self.values(a, nbeta_default) for a in AXES)
        if not nbs:
            raise ValueError(
                "GridSearchConfig.points: nbeta=None needs nbeta_default (n / log n of the data)."
            )
        return [(e, g, b) for e in lrs for g in locs for b in nbs]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able definition: the axes (a range as ``{"range": [lo, hi]}``), ``estimates_per_dim``,
        ``localization_spacing`` and the shared ``LLCConfig`` settings (``dtype`` by name)."""
        out: dict[str, Any] = {}
        for axis in AXES:
            spec = getattr(self, axis)
            out[axis] = {"range": list(spec)} if isinstance(spec, tuple) else spec
        out["estimates_per_dim"] = self.estimates_per_dim
        out["localization_spacing"] = self.localization_spacing
        out.update({k: v for k, v in self.base.to_dict().items() if k not in AXES})
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
    config = base.replace(**{axis: task[axis] for axis in AXES})
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
    >>> cfg = GridSearchConfig(learning_rate=[1e-4, 1e-3], localization=100.0, nbeta=10.0, draws=10, chains=2,
    ...                        burnin_steps=5)
    >>> df = LLCGridSearch(cfg).run_grid_search(torch.nn.Linear(4, 1), DataLoader(TensorDataset(x, y), batch_size=32),
    ...                                         criterion_fn=F.mse_loss, seed=0, compile=False, show_progress=False)
    >>> df[["learning_rate", "localization", "nbeta"]].values.tolist()
    [[0.0001, 100.0, 10.0], [0.001, 100.0, 10.0]]
    >>> list(df.columns[3:8])
    ['llc_mean', 'llc_std', 'loss_mean', 'loss_std', 'llc_stderr']
    """

    def __init__(self, config: GridSearchConfig) -> None:
        if not isinstance(config, GridSearchConfig):
            raise TypeError(
                f"LLCGridSearch: config must be a GridSearchConfig; got {type(config).__name__}. Build one with "
                "GridSearchConfig(learning_rate=(lo, hi), localization=(lo, hi), nbeta=...)."
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
        chain_batch: int | str | None = None,
        seed: int | None = None,
        compile: bool | str = "auto",
        show_progress: bool = True,
        params: Any = None,
        *,
        loss_fn: Callable | None = None,
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
        model, loader, criterion_fn, unpack_fn, devices, chain_batch, compile, params, loss_fn:
            As in :meth:`~lambdahat.LLCEstimator.estimate_llc`; used by every point (``loss_fn(model, batch)``
            returning per-sample or per-token losses replaces ``criterion_fn`` and ``unpack_fn``).
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
            One row per point in grid order (ε outermost): ``learning_rate, localization, nbeta, llc_mean,
            llc_std, loss_mean, loss_std`` (``loss_*``: the final draw's loss over the chains, as
            ``get_metrics()["losses_mean"]``), ``llc_stderr, init_loss, mala_acceptance, rhat, ess, n_diverged``
            (chains that diverged), ``status`` (the trust policy's verdict, ``"ok"``, ``"untrusted: <reasons>"`` or
            ``"diverged"``, or ``"failed"`` for a point that raised), ``error`` (``"Type: message"`` of a failed
            point), ``seed, wall_seconds, attempts`` and ``warnings`` (the estimator's advice, ``"; "``-joined). The
            index is the point's number in the sweep (the ``point`` column of ``results.csv``). The last two
            columns, ``epsilon`` and ``gamma``, repeat ``learning_rate`` and ``localization`` under the names of the
            library this API follows, so code written for it reads them.
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
        seed = resolve_seed(seed, "run_grid_search")
        points = [dict(zip(AXES, point)) for point in cfg.points(nbeta_default)]
        options = {
            "criterion_fn": criterion_fn,
            "unpack_fn": unpack_fn,
            "devices": devices,
            "chain_batch": chain_batch,
            "seed": seed,
            "compile": compile,
            "params": params,
            "loss_fn": loss_fn,
        }
        config = {
            "grid": cfg.to_dict(),
            "values": {a: [p[a] for p in points] for a in AXES},
            "seed": seed,
            "criterion_fn": callable_name(criterion_fn),
            "unpack_fn": callable_name(unpack_fn),
            # only when given, so that sweeps stored before loss_fn was an option still resume
            **({"loss_fn": callable_name(loss_fn)} if loss_fn is not None else {}),
            "params": params_spec(params),
            "model": {"class": callable_name(type(model)), "fingerprint": fingerprint(model.state_dict())},
            "data": data_spec(loader),
        }
        try:
            df = run_sweep(
                kind="grid",
                points=points,
                point_columns=[(axis, "float") for axis in AXES],
                fn=_grid_point,
                shared={
                    "model": _shippable(model, executor),
                    "loader": loader,
                    "config": cfg.base,
                    "options": options,
                    "token": uuid.uuid4().hex,
                },
                prepare=_same,
                config=config,
                options=options,
                seed=seed,
                run=SweepRun(
                    executor,
                    address,
                    ray_resources,
                    ray_init_options,
                    out_dir,
                    resume,
                    overwrite,
                    max_retries,
                    show_progress,
                ),
                callback=callback,
                desc="LLC grid",
            )
        finally:
            _PROBLEM.clear()
        df = with_seed_names(df)
        self.results = df
        return df


#: The seed library's names of the grid's columns: the returned table carries them too (copies at its end), so
#: that ``df["epsilon"]`` and ``df["gamma"]`` written for it keep working.
SEED_COLUMNS = {"epsilon": "learning_rate", "gamma": "localization"}


def with_seed_names(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the columns of :data:`SEED_COLUMNS` appended (copies of ``learning_rate`` and
    ``localization``)."""
    return df.assign(**{seed: df[ours] for seed, ours in SEED_COLUMNS.items() if ours in df})
