"""Where the points of a sweep run: in this process (``"local"``) or as Ray tasks (``"ray"``).

Both executors run a *point function* ``fn(shared, task) -> dict`` for every point and yield one
:class:`Outcome` per point as points finish:

- ``shared`` holds what every point needs (the model, the loader, the estimator, the estimate options). The local
  executor passes the objects themselves, so every point of a sweep works on the same model object and the
  compiled step cached for that object is reused. The Ray executor puts each shared object into the object store
  once (``ray.put``) and every worker process keeps the last ones it fetched, so the model crosses the network
  once per worker and compiled steps are reused between the tasks of one worker.
- ``task`` is made from the point description by ``prepare`` in this process, just before the point is run
  (this is where a checkpoint file is read, so a Ray cluster needs no shared file system).

A point that raises is run again up to ``max_retries`` times, then reported as failed with its error; an error
of type :class:`PointError` (the same inputs will fail again, e.g. a checkpoint that does not fit the model) is
not retried. Failures never stop the other points.
"""

from __future__ import annotations

import collections
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .store import one_line

__all__ = [
    "EXECUTORS",
    "RAY_INSTALL_HINT",
    "LocalExecutor",
    "Outcome",
    "PointError",
    "RayExecutor",
    "import_ray",
    "make_executor",
]

EXECUTORS = ("local", "ray")
RAY_INSTALL_HINT = 'pip install "lambdahat[ray]"'
#: Keys of ``ray_resources`` passed to ``ray.remote(...).options``.
RAY_RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory", "resources", "accelerator_type")


class PointError(ValueError):
    """An error that running the same point again would repeat (not retried)."""


@dataclass(frozen=True)
class Outcome:
    """What became of one point.

    Attributes
    ----------
    key:
        The point's index in the sweep.
    ok:
        Whether it finished.
    value:
        The point function's result (``None`` when failed).
    error:
        ``"ExceptionType: message"`` of the last failure (``None`` when ok).
    attempts:
        How many times the point was run.
    wall_seconds:
        Wall time of the last attempt.
    """

    key: int
    ok: bool
    value: Any
    error: str | None
    attempts: int
    wall_seconds: float


def _describe(exc: BaseException) -> str:
    return one_line(f"{type(exc).__name__}: {exc}")


def call_point(fn: Callable, shared: Mapping[str, Any], task: Any) -> dict[str, Any]:
    """Run one attempt of a point, never raising (``KeyboardInterrupt`` and other non-``Exception`` errors
    excepted): ``{"ok", "value" | "error", "retry", "traceback", "wall_seconds"}``."""
    start = time.perf_counter()
    try:
        value = fn(shared, task)
    except Exception as exc:
        return {
            "ok": False,
            "error": _describe(exc),
            "retry": not isinstance(exc, PointError),
            "traceback": traceback.format_exc(),
            "wall_seconds": time.perf_counter() - start,
        }
    return {"ok": True, "value": value, "wall_seconds": time.perf_counter() - start}


class LocalExecutor:
    """Run the points one after the other in this process, each on the ``devices`` given to the sweep."""

    name = "local"

    def share(self, obj: Any) -> Any:
        return obj

    def map(
        self,
        fn: Callable,
        shared: Mapping[str, Any],
        points: Iterable[tuple[int, Any]],
        prepare: Callable[[Any], Any],
        max_retries: int,
    ) -> Iterator[Outcome]:
        for key, point in points:
            attempts = 0
            while True:
                attempts += 1
                try:
                    task = prepare(point)
                except Exception as exc:
                    res = {
                        "ok": False,
                        "error": _describe(exc),
                        "retry": not isinstance(exc, PointError),
                        "wall_seconds": 0.0,
                    }
                else:
                    res = call_point(fn, shared, task)
                if res["ok"] or not res["retry"] or attempts > max_retries:
                    yield _outcome(key, res, attempts)
                    break


def _outcome(key: int, res: Mapping[str, Any], attempts: int) -> Outcome:
    return Outcome(
        key=key,
        ok=bool(res["ok"]),
        value=res.get("value"),
        error=res.get("error"),
        attempts=attempts,
        wall_seconds=float(res.get("wall_seconds", 0.0)),
    )


