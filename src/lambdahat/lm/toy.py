"""A toy language model where induction heads form: an attention-only transformer on repeated random sequences.

Every sequence is ``k`` random tokens repeated until the context of ``T`` tokens is full, with a period ``k``
drawn per sequence (uniform in ``[min_period, max_period]``). The first ``k`` tokens cannot be predicted (their
loss stays near ``log V``); from position ``k + 1`` on, each next token is the one that followed the previous
occurrence of the current token, which, because ``k`` varies, position alone cannot locate: a two-layer
attention-only transformer predicts it with an **induction circuit**: a previous-token head in layer 0 writes "my previous token was a" into each position, and
an induction head in layer 1 attends from the current token ``a`` to the position whose previous token was ``a``
and copies its token (K-composition; Elhage et al. 2021, Olsson et al. 2022).

The model is plain torch (no transformers needed): token and learned position embeddings, ``L`` attention-only
blocks with ``H`` heads (no MLP, no norm), an unembedding. Its parameters are named like TransformerLens's
(``blocks.{l}.attn.W_Q`` ``[H, d_model, d_head]`` ...), so a head is one index of the leading axis
(:func:`head_selection`). :func:`train` trains it with Adam and saves checkpoints with the loss on the repeated
half and an induction score.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AttentionOnlyTransformer",
    "ToyParams",
    "ToyRun",
    "component_selection",
    "head_selection",
    "induction_score",
    "load_toy_run",
    "repeated_sequences",
    "split_losses",
    "target_masks",
    "train",
]


@dataclass(frozen=True)
class ToyParams:
    """The toy model, its data and its training.

    Attributes
    ----------
    vocab, n_ctx:
        Vocabulary size ``V`` and sequence length ``T``.
    min_period, max_period:
        The range of the period ``k`` of the sequences (drawn uniformly per sequence).
    n_layers, n_heads, d_model, d_head:
        The attention-only transformer.
    steps, batch_size, learning_rate, weight_decay:
        AdamW training on fresh random sequences at every step.
    checkpoints:
        How many checkpoints to save (evenly spaced, the first at step 0 and the last at ``steps``).
    eval_sequences:
        The fixed held-out sequences on which the recorded losses and the induction score are measured.
    seed:
        Seeds the initialization and the training stream.
    """

    vocab: int = 48
    n_ctx: int = 24
    min_period: int = 4
    max_period: int = 12
    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 32
    d_head: int = 8
    steps: int = 1600
    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    checkpoints: int = 9
    eval_sequences: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.min_period <= self.max_period < self.n_ctx - 1:
            raise ValueError(
                f"ToyParams: need 2 <= min_period <= max_period < n_ctx - 1 (a period must repeat at least once "
                f"inside the context); got min_period={self.min_period}, max_period={self.max_period}, "
                f"n_ctx={self.n_ctx}."
            )


class AttentionOnlyTransformer(nn.Module):
    """``L`` blocks of ``H`` causal attention heads, no MLPs, no norms, learned positions.

    .. math::

        x^{(0)}_t = W_E[\\text{tok}_t] + W_{pos}[t], \\qquad
        x^{(l+1)} = x^{(l)} + \\sum_h \\operatorname{softmax}\\Big(\\frac{Q_h K_h^\\top}{\\sqrt{d_{head}}}
        + \\text{causal}\\Big) V_h W_O^{h}, \\qquad \\text{logits} = x^{(L)} W_U + b_U

    with ``Q_h = x W_Q^h + b_Q^h`` (likewise ``K``, ``V``).

    Parameters
    ----------
    params:
        The sizes (:class:`ToyParams`); the initialization is seeded by ``params.seed``.
    """

    def __init__(self, params: ToyParams) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(params.seed)
        V, T, d, H, dh = params.vocab, params.n_ctx, params.d_model, params.n_heads, params.d_head

        def init(*shape: int, fan_in: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=g) / math.sqrt(fan_in))

        self.W_E = init(V, d, fan_in=d)
        self.W_pos = init(T, d, fan_in=d)
        self.blocks = nn.ModuleList()
        for _ in range(params.n_layers):
            block = nn.Module()
            block.attn = nn.Module()
            for name in ("W_Q", "W_K", "W_V"):
                setattr(block.attn, name, init(H, d, dh, fan_in=d))
            for name in ("b_Q", "b_K", "b_V"):
                setattr(block.attn, name, nn.Parameter(torch.zeros(H, dh)))
            block.attn.W_O = init(H, dh, d, fan_in=H * dh)
            self.blocks.append(block)
        self.W_U = init(d, V, fan_in=d)
        self.b_U = nn.Parameter(torch.zeros(V))
        self.register_buffer("causal", torch.tril(torch.ones(T, T, dtype=torch.bool)), persistent=False)
        self.params = params

    def attention(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Output ``[B, T, d_model]`` of one attention layer and its pattern ``[B, H, T, T]``."""
        attn = self.blocks[layer].attn
        T = x.shape[1]
        q = torch.einsum("btd,hde->bhte", x, attn.W_Q) + attn.b_Q[:, None]
        k = torch.einsum("btd,hde->bhte", x, attn.W_K) + attn.b_K[:, None]
        v = torch.einsum("btd,hde->bhte", x, attn.W_V) + attn.b_V[:, None]
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~self.causal[:T, :T], float("-inf"))
        pattern = scores.softmax(-1)
        out = torch.einsum("bhts,bhse,hed->btd", pattern, v, attn.W_O)
        return out, pattern

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, T, V]`` for token ids ``[B, T]``."""
        x = self.W_E[tokens] + self.W_pos[: tokens.shape[1]]
        for layer in range(len(self.blocks)):
            x = x + self.attention(layer, x)[0]
        return x @ self.W_U + self.b_U

    def patterns(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """The attention patterns ``[B, H, T, T]`` of every layer."""
        x = self.W_E[tokens] + self.W_pos[: tokens.shape[1]]
        out = []
        for layer in range(len(self.blocks)):
            delta, pattern = self.attention(layer, x)
            out.append(pattern)
            x = x + delta
        return out


def repeated_sequences(
    n: int, params: ToyParams, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sequences ``[n, T]`` of ``k`` uniform random tokens repeated with period ``k``, and the periods
    ``[n]`` (uniform in ``[min_period, max_period]``)."""
    periods = torch.randint(params.min_period, params.max_period + 1, (n,), generator=generator)
    first = torch.randint(0, params.vocab, (n, params.max_period), generator=generator)
    positions = torch.arange(params.n_ctx)[None] % periods[:, None]
    return first.gather(1, positions), periods


