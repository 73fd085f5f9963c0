"""The loop shared by grid searches and checkpoint sweeps: skip what is finished, run the rest on an executor,
store every finished point at once, and assemble the table."""

from __future__ import annotations

import hashlib
import platform
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..estimator import sample
from ..problem import Problem
from ..problem import prepare as prepare_problem
from .executors import check_executor_name, check_ray_resources, make_executor
from .store import SweepStore

__all__ = [
    "METRIC_COLUMNS",
    "SweepRun",
    "callable_name",
    "estimate",
    "fingerprint",
    "problem_for",
    "result_row",
    "run_sweep",
]

#: Columns filled from an :class:`~lambdahat.LLCResult` (type for the results file).
METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("llc_mean", "float"),
    ("llc_std", "float"),
    ("loss_mean", "float"),
    ("loss_std", "float"),
    ("llc_stderr", "float"),
    ("init_loss", "float"),
    ("mala_acceptance", "float"),
    ("rhat", "float"),
    ("ess", "float"),
    ("temperature", "float"),
    ("n_diverged", "int"),
)
#: Columns the sweep adds to every row. ``status`` is the trust policy's verdict of a point that ran (``"ok"``,
#: ``"untrusted: <reasons>"``, ``"diverged"``; :mod:`lambdahat.trust`) or ``"failed"`` for a point that raised.
STATUS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("status", "str"),
    ("error", "str"),
    ("seed", "int"),
    ("wall_seconds", "float"),
    ("attempts", "int"),
    ("warnings", "str"),
)


def problem_for(model, loader, config, options: Mapping[str, Any]) -> Problem:
    """Prepare ``model`` on ``loader`` with the run options of a sweep (``criterion_fn``, ``unpack_fn``,
    ``loss_fn``, ``devices``, ``compile``, ``params``)."""
    return prepare_problem(
        model,
        loader,
        config,
        devices=options.get("devices", "cpu"),
        compile=options.get("compile", "auto"),
        **{k: options.get(k) for k in ("criterion_fn", "unpack_fn", "loss_fn", "params")},
    )


def estimate(problem: Problem, config, options: Mapping[str, Any]):
    """One point of a sweep: sample ``config`` on a prepared problem with the sweep's ``seed`` and
    ``chain_batch`` (the :class:`~lambdahat.LLCResult`; the trust policy's warnings go into the table)."""
    return sample(
        problem,
        config,
        seed=options.get("seed"),
        chain_batch=options.get("chain_batch"),
        show_progress=False,
        warn=False,
        planned_runs=options.get("planned_runs"),
    )


def result_row(result) -> dict[str, Any]:
    """The metrics of one point from its :class:`~lambdahat.LLCResult` (``loss_mean``/``loss_std``: the loss of
    the final draw, over the chains that did not diverge, like ``get_metrics()["losses_mean"]``), with the trust
    policy's verdict as ``status`` (``"ok"``, ``"untrusted: <reasons>"`` or ``"diverged"``, see
    :func:`lambdahat.trust.status_line`) and its advice as ``warnings``."""
    metrics = result.to_metrics()
    return {
        "llc_mean": float(result.llc_mean),
        "llc_std": float(result.llc_std),
        "llc_stderr": float(result.llc_stderr),
        "loss_mean": float(metrics["losses_mean"]),
        "loss_std": float(metrics["losses_std"]),
        "init_loss": float(result.init_loss),
        "mala_acceptance": float(result.mala_acceptance),
        "rhat": float(result.rhat),
        "ess": float(result.ess),
        "temperature": float(result.temperature),
        "n_diverged": int(result.diverged.sum()),
        "warnings": "; ".join(result.warnings) or None,
        "status": result.status_line,
    }


def callable_name(fn: Any) -> str | None:
    """``module.qualname`` of a function (what a sweep's configuration records of it)."""
    if fn is None:
        return None
    module = getattr(fn, "__module__", None) or type(fn).__module__
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}"


def fingerprint(state: Mapping[str, Any]) -> str:
    """A content hash of a state dict (names, dtypes, shapes and bytes of its tensors)."""
    h = hashlib.blake2b(digest_size=16)
    for name, value in state.items():
        h.update(str(name).encode())
        if isinstance(value, torch.Tensor):
            t = value.detach()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            try:
                h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            except (RuntimeError, TypeError):  # exotic layouts: hash what can be printed
                h.update(repr(t).encode())
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


