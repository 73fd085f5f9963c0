"""Grid search: the grid, its table, L0 computed once, options passed through, config validation."""

from __future__ import annotations

import json
import math
import sys
import warnings

import numpy as np
import pytest
import sweep_fixtures as sf
import torch
import torch.nn.functional as F

import lambdahat.problem
from lambdahat import LLCConfig, LLCEstimator, nbeta_from_effective_size
from lambdahat.sweeps import GridSearchConfig, LLCGridSearch

COLUMNS = [
    "learning_rate",
    "localization",
    "nbeta",
    "llc_mean",
    "llc_std",
    "loss_mean",
    "loss_std",
    "llc_stderr",
    "init_loss",
    "mala_acceptance",
    "rhat",
    "ess",
    "temperature",
    "n_diverged",
    "status",
    "error",
    "seed",
    "wall_seconds",
    "attempts",
    "warnings",
]


@pytest.fixture
def model():
    return sf.trained_linear(0)


@pytest.fixture
def loader():
    return sf.make_loader()


def test_ranges_are_log_for_learning_rate_and_nbeta_and_linear_for_localization():
    cfg = GridSearchConfig(
        learning_rate=(1e-6, 1e-2), localization=(10.0, 50.0), nbeta=(1.0, 100.0), estimates_per_dim=5
    )
    eps, gam, nb = cfg.values("learning_rate"), cfg.values("localization"), cfg.values("nbeta")
    assert eps == [1e-6, 1e-5, 1e-4, 1e-3, 1e-2]
    assert np.allclose(np.diff(np.log(eps)), np.log(10.0))
    assert gam == [10.0, 20.0, 30.0, 40.0, 50.0]
    assert np.allclose(np.diff(np.log(nb)), np.log(100.0) / 4)
    assert nb[0] == 1.0 and nb[-1] == 100.0
    log_loc = GridSearchConfig(localization=(1.0, 100.0), localization_spacing="log", estimates_per_dim=3)
    assert log_loc.values("localization") == [1.0, 10.0, 100.0]


def test_lists_scalars_and_the_order_of_points():
    cfg = GridSearchConfig(learning_rate=[1e-3, 1e-4], localization=5.0, nbeta=[1.0, 2.0, 3.0])
    assert cfg.values("learning_rate") == [1e-3, 1e-4]  # exactly the list, in its order
    assert cfg.values("localization") == [5.0]
    assert cfg.n_points() == 6
    assert cfg.points()[:4] == [(1e-3, 5.0, 1.0), (1e-3, 5.0, 2.0), (1e-3, 5.0, 3.0), (1e-4, 5.0, 1.0)]
    # nbeta=None: one value, n / log n of the data
    assert GridSearchConfig(learning_rate=1e-3, localization=1.0).points(nbeta_default=7.0) == [
        (1e-3, 1.0, 7.0)
    ]


def test_epsilon_and_gamma_are_aliases_of_the_axes():
    new = GridSearchConfig(
        learning_rate=(1e-5, 1e-3), localization=[1.0, 10.0], localization_spacing="log", nbeta=5.0, draws=30
    )
    old = GridSearchConfig(epsilon=(1e-5, 1e-3), gamma=[1.0, 10.0], gamma_spacing="log", nbeta=5.0, draws=30)
    assert old == new and old.points() == new.points() and old.to_dict() == new.to_dict()
    assert "epsilon" not in new.to_dict() and new.to_dict()["learning_rate"] == {"range": [1e-5, 1e-3]}
    for kwargs in (dict(epsilon=1e-3, learning_rate=1e-3), dict(gamma=1.0, localization=2.0)):
        with pytest.raises(TypeError, match="two names of the same setting"):
            GridSearchConfig(**kwargs)
    with pytest.raises(ValueError, match="axis must be one of"):
        new.values("epsilon")


