"""Checkpoint sweeps: file formats, one model object, strict loading, per-checkpoint data, labels."""

from __future__ import annotations

import json
import math

import pytest
import sweep_fixtures as sf
import torch
from safetensors.torch import save_file

from lambdahat import LLCConfig, LLCEstimator
from lambdahat.sweeps import llc_over_checkpoints
from lambdahat.sweeps.checkpoints import load_checkpoint

EST = dict(learning_rate=1e-3, localization=10.0, nbeta=20.0, **sf.FAST)
METRICS = [
    "llc_mean",
    "llc_std",
    "llc_stderr",
    "init_loss",
    "loss_mean",
    "mala_acceptance",
    "rhat",
    "n_diverged",
]


@pytest.fixture
def model():
    return sf.trained_linear(0)


@pytest.fixture
def loader():
    return sf.make_loader()


@pytest.fixture
def estimator():
    return LLCEstimator(**EST)


def test_file_formats_and_memory_give_identical_results(tmp_path, loader, estimator):
    sds = sf.state_dicts(3)
    st = tmp_path / "step_0.safetensors"
    save_file(sds[0], str(st))
    pt = tmp_path / "step_1.pt"
    torch.save(sds[1], pt)
    nested = tmp_path / "step_2.pth"
    torch.save({"model": sds[2], "step": torch.tensor(2)}, nested)  # a training script's dict

    from_files = llc_over_checkpoints([st, str(pt), nested], sf.linear_model, loader, estimator, **sf.RUN)
    from_memory = llc_over_checkpoints(sds, sf.linear_model, loader, estimator, **sf.RUN)
    assert from_files.checkpoint.tolist() == ["step_0", "step_1", "step_2"]
    assert from_memory.checkpoint.tolist() == [0, 1, 2]
    assert from_files.path.tolist() == [str(p.absolute()) for p in (st, pt, nested)]
    assert from_memory.path.isna().all()
    assert from_files[METRICS].equals(from_memory[METRICS])
    assert set(sf.outcomes(from_files.status)) == {"estimate"}
    # ... and equal to a plain estimate on a fresh model with those weights
    for i, sd in enumerate(sds):
        m = sf.linear_model()
        m.load_state_dict(sd)
        res = estimator.run(m, loader, warn=False, **sf.RUN)
        assert from_files.llc_mean.iloc[i] == res.llc_mean and from_files.init_loss.iloc[i] == res.init_loss
    assert estimator.result is None  # the caller's estimator is not modified


def test_one_model_object_serves_every_checkpoint(loader, estimator):
    built = []

    def model_fn():
        built.append(sf.linear_model())
        return built[-1]

    df = llc_over_checkpoints(sf.state_dicts(3), model_fn, loader, estimator, **sf.RUN)
    assert len(built) == 1 and set(sf.outcomes(df.status)) == {"estimate"}
    # the last checkpoint's weights are in it
    assert torch.equal(built[0].weight, sf.state_dicts(3)[2]["weight"])


def test_strict_mismatch_names_the_checkpoint_and_is_not_retried(loader, estimator):
    sds = sf.state_dicts(2)
    wide = torch.nn.Linear(5, 2).state_dict()
    missing = {"weight": sds[0]["weight"]}
    with pytest.warns(RuntimeWarning, match="2 of 4 point"):
        df = llc_over_checkpoints(
            [sds[0], wide, missing, sds[1]],
            sf.linear_model,
            loader,
            estimator,
            labels=[0, 100, 200, 300],
            **sf.RUN,
        )
    assert sf.outcomes(df.status) == ["estimate", "failed", "failed", "estimate"]
    assert "checkpoint 100 does not fit the model" in df.error.iloc[1] and "size mismatch" in df.error.iloc[1]
    assert "checkpoint 200" in df.error.iloc[2] and "Missing key" in df.error.iloc[2]
    assert df.attempts.tolist() == [1, 1, 1, 1]
    assert math.isnan(df.llc_mean.iloc[1])
    with pytest.raises(RuntimeError, match="all 1 point.*checkpoint 'bad' does not fit"):
        llc_over_checkpoints([wide], sf.linear_model, loader, estimator, labels=["bad"], **sf.RUN)


