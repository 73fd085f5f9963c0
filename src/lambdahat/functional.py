"""The model as a pure function of a flat parameter vector.

The sampler works on a flat float tensor ``theta`` of shape ``[chains, D]`` that holds the *sampled* scalars of
every chain. :class:`FunctionalModel` turns the caller's ``nn.Module`` into the pure function

.. math::

    L_B(\\theta) = \\frac{\\sum_{i \\in B} m_i\\, \\ell_i(\\theta)}{\\sum_{i \\in B} m_i}, \\qquad
    \\ell_i(\\theta) = \\ell\\big(f(x_i; \\theta, \\theta_{\\mathrm{frozen}}, b), y_i\\big)

where :math:`\\theta_{\\mathrm{frozen}}` are the parameters (or elements of parameters) held at :math:`w^*`,
:math:`b` the buffers and :math:`m_i \\in \\{0, 1\\}` says whether a sample (or token) counts. How a batch becomes
this loss is an :class:`Objective`: either ``criterion_fn(outputs, targets)`` (a mean; targets equal to the ignore
index -100 do not count) after ``unpack_fn(batch) -> (inputs, targets)``, or ``loss_fn(model, batch)`` returning
per-sample losses ``[B]`` (or per-token ``[B, T]``, optionally with a 0/1 mask of the same shape). Inputs that are a
mapping are passed to the model as keyword arguments (``attention_mask``, ``token_type_ids``, ...).

The forward runs under autocast when a reduced precision is asked for, *inside* the function that
``vmap``/``grad`` transform, so that the draws and the initial loss :math:`L_0` use exactly the same computation.
The caller's module is never touched: the functional model works on a private deep copy, put in eval mode or in
train mode (dropout active, BatchNorm on batch statistics with its running statistics removed from the copy).
"""

from __future__ import annotations

import copy
import hashlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from .data import default_unpack

__all__ = [
    "IGNORE_INDEX",
    "FunctionalModel",
    "Objective",
    "ParamLayout",
    "ParamSelection",
    "select_parameters",
    "vmappable_attention",
]

REDUCED_PRECISION = (torch.bfloat16, torch.float16)
FULL_PRECISION = (torch.float32, torch.float64)
#: Integer targets equal to this do not count (the default ``ignore_index`` of ``F.cross_entropy``).
IGNORE_INDEX = -100

#: What ``params=`` accepts: ``None``, names, globs, module prefixes, ``{name: bool | mask}`` or a predicate.
ParamSelection = str | Sequence[str] | Mapping[str, Any] | Callable[[str], bool] | None


# ----------------------------------------------------------------------------------------------------
# Which scalars are sampled
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamLayout:
    """Where each sampled parameter lives in the flat vector ``theta``.

    Attributes
    ----------
    names, shapes:
        Per sampled parameter, in the order of ``model.named_parameters()``, with its full shape.
    numels:
        Scalars of each parameter that are sampled (all of them, or the ``True`` elements of its mask).
    masks:
        Per parameter, the flat indices of its sampled elements (``None``: the whole tensor). Not compared;
        ``mask_digest`` stands for them in equality and hashing.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    numels: tuple[int, ...]
    masks: tuple[torch.Tensor | None, ...] = field(default=(), compare=False, repr=False)
    mask_digest: str = ""

    @property
    def dim(self) -> int:
        """Total number of sampled scalars ``D``."""
        return sum(self.numels)

    def unflatten(self, theta: torch.Tensor, bases: Mapping[str, torch.Tensor] | None = None) -> dict:
        """Named parameter tensors from a flat ``[D]`` vector (``[..., D]`` when nothing is masked).

        A masked parameter is its ``w*`` value from ``bases`` with the sampled elements replaced
        (``index_copy``, differentiable in the sampled elements only)."""
        lead = tuple(theta.shape[:-1])
        pieces = theta.split(self.numels, dim=-1)
        out = {}
        for i, (name, piece, shape) in enumerate(zip(self.names, pieces, self.shapes)):
            index = self.masks[i] if self.masks else None
            if index is None:
                out[name] = piece.reshape(lead + tuple(shape))
            else:
                base = bases[name].reshape(-1).to(piece.dtype)
                out[name] = base.index_copy(0, index, piece).reshape(shape)
        return out

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The sampled scalars of named tensors (same names as the layout) as one flat vector."""
        parts = []
        for i, name in enumerate(self.names):
            flat = tensors[name].reshape(-1)
            index = self.masks[i] if self.masks else None
            parts.append(flat if index is None else flat[index.to(flat.device)])
        return torch.cat(parts)


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or fnmatchcase(name, pattern) or name.startswith(pattern + ".")


