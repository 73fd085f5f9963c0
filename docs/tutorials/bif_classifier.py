"""Bayesian influence functions, the loss kernel and susceptibilities of a small classifier.

A 2 → 32 → 3 MLP is trained on three Gaussian blobs in which 10 % of the training labels are flipped. One SGLD run
at ``w*`` records the loss of every training and query sample at every draw; their posterior covariances give the
Bayesian influence function (BIF) of each training sample on each query, the loss kernel (their correlations) and
the loss gain ``E_p[ℓ] − ℓ(w*)``. Then the susceptibilities of the two layers to the query samples: one run per
layer. Run with ``python docs/tutorials/bif_classifier.py`` (about 20 s on a laptop CPU); it prints the tables and
writes ``susceptibilities.png``.
"""

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import lambdahat
from lambdahat import LLCConfig

torch.manual_seed(0)

# 1. Three blobs; 10 % of the training labels flipped to another class. Queries: two clean points per class.
centres = torch.tensor([[0.0, 2.0], [-2.0, -1.0], [2.0, -1.0]])


def blobs(n):
    y = torch.arange(n) % 3
    return centres[y] + 0.8 * torch.randn(n, 2), y


x_train, y_clean = blobs(300)
flipped = torch.rand(300) < 0.1
y_train = torch.where(flipped, (y_clean + torch.randint(1, 3, (300,))) % 3, y_clean)
x_query, y_query = blobs(6)
labels, is_flipped = y_train.numpy(), flipped.numpy()

model = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
for _ in range(1000):
    optimizer.zero_grad()
    F.cross_entropy(model(x_train), y_train).backward()
    optimizer.step()
accuracy = (model(x_train).argmax(1) == y_train).float().mean()
print(f"trained: {int(flipped.sum())} flipped labels, training accuracy {accuracy:.2f}")

# 2. One run, the losses of the 6 queries and the 300 training samples recorded at every draw.
train_loader = DataLoader(TensorDataset(x_train, y_train), batch_size=100, shuffle=True)
config = LLCConfig(draws=300, chains=4, burnin_steps=200, learning_rate=1e-3, localization=100.0)
kernel = lambdahat.bif(
    model,
    train_loader,
    config,
    query=[(x_query, y_query)],
    criterion_fn=F.cross_entropy,
    kind="bif",  # −Cov(ℓ_train, ℓ_query); "covariance" or "correlation" for the loss kernel
    seed=0,
    warn=False,
)
print(
    f"kernel {kernel.values.shape} (queries × training samples); run: λ̂ = {kernel.result.llc_mean:.2f}, "
    f"{kernel.result.status}"
)

# Proponents (most negative BIF: upweighting them lowers the query's loss) and opponents of each query.
for query in range(6):
    proponents = kernel.top_k(query, k=10, order="negative")["sample"].to_numpy()
    opponents = kernel.top_k(query, k=10, order="positive")["sample"].to_numpy()
    same_pro = (labels[proponents] == int(y_query[query])).mean()
    flipped_opp = is_flipped[opponents].mean()
    print(
        f"query {query} (class {y_query[query]}): proponents of its class {same_pro:.0%}, "
        f"flipped labels among its opponents {flipped_opp:.0%}"
    )

# 3. The loss gain: how much a sample's loss rises under the posterior; flipped (hard) samples rise most.
gain = kernel.loss_gain()
print(f"mean loss gain: flipped {gain[is_flipped].mean():.3f}, clean {gain[~is_flipped].mean():.3f}")

# 4. The loss kernel between training samples, from the same recorded trace (queries come first in it).
correlation = lambdahat.loss_kernel(
    kernel.result, query=slice(6, None), train=slice(6, None), kind="correlation"
)
same = labels[:, None] == labels[None, :]
print(
    f"loss kernel: mean correlation {correlation.values[same].mean():.2f} within a class, "
    f"{correlation.values[~same].mean():.2f} across classes"
)

# 5. Susceptibilities: χ = −Cov(L − L(w*), ℓ_probe) (relative=False; the default covaries with ℓ_probe − L) under
#    runs restricted to each layer, and the full run, for probes: the 6 clean queries and 6 flipped training samples.
wrong = flipped.nonzero().flatten()[:6]
probes = [(torch.cat([x_query, x_train[wrong]]), torch.cat([y_query, y_train[wrong]]))]
full_batch = DataLoader(
    TensorDataset(x_train, y_train), batch_size=300
)  # L at a draw: the exact training loss
chi = lambdahat.susceptibilities(
    model,
    full_batch,
    config,
    components={"layer 0": "0", "layer 2": "2"},  # params= selections: module prefixes of the Sequential
    probes=probes,
    relative=False,
    criterion_fn=F.cross_entropy,
    seed=0,
    warn=False,
)
print((1000 * chi.to_frame()).round(2).to_string())  # in units of 1e-3
size = abs(chi.values)
print(
    f"mean |χ| (1e-3): clean probes {1000 * size[:, :6].mean():.2f}, flipped probes {1000 * size[:, 6:].mean():.2f}"
)
chi.plot(color=[0] * 6 + [1] * 6).savefig("susceptibilities.png", dpi=80)
print("wrote susceptibilities.png")
