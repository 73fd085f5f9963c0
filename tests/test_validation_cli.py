"""`lambdahat validate`: the table end to end (quick set), and the reference values it relies on."""

from __future__ import annotations

import pytest
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
