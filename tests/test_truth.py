"""Tests of the closed-form learning coefficients and the validation models in ``lambdahat.truth``."""

from __future__ import annotations

import dataclasses
import doctest
import itertools
import math
import pickle
import random

import numpy as np
import pytest
import torch

from lambdahat import truth
from lambdahat.truth import (
    PotentialModel,
    TruthCase,
    cases,
    deep_linear_case,
    default_cases,
    formulas,
    half_squared_error,
    monomial_case,
    monomial_potential,
    multiplicity_monomial,
    posterior_mean_nbeta_k_numeric,
    potential_case,
    potentials,
    quadratic_potential,
    quadrature,
    radial_case,
    radial_potential,
    reduced_rank_case,
    references,
    regular_case,
    regular_posterior_mean_nbeta_k,
    rlct_deep_linear,
    rlct_monomial,
    rlct_radial,
    rlct_reduced_rank,
    rlct_regular,
)


def _nbeta(n: int) -> float:
    return n / math.log(n)


def test_docstring_examples_run():
    attempted = 0
    for module in (truth, formulas, potentials, quadrature, references, cases):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, module.__name__
        attempted += result.attempted
    assert attempted > 20


def test_every_public_name_is_reexported_by_the_package():
    for module in (formulas, potentials, quadrature, references, cases):
        for name in module.__all__:
            assert getattr(truth, name) is getattr(module, name)
            assert name in truth.__all__


# ------------------------------------------------------------------------------------------------------------
# Formulas: worked examples and properties
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("widths", "r", "expected"),
    [([5, 3, 5], 0, 6.5), ([5, 4, 5], 0, 8.0), ([2, 1, 2], 0, 1.0), ([10, 20, 20, 10], 10, 50.0)],
)
def test_deep_linear_worked_examples(widths, r, expected):
    assert rlct_deep_linear(widths, r) == expected


@pytest.mark.parametrize(
    ("M", "H", "N", "r", "expected"),
    [(5, 3, 5, 0, 6.5), (5, 4, 5, 0, 8.0), (2, 1, 2, 0, 1.0), (4, 3, 4, 1, 6.0), (3, 3, 3, 1, 4.0)],
)
def test_reduced_rank_worked_examples(M, H, N, r, expected):
    assert rlct_reduced_rank(M, H, N, r) == expected


def test_reduced_rank_each_case():
    # M + H < N + r: (HM - Hr + Nr) / 2
    assert rlct_reduced_rank(1, 1, 5, 1) == (1 - 1 + 5) / 2
    # N + H < M + r: (HN - Hr + Mr) / 2
    assert rlct_reduced_rank(5, 1, 1, 1) == (1 - 1 + 5) / 2
    # M + N < H + r: MN / 2 (the hidden layer is wide enough that the model is regular in the product)
    assert rlct_reduced_rank(2, 7, 2, 2) == 2.0
    assert rlct_reduced_rank(2, 9, 3, 0) == 3.0
    # odd M + H + N + r adds 1/8
    assert rlct_reduced_rank(3, 2, 4, 0) == (2 * 2 * 7 - 1 - 4 + 1) / 8 == 3.0
    assert rlct_reduced_rank(3, 2, 3, 0) == (2 * 2 * 6 - 0 - 4) / 8  # even: no correction


def test_reduced_rank_full_rank_inner_layer_is_regular_modulo_gl_h():
    # r = H <= min(M, N): the true set is a smooth GL(H) orbit and lambda = (d - H^2) / 2.
    for M, N in itertools.product(range(1, 7), repeat=2):
        for H in range(1, min(M, N) + 1):
            assert rlct_reduced_rank(M, H, N, H) == (H * (M + N) - H * H) / 2


def _random_shapes(count: int, max_width: int, seed: int):
    rng = random.Random(seed)
    for _ in range(count):
        M, H, N = (rng.randint(1, max_width) for _ in range(3))
        r = rng.randint(0, min(M, H, N)) if rng.random() < 0.7 else 0
        yield M, H, N, r


