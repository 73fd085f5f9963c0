"""Steady-state speed of ``estimate_llc`` against the floor, and the cost of a one-off call.

Workloads (8 chains, 50 burn-in steps, 100 draws = 150 steps):

- ``mlp``: classifier 32→256→256→10, batch 256;
- ``modadd``: the modular-addition MLP, p = 53, embed 12, hidden 48, batch 128;
- ``dln``: deep linear network, 8 layers of width 16, MSE, batch 500;
- ``transformer``: 2 layers, d_model 64, 4 heads, sequences of 16 tokens, batch 64, next-token loss.

The *floor* is a bare loop of ``vmap(grad_and_value(loss))`` over stacked parameters on the same batches, with no
sampler, no noise and no bookkeeping, eager and ``torch.compile``d; the faster of the two is the floor.
For the estimator we time (after one warm-up call) the steady state with ``compile=True``, ``compile=False`` and
the default ``compile="auto"`` (on its own copy of the model, warmed up by one "auto" call, so that "auto" decides
from the calls made on that object, as in a notebook calling again and again; the table says whether it compiled),
and separately a *one-off* call with the default ``compile="auto"`` on a fresh model object (what a user's first
call on a model costs), compared with an eager one-off call (median of the repeats, order alternating).

Every time is the median of ``--repeats`` interleaved repeats; ratios are taken within the same run.

Usage::

    python benchmarks/estimator_speed.py [--repeats 3] [--workloads mlp,modadd,dln,transformer] [--threads N]
                                         [--device cuda] [--no-oneoff]

On CUDA the model, the data and the floor's batches are on the device, the estimator runs with
``devices=[device]`` (its loader stays on the CPU, as a user's would), and every clock stops after a synchronize.
Peak memory: ``benchmarks/memory.py``.
"""

from __future__ import annotations

import copy
import math
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from bench_common import floor_step, loadavg, workload_parser
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lambdahat import LLCEstimator
from lambdahat.modadd.model import ModAddModel

CHAINS, BURNIN, DRAWS = 8, 50, 100
STEPS = BURNIN + DRAWS


class TinyTransformer(nn.Module):
    """Pre-norm decoder-only transformer with causal attention written out (no fused fast paths)."""

    def __init__(self, vocab=32, d_model=64, heads=4, layers=2, seq=16):
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(seq, d_model) * 0.02)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            self.blocks.append(
                nn.ModuleDict(
                    {
                        "ln1": nn.LayerNorm(d_model),
                        "qkv": nn.Linear(d_model, 3 * d_model),
                        "out": nn.Linear(d_model, d_model),
                        "ln2": nn.LayerNorm(d_model),
                        "fc1": nn.Linear(d_model, 4 * d_model),
                        "fc2": nn.Linear(4 * d_model, d_model),
                    }
                )
            )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        self.register_buffer("mask", torch.triu(torch.full((seq, seq), float("-inf")), diagonal=1))

    def forward(self, tokens):
        b, t = tokens.shape
        h = self.embed(tokens) + self.pos[:t]
        for blk in self.blocks:
            q, k, v = blk["qkv"](blk["ln1"](h)).chunk(3, dim=-1)
            split = lambda z: z.view(b, t, self.heads, -1).transpose(1, 2)  # noqa: E731
            q, k, v = split(q), split(k), split(v)
            att = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) + self.mask[:t, :t]
            h = h + blk["out"]((att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, -1))
            h = h + blk["fc2"](F.gelu(blk["fc1"](blk["ln2"](h))))
        return self.head(self.ln_f(h))


