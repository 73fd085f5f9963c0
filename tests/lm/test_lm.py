"""lambdahat.lm: per-token LM losses (L0 against hand computations and the models' own losses, padding on either
side), nβ in tokens or sequences, and head/layer/component selectors on GPT-2, GPT-NeoX, Llama (GQA) and
TransformerLens."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

import lambdahat
from lambdahat import LLCConfig, prepare, sample
from lambdahat.lm import (
    describe_selection,
    masked_lm_loss,
    nbeta_for_tokens,
    next_token_loss,
    position_ids_from_attention_mask,
    select,
    sequence_classification_loss,
)

from .conftest import ALL_ARCHS, D_HEAD, D_MLP, D_MODEL, N_HEADS, build, padded_batches

QUIET = dict(show_progress=False, warn=False)
CFG = LLCConfig(draws=8, chains=2, burnin_steps=4, learning_rate=1e-4, localization=100.0, nbeta=30.0)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def logits_of(model, batch):
    """The logits, computed directly (not through lambdahat): HF with mask-derived positions, TL as TL does."""
    if hasattr(model, "config"):
        pos = position_ids_from_attention_mask(batch["attention_mask"])
        return model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=pos
        ).logits
    return model(batch["input_ids"], attention_mask=batch["attention_mask"])


def hand_l0(model, batches, labels: bool):
    total, tokens = 0.0, 0
    with torch.no_grad():
        for b in batches:
            logits = logits_of(model, b)[:, :-1]
            if labels:
                target = b["labels"][:, 1:]
            else:
                m = b["attention_mask"]
                target = torch.where((m[:, 1:] * m[:, :-1]).bool(), b["input_ids"][:, 1:], -100)
            total += float(
                F.cross_entropy(logits.transpose(1, 2), target, reduction="sum", ignore_index=-100)
            )
            tokens += int((target != -100).sum())
    return total / tokens


@pytest.mark.parametrize("arch", ALL_ARCHS)
@pytest.mark.parametrize("side", ["right", "left"])
def test_l0_is_the_token_weighted_mean_over_the_data_set(models, arch, side):
    model = models(arch)
    batches = padded_batches(side)
    problem = prepare(model, batches, CFG, loss_fn=next_token_loss, compile=False)
    assert problem.init_loss == pytest.approx(hand_l0(model, batches, labels=False), rel=1e-6)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_l0_of_one_batch_is_the_models_own_loss(models, arch):
    model = models(arch)
    batch = padded_batches("right", extra=2, labels=arch != "tl")[0]
    problem = prepare(model, [batch], CFG, loss_fn=next_token_loss, compile=False)
    with torch.no_grad():
        if arch == "tl":
            own = model(batch["input_ids"], attention_mask=batch["attention_mask"], return_type="loss")
        else:
            own = model(**batch).loss  # Hugging Face: shifted labels, -100 ignored, token mean
    assert problem.init_loss == pytest.approx(float(own), rel=1e-6)
    # several batches: the token-weighted mean, not the mean of the per-batch .loss values
    if arch != "tl":
        batches = padded_batches("right", labels=True)
        multi = prepare(model, batches, CFG, loss_fn=next_token_loss, compile=False).init_loss
        assert multi == pytest.approx(hand_l0(model, batches, labels=True), rel=1e-6)


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "arch", ["gpt2", "llama", pytest.param("neox", marks=SLOW), pytest.param("tl", marks=SLOW)]
)
def test_padding_either_side_gives_the_same_llc(models, arch):
    model = models(arch)
    runs = {}
    for side, extra in (("right", 0), ("right", 4), ("left", 4)):
        problem = prepare(model, padded_batches(side, extra), CFG, loss_fn=next_token_loss, compile=False)
        runs[(side, extra)] = (problem.init_loss, sample(problem, CFG, seed=3, **QUIET))
    (l0, ref) = runs[("right", 0)]
    assert torch.isfinite(ref.llcs).all()
    assert isinstance(ref.status, str) and math.isfinite(ref.mala_acceptance)
    for l0_other, other in runs.values():
        assert l0_other == pytest.approx(l0, rel=1e-6)
        torch.testing.assert_close(other.llcs, ref.llcs, rtol=1e-3, atol=1e-3)


def test_the_callers_model_is_untouched(models):
    model = models("gpt2").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = CFG.replace(draws=4)
    sample(
        prepare(
            model, padded_batches(), cfg, loss_fn=next_token_loss, params=select(model, "l0h1"), compile=False
        ),
        cfg,
        seed=0,
        **QUIET,
    )
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()


# ----------------------------------------------------------------------------------------------------
# Selectors
# ----------------------------------------------------------------------------------------------------

HEAD = 4 * D_MODEL * D_HEAD  # q, k, v rows and the output-projection inputs of one head


def expected_counts(arch):
    """Scalars per selector, from the architecture's config (biases where the architecture has them)."""
    kv = 2 if arch in ("llama", "tl_gqa") else N_HEADS
    bias = {"gpt2": True, "neox": True, "llama": False, "tl": True, "tl_gqa": True}[arch]
    head = HEAD + (3 * D_HEAD if bias else 0)
    attn = D_MODEL * D_HEAD * (2 * N_HEADS + 2 * kv) + (D_HEAD * (N_HEADS + 2 * kv) + D_MODEL if bias else 0)
    if arch == "gpt2":
        mlp = 2 * D_MODEL * 4 * D_MODEL + 4 * D_MODEL + D_MODEL  # c_fc, c_proj (n_inner = 4 d_model)
    elif arch in ("llama", "tl_gqa"):
        mlp = 3 * D_MODEL * D_MLP + (D_MLP + D_MODEL if arch == "tl_gqa" else 0)  # gated
    else:
        mlp = 2 * D_MODEL * D_MLP + D_MLP + D_MODEL
    return {"head": head, "attn": attn, "mlp": mlp}


