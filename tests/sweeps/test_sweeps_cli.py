"""The ``sweep`` command end to end, through a Typer app of the tests' own."""

from __future__ import annotations

import json
import textwrap

import pandas as pd
import pytest
import sweep_fixtures as sf
import torch
import typer
from safetensors.torch import save_file
from typer.testing import CliRunner

from lambdahat import LLCEstimator
from lambdahat.sweeps import llc_over_checkpoints
from lambdahat.sweeps.cli import register

GRID_YAML = """
kind: grid
model:
  kind: python
  factory: "sweep_fixtures:grid_factory"
estimator:
  draws: 20
  chains: 2
  burnin_steps: 5
grid:
  learning_rate: {range: [1e-4, 1e-3]}
  localization: {range: [1, 10]}
  nbeta: 20
  estimates_per_dim: 2
run:
  seed: 0
  compile: false
  out_dir: out
"""

CHECKPOINTS_YAML = """
kind: checkpoints
model: {kind: python, factory: "sweep_fixtures:checkpoints_factory", kwargs: {data_seed: 1}}
estimator: {draws: 20, chains: 2, burnin_steps: 5, learning_rate: 1e-3, localization: 10, nbeta: 20}
checkpoints_glob: "ckpts/*.safetensors"
run: {seed: 0, compile: false}
"""


@pytest.fixture
def app():
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """lambdahat (test app)."""

    register(app)
    return app


def invoke(app, *args):
    return CliRunner().invoke(app, ["sweep", *map(str, args)])


def test_help(app):
    result = invoke(app, "--help")
    assert result.exit_code == 0
    for option in ("--executor", "--address", "--resume", "--no-resume", "--out", "--overwrite"):
        assert option in result.output


def test_grid_sweep_runs_and_resumes(app, tmp_path):
    (tmp_path / "grid.yaml").write_text(GRID_YAML)
    result = invoke(app, tmp_path / "grid.yaml")
    assert result.exit_code == 0, result.output
    results = tmp_path / "out" / "results.csv"
    assert f"results: {results}" in result.output
    line = next(li for li in result.output.splitlines() if li.startswith("[4] point 3: "))
    assert line.startswith("[4] point 3: learning_rate=0.001 localization=10 nbeta=20: llc_mean=")
    for shown in (", acceptance ", ", R-hat ", ", status "):  # what says whether to trust λ̂
        assert shown in line
    table = result.output.split(line)[-1]  # the table printed at the end
    for column in ("learning_rate", "localization", "llc_mean", "mala_acceptance", "rhat", "status"):
        assert column in table
    df = pd.read_csv(results)
    assert (
        len(df) == 4
        and set(sf.outcomes(df.status)) == {"estimate"}
        and sorted(df.learning_rate.unique()) == [1e-4, 1e-3]
        and sorted(df.localization.unique()) == [1.0, 10.0]
    )

    again = invoke(app, tmp_path / "grid.yaml")  # resume: nothing left to run
    assert again.exit_code == 0 and "[1]" not in again.output
    assert len(pd.read_csv(results)) == 4

    refused = invoke(app, tmp_path / "grid.yaml", "--no-resume")
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    fresh = invoke(
        app, tmp_path / "grid.yaml", "--no-resume", "--overwrite", "--out", tmp_path / "out", "--plot"
    )
    assert fresh.exit_code == 0 and (tmp_path / "out" / "sweep.png").exists()
    assert len(pd.read_csv(results)) == 4

    (tmp_path / "grid.yaml").write_text(GRID_YAML.replace("draws: 20", "draws: 25"))
    changed = invoke(app, tmp_path / "grid.yaml")
    assert changed.exit_code == 2 and "grid.draws: 20 -> 25" in changed.output


