"""Peak memory of one ``estimate_llc`` run against the floor's (issue 11, item 4: estimator ≤ 1.10 × floor).

Workload: one of ``benchmarks/estimator_speed.py``'s (default the transformer: 8 chains, 150 steps). The *floor*
is the same bare loop as there: ``vmap(grad_and_value(loss))`` over the chains' stacked parameters on the same
batches, eager or ``torch.compile``d. Every measurement runs in a fresh subprocess (nothing left over from another
one), in which, after the imports and after building the model and the data:

0. a tiny ``estimate_llc`` call pays the process's first-use costs (lazy imports), for every kind;
1. ``first``: one run (for the compiled kinds, compile included); peak increase over the memory in use before it;
2. ``steady``: the peak is reset and a second run is made; peak increase over the memory in use before it.

On CUDA the memory is ``torch.cuda.memory_allocated`` and the peak ``torch.cuda.max_memory_allocated`` (reset with
``reset_peak_memory_stats``). On the CPU it is the resident set: ``VmRSS`` and its high-water mark ``VmHWM`` from
``/proc/self/status`` (the same value as ``getrusage(RUSAGE_SELF).ru_maxrss``), the mark reset before the second run
by writing ``5`` to ``/proc/self/clear_refs``. The children run with ``MALLOC_MMAP_THRESHOLD_=65536``: glibc then
serves every block of 64 KiB or more (every tensor that matters) from its own mapping and unmaps it when freed, so
the resident set follows the live tensors instead of the allocator's high-water mark. Times are not measured
here (see estimator_speed.py).

Each kind is measured ``--repeats`` times (interleaved, one subprocess each) and the median is reported; the
ratios divide the estimator's peak increase by the floor's of the same mode (eager / compiled).

Usage::

    python benchmarks/memory.py                                   # transformer, CPU, 3 repeats
    python benchmarks/memory.py --device cuda --workloads transformer,mlp
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import warnings

from bench_common import floor_step, loadavg, workload_parser

KINDS = ("floor_eager", "est_eager", "floor_compiled", "est_compiled")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(kind: str, workload_name: str, device: str, threads: int | None) -> dict:
    """Measure one kind in this (fresh) process; returns MiB figures."""
    import torch
    from estimator_speed import BURNIN, CHAINS, DRAWS, STEPS, workload
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from lambdahat import LLCEstimator

    if threads:
        torch.set_num_threads(threads)
    warnings.simplefilter("ignore")
    # first-use costs of the process (lazy imports, allocator and thread-pool set-up) are paid on a
    # tiny model before anything is measured, in every kind alike
    tiny = TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    LLCEstimator(draws=20, chains=2, burnin_steps=5).estimate_llc(
        nn.Linear(4, 2),
        DataLoader(tiny, batch_size=32),
        devices=[device],
        seed=0,
        compile=False,
        show_progress=False,
    )
    cuda = torch.device(device).type == "cuda"
    model, data, batch, criterion, hp = workload(workload_name)
    loader = DataLoader(data, batch_size=batch, shuffle=True)
    batches = [tuple(t.to(device) for t in b) for b in DataLoader(data, batch_size=batch, shuffle=True)]
    compiled = kind.endswith("compiled")

    if kind.startswith("floor"):
        f, params, buffers = floor_step(model, criterion, CHAINS, device)
        fn = torch.compile(f) if compiled else f

        def run():
            for s in range(STEPS):
                _grads, losses = fn(params, buffers, *batches[s % len(batches)])
            losses.sum().item()

    else:
        est = LLCEstimator(draws=DRAWS, chains=CHAINS, burnin_steps=BURNIN, **hp)

        def run():
            est.estimate_llc(
                model,
                loader,
                criterion_fn=criterion,
                devices=[device],
                seed=0,
                compile=compiled,
                show_progress=False,
            )

    def now() -> int:
        if cuda:
            torch.cuda.synchronize(device)
            return torch.cuda.memory_allocated(device)
        return _status_kib("VmRSS") * 1024

    def reset() -> None:
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    def peak() -> int:
        if cuda:
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device)
        return _status_kib("VmHWM") * 1024

    out = {}
    for phase in ("first", "steady"):
        reset()
        before = now()
        run()
        out[f"{phase}_mib"] = (peak() - before) / 2**20
        out[f"{phase}_before_mib"] = before / 2**20
    return out


def main() -> None:
    parser = workload_parser(__doc__, workloads="transformer")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {KINDS}")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.workloads, args.device, args.threads)))
        return
    kinds = args.kinds.split(",")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONUNBUFFERED": "1"}
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"device {args.device}; load average before: {loadavg()}", flush=True)
    rows = []
    for name in args.workloads.split(","):
        res: dict[str, list[dict]] = {k: [] for k in kinds}
        for r in range(args.repeats):
            for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
                cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--workloads", name]
                cmd += ["--device", args.device] + (["--threads", str(args.threads)] if args.threads else [])
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode or not lines:
                    raise SystemExit(f"{kind} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
                res[kind].append(json.loads(lines[-1][7:]))
                print(f"  {name} {kind}: {res[kind][-1]}", file=sys.stderr, flush=True)
        med = {k: {f: statistics.median(d[f] for d in v) for f in v[0]} for k, v in res.items()}
        rows.append({"workload": name, "device": args.device, **med})
    print(f"load average after: {loadavg()}\n")
    print(f"Peak memory increase during one run, MiB (median of {args.repeats} fresh processes)\n")
    print("| workload | kind | first run (compile incl.) | steady run | in use before steady run |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        for k in kinds:
            m = row[k]
            print(
                f"| {row['workload']} | {k} | {m['first_mib']:.1f} | {m['steady_mib']:.1f} | "
                f"{m['steady_before_mib']:.1f} |"
            )
    print(
        "\n| workload | mode | estimator / floor, first run | estimator / floor, steady run (target ≤ 1.10) |"
    )
    print("|---|---|---:|---:|")
    for row in rows:
        for mode in ("eager", "compiled"):
            f, e = row.get(f"floor_{mode}"), row.get(f"est_{mode}")
            if f and e:
                print(
                    f"| {row['workload']} | {mode} | {e['first_mib'] / f['first_mib']:.2f} | "
                    f"{e['steady_mib'] / f['steady_mib']:.2f} |"
                )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
