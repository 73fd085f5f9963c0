"""lambdahat against a minimal vmapped SGLD loop on the closed-form validation models (issue 11's target:
wall time ≤ 1.2× the minimal loop, same chains, steps and batches, one thread).

The *minimal loop* is written here in a few dozen lines (:func:`minimal_run`): the chains' parameters stacked
flat as ``[C, d]``, ``vmap(grad_and_value(loss))``, ``torch.randn`` noise and the localized update

    w ← w − ε/2 (nβ ∇L + γ (w − w*)) + sqrt(ε) ξ,

recording every step's loss, plus the one full-data pass for ``L0`` and ``λ̂ = nβ (mean loss − L0)`` that any
estimate needs. Its batches are the same as lambdahat's in number and size: the data set's tensors indexed with a
fresh permutation every pass (lambdahat forms TensorDataset batches the same way, by indexing). It runs eager and
with its step ``torch.compile``d.

lambdahat runs the same chains, steps, batch size, ε, γ and nβ through ``LLCEstimator.estimate_llc`` with
``compile=False``, ``compile=True`` (steady state: the compiled step is reused from a warm-up call on the same
model object) and the default ``compile="auto"`` on a fresh copy of the model for every call (what one call of a
user costs, the pilot that predicts the eager time included). lambdahat's time is the whole call (L0 pass,
chains, diagnostics, result).

Cases: those of :func:`lambdahat.truth.default_cases` with d ≤ 210 (all of them), at their validation settings
(:data:`lambdahat.validation.SETTINGS`: steps = burn-in + draws, 8 chains, batch 500). Every time is the median
of ``--repeats`` interleaved repeats (the order of the modes rotates between repeats); ratios divide medians of
the same run. One intra-op thread.

Usage::

    python benchmarks/minimal_loop.py                       # all cases, median of 3
    python benchmarks/minimal_loop.py --cases regular_d10,rrr_M4_H3_N4_r1 --repeats 5
    python benchmarks/minimal_loop.py --quick --repeats 1   # one case, 100 steps, eager modes only (a smoke run)
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import statistics
import sys
import time
import warnings

import torch
from bench_common import loadavg
from torch.func import functional_call, grad_and_value, vmap

from lambdahat import LLCEstimator
from lambdahat.truth import default_cases
from lambdahat.validation import SETTINGS

MODES = ("lambdahat eager", "lambdahat compiled", "lambdahat auto", "minimal eager", "minimal compiled")
QUICK_MODES = ("lambdahat eager", "lambdahat auto", "minimal eager")


def minimal_run(case, chains, steps, burnin, batch, lr, gamma, nbeta, seed, compiled_step=None):
    """One minimal SGLD run; returns (λ̂ averaged over chains and the draws after ``burnin``, the step function
    so that a compiled one can be reused)."""
    model = case.model
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    buffers = dict(model.named_buffers())
    w_star = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    x_all, y_all = case.dataset.tensors
    n = x_all.shape[0]

    def loss(w, x, y):  # w: [d] flat parameters of one chain
        params = {k: t.view(s) for k, t, s in zip(names, w.split(sizes), shapes, strict=True)}
        return case.criterion_fn(functional_call(model, (params, buffers), (x,)), y)

    def step(w, x, y):
        grads, losses = vmap(grad_and_value(loss), in_dims=(0, None, None))(w, x, y)
        drift = nbeta * grads + gamma * (w - w_star)
        return w - 0.5 * lr * drift + math.sqrt(lr) * torch.randn_like(w), losses

    step_fn = compiled_step or step
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    with torch.no_grad():  # L0: one full-data pass at w*, weighted by batch size
        l0 = sum(loss(w_star, x_all[i : i + batch], y_all[i : i + batch]) * len(x_all[i : i + batch])
                 for i in range(0, n, batch)) / n  # fmt: skip
    w = w_star.expand(chains, -1).clone()
    trace = torch.empty(steps, chains)
    perm, pos = torch.randperm(n, generator=g), 0
    for s in range(steps):
        if pos + batch > n:  # a new pass (the last partial batch is dropped, as with drop_last)
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos : pos + batch]
        pos += batch
        w, trace[s] = step_fn(w, x_all[idx], y_all[idx])
    return float(nbeta * (trace[burnin:].mean() - l0)), step


def lambdahat_run(case, model, chains, steps, burnin, batch, settings, nbeta, seed, compile_):
    est = LLCEstimator(
        draws=steps - burnin,
        chains=chains,
        burnin_steps=burnin,
        learning_rate=settings.learning_rate,
        localization=settings.localization,
        nbeta=nbeta,
    )
    est.estimate_llc(
        model,
        case.loader(batch, shuffle=True, seed=seed),
        criterion_fn=case.criterion_fn,
        seed=seed,
        compile=compile_,
        show_progress=False,
    )
    m = est.get_metrics()
    return m["llc_mean"], m["compiled"], m["chunk_steps"]


def make_runners(case, modes, chains, steps, burnin, batch, settings, nbeta):
    """One callable per mode, each making one full run and returning (λ̂, compiled?, steps per compiled call)."""
    hp = (settings.learning_rate, settings.localization, nbeta)
    compiled_model = copy.deepcopy(case.model)  # the model object whose compiled step lambdahat reuses
    runners = {
        "lambdahat eager": lambda: lambdahat_run(
            case, case.model, chains, steps, burnin, batch, settings, nbeta, 0, False
        ),
        "lambdahat compiled": lambda: lambdahat_run(
            case, compiled_model, chains, steps, burnin, batch, settings, nbeta, 0, True
        ),
        "lambdahat auto": lambda: lambdahat_run(
            case, copy.deepcopy(case.model), chains, steps, burnin, batch, settings, nbeta, 0, "auto"
        ),
        "minimal eager": lambda: (minimal_run(case, chains, steps, burnin, batch, *hp, 0)[0], False, 1),
    }
    if "minimal compiled" in modes:
        step = minimal_run(case, chains, 1, 0, batch, *hp, 0)[1]
        cstep = torch.compile(step)
        runners["minimal compiled"] = lambda: (
            minimal_run(case, chains, steps, burnin, batch, *hp, 0, cstep)[0],
            True,
            1,
        )
    return runners


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--cases", default=None, help="comma-separated case names (default: every case, d ≤ 210)"
    )
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: the case's own)")
    parser.add_argument("--modes", default=None, help=f"comma-separated subset of: {', '.join(MODES)}")
    parser.add_argument("--quick", action="store_true", help="regular_d10 only, 100 steps, eager modes only")
    parser.add_argument("--max-d", type=int, default=210)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # the trust policy's advice on short chains is not the point here
    modes = (
        [m.strip() for m in args.modes.split(",")]
        if args.modes
        else list(QUICK_MODES if args.quick else MODES)
    )
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}; choose from {MODES}")
    cases = [c for c in default_cases() if c.d <= args.max_d]
    wanted = args.cases.split(",") if args.cases else (["regular_d10"] if args.quick else None)
    if wanted:
        cases = [c for c in cases if c.name in wanted]
    steps_override = args.steps or (100 if args.quick else None)
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"torch {torch.__version__}, {platform.machine()}, 1 thread; load average before: {loadavg()}",
        flush=True,
    )

    rows = []
    for case in cases:
        settings = SETTINGS[case.name]
        chains, batch = settings.chains, settings.batch_size
        steps = steps_override or settings.burnin_steps + settings.draws
        burnin = min(settings.burnin_steps, steps // 3)
        nbeta = case.n / math.log(case.n)
        runners = make_runners(case, modes, chains, steps, burnin, batch, settings, nbeta)
        first = {}
        for mode in modes:  # warm-up: compiles (timed, for the record) and first-use costs
            start = time.perf_counter()
            runners[mode]()
            first[mode] = time.perf_counter() - start
        times: dict[str, list[float]] = {m: [] for m in modes}
        info = {}
        for r in range(args.repeats):
            order = modes[r % len(modes) :] + modes[: r % len(modes)]
            for mode in order:
                start = time.perf_counter()
                info[mode] = runners[mode]()
                times[mode].append(time.perf_counter() - start)
        med = {m: statistics.median(t) for m, t in times.items()}
        rows.append((case, steps, med, first, info))
        print(
            f"  {case.name}: " + ", ".join(f"{m} {med[m]:.3f} s" for m in modes), file=sys.stderr, flush=True
        )

    print(f"load average after: {loadavg()}\n")
    minimal = [m for m in modes if m.startswith("minimal")]
    like = [(m, "minimal" + m[len("lambdahat") :]) for m in modes if m.startswith("lambdahat")]
    like = [(a, b) for a, b in like if b in minimal]
    print(
        f"Seconds per run (median of {args.repeats}); ratios divide medians of the same run: each lambdahat mode by "
        'the faster minimal loop ("best"), and like by like; first = the warm-up call (compile included); λ̂ of '
        "the last repeat.\n"
    )
    head = ["case", "d", "steps"] + [f"{m} s" for m in modes]
    head += [f"{m} / best minimal" for m in modes if m.startswith("lambdahat")] if minimal else []
    head += [f"{a} / {b}" for a, b in like]
    head += ["auto compiled?", "chunk (compiled)", "first compiled call s"] + [f"λ̂ {m}" for m in modes]
    print("| " + " | ".join(head) + " |")
    print("|---" * len(head) + "|")
    for case, steps, med, first, info in rows:
        cells = [case.name, str(case.d), str(steps)] + [f"{med[m]:.3f}" for m in modes]
        if minimal:
            best = min(med[m] for m in minimal)
            cells += [f"{med[m] / best:.2f}" for m in modes if m.startswith("lambdahat")]
        cells += [f"{med[a] / med[b]:.2f}" for a, b in like]
        cells.append(str(info["lambdahat auto"][1]) if "lambdahat auto" in info else "-")
        cells.append(str(info["lambdahat compiled"][2]) if "lambdahat compiled" in info else "-")
        cells.append(f"{first['lambdahat compiled']:.1f}" if "lambdahat compiled" in first else "-")
        cells += [f"{info[m][0]:.3f}" for m in modes]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
