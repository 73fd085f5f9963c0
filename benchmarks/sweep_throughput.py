"""Checkpoints per minute: ``llc_over_checkpoints`` (local executor) against a plain Python loop that builds a
fresh model for every checkpoint and calls ``estimate_llc`` on it.

Two models: ``--model mlp`` (default; a 32-64-64-10 classifier on 1024 random samples, batch 256) and ``--model
modadd`` (the modular-addition MLP of estimator_speed.py, p = 53, embed 12, hidden 48, 80 % of the pairs, batch
128), with checkpoints along a short training run.

Three runners on the same checkpoints, estimator and seed:

- the plain loop (a fresh ``MLP()`` per checkpoint, ``load_state_dict``, ``estimate_llc``);
- ``llc_over_checkpoints`` without ``out_dir`` (one model object, weights loaded into it per checkpoint);
- ``llc_over_checkpoints`` with ``out_dir`` (also ``sweep.json`` and one fsync'd ``results.csv`` row per
  checkpoint: the price of surviving a crash).

Repeats are interleaved (plain, sweep, sweep+out_dir, plain, ...) so that a machine shared with other work
slows all runners alike; the table gives the median. In ``compiled`` mode one warm-up compile is made first, so
the rows compare steady-state throughput (the first compile, 10-40 s on a small CPU, is paid once per process by
either runner: torch.compile reuses the traced step for every model object of the same architecture). In
``auto`` mode (the default ``compile="auto"``) the same warm-up compile is made with ``compile=True``, so the rows
show what "auto" decides in a warm process: the plain loop's fresh model objects are one-off calls (no
``planned_runs``), the sweep passes its number of checkpoints as ``planned_runs``.

``--fresh-process`` measures instead what a whole sweep costs *compile included* (issue 11's target for the
default: a sweep of 40 modular-addition checkpoints with ``compile="auto"`` within 1.2x of a compiled one): every
repeat of every mode runs ``llc_over_checkpoints`` once in a fresh Python process, timed from just before the call
to its end (imports included, data and checkpoints excluded), with an empty inductor cache directory of its own
(``--warm-cache`` keeps the user's cache, as a second sweep on the same machine would find it). The table gives
the median and the ratio to the compiled mode, and whether the process compiled anything (dynamo's graph count).

Run::

    python benchmarks/sweep_throughput.py                 # 8 checkpoints, median of 3, eager and compiled
    python benchmarks/sweep_throughput.py --threads 1     # steadier on a shared machine
    python benchmarks/sweep_throughput.py --modes eager --repeats 5 --device cuda
    python benchmarks/sweep_throughput.py --model modadd --checkpoints 40 --fresh-process --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F
from bench_common import loadavg
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lambdahat import LLCEstimator
from lambdahat.sweeps import llc_over_checkpoints


class MLP(nn.Module):
    """32 -> 64 -> 64 -> 10 classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x):
        return self.net(x)


def make_setup(name: str, n: int):
    """(model factory, loader, ``n`` checkpoints along a short training run, estimator hyperparameters)."""
    g = torch.Generator().manual_seed(0)
    if name == "mlp":
        x, y = torch.randn(1024, 32, generator=g), torch.randint(0, 10, (1024,), generator=g)
        factory, train_batch, loader_batch, hp = MLP, None, 256, dict(learning_rate=1e-4, localization=100.0)
        g1 = torch.Generator().manual_seed(1)
        data = TensorDataset(torch.randn(1024, 32, generator=g1), torch.randint(0, 10, (1024,), generator=g1))
    elif name == "modadd":
        from lambdahat.modadd.model import ModAddModel

        p = 53
        pairs = torch.cartesian_prod(torch.arange(p), torch.arange(p))
        labels = (pairs[:, 0] + pairs[:, 1]) % p
        keep = torch.randperm(p * p, generator=g)[: int(0.8 * p * p)]
        x, y = pairs[keep], labels[keep]
        data = TensorDataset(x, y)
        factory = lambda: ModAddModel(p, embed_dim=12, hidden_size=48)  # noqa: E731
        train_batch, loader_batch, hp = 256, 128, dict(learning_rate=1e-4, localization=5.0)
    else:
        raise ValueError(f"unknown model {name!r}")
    torch.manual_seed(0)
    model = factory()
    opt = (
        torch.optim.SGD(model.parameters(), lr=0.1)
        if name == "mlp"
        else torch.optim.AdamW(model.parameters())
    )
    out = []
    for _ in range(n):
        for _ in range(20):
            idx = (
                slice(None) if train_batch is None else torch.randint(0, len(x), (train_batch,), generator=g)
            )
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        out.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return factory, DataLoader(data, batch_size=loader_batch), out, hp


