"""`lambdahat validate`: the table end to end (quick set), and the reference values it relies on."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from lambdahat import truth
from lambdahat.cli import app
from lambdahat.validation import SETTINGS, CaseSettings, reference_value


def test_every_default_case_has_settings():
    for case in truth.default_cases():
        assert case.name in SETTINGS


def test_reference_values():
    s = CaseSettings(learning_rate=1e-4, localization=2.0)
    reg = truth.regular_case(4, n=1000)
    value, kind = reference_value(reg, s, 100.0)
    assert kind == "exact SGLD"
    assert value == pytest.approx(truth.regular_posterior_mean_nbeta_k(4, 1.0, 100.0, 2.0, 1e-4))
    rrr = truth.reduced_rank_case(3, 2, 3, 1)
    assert reference_value(rrr, s, 100.0) == (rrr.true_lambda, "λ")


@pytest.mark.slow
def test_validate_command_prints_the_table(tmp_path, monkeypatch):
    # shrink the quick set's runs so the end-to-end test stays fast; the real settings are exercised by
    # tests/test_known_values.py and by `lambdahat validate` itself
    import lambdahat.validation as validation

    small = {
        k: CaseSettings(v.learning_rate, v.localization, draws=60, burnin_steps=20, chains=4)
        for k, v in SETTINGS.items()
    }
    monkeypatch.setattr(validation, "SETTINGS", small)
    out = tmp_path / "table.csv"
    result = CliRunner().invoke(app, ["validate", "--quick", "--csv", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("regular_d10", "monomial_k1_2", "rrr_M4_H3_N4_r1", "true λ", "R-hat"):
        assert name in result.output
    assert out.exists()


def test_validate_help():
    result = CliRunner().invoke(app, ["validate", "--help"])
    assert result.exit_code == 0 and "--quick" in result.output


def test_every_scale_case_has_settings_and_the_rotation_keeps_lambda():
    from lambdahat.validation import SCALE_SETTINGS

    cases = truth.scale_cases(["1e3"], n=50)
    assert [c.name for c in cases] == ["dln_16-16-16-16-16_r3_rot"]
    assert all(c.name in SCALE_SETTINGS for c in truth.scale_cases(n=2))
    case = cases[0]
    plain = truth.deep_linear_case([16] * 5, 3, n=50)
    assert case.true_lambda == plain.true_lambda and case.d == plain.d == 1024
    weights = [layer.weight.detach() for layer in case.model]
    # every layer keeps rank r, and no weight is axis-aligned any more
    assert all(int(torch.linalg.matrix_rank(w)) == 3 for w in weights)
    assert all(float((w.abs() > 1e-6).float().mean()) > 0.5 for w in weights)
    with pytest.raises(ValueError, match="unknown sizes"):
        truth.scale_cases(["1e6"])


@pytest.mark.slow
def test_validate_scale_runs_auto_with_the_checks(monkeypatch):
    """`validate --scale 1e3` end to end on shortened runs (the real ones are timed in benchmarks/RESULTS.md)."""
    import lambdahat.truth as truth_module
    import lambdahat.validation as validation

    small = truth_module.scale_cases(["1e3"], n=2000)
    monkeypatch.setattr(truth_module, "scale_cases", lambda sizes: small)
    short = {
        k: CaseSettings(1e-5, 10.0, draws=20, burnin_steps=40, chains=2) for k in validation.SCALE_SETTINGS
    }
    monkeypatch.setattr(validation, "SCALE_SETTINGS", short)
    result = CliRunner().invoke(app, ["validate", "--scale", "1e3"])
    assert result.exit_code == 0, result.output
    assert "dln_16-16-16-16-16_r3_rot" in result.output and "1024" in result.output


def test_validate_scale_refuses_an_unknown_size():
    bad = CliRunner().invoke(app, ["validate", "--scale", "1e9"])
    assert bad.exit_code == 2 and "unknown sizes" in bad.output


def test_validate_compile_takes_auto_true_or_false(monkeypatch):
    import lambdahat.validation as validation

    seen = []
    monkeypatch.setattr(
        validation, "run_validation", lambda **kw: seen.append(kw["compile"]) or pd.DataFrame()
    )
    monkeypatch.setattr(validation, "format_table", lambda df: "")
    for flag, expected in ((None, "auto"), ("true", True), ("FALSE", False)):
        args = ["validate", "--quick"] + ([] if flag is None else ["--compile", flag])
        assert CliRunner().invoke(app, args).exit_code == 0
        assert seen[-1] == expected
    bad = CliRunner().invoke(app, ["validate", "--compile", "sometimes"])
    assert bad.exit_code != 0 and "auto, true or false" in bad.output


def test_validate_burnin_steps_takes_a_number_or_auto(monkeypatch):
    import lambdahat.validation as validation

    seen = []
    monkeypatch.setattr(
        validation, "run_validation", lambda **kw: seen.append(kw["burnin_steps"]) or pd.DataFrame()
    )
    monkeypatch.setattr(validation, "format_table", lambda df: "")
    for flag, expected in ((None, None), ("auto", "auto"), ("300", 300)):
        args = ["validate", "--quick"] + ([] if flag is None else ["--burnin-steps", flag])
        assert CliRunner().invoke(app, args).exit_code == 0
        assert seen[-1] == expected
    bad = CliRunner().invoke(app, ["validate", "--burnin-steps", "long"])
    assert bad.exit_code == 2 and "whole number or 'auto'" in bad.output


@pytest.mark.slow
def test_validation_with_an_automatic_burnin_records_the_one_chosen():
    from lambdahat.validation import run_validation

    case = truth.regular_case(4, n=1000)
    settings = {case.name: CaseSettings(1e-3, 10.0, draws=50, chains=4, batch_size=1000)}
    df = run_validation(cases=[case], settings=settings, checks="none", burnin_steps="auto")
    row = df.iloc[0]
    assert row["status"] != "failed", row["error"]
    assert int(row["burnin_steps"]) >= 100 and int(row["burnin_steps"]) % 100 == 0  # 100 · 2^k
    fixed = run_validation(cases=[case], settings=settings, checks="none")
    assert int(fixed.iloc[0]["burnin_steps"]) == 500  # the case's own setting
