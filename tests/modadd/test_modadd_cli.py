"""End-to-end tests of ``lambdahat modadd ...`` and ``lambdahat demo`` through the real Typer app, with tiny settings.

``lambdahat demo`` itself (the default model, ~1-2 minutes) is measured, not tested here: these tests run its hidden
``--quick`` mode, which goes through the same code with a shrunken model and chains (see
``lambdahat.modadd.demo.QUICK_PARAMS``).
"""

from __future__ import annotations

import dataclasses
import inspect
import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from lambdahat.cli import app
from lambdahat.modadd import ExperimentParams, llc, load_run

from .conftest import TINY

pytestmark = pytest.mark.filterwarnings("ignore:llc_over_training. the estimator:RuntimeWarning")

TINY_ARGS = [
    "--p",
    "7",
    "--embed-dim",
    "4",
    "--hidden-size",
    "8",
    "--batch-size",
    "16",
    "--n-batches",
    "20",
    "--n-save-model-checkpoints",
    "5",
    "--train-frac",
    "0.6",
    "--lr",
    "0.01",
    "--weight-decay",
    "0.001",
]
FAST_LLC = ["--draws", "6", "--burnin-steps", "4", "--chains", "2"]
LLC_OPTIONS = [
    "--draws",
    "--chains",
    "--burnin-steps",
    "--learning-rate",
    "--localization",
    "--nbeta",
    "--llc-weight-decay",
    "--restrict-to-orth-grad",
    "--no-restrict-to-orth-grad",
]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    """Output with rich's box drawing and line wrapping removed."""
    for ch in "│╭╮╰╯─":
        text = text.replace(ch, " ")
    return " ".join(text.split())


def assert_ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)


def assert_clean_error(result, *fragments):
    """Exit code != 0, the message on stderr, no traceback."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    err = flat(result.stderr)
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in err, err


def wrote(result) -> list[str]:
    return [line.removeprefix("wrote ") for line in result.stdout.splitlines() if line.startswith("wrote ")]


@pytest.fixture
def run_dir(tmp_path):
    out = tmp_path / "run"
    assert_ok(invoke("modadd", "train", *TINY_ARGS, "--out", out))
    return out


@pytest.mark.parametrize(
    "command",
    [
        ["modadd"],
        ["modadd", "train"],
        ["modadd", "llc"],
        ["modadd", "fourier"],
        ["modadd", "circuit"],
        ["modadd", "sweep-p"],
        ["modadd", "reproduce-p-sweep"],
        ["demo"],
    ],
)
def test_every_command_has_help(command):
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})  # wide: no cut names
    assert_ok(result)
    assert "Usage" in result.stdout
    if command == ["demo"]:
        assert "--quick" not in result.stdout  # the test switch is hidden
        assert "--threads" in result.stdout
    if command in (["modadd", "llc"], ["modadd", "sweep-p"]):  # the λ̂ options, generated from LLCConfig
        text = flat(result.stdout)
        for option in LLC_OPTIONS:
            assert option in text, option
        assert "--epsilon" not in text and "--gamma" not in text  # hidden deprecated spellings


def test_llc_options_defaults_are_the_libraries():
    """The commands take their defaults from the torch-free lambdahat.modadd.params; they are the library's."""
    from lambdahat import LLCConfig
    from lambdahat.modadd import cli, llc_over_training

    signature = inspect.signature(llc_over_training).parameters
    library = {name: signature[name].default for name in cli.LLC_FIELDS}
    # None in the signature: the hackathon's aliases are resolved to these
    library.update(learning_rate=llc.DEFAULT_LEARNING_RATE, localization=llc.DEFAULT_LOCALIZATION)
    command = {name: cli.LLC_DEFAULTS.get(name, getattr(LLCConfig(), name)) for name in cli.LLC_FIELDS}
    assert command == library


def test_train_options_defaults_are_experimentparams():
    import typer

    train = typer.main.get_command(app).commands["modadd"].commands["train"]
    defaults = {p.name: p.default for p in train.params}
    expected = dataclasses.asdict(ExperimentParams())
    assert set(expected) <= set(defaults)
    assert {name: defaults[name] for name in expected} == expected


def test_train_writes_a_run(run_dir):
    run = load_run(run_dir)
    assert run.params == ExperimentParams(**TINY)
    assert run.n_checkpoints == 5
    assert (run_dir / "training_curves.png").is_file()


