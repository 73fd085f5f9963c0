"""The trust policy: one table of thresholds behind the warnings, the status, the tables and the figures."""

from __future__ import annotations

import doctest
import math
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

import lambdahat.trust as trust_module
from lambdahat import diagnostics, plotting
from lambdahat.config import Schedule
from lambdahat.plotting import plot_diagnostics
from lambdahat.result import LLCResult
from lambdahat.samplers import Info
from lambdahat.sweeps import plots as sweep_plots
from lambdahat.sweeps.runner import result_row
from lambdahat.trust import (
    DISTANCE_P_VALUE,
    MAX_RHAT,
    MIN_ACCEPTANCE,
    MIN_ESS,
    TREND_P_VALUE,
    Verdict,
    acceptance_kind,
    assess,
    describe,
    status_kind,
    status_line,
)

#: Numbers of a run that passes every check.
GOOD = dict(
    acceptance=0.95,
    acceptance_kind="gradient estimate",
    rhat=1.01,
    ess=400.0,
    trend_p=0.5,
    trend_z=0.3,
    distance_trend_p=0.5,
    distance_trend_z=0.4,
    diverged=[],
    chains=4,
    llc_mean=3.0,
    llc_stderr=0.1,
    temperature=1.01,
    temperature_stderr=0.01,
)

FIELD = {name: i for i, name in enumerate(Info._fields)}
CHAINS, DRAWS, BURNIN = 4, 200, 50
INIT_LOSS, NBETA = 0.99, 10.0


def synthetic(acceptance: float = 0.95, distance_slope: float = 0.0, seed: int = 0) -> torch.Tensor:
    """A ``[fields, chains, steps]`` trace: i.i.d. losses around 1 (stationary, well mixed), a constant
    acceptance, and a distance ``||w − w*||`` that grows by ``distance_slope`` per step."""
    steps = BURNIN + DRAWS
    g = torch.Generator().manual_seed(seed)
    trace = torch.zeros(len(Info._fields), CHAINS, steps, dtype=torch.float64)
    trace[FIELD["loss"]] = 1.0 + 0.01 * torch.randn(CHAINS, steps, generator=g, dtype=torch.float64)
    trace[FIELD["log_accept"]] = math.log(acceptance) if acceptance > 0 else math.nan
    trace[FIELD["grad_norm"]] = 1.0
    trace[FIELD["noise_norm"]] = 1.0
    noise = 0.01 * torch.randn(CHAINS, steps, generator=g, dtype=torch.float64)
    trace[FIELD["distance"]] = 1.0 + distance_slope * torch.arange(steps, dtype=torch.float64) + noise
    trace[FIELD["virial"]] = 1.0 + 0.01 * torch.randn(CHAINS, steps, generator=g, dtype=torch.float64)
    return trace


def from_trace(trace: torch.Tensor, sampler: str = "sgld", warn: bool = False) -> LLCResult:
    schedule = Schedule(draws=DRAWS, burnin_steps=BURNIN, steps_bw_draws=1)
    settings = {"sampler": sampler, "burnin_steps": BURNIN, "steps_bw_draws": 1, "dim": 1}
    return LLCResult.from_trace(trace, schedule, INIT_LOSS, NBETA, 1e-3, 10.0, 0, settings, warn=warn)


# ---------------------------------------------------------------- the verdict from plain numbers (deterministic)


def other_notes(v: Verdict) -> list[str]:
    """The notes of a verdict but the one every verdict without accuracy checks carries."""
    return [note for note in v.notes if "accuracy not measured" not in note]


def test_good_numbers_are_ok():
    v = assess(**GOOD)
    assert v.status == "ok" and not v.reasons and not v.advice
    assert v.ok and status_line(v) == "ok" and v.line == "ok"
    # without accuracy checks the verdict says that it rests on proxies
    assert any("accuracy not measured" in note for note in v.notes)


