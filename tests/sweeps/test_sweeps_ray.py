"""The Ray executor against the local one on a real local Ray instance: same seed, same numbers."""

from __future__ import annotations

import pandas as pd
import pytest
import sweep_fixtures as sf
from safetensors.torch import save_file

from lambdahat import LLCEstimator
from lambdahat.sweeps import GridSearchConfig, LLCGridSearch, llc_over_checkpoints

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

METRICS = [
    "llc_mean",
    "llc_std",
    "llc_stderr",
    "loss_mean",
    "loss_std",
    "init_loss",
    "mala_acceptance",
    "rhat",
    "ess",
]


@pytest.fixture
def model():
    return sf.trained_linear(0)


@pytest.fixture
def loader():
    return sf.make_loader()


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_grid_on_ray_equals_local_and_resumes_locally(tmp_path, model, loader):
    cfg = GridSearchConfig(learning_rate=[1e-4, 1e-3], localization=[1.0, 10.0], nbeta=[5.0, 20.0], **sf.FAST)
    local = LLCGridSearch(cfg).run_grid_search(model, loader, **sf.RUN)
    remote = LLCGridSearch(cfg).run_grid_search(
        model, loader, executor="ray", ray_resources={"num_cpus": 1}, out_dir=tmp_path, **sf.RUN
    )
    assert set(sf.outcomes(remote.status)) == {"estimate"}
    # exactly equal: each chain's noise depends on (seed, chain) only and the arithmetic is the same
    assert remote[METRICS].equals(local[METRICS])
    assert remote.n_diverged.equals(local.n_diverged)
    assert len(pd.read_csv(tmp_path / "results.csv")) == 8
    # the sweep stored by Ray workers is finished for the local executor too
    again = LLCGridSearch(cfg).run_grid_search(model, loader, out_dir=tmp_path, **sf.RUN)
    assert again[METRICS].equals(local[METRICS]) and len(pd.read_csv(tmp_path / "results.csv")) == 8


def test_checkpoints_on_ray_equal_local_and_failures_are_recorded(tmp_path):
    est = LLCEstimator(learning_rate=1e-3, localization=10.0, nbeta=20.0, **sf.FAST)
    sds = sf.state_dicts(3)
    save_file(sds[0], str(tmp_path / "a.safetensors"))  # read by the driver, shipped to the worker
    checkpoints = [tmp_path / "a.safetensors", sds[1], sds[2]]
    loaders = sf.FlakyLoaders(tmp_path / "flag", fail_label="never")
    local = llc_over_checkpoints(checkpoints, sf.linear_model, loaders, est, labels=["a", "b", "c"], **sf.RUN)
    remote = llc_over_checkpoints(
        checkpoints, sf.linear_model, loaders, est, labels=["a", "b", "c"], executor="ray", **sf.RUN
    )
    assert remote[METRICS].equals(local[METRICS])
    assert remote.checkpoint.tolist() == ["a", "b", "c"]

    failing = sf.FlakyLoaders(tmp_path / "flag2", fail_label="b", always=True)
    with pytest.warns(RuntimeWarning, match="1 of 3 point"):
        df = llc_over_checkpoints(
            checkpoints,
            sf.linear_model,
            failing,
            est,
            labels=["a", "b", "c"],
            executor="ray",
            max_retries=1,
            **sf.RUN,
        )
    assert sf.outcomes(df.status) == ["estimate", "failed", "estimate"] and df.attempts.tolist() == [1, 2, 1]
    assert df.error.iloc[1] == "RuntimeError: simulated worker failure at checkpoint 'b'"
    assert df[METRICS].iloc[[0, 2]].equals(local[METRICS].iloc[[0, 2]])