def test_train_prints_what_it_wrote(tmp_path):
    out = tmp_path / "r"
    result = invoke(
        "modadd", "train", *TINY_ARGS, "--use-random-dataset", "--activation", "relu", "--out", out
    )
    assert_ok(result)
    assert "final train accuracy" in result.stdout
    paths = wrote(result)
    assert str(out / "record.csv") in paths and str(out / "training_curves.png") in paths
    params = load_run(out).params
    assert params.use_random_dataset and params.activation == "relu"


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--p", "1"], ["--p", "greater than or equal to 2"]),
        (["--train-frac", "0"], ["train_frac must be in (0, 1]"]),
        (["--train-frac", "1.5"], ["train_frac must be in (0, 1]"]),
        (["--n-save-model-checkpoints", "50", "--n-batches", "10"], ["n_save_model_checkpoints must be"]),
        (["--activation", "tanh"], ["tanh"]),
    ],
)
def test_train_refuses_bad_arguments(tmp_path, args, fragments):
    result = invoke("modadd", "train", "--out", tmp_path / "x", *args)
    assert_clean_error(result, *fragments)
    assert not (tmp_path / "x").exists()


def test_train_refuses_a_used_directory(run_dir):
    result = invoke("modadd", "train", *TINY_ARGS, "--out", run_dir)
    assert_clean_error(result, "is not empty")
    assert_ok(invoke("modadd", "train", *TINY_ARGS, "--out", run_dir, "--overwrite"))


def test_llc_writes_a_table_and_a_figure(run_dir):
    result = invoke("modadd", "llc", run_dir, *FAST_LLC, "--localization", "50", "--learning-rate", "2e-4")
    assert_ok(result)
    header = next(line for line in result.stdout.splitlines() if line.lstrip().startswith("checkpoint"))
    assert header.split() == [
        "checkpoint",
        "step",
        "llc_mean",
        "llc_stderr",
        "mala_acceptance",
        "rhat",
        "status",
    ]
    csv, png = run_dir / "llc" / "llc_over_training.csv", run_dir / "llc" / "llc_over_training.png"
    assert str(csv) in wrote(result) and str(png) in wrote(result)
    df = pd.read_csv(csv)
    assert df["step"].tolist() == load_run(run_dir).steps
    assert png.stat().st_size > 0
    config = json.loads((run_dir / "llc" / "sweep" / "sweep.json").read_text())
    estimator = config["config"]["estimator"]
    assert estimator["localization"] == 50.0 and estimator["learning_rate"] == 2e-4
    assert "peak" in result.stdout


def test_llc_accepts_the_seeds_names_with_a_warning(run_dir, tmp_path):
    out = tmp_path / "old-names"
    result = invoke("modadd", "llc", run_dir, *FAST_LLC, "--checkpoints", "0", "--gamma", "50", "--out", out)
    assert_ok(result)
    assert "--gamma is deprecated; use --localization" in result.stderr
    estimator = json.loads((out / "sweep" / "sweep.json").read_text())["config"]["estimator"]
    assert estimator["localization"] == 50.0
    assert_clean_error(
        invoke("modadd", "llc", run_dir, "--epsilon", "1e-3", "--learning-rate", "1e-4"),
        "give --learning-rate only",
    )
    assert_clean_error(invoke("modadd", "llc", run_dir, "--chains", "0"), "--chains", "must be an int >= 1")


def test_llc_some_checkpoints_elsewhere(run_dir, tmp_path):
    out = tmp_path / "elsewhere"
    assert_ok(invoke("modadd", "llc", run_dir, *FAST_LLC, "--checkpoints", "0,-1", "--out", out))
    assert pd.read_csv(out / "llc_over_training.csv")["checkpoint"].tolist() == [0, 4]


def test_llc_with_other_settings_needs_overwrite(run_dir):
    assert_ok(invoke("modadd", "llc", run_dir, *FAST_LLC, "--checkpoints", "0"))
    result = invoke(
        "modadd", "llc", run_dir, "--draws", "7", "--burnin-steps", "4", "--chains", "2", "--checkpoints", "0"
    )
    assert_clean_error(result, "draws")
    assert_ok(
        invoke(
            "modadd",
            "llc",
            run_dir,
            "--draws",
            "7",
            "--burnin-steps",
            "4",
            "--chains",
            "2",
            "--checkpoints",
            "0",
            "--overwrite",
        )
    )


def test_fourier_writes_its_figures_and_tables(run_dir):
    result = invoke("modadd", "fourier", run_dir)
    assert_ok(result)
    out = run_dir / "fourier"
    for name in (
        "mode_heatmap.png",
        "mode_magnitudes.csv",
        "mode_ablation.csv",
        "mode_magnitudes_over_checkpoints.csv",
    ):
        assert str(out / name) in wrote(result) and (out / name).is_file()
    assert any(p.startswith(str(out / "mode_circle_k")) for p in wrote(result))
    assert "key modes" in result.stdout
    assert len(pd.read_csv(out / "mode_ablation.csv")) == 7 // 2 + 1


