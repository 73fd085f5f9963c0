"""Cost of a restricted (weight-refined) LLC against the full one.

An MLP 128→256→256→128 (131,712 parameters) whose middle layer holds half of them (65,792); 8 chains,
50 burn-in steps, 100 draws, batch 256; eager and compiled, steady state after a warm-up call, median of the
interleaved repeats. Gradients and chain state exist only for the sampled parameters, so the restricted run skips the
weight gradients of the frozen layers, half the noise and half the update.

Usage::

    python benchmarks/restricted_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lambdahat import LLCEstimator


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 128))
    data = TensorDataset(torch.randn(2048, 128), torch.randint(0, 128, (2048,)))
    loader = DataLoader(data, batch_size=256, shuffle=True)
    est = LLCEstimator(draws=100, chains=8, burnin_steps=50, learning_rate=1e-5, localization=100.0)
    variants = {"full": None, "middle layer only": "2"}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    print("| mode | sampled | D | ms/step (median) | vs full |")
    print("|---|---|---:|---:|---:|")
    for compile in (False, True):
        times = {name: [] for name in variants}
        dims = {}
        for name, params in variants.items():  # warm-up (and compile)
            est.estimate_llc(model, loader, seed=0, compile=compile, show_progress=False, params=params)
            dims[name] = est.get_metrics()["dim"]
        for _ in range(args.repeats):
            for name, params in variants.items():
                start = time.perf_counter()
                est.estimate_llc(model, loader, seed=0, compile=compile, show_progress=False, params=params)
                times[name].append((time.perf_counter() - start) / 150 * 1e3)
        full = statistics.median(times["full"])
        for name in variants:
            med = statistics.median(times[name])
            mode = "compiled" if compile else "eager"
            print(f"| {mode} | {name} | {dims[name]} | {med:.2f} | {med / full:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