def target_masks(periods: torch.Tensor, n_ctx: int) -> dict[str, torch.Tensor]:
    """Masks ``[n, T - 1]`` over next-token targets (entry ``t`` is target ``t + 1``): ``"random"``, the targets
    ``1 .. k-1`` of the first period (unpredictable), and ``"repeated"``, the targets ``k+1 .. T-1`` that an
    induction head predicts (target ``k``, the first repeat, needs the period and is in neither)."""
    target = torch.arange(1, n_ctx)[None]
    k = periods[:, None]
    return {"random": target < k, "repeated": target > k}


def split_losses(logits: torch.Tensor, tokens: torch.Tensor, periods: torch.Tensor) -> dict[str, float]:
    """Mean next-token loss over all targets, over the random first period and over the repeated part
    (:func:`target_masks`)."""
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    masks = target_masks(periods, tokens.shape[1])
    return {
        "loss": float(losses.mean()),
        "loss_random": float(losses[masks["random"]].mean()),
        "loss_repeated": float(losses[masks["repeated"]].mean()),
    }


def induction_score(
    model: AttentionOnlyTransformer, tokens: torch.Tensor, periods: torch.Tensor
) -> torch.Tensor:
    """Per head ``[L, H]``: the mean attention from each position ``t >= k`` to ``t - k + 1``, the token after the
    previous occurrence of the current token (1 for a perfect induction head, about ``1/t`` for a uniform one)."""
    with torch.no_grad():
        patterns = model.patterns(tokens)
    T = tokens.shape[1]
    t = torch.arange(T)[None].expand(len(tokens), T)
    k = periods[:, None]
    valid = t >= k
    source = (t - k + 1).clamp(min=0)
    scores = []
    for p in patterns:  # [B, H, T, T]
        picked = p.gather(-1, source[:, None, :, None].expand(-1, p.shape[1], -1, 1))[..., 0]  # [B, H, T]
        scores.append((picked * valid[:, None]).sum(dim=(0, 2)) / valid.sum())
    return torch.stack(scores)