def _as_mask(name: str, value: Any, shape: torch.Size) -> torch.Tensor | bool | None:
    """``True``/``False`` for a whole tensor, or a flat index tensor of the ``True`` elements of a mask."""
    if isinstance(value, bool):
        return value
    mask = torch.as_tensor(value)
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"prepare: the params mask of {name!r} must be True/False or a bool tensor of the parameter's "
            f"shape {tuple(shape)}; got {'a ' + str(mask.dtype) if mask.dtype != torch.bool else 'shape'} "
            f"{tuple(mask.shape) if mask.dtype == torch.bool else ''}".rstrip()
            + ". Build it with e.g. torch.zeros_like(param, dtype=torch.bool)."
        )
    if bool(mask.all()):
        return True
    if not bool(mask.any()):
        return False
    return mask.reshape(-1).nonzero().flatten().cpu()


def select_parameters(model: nn.Module, params: ParamSelection) -> ParamLayout:
    """The layout of the sampled scalars.

    Parameters
    ----------
    model:
        The module.
    params:
        ``None`` (all parameters that require grad, or all parameters when none does), a name, a glob pattern
        (``"blocks.*.attn.*"``) or a module prefix (``"encoder"``), a list of those, a ``{name: bool}`` mapping
        whose values may also be boolean *element masks* of the parameter's shape (only the ``True`` elements
        are sampled; the others stay bitwise at ``w*``), or a predicate ``name -> bool``.

    Returns
    -------
    ParamLayout
        Selected parameters in ``named_parameters()`` order.

    Raises
    ------
    ValueError
        If a pattern or name matches nothing, a mask has the wrong shape, or the selection is empty; the message
        lists the available names.

    Examples
    --------
    >>> lin = nn.Linear(3, 2)
    >>> select_parameters(lin, {"weight": torch.tensor([[True, False, False], [False, False, True]])}).dim
    2
    >>> select_parameters(lin, "bias").names
    ('bias',)
    """
    named = dict(model.named_parameters())
    all_names = list(named)
    if not all_names:
        raise ValueError(
            "prepare: the model has no parameters; the LLC is defined over a model's parameters, "
            "so pass a model with at least one nn.Parameter."
        )
    masks: dict[str, torch.Tensor] = {}
    if params is None:
        chosen = [n for n, p in named.items() if p.requires_grad] or all_names
    elif callable(params) and not isinstance(params, str | Mapping):
        chosen = [n for n in all_names if params(n)]
    elif isinstance(params, Mapping):
        unknown = sorted(set(params) - set(all_names))
        if unknown:
            raise ValueError(
                f"prepare: params names {unknown} that the model does not have; "
                f"its parameters are {all_names}."
            )
        chosen = []
        for n in all_names:
            if n not in params:
                continue
            picked = _as_mask(n, params[n], named[n].shape)
            if picked is True:
                chosen.append(n)
            elif picked is not False:
                chosen.append(n)
                masks[n] = picked
    else:
        patterns = [params] if isinstance(params, str) else list(params)
        hit: set[str] = set()
        for pattern in patterns:
            if not isinstance(pattern, str):
                raise ValueError(
                    f"prepare: params must hold names or patterns (str); got {type(pattern).__name__}. "
                    "Pass element masks as a {name: bool tensor} mapping."
                )
            hits = [n for n in all_names if _matches(n, pattern)]
            if not hits:
                raise ValueError(
                    f"prepare: params pattern {pattern!r} matches no parameter; "
                    f"the model's parameters are {all_names}."
                )
            hit.update(hits)
        chosen = [n for n in all_names if n in hit]
    if not chosen:
        raise ValueError(f"prepare: params selects no parameter; the model's parameters are {all_names}.")
    digest = hashlib.sha1()
    for n in chosen:
        if n in masks:
            digest.update(n.encode() + masks[n].numpy().tobytes())
    return ParamLayout(
        names=tuple(chosen),
        shapes=tuple(named[n].shape for n in chosen),
        numels=tuple(len(masks[n]) if n in masks else named[n].numel() for n in chosen),
        masks=tuple(masks.get(n) for n in chosen) if masks else (),
        mask_digest=digest.hexdigest() if masks else "",
    )


