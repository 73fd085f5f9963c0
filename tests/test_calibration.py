"""learning_rate="auto": the step chosen on its measured step bias, an answer always, errors only when nothing is
finite. Tests that run a search are marked ``slow``."""

from __future__ import annotations

import doctest
import json
import math

import pandas as pd
import pytest
import torch

import lambdahat.calibration as calibration_module
from lambdahat import LLCConfig, LLCEstimator, prepare, sample, truth
from lambdahat.calibration import (
    Calibration,
    CalibrationError,
    calibrate,
    calibrate_problem,
    calibrated_estimator,
    next_step,
    start_step,
)

N = 1000
NBETA = N / math.log(N)
slow = pytest.mark.slow


def _problem(case, config, batch_size=N):
    return prepare(case.model, case.loader(batch_size), config, criterion_fn=case.criterion_fn, compile=False)


@pytest.fixture(scope="module")
def regular10():
    return truth.regular_case(10, n=N)


@pytest.fixture(scope="module")
def regular10_calibration(regular10):
    config = LLCConfig(
        draws=300, chains=4, burnin_steps=300, localization=10.0, learning_rate="auto", nbeta=NBETA
    )
    return config, calibrate_problem(_problem(regular10, config), config, seed=0, warn=False)


# ----------------------------------------------------------------------------------------------------
# The rule
# ----------------------------------------------------------------------------------------------------


@slow
def test_the_chosen_step_has_a_measured_bias_within_the_limit_and_matches_the_exact_one(
    regular10, regular10_calibration
):
    """The accepted step's measured bias is within 0.05; the exact stationary bias of λ̂ at that step
    (``1/(1 − εκ/4) − 1`` on the quadratic) is within it too, and λ̂ lands on its exact value at that step within
    4 standard errors (4 chains x 300 draws: about 3 % each)."""
    _config, cal = regular10_calibration
    assert cal.accepted and abs(cal.step_bias) + cal.step_bias_stderr <= 0.05
    kappa = 2 * NBETA + 10.0
    exact_bias = 1 / (1 - cal.learning_rate * kappa / 4) - 1
    assert exact_bias <= 0.05
    reference, _ = regular10.reference(NBETA, 10.0, cal.learning_rate)
    result = cal.result
    assert result.learning_rate == cal.learning_rate and result.settings["learning_rate"] == "auto"
    assert abs(result.llc_mean - reference) <= 4 * result.llc_stderr
    assert set(result.settings["accuracy"]) == {"step", "localization", "start"}
    assert result.settings["calibration"]["accepted"] is True


@slow
def test_the_criterion_holds_at_a_dimension_where_the_acceptance_falls():
    """d = 5000: at the step with a 5 % bias the whole-vector acceptance is below 0.9 (it multiplies 5000
    per-direction ratios); the search accepts the step on its bias, and the acceptance is a note, not a reason."""
    case = truth.regular_case(5000, n=N)
    config = LLCConfig(
        draws=200, chains=4, burnin_steps=200, localization=10.0, learning_rate="auto", nbeta=NBETA
    )
    cal = calibrate_problem(_problem(case, config), config, seed=0, warn=False)
    assert cal.accepted
    result = cal.result
    assert result.mala_acceptance < 0.9
    assert not any("acceptance" in r for r in result.trust_reasons)
    assert any("acceptance" in n for n in result.trust_notes)
    reference, _ = case.reference(NBETA, 10.0, 0.0)
    assert abs(result.llc_mean / reference - 1) < 0.1


@slow
def test_a_budget_too_small_returns_the_best_step_with_its_bias_instead_of_raising(regular10):
    config = LLCConfig(
        draws=100, chains=4, burnin_steps=100, localization=10.0, learning_rate="auto", nbeta=NBETA
    )
    cal = calibrate_problem(
        _problem(regular10, config), config, seed=0, warn=False, budget=1, max_step_bias=0.001
    )
    assert not cal.accepted and "no step within the budget" in cal.reason
    assert (cal.table["stage"] == "round").sum() == 1  # at least one round always runs
    assert math.isfinite(cal.step_bias) and cal.result is not None
    assert cal.result.settings["calibration"]["accepted"] is False


