"""A result as ArviZ InferenceData and as an xarray Dataset: the same numbers, ArviZ's names, files that round-trip."""

from __future__ import annotations

import dataclasses
import doctest
import importlib.util
import json
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import lambdahat.interop as interop_module
from lambdahat import LLCConfig, prepare, sample
from lambdahat.config import Schedule
from lambdahat.interop import to_arviz, to_xarray
from lambdahat.result import LLCResult
from lambdahat.samplers import Info

arviz = pytest.importorskip("arviz")
xr = pytest.importorskip("xarray")

CHAINS, DRAWS, SAMPLES = 4, 50, 64
TRACES = ("loss", "llc", "acceptance_rate", "grad_norm", "noise_norm", "distance", "diverging")
FLOAT32_EPS = float(np.finfo(np.float32).eps)


@pytest.fixture(scope="module")
def result() -> LLCResult:
    """A real run of 4 chains × 50 draws on a linear regression, with the per-sample losses of its 64 samples."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, 3, generator=g)
    y = x.sum(1, keepdim=True)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    config = LLCConfig(draws=DRAWS, chains=CHAINS, burnin_steps=20, learning_rate=1e-4, localization=10.0)
    problem = prepare(
        torch.nn.Linear(3, 1), loader, config, criterion_fn=F.mse_loss, evaluation=loader, compile=False
    )
    return sample(problem, config, seed=0, show_progress=False, warn=False)


def groups(data) -> dict:
    """The groups of ``to_arviz``'s answer as Datasets: an InferenceData (ArviZ 0.x) or a DataTree (ArviZ 1)."""
    if isinstance(data, getattr(xr, "DataTree", ())):
        return {name: node.to_dataset() for name, node in data.children.items()}
    return {name: data[name] for name in data.groups()}


def netcdf_engine() -> str:
    """An installed netCDF engine, or skip."""
    for module, engine in (("h5netcdf", "h5netcdf"), ("netCDF4", "netcdf4"), ("scipy", "scipy")):
        if importlib.util.find_spec(module) is not None:
            return engine
    pytest.skip("no netCDF engine installed (h5netcdf, netCDF4 or scipy)")


# ---------------------------------------------------------------- ArviZ reads the same numbers


def test_arviz_rhat_and_ess_equal_the_result(result):
    """ArviZ's rank-normalized split R-hat and bulk ESS of ``loss`` equal ``result.rhat`` and ``result.ess``.

    Both implement Vehtari et al. (2021) on the same float32 draws (no chain diverged, so lambdahat's kept chains
    are all of them). ArviZ 0.23 computes in float64 like lambdahat: measured relative differences ≤ 3e-16 over
    seeds 0-4. ArviZ 1.3 (Python ≥ 3.12) computes in the dtype of the input, float32 for ``loss``: 1.7e-9 (R-hat)
    and 3.7e-10 (ESS) on one such run, and 0 for the float64 ``llc``. 1e-6 covers float32 rounding and no
    more. The ``llc`` trace, an increasing affine map of ``loss``, has the same ranks and so the same values."""
    assert not result.diverged.any()
    idata = to_arviz(result)
    rhat, ess = arviz.rhat(idata), arviz.ess(idata, method="bulk")
    assert float(rhat["loss"]) == pytest.approx(result.rhat, rel=1e-6)
    assert float(ess["loss"]) == pytest.approx(result.ess, rel=1e-6)
    assert float(rhat["llc"]) == pytest.approx(result.rhat, rel=1e-6)
    assert float(ess["llc"]) == pytest.approx(result.ess, rel=1e-6)


def test_llc_averages_to_the_chain_estimates(result):
    """Mean over draws of ``llc`` = ``result.llcs`` (equal batches), to float32 rounding of the terms that cancel."""
    llc = to_arviz(result).posterior["llc"]
    np.testing.assert_allclose(
        llc.mean("draw").values,
        result.llcs.numpy(),
        rtol=4 * FLOAT32_EPS,
        atol=4 * FLOAT32_EPS * result.nbeta * abs(result.init_loss),
    )
    np.testing.assert_array_equal(
        llc.values, result.nbeta * (result.losses.double().numpy() - result.init_loss)
    )


