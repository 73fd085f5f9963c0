"""Language models: per-token losses, nβ in tokens, and heads, layers and components as ``params=``.

* :func:`next_token_loss` (causal LMs: Hugging Face ``...ForCausalLM`` and TransformerLens ``HookedTransformer``),
  :func:`masked_lm_loss`, :func:`sequence_classification_loss`: ``loss_fn=`` for :func:`lambdahat.prepare` and
  ``estimate_llc`` on loaders of tokenized dict batches; L0 and the draws are token-weighted means over the
  whole data set.
* :func:`nbeta_for_tokens`, :func:`count_tokens`: nβ = n / log n with n in tokens (default) or sequences.
* :func:`select`, :func:`describe_selection`: ``"l0h1"``, ``"l0 attn"``, ``"l0 mlp"``, ``"l0"``, ``"embed"``,
  ``"unembed"`` as element masks for ``params=`` (GPT-2, GPT-NeoX/Pythia, Llama family, TransformerLens).

The losses and nβ need only torch; :func:`select` and :func:`describe_selection` need the extra
``pip install "lambdahat[lm]"`` (transformers, TransformerLens).

Examples
--------
>>> import lambdahat
>>> lambdahat.lm.nbeta_for_tokens(5_000, unit="sequences").unit
'sequences'
"""

from .losses import (
    IGNORE_INDEX,
    masked_lm_loss,
    next_token_loss,
    position_ids_from_attention_mask,
    sequence_classification_loss,
)
from .nbeta import NBeta, TokenCount, count_tokens, nbeta_for_tokens
from .select import describe_selection, select

__all__ = [
    "IGNORE_INDEX",
    "NBeta",
    "TokenCount",
    "count_tokens",
    "describe_selection",
    "masked_lm_loss",
    "nbeta_for_tokens",
    "next_token_loss",
    "position_ids_from_attention_mask",
    "select",
    "sequence_classification_loss",
]
