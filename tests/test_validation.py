"""Validation as a sweep: it resumes, records failing cases, and each case carries its reference."""

from __future__ import annotations

import dataclasses
import inspect
import math

import pandas as pd
import pytest

import lambdahat.validation as validation
from lambdahat import nbeta_from_effective_size, truth
from lambdahat.calibration import CalibrationError
from lambdahat.sweeps.runner import run_sweep
from lambdahat.validation import SETTINGS, TABLE_COLUMNS, CaseSettings, format_table, run_validation

#: Two cheap cases (a regular one with an ε-dependent reference, a singular one with a quadrature reference).
FAST = CaseSettings(learning_rate=1e-4, localization=1.0, draws=20, burnin_steps=10, chains=2, batch_size=50)


def small_cases():
    return [truth.regular_case(2, n=200), truth.monomial_case([1, 2], n=200)]


def small_settings(**changes):
    return {c.name: dataclasses.replace(FAST, **changes.get(c.name, {})) for c in small_cases()}


@pytest.fixture
def counted(monkeypatch):
    """Count the cases that run (the sweep engine looks the point function up at every run)."""
    calls = []
    original = validation._case_point

    def point(shared, task):
        calls.append(task["case"])
        return original(shared, task)

    monkeypatch.setattr(validation, "_case_point", point)
    return calls


def test_the_table_of_a_sweep(counted):
    df = run_validation(cases=small_cases(), settings=small_settings(), seed=3)
    assert list(df.columns) == list(TABLE_COLUMNS)
    assert df["case"].tolist() == ["regular_d2", "monomial_k1_2"] == counted
    assert (df["status"] != "failed").all() and df["llc_mean"].notna().all()
    assert df["learning_rate"].tolist() == [1e-4, 1e-4]
    assert df["reference_kind"].tolist() == ["exact SGLD", "exact posterior"]
    nbeta = nbeta_from_effective_size(200)
    assert df["reference"].iloc[0] == truth.regular_posterior_mean_nbeta_k(2, 1.0, nbeta, 1.0, 1e-4)
    r = df.iloc[1]
    assert r.z == pytest.approx((r.llc_mean - r.reference) / r.llc_stderr)
    assert r.rel_error == pytest.approx((r.llc_mean - 0.25) / 0.25)
    text = format_table(df)
    assert "regular_d2" in text and "R-hat" in text and "failed" not in text


def test_a_rerun_with_out_dir_runs_no_finished_case(tmp_path, counted):
    first = run_validation(cases=small_cases(), settings=small_settings(), seed=3, out_dir=tmp_path)
    assert len(counted) == 2
    assert (tmp_path / "results.csv").is_file() and (tmp_path / "sweep.json").is_file()
    again = run_validation(cases=small_cases(), settings=small_settings(), seed=None, out_dir=tmp_path)
    assert len(counted) == 2  # nothing ran again; the seed came back from sweep.json
    pd.testing.assert_frame_equal(first, again)
    with pytest.raises(ValueError, match="different sweep"):
        run_validation(cases=small_cases(), settings=small_settings(), seed=4, out_dir=tmp_path)


def test_an_interrupted_validation_runs_only_the_missing_case(tmp_path, counted):
    cases, settings = small_cases(), small_settings()
    run_validation(cases=cases[:1], settings=settings, seed=3, out_dir=tmp_path / "part")
    # the stored sweep of one case is not the sweep of two: refused rather than mixed
    with pytest.raises(ValueError, match="different sweep"):
        run_validation(cases=cases, settings=settings, seed=3, out_dir=tmp_path / "part")
    counted.clear()
    bad = small_settings(monomial_k1_2={"batch_size": 0})
    with pytest.warns(RuntimeWarning, match="1 of 2 point"):
        run_validation(cases=cases, settings=bad, seed=3, out_dir=tmp_path / "full", max_retries=0)
    assert counted == ["regular_d2", "monomial_k1_2"]
    counted.clear()
    # a failed case is not finished: the same sweep runs it again (and only it)
    with pytest.warns(RuntimeWarning, match="1 of 2 point"):
        run_validation(cases=cases, settings=bad, seed=3, out_dir=tmp_path / "full", max_retries=0)
    assert counted == ["monomial_k1_2"]


def test_a_failing_case_is_recorded_not_raised():
    bad = small_settings(monomial_k1_2={"batch_size": 0})
    with pytest.warns(RuntimeWarning, match="1 of 2 point"):
        df = run_validation(cases=small_cases(), settings=bad, seed=3, max_retries=1)
    ok, failed = df.iloc[0], df.iloc[1]
    assert ok.status != "failed" and math.isfinite(ok.llc_mean)
    assert failed.status == "failed" and math.isnan(failed.llc_mean) and failed.attempts == 2
    assert "batch_size" in failed.error
    assert df.attrs["failures"] == [f"monomial_k1_2: {failed.error}"]
    assert failed.reference_kind == "exact posterior" and math.isfinite(failed.reference)  # the case's own
    assert "monomial_k1_2" in format_table(df) and "failed: " in format_table(df)


