"""The ``lambdahat sweep CONFIG.yaml`` command: a grid search or a checkpoint sweep described by a YAML (or TOML)
file, run locally or on Ray, resumable.

Sweep files
-----------

A grid search (relative paths are relative to the file)::

    kind: grid
    model:
      kind: python                   # the only kind
      factory: "my_models:build"     # module:function, or path/to/file.py:function
      kwargs: {width: 64}            # optional keyword arguments of the factory
    estimator:                       # LLCConfig settings shared by every point (defaults: LLCConfig's)
      draws: 200
      chains: 8
      burnin_steps: 100
      dtype: float32
    grid:
      learning_rate: {range: [1.0e-6, 1.0e-4]}   # ε: a range, a list of values, or one value
      localization: [10, 100, 500]               # γ
      nbeta: 57.6                                # nβ; null or absent: n / log n of the data
      estimates_per_dim: 5                       # values per range; an error next to a list axis
    run:
      seed: 0
      devices: cpu
      out_dir: results/grid

A checkpoint sweep::

    kind: checkpoints
    model: {factory: "my_models:checkpoints"}
    estimator: {draws: 200, chains: 8, learning_rate: 1.0e-4, localization: 100, nbeta: 57.6}
    checkpoints_glob: "ckpts/*.safetensors"      # or checkpoints: [paths]; sorted naturally (2 before 10)
    labels: [100, 200, 300]                      # optional, one per checkpoint
    run: {seed: 0}

The same in TOML (by the ``.toml`` suffix) has a table per section: ``[model]``, ``[estimator]``, ``[grid]``,
``[run]``; a range is ``learning_rate = {range = [1e-6, 1e-4]}``.

The sections:

``kind``
    ``grid`` or ``checkpoints``.
``model``
    ``factory``: for ``kind: grid`` a function returning ``(model, loader, criterion_fn)``, for ``kind:
    checkpoints`` one returning ``(model_fn, loader, criterion_fn)`` (``loader`` may be ``label -> loader``); a
    fourth element, ``unpack_fn``, may follow, and ``criterion_fn=None`` means cross-entropy. ``kwargs``: its
    keyword arguments.
``estimator``
    Any :class:`~lambdahat.LLCConfig` setting, by its name (``draws``, ``chains``, ``burnin_steps``,
    ``steps_bw_draws``, ``learning_rate`` (a number or ``auto``), ``localization``, ``nbeta``, ``dtype`` (by
    name), ``sampler``, ``sampler_options``, ``weight_decay``, ``bounding_box_size``, ``restrict_to_orth_grad``,
    ``model_mode``), read by ``LLCConfig.from_dict``. In a grid, ``learning_rate``, ``localization`` and
    ``nbeta`` are axes and belong to ``grid``. YAML 1.1 reads ``1e-6`` (no dot) as text; it is taken as the
    number it spells.
``grid`` (``kind: grid``)
    The axes ``learning_rate``, ``localization``, ``nbeta``, each ``{range: [lo, hi]}`` (``estimates_per_dim``
    values, log-spaced for ε and nβ, linear for γ unless ``localization_spacing: log``), a list (exactly those
    values) or a number; ``estimates_per_dim`` (default 5) counts the values of ranges only, and together with a
    list it is refused as ambiguous. ``epsilon``, ``gamma`` and ``gamma_spacing`` are accepted as the seed's names
    of ``learning_rate``, ``localization`` and ``localization_spacing``.
``checkpoints`` / ``checkpoints_glob`` / ``labels`` (``kind: checkpoints``)
    The checkpoint files (``.safetensors`` or ``torch.save``'d state dicts), exactly one of a list and a glob;
    optional labels, one per checkpoint (default: the file stems).
``run``
    ``seed``, ``devices``, ``chain_batch``, ``compile``, ``params``, ``max_retries``, ``executor`` (``local`` or
    ``ray``), ``address``, ``ray_resources``, ``out_dir`` (default: ``<file stem>-results`` next to the file); as
    in :meth:`~lambdahat.sweeps.LLCGridSearch.run_grid_search`. The command's options override ``executor``,
    ``address`` and ``out_dir``.

An unknown key anywhere is an error that lists the known ones.
"""