def params_spec(params: Any) -> Any:
    """A JSON-able record of the ``params`` selection."""
    if params is None or isinstance(params, str):
        return params
    if isinstance(params, Mapping):
        return {str(k): bool(v) for k, v in params.items()}
    if callable(params):
        return callable_name(params)
    return [str(p) for p in params]


def data_spec(loader: Any) -> dict[str, Any]:
    """A JSON-able record of the data a loader gives (size, batch size, sampler)."""
    if callable(loader) and not hasattr(loader, "__iter__"):
        return {"factory": callable_name(loader)}
    spec: dict[str, Any] = {"type": type(loader).__name__}
    try:
        spec["n"] = len(loader.dataset)
    except (TypeError, AttributeError, NotImplementedError):
        spec["n"] = None
    spec["batch_size"] = getattr(loader, "batch_size", None)
    sampler = getattr(loader, "sampler", None)
    spec["sampler"] = type(sampler).__name__ if sampler is not None else None
    spec["drop_last"] = getattr(loader, "drop_last", None)
    return spec


def runtime_spec(executor: str, address, options: Mapping[str, Any], max_retries: int) -> dict[str, Any]:
    """How a sweep was run (recorded in sweep.json, never compared on resume)."""
    from .. import __version__

    devices = options.get("devices")
    return {
        "executor": executor,
        "address": address,
        "devices": [str(d) for d in devices] if isinstance(devices, list | tuple) else str(devices),
        "chain_batch": options.get("chain_batch"),
        "compile": options.get("compile"),
        "max_retries": max_retries,
        "lambdahat": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
    }


def check_run_options(
    executor: str,
    address: str | None,
    devices: Any,
    ray_resources: Mapping[str, Any] | None,
    max_retries: int,
) -> None:
    """Refuse bad sweep options before any work is done."""
    check_executor_name(executor, address)
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"sweep: max_retries must be an int >= 0; got {max_retries!r}.")
    if executor == "ray":
        resources = check_ray_resources(ray_resources)
        items = devices if isinstance(devices, list | tuple) else [devices]
        wants_gpu = any(str(d).startswith("cuda") for d in items)
        if wants_gpu and not float(resources.get("num_gpus") or 0) > 0:
            raise ValueError(
                f"sweep: devices={devices!r} needs a GPU in every Ray task; pass ray_resources={{'num_gpus': 1}} "
                "(Ray then sets CUDA_VISIBLE_DEVICES so that 'cuda' is the task's GPU)."
            )


@dataclass(frozen=True)
class SweepRun:
    """How a sweep runs, the same for every kind of sweep: on which executor (``"local"`` or ``"ray"``, a Ray
    ``address``, the resources and ``ray.init`` options of its tasks), where finished points are stored
    (``out_dir``, ``resume``, ``overwrite``), how often a failing point is tried again (``max_retries``) and whether
    a progress bar shows."""

    executor: str = "local"
    address: str | None = None
    ray_resources: Mapping[str, Any] | None = None
    ray_init_options: Mapping[str, Any] | None = None
    out_dir: Any = None
    resume: bool = True
    overwrite: bool = False
    max_retries: int = 2
    show_progress: bool = True


