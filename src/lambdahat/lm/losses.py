"""Per-token losses of language models, in the ``loss_fn(model, batch)`` form of :func:`lambdahat.prepare`.

A batch is a dict of tokenized tensors (``input_ids`` ``[B, T]``, optional ``attention_mask`` and ``labels``; any
other key such as ``token_type_ids`` is passed to the model as a keyword argument) or a bare ``[B, T]`` tensor of
token ids. Each function returns ``(losses, mask)``: the per-token (per-sequence) losses and the 0/1 mask of those
that count. The core then forms the batch loss ``Σ m ℓ / Σ m`` and weights every batch by its counted tokens, in L0
and in every draw alike, so that over a pass

.. math::

    L_n(w) = \\frac{1}{N} \\sum_{s} \\sum_{t} m_{s,t}\\, \\ell_{s,t}(w), \\qquad N = \\sum_{s,t} m_{s,t},
    \\qquad \\ell_{s,t}(w) = -\\log p_w(y_{s,t} \\mid x_{s, \\le t})

is the mean over **every counted token of the whole data set** (not a mean of per-batch or per-sequence means).

The model is called with keyword arguments (``model(input_ids=..., attention_mask=..., position_ids=...)``,
Hugging Face style); a model that does not take ``input_ids`` (TransformerLens ``HookedTransformer``) is called as
``model(input_ids, attention_mask=...)``, and TransformerLens derives its positions from the mask itself. Outputs
with ``.logits`` are unwrapped. The functions need only torch: any module with one of these call signatures that
returns logits works.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "IGNORE_INDEX",
    "masked_lm_loss",
    "next_token_loss",
    "position_ids_from_attention_mask",
    "sequence_classification_loss",
]

#: Labels equal to this do not count (the ``ignore_index`` of Hugging Face losses and ``F.cross_entropy``).
IGNORE_INDEX = -100


def position_ids_from_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only attended tokens: ``cumsum(mask) - 1``, clamped at 0 on the padding.

    With left padding the first real token gets position 0, as it would without padding, so the logits of the
    real tokens do not depend on how much padding precedes them (Hugging Face models otherwise number positions
    from the first column, padding included).

    Examples
    --------
    >>> position_ids_from_attention_mask(torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])).tolist()
    [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]]
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _split(batch: Any, who: str) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return {"input_ids": batch}, None
    if isinstance(batch, Mapping) and "input_ids" in batch:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return inputs, batch.get("labels")
    described = f"a dict with keys {list(batch)}" if isinstance(batch, Mapping) else type(batch).__name__
    raise ValueError(
        f"lambdahat.lm.{who}: expected a batch that is a dict with 'input_ids' (and optionally 'attention_mask', "
        f"'labels') or a [batch, tokens] tensor of token ids; got {described}. Use a collate_fn that returns "
        "such dicts (a Hugging Face tokenizer's output does)."
    )


@functools.cache
def _forward_parameters(cls: type) -> frozenset[str] | None:
    """Names the ``forward`` of a module class accepts (``None``: it takes ``**kwargs``, so anything)."""
    try:
        params = inspect.signature(cls.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)


def _logits(model: Callable, inputs: dict[str, torch.Tensor], positions: bool) -> torch.Tensor:
    """Call the model on a batch: Hugging Face models by keyword (``input_ids=...``), TransformerLens ones with the
    ids as the first argument (their ``forward(input, ...)``), decided once per module class from its signature
    (the callable that :func:`lambdahat.prepare` passes carries the module as ``.module``)."""
    kwargs = dict(inputs)
    module = getattr(model, "module", model)
    accepted = _forward_parameters(type(module)) if isinstance(module, torch.nn.Module) else None
    if positions and "attention_mask" in kwargs and "position_ids" not in kwargs:
        if accepted is None or "position_ids" in accepted:
            kwargs["position_ids"] = position_ids_from_attention_mask(kwargs["attention_mask"])
    if (
        accepted is not None and "input_ids" not in accepted
    ):  # TransformerLens: forward(input, attention_mask=...)
        out = model(kwargs.pop("input_ids"), **kwargs)
    else:
        out = model(**kwargs)
    logits = getattr(out, "logits", out)
    if not isinstance(logits, torch.Tensor):
        raise ValueError(
            f"lambdahat.lm: the model returned {type(out).__name__} without .logits; the LM losses need logits "
            "(a tensor, or outputs with a .logits attribute)."
        )
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()  # the loss in float32 under autocast, as Hugging Face computes it
    return logits


def _token_losses(logits: torch.Tensor, targets: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    safe = torch.where(counted, targets, torch.zeros_like(targets))
    losses = F.cross_entropy(logits.transpose(1, 2), safe, reduction="none")
    return torch.where(counted, losses, torch.zeros_like(losses))


def next_token_loss(model: Callable, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token next-token loss of a causal language model: ``ℓ_{s,t} = −log p(x_{s,t+1} | x_{s,≤t})``.

    Logits at position ``t`` predict the token at ``t + 1`` (the shift is done here, as in Hugging Face's own
    loss). What counts:

    * with ``labels`` in the batch: exactly the shifted labels that are not ``-100``, as in the model's own
      ``.loss`` (padding must carry ``-100`` there, as Hugging Face's data collators do);
    * without ``labels``: the next tokens whose ``attention_mask`` is 1 (and whose context is real), so padding on
      either side never counts; without a mask, every next token.

    When the batch has an ``attention_mask`` and no ``position_ids``, positions are derived from the mask
    (:func:`position_ids_from_attention_mask`), so left and right padding give the same logits on the real tokens.

    **Weighting.** L0 and every draw are token-weighted means over the whole data set (see the module docstring):
    the batch loss is the mean over its counted tokens and batches are weighted by their counts. For one batch this
    is exactly Hugging Face's ``model(**batch, labels=labels).loss``; over several batches it is the mean over all
    counted tokens, which differs from the average of the per-batch ``.loss`` values when batches hold different
    numbers of tokens.

    Parameters
    ----------
    model:
        The model as a callable (what :func:`lambdahat.prepare` passes to a ``loss_fn``).
    batch:
        A dict with ``input_ids`` ``[B, T]``, optional ``attention_mask``, ``labels`` and other model inputs, or a
        ``[B, T]`` tensor of token ids.

    Returns
    -------
    (losses, mask):
        ``[B, T - 1]`` per-token losses (0 where they do not count) and the boolean mask of those that count.
    """
    inputs, labels = _split(batch, "next_token_loss")
    ids = inputs["input_ids"]
    if ids.dim() != 2:
        raise ValueError(
            f"lambdahat.lm.next_token_loss: input_ids must be [batch, tokens]; got shape {tuple(ids.shape)}."
        )
    logits = _logits(model, inputs, positions=True)
    if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(ids.shape):
        raise ValueError(
            f"lambdahat.lm.next_token_loss: expected logits [batch, tokens, vocab] for input_ids of shape "
            f"{tuple(ids.shape)}; got {tuple(logits.shape)}. For sequence classification use "
            "sequence_classification_loss, for masked language models masked_lm_loss."
        )
    if labels is not None:
        targets = labels[:, 1:]
        counted = targets != IGNORE_INDEX
    else:
        targets = ids[:, 1:]
        mask = inputs.get("attention_mask")
        if mask is None:
            counted = torch.ones_like(targets, dtype=torch.bool)
        else:
            counted = (mask[:, 1:] != 0) & (mask[:, :-1] != 0)
    return _token_losses(logits[:, :-1], targets, counted), counted