# ----------------------------------------------------------------------------------------------------
# How a batch becomes a loss
# ----------------------------------------------------------------------------------------------------


def _unwrap_outputs(out):
    logits = getattr(out, "logits", None)
    return out if logits is None else logits


def _describe(obj) -> str:
    if isinstance(obj, torch.Tensor):
        return f"tensor of shape {tuple(obj.shape)} and dtype {obj.dtype}"
    if isinstance(obj, Mapping):
        return f"dict with keys {list(obj)}"
    return type(obj).__name__


def batch_length(x, y) -> int:
    """Number of samples in a batch (leading dimension of the targets, or of the inputs)."""
    for obj in (y, x):
        if isinstance(obj, torch.Tensor) and obj.dim() > 0:
            return obj.shape[0]
        if isinstance(obj, tuple | list) and obj and isinstance(obj[0], torch.Tensor):
            return obj[0].shape[0]
        if isinstance(obj, Mapping) and obj:
            first = next(iter(obj.values()))
            if isinstance(first, torch.Tensor) and first.dim() > 0:
                return first.shape[0]
    return 1


def _whole_batch(batch: Any) -> tuple[Any, None]:
    return batch, None


class Objective:
    """How a batch becomes a loss: ``criterion_fn`` after ``unpack_fn``, or ``loss_fn(model, batch)``.

    Parameters
    ----------
    criterion_fn:
        ``(outputs, targets) -> scalar`` mean loss; outputs with ``.logits`` are unwrapped. With targets ``None``
        (an ``unpack_fn`` that returns ``(inputs, None)``) and outputs that carry ``.loss`` (a Hugging Face model
        given its ``labels``), that loss is used.
    unpack_fn:
        ``batch -> (inputs, targets)``; ``None`` accepts ``(x, y)`` pairs. Inputs that are a mapping are passed to
        the model as keyword arguments.
    loss_fn:
        ``(model, batch) -> losses`` per sample ``[B]`` or per token ``[B, T]``, or ``(losses, mask)`` with a 0/1
        mask of the same shape; replaces ``criterion_fn`` and ``unpack_fn``. ``model`` is a callable with the
        module's signature. The batch loss is ``Σ m·ℓ / Σ m``.
    """

    def __init__(
        self,
        criterion_fn: Callable | None = None,
        unpack_fn: Callable | None = None,
        loss_fn: Callable | None = None,
    ) -> None:
        if loss_fn is not None and unpack_fn is not None:
            raise ValueError(
                "prepare: loss_fn(model, batch) receives the whole batch, so unpack_fn is not used with it; "
                "pass one of the two."
            )
        for name, fn in (("criterion_fn", criterion_fn), ("unpack_fn", unpack_fn), ("loss_fn", loss_fn)):
            if fn is not None and not callable(fn):
                raise ValueError(f"prepare: {name} must be callable; got {type(fn).__name__}.")
        self.criterion_fn = criterion_fn if criterion_fn is not None else torch.nn.functional.cross_entropy
        self.loss_fn = loss_fn
        self.unpack = _whole_batch if loss_fn is not None else (unpack_fn or default_unpack)
        self.key = (self.criterion_fn if loss_fn is None else None, unpack_fn, loss_fn)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Objective) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def per_sample(self, call: Callable, x, y) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample (or per-token) losses and their 0/1 weights, same shape ``[B(, T)]``."""
        if self.loss_fn is not None:
            out = self.loss_fn(call, x)
            losses, mask = out if isinstance(out, tuple | list) else (out, None)
            if not isinstance(losses, torch.Tensor) or losses.dim() not in (1, 2):
                raise ValueError(
                    f"prepare: loss_fn must return per-sample losses [batch] or per-token losses "
                    f"[batch, tokens] (optionally with a mask of that shape); got {_describe(losses)}."
                )
            weights = torch.ones_like(losses) if mask is None else mask.to(losses.dtype)
            return losses, weights
        outputs = _unwrap_outputs(call(x))
        try:
            losses = torch.vmap(lambda o, t: self.criterion_fn(o.unsqueeze(0), t.unsqueeze(0)))(outputs, y)
        except Exception as exc:
            raise ValueError(
                f"prepare: per-sample losses need criterion_fn to work on one sample at a time, and it "
                f"failed ({type(exc).__name__}: {exc}); pass loss_fn(model, batch) returning per-sample losses."
            ) from exc
        counted = self._counted(y, losses)
        return losses, counted

    def _counted(self, y, like: torch.Tensor) -> torch.Tensor:
        if isinstance(y, torch.Tensor) and not y.is_floating_point() and y.shape[: like.dim()] == like.shape:
            return (y != IGNORE_INDEX).to(like.dtype)
        return torch.ones_like(like)

    def mean_and_count(self, call: Callable, x, y) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch loss ``Σ m ℓ / Σ m`` (a scalar) and the count ``Σ m`` of samples (tokens) that count."""
        if self.loss_fn is not None:
            losses, weights = self.per_sample(call, x, y)
            count = weights.sum()
            return (losses * weights).sum() / count.clamp(min=1), count
        out = call(x)
        if y is None and getattr(out, "loss", None) is not None:
            labels = x.get("labels") if isinstance(x, Mapping) else None
            count = self.count(x, labels) if labels is not None else torch.tensor(float(batch_length(x, y)))
            return out.loss, count
        return self.criterion_fn(_unwrap_outputs(out), y), self.count(x, y)

    def count(self, x, y) -> torch.Tensor:
        """How many samples (tokens) of a batch count: targets not equal to the ignore index for integer
        targets, else the batch length."""
        if isinstance(y, torch.Tensor) and not y.is_floating_point() and y.dim() > 0:
            return (y != IGNORE_INDEX).sum().to(torch.float64)
        return torch.tensor(float(batch_length(x, y)), dtype=torch.float64)

    def check(self, call: Callable, x, y) -> None:
        """Run the objective once on a batch and raise an error that says what to pass when it does not fit."""
        if self.loss_fn is not None:
            try:
                self.mean_and_count(call, x, y)
            except ValueError:
                raise
            except Exception as exc:
                raise ValueError(
                    f"prepare: loss_fn failed on the first batch ({_describe(x)}): {type(exc).__name__}: "
                    f"{exc}. It receives (model, batch) and must return per-sample losses [batch] or per-token "
                    "losses [batch, tokens] (optionally with their mask)."
                ) from exc
            return
        try:
            outputs = call(x)
        except Exception as exc:
            raise ValueError(
                f"prepare: the model failed on the inputs unpacked from the first batch ({_describe(x)}): "
                f"{type(exc).__name__}: {exc}. Check unpack_fn: it must return (inputs, targets); inputs that "
                "are a dict are passed to the model as keyword arguments."
            ) from exc
        if y is None and getattr(outputs, "loss", None) is not None:
            return
        unwrapped = _unwrap_outputs(outputs)
        try:
            loss = self.criterion_fn(unwrapped, y)
        except Exception as exc:
            lm = isinstance(unwrapped, torch.Tensor) and unwrapped.dim() == 3
            raise ValueError(
                f"prepare: criterion_fn failed on outputs ({_describe(unwrapped)}) and targets ({_describe(y)}): "
                f"{type(exc).__name__}: {exc}. Pass targets that fit the criterion (e.g. class indices of shape "
                "[batch] for F.cross_entropy, or float targets of the outputs' shape for F.mse_loss), or a "
                "criterion_fn that fits the targets"
                + (
                    "; outputs [batch, tokens, vocab] look like a language model: pass "
                    "loss_fn(model, batch) that returns per-token losses [batch, tokens] and their mask."
                    if lm
                    else "."
                )
            ) from exc
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError(
                f"prepare: criterion_fn must return a scalar mean loss, got {_describe(loss)}; use "
                "reduction='mean' (the default of torch.nn.functional losses) or reduce it yourself, or pass "
                "loss_fn(model, batch) returning per-sample losses."
            )


