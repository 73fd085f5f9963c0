"""Per-chain counter-based noise: Philox4x32-10 known answers, independence of batching, blocks and compilation,
standard normal moments, independence across chains, steps and seeds."""

from __future__ import annotations

import math

import pytest
import torch

from lambdahat.rng import (
    ChainNoise,
    chain_key,
    chain_keys,
    gaussian,
    gaussian_eager,
    noise_block_steps,
    philox4x32,
    resolve_seed,
)

# Known-answer vectors of Philox4x32-10 published with Random123 (kat_vectors): (counter, key, output).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


def _kat_inputs():
    columns = list(zip(*[(*c, *k) for c, k, _ in KAT]))
    return [torch.tensor(col, dtype=torch.int64) for col in columns]


def test_philox_matches_the_published_known_answers():
    out = philox4x32(*_kat_inputs())
    expected = torch.tensor([o for _, _, o in KAT], dtype=torch.int64).T
    assert torch.equal(torch.stack(out), expected)


@pytest.mark.slow
def test_philox_known_answers_hold_when_compiled():
    """The wrapping 64-bit products must survive code generation (inductor's C++ here)."""
    out = torch.compile(philox4x32)(*_kat_inputs())
    expected = torch.tensor([o for _, _, o in KAT], dtype=torch.int64).T
    assert torch.equal(torch.stack(out), expected)


@pytest.mark.parametrize("dim", [3, 50_000])
def test_a_chain_stream_does_not_depend_on_its_batch_or_blocks(dim):
    steps = 2 * noise_block_steps(dim) + 3  # crosses block refills
    together = ChainNoise(7, [0, 1, 2], dim, torch.device("cpu"), torch.float32)
    alone = ChainNoise(7, [1], dim, torch.device("cpu"), torch.float32)
    keys = chain_keys(7, [1])
    for step in range(steps):
        torch.testing.assert_close(together.at(step)[1], alone.at(step)[0], rtol=0, atol=0)
    # random access (a later step first, then an earlier one) gives the same numbers
    torch.testing.assert_close(
        alone.at(steps - 1)[0], gaussian(keys, torch.tensor(steps - 1), dim, torch.float32)[0]
    )
    torch.testing.assert_close(alone.at(1)[0], gaussian(keys, torch.tensor(1), dim, torch.float32)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eager_blocks_equal_the_functional_generator(dtype):
    keys = chain_keys(3, [0, 5, 9])
    block = gaussian_eager(keys, 2**32 - 2, 4, 13, dtype)  # crosses the counter's 32-bit word
    functional = gaussian(keys, torch.arange(2**32 - 2, 2**32 + 2), 13, dtype)
    assert torch.equal(block, functional)


def test_eager_slices_give_the_same_numbers(monkeypatch):
    import lambdahat.rng as rng

    keys = chain_keys(5, [0, 1])
    whole = gaussian_eager(keys, 3, 2, 1001, torch.float32)
    monkeypatch.setattr(rng, "EAGER_SLICE_COUNTERS", 7)  # 251 counters per chain and step: slices of 1
    assert torch.equal(gaussian_eager(keys, 3, 2, 1001, torch.float32), whole)


@pytest.mark.slow
def test_compiled_generator_equals_eager():
    keys = chain_keys(1, [0, 1])
    eager = gaussian(keys, torch.tensor(17), 1001, torch.float32)
    compiled = torch.compile(lambda k, t: gaussian(k, t, 1001, torch.float32))(keys, torch.tensor(17))
    # the integer words are exact; log/sin/cos may round differently in generated code
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_noise_is_standard_normal():
    """n = 2e5 numbers: the mean has standard error 1/sqrt(n), the variance sqrt(2/n), the fourth moment
    sqrt(96/n) (E z⁸ − (E z⁴)² = 105 − 9); allow 5 of each."""
    x = gaussian(chain_keys(1, [0, 1]), torch.arange(100), 1000, torch.float64).flatten()
    n = x.numel()
    assert abs(x.mean().item()) < 5 / math.sqrt(n)
    assert abs(x.var().item() - 1) < 5 * math.sqrt(2 / n)
    assert abs((x**4).mean().item() - 3) < 5 * math.sqrt(96 / n)
    # the tails: P(|z| > 3) = 0.0027, binomial standard error sqrt(p(1-p)/n); allow 5
    p = 2 * (1 - 0.5 * (1 + math.erf(3 / math.sqrt(2))))
    assert abs((x.abs() > 3).double().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_chain_keys_differ_across_chains_and_seeds():
    keys = {chain_key(s, c) for s in range(20) for c in range(20)}
    assert len(keys) == 400  # no two (seed, chain) pairs share a stream


def test_streams_are_uncorrelated_across_chains_steps_and_seeds():
    """Pairwise correlations over n = 2e5 numbers each have standard error 1/sqrt(n) under independence; allow 5:
    8 chains of one seed, the same chain under neighbouring seeds, and a chain's consecutive steps."""
    x = gaussian(chain_keys(3, range(8)), torch.arange(200), 1000, torch.float64)  # [steps, chains, D]
    per_chain = x.permute(1, 0, 2).reshape(8, -1)
    n = per_chain.shape[1]
    corr = torch.corrcoef(per_chain)
    assert corr[~torch.eye(8, dtype=torch.bool)].abs().max() < 5 / math.sqrt(n)
    seeds = torch.stack(
        [gaussian(chain_keys(s, [0]), torch.arange(200), 1000, torch.float64).flatten() for s in (3, 4, 5)]
    )
    corr = torch.corrcoef(seeds)
    assert corr[~torch.eye(3, dtype=torch.bool)].abs().max() < 5 / math.sqrt(n)
    lagged = torch.corrcoef(torch.stack([x[:-1, 0].flatten(), x[1:, 0].flatten()]))[0, 1]
    assert abs(lagged) < 5 / math.sqrt(n)


def test_no_number_repeats_within_or_across_streams():
    """Philox is a bijection of the counter for each key, so the 32-bit words of distinct counters never repeat
    within a key; across keys a repeat of a whole 128-bit block would mean overlapping streams."""
    keys = chain_keys(0, [0, 1]).tolist() + chain_keys(1, [0]).tolist()
    blocks = set()
    j = torch.arange(4096, dtype=torch.int64)
    for k0, k1 in keys:
        for t in range(8):
            words = philox4x32(
                j,
                torch.full_like(j, t),
                torch.zeros_like(j),
                torch.zeros_like(j),
                torch.tensor(k0),
                torch.tensor(k1),
            )
            blocks.update(zip(*(w.tolist() for w in words)))
    assert len(blocks) == 3 * 8 * 4096


def test_resolve_seed():
    assert resolve_seed(12) == 12
    assert isinstance(resolve_seed(None), int)
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="seed must be a non-negative int"):
            resolve_seed(bad)