def test_deep_linear_equals_reduced_rank_for_two_layers_on_random_shapes():
    shapes = list(_random_shapes(600, 15, seed=0))
    assert sum(r > 0 for *_, r in shapes) > 250
    for M, H, N, r in shapes:
        expected = rlct_reduced_rank(M, H, N, r)
        # input M, hidden H, output N; and the reverse orientation
        assert rlct_deep_linear([M, H, N], r) == expected, (M, H, N, r)
        assert rlct_deep_linear([N, H, M], r) == expected, (M, H, N, r)


def test_deep_linear_equals_reduced_rank_exhaustively_on_small_shapes():
    for M, H, N in itertools.product(range(1, 8), repeat=3):
        for r in range(min(M, H, N) + 1):
            assert rlct_deep_linear([M, H, N], r) == rlct_reduced_rank(M, H, N, r), (M, H, N, r)


def test_reduced_rank_symmetric_in_input_and_output():
    for M, H, N, r in _random_shapes(400, 20, seed=1):
        assert rlct_reduced_rank(M, H, N, r) == rlct_reduced_rank(N, H, M, r)


def test_deep_linear_properties_on_random_networks():
    rng = random.Random(2)
    for _ in range(300):
        widths = [rng.randint(1, 12) for _ in range(rng.randint(2, 6))]
        r = rng.randint(0, min(widths))
        lam = rlct_deep_linear(widths, r)
        d = sum(a * b for a, b in itertools.pairwise(widths))
        assert 0 <= lam <= d / 2
        # lambda depends on the widths only through the multiset of hidden widths and the end widths
        assert rlct_deep_linear(widths[::-1], r) == lam
        hidden = widths[1:-1]
        rng.shuffle(hidden)
        assert rlct_deep_linear([widths[0], *hidden, widths[-1]], r) == lam
        # a single layer is regular
    for N, M in itertools.product(range(1, 6), repeat=2):
        for r in range(min(N, M) + 1):
            assert rlct_deep_linear([N, M], r) == N * M / 2


def test_wide_hidden_layer_gives_the_regular_value_of_the_product():
    # M + N < H + r: the product B A ranges over all N x M matrices near the truth, lambda = MN / 2
    assert rlct_deep_linear([3, 50, 3], 0) == rlct_reduced_rank(3, 50, 3, 0) == 4.5
    assert rlct_deep_linear([2, 9, 9, 3], 1) == 3.0


def test_regular_and_radial():
    assert rlct_regular(7) == 3.5
    assert rlct_radial(4, 1) == rlct_regular(4)
    assert rlct_radial(3, 2) == 0.75
    assert rlct_radial(2, 0.5) == 2.0


def test_monomial_values_and_multiplicity():
    assert rlct_monomial([1, 3]) == pytest.approx(1 / 6)
    assert rlct_monomial([2]) == 0.25
    assert rlct_monomial([1, 1]) == 0.5
    assert multiplicity_monomial([1, 1]) == 2
    assert multiplicity_monomial([1, 2]) == 1
    assert multiplicity_monomial([2, 1, 2]) == 2
    # k_i = 0 coordinates do not constrain lambda
    assert rlct_monomial([0, 2]) == 0.25
    assert rlct_monomial([0, 0, 1]) == 0.5
    assert multiplicity_monomial([0, 1]) == 1
    # prior exponents
    assert rlct_monomial([1, 2], h=[0, 2]) == 0.5
    assert multiplicity_monomial([1, 2], h=[0, 1]) == 2
    assert rlct_monomial([1, 1], h=[-0.5, 0]) == 0.25
    # non-integer exponents; ties are detected exactly
    assert rlct_monomial([0.5, 0.25]) == 1.0
    assert multiplicity_monomial([0.1, 0.1]) == 2
    # numpy and tuple inputs
    assert rlct_monomial((1, 3)) == rlct_monomial(np.array([1, 3])) == rlct_monomial([1, 3])


