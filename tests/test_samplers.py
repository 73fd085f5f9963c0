"""Sampler kernels at three levels: exact updates, vmapped-equals-loop, and distributions on a Gaussian."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lambdahat import LLCEstimator
from lambdahat.samplers import Context, Hyper, get_sampler, rmsprop_sgld, sgld, sgnht


def hyper(lr=0.1, nbeta=10.0, gamma=2.0):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return Hyper(t(lr), t(nbeta), t(gamma))


def test_sgld_step_is_exactly_the_langevin_update():
    g = torch.Generator().manual_seed(0)
    w_star = torch.randn(5, dtype=torch.float64, generator=g)
    theta = torch.randn(3, 5, dtype=torch.float64, generator=g)
    grad = torch.randn(3, 5, dtype=torch.float64, generator=g)
    noise = torch.randn(3, 5, dtype=torch.float64, generator=g)
    loss = torch.rand(3, dtype=torch.float64, generator=g)
    h = hyper(lr=0.01, nbeta=50.0, gamma=3.0)
    state = sgld.init(theta)
    new, info = sgld.step(state, loss, grad, noise, h, Context(w_star, None, None, 0.5))
    expected = theta - 0.005 * (50.0 * grad + 3.0 * (theta - w_star) + 0.5 * theta) + math.sqrt(0.01) * noise
    torch.testing.assert_close(new.theta, expected)
    torch.testing.assert_close(info.loss, loss)
    torch.testing.assert_close(info.distance, (theta - w_star).norm(dim=-1))
    assert torch.isnan(info.log_accept).all()  # no previous transition yet


def test_sgld_without_noise_and_localization_is_gradient_descent():
    w_star = torch.zeros(4, dtype=torch.float64)
    theta = torch.ones(2, 4, dtype=torch.float64)
    grad = torch.full((2, 4), 0.3, dtype=torch.float64)
    new, _ = sgld.step(
        sgld.init(theta),
        torch.zeros(2, dtype=torch.float64),
        grad,
        torch.zeros(2, 4, dtype=torch.float64),
        hyper(lr=0.2, nbeta=1.0, gamma=0.0),
        Context(w_star, None, None),
    )
    torch.testing.assert_close(new.theta, theta - 0.1 * grad)


def test_orthogonal_restriction_keeps_chains_in_the_hyperplane():
    g = torch.Generator().manual_seed(1)
    w_star = torch.randn(6, dtype=torch.float64, generator=g)
    u = torch.randn(6, dtype=torch.float64, generator=g)
    u = u / u.norm()
    state = sgld.init(w_star.expand(3, 6).clone())
    for _ in range(5):
        grad = torch.randn(3, 6, dtype=torch.float64, generator=g)
        noise = torch.randn(3, 6, dtype=torch.float64, generator=g)
        state, _ = sgld.step(
            state, torch.zeros(3, dtype=torch.float64), grad, noise, hyper(), Context(w_star, u, None)
        )
        assert ((state.theta - w_star) @ u).abs().max() < 1e-12


def test_bounding_box_clamps_around_w_star():
    w_star = torch.zeros(3, dtype=torch.float64)
    state = sgld.init(torch.zeros(2, 3, dtype=torch.float64))
    noise = torch.full((2, 3), 100.0, dtype=torch.float64)
    new, _ = sgld.step(
        state,
        torch.zeros(2, dtype=torch.float64),
        torch.zeros(2, 3, dtype=torch.float64),
        noise,
        hyper(),
        Context(w_star, None, 0.25),
    )
    assert new.theta.abs().max() == pytest.approx(0.25)


def test_mala_acceptance_is_one_for_the_exact_reverse_of_a_quadratic_step():
    # For U = (κ/2)|w|² and a tiny step, the Langevin proposal is nearly reversible: acceptance → 1.
    w_star = torch.zeros(3, dtype=torch.float64)
    h = hyper(lr=1e-6, nbeta=1.0, gamma=0.0)
    state = sgld.init(torch.full((1, 3), 0.5, dtype=torch.float64))
    for _ in range(3):
        theta = state.theta
        state, info = sgld.step(
            state,
            (theta * theta).sum(-1),
            2 * theta,
            torch.randn(1, 3, dtype=torch.float64),
            h,
            Context(w_star, None, None),
        )
    assert info.log_accept.exp().item() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("precond", [False, True])
def test_closed_form_acceptance_equals_the_general_mala_formula(precond):
    from lambdahat.samplers.base import langevin_log_accept, mala_log_accept

    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, 6, dtype=torch.float64, generator=g)
    d_prev = 30 * torch.randn(4, 6, dtype=torch.float64, generator=g)
    d_next = 30 * torch.randn(4, 6, dtype=torch.float64, generator=g)
    G = (
        torch.rand(4, 6, dtype=torch.float64, generator=g) + 0.5
        if precond
        else torch.ones(4, 6, dtype=torch.float64)
    )
    eps = torch.tensor(1e-3, dtype=torch.float64)
    xi = torch.randn(4, 6, dtype=torch.float64, generator=g)
    w_next = w - 0.5 * eps * G * d_prev + (eps * G).sqrt() * xi
    general = mala_log_accept(w, w_next, d_prev, d_next, eps, G, G)
    closed = langevin_log_accept((G * d_prev**2).sum(-1), (G * d_next**2).sum(-1), eps)
    torch.testing.assert_close(closed, general)
    assert (general < 0).any() and (general == 0).any()


def test_mala_acceptance_is_exact_for_a_gaussian_target():
    # U = κ/2 |w|²: trapezoid potential differences are exact, so this is the true MALA acceptance
    from lambdahat.samplers.base import mala_log_accept

    kappa, eps = 50.0, torch.tensor(0.01, dtype=torch.float64)
    w = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    xi = torch.tensor([[0.7, 1.1]], dtype=torch.float64)
    w2 = w - 0.5 * eps * kappa * w + eps.sqrt() * xi
    u = lambda v: 0.5 * kappa * (v * v).sum(-1)  # noqa: E731
    logq = lambda a, b: -((a - b + 0.5 * eps * kappa * b) ** 2).sum(-1) / (2 * eps)  # noqa: E731  q(a|b)
    exact = torch.clamp(u(w) - u(w2) + logq(w, w2) - logq(w2, w), max=0)
    torch.testing.assert_close(mala_log_accept(w, w2, kappa * w, kappa * w2, eps), exact)


def test_rmsprop_sgld_preconditions_on_the_loss_gradient_only_and_freezes_after_adapting():
    """The second moment follows the loss gradient g (not the localization's pull), and stops after adapt_steps."""
    w_star = torch.zeros(3, dtype=torch.float64)
    theta = torch.full((1, 3), 2.0, dtype=torch.float64)
    grad = torch.tensor([[0.0, 1.0, 3.0]], dtype=torch.float64)
    h = hyper(lr=0.01, nbeta=1.0, gamma=50.0)  # a strong pull, which must not enter v
    state = rmsprop_sgld.init(theta)
    zero = torch.zeros(1, 3, dtype=torch.float64)
    loss = torch.zeros(1, dtype=torch.float64)
    for _ in range(3):
        state, _ = rmsprop_sgld.step(
            state, loss, grad, zero, h, Context(w_star, None, None), alpha=0.5, adapt_steps=2
        )
    # two updates: v = 0.25 + 0.25 g² + 0.5 g² = 0.25 + 0.75 g²; the third step left it alone
    torch.testing.assert_close(state.square_avg, 0.25 + 0.75 * grad * grad)


def test_rmsprop_sgld_uses_the_same_preconditioner_for_drift_and_noise():
    w_star = torch.zeros(4, dtype=torch.float64)
    theta = torch.ones(2, 4, dtype=torch.float64)
    grad = torch.tensor([[1.0, 2.0, 3.0, 4.0]] * 2, dtype=torch.float64)
    noise = torch.ones(2, 4, dtype=torch.float64)
    h = hyper(lr=0.01, nbeta=1.0, gamma=0.0)
    new, _ = rmsprop_sgld.step(
        rmsprop_sgld.init(theta),
        torch.zeros(2, dtype=torch.float64),
        grad,
        noise,
        h,
        Context(w_star, None, None),
        alpha=0.9,
        eps=0.1,
    )
    # v starts at 1: v1 = 0.9 + 0.1 g², bias-corrected by 1 - 0.9 (Hitchcock & Hoogland's Algorithm 3)
    G = 1 / (((0.9 + 0.1 * grad * grad) / 0.1).sqrt() + 0.1)
    expected = theta - 0.005 * G * grad + (0.01 * G).sqrt() * noise
    torch.testing.assert_close(new.theta, expected)


def test_sgnht_momentum_and_thermostat_matter():
    w_star = torch.zeros(3, dtype=torch.float64)
    state = sgnht.init(torch.zeros(2, 3, dtype=torch.float64), diffusion=1.0)
    grad = torch.ones(2, 3, dtype=torch.float64)
    h = hyper(lr=0.04, nbeta=1.0, gamma=0.0)  # step h = 0.2
    zero_noise = torch.zeros(2, 3, dtype=torch.float64)
    s1, _ = sgnht.step(
        state, torch.zeros(2, dtype=torch.float64), grad, zero_noise, h, Context(w_star, None, None)
    )
    torch.testing.assert_close(s1.momentum, -0.2 * grad)
    torch.testing.assert_close(s1.theta, 0.2 * s1.momentum)
    torch.testing.assert_close(s1.thermostat, torch.full((2,), 1.0 + 0.2 * (0.04 - 1.0), dtype=torch.float64))
    # with zero gradient the momentum keeps moving the chain (it is not SGLD)
    s2, _ = sgnht.step(
        s1,
        torch.zeros(2, dtype=torch.float64),
        torch.zeros(2, 3, dtype=torch.float64),
        zero_noise,
        h,
        Context(w_star, None, None),
    )
    assert not torch.allclose(s2.theta, s1.theta)


def test_sampler_builders_validate_options():
    with pytest.raises(ValueError, match="alpha"):
        get_sampler("rmsprop_sgld", alpha=1.5)
    with pytest.raises(ValueError, match="diffusion"):
        get_sampler("sgnht", diffusion=0.0)


class Quadratic(nn.Module):
    """Per-sample loss a·|w|² (a regular model with w* = 0, λ = d/2)."""

    def __init__(self, d: int, a: float = 1.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d))
        self.a = a

    def forward(self, x):
        return (self.a * (self.w**2).sum()).expand(x.shape[0])