def previous_token_score(model: AttentionOnlyTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """Per head ``[L, H]``: the mean attention from each position ``t >= 1`` to ``t - 1``."""
    with torch.no_grad():
        patterns = model.patterns(tokens)
    t = torch.arange(1, tokens.shape[1])
    return torch.stack([p[:, :, t, t - 1].mean(dim=(0, 2)) for p in patterns])


def head_selection(model: AttentionOnlyTransformer, layer: int, head: int) -> dict[str, torch.Tensor]:
    """``params=`` mask of one head: index ``head`` of ``W_Q, W_K, W_V, b_Q, b_K, b_V, W_O`` of block ``layer``
    (``4 · d_model · d_head + 3 · d_head`` scalars)."""
    n_layers, n_heads = len(model.blocks), model.params.n_heads
    if not (0 <= layer < n_layers and 0 <= head < n_heads):
        raise ValueError(
            f"head_selection: the model has {n_layers} layers of {n_heads} heads; got layer {layer}, head {head}."
        )
    out = {}
    for name, p in model.blocks[layer].attn.named_parameters():
        mask = torch.zeros(p.shape, dtype=torch.bool)
        mask[head] = True
        out[f"blocks.{layer}.attn.{name}"] = mask
    return out


def component_selection(model: AttentionOnlyTransformer, component: str):
    """``params=`` for a named component: ``"all"`` (``None``: every parameter), ``"l1"`` (every head of block 1)
    or ``"l1h3"`` (head 3 of block 1)."""
    if component == "all":
        return None
    if component.startswith("l") and "h" in component:
        layer, head = component[1:].split("h")
        return head_selection(model, int(layer), int(head))
    if component.startswith("l") and component[1:].isdigit():
        layer = int(component[1:])
        if not 0 <= layer < len(model.blocks):
            raise ValueError(
                f"component_selection: the model has {len(model.blocks)} layers; got {component!r}."
            )
        return f"blocks.{layer}"
    raise ValueError(
        f"component_selection: expected 'all', 'l<layer>' or 'l<layer>h<head>'; got {component!r}."
    )


def checkpoint_steps(steps: int, count: int) -> list[int]:
    """``count`` evenly spaced steps from 0 to ``steps`` (fewer when ``steps`` is small)."""
    if count < 2:
        return [steps]
    return sorted({round(i * steps / (count - 1)) for i in range(count)})


@dataclass
class ToyRun:
    """A trained toy run on disk: ``params.json``, ``record.csv`` (one row per checkpoint), ``checkpoints/``."""

    path: Path
    params: ToyParams
    steps: list[int]
    record: object  # pandas.DataFrame

    def checkpoint_path(self, step: int) -> Path:
        return self.path / "checkpoints" / f"step_{step:06d}.pt"

    @property
    def checkpoint_paths(self) -> list[Path]:
        return [self.checkpoint_path(s) for s in self.steps]

    def model(self, step: int | None = None) -> AttentionOnlyTransformer:
        """A fresh model with the weights of checkpoint ``step`` (default: the last)."""
        model = AttentionOnlyTransformer(self.params)
        state = torch.load(self.checkpoint_path(self.steps[-1] if step is None else step), weights_only=True)
        model.load_state_dict(state)
        return model.eval()


def eval_tokens(params: ToyParams) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed held-out sequences of a run (their own seed, apart from the training stream)."""
    return repeated_sequences(
        params.eval_sequences, params, torch.Generator().manual_seed(10_000 + params.seed)
    )


def _measure(model: AttentionOnlyTransformer, data: tuple[torch.Tensor, torch.Tensor], step: int) -> dict:
    tokens, periods = data
    with torch.no_grad():
        row = {"step": step, **split_losses(model(tokens), tokens, periods)}
    ind, prev = induction_score(model, tokens, periods), previous_token_score(model, tokens)
    row["induction_score_max"] = float(ind[-1].max())
    row["previous_token_score_max"] = float(prev[0].max())
    for layer in range(ind.shape[0]):
        for head in range(ind.shape[1]):
            row[f"induction_l{layer}h{head}"] = float(ind[layer, head])
            row[f"prev_token_l{layer}h{head}"] = float(prev[layer, head])
    return row


def train(
    params: ToyParams,
    out_dir: str | os.PathLike[str],
    *,
    show_progress: bool = False,
    on_checkpoint: Callable[[dict[str, float]], None] | None = None,
) -> ToyRun:
    """Train the toy model with AdamW on fresh repeated sequences and save its checkpoints.

    Parameters
    ----------
    params:
        The run.
    out_dir:
        A new or empty directory; gets ``params.json``, ``record.csv`` and ``checkpoints/step_XXXXXX.pt``
        (state dicts) at the steps of :func:`checkpoint_steps`.
    show_progress:
        A tqdm bar over the steps.
    on_checkpoint:
        Called with the record row of every checkpoint.

    Returns
    -------
    ToyRun
    """
    import pandas as pd
    from tqdm.auto import tqdm

    out = Path(out_dir)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    (out / "params.json").write_text(json.dumps(asdict(params), indent=2) + "\n")
    model = AttentionOnlyTransformer(params)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay
    )
    stream = torch.Generator().manual_seed(params.seed + 1)
    held_out = eval_tokens(params)
    saves = checkpoint_steps(params.steps, params.checkpoints)
    rows = []
    for step in tqdm(range(params.steps + 1), disable=not show_progress, desc="training", unit="step"):
        if step in saves:
            model.eval()
            torch.save(model.state_dict(), out / "checkpoints" / f"step_{step:06d}.pt")
            rows.append(_measure(model, held_out, step))
            if on_checkpoint is not None:
                on_checkpoint(rows[-1])
            model.train()
        if step == params.steps:
            break
        tokens, _ = repeated_sequences(params.batch_size, params, stream)
        logits = model(tokens)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    record = pd.DataFrame(rows)
    record.to_csv(out / "record.csv", index=False)
    return ToyRun(out, params, saves, record)


def load_toy_run(path: str | os.PathLike[str]) -> ToyRun:
    """A run written by :func:`train`."""
    import pandas as pd

    path = Path(path)
    params = ToyParams(**json.loads((path / "params.json").read_text()))
    record = pd.read_csv(path / "record.csv")
    return ToyRun(path, params, [int(s) for s in record["step"]], record)
