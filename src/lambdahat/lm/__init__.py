"""Language models: per-token losses, nβ in tokens, and heads, layers and components as ``params=``.

* :func:`next_token_loss` (causal LMs: Hugging Face ``...ForCausalLM`` and TransformerLens ``HookedTransformer``),
  :func:`masked_lm_loss`, :func:`sequence_classification_loss`: ``loss_fn=`` for :func:`lambdahat.prepare` and
  ``estimate_llc`` on loaders of tokenized dict batches; L0 and the draws are token-weighted means over the
  whole data set.
* :func:`nbeta_for_tokens`, :func:`count_tokens`: nβ = n / log n with n in tokens (default) or sequences.
* :func:`select`, :func:`describe_selection`: ``"l0h1"``, ``"l0 attn"``, ``"l0 mlp"``, ``"l0"``, ``"embed"``,
  ``"unembed"`` as element masks for ``params=`` (GPT-2, GPT-NeoX/Pythia, Llama family, TransformerLens).
* :func:`token_llc`, :func:`token_traces`, :func:`evaluation_targets` (:mod:`lambdahat.lm.tokens`): λ̂ on a
  subset of the tokens of an evaluation set (by token id, ``(sequence, position)`` or mask), and per-token traces.
* :mod:`lambdahat.lm.toy`, :mod:`lambdahat.lm.demo`: an attention-only transformer where induction heads form,
  and λ̂ over its training per model, layer and head (``lambdahat lm demo``).

The losses and nβ need only torch; :func:`select` and :func:`describe_selection` need the extra
``pip install "lambdahat[lm]"`` (transformers, TransformerLens).

Examples
--------
>>> import lambdahat
>>> lambdahat.lm.nbeta_for_tokens(5_000, unit="sequences").unit
'sequences'
"""

from typing import TYPE_CHECKING

# Imported on first use (PEP 562), so that the `lambdahat lm ...` commands' --help needs no torch.
_EXPORTS = {
    "IGNORE_INDEX": "losses",
    "masked_lm_loss": "losses",
    "next_token_loss": "losses",
    "position_ids_from_attention_mask": "losses",
    "sequence_classification_loss": "losses",
    "NBeta": "nbeta",
    "TokenCount": "nbeta",
    "count_tokens": "nbeta",
    "nbeta_for_tokens": "nbeta",
    "describe_selection": "selectors",
    "select": "selectors",
    "TokenLLC": "tokens",
    "evaluation_targets": "tokens",
    "token_llc": "tokens",
    "token_traces": "tokens",
}

if TYPE_CHECKING:
    from .losses import (
        IGNORE_INDEX,
        masked_lm_loss,
        next_token_loss,
        position_ids_from_attention_mask,
        sequence_classification_loss,
    )
    from .nbeta import NBeta, TokenCount, count_tokens, nbeta_for_tokens
    from .selectors import describe_selection, select
    from .tokens import TokenLLC, evaluation_targets, token_llc, token_traces


def __getattr__(name: str):
    import importlib

    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    loaded = importlib.import_module(f".{module}", __name__)
    # every name of that module at once, as an eager import would bind them
    globals().update({n: getattr(loaded, n) for n, m in _EXPORTS.items() if m == module})
    return globals()[name]


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "IGNORE_INDEX",
    "NBeta",
    "TokenCount",
    "TokenLLC",
    "count_tokens",
    "describe_selection",
    "evaluation_targets",
    "masked_lm_loss",
    "nbeta_for_tokens",
    "next_token_loss",
    "position_ids_from_attention_mask",
    "select",
    "sequence_classification_loss",
    "token_llc",
    "token_traces",
]
