"""BIF and loss kernel: the exact Gaussian covariance of per-sample losses, tiling, pooling, tokens, memory maps."""

from __future__ import annotations

import doctest

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lambdahat import LLCConfig
from lambdahat.influence import bif, loss_gain, loss_kernel

QUIET = dict(show_progress=False, warn=False)


def half_squared_error(model, batch):
    x, y = batch
    return 0.5 * (model(x).squeeze(-1) - y) ** 2


def linear_gaussian(n=40, d=3, seed=0):
    """Least-squares linear regression in float64: the localized tempered posterior is exactly Gaussian."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64)[:d] + torch.randn(
        n, generator=g, dtype=torch.float64
    )
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y.unsqueeze(1)).solution.T)
    return x, y, model


def exact_loss_covariance(x, y, w_star, nbeta, gamma, eps):
    """Cov(ℓ_i, ℓ_j) = r_i r_j s_ij + ½ s_ij² (Isserlis) under SGLD's exact stationary law at step ε.

    The full-batch SGLD chain on the quadratic potential with precision P = (nβ/n) XᵀX + γI is a linear Gaussian
    recursion; its stationary covariance solves (I − εP/2) Σ (I − εP/2) + εI = Σ, i.e. 1/(p (1 − εp/4)) in the
    eigenbasis of P, and its mean is the mode μ = w* − P⁻¹ nβ ∇L_n(w*).
    """
    x, y, w_star = x.numpy(), y.numpy(), w_star.numpy()
    n, d = x.shape
    precision = (nbeta / n) * x.T @ x + gamma * np.eye(d)
    p, v = np.linalg.eigh(precision)
    sigma = (v / (p * (1 - eps * p / 4))) @ v.T
    grad = -(x.T @ (y - x @ w_star)) / n
    mu = w_star - np.linalg.solve(precision, nbeta * grad)
    r = y - x @ mu
    s = x @ sigma @ x.T
    return np.outer(r, r) * s + 0.5 * s**2, 0.5 * (r**2 + np.diag(s))


NBETA, GAMMA, EPS = 40.0, 1.0, 0.01
GAUSS_CFG = LLCConfig(
    draws=200,
    chains=64,
    burnin_steps=100,
    steps_bw_draws=5,
    learning_rate=EPS,
    localization=GAMMA,
    nbeta=NBETA,
    dtype="float64",
)


@pytest.fixture(scope="module")
def gaussian_run():
    x, y, model = linear_gaussian()
    kernel = bif(
        model,
        DataLoader(TensorDataset(x, y), batch_size=len(x)),
        GAUSS_CFG,
        kind="covariance",
        loss_fn=half_squared_error,
        compile=False,
        seed=0,
        **QUIET,
    )
    exact, mean = exact_loss_covariance(x, y, model.weight.detach()[0], NBETA, GAMMA, EPS)
    each = loss_kernel(kernel.result, kind="covariance", pooling="each").values
    stderr = each.std(0, ddof=1) / np.sqrt(each.shape[0])  # across-chain spread of per-chain covariances
    return kernel, exact, mean, stderr


@pytest.mark.slow
def test_loss_covariance_matches_the_exact_gaussian_answer(gaussian_run):
    kernel, exact, _, stderr = gaussian_run
    assert kernel.values.shape == (40, 40) and list(kernel.train_index) == list(range(40))
    z = (kernel.values - exact) / stderr
    upper = z[np.triu_indices(40)]
    # 820 distinct entries, each a t statistic with 63 degrees of freedom: |z| > 5 has probability ~5e-6 each
    assert np.abs(upper).max() < 5, np.abs(upper).max()
    # and the standard errors are honest, not loose: the mean z² is about 1
    # (the entries share their fluctuations, so this mean varies more than 820 independent ones would: 0.96-1.50
    # over seeds 1-4)
    assert 0.3 < np.mean(upper**2) < 2.5, np.mean(upper**2)
    # the covariances are resolved: most entries are many standard errors from zero
    assert np.median(np.abs(exact) / stderr) > 10


@pytest.mark.slow
def test_bif_ranking_matches_the_exact_ranking(gaussian_run):
    kernel, exact, _, stderr = gaussian_run
    bif_kernel = loss_kernel(kernel.result, query=np.arange(5), kind="bif")
    exact_bif = -exact[:5]
    for j in range(5):
        est = bif_kernel.values[j]
        # every pair of training samples whose exact BIF differ by more than 5 joint standard errors is ordered right
        gap = exact_bif[j][:, None] - exact_bif[j][None, :]
        se = np.hypot(stderr[j][:, None], stderr[j][None, :])
        resolved = np.abs(gap) > 5 * se
        assert resolved.sum() > 0.3 * resolved.size  # most pairs are resolved
        assert np.all(np.sign(est[:, None] - est[None, :])[resolved] == np.sign(gap)[resolved])
        top = bif_kernel.top_k(j, k=3, order="negative")
        assert list(top["rank"]) == [1, 2, 3]
        assert list(top["sample"]) == list(np.argsort(est)[:3])
        exact_top = np.argsort(exact_bif[j])[:3]
        if np.all(np.abs(np.diff(np.sort(exact_bif[j])[:4])) > 5 * stderr[j].max()):
            assert list(top["sample"]) == list(exact_top)


@pytest.mark.slow
def test_loss_gain_matches_the_exact_mean_loss(gaussian_run):
    kernel, _, mean, _ = gaussian_run
    gain = kernel.loss_gain()
    trace = kernel.result.per_sample_losses.double()
    per_chain = trace.mean(1).numpy()
    x, y, model = linear_gaussian()
    with torch.no_grad():
        ell_star = half_squared_error(model, (x, y)).numpy()
    se = per_chain.std(0, ddof=1) / np.sqrt(per_chain.shape[0])
    assert np.abs((gain.to_numpy() - (mean - ell_star)) / se).max() < 5
    assert (gain > 0).all()  # under the posterior every loss rises on average here (the mean is at w*)
    assert gain.index.name == "sample"


def synthetic_trace(chains=3, draws=40, samples=11, seed=0, offsets=0.0):
    rng = np.random.default_rng(seed)
    common = rng.normal(size=(chains, draws, 1))
    trace = common * rng.normal(size=samples) + rng.normal(size=(chains, draws, samples))
    return (trace + offsets * rng.normal(size=(chains, 1, samples))).astype(np.float32)


@pytest.mark.parametrize("kind", ["bif", "covariance", "correlation"])
@pytest.mark.parametrize("pooling", ["pooled", "within", "each"])
def test_blocked_equals_unblocked(kind, pooling):
    trace = synthetic_trace()
    whole = loss_kernel(trace, kind=kind, pooling=pooling, block_size=1000).values
    for query, train in ((None, None), ([3, 1, 7], slice(2, 9)), (np.arange(11), np.arange(11))):
        full = loss_kernel(trace, query, train, kind=kind, pooling=pooling, block_size=1000).values
        tiled = loss_kernel(trace, query, train, kind=kind, pooling=pooling, block_size=2).values
        np.testing.assert_allclose(tiled, full, rtol=1e-12, atol=1e-14)
    q, t = np.array([3, 1, 7]), np.arange(11)[2:9]
    np.testing.assert_allclose(
        loss_kernel(trace, q, t, kind=kind, pooling=pooling, block_size=2).values, whole[..., q[:, None], t]
    )


def test_pooling_options():
    trace = synthetic_trace(offsets=3.0)  # chains sit at different offsets: a between-chain effect
    x = trace.astype(np.float64)
    pooled = loss_kernel(trace, kind="covariance", pooling="pooled").values
    np.testing.assert_allclose(pooled, np.cov(x.reshape(-1, x.shape[2]), rowvar=False), rtol=1e-10)
    each = loss_kernel(trace, kind="covariance", pooling="each").values
    np.testing.assert_allclose(each, np.stack([np.cov(c, rowvar=False) for c in x]), rtol=1e-10)
    within = loss_kernel(trace, kind="covariance", pooling="within").values
    np.testing.assert_allclose(within, each.mean(0), rtol=1e-10)
    # within-chain centring is blind to the offsets; pooling counts them as variance
    no_offsets = loss_kernel(synthetic_trace(offsets=0.0), kind="covariance", pooling="within").values
    np.testing.assert_allclose(within, no_offsets, rtol=1e-5, atol=1e-6)
    assert np.all(np.diag(pooled) > np.diag(within))
    corr = loss_kernel(trace, kind="correlation", pooling="within").values
    np.testing.assert_allclose(corr, within / np.sqrt(np.outer(np.diag(within), np.diag(within))), rtol=1e-10)
    np.testing.assert_allclose(loss_kernel(trace, kind="bif").values, -pooled)


def test_per_token_columns_drop_tokens_that_do_not_count(tmp_path):
    trace = synthetic_trace(samples=12).reshape(3, 40, 4, 3)
    trace[:, :, 1, 2] = np.nan
    trace[:, :, 3, 0] = np.nan
    path = tmp_path / "tokens.npy"
    np.save(path, trace)
    kernel = loss_kernel(path, query=[1], kind="covariance", block_size=4)
    assert isinstance(kernel.train_index, pd.MultiIndex) and len(kernel.train_index) == 10
    assert list(kernel.query_index) == [(1, 0), (1, 1)]
    flat = trace.reshape(120, 12).astype(np.float64)
    keep = ~np.isnan(flat[0])
    np.testing.assert_allclose(kernel.values, np.cov(flat[:, keep], rowvar=False)[[3, 4]], rtol=1e-10)
    long = kernel.to_long()
    assert list(long.columns) == ["query_sample", "query_token", "train_sample", "train_token", "value"]
    assert len(long) == 20


@pytest.mark.parametrize("pooling", ["pooled", "within", "each"])
def test_a_diverged_chain_is_left_out_with_a_warning(pooling):
    """One chain that diverged (NaN from its fifth draw) no longer makes every entry NaN: it is left out, as for
    λ̂, and the kernel equals that of the other chains."""
    trace = synthetic_trace()
    bad = trace.copy()
    bad[1, 5:] = np.nan
    with pytest.warns(RuntimeWarning, match=r"chains \[1\] diverged"):
        kernel = loss_kernel(bad, kind="covariance", pooling=pooling).values
    expected = loss_kernel(trace[[0, 2]], kind="covariance", pooling=pooling).values
    np.testing.assert_allclose(kernel, expected, rtol=1e-12)
    bad[:] = np.inf
    with pytest.raises(ValueError, match="every chain diverged"):
        loss_kernel(bad)


def test_token_columns_come_from_every_chain_not_the_first():
    """Chain 0 diverged before its first draw (NaN everywhere): the tokens that count are read from the others."""
    trace = synthetic_trace(samples=12).reshape(3, 40, 4, 3)
    trace[:, :, 1, 2] = np.nan
    trace[0] = np.nan
    with pytest.warns(RuntimeWarning, match=r"chains \[0\] diverged"):
        kernel = loss_kernel(trace, kind="covariance")
    assert len(kernel.train_index) == 11
    assert np.isfinite(kernel.values).all()


def test_errors_say_what_to_pass():
    with pytest.raises(ValueError, match="kind must be one of"):
        loss_kernel(synthetic_trace(), kind="influence")
    with pytest.raises(ValueError, match="pooling must be one of"):
        loss_kernel(synthetic_trace(), pooling="chains")
    with pytest.raises(ValueError, match=r"\[chains, draws, samples\]"):
        loss_kernel(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="at least 2 draws"):
        loss_kernel(synthetic_trace(draws=1), pooling="within")
    with pytest.raises(ValueError, match="sample indices"):
        loss_kernel(synthetic_trace(), query=[11])


@pytest.mark.slow
def test_bif_streams_to_disk_and_reloads_lazily(tmp_path):
    """Through prepare/sample: a memory-mapped trace and a memory-mapped output give the in-memory matrix."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 4, generator=g)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    loader = DataLoader(TensorDataset(x, y), batch_size=10, shuffle=True)
    query = DataLoader(TensorDataset(x[:4] + 0.1, y[:4]), batch_size=3)
    cfg = LLCConfig(draws=20, chains=2, burnin_steps=5, learning_rate=1e-3, localization=10.0, nbeta=20.0)
    common = dict(criterion_fn=F.cross_entropy, query=query, compile=False, seed=3, **QUIET)
    in_memory = bif(model, loader, cfg, **common)
    path, out = tmp_path / "trace.npy", tmp_path / "kernel.npy"
    on_disk = bif(model, loader, cfg, per_sample_path=path, out=out, block_size=5, **common)
    assert isinstance(np.load(path, mmap_mode="r"), np.memmap)
    assert in_memory.values.shape == (4, 30)
    assert list(in_memory.query_index) == list(range(4)) and list(in_memory.train_index) == list(range(30))
    np.testing.assert_allclose(on_disk.values, in_memory.values, rtol=1e-12)
    np.testing.assert_allclose(np.load(out), in_memory.values, rtol=1e-12)
    # the training columns of the trace are the dataset in order, whatever the sampler's shuffling
    at_w_star = F.cross_entropy(model(x), y, reduction="none").detach().numpy()
    np.testing.assert_allclose(
        loss_gain(in_memory.result, in_memory.problem).to_numpy()[4:], in_memory.loss_gain().to_numpy()
    )
    np.testing.assert_allclose(
        in_memory.loss_gain().to_numpy() + at_w_star,
        in_memory.result.per_sample_losses[:, :, 4:].double().mean((0, 1)).numpy(),
        rtol=1e-5,
    )