def mean_criterion(out, y):
    return out.mean()


def test_vmapped_chains_equal_a_plain_loop_over_chains():
    """The batched run equals an independent, un-vmapped SGLD loop written out here for each chain."""
    from torch.func import functional_call, grad_and_value

    from lambdahat.rng import ChainNoise

    data = TensorDataset(torch.randn(64, 4), torch.randint(0, 3, (64,)))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    lr, gamma, steps = 1e-3, 5.0, 8
    est = LLCEstimator(
        draws=steps, chains=3, burnin_steps=0, learning_rate=lr, localization=gamma, nbeta=20.0
    )
    batched = est.run(model, DataLoader(data, batch_size=16), seed=11, compile=False, show_progress=False)

    names = [n for n, _ in model.named_parameters()]
    w_star = {n: p.detach().clone() for n, p in model.named_parameters()}
    dim = sum(p.numel() for p in w_star.values())

    def loss_fn(params, x, y):
        return torch.nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    for chain in range(3):
        noise = ChainNoise(11, [chain], dim, torch.device("cpu"), torch.float32)
        params = {n: p.clone() for n, p in w_star.items()}
        batches = [b for _ in range(2) for b in DataLoader(data, batch_size=16)]
        for step in range(steps):
            x, y = batches[step]
            grads, loss = grad_and_value(loss_fn)(params, x, y)
            assert loss.item() == pytest.approx(batched.loss_trace[chain, step].item(), rel=1e-5, abs=1e-6)
            xi = noise.at(step)[0].split([p.numel() for p in params.values()])
            params = {
                n: params[n]
                - 0.5 * lr * (20.0 * grads[n] + gamma * (params[n] - w_star[n]))
                + lr**0.5 * xi[i].view_as(params[n])
                for i, n in enumerate(names)
            }


