"""``burnin_steps="auto"``: the burn-in search of lambdahat.relaxation, its record, and its answer against exact
values."""

from __future__ import annotations

import math
import types

import pytest

from lambdahat import LLCConfig, LLCEstimator, prepare, sample, truth
from lambdahat.relaxation import (
    CAP_DOUBLINGS,
    MAX_START_GAP,
    MIN_BURNIN,
    burnin_cap,
    first_burnin,
    search_burnin,
)

slow = pytest.mark.slow
N = 1000
NBETA = N / math.log(N)


def _fake(gaps: dict[int, float], se: float = 0.01):
    """An ``attempt`` whose start gap at each burn-in is given (and that counts its calls)."""
    calls: list[int] = []

    def attempt(burnin: int):
        calls.append(burnin)
        bias = gaps[burnin]
        check = {"bias": bias, "bias_stderr": se} if bias is not None else {"bias": None, "bias_stderr": None}
        return types.SimpleNamespace(llc_mean=1.0, settings={"accuracy": {"start": check}})

    return attempt, calls


# ----------------------------------------------------------------------------------------------------
# The search
# ----------------------------------------------------------------------------------------------------


def test_first_burnin_and_cap_follow_the_draws_window():
    assert first_burnin(LLCConfig(burnin_steps="auto", draws=20)) == MIN_BURNIN
    config = LLCConfig(burnin_steps="auto", draws=150, steps_bw_draws=4)
    assert first_burnin(config) == 600 and burnin_cap(config) == 600 * 2**CAP_DOUBLINGS
    assert burnin_cap(config.replace(max_burnin_steps=1000)) == 1000


def test_the_search_doubles_until_the_gap_is_within_its_limit():
    attempt, calls = _fake({200: -0.5, 400: -0.2, 800: -0.06, 1600: -0.03})
    _, search = search_burnin(LLCConfig(burnin_steps="auto"), attempt)
    # -0.06 + 0.01 is above the 5 % limit, -0.03 + 0.01 within it
    assert calls == [200, 400, 800, 1600] and search.burnin_steps == 1600 and search.relaxed
    assert search.gaps == (-0.5, -0.2, -0.06, -0.03) and "relaxed after 1600" in search.reason
    assert search.summary()["tried"] == [200, 400, 800, 1600]


def test_the_search_stops_at_the_cap_and_says_so():
    attempt, calls = _fake({200: -0.5, 400: -0.3, 800: -0.2})
    _, search = search_burnin(LLCConfig(burnin_steps="auto", max_burnin_steps=1000), attempt)
    assert calls == [200, 400, 800] and search.burnin_steps == 800 and not search.relaxed
    assert "cap of 1000" in search.reason and "-20.0 %" in search.reason
    # a cap below the first burn-in is the only burn-in tried
    attempt, calls = _fake({50: -0.5})
    _, search = search_burnin(LLCConfig(burnin_steps="auto", max_burnin_steps=50), attempt)
    assert calls == [50] and not search.relaxed


def test_the_search_stops_when_the_gap_cannot_be_measured():
    attempt, calls = _fake({200: None})
    _, search = search_burnin(LLCConfig(burnin_steps="auto"), attempt)
    assert calls == [200] and not search.relaxed and "could not be measured" in search.reason


def test_a_noisy_gap_is_not_taken_for_relaxation():
    """|b| + SE is judged: a gap of zero with a standard error above the limit does not stop the search."""
    attempt, calls = _fake({200: 0.0, 400: 0.0}, se=MAX_START_GAP + 0.01)
    _, search = search_burnin(LLCConfig(burnin_steps="auto", max_burnin_steps=400), attempt)
    assert calls == [200, 400] and not search.relaxed
    with pytest.raises(ValueError, match="max_gap"):
        search_burnin(LLCConfig(burnin_steps="auto"), attempt, max_gap=1.5)


# ----------------------------------------------------------------------------------------------------
# The settings
# ----------------------------------------------------------------------------------------------------


