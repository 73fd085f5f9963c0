"""Sweep results that survive failure: one CSV row per finished point, appended and synced at once.

An output directory holds

.. code-block:: text

    sweep.json     what the sweep is (kind, hyper-parameters, schedule, seed, checkpoints, ...) and a log of its runs
    results.csv    a header, then one line per finished point, in finishing order
    .lock          held while a process writes here (a second writer is refused)

The results file is append-only: a row, once written, is never rewritten, so a sweep killed at any moment leaves
every earlier row intact. Reopening the directory resumes the sweep: points whose row holds an estimate (status
``ok``, ``untrusted: ...`` or ``diverged``, the trust policy's verdict) are finished and read back; ``failed`` and
missing points run again (a retried point gets a new row; the newest row of a point wins).
A line left half-written by a killed process is cut off before new rows are appended. A sweep whose definition
differs from the stored ``sweep.json`` is refused with a field-by-field difference, never mixed in.

Every row is one physical line (error messages are flattened), and floats are written with ``repr`` so they read
back bit for bit.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..trust import status_kind

__all__ = [
    "CONFIG_FILE",
    "RESULTS_FILE",
    "SweepStore",
    "config_diff",
    "one_line",
    "stored_seed",
]

RESULTS_FILE = "results.csv"
CONFIG_FILE = "sweep.json"
LOCK_FILE = ".lock"
FORMAT = "lambdahat-sweep"
FORMAT_VERSION = 1

#: Column types understood by the store.
COLUMN_TYPES = ("float", "int", "str")


def one_line(text: Any, limit: int = 2000) -> str:
    """``text`` as a single line (newlines and tabs folded into spaces), cut at ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _format(value: Any, kind: str) -> str:
    if value is None:
        return ""
    if kind == "float":
        return repr(float(value))
    if kind == "int":
        if isinstance(value, float) and math.isnan(value):
            return ""
        return str(int(value))
    return one_line(value)


def _parse(text: str, kind: str) -> Any:
    if kind == "float":
        return float(text) if text != "" else math.nan
    if kind == "int":
        return int(text) if text != "" else None
    return text if text != "" else None


def _canonical(obj: Any) -> Any:
    """JSON round trip: tuples become lists, keys strings, so stored and new configs compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping) and obj:
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}


def _short(value: Any, limit: int = 160) -> str:
    text = "<absent>" if value is _ABSENT else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_ABSENT = object()


def config_diff(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Field-by-field differences ``"field: stored -> new"`` between two sweep configurations (nested fields are
    dotted: ``estimator.draws``)."""
    a, b = _flatten(_canonical(dict(stored))), _flatten(_canonical(dict(new)))
    lines = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if va != vb:
            lines.append(f"{key}: {_short(va)} -> {_short(vb)}")
    return lines


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"sweep: cannot read {path} ({type(exc).__name__}: {exc}); it does not describe a sweep. Use another "
            "out_dir, or start this one again with overwrite=True (CLI: --no-resume --overwrite)."
        ) from exc