@pytest.mark.parametrize(
    "change, reason, advice",
    [
        (
            dict(acceptance=MIN_ACCEPTANCE - 0.04),
            f"acceptance 0.86 < {MIN_ACCEPTANCE:g}",
            "lower learning_rate",
        ),
        (dict(rhat=MAX_RHAT + 0.13), f"R-hat 1.23 > {MAX_RHAT:g}", "the chains disagree"),
        (dict(ess=MIN_ESS / 2), f"ESS 50 < {MIN_ESS}", "raise draws"),
        (dict(trend_p=TREND_P_VALUE / 10, trend_z=-9.0), "loss still drifting (p = 0.0001)", "t = -9.0"),
        (
            dict(distance_trend_p=DISTANCE_P_VALUE / 10, distance_trend_z=20.0),
            "distance still growing (p = 0.0001)",
            "raise burnin_steps",
        ),
        (dict(diverged=[2]), "1 of 4 chains diverged", "chains [2] diverged"),
        (dict(llc_mean=-1.5), "λ̂ = -1.5 < 0", "not a local minimum"),
        (dict(llc_stderr=0.4), "standard error 13 % of λ̂", "run more chains"),
        (dict(temperature=1.3), "temperature 1.30 ≠ 1", "lower learning_rate"),
        (dict(temperature=0.5), "temperature 0.50 ≠ 1", "raise burnin_steps"),
    ],
)
def test_each_threshold_crossed_makes_the_estimate_untrusted(change, reason, advice):
    v = assess(**{**GOOD, **change})
    assert v.status == "untrusted" and v.reasons == (reason,)
    assert len(v.advice) == 1 and advice in v.advice[0]
    assert status_line(v) == f"untrusted: {reason}"


def test_numbers_on_the_thresholds_pass():
    v = assess(
        **{
            **GOOD,
            "acceptance": MIN_ACCEPTANCE,
            "rhat": MAX_RHAT,
            "ess": float(MIN_ESS),
            "trend_p": TREND_P_VALUE,
            "distance_trend_p": DISTANCE_P_VALUE,
            "llc_stderr": 0.3,  # MAX_RELATIVE_STDERR of llc_mean = 3
        }
    )
    assert v.ok


def test_a_temperature_within_its_noise_or_tolerance_passes():
    assert assess(**{**GOOD, "temperature": 1.3, "temperature_stderr": 0.1}).ok  # 3 standard errors
    assert assess(**{**GOOD, "temperature": 1.09, "temperature_stderr": 0.001}).ok  # within ± 0.1


def test_an_unknown_temperature_is_a_note_not_a_pass_in_silence():
    v = assess(**{**GOOD, "temperature": math.nan})
    assert v.ok and "temperature not checked" in v.notes[0]


def test_a_shrinking_distance_is_not_a_growing_one():
    assert assess(**{**GOOD, "distance_trend_p": 1e-9, "distance_trend_z": -30.0}).ok


def test_the_text_never_rounds_a_number_onto_its_threshold():
    v = assess(**{**GOOD, "acceptance": 0.8999, "rhat": 1.1004, "ess": 99.7})
    assert v.reasons == ("acceptance 0.8999 < 0.9", "R-hat 1.1004 > 1.1", "ESS 99.7 < 100")


def test_several_failures_are_all_named_in_one_status_line():
    v = assess(**{**GOOD, "acceptance": 0.7, "rhat": 1.3, "diverged": 1, "chains": None})
    assert v.status == "untrusted"
    assert status_line(v) == "untrusted: 1 diverged; acceptance 0.70 < 0.9; R-hat 1.30 > 1.1"


@pytest.mark.parametrize("acceptance", [0.857, 0.87, 0.897])
def test_the_acceptances_that_used_to_pass_silently_are_untrusted(acceptance):
    # the old warning threshold was 0.8: runs at 0.857-0.897 printed nothing
    v = assess(**{**GOOD, "acceptance": acceptance})
    assert v.status == "untrusted" and v.reasons[0].startswith("acceptance 0.8")
    assert v.advice[0].startswith(f"mean MALA acceptance is {v.reasons[0].split()[1]} (< {MIN_ACCEPTANCE:g}")


def test_every_chain_diverged_is_its_own_status():
    v = assess(**{**GOOD, "diverged": [0, 1, 2, 3], "acceptance": 0.1, "rhat": 9.0})
    assert v.status == "diverged" and status_line(v) == "diverged"
    assert v.reasons == ("every chain diverged",) and not v.notes
    assert "chains [0, 1, 2, 3] diverged" in v.advice[0] and "there is no estimate" in v.advice[1]


