"""The model as a pure function of a flat parameter vector.

The sampler works on a flat float tensor ``theta`` of shape ``[chains, D]`` that holds the *sampled* parameters of
every chain. :class:`FunctionalModel` turns the caller's ``nn.Module`` into the pure function

.. math::

    \\ell(\\theta; x, y) = \\mathrm{criterion}\\big(f(x; \\theta, \\theta_{\\mathrm{frozen}}, b), y\\big)

where :math:`\\theta_{\\mathrm{frozen}}` are parameters held at :math:`w^*` (restricted LLC) and :math:`b` the
buffers. The forward runs under autocast when a reduced precision is asked for, *inside* the function that
``vmap``/``grad`` transform, so that the draws and the initial loss :math:`L_0` use exactly the same computation.

The caller's module is never touched: the functional model works on a private deep copy put in eval mode.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["FunctionalModel", "ParamLayout", "select_parameters"]

REDUCED_PRECISION = (torch.bfloat16, torch.float16)
FULL_PRECISION = (torch.float32, torch.float64)


@dataclass(frozen=True)
class ParamLayout:
    """Where each sampled parameter lives in the flat vector ``theta``.

    Attributes
    ----------
    names, shapes, numels:
        Per sampled parameter, in the order of ``model.named_parameters()``.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    numels: tuple[int, ...]

    @property
    def dim(self) -> int:
        """Total number of sampled scalars ``D``."""
        return sum(self.numels)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of a flat ``[..., D]`` vector as named parameter tensors (one ``split``, whose backward is a
        single ``cat``)."""
        lead = theta.shape[:-1]
        pieces = theta.split(self.numels, dim=-1)
        return {n: p.reshape(*lead, *s) for n, p, s in zip(self.names, pieces, self.shapes)}

    def flatten(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate named tensors (same names as the layout) into one flat vector."""
        return torch.cat([tensors[n].reshape(-1) for n in self.names])


def _matches(name: str, pattern: str) -> bool:
    from fnmatch import fnmatchcase

    return name == pattern or fnmatchcase(name, pattern) or name.startswith(pattern + ".")


def select_parameters(
    model: nn.Module, params: str | Sequence[str] | dict[str, bool] | Callable[[str], bool] | None
) -> list[str]:
    """Names of the parameters to sample.

    Parameters
    ----------
    model:
        The module.
    params:
        ``None`` (all parameters that require grad, or all parameters when none does), a name, a glob pattern
        (``"blocks.*.attn.*"``) or a module prefix (``"encoder"``), a list of those, a ``{name: bool}`` mask, or a
        predicate ``name -> bool``.

    Returns
    -------
    list of str
        Selected names in ``named_parameters()`` order.

    Raises
    ------
    ValueError
        If a pattern matches nothing or the selection is empty; the message lists the available names.
    """
    all_names = [n for n, _ in model.named_parameters()]
    if not all_names:
        raise ValueError(
            "estimate_llc: the model has no parameters; the LLC is defined over a model's parameters, "
            "so pass a model with at least one nn.Parameter."
        )
    if params is None:
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        return trainable or all_names
    if callable(params) and not isinstance(params, str | dict):
        chosen = [n for n in all_names if params(n)]
    elif isinstance(params, dict):
        unknown = sorted(set(params) - set(all_names))
        if unknown:
            raise ValueError(
                f"estimate_llc: params mask names {unknown} that the model does not have; "
                f"its parameters are {all_names}."
            )
        chosen = [n for n in all_names if params.get(n, False)]
    else:
        patterns = [params] if isinstance(params, str) else list(params)
        chosen = []
        for pattern in patterns:
            hits = [n for n in all_names if _matches(n, pattern)]
            if not hits:
                raise ValueError(
                    f"estimate_llc: params pattern {pattern!r} matches no parameter; "
                    f"the model's parameters are {all_names}."
                )
            chosen.extend(h for h in hits if h not in chosen)
        chosen = [n for n in all_names if n in chosen]
    if not chosen:
        raise ValueError(
            f"estimate_llc: params selects no parameter; the model's parameters are {all_names}."
        )
    return chosen


