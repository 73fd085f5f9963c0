"""The language-model demo: the toy transformer, its head masks, and `lambdahat lm demo --quick` end to end."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import lambdahat
from lambdahat.cli import app
from lambdahat.lm import toy
from lambdahat.lm.demo import QUICK_PARAMS, components


def test_sequences_repeat_with_their_period_and_masks_split_the_targets():
    params = toy.ToyParams(vocab=20, n_ctx=16, min_period=3, max_period=6)
    tokens, periods = toy.repeated_sequences(50, params, torch.Generator().manual_seed(0))
    assert tokens.shape == (50, 16) and set(periods.tolist()) <= set(range(3, 7))
    for seq, k in zip(tokens, periods.tolist()):
        torch.testing.assert_close(seq[k:], seq[: 16 - k])
    masks = toy.target_masks(periods, 16)
    k = int(periods[0])
    assert masks["random"][0].nonzero().flatten().tolist() == list(range(k - 1))  # targets 1 .. k-1
    assert masks["repeated"][0].nonzero().flatten().tolist() == list(range(k, 15))  # targets k+1 .. T-1
    with pytest.raises(ValueError, match="min_period <= max_period < n_ctx - 1"):
        toy.ToyParams(n_ctx=8, max_period=7)


def test_a_head_is_its_slice_of_every_attention_tensor():
    model = toy.AttentionOnlyTransformer(QUICK_PARAMS)
    p = QUICK_PARAMS
    selection = toy.head_selection(model, 1, 0)
    layout = lambdahat.problem.select_parameters(model, selection)
    assert layout.dim == 4 * p.d_model * p.d_head + 3 * p.d_head
    assert toy.component_selection(model, "all") is None
    assert lambdahat.problem.select_parameters(model, toy.component_selection(model, "l0")).dim == (
        4 * p.n_heads * p.d_model * p.d_head + 3 * p.n_heads * p.d_head
    )
    with pytest.raises(ValueError, match="2 layers of 2 heads; got layer 2"):
        toy.head_selection(model, 2, 0)
    with pytest.raises(ValueError, match="expected 'all', 'l<layer>' or 'l<layer>h<head>'"):
        toy.component_selection(model, "head0")


def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["lm", "demo", "--out", str(out), "--quick"])
    assert result.exit_code == 0, result.output
    assert "loss on the repeated tokens drops most" in result.output
    for name in (
        "summary.md",
        "table.csv",
        "llc_over_training.csv",
        "llc_over_training.png",
        "run/record.csv",
    ):
        assert (out / name).is_file(), name
    llc = pd.read_csv(out / "llc_over_training.csv")
    steps = toy.checkpoint_steps(QUICK_PARAMS.steps, QUICK_PARAMS.checkpoints)
    assert len(llc) == len(steps) * len(components(QUICK_PARAMS))
    assert (llc["status"] != "failed").all() and llc["llc_mean"].notna().all()
    whole = llc[llc["component"] == "all"]
    assert whole["llc_repeated"].notna().all() and llc[llc["component"] != "all"]["llc_repeated"].isna().all()
    table = pd.read_csv(out / "table.csv")
    assert table["step"].tolist() == steps
    assert {"loss_repeated", "llc_all", "llc_l1", "llc_l1h1", "llc_repeated"} <= set(table.columns)
    # a rerun into the same directory takes the stored estimates
    again = CliRunner().invoke(app, ["lm", "demo", "--out", str(out), "--quick"])
    assert again.exit_code == 0, again.output
    pd.testing.assert_series_equal(pd.read_csv(out / "llc_over_training.csv")["llc_mean"], llc["llc_mean"])


def test_lm_help_imports_no_torch():
    script = (
        "import sys\n"
        "from lambdahat.cli import app\n"
        "for command in (['lm'], ['lm', 'demo']):\n"
        "    try:\n"
        "        app([*command, '--help'])\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, (command, exc.code)\n"
        "print('HEAVY', [m for m in ('torch', 'pandas', 'matplotlib', 'numpy') if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
