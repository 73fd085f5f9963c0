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


def test_chain_seeds_differ_and_depend_on_seed_and_chain_only():
    assert chain_seed(0, 0) != chain_seed(0, 1) != chain_seed(1, 0)
    assert chain_seed(3, 5) == chain_seed(3, 5)


def test_resolve_seed():
    assert resolve_seed(12) == 12
    assert isinstance(resolve_seed(None), int)
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="seed must be a non-negative int"):
            resolve_seed(bad)