def test_regular_posterior_mean_closed_form():
    assert regular_posterior_mean_nbeta_k(3, 1.0, 100.0, 0.0) == pytest.approx(1.5, rel=1e-15)
    nbeta, a, gamma = 50.0, 2.0, 3.0
    kappa = 2 * nbeta * a + gamma
    assert regular_posterior_mean_nbeta_k(4, a, nbeta, gamma) == pytest.approx(2 * 2 * nbeta * a / kappa)
    # tends to d / 2 for large nbeta
    assert regular_posterior_mean_nbeta_k(4, 1.0, 1e9, 1.0) == pytest.approx(2.0, rel=1e-8)


@pytest.mark.parametrize("epsilon", [1e-4, 1e-3, 5e-3])
def test_regular_posterior_mean_matches_the_sgld_ar1_recursion(epsilon):
    # Independent check of the formula: iterate the exact variance recursion of the SGLD step
    # w' = w - (eps/2) kappa w + sqrt(eps) xi, i.e. v' = (1 - eps kappa / 2)^2 v + eps, to its fixed point.
    d, a, nbeta, gamma = 3, 1.5, 40.0, 2.0
    kappa = 2 * nbeta * a + gamma
    c = 1 - epsilon * kappa / 2
    v = 0.0
    for _ in range(200_000):
        v_next = c * c * v + epsilon
        if v_next == v:
            break
        v = v_next
    expected = nbeta * a * d * v
    assert regular_posterior_mean_nbeta_k(d, a, nbeta, gamma, epsilon) == pytest.approx(expected, rel=1e-12)


def test_regular_posterior_mean_matches_simulated_sgld():
    # Many independent SGLD chains on the quadratic; judged against the Monte Carlo standard error.
    d, a, nbeta, gamma, epsilon = 2, 1.0, 20.0, 1.0, 0.02
    kappa = 2 * nbeta * a + gamma
    gen = torch.Generator().manual_seed(0)
    chains = 4000
    w = torch.zeros(chains, d, dtype=torch.float64)
    values = []
    for step in range(400):
        w = (
            w
            - 0.5 * epsilon * kappa * w
            + math.sqrt(epsilon) * torch.randn(w.shape, generator=gen, dtype=w.dtype)
        )
        if step >= 200 and step % 20 == 0:  # well past burn-in (mixing time ~ 2 / (eps kappa) = 2.4 steps)
            values.append(nbeta * a * (w * w).sum(dim=1))
    samples = torch.cat(values)
    mean, se = samples.mean().item(), samples.std().item() / math.sqrt(samples.numel())
    expected = regular_posterior_mean_nbeta_k(d, a, nbeta, gamma, epsilon)
    assert abs(mean - expected) < 4 * se
    # and the step-size bias is real: the epsilon = 0 value is outside the error bars
    assert abs(mean - regular_posterior_mean_nbeta_k(d, a, nbeta, gamma)) > 4 * se