def test_config_takes_auto_and_says_what_it_needs():
    config = LLCConfig(burnin_steps="AUTO")
    assert config.burnin_steps == "auto" and LLCConfig.from_dict(config.to_dict()) == config
    assert config.accuracy_checks() == ("start",)  # relaxation is measured by the start check
    assert LLCConfig(burnin_steps="auto", sampler="rmsprop_sgld").replace(burnin_steps=30).build_sampler()
    with pytest.raises(ValueError, match="has no schedule yet"):
        config.schedule  # noqa: B018
    with pytest.raises(ValueError, match="schedule yet"):
        LLCEstimator(burnin_steps="auto").schedule  # noqa: B018
    with pytest.raises(ValueError, match="an int >= 0 or 'auto'"):
        LLCConfig(burnin_steps="long")
    with pytest.raises(ValueError, match="localization > 0 and chains >= 2"):
        LLCConfig(burnin_steps="auto", localization=0.0)
    with pytest.raises(ValueError, match="localization > 0 and chains >= 2"):
        LLCConfig(burnin_steps="auto", chains=1)
    with pytest.raises(ValueError, match="max_burnin_steps must be an int >= 1"):
        LLCConfig(burnin_steps="auto", max_burnin_steps=0)


# ----------------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------------


def _monomial():
    """``K = w1² w2⁴`` (λ = 1/4): chains from w* start on the singular set and relax slowly."""
    case = truth.monomial_case([1, 2], n=N)
    exact, kind = case.reference(NBETA, 10.0)
    assert kind == "exact posterior"
    return case, exact


def _sample_auto(case, seed: int, **settings):
    """``sample`` on ``case`` with ``burnin_steps="auto"``, γ = 10, nβ = n/log n and ``settings``; the problem,
    config and result."""
    config = LLCConfig(burnin_steps="auto", localization=10.0, nbeta=NBETA, **settings)
    problem = prepare(case.model, case.loader(N), config, criterion_fn=case.criterion_fn, compile=False)
    return problem, config, sample(problem, config, seed=seed, show_progress=False, warn=False)


def test_the_chosen_run_is_recorded_and_reproducible():
    case, _ = _monomial()
    problem, config, result = _sample_auto(
        case, 1, draws=50, chains=4, learning_rate=5e-4, max_burnin_steps=400
    )
    search = result.settings["burnin_search"]
    assert search["tried"][0] == MIN_BURNIN and search["tried"][-1] == result.settings["burnin_steps"]
    assert result.settings["checks"] == "auto" and list(result.settings["accuracy"]) == ["start"]
    assert result.loss_trace.shape[1] == result.settings["burnin_steps"] + config.draws
    again = sample(problem, config, seed=1, show_progress=False, warn=False)
    assert again.llcs.tolist() == result.llcs.tolist() and again.settings["burnin_search"] == search


@slow
def test_the_automatic_burnin_closes_on_the_exact_posterior_mean_of_a_singular_potential():
    """From w* the chains read below the exact posterior mean after a short burn-in (tests/test_accuracy.py: under
    half of it after 20 steps), and the start check says so; the search doubles the burn-in until the bracket
    closes, and λ̂ then agrees with the exact value. Tolerance: 4 SE + 3 % of λ̂ (the step bias at this ε,
    measured 1-5 % on this potential), the same as the start check's own test."""
    case, exact = _monomial()
    _, _, result = _sample_auto(case, 3, draws=200, chains=64, learning_rate=5e-4)
    search = result.settings["burnin_search"]
    assert search["relaxed"] and len(search["tried"]) > 1, search
    first_gap = abs(search["gaps"][0]) + search["gap_stderrs"][0]
    assert first_gap > MAX_START_GAP  # the first burn-in was too short
    assert abs(result.llc_mean - exact) <= 4 * result.llc_stderr + 0.03 * exact, (result.llc_mean, exact)
    start = result.settings["accuracy"]["start"]
    assert abs(start["bias"]) + start["bias_stderr"] <= MAX_START_GAP


@slow
def test_auto_step_and_auto_burnin_together_keep_both_records():
    case = truth.regular_case(10, n=N)
    _, _, result = _sample_auto(case, 0, draws=200, chains=4, learning_rate="auto")
    settings = result.settings
    assert settings["learning_rate"] == "auto" and settings["calibration"]["learning_rate"] > 0
    assert set(settings["accuracy"]) == {"step", "localization", "start"}
    assert settings["burnin_steps"] == settings["burnin_search"]["burnin_steps"]
    exact, _ = case.reference(NBETA, 10.0)
    assert abs(result.llc_mean - exact) <= 0.10 * exact  # the 10 % the trust policy aims at


def test_a_search_that_stops_unrelaxed_says_so_in_the_guidance():
    case, _ = _monomial()
    _, _, result = _sample_auto(case, 0, draws=20, chains=4, learning_rate=1e-6, max_burnin_steps=100)
    assert not result.settings["burnin_search"]["relaxed"] and result.status == "untrusted"
    assert any("burnin_steps='auto': not relaxed at the cap of 100" in text for text in result.trust_notes)
    assert any(reason.startswith("start bias") for reason in result.trust_reasons)
