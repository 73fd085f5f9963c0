"""Quantities at the anchor ``w*``: the full-data loss ``L0`` and, when asked, the unit full-batch gradient.

``L0`` is computed with exactly the loss function of the draws (same module copy, model mode, precision and
autocast), weighted by what counts in each batch over one pass of the loader:

.. math::

    L_0 = \\frac{\\sum_b c_b\\, L_b(w^*)}{\\sum_b c_b}, \\qquad c_b = \\text{samples (or tokens) that count in } b

which is the mean loss over every sample (token) of the data set. The draws are weighted the same way (see
:class:`~lambdahat.result.LLCResult`), so a run that stayed at ``w*`` would give λ̂ = 0 exactly even when batches
hold different numbers of counted tokens. The first batch is checked on the way, so that a wrong batch format,
targets that do not fit the criterion or a non-scalar loss fail with a message that says what to pass instead.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.func import grad_and_value

from .data import DataFeed
from .functional import FunctionalModel

__all__ = ["Anchor", "anchor_loss_and_direction", "anchor_pass"]


class Anchor(NamedTuple):
    """What one pass at ``w*`` gives: ``init_loss`` (L0), the unit gradient ``direction`` (or None), the number
    of ``batches`` in a pass and the samples (tokens) that ``counted`` in it."""

    init_loss: float
    direction: torch.Tensor | None
    batches: int
    counted: float


def anchor_loss_and_direction(
    fm: FunctionalModel, feed: DataFeed, with_direction: bool
) -> tuple[float, torch.Tensor | None]:
    """``L0`` and, if ``with_direction``, ``u = ∇L_n(w*) / ||∇L_n(w*)||`` (see :func:`anchor_pass`)."""
    anchor = anchor_pass(fm, feed, with_direction)
    return anchor.init_loss, anchor.direction


def anchor_pass(fm: FunctionalModel, feed: DataFeed, with_direction: bool) -> Anchor:
    """One pass over the data at ``w*``: ``L0`` and, if ``with_direction``, ``u = ∇L_n(w*) / ||∇L_n(w*)||`` (full
    batch) for ``restrict_to_orth_grad``; ``u`` is a ``[D]`` tensor on the functional model's device."""
    total = torch.zeros((), dtype=torch.float64, device=fm.device)
    count = torch.zeros((), dtype=torch.float64, device=fm.device)
    grad_sum = torch.zeros(fm.layout.dim, dtype=torch.float64, device=fm.device) if with_direction else None
    value_and_grad = grad_and_value(fm.loss_and_count, has_aux=True)
    batches = 0
    for i, (x, y) in enumerate(feed.one_pass()):
        batches += 1
        if i == 0:
            fm.check(x, y)
        if with_direction:
            g, (loss, m) = value_and_grad(fm.w_star, fm.frozen, fm.buffers, x, y)
            grad_sum += m.double() * g.double()
        else:
            with torch.no_grad():
                loss, m = fm.loss_and_count(fm.w_star, fm.frozen, fm.buffers, x, y)
        total += m.double() * loss.double()
        count += m.double()
    if not count > 0:
        raise ValueError(
            "prepare: no sample of the data counts towards the loss (every target is the ignore index -100, "
            "or every mask is 0); pass data with targets that count."
        )
    init_loss, counted = float(total / count), float(count)
    if not with_direction:
        return Anchor(init_loss, None, batches, counted)
    norm = grad_sum.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError(
            "prepare: restrict_to_orth_grad=True needs a non-zero, finite full-batch gradient at w*; "
            f"its norm is {float(norm)}. Use restrict_to_orth_grad=False at an exact critical point."
        )
    return Anchor(init_loss, (grad_sum / norm).to(fm.param_dtype), batches, counted)
