"""λ̂ against closed-form and exactly computable learning coefficients (statistical tests).

Each test states its tolerance:

- where the exact target at the run's nβ, γ and ε is known (regular model: the SGLD stationary value; low-dimensional
  and radial potentials: the posterior mean by quadrature), the estimate must lie within 4 Monte Carlo standard
  errors (the spread of independent per-chain estimates / sqrt(chains)), plus, for singular potentials, 5 % for the
  finite-step bias, which has no closed form there (MALA acceptance > 0.98 in these runs keeps it small);
- where only the asymptotic λ is known (reduced-rank regression, deep linear networks), the tolerance is the
  published accuracy we must beat: devinterp accepts 40 % on reduced-rank regression and Lau et al. report
  6–44 % underestimates; we require 15 % for reduced-rank regression and 20 % for the deep linear network.
"""

from __future__ import annotations

import math
import warnings

import pytest

from lambdahat import LLCEstimator, nbeta_from_effective_size, truth
from lambdahat.truth import radial_posterior_mean

pytestmark = pytest.mark.slow


def estimate(
    case, *, learning_rate, localization, draws, burnin_steps, chains=16, batch_size=500, nbeta=None
):
    est = LLCEstimator(
        draws=draws,
        chains=chains,
        burnin_steps=burnin_steps,
        learning_rate=learning_rate,
        localization=localization,
        nbeta=nbeta or nbeta_from_effective_size(case.n),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return est.run(
            case.model,
            case.loader(batch_size, shuffle=True, seed=1),
            criterion_fn=case.criterion_fn,
            seed=1,
            compile=False,
            show_progress=False,
        )


def test_regular_model_matches_the_exact_sgld_value():
    case = truth.regular_case(10)
    eps, gamma = 5e-5, 1.0
    r = estimate(case, learning_rate=eps, localization=gamma, draws=1000, burnin_steps=300)
    nbeta = nbeta_from_effective_size(case.n)
    exact, kind = case.reference(nbeta, gamma, eps)
    assert kind == "exact SGLD" and exact == truth.regular_posterior_mean_nbeta_k(10, 1.0, nbeta, gamma, eps)
    assert abs(r.llc_mean - exact) < 4 * r.llc_stderr, (r.llc_mean, exact, r.llc_stderr)
    assert abs(r.llc_mean - 5.0) / 5.0 < 0.1


def test_radial_potential_matches_the_exact_posterior_mean():
    case = truth.radial_case(3, 2)
    gamma = 1.0
    r = estimate(case, learning_rate=5e-4, localization=gamma, draws=3000, burnin_steps=500)
    exact, _ = case.reference(nbeta_from_effective_size(case.n), gamma)
    assert exact == radial_posterior_mean(3, 2, nbeta_from_effective_size(case.n), gamma)
    assert r.mala_acceptance > 0.98
    assert abs(r.llc_mean - exact) < 4 * r.llc_stderr + 0.05 * exact, (r.llc_mean, exact, r.llc_stderr)


@pytest.mark.parametrize("k", [(1, 2), (1, 1)])
def test_monomials_match_the_exact_posterior_mean(k):
    case = truth.monomial_case(list(k))
    gamma = 10.0
    nbeta = nbeta_from_effective_size(case.n)
    r = estimate(case, learning_rate=1e-3, localization=gamma, draws=2000, burnin_steps=500)
    exact, kind = case.reference(nbeta, gamma)
    assert kind == "exact posterior"
    assert r.mala_acceptance > 0.98
    assert abs(r.llc_mean - exact) < 4 * r.llc_stderr + 0.05 * exact, (r.llc_mean, exact, r.llc_stderr)


def test_reduced_rank_regression_is_within_15_percent():
    case = truth.reduced_rank_case(4, 3, 4, 1)
    r = estimate(case, learning_rate=1e-4, localization=1.0, draws=1500, burnin_steps=1000, chains=8)
    assert abs(r.llc_mean - case.true_lambda) / case.true_lambda < 0.15, r.llc_mean


def test_deep_linear_network_is_within_20_percent():
    case = truth.deep_linear_case([5, 4, 5], 0)
    r = estimate(case, learning_rate=1e-4, localization=1.0, draws=1500, burnin_steps=1000, chains=8)
    assert abs(r.llc_mean - case.true_lambda) / case.true_lambda < 0.20, r.llc_mean


def test_radial_reference_is_exact_without_localization():
    for d, k in [(1, 1), (3, 2), (5, 1.5)]:
        assert radial_posterior_mean(d, k, 500.0, 0.0) == pytest.approx(d / (2 * k), rel=1e-6)
    assert math.isclose(
        radial_posterior_mean(2, 1, 100.0, 10.0),
        truth.regular_posterior_mean_nbeta_k(2, 1.0, 100.0, 10.0),
        rel_tol=1e-6,
    )