def test_arviz_groups_dims_coords_and_attrs(result):
    idata = to_arviz(result)
    posterior, stats = groups(idata)["posterior"], groups(idata)["sample_stats"]
    assert set(groups(idata)) == {"posterior", "sample_stats"}
    assert set(posterior.data_vars) == {"loss", "llc"}
    assert set(stats.data_vars) == {
        "acceptance_rate",
        "grad_norm",
        "noise_norm",
        "distance",
        "diverging",
    }
    for group in (posterior, stats):
        assert dict(group.sizes) == {"chain": CHAINS, "draw": DRAWS}
        assert group["chain"].values.tolist() == list(range(CHAINS))
        assert group["draw"].values.tolist() == list(range(DRAWS))
        for var in group.data_vars.values():
            assert var.dims == ("chain", "draw") and var.attrs["long_name"]
        attrs = group.attrs
        assert attrs["nbeta"] == result.nbeta and attrs["learning_rate"] == result.learning_rate
        assert attrs["localization"] == result.localization and attrs["init_loss"] == result.init_loss
        assert attrs["seed"] == result.seed == 0 and attrs["status"] == result.status
        assert (
            attrs["draws"] == DRAWS
            and attrs["sampler"] == "sgld"
            and attrs["inference_library"] == "lambdahat"
        )
    assert idata.attrs["nbeta"] == result.nbeta
    np.testing.assert_array_equal(posterior["loss"].values, result.losses.numpy())
    np.testing.assert_array_equal(stats["acceptance_rate"].values, result.mala_acceptance_trace.numpy())
    np.testing.assert_array_equal(stats["grad_norm"].values, result.grad_norm.numpy())
    np.testing.assert_array_equal(stats["noise_norm"].values, result.noise_norm.numpy())
    np.testing.assert_array_equal(stats["distance"].values, result.distance.numpy())
    assert stats["diverging"].dtype == bool and not stats["diverging"].values.any()
    summary = arviz.summary(idata, var_names=["llc"], kind="stats", round_to="none")
    assert summary.loc["llc", "mean"] == pytest.approx(float(result.llcs.double().mean()), rel=1e-5)


def test_settings_become_netcdf_safe_attrs(result):
    """Scalars kept, booleans as 0/1, lists and dicts as JSON, ``None`` and unwritable objects left out, integers
    beyond int64 as text."""
    settings = {
        **result.settings,
        "flag": True,
        "nothing": None,
        "names": ["a", "b"],
        "nested": {"x": 1},
        "dtype_object": torch.float32,
        "huge": 2**70,
        "numpy_int": np.int64(3),
    }
    attrs = to_xarray(dataclasses.replace(result, settings=settings)).attrs
    assert attrs["flag"] == 1 and attrs["compiled"] == 0 and attrs["numpy_int"] == 3
    assert json.loads(attrs["names"]) == ["a", "b"] and json.loads(attrs["nested"]) == {"x": 1}
    assert json.loads(attrs["devices"]) == ["cpu"]
    assert "nothing" not in attrs and "dtype_object" not in attrs and "calibration" not in attrs
    assert attrs["huge"] == str(2**70)
    assert json.loads(attrs["trust_reasons"]) == list(result.trust_reasons)


# ---------------------------------------------------------------- divergence, draw by draw

FIELD = {name: i for i, name in enumerate(Info._fields)}