from __future__ import annotations

import glob as globmod
import importlib
import importlib.util
import math
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from .executors import EXECUTORS
from .store import RESULTS_FILE

__all__ = ["SweepConfigError", "load_sweep_config", "register", "run_config"]

TOP_KEYS = ("kind", "model", "estimator", "grid", "checkpoints", "checkpoints_glob", "labels", "run")
KINDS = ("grid", "checkpoints")
MODEL_KINDS = ("python",)
RUN_KEYS = (
    "seed",
    "devices",
    "chain_batch",
    "compile",
    "params",
    "max_retries",
    "executor",
    "address",
    "ray_resources",
    "out_dir",
)
#: A number that YAML 1.1 leaves as text (``1e-6``: an exponent without a dot).
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class SweepConfigError(ValueError):
    """A sweep configuration file that cannot be used (the message says what to change)."""


def _check_keys(section: str, values: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise SweepConfigError(f"sweep config: {section} must be a mapping; got {values!r}.")
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise SweepConfigError(
            f"sweep config: unknown key(s) {unknown} in {section}; allowed: {list(allowed)}."
        )
    return dict(values)


def _numbers(value: Any) -> Any:
    """``value`` with the numbers YAML 1.1 left as text (``1e-6``) made numbers, in mappings and lists too."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, Mapping):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def _axis(name: str, spec: Any) -> Any:
    """A grid axis from the file: ``{range: [lo, hi]}``, a list of values, or one value."""
    if isinstance(spec, Mapping):
        if set(spec) != {"range"} or not isinstance(spec["range"], list) or len(spec["range"]) != 2:
            raise SweepConfigError(
                f"sweep config: grid.{name} as a mapping must be {{range: [lo, hi]}}; got {spec!r}. "
                "For given values use a list, for one value a number."
            )
        return tuple(spec["range"])
    return spec


def _settings(section: Any, *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The ``estimator`` section: ``LLCConfig`` settings by name (without ``exclude``, the grid's axes)."""
    from ..config import LLCConfig

    allowed = tuple(f for f in LLCConfig.field_names() if f not in exclude)
    if isinstance(section, Mapping):
        misplaced = sorted(set(section) & set(exclude))
        if misplaced:
            raise SweepConfigError(
                f"sweep config: {misplaced} are the grid's axes; set them under grid: (a number for one value), "
                "not under estimator:."
            )
    return _numbers(_check_keys("estimator", section, allowed))


def _natural_key(path: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def _import_factory(spec: Any, base: Path) -> Callable:
    if not isinstance(spec, str) or ":" not in spec:
        raise SweepConfigError(
            f"sweep config: model.factory must be 'module.path:function' or 'file.py:function'; got {spec!r}."
        )
    module_name, _, attr = spec.rpartition(":")
    if module_name.endswith(".py") or "/" in module_name:
        path = Path(module_name)
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise SweepConfigError(f"sweep config: model.factory file {str(path)!r} does not exist.")
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))  # importable by name, in Ray workers too
        module_name = path.stem
    elif str(base) not in sys.path:
        sys.path.insert(0, str(base))  # a module next to the config file
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SweepConfigError(
            f"sweep config: cannot import {module_name!r} for model.factory ({exc}); put it on PYTHONPATH or "
            "next to the config file."
        ) from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise SweepConfigError(f"sweep config: {module_name!r} has no function {attr!r} (model.factory).")
    return fn


