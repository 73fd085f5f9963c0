"""The reproduction of the hackathon's λ̂ against p (lambdahat.modadd.reproduce): its parts on tiny models, and the
shortened version's qualitative facts (slow)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from lambdahat.modadd import ExperimentParams, load_run, train
from lambdahat.modadd.reproduce import (
    FULL,
    HACKATHON_LLC,
    QUICK,
    REPRODUCE_COLUMNS,
    Protocol,
    _status_counts,
    fit_groups,
    hackathon_params,
    reproduce_p_sweep,
    summarize,
    write_reproduction,
)

from .conftest import TINY

TINY_PROTOCOL = Protocol(
    ps=(5, 7, 11),
    run_ids=(0,),
    draws=10,
    chains=2,
    step_budget_factor=0.01,
    min_steps_factor=0.0,
    check_every=20,
    trusted_burnin_steps=5,
)


def test_hackathon_params_follow_the_recipe():
    for p in (23, 41, 53):
        prm = hackathon_params(p, run_id=3, use_random_dataset=True)
        assert (prm.p, prm.run_id, prm.use_random_dataset) == (p, 3, True)
        assert (prm.embed_dim, prm.hidden_size, prm.activation, prm.tie_unembed) == (8, 32, "gelu", False)
        assert (prm.train_frac, prm.lr, prm.weight_decay, prm.batch_size) == (0.8, 0.01, 2e-4, 64)
        assert prm.n_batches == (15_000 if p in (41, 53) else 10_000)
        assert prm.n_batches // (prm.n_save_model_checkpoints - 1) == QUICK.check_every
    assert (FULL.draws, FULL.min_steps_factor, FULL.learning_rate, FULL.localization) == (
        5000,
        1.0,
        1e-3,
        5.0,
    )
    config = QUICK.config()
    assert (config.burnin_steps, config.restrict_to_orth_grad, config.learning_rate) == (0, True, 1e-3)
    trusted = QUICK.config(trusted=True)
    assert (trusted.learning_rate, trusted.burnin_steps, trusted.draws, trusted.checks) == (
        QUICK.trusted_learning_rate,
        QUICK.trusted_burnin_steps,
        QUICK.draws,
        "step,start",
    )
    assert trusted.accuracy_checks() == ("step", "start")


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(ps=(1, 5)), ">= 2"),
        (dict(run_ids=(0, 0)), "repeats"),
        (dict(draws=0), "draws"),
        (dict(trusted_learning_rate=-1e-5), "trusted_learning_rate"),
        (dict(trusted_burnin_steps=-1), "trusted_burnin_steps"),
        (dict(trusted_checks="steps"), "trusted_checks: LLCConfig: checks must be"),
        (dict(target_test_acc=1.5), "target_test_acc"),
        (dict(min_steps_factor=2.0), "min_steps_factor"),
    ],
)
def test_bad_protocols_are_refused(change, match):
    with pytest.raises(ValueError, match=match):
        Protocol(**change)


def test_status_counts_name_each_reason_without_its_numbers():
    statuses = pd.Series(
        ["untrusted: localization bias -44.4 % ± 1.1 %", "untrusted: R-hat 1.21 > 1.1; ESS 27", "ok"]
    )
    assert _status_counts(statuses) == "2 untrusted, 1 ok (localization bias 1, R-hat 1, ESS 1)"


def test_train_stops_at_the_criterion_and_the_run_reads_back(tmp_path):
    params = ExperimentParams(**{**TINY, "n_batches": 40, "n_save_model_checkpoints": 5})
    seen = []

    def stop(row):
        seen.append(row["step"])
        return row["step"] >= 20

    run = train(params, tmp_path / "run", show_progress=False, stop_when=stop)
    assert seen == [10, 20]
    assert run.n_checkpoints == 3 and run.steps == [0, 10, 20]
    assert load_run(tmp_path / "run").record["step"].tolist() == [0, 10, 20]


def test_tiny_reproduction_writes_its_table_and_resumes(tmp_path):
    rep = reproduce_p_sweep(tmp_path / "r", TINY_PROTOCOL, show_progress=False)
    df = rep.table
    assert list(df.columns) == list(REPRODUCE_COLUMNS)
    assert df[["p", "use_random_dataset"]].values.tolist() == [
        [5, False],
        [5, True],
        [7, False],
        [7, True],
        [11, False],
        [11, True],
    ]
    assert df["llc_mean"].notna().all() and df["trusted_llc_mean"].notna().all()
    # the trusted estimate's checks are recorded per model; the localization check was not asked for
    assert df["trusted_step_bias"].notna().all() and df["trusted_start_bias"].notna().all()
    assert df["trusted_localization_bias"].isna().all()
    assert set(df["outcome"]) <= {"generalized", "memorized", "not fitted"}
    for row in df.itertuples():
        run = load_run(row.run_dir)
        assert row.steps_trained == run.steps[-1] and row.test_acc == pytest.approx(
            run.record.test_acc.iloc[-1]
        )
        stopped_early = run.n_checkpoints < run.params.n_save_model_checkpoints
        if stopped_early:  # only a model that met its criterion stops before its budget
            assert row.outcome == ("memorized" if row.use_random_dataset else "generalized")
    files = write_reproduction(rep, tmp_path / "r")
    assert all(f.is_file() for f in files)
    assert "What agrees and what does not" in (tmp_path / "r" / "summary.md").read_text()
    stamps = [p.stat().st_mtime_ns for p in sorted((tmp_path / "r" / "runs").rglob("*.safetensors"))]
    again = reproduce_p_sweep(tmp_path / "r", TINY_PROTOCOL, show_progress=False)
    assert again.table["llc_mean"].tolist() == df["llc_mean"].tolist()
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "r" / "runs").rglob("*.safetensors"))] == stamps


def test_fits_recover_a_line_and_a_parabola():
    ps = np.array([23, 29, 37, 41])
    rows = []
    for p in ps:
        for group, llc in (("generalized", 8.0 * p - 90.0), ("random labels", 0.5 * p**2 + 3.0)):
            rows.append(
                dict(p=p, run_id=0, use_random_dataset=group == "random labels", outcome="generalized")
                | dict(llc_mean=llc, llc_stderr=1.0, mala_acceptance=0.5, trusted_llc_mean=llc / 2)
                | dict(trusted_llc_stderr=1.0, trusted_mala_acceptance=0.95, train_acc=1.0, test_acc=1.0)
                | dict(steps_trained=1000)
            )
    summary = summarize(pd.DataFrame(rows))
    fits = fit_groups(summary).set_index(["series", "model"])
    lin = fits.loc[("generalized, hackathon ε", "linear")]
    assert (lin.coefficient, lin.intercept, lin.rms_residual) == pytest.approx((8.0, -90.0, 0.0), abs=1e-6)
    quad = fits.loc[("random labels, hackathon ε", "quadratic")]
    assert (quad.coefficient, quad.intercept, quad.rms_residual) == pytest.approx((0.5, 3.0, 0.0), abs=1e-6)
    assert fits.loc[("random labels, hackathon ε", "linear")].rms_residual > 1.0
    # the hackathon's own numbers: linear, about 8.6 p - 90 (REFERENCE.md §3)
    hack = fits.loc[("hackathon", "linear")]
    assert hack.coefficient == pytest.approx(8.58, abs=0.01) and hack.intercept == pytest.approx(
        -89.8, abs=0.1
    )
    g = summary[summary.group == "generalized"]
    assert g["ratio_to_hackathon"].tolist() == pytest.approx([(8.0 * p - 90) / HACKATHON_LLC[p] for p in ps])


def test_the_command_writes_the_reproduction_and_refuses_bad_arguments(tmp_path):
    from typer.testing import CliRunner

    from lambdahat.cli import app

    def invoke(*args):
        return CliRunner().invoke(app, ["modadd", "reproduce-p-sweep", *[str(a) for a in args]])

    tiny = [
        "--ps",
        "5,7,11",
        "--run-ids",
        "0",
        "--draws",
        "5",
        "--chains",
        "2",
        "--step-budget-factor",
        "0.01",
        "--min-steps-factor",
        "0",
    ]
    result = invoke(*tiny, "--check-every", "20", "--trusted-burnin-steps", "5", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "What agrees and what does not" in result.stdout
    df = pd.read_csv(tmp_path / "r" / "reproduce_p_sweep.csv")
    assert sorted(set(df["p"])) == [5, 7, 11] and len(df) == 6
    assert (tmp_path / "r" / "llc_vs_p_reproduction.png").stat().st_size > 0
    bad = invoke("--ps", "5,1", "--out", tmp_path / "bad")
    assert bad.exit_code == 2 and "ps" in bad.output and "Traceback" not in bad.output
    bad = invoke("--trusted-checks", "steps", "--out", tmp_path / "bad")
    assert bad.exit_code == 2 and "trusted_checks" in bad.output and "Traceback" not in bad.output


# -- the shortened reproduction: three small p, one seed ---------------------------------------------------------

#: Two estimates are called different when they differ by more than this many combined standard errors
#: ``sqrt(se_1² + se_2²)``, each ``se`` the spread of 8 independent chains over √8 (a t statistic with 7 degrees of
#: freedom: 5 is a one-sided p ≈ 0.001, so passing is not luck of the noise).
SIGMAS = 5.0
#: Measured (one seed, 8 chains × 500 steps at ε = 1e-3): generalized after 6500, 7250, 3750 steps with λ̂ 63.7 ± 0.6,
#: 102.6 ± 1.0, 149.2 ± 1.3 at p = 17, 23, 29; random labels memorized after 250, 750, 3250 steps with λ̂
#: 107.2 ± 1.6, 220.7 ± 2.6, 380.4 ± 2.3 (26, 42, 87 combined standard errors above; the increases with p are 34 and
#: 28). About 110 s of wall time on a quiet 2-core machine (one thread), the trusted estimate included.
SMALL = Protocol(ps=(17, 23, 29), run_ids=(0,), draws=500, chains=8, trusted_draws=1000, min_steps_factor=0.0)


def _gap(a, b):
    return (a.llc_mean - b.llc_mean) / math.sqrt(a.llc_stderr**2 + b.llc_stderr**2)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: the per-test one-thread fixture does not cover it
    try:
        return reproduce_p_sweep(tmp_path_factory.mktemp("repro"), SMALL, show_progress=False).table
    finally:
        torch.set_num_threads(before)


def _row(df, p, random):
    hit = df[(df.p == p) & (df.use_random_dataset == random)]
    assert len(hit) == 1
    return hit.iloc[0]


@pytest.mark.slow
def test_small_p_models_reach_their_criterion(small):
    table = small.drop(columns=["run_dir", "status", "trusted_status"]).to_string()
    for p in SMALL.ps:
        assert _row(small, p, False).outcome == "generalized", table
        assert _row(small, p, True).outcome == "memorized", table


@pytest.mark.slow
def test_generalizing_models_are_below_memorizing_ones_at_the_same_p(small):
    table = small.drop(columns=["run_dir", "status", "trusted_status"]).to_string()
    for p in SMALL.ps:
        assert _gap(_row(small, p, True), _row(small, p, False)) > SIGMAS, table


@pytest.mark.slow
def test_llc_of_generalizing_models_increases_with_p(small):
    table = small.drop(columns=["run_dir", "status", "trusted_status"]).to_string()
    rows = [_row(small, p, False) for p in SMALL.ps]
    for lo, hi in itertools.pairwise(rows):
        assert _gap(hi, lo) > SIGMAS, table


@pytest.mark.slow
def test_trusted_estimates_settle(small):
    """The trusted estimate (ε = 3e-4 after 1,500 burn-in steps, chosen on p = 41 and 53) passes its step and start
    checks (the policy's 10 %, |b| + SE) on each model here (p = 17, 23, 29, which had no part in choosing it), and
    at least 80 % of the verdicts are ``ok`` (the issue's target; benchmarks/RESULTS.md has the quick preset's
    count). Measured: 5 of 6 ``ok``, step checks +0.1 to +2.0 %, start checks −2.8 to −0.6 %; the sixth (p = 17,
    true labels, stopped just after its criterion) at ESS 59. With 200 draws instead of 1,000 (at ε = 5e-4), most
    were flagged for R-hat 1.1-1.2 and ESS 29-71."""
    table = small[["p", "use_random_dataset", "trusted_llc_mean", "trusted_step_bias", "trusted_start_bias"]]
    statuses = small["trusted_status"].tolist()
    assert not any("step bias" in s or "start bias" in s for s in statuses), (statuses, table.to_string())
    assert (small[["trusted_step_bias", "trusted_start_bias"]].abs() < 0.10).all().all(), table.to_string()
    assert (small["trusted_status"] == "ok").mean() >= 0.8, (statuses, table.to_string())
    assert small["trusted_localization_bias"].isna().all()