@slow
def test_the_budget_bounds_the_search(regular10):
    config = LLCConfig(
        draws=100, chains=4, burnin_steps=100, localization=10.0, learning_rate="auto", nbeta=NBETA
    )
    budget = 3000
    cal = calibrate_problem(
        _problem(regular10, config), config, seed=0, warn=False, budget=budget, max_step_bias=0.001
    )
    one_round = 1.5 * config.chains * config.total_steps
    assert cal.chain_steps <= budget + one_round
    assert cal.chain_steps == int(cal.table["chain_steps"].sum())


def test_nothing_finite_is_the_only_error():
    """A potential that is NaN anywhere but w*: every pilot diverges down to LR_MIN."""
    model = truth.cases.PotentialModel(
        lambda w: torch.where((w == 0).all(-1), (w * 0).sum(-1), torch.full(w.shape[:-1], math.nan)),
        torch.zeros(2),
    )
    data = torch.utils.data.TensorDataset(torch.zeros(10, 1), torch.zeros(10))
    loader = torch.utils.data.DataLoader(data, batch_size=10)
    config = LLCConfig(
        draws=10, chains=2, burnin_steps=10, localization=1.0, learning_rate="auto", nbeta=10.0
    )
    with pytest.raises(CalibrationError, match="nothing finite can be sampled") as info:
        calibrate(model, loader, config, criterion_fn=truth.cases.mean_output_loss)
    assert (info.value.table["stage"] == "stability").all() and not info.value.table["accepted"].any()


def test_next_step_and_start_step():
    assert next_step(1e-3, 0.14, 0.05) == pytest.approx(1e-3 * 0.7 * 0.05 / 0.14)
    assert next_step(1e-3, -5.0, 0.05) == pytest.approx(1e-4)  # never more than JUMP at once
    assert next_step(1e-3, 0.051, 0.05) == pytest.approx(1e-3 / 1.5)  # never less than 1.5x
    assert next_step(1e-3, math.nan, 0.05) == pytest.approx(1e-4)
    assert start_step(LLCConfig(), 100.0, 0.05) == pytest.approx(0.2 / 1.05 / 100)
    assert start_step(LLCConfig(), math.nan, 0.05) == calibration_module.LR_MAX
    assert start_step(LLCConfig(sampler="rmsprop_sgld"), 100.0, 0.05) == calibration_module.LR_MAX


# ----------------------------------------------------------------------------------------------------
# The "auto" call, the record and the errors
# ----------------------------------------------------------------------------------------------------


@slow
def test_sample_with_auto_returns_the_calibrated_main_run(regular10):
    config = LLCConfig(
        draws=200,
        chains=4,
        burnin_steps=200,
        localization=10.0,
        learning_rate="auto",
        nbeta=NBETA,
        checks="step",
    )
    problem = _problem(regular10, config)
    result = sample(problem, config, seed=0, show_progress=False, warn=False)
    recorded = result.settings["calibration"]
    assert result.settings["learning_rate"] == "auto" and result.learning_rate == recorded["learning_rate"]
    assert set(result.settings["accuracy"]) == {"step"}
    assert json.loads(json.dumps(recorded, allow_nan=False)) == recorded
    # the same seed gives the same choice and the same chains
    again = sample(problem, config, seed=0, show_progress=False, warn=False)
    assert torch.equal(again.llcs, result.llcs)


@slow
def test_the_estimator_facade_takes_auto(regular10):
    est = LLCEstimator(
        draws=100, chains=4, burnin_steps=100, localization=10.0, learning_rate="auto", checks="none"
    )
    est.estimate_llc(
        regular10.model, regular10.loader(N), criterion_fn=regular10.criterion_fn, seed=0, show_progress=False
    )
    metrics = est.get_metrics()
    assert metrics["calibration"]["learning_rate"] == metrics["learning_rate"] > 0
    assert set(metrics["accuracy"]) == {"step"}  # the search's own check; checks="none" adds no other


