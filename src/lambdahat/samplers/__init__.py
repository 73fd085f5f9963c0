"""SGLD-type samplers with one shape: ``State``, ``Info``, ``init``, ``step``, ``build``."""

from __future__ import annotations

from . import rmsprop_sgld, sgld, sgnht
from .base import Context, Hyper, Info, Sampler

__all__ = ["SAMPLERS", "Context", "Hyper", "Info", "Sampler", "get_sampler", "rmsprop_sgld", "sgld", "sgnht"]

SAMPLERS = {"sgld": sgld.build, "rmsprop_sgld": rmsprop_sgld.build, "sgnht": sgnht.build}


def get_sampler(name: str | Sampler, **options) -> Sampler:
    """A sampler by name (``"sgld"``, ``"rmsprop_sgld"``, ``"sgnht"``) with its options, or a ready ``Sampler``."""
    if isinstance(name, Sampler):
        return name
    if name not in SAMPLERS:
        raise ValueError(f"LLCEstimator: sampler must be one of {sorted(SAMPLERS)}; got {name!r}.")
    return SAMPLERS[name](**options)
