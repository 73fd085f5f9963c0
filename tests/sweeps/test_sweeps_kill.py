"""Kill tests: a worker that raises midway, and a sweep process killed with SIGKILL; rerunning completes the
sweep, keeps every earlier row byte for byte and duplicates nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import sweep_fixtures as sf

from lambdahat import LLCEstimator
from lambdahat.sweeps import llc_over_checkpoints

HERE = Path(__file__).parent
METRICS = ["checkpoint", "llc_mean", "llc_std", "init_loss", "loss_mean", "rhat", "n_diverged", "status"]


def ok_rows(path: Path) -> pd.DataFrame:
    rows = pd.read_csv(path)
    return rows[[o == "estimate" for o in sf.outcomes(rows.status)]]


def test_worker_raising_midway_then_rerun(tmp_path):
    est = LLCEstimator(learning_rate=1e-3, localization=10.0, nbeta=20.0, **sf.FAST)
    sds = sf.state_dicts(5)
    loaders = sf.FlakyLoaders(tmp_path / "flag", fail_label=2)  # the 3rd point raises, the first time only
    out = tmp_path / "out"
    with pytest.warns(RuntimeWarning, match="1 of 5 point"):
        first = llc_over_checkpoints(sds, sf.linear_model, loaders, est, out_dir=out, max_retries=0, **sf.RUN)
    assert sf.outcomes(first.status) == ["estimate", "estimate", "failed", "estimate", "estimate"]
    before = (out / "results.csv").read_bytes()

    second = llc_over_checkpoints(sds, sf.linear_model, loaders, est, out_dir=out, max_retries=0, **sf.RUN)
    after = (out / "results.csv").read_bytes()
    assert after.startswith(before)  # every earlier row intact
    assert set(sf.outcomes(second.status)) == {"estimate"}
    ok = ok_rows(out / "results.csv")
    assert sorted(ok.point) == [0, 1, 2, 3, 4]  # nothing duplicated
    # the same numbers as a sweep that never failed
    clean = llc_over_checkpoints(sds, sf.linear_model, sf.make_loader(), est, **sf.RUN)
    assert second[METRICS].equals(clean[METRICS])


def test_a_retry_in_the_same_run_recovers(tmp_path):
    est = LLCEstimator(learning_rate=1e-3, localization=10.0, nbeta=20.0, **sf.FAST)
    loaders = sf.FlakyLoaders(tmp_path / "flag", fail_label=1)
    df = llc_over_checkpoints(
        sf.state_dicts(3), sf.linear_model, loaders, est, out_dir=tmp_path / "out", **sf.RUN
    )
    assert sf.outcomes(df.status) == ["estimate"] * 3 and df.attempts.tolist() == [1, 2, 1]
    assert len(pd.read_csv(tmp_path / "out" / "results.csv")) == 3


def test_sigkilled_sweep_resumes_without_losing_or_duplicating_rows(tmp_path):
    out = tmp_path / "out"
    results = out / "results.csv"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "sweep_fixtures.py"), str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if results.exists() and results.read_bytes().count(b"\n") >= 2:  # header + a first row
                break
            if proc.poll() is not None:
                pytest.fail(
                    f"the sweep ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
                )
            time.sleep(0.02)
        else:
            pytest.fail("no results row appeared within 120 s")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    before = results.read_bytes()
    complete = before[: before.rfind(b"\n") + 1]
    n_before = complete.count(b"\n") - 1
    assert 1 <= n_before < 6, "the kill came too late to test anything"

    df = sf.slow_grid(str(out))  # the same sweep, in this process: resumes
    after = results.read_bytes()
    assert after.startswith(complete)
    ok = ok_rows(results)
    assert sorted(ok.point) == list(range(6)) and len(pd.read_csv(results)) == 6
    assert set(sf.outcomes(df.status)) == {"estimate"} and df.seed.nunique() == 1
    # the rows of the killed process are the table's rows (read back bit for bit)
    killed = pd.read_csv(results, nrows=n_before)
    for _, row in killed.iterrows():
        assert df.llc_mean.iloc[row.point] == row.llc_mean
    assert df.init_loss.nunique() == 1  # L0 of the killed run reused after the resume
    # the killed process computed the same numbers as this one does
    first = df.iloc[int(killed.point.iloc[0])]
    est = LLCEstimator(
        learning_rate=first.learning_rate,
        localization=first.localization,
        nbeta=first.nbeta,
        **sf.SLOW_SCHEDULE,
    )
    assert est.run(sf.trained_linear(0), sf.make_loader(), warn=False, **sf.RUN).llc_mean == first.llc_mean
