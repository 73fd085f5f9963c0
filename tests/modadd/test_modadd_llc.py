"""λ̂ over the checkpoints of a run (llc_over_training) and its figure, on tiny runs."""

from __future__ import annotations

import json
import math

import pytest
from matplotlib.figure import Figure

from lambdahat.estimator import nbeta_from_effective_size
from lambdahat.modadd import llc_over_training, load_run, plot_llc_over_training
from lambdahat.modadd.llc import LLC_COLUMNS

# The tiny runs' few-step chains always trip the diagnostics (R-hat); that advice is tested on its own below.
pytestmark = pytest.mark.filterwarnings("ignore:llc_over_training. the estimator:RuntimeWarning")

# A few SGLD steps: enough to exercise the plumbing, not to estimate anything.
FAST = dict(draws=6, burnin_steps=4, chains=2, compile=False, show_progress=False)


def test_one_row_per_checkpoint_with_the_record_joined(tiny_run):
    df = llc_over_training(tiny_run, **FAST)
    assert list(df.columns[: len(LLC_COLUMNS)]) == list(LLC_COLUMNS)
    assert len(df) == tiny_run.n_checkpoints
    assert df["checkpoint"].tolist() == list(range(tiny_run.n_checkpoints))
    assert df["step"].tolist() == tiny_run.steps
    rec = tiny_run.record
    for col in ("train_loss", "test_loss", "train_acc", "test_acc"):
        assert df[col].tolist() == pytest.approx(rec[col].tolist())
    assert not (df["status"] == "failed").any()  # every checkpoint ran; tiny chains are "untrusted: ..."
    assert df["llc_mean"].notna().all() and (df["llc_std"] >= 0).all()
    assert df["mala_acceptance"].between(0, 1).all()
    # the sampler's L0 is the full training loss of the record, and nβ is n / log n of the training split
    assert df["init_loss"].tolist() == pytest.approx(rec["train_loss"].tolist(), rel=1e-5)
    n_train = len(tiny_run.train_data())
    assert df.attrs["n_train"] == n_train
    assert df.attrs["nbeta"] == pytest.approx(nbeta_from_effective_size(n_train))
    assert df.attrs["localization"] == 100.0 and df.attrs["learning_rate"] == 1e-4


def test_chosen_checkpoints_keep_their_steps_and_order(tiny_run):
    df = llc_over_training(tiny_run, checkpoints=[-1, 1], **FAST)
    assert df["checkpoint"].tolist() == [tiny_run.n_checkpoints - 1, 1]
    assert df["step"].tolist() == [tiny_run.steps[-1], tiny_run.steps[1]]


def test_same_seed_same_curve_and_the_run_path_works(tiny_run):
    a = llc_over_training(tiny_run, checkpoints=[2], seed=3, **FAST)
    b = llc_over_training(str(tiny_run.path), checkpoints=[2], seed=3, **FAST)
    assert a["llc_mean"].tolist() == b["llc_mean"].tolist()


def test_hackathon_names_are_aliases(tiny_run):
    a = llc_over_training(tiny_run, checkpoints=[1], gamma=30.0, epsilon=2e-4, **FAST)
    b = llc_over_training(tiny_run, checkpoints=[1], localization=30.0, learning_rate=2e-4, **FAST)
    assert a.attrs["localization"] == 30.0 and a.attrs["learning_rate"] == 2e-4
    assert a["llc_mean"].tolist() == b["llc_mean"].tolist()


@pytest.mark.parametrize(
    "kwargs, names",
    [
        (dict(gamma=5.0, localization=5.0), ("localization", "gamma")),
        (dict(epsilon=1e-3, learning_rate=1e-4), ("learning_rate", "epsilon")),
    ],
)
def test_both_names_of_one_setting_are_refused(tiny_run, kwargs, names):
    with pytest.raises(TypeError, match="pass only one") as info:
        llc_over_training(tiny_run, **kwargs, **FAST)
    assert all(n in str(info.value) for n in names)


