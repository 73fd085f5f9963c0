"""The ``lambdahat sweep CONFIG.yaml`` command: a grid search or a checkpoint sweep described by a YAML (or TOML)
file, run locally or on Ray, resumable.

A configuration (relative paths are relative to the file)::

    kind: grid                      # or: checkpoints
    model:
      kind: python
      factory: "my_models:build"    # module:function, or path/to/file.py:function
      kwargs: {width: 64}           # optional keyword arguments of the factory
    estimator:                      # LLCEstimator settings
      draws: 200
      chains: 8
      burnin_steps: 100
    grid:                           # kind: grid
      epsilon: {range: [1.0e-6, 1.0e-4]}   # a range, a list of values, or one value
      gamma: {range: [10, 500]}
      nbeta: 57.6                   # null: n / log n
      estimates_per_dim: 5
    run:
      seed: 0
      devices: cpu
      out_dir: results/grid

For ``kind: grid`` the factory returns ``(model, loader, criterion_fn)``; for ``kind: checkpoints`` it returns
``(model_fn, loader, criterion_fn)`` (``loader`` may be ``label -> loader``) and the file lists
``checkpoints: [paths]`` or ``checkpoints_glob: "dir/*.safetensors"`` (sorted naturally), optionally ``labels``.
A fourth element, ``unpack_fn``, may follow; ``criterion_fn=None`` means cross-entropy.
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

import torch.nn.functional as F
import typer
import yaml

from ..estimator import LLCEstimator
from .checkpoints import llc_over_checkpoints
from .executors import EXECUTORS
from .grid import GridSearchConfig, LLCGridSearch
from .store import RESULTS_FILE

__all__ = ["SweepConfigError", "load_sweep_config", "register", "run_config"]

TOP_KEYS = ("kind", "model", "estimator", "grid", "checkpoints", "checkpoints_glob", "labels", "run")
KINDS = ("grid", "checkpoints")
MODEL_KINDS = ("python",)
GRID_KEYS = ("epsilon", "gamma", "nbeta", "estimates_per_dim", "gamma_spacing")
SCHEDULE_KEYS = (
    "draws",
    "chains",
    "burnin_steps",
    "steps_bw_draws",
    "sampler",
    "dtype",
    "weight_decay",
    "restrict_to_orth_grad",
    "bounding_box_size",
    "sampler_options",
)
ESTIMATOR_KEYS = (*SCHEDULE_KEYS[:4], "learning_rate", "localization", "nbeta", *SCHEDULE_KEYS[4:])
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
FLOAT_KEYS = ("learning_rate", "localization", "nbeta", "weight_decay", "bounding_box_size")


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


def _float(where: str, value: Any) -> Any:
    """YAML 1.1 reads ``1e-6`` (no dot) as a string; accept it as the number it means."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise SweepConfigError(f"sweep config: {where} must be a number; got {value!r}.") from None
    return value


def _axis(name: str, spec: Any) -> Any:
    """A grid axis from the file: ``{range: [lo, hi]}``, a list of values, or one value."""
    if isinstance(spec, Mapping):
        if set(spec) != {"range"} or not isinstance(spec["range"], list) or len(spec["range"]) != 2:
            raise SweepConfigError(
                f"sweep config: grid.{name} as a mapping must be {{range: [lo, hi]}}; got {spec!r}. "
                "For given values use a list, for one value a number."
            )
        return tuple(_float(f"grid.{name}", v) for v in spec["range"])
    if isinstance(spec, list):
        return [_float(f"grid.{name}", v) for v in spec]
    return None if spec is None else _float(f"grid.{name}", spec)


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

    Returns the checked sections with paths resolved against the file's directory; raises
    :class:`SweepConfigError` with what to change.
    """
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
        est = _check_keys("estimator", cfg.get("estimator"), SCHEDULE_KEYS)
        grid = _check_keys("grid", cfg.get("grid"), GRID_KEYS)
        for key in ("epsilon", "gamma", "nbeta"):
            if key in grid:
                grid[key] = _axis(key, grid[key])
        for key in FLOAT_KEYS:
            if key in est:
                est[key] = _float(f"estimator.{key}", est[key])
        try:
            out["grid"] = GridSearchConfig(**grid, **est)
        except (TypeError, ValueError) as exc:
            raise SweepConfigError(f"sweep config: {exc}") from exc
    else:
        if "grid" in cfg:
            raise SweepConfigError("sweep config: grid belongs to kind: grid, not kind: checkpoints.")
        est = _check_keys("estimator", cfg.get("estimator"), ESTIMATOR_KEYS)
        for key in FLOAT_KEYS:
            if key in est:
                est[key] = _float(f"estimator.{key}", est[key])
        if isinstance(est.get("dtype"), str):
            import torch

            name = est["dtype"].removeprefix("torch.")
            if not isinstance(getattr(torch, name, None), torch.dtype):
                raise SweepConfigError(
                    f"sweep config: estimator.dtype {est['dtype']!r} is not a torch dtype."
                )
            est["dtype"] = getattr(torch, name)
        try:
            out["estimator"] = LLCEstimator(**est)
        except (TypeError, ValueError) as exc:
            raise SweepConfigError(f"sweep config: estimator: {exc}") from exc
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
    return first_obj, loader, criterion if criterion is not None else F.cross_entropy, unpack


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else str(v)


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
    total = config["grid"].n_points() if kind == "grid" else len(config["checkpoints"])
    echo(f"{kind} sweep: {total} point(s), executor={executor}, results: {Path(out_dir) / RESULTS_FILE}")
    done = [0]

    def progress(row: dict[str, Any]) -> None:
        done[0] += 1
        where = (
            " ".join(f"{k}={_fmt(row[k])}" for k in ("epsilon", "gamma", "nbeta"))
            if kind == "grid"
            else f"checkpoint={row['checkpoint']}"
        )
        if row["status"] == "ok":
            what = f"llc_mean={_fmt(row['llc_mean'])} ± {_fmt(row['llc_std'])}"
        else:
            what = f"FAILED after {row['attempts']} attempt(s): {row['error']}"
        echo(f"[{done[0]}] point {row['point']}: {where}: {what} ({row['wall_seconds']:.2f} s)")

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
            config["checkpoints"], first, loader, config["estimator"], labels=config["labels"], **common
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

        Every finished point is written at once to OUT/results.csv (with the sweep's definition in
        OUT/sweep.json). Running the same command again resumes: finished points are skipped, failed ones
        retried. Exit code 1 when some point failed, 2 for a configuration error.
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
        shown = [
            c for c in ("epsilon", "gamma", "nbeta", "checkpoint", "llc_mean", "llc_std", "status") if c in df
        ]
        typer.echo(df[shown].to_string())
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