# --- distributional tests -------------------------------------------------------------------------------------
# Target: p(w) ∝ exp(-nβ a|w|² - γ/2 |w|²), d = 4, nβ = 100, a = 1, γ = 1, κ = 2nβa + γ = 201.
# E_p[nβ K] = (d/2)(2nβa/κ). SGLD's exact stationary value adds the factor 1/(1 - εκ/4) (REFERENCE.md §2).
# Tolerance: 4 Monte Carlo standard errors (from the spread of the per-chain means of 64 independent chains), plus,
# for the samplers whose finite-step bias has no closed form, 2 % (their O(εκ) = 2 % discretization allowance).
D, NBETA, A, GAMMA, EPS = 4, 100.0, 1.0, 1.0, 1e-4
KAPPA = 2 * NBETA * A + GAMMA


def gaussian_run(sampler, **options):
    data = TensorDataset(torch.zeros(50, 1), torch.zeros(50))
    est = LLCEstimator(
        draws=3000,
        chains=64,
        burnin_steps=500,
        learning_rate=EPS,
        localization=GAMMA,
        nbeta=NBETA,
        sampler=sampler,
        sampler_options=options,
        dtype=torch.float64,
    )
    return est.run(
        Quadratic(D, A),
        DataLoader(data, batch_size=50),
        criterion_fn=mean_criterion,
        seed=5,
        compile=False,
        show_progress=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize("sampler, exact_bias", [("sgld", True), ("rmsprop_sgld", False), ("sgnht", False)])
def test_samplers_reach_the_gaussian_posterior(sampler, exact_bias):
    result = gaussian_run(sampler)
    per_chain = result.llcs.double()  # nβ (E K - 0) per chain
    se = per_chain.std().item() / math.sqrt(len(per_chain))
    target = (D / 2) * (2 * NBETA * A / KAPPA)
    if exact_bias:
        target /= 1 - EPS * KAPPA / 4
        tol = 4 * se
    else:
        tol = 4 * se + 0.02 * target
    assert abs(per_chain.mean().item() - target) < tol, (per_chain.mean().item(), target, se)
    assert not result.diverged.any()


@pytest.mark.slow
def test_sgld_mala_acceptance_is_high_for_a_small_step():
    result = gaussian_run("sgld")
    assert result.mala_acceptance > 0.95
