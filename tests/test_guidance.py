"""γ and nβ guidance (lambdahat.guidance): each warning fires on its side of its threshold, with its numbers."""

from __future__ import annotations

import doctest
import math
from types import SimpleNamespace

import pytest

import lambdahat.guidance as guidance
from lambdahat.guidance import (
    MAX_LOCALIZATION_SHARE,
    MIN_RELAXATIONS,
    advise,
    localization_advice,
    nbeta_advice,
    relaxation_advice,
    relaxations,
    thermostat_advice,
)


def test_relaxations_of_the_flattest_direction():
    # R = ε (γ + wd) B / 2: the OU process along a flat direction has rate ε(γ + wd)/2 per step
    assert relaxations(1e-3, 10.0, 300, weight_decay=2.0) == pytest.approx(1e-3 * 12.0 * 300 / 2)


def test_relaxation_advice_fires_below_its_threshold_and_gives_the_fix():
    burnin = 200
    at_threshold = 2 * MIN_RELAXATIONS / (100.0 * burnin)  # ε at which R = MIN_RELAXATIONS for γ = 100
    assert relaxation_advice(at_threshold * 1.01, 100.0, burnin) is None
    text = relaxation_advice(at_threshold / 2, 100.0, burnin)
    assert text is not None and "R = ε(γ + wd)B/2 = 0.75" in text
    # the advised burn-in and localization each reach the threshold at this step
    assert "burnin_steps to 400" in text and "localization to 200" in text
    assert relaxations(at_threshold / 2, 100.0, 400) == pytest.approx(MIN_RELAXATIONS)


def test_localization_advice_states_the_quadratic_lower_bound():
    # γ/(nβh + γ) is the exact share a quadratic direction of curvature h loses; the stiffest loses least
    nbeta, h = 100.0, 1.0
    gamma_at = MAX_LOCALIZATION_SHARE / (1 - MAX_LOCALIZATION_SHARE) * nbeta * h  # share exactly at threshold
    assert localization_advice(gamma_at * 0.99, nbeta, h) is None
    text = localization_advice(300.0, nbeta, h)
    assert text is not None and "at least 75 %" in text  # 300 / (100 + 300)
    assert localization_advice(300.0, nbeta, math.nan) is None  # no curvature: nothing to say


def test_nbeta_advice_flags_a_batch_size_temperature():
    n = 10_000
    assert nbeta_advice(n / math.log(n), n) is None
    assert nbeta_advice(2.9 * n / math.log(n), n) is None
    assert "71x below" in nbeta_advice(64 / math.log(64), n)  # devinterp's batch_size / log(batch_size)
    assert "3.1x above" in nbeta_advice(3.1 * n / math.log(n), n)
    assert nbeta_advice(10.0, None) is None


def _result(**settings):
    base = dict(burnin_steps=200, weight_decay=0.0, sampler="sgld", calibration=None)
    base.update(settings)
    return SimpleNamespace(learning_rate=1e-4, localization=100.0, nbeta=50.0, settings=base)


def test_advise_reads_a_result_and_its_calibration():
    # R = 1e-4 · 100 · 200 / 2 = 1 < 1.5; κ̂ = nβ h + γ = 150 gives h = 1: share 100/150 ≥ 10 %
    texts = advise(_result(calibration={"curvature": 150.0}), n=10_000)  # n / log n = 1086
    assert len(texts) == 3
    assert "R = ε(γ + wd)B/2 = 1" in texts[0]
    assert "(50 × 1 = 50)" in texts[1] and "at least 67 %" in texts[1]
    assert "nβ = 50" in texts[2]
    # RMSProp-SGLD rescales the step per coordinate: no relaxation check; an explicit h overrides the calibration's
    assert advise(_result(sampler="rmsprop_sgld"), hessian_top=100.0) == []


def test_advise_passes_on_why_an_automatic_search_stopped_short():
    unaccepted = {"accepted": False, "reason": "no step within the budget had a step bias within 0.05; ..."}
    texts = advise(_result(burnin_steps=3000, calibration=unaccepted))
    assert texts == ["learning_rate='auto': no step within the budget had a step bias within 0.05; ..."]
    search = {"relaxed": False, "reason": "not relaxed at the cap of 800 burn-in steps"}
    texts = advise(_result(burnin_steps=3000, burnin_search=search))
    assert texts == ["burnin_steps='auto': not relaxed at the cap of 800 burn-in steps."]
    accepted = {"accepted": True, "reason": "learning_rate 1e-4: within 0.05"}
    assert advise(_result(burnin_steps=3000, calibration=accepted, burnin_search={"relaxed": True})) == []


def test_thermostat_advice_asks_for_tens_of_sgnht_time_units():
    text = thermostat_advice(1.25e-5, 300)  # 300 √1.25e-5 = 1.06 time units
    assert (
        "B√ε = 1.1 time units" in text
        and f"raise burnin_steps to {math.ceil(30 / math.sqrt(1.25e-5))}" in text
    )
    assert thermostat_advice(1e-4, 3000) is None  # exactly MIN_THERMOSTAT_TIME
    assert thermostat_advice(1e-4, 2999) is not None
    # advise adds it for SGNHT only (R = 1e-4 · 100 · 3000 / 2 = 15: no relaxation warning)
    assert advise(_result(burnin_steps=3000, sampler="sgnht")) == []
    texts = advise(_result(burnin_steps=500, sampler="sgnht"))
    assert len(texts) == 1 and texts[0].startswith("sgnht: the burn-in lasts B√ε = 5 time units")
    assert advise(_result(burnin_steps=500)) == []


def test_doctests():
    result = doctest.testmod(guidance, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted >= 6
