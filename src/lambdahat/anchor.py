"""Quantities at the anchor ``w*``: the full-data loss ``L0`` and, when asked, the unit full-batch gradient.

``L0`` is computed with exactly the loss function of the draws (same module copy, eval mode, precision and
autocast), as the size-weighted mean of the batch losses over one pass of the loader:
``L0 = Σ_b |b| L_b(w*) / Σ_b |b|``. The first batch is checked on the way, so that a wrong batch format, targets
that do not fit the criterion or a non-scalar loss fail with a message that says what to pass instead.
"""

from __future__ import annotations

import torch
from torch.func import grad_and_value

from .data import DataFeed
from .functional import FunctionalModel

__all__ = ["anchor_loss_and_direction", "batch_length"]


def batch_length(x, y) -> int:
    """Number of samples in a batch (leading dimension of the targets, or of the inputs)."""
    for obj in (y, x):
        if isinstance(obj, torch.Tensor) and obj.dim() > 0:
            return obj.shape[0]
        if isinstance(obj, tuple | list) and obj and isinstance(obj[0], torch.Tensor):
            return obj[0].shape[0]
        if isinstance(obj, dict) and obj:
            first = next(iter(obj.values()))
            if isinstance(first, torch.Tensor):
                return first.shape[0]
    return 1


def _describe(obj) -> str:
    if isinstance(obj, torch.Tensor):
        return f"tensor of shape {tuple(obj.shape)} and dtype {obj.dtype}"
    return type(obj).__name__


def _checked_loss(fm: FunctionalModel, x, y) -> torch.Tensor:
    try:
        outputs = fm.outputs(fm.w_star, x)
    except Exception as exc:
        raise ValueError(
            f"estimate_llc: the model failed on the inputs unpacked from the first batch ({_describe(x)}): "
            f"{type(exc).__name__}: {exc}. Check unpack_fn: it must return (inputs, targets)."
        ) from exc
    try:
        loss = fm.criterion_fn(outputs, y)
    except Exception as exc:
        raise ValueError(
            f"estimate_llc: criterion_fn failed on outputs ({_describe(outputs)}) and targets ({_describe(y)}): "
            f"{type(exc).__name__}: {exc}. Pass targets that fit the criterion (e.g. class indices of shape "
            "[batch] for F.cross_entropy, or float targets of the outputs' shape for F.mse_loss), or a "
            "criterion_fn that fits the targets."
        ) from exc
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise ValueError(
            f"estimate_llc: criterion_fn must return a scalar mean loss, got {_describe(loss)}; use "
            "reduction='mean' (the default of torch.nn.functional losses) or reduce it yourself."
        )
    return loss


def anchor_loss_and_direction(
    fm: FunctionalModel, feed: DataFeed, with_direction: bool
) -> tuple[float, torch.Tensor | None]:
    """``L0`` and, if ``with_direction``, ``u = ∇L_n(w*) / ||∇L_n(w*)||`` (full batch) for
    ``restrict_to_orth_grad``.

    Returns
    -------
    L0 : float; u : ``[D]`` tensor on the functional model's device, or None.
    """
    total, count = torch.zeros((), dtype=torch.float64, device=fm.device), 0
    grad_sum = torch.zeros(fm.layout.dim, dtype=torch.float64, device=fm.device) if with_direction else None
    value_and_grad = grad_and_value(fm.loss)
    for i, (x, y) in enumerate(feed.one_pass()):
        if i == 0:
            with torch.no_grad():
                _checked_loss(fm, x, y)
        m = batch_length(x, y)
        if with_direction:
            g, loss = value_and_grad(fm.w_star, fm.frozen, fm.buffers, x, y)
            grad_sum += m * g.double()
        else:
            with torch.no_grad():
                loss = fm.loss(fm.w_star, fm.frozen, fm.buffers, x, y)
        total += m * loss.double()
        count += m
    init_loss = float(total / count)
    if not with_direction:
        return init_loss, None
    norm = grad_sum.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError(
            "estimate_llc: restrict_to_orth_grad=True needs a non-zero, finite full-batch gradient at w*; "
            f"its norm is {float(norm)}. Use restrict_to_orth_grad=False at an exact critical point."
        )
    return init_loss, (grad_sum / norm).to(fm.param_dtype)
