"""Susceptibilities on a model of independent blocks, against the exact Gaussian answer; PCA and the figure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lambdahat import LLCConfig
from lambdahat.susceptibility import Susceptibilities, susceptibilities

QUIET = dict(show_progress=False, warn=False)
NBETA, GAMMA, EPS = 40.0, 1.0, 0.01
CFG = LLCConfig(
    draws=100,
    chains=128,
    burnin_steps=60,
    steps_bw_draws=4,
    learning_rate=EPS,
    localization=GAMMA,
    nbeta=NBETA,
    dtype="float64",
)
A = torch.tensor([[True, True, False, False]])
B = ~A


def half_squared_error(model, batch):
    x, y = batch
    return 0.5 * (model(x).squeeze(-1) - y) ** 2


def two_blocks(n=40, seed=0):
    """Linear regression on 4 inputs where half the samples use only inputs 0-1 (block A), half only 2-3 (block B):
    the Hessian is block-diagonal, so the blocks are independent under the posterior."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    x[: n // 2, 2:] = 0
    x[n // 2 :, :2] = 0
    y = x @ torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=torch.float64) + torch.randn(
        n, generator=g, dtype=torch.float64
    )
    model = nn.Linear(4, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y.unsqueeze(1)).solution.T)
    # a training sample on block A, and new points on A and on B fitted exactly at w* (zero residual)
    probes = torch.cat([x[:1], torch.tensor([[1.5, -1.5, 0, 0], [0, 0, 1.5, 1.0]], dtype=torch.float64)])
    with torch.no_grad():
        probe_y = torch.cat([y[:1], model(probes[1:]).squeeze(1)])
    return x, y, model, probes, probe_y


def exact_chi(x, y, w_star, probes, probe_y, mask, relative):
    """−Cov(L, ℓ_p) (+ Var L) under SGLD's exact Gaussian stationary law on the sampled coordinates (Isserlis)."""
    x, y, w, xp, yp = (t.numpy() for t in (x, y, w_star, probes, probe_y))
    keep = mask.numpy()[0]
    n = len(x)
    xc = x[:, keep]
    precision = (NBETA / n) * xc.T @ xc + GAMMA * np.eye(keep.sum())
    p, v = np.linalg.eigh(precision)
    sigma = (v / (p * (1 - EPS * p / 4))) @ v.T  # discrete Lyapunov solution: exact for SGLD at step ε
    everything = np.concatenate([x, xp])
    r = np.concatenate([y, yp]) - everything @ w  # the mean is w* (least squares: zero gradient)
    s = everything[:, keep] @ sigma @ everything[:, keep].T
    cov = np.outer(r, r) * s + 0.5 * s**2
    cov_task_probe = cov[:n, n:].mean(0)
    var_task = cov[:n, :n].mean()
    return -cov_task_probe + (var_task if relative else 0.0)


@pytest.fixture(scope="module")
def blocks():
    x, y, model, probes, probe_y = two_blocks()
    chi = susceptibilities(
        model,
        DataLoader(TensorDataset(x, y), batch_size=len(x)),
        CFG,
        components={"A": {"weight": A}, "B": {"weight": B}},
        probes=[(probes, probe_y)],
        loss_fn=half_squared_error,
        compile=False,
        seed=0,
        **QUIET,
    )
    return chi, (x, y, model.weight.detach()[0], probes, probe_y)


@pytest.mark.slow
def test_independent_blocks_match_the_exact_susceptibilities(blocks):
    chi, data = blocks
    assert chi.components == ["A", "B", "full"] and chi.values.shape == (3, 3)
    assert all(r.settings["dim"] == d for r, d in zip(chi.results.values(), (2, 2, 4), strict=True))
    masks = {"A": A, "B": B, "full": torch.ones_like(A)}
    for row, name in enumerate(chi.components):
        exact = exact_chi(*data, masks[name], relative=True)
        z = (chi.values[row] - exact) / chi.stderr[row]
        assert np.abs(z).max() < 5, (name, chi.values[row], exact, chi.stderr[row])
    # relative form: a probe that does not depend on the sampled block gets Var(L), the same for every such probe
    a_only, b_only = [0, 1], [2]
    np.testing.assert_allclose(chi.values[1, a_only], chi.values[1, a_only[0]], rtol=1e-9)
    np.testing.assert_allclose(
        chi.values[0, b_only], chi.results["A"].losses.double().var().item(), rtol=0.05
    )


