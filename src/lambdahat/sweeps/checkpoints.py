"""The LLC over training: one estimate per checkpoint, all with the same settings (one ``LLCConfig``) and seed."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..config import LLCConfig
from ..estimator import LLCEstimator
from ..functional import select_parameters
from ..rng import resolve_seed
from .executors import PointError
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

__all__ = ["CheckpointError", "llc_over_checkpoints", "load_checkpoint"]

#: Keys under which training scripts commonly nest the model's state dict in a saved dictionary.
NESTED_KEYS = ("state_dict", "model_state_dict", "model")

Checkpoint = str | os.PathLike[str] | Mapping[str, torch.Tensor]


class CheckpointError(PointError):
    """A checkpoint that cannot be used: missing, not a state dict, or not fitting the model (not retried)."""


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def load_checkpoint(source: Checkpoint) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint, on the CPU.

    Parameters
    ----------
    source:
        A ``.safetensors`` file (read with ``safetensors.torch.load_file``), any other file saved with
        ``torch.save`` (read with ``torch.load(weights_only=True)``; a dict that nests the state dict under
        ``"state_dict"``, ``"model_state_dict"`` or ``"model"`` is unwrapped), or a state dict itself.

    Raises
    ------
    CheckpointError
        The file is missing or holds no state dict.
    """
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if not path.is_file():
        raise CheckpointError(f"llc_over_checkpoints: checkpoint file {str(path)!r} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise CheckpointError(
                f"llc_over_checkpoints: cannot read {str(path)!r} as safetensors ({type(exc).__name__}: {exc})."
            ) from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"llc_over_checkpoints: cannot read {str(path)!r} with torch.load(weights_only=True) "
            f"({type(exc).__name__}: {exc}); save checkpoints as model.state_dict() (torch.save) or with "
            "safetensors.torch.save_file."
        ) from exc
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in NESTED_KEYS:
            if _is_state_dict(obj.get(key)):
                return dict(obj[key])
    what = f"a dict with keys {list(obj)[:8]}" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
    raise CheckpointError(
        f"llc_over_checkpoints: {str(path)!r} holds {what}, not a state dict (names -> tensors); save "
        f"model.state_dict(), or nest it under one of {list(NESTED_KEYS)}."
    )


def _load_into(model: nn.Module, state: Mapping[str, torch.Tensor], label: Any) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"llc_over_checkpoints: checkpoint {label!r} does not fit the model built by model_fn (strict "
            f"loading): {exc} Make model_fn build the architecture the checkpoint was saved from."
        ) from exc


def _is_loader_factory(loader: Any) -> bool:
    return callable(loader) and not hasattr(loader, "__iter__")


def _checkpoint_point(shared: Mapping[str, Any], task: Mapping[str, Any]) -> dict[str, Any]:
    """One checkpoint (runs in this process or in a Ray worker): load its weights into the shared model object
    (so compiled steps cached for that object are reused) and estimate."""
    model = shared["model"]
    _load_into(model, task["state_dict"], task["label"])
    loader = shared["loader"]
    if _is_loader_factory(loader):
        loader = loader(task["label"])
    config, options = shared["config"], shared["options"]
    return result_row(estimate(problem_for(model, loader, config, options), config, options))


class _Prepare:
    """Makes the task of a checkpoint in the driver: reads its file (so Ray workers need no shared disk)."""

    def __init__(self, sources: Sequence[Checkpoint]) -> None:
        self.sources = sources

    def __call__(self, point: Mapping[str, Any]) -> dict[str, Any]:
        return {"label": point["checkpoint"], "state_dict": load_checkpoint(self.sources[point["index"]])}


def _labels(checkpoints: Sequence[Checkpoint], labels: Sequence[Any] | None) -> list[Any]:
    if labels is None:
        labels = [i if isinstance(c, Mapping) else Path(c).stem for i, c in enumerate(checkpoints)]
    else:
        labels = list(labels)
        if len(labels) != len(checkpoints):
            raise ValueError(
                f"llc_over_checkpoints: {len(labels)} labels for {len(checkpoints)} checkpoints; give one label "
                "per checkpoint."
            )
    for label in labels:
        if isinstance(label, bool) or not isinstance(label, int | float | str):
            raise ValueError(
                f"llc_over_checkpoints: labels must be ints, floats or strings (e.g. training steps); got {label!r}."
            )
    seen: dict[Any, int] = {}
    for i, label in enumerate(labels):
        if label in seen:
            raise ValueError(
                f"llc_over_checkpoints: checkpoints {seen[label]} and {i} have the same label {label!r}; pass "
                "labels=[...] (e.g. the training steps) to tell them apart."
            )
        seen[label] = i
    return labels