# ----------------------------------------------------------------------------------------------------
# The private functional copy
# ----------------------------------------------------------------------------------------------------


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


def _batch_statistics_only(module: nn.Module) -> None:
    """Make the BatchNorm layers of a private copy normalize with the statistics of each batch and keep no running
    statistics (train mode without updating anything; the caller's statistics live in another object)."""
    for sub in module.modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            sub.track_running_stats = False
            sub.running_mean = None
            sub.running_var = None
            sub.num_batches_tracked = None


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's floating parameters (float32 when it has none); all must agree."""
    found = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(found) > 1:
        raise ValueError(
            f"prepare: dtype='model' needs one dtype for all floating parameters; this model mixes "
            f"{sorted(str(d) for d in found)}. Cast it (model.to(torch.bfloat16)) or pass dtype='float32'."
        )
    return found.pop() if found else torch.float32


def vmappable_attention(module: nn.Module) -> str | None:
    """Switch a Hugging Face model (a private copy: never the caller's) to the ``"eager"`` attention implementation.

    The fused kernels Hugging Face picks by default (``"sdpa"``, flash and flex attention) have no vmap batching
    rule on the CPU, so vmapped chains fall back to a loop over chains; ``"eager"`` computes the same attention
    with ordinary tensor operations (the same numbers up to float rounding; L0 and the draws then use the same
    implementation). Returns the implementation that was replaced, or ``None`` when nothing changed (not a
    Hugging Face model, already eager, or a model that cannot switch).

    Examples
    --------
    >>> vmappable_attention(nn.Linear(2, 2)) is None
    True
    """
    config = getattr(module, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current is None or current == "eager":
        return None
    setter = getattr(module, "set_attn_implementation", None)
    try:
        if callable(setter):
            setter("eager")
        else:  # transformers 4.x reads the config's private attribute at every forward
            config._attn_implementation = "eager"
    except Exception as exc:  # a model that cannot switch keeps its kernel: slower, still correct
        warnings.warn(
            f"prepare: could not switch the model's copy from {current!r} to eager attention ({exc}); "
            "vmapped chains may run one by one. Build the model with attn_implementation='eager'.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return str(current)


class FunctionalModel:
    """A private copy of a module, callable as a pure function of the flat sampled scalars.

    Parameters
    ----------
    model:
        The caller's module (copied, never modified).
    objective:
        How a batch becomes a loss (:class:`Objective`); a bare callable is taken as ``criterion_fn``.
    device:
        Where the copy and its tensors live.
    dtype:
        ``torch.float32`` or ``torch.float64``: parameters and arithmetic in that precision.
        ``torch.bfloat16`` or ``torch.float16``: parameters stay float32 and the forward runs under autocast.
        ``"model"``: the dtype of the model's floating parameters, for parameters and arithmetic alike (losses are
        returned in at least float32).
    layout:
        The sampled scalars (see :func:`select_parameters`; a list of names is accepted too); the rest are held
        at ``w*``.
    model_mode:
        ``"eval"`` (default) or ``"train"``.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective | Callable,
        device: torch.device,
        dtype: torch.dtype | str,
        layout: ParamLayout | Sequence[str],
        model_mode: str = "eval",
    ) -> None:
        if dtype == "model":
            dtype = model_dtype(model)
            self.autocast_dtype, self.param_dtype = None, dtype
        elif dtype in REDUCED_PRECISION + FULL_PRECISION:
            self.autocast_dtype = dtype if dtype in REDUCED_PRECISION else None
            self.param_dtype = dtype if dtype in FULL_PRECISION else torch.float32
        else:
            raise ValueError(
                f"LLCEstimator: dtype must be one of torch.float32, torch.float64, torch.bfloat16, "
                f"torch.float16 or 'model'; got {dtype}."
            )
        #: Losses are returned in this dtype (float32 at least, also for a bfloat16 model).
        self.loss_dtype = torch.promote_types(self.param_dtype, torch.float32)
        if model_mode not in ("eval", "train"):
            raise ValueError(f"prepare: model_mode must be 'eval' or 'train'; got {model_mode!r}.")
        self.objective = objective if isinstance(objective, Objective) else Objective(criterion_fn=objective)
        self.device = torch.device(device)
        self.model_mode = model_mode
        self.module = copy.deepcopy(model).to(self.device)
        vmappable_attention(self.module)
        self.module.train(model_mode == "train")
        if model_mode == "train":
            _batch_statistics_only(self.module)
        if not isinstance(layout, ParamLayout):
            layout = select_parameters(self.module, list(layout))
        if layout.masks:
            layout = ParamLayout(
                layout.names,
                layout.shapes,
                layout.numels,
                tuple(None if m is None else m.to(self.device) for m in layout.masks),
                layout.mask_digest,
            )
        self.layout = layout
        named = dict(self.module.named_parameters())
        sampled_whole = {
            n for n, m in zip(layout.names, layout.masks or (None,) * len(layout.names)) if m is None
        }
        with torch.no_grad():
            self.w_star = self.layout.flatten(
                {n: named[n].detach().to(self.param_dtype) for n in layout.names}
            ).contiguous()
            # Every parameter that is not sampled whole, at w*: frozen ones, and the bases of masked ones.
            self.frozen = {
                n: p.detach().to(self.param_dtype if p.is_floating_point() else p.dtype)
                for n, p in named.items()
                if n not in sampled_whole
            }
            self.buffers = {
                n: b.detach().to(self.param_dtype) if b.is_floating_point() else b.detach()
                for n, b in self.module.named_buffers()
            }
        for p in self.module.parameters():
            p.requires_grad_(False)
        if self.autocast_dtype is not None:
            _norms_in_float32(self.module, self.device.type)

    @property
    def criterion_fn(self) -> Callable:
        return self.objective.criterion_fn

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def caller(self, theta: torch.Tensor, frozen: Mapping, buffers: Mapping) -> Callable:
        """The model at ``theta`` as a callable with the module's signature (``call(x)`` with a mapping ``x``
        passes it as keyword arguments)."""
        tensors = {**frozen, **self.layout.unflatten(theta, frozen)}
        module = self.module

        def call(*args, **kwargs):
            if len(args) == 1 and not kwargs and isinstance(args[0], Mapping):
                args, kwargs = (), dict(args[0])
            return functional_call(module, (tensors, buffers), args, kwargs)

        call.module = module  # so that a loss_fn can read the forward's signature
        return call

    def loss_and_count(self, theta: torch.Tensor, frozen: Mapping, buffers: Mapping, x, y):
        """Batch loss ``Σ m ℓ / Σ m`` at ``theta`` ``[D]`` and the count ``Σ m`` (see :class:`Objective`)."""
        with self._autocast():
            loss, count = self.objective.mean_and_count(self.caller(theta, frozen, buffers), x, y)
        return loss.to(self.loss_dtype), count.to(device=theta.device, dtype=self.loss_dtype)

    def loss(self, theta: torch.Tensor, frozen: Mapping, buffers: Mapping, x, y) -> torch.Tensor:
        """Batch loss at the flat sampled scalars ``theta`` (shape ``[D]``).

        ``frozen`` and ``buffers`` are arguments (not attributes) so that one compiled function serves later
        calls with other weights."""
        return self.loss_and_count(theta, frozen, buffers, x, y)[0]

    def per_sample_losses(self, theta: torch.Tensor, frozen: Mapping, buffers: Mapping, x, y) -> torch.Tensor:
        """Per-sample (per-token) losses ``[B(, T)]`` at ``theta``; NaN where a token does not count."""
        with self._autocast():
            losses, weights = self.objective.per_sample(self.caller(theta, frozen, buffers), x, y)
        losses = losses.to(self.loss_dtype)
        return torch.where(weights > 0, losses, torch.full_like(losses, float("nan")))

    def check(self, x, y) -> None:
        """Check the objective on one batch at ``w*`` (errors say what to pass)."""
        with torch.no_grad(), self._autocast():
            self.objective.check(self.caller(self.w_star, self.frozen, self.buffers), x, y)

    def outputs(self, theta: torch.Tensor, x) -> Any:
        """Model outputs at ``theta``."""
        with self._autocast():
            return _unwrap_outputs(self.caller(theta, self.frozen, self.buffers)(x))
