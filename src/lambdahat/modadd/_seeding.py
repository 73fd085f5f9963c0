"""Derive independent, stable integer seeds from one master seed and a purpose tag."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, tag: str) -> int:
    """Return a 63-bit seed that depends only on ``seed`` and ``tag``.

    Different tags give unrelated streams from the same master seed (the split, the random labels, the
    initialization and the minibatch order never share a generator), and the value is stable across Python
    sessions (no ``hash()`` randomization).
    """
    digest = hashlib.blake2b(f"{int(seed)}:{tag}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def generator(seed: int, tag: str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(seed, tag)``."""
    return torch.Generator().manual_seed(derive_seed(seed, tag))
