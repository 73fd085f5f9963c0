"""Heads, layers and components of transformers as element masks for ``params=``.

Selector strings (case and spaces are free; a list selects the union):

================  ==========================================================================================
``"embed"``       token embedding, and the learned position embedding where there is one (GPT-2, TL ``pos_embed``)
``"unembed"``     final norm and output head (its bias too); with tied embeddings (GPT-2) the output head *is*
                  the token embedding, so ``"unembed"`` then shares that tensor with ``"embed"``
``"l3"``          every parameter of block 3 (norms, attention, MLP)
``"l3 attn"``     the attention of block 3: every head and the output-projection bias (not the norm before it)
``"l3 mlp"``      the MLP of block 3 (not the norm before it)
``"l3h5"``        head 5 of block 3 (below)
================  ==========================================================================================

**One head** ``h`` of a block is the part of the attention that only that head uses: the rows (outputs) of the
query, key and value projections that produce head ``h``'s ``d_head``-dimensional query, key and value, with
their biases, and the ``d_head`` inputs of the output projection that read head ``h``'s output. Its size is
``4 · d_model · d_head`` weights plus ``3 · d_head`` biases where the projections have biases. The output
projection's bias and the norms are shared by all heads and belong to no head.

* GPT-2: ``c_attn`` is a ``Conv1D`` with weight ``[d_model, 3·d_model]`` (inputs × outputs); head ``h`` is the
  columns ``j·d_model + h·d_head + [0, d_head)`` for ``j = 0, 1, 2`` (q, k, v), the same entries of the bias, and
  rows ``h·d_head + [0, d_head)`` of ``c_proj.weight`` ``[d_model, d_model]``.
* GPT-NeoX / Pythia: ``query_key_value`` is a ``Linear`` whose ``3·d_model`` outputs are interleaved per head
  (the output is viewed as ``[heads, 3·d_head]`` and chunked into q, k, v), so head ``h`` is the rows
  ``h·3·d_head + [0, 3·d_head)`` of its weight and bias, and columns ``h·d_head + [0, d_head)`` of ``dense``.
* Llama family (Llama, Mistral, Qwen2, ...): rows ``h·d_head + [0, d_head)`` of ``q_proj``, columns of
  ``o_proj``, and for keys and values the rows of the **shared key-value head** ``g = h // (H / H_kv)`` of
  ``k_proj``/``v_proj`` (grouped-query attention repeats KV head ``g`` for query heads ``g·H/H_kv`` to
  ``(g+1)·H/H_kv − 1``). A KV head belongs to several query heads, so selecting two heads of one group samples
  their shared KV head once; one head still counts ``4 · d_model · d_head`` weights.
* TransformerLens ``HookedTransformer``: ``W_Q[h]``, ``b_Q[h]``, ``W_K[g]``, ``b_K[g]``, ``W_V[g]``, ``b_V[g]``
  (``g = h`` without grouped-query attention; ``_W_K``/``_W_V`` with it), ``W_O[h]``.

The result of :func:`select` is a ``{parameter name: True or bool element mask}`` mapping for ``params=``;
:func:`describe_selection` shows which tensors and slices it holds and how many scalars.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._deps import require_transformers

__all__ = ["describe_selection", "select"]

Selection = dict[str, "bool | torch.Tensor"]
_SELECTOR = re.compile(r"^l(\d+)\s*(?:h(\d+)|(attn|mlp))?$")


@dataclass(frozen=True)
class _Arch:
    """Where the parts of one architecture live (names relative to the model's parameter names)."""

    kind: str
    layers: str  # the ModuleList of blocks, e.g. "transformer.h"
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    attn: str  # attention module inside a block
    mlp: str
    embed: tuple[str, ...]  # module or parameter prefixes
    unembed: tuple[str, ...]
    head: Callable[[dict[str, nn.Parameter], str, int, int], dict[str, torch.Tensor]]


def _config_int(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _find_layers(model: nn.Module, candidates: Sequence[str]) -> str | None:
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in candidates:
            return name
    return None


def _prefix(layers_name: str, path: str) -> str:
    """Sibling path of the block list (``transformer.h`` + ``ln_f`` → ``transformer.ln_f``)."""
    parent = layers_name.rpartition(".")[0]
    return f"{parent}.{path}" if parent else path


def _rows(shape: torch.Size, index: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[index] = True
    return mask


def _cols(shape: torch.Size, index: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[:, index] = True
    return mask


def _span(start: int, length: int) -> torch.Tensor:
    return torch.arange(start, start + length)


def _gpt2_head(named, block, h, d_head):
    d_model = named[f"{block}.attn.c_attn.weight"].shape[0]
    cols = torch.cat([_span(j * d_model + h * d_head, d_head) for j in range(3)])
    out = {
        f"{block}.attn.c_attn.weight": _cols(named[f"{block}.attn.c_attn.weight"].shape, cols),
        f"{block}.attn.c_proj.weight": _rows(
            named[f"{block}.attn.c_proj.weight"].shape, _span(h * d_head, d_head)
        ),
    }
    if f"{block}.attn.c_attn.bias" in named:
        out[f"{block}.attn.c_attn.bias"] = _rows(named[f"{block}.attn.c_attn.bias"].shape, cols)
    return out


def _neox_head(named, block, h, d_head):
    qkv = f"{block}.attention.query_key_value"
    rows = _span(h * 3 * d_head, 3 * d_head)
    out = {
        f"{qkv}.weight": _rows(named[f"{qkv}.weight"].shape, rows),
        f"{block}.attention.dense.weight": _cols(
            named[f"{block}.attention.dense.weight"].shape, _span(h * d_head, d_head)
        ),
    }
    if f"{qkv}.bias" in named:
        out[f"{qkv}.bias"] = _rows(named[f"{qkv}.bias"].shape, rows)
    return out


def _llama_head_fn(n_heads: int, n_kv_heads: int):
    def head(named, block, h, d_head):
        attn = f"{block}.self_attn"
        g = h // (n_heads // n_kv_heads)
        out = {}
        for proj, index in (("q_proj", h), ("k_proj", g), ("v_proj", g)):
            for kind in ("weight", "bias"):
                name = f"{attn}.{proj}.{kind}"
                if name in named:
                    out[name] = _rows(named[name].shape, _span(index * d_head, d_head))
        out[f"{attn}.o_proj.weight"] = _cols(named[f"{attn}.o_proj.weight"].shape, _span(h * d_head, d_head))
        return out

    return head


def _tl_head_fn(n_heads: int, n_kv_heads: int):
    def head(named, block, h, d_head):
        g = h // (n_heads // n_kv_heads)
        out = {}
        for base, index in (
            ("W_Q", h),
            ("b_Q", h),
            ("W_K", g),
            ("b_K", g),
            ("W_V", g),
            ("b_V", g),
            ("W_O", h),
        ):
            for name in (f"{block}.attn.{base}", f"{block}.attn._{base}"):
                if name in named:
                    out[name] = _rows(named[name].shape, torch.tensor([index]))
        return out

    return head


def _architecture(model: nn.Module) -> _Arch:
    cfg = getattr(model, "cfg", None)
    if cfg is not None and type(model).__name__ == "HookedTransformer":
        n_heads = cfg.n_heads
        n_kv = getattr(cfg, "n_key_value_heads", None) or n_heads
        return _Arch(
            "TransformerLens",
            "blocks",
            cfg.n_layers,
            n_heads,
            n_kv,
            cfg.d_head,
            "attn",
            "mlp",
            ("embed", "pos_embed"),
            ("ln_final", "unembed"),
            _tl_head_fn(n_heads, n_kv),
        )
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if config is None:
        raise ValueError(
            f"lambdahat.lm.select: {type(model).__name__} is neither a Hugging Face model (no .config) nor a "
            "TransformerLens HookedTransformer; pass params= names or patterns instead."
        )
    n_layers = _config_int(config, "num_hidden_layers", "n_layer")
    n_heads = _config_int(config, "num_attention_heads", "n_head")
    d_model = _config_int(config, "hidden_size", "n_embd")
    if model_type == "gpt2":
        layers = _find_layers(model, ("h",))
        return _Arch(
            "GPT-2",
            layers,
            n_layers,
            n_heads,
            n_heads,
            d_model // n_heads,
            "attn",
            "mlp",
            (_prefix(layers, "wte"), _prefix(layers, "wpe")),
            (_prefix(layers, "ln_f"), "lm_head"),
            _gpt2_head,
        )
    if model_type == "gpt_neox":
        layers = _find_layers(model, ("layers",))
        return _Arch(
            "GPT-NeoX",
            layers,
            n_layers,
            n_heads,
            n_heads,
            d_model // n_heads,
            "attention",
            "mlp",
            (_prefix(layers, "embed_in"),),
            (_prefix(layers, "final_layer_norm"), "embed_out", "lm_head"),
            _neox_head,
        )
    layers = _find_layers(model, ("layers",))
    names = {n for n, _ in model.named_parameters()}
    if (
        layers is not None
        and f"{layers}.0.self_attn.q_proj.weight" in names
        and f"{layers}.0.mlp.down_proj.weight" in names
    ):
        n_kv = _config_int(config, "num_key_value_heads") or n_heads
        d_head = _config_int(config, "head_dim") or d_model // n_heads
        return _Arch(
            f"Llama family ({model_type})",
            layers,
            n_layers,
            n_heads,
            n_kv,
            d_head,
            "self_attn",
            "mlp",
            (_prefix(layers, "embed_tokens"),),
            (_prefix(layers, "norm"), "lm_head"),
            _llama_head_fn(n_heads, n_kv),
        )
    raise ValueError(
        f"lambdahat.lm.select: architecture {model_type!r} ({type(model).__name__}) is not supported; supported "
        "are GPT-2, GPT-NeoX/Pythia, the Llama family (q_proj/k_proj/v_proj/o_proj) and TransformerLens "
        "HookedTransformer. Pass params= names or patterns (e.g. 'model.layers.0.*') instead."
    )


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _tied_output(model: nn.Module, arch: _Arch, named: Mapping[str, nn.Parameter]) -> list[str]:
    """Parameter names of the output head, following weight tying to the tensor ``named_parameters`` lists."""
    out = []
    for prefix in arch.unembed:
        hits = [n for n in named if _under(n, prefix)]
        if hits:
            out.extend(hits)
            continue
        module = dict(model.named_modules()).get(prefix)
        for param in [] if module is None else module.parameters(recurse=True):
            out.extend(n for n, p in named.items() if p is param)
    return out


def _parse(selector: str) -> tuple[str, int | None, int | None, str | None]:
    text = " ".join(selector.strip().lower().split())
    if text in ("embed", "unembed"):
        return text, None, None, None
    match = _SELECTOR.match(text)
    if match is None:
        raise ValueError(
            f"lambdahat.lm.select: cannot read selector {selector!r}; use 'embed', 'unembed', 'l<layer>', "
            "'l<layer>h<head>', 'l<layer> attn', 'l<layer> mlp' (e.g. 'l0h1'), or a list of them."
        )
    layer, head, part = match.groups()
    return "layer", int(layer), None if head is None else int(head), part


def select(model: nn.Module, selectors: str | Iterable[str]) -> Selection:
    """Element masks of the parameters that the selectors name, for ``params=``.

    Parameters
    ----------
    model:
        A Hugging Face GPT-2, GPT-NeoX/Pythia or Llama-family model (any head on top: ``...ForCausalLM``, the base
        model, ...), or a TransformerLens ``HookedTransformer``.
    selectors:
        One selector or a list (their union): ``"embed"``, ``"unembed"``, ``"l0"``, ``"l0 attn"``, ``"l0 mlp"``,
        ``"l0h1"`` (see the module docstring for what each holds, and what one head is for each architecture).

    Returns
    -------
    dict
        ``{parameter name: True}`` for whole tensors and ``{name: bool tensor}`` for parts of tensors (CPU masks
        of the parameter's shape); parameters that are not named are absent (held at ``w*``). Pass it as
        ``params=`` to :func:`lambdahat.prepare` or ``estimate_llc``.

    Raises
    ------
    ValueError
        For an unknown selector, a layer or head out of range, or an unsupported architecture.
    """
    require_transformers("select")
    arch = _architecture(model)
    named = dict(model.named_parameters())
    picked: dict[str, torch.Tensor] = {}

    def add_whole(names: Iterable[str]) -> None:
        for n in names:
            picked[n] = torch.ones(named[n].shape, dtype=torch.bool)

    def add_mask(n: str, mask: torch.Tensor) -> None:
        picked[n] = mask if n not in picked else picked[n] | mask

    items = [selectors] if isinstance(selectors, str) else list(selectors)
    if not items:
        raise ValueError(
            "lambdahat.lm.select: no selector given; pass e.g. 'l0h1' or ['l0 attn', 'unembed']."
        )
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"lambdahat.lm.select: selectors are strings; got {type(item).__name__}.")
        kind, layer, head, part = _parse(item)
        if kind == "embed":
            add_whole(n for n in named if any(_under(n, p) for p in arch.embed))
            continue
        if kind == "unembed":
            add_whole(_tied_output(model, arch, named))
            continue
        if not 0 <= layer < arch.n_layers:
            raise ValueError(
                f"lambdahat.lm.select: {item!r}: layer {layer} out of range; the model has {arch.n_layers} "
                f"layers (l0 to l{arch.n_layers - 1})."
            )
        block = f"{arch.layers}.{layer}"
        if head is not None:
            if not 0 <= head < arch.n_heads:
                raise ValueError(
                    f"lambdahat.lm.select: {item!r}: head {head} out of range; layers have {arch.n_heads} heads "
                    f"(h0 to h{arch.n_heads - 1})."
                )
            for n, mask in arch.head(named, block, head, arch.d_head).items():
                add_mask(n, mask)
        else:
            prefix = block if part is None else f"{block}.{arch.attn if part == 'attn' else arch.mlp}"
            add_whole(n for n in named if _under(n, prefix))
    return {n: (True if bool(m.all()) else m) for n, m in picked.items() if bool(m.any())}


def _ranges(index: torch.Tensor) -> str:
    values = index.tolist()
    parts, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(f"{start}" if v == start else f"{start}:{v + 1}")
            start = None
    return " ".join(parts)


def _slices(mask: torch.Tensor) -> str:
    """``[:, 0:8 32:40]``: per dimension, the indices that hold a selected element (``:`` for all)."""
    if mask.dim() == 0:
        return "[]"
    dims = []
    for d in range(mask.dim()):
        others = [i for i in range(mask.dim()) if i != d]
        used = mask.any(dim=others) if others else mask
        index = used.nonzero().flatten()
        dims.append(":" if len(index) == mask.shape[d] else _ranges(index))
    return "[" + ", ".join(dims) + "]"


def describe_selection(model: nn.Module, selection: Any):
    """A table of what a selection samples: one row per parameter, with its shape, the slices and the count.

    Parameters
    ----------
    model:
        The model the selection is for.
    selection:
        What :func:`select` returns (or any ``{name: bool or mask}`` mapping), or selector strings.

    Returns
    -------
    pandas.DataFrame
        Columns ``parameter``, ``shape``, ``slices`` (per dimension the selected index ranges, ``:`` = all),
        ``selected`` (scalars sampled), ``total`` (scalars of the tensor) and ``fraction``;
        ``df.attrs["dim"]`` is the total number of sampled scalars (``result.settings["dim"]`` of a run).
    """
    import pandas as pd

    require_transformers("describe_selection")
    if isinstance(selection, str) or (
        isinstance(selection, Sequence) and all(isinstance(s, str) for s in selection)
    ):
        selection = select(model, selection)
    if not isinstance(selection, Mapping):
        raise ValueError(
            "lambdahat.lm.describe_selection: pass what lambdahat.lm.select returns, a {name: bool or mask} "
            f"mapping, or selector strings; got {type(selection).__name__}."
        )
    named = dict(model.named_parameters())
    unknown = sorted(set(selection) - set(named))
    if unknown:
        raise ValueError(f"lambdahat.lm.describe_selection: the model has no parameters {unknown}.")
    rows = []
    for name, param in named.items():
        if name not in selection:
            continue
        value = selection[name]
        mask = (
            torch.full(param.shape, bool(value), dtype=torch.bool)
            if isinstance(value, bool)
            else torch.as_tensor(value, dtype=torch.bool)
        )
        count = int(mask.sum())
        if count == 0:
            continue
        rows.append(
            {
                "parameter": name,
                "shape": tuple(param.shape),
                "slices": _slices(mask),
                "selected": count,
                "total": param.numel(),
                "fraction": count / param.numel(),
            }
        )
    df = pd.DataFrame(rows, columns=["parameter", "shape", "slices", "selected", "total", "fraction"])
    df.attrs["dim"] = int(df["selected"].sum()) if len(df) else 0
    return df
