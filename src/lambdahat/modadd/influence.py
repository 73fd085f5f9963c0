"""Bayesian influence, the loss kernel and susceptibilities of a modular-addition checkpoint, by Fourier structure.

At the weights ``w*`` of a checkpoint, with the run's training split driving SGLD (the λ̂ settings of
:mod:`lambdahat.modadd.llc`: ``γ = 100``, ``ε = 1e-4``, ``nβ = n / log n``), :func:`influence_report` measures

1. the **loss kernel** ``K[q, t] = Corr_p(ℓ_q, ℓ_t)`` between query pairs ``q = (a, b)`` (default: all ``p²`` pairs)
   and the training pairs (:func:`lambdahat.bif` with ``kind="correlation"``), summarised by the difference of
   the two sums ``d = (a_q + b_q) − (a_t + b_t) mod p``: same sum (``d = 0``, the pair itself excluded) against
   different sums, with standard errors across chains (each chain's own correlation matrix);
2. the **susceptibilities** of the embedding (``embed``), hidden (``linear_a``, ``linear_b``) and unembedding
   (``unembed``) layers to probe pairs (default: all ``p²`` pairs, :func:`lambdahat.susceptibilities`), grouped by
   the sum class ``s = (a + b) mod p``: the class means, the fraction of the variance of χ over the probes that
   the class explains (``η²``) against its distribution when the classes are shuffled (permutations), and the
   fraction of the class-mean profile's variation in the embedding's key Fourier modes (``cos(2πk s / p)``).

What it showed at p = 17 (default model, train_frac 0.8, 2000 steps, 4 chains of 100 draws): pairs with the same
sum correlate at mean r ≈ 0.18 against ≈ 0.00 for different sums (about 11 standard errors across chains); the
unembedding's χ is organised by the sum class (η² ≈ 0.33 against ≈ 0.06 ± 0.02 for shuffled classes), the
embedding's and hidden layer's are not (η² at the shuffled level). The numbers of a run are in ``summary``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch.utils.data import DataLoader

from lambdahat.config import LLCConfig
from lambdahat.influence import LossKernel, bif, loss_kernel
from lambdahat.modadd.data import all_pairs
from lambdahat.modadd.fourier import mode_magnitudes
from lambdahat.modadd.params import DEFAULT_LEARNING_RATE, DEFAULT_LOCALIZATION
from lambdahat.modadd.report import key_modes
from lambdahat.modadd.train import Run, load_run
from lambdahat.susceptibility import Susceptibilities, susceptibilities

__all__ = ["COMPONENTS", "ModAddInfluence", "influence_report"]

#: The layers of :class:`~lambdahat.modadd.ModAddModel` as parameter selections (module prefixes).
COMPONENTS: dict[str, object] = {"embed": "embed", "hidden": ["linear_a", "linear_b"], "unembed": "unembed"}


@dataclass
class ModAddInfluence:
    """Tables, figures and a measured summary of :func:`influence_report`.

    Attributes
    ----------
    kernel:
        The pooled loss kernel ``[queries, train]`` (``LossKernel``, correlations; its run in ``kernel.result``).
    query_pairs, train_pairs:
        ``[queries, 2]`` and ``[train, 2]`` pairs ``(a, b)`` of the kernel's rows and columns.
    same_sum:
        Rows ``same`` / ``different`` / ``gap``: mean correlation over (query, train) entries whose sums agree or
        not (an entry of a pair with itself excluded), per chain, and their mean and standard error across chains.
    kernel_by_difference:
        Per sum difference ``d = 0 .. p-1``: mean pooled correlation, its standard error across chains, entries.
    chi:
        The :class:`~lambdahat.susceptibility.Susceptibilities` of the layers (and ``full``) to the probes.
    probe_pairs:
        ``[probes, 2]`` the probe pairs.
    chi_by_sum:
        ``[components, p]`` the mean χ over the probes of each sum class.
    chi_structure:
        Per component: ``eta2`` (variance fraction explained by the sum class), ``eta2_null_mean`` /
        ``eta2_null_std`` (shuffled classes), ``z`` (``(eta2 − null mean) / null std``), ``key_mode_fraction``
        (share of the class-mean profile's non-constant Fourier power in the key modes) and
        ``key_mode_fraction_null`` (the share of a profile with equal power in every frequency).
    key_modes:
        The embedding's key Fourier modes (strongest first).
    figures:
        ``"kernel"`` and ``"susceptibilities"``.
    summary:
        One line per measured fact.
    """

    kernel: LossKernel
    query_pairs: np.ndarray
    train_pairs: np.ndarray
    same_sum: pd.DataFrame
    kernel_by_difference: pd.DataFrame
    chi: Susceptibilities
    probe_pairs: np.ndarray
    chi_by_sum: pd.DataFrame
    chi_structure: pd.DataFrame
    key_modes: list[int]
    figures: dict[str, Figure] = field(default_factory=dict, repr=False)
    summary: str = ""


def _pairs(data, p: int, where: str) -> torch.Tensor:
    if data is None:
        return all_pairs(p)
    pairs = torch.as_tensor(data, dtype=torch.long)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) == 0:
        raise ValueError(
            f"influence_report: {where} must be a [n, 2] array of pairs (a, b); got {tuple(pairs.shape)}."
        )
    if pairs.min() < 0 or pairs.max() >= p:
        raise ValueError(f"influence_report: {where} must hold residues 0..{p - 1}.")
    return pairs


def _fourier_power(profile: np.ndarray) -> np.ndarray:
    """Power of a length-p profile in each frequency k = 0 .. p//2 (k and p − k together)."""
    p = len(profile)
    spectrum = np.abs(np.fft.fft(profile)) ** 2
    power = np.zeros(p // 2 + 1)
    for k in range(p):
        power[min(k, p - k)] += spectrum[k]
    return power


def _eta2(values: np.ndarray, groups: np.ndarray, p: int) -> float:
    centred = values - values.mean()
    total = float((centred**2).sum())
    if total <= 0:
        return math.nan
    means = np.bincount(groups, weights=values, minlength=p) / np.maximum(np.bincount(groups, minlength=p), 1)
    return float(((means[groups] - values.mean()) ** 2).sum() / total)


def influence_report(
    run: Run | str | os.PathLike[str],
    checkpoint: int = -1,
    *,
    queries=None,
    probes=None,
    components: Mapping[str, object] | None = None,
    config: LLCConfig | None = None,
    batch_size: int = 64,
    seed: int = 0,
    n_permutations: int = 500,
    compile: bool | str = False,
) -> ModAddInfluence:
    """The loss kernel between pairs and the layers' susceptibilities at a checkpoint, with figures and a summary.

    Parameters
    ----------
    run:
        A :class:`~lambdahat.modadd.Run` or its directory.
    checkpoint:
        Which checkpoint (default: the last).
    queries, probes:
        ``[n, 2]`` pairs ``(a, b)`` for the kernel's rows and the susceptibilities' probes (default: all ``p²``).
        The kernel's columns are the training pairs.
    components:
        ``{name: selection}`` of parameters (default :data:`COMPONENTS`: embedding, hidden, unembedding).
    config:
        The sampler settings (default: 4 chains, 200 burn-in steps, 100 draws, ``γ = 100``, ``ε = 1e-4``,
        ``nβ = n / log n``).
    batch_size, seed:
        SGLD minibatch size over the training split; the seed of every run.
    n_permutations:
        Shuffles of the sum classes for the null distribution of ``η²``.
    compile:
        See :func:`lambdahat.prepare`.
    """
    if not isinstance(run, Run):
        run = load_run(run)
    p = run.params.p
    model = run.model(checkpoint)
    train = run.train_data()
    x_train, y_train = train.tensors
    n = len(x_train)
    if n < 2:
        raise ValueError("influence_report: the run's training split needs at least 2 pairs.")
    config = config or LLCConfig(
        draws=100,
        chains=4,
        burnin_steps=200,
        learning_rate=DEFAULT_LEARNING_RATE,
        localization=DEFAULT_LOCALIZATION,
        nbeta=n / math.log(n),
    )
    if config.chains < 2:
        raise ValueError("influence_report: needs at least 2 chains (standard errors are across chains).")
    q_pairs = _pairs(queries, p, "queries")
    p_pairs = _pairs(probes, p, "probes")
    loader = DataLoader(train, batch_size=min(batch_size, n), shuffle=True)
    label = lambda pairs: pairs.sum(1) % p  # noqa: E731 - the true labels of modular addition

    # 1. the loss kernel
    kernel = bif(
        model,
        loader,
        config,
        query=[(q_pairs, label(q_pairs))],
        train=[(x_train, y_train)],
        kind="correlation",
        criterion_fn=F.cross_entropy,
        compile=compile,
        seed=seed,
        warn=False,
    )
    each = loss_kernel(
        kernel.result,
        query=kernel.query_columns,
        train=kernel.train_columns,
        kind="correlation",
        pooling="each",
    ).values
    qn, tn = q_pairs.numpy(), x_train.numpy()
    s_q, s_t = qn.sum(1) % p, tn.sum(1) % p
    itself = (qn[:, None, :] == tn[None, :, :]).all(-1)
    same = (s_q[:, None] == s_t[None, :]) & ~itself
    different = s_q[:, None] != s_t[None, :]
    per_chain = {
        "same": np.array([np.nanmean(c[same]) if same.any() else np.nan for c in each]),
        "different": np.array([np.nanmean(c[different]) if different.any() else np.nan for c in each]),
    }
    per_chain["gap"] = per_chain["same"] - per_chain["different"]
    chains = len(each)
    same_sum = pd.DataFrame(
        {
            **{f"chain_{c}": [per_chain[k][c] for k in per_chain] for c in range(chains)},
            "mean": [per_chain[k].mean() for k in per_chain],
            "stderr": [per_chain[k].std(ddof=1) / math.sqrt(chains) for k in per_chain],
            "pooled": [
                np.nanmean(kernel.values[same]) if same.any() else np.nan,
                np.nanmean(kernel.values[different]) if different.any() else np.nan,
                np.nan,
            ],
        },
        index=pd.Index(list(per_chain), name="entries"),
    )
    same_sum.loc["gap", "pooled"] = same_sum.loc["same", "pooled"] - same_sum.loc["different", "pooled"]
    diff = (s_q[:, None] - s_t[None, :]) % p
    rows = []
    for d in range(p):
        mask = (diff == d) & ~itself
        chain_means = np.array([np.nanmean(c[mask]) if mask.any() else np.nan for c in each])
        rows.append(
            {
                "d": d,
                "mean_r": np.nanmean(kernel.values[mask]) if mask.any() else np.nan,
                "stderr": chain_means.std(ddof=1) / math.sqrt(chains),
                "entries": int(mask.sum()),
            }
        )
    by_difference = pd.DataFrame(rows).set_index("d")

    # 2. susceptibilities of the layers to the probes, grouped by sum class
    chi = susceptibilities(
        model,
        loader,
        config,
        components=dict(COMPONENTS if components is None else components),
        probes=[(p_pairs, label(p_pairs))],
        criterion_fn=F.cross_entropy,
        compile=compile,
        seed=seed,
        warn=False,
    )
    s_p = (p_pairs.sum(1) % p).numpy()
    counts = np.maximum(np.bincount(s_p, minlength=p), 1)
    by_sum = np.stack([np.bincount(s_p, weights=row, minlength=p) / counts for row in chi.values])
    chi_by_sum = pd.DataFrame(
        by_sum, index=pd.Index(chi.components, name="component"), columns=pd.Index(range(p), name="sum")
    )
    modes = key_modes(mode_magnitudes(model.embed.weight.detach()))
    rng = np.random.default_rng(seed)
    shuffles = [rng.permutation(s_p) for _ in range(n_permutations)]
    structure = []
    for row, values in zip(chi.components, chi.values, strict=True):
        eta = _eta2(values, s_p, p)
        null = np.array([_eta2(values, g, p) for g in shuffles])
        power = _fourier_power(by_sum[chi.components.index(row)])
        nonconst = power[1:].sum()
        structure.append(
            {
                "component": row,
                "eta2": eta,
                "eta2_null_mean": float(null.mean()),
                "eta2_null_std": float(null.std(ddof=1)),
                "z": (eta - null.mean()) / null.std(ddof=1) if null.std() > 0 else math.nan,
                "key_mode_fraction": float(power[modes].sum() / nonconst)
                if nonconst > 0 and modes
                else math.nan,
                "key_mode_fraction_null": len(modes) / (p // 2) if modes else math.nan,
            }
        )
    chi_structure = pd.DataFrame(structure).set_index("component")

    result = ModAddInfluence(
        kernel=kernel,
        query_pairs=qn,
        train_pairs=tn,
        same_sum=same_sum,
        kernel_by_difference=by_difference,
        chi=chi,
        probe_pairs=p_pairs.numpy(),
        chi_by_sum=chi_by_sum,
        chi_structure=chi_structure,
        key_modes=modes,
    )
    result.summary = _summary(result, p)
    result.figures = {"kernel": _kernel_figure(result, p), "susceptibilities": _chi_figure(result, p)}
    return result


def _summary(r: ModAddInfluence, p: int) -> str:
    s = r.same_sum
    gap, se = s.loc["gap", "mean"], s.loc["gap", "stderr"]
    lines = [
        f"loss kernel (p = {p}, {len(r.query_pairs)} query × {len(r.train_pairs)} training pairs): pairs with the "
        f"same (a+b) mod p correlate at mean r = {s.loc['same', 'mean']:.3f} vs {s.loc['different', 'mean']:.3f} "
        f"for different sums (gap {gap:.3f} ± {se:.3f}, {gap / se:.1f} standard errors across chains)."
    ]
    for name, row in r.chi_structure.iterrows():
        lines.append(
            f"χ of {name}: the sum class explains {row.eta2:.0%} of its variance over the probes "
            f"(shuffled classes: {row.eta2_null_mean:.0%} ± {row.eta2_null_std:.0%}, z = {row.z:.1f}); "
            f"key modes {r.key_modes} carry {row.key_mode_fraction:.0%} of its class-mean profile "
            f"(equal spread: {row.key_mode_fraction_null:.0%})."
        )
    return "\n".join(lines)


def _kernel_figure(r: ModAddInfluence, p: int) -> Figure:
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    ax_map, ax_cls, ax_d = fig.subplots(1, 3, width_ratios=(1.3, 1, 1))
    q_order = np.argsort(r.query_pairs.sum(1) % p, kind="stable")
    t_order = np.argsort(r.train_pairs.sum(1) % p, kind="stable")
    values = r.kernel.values[np.ix_(q_order, t_order)]
    bound = float(np.nanpercentile(np.abs(values), 99)) or 1.0
    image = ax_map.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="none")
    fig.colorbar(image, ax=ax_map, label="Corr(ℓ_query, ℓ_train)")
    ax_map.set_xlabel("training pair, ordered by (a+b) mod p")
    ax_map.set_ylabel("query pair, ordered by (a+b) mod p")
    ax_map.set_title("loss kernel")
    s_q, s_t = r.query_pairs.sum(1) % p, r.train_pairs.sum(1) % p
    itself = (r.query_pairs[:, None] == r.train_pairs[None]).all(-1)
    classes = np.full((p, p), np.nan)
    for i in range(p):
        for j in range(p):
            mask = (s_q[:, None] == i) & (s_t[None, :] == j) & ~itself
            if mask.any():
                classes[i, j] = np.nanmean(r.kernel.values[mask])
    bound = float(np.nanmax(np.abs(classes))) if np.isfinite(classes).any() else 1.0
    image = ax_cls.imshow(classes, cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="none")
    fig.colorbar(image, ax=ax_cls, label="mean correlation")
    ax_cls.set_xlabel("training sum class")
    ax_cls.set_ylabel("query sum class")
    ax_cls.set_title("kernel averaged over sum classes")
    d = r.kernel_by_difference
    ax_d.errorbar(d.index, d["mean_r"], yerr=d["stderr"], fmt="o-", ms=4)
    ax_d.axhline(0, color="grey", lw=0.8)
    ax_d.set_xlabel("sum difference d = (s_query − s_train) mod p")
    ax_d.set_ylabel("mean correlation (± s.e. across chains)")
    ax_d.set_title("kernel by sum difference")
    return fig


def _chi_figure(r: ModAddInfluence, p: int) -> Figure:
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_map, ax_eta = fig.subplots(1, 2, width_ratios=(1.4, 1))
    data = r.chi_by_sum.to_numpy()
    scaled = (data - data.mean(1, keepdims=True)) / np.maximum(data.std(1, keepdims=True), 1e-300)
    image = ax_map.imshow(scaled, aspect="auto", cmap="RdBu_r", vmin=-3, vmax=3, interpolation="none")
    fig.colorbar(image, ax=ax_map, label="class mean of χ (standardised per row)")
    ax_map.set_yticks(range(len(r.chi_by_sum)), list(r.chi_by_sum.index))
    ax_map.set_xlabel("probe sum class (a+b) mod p")
    ax_map.set_title("susceptibility by sum class")
    st = r.chi_structure
    x = np.arange(len(st))
    ax_eta.bar(x, st["eta2"], color="tab:blue", label="sum classes")
    ax_eta.errorbar(
        x,
        st["eta2_null_mean"],
        yerr=2 * st["eta2_null_std"],
        fmt="_",
        color="black",
        label="shuffled (± 2 sd)",
    )
    ax_eta.set_xticks(x, list(st.index))
    ax_eta.set_ylabel("η² (variance explained by the class)")
    ax_eta.legend()
    return fig
