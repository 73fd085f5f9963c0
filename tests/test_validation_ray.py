"""Validation and λ̂ against p on a real local Ray instance: the same numbers as in this process."""

from __future__ import annotations

import dataclasses

import pytest

from lambdahat import truth
from lambdahat.modadd import ExperimentParams, load_run, p_sweep
from lambdahat.validation import CaseSettings, run_validation

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow]

METRICS = ["llc_mean", "llc_stderr", "mala_acceptance", "rhat", "ess", "reference"]


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_validation_on_ray_equals_local_and_resumes_locally(tmp_path):
    cases = [truth.regular_case(2, n=200), truth.monomial_case([1, 2], n=200)]
    fast = CaseSettings(
        learning_rate=1e-4, localization=1.0, draws=20, burnin_steps=10, chains=2, batch_size=50
    )
    settings = {c.name: fast for c in cases}
    local = run_validation(cases=cases, settings=settings, seed=3)
    remote = run_validation(
        cases=cases,
        settings=settings,
        seed=3,
        executor="ray",
        ray_resources={"num_cpus": 1},
        out_dir=tmp_path,
    )
    assert remote[METRICS].values.tolist() == local[METRICS].values.tolist()
    again = run_validation(cases=cases, settings=settings, seed=3, out_dir=tmp_path)  # nothing left to run
    assert again["wall_seconds"].tolist() == remote["wall_seconds"].tolist()


def test_p_sweep_on_ray_equals_local(tmp_path):
    params = ExperimentParams(
        p=7,
        embed_dim=4,
        hidden_size=8,
        batch_size=16,
        n_batches=20,
        n_save_model_checkpoints=2,
        train_frac=0.6,
    )
    fast = dict(
        draws=6, burnin_steps=4, chains=2, compile=False, show_progress=False, random_label_control=False
    )
    local = p_sweep([5, 7], params, tmp_path / "local", **fast)
    remote = p_sweep([5, 7], params, tmp_path / "ray", executor="ray", ray_resources={"num_cpus": 1}, **fast)
    columns = ["llc_mean", "mala_acceptance", "train_loss", "test_acc", "n_train", "nbeta"]
    assert remote[columns].values.tolist() == local[columns].values.tolist()
    assert load_run(remote["run_dir"].iloc[1]).params == dataclasses.replace(
        params, p=7
    )  # trained by a worker