# ------------------------------------------------------------------------------------------------------------
# Error paths
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: rlct_regular(0), r"rlct_regular: expected d to be an integer >= 1, got 0"),
        (lambda: rlct_regular(2.5), r"expected d to be an integer >= 1, got 2.5"),
        (lambda: rlct_regular(True), r"expected d to be an integer"),
        (lambda: rlct_radial(2, 0), r"rlct_radial: expected k to be a finite real number > 0, got 0.0"),
        (lambda: rlct_radial(-1, 1), r"expected d to be an integer >= 1, got -1"),
        (
            lambda: rlct_reduced_rank(-1, 2, 3, 0),
            r"rlct_reduced_rank: expected M to be an integer >= 1, got -1",
        ),
        (lambda: rlct_reduced_rank(3, 2, 3, 3), r"r cannot exceed min\(M, H, N\) = 2; got r = 3"),
        (lambda: rlct_reduced_rank(3, 2, 3, -1), r"expected r to be an integer >= 0, got -1"),
        (lambda: rlct_deep_linear([4, -3, 4], 0), r"expected widths\[1\] to be an integer >= 1, got -3"),
        (lambda: rlct_deep_linear([4], 0), r"at least two widths"),
        (lambda: rlct_deep_linear([4, 2, 4], 3), r"r cannot exceed the smallest width 2; got r = 3"),
        (lambda: rlct_deep_linear("454", 0), r"expected widths to be a sequence"),
        (lambda: rlct_monomial([0, 0]), r"all exponents in k are 0"),
        (lambda: rlct_monomial([]), r"at least one exponent"),
        (lambda: rlct_monomial([1, -2]), r"expected k\[1\] to be a finite real number >= 0, got -2.0"),
        (lambda: rlct_monomial([1, 2], h=[0]), r"one entry per exponent in k \(2\), got 1"),
        (lambda: rlct_monomial([1, 2], h=[0, -1]), r"expected h\[1\] to be a finite real number > -1"),
        (lambda: rlct_monomial(3), r"expected k to be a sequence of exponents, got 3"),
        (lambda: multiplicity_monomial([0]), r"multiplicity_monomial: all exponents in k are 0"),
        (lambda: rlct_monomial([1, float("nan")]), r"expected k\[1\] to be a finite real number"),
        (
            lambda: regular_posterior_mean_nbeta_k(2, 1.0, 100.0, 0.0, epsilon=0.05),
            r"diverges for epsilon \* kappa >= 4 .*use epsilon < 0.02",
        ),
        (
            lambda: regular_posterior_mean_nbeta_k(2, 0.0, 100.0, 1.0),
            r"expected a to be a finite real number > 0",
        ),
        (lambda: regular_posterior_mean_nbeta_k(2, 1.0, 100.0, -1.0), r"expected gamma to be .* >= 0"),
        (
            lambda: posterior_mean_nbeta_k_numeric(quadratic_potential(), 3, 10.0, 1.0),
            r"d = 1 or 2, got d = 3",
        ),
        (
            lambda: posterior_mean_nbeta_k_numeric(monomial_potential([1, 1]), 2, 10.0, 0.0),
            r"gamma = 0 and no radius the prior is improper",
        ),
        (
            lambda: posterior_mean_nbeta_k_numeric(lambda w: w.sum(-1), 1, 10.0, 1.0),
            r"K must be finite and non-negative",
        ),
        (
            lambda: posterior_mean_nbeta_k_numeric(lambda w: (w * w).sum(), 2, 10.0, 1.0),
            r"reduce over the last axis only",
        ),
        (lambda: monomial_potential([1, 2])(torch.zeros(3)), r"expected w with last dimension 2"),
        (lambda: regular_case(0), r"regular_case: expected d to be an integer >= 1, got 0"),
        (lambda: reduced_rank_case(3, 2, 3, 3), r"r cannot exceed min\(M, H, N\)"),
        (lambda: deep_linear_case([3, 0, 3], 0), r"expected widths\[1\] to be an integer >= 1, got 0"),
        (
            lambda: potential_case("bad", lambda w: (w * w).sum() + 1.0, 2, 10, 1.0),
            r"expected K\(0\) to be the scalar 0",
        ),
        (
            lambda: potential_case("bad", quadratic_potential(), 2, 10, 1.0, w_star=[0.0, 1.0, 2.0]),
            r"expected w_star of shape \(2,\), got \(3,\)",
        ),
        (
            lambda: potential_case("bad", quadratic_potential(), 2, 0, 1.0),
            r"expected n to be an integer >= 1",
        ),
        (lambda: regular_case(2, n=10).loader(0), r"expected batch_size to be an integer >= 1, got 0"),
    ],
)
def test_bad_input_raises_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------------------------------------------------
# Exact finite-nbeta posterior means by quadrature
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize(
    ("a", "nbeta", "gamma"), [(1.0, _nbeta(1000), 1.0), (3.0, 7.0, 0.5), (0.5, 1e5, 1e-3)]
)
def test_numeric_posterior_mean_matches_regular_closed_form(d, a, nbeta, gamma):
    value = posterior_mean_nbeta_k_numeric(quadratic_potential(a), d, nbeta, gamma)
    expected = regular_posterior_mean_nbeta_k(d, a, nbeta, gamma)
    assert value == pytest.approx(expected, rel=1e-6)
    assert value == pytest.approx(expected, rel=1e-10)  # the quadrature is in fact far better than required


