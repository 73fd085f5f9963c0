"""λ̂ on token subsets and per-token traces (lambdahat.lm.tokens) on a small GPT-2 built in code."""

from __future__ import annotations

import dataclasses
import doctest
import math

import pytest
import torch

import lambdahat
from lambdahat.lm import evaluation_targets, next_token_loss, token_llc, token_traces
from lambdahat.lm import tokens as tokens_module

from .conftest import padded_batches

pytest.importorskip("transformers")

CONFIG = lambdahat.LLCConfig(
    draws=15, chains=3, burnin_steps=5, learning_rate=1e-4, localization=100.0, nbeta=40.0
)


def one_batch() -> list[dict[str, torch.Tensor]]:
    """The three padded batches of the conftest as one batch (12 sequences, padding that does not count)."""
    parts = padded_batches(side="right")
    return [{k: torch.cat([p[k] for p in parts]) for k in parts[0]}]


@pytest.fixture(scope="module")
def run(models):
    model = models("gpt2")
    loader = one_batch()
    problem = lambdahat.prepare(
        model, loader, CONFIG, loss_fn=next_token_loss, evaluation=loader, compile=False
    )
    result = lambdahat.sample(problem, CONFIG, seed=3, show_progress=False, warn=False)
    return result, evaluation_targets(loader), loader


def test_all_tokens_give_the_results_llc(run):
    """With one full batch the draws of the result are the full-data losses at the same points as the recorded
    per-token losses, and both are token-weighted means over the counted tokens: λ̂ over all tokens equals the
    result's λ̂ up to float32 rounding (nβ · ~1e-6). With several batches the result's draws are minibatch losses,
    so the two would differ by minibatch noise."""
    result, targets, _ = run
    assert result.per_sample_losses.shape[:2] == (3, 15)
    assert result.per_sample_losses_at_init.shape == result.per_sample_losses.shape[2:]
    assert math.isclose(
        float(torch.nanmean(result.per_sample_losses_at_init.double())), result.init_loss, rel_tol=1e-5
    )
    every = token_llc(result, targets)
    torch.testing.assert_close(every.llcs, result.llcs, rtol=1e-4, atol=1e-3)
    assert math.isclose(every.llc_mean, result.llc_mean, rel_tol=1e-4, abs_tol=1e-3)
    assert every.n_tokens == int(torch.isfinite(result.per_sample_losses_at_init).sum())
    assert every.nbeta == result.nbeta == 40.0


def test_token_subsets_are_finite_and_add_up(run):
    result, targets, _ = run
    counted = torch.isfinite(result.per_sample_losses_at_init)
    common = int(torch.mode(targets[counted]).values)
    by_id = token_llc(result, targets, token_ids=common)
    assert math.isfinite(by_id.llc_mean) and math.isfinite(by_id.llc_stderr)
    assert by_id.n_tokens == int(((targets == common) & counted).sum()) > 1
    first = torch.zeros_like(targets, dtype=torch.bool)
    first[:, :3] = True
    a, b = token_llc(result, mask=first), token_llc(result, mask=~first)
    every = token_llc(result)
    # the token-weighted mean of the two parts is the whole
    mixed = (a.llcs * a.n_tokens + b.llcs * b.n_tokens) / (a.n_tokens + b.n_tokens)
    torch.testing.assert_close(mixed, every.llcs, rtol=1e-4, atol=1e-3)
    one = token_llc(result, positions=[(0, 0), (1, 1)])
    assert one.n_tokens == 2 and math.isfinite(one.llc_mean)


def test_traces_are_indexed_by_chain_draw_sequence_position(run):
    result, targets, loader = run
    df = token_traces(result, targets, positions=[(0, 0), (2, 1)])
    assert list(df.index.names) == ["chain", "draw", "sequence", "position"]
    assert len(df) == 3 * 15 * 2
    row = df.loc[(1, 4, 2, 1)]
    assert row["loss"] == pytest.approx(float(result.per_sample_losses[1, 4, 2, 1]))
    assert row["loss_at_init"] == pytest.approx(float(result.per_sample_losses_at_init[2, 1]))
    assert row["token_id"] == int(loader[0]["input_ids"][2, 2])  # position t predicts token t + 1
    assert token_traces(result).shape[0] == 3 * 15 * token_llc(result).n_tokens


def test_bad_input_says_what_to_do(run, models):
    result, targets, _ = run
    with pytest.raises(ValueError, match=r"token id\(s\) \[999\] never occur"):
        token_llc(result, targets, token_ids=[999])
    with pytest.raises(ValueError, match=r"targets have shape \(12, 8\).*evaluation_targets"):
        token_llc(result, targets[:, :8])
    with pytest.raises(ValueError, match="mask must be a boolean tensor"):
        token_llc(result, mask=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="token_ids needs targets"):
        token_llc(result, token_ids=3)
    with pytest.raises(ValueError, match="pass one of token_ids, mask and positions"):
        token_llc(result, targets, token_ids=3, positions=[(0, 0)])
    with pytest.raises(ValueError, match="outside the evaluation set"):
        token_llc(result, positions=[(12, 0)])
    padding = ~torch.isfinite(result.per_sample_losses_at_init)
    with pytest.raises(ValueError, match="holds no counted token"):
        token_llc(result, mask=padding)
    loader, short = one_batch(), dataclasses.replace(CONFIG, draws=2, burnin_steps=1, chains=1)
    plain = lambdahat.sample(
        lambdahat.prepare(models("gpt2"), loader, short, loss_fn=next_token_loss, compile=False),
        short,
        seed=3,
        show_progress=False,
        warn=False,
    )
    with pytest.raises(ValueError, match="run it with an evaluation set"):
        token_llc(plain)


def test_docstring_examples():
    result = doctest.testmod(tokens_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_per_sample_results_and_results_without_l0_per_token_are_refused():
    from types import SimpleNamespace

    per_sample = SimpleNamespace(
        per_sample_losses=torch.zeros(2, 3, 4), per_sample_losses_at_init=torch.zeros(4)
    )
    with pytest.raises(ValueError, match="per-sample losses of shape \\(2, 3, 4\\).*per-token loss"):
        token_llc(per_sample)
    no_init = SimpleNamespace(per_sample_losses=torch.zeros(2, 3, 4, 5), per_sample_losses_at_init=None)
    with pytest.raises(ValueError, match="not at w\\*"):
        token_llc(no_init)