def token_loss(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def workload(name: str):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if name == "mlp":
        x = torch.randn(4096, 32, generator=g)
        y = torch.randint(0, 10, (4096,), generator=g)
        model = nn.Sequential(
            nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
        )
        return model, TensorDataset(x, y), 256, F.cross_entropy, dict(learning_rate=1e-5, localization=100.0)
    if name == "modadd":
        p = 53
        pairs = torch.cartesian_prod(torch.arange(p), torch.arange(p))
        labels = (pairs[:, 0] + pairs[:, 1]) % p
        keep = torch.randperm(p * p, generator=g)[: int(0.8 * p * p)]
        model = ModAddModel(p, embed_dim=12, hidden_size=48)
        return (
            model,
            TensorDataset(pairs[keep], labels[keep]),
            128,
            F.cross_entropy,
            dict(learning_rate=1e-4, localization=5.0),
        )
    if name == "dln":
        x = torch.rand(5000, 16, generator=g) * 2 - 1
        layers = [nn.Linear(16, 16, bias=False) for _ in range(8)]
        model = nn.Sequential(*layers)
        with torch.no_grad():
            y = model(x)
        return model, TensorDataset(x, y), 500, F.mse_loss, dict(learning_rate=1e-6, localization=1.0)
    if name == "transformer":
        tokens = torch.randint(0, 32, (1024, 17), generator=g)
        model = TinyTransformer()
        return (
            model,
            TensorDataset(tokens[:, :-1], tokens[:, 1:]),
            64,
            token_loss,
            dict(learning_rate=1e-5, localization=100.0),
        )
    raise ValueError(name)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_floor(model, batches, criterion, compiled_fn_cache, device="cpu"):
    """Seconds for STEPS vmapped grad_and_value calls over stacked parameters (eager and compiled); ``batches``
    are already on ``device``."""
    f, params, buffers = floor_step(model, criterion, CHAINS, device)
    # one batch of every shape (a last, smaller batch makes the compiled floor recompile: not in the timed loop)
    shapes = list({tuple(t.shape for t in b): b for b in batches}.values())
    if "compiled" not in compiled_fn_cache:
        cf = torch.compile(f)
        start = time.perf_counter()
        cf(params, buffers, *batches[0])
        sync(device)
        compiled_fn_cache["compile_seconds"] = time.perf_counter() - start
        compiled_fn_cache["compiled"] = cf
    out = {}
    for kind, fn in (("eager", f), ("compiled", compiled_fn_cache["compiled"])):
        for b in shapes:
            fn(params, buffers, *b)
        sync(device)
        start = time.perf_counter()
        for s in range(STEPS):
            _grads, losses = fn(params, buffers, *batches[s % len(batches)])
        losses.sum().item()
        out[kind] = time.perf_counter() - start
    return out


def time_estimator(model, loader, criterion, hp, compile, device="cpu"):
    est = LLCEstimator(draws=DRAWS, chains=CHAINS, burnin_steps=BURNIN, **hp)
    sync(device)
    start = time.perf_counter()
    est.estimate_llc(
        model, loader, criterion_fn=criterion, devices=[device], seed=0, compile=compile, show_progress=False
    )
    sync(device)
    return time.perf_counter() - start, est.get_metrics()


HEADER = (
    "| workload | D | floor eager ms/step | floor compiled ms/step | estimator compiled ms/step | estimator eager "
    "ms/step | estimator auto ms/step | compiled / floor | eager / floor | auto / floor | auto compiled? | "
    "chunk steps (compiled) | floor compile s | estimator first call (compile) s | one-off auto s | "
    "one-off eager s | one-off auto compiled? |"
)


def main() -> None:
    parser = workload_parser(__doc__)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-oneoff", action="store_true", help="skip the one-off (fresh model) calls")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if torch.device(device).type == "cuda" else "")
        + f"; load average before: {loadavg()}",
        flush=True,
    )
    warnings.simplefilter("ignore", RuntimeWarning)
    # warm the process up (imports, first-use initialisation) on a tiny model so no workload pays for it
    tiny = TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    LLCEstimator(draws=20, chains=2, burnin_steps=5).estimate_llc(
        nn.Linear(4, 2),
        DataLoader(tiny, batch_size=32),
        devices=[device],
        seed=0,
        compile=False,
        show_progress=False,
    )
    print(HEADER)
    print("|---" * 17 + "|", flush=True)
    for name in args.workloads.split(","):
        model, data, batch, criterion, hp = workload(name)
        loader = DataLoader(data, batch_size=batch, shuffle=True)
        batches = [tuple(t.to(device) for t in b) for b in DataLoader(data, batch_size=batch, shuffle=True)]
        # one-off calls (fresh model objects, nothing compiled in memory for them), alternating the order so that
        # neither pays for first-use costs of the process alone; the process was warmed up on a tiny model
        autos, eagers, m_auto = [], [], {"compiled": "-"}
        for r in range(0 if args.no_oneoff else args.repeats):
            order = ("auto", False) if r % 2 else (False, "auto")
            for mode in order:
                seconds, metrics = time_estimator(copy.deepcopy(model), loader, criterion, hp, mode, device)
                (autos if mode == "auto" else eagers).append(seconds)
                if mode == "auto":
                    m_auto = metrics
        oneoff_auto = statistics.median(autos) if autos else float("nan")
        oneoff_eager = statistics.median(eagers) if eagers else float("nan")
        # first compiled call (compile included) on the model reused for the steady state
        first_compiled, m_first = time_estimator(model, loader, criterion, hp, True, device)
        # the default on its own model object: one warm-up call, then the steady state
        auto_model = copy.deepcopy(model)
        time_estimator(auto_model, loader, criterion, hp, "auto", device)
        cache: dict = {}
        times = {"floor_eager": [], "floor_compiled": [], "est_compiled": [], "est_eager": [], "est_auto": []}
        for _ in range(args.repeats):
            floor = time_floor(model, batches, criterion, cache, device)
            times["floor_eager"].append(floor["eager"])
            times["floor_compiled"].append(floor["compiled"])
            times["est_compiled"].append(time_estimator(model, loader, criterion, hp, True, device)[0])
            times["est_eager"].append(time_estimator(model, loader, criterion, hp, False, device)[0])
            seconds, m_steady_auto = time_estimator(auto_model, loader, criterion, hp, "auto", device)
            times["est_auto"].append(seconds)
        med = {k: statistics.median(v) for k, v in times.items()}
        floor_best = min(med["floor_eager"], med["floor_compiled"])
        ms = {k: 1e3 * v / STEPS for k, v in med.items()}
        print(
            f"| {name} | {m_first['dim']} | {ms['floor_eager']:.2f} | {ms['floor_compiled']:.2f} | "
            f"{ms['est_compiled']:.2f} | {ms['est_eager']:.2f} | {ms['est_auto']:.2f} | "
            f"{med['est_compiled'] / floor_best:.2f} | {med['est_eager'] / floor_best:.2f} | "
            f"{med['est_auto'] / floor_best:.2f} | {m_steady_auto['compiled']} | {m_first['chunk_steps']} | "
            f"{cache['compile_seconds']:.1f} | {first_compiled:.1f} | {oneoff_auto:.2f} | {oneoff_eager:.2f} | "
            f"{m_auto['compiled']} |",
            flush=True,
        )
    print(f"\nload average after: {loadavg()}")


if __name__ == "__main__":
    main()
