"""The qualitative facts about λ̂ on modular addition (REFERENCE.md §3), at small scale, with the default λ̂ settings.

(a) the random-label control has a larger λ̂ than the generalizing model at the same p;
(b) λ̂ grows with p for generalizing models;
(c) over training, λ̂ rises while the model memorizes, peaks before the test loss has finished dropping and then
    falls to a lower plateau.

Every seed is fixed (training, split, chains), so these are deterministic on one machine. How the margins are
chosen: a λ̂ estimate's standard error ``llc_stderr`` is the spread of its 4 independent chains over √4; two
estimates are called different only when they differ by more than 5 combined standard errors
``sqrt(se_1² + se_2²)``. With 4 chains the standard error is itself uncertain (a t statistic with 3 degrees of
freedom), and 5 is a one-sided p ≈ 0.008 there, so passing is not luck of the noise; the measured gaps are 10 to 60
combined standard errors (numbers in each test).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lambdahat.modadd import ExperimentParams, llc_over_training, p_sweep, train

pytestmark = [pytest.mark.slow]

SIGMAS = 5.0


def gap_in_stderrs(a: float, se_a: float, b: float, se_b: float) -> float:
    """How many combined standard errors ``a`` exceeds ``b`` by."""
    return (a - b) / math.sqrt(se_a**2 + se_b**2)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """p = 17 and 23, true and random labels: 4 models of 2000 steps (train_frac 0.8, where both generalize)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: the per-test one-thread fixture does not cover it
    try:
        params = ExperimentParams(train_frac=0.8, n_batches=2000, n_save_model_checkpoints=2)
        df = p_sweep([17, 23], params, tmp_path_factory.mktemp("sweep"), show_progress=False)
    finally:
        torch.set_num_threads(before)
    return df


def _row(df, p, random):
    hit = df[(df.p == p) & (df.use_random_dataset == random)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_the_sweep_models_did_what_they_were_meant_to(sweep):
    for p in (17, 23):
        true, rnd = _row(sweep, p, False), _row(sweep, p, True)
        assert true.test_acc >= 0.9, sweep.to_string()  # generalized (measured 1.0)
        assert rnd.train_acc >= 0.9 and rnd.test_acc < 0.2, sweep.to_string()  # memorized random labels
    assert (sweep["mala_acceptance"] >= 0.9).all(), sweep.to_string()  # measured 0.975-0.99


def test_a_random_labels_give_a_larger_llc_than_the_generalizing_model(sweep):
    # measured: p=17: 10.6 ± 0.3 against 6.0 ± 0.1 (14 stderrs); p=23: 27.0 ± 1.2 against 13.0 ± 0.3 (11 stderrs)
    for p in (17, 23):
        true, rnd = _row(sweep, p, False), _row(sweep, p, True)
        gap = gap_in_stderrs(rnd.llc_mean, rnd.llc_stderr, true.llc_mean, true.llc_stderr)
        assert gap > SIGMAS, sweep.to_string()
        assert true.llc_mean > 0


def test_b_llc_grows_with_p_for_generalizing_models(sweep):
    # measured: 13.0 ± 0.3 at p=23 against 6.0 ± 0.1 at p=17 (about 20 stderrs)
    small, large = _row(sweep, 17, False), _row(sweep, 23, False)
    assert gap_in_stderrs(large.llc_mean, large.llc_stderr, small.llc_mean, small.llc_stderr) > SIGMAS


def test_c_llc_rises_while_memorizing_and_falls_after_the_test_loss_drops(tmp_path):
    """The default model, checkpoints every 400 steps, λ̂ with the defaults of llc_over_training.

    Measured (step: λ̂ ± stderr): 0: 61.7 ± 1.0, 400: 94.5 ± 0.6, 800: 130.3 ± 1.2 (train acc 0.95, test acc
    0.006), 1200: 102.3, 1600: 79.0 (test acc 0.91), ..., 4000: 64.0 ± 0.7. Rise 68, fall 66: both about 50
    combined stderrs.
    """
    params = dataclasses.replace(ExperimentParams(), n_save_model_checkpoints=11)
    run = train(params, tmp_path / "run", show_progress=False)
    df = llc_over_training(run, show_progress=False)
    rec = run.record
    llc, se = df["llc_mean"].to_numpy(), df["llc_stderr"].to_numpy()
    table = df.drop(columns=["warnings"]).to_string()

    assert (llc > 0).all(), table
    assert df["mala_acceptance"].mean() >= 0.9 and (df["mala_acceptance"] >= 0.85).all(), table  # 0.91-0.95

    peak = int(llc.argmax())
    assert 0 < peak < len(df) - 1, table  # strictly inside
    # rises during memorization: the peak comes when the training set is (nearly) fitted and the test set is not
    assert rec.train_acc[peak] >= rec.train_acc[0] + 0.5 and rec.test_acc[peak] < 0.5, table
    assert gap_in_stderrs(llc[peak], se[peak], llc[0], se[0]) > SIGMAS, table
    # the peak comes no later than the end of the test-loss drop (the first checkpoint with test acc >= 0.9) ...
    generalized = int((rec.test_acc >= 0.9).to_numpy().argmax())
    assert rec.test_acc[generalized] >= 0.9 and peak <= generalized, table
    # ... and afterwards λ̂ falls: the final value is below the peak by many stderrs and by more than the 15 % of
    # the hackathon's curve (measured: 52 %)
    assert gap_in_stderrs(llc[peak], se[peak], llc[-1], se[-1]) > SIGMAS, table
    assert llc[-1] < 0.85 * llc[peak], table
    # ... to a plateau: the last three checkpoints (steps 3200-4000) agree within 5 % of the final value
    assert abs(llc[-3:] - llc[-1]).max() < 0.05 * llc[-1], table
