"""The accuracy checks: each companion measures its bias of λ̂, checked against exact values."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

import lambdahat.accuracy as accuracy_module
from lambdahat import LLCConfig, prepare, sample, truth
from lambdahat.accuracy import (
    AccuracyCheck,
    check_accuracy,
    companion_config,
    paired_difference,
    with_accuracy,
)
from lambdahat.chains import StepNoise, start_positions
from lambdahat.problem import run_chains
from lambdahat.rng import ChainNoise
from lambdahat.trust import assess

slow = pytest.mark.slow
N = 1000
NBETA = N / math.log(N)


def _problem(case, config, batch_size=100):
    return prepare(case.model, case.loader(batch_size), config, criterion_fn=case.criterion_fn, compile=False)


def _exact_step_bias(case, config) -> float:
    """``λ̂(2ε)/λ̂(ε) − 1`` at stationarity, from the exact SGLD expectation of the regular case."""
    fine, _ = case.reference(NBETA, config.localization, config.learning_rate)
    coarse, _ = case.reference(NBETA, config.localization, 2 * config.learning_rate)
    return coarse / fine - 1


# ----------------------------------------------------------------------------------------------------
# Pieces
# ----------------------------------------------------------------------------------------------------


def test_coarsened_noise_is_the_normalized_sum_of_the_fine_steps_noise():
    fine = ChainNoise(3, [0, 1], 5, "cpu", torch.float32)
    coarse = StepNoise(3, [0, 1], 5, torch.device("cpu"), torch.float32, coarsen=2)
    for t in range(4):
        expected = (fine.at(2 * t) + fine.at(2 * t + 1)) / math.sqrt(2)
        torch.testing.assert_close(coarse.current(), expected)
        coarse.advance()
    with pytest.raises(RuntimeError, match="one by one"):
        coarse.following(8)


def test_dispersed_starts_depend_on_seed_and_chain_only_and_respect_the_projection():
    w = torch.arange(6, dtype=torch.float32)
    both = start_positions(w, 7, [0, 1], 0.5)
    assert torch.equal(both[1], start_positions(w, 7, [1], 0.5)[0])
    assert not torch.equal(both[0], start_positions(w, 8, [0], 0.5)[0])
    z = (both - w) / 0.5
    assert abs(float(z.std()) - 1.0) < 0.6  # standard normal numbers (6 x 2 of them)
    u = torch.zeros(6)
    u[2] = 1.0
    assert torch.all(start_positions(w, 7, [0, 1], 0.5, u)[:, 2] == w[2])
    assert torch.equal(start_positions(w, 7, [0, 1]), w.expand(2, 6))


def test_companion_config_keeps_the_sampled_time():
    config = LLCConfig(learning_rate=1e-3, burnin_steps=100, draws=50, steps_bw_draws=4, chains=8)
    c = companion_config(config, 4, localization=5.0)
    assert (c.learning_rate, c.burnin_steps, c.draws, c.steps_bw_draws, c.chains, c.localization) == (
        2e-3,
        50,
        50,
        2,
        4,
        5.0,
    )
    time = lambda cfg: cfg.learning_rate * cfg.total_steps  # noqa: E731
    assert time(c) == pytest.approx(time(config))


def test_paired_difference_skips_chains_that_diverged_in_either_run():
    class R:
        def __init__(self, llcs, diverged):
            self.llcs, self.diverged = torch.tensor(llcs), torch.tensor(diverged)

    mean, se, kept = paired_difference(
        R([2.0, 5.0, 4.0, 3.0], [False] * 4), R([1.0, 1.0, 2.0, 1.0], [False, True, False, False]), 1.0
    )
    assert (
        kept == 3
        and mean == pytest.approx(5 / 3)
        and se == pytest.approx(float(torch.tensor([1.0, 2, 2]).std()) / 3**0.5)
    )
    assert math.isnan(paired_difference(R([1.0], [True]), R([1.0], [False]), 1.0)[0])


def test_checks_supersede_the_proxies_they_measure():
    good = dict(rhat=1.01, ess=400.0, trend_p=0.5, chains=4, llc_mean=3.0, temperature_stderr=0.01)
    proxies = assess(acceptance=0.5, temperature=0.7, distance_trend_p=1e-6, distance_trend_z=5.0, **good)
    assert proxies.status == "untrusted" and any("acceptance" in r for r in proxies.reasons)
    passed = {
        name: AccuracyCheck(name, "", 3.0, 3.0, 0.01, 0.005, 4) for name in ("step", "localization", "start")
    }
    measured = assess(
        acceptance=0.5, temperature=0.7, distance_trend_p=1e-6, distance_trend_z=5.0, accuracy=passed, **good
    )
    assert measured.status == "ok", measured.reasons
    assert any("acceptance" in n and "step check measured" in n for n in measured.notes)
    assert any("temperature" in n and "start check measured" in n for n in measured.notes)
    failed = {**passed, "localization": AccuracyCheck("localization", "", 4.0, 3.0, -0.2, 0.01, 4)}
    verdict = assess(accuracy=failed, **good)
    assert verdict.status == "untrusted" and verdict.reasons == ("localization bias -20.0 % ± 1.0 %",)
    assert "lower localization" in verdict.advice[0]
    # as stored in a result's settings (JSON), the checks judge the same
    as_dicts = {name: check.to_dict() for name, check in failed.items()}
    assert assess(accuracy=as_dicts, **good) == verdict


def test_check_accuracy_refuses_bad_arguments():
    case = truth.regular_case(2, n=N)
    config = LLCConfig(draws=10, chains=2, burnin_steps=5, learning_rate=1e-3, localization=1.0, nbeta=NBETA)
    problem = _problem(case, config)
    result = run_chains(problem, config, seed=0, show_progress=False, warn=False)
    with pytest.raises(ValueError, match="unknown checks"):
        check_accuracy(problem, config, result, checks=("steps",))
    with pytest.raises(ValueError, match="chains must be >= 2"):
        check_accuracy(problem, config, result, chains=1)
    with pytest.raises(ValueError, match="not 'auto'"):
        check_accuracy(problem, config.replace(learning_rate="auto"), result)


def test_doctests():
    assert doctest.testmod(accuracy_module).failed == 0


# ----------------------------------------------------------------------------------------------------
# Against exact values
# ----------------------------------------------------------------------------------------------------


@slow
@pytest.mark.parametrize("eps_kappa", [0.1, 0.4])
def test_step_check_measures_the_exact_step_bias_of_a_gaussian(eps_kappa):
    """On ``K = ||w||²`` (d = 10, full-data gradient) the stationary ``E[nβK]`` at ε is exact, so the step check's
    ``λ̂(2ε)/λ̂(ε) − 1`` has an exact value. Tolerance: 4 standard errors of the paired difference plus 1 % for
    the finite burn-in (the chains start at w* and relax in ``1/(εκ)`` steps; 3000 burn-in steps are 300 and more
    relaxation times)."""
    case = truth.regular_case(10, n=N)
    kappa = 2 * NBETA + 10.0
    config = LLCConfig(
        draws=2000,
        chains=8,
        burnin_steps=3000,
        learning_rate=eps_kappa / kappa,
        localization=10.0,
        nbeta=NBETA,
    )
    problem = _problem(case, config, batch_size=N)
    result = run_chains(problem, config, seed=1, show_progress=False, warn=False)
    check = check_accuracy(problem, config, result, checks=("step",))["step"]
    exact = _exact_step_bias(case, config)
    assert abs(check.bias - exact) <= 4 * check.bias_stderr + 0.01, (check, exact)
    assert check.bias_stderr < 0.02  # the coupled companion makes the difference precise


@slow
def test_step_check_sees_every_batch_of_a_loader_in_a_fixed_order():
    """A list of 4 batches whose losses at w* differ (batches 0 and 2 fit exactly, 1 and 3 are noisy): the 2ε
    companion used to take the first batch of every pair of steps, i.e. batches 0 and 2 only, and read −377 %
    (the even batches' loss, not the step). Taking the second batch in odd passes (chains.coarse_pick), it reads
    the step's own bias, a few percent on this regular model at ε = 1e-3 (measured +4.4 % ± 0.5 %); the
    tolerance is the policy's 10 %."""
    torch.manual_seed(0)
    x = torch.randn(32, 2)
    y = x @ torch.tensor([[1.0], [-2.0]])
    y[8:16] += 1.5 * torch.randn(8, 1)
    y[24:32] += 1.5 * torch.randn(8, 1)
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():  # w* = the least-squares fit of all 32 samples (with the bias column)
        design = torch.cat([x, torch.ones(32, 1)], dim=1)
        fit = torch.linalg.lstsq(design, y).solution.squeeze(1)
        model.weight.copy_(fit[:2].unsqueeze(0))
        model.bias.copy_(fit[2:])
    loader = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]
    config = LLCConfig(
        draws=400, chains=8, burnin_steps=200, learning_rate=1e-3, localization=1.0, nbeta=10.0, checks="step"
    )
    problem = prepare(model, loader, config, criterion_fn=torch.nn.functional.mse_loss)
    result = sample(problem, config, seed=0, show_progress=False, warn=False)
    step = result.settings["accuracy"]["step"]
    assert abs(step["bias"]) < 0.10, step
    assert result.llc_mean > 0, result.llc_mean