def test_bad_arguments_are_refused(tiny_run):
    with pytest.raises(IndexError, match="does not exist"):
        llc_over_training(tiny_run, checkpoints=[tiny_run.n_checkpoints], **FAST)
    with pytest.raises(ValueError, match="twice"):
        llc_over_training(tiny_run, checkpoints=[0, -tiny_run.n_checkpoints], **FAST)
    with pytest.raises(TypeError, match="list"):
        llc_over_training(tiny_run, checkpoints=3, **FAST)
    with pytest.raises(ValueError, match="batch_size"):
        llc_over_training(tiny_run, batch_size=0, **FAST)
    with pytest.raises(FileNotFoundError):
        llc_over_training(tiny_run.path / "nope", **FAST)


def test_results_are_stored_and_resumed(tiny_run, tmp_path):
    out = tmp_path / "llc"
    first = llc_over_training(tiny_run, out_dir=out, checkpoints=[0, 2], **FAST)
    config = json.loads((out / "sweep.json").read_text())
    assert config["kind"] == "checkpoints"  # the checkpoint sweep of lambdahat.sweeps did the work
    again = llc_over_training(tiny_run, out_dir=out, checkpoints=[0, 2], **FAST)
    assert again["llc_mean"].tolist() == first["llc_mean"].tolist()
    with pytest.raises(ValueError):
        llc_over_training(tiny_run, out_dir=out, checkpoints=[0, 2], **{**FAST, "draws": 7})
    redone = llc_over_training(
        tiny_run, out_dir=out, checkpoints=[0, 2], overwrite=True, **{**FAST, "draws": 7}
    )
    assert redone.attrs["draws"] == 7


def test_a_flagged_estimate_warns_once(tiny_run):
    # a huge step makes the chains diverge; the estimator's advice comes back as one warning
    with pytest.warns(RuntimeWarning, match="llc_over_training: the estimator's diagnostics flag"):
        df = llc_over_training(tiny_run, checkpoints=[0], learning_rate=10.0, **FAST)
    assert isinstance(df["warnings"].iloc[0], str)


def test_plot(tiny_run):
    df = llc_over_training(tiny_run, **FAST)
    fig = plot_llc_over_training(df)
    assert isinstance(fig, Figure)
    ax, twin = fig.axes
    assert twin.get_yscale() == "log"
    labels = ax.get_legend().get_texts()
    assert any("peak" in t.get_text() for t in labels)
    with pytest.raises(ValueError, match="llc_over_training"):
        plot_llc_over_training(df.drop(columns=["llc_std"]))


def test_plot_marks_untrusted_checkpoints_and_refuses_an_empty_figure(tiny_run, tmp_path):
    from lambdahat.modadd.report import write_llc_report

    df = llc_over_training(tiny_run, **FAST)
    df["status"] = ["ok"] + ["untrusted: ESS 12 < 100"] * (len(df) - 1)
    ax = plot_llc_over_training(df).axes[0]
    (crosses,) = [line for line in ax.lines if line.get_marker() == "x"]
    assert list(crosses.get_xdata()) == [float(s) for s in df["step"].iloc[1:]]
    # every checkpoint diverged: no λ̂ anywhere, so no figure (an empty one would look like a result)
    gone = df.assign(llc_mean=math.nan, llc_std=math.nan, llc_stderr=math.nan, status="diverged")
    with pytest.raises(ValueError, match=r"no checkpoint has a finite λ̂ \(statuses: \{'diverged': 5\}"):
        plot_llc_over_training(gone)
    with pytest.raises(ValueError, match="no checkpoint has a λ̂ estimate"):
        write_llc_report(gone, tmp_path / "report")
    assert (tmp_path / "report" / "llc_over_training.csv").is_file()
    assert not (tmp_path / "report" / "llc_over_training.png").exists()


def test_loading_an_interrupted_run_gives_the_available_checkpoints(tiny_run):
    (tiny_run.path / "checkpoints" / "ckpt_0004.safetensors").unlink()
    run = load_run(tiny_run.path)
    df = llc_over_training(run, **FAST)
    assert df["checkpoint"].tolist() == [0, 1, 2, 3]
    assert not math.isnan(df["llc_mean"].iloc[-1])
