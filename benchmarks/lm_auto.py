"""The README's language-model call with ``learning_rate="auto"`` on a small GPT-2: which step it chooses, what the
accuracy checks measure and whether the verdict is ``ok``, at a fixed and at an automatic burn-in.

The model: Hugging Face GPT-2 built from a config in code (2 layers, d_model 64, 4 heads, its default attention),
trained with AdamW on random tokens repeated with a period of 4-12 (:mod:`lambdahat.lm.toy`); the sampling data:
512 fixed sequences of 24 tokens in batches of 32, nβ = n / log n with n in counted tokens. Each row is one
``LLCEstimator(draws, chains, burnin_steps, learning_rate, localization, checks="all").run(...)`` with
``loss_fn=lambdahat.lm.next_token_loss`` (``learning_rate="auto"`` unless ``--learning-rate`` gives a step).

Run: ``python benchmarks/lm_auto.py [--localization 20,100] [--burnin 200,auto] [--draws 200] [--nbeta 30]
[--chains 4] [--train-steps 600] [--learning-rate auto] [--threads 1]`` (``--nbeta`` default: n / log n in tokens;
the field's practice is 10-30; ``--train-steps 5 --draws 4 --burnin 4`` is the smoke run of
tests/test_benchmark_scripts.py).
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from bench_common import loadavg

import lambdahat
from lambdahat import LLCEstimator
from lambdahat.lm import toy


def trained_gpt2(steps: int = 600, seed: int = 0):
    import transformers

    torch.manual_seed(seed)
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
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        tokens, _ = toy.repeated_sequences(16, data, generator)
        loss = model(input_ids=tokens, labels=tokens).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    tokens, _ = toy.repeated_sequences(512, data, generator)
    loader = [{"input_ids": tokens[i : i + 32]} for i in range(0, 512, 32)]
    with torch.no_grad():
        final = float(model(input_ids=tokens, labels=tokens).loss)
    return model, loader, final


def _percent(check) -> str:
    if check is None or check["bias"] is None:
        return "—"
    return f"{100 * check['bias']:+.1f} % ± {100 * check['bias_stderr']:.1f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--localization", default="20,100")
    parser.add_argument("--burnin", default="200,auto")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--nbeta", type=float, default=None, help="nβ (default: n / log n in tokens)")
    parser.add_argument(
        "--learning-rate", default="auto", help='"auto" (default) or a step, e.g. one auto chose'
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--train-steps", type=int, default=600, help="AdamW steps (a handful for a smoke run)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    model, loader, loss = trained_gpt2(args.train_steps)
    nbeta = lambdahat.lm.nbeta_for_tokens(loader) if args.nbeta is None else args.nbeta
    print(
        f"GPT-2 {sum(p.numel() for p in model.parameters()):,} parameters, loss {loss:.2f}, nβ {float(nbeta):.0f}"
    )
    print("| γ | burn-in | ε chosen | step bias | localization | start gap | λ̂ ± se | status | time | load |")
    print("|---:|---|---:|---:|---:|---:|---:|---|---:|---|")
    for gamma in (float(g) for g in args.localization.split(",")):
        for burnin in args.burnin.split(","):
            before = loadavg()
            started = time.perf_counter()
            estimator = LLCEstimator(
                draws=args.draws,
                chains=args.chains,
                burnin_steps=burnin if burnin == "auto" else int(burnin),
                learning_rate=args.learning_rate
                if args.learning_rate == "auto"
                else float(args.learning_rate),
                localization=gamma,
                checks="all",
                nbeta=float(nbeta),
            )
            result = estimator.run(
                model, loader, loss_fn=lambdahat.lm.next_token_loss, seed=0, show_progress=False
            )
            seconds = time.perf_counter() - started
            checks = result.settings["accuracy"]

            search = result.settings.get("burnin_search")
            chosen = f"{result.settings['burnin_steps']}" + (f" (tried {search['tried']})" if search else "")
            step, localization, start = (
                _percent(checks.get(name)) for name in ("step", "localization", "start")
            )
            print(
                f"| {gamma:g} | {chosen} | {result.learning_rate:.2g} | {step} | {localization} | {start} |"
                f" {result.llc_mean:.0f} ± {result.llc_stderr:.0f} | {result.status_line} | "
                f"{seconds:.0f} s | {before} → {loadavg()} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