def test_localization_check_measures_the_exact_shrinkage_of_a_gaussian():
    """``2 (λ̂(γ) − λ̂(γ/2))`` over λ̂(γ) against the exact stationary values at both γ; tolerance 4 SE + 2 %
    (the 1 % of the finite burn-in, doubled by the extrapolation)."""
    case = truth.regular_case(4, a=0.02, n=N)  # nβh = 2.9 against γ = 5: the localization removes most of λ
    config = LLCConfig(
        draws=2000, chains=8, burnin_steps=2000, learning_rate=2e-3, localization=5.0, nbeta=NBETA
    )
    problem = _problem(case, config, batch_size=N)
    result = run_chains(problem, config, seed=2, show_progress=False, warn=False)
    check = check_accuracy(problem, config, result, checks=("localization",))["localization"]
    at_gamma, _ = case.reference(NBETA, 5.0, 2e-3)
    at_half, _ = case.reference(NBETA, 2.5, 2e-3)
    exact = 2 * (at_gamma - at_half) / at_gamma  # extrapolated to γ → 0 to first order
    assert exact < -0.2
    assert abs(check.bias - exact) <= 4 * check.bias_stderr + 0.02, (check, exact)
    assert not check.passed


@slow
def test_the_bracket_closes_on_the_exact_posterior_mean_of_a_singular_potential():
    """``K = w1² w2⁴`` (λ = 1/4) has slow directions: chains from w* start on the singular set. After a short run
    the chains from w* read far below the exact posterior mean and the dispersed ones near it (the start check
    fails); after a long one both groups agree with it and the check passes. Tolerance of "agree": 4 SE + 3 % of λ̂
    (the step bias at ε (κ_eff) ≈ 0.01, measured 1-5 % on this potential, see calibration history)."""
    case = truth.monomial_case([1, 2], n=N)
    exact, kind = case.reference(NBETA, 10.0)
    assert kind == "exact posterior"
    config = LLCConfig(
        draws=100, chains=16, burnin_steps=20, learning_rate=5e-4, localization=10.0, nbeta=NBETA
    )
    problem = _problem(case, config, batch_size=N)
    short = run_chains(problem, config, seed=3, show_progress=False, warn=False)
    start = check_accuracy(problem, config, short, checks=("start",))["start"]
    # chains from w* read far below, the dispersed ones at or above (within their noise): the check fails
    assert short.llc_mean < 0.5 * exact and start.llc_mean > 0.8 * exact
    assert start.bias < 0 and not start.passed

    long = config.replace(burnin_steps=4000, draws=4000)
    result = run_chains(problem, long, seed=3, show_progress=False, warn=False)
    start = check_accuracy(problem, long, result, checks=("start",))["start"]
    se = result.llc_stderr
    for value in (result.llc_mean, start.llc_mean):
        assert abs(value - exact) <= 4 * se + 0.03 * exact, (value, exact, se)
    assert start.passed, start


@slow
def test_sample_runs_the_configured_checks_and_the_verdict_reads_them():
    case = truth.regular_case(10, n=N)
    config = LLCConfig(
        draws=300,
        chains=4,
        burnin_steps=300,
        learning_rate=2e-3,
        localization=10.0,
        nbeta=NBETA,
        checks="step",
    )
    problem = _problem(case, config, batch_size=N)
    with pytest.warns(RuntimeWarning, match="twice the step"):
        result = sample(problem, config, seed=0, show_progress=False)
    step = result.settings["accuracy"]["step"]
    assert set(result.settings["accuracy"]) == {"step"} and step["bias"] > 0.1  # εκ = 0.6
    assert result.status == "untrusted" and result.trust_reasons[0].startswith("step bias")
    rejudged = with_accuracy(result, {}, warn=False)
    assert "accuracy not measured" in " ".join(rejudged.trust_notes)