def test_circuit_prints_and_writes_the_verdict(run_dir):
    result = invoke("modadd", "circuit", run_dir, "--checkpoint", "2")
    assert_ok(result)
    path = run_dir / "circuit_ckpt0002.json"
    assert wrote(result) == [str(path)]
    record = json.loads(path.read_text())
    assert record["verdict"] in ("pizza", "clock", "unclear") and record["checkpoint"] == 2
    assert f"verdict: {record['verdict']}" in result.stdout
    assert "gradient symmetricity" in result.stdout


@pytest.mark.parametrize("command", ["llc", "fourier", "circuit"])
def test_run_dir_commands_refuse_bad_run_dirs(tmp_path, run_dir, command):
    assert_clean_error(invoke("modadd", command, tmp_path / "missing"), "no such directory")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "params.json").write_text(json.dumps({"format": "something else"}))
    assert_clean_error(invoke("modadd", command, foreign), "not a lambdahat modadd run")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_error(invoke("modadd", command, empty), "has no params.json")


@pytest.mark.parametrize(
    "args",
    [["circuit", "--checkpoint", "5"], ["circuit", "--checkpoint", "-6"], ["fourier", "--checkpoint", "9"]],
)
def test_missing_checkpoints_are_refused(run_dir, args):
    command, *rest = args
    assert_clean_error(invoke("modadd", command, run_dir, *rest), "does not exist", "valid indices are 0..4")


def test_llc_refuses_missing_checkpoints(run_dir):
    assert_clean_error(
        invoke("modadd", "llc", run_dir, "--checkpoints", "0,7"), "checkpoint 7 does not exist"
    )
    assert_clean_error(
        invoke("modadd", "llc", run_dir, "--checkpoints", "0,x"), "comma-separated list of integers"
    )


def test_sweep_p(tmp_path):
    out = tmp_path / "sweep"
    tiny = TINY_ARGS[2:]  # everything but --p
    result = invoke("modadd", "sweep-p", "--ps", "5,7", *tiny, *FAST_LLC, "--out", out)
    assert_ok(result)
    df = pd.read_csv(out / "p_sweep.csv")
    assert df[["p", "use_random_dataset"]].values.tolist() == [[5, False], [5, True], [7, False], [7, True]]
    assert str(out / "llc_vs_p.png") in wrote(result) and (out / "llc_vs_p.png").stat().st_size > 0
    assert load_run(df["run_dir"].iloc[0]).params.train_frac == 0.6
    header = next(line for line in result.stdout.splitlines() if line.lstrip().startswith("p "))
    assert "llc_mean" in header and "mala_acceptance" in header


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--ps", "5,x"], "comma-separated list of integers"),
        (["--ps", "1,5"], "every p must be an integer >= 2"),
        (["--ps", "5", "--train-frac", "0"], "train_frac must be in (0, 1]"),
        (["--ps", "5", "--run-ids", ""], "--run-ids is empty"),
    ],
)
def test_sweep_p_refuses_bad_arguments(tmp_path, args, fragment):
    assert_clean_error(invoke("modadd", "sweep-p", "--out", tmp_path / "s", *args), fragment)


def test_demo_quick(tmp_path):
    """The demo's plumbing, shrunken. The real default (`lambdahat demo`, what `make demo` runs) is measured, not
    tested: 65-72 s on the 2-core CPU, λ̂ 61.7 at init, peak 132.2 at step 700, final 64.0."""
    out = tmp_path / "demo"
    result = invoke("demo", "--quick", "--out", out)
    assert_ok(result)
    summary = (out / "summary.md").read_text()
    for heading in ("## Training", "## λ̂ over training", "## Fourier modes", "## Circuit", "## Wall times"):
        assert heading in summary
    assert "Verdict: **" in summary and "peak λ̂" in summary and "Quick mode" in summary
    # the trust policy's thresholds are quoted from lambdahat.trust, and every checkpoint's verdict is listed
    from lambdahat.trust import MIN_ACCEPTANCE, describe

    assert f"asks for >= {MIN_ACCEPTANCE:g})" in summary and describe() in summary
    assert "- trust: " in summary and "| status |" in summary
    for name in ("llc_over_training.csv", "llc_over_training.png", "training_curves.png", "circuit.json"):
        assert str(out / name) in wrote(result) and (out / name).is_file()
    assert (out / "fourier" / "mode_heatmap.png").is_file()
    assert load_run(out / "run").n_checkpoints == 4
    assert f"demo directory: {out}" in result.stdout


def test_demo_default_directory_and_refusals(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_ok(invoke("demo", "--quick"))
    made = list(tmp_path.glob("lambdahat-demo-*"))
    assert len(made) == 1 and (made[0] / "summary.md").is_file()
    assert_clean_error(invoke("demo", "--quick", "--out", made[0]), "not an empty directory")
    assert_clean_error(invoke("demo", "--quick", "--threads", "0"), "--threads")