def test_checkpoint_sweep_from_a_glob_and_from_toml(app, tmp_path):
    (tmp_path / "ckpts").mkdir()
    sds = sf.state_dicts(3)
    for step, sd in zip([2, 10, 1], sds):  # natural order: 1, 2, 10
        save_file(sd, str(tmp_path / "ckpts" / f"step_{step}.safetensors"))
    (tmp_path / "ckpt.yaml").write_text(CHECKPOINTS_YAML)
    result = invoke(app, tmp_path / "ckpt.yaml", "--out", tmp_path / "res")
    assert result.exit_code == 0, result.output
    df = pd.read_csv(tmp_path / "res" / "results.csv")
    assert df.checkpoint.tolist() == ["step_1", "step_2", "step_10"]
    meta = json.loads((tmp_path / "res" / "sweep.json").read_text())
    assert meta["kind"] == "checkpoints" and meta["config"]["estimator"]["learning_rate"] == 1e-3
    est = LLCEstimator(learning_rate=1e-3, localization=10.0, nbeta=20.0, **sf.FAST)
    direct = llc_over_checkpoints([sds[2], sds[0], sds[1]], sf.linear_model, sf.make_loader(1), est, **sf.RUN)
    assert df.llc_mean.tolist() == direct.llc_mean.tolist()

    toml = textwrap.dedent(
        """
        kind = "checkpoints"
        checkpoints = ["ckpts/step_1.safetensors", "ckpts/step_2.safetensors"]
        labels = [1, 2]
        [model]
        factory = "sweep_fixtures:checkpoints_factory"
        [estimator]
        draws = 20
        chains = 2
        burnin_steps = 5
        learning_rate = 1e-3
        localization = 10.0
        nbeta = 20.0
        [run]
        seed = 0
        compile = false
        out_dir = "toml-out"
        """
    )
    (tmp_path / "ckpt.toml").write_text(toml)
    result = invoke(app, tmp_path / "ckpt.toml")
    assert result.exit_code == 0, result.output
    df = pd.read_csv(tmp_path / "toml-out" / "results.csv")
    assert df.checkpoint.tolist() == [1, 2]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "kind: grid\nmodel: {factory: 'sweep_fixtures:grid_factory'}\ngrdi: {}\n",
            "unknown key(s) ['grdi']",
        ),
        ("kind: lattice\n", "kind must be one of"),
        ("kind: grid\nmodel: {kind: modadd_run, run_dir: x}\n", "model.kind 'modadd_run' is not supported"),
        ("kind: grid\nmodel: {factory: 'x:y', file: 'a'}\n", "unknown key(s) ['file'] in model"),
        ("kind: grid\nmodel: {factory: 'no_such_module_xyz:f'}\n", "cannot import"),
        (
            "kind: grid\nmodel: {factory: 'sweep_fixtures:grid_factory'}\ngrid: {epsilon: {range: [1, 2, 3]}}\n",
            "{range: [lo, hi]}",
        ),
        (
            "kind: grid\nmodel: {factory: 'sweep_fixtures:grid_factory'}\ngrid: {gamma_spacing: cubic}\n",
            "localization_spacing must be one of",
        ),
        ("kind: checkpoints\nmodel: {factory: 'sweep_fixtures:checkpoints_factory'}\n", "exactly one of"),
        (
            GRID_YAML.replace("{range: [1, 10]}", "[1, 10]"),
            "localization is a list, which gives exactly its values, so estimates_per_dim=2 is ambiguous",
        ),
        (GRID_YAML.replace("  chains: 2", "  chians: 2"), "unknown key(s) ['chians'] in estimator"),
        (
            GRID_YAML.replace("  chains: 2", "  learning_rate: 1e-3"),
            "are the grid's axes; set them under grid:",
        ),
        (GRID_YAML.replace("  chains: 2", "  dtype: float8"), "dtype must be one of"),
        (GRID_YAML.replace("  nbeta: 20", "  nbeta: 20\n  gamma: 5"), "two names of the same setting"),
        (
            CHECKPOINTS_YAML.replace("nbeta: 20", "nbeta: -1"),
            "sweep config: estimator: nbeta must be a finite number > 0",
        ),
        (
            "kind: checkpoints\nmodel: {factory: 'sweep_fixtures:checkpoints_factory'}\ncheckpoints_glob: 'none/*.pt'\n",
            "matches no file",
        ),
        (
            "kind: grid\nmodel: {factory: 'sweep_fixtures:checkpoints_factory'}\nrun: {executor: dask}\n",
            "executor must be one of",
        ),
    ],
)
def test_config_errors_exit_2_with_the_fix(app, tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    result = invoke(app, tmp_path / "bad.yaml")
    assert result.exit_code == 2
    assert message in result.output


def test_bad_executor_option(app, tmp_path):
    (tmp_path / "grid.yaml").write_text(GRID_YAML)
    result = invoke(app, tmp_path / "grid.yaml", "--executor", "dask")
    assert result.exit_code == 2 and "--executor must be one of" in result.output


def test_the_seeds_names_and_toml_give_the_same_grid(app, tmp_path):
    (tmp_path / "new.yaml").write_text(GRID_YAML)
    old = GRID_YAML.replace("learning_rate:", "epsilon:").replace("localization:", "gamma:")
    (tmp_path / "old.yaml").write_text(old.replace("out_dir: out", "out_dir: out-old"))
    toml = textwrap.dedent(
        """
        kind = "grid"
        [model]
        factory = "sweep_fixtures:grid_factory"
        [estimator]
        draws = 20
        chains = 2
        burnin_steps = 5
        [grid]
        learning_rate = {range = [1e-4, 1e-3]}
        localization = {range = [1, 10]}
        nbeta = 20
        estimates_per_dim = 2
        [run]
        seed = 0
        compile = false
        out_dir = "out-toml"
        """
    )
    (tmp_path / "grid.toml").write_text(toml)
    tables, definitions = [], []
    for name, out in (("new.yaml", "out"), ("old.yaml", "out-old"), ("grid.toml", "out-toml")):
        result = invoke(app, tmp_path / name)
        assert result.exit_code == 0, result.output
        tables.append(pd.read_csv(tmp_path / out / "results.csv"))
        definitions.append(json.loads((tmp_path / out / "sweep.json").read_text())["config"]["grid"])
    columns = ["learning_rate", "localization", "nbeta", "llc_mean", "rhat"]
    assert tables[0][columns].equals(tables[1][columns]) and tables[0][columns].equals(tables[2][columns])
    assert definitions[0] == definitions[1] == definitions[2]
    assert definitions[0]["learning_rate"] == {"range": [1e-4, 1e-3]} and "epsilon" not in definitions[0]


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path):
    """YAML 1.1 reads 1e-3 as text; the loader takes it as the number it spells, in every section."""
    from lambdahat.sweeps.cli import load_sweep_config

    (tmp_path / "ckpts").mkdir()
    save_file(sf.state_dicts(1)[0], str(tmp_path / "ckpts" / "a.safetensors"))
    text = CHECKPOINTS_YAML.replace("learning_rate: 1e-3", "learning_rate: 1e-3, weight_decay: 1e-2")
    (tmp_path / "c.yaml").write_text(text)
    config = load_sweep_config(tmp_path / "c.yaml")["config"]
    assert config.learning_rate == 1e-3 and config.weight_decay == 1e-2 and config.dtype == torch.float32
    (tmp_path / "g.yaml").write_text(GRID_YAML)
    assert load_sweep_config(tmp_path / "g.yaml")["grid"].values("learning_rate") == [1e-4, 1e-3]
