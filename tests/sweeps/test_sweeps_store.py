"""Results that survive failure: resume, config checks, partial lines, retries, the lock."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import sweep_fixtures as sf

import lambdahat.sweeps.runner
from lambdahat import LLCEstimator
from lambdahat.sweeps import GridSearchConfig, LLCGridSearch, llc_over_checkpoints
from lambdahat.sweeps.store import SweepStore

CFG = dict(learning_rate=(1e-4, 1e-3), localization=(1.0, 10.0), nbeta=20.0, estimates_per_dim=2, **sf.FAST)
METRICS = [
    "learning_rate",
    "localization",
    "nbeta",
    "llc_mean",
    "llc_std",
    "init_loss",
    "rhat",
    "status",
    "seed",
]


@pytest.fixture
def model():
    return sf.trained_linear(0)


@pytest.fixture
def loader():
    return sf.make_loader()


@pytest.fixture
def count_runs(monkeypatch):
    """The points that ran: every sweep point samples through lambdahat.sweeps.runner.sample."""
    calls = []
    original = lambdahat.sweeps.runner.sample

    def counting(problem, config, **kwargs):
        calls.append(config.learning_rate)
        return original(problem, config, **kwargs)

    monkeypatch.setattr(lambdahat.sweeps.runner, "sample", counting)
    return calls


def grid(out_dir, model, loader, **over):
    kw = dict(sf.RUN, out_dir=out_dir)
    kw.update({k: v for k, v in over.items() if k not in CFG})
    cfg = GridSearchConfig(**{**CFG, **{k: v for k, v in over.items() if k in CFG}})
    return LLCGridSearch(cfg).run_grid_search(model, loader, **kw)


def test_files_and_resume_skips_finished_points(tmp_path, model, loader, count_runs):
    first = grid(tmp_path, model, loader)
    assert len(count_runs) == 4
    meta = json.loads((tmp_path / "sweep.json").read_text())
    assert meta["kind"] == "grid" and meta["config"]["seed"] == 0
    assert meta["config"]["values"]["learning_rate"] == [1e-4, 1e-4, 1e-3, 1e-3]
    assert meta["config"]["grid"]["draws"] == sf.FAST["draws"]
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert lines[0].startswith("point,learning_rate,localization,nbeta,llc_mean") and len(lines) == 5

    again = grid(tmp_path, model, loader)
    assert len(count_runs) == 4  # nothing ran again
    assert again.drop(columns="wall_seconds").equals(first.drop(columns="wall_seconds"))
    assert again.wall_seconds.tolist() == first.wall_seconds.tolist()  # read back bit for bit
    assert len(json.loads((tmp_path / "sweep.json").read_text())["runs"]) == 2


def test_config_mismatch_is_refused_with_a_field_diff(tmp_path, model, loader):
    grid(tmp_path, model, loader)
    with pytest.raises(ValueError, match="Differences") as info:
        grid(tmp_path, model, loader, learning_rate=(1e-4, 1e-2), draws=30)
    msg = str(info.value)
    assert "grid.draws: 20 -> 30" in msg
    assert "grid.learning_rate.range: [0.0001, 0.001] -> [0.0001, 0.01]" in msg
    assert "values.learning_rate" in msg and "overwrite=True" in msg
    with pytest.raises(ValueError, match="seed: 0 -> 1"):
        grid(tmp_path, model, loader, seed=1)
    with pytest.raises(ValueError, match="model.fingerprint"):
        grid(tmp_path, sf.trained_linear(5), loader)
    # the refused runs wrote nothing
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 5


def test_seed_none_resumes_with_the_stored_seed(tmp_path, model, loader, count_runs):
    first = grid(tmp_path, model, loader, seed=None)
    again = grid(tmp_path, model, loader, seed=None)
    assert len(count_runs) == 4 and again.seed.tolist() == first.seed.tolist()


def test_no_resume_refuses_and_overwrite_starts_again(tmp_path, model, loader, count_runs):
    grid(tmp_path, model, loader)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        grid(tmp_path, model, loader, resume=False)
    df = grid(tmp_path, model, loader, learning_rate=1e-3, overwrite=True)
    assert len(df) == 2 and len(count_runs) == 6
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 3


def test_partial_last_line_is_tolerated(tmp_path, model, loader, count_runs):
    first = grid(tmp_path, model, loader)
    path = tmp_path / "results.csv"
    data = path.read_bytes()
    cut = data.rstrip(b"\n").rfind(b"\n") + 1  # start of the last row
    path.write_bytes(data[: cut + 25])  # a process killed in the middle of writing it
    with pytest.warns(RuntimeWarning, match="partially written"):
        again = grid(tmp_path, model, loader)
    assert len(count_runs) == 5  # only the cut point ran again
    new = path.read_bytes()
    assert new.startswith(data[:cut]) and new.count(b"\n") == data.count(b"\n")
    cols = [c for c in first.columns if c != "wall_seconds"]
    assert again[cols].equals(first[cols])


def test_failing_point_is_retried_then_recorded_and_the_others_finish(tmp_path, loader):
    calls = []

    class Loaders(sf.FlakyLoaders):
        def __call__(self, label):
            calls.append(label)
            return super().__call__(label)

    est = LLCEstimator(learning_rate=1e-3, localization=10.0, nbeta=20.0, **sf.FAST)
    loaders = Loaders(tmp_path / "flag", fail_label="b", always=True)
    with pytest.warns(RuntimeWarning, match="1 of 3 point.*simulated worker failure"):
        df = llc_over_checkpoints(
            sf.state_dicts(3),
            sf.linear_model,
            loaders,
            est,
            labels=["a", "b", "c"],
            out_dir=tmp_path / "out",
            max_retries=2,
            **sf.RUN,
        )
    assert calls == ["a", "b", "b", "b", "c"]
    assert sf.outcomes(df.status) == ["estimate", "failed", "estimate"]
    assert df.attempts.tolist() == [1, 3, 1]
    assert df.error.iloc[1] == "RuntimeError: simulated worker failure at checkpoint 'b'"
    rows = pd.read_csv(tmp_path / "out" / "results.csv")
    assert sf.outcomes(rows.status) == ["estimate", "failed", "estimate"]
    # a rerun retries the failed point only
    calls.clear()
    loaders.always = False
    df = llc_over_checkpoints(
        sf.state_dicts(3),
        sf.linear_model,
        loaders,
        est,
        labels=["a", "b", "c"],
        out_dir=tmp_path / "out",
        max_retries=2,
        **sf.RUN,
    )
    assert calls == ["b"] and set(sf.outcomes(df.status)) == {"estimate"}


def test_a_second_writer_is_refused(tmp_path):
    cols = [("point", "int"), ("x", "float")]
    with SweepStore(tmp_path, cols) as first:
        first.open("grid", {"a": 1})
        with pytest.raises(RuntimeError, match="another process is writing"):
            SweepStore(tmp_path, cols).open("grid", {"a": 1})
    with SweepStore(tmp_path, cols) as again:  # released on close
        assert again.open("grid", {"a": 1}) == {}


def test_store_round_trips_values(tmp_path):
    cols = [("point", "int"), ("x", "float"), ("n", "int"), ("s", "str"), ("status", "str")]
    rows = [
        {"point": 0, "x": 0.1 + 0.2, "n": 3, "s": 'two\nlines, "quoted"', "status": "ok"},
        {"point": 1, "x": float("nan"), "n": None, "s": None, "status": "ok"},
        {"point": 2, "x": 1.0, "n": 1, "s": "x", "status": "failed"},  # failed: not finished
    ]
    with SweepStore(tmp_path, cols) as store:
        store.open("grid", {})
        for row in rows:
            store.append(row)
    with SweepStore(tmp_path, cols) as store:
        back = store.open("grid", {})
    assert set(back) == {0, 1}
    assert back[0] == {
        "point": 0,
        "x": 0.30000000000000004,
        "n": 3,
        "s": 'two lines, "quoted"',
        "status": "ok",
    }
    assert back[1]["n"] is None and back[1]["s"] is None and back[1]["x"] != back[1]["x"]
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 4


def test_points_with_a_verdict_are_finished_only_failed_ones_run_again(tmp_path):
    # untrusted and diverged points have an estimate (the trust policy's verdict): resuming keeps them
    cols = [("point", "int"), ("status", "str")]
    statuses = ["ok", "untrusted: acceptance 0.86 < 0.9; ESS 40 < 100", "diverged", "failed"]
    with SweepStore(tmp_path, cols) as store:
        store.open("grid", {})
        for i, status in enumerate(statuses):
            store.append({"point": i, "status": status})
    with SweepStore(tmp_path, cols) as store:
        back = store.open("grid", {})
    assert sorted(back) == [0, 1, 2] and back[1]["status"] == statuses[1]
