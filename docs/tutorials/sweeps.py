"""A grid search over ε and γ that resumes where it stopped, and λ̂ over the checkpoints of a training run.

A 4 → 8 → 1 regression network; a 2 × 3 grid of step sizes and localizations with one prepared problem for all
points, stored point by point in ``runs/grid`` (a rerun skips what is finished); then λ̂ at three checkpoints
saved during training (safetensors). ``executor="ray"`` would run the same points as Ray tasks. Run with
``python docs/tutorials/sweeps.py`` (about 20 s); it prints both tables and writes ``runs/grid`` and
``llc_over_checkpoints.csv``.
"""

import time

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

from lambdahat import GridSearchConfig, LLCConfig, LLCGridSearch, llc_over_checkpoints

torch.manual_seed(0)


def make_model():
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


# 1. Train, saving three checkpoints along the way.
x = torch.randn(512, 4)
y = torch.sin(x[:, :1]) + 0.5 * x[:, 1:2] + 0.1 * torch.randn(512, 1)
model = make_model()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
checkpoints, steps = [], [100, 300, 1000]
for step in range(1001):
    if step in steps:
        path = f"ckpt_{step}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
        checkpoints.append(path)
    optimizer.zero_grad()
    F.mse_loss(model(x), y).backward()
    optimizer.step()
loader = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True)

# 2. A grid: lists give exactly their values ((lo, hi) ranges are spaced by estimates_per_dim); nbeta=None is
#    n / log n; every other LLCConfig setting by name.
grid = GridSearchConfig(
    learning_rate=[5e-4, 1e-3],
    localization=[1.0, 10.0, 100.0],
    nbeta=None,
    draws=500,
    chains=4,
    burnin_steps=500,
)
search = LLCGridSearch(grid)
df = search.run_grid_search(
    model, loader, criterion_fn=F.mse_loss, seed=0, out_dir="runs/grid", show_progress=False
)
print(
    df[["learning_rate", "localization", "llc_mean", "llc_stderr", "mala_acceptance", "status"]].to_string()
)
# lambdahat.plot_grid(df) draws this table as a heatmap, the untrusted points framed in red.

start = time.perf_counter()  # the same sweep again: every point is read back from runs/grid/results.csv
again = search.run_grid_search(
    model, loader, criterion_fn=F.mse_loss, seed=0, out_dir="runs/grid", show_progress=False
)
print(
    f"rerun: {len(again)} points read back in {time.perf_counter() - start:.2f} s, same λ̂: "
    f"{again['llc_mean'].equals(df['llc_mean'])}"
)

# 3. λ̂ over training at a setting the grid trusted: one model object, every checkpoint loaded into it, the same
#    settings and seed throughout (λ̂ at γ = 100 is then a comparison between checkpoints at that γ).
config = LLCConfig(draws=500, chains=4, burnin_steps=500, learning_rate=5e-4, localization=100.0)
over = llc_over_checkpoints(
    checkpoints,
    make_model,
    loader,
    config,
    criterion_fn=F.mse_loss,
    seed=0,
    labels=steps,
    show_progress=False,
)
print(over[["checkpoint", "init_loss", "llc_mean", "llc_stderr", "status"]].to_string(index=False))
# lambdahat.plot_llc_over_checkpoints(over) draws λ̂ ± std against the labels, the untrusted points crossed.
over.to_csv("llc_over_checkpoints.csv", index=False)
print("wrote llc_over_checkpoints.csv")
