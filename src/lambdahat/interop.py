"""A result as ArviZ data or an xarray ``Dataset``, for ArviZ's diagnostics and plots and for files.

Both views hold the traces of :class:`~lambdahat.LLCResult` on the dimensions ``chain`` (``0 … C − 1``) and
``draw`` (``0 … D − 1``, the draws after burn-in: draw ``t`` is step ``burnin_steps + t · steps_bw_draws``):

* ``loss`` (``result.losses``): the minibatch loss ``L_{c,t}`` at every draw.
* ``llc``: the per-draw λ̂ contribution ``nβ (L_{c,t} − L0)``, whose mean over the draws of chain ``c`` is
  ``result.llcs[c]`` when the draws are equally weighted (equal batches; with unequal batches ``llcs`` weights
  each draw by the samples that counted in it, and the plain mean differs). An increasing affine map of
  ``loss``, so its rank-normalized R-hat and bulk ESS are those of ``loss`` (``result.rhat``, ``result.ess``,
  computed over the chains that did not diverge).
* ``acceptance_rate`` (``result.mala_acceptance_trace``): the MALA acceptance probability of the transition into
  each draw (NaN where undefined), under ArviZ's name.
* ``grad_norm``, ``noise_norm``, ``distance``: ``||∇L||``, the norm of the injected noise and ``||w − w*||``.
* ``diverging``: ArviZ's boolean divergence flag, ``True`` from each diverged chain's first draw at or after its
  divergence step on: ``diverging[c, t] = diverged[c] and burnin_steps + t · steps_bw_draws ≥ divergence_step[c]``
  (the whole chain when ``result.settings`` lack ``burnin_steps`` or ``steps_bw_draws``). A chain that diverged
  after its last draw (possible only with ``steps_bw_draws > 1``) has no diverging draw, though ``result.diverged``
  still leaves it out of ``llc_mean``.

:func:`to_arviz` puts ``loss`` and ``llc`` in the ``posterior`` group and the rest in ``sample_stats``, so that
``arviz.rhat``, ``arviz.ess``, ``arviz.plot_trace`` and ``arviz.summary`` read them: an ``arviz.InferenceData``
with ArviZ 0.x, an ``xarray.DataTree`` (ArviZ 1's container, the same groups) with ArviZ 1 (Python 3.12 and
later). :func:`to_xarray` holds all of
them in one ``Dataset``, with ``loss_trace`` (the loss at every step, burn-in included, on ``(chain, step)``) and,
when an evaluation set was given, ``per_sample_loss`` on ``(chain, draw, sample)`` (``(chain, draw, sample,
token)`` for language models) and ``per_sample_loss_at_init`` on ``(sample)`` / ``(sample, token)``.

The attributes (``attrs``, on the dataset and on each ArviZ group) are the run's settings: every scalar of
``result.settings``, lists and dicts as JSON text, ``None`` and what JSON cannot write left out, booleans as
``0``/``1`` and integers beyond int64 as decimal text (netCDF has neither booleans nor wider integers); then
``nbeta``, ``learning_rate``, ``localization``, ``init_loss``, ``seed``, ``status``, ``trust_reasons`` (JSON),
``acceptance_kind``, ``llc_mean``, ``llc_std``, ``rhat``, ``ess`` of the result, and ``inference_library`` /
``inference_library_version`` (ArviZ's names). Write a file with ``.to_netcdf(path)`` (either result; an engine such as h5netcdf, netCDF4 or scipy must be installed, and netCDF3 through scipy cannot hold
a seed of 2³¹ or more) or ``Dataset.to_zarr(path)`` (with zarr installed).

Both need ArviZ and xarray: ``pip install "lambdahat[interop]"``.
"""

from __future__ import annotations

import importlib
import json
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import arviz
    import torch
    import xarray

    from .result import LLCResult

__all__ = ["to_arviz", "to_xarray"]

