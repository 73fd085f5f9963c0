"""Train a :class:`ModAddModel` and store the run as a self-describing directory; load it back.

A run directory holds::

    params.json                          format marker, version, ExperimentParams, checkpoint steps
    record.csv                           one row per saved checkpoint (appended as training goes)
    checkpoints/ckpt_0000.safetensors    the initialization ... the final model

Files are written so that an interrupted training leaves a loadable directory: each checkpoint is written to a
temporary file and renamed into place, then its row is appended to ``record.csv`` in a single write.

:class:`ExperimentParams` is defined in the torch-free :mod:`lambdahat.modadd.params` and re-exported here.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from lambdahat.modadd._seeding import generator
from lambdahat.modadd.data import make_dataset, train_test_split
from lambdahat.modadd.model import ModAddModel
from lambdahat.modadd.params import ExperimentParams

__all__ = [
    "RECORD_COLUMNS",
    "RUN_FORMAT",
    "RUN_FORMAT_VERSION",
    "ExperimentParams",
    "Run",
    "build_model",
    "checkpoint_steps",
    "evaluate",
    "load_run",
    "train",
]

RUN_FORMAT = "lambdahat.modadd.run"
RUN_FORMAT_VERSION = 1
RECORD_COLUMNS = ("checkpoint", "step", "train_loss", "test_loss", "train_acc", "test_acc")
_CKPT_RE = re.compile(r"^ckpt_(\d{4,})\.safetensors$")


def checkpoint_steps(n_batches: int, n_checkpoints: int) -> list[int]:
    """Evenly spaced checkpoint steps ``s_i = round(i · n_batches / (n_checkpoints - 1))``, ``i = 0 .. n-1``.

    ``s_0 = 0`` (the initialization) and ``s_{n-1} = n_batches`` (the final model); halves round up. The steps
    are strictly increasing when ``2 <= n_checkpoints <= n_batches + 1``.

    Examples
    --------
    >>> checkpoint_steps(10, 4)
    [0, 3, 7, 10]
    """
    if n_checkpoints < 2 or n_checkpoints > n_batches + 1:
        raise ValueError(
            f"checkpoint_steps: n_checkpoints must be in [2, n_batches + 1] = [2, {n_batches + 1}], "
            f"got {n_checkpoints}."
        )
    m = n_checkpoints - 1
    return [(2 * i * n_batches + m) // (2 * m) for i in range(n_checkpoints)]


def build_model(params: ExperimentParams) -> ModAddModel:
    """The freshly initialized model of a run (seeded by ``params.run_id``)."""
    return ModAddModel(
        params.p,
        embed_dim=params.embed_dim,
        hidden_size=params.hidden_size,
        activation=params.activation,
        tie_unembed=params.tie_unembed,
        linear_1_tied=params.linear_1_tied,
        scale_embed=params.scale_embed,
        scale_linear_1_factor=params.scale_linear_1_factor,
        freeze_middle=params.freeze_middle,
        seed=params.run_id,
    )


def _split(params: ExperimentParams) -> tuple[TensorDataset, TensorDataset]:
    x, y = make_dataset(params.p, use_random_dataset=params.use_random_dataset, seed=params.run_id)
    return train_test_split(x, y, train_frac=params.train_frac, seed=params.run_id)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, data: TensorDataset | tuple[torch.Tensor, torch.Tensor]
) -> tuple[float, float]:
    """Full-batch mean cross-entropy and accuracy of ``model`` on ``data``; ``(nan, nan)`` for empty data."""
    x, y = data.tensors if isinstance(data, TensorDataset) else data
    if len(y) == 0:
        return math.nan, math.nan
    logits = model(x)
    loss = F.cross_entropy(logits, y).item()
    acc = (logits.argmax(dim=-1) == y).float().mean().item()
    return loss, acc


def _ckpt_name(i: int) -> str:
    return f"ckpt_{i:04d}.safetensors"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _save_checkpoint(model: torch.nn.Module, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp))
    os.replace(tmp, path)


def _format_row(values: list[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def train(
    params: ExperimentParams,
    out_dir: str | os.PathLike[str],
    show_progress: bool = True,
    overwrite: bool = False,
    stop_when: Callable[[dict[str, float]], bool] | None = None,
) -> Run:
    """Train a model as described by ``params`` and write the run directory ``out_dir``.

    Adam with coupled L2 weight decay minimizes the minibatch cross-entropy for ``n_batches`` steps; step
    ``t`` (``t = 0 .. n_batches-1``) uses the minibatch ``B_t`` of ``batch_size`` indices drawn uniformly
    *with replacement* from the training split by a generator seeded from ``run_id``, and weight decay 0 when
    ``t < num_no_weight_decay_steps`` (the parameter group's ``weight_decay`` is set to 0, then restored).
    Only parameters with ``requires_grad`` are optimized (see ``freeze_middle``). After the steps listed by
    :func:`checkpoint_steps` (step 0 = the initialization) the weights are saved and the full-batch train/test
    loss and accuracy appended to ``record.csv``. The minibatch sequence does not depend on the checkpoint
    schedule, and the same ``params`` give bitwise the same checkpoints (on the same machine and thread
    count).

    Parameters
    ----------
    params : ExperimentParams
        The run's definition.
    out_dir : path
        Directory to create (or an empty existing one).
    show_progress : bool, default True
        Show a tqdm progress bar with the latest checkpoint's accuracies.
    overwrite : bool, default False
        Replace an existing run directory (only one that this module wrote, i.e. with a run ``params.json``).
    stop_when : callable, optional
        A training criterion, called after every saved checkpoint after the initialization with its record row
        (``checkpoint, step, train_loss, test_loss, train_acc, test_acc``); when it returns True, training stops
        there, and the run ends with fewer checkpoints than planned (:func:`load_run` reads it as it reads an
        interrupted run; whether the last checkpoint meets the criterion tells the two apart). Default: train
        all ``n_batches`` steps.

    Returns
    -------
    Run
        The finished run, as :func:`load_run` would return it.

    Notes
    -----
    The models are tiny (``[128, 32]`` activations), so PyTorch's intra-op threads gain nothing, and on a busy
    machine their synchronization can make a step 10-20 times slower (the default run: about 6 s on one thread,
    about 40 s on two threads of a loaded 2-core machine). This function leaves the thread count alone; call
    ``torch.set_num_threads(1)`` in your script when training these models (1 and 2 threads gave bitwise
    identical checkpoints on a 2-core x86 CPU).
    """
    if not isinstance(params, ExperimentParams):
        raise TypeError(f"train: params must be an ExperimentParams, got {type(params).__name__}.")
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    steps = checkpoint_steps(params.n_batches, params.n_save_model_checkpoints)
    header = {
        "format": RUN_FORMAT,
        "version": RUN_FORMAT_VERSION,
        "params": params.to_dict(),
        "checkpoint_steps": steps,
    }
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "params.json", json.dumps(header, indent=2) + "\n")
    record_path = out / "record.csv"
    _write_atomic(record_path, _format_row(list(RECORD_COLUMNS)))

    model = build_model(params)
    train_ds, test_ds = _split(params)
    x_train, y_train = train_ds.tensors
    n_train = len(y_train)
    trainable = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=params.lr, weight_decay=params.weight_decay)
    batches = generator(params.run_id, "minibatches")

    def set_weight_decay(value: float) -> None:
        for group in optimizer.param_groups:
            group["weight_decay"] = value

    def save(ci: int) -> dict[str, float]:
        _save_checkpoint(model, out / "checkpoints" / _ckpt_name(ci))
        train_loss, train_acc = evaluate(model, train_ds)
        test_loss, test_acc = evaluate(model, test_ds)
        row = [ci, steps[ci], train_loss, test_loss, train_acc, test_acc]
        with open(record_path, "a") as f:
            f.write(_format_row(row))
        return dict(zip(RECORD_COLUMNS, row))

    if params.num_no_weight_decay_steps > 0:
        set_weight_decay(0.0)
    step = 0
    with tqdm(total=params.n_batches, disable=not show_progress, desc=f"modadd p={params.p}") as bar:
        bar.set_postfix(_postfix(save(0)))
        for ci in range(1, len(steps)):
            while step < steps[ci]:
                if step == params.num_no_weight_decay_steps:
                    set_weight_decay(params.weight_decay)
                idx = torch.randint(0, n_train, (params.batch_size,), generator=batches)
                loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                bar.update(1)
            row = save(ci)
            bar.set_postfix(_postfix(row))
            if stop_when is not None and stop_when(row):
                break
    return load_run(out)


def _postfix(row: dict[str, float]) -> dict[str, float]:
    return {"train_acc": row["train_acc"], "test_acc": row["test_acc"]}


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(
            f"train: out_dir {str(out)!r} exists and is not a directory; pick another path."
        )
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return
    if not overwrite:
        raise FileExistsError(
            f"train: out_dir {str(out)!r} is not empty; pass a new directory, or overwrite=True to replace a "
            "previous run there."
        )
    _read_header(out)  # refuses to delete a directory that is not one of our runs
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    for name in ("params.json", "record.csv"):
        (out / name).unlink(missing_ok=True)


def _read_header(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(
            f"load_run: no such directory {str(path)!r}; pass the out_dir given to train()."
        )
    if not path.is_dir():
        raise NotADirectoryError(
            f"load_run: {str(path)!r} is a file; pass the run directory that contains it."
        )
    pfile = path / "params.json"
    if not pfile.is_file():
        raise FileNotFoundError(
            f"load_run: {str(path)!r} has no params.json, so it is not a modadd run directory; "
            "pass the out_dir given to train()."
        )
    try:
        header = json.loads(pfile.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"load_run: {str(pfile)!r} is not valid JSON ({exc}); it was not written by train()."
        ) from None
    if not isinstance(header, dict) or header.get("format") != RUN_FORMAT:
        found = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise ValueError(
            f"load_run: {str(pfile)!r} is not a lambdahat modadd run (expected format {RUN_FORMAT!r}, "
            f"found {found!r}); pass a directory written by lambdahat.modadd.train()."
        )
    if header.get("version") != RUN_FORMAT_VERSION:
        raise ValueError(
            f"load_run: {str(pfile)!r} has run format version {header.get('version')!r}, "
            f"this lambdahat reads "
            f"version {RUN_FORMAT_VERSION}; use the lambdahat version that wrote it."
        )
    return header


def _read_record(path: Path) -> pd.DataFrame:
    rows: list[list[float]] = []
    if path.is_file():
        text = path.read_text()
        lines = text.split("\n")
        complete = lines[:-1]  # the last element is "" after a final newline, or an unfinished row
        for values in csv.reader(complete[1:]):
            if len(values) != len(RECORD_COLUMNS):
                continue
            try:
                rows.append([float(v) for v in values])
            except ValueError:
                continue
    df = pd.DataFrame(rows, columns=list(RECORD_COLUMNS))
    return df.astype({"checkpoint": "int64", "step": "int64"})


@dataclass(frozen=True, eq=False)
class Run:
    """A training run on disk: its parameters, record and checkpoints (loaded lazily, one at a time).

    Attributes
    ----------
    path : Path
        The run directory.
    params : ExperimentParams
        The parameters it was trained with.
    record : pandas.DataFrame
        One row per available checkpoint, columns ``checkpoint, step, train_loss, test_loss, train_acc,
        test_acc``.
    n_checkpoints : int
        Number of available checkpoints (``0 .. n_checkpoints-1``); fewer than planned if training was
        interrupted.
    steps : list of int
        Training step of each available checkpoint.
    """

    path: Path
    params: ExperimentParams
    record: pd.DataFrame = field(repr=False)
    n_checkpoints: int
    steps: list[int]

    def checkpoint_path(self, checkpoint: int = -1) -> Path:
        """Path of a checkpoint's safetensors file (negative indices count from the last available one)."""
        return self.path / "checkpoints" / _ckpt_name(self.checkpoint_index(checkpoint))

    def checkpoint_index(self, checkpoint: int) -> int:
        """The index ``0 .. n_checkpoints-1`` of an available checkpoint (negative ones count from the end).

        Raises
        ------
        TypeError
            ``checkpoint`` is not an int.
        IndexError
            The run has no such checkpoint (the message lists the valid indices).
        """
        n = self.n_checkpoints
        if isinstance(checkpoint, bool) or not isinstance(checkpoint, int):
            raise TypeError(f"Run.model: checkpoint must be an int, got {type(checkpoint).__name__}.")
        if n == 0:
            raise IndexError(
                f"Run {str(self.path)!r} has no checkpoints yet (training stopped before step 0 was saved)."
            )
        if not -n <= checkpoint < n:
            raise IndexError(
                f"Run: checkpoint {checkpoint} does not exist; this run has {n} checkpoint(s), "
                f"valid indices are 0..{n - 1} (or -{n}..-1 from the end)."
            )
        return checkpoint % n

    #: Former private name of :meth:`checkpoint_index`, kept until every caller has switched.
    _index = checkpoint_index

    def model(self, checkpoint: int = -1) -> ModAddModel:
        """A fresh :class:`ModAddModel` with the weights of ``checkpoint`` (default: the last available)."""
        model = build_model(self.params)
        state = load_file(str(self.checkpoint_path(checkpoint)))
        model.load_state_dict(state)
        return model

    def train_data(self) -> TensorDataset:
        """The training split, exactly as used in training."""
        return _split(self.params)[0]

    def test_data(self) -> TensorDataset:
        """The test split (the pairs not trained on)."""
        return _split(self.params)[1]


def load_run(path: str | os.PathLike[str]) -> Run:
    """Open a run directory written by :func:`train` (complete or interrupted).

    Only the header and the record are read; checkpoints are loaded by :meth:`Run.model` on demand. The
    available checkpoints are the files ``ckpt_0000, ckpt_0001, ...`` present without a gap; record rows
    beyond them (and an unfinished last row) are dropped.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist or has no ``params.json``.
    ValueError
        ``params.json`` was not written by :func:`train` (foreign format or version).
    """
    path = Path(path)
    header = _read_header(path)
    params = ExperimentParams.from_dict(header["params"])
    planned = checkpoint_steps(params.n_batches, params.n_save_model_checkpoints)
    ckpt_dir = path / "checkpoints"
    present = set()
    if ckpt_dir.is_dir():
        for entry in ckpt_dir.iterdir():
            m = _CKPT_RE.match(entry.name)
            if m:
                present.add(int(m.group(1)))
    n = 0
    while n in present and n < len(planned):
        n += 1
    stray = sorted(i for i in present if i >= n)
    if stray:
        warnings.warn(
            f"load_run: ignoring checkpoint file(s) {stray} in {str(ckpt_dir)!r}: checkpoint {n} is "
            f"missing or "
            f"beyond the {len(planned)} planned.",
            stacklevel=2,
        )
    record = _read_record(path / "record.csv")
    record = (
        record[record["checkpoint"] < n].drop_duplicates("checkpoint", keep="last").reset_index(drop=True)
    )
    return Run(path=path, params=params, record=record, n_checkpoints=n, steps=planned[:n])
