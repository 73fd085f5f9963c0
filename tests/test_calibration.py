"""Step-size (and localization) calibration: accuracy on a known answer, the search rule, the budget, errors."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

import lambdahat.calibration as calibration_module
from lambdahat import LLCEstimator, truth
from lambdahat.calibration import (
    ACCEPTANCE_MARGIN,
    TREND_Z_MAX,
    Calibration,
    CalibrationError,
    calibrate,
    calibrated_estimator,
)
from lambdahat.estimator import LLCEstimator as _EstimatorClass

N = 1000
GAMMA = 10.0


@pytest.fixture(scope="module")
def regular():
    """K = ||w||² in d = 400 (λ = 200): deterministic loss, so the acceptance floor is 1."""
    return truth.regular_case(400, n=N)


def _main_estimator(**overrides):
    settings = dict(draws=200, chains=8, burnin_steps=100, localization=GAMMA)
    settings.update(overrides)
    return LLCEstimator(**settings)


def _run(est, case, seed, **kwargs):
    return est.run(
        case.model,
        case.loader(100),
        criterion_fn=case.criterion_fn,
        seed=seed,
        compile=False,
        show_progress=False,
        warn=False,
        **kwargs,
    )


@pytest.fixture(scope="module")
def regular_calibration(regular):
    est = _main_estimator()
    return est, calibrate(regular.model, regular.loader(100), est, criterion_fn=regular.criterion_fn, seed=0)


def _nan_off_anchor(w: torch.Tensor) -> torch.Tensor:
    """0 at w* = 0 and NaN anywhere else: every step diverges."""
    return torch.where((w == 0).all(-1), (w * 0).sum(-1), torch.full(w.shape[:-1], math.nan))


def _count_chain_steps(monkeypatch) -> list[int]:
    """Record the chain-steps of every LLCEstimator.run call (chains x steps of its loss trace)."""
    counts: list[int] = []
    original = _EstimatorClass.run

    def counting_run(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        counts.append(int(result.loss_trace.shape[0] * result.loss_trace.shape[1]))
        return result

    monkeypatch.setattr(_EstimatorClass, "run", counting_run)
    return counts


# ----------------------------------------------------------------------------------------------------
# Known answer
# ----------------------------------------------------------------------------------------------------


def test_calibrated_run_accepts_near_target_and_hits_the_exact_value(regular, regular_calibration):
    est, cal = regular_calibration
    assert isinstance(cal, Calibration)
    assert cal.acceptance_floor == pytest.approx(1.0)  # deterministic loss: no minibatch noise
    main = calibrated_estimator(est, cal)
    assert main.learning_rate == cal.learning_rate and main.localization == GAMMA
    result = _run(main, regular, seed=11)
    assert 0.85 <= result.mala_acceptance <= 0.95
    exact = truth.regular_posterior_mean_nbeta_k(400, 1.0, result.nbeta, GAMMA)
    assert not result.diverged.any()
    assert abs(result.llc_mean / exact - 1) < 0.10
    # The remaining error is the SGLD step bias 1/(1 - εκ/4) - 1 (≈ 4 % here), within Monte Carlo error:
    with_step = truth.regular_posterior_mean_nbeta_k(400, 1.0, result.nbeta, GAMMA, cal.learning_rate)
    assert abs(result.llc_mean - with_step) < 4 * result.llc_stderr + 0.01 * with_step

    # Against hand tuning on the same budget: the library default ε (1e-5) has not mixed after 300 steps;
    # a careful hand choice (largest of a decade grid with acceptance ≥ 0.9, here 1e-4) is not meaningfully
    # better (it is one decade smaller, so its step bias is smaller, but it mixes 10x more slowly).
    default = _run(est, regular, seed=11, learning_rate=1e-5)
    assert abs(result.llc_mean / exact - 1) < abs(default.llc_mean / exact - 1)
    grid = [_run(est, regular, seed=11, learning_rate=lr) for lr in (1e-2, 1e-3, 1e-4, 1e-5)]
    hand = next(r for r in grid if r.mala_acceptance >= 0.9)
    assert abs(result.llc_mean / exact - 1) <= abs(hand.llc_mean / exact - 1) + 0.05


def test_max_step_bias_caps_the_step_and_the_bias(regular):
    est = _main_estimator()
    cal = calibrate(
        regular.model, regular.loader(100), est, criterion_fn=regular.criterion_fn, max_step_bias=0.01
    )
    assert cal.learning_rate * cal.curvature <= 0.04 * (1 + 1e-9)
    assert "max_step_bias" in cal.reason
    result = _run(calibrated_estimator(est, cal), regular, seed=3)
    exact = truth.regular_posterior_mean_nbeta_k(400, 1.0, result.nbeta, GAMMA)
    assert abs(result.llc_mean / exact - 1) < 0.03


# ----------------------------------------------------------------------------------------------------
# The rule
# ----------------------------------------------------------------------------------------------------


def test_chosen_step_is_the_largest_accepted_and_every_larger_one_failed(regular_calibration):
    _, cal = regular_calibration
    table = cal.table
    assert list(table["pilot"]) == list(range(len(table)))
    accepted = table[table["accepted"]]
    assert cal.learning_rate == accepted["learning_rate"].max()
    larger = table[table["learning_rate"] > cal.learning_rate]
    assert len(larger) >= 1 and not larger["accepted"].any()
    threshold = 0.9 - ACCEPTANCE_MARGIN
    row = table[table["learning_rate"] == cal.learning_rate].iloc[0]
    assert row["acceptance_ratio"] >= threshold and abs(row["trend_z"]) <= TREND_Z_MAX
    assert row["n_diverged"] == 0
    # refined: the nearest failing step is within the refinement ratio
    assert larger["learning_rate"].min() / cal.learning_rate <= calibration_module.REFINE_RATIO
    assert "largest tested step" in cal.reason and "failed" in cal.reason


def test_explicit_ladder_gives_its_largest_passing_value(regular):
    ladder = [1e-4, 3e-2, 3e-3, 1e-3, 3e-4]  # any order; walked from the top
    est = _main_estimator()
    cal = calibrate(
        regular.model,
        regular.loader(100),
        est,
        criterion_fn=regular.criterion_fn,
        learning_rates=ladder,
        refine=False,
    )
    table = cal.table
    assert cal.learning_rate in ladder
    assert list(table["learning_rate"]) == sorted(ladder, reverse=True)[: len(table)]
    assert table["accepted"].iloc[-1] and not table["accepted"].iloc[:-1].any()
    assert cal.learning_rate == 3e-4  # 1e-3 gives acceptance ≈ 0.79 at d = 400, 3e-4 ≈ 0.97
    # the table is what an independent run of the same pilot measures
    above = _run(
        LLCEstimator(
            draws=cal.pilot_draws,
            chains=cal.pilot_chains,
            burnin_steps=int(table["burnin_steps"].iloc[-2]),
            localization=GAMMA,
        ),
        regular,
        seed=0,
        learning_rate=1e-3,
    )
    assert above.mala_acceptance == pytest.approx(table["mala_acceptance"].iloc[-2])
    assert above.mala_acceptance < 0.9 - ACCEPTANCE_MARGIN


def test_minibatch_noise_floor_is_measured_and_used():
    torch.manual_seed(0)
    x = torch.randn(256, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3 * torch.randn(256, 1)
    model = torch.nn.Linear(3, 1)
    with torch.no_grad():  # least squares: w* is the minimum of the full-data loss
        sol = torch.linalg.lstsq(torch.cat([x, torch.ones(256, 1)], 1), y).solution
        model.weight.copy_(sol[:3].T)
        model.bias.copy_(sol[3])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True)
    est = LLCEstimator(draws=200, chains=4, burnin_steps=100, localization=10.0)
    cal = calibrate(model, loader, est, criterion_fn=torch.nn.functional.mse_loss)
    assert 0.5 < cal.acceptance_floor < 0.99  # batch-to-batch loss noise lowers the attainable acceptance
    row = cal.table[cal.table["learning_rate"] == cal.learning_rate].iloc[0]
    assert row["acceptance_ratio"] == pytest.approx(row["mala_acceptance"] / cal.acceptance_floor)
    assert row["mala_acceptance"] < 0.9 - ACCEPTANCE_MARGIN <= row["acceptance_ratio"]


def test_acceptance_floor_formula():
    assert calibration_module.acceptance_floor_from_losses(torch.ones(10), 1e3) == 1.0
    # ±c alternation: X = ±nβ·c, a0 = ½ + ½ erfcx(s/√2) with s = nβ·c
    value = calibration_module.acceptance_floor_from_losses(torch.tensor([0.0, 0.01] * 20), 100.0)
    assert value == pytest.approx(0.5 + 0.5 * math.exp(0.5) * math.erfc(1 / math.sqrt(2)), rel=1e-6)
    # Monte Carlo check of E[min(1, e^X)], X ~ N(0, s²)
    g = torch.Generator().manual_seed(0)
    s = 2.0
    mc = torch.randn(400_000, generator=g, dtype=torch.float64).mul(s).clamp(max=0).exp().mean()
    formula = 0.5 + 0.5 * float(torch.special.erfcx(torch.tensor(s / math.sqrt(2.0), dtype=torch.float64)))
    assert formula == pytest.approx(float(mc), abs=3e-3)


def test_every_step_diverges_raises_a_clear_error():
    case = truth.potential_case("nan_off_anchor", _nan_off_anchor, d=2, n=100, true_lambda=1.0)
    est = LLCEstimator(draws=200, chains=4, burnin_steps=100, localization=1.0)
    with pytest.raises(CalibrationError, match="every pilot diverged") as info:
        calibrate(case.model, case.loader(50), est, criterion_fn=case.criterion_fn)
    table = info.value.table
    assert len(table) >= 2 and (table["n_diverged"] > 0).all() and not table["accepted"].any()
    assert "smaller" in str(info.value)


def test_sgnht_is_searched_with_sgld_and_confirmed():
    case = truth.regular_case(50, n=N)
    est = _main_estimator(sampler="sgnht")
    cal = calibrate(case.model, case.loader(100), est, criterion_fn=case.criterion_fn)
    assert set(cal.table["sampler"]) == {"sgld", "sgnht"}
    confirm = cal.table[cal.table["stage"] == "confirm"]
    assert confirm["accepted"].iloc[-1] and confirm["learning_rate"].iloc[-1] == cal.learning_rate
    assert "SGNHT confirmed" in cal.reason


# ----------------------------------------------------------------------------------------------------
# Localization
# ----------------------------------------------------------------------------------------------------


def test_tune_localization_picks_the_smallest_stationary_value_of_its_ladder(regular):
    est = _main_estimator()
    ladder = [1.0, 10.0, 100.0]
    cal = calibrate(
        regular.model,
        regular.loader(100),
        est,
        criterion_fn=regular.criterion_fn,
        tune_localization=True,
        localizations=ladder,
    )
    # every γ keeps a quadratic stationary, so the smallest wins
    assert cal.localization == 1.0
    assert set(cal.table["localization"]) <= set(ladder)
    assert "localization 1 is the smallest of [1, 10, 100]" in cal.reason
    assert "λ̂ > 0" in cal.reason


def test_tune_localization_skips_a_value_where_the_chains_escape():
    # w* = 0 is a local minimum of K = r² - b r⁴ behind a barrier of nβ/(4b) = 0.5 nats (nβ = 37.7, b = 19):
    # without localization the chains escape (λ̂ < 0, or K runs to -inf); γ = 1000 multiplies the barrier of the
    # localized potential by (1 + γ/(2nβ))² ≈ 200.
    def double_well(w: torch.Tensor) -> torch.Tensor:
        r2 = (w * w).sum(-1)
        return r2 - 19.0 * r2 * r2

    case = truth.potential_case("escape", double_well, d=4, n=200, true_lambda=2.0)
    est = LLCEstimator(draws=400, chains=4, burnin_steps=100, localization=100.0)
    cal = calibrate(
        case.model,
        case.loader(50),
        est,
        criterion_fn=case.criterion_fn,
        tune_localization=True,
        localizations=[0.0, 1000.0],
        budget_fraction=0.5,
    )
    assert cal.localization == 1000.0
    assert "γ = 0:" in cal.reason and "left the basin" in cal.reason
    small = cal.table[cal.table["localization"] == 0.0]
    assert len(small) >= 1 and not small["accepted"].any()


# ----------------------------------------------------------------------------------------------------
# Budget
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fraction", "tune", "sampler"),
    [(0.3, False, "sgld"), (0.1, False, "sgld"), (0.3, True, "sgld"), (0.3, False, "sgnht")],
)
def test_pilot_chain_steps_stay_within_the_budget(monkeypatch, fraction, tune, sampler):
    case = truth.regular_case(20, n=N)
    est = LLCEstimator(
        draws=150, chains=6, burnin_steps=50, steps_bw_draws=2, localization=GAMMA, sampler=sampler
    )
    counts = _count_chain_steps(monkeypatch)
    cal = calibrate(
        case.model,
        case.loader(100),
        est,
        criterion_fn=case.criterion_fn,
        budget_fraction=fraction,
        tune_localization=tune,
    )
    main_steps = 6 * (50 + 150 * 2)
    assert sum(counts) == cal.pilot_chain_steps == int(cal.table["chain_steps"].sum())
    assert cal.pilot_chain_steps <= fraction * main_steps
    assert cal.budget_chain_steps == math.floor(fraction * main_steps)
    assert len(counts) == len(cal.table)
    expected = cal.pilot_chains * (cal.table["burnin_steps"] + cal.pilot_draws)
    assert counts == list(expected)
    assert (cal.table["burnin_steps"] >= cal.pilot_burnin_steps).all()
    assert (cal.table["burnin_steps"] <= max(cal.pilot_burnin_steps, 50)).all()


def test_budget_holds_when_the_search_fails(monkeypatch):
    case = truth.potential_case("nan_off_anchor", _nan_off_anchor, d=2, n=100, true_lambda=1.0)
    est = LLCEstimator(draws=100, chains=4, burnin_steps=60, localization=0.0)
    counts = _count_chain_steps(monkeypatch)
    with pytest.raises(CalibrationError):
        calibrate(
            case.model,
            case.loader(50),
            est,
            criterion_fn=case.criterion_fn,
            pilot_chains=2,
            pilot_draws=16,
            pilot_burnin_steps=8,
        )
    # 2 chains x (8 + 16) = 48 chain-steps per pilot, budget 0.3 x 4 x 160 = 192: four pilots, not five
    assert counts == [48] * 4


def test_budget_too_small_for_useful_pilots_raises():
    case = truth.regular_case(5, n=N)
    est = LLCEstimator(draws=10, chains=1, burnin_steps=0)
    with pytest.raises(ValueError, match="raise budget_fraction"):
        calibrate(case.model, case.loader(100), est, criterion_fn=case.criterion_fn)
    est = LLCEstimator(draws=100, chains=4, burnin_steps=0)
    with pytest.raises(ValueError, match="at least 3 needed"):
        calibrate(
            case.model, case.loader(100), est, criterion_fn=case.criterion_fn, pilot_chains=4, pilot_draws=50
        )


# ----------------------------------------------------------------------------------------------------
# Arguments, copies, text
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(target_acceptance=1.0), "target_acceptance must be a number in"),
        (dict(target_acceptance=0.02), "exceed the margin"),
        (dict(budget_fraction=0.0), "budget_fraction must be a number in"),
        (dict(budget_fraction=1.5), "budget_fraction must be a number in"),
        (dict(learning_rates=[]), "learning_rates must be a non-empty list"),
        (dict(learning_rates=[1e-3, -1.0]), "every value of learning_rates"),
        (dict(learning_rates="1e-3"), "learning_rates must be a non-empty list"),
        (dict(localization=-1.0), "localization must be a number in"),
        (dict(localizations=[1.0, 10.0]), "tune_localization=True"),
        (dict(tune_localization=True, localizations=[math.nan]), "every value of localizations"),
        (dict(tune_localization="yes"), "tune_localization must be True or False"),
        (dict(pilot_chains=0), "pilot_chains must be an int >= 1"),
        (dict(pilot_draws=4), "pilot_draws must be an int >= 16"),
        (dict(seed=-1), "seed must be an int >= 0"),
        (dict(compile="sometimes"), "compile must be True, False or 'auto'"),
        (dict(max_step_bias=2.0), "max_step_bias must be a number in"),
        (dict(max_step_bias=0.01, learning_rates=[1e-3]), "max_step_bias caps the automatic search"),
        (dict(estimator="sgld"), "estimator must be an LLCEstimator"),
    ],
)
def test_invalid_arguments_raise_value_errors(kwargs, match):
    case = truth.regular_case(2, n=100)
    kwargs = dict(kwargs)
    estimator = kwargs.pop("estimator", LLCEstimator(draws=100, chains=4, burnin_steps=50))
    with pytest.raises(ValueError, match=match):
        calibrate(case.model, case.loader(10), estimator, criterion_fn=case.criterion_fn, **kwargs)


def test_invalid_model_and_rmsprop_bias_cap():
    case = truth.regular_case(2, n=100)
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        calibrate("model", case.loader(10), criterion_fn=case.criterion_fn)
    est = LLCEstimator(draws=100, chains=4, burnin_steps=50, sampler="rmsprop_sgld")
    with pytest.raises(ValueError, match="RMSProp-SGLD"):
        calibrate(case.model, case.loader(10), est, criterion_fn=case.criterion_fn, max_step_bias=0.01)


def test_calibrated_estimator_copies_everything_else(regular_calibration):
    _, cal = regular_calibration
    est = LLCEstimator(
        draws=33,
        chains=3,
        burnin_steps=7,
        steps_bw_draws=2,
        learning_rate=1e-2,
        localization=5.0,
        nbeta=12.0,
        dtype=torch.float64,
        sampler="rmsprop_sgld",
        weight_decay=0.1,
        restrict_to_orth_grad=True,
        bounding_box_size=2.0,
        sampler_options={"alpha": 0.9},
    )
    copy = calibrated_estimator(est, cal)
    assert copy is not est and est.learning_rate == 1e-2  # the original is untouched
    assert (copy.learning_rate, copy.localization) == (cal.learning_rate, cal.localization)
    for name in (
        "draws",
        "chains",
        "burnin_steps",
        "steps_bw_draws",
        "nbeta",
        "dtype",
        "weight_decay",
        "restrict_to_orth_grad",
        "bounding_box_size",
        "sampler_options",
    ):
        assert getattr(copy, name) == getattr(est, name), name
    assert copy.sampler.name == "rmsprop_sgld"
    with pytest.raises(ValueError, match="calibration must be the Calibration"):
        calibrated_estimator(est, {"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="estimator must be an LLCEstimator"):
        calibrated_estimator(None, cal)


def test_str_is_readable(regular_calibration):
    _, cal = regular_calibration
    text = str(cal)
    assert text.startswith(f"Calibration: learning_rate = {cal.learning_rate:.4g}")
    assert "chain-steps of a budget of" in text and "mala_acceptance" in text
    assert len(text.splitlines()) == 3 + 1 + len(cal.table)
    assert "Calibration(learning_rate=" in repr(cal)


def test_doctests():
    result = doctest.testmod(calibration_module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