def load_sweep_config(path: str | Path) -> dict[str, Any]:
    """Read and check a sweep configuration (YAML, or TOML by the ``.toml`` suffix).

    Returns the checked sections with paths resolved against the file's directory (``kind``, ``path``,
    ``factory``, ``factory_kwargs``, ``base``, ``run``, and ``grid``, a :class:`~lambdahat.sweeps.GridSearchConfig`,
    or ``config``, an :class:`~lambdahat.LLCConfig`, with ``checkpoints`` and ``labels``); raises
    :class:`SweepConfigError` with what to change. The schema is in the module's docstring.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SweepConfigError(f"sweep config: {str(path)!r} does not exist.")
    text = path.read_text(encoding="utf-8")
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise SweepConfigError(f"sweep config: cannot parse {str(path)!r}: {exc}") from exc
    cfg = _check_keys("the file", raw, TOP_KEYS)
    base = path.parent.absolute()
    kind = cfg.get("kind")
    if kind not in KINDS:
        raise SweepConfigError(f"sweep config: kind must be one of {list(KINDS)}; got {kind!r}.")
    raw_model = cfg.get("model")
    model_kind = raw_model.get("kind", "python") if isinstance(raw_model, Mapping) else "python"
    if model_kind not in MODEL_KINDS:
        raise SweepConfigError(
            f"sweep config: model.kind {model_kind!r} is not supported by this version of the sweep command; use "
            "kind: python with factory: 'module:function' (returning (model, loader, criterion_fn) for a grid, "
            "(model_fn, loader, criterion_fn) for checkpoints)."
        )
    model = _check_keys("model", raw_model, ("kind", "factory", "kwargs"))
    if "factory" not in model:
        raise SweepConfigError("sweep config: model.factory is missing ('module.path:function').")
    kwargs = model.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise SweepConfigError(f"sweep config: model.kwargs must be a mapping; got {kwargs!r}.")
    run = _check_keys("run", cfg.get("run"), RUN_KEYS)
    if run.get("out_dir") is not None:
        out = Path(str(run["out_dir"]))
        run["out_dir"] = out if out.is_absolute() else base / out
    out: dict[str, Any] = {
        "kind": kind,
        "path": path,
        "factory": model["factory"],
        "factory_kwargs": dict(kwargs),
        "base": base,
        "run": run,
    }
    if kind == "grid":
        for key in ("checkpoints", "checkpoints_glob", "labels"):
            if key in cfg:
                raise SweepConfigError(f"sweep config: {key} belongs to kind: checkpoints, not kind: grid.")
        from .grid import ALIASES, AXES, GRID_SETTINGS, GridSearchConfig

        est = _settings(cfg.get("estimator"), exclude=AXES)
        grid = _numbers(_check_keys("grid", cfg.get("grid"), (*AXES, *GRID_SETTINGS, *ALIASES)))
        for key, value in grid.items():
            if ALIASES.get(key, key) in AXES:
                grid[key] = _axis(key, value)
        try:
            out["grid"] = GridSearchConfig(**grid, **est)
        except (TypeError, ValueError) as exc:
            raise SweepConfigError(
                f"sweep config: grid: {str(exc).removeprefix('GridSearchConfig: ')}"
            ) from exc
    else:
        if "grid" in cfg:
            raise SweepConfigError("sweep config: grid belongs to kind: grid, not kind: checkpoints.")
        from ..config import LLCConfig

        try:
            out["config"] = LLCConfig.from_dict(_settings(cfg.get("estimator")))
        except ValueError as exc:
            raise SweepConfigError(
                f"sweep config: estimator: {str(exc).removeprefix('LLCConfig: ')}"
            ) from exc
        listed, pattern = cfg.get("checkpoints"), cfg.get("checkpoints_glob")
        if (listed is None) == (pattern is None):
            raise SweepConfigError(
                "sweep config: kind: checkpoints needs exactly one of checkpoints: [paths] or checkpoints_glob."
            )
        if pattern is not None:
            full = pattern if Path(pattern).is_absolute() else str(base / pattern)
            paths = sorted(globmod.glob(full), key=_natural_key)
            if not paths:
                raise SweepConfigError(
                    f"sweep config: checkpoints_glob {pattern!r} matches no file ({full})."
                )
        else:
            if not isinstance(listed, list) or not listed:
                raise SweepConfigError("sweep config: checkpoints must be a non-empty list of paths.")
            paths = [str(p if Path(p).is_absolute() else base / p) for p in map(str, listed)]
        out["checkpoints"] = paths
        labels = cfg.get("labels")
        if labels is not None and (not isinstance(labels, list) or len(labels) != len(paths)):
            raise SweepConfigError(
                f"sweep config: labels must be a list with one label per checkpoint ({len(paths)})."
            )
        out["labels"] = labels
    return out


def _factory_parts(kind: str, result: Any) -> tuple[Any, Any, Callable, Callable | None]:
    first = "model" if kind == "grid" else "model_fn"
    if not isinstance(result, tuple | list) or len(result) not in (3, 4):
        raise SweepConfigError(
            f"sweep config: the factory of a {kind} sweep must return ({first}, loader, criterion_fn) or "
            f"({first}, loader, criterion_fn, unpack_fn); got {type(result).__name__}."
        )
    first_obj, loader, criterion = result[:3]
    unpack = result[3] if len(result) == 4 else None
    if criterion is None:
        import torch.nn.functional as F

        criterion = F.cross_entropy
    return first_obj, loader, criterion, unpack


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else str(v)


#: The columns the console shows of a finished sweep, when present: the point, then λ̂ with what says whether to
#: trust it.
SHOWN_COLUMNS = (
    "learning_rate",
    "localization",
    "nbeta",
    "checkpoint",
    "llc_mean",
    "llc_std",
    "mala_acceptance",
    "rhat",
    "status",
)


def point_line(row: Mapping[str, Any]) -> str:
    """What the console says of a finished point: λ̂ ± its std over chains, MALA acceptance, R-hat and status.

    Examples
    --------
    >>> point_line({"status": "ok", "llc_mean": 12.345, "llc_std": 0.5, "mala_acceptance": 0.93, "rhat": 1.01})
    'llc_mean=12.35 ± 0.5, acceptance 0.93, R-hat 1.01, status ok'
    """
    if row["status"] == "failed":
        return f"FAILED after {row['attempts']} attempt(s): {row['error']}"
    return (
        f"llc_mean={_fmt(row['llc_mean'])} ± {_fmt(row['llc_std'])}, acceptance {_fmt(row['mala_acceptance'])}, "
        f"R-hat {_fmt(row['rhat'])}, status {row['status']}"
    )


def run_config(
    config: Mapping[str, Any],
    executor: str | None = None,
    address: str | None = None,
    out_dir: Path | None = None,
    resume: bool = True,
    overwrite: bool = False,
    echo: Callable[[str], None] = print,
):
    """Run a checked configuration (see :func:`load_sweep_config`); returns ``(table, out_dir)``."""
    run = dict(config["run"])
    file_executor, file_address, file_out = (
        run.pop("executor", None),
        run.pop("address", None),
        run.pop("out_dir", None),
    )
    executor = executor or file_executor or "local"
    address = address or file_address
    out_dir = Path(out_dir) if out_dir is not None else file_out
    if out_dir is None:
        out_dir = config["base"] / f"{config['path'].stem}-results"
    factory = _import_factory(config["factory"], config["base"])
    first, loader, criterion, unpack = _factory_parts(config["kind"], factory(**config["factory_kwargs"]))
    kind = config["kind"]
    from .checkpoints import llc_over_checkpoints
    from .grid import AXES, LLCGridSearch

    total = config["grid"].n_points() if kind == "grid" else len(config["checkpoints"])
    echo(f"{kind} sweep: {total} point(s), executor={executor}, results: {Path(out_dir) / RESULTS_FILE}")
    done = [0]

    def progress(row: dict[str, Any]) -> None:
        done[0] += 1
        where = (
            " ".join(f"{k}={_fmt(row[k])}" for k in AXES)
            if kind == "grid"
            else f"checkpoint={row['checkpoint']}"
        )
        echo(f"[{done[0]}] point {row['point']}: {where}: {point_line(row)} ({row['wall_seconds']:.2f} s)")

    common = {
        "criterion_fn": criterion,
        "unpack_fn": unpack,
        **run,
        "show_progress": False,
        "executor": executor,
        "address": address,
        "out_dir": out_dir,
        "resume": resume,
        "overwrite": overwrite,
        "callback": progress,
    }
    if kind == "grid":
        df = LLCGridSearch(config["grid"]).run_grid_search(first, loader, **common)
    else:
        df = llc_over_checkpoints(
            config["checkpoints"], first, loader, config["config"], labels=config["labels"], **common
        )
    return df, Path(out_dir)


def register(app: typer.Typer) -> None:
    """Add the ``sweep`` command to a Typer application."""

    @app.command("sweep")
    def sweep(
        config: Annotated[Path, typer.Argument(help="Sweep configuration (.yaml, .yml or .toml).")],
        executor: Annotated[
            str | None,
            typer.Option(
                help=f"Where points run: {' or '.join(EXECUTORS)} (default: the file's, else local)."
            ),
        ] = None,
        address: Annotated[str | None, typer.Option(help="Ray cluster address (executor ray).")] = None,
        resume: Annotated[
            bool,
            typer.Option("--resume/--no-resume", help="Continue the sweep stored in the output directory."),
        ] = True,
        overwrite: Annotated[bool, typer.Option(help="Discard stored results and start again.")] = False,
        out: Annotated[
            Path | None, typer.Option("--out", help="Output directory (default: the file's run.out_dir).")
        ] = None,
        plot: Annotated[bool, typer.Option(help="Also save a figure of the results as sweep.png.")] = False,
    ) -> None:
        """Run a grid search or a checkpoint sweep described by CONFIG (YAML or TOML).

        CONFIG's sections: kind (grid or checkpoints); model (factory: "module:function", kwargs); estimator (LLCConfig settings by name: draws, chains, burnin_steps, learning_rate, localization, nbeta, dtype, ...); grid (learning_rate, localization, nbeta, each {range: \\[lo, hi]}, a list or a number, and estimates_per_dim for ranges); checkpoints or checkpoints_glob, and labels; run (seed, devices, chain_batch, compile, params, max_retries, executor, address, ray_resources, out_dir). The full schema is in the docstring of lambdahat.sweeps.cli.

        Every finished point is written at once to OUT/results.csv (with the sweep's definition in OUT/sweep.json) and printed with its λ̂, MALA acceptance, R-hat and status. Running the same command again resumes: finished points are skipped, failed ones retried. Exit code 1 when some point failed, 2 for a configuration error.
        """
        if executor is not None and executor not in EXECUTORS:
            typer.echo(f"error: --executor must be one of {list(EXECUTORS)}; got {executor!r}.", err=True)
            raise typer.Exit(2)
        try:
            cfg = load_sweep_config(config)
            df, out_dir = run_config(
                cfg,
                executor=executor,
                address=address,
                out_dir=out,
                resume=resume,
                overwrite=overwrite,
                echo=typer.echo,
            )
        except (SweepConfigError, FileExistsError, ValueError, TypeError, ImportError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        except RuntimeError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(df[[c for c in SHOWN_COLUMNS if c in df]].to_string(float_format=lambda v: f"{v:.4g}"))
        if plot:
            from .plots import plot_grid, plot_llc_over_checkpoints

            fig = plot_grid(df) if cfg["kind"] == "grid" else plot_llc_over_checkpoints(df)
            fig.savefig(out_dir / "sweep.png", dpi=120)
            typer.echo(f"figure: {out_dir / 'sweep.png'}")
        typer.echo(f"results: {out_dir / RESULTS_FILE}")
        n_failed = int((df["status"] == "failed").sum())
        if n_failed:
            typer.echo(f"{n_failed} point(s) failed; run the same command again to retry them.", err=True)
            raise typer.Exit(1)