def _unwrap_outputs(out):
    logits = getattr(out, "logits", None)
    return out if logits is None else logits


def _norms_in_float32(module: nn.Module, device_type: str) -> None:
    """Run the BatchNorm layers of a private copy in float32 under autocast (their statistics are float32, and the
    vmapped batch-norm rule rejects mixed precision); the surrounding layers stay in reduced precision."""
    for sub in module.modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            original = sub.forward

            def forward(x, _original=original):
                with torch.autocast(device_type=device_type, enabled=False):
                    return _original(x.float())

            sub.forward = forward


class FunctionalModel:
    """A private, eval-mode copy of a module, callable as a pure function of flat sampled parameters.

    Parameters
    ----------
    model:
        The caller's module (copied, never modified).
    criterion_fn:
        ``(outputs, targets) -> scalar`` mean loss. Outputs with a ``.logits`` attribute are unwrapped.
    device:
        Where the copy and its tensors live.
    dtype:
        ``torch.float32`` or ``torch.float64``: parameters and arithmetic in that precision.
        ``torch.bfloat16`` or ``torch.float16``: parameters stay float32 and the forward runs under autocast.
    sampled:
        Names of the sampled parameters (see :func:`select_parameters`); the rest are held at ``w*``.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion_fn: Callable,
        device: torch.device,
        dtype: torch.dtype,
        sampled: Sequence[str],
    ) -> None:
        if dtype not in REDUCED_PRECISION + FULL_PRECISION:
            raise ValueError(
                f"LLCEstimator: dtype must be one of torch.float32, torch.float64, torch.bfloat16, "
                f"torch.float16; got {dtype}."
            )
        self.device = torch.device(device)
        self.autocast_dtype = dtype if dtype in REDUCED_PRECISION else None
        self.param_dtype = dtype if dtype in FULL_PRECISION else torch.float32
        self.criterion_fn = criterion_fn
        self.module = copy.deepcopy(model).to(self.device).eval()
        named = dict(self.module.named_parameters())
        sampled = list(sampled)
        self.layout = ParamLayout(
            names=tuple(sampled),
            shapes=tuple(named[n].shape for n in sampled),
            numels=tuple(named[n].numel() for n in sampled),
        )
        with torch.no_grad():
            self.w_star = self.layout.flatten(
                {n: named[n].detach().to(self.param_dtype) for n in sampled}
            ).contiguous()
            self.frozen = {
                n: p.detach().to(self.param_dtype if p.is_floating_point() else p.dtype)
                for n, p in named.items()
                if n not in set(sampled)
            }
            self.buffers = {
                n: b.detach().to(self.param_dtype) if b.is_floating_point() else b.detach()
                for n, b in self.module.named_buffers()
            }
        for p in self.module.parameters():
            p.requires_grad_(False)
        if self.autocast_dtype is not None:
            _norms_in_float32(self.module, self.device.type)

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def loss(self, theta: torch.Tensor, frozen: dict, buffers: dict, x, y) -> torch.Tensor:
        """Mean minibatch loss at the flat sampled parameters ``theta`` (shape ``[D]``).

        ``frozen`` and ``buffers`` are arguments (not attributes) so that one compiled function serves later
        calls with other weights."""
        params = self.layout.unflatten(theta)
        with self._autocast():
            out = functional_call(self.module, (params, frozen, buffers), (x,))
            loss = self.criterion_fn(_unwrap_outputs(out), y)
        return loss.to(self.param_dtype)

    def outputs(self, theta: torch.Tensor, x) -> torch.Tensor:
        """Model outputs at ``theta`` (used for input checks)."""
        params = self.layout.unflatten(theta)
        with self._autocast():
            return _unwrap_outputs(functional_call(self.module, (params, self.frozen, self.buffers), (x,)))
