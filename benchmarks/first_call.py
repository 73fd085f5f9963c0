"""The first call in a fresh process: ``estimate_llc`` with the default settings against the eager floor's first
call (issue 11's target: ≤ 1.1×).

Each measurement runs in its own fresh Python process, so that it pays what a user's first call pays: lazy imports
made during the call, first-use initialisation of torch's kernels and of functorch, and for the estimator the
``compile="auto"`` pilot and, where it decides to compile, the compile (with whatever inductor's caches on this
machine hold). The clock starts after the imports of torch and lambdahat and after the model and the data are
built; the imports are reported separately (the floor's process imports torch too).

- *floor*: the bare loop of ``benchmarks/estimator_speed.py`` (``vmap(grad_and_value(loss))`` over the chains'
  stacked parameters, no sampler, no noise), eager, over batches drawn from the same ``DataLoader`` for the same
  number of steps (8 chains, 150 steps);
- *estimator*: ``LLCEstimator(...).estimate_llc(model, loader, ...)`` with the defaults (``compile="auto"``), the
  same chains, steps and hyperparameters as estimator_speed.

The two kinds alternate in order between repeats; medians are reported with their ratio.

Usage::

    python benchmarks/first_call.py [--repeats 3] [--workloads mlp,modadd,dln,transformer] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from bench_common import loadavg, workload_parser

KINDS = ("floor", "estimator")


def child(kind: str, name: str, threads: int | None) -> dict:
    """One first call of ``kind`` on workload ``name`` in this (fresh) process."""
    start = time.perf_counter()
    import warnings

    import torch
    from estimator_speed import BURNIN, CHAINS, DRAWS, STEPS, workload
    from torch.utils.data import DataLoader

    from lambdahat import LLCEstimator

    imports = time.perf_counter() - start
    if threads:
        torch.set_num_threads(threads)
    warnings.simplefilter("ignore")
    model, data, batch, criterion, hp = workload(name)
    loader = DataLoader(data, batch_size=batch, shuffle=True)
    out: dict = {"imports": imports}
    start = time.perf_counter()
    if kind == "floor":
        from bench_common import floor_step

        fn, params, buffers = floor_step(model, criterion, CHAINS)
        batches, steps = iter(loader), 0
        while steps < STEPS:
            for x, y in batches:
                _grads, losses = fn(params, buffers, x, y)
                steps += 1
                if steps == STEPS:
                    break
            batches = iter(loader)
        losses.sum().item()
    else:
        est = LLCEstimator(draws=DRAWS, chains=CHAINS, burnin_steps=BURNIN, **hp)
        est.estimate_llc(model, loader, criterion_fn=criterion, seed=0, show_progress=False)
        out["compiled"] = est.get_metrics()["compiled"]
    out["seconds"] = time.perf_counter() - start
    return out


def main() -> None:
    parser = workload_parser(__doc__)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "WORKLOAD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.threads)))
        return
    print(f"command: python {' '.join(sys.argv)}")
    print(f"load average before: {loadavg()}", flush=True)
    print(
        "| workload | floor first call s | estimator first call s | estimator / floor | estimator compiled? | "
        "imports s (floor, estimator) |"
    )
    print("|---|---:|---:|---:|---|---|", flush=True)
    for name in args.workloads.split(","):
        runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
        for r in range(args.repeats):
            for kind in KINDS if r % 2 == 0 else KINDS[::-1]:
                cmd = [sys.executable, __file__, "--child", kind, name]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(
                        f"first_call.py: the {kind} child failed on {name}:\n{proc.stderr[-3000:]}"
                    )
                runs[kind].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        med = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
        imports = {k: statistics.median(r["imports"] for r in v) for k, v in runs.items()}
        compiled = sorted({str(r["compiled"]) for r in runs["estimator"]})
        print(
            f"| {name} | {med['floor']:.2f} | {med['estimator']:.2f} | {med['estimator'] / med['floor']:.2f} | "
            f"{'/'.join(compiled)} | {imports['floor']:.2f}, {imports['estimator']:.2f} |",
            flush=True,
        )
    print(f"\nload average after: {loadavg()}")


if __name__ == "__main__":
    main()