@pytest.mark.parametrize("arch", [*ALL_ARCHS, "tl_gqa"])
def test_selectors_count_what_the_config_says(models, arch):
    model = models(arch)
    want = expected_counts(arch)
    dims = {
        s: describe_selection(model, s).attrs["dim"] for s in ("l0h1", "l1 attn", "l0 mlp", "l0", "embed")
    }
    assert dims["l0h1"] == want["head"]
    assert dims["l1 attn"] == want["attn"]
    assert dims["l0 mlp"] == want["mlp"]
    norms = 4 * D_MODEL if arch in ("gpt2", "neox", "tl") else 2 * D_MODEL
    assert dims["l0"] == want["attn"] + want["mlp"] + norms
    # the heads cover the attention except its output bias (shared by all heads)
    union = select(model, [f"l1h{h}" for h in range(N_HEADS)])
    out_bias = 0 if arch == "llama" else D_MODEL  # Llama's projections have no biases
    assert describe_selection(model, union).attrs["dim"] == want["attn"] - out_bias
    # a list is the union; overlapping selectors count once
    both = describe_selection(model, ["l0h1", "l0 attn"]).attrs["dim"]
    assert both == want["attn"]


def output_projection_input(model, arch, batch):
    """Per-head inputs of the output projection of block 0: [batch, tokens, heads, d_head]."""
    seen = {}
    if arch.startswith("tl"):
        with torch.no_grad():
            _, cache = model.run_with_cache(batch["input_ids"], names_filter="blocks.0.attn.hook_z")
        return cache["blocks.0.attn.hook_z"]
    module = {
        "gpt2": lambda: model.transformer.h[0].attn.c_proj,
        "neox": lambda: model.gpt_neox.layers[0].attention.dense,
        "llama": lambda: model.model.layers[0].self_attn.o_proj,
    }[arch]()
    handle = module.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        model(input_ids=batch["input_ids"])
    handle.remove()
    x = seen["x"]
    return x.reshape(*x.shape[:2], N_HEADS, D_HEAD)


@pytest.mark.parametrize("arch", [*ALL_ARCHS, "tl_gqa"])
def test_a_head_selector_changes_only_that_heads_output(arch):
    """Perturbing the selected q/k/v elements of head h (fused QKV layouts included) changes head h's output and
    no other head's; under grouped-query attention the shared KV head moves the heads of its group."""
    model = build(arch)
    batch = padded_batches()[0]
    before = output_projection_input(model, arch, batch)
    h = 2
    selection = select(model, f"l0h{h}")
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in selection.items():
            if any(s in name for s in ("c_proj", "dense.", "o_proj", "W_O")):
                continue
            mask = torch.ones_like(named[name], dtype=torch.bool) if mask is True else mask
            named[name].add_(torch.randn(named[name].shape) * mask)
    after = output_projection_input(model, arch, batch)
    changed = {i for i in range(N_HEADS) if not torch.allclose(before[:, :, i], after[:, :, i])}
    group = {2, 3} if arch in ("llama", "tl_gqa") else {h}
    assert changed == group


@pytest.mark.parametrize("arch", ["gpt2", "llama", "tl", pytest.param("neox", marks=SLOW)])
def test_selected_runs_move_only_the_selected_scalars(models, arch):
    model = models(arch)
    batches = padded_batches()
    full = prepare(model, batches, CFG, loss_fn=next_token_loss, compile=False)
    problem = prepare(
        model, batches, CFG, loss_fn=next_token_loss, params=select(model, "l0h1"), compile=False
    )
    fm = problem.slots[0]
    assert problem.dim == describe_selection(model, "l0h1").attrs["dim"]
    theta = fm.w_star + 0.5
    moved = fm.layout.unflatten(theta, fm.frozen)
    named = dict(model.named_parameters())
    selection = select(model, "l0h1")
    for name in fm.layout.names:
        mask = selection[name]
        mask = torch.ones_like(named[name], dtype=torch.bool) if mask is True else mask
        assert torch.equal(moved[name][~mask], named[name].detach()[~mask])  # bitwise at w*
        assert not torch.equal(moved[name][mask], named[name].detach()[mask])
    assert set(fm.frozen) >= set(named) - set(fm.layout.names)
    result = sample(problem, CFG, seed=0, **QUIET)
    assert torch.isfinite(result.llcs).all()
    assert result.settings["dim"] == problem.dim
    assert result.settings["dim"] < full.dim / 10


