"""nβ for language models: what ``n`` is when the loss is a mean over tokens.

With the LM losses of :mod:`lambdahat.lm.losses`, the sampled loss is the mean over the ``N`` counted tokens of
the data set, ``L_n(w) = (1/N) Σ_{s,t} ℓ_{s,t}(w)``. The tempered posterior is

.. math::

    p(w) \\propto \\exp\\big(-n\\beta\\, L_n(w) - \\tfrac{\\gamma}{2}\\|w - w^*\\|^2\\big), \\qquad
    \\hat\\lambda = n\\beta\\,\\big(\\mathbb E_p[L_n(w)] - L_n(w^*)\\big).

Because a sequence's likelihood factorizes over its tokens, ``−log p_w(data) = Σ_{s,t} ℓ_{s,t}(w) = N · L_n(w)``
exactly, without any independence assumption: ``nβ L_n`` is the data set's negative log-likelihood at inverse
temperature β **when n = N, the number of counted tokens**. Watanabe's WBIC temperature β = 1/log n then gives
``nβ = N / log N``. This is the default here (``unit="tokens"``).

``unit="sequences"`` takes the sequences as the samples, ``n = S`` and ``nβ = S / log S``: the view that tokens
inside a sequence are too dependent to count as separate observations. It is about ``T`` times smaller for
sequences of ``T`` counted tokens, and λ̂ scales with nβ to first order, so **always report which n was used**
(:func:`nbeta_for_tokens` returns a float that carries ``.n`` and ``.unit``).

What others do: devinterp's ``default_nbeta`` uses the minibatch size in *sequences* (``b / log b``, which the
REFERENCE asks not to copy: it makes the posterior depend on a memory setting); published LM studies mostly set nβ
directly as a hyperparameter. We could not check every paper's convention offline, so the choice above is ours
and rests on the likelihood argument. Note that ``nbeta=None`` in :class:`lambdahat.LLCConfig` uses
``len(loader.dataset)``, i.e. sequences for a data set of sequences: for LMs pass ``nbeta=`` explicitly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import torch

from ..problem import nbeta_from_effective_size
from .losses import IGNORE_INDEX

__all__ = ["NBeta", "TokenCount", "count_tokens", "nbeta_for_tokens"]

UNITS = ("tokens", "sequences")


class TokenCount(NamedTuple):
    """Sequences and counted tokens of one pass over a loader."""

    sequences: int
    tokens: int


class NBeta(float):
    """nβ = n / log n as a float (pass it as ``nbeta=``), with the ``n`` it came from and its ``unit``."""

    n: int
    unit: str

    def __new__(cls, n: int, unit: str) -> NBeta:
        value = super().__new__(cls, nbeta_from_effective_size(n))
        value.n, value.unit = int(n), unit
        return value

    def __repr__(self) -> str:
        return f"NBeta({float(self)!r}, n={self.n}, unit={self.unit!r})"


def _batch_tokens(batch: Any, loss: str) -> tuple[int, int]:
    if isinstance(batch, torch.Tensor):
        ids, mask, labels = batch, None, None
    elif isinstance(batch, Mapping) and "input_ids" in batch:
        ids, mask, labels = batch["input_ids"], batch.get("attention_mask"), batch.get("labels")
    else:
        raise ValueError(
            "lambdahat.lm.count_tokens: expected batches that are dicts with 'input_ids' (optionally "
            f"'attention_mask', 'labels') or [batch, tokens] tensors; got {type(batch).__name__}."
        )
    sequences = int(ids.shape[0])
    if loss == "labels":
        if labels is None:
            raise ValueError("lambdahat.lm.count_tokens: loss='labels' needs 'labels' in every batch.")
        return sequences, int((labels != IGNORE_INDEX).sum())
    if labels is not None:
        return sequences, int((labels[:, 1:] != IGNORE_INDEX).sum())
    if mask is None:
        return sequences, sequences * max(int(ids.shape[1]) - 1, 0)
    return sequences, int(((mask[:, 1:] != 0) & (mask[:, :-1] != 0)).sum())


def count_tokens(loader: Iterable, loss: str = "next_token") -> TokenCount:
    """Sequences and counted tokens in one pass over ``loader``, as the LM losses count them.

    Parameters
    ----------
    loader:
        Batches as :func:`~lambdahat.lm.next_token_loss` takes them.
    loss:
        ``"next_token"`` (default): the tokens that :func:`~lambdahat.lm.next_token_loss` counts (shifted labels
        not ``-100``, else next tokens inside the attention mask); ``"labels"``: labels not ``-100`` without a
        shift (:func:`~lambdahat.lm.masked_lm_loss`).

    Examples
    --------
    >>> batch = {"input_ids": torch.ones(2, 5, dtype=torch.long),
    ...          "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])}
    >>> count_tokens([batch, batch])
    TokenCount(sequences=4, tokens=12)
    """
    if loss not in ("next_token", "labels"):
        raise ValueError(f"lambdahat.lm.count_tokens: loss must be 'next_token' or 'labels'; got {loss!r}.")
    sequences = tokens = 0
    for batch in loader:
        s, t = _batch_tokens(batch, loss)
        sequences, tokens = sequences + s, tokens + t
    return TokenCount(sequences, tokens)


def nbeta_for_tokens(
    loader_or_count: Iterable | int, unit: str = "tokens", *, loss: str = "next_token"
) -> NBeta:
    """nβ = n / log n for a language-model data set, with n counted in tokens (default) or sequences.

    See the module docstring for the argument behind the default: with a loss that is a mean over tokens,
    ``nβ L_n`` is the data set's negative log-likelihood at inverse temperature β exactly when ``n`` is the number
    of counted tokens.

    Parameters
    ----------
    loader_or_count:
        The loader (one pass is made to count, see :func:`count_tokens`) or ``n`` itself, in ``unit``.
    unit:
        ``"tokens"`` (default): ``n`` = counted tokens of the whole data set; ``"sequences"``: ``n`` = sequences.
    loss:
        How tokens are counted from a loader: ``"next_token"`` or ``"labels"`` (see :func:`count_tokens`).

    Returns
    -------
    NBeta
        A float (pass it as ``nbeta=``) with ``.n`` and ``.unit``: record them with the result.

    Examples
    --------
    >>> nb = nbeta_for_tokens(10_000)
    >>> round(nb, 2), nb.n, nb.unit
    (1085.74, 10000, 'tokens')
    """
    if unit not in UNITS:
        raise ValueError(
            f"lambdahat.lm.nbeta_for_tokens: unit must be 'tokens' or 'sequences'; got {unit!r}."
        )
    if isinstance(loader_or_count, int) and not isinstance(loader_or_count, bool):
        n = loader_or_count
    else:
        counted = count_tokens(loader_or_count, loss)
        n = counted.tokens if unit == "tokens" else counted.sequences
    return NBeta(n, unit)
