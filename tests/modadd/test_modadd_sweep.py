"""λ̂ against p (p_sweep) and its figure, on tiny models."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
from matplotlib.figure import Figure

import lambdahat.modadd.sweep as modadd_sweep
from lambdahat.modadd import ExperimentParams, llc_over_training, load_run, p_sweep, plot_llc_vs_p
from lambdahat.modadd.sweep import DEFAULT_LLC_CONFIG, LLC_DIR, SWEEP_COLUMNS, SWEEP_TABLE, sweep_run_dir

from .conftest import TINY

pytestmark = pytest.mark.filterwarnings("ignore:llc_over_training. the estimator:RuntimeWarning")

FAST = dict(draws=6, burnin_steps=4, chains=2, compile=False, show_progress=False)


@pytest.fixture
def params():
    return ExperimentParams(**{**TINY, "n_save_model_checkpoints": 2})


def test_two_ps_with_the_control(tmp_path, params):
    df = p_sweep([5, 7], params, tmp_path / "sweep", **FAST)
    assert list(df.columns) == list(SWEEP_COLUMNS)
    assert df[["p", "use_random_dataset"]].values.tolist() == [[5, False], [5, True], [7, False], [7, True]]
    assert (df["run_id"] == 0).all() and df["llc_mean"].notna().all()
    stored = pd.read_csv(tmp_path / "sweep" / SWEEP_TABLE)
    assert stored["llc_mean"].tolist() == pytest.approx(df["llc_mean"].tolist())
    for row in df.itertuples():
        run = load_run(row.run_dir)
        assert run.params == dataclasses.replace(params, p=row.p, use_random_dataset=row.use_random_dataset)
        final = run.record.iloc[-1]
        assert row.train_acc == pytest.approx(final.train_acc) and row.test_acc == pytest.approx(
            final.test_acc
        )
        assert row.n_train == len(run.train_data())


def test_run_ids_and_no_control(tmp_path, params):
    df = p_sweep([5], params, tmp_path / "s", run_ids=[0, 1], random_label_control=False, **FAST)
    assert df[["run_id", "use_random_dataset"]].values.tolist() == [[0, False], [1, False]]
    # different seeds train different models
    assert df["train_loss"].iloc[0] != df["train_loss"].iloc[1]


def test_finished_runs_are_reused(tmp_path, params):
    out = tmp_path / "sweep"
    first = p_sweep([5], params, out, random_label_control=False, **FAST)
    ckpt = sweep_run_dir(out, 5, 0, False) / "checkpoints" / "ckpt_0001.safetensors"
    stamp = ckpt.stat().st_mtime_ns
    again = p_sweep([5], params, out, random_label_control=False, **FAST)
    assert ckpt.stat().st_mtime_ns == stamp
    assert again["llc_mean"].tolist() == first["llc_mean"].tolist()
    other = dataclasses.replace(params, lr=0.02)
    with pytest.raises(FileExistsError, match="other parameters"):
        p_sweep([5], other, out, random_label_control=False, **FAST)
    redone = p_sweep([5], other, out, random_label_control=False, overwrite=True, **FAST)
    assert load_run(redone["run_dir"].iloc[0]).params.lr == 0.02


def test_bad_arguments(tmp_path, params):
    with pytest.raises(ValueError, match=">= 2"):
        p_sweep([1, 5], params, tmp_path, **FAST)
    with pytest.raises(TypeError, match="list"):
        p_sweep(5, params, tmp_path, **FAST)
    with pytest.raises(ValueError, match="repeats"):
        p_sweep([5, 5], params, tmp_path, **FAST)
    with pytest.raises(TypeError, match="ExperimentParams"):
        p_sweep([5], {"p": 5}, tmp_path, **FAST)
    with pytest.raises(TypeError, match="pass only one"):
        p_sweep([5], params, tmp_path, gamma=1.0, localization=1.0, **FAST)


def test_plot_fits_a_line_per_group():
    df = pd.DataFrame(
        {
            "p": [11, 11, 13, 13, 17, 17],
            "use_random_dataset": [False, True] * 3,
            "llc_mean": [2.0, 4.0, 3.0, 6.0, 5.0, 10.0],
            "llc_std": [0.1] * 6,
            "test_acc": [0.5, 0.0, 0.95, 0.0, 1.0, 0.0],
        }
    )
    fig = plot_llc_vs_p(df)
    assert isinstance(fig, Figure)
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    # random labels: exactly λ̂ = p - 7; true labels: only p = 13, 17 generalized, on λ̂ = 0.5 p - 3.5
    assert "random labels fit: λ̂ = 1·p - 7" in texts
    assert "true labels fit: λ̂ = 0.5·p - 3.5" in texts
    assert any("not fitted" in t for t in texts)
    with pytest.raises(ValueError, match="p_sweep"):
        plot_llc_vs_p(df.drop(columns=["test_acc"]))


# ------------------------------------------------------------------------------------------------------------
# λ̂ against p as a sweep: resume, failures, one LLCConfig
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def counted(monkeypatch):
    """The (p, random labels) of every model whose point runs (the sweep engine looks the point function up at
    every run); ``fail`` holds the ps whose points raise."""
    calls, fail = [], set()
    original = modadd_sweep._model_point

    def point(shared, task):
        prm = task["params"]
        calls.append((prm.p, prm.use_random_dataset))
        if prm.p in fail:
            raise RuntimeError(f"no model for p = {prm.p}")
        return original(shared, task)

    monkeypatch.setattr(modadd_sweep, "_model_point", point)
    return calls, fail


def test_a_rerun_runs_no_finished_model(tmp_path, params, counted):
    calls, _ = counted
    out = tmp_path / "sweep"
    first = p_sweep([5, 7], params, out, **FAST)
    assert len(calls) == 4
    assert (out / LLC_DIR / "results.csv").is_file() and (out / LLC_DIR / "sweep.json").is_file()
    again = p_sweep([5, 7], params, out, **{**FAST, "seed": None})  # the seed comes back from sweep.json
    assert len(calls) == 4
    pd.testing.assert_frame_equal(first, again)
    # other λ̂ settings are another sweep: refused with the differences, or started afresh with overwrite
    with pytest.raises(ValueError, match=r"llc.draws: 6 -> 7"):
        p_sweep([5, 7], params, out, **{**FAST, "draws": 7})
    redone = p_sweep([5, 7], params, out, overwrite=True, **{**FAST, "draws": 7})
    assert len(calls) == 8 and redone.attrs["draws"] == 7
    assert redone["train_loss"].tolist() == first["train_loss"].tolist()  # the trained runs were reused


def test_a_failing_model_is_recorded_and_runs_again_on_resume(tmp_path, params, counted):
    calls, fail = counted
    out = tmp_path / "sweep"
    fail.add(7)
    with pytest.warns(RuntimeWarning, match="2 of 4 point"):
        df = p_sweep([5, 7], params, out, max_retries=1, **FAST)
    assert calls == [(5, False), (5, True), (7, False), (7, False), (7, True), (7, True)]
    failed = df[df.p == 7]
    assert (failed["status"] == "failed").all() and failed["llc_mean"].isna().all()
    assert (failed["attempts"] == 2).all() and failed["error"].str.contains("no model for p = 7").all()
    assert failed["n_train"].isna().all() and failed["train_loss"].isna().all()  # never trained
    assert (df[df.p == 5]["status"] != "failed").all()
    stored = pd.read_csv(out / SWEEP_TABLE)
    assert stored["status"].tolist() == df["status"].tolist()
    calls.clear()
    fail.clear()
    again = p_sweep([5, 7], params, out, **FAST)
    assert calls == [(7, False), (7, True)]
    assert (again["status"] != "failed").all()
    assert again[again.p == 5]["llc_mean"].tolist() == df[df.p == 5]["llc_mean"].tolist()


def test_the_estimate_is_llc_over_training_at_the_last_checkpoint(tmp_path, params):
    df = p_sweep([5], params, tmp_path / "sweep", random_label_control=False, **FAST)
    row = df.iloc[0]
    ref = llc_over_training(
        row.run_dir,
        draws=6,
        burnin_steps=4,
        chains=2,
        checkpoints=[-1],
        seed=0,
        compile=False,
        show_progress=False,
    )
    assert row.llc_mean == ref["llc_mean"].iloc[0] and row.mala_acceptance == ref["mala_acceptance"].iloc[0]
    assert row.nbeta == pytest.approx(ref.attrs["nbeta"]) and row.n_train == ref.attrs["n_train"]


def test_one_llc_config(tmp_path, params):
    config = DEFAULT_LLC_CONFIG.replace(draws=6, burnin_steps=4, chains=2)
    run = dict(random_label_control=False, compile=False, show_progress=False)
    by_config = p_sweep([5], params, tmp_path / "a", config=config, **run)
    by_keywords = p_sweep([5], params, tmp_path / "b", draws=6, burnin_steps=4, chains=2, **run)
    assert by_config["llc_mean"].tolist() == by_keywords["llc_mean"].tolist()
    assert by_config.attrs["config"] == config.to_dict()
    with pytest.raises(TypeError, match=r"config and the λ̂ setting\(s\) \['draws'\]"):
        p_sweep([5], params, tmp_path / "c", config=config, draws=6, **run)
    with pytest.raises(TypeError, match="LLCConfig"):
        p_sweep([5], params, tmp_path / "c", config={"draws": 6}, **run)
    other = p_sweep([5], params, tmp_path / "d", config=config.replace(nbeta=50.0, localization=10.0), **run)
    assert other["nbeta"].tolist() == [50.0] and other.attrs["localization"] == 10.0
