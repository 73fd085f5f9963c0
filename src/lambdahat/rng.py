"""Per-chain random streams.

Chain ``c`` of a run with master seed ``s`` draws all its noise from one ``torch.Generator`` seeded with a value
derived from ``(s, c)`` alone (NumPy's ``SeedSequence`` mixing), so a chain's noise does not depend on which other
chains share its batch or its device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["ChainNoise", "chain_seed", "resolve_seed"]


def resolve_seed(seed: int | None) -> int:
    """The master seed: ``seed`` itself, or a fresh one from the OS when ``None`` (recorded in the result so that
    the run can be repeated)."""
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0] >> 1)
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"estimate_llc: seed must be a non-negative int or None; got {seed!r}.")
    return int(seed)


def chain_seed(seed: int, chain: int) -> int:
    """Seed of chain ``chain``'s generator: a function of ``(seed, chain)`` only."""
    return int(np.random.SeedSequence(seed, spawn_key=(chain,)).generate_state(1, dtype=np.uint64)[0] >> 1)


class ChainNoise:
    """Standard normal noise ``[chains, D]``, one independent stream per chain.

    Parameters
    ----------
    seed:
        Master seed.
    chains:
        Global indices of the chains in this batch.
    dim:
        ``D``, the number of sampled scalars.
    device, dtype:
        Where and in which precision the noise is made.
    """

    def __init__(
        self, seed: int, chains: Sequence[int], dim: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.generators = [
            torch.Generator(device=device).manual_seed(chain_seed(seed, int(c))) for c in chains
        ]
        self.dim, self.device, self.dtype = dim, torch.device(device), dtype

    def draw(self) -> torch.Tensor:
        """One step's noise, shape ``[chains, D]``."""
        out = torch.empty(len(self.generators), self.dim, device=self.device, dtype=self.dtype)
        for row, gen in zip(out, self.generators):
            torch.randn(self.dim, generator=gen, device=self.device, dtype=self.dtype, out=row)
        return out
