"""A 10,000 × 10,000 loss kernel of a small MLP on CPU: time and peak memory of each stage.

Stage 1 (``sample``) samples the posterior with the 10,000 training samples as evaluation set and streams the
``[chains, draws, 10000]`` per-sample losses to a memory-mapped ``.npy``. Stage 2 (``kernel``) reads that file
block by block and writes the 10,000 × 10,000 correlation matrix (float64, 800 MB) to another memory-mapped
``.npy``. Each stage runs in its own process, so its peak memory is its own; a thread samples the process's
anonymous (heap) and file-backed resident memory every 20 ms.

Usage::

    .venv/bin/python benchmarks/loss_kernel.py [--samples 10000] [--chains 4] [--draws 200] [--block-size 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time


def _rss() -> tuple[int, int]:
    anon = file = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1]) * 1024
            elif line.startswith("RssFile:"):
                file = int(line.split()[1]) * 1024
    return anon, file


class PeakMemory:
    def __enter__(self):
        self.anon = self.file = 0
        self._stop = threading.Event()

        def watch():
            while not self._stop.is_set():
                a, f = _rss()
                self.anon, self.file = max(self.anon, a), max(self.file, f)
                time.sleep(0.02)

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def stage_sample(args) -> dict:
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from lambdahat import LLCConfig, prepare, sample

    torch.manual_seed(0)
    x = torch.randn(args.samples, 20)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    cfg = LLCConfig(
        draws=args.draws, chains=args.chains, burnin_steps=100, learning_rate=1e-4, localization=100.0
    )
    with PeakMemory() as peak:
        start = time.perf_counter()
        problem = prepare(
            model,
            DataLoader(TensorDataset(x, y), batch_size=500, shuffle=True),
            cfg,
            criterion_fn=F.cross_entropy,
            evaluation=DataLoader(TensorDataset(x, y), batch_size=2000),
            compile=False,
        )
        result = sample(problem, cfg, seed=0, per_sample_path=args.trace, show_progress=False, warn=False)
        seconds = time.perf_counter() - start
    return {
        "stage": "sample",
        "seconds": round(seconds, 1),
        "peak_anon_mib": round(peak.anon / 2**20),
        "peak_file_mib": round(peak.file / 2**20),
        "trace_shape": list(result.per_sample_losses.shape),
        "status": result.status,
    }


def stage_kernel(args) -> dict:
    import numpy as np

    from lambdahat.influence import loss_kernel

    with PeakMemory() as peak:
        start = time.perf_counter()
        kernel = loss_kernel(args.trace, kind="correlation", block_size=args.block_size, out=args.out)
        seconds = time.perf_counter() - start
    values = np.load(args.out, mmap_mode="r")
    diag = np.diagonal(values)
    return {
        "stage": "kernel",
        "seconds": round(seconds, 1),
        "peak_anon_mib": round(peak.anon / 2**20),
        "peak_file_mib": round(peak.file / 2**20),
        "shape": list(kernel.shape),
        "diag_ok": bool(np.allclose(diag[np.isfinite(diag)], 1.0)),
        "symmetric": bool(np.allclose(values[:500, 1000:1500], values[1000:1500, :500].T, equal_nan=True)),
        "constant_losses": int(np.isnan(diag).sum()),  # samples whose loss never moved (correlation NaN)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--stage", choices=["sample", "kernel"], default=None)
    parser.add_argument("--trace", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.stage is not None:
        print(json.dumps(stage_sample(args) if args.stage == "sample" else stage_kernel(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        common = [
            f"--samples={args.samples}",
            f"--chains={args.chains}",
            f"--draws={args.draws}",
            f"--block-size={args.block_size}",
            f"--trace={os.path.join(tmp, 'trace.npy')}",
            f"--out={os.path.join(tmp, 'kernel.npy')}",
        ]
        for stage in ("sample", "kernel"):
            with open("/proc/loadavg") as f:
                load = f.read().split()[:3]
            out = subprocess.run(
                [sys.executable, __file__, f"--stage={stage}", *common],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            row = json.loads(out.strip().splitlines()[-1])
            with open("/proc/loadavg") as f:
                row["loadavg_before_after"] = [" ".join(load), " ".join(f.read().split()[:3])]
            print(json.dumps(row))


if __name__ == "__main__":
    main()