def _write_json_atomic(path: Path, obj: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def stored_seed(out_dir: str | os.PathLike[str] | None) -> int | None:
    """The seed recorded in ``out_dir/sweep.json``, if there is one (a resumed sweep without an explicit seed
    keeps the seed it started with)."""
    if out_dir is None:
        return None
    path = Path(out_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        seed = json.loads(path.read_text(encoding="utf-8")).get("config", {}).get("seed")
    except (OSError, json.JSONDecodeError):
        return None
    return seed if isinstance(seed, int) else None


class SweepStore:
    """The results file and configuration of one sweep in ``out_dir``.

    Parameters
    ----------
    out_dir:
        Directory of the sweep (created if needed).
    columns:
        ``(name, type)`` of every results column, ``type`` one of ``"float"``, ``"int"``, ``"str"``. The first
        column must be ``point`` (the index of the point in the sweep).

    Use as a context manager: ``open`` takes the lock and returns the finished rows; rows are then appended with
    :meth:`append`; leaving the block releases the lock.
    """

    def __init__(self, out_dir: str | os.PathLike[str], columns: Sequence[tuple[str, str]]) -> None:
        self.out_dir = Path(out_dir)
        self.columns = [(str(n), str(t)) for n, t in columns]
        if not self.columns or self.columns[0] != ("point", "int"):
            raise ValueError("SweepStore: the first column must be ('point', 'int').")
        bad = [t for _, t in self.columns if t not in COLUMN_TYPES]
        if bad:
            raise ValueError(f"SweepStore: column types must be in {COLUMN_TYPES}; got {bad}.")
        self.results_path = self.out_dir / RESULTS_FILE
        self.config_path = self.out_dir / CONFIG_FILE
        self._fh: io.TextIOWrapper | None = None
        self._lock_fh = None

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def __enter__(self) -> SweepStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._lock_fh is not None:
            with contextlib.suppress(ImportError, OSError):
                import fcntl

                fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def _lock(self) -> None:
        self._lock_fh = open(self.out_dir / LOCK_FILE, "a+")  # held until close()
        try:
            import fcntl
        except ImportError:  # not POSIX: no advisory lock
            return
        try:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock_fh.close()
            self._lock_fh = None
            raise RuntimeError(
                f"sweep: another process is writing to {self.out_dir}; wait for it to finish, or use another "
                "out_dir."
            ) from exc

    def open(
        self,
        kind: str,
        config: Mapping[str, Any],
        runtime: Mapping[str, Any] | None = None,
        resume: bool = True,
        overwrite: bool = False,
    ) -> dict[int, dict[str, Any]]:
        """Take the lock, check or write ``sweep.json``, and return the finished (``ok``) rows by point.

        Parameters
        ----------
        kind:
            ``"grid"`` or ``"checkpoints"``.
        config:
            What the sweep is; compared field by field with the stored one when resuming.
        runtime:
            How this run is done (executor, devices, versions); recorded, never compared.
        resume:
            Continue the sweep stored in ``out_dir`` (default). With ``False`` an existing sweep is refused unless
            ``overwrite``.
        overwrite:
            Delete a stored sweep and start again.

        Raises
        ------
        FileExistsError
            ``resume=False`` and ``out_dir`` holds results, without ``overwrite``.
        ValueError
            The stored sweep differs from ``config`` (the message lists ``field: stored -> new``).
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            return self._open(kind, config, runtime, resume, overwrite)
        except BaseException:
            self.close()
            raise

    def _open(self, kind, config, runtime, resume, overwrite) -> dict[int, dict[str, Any]]:
        exists = self.config_path.exists() or self.results_path.exists()
        if exists and overwrite:
            for path in (self.results_path, self.config_path):
                path.unlink(missing_ok=True)
            exists = False
        if exists and not resume:
            raise FileExistsError(
                f"sweep: {self.out_dir} already holds a sweep ({RESULTS_FILE}, {CONFIG_FILE}); resume it "
                "(resume=True, CLI --resume), or discard it with overwrite=True (CLI: --no-resume --overwrite), "
                "or use another out_dir."
            )
        config = _canonical(dict(config))
        run_record = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **_canonical(dict(runtime or {}))}
        if not exists:
            _write_json_atomic(
                self.config_path,
                {
                    "format": FORMAT,
                    "version": FORMAT_VERSION,
                    "kind": kind,
                    "config": config,
                    "runs": [run_record],
                },
            )
            self._write_header()
            finished: dict[int, dict[str, Any]] = {}
        else:
            if not self.config_path.exists():
                raise ValueError(
                    f"sweep: {self.results_path} exists without {CONFIG_FILE}, so its sweep cannot be checked; "
                    "use another out_dir, or start again with overwrite=True (CLI: --no-resume --overwrite)."
                )
            stored = _read_json(self.config_path)
            if stored.get("format") != FORMAT:
                raise ValueError(
                    f"sweep: {self.config_path} is not a lambdahat sweep file; use another out_dir."
                )
            diff = []
            if stored.get("kind") != kind:
                diff.append(f"kind: {_short(stored.get('kind'))} -> {_short(kind)}")
            diff += config_diff(stored.get("config", {}), config)
            if diff:
                raise ValueError(
                    f"sweep: {self.out_dir} holds a different sweep; refusing to mix its results with this one. "
                    "Differences (field: stored -> new):\n  "
                    + "\n  ".join(diff)
                    + "\nUse another out_dir, or discard the stored results with overwrite=True "
                    "(CLI: --no-resume --overwrite)."
                )
            runs = [*stored.get("runs", []), run_record]
            _write_json_atomic(self.config_path, {**stored, "runs": runs})
            finished = self._read_finished()
        self._fh = open(self.results_path, "a", encoding="utf-8", newline="")
        return finished

    # -- the results file --------------------------------------------------------------------------------------

    def _line(self, values: Sequence[str]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(values)
        return buf.getvalue()

    def _write_header(self) -> None:
        with open(self.results_path, "w", encoding="utf-8", newline="") as fh:
            fh.write(self._line([n for n, _ in self.columns]))
            fh.flush()
            os.fsync(fh.fileno())

    def _read_finished(self) -> dict[int, dict[str, Any]]:
        if not self.results_path.exists():
            self._write_header()
            return {}
        data = self.results_path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            # The last line was cut off (process killed mid-write): drop it before appending.
            with open(self.results_path, "r+b") as fh:
                fh.truncate(end)
                fh.flush()
                os.fsync(fh.fileno())
            if end > 0:
                warnings.warn(
                    f"sweep: dropped a partially written last line of {self.results_path} (an interrupted "
                    "write); that point runs again.",
                    RuntimeWarning,
                    stacklevel=4,
                )
            data = data[:end]
        if not data:
            self._write_header()
            return {}
        lines = data.decode("utf-8", errors="replace").split("\n")[:-1]
        header = next(csv.reader([lines[0]]))
        names = [n for n, _ in self.columns]
        if header != names:
            raise ValueError(
                f"sweep: {self.results_path} has columns {header}, this version of lambdahat writes {names}; "
                "use another out_dir, or start again with overwrite=True (CLI: --no-resume --overwrite)."
            )
        finished: dict[int, dict[str, Any]] = {}
        skipped = 0
        for line in lines[1:]:
            fields = next(csv.reader([line]), [])
            if len(fields) != len(self.columns):
                skipped += 1
                continue
            try:
                row = {n: _parse(v, t) for (n, t), v in zip(self.columns, fields)}
            except ValueError:
                skipped += 1
                continue
            point = row["point"]
            if status_kind(row.get("status")) in ("ok", "untrusted", "diverged"):  # an estimate: finished
                finished[point] = row
            else:
                finished.pop(point, None)  # the newest row of a point wins
        if skipped:
            warnings.warn(
                f"sweep: ignored {skipped} malformed line(s) of {self.results_path}; those points run again.",
                RuntimeWarning,
                stacklevel=4,
            )
        return finished

    def append(self, row: Mapping[str, Any]) -> None:
        """Append one row and push it to the disk (write, flush, fsync) before returning."""
        if self._fh is None:
            raise RuntimeError("SweepStore.append: the store is not open.")
        line = self._line([_format(row.get(n), t) for n, t in self.columns])
        self._fh.write(line)
        self._fh.flush()
        os.fsync(self._fh.fileno())
