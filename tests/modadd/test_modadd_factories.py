"""`lambdahat sweep` over a modular-addition run directory through the ready-made factories."""

from __future__ import annotations

import pandas as pd
from typer.testing import CliRunner

from lambdahat.cli import app


def write_config(path, text):
    path.write_text(text)
    return path


def test_checkpoint_sweep_over_a_run_directory(tiny_run, tmp_path):
    cfg = write_config(
        tmp_path / "ckpts.yaml",
        f"""
kind: checkpoints
model:
  kind: python
  factory: "lambdahat.modadd.factories:checkpoints_of_run"
  kwargs: {{run_dir: "{tiny_run.path}", batch_size: 16}}
checkpoints_glob: "{tiny_run.path}/checkpoints/*.safetensors"
estimator: {{draws: 8, chains: 2, burnin_steps: 2, learning_rate: 1.0e-4, localization: 100.0}}
run: {{seed: 0, compile: false, out_dir: "{tmp_path / "out"}"}}
""",
    )
    result = CliRunner().invoke(app, ["sweep", str(cfg)])
    assert result.exit_code == 0, result.output
    df = pd.read_csv(tmp_path / "out" / "results.csv")
    # every checkpoint ran (the tiny run's verdicts, mostly "untrusted: ESS ...", are beside the point here)
    assert len(df) == tiny_run.n_checkpoints and not (df["status"] == "failed").any()


def test_grid_sweep_at_a_checkpoint(tiny_run, tmp_path):
    cfg = write_config(
        tmp_path / "grid.yaml",
        f"""
kind: grid
model:
  kind: python
  factory: "lambdahat.modadd.factories:grid_at_checkpoint"
  kwargs: {{run_dir: "{tiny_run.path}", checkpoint: -1, batch_size: 16}}
estimator: {{draws: 8, chains: 2, burnin_steps: 2}}
grid: {{learning_rate: [1.0e-5, 1.0e-4], localization: 100.0, nbeta: null}}
run: {{seed: 0, compile: false, out_dir: "{tmp_path / "grid"}"}}
""",
    )
    result = CliRunner().invoke(app, ["sweep", str(cfg)])
    assert result.exit_code == 0, result.output
    df = pd.read_csv(tmp_path / "grid" / "results.csv")
    assert sorted(df["learning_rate"]) == [1e-5, 1e-4]
