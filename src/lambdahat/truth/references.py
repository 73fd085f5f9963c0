"""What λ̂ should reproduce on a validation case at finite nβ, localization γ and step ε: each case carries one
:class:`Reference` (or none, and then the reference is λ itself).

- :class:`StationarySGLD`: the regular model's exact SGLD stationary value ``(d/2)(2nβa/κ)/(1 − εκ/4)``
  (:func:`~lambdahat.truth.regular_posterior_mean_nbeta_k`);
- :class:`PosteriorQuadrature`: the exact posterior mean of ``nβK`` of a potential in one or two dimensions, by
  quadrature (:func:`~lambdahat.truth.posterior_mean_nbeta_k_numeric`), below λ at finite nβ;
- :class:`RadialQuadrature`: the same for a radial potential ``||w||^(2k)`` in any dimension, by quadrature over
  the radius (:func:`~lambdahat.truth.radial_posterior_mean`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import torch

from .formulas import regular_posterior_mean_nbeta_k
from .quadrature import posterior_mean_nbeta_k_numeric, radial_posterior_mean

__all__ = ["PosteriorQuadrature", "RadialQuadrature", "Reference", "StationarySGLD"]


class Reference:
    """The finite-nβ value λ̂ targets on a case (a subclass says how it is computed).

    Attributes
    ----------
    kind : str
        What the value is: ``"exact SGLD"`` (it includes the step bias of ε) or ``"exact posterior"``.
    uses_step : bool
        Whether the value depends on the step size ε.
    """

    kind: ClassVar[str] = ""
    uses_step: ClassVar[bool] = False

    def value(self, nbeta: float, gamma: float, epsilon: float = 0.0) -> float:
        """The reference at inverse temperature ``nbeta``, localization ``gamma`` and step ``epsilon``."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class StationarySGLD(Reference):
    """``E[nβK]`` of SGLD at stationarity on ``K = a||w||²`` in ``d`` dimensions (exact, step bias included).

    Examples
    --------
    >>> round(StationarySGLD(2, 1.0).value(100.0, 1.0, 1e-3), 6)
    1.04767
    """

    d: int
    a: float = 1.0
    kind: ClassVar[str] = "exact SGLD"
    uses_step: ClassVar[bool] = True

    def value(self, nbeta: float, gamma: float, epsilon: float = 0.0) -> float:
        return regular_posterior_mean_nbeta_k(self.d, self.a, nbeta, gamma, epsilon)


@dataclasses.dataclass(frozen=True)
class PosteriorQuadrature(Reference):
    """The exact posterior mean of ``nβK`` for a potential ``K`` in ``d = 1`` or ``2`` dimensions, by quadrature
    (exact sampling; the step bias of ε is not included)."""

    potential: Callable[[torch.Tensor], torch.Tensor]
    d: int
    kind: ClassVar[str] = "exact posterior"

    def value(self, nbeta: float, gamma: float, epsilon: float = 0.0) -> float:
        return posterior_mean_nbeta_k_numeric(self.potential, self.d, nbeta, gamma)


@dataclasses.dataclass(frozen=True)
class RadialQuadrature(Reference):
    """The exact posterior mean of ``nβ||w||^(2k)`` in ``d`` dimensions, by quadrature over the radius.

    Examples
    --------
    >>> round(RadialQuadrature(3, 2.0).value(500.0, 0.0), 6)
    0.75
    """

    d: int
    k: float
    kind: ClassVar[str] = "exact posterior"

    def value(self, nbeta: float, gamma: float, epsilon: float = 0.0) -> float:
        return radial_posterior_mean(self.d, self.k, nbeta, gamma)
