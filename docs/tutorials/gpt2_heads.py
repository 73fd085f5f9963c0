"""λ̂ of a small GPT-2 per layer and per head, and per-token λ̂ on the repeated and the random tokens.

A 2-layer, 4-head GPT-2 (d_model 64, built from a config in code: nothing is downloaded) is trained briefly on
sequences of random tokens repeated with a period of 4 to 12 (:mod:`lambdahat.lm.toy`), where the repeats can only
be predicted by looking back (induction). λ̂ is then estimated for the whole model, each layer and each head
(``params=lambdahat.lm.select(model, "l0h1")``), and on subsets of the tokens of an evaluation set. Needs the
``[lm]`` extra (transformers). Run with ``python docs/tutorials/gpt2_heads.py`` (under a minute on a laptop CPU);
it prints the tables and writes ``gpt2_heads.csv``.
"""

import warnings

import pandas as pd
import torch
import transformers

import lambdahat
from lambdahat import LLCConfig, prepare, sample
from lambdahat.lm import toy

torch.manual_seed(0)
warnings.filterwarnings("ignore", module="transformers")

# 1. The model and its data: 48 tokens, contexts of 24, periods 4-12.
data = toy.ToyParams(vocab=48, n_ctx=24, min_period=4, max_period=12)
config = transformers.GPT2Config(
    n_layer=2,
    n_embd=64,
    n_head=4,
    n_positions=data.n_ctx,
    vocab_size=data.vocab,
    bos_token_id=0,
    eos_token_id=0,
)
model = transformers.GPT2LMHeadModel(config)
print(f"GPT-2: {sum(p.numel() for p in model.parameters()):,} parameters")

generator = torch.Generator().manual_seed(0)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
for _ in range(300):  # fresh sequences at every step
    tokens, _ = toy.repeated_sequences(16, data, generator)
    loss = model(input_ids=tokens, labels=tokens).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
model.eval()

# The sampling data: 64 fixed sequences in dict batches of 16 (what a tokenizer gives); an evaluation set of 32.
tokens, periods = toy.repeated_sequences(64, data, generator)
loader = [{"input_ids": tokens[i : i + 16]} for i in range(0, 64, 16)]
eval_tokens, eval_periods = toy.repeated_sequences(32, data, generator)
evaluation = [{"input_ids": eval_tokens}]
masks = toy.target_masks(eval_periods, data.n_ctx)  # [32, 23]: "random" (first period) and "repeated" targets
with torch.no_grad():
    losses = toy.split_losses(model(input_ids=eval_tokens).logits, eval_tokens, eval_periods)
print(
    f"trained: loss on repeated tokens {losses['loss_repeated']:.2f}, on random ones {losses['loss_random']:.2f}"
)

# 2. nβ = n / log n with n in tokens (the data set's counted next-token targets), and one setting for all runs.
nbeta = lambdahat.lm.nbeta_for_tokens(loader)
print(f"nβ = {nbeta:.1f} (n = {nbeta.n} {nbeta.unit})")
settings = LLCConfig(draws=40, chains=4, burnin_steps=40, learning_rate=1e-4, localization=200.0, nbeta=nbeta)

# 3. λ̂ of the whole model, of each layer and of each head. A head is its q, k, v columns (and biases) and the rows
#    of the output projection that read it: lambdahat.lm.describe_selection says exactly which slices.
print(lambdahat.lm.describe_selection(model, "l0h1").to_string(index=False))
rows = []
for component in ["all", "l0", "l1"] + [f"l{layer}h{head}" for layer in range(2) for head in range(4)]:
    params = None if component == "all" else lambdahat.lm.select(model, component)
    problem = prepare(
        model,
        loader,
        settings,
        loss_fn=lambdahat.lm.next_token_loss,
        params=params,
        evaluation=evaluation if component == "all" else None,
        compile=False,  # short runs: compiling would cost more than it saves
    )
    result = sample(problem, settings, seed=0, show_progress=False, warn=False)
    rows.append(
        {
            "component": component,
            "dim": result.settings["dim"],
            "llc_mean": result.llc_mean,
            "llc_stderr": result.llc_stderr,
            "acceptance": result.mala_acceptance,
            "status": result.status,
        }
    )
    if component == "all":
        whole = result
print(f"whole model: {whole.status_line}")  # why: the reasons of the trust policy
table = pd.DataFrame(rows)
print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
table.to_csv("gpt2_heads.csv", index=False)

# 4. Per-token λ̂ on the evaluation set (its losses were recorded at every draw of the whole-model run):
#    the same nβ, the mean over a subset S of the tokens.
for name, mask in masks.items():
    subset = lambdahat.lm.token_llc(whole, mask=mask)
    print(f"λ̂ on the {name} tokens: {subset.llc_mean:.1f} ± {subset.llc_stderr:.1f}")
print("wrote gpt2_heads.csv")
