"""The potentials ``K`` of the validation models, as picklable torch functions of ``w`` of shape ``[..., d]``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ._checks import check_real, monomial_ratios

__all__ = ["monomial_potential", "quadratic_potential", "radial_potential"]


# ----------------------------------------------------------------------------------------------------
# Potentials
# ----------------------------------------------------------------------------------------------------


class _MonomialPotential:
    """``w -> prod_i w_i^(2 k_i)`` over the last axis (picklable, works on tensors of shape ``[..., d]``)."""

    def __init__(self, k: Sequence[float]) -> None:
        monomial_ratios("monomial_potential", k, None)
        self.k = tuple(float(ki) for ki in k)

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        if w.shape[-1] != len(self.k):
            raise ValueError(
                f"monomial_potential: expected w with last dimension {len(self.k)} (one per exponent in "
                f"k = {self.k}), got shape {tuple(w.shape)}."
            )
        out = None
        for i, ki in enumerate(self.k):
            if ki == 0:
                continue
            power = 2.0 * ki
            term = w[..., i] ** int(power) if power.is_integer() else w[..., i].abs() ** power
            out = term if out is None else out * term
        return out

    def __repr__(self) -> str:
        return f"monomial_potential(k={self.k})"


class _RadialPotential:
    """``w -> ||w||^(2k)`` over the last axis."""

    def __init__(self, k: float) -> None:
        self.k = check_real("radial_potential", "k", k, lower=0.0, strict=True)

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        sq = (w * w).sum(dim=-1)
        return sq ** int(self.k) if self.k.is_integer() else sq**self.k

    def __repr__(self) -> str:
        return f"radial_potential(k={self.k})"


class _QuadraticPotential:
    """``w -> a ||w||^2`` over the last axis."""

    def __init__(self, a: float) -> None:
        self.a = check_real("quadratic_potential", "a", a, lower=0.0, strict=True)

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return self.a * (w * w).sum(dim=-1)

    def __repr__(self) -> str:
        return f"quadratic_potential(a={self.a})"


def monomial_potential(k: Sequence[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The monomial potential ``K(w) = prod_i w_i^(2 k_i)`` as a torch function of ``w`` of shape ``[...,
    d]``.

    .. math::

        K(w) = \\prod_{i : k_i > 0} w_i^{2 k_i}

    (with :math:`|w_i|` when :math:`2 k_i` is not an integer). Its learning coefficient at ``0`` is
    :func:`rlct_monomial`. The callable is picklable and uses only elementwise operations, so it works under
    ``torch.func`` transforms.

    Parameters
    ----------
    k : sequence of float
        Exponents ``k_i >= 0``, not all zero; ``d = len(k)``.

    Returns
    -------
    callable
        ``w -> K(w)``, reducing the last axis.

    Examples
    --------
    >>> K = monomial_potential([1, 3])
    >>> float(K(torch.tensor([2.0, 1.0])))
    4.0
    """
    return _MonomialPotential(k)


def radial_potential(k: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The radial potential ``K(w) = ||w||^(2k)`` as a torch function of ``w`` of shape ``[..., d]``.

    .. math::

        K(w) = \\Big(\\sum_i w_i^2\\Big)^k, \\qquad \\lambda = d / (2k) \\text{ (see }
        \\texttt{rlct\\_radial}).

    Parameters
    ----------
    k : float
        Exponent, ``> 0``.

    Returns
    -------
    callable
        ``w -> K(w)``, reducing the last axis.

    Examples
    --------
    >>> float(radial_potential(2)(torch.tensor([1.0, 1.0])))
    4.0
    """
    return _RadialPotential(k)


def quadratic_potential(a: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """The regular potential ``K(w) = a ||w||^2`` as a torch function of ``w`` of shape ``[..., d]``.

    .. math::

        K(w) = a \\sum_i w_i^2, \\qquad \\lambda = d / 2 .

    Parameters
    ----------
    a : float, default 1.0
        Curvature, ``> 0``.

    Returns
    -------
    callable
        ``w -> K(w)``, reducing the last axis.

    Examples
    --------
    >>> float(quadratic_potential(0.5)(torch.tensor([1.0, 3.0])))
    5.0
    """
    return _QuadraticPotential(a)