def test_the_shared_settings_are_an_llcconfig():
    cfg = GridSearchConfig(learning_rate=[1e-4, 1e-3], localization=10.0, draws=30, dtype="float64", chains=3)
    assert cfg.base == LLCConfig(
        draws=30, chains=3, dtype=torch.float64, learning_rate=1e-4, localization=10.0, nbeta=None
    )
    assert cfg.draws == 30 and cfg.dtype == torch.float64 and cfg.model_mode == "eval"
    assert GridSearchConfig().chains == LLCConfig().chains  # LLCConfig's defaults
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['drws'\]"):
        GridSearchConfig(drws=3)


def test_estimates_per_dim_with_a_list_axis_is_refused():
    with pytest.raises(ValueError, match=r"learning_rate is a list.*estimates_per_dim=4 is ambiguous.*range"):
        GridSearchConfig(learning_rate=[1e-4, 1e-3], localization=[1.0, 10.0], estimates_per_dim=4)
    with pytest.raises(ValueError, match="localization is a list"):
        GridSearchConfig(learning_rate=(1e-4, 1e-3), localization=[1.0, 10.0], estimates_per_dim=3)
    # without a list the count applies to the ranges
    assert (
        GridSearchConfig(learning_rate=(1e-4, 1e-3), localization=10.0, estimates_per_dim=3).n_points() == 3
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(learning_rate=(1e-3, 1e-4)), "lo < hi"),
        (dict(learning_rate=(1e-4, 1e-3, 1e-2)), "tuple means a \\(lo, hi\\) range"),
        (dict(learning_rate=0.0), "GridSearchConfig: learning_rate must be a finite number > 0; got 0.0"),
        (dict(learning_rate=[]), "list is empty"),
        (dict(learning_rate=[1e-3, 1e-3]), "repeats a value"),
        (dict(learning_rate="1e-3"), "must be a number"),
        (dict(learning_rate=True), "must be a number"),
        (dict(learning_rate="auto"), "must be a number"),
        (dict(localization=-1.0), "localization must be a finite number >= 0"),
        (
            dict(localization=(0.0, 10.0), localization_spacing="log"),
            "log-spaced localization needs values > 0",
        ),
        (dict(localization_spacing="cubic"), "localization_spacing must be one of"),
        (dict(nbeta=(-1.0, 10.0)), "nbeta must be a finite number > 0"),
        (dict(nbeta=float("nan")), "finite"),
        (dict(estimates_per_dim=1), "need estimates_per_dim >= 2"),
        (dict(estimates_per_dim=0), "estimates_per_dim must be an int >= 1"),
        (dict(draws=0), "GridSearchConfig: draws must be an int >= 1"),
        (dict(sampler="hmc"), "sampler must be one of"),
        (dict(dtype="float8"), "dtype must be one of"),
        (dict(model_mode="test"), "GridSearchConfig: model_mode must be 'eval' or 'train'"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GridSearchConfig(**kwargs)


def test_config_is_frozen_and_a_fixed_value_needs_no_range_count():
    cfg = GridSearchConfig(
        learning_rate=1e-4, localization=10.0, nbeta=5.0, estimates_per_dim=1, dtype="float64"
    )
    assert cfg.dtype == torch.float64 and cfg.n_points() == 1
    with pytest.raises(AttributeError):
        cfg.draws = 3


def test_table_columns_shape_and_values(model, loader):
    cfg = GridSearchConfig(learning_rate=[1e-4, 1e-3], localization=[1.0, 10.0], nbeta=20.0, **sf.FAST)
    df = LLCGridSearch(cfg).run_grid_search(model, loader, **sf.RUN)
    assert list(df.columns) == [*COLUMNS, "epsilon", "gamma"]
    assert len(df) == 4 and list(df.index) == [0, 1, 2, 3]
    # the seed library's names read the same columns (its README prints epsilon gamma nbeta llc_mean ...)
    assert df["epsilon"].tolist() == df["learning_rate"].tolist()
    assert df[["epsilon", "gamma", "nbeta", "llc_mean"]].values.tolist() == (
        df[["learning_rate", "localization", "nbeta", "llc_mean"]].values.tolist()
    )
    assert df[["learning_rate", "localization", "nbeta"]].values.tolist() == [
        [1e-4, 1.0, 20.0],
        [1e-4, 10.0, 20.0],
        [1e-3, 1.0, 20.0],
        [1e-3, 10.0, 20.0],
    ]
    assert set(sf.outcomes(df["status"])) == {"estimate"} and df["error"].isna().all()
    assert (df["seed"] == 0).all() and (df["attempts"] == 1).all()
    assert np.isfinite(df["llc_mean"]).all() and (df["wall_seconds"] > 0).all()
    # every point equals a plain estimate with the same seed, bit for bit
    for _, row in df.iloc[[0, 3]].iterrows():
        est = LLCEstimator(
            learning_rate=row.learning_rate, localization=row.localization, nbeta=row.nbeta, **sf.FAST
        )
        res = est.run(model, loader, warn=False, **sf.RUN)
        assert row.llc_mean == res.llc_mean and row.llc_std == res.llc_std
        assert row.init_loss == res.init_loss and row.rhat == res.rhat


def _half_squared_error(model, batch):
    """A per-sample loss of its own (not mse_loss): ½ Σ (f(x) − y)² per sample."""
    x, y = batch
    return 0.5 * (model(x) - y).pow(2).sum(-1)


def test_loss_fn_is_the_estimators(model, loader, tmp_path):
    cfg = GridSearchConfig(learning_rate=[1e-4, 1e-3], localization=10.0, nbeta=20.0, **sf.FAST)
    run = {k: v for k, v in sf.RUN.items() if k != "criterion_fn"}
    df = LLCGridSearch(cfg).run_grid_search(
        model, loader, loss_fn=_half_squared_error, out_dir=tmp_path, **run
    )
    plain = LLCGridSearch(cfg).run_grid_search(model, loader, **sf.RUN)
    assert df["init_loss"].iloc[0] != plain["init_loss"].iloc[0]  # the loss_fn was used, not the criterion
    for _, row in df.iterrows():
        est = LLCEstimator(learning_rate=row.learning_rate, localization=10.0, nbeta=20.0, **sf.FAST)
        res = est.run(model, loader, warn=False, loss_fn=_half_squared_error, **run)
        assert row.llc_mean == res.llc_mean and row.init_loss == res.init_loss
    assert json.loads((tmp_path / "sweep.json").read_text())["config"]["loss_fn"].endswith(
        "_half_squared_error"
    )


def test_init_loss_is_computed_once(model, loader, monkeypatch):
    calls = []
    original = lambdahat.problem.anchor_pass

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(lambdahat.problem, "anchor_pass", counting)
    cfg = GridSearchConfig(learning_rate=[1e-4, 1e-3], localization=[1.0, 10.0], nbeta=[5.0, 20.0], **sf.FAST)
    df = LLCGridSearch(cfg).run_grid_search(model, loader, **sf.RUN)
    assert len(df) == 8 and len(calls) == 1
    assert df["init_loss"].nunique() == 1


def test_restrict_to_orth_grad_shares_one_anchor(model, loader, monkeypatch):
    calls = []
    original = lambdahat.problem.anchor_pass
    monkeypatch.setattr(
        lambdahat.problem, "anchor_pass", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    cfg = GridSearchConfig(
        learning_rate=[1e-4, 1e-3], localization=10.0, nbeta=20.0, restrict_to_orth_grad=True, **sf.FAST
    )
    df = LLCGridSearch(cfg).run_grid_search(model, loader, **sf.RUN)
    assert len(calls) == 1 and df["init_loss"].nunique() == 1
    est = LLCEstimator(
        learning_rate=1e-3, localization=10.0, nbeta=20.0, restrict_to_orth_grad=True, **sf.FAST
    )
    assert df.llc_mean.iloc[1] == est.run(model, loader, warn=False, **sf.RUN).llc_mean


def test_estimate_options_pass_through(model, loader):
    cfg = GridSearchConfig(learning_rate=1e-3, localization=[1.0, 10.0], nbeta=20.0, **sf.FAST)
    run = dict(sf.RUN, seed=3)
    restricted = LLCGridSearch(cfg).run_grid_search(model, loader, params="bias", chain_batch=1, **run)
    full = LLCGridSearch(cfg).run_grid_search(model, loader, **run)
    est = LLCEstimator(learning_rate=1e-3, localization=10.0, nbeta=20.0, **sf.FAST)
    direct = est.run(model, loader, params="bias", warn=False, **run)
    assert restricted.llc_mean.iloc[1] == direct.llc_mean
    assert (restricted.llc_mean != full.llc_mean).all()
    assert (restricted.seed == 3).all()
    # unpack_fn and criterion_fn are used by every point
    seen = []
    df = LLCGridSearch(cfg).run_grid_search(
        model, loader, unpack_fn=lambda b: seen.append(1) or (b[0], b[1]), **run
    )
    assert seen and df.llc_mean.tolist() == full.llc_mean.tolist()
    with pytest.raises(ValueError, match="matches no parameter"):
        LLCGridSearch(cfg).run_grid_search(model, loader, params="nope", **run)


def test_nbeta_none_uses_n_over_log_n(model, loader):
    cfg = GridSearchConfig(learning_rate=1e-3, localization=10.0, **sf.FAST)
    df = LLCGridSearch(cfg).run_grid_search(model, loader, **sf.RUN)
    assert df.nbeta.tolist() == [nbeta_from_effective_size(128)]


def test_seed_none_is_drawn_once_for_all_points(model, loader):
    cfg = GridSearchConfig(learning_rate=[1e-4, 1e-3], localization=10.0, nbeta=20.0, **sf.FAST)
    df = LLCGridSearch(cfg).run_grid_search(model, loader, **dict(sf.RUN, seed=None))
    assert df.seed.nunique() == 1 and df.seed.iloc[0] >= 0


def test_bad_executor_and_missing_ray(model, loader, monkeypatch):
    cfg = GridSearchConfig(learning_rate=1e-3, localization=10.0, nbeta=20.0, **sf.FAST)
    gs = LLCGridSearch(cfg)
    with pytest.raises(ValueError, match=r"executor must be one of \['local', 'ray'\]"):
        gs.run_grid_search(model, loader, executor="dask", **sf.RUN)
    with pytest.raises(ValueError, match='pass executor="ray"'):
        gs.run_grid_search(model, loader, address="ray://head:10001", **sf.RUN)
    with pytest.raises(ValueError, match="num_gpus"):
        gs.run_grid_search(model, loader, executor="ray", devices="cuda", **{**sf.RUN})
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "lambdahat\[ray\]"'):
        gs.run_grid_search(model, loader, executor="ray", **sf.RUN)
    with pytest.raises(TypeError, match="GridSearchConfig"):
        LLCGridSearch({"learning_rate": 1e-3})


def test_diverged_point_is_a_result_not_a_failure(model, loader):
    cfg = GridSearchConfig(learning_rate=[1e-4, 1e30], localization=10.0, nbeta=20.0, **sf.FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN arithmetic on the diverged traces, if any
        df = LLCGridSearch(cfg).run_grid_search(model, loader, **sf.RUN)
    # a huge step diverges (a result, not an error): the point has status "diverged", not "failed"
    assert sf.outcomes(df.status) == ["estimate", "estimate"] and df.status.iloc[1] == "diverged"
    assert df.n_diverged.iloc[1] == 2 and math.isnan(df.llc_mean.iloc[1])
    assert str(df.n_diverged.dtype) == "Int64"


def test_float64_grid(model, loader):
    cfg = GridSearchConfig(learning_rate=1e-3, localization=10.0, nbeta=20.0, dtype="float64", **sf.FAST)
    df = LLCGridSearch(cfg).run_grid_search(model, loader, **dict(sf.RUN, criterion_fn=F.mse_loss))
    est = LLCEstimator(learning_rate=1e-3, localization=10.0, nbeta=20.0, dtype=torch.float64, **sf.FAST)
    assert df.llc_mean.iloc[0] == est.run(model, loader, warn=False, **sf.RUN).llc_mean
