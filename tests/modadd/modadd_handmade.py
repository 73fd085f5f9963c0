"""Hand-built modular-addition circuits whose pizza/clock nature is known by construction.

Both embed token t on the circle of frequency k: E[t] = r_t (cos(w t), sin(w t)), w = 2πk/p, and expose the
interface of ``lambdahat.modadd.circuits.CircuitModel``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _circle(p: int, k: int, radii: torch.Tensor | None) -> torch.Tensor:
    t = torch.arange(p, dtype=torch.float64)
    w = 2 * math.pi * k / p
    E = torch.stack([torch.cos(w * t), torch.sin(w * t)], dim=1)
    return E if radii is None else E * radii[:, None]


class _Handmade(nn.Module):
    def __init__(self, p: int, k: int, radii: torch.Tensor | None = None) -> None:
        super().__init__()
        self.p, self.k = p, k
        self.register_buffer("E", _circle(p, k, radii))

    @property
    def embed_matrix(self) -> torch.Tensor:
        return self.E

    def pre_unembed(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden_from_embeddings(self.E[x[:, 0]], self.E[x[:, 1]])

    def logits_from_embeddings(self, e_a: torch.Tensor, e_b: torch.Tensor) -> torch.Tensor:
        return self.hidden_from_embeddings(e_a, e_b) @ self.U

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pre_unembed(x) @ self.U


class HandClock(_Handmade):
    """Clock: h = (cos·cos − sin·sin, sin·cos + cos·sin) = r_a r_b (cos w(a+b), sin w(a+b)).

    logit_c = h · (cos wc, sin wc) = r_a r_b cos(w(a+b−c)); the correct logit r_a r_b does not depend on a−b.
    """

    def __init__(self, p: int, k: int = 1, radii: torch.Tensor | None = None) -> None:
        super().__init__(p, k, radii)
        c = torch.arange(p, dtype=torch.float64) * (2 * math.pi * k / p)
        self.register_buffer("U", torch.stack([torch.cos(c), torch.sin(c)], dim=0))

    def hidden_from_embeddings(self, e_a: torch.Tensor, e_b: torch.Tensor) -> torch.Tensor:
        ca, sa, cb, sb = e_a[:, 0], e_a[:, 1], e_b[:, 0], e_b[:, 1]
        return torch.stack([ca * cb - sa * sb, sa * cb + ca * sb], dim=1)


class HandPizza(_Handmade):
    """Pizza: z = E_a + E_b, neurons h_j = (u_j · z)² with u_j at angles φ_j = πj/n, j < n.

    With U[j, c] = (2/n) cos(wc − 2φ_j): logit_c = |z|²/2 · cos(w(a+b) − wc) = (1 + cos w(a−b)) cos(w(a+b−c)),
    so the correct logit 1 + cos(w(a−b)) is a function of the distance a−b alone.
    """

    def __init__(self, p: int, k: int = 1, n_neurons: int = 6, radii: torch.Tensor | None = None) -> None:
        super().__init__(p, k, radii)
        phi = torch.arange(n_neurons, dtype=torch.float64) * (math.pi / n_neurons)
        self.register_buffer("dirs", torch.stack([torch.cos(phi), torch.sin(phi)], dim=1))  # [n, 2]
        c = torch.arange(p, dtype=torch.float64) * (2 * math.pi * k / p)
        self.register_buffer("U", (2.0 / n_neurons) * torch.cos(c[None, :] - 2 * phi[:, None]))

    def hidden_from_embeddings(self, e_a: torch.Tensor, e_b: torch.Tensor) -> torch.Tensor:
        return ((e_a + e_b) @ self.dirs.T) ** 2