def test_numeric_posterior_mean_on_a_box_without_localization():
    # uniform prior on [-R, R] for K = a w^2: E[nbeta K] = 1/2 - sqrt(c) R exp(-c R^2) / (sqrt(pi) erf(sqrt(c) R))
    a, nbeta, R = 1.0, 3.0, 1.0
    c = nbeta * a
    expected = 0.5 - math.sqrt(c) * R * math.exp(-c * R * R) / (
        math.sqrt(math.pi) * math.erf(math.sqrt(c) * R)
    )
    value = posterior_mean_nbeta_k_numeric(quadratic_potential(a), 1, nbeta, 0.0, radius=R)
    assert value == pytest.approx(expected, rel=1e-10)


def test_numeric_monomial_value_at_n_1000():
    """K = w1^2 w2^6 (k = (1, 3), lambda = 1/6) at n = 1000, nbeta = n / log n.

    The exact posterior mean depends on the prior: with the Gaussian localization gamma = 1 it is 0.14156, with
    a uniform prior on [-1, 1]^2 it is 0.14515 (REFERENCE.md's "about 0.145"); as gamma -> 0 it tends to 1/6.
    """
    K = monomial_potential([1, 3])
    nbeta = _nbeta(1000)
    localized = posterior_mean_nbeta_k_numeric(K, 2, nbeta, 1.0)
    boxed = posterior_mean_nbeta_k_numeric(K, 2, nbeta, 0.0, radius=1.0)
    assert localized == pytest.approx(0.1415637878636768, rel=1e-9)
    assert boxed == pytest.approx(0.1451470526982475, rel=1e-9)
    assert localized < boxed < rlct_monomial([1, 3])
    # Independent check: integrate w1 out analytically (a Gaussian given w2), leaving a 1-D integral over w2

    # that is done here by the trapezoidal rule (the integrand is even in w2, so this is spectrally accurate).
    w2 = torch.linspace(0.0, 12.0, 200_001, dtype=torch.float64)
    c = nbeta * w2**6 + 0.5
    z = torch.exp(-0.5 * w2**2) * torch.sqrt(math.pi / c)
    z[0] = z[0] / 2
    semi_analytic = float((z * nbeta * w2**6 / (2 * c)).sum() / z.sum())
    assert localized == pytest.approx(semi_analytic, rel=1e-9)


def test_numeric_monomial_tends_to_lambda():
    K = monomial_potential([1, 2])
    values = [posterior_mean_nbeta_k_numeric(K, 2, _nbeta(n), 1.0) for n in (10**2, 10**4, 10**8)]
    assert values[0] < values[1] < values[2] < rlct_monomial([1, 2])
    assert values[2] == pytest.approx(0.25, abs=0.02)


def test_numeric_one_dimensional_monomial_is_exact_gamma_ratio():
    # K = w^(2k) with gamma -> 0 on a box large enough: E[nbeta K] -> 1 / (2k) (a Gamma(1/(2k)) variable's mean)
    value = posterior_mean_nbeta_k_numeric(monomial_potential([2]), 1, 1e8, 0.0, radius=10.0)
    assert value == pytest.approx(0.25, rel=1e-10)


# ------------------------------------------------------------------------------------------------------------
# Validation models
# ------------------------------------------------------------------------------------------------------------


