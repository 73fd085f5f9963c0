"""Quick start: λ̂ of a small MLP classifier, the trust policy's verdict, and a trace plot.

Run it with ``python docs/tutorials/quickstart.py`` (about 20 s on a laptop CPU). It prints the estimate with its
standard error and verdict, and writes ``quickstart_trace.png`` into the current directory.
"""

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import lambdahat
from lambdahat import LLCConfig, LLCEstimator, prepare, sample

torch.manual_seed(0)

# 1. A data set and a model trained on it: 4 Gaussian blobs in 8 dimensions, a 8 → 16 → 4 MLP.
n = 1024
labels = torch.randint(0, 4, (n,))
centres = 2.0 * torch.randn(4, 8)
inputs = centres[labels] + torch.randn(n, 8)
dataset = TensorDataset(inputs, labels)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
for _ in range(500):  # full-batch Adam: close to a local minimum w*
    optimizer.zero_grad()
    F.cross_entropy(model(inputs), labels).backward()
    optimizer.step()
print(f"trained: loss {F.cross_entropy(model(inputs), labels).item():.4f}")

# 2. λ̂ at w*: 4 chains of SGLD started at w*, vmapped into one batched forward and backward per step.
loader = DataLoader(dataset, batch_size=256, shuffle=True)
estimator = LLCEstimator(
    draws=200,
    chains=4,
    burnin_steps=200,
    learning_rate=1e-4,  # ε, the SGLD step
    localization=100.0,  # γ, the pull towards w*
    nbeta=None,  # nβ = n / log n with n = len(loader.dataset)
)
llcs = estimator.estimate_llc(model, loader, criterion_fn=F.cross_entropy, seed=0, show_progress=False)
result = estimator.result  # the whole LLCResult; get_metrics() gives the same as a dict
print(f"per-chain λ̂: {[round(v, 2) for v in llcs.tolist()]}")
print(f"λ̂ = {result.llc_mean:.2f} ± {result.llc_stderr:.2f}  (nβ = {result.nbeta:.1f})")
print(f"MALA acceptance {result.mala_acceptance:.3f}, R-hat {result.rhat:.3f}, ESS {result.ess:.0f}")
print(f"status: {result.status_line}")
for note in result.warnings:  # what to change when the result is untrusted
    print("  warning:", note)

# 3. Prepare once, sample many: one prepared problem (model copies, data feed, L0) serves several settings.
config = LLCConfig(draws=200, chains=4, burnin_steps=200, localization=100.0)
problem = prepare(model, loader, config, criterion_fn=F.cross_entropy)
for lr in (3e-5, 1e-4, 3e-4):
    r = sample(problem, config.replace(learning_rate=lr), seed=0, show_progress=False, warn=False)
    print(
        f"ε = {lr:.0e}: λ̂ = {r.llc_mean:5.2f} ± {r.llc_stderr:.2f}, acceptance {r.mala_acceptance:.3f}, {r.status_line}"
    )

# 4. learning_rate="auto": ε chosen on its measured step bias; checks="auto" then also measures the localization's
#    pull and the relaxation (companion runs that each change one setting: 2ε, γ/2, dispersed starts).
auto = sample(problem, config.replace(learning_rate="auto"), seed=0, show_progress=False, warn=False)
print(
    f"auto: ε = {auto.learning_rate:.2e}, λ̂ = {auto.llc_mean:.2f} ± {auto.llc_stderr:.2f}, {auto.status_line}"
)
for name, check in auto.settings["accuracy"].items():
    print(f"  {name} check: bias {100 * check['bias']:+.1f} % ± {100 * check['bias_stderr']:.1f} %")

# 5. The running λ̂ of every chain: flat after burn-in when the chains have settled.
figure = lambdahat.plot_trace(result)
figure.savefig("quickstart_trace.png", dpi=80)
print("wrote quickstart_trace.png")
