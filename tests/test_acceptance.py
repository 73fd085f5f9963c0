"""The MALA acceptance says what it is: exact from full-data potentials, or the gradient-based estimate."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lambdahat import LLCConfig, prepare, sample
from lambdahat.samplers.base import exact_log_accept

QUIET = dict(show_progress=False, warn=False)


def test_exact_log_accept_is_the_metropolis_hastings_ratio():
    """Against the Gaussian proposal densities written out with torch.distributions."""
    g = torch.Generator().manual_seed(0)
    w, w2 = (
        torch.randn(3, 5, generator=g, dtype=torch.float64),
        torch.randn(3, 5, generator=g, dtype=torch.float64),
    )
    d, d2 = (
        torch.randn(3, 5, generator=g, dtype=torch.float64),
        torch.randn(3, 5, generator=g, dtype=torch.float64),
    )
    u, u2 = torch.randn(3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    G, G2 = (
        torch.rand(3, 5, generator=g, dtype=torch.float64) + 0.5,
        torch.rand(3, 5, generator=g, dtype=torch.float64) + 0.5,
    )
    eps = torch.tensor(0.01, dtype=torch.float64)
    normal = torch.distributions.Normal
    log_q_fwd = normal(w - eps / 2 * G * d, (eps * G).sqrt()).log_prob(w2).sum(-1)
    log_q_bwd = normal(w2 - eps / 2 * G2 * d2, (eps * G2).sqrt()).log_prob(w).sum(-1)
    expected = torch.clamp(u - u2 + log_q_bwd - log_q_fwd, max=0.0)
    torch.testing.assert_close(exact_log_accept(w, w2, d, d2, u, u2, eps, G, G2), expected)


class Quartic(nn.Module):
    """Output w1² w2 ... a non-quadratic potential L(w) = mean (w·x)⁴ around w* = 0."""

    def __init__(self, d=3):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return (x @ self.w) ** 2


class Plain(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def _runs(model, x, y, criterion, cfg):
    exact = prepare(
        model, DataLoader(TensorDataset(x, y), batch_size=len(x)), cfg, criterion_fn=criterion, compile=False
    )
    estimate = prepare(
        model, DataLoader(Plain(x, y), batch_size=len(x)), cfg, criterion_fn=criterion, compile=False
    )
    assert exact.full_batch and not estimate.full_batch
    return sample(exact, cfg, seed=0, **QUIET), sample(estimate, cfg, seed=0, **QUIET)


def test_on_a_quadratic_the_exact_acceptance_equals_the_gradient_estimate():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-1.0], [0.5]])
    model = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -1.0, 0.5]]))
    cfg = LLCConfig(
        draws=50, chains=4, burnin_steps=0, learning_rate=2e-3, localization=5.0, nbeta=50.0, dtype="float64"
    )
    exact, estimate = _runs(model, x.double(), y.double(), F.mse_loss, cfg)
    assert exact.settings["acceptance_kind"] == "exact"
    assert estimate.settings["acceptance_kind"] == "gradient estimate"
    assert torch.equal(exact.losses, estimate.losses)  # the same chains
    # the trapezoid rule is exact on quadratics: only rounding separates the two
    torch.testing.assert_close(
        exact.mala_acceptance_trace[:, 1:], estimate.mala_acceptance_trace[:, 1:], rtol=1e-6, atol=1e-8
    )
    assert exact.mala_acceptance < 1.0


def test_on_a_quartic_they_differ_and_the_exact_one_is_reported():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 3, generator=g)
    y = torch.zeros(64)
    cfg = LLCConfig(
        draws=300,
        chains=4,
        burnin_steps=50,
        learning_rate=3e-3,
        localization=1.0,
        nbeta=100.0,
        dtype="float64",
    )
    criterion = lambda out, t: (out.squeeze(-1) - t).pow(2).mean()  # noqa: E731  (L = mean (w·x)^4)
    exact, estimate = _runs(Quartic(), x.double(), y.double(), criterion, cfg)
    assert math.isfinite(exact.mala_acceptance) and math.isfinite(estimate.mala_acceptance)
    gap = (exact.mala_acceptance_trace[:, 1:] - estimate.mala_acceptance_trace[:, 1:]).abs().max()
    assert gap > 1e-3


def test_sgnht_says_its_acceptance_is_not_available():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 3, generator=g)
    y = x.sum(1, keepdim=True)
    cfg = LLCConfig(draws=20, chains=2, burnin_steps=5, learning_rate=1e-4, nbeta=10.0, sampler="sgnht")
    result = sample(
        prepare(
            nn.Linear(3, 1),
            DataLoader(TensorDataset(x, y), batch_size=64),
            cfg,
            criterion_fn=F.mse_loss,
            compile=False,
        ),
        cfg,
        seed=0,
        **QUIET,
    )
    assert result.settings["acceptance_kind"] == "not available"
    assert math.isnan(result.mala_acceptance)


def test_configurational_temperature_matches_the_sgld_stationary_variance_on_a_gaussian():
    """Full-batch linear regression: U is quadratic with curvatures κ_i = nβ·2·eig(XᵀX/n) + γ, and SGLD's stationary
    variance along each is (1/κ_i)/(1 − εκ_i/4), so T = mean_i 1/(1 − εκ_i/4) exactly. Tolerance: 4 standard errors
    of the across-chain mean (16 chains)."""
    g = torch.Generator().manual_seed(4)
    n, d = 256, 4
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.tensor(
        [1.0, 0.5, 0.3, 0.2], dtype=torch.float64
    )
    y = x @ torch.ones(d, 1, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(1.0)
    nbeta, gamma = 20.0, 2.0
    kappa = nbeta * 2 * torch.linalg.eigvalsh(x.T @ x / n) + gamma
    lr = 1.6 / float(kappa.max())  # εκ_max = 1.6: a 67 % hotter stiffest direction
    expected = float((1 / (1 - lr * kappa / 4)).mean())
    cfg = LLCConfig(
        draws=1500,
        chains=16,
        burnin_steps=300,
        learning_rate=lr,
        localization=gamma,
        nbeta=nbeta,
        dtype="float64",
    )
    result = sample(
        prepare(
            model, DataLoader(TensorDataset(x, y), batch_size=n), cfg, criterion_fn=F.mse_loss, compile=False
        ),
        cfg,
        seed=0,
        **QUIET,
    )
    assert expected > 1.15  # the step bias is large enough to be seen
    assert abs(result.temperature - expected) < 4 * result.temperature_stderr
    assert result.status == "untrusted" and any("temperature" in r for r in result.trust_reasons)