def test_sgnht_acceptance_is_not_available_and_says_so():
    v = assess(**{**GOOD, "acceptance": math.nan, "acceptance_kind": "not available"}, sampler="sgnht")
    assert v.ok and not v.advice
    (note,) = other_notes(v)
    assert note.startswith(
        "MALA acceptance not checked: sgnht's update has no Metropolis–Hastings counterpart"
    )
    assert "the R-hat, ESS, drift, distance and divergence checks apply" in note
    # nothing judges an acceptance the sampler does not define, even a number
    assert assess(**{**GOOD, "acceptance": 0.2, "acceptance_kind": "not available"}).ok


def test_a_nan_acceptance_is_never_silent():
    v = assess(**{**GOOD, "acceptance": math.nan})
    assert v.ok and len(other_notes(v)) == 1 and "MALA acceptance not checked" in other_notes(v)[0]
    one_chain = assess(acceptance=0.95, chains=1, llc_mean=1.0)
    assert one_chain.ok and any(
        "not checked: R-hat, ESS, loss drift, distance growth" in n for n in one_chain.notes
    )


def test_assess_refuses_an_unknown_acceptance_kind():
    with pytest.raises(ValueError, match="acceptance_kind must be one of"):
        assess(acceptance=0.95, acceptance_kind="metropolis")


def test_acceptance_kinds_and_status_words():
    assert acceptance_kind("sgld") == acceptance_kind("rmsprop_sgld") == "gradient estimate"
    assert acceptance_kind("sgnht") == "not available"
    assert [status_kind(s) for s in ("ok", "untrusted: ESS 3 < 100", "untrusted", "diverged", "failed")] == [
        "ok",
        "untrusted",
        "untrusted",
        "diverged",
        "failed",
    ]
    assert status_kind(None) == status_kind(math.nan) == status_kind("missing") == "missing"


# ---------------------------------------------------------------- one table behind every consumer


def test_thresholds_live_only_in_trust():
    assert plotting.TARGET_ACCEPTANCE is MIN_ACCEPTANCE
    assert diagnostics.TREND_P_VALUE is TREND_P_VALUE
    assert not hasattr(diagnostics, "LOW_ACCEPTANCE") and not hasattr(diagnostics, "advice")
    assert not hasattr(sweep_plots, "MAX_RHAT") and not hasattr(sweep_plots, "MIN_MALA_ACCEPTANCE")
    assert "untrusted" in sweep_plots.FLAG_TEXT and len(sweep_plots.FLAG_TEXT) < 80  # fits a legend
    for value in (f"{MIN_ACCEPTANCE:g}", f"{MAX_RHAT:g}", f"{MIN_ESS}", f"{TREND_P_VALUE:g}"):
        assert value in describe()


def test_a_well_mixed_synthetic_run_is_ok():
    r = from_trace(synthetic())
    assert r.status == "ok" and r.warnings == () and r.trust_reasons == () and other_notes(r.verdict) == []
    assert r.ess > MIN_ESS and r.rhat < MAX_RHAT and r.acceptance_kind == "gradient estimate"
    m = r.to_metrics()
    assert m["status"] == "ok" and m["trust_reasons"] == [] and m["acceptance_kind"] == "gradient estimate"
    assert r.verdict == Verdict("ok", notes=r.trust_notes) and r.status_line == "ok"


def test_one_policy_drives_warning_framing_and_table_status():
    # ||w − w*|| rises through every draw: the old diagnostics said "warnings: none"
    with pytest.warns(RuntimeWarning, match=r"lambdahat: the distance \|\|w − w\*\|\| is still growing"):
        grown = from_trace(synthetic(distance_slope=0.01), warn=True)
    ok = from_trace(synthetic())
    assert grown.distance_trend_z > 0
    # the result
    assert grown.status == "untrusted" and len(grown.trust_reasons) == 1
    assert grown.trust_reasons[0].startswith("distance still growing (p = ")
    assert len(grown.warnings) == 1 and "is still growing" in grown.warnings[0]
    assert grown.to_metrics()["trust_reasons"] == list(grown.trust_reasons)
    # the table row: status column and warnings
    row = result_row(grown)
    assert row["status"] == grown.status_line == f"untrusted: {grown.trust_reasons[0]}"
    assert row["warnings"] == grown.warnings[0]
    assert result_row(ok)["status"] == "ok"
    # the sweep figures frame it (and only it)
    table = pd.DataFrame(
        [
            {**result_row(ok), "learning_rate": 1e-4, "localization": 10.0, "nbeta": NBETA},
            {**result_row(grown), "learning_rate": 1e-3, "localization": 10.0, "nbeta": NBETA},
        ]
    )
    assert sweep_plots.flagged(table).tolist() == [False, True]
    fig = sweep_plots.plot_grid(table)
    crosses = [line for line in fig.axes[0].lines if line.get_marker() == "x"]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [1e-3]
    plt.close(fig)
    # the diagnostics figure
    text = plot_diagnostics(grown).axes[3].texts[0].get_text()
    assert "status: untrusted: distance still growing" in text and "is still growing" in text
    assert "(untrusted)" in plotting.plot_trace(grown).axes[0].get_title()