def test_str_summary_and_calibrated_estimator():
    cal = Calibration(1e-3, 5.0, pd.DataFrame(columns=calibration_module._COLUMNS), "by hand", step_bias=0.01)
    assert "learning_rate = 0.001" in str(cal) and "by hand" in str(cal)
    summary = cal.summary()
    assert summary["step_bias"] == 0.01 and summary["curvature"] is None
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    est = calibrated_estimator(LLCEstimator(draws=7, localization=3.0), cal)
    assert (est.learning_rate, est.localization, est.draws) == (1e-3, 5.0, 7)
    with pytest.raises(ValueError, match="must be the Calibration"):
        calibrated_estimator(LLCEstimator(), object())
    with pytest.raises(ValueError, match="LLCEstimator or an LLCConfig"):
        calibrated_estimator(object(), cal)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(max_step_bias=0.0), "max_step_bias must be"),
        (dict(budget=0), "budget must be"),
        (dict(budget_seconds=-1), "budget_seconds must be"),
    ],
)
def test_invalid_arguments_raise_value_errors(regular10, kwargs, match):
    config = LLCConfig(
        draws=10, chains=2, burnin_steps=10, localization=10.0, learning_rate="auto", nbeta=NBETA
    )
    with pytest.raises(ValueError, match=match):
        calibrate_problem(_problem(regular10, config), config, **kwargs)


def test_auto_needs_two_chains(regular10):
    config = LLCConfig(
        draws=10, chains=1, burnin_steps=10, localization=10.0, learning_rate="auto", nbeta=NBETA
    )
    with pytest.raises(ValueError, match="chains >= 2"):
        calibrate_problem(_problem(regular10, config), config)
    with pytest.raises(ValueError, match="seed must be"):
        calibrate(regular10.model, regular10.loader(N), config, criterion_fn=regular10.criterion_fn, seed=-1)


def test_doctests():
    assert doctest.testmod(calibration_module).failed == 0


def test_the_search_grows_a_step_with_room_and_stops_below_a_failure():
    from types import SimpleNamespace

    from lambdahat.calibration import following_step

    def r(lr, bound, diverged=0, bias=None):
        step = SimpleNamespace(bias=bound if bias is None else bias)
        return SimpleNamespace(learning_rate=lr, bound=bound, diverged=diverged, step=step)

    # a passing round with much room grows (at most JUMP = 10x), with little room stops
    assert following_step([r(1e-5, 0.001)], 0.05) == pytest.approx(1e-4)
    assert following_step([r(1e-5, 0.011)], 0.05) == pytest.approx(1e-5 * 0.7 * 0.05 / 0.011)
    assert following_step([r(1e-5, 0.03)], 0.05) is None
    # never past the geometric mean with a failed step above
    assert following_step([r(4e-5, 0.2), r(1e-5, 0.001)], 0.05) == pytest.approx(2e-5)
    # a failure above a passing step ends the search; a first failure steps down
    assert following_step([r(1e-5, 0.01), r(3e-5, 0.2)], 0.05) is None
    assert following_step([r(1e-3, 0.14)], 0.05) == pytest.approx(1e-3 * 0.7 * 0.05 / 0.14)
    assert following_step([r(1e-3, math.inf, diverged=3)], 0.05) == pytest.approx(1e-4)


def test_calibrate_passes_compile_to_prepare():
    """``calibrate`` prepares with the caller's ``compile`` (it used to force ``compile=False``)."""
    case = truth.regular_case(4, n=200)
    with pytest.raises(ValueError, match="^prepare: compile must be True, False or 'auto'"):
        calibrate(
            case.model,
            case.loader(50),
            LLCConfig(draws=10, chains=2),
            criterion_fn=case.criterion_fn,
            compile="sometimes",
        )