def import_ray():
    """Import Ray, or explain how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            f'executor="ray" needs Ray, which is not installed here; install it with: {RAY_INSTALL_HINT} '
            '(or use executor="local").'
        ) from exc
    return ray


# -- the Ray side -------------------------------------------------------------------------------------------------

# Shared objects a Ray worker process fetched last, by object id: the model is deserialized once per worker and
# per sweep, and compiled steps (cached per model object) serve all the tasks of that worker.
_WORKER_SHARED: dict[str, Any] = {}


def _ray_entry(
    sys_path: list[str], shared_box: list[dict[str, Any]], fn: Callable, task: Any
) -> dict[str, Any]:
    """The body of every Ray task (runs in a worker process)."""
    import os

    import ray

    for (
        entry
    ) in sys_path:  # let the worker import what the driver can (the modules of user models, factories)
        if entry not in sys.path and os.path.isdir(entry):
            sys.path.append(entry)
    refs = shared_box[0]
    wanted = {ref.hex(): ref for ref in refs.values()}
    for stale in set(_WORKER_SHARED) - set(wanted):
        del _WORKER_SHARED[stale]
    missing = [h for h in wanted if h not in _WORKER_SHARED]
    if missing:
        for h, obj in zip(missing, ray.get([wanted[h] for h in missing])):
            _WORKER_SHARED[h] = obj
    shared = {name: _WORKER_SHARED[ref.hex()] for name, ref in refs.items()}
    return call_point(fn, shared, task)


def check_ray_resources(resources: Mapping[str, Any] | None) -> dict[str, Any]:
    """``ray_resources`` with defaults (``num_cpus=1``, ``num_gpus=0``), keys checked."""
    resources = dict(resources or {})
    unknown = sorted(set(resources) - set(RAY_RESOURCE_KEYS))
    if unknown:
        raise ValueError(
            f"sweep: ray_resources has unknown keys {unknown}; use {list(RAY_RESOURCE_KEYS)}, e.g. "
            "ray_resources={'num_cpus': 1, 'num_gpus': 1}."
        )
    return {"num_cpus": 1, "num_gpus": 0, **resources}


class RayExecutor:
    """Run every point as a Ray task.

    Parameters
    ----------
    address:
        Address of a running Ray cluster (``"ray://host:10001"``, ``"auto"``, ...). ``None``: use the Ray instance
        this process is already connected to, or start a local one (left running for later sweeps; stop it with
        ``ray.shutdown()``).
    resources:
        Resources of one task (``num_cpus`` default 1, ``num_gpus`` default 0, ``memory``, ``resources``,
        ``accelerator_type``). A point on ``devices="cuda"`` needs ``num_gpus >= 1``.
    init_options:
        Extra ``ray.init`` options when this executor starts or connects to Ray.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        resources: Mapping[str, Any] | None = None,
        init_options: Mapping[str, Any] | None = None,
    ) -> None:
        ray = import_ray()
        self.ray = ray
        self.resources = check_ray_resources(resources)
        if not ray.is_initialized():
            options = dict(init_options or {})
            if address is not None:
                ray.init(address=address, **options)
            else:
                options.setdefault("include_dashboard", False)
                ray.init(**options)
        self.remote = ray.remote(_ray_entry).options(max_retries=0, **self.resources)

    def share(self, obj: Any) -> Any:
        return self.ray.put(obj)

    def _window(self) -> int:
        """How many tasks to keep submitted: twice the tasks the cluster can run at once."""
        try:
            total = self.ray.cluster_resources()
        except Exception:
            return 4
        fits = []
        for key, res in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
            need = float(self.resources.get(key) or 0)
            if need > 0:
                fits.append(float(total.get(res, 0)) // need)
        return max(2, 2 * int(min(fits))) if fits else 8

    def map(
        self,
        fn: Callable,
        shared: Mapping[str, Any],
        points: Iterable[tuple[int, Any]],
        prepare: Callable[[Any], Any],
        max_retries: int,
    ) -> Iterator[Outcome]:
        ray = self.ray
        queue = collections.deque((key, point, 1) for key, point in points)
        box = [dict(shared)]  # nested, so Ray passes the references and the worker resolves (and caches) them
        sys_path = [p for p in sys.path if p]
        window = self._window()
        in_flight: dict[Any, tuple[int, Any, int, float]] = {}
        try:
            while queue or in_flight:
                while queue and len(in_flight) < window:
                    key, point, attempt = queue.popleft()
                    try:
                        task = prepare(point)
                    except Exception as exc:
                        res = {"ok": False, "error": _describe(exc), "retry": not isinstance(exc, PointError)}
                        if res["retry"] and attempt <= max_retries:
                            queue.appendleft((key, point, attempt + 1))
                        else:
                            yield _outcome(key, res, attempt)
                        continue
                    ref = self.remote.remote(sys_path, box, fn, task)
                    in_flight[ref] = (key, point, attempt, time.perf_counter())
                if not in_flight:
                    continue
                done, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in done:
                    key, point, attempt, started = in_flight.pop(ref)
                    try:
                        res = ray.get(ref)
                    except Exception as exc:  # the worker died, the node was lost, ...
                        res = {
                            "ok": False,
                            "error": _describe(exc),
                            "retry": True,
                            "wall_seconds": time.perf_counter() - started,
                        }
                    if res["ok"] or not res["retry"] or attempt > max_retries:
                        yield _outcome(key, res, attempt)
                    else:
                        queue.appendleft((key, point, attempt + 1))
        finally:
            for ref in in_flight:
                try:
                    ray.cancel(ref)
                except Exception:
                    pass


def make_executor(
    executor: str,
    address: str | None = None,
    ray_resources: Mapping[str, Any] | None = None,
    ray_init_options: Mapping[str, Any] | None = None,
) -> LocalExecutor | RayExecutor:
    """The executor named ``executor`` (``"local"`` or ``"ray"``)."""
    check_executor_name(executor, address)
    if executor == "local":
        return LocalExecutor()
    return RayExecutor(address=address, resources=ray_resources, init_options=ray_init_options)


def check_executor_name(executor: Any, address: str | None = None) -> None:
    """Refuse unknown executor names (before any work is done)."""
    if executor not in EXECUTORS:
        raise ValueError(f"sweep: executor must be one of {list(EXECUTORS)}; got {executor!r}.")
    if executor == "local" and address is not None:
        raise ValueError(
            f'sweep: address={address!r} names a Ray cluster, but executor="local" runs in this process; pass '
            'executor="ray" to use the cluster.'
        )
