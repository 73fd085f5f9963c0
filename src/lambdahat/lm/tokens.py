"""Per-token and data-refined λ̂: λ̂ on a subset of the tokens of an evaluation set, and per-token loss traces.

With ``prepare(model, loader, config, evaluation=eval_loader, loss_fn=lambdahat.lm.next_token_loss)`` a run records
the per-token losses ``ℓ_{s,t}(w)`` of the evaluation set at every draw (``result.per_sample_losses``,
``[chains, draws, sequences, positions]``, NaN where a token does not count) and at ``w*``
(``result.per_sample_losses_at_init``). For a subset ``S`` of the counted tokens (an observable),

.. math::

    \\hat\\lambda_S = n\\beta \\Big( \\frac{1}{D} \\sum_{d=1}^{D} \\frac{1}{|S|} \\sum_{(s,t) \\in S} \\ell_{s,t}(w_d)
    \\; - \\; \\frac{1}{|S|} \\sum_{(s,t) \\in S} \\ell_{s,t}(w^*) \\Big)

per chain, averaged over the chains that did not diverge (standard error across them). ``nβ`` is the result's
(``result.nbeta``): the ``n`` of the **sampling data** (with :func:`~lambdahat.lm.nbeta_for_tokens`, its counted
tokens), not of ``S``. So ``λ̂_S`` is how far the posterior of the whole data set raises the mean loss of the
tokens of ``S``, in the units of λ̂: over all tokens of an evaluation set equal to the sampling data it is the
result's λ̂ (exactly with one full batch; with minibatches the result's draws are minibatch losses, which differ
from the full-set losses recorded here by minibatch noise).

Position ``t`` of a per-token loss is the loss column: for :func:`~lambdahat.lm.next_token_loss` it predicts the
token at ``t + 1`` of the sequence, and :func:`evaluation_targets` gives those target ids in the same layout.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .losses import IGNORE_INDEX

__all__ = ["TokenLLC", "evaluation_targets", "token_llc", "token_traces"]

#: Target ids of positions without a target (padding of shorter batches) in :func:`evaluation_targets`.
NO_TARGET = -1


def _batch_targets(batch: Any, loss: str) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        ids, labels = batch, None
    elif isinstance(batch, Mapping) and "input_ids" in batch:
        ids, labels = batch["input_ids"], batch.get("labels")
    else:
        raise ValueError(
            "lambdahat.lm.evaluation_targets: expected batches that are dicts with 'input_ids' (optionally "
            f"'labels') or [batch, tokens] tensors of ids, as the LM losses take them; got {type(batch).__name__}."
        )
    if loss == "next_token":
        return (labels if labels is not None else ids)[:, 1:]
    if labels is None:
        raise ValueError("lambdahat.lm.evaluation_targets: loss='labels' needs 'labels' in every batch.")
    return labels


def evaluation_targets(loader: Iterable, loss: str = "next_token") -> torch.Tensor:
    """The target token id of every per-token loss of an evaluation set, ``[sequences, positions]``.

    Parameters
    ----------
    loader:
        The evaluation loader given to :func:`lambdahat.prepare` (one pass is made, in its order, as the
        evaluation set is recorded).
    loss:
        ``"next_token"`` (default, :func:`~lambdahat.lm.next_token_loss`): column ``t`` is the token at ``t + 1``
        (from ``labels`` when the batch has them); ``"labels"`` (:func:`~lambdahat.lm.masked_lm_loss`): the labels
        at the same position.

    Returns
    -------
    torch.Tensor
        Long ids; ``-1`` where a shorter batch is padded. Whether a token counts is read from the losses (NaN where
        it does not), not from these ids.

    Examples
    --------
    >>> evaluation_targets([torch.tensor([[5, 6, 7]]), torch.tensor([[1, 2]])]).tolist()
    [[6, 7], [2, -1]]
    """
    if loss not in ("next_token", "labels"):
        raise ValueError(
            f"lambdahat.lm.evaluation_targets: loss must be 'next_token' or 'labels'; got {loss!r}."
        )
    parts = [_batch_targets(batch, loss).detach().cpu().long() for batch in loader]
    if not parts:
        raise ValueError("lambdahat.lm.evaluation_targets: the loader yielded no batch.")
    width = max(p.shape[1] for p in parts)
    out = torch.full((sum(len(p) for p in parts), width), NO_TARGET, dtype=torch.long)
    offset = 0
    for p in parts:
        out[offset : offset + len(p), : p.shape[1]] = torch.where(p == IGNORE_INDEX, NO_TARGET, p)
        offset += len(p)
    return out


@dataclass(frozen=True)
class TokenLLC:
    """λ̂ of a token subset (see the module docstring).

    Attributes
    ----------
    llcs:
        ``[chains]`` per-chain ``λ̂_S`` (NaN for diverged chains).
    llc_mean, llc_std, llc_stderr:
        Mean, standard deviation and standard error over the chains that did not diverge.
    init_loss:
        ``(1/|S|) Σ_S ℓ(w*)``, the subset's L0.
    loss_mean:
        The subset's mean loss over the draws of the kept chains.
    n_tokens:
        ``|S|``, counted tokens in the subset.
    nbeta:
        The result's nβ (the ``n`` of the sampling data, not ``|S|``).
    """

    llcs: torch.Tensor
    llc_mean: float
    llc_std: float
    llc_stderr: float
    init_loss: float
    loss_mean: float
    n_tokens: int
    nbeta: float


def _records(result) -> tuple[torch.Tensor, torch.Tensor]:
    records = getattr(result, "per_sample_losses", None)
    if records is None:
        raise ValueError(
            "lambdahat.lm.token_llc: the result has no per-token losses; run it with an evaluation set, "
            "lambdahat.prepare(model, loader, config, loss_fn=lambdahat.lm.next_token_loss, evaluation=eval_loader)."
        )
    at_init = getattr(result, "per_sample_losses_at_init", None)
    if at_init is None:
        raise ValueError(
            "lambdahat.lm.token_llc: the result has per-token losses at the draws but not at w* "
            "(per_sample_losses_at_init); run it again with this version of lambdahat."
        )
    if records.dim() != 4:
        raise ValueError(
            f"lambdahat.lm.token_llc: expected per-token losses [chains, draws, sequences, positions]; the result "
            f"has per-sample losses of shape {tuple(records.shape)} (a loss_fn that returns one loss per sample). "
            "Use a per-token loss such as lambdahat.lm.next_token_loss."
        )
    return records, at_init


def _subset_mask(
    targets: torch.Tensor | None,
    shape: tuple[int, int],
    token_ids: int | Sequence[int] | None,
    mask: torch.Tensor | None,
    positions: Iterable[tuple[int, int]] | None,
) -> torch.Tensor:
    given = [
        name
        for name, v in (("token_ids", token_ids), ("mask", mask), ("positions", positions))
        if v is not None
    ]
    if len(given) > 1:
        raise ValueError(f"lambdahat.lm.token_llc: pass one of token_ids, mask and positions; got {given}.")
    if targets is not None and tuple(targets.shape) != shape:
        raise ValueError(
            f"lambdahat.lm.token_llc: targets have shape {tuple(targets.shape)} but the recorded per-token losses "
            f"are [sequences, positions] = {list(shape)}; build them with "
            "lambdahat.lm.evaluation_targets(eval_loader) from the evaluation loader of the run."
        )
    if token_ids is not None:
        if targets is None:
            raise ValueError(
                "lambdahat.lm.token_llc: token_ids needs targets=evaluation_targets(eval_loader)."
            )
        ids = torch.as_tensor(
            [token_ids] if isinstance(token_ids, int) else list(token_ids), dtype=torch.long
        )
        missing = sorted(set(ids.tolist()) - set(targets.unique().tolist()))
        if missing:
            raise ValueError(
                f"lambdahat.lm.token_llc: token id(s) {missing} never occur as a target of the evaluation set; "
                "pass ids that it predicts (targets.unique() lists them)."
            )
        return torch.isin(targets, ids)
    if positions is not None:
        out = torch.zeros(shape, dtype=torch.bool)
        for s, t in positions:
            if not (0 <= s < shape[0] and 0 <= t < shape[1]):
                raise ValueError(
                    f"lambdahat.lm.token_llc: position ({s}, {t}) is outside the evaluation set's "
                    f"[sequences, positions] = {list(shape)}."
                )
            out[s, t] = True
        return out
    if mask is not None:
        mask = torch.as_tensor(mask)
        if mask.dtype != torch.bool or tuple(mask.shape) != shape:
            raise ValueError(
                f"lambdahat.lm.token_llc: mask must be a boolean tensor of the per-token losses' shape "
                f"[sequences, positions] = {list(shape)}; got {mask.dtype} of shape {tuple(mask.shape)}."
            )
        return mask.cpu()
    return torch.ones(shape, dtype=torch.bool)


def token_llc(
    result,
    targets: torch.Tensor | None = None,
    *,
    token_ids: int | Sequence[int] | None = None,
    mask: torch.Tensor | None = None,
    positions: Iterable[tuple[int, int]] | None = None,
) -> TokenLLC:
    """λ̂ restricted to a subset ``S`` of the evaluation set's tokens (the module docstring has the formula).

    Parameters
    ----------
    result:
        An :class:`~lambdahat.LLCResult` of a run with a per-token evaluation set.
    targets:
        ``[sequences, positions]`` target ids (:func:`evaluation_targets`); needed for ``token_ids``, checked
        against the recorded shape when given.
    token_ids, mask, positions:
        At most one: ``S`` = the tokens whose target is one of ``token_ids``; the ``True`` entries of a boolean
        ``[sequences, positions]`` mask; or a list of ``(sequence, position)`` pairs. None of them: every counted
        token. Tokens that do not count (NaN losses) are never in ``S``.

    Returns
    -------
    TokenLLC

    Raises
    ------
    ValueError
        The result has no per-token evaluation set, ``targets`` or ``mask`` has the wrong shape, a token id never
        occurs, or ``S`` holds no counted token.
    """
    records, at_init = _records(result)
    shape = tuple(records.shape[2:])
    subset = _subset_mask(targets, shape, token_ids, mask, positions)
    subset = subset & torch.isfinite(at_init)
    n_tokens = int(subset.sum())
    if n_tokens == 0:
        raise ValueError(
            "lambdahat.lm.token_llc: the subset holds no counted token (tokens whose loss is NaN do not count); "
            "choose tokens that the loss counts."
        )
    init = float(at_init[subset].double().mean())
    draws = torch.stack(
        [records[:, d][:, subset].double().mean(dim=-1) for d in range(records.shape[1])], dim=1
    )  # [chains, draws]
    llcs = result.nbeta * (draws.mean(dim=1) - init)
    kept = ~torch.as_tensor(result.diverged, dtype=torch.bool)
    llcs = torch.where(kept, llcs, torch.full_like(llcs, math.nan))
    values = llcs[kept]
    n_kept = len(values)
    std = float(values.std()) if n_kept > 1 else math.nan
    return TokenLLC(
        llcs=llcs.float(),
        llc_mean=float(values.mean()) if n_kept else math.nan,
        llc_std=std,
        llc_stderr=std / math.sqrt(n_kept) if n_kept > 1 else math.nan,
        init_loss=init,
        loss_mean=float(draws[kept].mean()) if n_kept else math.nan,
        n_tokens=n_tokens,
        nbeta=float(result.nbeta),
    )


def token_traces(
    result,
    targets: torch.Tensor | None = None,
    *,
    token_ids: int | Sequence[int] | None = None,
    mask: torch.Tensor | None = None,
    positions: Iterable[tuple[int, int]] | None = None,
):
    """The per-token loss traces as a long table indexed by ``(chain, draw, sequence, position)``.

    Parameters
    ----------
    result, targets, token_ids, mask, positions:
        As in :func:`token_llc` (the subset limits the rows; default every counted token: ``chains · draws ·
        counted tokens`` rows, so select a subset for large evaluation sets).

    Returns
    -------
    pandas.DataFrame
        Index ``(chain, draw, sequence, position)``; columns ``loss`` (``ℓ_{s,t}(w_d)``), ``loss_at_init``
        (``ℓ_{s,t}(w*)``) and, with ``targets``, ``token_id``. Only counted tokens of the subset appear.
    """
    import numpy as np
    import pandas as pd

    records, at_init = _records(result)
    shape = tuple(records.shape[2:])
    subset = _subset_mask(targets, shape, token_ids, mask, positions) & torch.isfinite(at_init)
    seq, pos = (i.numpy() for i in torch.nonzero(subset, as_tuple=True))
    chains, draws = records.shape[:2]
    values = records[:, :, seq, pos].numpy()  # [chains, draws, k]
    index = pd.MultiIndex.from_arrays(
        [
            np.repeat(np.arange(chains), draws * len(seq)),
            np.tile(np.repeat(np.arange(draws), len(seq)), chains),
            np.tile(seq, chains * draws),
            np.tile(pos, chains * draws),
        ],
        names=["chain", "draw", "sequence", "position"],
    )
    frame = {"loss": values.reshape(-1), "loss_at_init": np.tile(at_init[seq, pos].numpy(), chains * draws)}
    if targets is not None:
        frame["token_id"] = np.tile(targets[seq, pos].numpy(), chains * draws)
    return pd.DataFrame(frame, index=index)