@pytest.mark.slow
def test_a_probe_on_block_a_has_zero_susceptibility_to_b_and_the_theoretical_sign_on_a(blocks):
    chi_rel, data = blocks
    x, y, model, probes, probe_y = two_blocks()
    raw = susceptibilities(
        model,
        DataLoader(TensorDataset(x, y), batch_size=len(x)),
        CFG,
        components={"A": {"weight": A}, "B": {"weight": B}},
        probes=[(probes, probe_y)],
        full=False,
        relative=False,
        loss_fn=half_squared_error,
        compile=False,
        seed=0,
        **QUIET,
    )
    # zero to the other block: the probe's loss is constant along the chain restricted to B (exactly 0, so well
    # within the Monte Carlo error)
    assert np.abs(raw.values[1, :2]).max() <= 1e-9 and np.abs(raw.values[0, 2]) <= 1e-9
    # nonzero to its own block, with the sign theory gives: at a least-squares w*, Σ_i r_i x_i = 0, so
    # Cov(L, ℓ_p) = (1/2n) Σ_i s_ip² > 0 and χ = −Cov(L, ℓ_p) < 0
    for row, mask, cols in ((0, A, [0, 1]), (1, B, [2])):
        exact = exact_chi(*data, mask, relative=False)[cols]
        assert np.all(exact < 0)
        assert np.all(raw.values[row, cols] < -5 * raw.stderr[row, cols])
        assert np.abs((raw.values[row, cols] - exact) / raw.stderr[row, cols]).max() < 5
    # the two forms differ by Var(L) of each row, the same for every probe
    offset = chi_rel.values[:2] - raw.values
    np.testing.assert_allclose(offset, offset[:, :1].repeat(3, 1), rtol=1e-8, atol=1e-12)


def test_pca_and_figure():
    rng = np.random.default_rng(0)
    direction = rng.normal(size=(4, 1))
    values = direction @ rng.normal(size=(1, 30)) + 0.01 * rng.normal(size=(4, 30))
    import pandas as pd

    chi = Susceptibilities(
        values, np.zeros_like(values), list("abcd"), pd.Index(range(30), name="sample"), True, "pooled"
    )
    pca = chi.pca(2)
    assert pca["scores"].shape == (30, 2) and pca["loadings"].shape == (4, 2)
    assert pca["explained"][0] > 0.99  # one direction carries the structure
    loading = pca["loadings"]["PC1"].to_numpy()
    assert abs(abs(loading @ direction[:, 0]) / np.linalg.norm(direction) - 1) < 1e-3
    assert chi.to_frame().shape == (4, 30)
    fig = chi.plot(color=np.arange(30))
    assert len(fig.axes) >= 2


def test_errors_say_what_to_pass():
    x, y, model, probes, probe_y = two_blocks()
    loader = DataLoader(TensorDataset(x, y), batch_size=len(x))
    with pytest.raises(ValueError, match="non-empty"):
        susceptibilities(model, loader, CFG, components={}, probes=[(probes, probe_y)])
    with pytest.raises(ValueError, match="unrestricted run's row"):
        susceptibilities(model, loader, CFG, components={"full": "weight"}, probes=[(probes, probe_y)])
    with pytest.raises(ValueError, match="fixed order"):
        sampler = torch.utils.data.WeightedRandomSampler([1.0] * 3, 3)
        susceptibilities(
            model,
            loader,
            CFG,
            components={"w": "weight"},
            probes=DataLoader(TensorDataset(probes, probe_y), sampler=sampler),
        )
