"""Checkpoints per minute: ``llc_over_checkpoints`` (local executor) against a plain Python loop that builds a
fresh model for every checkpoint and calls ``estimate_llc`` on it.

Three runners on the same checkpoints, estimator and seed:

- the plain loop (a fresh ``MLP()`` per checkpoint, ``load_state_dict``, ``estimate_llc``);
- ``llc_over_checkpoints`` without ``out_dir`` (one model object, weights loaded into it per checkpoint);
- ``llc_over_checkpoints`` with ``out_dir`` (also ``sweep.json`` and one fsync'd ``results.csv`` row per
  checkpoint: the price of surviving a crash).

Repeats are interleaved (plain, sweep, sweep+out_dir, plain, ...) so that a machine shared with other work
slows all runners alike; the table gives the median. In ``compiled`` mode one warm-up compile is made first, so
the rows compare steady-state throughput (the first compile, 10-40 s on a small CPU, is paid once per process by
either runner: torch.compile reuses the traced step for every model object of the same architecture).

Run::

    python benchmarks/sweep_throughput.py                 # 8 checkpoints, median of 3, eager and compiled
    python benchmarks/sweep_throughput.py --threads 1     # steadier on a shared machine
    python benchmarks/sweep_throughput.py --modes eager --repeats 5 --device cuda
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F
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


def make_checkpoints(n: int) -> list[dict[str, torch.Tensor]]:
    """``n`` snapshots along a short SGD run."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1024, 32, generator=g), torch.randint(0, 10, (1024,), generator=g)
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = []
    for _ in range(n):
        for _ in range(20):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        out.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", default="eager,compiled", help="comma-separated: eager, compiled")
    p.add_argument("--draws", type=int, default=100)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--burnin-steps", type=int, default=50)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # the estimator's advice on these short chains is not the point here

    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(1024, 32, generator=g), torch.randint(0, 10, (1024,), generator=g))
    loader = DataLoader(data, batch_size=256)
    checkpoints = make_checkpoints(args.checkpoints)
    est = LLCEstimator(
        draws=args.draws,
        chains=args.chains,
        burnin_steps=args.burnin_steps,
        learning_rate=1e-4,
        localization=100.0,
    )
    common = dict(devices=args.device, seed=0, show_progress=False)

    def plain_loop(compile_: bool) -> list[float]:
        out = []
        for sd in checkpoints:
            model = MLP()
            model.load_state_dict(sd)
            est.estimate_llc(model, loader, compile=compile_, **common)
            out.append(est.result.llc_mean)
        return out

    def sweep(compile_: bool, out_dir: str | None = None) -> list[float]:
        df = llc_over_checkpoints(checkpoints, MLP, loader, est, compile=compile_, out_dir=out_dir, **common)
        return df.llc_mean.tolist()

    def sweep_stored(compile_: bool) -> list[float]:
        with tempfile.TemporaryDirectory() as tmp:
            return sweep(compile_, tmp)

    runners = [
        ("plain loop, fresh model per checkpoint", plain_loop),
        ("llc_over_checkpoints", sweep),
        ("llc_over_checkpoints, out_dir (fsync per row)", sweep_stored),
    ]
    rows = []
    for mode in [m.strip() for m in args.modes.split(",")]:
        compile_ = {"eager": False, "compiled": True}[mode]
        est.estimate_llc(MLP(), loader, compile=compile_, **common)  # warm-up (and the one compile)
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

    print(f"command: python {shlex.join(sys.argv)}")
    print(
        f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} thread(s), device {args.device}; "
        f"{args.checkpoints} checkpoints of a 32-64-64-10 MLP on 1024 samples (batch 256), {args.chains} chains x "
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
