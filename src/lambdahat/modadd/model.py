"""The one-hidden-layer network used for modular addition.

Both operands share one embedding ``E`` (``p × embed_dim``); the hidden layer adds their linear images and
applies an elementwise nonlinearity; the unembedding maps the hidden layer to ``p`` logits, either directly or
through the transpose of ``E`` (tied).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from lambdahat.modadd._seeding import generator
from lambdahat.modadd.params import ACTIVATIONS as _ACTIVATIONS
from lambdahat.modadd.params import Activation

__all__ = ["Activation", "ModAddModel"]


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"ModAddModel: {name} must be a positive integer, got {value!r}; pass e.g. {name}=16."
        )
    return value


class ModAddModel(nn.Module):
    r"""Embedding, one hidden layer and an unembedding, for inputs ``(a, b)`` in ``Z_p²``.

    With the shared embedding ``E ∈ R^{p × embed_dim}`` the network computes

    .. math::

        h(a, b) = \sigma(L_a E_a + L_b E_b), \qquad
        \text{logits}(a, b) = U h + u \ \text{(untied)}, \qquad
        \text{logits}(a, b) = E\,(M h + m) \ \text{(tied)}

    where ``L_a, L_b: R^{embed_dim} -> R^{hidden}`` are affine maps with bias (one shared map when
    ``linear_1_tied``), ``σ`` is GELU, ReLU or ``x ↦ x²``, ``U: R^{hidden} -> R^p`` is affine, and in the tied
    variant ``M: R^{hidden} -> R^{embed_dim}`` is affine and the logits are inner products with the rows
    of ``E``.

    Initialization uses its own generator seeded by ``seed`` (the global RNG is neither read nor changed):
    ``E ~ N(0, 1) · scale_embed``; every affine map has weight and bias ``~ U(-1/√fan_in, 1/√fan_in)``
    (PyTorch's default scale); the weights (not the biases) of ``L_a, L_b`` are then multiplied by
    ``scale_linear_1_factor``.

    Parameters
    ----------
    p : int
        The modulus (number of tokens and of logits).
    embed_dim : int, default 32
        Width of the embedding.
    hidden_size : int, default 128
        Width of the hidden layer.
    activation : {"gelu", "relu", "quad"}, default "gelu"
        Elementwise nonlinearity ``σ``; "quad" is ``σ(x) = x²``.
    tie_unembed : bool, default False
        Unembed through ``Eᵀ`` (hidden -> embed_dim, then inner products with the embedding rows).
    linear_1_tied : bool, default False
        Use one affine map for both operands (``L_a = L_b``).
    scale_embed : float, default 1.0
        Multiplies the initial embedding.
    scale_linear_1_factor : float, default 1.0
        Multiplies the initial weights of the first layer.
    freeze_middle : bool, default False
        Train only the embedding (and the unembedding when untied): the first layer and, when tied, the map
        ``M`` get ``requires_grad=False``.
    seed : int, default 0
        Seed of the initialization.

    Examples
    --------
    >>> model = ModAddModel(7, embed_dim=4, hidden_size=8)
    >>> model(torch.tensor([[1, 2], [3, 6]])).shape
    torch.Size([2, 7])
    """

    def __init__(
        self,
        p: int,
        embed_dim: int = 32,
        hidden_size: int = 128,
        activation: Activation = "gelu",
        tie_unembed: bool = False,
        linear_1_tied: bool = False,
        scale_embed: float = 1.0,
        scale_linear_1_factor: float = 1.0,
        freeze_middle: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, int) or p < 2:
            raise ValueError(
                f"ModAddModel: p must be an integer >= 2, got {p!r}; pass the modulus, e.g. p=53."
            )
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"ModAddModel: activation must be one of {list(_ACTIVATIONS)}, got {activation!r}; "
                "'quad' means x ** 2."
            )
        self.p = p
        self.embed_dim = _positive_int(embed_dim, "embed_dim")
        self.hidden_size = _positive_int(hidden_size, "hidden_size")
        self.activation: Activation = activation
        self.tie_unembed = bool(tie_unembed)
        self.linear_1_tied = bool(linear_1_tied)
        self.freeze_middle = bool(freeze_middle)

        # skip_init: allocate without PyTorch's default init, which would draw from the global RNG
        self.embed = skip_init(nn.Embedding, p, embed_dim)
        self.linear_a = skip_init(nn.Linear, embed_dim, hidden_size)
        self.linear_b = None if self.linear_1_tied else skip_init(nn.Linear, embed_dim, hidden_size)
        self.unembed = skip_init(nn.Linear, hidden_size, embed_dim if self.tie_unembed else p)

        g = generator(seed, "model-init")
        with torch.no_grad():
            self.embed.weight.normal_(0.0, 1.0, generator=g).mul_(scale_embed)
            for layer in (self.linear_a, self.linear_b, self.unembed):
                if layer is None:
                    continue
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=g)
                layer.bias.uniform_(-bound, bound, generator=g)
            for layer in self.first_layer():
                layer.weight.mul_(scale_linear_1_factor)

        if self.freeze_middle:
            middle = [*self.first_layer()]
            if self.tie_unembed:
                middle.append(self.unembed)
            for layer in middle:
                layer.requires_grad_(False)

    def first_layer(self) -> tuple[nn.Linear, ...]:
        """The affine maps of the first layer: ``(L_a, L_b)``, or ``(L,)`` when ``linear_1_tied``."""
        return (self.linear_a,) if self.linear_b is None else (self.linear_a, self.linear_b)

    @property
    def embed_matrix(self) -> torch.Tensor:
        """The embedding ``E``, shape ``[p, embed_dim]`` (row ``t`` embeds token ``t``)."""
        return self.embed.weight

    def _act(self, z: torch.Tensor) -> torch.Tensor:
        if self.activation == "gelu":
            return F.gelu(z)
        if self.activation == "relu":
            return F.relu(z)
        return z * z

    def hidden_from_embeddings(self, e_a: torch.Tensor, e_b: torch.Tensor) -> torch.Tensor:
        """``h = σ(L_a e_a + L_b e_b)`` for embedding vectors ``e_a, e_b`` of shape ``[batch, embed_dim]``."""
        linear_b = self.linear_a if self.linear_b is None else self.linear_b
        return self._act(self.linear_a(e_a) + linear_b(e_b))

    def unembed_hidden(self, h: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, p]`` from hidden activations ``h`` of shape ``[batch, hidden_size]``."""
        out = self.unembed(h)
        return out @ self.embed.weight.T if self.tie_unembed else out

    def logits_from_embeddings(self, e_a: torch.Tensor, e_b: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, p]`` with the operand embeddings given as inputs.

        The unembedding (tied or not) still uses the model's own weights; only the inputs ``E_a, E_b`` are
        replaced. This is what gradients with respect to the operand embeddings (gradient symmetricity) need.
        """
        return self.unembed_hidden(self.hidden_from_embeddings(e_a, e_b))

    def _embed_pairs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 2 or x.shape[-1] != 2:
            raise ValueError(
                f"ModAddModel: expected a LongTensor of pairs with shape [batch, 2], got shape "
                f"{tuple(x.shape)}; "
                "stack the operands as torch.stack([a, b], dim=-1)."
            )
        e = self.embed(x)
        return e[:, 0], e[:, 1]

    def pre_unembed(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden activations ``h(a, b)`` ``[batch, hidden_size]`` for pairs ``x`` of shape ``[batch, 2]``."""
        return self.hidden_from_embeddings(*self._embed_pairs(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, p]`` for pairs ``x`` (LongTensor ``[batch, 2]`` of residues ``0 .. p-1``)."""
        return self.unembed_hidden(self.pre_unembed(x))