#: How to install the optional dependencies of this module.
_INSTALL_HINT = 'pip install "lambdahat[interop]"'

#: What each variable holds (its ``long_name`` attribute).
_DESCRIPTIONS = {
    "loss": "minibatch loss L at each draw",
    "llc": "per-draw LLC contribution nbeta * (L - L0); its mean over draws is the chain's LLC estimate",
    "acceptance_rate": "MALA acceptance probability of the transition into each draw (NaN where undefined)",
    "grad_norm": "norm of the loss gradient at each draw",
    "noise_norm": "norm of the injected noise at each draw",
    "distance": "distance ||w - w*|| from the trained weights at each draw",
    "diverging": "True from the chain's divergence on",
    "loss_trace": "minibatch loss at every step, burn-in included",
    "per_sample_loss": "loss of each evaluation sample (token) at each draw (NaN where a token does not count)",
    "per_sample_loss_at_init": "loss of each evaluation sample (token) at w*",
}
#: The variables of each ArviZ group.
_GROUPS = {
    "posterior": ("loss", "llc"),
    "sample_stats": ("acceptance_rate", "grad_norm", "noise_norm", "distance", "diverging"),
}
_INT64 = (-(2**63), 2**63 - 1)


def _require(name: str, caller: str):
    """Import ``name`` or raise an ``ImportError`` that names it and the extra that installs it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(
            f"lambdahat.interop.{caller} needs {name}, which could not be imported ({exc}); install ArviZ and "
            f"xarray with {_INSTALL_HINT}."
        ) from exc


def _major(version: str) -> int:
    """The major version of a version string (``"1.3.0"`` → 1; 0 where it does not start with a number)."""
    head = version.split(".")[0]
    return int(head) if head.isdigit() else 0


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _attr(value: Any) -> Any:
    """``value`` as a netCDF-safe attribute, or ``None`` to leave it out."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value if _INT64[0] <= value <= _INT64[1] else str(value)
    if isinstance(value, float | str):
        return value
    if isinstance(value, list | tuple | dict):
        try:
            return json.dumps(value)
        except (TypeError, ValueError):
            return None
    return None


def _attrs(result: LLCResult) -> dict[str, Any]:
    """The run's settings and summary as netCDF-safe attributes (see the module docstring)."""
    from . import __version__

    named = {
        "nbeta": result.nbeta,
        "learning_rate": result.learning_rate,
        "localization": result.localization,
        "init_loss": result.init_loss,
        "seed": result.seed,
        "status": result.status,
        "trust_reasons": list(result.trust_reasons),
        "acceptance_kind": result.acceptance_kind,
        "llc_mean": result.llc_mean,
        "llc_std": result.llc_std,
        "rhat": result.rhat,
        "ess": result.ess,
        "inference_library": "lambdahat",
        "inference_library_version": __version__,
    }
    converted = {key: _attr(value) for key, value in {**result.settings, **named}.items()}
    return {str(key): value for key, value in converted.items() if value is not None}


def _diverging(result: LLCResult) -> np.ndarray:
    """``[chains, draws]`` bool: ``True`` from each diverged chain's divergence draw on (see the module docstring)."""
    chains, draws = result.losses.shape
    diverged = _numpy(result.diverged).astype(bool)[:, None]
    burnin, every = result.settings.get("burnin_steps"), result.settings.get("steps_bw_draws")
    if burnin is None or every is None:
        return np.broadcast_to(diverged, (chains, draws)).copy()
    draw_steps = int(burnin) + int(every) * np.arange(draws)
    return diverged & (draw_steps[None, :] >= _numpy(result.divergence_step)[:, None])


def _traces(result: LLCResult) -> dict[str, np.ndarray]:
    """The ``[chains, draws]`` traces by variable name."""
    losses = _numpy(result.losses)
    return {
        "loss": losses,
        "llc": result.nbeta * (losses.astype(np.float64) - result.init_loss),
        "acceptance_rate": _numpy(result.mala_acceptance_trace),
        "grad_norm": _numpy(result.grad_norm),
        "noise_norm": _numpy(result.noise_norm),
        "distance": _numpy(result.distance),
        "diverging": _diverging(result),
    }