def run_sweep(
    *,
    kind: str,
    points: Sequence[dict[str, Any]],
    point_columns: Sequence[tuple[str, str]],
    fn: Callable,
    shared: Mapping[str, Any],
    prepare: Callable[[dict[str, Any]], Any],
    config: Mapping[str, Any],
    options: Mapping[str, Any],
    seed: int,
    run: SweepRun,
    callback: Callable[[dict[str, Any]], None] | None = None,
    desc: str = "sweep",
    value_columns: Sequence[tuple[str, str]] = (),
) -> pd.DataFrame:
    """Run the points not yet finished and return the table of all points (one row per point, index = point).

    ``points[i]`` describes point ``i`` by the values of ``point_columns``; ``value_columns`` are extra values
    that the point function returns beside the metric columns (name, type), stored like them. ``prepare(point)``
    makes the task of a point in this process. ``config`` defines the sweep (compared on resume); ``options`` are
    the run options of its points (``devices``, ``chain_batch``, ``compile``, ...) and, with ``run``, how it ran
    (recorded in ``sweep.json``, never compared).
    """
    executor, address, out_dir = run.executor, run.address, run.out_dir
    ray_resources, ray_init_options = run.ray_resources, run.ray_init_options
    resume, overwrite, max_retries, show_progress = (
        run.resume,
        run.overwrite,
        run.max_retries,
        run.show_progress,
    )
    runtime = runtime_spec(executor, address, options, max_retries)
    columns = [("point", "int"), *point_columns, *METRIC_COLUMNS, *value_columns, *STATUS_COLUMNS]
    store = SweepStore(out_dir, columns) if out_dir is not None else None
    rows: dict[int, dict[str, Any]] = {}
    try:
        if store is not None:
            rows.update(store.open(kind, config, runtime, resume=resume, overwrite=overwrite))
            rows = {k: v for k, v in rows.items() if 0 <= k < len(points)}
        pending = [(i, p) for i, p in enumerate(points) if i not in rows]
        bar = tqdm(total=len(points), initial=len(rows), desc=desc, unit="point", disable=not show_progress)
        failed: list[str] = []

        def record(outcome) -> dict[str, Any]:
            point = points[outcome.key]
            row: dict[str, Any] = {"point": outcome.key, **{n: point[n] for n, _ in point_columns}}
            values = outcome.value if outcome.ok else {}
            for name, _ in (*METRIC_COLUMNS, *value_columns):
                row[name] = values.get(name)
            row["warnings"] = values.get("warnings")
            row.update(
                # a point that ran keeps its estimate's verdict (ok / untrusted: ... / diverged); failed = raised
                status=(values.get("status") or "ok") if outcome.ok else "failed",
                error=None if outcome.ok else outcome.error,
                seed=seed,
                wall_seconds=outcome.wall_seconds,
                attempts=outcome.attempts,
            )
            if store is not None:
                store.append(row)
            rows[outcome.key] = row
            bar.update(1)
            if not outcome.ok:
                failed.append(f"point {outcome.key}: {outcome.error}")
            if callback is not None:
                callback(dict(row))
            return row

        try:
            if pending:
                ex = make_executor(executor, address, ray_resources, ray_init_options)
                # a fact of the points' execution plan: in one process the points reuse one compiled step (one
                # architecture, one graph); a Ray task may land in a fresh process, so there each plans its own
                if isinstance(shared.get("options"), Mapping) and ex.name == "local":
                    shared = {**shared, "options": {**shared["options"], "planned_runs": len(pending)}}
                handles = {name: ex.share(obj) for name, obj in shared.items()}
                for outcome in ex.map(fn, handles, pending, prepare, max_retries):
                    record(outcome)
        finally:
            bar.close()
    finally:
        if store is not None:
            store.close()
    table = _table(points, point_columns, rows, columns)
    if len(table) and (table["status"] == "failed").all():
        first = table["error"].iloc[0]
        where = f"; every failure is recorded in {out_dir}" if out_dir is not None else ""
        raise RuntimeError(f"sweep: all {len(table)} point(s) failed; the first error: {first}{where}.")
    if failed:
        warnings.warn(
            f"sweep: {len(failed)} of {len(points)} point(s) failed (status='failed' in the table): "
            + "; ".join(failed[:5])
            + (" ..." if len(failed) > 5 else ""),
            RuntimeWarning,
            stacklevel=3,
        )
    return table


def _table(points, point_columns, rows, columns) -> pd.DataFrame:
    records = []
    for i, point in enumerate(points):
        row = dict(rows.get(i, {"status": "missing"}))
        for name, _ in point_columns:  # the point's own values (labels keep their type), not the file's text
            row[name] = point[name]
        records.append(row)
    names = [n for n, _ in columns if n != "point"]
    df = pd.DataFrame.from_records(records, columns=names, index=pd.RangeIndex(len(points)))
    for name, kind in columns:
        if name == "point":
            continue
        if kind == "int":
            df[name] = pd.array([None if v is None or v != v else int(v) for v in df[name]], dtype="Int64")
        elif kind == "float" and name not in dict(point_columns):
            df[name] = df[name].astype(float)
    return df