def fresh_process_child(args) -> dict:
    """One ``llc_over_checkpoints`` call in this fresh process: seconds, λ̂s and dynamo's count of graphs."""
    factory, loader, checkpoints, hp = make_setup(args.model, args.checkpoints)
    est = LLCEstimator(draws=args.draws, chains=args.chains, burnin_steps=args.burnin_steps, **hp)
    compile_ = {"eager": False, "compiled": True, "auto": "auto"}[args.child]

    start = time.perf_counter()
    df = llc_over_checkpoints(
        checkpoints, factory, loader, est, compile=compile_, devices=args.device, seed=0, show_progress=False
    )
    seconds = time.perf_counter() - start
    from torch._dynamo.utils import counters

    return {"seconds": seconds, "llcs": df.llc_mean.tolist(), "graphs": counters["stats"]["unique_graphs"]}


def fresh_process(args) -> None:
    modes = [m.strip() for m in args.modes.split(",")]
    times: dict[str, list[float]] = {m: [] for m in modes}
    info: dict[str, dict] = {}
    for r in range(args.repeats):
        for mode in modes[r % len(modes) :] + modes[: r % len(modes)]:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--model", args.model]
            cmd += [
                "--checkpoints",
                str(args.checkpoints),
                "--draws",
                str(args.draws),
                "--chains",
                str(args.chains),
            ]
            cmd += ["--burnin-steps", str(args.burnin_steps), "--device", args.device]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            with tempfile.TemporaryDirectory() as cache:
                env = dict(os.environ)
                if not args.warm_cache:
                    env["TORCHINDUCTOR_CACHE_DIR"] = cache
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                raise SystemExit(f"{mode} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
            info[mode] = json.loads(lines[-1][7:])
            times[mode].append(info[mode]["seconds"])
            print(
                f"  {mode:8s} {info[mode]['seconds']:.2f} s, graphs {info[mode]['graphs']}", file=sys.stderr
            )
    print(f"load average after: {loadavg()}\n")
    print(
        f"{args.checkpoints} checkpoints of the {args.model} model, {args.chains} chains x ({args.burnin_steps} "
        f"burn-in + {args.draws} draws); one llc_over_checkpoints call per fresh process, compile included "
        f"({'warm' if args.warm_cache else 'empty'} inductor cache); median of {args.repeats} interleaved repeats\n"
    )
    print(
        "| mode | seconds (median) | all | checkpoints / min | vs compiled | graphs compiled | same λ̂ as eager |"
    )
    print("|---|---:|---|---:|---:|---:|---|")
    base = statistics.median(times["compiled"]) if "compiled" in times else None
    for mode in modes:
        med = statistics.median(times[mode])
        same = (
            "-" if "eager" not in info else ("yes" if info[mode]["llcs"] == info["eager"]["llcs"] else "no")
        )
        print(
            f"| {mode} | {med:.2f} | {', '.join(f'{t:.1f}' for t in times[mode])} | "
            f"{args.checkpoints / med * 60:.1f} | {(f'{med / base:.2f}x' if base else '-')} | "
            f"{info[mode]['graphs']} | {same} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("mlp", "modadd"), default="mlp")
    p.add_argument("--checkpoints", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", default="eager,compiled,auto", help="comma-separated: eager, compiled, auto")
    p.add_argument("--draws", type=int, default=100)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--burnin-steps", type=int, default=50)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument(
        "--fresh-process", action="store_true", help="one fresh process per sweep, compile included"
    )
    p.add_argument("--warm-cache", action="store_true", help="with --fresh-process: keep inductor's cache")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # the estimator's advice on these short chains is not the point here
    if args.child:
        print("RESULT " + json.dumps(fresh_process_child(args)))
        return
    print(f"command: python {shlex.join(sys.argv)}\nload average before: {loadavg()}", flush=True)
    if args.fresh_process:
        fresh_process(args)
        return

    factory, loader, checkpoints, hp = make_setup(args.model, args.checkpoints)
    est = LLCEstimator(draws=args.draws, chains=args.chains, burnin_steps=args.burnin_steps, **hp)
    common = dict(devices=args.device, seed=0, show_progress=False)

    def plain_loop(compile_: bool | str) -> list[float]:
        out = []
        for sd in checkpoints:
            model = factory()
            model.load_state_dict(sd)
            est.estimate_llc(model, loader, compile=compile_, **common)
            out.append(est.result.llc_mean)
        return out

    def sweep(compile_: bool | str, out_dir: str | None = None) -> list[float]:
        df = llc_over_checkpoints(
            checkpoints, factory, loader, est, compile=compile_, out_dir=out_dir, **common
        )
        return df.llc_mean.tolist()

    def sweep_stored(compile_: bool | str) -> list[float]:
        with tempfile.TemporaryDirectory() as tmp:
            return sweep(compile_, tmp)

    runners = [
        ("plain loop, fresh model per checkpoint", plain_loop),
        ("llc_over_checkpoints", sweep),
        ("llc_over_checkpoints, out_dir (fsync per row)", sweep_stored),
    ]
    rows = []
    for mode in [m.strip() for m in args.modes.split(",")]:
        compile_ = {"eager": False, "compiled": True, "auto": "auto"}[mode]
        # warm-up, and the one compile (made with compile=True in auto mode too: steady state)
        est.estimate_llc(factory(), loader, compile=compile_ is not False, **common)
        times: dict[str, list[float]] = {name: [] for name, _ in runners}
        results = {}
        for _ in range(args.repeats):
            for name, fn in runners:
                start = time.perf_counter()
                results[name] = fn(compile_)
                times[name].append(time.perf_counter() - start)
        same = all(r == results[runners[0][0]] for r in results.values())
        for name, _ in runners:
            med = statistics.median(times[name])
            rows.append((mode, name, med, min(times[name]), args.checkpoints / med * 60.0, same))
            print(
                f"  {mode:8s} {name:48s} " + ", ".join(f"{t:.2f}" for t in times[name]) + " s",
                file=sys.stderr,
            )

    print(f"load average after: {loadavg()}")
    what = (
        "a 32-64-64-10 MLP on 1024 samples (batch 256)" if args.model == "mlp" else "the modular-addition MLP"
    )
    print(
        f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} thread(s), device {args.device}; "
        f"{args.checkpoints} checkpoints of {what}, {args.chains} chains x "
        f"({args.burnin_steps} burn-in + {args.draws} draws); median of {args.repeats} interleaved repeats\n"
    )
    print("| mode | runner | seconds (median) | best | checkpoints / min | vs plain loop | same λ̂ |")
    print("|---|---|---:|---:|---:|---:|---|")
    base: dict[str, float] = {}
    for mode, name, med, best, cpm, same in rows:
        base.setdefault(mode, cpm)
        print(
            f"| {mode} | {name} | {med:.2f} | {best:.2f} | {cpm:.1f} | {cpm / base[mode]:.2f}x | "
            f"{'yes' if same else 'NO'} |"
        )


if __name__ == "__main__":
    main()
