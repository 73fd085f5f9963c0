"""Susceptibilities: how each model component responds to each probe sample (token), from restricted SGLD runs.

For a component ``C`` (a parameter selection: only ``C``'s scalars are sampled, the rest stay at ``w*``) and a probe
sample or token ``xy``, with ``L`` the sampling-task loss and ``φ_C = L(w) − L(w*)`` its change along the chain
restricted to ``C`` (REFERENCE.md §4; Baker et al. 2025, arXiv 2504.18274, App. C.4):

.. math::

    \\chi^C_{xy} = -\\mathrm{Cov}_{p_C}\\big(\\varphi_C,\\; \\ell_{xy} - L\\big)
                 = -\\mathrm{Cov}_{p_C}(L, \\ell_{xy}) + \\mathrm{Var}_{p_C}(L)
    \\qquad (\\texttt{relative=True, the default}),

unscaled (multiply by ``nβ`` for the derivative of ``E[φ_C]`` under the data perturbation
``q → (1 − h) q + h δ_{xy}``). ``relative=False`` gives ``−Cov_{p_C}(φ_C, ℓ_{xy})``: zero for a probe whose loss
does not depend on ``C``, which in the relative form gets the probe-independent offset ``Var_{p_C}(L)`` instead.
A negative χ means that the probe's loss rises when ``C`` moves so as to raise the task loss.

``L`` at a draw is the loss the sampler saw at that draw (``LLCResult.losses``): the exact full-data loss for
full-batch loaders; with minibatches, ``Cov(L, ℓ)`` is unbiased but ``Var(L)`` includes the minibatch noise (a
constant offset per component row).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .influence import BLOCK_SIZE, RecordedLosses, fixed_order

__all__ = ["Susceptibilities", "susceptibilities", "susceptibility_row"]

#: The name of the unrestricted run's row.
FULL = "full"


def susceptibility_row(
    result, *, relative: bool = True, pooling: str = "pooled", block_size: int = BLOCK_SIZE
) -> tuple[np.ndarray, np.ndarray, pd.Index]:
    """χ of one (restricted) run to each probe column, with its standard error across chains.

    Parameters
    ----------
    result:
        An ``LLCResult`` whose evaluation set is the probes (``per_sample_losses``) and whose ``losses`` are ``L``.
    relative:
        Covary with ``ℓ_xy − L`` (default) or with ``ℓ_xy``.
    pooling:
        ``"pooled"`` (centre over all chains and draws, divide by ``M − 1``) or ``"within"`` (centre within each
        chain, divide by ``C (D − 1)``), as in :func:`lambdahat.influence.loss_kernel`.
    block_size:
        Probe columns read at a time (the trace may be memory-mapped).

    Returns
    -------
    values, stderr, index
        ``[probes]`` χ; ``[probes]`` the standard error ``std_c(χ_c) / √C`` of the per-chain values (within-chain
        centring; NaN with one chain); the probe index (``sample`` or ``(sample, token)``).
    """
    if pooling not in ("pooled", "within"):
        raise ValueError(f"susceptibility_row: pooling must be 'pooled' or 'within'; got {pooling!r}.")
    recorded = RecordedLosses.of(result, "susceptibility_row")
    trace, kept = recorded.trace, recorded.kept
    chains, draws = len(kept), trace.shape[1]
    if draws < 2:
        raise ValueError(f"susceptibility_row: needs at least 2 draws per chain; got {draws}.")
    flat = trace.reshape(trace.shape[0], draws, -1)
    task = result.losses.double().numpy()[kept][:, :, None]  # [C, D, 1], the chains that did not diverge
    cols, index = recorded.columns()
    values, stderr = np.empty(len(cols)), np.empty(len(cols))
    phi_pooled = task - task.mean((0, 1), keepdims=True)
    phi_within = task - task.mean(1, keepdims=True)
    for start in range(0, len(cols), block_size):
        part = cols[start : start + block_size]
        obs = np.asarray(flat[:, :, part], dtype=np.float64)
        if not recorded.all_kept:
            obs = obs[kept]
        if relative:
            obs = obs - task
        if pooling == "pooled":
            cov = (phi_pooled * (obs - obs.mean((0, 1), keepdims=True))).sum((0, 1)) / (chains * draws - 1)
        centred = obs - obs.mean(1, keepdims=True)
        per_chain = (phi_within * centred).sum(1) / (draws - 1)  # [C, b]
        if pooling == "within":
            cov = per_chain.mean(0)
        values[start : start + len(part)] = -cov
        stderr[start : start + len(part)] = (
            per_chain.std(0, ddof=1) / np.sqrt(chains) if chains > 1 else np.nan
        )
    return values, stderr, index


@dataclass
class Susceptibilities:
    """The susceptibility matrix: one row per component, one column per probe sample (token).

    Attributes
    ----------
    values, stderr:
        ``[components, probes]`` χ and its across-chain standard error.
    components:
        Row names (the restricted components, then ``"full"`` for the unrestricted run when asked for).
    probe_index:
        ``sample`` or ``(sample, token)`` positions in the probe set.
    relative, pooling:
        The observable (``ℓ − L`` or ``ℓ``) and the chain pooling used.
    results:
        The ``LLCResult`` of every row run by this call in this process (check their ``status``).
    table:
        One row per component from the sweep engine: ``status`` (``"failed"`` rows have NaN values), ``error``,
        the run's LLC and diagnostics, and ``chi``/``chi_stderr`` as JSON lists.
    """

    values: np.ndarray
    stderr: np.ndarray
    components: list[str]
    probe_index: pd.Index
    relative: bool
    pooling: str
    results: dict = field(default_factory=dict, repr=False)
    table: pd.DataFrame | None = field(default=None, repr=False)

    def to_frame(self) -> pd.DataFrame:
        """``[components, probes]`` as a DataFrame."""
        return pd.DataFrame(
            self.values, index=pd.Index(self.components, name="component"), columns=self.probe_index
        )

    def pca(self, n_components: int = 2) -> dict:
        """PCA of the matrix with probes as observations and components as features.

        The columns of χᵀ (one per component) are centred over the probes and ``χᵀ − mean = U S Vᵀ``.

        Returns
        -------
        dict
            ``scores``: DataFrame ``[probes, n_components]`` (``U S``, each probe's position); ``loadings``:
            DataFrame ``[components, n_components]`` (``V``, each component's weight in a principal direction);
            ``explained``: the fraction of the variance per principal component.
        """
        data = self.values.T - self.values.T.mean(0, keepdims=True)
        u, s, vt = np.linalg.svd(data, full_matrices=False)
        k = min(n_components, len(s))
        names = [f"PC{i + 1}" for i in range(k)]
        total = float((s**2).sum())
        return {
            "scores": pd.DataFrame(u[:, :k] * s[:k], index=self.probe_index, columns=names),
            "loadings": pd.DataFrame(
                vt[:k].T, index=pd.Index(self.components, name="component"), columns=names
            ),
            "explained": (s[:k] ** 2 / total) if total > 0 else np.full(k, np.nan),
        }

    def plot(self, color=None):
        """A figure: the matrix as a heatmap, and the probes on the first two principal components.

        ``color``: optional values per probe (e.g. a label) to colour the scatter.
        """
        from matplotlib.figure import Figure

        fig = Figure(figsize=(11, 4), layout="constrained")
        ax_map, ax_pca = fig.subplots(1, 2, width_ratios=(1.4, 1))
        bound = float(np.nanmax(np.abs(self.values))) or 1.0
        image = ax_map.imshow(
            self.values, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="none"
        )
        ax_map.set_yticks(range(len(self.components)), self.components)
        ax_map.set_xlabel(
            "probe (sample" + (", token)" if isinstance(self.probe_index, pd.MultiIndex) else ")")
        )
        ax_map.set_title("susceptibility χ" + (" (ℓ − L)" if self.relative else " (ℓ)"))
        fig.colorbar(image, ax=ax_map)
        pca = self.pca(2)
        scores = pca["scores"].to_numpy()
        y = scores[:, 1] if scores.shape[1] > 1 else np.zeros(len(scores))
        points = ax_pca.scatter(scores[:, 0], y, c=color, s=14, cmap="viridis" if color is not None else None)
        if color is not None:
            fig.colorbar(points, ax=ax_pca)
        ex = pca["explained"]
        ax_pca.set_xlabel(f"PC1 ({ex[0]:.0%})")
        ax_pca.set_ylabel(f"PC2 ({ex[1]:.0%})" if len(ex) > 1 else "PC2")
        ax_pca.set_title("probes in component space")
        return fig


def susceptibilities(
    model: torch.nn.Module,
    loader,
    config=None,
    *,
    components: Mapping[str, object],
    probes,
    full: bool = True,
    relative: bool = True,
    pooling: str = "pooled",
    criterion_fn: Callable | None = None,
    unpack_fn: Callable | None = None,
    loss_fn: Callable | None = None,
    devices: str | torch.device | Sequence[str | torch.device] = "cpu",
    compile: bool | str = "auto",
    seed: int | None = None,
    chain_batch: int | str | None = None,
    per_sample_dir: str | os.PathLike[str] | None = None,
    block_size: int = BLOCK_SIZE,
    show_progress: bool = False,
    warn: bool = True,
    out_dir: str | os.PathLike[str] | None = None,
    executor: str = "local",
    address: str | None = None,
    resume: bool = True,
    overwrite: bool = False,
    max_retries: int = 2,
    ray_resources: Mapping[str, object] | None = None,
    ray_init_options: Mapping[str, object] | None = None,
) -> Susceptibilities:
    """The susceptibility matrix of named components to probe samples (tokens): one restricted run per component.

    Every row (each component's restricted run, then the full run) is one point of the sweep engine
    (:func:`lambdahat.sweeps.runner.run_sweep`): with ``out_dir`` each finished row is stored at once (its χ and
    standard errors as JSON lists in ``results.csv``), a rerun with the same ``out_dir`` runs only the rows not yet
    finished, and a row whose run raises is recorded as ``status="failed"`` (its values NaN) without stopping the
    others.

    Parameters
    ----------
    model, loader, config:
        As for :func:`lambdahat.prepare`; ``loader`` defines the sampling task ``L``.
    components:
        ``{name: params}`` with any selection :func:`lambdahat.prepare` accepts as ``params=`` (names, globs,
        module prefixes, ``{name: element mask}``).
    probes:
        A loader (fixed order) or list of batches of the probe samples, recorded at every draw.
    full:
        Add a row ``"full"`` from the unrestricted run (all parameters).
    relative, pooling:
        See :func:`susceptibility_row`.
    criterion_fn, unpack_fn, loss_fn, devices, compile:
        See :func:`lambdahat.prepare`.
    seed, chain_batch, show_progress, warn:
        See :func:`lambdahat.sample`; every row uses the same seed (a resumed ``out_dir`` keeps its stored seed
        when ``seed`` is None). ``show_progress`` shows a bar over the rows.
    per_sample_dir:
        A folder for the memory-mapped probe traces, ``<component>.npy`` each; ``None``: host memory.
    block_size:
        Probe columns read at a time.
    out_dir, resume, overwrite:
        Where the rows are stored and whether to continue (default) or discard a stored run, as for the sweeps.
    executor, address, ray_resources, ray_init_options, max_retries:
        ``"local"`` (this process) or ``"ray"`` (one Ray task per row); retries of a row that raises.

    Returns
    -------
    Susceptibilities
        ``values[c, j]`` = χ of component ``c`` to probe ``j``, with standard errors, PCA and a figure; ``table``
        is the sweep's table (status, LLC, R-hat, ... per row) and ``results`` holds the ``LLCResult`` of the rows
        run by this call in this process (rows read back from ``out_dir`` or run by Ray have none).
    """
    import uuid

    from .config import LLCConfig
    from .rng import resolve_seed
    from .sweeps.grid import _shippable
    from .sweeps.runner import (
        SweepRun,
        callable_name,
        check_run_options,
        data_spec,
        fingerprint,
        params_spec,
        run_sweep,
    )
    from .sweeps.store import stored_seed

    config = LLCConfig() if config is None else config
    if not isinstance(components, Mapping) or not components:
        raise ValueError(
            "susceptibilities: components must be a non-empty {name: params} mapping, e.g. "
            "{'layer1': 'layers.0', 'head': {'out.weight': mask}}."
        )
    if full and FULL in components:
        raise ValueError(
            f"susceptibilities: the name {FULL!r} is the unrestricted run's row; rename the component."
        )
    if pooling not in ("pooled", "within"):
        raise ValueError(f"susceptibilities: pooling must be 'pooled' or 'within'; got {pooling!r}.")
    check_run_options(executor, address, devices, ray_resources, max_retries)
    if seed is None and resume and not overwrite:
        seed = stored_seed(out_dir)
    seed = resolve_seed(seed, "susceptibilities")  # one seed for every row
    probe_batches = list(fixed_order(probes, "probe"))
    rows = {**components, **({FULL: None} if full else {})}
    names = list(rows)
    options = {
        "criterion_fn": criterion_fn,
        "unpack_fn": unpack_fn,
        "loss_fn": loss_fn,
        "devices": devices,
        "compile": compile,
        "seed": seed,
        "chain_batch": chain_batch,
        "warn": warn,
        "relative": relative,
        "pooling": pooling,
        "block_size": block_size,
        "per_sample_dir": None if per_sample_dir is None else os.fspath(per_sample_dir),
    }
    sweep_config = {
        "llc_config": config.to_dict(),
        "components": {name: _selection_spec(sel, params_spec, fingerprint) for name, sel in rows.items()},
        "full": full,
        "relative": relative,
        "pooling": pooling,
        "seed": seed,
        "criterion_fn": callable_name(criterion_fn),
        "unpack_fn": callable_name(unpack_fn),
        "loss_fn": callable_name(loss_fn),
        "model": {"class": callable_name(type(model)), "fingerprint": fingerprint(model.state_dict())},
        "data": data_spec(loader),
        "probes": _probe_fingerprint(probe_batches),
    }
    token = uuid.uuid4().hex
    try:
        table = run_sweep(
            kind="susceptibilities",
            points=[{"component": name} for name in names],
            point_columns=[("component", "str")],
            fn=_component_point,
            shared={
                "model": _shippable(model, executor),
                "loader": loader,
                "config": config,
                "selections": dict(rows),
                "probes": probe_batches,
                "options": options,
                "token": token,
            },
            prepare=_same,
            config=sweep_config,
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
            callback=None,
            desc="susceptibilities",
            value_columns=[("chi", "str"), ("chi_stderr", "str"), ("probe_index", "str")],
        )
        results = _RESULTS.pop(token, {})
    finally:
        _RESULTS.pop(token, None)
    values, errors, index = [], [], None
    for _, row in table.iterrows():
        if isinstance(row["chi"], str) and isinstance(row["probe_index"], str):
            values.append(np.asarray(json.loads(row["chi"]), dtype=np.float64))
            errors.append(np.asarray(json.loads(row["chi_stderr"]), dtype=np.float64))
            index = _index_from_json(row["probe_index"])
        else:
            values.append(None)
            errors.append(None)
    width = len(index)
    values = [np.full(width, np.nan) if v is None else v for v in values]
    errors = [np.full(width, np.nan) if e is None else e for e in errors]
    return Susceptibilities(
        np.stack(values),
        np.stack(errors),
        names,
        index,
        relative,
        pooling,
        results,
        table.set_index("component"),
    )


#: LLCResults of the rows run in this process, by the call's token (handed to the caller, then dropped).
_RESULTS: dict[str, dict] = {}


def _selection_spec(selection, params_spec, fingerprint):
    """A JSON-able record of a component's selection (element masks by content hash)."""
    if isinstance(selection, Mapping):
        return {
            str(k): fingerprint({"mask": v}) if isinstance(v, torch.Tensor) else bool(v)
            for k, v in selection.items()
        }
    return params_spec(selection)


def _same(task):
    return task


def _probe_fingerprint(batches) -> dict:
    """A content hash of the probe batches (their tensors in order), so a resumed run has the same probes."""
    state = {}

    def walk(prefix, obj):
        if isinstance(obj, torch.Tensor):
            state[prefix] = obj
        elif isinstance(obj, Mapping):
            for k, v in obj.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(obj, list | tuple):
            for i, v in enumerate(obj):
                walk(f"{prefix}.{i}", v)
        else:
            state[prefix] = repr(obj)

    walk("probes", list(batches))
    from .sweeps.runner import fingerprint

    return {"batches": len(batches), "fingerprint": fingerprint(state)}


def _index_to_json(index: pd.Index) -> str:
    if isinstance(index, pd.MultiIndex):
        return json.dumps({"names": list(index.names), "values": [list(map(int, t)) for t in index]})
    return json.dumps({"names": [index.name], "values": [int(v) for v in index]})


def _index_from_json(text: str) -> pd.Index:
    spec = json.loads(text)
    if len(spec["names"]) > 1:
        return pd.MultiIndex.from_tuples([tuple(v) for v in spec["values"]], names=spec["names"])
    return pd.Index(np.asarray(spec["values"], dtype=np.int64), name=spec["names"][0])


def _component_point(shared: Mapping, task: Mapping) -> dict:
    """One row of the matrix: the restricted run of one component (runs in this process or in a Ray worker)."""
    from . import estimator
    from .problem import prepare
    from .sweeps.runner import result_row

    name, options = task["component"], shared["options"]
    problem = prepare(
        shared["model"],
        shared["loader"],
        shared["config"],
        criterion_fn=options["criterion_fn"],
        unpack_fn=options["unpack_fn"],
        loss_fn=options["loss_fn"],
        devices=options["devices"],
        params=shared["selections"][name],
        evaluation=shared["probes"],
        compile=options["compile"],
    )
    folder = options["per_sample_dir"]
    result = estimator.sample(
        problem,
        shared["config"],
        seed=options["seed"],
        chain_batch=options["chain_batch"],
        show_progress=False,
        warn=options["warn"],
        per_sample_path=None if folder is None else os.path.join(folder, f"{name}.npy"),
    )
    row, err, index = susceptibility_row(
        result, relative=options["relative"], pooling=options["pooling"], block_size=options["block_size"]
    )
    _RESULTS.setdefault(shared["token"], {})[name] = result
    # json.dumps writes floats with repr (exact round trip) and NaN as NaN
    return {
        **result_row(result),
        "chi": json.dumps([float(v) for v in row]),
        "chi_stderr": json.dumps([float(v) for v in err]),
        "probe_index": _index_to_json(index),
    }