def llc_over_checkpoints(
    checkpoints: Sequence[Checkpoint],
    model_fn: Callable[[], nn.Module],
    loader,
    estimator: LLCConfig | LLCEstimator,
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
    out_dir: str | os.PathLike[str] | None = None,
    labels: Sequence[Any] | None = None,
    resume: bool = True,
    overwrite: bool = False,
    max_retries: int = 2,
    ray_resources: Mapping[str, Any] | None = None,
    ray_init_options: Mapping[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> pd.DataFrame:
    """Estimate the LLC at every checkpoint of a training run.

    ``model_fn()`` is called once; every checkpoint's weights are loaded into that one model object (strictly:
    every parameter and buffer, no extra), so compiled steps are made once and reused for all checkpoints. All
    checkpoints use the same settings and the same seed, so the differences between them are not seed noise.

    Parameters
    ----------
    checkpoints:
        Paths of ``.safetensors`` files or of ``torch.save``'d state dicts (see :func:`load_checkpoint`), or
        state dicts, in training order.
    model_fn:
        ``() -> nn.Module`` building the architecture (its initial weights are overwritten).
    loader:
        A ``DataLoader`` (the same data for every checkpoint), or ``label -> loader`` for checkpoints with their
        own data.
    estimator:
        The settings of every checkpoint: an :class:`~lambdahat.LLCConfig`, or an :class:`~lambdahat.LLCEstimator`
        (its ``config``; the estimator is not modified). Recorded in ``sweep.json`` as ``config.estimator``.
    criterion_fn, unpack_fn, devices, chain_batch, compile, params, loss_fn:
        As in :meth:`~lambdahat.LLCEstimator.estimate_llc` (``loss_fn(model, batch)`` returning per-sample or
        per-token losses replaces ``criterion_fn`` and ``unpack_fn``).
    seed:
        Master seed, the same for every checkpoint; ``None`` draws one (or reuses the stored one when resuming).
    show_progress:
        A progress bar over the checkpoints.
    executor, address, out_dir, resume, overwrite, max_retries, ray_resources, ray_init_options, callback:
        As in :meth:`~lambdahat.sweeps.LLCGridSearch.run_grid_search`.
    labels:
        One label per checkpoint (int, float or str; e.g. the training step). Default: the file stem of a path,
        the position of an in-memory state dict.

    Returns
    -------
    pandas.DataFrame
        One row per checkpoint, in the given order: ``checkpoint`` (the label), ``path`` (``None`` for an
        in-memory state dict), ``llc_mean, llc_std, loss_mean, loss_std, llc_stderr, init_loss,
        mala_acceptance, rhat, ess, n_diverged, status, error, seed, wall_seconds, attempts, warnings``
        (as in the grid search's table).

    Raises
    ------
    RuntimeError
        Every checkpoint failed (e.g. none fits ``model_fn``'s model); the message gives the first error.
    """
    check_run_options(executor, address, devices, ray_resources, max_retries)
    if isinstance(checkpoints, str | os.PathLike | Mapping):
        raise TypeError(
            "llc_over_checkpoints: checkpoints must be a list of paths or state dicts; wrap a single one in a "
            "list, or expand a pattern with sorted(glob.glob(...))."
        )
    checkpoints = list(checkpoints)
    if not checkpoints:
        raise ValueError("llc_over_checkpoints: checkpoints is empty; pass at least one path or state dict.")
    for c in checkpoints:
        if not isinstance(c, str | os.PathLike | Mapping):
            raise TypeError(
                f"llc_over_checkpoints: a checkpoint must be a path or a state dict; got {type(c).__name__}."
            )
    if isinstance(estimator, LLCEstimator):
        estimator = estimator.config
    if not isinstance(estimator, LLCConfig):
        raise TypeError(
            f"llc_over_checkpoints: estimator must be an LLCConfig or an LLCEstimator; got "
            f"{type(estimator).__name__}."
        )
    if not callable(model_fn) or isinstance(model_fn, nn.Module):
        raise TypeError(
            "llc_over_checkpoints: model_fn must be a function that returns a fresh model, e.g. "
            "model_fn=lambda: MyNet(); the weights come from the checkpoints."
        )
    label_list = _labels(checkpoints, labels)
    model = model_fn()
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"llc_over_checkpoints: model_fn() must return an nn.Module; got {type(model).__name__}."
        )
    select_parameters(model, params)  # a bad selection fails here, not at every checkpoint
    if seed is None and resume and not overwrite:
        seed = stored_seed(out_dir)
    seed = resolve_seed(seed, "llc_over_checkpoints")
    sources = [c if isinstance(c, Mapping) else str(Path(c).absolute()) for c in checkpoints]
    points = [
        {"checkpoint": label, "path": None if isinstance(src, Mapping) else src, "index": i}
        for i, (label, src) in enumerate(zip(label_list, sources))
    ]
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
        "estimator": estimator.to_dict(),
        "checkpoints": [
            {"label": label, "source": src if isinstance(src, str) else f"memory:{fingerprint(src)}"}
            for label, src in zip(label_list, sources)
        ],
        "seed": seed,
        "criterion_fn": callable_name(criterion_fn),
        "unpack_fn": callable_name(unpack_fn),
        # only when given, so that sweeps stored before loss_fn was an option still resume
        **({"loss_fn": callable_name(loss_fn)} if loss_fn is not None else {}),
        "params": params_spec(params),
        "model": {"class": callable_name(type(model)), "model_fn": callable_name(model_fn)},
        "data": data_spec(loader),
    }
    return run_sweep(
        kind="checkpoints",
        points=points,
        point_columns=[("checkpoint", "str"), ("path", "str")],
        fn=_checkpoint_point,
        shared={"model": model, "loader": loader, "config": estimator, "options": options},
        prepare=_Prepare(sources),
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
        desc="LLC checkpoints",
    )