def _full_loss(case: TruthCase, model: torch.nn.Module | None = None) -> float:
    model = case.model if model is None else model
    x, y = case.dataset.tensors
    with torch.no_grad():
        return float(case.criterion_fn(model(x), y))


def _all_builders() -> list[TruthCase]:
    return [
        regular_case(5, a=2.0, n=300),
        monomial_case([1, 3], n=300),
        monomial_case([0, 2, 1], n=300),
        radial_case(3, 2, n=300),
        reduced_rank_case(4, 3, 4, 1, n=300),
        reduced_rank_case(3, 5, 2, 2, n=300, seed=3),
        reduced_rank_case(5, 3, 5, 0, n=300),
        deep_linear_case([4, 3, 3, 4], 1, n=300),
        deep_linear_case([5, 4, 5], 0, n=300),
        deep_linear_case([3, 6, 2, 5], 2, n=300),
        potential_case("shifted", quadratic_potential(), 2, 300, 1.0, w_star=[0.5, -1.0]),
        *default_cases(),
    ]


@pytest.mark.parametrize("case", _all_builders(), ids=lambda c: c.name)
def test_builder_loss_is_zero_at_truth_and_positive_elsewhere(case):
    assert isinstance(case, TruthCase)
    assert case.d == sum(p.numel() for p in case.model.parameters())
    assert case.n == len(case.dataset)
    assert _full_loss(case) == 0.0
    # also exactly zero on every minibatch, whatever the batching
    for x, y in case.loader(batch_size=64, shuffle=True, seed=1):
        with torch.no_grad():
            assert float(case.criterion_fn(case.model(x), y)) == 0.0
    perturbed = pickle.loads(pickle.dumps(case.model))  # a deep copy
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    assert _full_loss(case, perturbed) > 0.0
    assert _full_loss(case) == 0.0  # the case's model was not touched


def test_builder_parameter_counts_and_lambdas():
    assert regular_case(10).d == 10 and regular_case(10).true_lambda == 5.0
    rrr = reduced_rank_case(4, 3, 4, 1, n=50)
    assert rrr.d == 3 * 4 + 4 * 3
    assert rrr.true_lambda == rlct_reduced_rank(4, 3, 4, 1)
    dln = deep_linear_case([4, 3, 3, 4], 1, n=50)
    assert dln.d == 4 * 3 + 3 * 3 + 3 * 4
    assert dln.true_lambda == 5.5
    assert monomial_case([1, 2]).true_lambda == 0.25
    assert radial_case(3, 2).true_lambda == 0.75


def test_reduced_rank_true_parameter_has_layers_of_rank_r():
    for M, H, N, r in [(4, 3, 4, 1), (5, 4, 3, 3), (3, 3, 3, 0)]:
        case = reduced_rank_case(M, H, N, r, n=20)
        A, B = (layer.weight.detach() for layer in case.model)
        assert A.shape == (H, M) and B.shape == (N, H)
        assert torch.linalg.matrix_rank(A) == r
        assert torch.linalg.matrix_rank(B) == r
        assert torch.linalg.matrix_rank(B @ A) == r
    dln = deep_linear_case([4, 3, 3, 4], 1, n=20)
    assert all(torch.linalg.matrix_rank(layer.weight.detach()) == 1 for layer in dln.model)
    zero = deep_linear_case([5, 4, 5], 0, n=20)
    assert all(float(p.detach().abs().max()) == 0.0 for p in zero.model.parameters())