def test_describe_selection_shows_the_fused_slices(models):
    df = describe_selection(models("gpt2"), "l0h1")
    row = df.set_index("parameter").loc["transformer.h.0.attn.c_attn.weight"]
    assert row["slices"] == "[:, 8:16 40:48 72:80]" and row["selected"] == 3 * D_MODEL * D_HEAD
    neox = describe_selection(models("neox"), "l0h1").set_index("parameter")
    assert neox.loc["gpt_neox.layers.0.attention.query_key_value.weight", "slices"] == "[24:48, :]"


def test_unknown_selectors_say_what_to_write(models):
    with pytest.raises(ValueError, match="l<layer>h<head>"):
        select(models("gpt2"), "layer0")
    with pytest.raises(ValueError, match="l0 to l1"):
        select(models("gpt2"), "l7")
    with pytest.raises(ValueError, match="h0 to h3"):
        select(models("gpt2"), "l0h9")


# ----------------------------------------------------------------------------------------------------
# nβ, other heads
# ----------------------------------------------------------------------------------------------------


def test_nbeta_counts_tokens_or_sequences():
    batches = padded_batches()
    tokens = sum(int((b["attention_mask"][:, 1:] * b["attention_mask"][:, :-1]).sum()) for b in batches)
    nb = nbeta_for_tokens(batches)
    assert (nb.n, nb.unit) == (tokens, "tokens")
    assert float(nb) == pytest.approx(tokens / math.log(tokens))
    seq = nbeta_for_tokens(batches, unit="sequences")
    assert seq.n == 12 and float(seq) == pytest.approx(lambdahat.nbeta_from_effective_size(12))
    assert LLCConfig(nbeta=nb).nbeta == float(nb)  # usable as nbeta= directly
    with pytest.raises(ValueError, match="tokens' or 'sequences"):
        nbeta_for_tokens(batches, unit="words")


def test_masked_lm_and_sequence_classification_match_the_models_loss():
    import transformers as tf

    torch.manual_seed(0)
    cfg = dict(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        attn_implementation="eager",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlm = tf.BertForMaskedLM(tf.BertConfig(**cfg)).eval()
        clf = tf.BertForSequenceClassification(tf.BertConfig(num_labels=3, **cfg)).eval()
    batch = padded_batches()[0]
    g = torch.Generator().manual_seed(0)
    picked = (torch.rand(batch["input_ids"].shape, generator=g) < 0.3) & batch["attention_mask"].bool()
    mlm_batch = {**batch, "labels": torch.where(picked, batch["input_ids"], -100)}
    clf_batch = {**batch, "labels": torch.tensor([0, 2, 1, 2])}
    for model, b, fn in ((mlm, mlm_batch, masked_lm_loss), (clf, clf_batch, sequence_classification_loss)):
        l0 = prepare(model, [b], CFG, loss_fn=fn, compile=False).init_loss
        with torch.no_grad():
            assert l0 == pytest.approx(float(model(**b).loss), rel=1e-6)
    result = sample(
        prepare(clf, [clf_batch], CFG, loss_fn=sequence_classification_loss, compile=False),
        CFG,
        seed=0,
        **QUIET,
    )
    assert torch.isfinite(result.llcs).all()


def test_batches_of_the_wrong_form_say_what_to_pass(models):
    with pytest.raises(ValueError, match="'input_ids'"):
        prepare(
            models("gpt2"), [(torch.ones(2, 3), torch.ones(2))], CFG, loss_fn=next_token_loss, compile=False
        )


def test_a_model_with_default_attention_is_sampled_with_eager_attention_on_its_copy():
    """Hugging Face picks sdpa by default; the private copy switches to eager (vmappable), the caller's model keeps
    its own, and L0 is the model's own loss."""
    import transformers as tf

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tf.GPT2LMHeadModel(
            tf.GPT2Config(
                n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=50, attn_implementation="sdpa"
            )
        ).eval()
    assert model.config._attn_implementation == "sdpa"
    batch = padded_batches()[0]
    problem = prepare(model, [batch], CFG, loss_fn=next_token_loss, compile=False)
    assert problem.slots[0].module.config._attn_implementation == "eager"
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        ids, mask = batch["input_ids"], batch["attention_mask"]
        labels = torch.where(mask.bool(), ids, -100)
        assert problem.init_loss == pytest.approx(
            float(model(input_ids=ids, attention_mask=mask, labels=labels).loss), rel=1e-5
        )
    result = sample(problem, CFG, seed=0, **QUIET)
    assert torch.isfinite(result.llcs).all()