def masked_lm_loss(model: Callable, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss of a masked language model (or token classifier): cross-entropy of ``.logits``
    ``[B, T, V]`` against ``labels`` ``[B, T]`` at the same position (no shift); labels ``-100`` do not count.

    For one batch the token-weighted mean equals the model's own ``.loss`` given the same labels; over the data
    set L0 and the draws are means over all counted tokens (see :func:`next_token_loss`).

    Returns
    -------
    (losses, mask):
        ``[B, T]`` per-token losses (0 where they do not count) and the mask of counted tokens.
    """
    inputs, labels = _split(batch, "masked_lm_loss")
    if labels is None:
        raise ValueError(
            "lambdahat.lm.masked_lm_loss: the batch needs 'labels' (the original ids at masked positions, -100 "
            "elsewhere), e.g. from transformers.DataCollatorForLanguageModeling."
        )
    logits = _logits(model, inputs, positions=False)
    if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(labels.shape):
        raise ValueError(
            f"lambdahat.lm.masked_lm_loss: expected logits [batch, tokens, vocab] matching labels "
            f"{tuple(labels.shape)}; got {tuple(logits.shape)}."
        )
    counted = labels != IGNORE_INDEX
    return _token_losses(logits, labels, counted), counted


def sequence_classification_loss(model: Callable, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence loss of a sequence classifier, as Hugging Face's ``...ForSequenceClassification`` computes
    it: integer ``labels`` ``[B]``: cross-entropy of ``.logits`` ``[B, C]`` (labels ``-100`` do not count); float
    labels ``[B]`` with one logit: squared error (regression); float labels ``[B, C]``: binary cross-entropy
    averaged over the ``C`` labels (multi-label). L0 and the draws are means over sequences.

    Returns
    -------
    (losses, mask):
        ``[B]`` per-sequence losses and the mask of sequences that count.
    """
    inputs, labels = _split(batch, "sequence_classification_loss")
    if labels is None:
        raise ValueError("lambdahat.lm.sequence_classification_loss: the batch needs 'labels' [batch].")
    logits = _logits(model, inputs, positions=False)
    if logits.dim() != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"lambdahat.lm.sequence_classification_loss: expected logits [batch, classes] for labels "
            f"{tuple(labels.shape)}; got {tuple(logits.shape)}."
        )
    if not labels.is_floating_point():
        counted = labels != IGNORE_INDEX
        safe = torch.where(counted, labels, torch.zeros_like(labels))
        losses = F.cross_entropy(logits, safe, reduction="none")
        return torch.where(counted, losses, torch.zeros_like(losses)), counted
    counted = torch.ones(labels.shape[0], dtype=torch.bool, device=labels.device)
    if labels.dim() == 1 and logits.shape[1] == 1:
        return (logits[:, 0] - labels.to(logits.dtype)) ** 2, counted
    losses = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
    return losses.mean(-1), counted
