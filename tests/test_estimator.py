"""Public estimator API: shapes, metrics, settings, precision, compile, progress."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import FAST
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lambdahat
from lambdahat import LLCEstimator, LLCResult, nbeta_from_effective_size
from lambdahat.samplers import Info


def test_public_surface_is_pinned():
    assert set(lambdahat.__all__) == {
        "AccuracyCheck",
        "Calibration",
        "CalibrationError",
        "GridSearchConfig",
        "LLCConfig",
        "LLCEstimator",
        "LLCGridSearch",
        "LLCResult",
        "LossKernel",
        "Problem",
        "Sampler",
        "Susceptibilities",
        "__version__",
        "bif",
        "calibrate",
        "calibrate_problem",
        "calibrated_estimator",
        "check_accuracy",
        "llc_over_checkpoints",
        "loss_gain",
        "loss_kernel",
        "nbeta_from_effective_size",
        "plot_diagnostics",
        "plot_grid",
        "plot_llc_over_checkpoints",
        "plot_trace",
        "prepare",
        "sample",
        "susceptibilities",
        "to_arviz",
        "to_xarray",
    }
    for name in lambdahat.__all__:
        assert hasattr(lambdahat, name)


def test_nbeta_from_effective_size():
    assert nbeta_from_effective_size(1000) == pytest.approx(1000 / math.log(1000))
    with pytest.raises(ValueError, match="n must be > 1"):
        nbeta_from_effective_size(1)


def test_estimate_returns_per_chain_llcs_and_metrics(tiny_model, loader):
    est = LLCEstimator(**FAST)
    llcs = est.estimate_llc(tiny_model, loader, seed=0, compile=False, show_progress=False)
    assert llcs.shape == (4,) and llcs.dtype == torch.float32
    m = est.get_metrics()
    for key in (
        "llc_mean",
        "llc_std",
        "llcs",
        "losses",
        "losses_mean",
        "losses_std",
        "init_loss",
        "nbeta",
        "mala_acceptance",
        "mala_acceptance_trace",
        "rhat",
        "ess",
        "llc_trace",
        "diverged",
        "learning_rate",
        "seed",
        "grad_norm",
        "distance",
        "noise_norm",
    ):
        assert key in m, key
    assert m["losses"].shape == (4, 12)
    assert m["llc_trace"].shape == (4, 12)
    assert m["nbeta"] == pytest.approx(96 / math.log(96))
    assert m["llc_mean"] == pytest.approx(float(llcs.mean()), rel=1e-5)
    expected = m["nbeta"] * (m["losses"].double().mean(1) - m["init_loss"])
    torch.testing.assert_close(llcs.double(), expected, rtol=1e-5, atol=1e-5)
    # the running estimate ends at the final estimate
    torch.testing.assert_close(m["llc_trace"][:, -1], llcs, rtol=1e-5, atol=1e-5)
    assert isinstance(est.result, LLCResult)


def test_get_metrics_before_estimate_raises():
    with pytest.raises(RuntimeError, match="call estimate_llc first"):
        LLCEstimator().get_metrics()


def test_result_is_immutable(tiny_model, loader):
    est = LLCEstimator(**FAST)
    est.estimate_llc(tiny_model, loader, seed=0, compile=False, show_progress=False)
    with pytest.raises(AttributeError):
        est.result.llc_mean = 0.0


def test_init_loss_is_full_data_loss_in_eval_mode(tiny_model, classification_data, loader):
    est = LLCEstimator(**FAST)
    est.estimate_llc(tiny_model, loader, seed=0, compile=False, show_progress=False)
    ref = tiny_model.__class__()
    ref.load_state_dict(tiny_model.state_dict())
    ref.eval()
    x, y = classification_data.tensors
    with torch.no_grad():
        expected = F.cross_entropy(ref(x), y).item()
    assert est.get_metrics()["init_loss"] == pytest.approx(expected, rel=1e-5)


def test_outputs_with_logits_attribute_are_unwrapped(classification_data):
    class Out:
        def __init__(self, logits):
            self.logits = logits

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return Out(self.lin(x))

    est = LLCEstimator(**FAST)
    llcs = est.estimate_llc(
        Wrapped(), DataLoader(classification_data, batch_size=32), seed=0, compile=False, show_progress=False
    )
    assert torch.isfinite(llcs).all()


def test_dict_batches_with_unpack_fn(classification_data):
    class DictData(torch.utils.data.Dataset):
        def __len__(self):
            return len(classification_data)

        def __getitem__(self, i):
            x, y = classification_data[i]
            return {"inputs": x, "labels": y}

    model = nn.Linear(4, 3)
    est = LLCEstimator(**FAST)
    a = est.estimate_llc(
        model,
        DataLoader(DictData(), batch_size=32),
        unpack_fn=lambda b: (b["inputs"], b["labels"]),
        seed=3,
        compile=False,
        show_progress=False,
    )
    b = est.estimate_llc(
        model, DataLoader(classification_data, batch_size=32), seed=3, compile=False, show_progress=False
    )
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_autocast_on_cpu(tiny_model, loader, dtype):
    est = LLCEstimator(**FAST, dtype=dtype)
    llcs = est.estimate_llc(tiny_model, loader, seed=0, compile=False, show_progress=False)
    m = est.get_metrics()
    assert llcs.dtype == torch.float32 and torch.isfinite(llcs).all()
    assert m["dtype"] == str(dtype).replace("torch.", "")
    # L0 comes from the same autocast forward as the draws: it differs from the float32 value
    full = LLCEstimator(**FAST).run(tiny_model, loader, seed=0, compile=False, show_progress=False)
    assert m["init_loss"] != full.init_loss
    assert m["init_loss"] == pytest.approx(full.init_loss, rel=5e-2)


def test_float64_runs_in_double(classification_data):
    from lambdahat import prepare

    torch.manual_seed(0)
    model, loader = nn.Linear(4, 3), DataLoader(classification_data, batch_size=32)
    est = LLCEstimator(**FAST, dtype=torch.float64)
    llcs = est.estimate_llc(model, loader, seed=0, compile=False, show_progress=False)
    assert torch.isfinite(llcs).all() and est.get_metrics()["dtype"] == "float64"
    # the arithmetic is float64: w* and L0 are those of a float64 forward, not of the float32 model's
    fm = prepare(model, loader, est.config, compile=False).slots[0]
    assert fm.w_star.dtype == torch.float64
    x, y = classification_data.tensors
    with torch.no_grad():
        exact = F.cross_entropy(model.double()(x.double()), y).item()
    model.float()
    assert est.get_metrics()["init_loss"] == pytest.approx(exact, rel=1e-12)


def test_progress_bar_can_be_shown(tiny_model, loader, capsys):
    LLCEstimator(**FAST).estimate_llc(tiny_model, loader, seed=0, compile=False, show_progress=True)
    assert "LLC chains" in capsys.readouterr().err


def test_seed_none_is_recorded_and_repeats(tiny_model, loader):
    est = LLCEstimator(**FAST)
    first = est.estimate_llc(tiny_model, loader, seed=None, compile=False, show_progress=False)
    again = est.estimate_llc(
        tiny_model, loader, seed=est.get_metrics()["seed"], compile=False, show_progress=False
    )
    torch.testing.assert_close(first, again, rtol=0, atol=0)


def test_auto_compile_skips_short_runs(tiny_model, loader):
    est = LLCEstimator(**FAST)
    est.estimate_llc(tiny_model, loader, seed=0, compile="auto", show_progress=False)
    assert est.get_metrics()["compiled"] is False


def test_sweeps_tell_the_plan_their_planned_points(tiny_model, loader, planned_facts):
    fixed = {k: v for k, v in FAST.items() if k not in ("learning_rate", "localization")}
    config = lambdahat.GridSearchConfig(learning_rate=[1e-4, 2e-4, 3e-4], localization=100.0, **fixed)
    lambdahat.LLCGridSearch(config).run_grid_search(
        tiny_model, loader, seed=0, compile="auto", show_progress=False
    )
    assert [facts.planned_runs for facts in planned_facts] == [3, 3, 3]


def test_failed_compile_falls_back_to_eager_with_one_warning(tiny_model, loader, monkeypatch):
    def broken_compile(fn, *a, **k):
        def fail(*args, **kwargs):
            raise RuntimeError("simulated compiler failure")

        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    est = LLCEstimator(**FAST)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        llcs = est.estimate_llc(tiny_model, loader, seed=0, compile=True, show_progress=False)
    compile_warnings = [w for w in caught if "torch.compile of the step failed" in str(w.message)]
    assert len(compile_warnings) == 1
    eager = LLCEstimator(**FAST).estimate_llc(tiny_model, loader, seed=0, compile=False, show_progress=False)
    torch.testing.assert_close(llcs, eager, rtol=0, atol=0)
    assert est.get_metrics()["compiled"] is False
    plan = est.result.settings["plan"]
    assert plan["mode"] == "compiled" and plan["executed"] == "eager"
    assert "simulated compiler failure" in plan["fell_back"]


@pytest.mark.slow
def test_compiled_run_matches_eager_and_is_reused(classification_data):
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    loader = DataLoader(classification_data, batch_size=32)
    est = LLCEstimator(**FAST)
    eager = est.estimate_llc(model, loader, seed=1, compile=False, show_progress=False)
    compiled = est.estimate_llc(model, loader, seed=1, compile=True, show_progress=False)
    assert est.get_metrics()["compiled"] is True
    assert est.get_metrics()["compile_seconds"] > 0
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3)
    first_seconds = est.get_metrics()["compile_seconds"]
    # a second compiled call on the same model reuses the compiled step (no new compile) and its bits
    again = est.estimate_llc(model, loader, seed=1, compile=True, show_progress=False)
    assert est.get_metrics()["compiled"] is True
    assert est.get_metrics()["compile_seconds"] < first_seconds / 5
    assert torch.equal(again, compiled)
    # "auto" plans this short run eagerly, whatever was compiled before in the process: the eager bits
    auto = est.estimate_llc(model, loader, seed=1, compile="auto", show_progress=False)
    assert est.get_metrics()["compiled"] is False
    assert torch.equal(auto, eager)
    # compiled runs reproduce across chain batching too (kernels specialised to another chain count may round
    # differently in principle, so this allows float32 round-off; it was bitwise equal when measured)
    rebatched = est.estimate_llc(model, loader, seed=1, compile=True, show_progress=False, chain_batch=2)
    torch.testing.assert_close(rebatched, compiled, rtol=1e-5, atol=1e-6)


def test_observables_drive_the_recorded_loss_not_the_sampler(classification_data):
    model = nn.Linear(4, 3)
    train = DataLoader(classification_data, batch_size=32)
    x, y = classification_data.tensors
    other = DataLoader(TensorDataset(x + 0.5, y), batch_size=32)
    est = LLCEstimator(**FAST)
    base = est.run(model, train, seed=4, compile=False, show_progress=False, warn=False)
    refined = est.run(model, train, seed=4, compile=False, show_progress=False, warn=False, observables=other)
    # the same trajectories (driven by the training data) ...
    torch.testing.assert_close(refined.distance, base.distance, rtol=0, atol=0)
    # ... but losses and L0 from the observables
    with torch.no_grad():
        expected_l0 = F.cross_entropy(model(x + 0.5), y).item()
    assert refined.init_loss == pytest.approx(expected_l0, rel=1e-5)
    assert not torch.equal(refined.losses, base.losses)
    same = est.run(model, train, seed=4, compile=False, show_progress=False, warn=False, observables=train)
    torch.testing.assert_close(same.llcs, base.llcs, rtol=1e-5, atol=1e-6)


def test_restricting_to_all_parameters_equals_no_restriction(tiny_model, loader):
    est = LLCEstimator(**FAST)
    full = est.run(tiny_model, loader, seed=2, compile=False, show_progress=False, warn=False)
    names = [n for n, _ in tiny_model.named_parameters()]
    restricted = est.run(
        tiny_model, loader, seed=2, compile=False, show_progress=False, warn=False, params=names
    )
    torch.testing.assert_close(restricted.llcs, full.llcs, rtol=0, atol=0)


def test_restricted_llc_samples_only_the_chosen_parameters(tiny_model, loader):
    est = LLCEstimator(**FAST)
    r = est.run(tiny_model, loader, seed=2, compile=False, show_progress=False, warn=False, params=["fc2.*"])
    assert r.settings["dim"] == tiny_model.fc2.weight.numel() + tiny_model.fc2.bias.numel()
    r2 = est.run(
        tiny_model,
        loader,
        seed=2,
        compile=False,
        show_progress=False,
        warn=False,
        params=lambda name: name.startswith("fc2"),
    )
    torch.testing.assert_close(r.llcs, r2.llcs, rtol=0, atol=0)
    mask = {n: n.startswith("fc2") for n, _ in tiny_model.named_parameters()}
    r3 = est.run(tiny_model, loader, seed=2, compile=False, show_progress=False, warn=False, params=mask)
    torch.testing.assert_close(r.llcs, r3.llcs, rtol=0, atol=0)


def test_diverging_chains_are_reported_and_excluded():
    from lambdahat.truth import regular_case

    case = regular_case(4, n=100)
    # on K = |w|² with nβ = 100: κ = 200, and ε κ = 8 > 4 makes SGLD explode geometrically
    est = LLCEstimator(draws=80, chains=3, burnin_steps=0, learning_rate=0.04, localization=0.0, nbeta=100.0)
    with pytest.warns(RuntimeWarning, match=r"chains \[0, 1, 2\] diverged"):
        est.estimate_llc(
            case.model,
            case.loader(100),
            criterion_fn=case.criterion_fn,
            seed=0,
            compile=False,
            show_progress=False,
        )
    m = est.get_metrics()
    assert m["diverged"].all()
    assert ((m["divergence_step"] > 0) & (m["divergence_step"] < 80)).all()
    assert math.isnan(m["llc_mean"])


def test_one_diverged_chain_is_excluded_from_the_mean(tiny_model, loader):
    from lambdahat.result import LLCResult

    est = LLCEstimator(**FAST)
    r = est.run(tiny_model, loader, seed=0, compile=False, show_progress=False, warn=False)
    trace = torch.stack([r.loss_trace] * len(Info._fields))
    trace[0, 1, 7:] = float("nan")  # chain 1 diverges at step 7
    with pytest.warns(RuntimeWarning, match=r"chains \[1\] diverged"):
        bad = LLCResult.from_trace(trace, est.schedule, r.init_loss, r.nbeta, 1e-3, 10.0, 0, {})
    assert bad.diverged.tolist() == [False, True, False, False]
    assert bad.divergence_step.tolist() == [-1, 7, -1, -1]
    kept = bad.llcs[[0, 2, 3]]
    # llcs are stored in float32: each carries a rounding of ~6e-8 of its own size, which the mean of values of
    # both signs does not shrink
    assert bad.llc_mean == pytest.approx(
        float(kept.double().mean()), rel=0, abs=1e-6 * float(kept.abs().max())
    )


def test_a_too_large_step_is_flagged_by_mala_acceptance():
    from lambdahat.truth import regular_case

    case = regular_case(4, n=100)  # K = |w|², κ = 2 nβ + γ ≈ 200
    kw = dict(draws=100, chains=4, burnin_steps=20, localization=1.0, nbeta=100.0)
    run = dict(criterion_fn=case.criterion_fn, seed=0, compile=False, show_progress=False)
    r_small = LLCEstimator(learning_rate=1e-4, **kw).run(case.model, case.loader(100), warn=False, **run)
    with pytest.warns(RuntimeWarning, match="MALA acceptance"):
        r_large = LLCEstimator(learning_rate=1.5e-2, **kw).run(case.model, case.loader(100), **run)
    assert r_small.mala_acceptance > 0.95
    assert r_large.mala_acceptance < 0.8


def test_a_chain_still_in_burn_in_is_flagged_as_drifting():
    from lambdahat.truth import regular_case

    # relaxation time 1/(εκ) = 5000 steps, but no burn-in and 300 draws: the loss is still climbing
    case = regular_case(4, n=100)
    est = LLCEstimator(
        draws=300, chains=16, burnin_steps=0, learning_rate=1e-6, localization=0.0, nbeta=100.0
    )
    with pytest.warns(RuntimeWarning, match="still drifting"):
        r = est.run(
            case.model,
            case.loader(100),
            criterion_fn=case.criterion_fn,
            seed=0,
            compile=False,
            show_progress=False,
        )
    assert r.trend_z > 4
    # settled chains are flagged at the test's false-positive rate (p < 1e-3) only: of 5 seeds, at most one
    from lambdahat.diagnostics import TREND_P_VALUE, trend_p_value

    settled = LLCEstimator(
        draws=300, chains=16, burnin_steps=500, learning_rate=1e-3, localization=0.0, nbeta=100.0
    )
    flagged = 0
    for seed in range(5):
        s = settled.run(
            case.model,
            case.loader(100),
            criterion_fn=case.criterion_fn,
            seed=seed,
            compile=False,
            show_progress=False,
            warn=False,
        )
        flagged += trend_p_value(s.trend_z, 16) < TREND_P_VALUE
    assert flagged <= 1


def test_replace_copies_settings_and_rebuilds_the_sampler():
    est = LLCEstimator(draws=30, burnin_steps=7, sampler="rmsprop_sgld", sampler_options={"alpha": 0.9})
    copy = est.replace(burnin_steps=11, learning_rate=1e-3)
    assert (copy.draws, copy.burnin_steps, copy.learning_rate) == (30, 11, 1e-3)
    assert copy.sampler_options == {"alpha": 0.9}
    # RMSProp-SGLD adapts its preconditioner during the (new) burn-in unless told otherwise
    assert copy.config.build_sampler().step.keywords == {"alpha": 0.9, "eps": 0.1, "adapt_steps": 11}
    assert est.burnin_steps == 7
    with pytest.raises(TypeError, match="unknown settings"):
        est.replace(drawz=3)


def test_loader_advice_only_where_it_matters(classification_data):
    from lambdahat.problem import _loader_advice

    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.zeros(4), torch.tensor(0)

    slow = DataLoader(Plain(), batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _loader_advice(slow, [torch.device("cpu")])  # CPU: no advice
        _loader_advice(DataLoader(classification_data), [torch.device("cuda", 0)])  # in-memory tensors: none
    with pytest.warns(UserWarning, match=r"pin_memory=True, num_workers>0"):
        _loader_advice(slow, [torch.device("cuda", 0)])
