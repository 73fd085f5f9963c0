"""Per-chain noise streams: independent of batching, standard normal, seeds resolved and validated."""

from __future__ import annotations

import math

import pytest
import torch

from lambdahat.rng import ChainNoise, chain_seed, noise_block_steps, resolve_seed


@pytest.mark.parametrize("dim", [3, 50_000])
def test_a_chain_stream_does_not_depend_on_its_batch(dim):
    steps = 2 * noise_block_steps(dim) + 3  # crosses block refills
    together = ChainNoise(7, [0, 1, 2], dim, torch.device("cpu"), torch.float32)
    alone = ChainNoise(7, [1], dim, torch.device("cpu"), torch.float32)
    for _ in range(steps):
        torch.testing.assert_close(together.draw()[1], alone.draw()[0], rtol=0, atol=0)


def test_noise_is_standard_normal():
    # 2e5 draws: the sample mean has standard error 1/sqrt(n) and the variance sqrt(2/n); allow 5 of each
    noise = ChainNoise(1, [0, 1], 1000, torch.device("cpu"), torch.float64)
    x = torch.cat([noise.draw().flatten() for _ in range(100)])
    n = x.numel()
    assert abs(x.mean().item()) < 5 / math.sqrt(n)
    assert abs(x.var().item() - 1) < 5 * math.sqrt(2 / n)


def test_chain_seeds_differ_across_chains_and_seeds():
    seeds = {chain_seed(s, c) for s in range(20) for c in range(20)}
    assert len(seeds) == 400  # no two (seed, chain) pairs share a stream


def test_chain_streams_are_uncorrelated():
    """Pairwise correlations of 8 chains' noise over n = 2e5 numbers: each has standard error 1/sqrt(n) under
    independence; allow 5 (28 pairs)."""
    noise = ChainNoise(3, list(range(8)), 1000, torch.device("cpu"), torch.float64)
    x = torch.cat([noise.draw() for _ in range(200)], dim=1)  # [chains, 2e5]
    corr = torch.corrcoef(x)
    off = corr[~torch.eye(8, dtype=torch.bool)]
    assert off.abs().max() < 5 / math.sqrt(x.shape[1])
    # ... and consecutive steps of one chain too (lag-one autocorrelation of a chain's stream)
    lagged = torch.corrcoef(torch.stack([x[0, :-1000], x[0, 1000:]]))[0, 1]
    assert abs(lagged) < 5 / math.sqrt(x.shape[1])


def test_resolve_seed():
    assert resolve_seed(12) == 12
    assert isinstance(resolve_seed(None), int)
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="seed must be a non-negative int"):
            resolve_seed(bad)
