"""Closed-form learning coefficients, and small models whose true learning coefficient is known.

The local learning coefficient (LLC) estimator

.. math::

    \\hat\\lambda(w^*) = n\\beta \\big( \\mathbb{E}_p[L_n(w)] - L_n(w^*) \\big), \\qquad
    p(w) \\propto \\exp\\big(-n\\beta L_n(w) - \\tfrac{\\gamma}{2} \\|w - w^*\\|^2\\big),

can only be validated against models whose real log canonical threshold (RLCT) :math:`\\lambda` is known. This
package collects, one job per module,

* :mod:`~lambdahat.truth.formulas`: the formulas: regular models (:func:`rlct_regular`, and the exact
  finite-:math:`n\\beta` SGLD value :func:`regular_posterior_mean_nbeta_k`), monomials / normal crossings
  (:func:`rlct_monomial`, :func:`multiplicity_monomial`), radial potentials (:func:`rlct_radial`), reduced-rank
  regression (:func:`rlct_reduced_rank`, Aoyagi & Watanabe 2005) and deep linear networks
  (:func:`rlct_deep_linear`, Aoyagi 2024);
* :mod:`~lambdahat.truth.potentials`: the potentials ``K`` as torch functions (:func:`monomial_potential`,
  :func:`radial_potential`, :func:`quadratic_potential`);
* :mod:`~lambdahat.truth.quadrature`: exact numerical references for the finite-:math:`n\\beta` posterior mean
  :math:`\\mathbb{E}[n\\beta K]` in one or two dimensions (:func:`posterior_mean_nbeta_k_numeric`) and for radial
  potentials (:func:`radial_posterior_mean`): at finite :math:`n` they differ from :math:`\\lambda` for very
  singular potentials, so tight tests must use them rather than :math:`\\lambda`;
* :mod:`~lambdahat.truth.references`: what λ̂ targets on a case at finite nβ, γ and ε (:class:`Reference`:
  :class:`StationarySGLD`, :class:`PosteriorQuadrature`, :class:`RadialQuadrature`);
* :mod:`~lambdahat.truth.cases`: builders of tiny validation models, positioned at their true parameter
  :math:`w^*`, packaged as a :class:`TruthCase` that carries its λ and its reference (:func:`potential_case`,
  :func:`regular_case`, :func:`monomial_case`, :func:`radial_case`, :func:`reduced_rank_case`,
  :func:`deep_linear_case`, :func:`default_cases`).

All formula functions work on plain Python numbers, return ``float`` and raise ``ValueError`` on bad input.

Examples
--------
>>> from lambdahat import truth
>>> case = truth.monomial_case([1, 2])
>>> case.true_lambda, type(case.target).__name__
(0.25, 'PosteriorQuadrature')
"""

from __future__ import annotations

from .cases import (
    DEFAULT_N,
    SCALE_SHAPES,
    PotentialModel,
    TruthCase,
    deep_linear_case,
    default_cases,
    half_squared_error,
    mean_output_loss,
    monomial_case,
    potential_case,
    radial_case,
    reduced_rank_case,
    regular_case,
    scale_cases,
)
from .formulas import (
    multiplicity_monomial,
    regular_posterior_mean_nbeta_k,
    rlct_deep_linear,
    rlct_monomial,
    rlct_radial,
    rlct_reduced_rank,
    rlct_regular,
)
from .potentials import monomial_potential, quadratic_potential, radial_potential
from .quadrature import posterior_mean_nbeta_k_numeric, radial_posterior_mean
from .references import PosteriorQuadrature, RadialQuadrature, Reference, StationarySGLD

__all__ = [
    "DEFAULT_N",
    "SCALE_SHAPES",
    "PosteriorQuadrature",
    "PotentialModel",
    "RadialQuadrature",
    "Reference",
    "StationarySGLD",
    "TruthCase",
    "deep_linear_case",
    "default_cases",
    "half_squared_error",
    "mean_output_loss",
    "monomial_case",
    "monomial_potential",
    "multiplicity_monomial",
    "posterior_mean_nbeta_k_numeric",
    "potential_case",
    "quadratic_potential",
    "radial_case",
    "radial_posterior_mean",
    "radial_potential",
    "reduced_rank_case",
    "regular_case",
    "regular_posterior_mean_nbeta_k",
    "rlct_deep_linear",
    "rlct_monomial",
    "rlct_radial",
    "rlct_reduced_rank",
    "rlct_regular",
    "scale_cases",
]
