"""Per-chain noise streams: independence of batching and blocks, standard normal moments, independence across
chains, steps, seeds and purposes, and the seed's validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lambdahat.rng as rng
from lambdahat.rng import ChainNoise, chain_sequence, noise_block_steps, resolve_seed, start_noise


def _stream(seed: int, chains, steps: int, dim: int, dtype=torch.float64) -> torch.Tensor:
    """``[steps, chains, D]`` of a fresh ChainNoise."""
    noise = ChainNoise(seed, chains, dim, "cpu", dtype)
    return torch.stack([noise.at(t) for t in range(steps)])


@pytest.mark.parametrize("dim", [3, 50_000])
def test_a_chain_stream_does_not_depend_on_its_batch_or_blocks(dim):
    steps = 2 * noise_block_steps(dim) + 3  # crosses block refills
    together = _stream(7, [0, 1, 2], steps, dim, torch.float32)
    alone = _stream(7, [1], steps, dim, torch.float32)
    assert torch.equal(together[:, 1], alone[:, 0])


def test_a_stream_is_the_chains_numpy_stream_whatever_the_block(monkeypatch):
    """Step t holds the numbers t·D … (t+1)·D − 1 of the chain's PCG64 stream, with blocks of any size."""
    dim, steps = 5, 11
    expected = np.random.Generator(np.random.PCG64(chain_sequence(3, 2))).standard_normal(
        steps * dim, dtype=np.float32
    )
    monkeypatch.setattr(rng, "NOISE_BLOCK_STEPS", 4)
    got = _stream(3, [2], steps, dim, torch.float32)[:, 0].flatten()
    assert torch.equal(got, torch.from_numpy(expected))


def test_skipping_ahead_gives_the_numbers_a_full_reading_gives():
    dim = 7
    full = _stream(1, [0, 1], 3 * noise_block_steps(dim), dim)
    jumped = ChainNoise(1, [0, 1], dim, "cpu", torch.float64)
    late = 2 * noise_block_steps(dim) + 1
    assert torch.equal(jumped.at(late), full[late])
    with pytest.raises(ValueError, match="read in order"):
        jumped.at(0)


def test_steps_returns_a_block_of_consecutive_steps(monkeypatch):
    noise = ChainNoise(2, [0, 3], 9, "cpu", torch.float32)
    reference = _stream(2, [0, 3], 20, 9, torch.float32)
    assert torch.equal(noise.steps(0, 8), reference[:8])
    assert torch.equal(noise.steps(8, 8), reference[8:16])
    # a chunk reaching into the next block, then taken again step by step (a chunk that failed to compile)
    monkeypatch.setattr(rng, "NOISE_BLOCK_STEPS", 5)
    noise, reference = (
        ChainNoise(2, [0, 3], 9, "cpu", torch.float32),
        _stream(2, [0, 3], 20, 9, torch.float32),
    )
    assert torch.equal(noise.steps(3, 4), reference[3:7])
    assert all(torch.equal(noise.at(t), reference[t]) for t in range(3, 12))


def test_float64_runs_draw_float64_numbers_and_reduced_precision_float32_ones():
    assert ChainNoise(0, [0], 4, "cpu", torch.float64).at(0).dtype == torch.float64
    half = ChainNoise(0, [0], 4, "cpu", torch.bfloat16).at(0)
    assert half.dtype == torch.bfloat16
    assert torch.equal(half, ChainNoise(0, [0], 4, "cpu", torch.float32).at(0).to(torch.bfloat16))


def test_noise_is_standard_normal():
    """n = 2e5 numbers: the mean has standard error 1/sqrt(n), the variance sqrt(2/n), the fourth moment
    sqrt(96/n) (E z⁸ − (E z⁴)² = 105 − 9); allow 5 of each."""
    x = _stream(1, [0, 1], 100, 1000).flatten()
    n = x.numel()
    assert abs(x.mean().item()) < 5 / math.sqrt(n)
    assert abs(x.var().item() - 1) < 5 * math.sqrt(2 / n)
    assert abs((x**4).mean().item() - 3) < 5 * math.sqrt(96 / n)
    # the tails: P(|z| > 3) = 0.0027, binomial standard error sqrt(p(1-p)/n); allow 5
    p = 2 * (1 - 0.5 * (1 + math.erf(3 / math.sqrt(2))))
    assert abs((x.abs() > 3).double().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_streams_are_uncorrelated_across_chains_steps_seeds_and_purposes():
    """Pairwise correlations over n = 2e5 numbers each have standard error 1/sqrt(n) under independence; allow 5:
    8 chains of one seed, the same chain under neighbouring seeds, a chain's consecutive steps, and its noise
    against its starting draw."""
    x = _stream(3, range(8), 200, 1000)  # [steps, chains, D]
    per_chain = x.permute(1, 0, 2).reshape(8, -1)
    n = per_chain.shape[1]
    corr = torch.corrcoef(per_chain)
    assert corr[~torch.eye(8, dtype=torch.bool)].abs().max() < 5 / math.sqrt(n)
    seeds = torch.stack([_stream(s, [0], 200, 1000).flatten() for s in (3, 4, 5)])
    corr = torch.corrcoef(seeds)
    assert corr[~torch.eye(3, dtype=torch.bool)].abs().max() < 5 / math.sqrt(n)
    lagged = torch.corrcoef(torch.stack([x[:-1, 0].flatten(), x[1:, 0].flatten()]))[0, 1]
    assert abs(lagged) < 5 / math.sqrt(n)
    start = start_noise(3, [0], 200 * 1000, "cpu", torch.float64)[0]
    assert abs(torch.corrcoef(torch.stack([start, x[:, 0].flatten()]))[0, 1]) < 5 / math.sqrt(n)


def test_start_noise_depends_on_seed_and_chain_only():
    both = start_noise(4, [0, 1], 6, "cpu", torch.float32)
    assert torch.equal(both[1], start_noise(4, [1], 6, "cpu", torch.float32)[0])
    assert not torch.equal(both[0], start_noise(5, [0], 6, "cpu", torch.float32)[0])


def test_distinct_seeds_chains_and_purposes_give_distinct_streams():
    states = {
        tuple(chain_sequence(s, c, k).generate_state(4)) for s in range(10) for c in range(10) for k in (0, 1)
    }
    assert len(states) == 200


def test_resolve_seed():
    assert resolve_seed(12) == 12
    assert isinstance(resolve_seed(None), int)
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="seed must be a non-negative int"):
            resolve_seed(bad)
