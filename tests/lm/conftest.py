"""Tiny language models built from configs in code (nothing is downloaded) and padded token batches."""

from __future__ import annotations

import warnings

import pytest
import torch

ATTN = "eager"  # the sdpa kernels have no vmap batching rule on CPU (torch 2.13): chain-by-chain fallback
VOCAB, D_MODEL, N_HEADS, D_HEAD, N_LAYERS, D_MLP, N_CTX = 50, 32, 4, 8, 2, 64, 32


def build(arch: str) -> torch.nn.Module:
    """A small causal LM of the named architecture, seeded, in eval mode (eager attention: vmappable rules)."""
    import transformers as tf

    torch.manual_seed(0)
    common = dict(
        vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=0, attn_implementation="eager"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if arch == "gpt2":
            model = tf.GPT2LMHeadModel(
                tf.GPT2Config(n_layer=N_LAYERS, n_head=N_HEADS, n_embd=D_MODEL, n_positions=N_CTX, **common)
            )
        elif arch == "neox":
            model = tf.GPTNeoXForCausalLM(
                tf.GPTNeoXConfig(
                    num_hidden_layers=N_LAYERS,
                    num_attention_heads=N_HEADS,
                    hidden_size=D_MODEL,
                    intermediate_size=D_MLP,
                    max_position_embeddings=N_CTX,
                    **common,
                )
            )
        elif arch == "llama":
            model = tf.LlamaForCausalLM(
                tf.LlamaConfig(
                    num_hidden_layers=N_LAYERS,
                    num_attention_heads=N_HEADS,
                    num_key_value_heads=2,  # grouped-query attention: 2 query heads per KV head
                    hidden_size=D_MODEL,
                    intermediate_size=D_MLP,
                    max_position_embeddings=N_CTX,
                    **common,
                )
            )
        elif arch in ("tl", "tl_gqa"):
            tl = pytest.importorskip("transformer_lens")
            gqa = arch == "tl_gqa"
            cfg = tl.HookedTransformerConfig(
                n_layers=N_LAYERS,
                d_model=D_MODEL,
                n_ctx=N_CTX,
                d_head=D_HEAD,
                n_heads=N_HEADS,
                d_vocab=VOCAB,
                d_mlp=D_MLP,
                act_fn="silu" if gqa else "gelu",
                n_key_value_heads=2 if gqa else None,
                normalization_type="RMS" if gqa else "LN",
                positional_embedding_type="rotary" if gqa else "standard",
                gated_mlp=gqa,
                seed=0,
            )
            model = tl.HookedTransformer(cfg)
        else:
            raise ValueError(arch)
    # Trained-looking weights are not needed; larger-than-init weights make the loss depend on them visibly.
    return model.eval()


HF_ARCHS = ["gpt2", "neox", "llama"]
ALL_ARCHS = [*HF_ARCHS, "tl"]


def padded_batches(side: str = "right", extra: int = 0, labels: bool = False, seed: int = 1, t: int = 10):
    """Three batches of four sequences of random lengths 3..t, padded on ``side`` to ``t + extra`` tokens."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(3):
        lengths = torch.randint(3, t + 1, (4,), generator=g)
        ids = torch.randint(1, VOCAB, (4, t), generator=g)
        width = t + extra
        input_ids = torch.full((4, width), 0)
        mask = torch.zeros(4, width, dtype=torch.long)
        for i, n in enumerate(lengths.tolist()):
            cols = slice(0, n) if side == "right" else slice(width - n, width)
            input_ids[i, cols] = ids[i, :n]
            mask[i, cols] = 1
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if labels:
            batch["labels"] = torch.where(mask.bool(), input_ids, torch.full_like(input_ids, -100))
        out.append(batch)
    return out


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = build(arch)
        return cache[arch]

    return get