@pytest.mark.parametrize("acceptance", [0.857, 0.87, 0.897])
def test_a_run_at_acceptance_below_0_9_warns(acceptance):
    with pytest.warns(RuntimeWarning, match=r"lambdahat: mean MALA acceptance is 0\.8\d+ \(< 0\.9"):
        r = from_trace(synthetic(acceptance=acceptance), warn=True)
    assert r.mala_acceptance == pytest.approx(acceptance)
    assert r.status == "untrusted" and r.trust_reasons[0].startswith("acceptance 0.8")


def test_sgnht_result_says_why_its_acceptance_is_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: the missing acceptance is a note, not a problem
        r = from_trace(synthetic(acceptance=0.0), sampler="sgnht", warn=True)
    assert math.isnan(r.mala_acceptance) and r.acceptance_kind == "not available"
    assert r.status == "ok" and not r.warnings
    assert "no Metropolis–Hastings counterpart" in r.trust_notes[0]
    assert r.to_metrics()["trust_notes"] == list(r.trust_notes)
    assert "not available for sgnht (not checked)" in plot_diagnostics(r).axes[3].texts[0].get_text()


def test_every_chain_diverged_gives_status_diverged_everywhere():
    trace = synthetic()
    trace[FIELD["loss"], :, BURNIN + 10 :] = math.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = from_trace(trace, warn=True)
    assert [str(w.message).split(":")[1].split("(")[0].strip() for w in caught] == [
        "chains [0, 1, 2, 3] diverged",
        "every chain diverged",
    ]
    assert r.status == "diverged" and math.isnan(r.llc_mean)
    assert result_row(r)["status"] == "diverged"
    assert sweep_plots.flagged(pd.DataFrame([result_row(r)])).tolist() == [True]


def test_doctests():
    out = doctest.testmod(trust_module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert out.failed == 0 and out.attempted > 0


def test_the_runners_recorded_acceptance_kind_wins():
    schedule = Schedule(draws=DRAWS, burnin_steps=BURNIN, steps_bw_draws=1)
    settings = {"sampler": "sgld", "acceptance_kind": "exact"}
    r = LLCResult.from_trace(
        synthetic(acceptance=0.8), schedule, INIT_LOSS, NBETA, 1e-3, 10.0, 0, settings, warn=False
    )
    assert r.acceptance_kind == "exact" and r.to_metrics()["acceptance_kind"] == "exact"
    assert r.trust_reasons == ("acceptance 0.80 < 0.9",) and "computed exactly" in r.warnings[0]


def test_checks_not_made_are_named_in_the_notes():
    class Check:
        bias, bias_stderr = 0.01, 0.01

    verdict = assess(**GOOD, accuracy={"step": Check()})
    assert verdict.ok
    assert any("accuracy checks not made: localization, start" in note for note in verdict.notes)
    assert not any("accuracy checks not made" in n for n in assess(**GOOD).notes)


def test_the_documented_rule_table_names_every_rule():
    """docs/concepts.md's table of rules is written by hand: it must name every rule of RULES, and no other."""
    from pathlib import Path

    from lambdahat.trust import RULES

    page = Path(__file__).resolve().parents[1] / "docs" / "concepts.md"
    if not page.exists():
        pytest.skip("no docs/ beside the tests (an installed sdist without the docs)")
    text = page.read_text()
    table = text[text.index("| rule | untrusted when |") :].split("\n\n")[0]
    named = {name.strip() for row in table.splitlines()[2:] for name in row.split("|")[1].split(",")}
    assert named == {rule.name for rule in RULES}