class TokenModel(nn.Module):
    def __init__(self, vocab=7, width=5):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.out = nn.Linear(width, vocab)

    def forward(self, ids):
        return self.out(torch.tanh(self.embed(ids)))


def per_token_loss(model, batch):
    ids, labels = batch
    losses = F.cross_entropy(model(ids).transpose(1, 2), labels.clamp(min=0), reduction="none")
    return losses, labels != -100


def test_bif_per_token_for_sequence_models():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 7, (8, 5), generator=g)
    labels = torch.where(
        torch.arange(5) < torch.tensor([[3], [5], [4], [5], [2], [5], [5], [4]]), ids.roll(1, 1), -100
    )
    batches = [(ids[i : i + 4], labels[i : i + 4]) for i in (0, 4)]
    cfg = LLCConfig(draws=10, chains=2, burnin_steps=5, learning_rate=1e-3, localization=10.0, nbeta=20.0)
    kernel = bif(
        TokenModel(), batches, cfg, query=[batches[0]], loss_fn=per_token_loss, compile=False, seed=0, **QUIET
    )
    counted = int((labels != -100).sum())
    assert kernel.values.shape == (int((labels[:4] != -100).sum()), counted)
    assert kernel.train_index.names == ["sample", "token"]
    assert set(kernel.train_index.get_level_values("sample")) == set(range(8))
    assert np.isfinite(kernel.values).all()
    assert len(kernel.top_k((0, 1), k=4)) == 4
    gain = kernel.loss_gain()
    assert gain.index.equals(kernel.train_index) and np.isfinite(gain).all()


def test_docstring_examples_run():
    import lambdahat.influence

    result = doctest.testmod(lambdahat.influence, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