def test_a_calibration_that_finds_no_step_is_not_retried(monkeypatch):
    def no_step(problem, config, options):
        raise CalibrationError("calibrate: no step passed\nthe pilots: ...")

    monkeypatch.setattr(validation, "estimate", no_step)
    with pytest.raises(RuntimeError, match="all 2 point"):
        run_validation(cases=small_cases(), settings=small_settings(), calibrate=True, max_retries=2)
    cases = [*small_cases(), truth.regular_case(3, n=200)]
    settings = {**small_settings(), "regular_d3": FAST}
    calls = []

    def second_fails(problem, config, options):
        calls.append(config.learning_rate)
        if problem.dim == 2:
            raise CalibrationError("calibrate: no step passed")
        from lambdahat.sweeps.runner import estimate

        return estimate(problem, config.replace(learning_rate=1e-4), options)

    monkeypatch.setattr(validation, "estimate", second_fails)
    with pytest.warns(RuntimeWarning, match="2 of 3 point"):
        df = run_validation(cases=cases, settings=settings, calibrate=True, max_retries=2)
    assert calls == ["auto"] * 3  # each failing case ran once
    assert df["attempts"].tolist() == [1, 1, 1]
    assert df["status"].iloc[:2].tolist() == ["failed", "failed"]
    assert df["error"].iloc[0].startswith("PointError: calibration found no step: calibrate: no step passed")
    calibrated = df.iloc[2]
    if "value_columns" in inspect.signature(run_sweep).parameters:  # the engine stores the step that was used
        assert calibrated.learning_rate == 1e-4
        assert calibrated.reference == truth.regular_posterior_mean_nbeta_k(
            3, 1.0, calibrated.nbeta, 1.0, 1e-4
        )
    else:  # the step calibration chose is not known here, nor the reference that depends on it
        assert math.isnan(calibrated.learning_rate) and math.isnan(calibrated.reference)


def test_bad_arguments():
    with pytest.raises(ValueError, match="no settings for case"):
        run_validation(cases=small_cases(), settings={})
    with pytest.raises(ValueError, match="distinct names"):
        run_validation(cases=[*small_cases(), truth.regular_case(2, n=200)], settings=small_settings())
    with pytest.raises(ValueError, match="executor"):
        run_validation(cases=small_cases(), settings=small_settings(), executor="dask")


# ------------------------------------------------------------------------------------------------------------
# Each case carries its reference
# ------------------------------------------------------------------------------------------------------------


def _by_name(case: truth.TruthCase, settings: CaseSettings, nbeta: float) -> tuple[float, str]:
    """The reference as validation.py used to choose it, from the case's name."""
    potential = getattr(case.model, "potential", None)
    if case.name.startswith("regular"):
        a = getattr(potential, "a", 1.0)
        value = truth.regular_posterior_mean_nbeta_k(
            case.d, a, nbeta, settings.localization, settings.learning_rate
        )
        return value, "exact SGLD"
    if potential is not None and case.name.startswith("radial"):
        return truth.radial_posterior_mean(
            case.d, potential.k, nbeta, settings.localization
        ), "exact posterior"
    if potential is not None and case.d <= 2:
        value = truth.posterior_mean_nbeta_k_numeric(potential, case.d, nbeta, settings.localization)
        return value, "exact posterior"
    return case.true_lambda, "λ"


@pytest.mark.parametrize("case", truth.default_cases(), ids=lambda c: c.name)
def test_each_default_case_carries_the_reference_it_was_given_by_name(case):
    s = SETTINGS[case.name]
    nbeta = nbeta_from_effective_size(case.n)
    assert case.reference(nbeta, s.localization, s.learning_rate) == _by_name(case, s, nbeta)
    assert validation.reference_value(case, s, nbeta) == _by_name(case, s, nbeta)


def test_the_reference_kinds_of_the_default_cases():
    kinds = {
        c.name: (type(c.target).__name__, c.reference(100.0, 1.0, 1e-5)[1]) for c in truth.default_cases()
    }
    assert kinds == {
        "regular_d10": ("StationarySGLD", "exact SGLD"),
        "monomial_k1_2": ("PosteriorQuadrature", "exact posterior"),
        "normal_crossing_k1_1": ("PosteriorQuadrature", "exact posterior"),
        "radial_d3_k2": ("RadialQuadrature", "exact posterior"),
        "rrr_M4_H3_N4_r1": ("NoneType", "λ"),
        "dln_4-3-3-4_r1": ("NoneType", "λ"),
        "dln_5-4-5_r0": ("NoneType", "λ"),
    }


def test_docstring_examples_run():
    import doctest

    result = doctest.testmod(validation, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