def diverged_result(burnin: int, every: int, draws: int, divergence_steps: list[int | None]) -> LLCResult:
    """A synthetic run whose chain ``c`` diverges (loss = inf) from step ``divergence_steps[c]`` on (None: never)."""
    schedule = Schedule(draws=draws, burnin_steps=burnin, steps_bw_draws=every)
    chains, steps = len(divergence_steps), schedule.total_steps
    g = torch.Generator().manual_seed(0)
    trace = torch.ones(len(Info._fields), chains, steps, dtype=torch.float64)
    trace[FIELD["loss"]] += 0.01 * torch.randn(chains, steps, generator=g, dtype=torch.float64)
    trace[FIELD["log_accept"]] = math.log(0.95)
    for c, step in enumerate(divergence_steps):
        if step is not None:
            trace[FIELD["loss"], c, step:] = math.inf
    settings = {"sampler": "sgld", "burnin_steps": burnin, "steps_bw_draws": every, "dim": 1}
    return LLCResult.from_trace(trace, schedule, 0.99, 10.0, 1e-3, 10.0, 0, settings, warn=False)


def test_diverging_is_true_from_the_divergence_draw_on():
    # draw t is step 10 + 3t (draws 0 … 19 at steps 10 … 67; the run has 70 steps)
    r = diverged_result(burnin=10, every=3, draws=20, divergence_steps=[None, 26, 27, 4, 69, None])
    assert r.diverged.tolist() == [False, True, True, True, True, False]
    assert r.divergence_step.tolist() == [-1, 26, 27, 4, 69, -1]
    expected = np.zeros((6, 20), dtype=bool)
    expected[1, 6:] = True  # step 26 falls between draws 5 (step 25) and 6 (step 28)
    expected[2, 6:] = True  # step 27 too
    expected[3, :] = True  # in burn-in: every draw
    # chain 4 diverged at step 69, after its last draw (step 67): no diverging draw
    for diverging in (to_arviz(r).sample_stats["diverging"], to_xarray(r)["diverging"]):
        assert diverging.dims == ("chain", "draw") and diverging.dtype == bool
        np.testing.assert_array_equal(diverging.values, expected)
    # the diverging draws are the first whose loss is not finite
    assert np.array_equal(~np.isfinite(r.losses.numpy()), expected)


def test_without_the_schedule_a_diverged_chain_diverges_throughout():
    r = diverged_result(burnin=10, every=1, draws=20, divergence_steps=[None, 15, None])
    r = dataclasses.replace(r, settings={"sampler": "sgld"})
    diverging = to_arviz(r).sample_stats["diverging"].values
    assert diverging.tolist() == [[False] * 20, [True] * 20, [False] * 20]


# ---------------------------------------------------------------- per-sample losses in the Dataset


def test_per_sample_losses_in_the_dataset(result):
    ds = to_xarray(result)
    assert result.per_sample_losses.shape == (CHAINS, DRAWS, SAMPLES)
    assert ds["per_sample_loss"].dims == ("chain", "draw", "sample")
    np.testing.assert_array_equal(ds["per_sample_loss"].values, result.per_sample_losses.numpy())
    assert ds["per_sample_loss_at_init"].dims == ("sample",)
    np.testing.assert_array_equal(
        ds["per_sample_loss_at_init"].values, result.per_sample_losses_at_init.numpy()
    )
    assert ds["sample"].values.tolist() == list(range(SAMPLES))
    for name in TRACES:
        assert ds[name].dims == ("chain", "draw")
    np.testing.assert_array_equal(ds["loss"].values, result.losses.numpy())
    assert ds["loss_trace"].dims == ("chain", "step")
    np.testing.assert_array_equal(ds["loss_trace"].values, result.loss_trace.numpy())
    assert ds.attrs == {k: v for k, v in to_arviz(result).posterior.attrs.items() if k in ds.attrs}
    assert ds.attrs["nbeta"] == result.nbeta and ds.attrs["seed"] == result.seed
    # the mean loss of a sample over the draws of a chain, by name
    assert ds["per_sample_loss"].mean("draw").dims == ("chain", "sample")


