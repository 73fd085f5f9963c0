"""Susceptibilities on a model of independent blocks, against the exact Gaussian answer; PCA and the figure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lambdahat import LLCConfig
from lambdahat.susceptibility import Susceptibilities, susceptibilities, susceptibility_row

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


SMALL = CFG.replace(draws=20, chains=4, burnin_steps=10, steps_bw_draws=2)


def _small_run(x, y, model, probes, probe_y, **kw):
    return susceptibilities(
        model,
        DataLoader(TensorDataset(x, y), batch_size=len(x)),
        SMALL,
        components={"A": {"weight": A}, "B": {"weight": B}},
        probes=[(probes, probe_y)],
        loss_fn=half_squared_error,
        compile=False,
        seed=3,
        **QUIET,
        **kw,
    )


def test_rows_go_through_the_sweep_engine_and_a_rerun_skips_finished_rows(tmp_path, monkeypatch):
    from lambdahat import estimator

    data = two_blocks()
    memory = _small_run(*data)
    stored = _small_run(*data, out_dir=tmp_path)
    assert (tmp_path / "results.csv").is_file() and (tmp_path / "sweep.json").is_file()
    assert not (stored.table["status"] == "failed").any() and list(stored.table.index) == ["A", "B", "full"]
    np.testing.assert_array_equal(stored.values, memory.values)
    np.testing.assert_array_equal(stored.stderr, memory.stderr)
    calls = []
    real = estimator.sample
    monkeypatch.setattr(estimator, "sample", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = _small_run(*data, out_dir=tmp_path)
    assert calls == []  # every row was finished: nothing runs
    np.testing.assert_array_equal(again.values, memory.values)  # exact: JSON keeps every bit of a float
    np.testing.assert_array_equal(again.stderr, memory.stderr)
    assert again.components == ["A", "B", "full"] and list(again.probe_index) == list(memory.probe_index)
    assert again.probe_index.name == "sample" and again.results == {}


def test_a_failing_row_is_recorded_and_a_rerun_runs_only_it(tmp_path, monkeypatch):
    from lambdahat import estimator

    data = two_blocks()
    real = estimator.sample
    calls = []

    def flaky(problem, *a, **k):
        calls.append(problem.dim)
        if problem.dim == 4:  # the full run
            raise RuntimeError("boom")
        return real(problem, *a, **k)

    monkeypatch.setattr(estimator, "sample", flaky)
    with pytest.warns(RuntimeWarning, match="1 of 3 point"):
        chi = _small_run(*data, out_dir=tmp_path, max_retries=1)
    assert chi.table.loc["full", "status"] == "failed" and "boom" in chi.table.loc["full", "error"]
    assert np.isnan(chi.values[2]).all() and np.isfinite(chi.values[:2]).all()
    assert calls == [2, 2, 4, 4]  # the failing row was tried twice (max_retries=1)
    calls.clear()
    monkeypatch.setattr(
        estimator, "sample", lambda problem, *a, **k: calls.append(problem.dim) or real(problem, *a, **k)
    )
    fixed = _small_run(*data, out_dir=tmp_path)
    assert calls == [4] and np.isfinite(fixed.values).all()
    np.testing.assert_array_equal(fixed.values[:2], chi.values[:2])


@pytest.mark.slow
@pytest.mark.ray
def test_rows_run_as_ray_tasks_equal_the_local_run_and_resume_locally(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    from lambdahat import estimator

    data = two_blocks()
    local = _small_run(*data)
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = _small_run(*data, executor="ray", ray_resources={"num_cpus": 1}, out_dir=tmp_path)
    finally:
        ray.shutdown()
    np.testing.assert_array_equal(remote.values, local.values)
    assert remote.results == {}  # the runs stayed in the workers
    calls = []
    monkeypatch.setattr(estimator, "sample", lambda *a, **k: calls.append(1))
    again = _small_run(*data, out_dir=tmp_path)  # nothing left to run
    assert calls == [] and np.array_equal(again.values, local.values)


def test_a_diverged_chain_is_left_out_of_a_row():
    """A row whose chain 2 diverged (its per-sample losses NaN from the third draw, the result marking it) equals
    the row of the other chains, with a warning, instead of a row of NaN."""
    import dataclasses

    x, y, model, probes, probe_y = two_blocks()
    result = _small_run(x, y, model, probes, probe_y, full=False).results["A"]
    records = result.per_sample_losses.clone()
    records[2, 2:] = float("nan")
    diverged = torch.zeros(records.shape[0], dtype=torch.bool)
    diverged[2] = True
    broken = dataclasses.replace(result, per_sample_losses=records, diverged=diverged)
    with pytest.warns(RuntimeWarning, match=r"chains \[2\] diverged"):
        values, stderr, _ = susceptibility_row(broken)
    kept = [c for c in range(records.shape[0]) if c != 2]
    healthy = dataclasses.replace(
        result, per_sample_losses=records[kept], losses=result.losses[kept], diverged=diverged[kept]
    )
    expected, expected_stderr, _ = susceptibility_row(healthy)
    np.testing.assert_allclose(values, expected, rtol=1e-12)
    np.testing.assert_allclose(stderr, expected_stderr, rtol=1e-12)
    assert np.isfinite(values).all()