def test_loader_per_checkpoint(estimator):
    asked = []

    def loaders(label):
        asked.append(label)
        return sf.make_loader(seed=label)

    sds = sf.state_dicts(2)
    df = llc_over_checkpoints(sds, sf.linear_model, loaders, estimator, labels=[10, 20], **sf.RUN)
    assert asked == [10, 20]
    for i, label in enumerate([10, 20]):
        m = sf.linear_model()
        m.load_state_dict(sds[i])
        res = estimator.run(m, sf.make_loader(seed=label), warn=False, **sf.RUN)
        assert df.llc_mean.iloc[i] == res.llc_mean


def test_missing_and_unusable_files(tmp_path, loader, estimator):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.warns(RuntimeWarning):
        df = llc_over_checkpoints(
            [sf.state_dicts(1)[0], tmp_path / "nope.safetensors", tmp_path / "list.pt"],
            sf.linear_model,
            loader,
            estimator,
            **sf.RUN,
        )
    assert sf.outcomes(df.status) == ["estimate", "failed", "failed"]
    assert "does not exist" in df.error.iloc[1]
    assert "not a state dict" in df.error.iloc[2]


def test_argument_errors(loader, estimator):
    sds = sf.state_dicts(2)
    with pytest.raises(ValueError, match="same label"):
        llc_over_checkpoints(sds, sf.linear_model, loader, estimator, labels=["a", "a"], **sf.RUN)
    with pytest.raises(ValueError, match="2 labels for 1 checkpoints"):
        llc_over_checkpoints(sds[:1], sf.linear_model, loader, estimator, labels=["a", "b"], **sf.RUN)
    with pytest.raises(TypeError, match="list of paths"):
        llc_over_checkpoints("ckpt.safetensors", sf.linear_model, loader, estimator, **sf.RUN)
    with pytest.raises(TypeError, match="model_fn must be a function"):
        llc_over_checkpoints(sds, sf.linear_model(), loader, estimator, **sf.RUN)
    with pytest.raises(TypeError, match="must be an LLCConfig or an LLCEstimator"):
        llc_over_checkpoints(sds, sf.linear_model, loader, EST, **sf.RUN)
    with pytest.raises(ValueError, match="empty"):
        llc_over_checkpoints([], sf.linear_model, loader, estimator, **sf.RUN)


def test_an_llcconfig_is_the_same_as_its_estimator(tmp_path, loader, estimator):
    sds = sf.state_dicts(2)
    with_config = llc_over_checkpoints(
        sds, sf.linear_model, loader, LLCConfig(**EST), out_dir=tmp_path / "a", **sf.RUN
    )
    with_estimator = llc_over_checkpoints(
        sds, sf.linear_model, loader, estimator, out_dir=tmp_path / "b", **sf.RUN
    )
    assert with_config[METRICS].equals(with_estimator[METRICS])
    meta = json.loads((tmp_path / "a" / "sweep.json").read_text())
    assert meta["config"]["estimator"] == LLCConfig(**EST).to_dict()


def test_load_checkpoint_returns_a_plain_dict(tmp_path):
    sd = sf.state_dicts(1)[0]
    torch.save({"state_dict": sd}, tmp_path / "a.ckpt")
    loaded = load_checkpoint(tmp_path / "a.ckpt")
    assert set(loaded) == {"weight", "bias"} and torch.equal(loaded["weight"], sd["weight"])


def _half_squared_error(model, batch):
    """A per-sample loss of its own (not mse_loss): ½ Σ (f(x) − y)² per sample."""
    x, y = batch
    return 0.5 * (model(x) - y).pow(2).sum(-1)


def test_loss_fn_is_the_estimators(tmp_path, loader, estimator):
    sds = sf.state_dicts(2)
    run = {k: v for k, v in sf.RUN.items() if k != "criterion_fn"}
    df = llc_over_checkpoints(
        sds, sf.linear_model, loader, estimator, loss_fn=_half_squared_error, out_dir=tmp_path, **run
    )
    plain = llc_over_checkpoints(sds, sf.linear_model, loader, estimator, **sf.RUN)
    for i, sd in enumerate(sds):
        m = sf.linear_model()
        m.load_state_dict(sd)
        res = estimator.run(m, loader, warn=False, loss_fn=_half_squared_error, **run)
        assert df.llc_mean.iloc[i] == res.llc_mean and df.init_loss.iloc[i] == res.init_loss
        assert df.init_loss.iloc[i] != plain.init_loss.iloc[i]  # the loss_fn was used, not the criterion
    stored = json.loads((tmp_path / "sweep.json").read_text())
    assert stored["config"]["loss_fn"].endswith("_half_squared_error")