def test_language_model_losses_have_a_token_dimension(result):
    g = torch.Generator().manual_seed(1)
    per_token = torch.rand(CHAINS, DRAWS, 5, 7, generator=g)
    per_token[..., -2:] = math.nan  # padding
    r = dataclasses.replace(result, per_sample_losses=per_token, per_sample_losses_at_init=per_token[0, 0])
    ds = to_xarray(r)
    assert ds["per_sample_loss"].dims == ("chain", "draw", "sample", "token")
    assert ds["per_sample_loss_at_init"].dims == ("sample", "token")
    assert dict(ds.sizes) == {
        "chain": CHAINS,
        "draw": DRAWS,
        "step": r.loss_trace.shape[1],
        "sample": 5,
        "token": 7,
    }
    np.testing.assert_array_equal(ds["per_sample_loss"].values, per_token.numpy())


def test_without_an_evaluation_set_there_are_no_per_sample_variables(result):
    r = dataclasses.replace(result, per_sample_losses=None, per_sample_losses_at_init=None)
    ds = to_xarray(r)
    assert "per_sample_loss" not in ds and "per_sample_loss_at_init" not in ds and "sample" not in ds.dims


# ---------------------------------------------------------------- without the extra


def test_without_arviz_or_xarray_the_error_names_the_extra(result, monkeypatch):
    monkeypatch.setitem(sys.modules, "arviz", None)
    with pytest.raises(ImportError, match=r'needs arviz.*pip install "lambdahat\[interop\]"'):
        to_arviz(result)
    to_xarray(result)  # needs xarray only
    monkeypatch.setitem(sys.modules, "xarray", None)
    with pytest.raises(ImportError, match=r'to_xarray needs xarray.*pip install "lambdahat\[interop\]"'):
        to_xarray(result)
    with pytest.raises(ImportError, match=r'to_arviz needs xarray.*pip install "lambdahat\[interop\]"'):
        to_arviz(result)


# ---------------------------------------------------------------- files


def test_netcdf_round_trip(result, tmp_path):
    engine = netcdf_engine()
    ds = to_xarray(result)
    ds.to_netcdf(tmp_path / "run.nc", engine=engine)
    back = xr.load_dataset(tmp_path / "run.nc", engine=engine)
    xr.testing.assert_identical(back, ds)
    assert back["diverging"].dtype == bool
    if engine == "scipy":
        pytest.skip("netCDF3 (scipy) has no groups: the InferenceData round trip needs h5netcdf or netCDF4")
    idata = to_arviz(result)
    idata.to_netcdf(str(tmp_path / "run_idata.nc"), engine=engine)
    loaded = arviz.from_netcdf(str(tmp_path / "run_idata.nc"), engine=engine)
    for name, group in groups(loaded).items():
        xr.testing.assert_identical(group.load(), groups(idata)[name])
    assert float(arviz.rhat(loaded)["loss"]) == pytest.approx(result.rhat, rel=1e-6)


def test_an_os_seed_fits_the_file(result, tmp_path):
    """A seed drawn from the OS (up to 2⁶³ − 1) is an int64 attribute that h5netcdf and netCDF4 write."""
    engine = netcdf_engine()
    if engine == "scipy":
        pytest.skip("netCDF3 (scipy) holds 32-bit integers only")
    ds = to_xarray(dataclasses.replace(result, seed=2**63 - 1))
    ds.to_netcdf(tmp_path / "seed.nc", engine=engine)
    assert int(xr.load_dataset(tmp_path / "seed.nc", engine=engine).attrs["seed"]) == 2**63 - 1


def test_doctests():
    assert doctest.testmod(interop_module, optionflags=doctest.ELLIPSIS).failed == 0


def test_the_result_methods_are_the_functions(result):
    assert result.to_xarray().identical(to_xarray(result))
    assert groups(result.to_arviz())["posterior"].equals(
        groups(to_arviz(result))["posterior"]
    )  # attrs: a timestamp
