"""A run's traces in ArviZ and xarray: summaries, R-hat and ESS, trace plots and a netCDF file.

A small regression network, one run with an evaluation set (so that the per-sample losses are recorded at every
draw), then ``result.to_arviz()`` and ``result.to_xarray()``. Needs the ``[interop]`` extra (arviz, xarray,
h5netcdf). Run with ``python docs/tutorials/arviz_interop.py`` (about 10 s); it prints ArviZ's summary and writes
``arviz_trace.png`` and ``run.nc``.
"""

import arviz as az
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
import xarray as xr
from torch.utils.data import DataLoader, TensorDataset

from lambdahat import LLCConfig, prepare, sample

torch.manual_seed(0)

# 1. A 4 → 8 → 1 network fitted to noisy data, and one run of 4 chains.
x = torch.randn(512, 4)
y = torch.sin(x[:, :1]) + 0.5 * x[:, 1:2] + 0.1 * torch.randn(512, 1)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
for _ in range(1000):
    optimizer.zero_grad()
    F.mse_loss(model(x), y).backward()
    optimizer.step()

loader = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True)
evaluation = DataLoader(TensorDataset(x[:32], y[:32]), batch_size=32)  # 32 samples recorded at every draw
config = LLCConfig(draws=500, chains=4, burnin_steps=500, learning_rate=5e-4, localization=100.0)
problem = prepare(model, loader, config, criterion_fn=F.mse_loss, evaluation=evaluation)
result = sample(problem, config, seed=0, show_progress=False, warn=False)
print(f"λ̂ = {result.llc_mean:.2f} ± {result.llc_stderr:.2f}, {result.status_line}")

# 2. ArviZ: the posterior group holds `loss` and `llc` (nβ (L − L0) per draw), sample_stats the diagnostics.
idata = result.to_arviz()
print(az.summary(idata, var_names=["llc"]).to_string())
print(f"R-hat: ArviZ {float(az.rhat(idata)['loss']):.4f}, lambdahat {result.rhat:.4f}")
print(f"ESS:   ArviZ {float(az.ess(idata)['loss']):.1f}, lambdahat {result.ess:.1f}")
az.plot_trace(idata, var_names=["llc"])
plt.gcf().savefig("arviz_trace.png", dpi=80)

# 3. xarray: every trace on named dimensions, the per-sample losses on (chain, draw, sample).
ds = result.to_xarray()
print({name: ds[name].dims for name in ("loss", "loss_trace", "per_sample_loss", "per_sample_loss_at_init")})
gain = (ds["per_sample_loss"].mean(("chain", "draw")) - ds["per_sample_loss_at_init"]).to_series()
print(f"loss gain E_p[ℓ] − ℓ(w*): largest for samples {gain.nlargest(3).index.tolist()}")
ds.to_netcdf("run.nc")
with xr.open_dataset("run.nc") as back:
    print(f"run.nc: {dict(back.sizes)}, status {back.attrs['status']!r}, nbeta {back.attrs['nbeta']:.1f}")
print("wrote arviz_trace.png and run.nc")