def test_regression_data_are_seeded_and_noiseless():
    a, b, c = (reduced_rank_case(3, 2, 3, 1, n=40, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.dataset.tensors[0], b.dataset.tensors[0])
    assert not torch.equal(a.dataset.tensors[0], c.dataset.tensors[0])
    x, y = a.dataset.tensors
    assert torch.equal(y[:, :1], x[:, :1]) and float(y[:, 1:].abs().max()) == 0.0
    dln_x = deep_linear_case([3, 2, 3], 1, n=500).dataset.tensors[0]
    assert float(dln_x.min()) >= -1.0 and float(dln_x.max()) <= 1.0 and float(dln_x.min()) < -0.9


def test_half_squared_error_is_a_unit_variance_gaussian_nll():
    out = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    target = torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    assert float(half_squared_error(out, target)) == pytest.approx(((1 + 4) / 2 + 9 / 2) / 2)


def test_potential_model_loss_is_the_potential():
    K = monomial_potential([1, 2])
    case = potential_case("m", K, 2, 10, rlct_monomial([1, 2]))
    assert isinstance(case.model, PotentialModel)
    with torch.no_grad():
        case.model.w.copy_(torch.tensor([2.0, 3.0]))
    assert _full_loss(case) == 4.0 * 81.0
    # gradient of the mean loss is the gradient of K
    x, y = case.dataset.tensors
    loss = case.criterion_fn(case.model(x), y)
    (grad,) = torch.autograd.grad(loss, case.model.w)
    assert torch.allclose(grad, torch.tensor([2 * 2.0 * 81.0, 4.0 * 4 * 27.0]))


def test_potential_model_is_functional_and_vmappable():
    case = radial_case(3, 2, n=8)
    x, y = case.dataset.tensors
    W = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))

    def loss(w):
        out = torch.func.functional_call(case.model, {"w": w}, (x,))
        return case.criterion_fn(out, y)

    batched = torch.vmap(loss)(W)
    looped = torch.stack([loss(w) for w in W])
    assert torch.allclose(batched, looped)
    assert torch.allclose(batched, (W * W).sum(1) ** 2)
    grads = torch.vmap(torch.func.grad(loss))(W)
    assert torch.allclose(grads, 4 * (W * W).sum(1, keepdim=True) * W)


def test_potentials_work_on_batched_tensors():
    w = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    assert torch.allclose(monomial_potential([1, 1])(w), torch.tensor([4.0, 2.25]))
    assert torch.allclose(radial_potential(1.5)(w), torch.tensor([5.0**1.5, 9.25**1.5]))
    assert torch.allclose(quadratic_potential(2.0)(w), torch.tensor([10.0, 18.5]))
    # non-integer powers use |w|
    assert torch.allclose(monomial_potential([0.75])(torch.tensor([[-4.0]])), torch.tensor([8.0]))


def test_loader_batches_and_seeded_shuffle():
    case = reduced_rank_case(3, 2, 3, 1, n=100)
    batches = list(case.loader(32))
    assert [len(b[0]) for b in batches] == [32, 32, 32, 4]
    assert torch.equal(batches[0][0], case.dataset.tensors[0][:32])
    first = [b[0] for b in case.loader(32, shuffle=True, seed=5)]
    again = [b[0] for b in case.loader(32, shuffle=True, seed=5)]
    other = [b[0] for b in case.loader(32, shuffle=True, seed=6)]
    assert all(torch.equal(p, q) for p, q in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_truth_case_is_frozen_and_picklable():
    case = monomial_case([1, 2], n=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        case.true_lambda = 1.0  # type: ignore[misc]
    for original in default_cases():
        clone = pickle.loads(pickle.dumps(original))
        assert clone.name == original.name and clone.true_lambda == original.true_lambda
        assert _full_loss(clone) == 0.0


def test_default_cases():
    cases = default_cases()
    names = [c.name for c in cases]
    assert len(set(names)) == len(names) >= 6
    assert all(c.d <= 100 for c in cases)
    by_name = {c.name: c for c in cases}
    assert by_name["normal_crossing_k1_1"].true_lambda == 0.5
    assert "log log n" in by_name["normal_crossing_k1_1"].description
    assert by_name["rrr_M4_H3_N4_r1"].true_lambda == 6.0
    assert by_name["dln_5-4-5_r0"].true_lambda == 8.0
    quick = default_cases(quick=True)
    assert 1 <= len(quick) < len(cases)
    assert {c.name for c in quick} <= set(names)