def to_arviz(result: LLCResult) -> arviz.InferenceData | xarray.DataTree:
    """The traces of ``result`` as ArviZ data, for ``arviz.rhat``, ``arviz.ess``, ``arviz.summary`` and
    ``arviz.plot_trace``.

    Parameters
    ----------
    result:
        The result of :func:`lambdahat.sample` or :meth:`lambdahat.LLCEstimator.run`.

    Returns
    -------
    arviz.InferenceData or xarray.DataTree
        ``InferenceData`` with ArviZ 0.x, ``DataTree`` (which ArviZ 1 uses in its place) with ArviZ 1 (made by
        ``arviz.from_dict`` in both). Group ``posterior``: ``loss`` (the minibatch loss ``L`` at each draw) and ``llc`` (``nβ (L − L0)``, whose
        mean over the draws of chain ``c`` is ``result.llcs[c]`` for equally weighted draws). Group
        ``sample_stats``: ``acceptance_rate`` (MALA acceptance probability, NaN where undefined), ``grad_norm``,
        ``noise_norm``, ``distance`` (``||w − w*||``) and ``diverging`` (bool, ``True`` from each diverged chain's
        divergence draw on). Every variable is on ``(chain, draw)``, with coordinates ``chain = 0 … C − 1`` and
        ``draw = 0 … D − 1`` and a ``long_name`` attribute; the attributes of the groups and of the whole object
        are the run's settings, ``nbeta``, ``learning_rate``, ``localization``, ``init_loss``, ``seed``,
        ``status`` and more (see :mod:`lambdahat.interop`). ``idata.to_netcdf(path)`` writes it to a file.

    Raises
    ------
    ImportError
        When ArviZ or xarray is not installed: ``pip install "lambdahat[interop]"``.

    Examples
    --------
    >>> import arviz, torch, torch.nn.functional as F
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from lambdahat import LLCConfig, prepare, sample
    >>> x = torch.randn(64, 3); y = x.sum(1, keepdim=True)
    >>> config = LLCConfig(draws=40, chains=4, burnin_steps=20, learning_rate=1e-4, localization=10.0)
    >>> problem = prepare(torch.nn.Linear(3, 1), DataLoader(TensorDataset(x, y), batch_size=16), config,
    ...                   criterion_fn=F.mse_loss, compile=False)
    >>> result = sample(problem, config, seed=0, show_progress=False, warn=False)
    >>> idata = to_arviz(result)
    >>> dict(idata.posterior.sizes)
    {'chain': 4, 'draw': 40}
    >>> abs(float(arviz.rhat(idata)["loss"]) / result.rhat - 1) < 1e-6  # no chain diverged
    True
    """
    _require("xarray", "to_arviz")
    az = _require("arviz", "to_arviz")
    traces = _traces(result)
    chains, draws = result.losses.shape
    attrs = _attrs(result)
    groups = {group: {name: traces[name] for name in names} for group, names in _GROUPS.items()}
    coords = {"chain": np.arange(chains), "draw": np.arange(draws)}
    # ArviZ 1: the groups in one dict, a DataTree back, attributes by group ("/" for the root)
    if _major(az.__version__) >= 1:
        data = az.from_dict(
            groups, coords=coords, index_origin=0, attrs={group: dict(attrs) for group in ("/", *_GROUPS)}
        )
    else:  # ArviZ 0.x: a keyword per group, InferenceData back (from_dict pops keys of the attrs it is given)
        data = az.from_dict(
            **groups,
            coords=coords,
            index_origin=0,
            attrs=dict(attrs),
            **{f"{group}_attrs": dict(attrs) for group in _GROUPS},
        )
    for group, names in _GROUPS.items():
        for name in names:
            data[group][name].attrs["long_name"] = _DESCRIPTIONS[name]
    return data


def to_xarray(result: LLCResult) -> xarray.Dataset:
    """The traces of ``result`` (and its per-sample losses) as one xarray ``Dataset``, to analyse with xarray or
    write with ``.to_netcdf(path)`` / ``.to_zarr(path)``.

    Parameters
    ----------
    result:
        The result of :func:`lambdahat.sample` or :meth:`lambdahat.LLCEstimator.run`.

    Returns
    -------
    xarray.Dataset
        On ``(chain, draw)``: ``loss``, ``llc``, ``acceptance_rate``, ``grad_norm``, ``noise_norm``, ``distance``
        and ``diverging``, as in :func:`to_arviz`. On ``(chain, step)``: ``loss_trace``, the loss at every step,
        burn-in included. When ``result.per_sample_losses`` is not ``None``: ``per_sample_loss`` on ``(chain,
        draw, sample)``, or ``(chain, draw, sample, token)`` for language models (NaN where a token does not
        count); when ``result.per_sample_losses_at_init`` is not ``None``: ``per_sample_loss_at_init`` (the same
        losses at ``w*``) on ``(sample)`` / ``(sample, token)``. Coordinates ``chain``, ``draw``, ``step``,
        ``sample`` and ``token`` count from 0; every variable has a ``long_name`` attribute, and the dataset's
        attributes are those of :func:`to_arviz`.

    Raises
    ------
    ImportError
        When xarray is not installed: ``pip install "lambdahat[interop]"``.

    Examples
    --------
    >>> import torch, torch.nn.functional as F
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from lambdahat import LLCConfig, prepare, sample
    >>> x = torch.randn(64, 3); y = x.sum(1, keepdim=True)
    >>> loader = DataLoader(TensorDataset(x, y), batch_size=16)
    >>> config = LLCConfig(draws=40, chains=4, burnin_steps=20, learning_rate=1e-4, localization=10.0)
    >>> problem = prepare(torch.nn.Linear(3, 1), loader, config, criterion_fn=F.mse_loss, evaluation=loader,
    ...                   compile=False)
    >>> ds = to_xarray(sample(problem, config, seed=0, show_progress=False, warn=False))
    >>> ds["per_sample_loss"].dims, ds["per_sample_loss_at_init"].dims
    (('chain', 'draw', 'sample'), ('sample',))
    >>> ds["per_sample_loss"].mean("draw").shape
    (4, 64)
    >>> ds.to_netcdf("run.nc")  # doctest: +SKIP
    """
    xr = _require("xarray", "to_xarray")
    variables: dict[str, tuple[tuple[str, ...], np.ndarray]] = {
        name: (("chain", "draw"), trace) for name, trace in _traces(result).items()
    }
    variables["loss_trace"] = (("chain", "step"), _numpy(result.loss_trace))
    sizes = {
        "chain": result.losses.shape[0],
        "draw": result.losses.shape[1],
        "step": result.loss_trace.shape[1],
    }
    if result.per_sample_losses is not None:
        losses = _numpy(result.per_sample_losses)
        dims = ("chain", "draw", "sample", "token")[: losses.ndim]
        variables["per_sample_loss"] = (dims, losses)
        sizes.update(zip(dims[2:], losses.shape[2:]))
    if result.per_sample_losses_at_init is not None:
        at_init = _numpy(result.per_sample_losses_at_init)
        dims = ("sample", "token")[: at_init.ndim]
        variables["per_sample_loss_at_init"] = (dims, at_init)
        sizes.update(zip(dims, at_init.shape))
    data_vars = {
        name: xr.Variable(dims, values, attrs={"long_name": _DESCRIPTIONS[name]})
        for name, (dims, values) in variables.items()
    }
    coords = {dim: np.arange(size) for dim, size in sizes.items()}
    return xr.Dataset(data_vars, coords=coords, attrs=_attrs(result))
