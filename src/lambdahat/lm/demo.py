"""The language-model demo: λ̂ over the training of a toy transformer in which induction heads form.

:func:`run_demo` trains :class:`~lambdahat.lm.toy.AttentionOnlyTransformer` on repeated random sequences
(:mod:`lambdahat.lm.toy`), then estimates at every checkpoint, with one set of SGLD settings:

* λ̂ of the whole model, of each layer (all its heads) and of each head (``params=`` masks of
  :func:`~lambdahat.lm.toy.component_selection`), nβ = N / log N with N the counted tokens of the λ̂ data set
  (:func:`~lambdahat.lm.nbeta_for_tokens`);
* for the whole model, the data-refined λ̂ of the repeated tokens and of the random first period
  (:func:`~lambdahat.lm.token_llc` on a held-out evaluation set, with the same nβ),

beside the training record: the loss on the repeated part and on the random part, and each head's induction and
previous-token scores. Every estimate is one point of the sweep engine (:func:`lambdahat.sweeps.runner.run_sweep`):
finished points are stored at once in ``llc_sweep/`` and a rerun into the same directory skips them.
``lambdahat lm demo`` is this function.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..config import LLCConfig
from ..problem import prepare
from ..sweeps.runner import SweepRun, estimate, result_row, run_sweep
from .losses import next_token_loss
from .nbeta import nbeta_for_tokens
from .tokens import token_llc
from .toy import (
    AttentionOnlyTransformer,
    ToyParams,
    ToyRun,
    component_selection,
    repeated_sequences,
    target_masks,
    train,
)

__all__ = ["DEMO_LLC", "DEMO_PARAMS", "QUICK_LLC", "QUICK_PARAMS", "LMDemoResult", "components", "run_demo"]

#: The demo's model and training (measured: the repeated-token loss falls fastest between steps 600 and 800).
DEMO_PARAMS = ToyParams()
#: The demo's sampler settings, measured, not tuned to a verdict: learning_rate 1e-4 came from a pilot at 3e-5, 1e-4
#: and 3e-4 (γ = 100) on a trained checkpoint (heads and layers then had MALA acceptance ~0.92, the whole model
#: ~0.6: the trust policy flags it); with 50 burn-in steps every point's configurational temperature was ~0.81 (not
#: relaxed), hence 80. nβ is set from the λ̂ data set's counted tokens by the demo.
DEMO_LLC = LLCConfig(draws=50, chains=4, burnin_steps=80, learning_rate=1e-4, localization=200.0)
#: A shrunken run for tests of the plumbing (its numbers mean nothing).
QUICK_PARAMS = ToyParams(
    vocab=12,
    n_ctx=10,
    min_period=3,
    max_period=5,
    n_heads=2,
    d_model=8,
    d_head=4,
    steps=20,
    checkpoints=2,
    eval_sequences=16,
)
QUICK_LLC = LLCConfig(draws=6, chains=2, burnin_steps=4, learning_rate=1e-4, localization=200.0)
#: Sequences of the λ̂ data set, of the evaluation set of the token-subset λ̂, and the batch size.
_DATA = {"demo": (384, 64, 32), "quick": (32, 8, 16)}


def components(params: ToyParams) -> list[str]:
    """``["all", "l0", ..., "l0h0", ...]``: the whole model, every layer, every head."""
    layers = [f"l{layer}" for layer in range(params.n_layers)]
    heads = [f"l{layer}h{head}" for layer in range(params.n_layers) for head in range(params.n_heads)]
    return ["all", *layers, *heads]


@dataclasses.dataclass
class LMDemoResult:
    """What :func:`run_demo` found and wrote: the training run, the λ̂ table (one row per checkpoint and
    component), the wide table (one row per checkpoint), the wall times and the files."""

    out_dir: Path
    run: ToyRun
    llc: pd.DataFrame
    table: pd.DataFrame
    story: list[str]
    wall_seconds: dict[str, float]
    files: list[Path] = dataclasses.field(default_factory=list)


def _data(
    params: ToyParams, quick: bool
) -> tuple[list[torch.Tensor], list[torch.Tensor], dict[str, torch.Tensor]]:
    """The λ̂ data set and the evaluation set (batches of ids, their own seeds) and the evaluation set's masks."""
    n_llc, n_eval, batch = _DATA["quick" if quick else "demo"]
    tokens, _ = repeated_sequences(n_llc, params, torch.Generator().manual_seed(20_000 + params.seed))
    eval_tokens, periods = repeated_sequences(
        n_eval, params, torch.Generator().manual_seed(30_000 + params.seed)
    )
    return list(tokens.split(batch)), list(eval_tokens.split(batch)), target_masks(periods, params.n_ctx)


def _point(shared: Mapping[str, Any], task: Mapping[str, Any]) -> dict[str, Any]:
    """One (checkpoint, component): load the weights into the shared model, estimate, and for the whole model
    the λ̂ of the repeated and of the random tokens."""
    model = shared["model"]
    model.load_state_dict(task["state_dict"])
    config, options = shared["config"], shared["options"]
    whole = task["component"] == "all"
    problem = prepare(
        model,
        shared["loader"],
        config,
        loss_fn=next_token_loss,
        params=component_selection(model, task["component"]),
        evaluation=shared["evaluation"] if whole else None,
        compile=False,
    )
    result = estimate(problem, config, options)
    row = result_row(result)
    if whole:
        for name, mask in shared["masks"].items():
            sub = token_llc(result, mask=mask)
            row[f"llc_{name}"], row[f"llc_{name}_stderr"] = sub.llc_mean, sub.llc_stderr
    return row


def _sweep(run: ToyRun, config: LLCConfig, quick: bool, out_dir: Path, seed: int, show_progress: bool):
    loader, evaluation, masks = _data(run.params, quick)
    nbeta = nbeta_for_tokens(loader)
    config = dataclasses.replace(config, nbeta=float(nbeta))
    names = components(run.params)
    points = [
        {"checkpoint": step, "component": comp, "index": i}
        for i, (step, comp) in enumerate((s, c) for s in run.steps for c in names)
    ]
    options = {"seed": seed, "chain_batch": None}

    def prepare_task(point: dict[str, Any]) -> dict[str, Any]:
        state = torch.load(run.checkpoint_path(point["checkpoint"]), weights_only=True)
        return {"component": point["component"], "state_dict": state}

    df = run_sweep(
        kind="lm-demo",
        points=points,
        point_columns=[("checkpoint", "int"), ("component", "str")],
        fn=_point,
        shared={
            "model": AttentionOnlyTransformer(run.params),
            "loader": loader,
            "evaluation": evaluation,
            "masks": masks,
            "config": config,
            "options": options,
        },
        prepare=prepare_task,
        config={
            "estimator": config.to_dict(),
            "toy": dataclasses.asdict(run.params),
            "steps": run.steps,
            "seed": seed,
        },
        options=options,
        seed=seed,
        run=SweepRun(out_dir=out_dir, show_progress=show_progress),
        desc="λ̂ (checkpoint, component)",
        value_columns=[
            ("llc_repeated", "float"),
            ("llc_repeated_stderr", "float"),
            ("llc_random", "float"),
            ("llc_random_stderr", "float"),
        ],
    )
    df.attrs.update(nbeta=float(nbeta), n_tokens=nbeta.n, llc_sequences=len(loader) * len(loader[0]))
    return df


def wide_table(run: ToyRun, llc: pd.DataFrame) -> pd.DataFrame:
    """One row per checkpoint: the training record's losses and scores, λ̂ (and its standard error) of every
    component, and the whole model's λ̂ on the repeated and on the random tokens."""
    rec = run.record.set_index("step")
    out = rec[
        ["loss", "loss_random", "loss_repeated", "induction_score_max", "previous_token_score_max"]
    ].copy()
    values = llc.pivot(index="checkpoint", columns="component", values="llc_mean")
    errors = llc.pivot(index="checkpoint", columns="component", values="llc_stderr")
    for comp in components(run.params):
        out[f"llc_{comp}"] = values[comp]
        out[f"llc_{comp}_stderr"] = errors[comp]
    whole = llc[llc["component"] == "all"].set_index("checkpoint")
    for col in ("llc_repeated", "llc_repeated_stderr", "llc_random", "llc_random_stderr"):
        out[col] = whole[col]
    heads = [c for c in rec.columns if c.startswith("induction_l")]
    out["top_induction_head"] = rec[heads].idxmax(axis=1).str.removeprefix("induction_")
    out.index.name = "step"
    return out.reset_index()


def measured_story(table: pd.DataFrame, run: ToyRun) -> list[str]:
    """Sentences read off the table (nothing assumed): where the repeated-part loss drops most, and how λ̂ of the
    whole model, of each layer and of the final top induction head moved over that interval."""
    t = table.reset_index(drop=True)
    if len(t) < 2:
        return ["(one checkpoint: no change to describe)"]
    drops = -t["loss_repeated"].diff()
    i = int(drops.iloc[1:].idxmax())
    a, b = t.iloc[i - 1], t.iloc[i]
    head = t["top_induction_head"].iloc[-1]
    final_scores = run.record.iloc[-1]
    prev_cols = [c for c in run.record.columns if c.startswith("prev_token_l0")]
    prev_head = str(final_scores[prev_cols].astype(float).idxmax()).removeprefix("prev_token_")
    lines = [
        f"The loss on the repeated tokens drops most between steps {a.step} and {b.step}: "
        f"{a.loss_repeated:.3f} → {b.loss_repeated:.3f} (random-part loss {a.loss_random:.3f} → "
        f"{b.loss_random:.3f}; max induction score {a.induction_score_max:.2f} → {b.induction_score_max:.2f}, "
        f"max previous-token score in layer 0 {a.previous_token_score_max:.2f} → {b.previous_token_score_max:.2f}).",
    ]
    for comp in dict.fromkeys(
        ["all", *[f"l{layer}" for layer in range(run.params.n_layers)], prev_head, head]
    ):
        col = f"llc_{comp}"
        if col not in t:
            continue
        series = ", ".join(f"{v:.1f}" for v in t[col])
        lines.append(
            f"λ̂ {comp}: {a[col]:.1f} ± {a[col + '_stderr']:.1f} → {b[col]:.1f} ± {b[col + '_stderr']:.1f} over "
            f"that interval; over all checkpoints: {series}."
        )
    lines.append(
        f"The head with the highest final induction score is {head} "
        f"({final_scores[f'induction_{head}']:.2f}); the head of layer 0 with the highest final previous-token "
        f"score is {prev_head} ({final_scores[f'prev_token_{prev_head}']:.2f})."
    )
    if "llc_repeated" in t:
        lines.append(
            "λ̂ of the whole model restricted to the repeated tokens: "
            + ", ".join(f"{v:.1f}" for v in t["llc_repeated"])
            + "; to the random first period: "
            + ", ".join(f"{v:.1f}" for v in t["llc_random"])
            + "."
        )
    return lines


def plot_demo(table: pd.DataFrame, params: ToyParams):
    """Three panels over training: losses and scores; λ̂ of the model, the layers and the token subsets; λ̂ of
    every head."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    ax.plot(table["step"], table["loss_repeated"], "o-", label="loss, repeated tokens")
    ax.plot(table["step"], table["loss_random"], "o-", label="loss, random period")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    twin = ax.twinx()
    twin.plot(table["step"], table["induction_score_max"], "s--", color="C3", label="max induction score")
    twin.plot(
        table["step"], table["previous_token_score_max"], "s--", color="C4", label="max prev-token score (l0)"
    )
    twin.set_ylabel("attention score")
    ax.legend(loc="center left", fontsize=8)
    twin.legend(loc="center right", fontsize=8)
    ax.set_title("training")

    def lines(ax, columns, title):
        for col, label in columns:
            if col in table:
                ax.errorbar(
                    table["step"],
                    table[col],
                    yerr=table.get(col + "_stderr"),
                    fmt="o-",
                    label=label,
                    capsize=2,
                )
        ax.set_xlabel("training step")
        ax.set_ylabel("λ̂")
        ax.set_title(title)
        ax.legend(fontsize=8)

    layer_cols = [(f"llc_l{layer}", f"layer {layer}") for layer in range(params.n_layers)]
    lines(
        axes[1],
        [
            ("llc_all", "whole model"),
            *layer_cols,
            ("llc_repeated", "whole, repeated tokens"),
            ("llc_random", "whole, random period"),
        ],
        "λ̂: model, layers, token subsets",
    )
    head_cols = [
        (f"llc_l{layer}h{head}", f"l{layer}h{head}")
        for layer in range(params.n_layers)
        for head in range(params.n_heads)
    ]
    lines(axes[2], head_cols, "λ̂ per head")
    fig.tight_layout()
    return fig


def run_demo(
    out_dir: str | os.PathLike[str],
    *,
    quick: bool = False,
    seed: int = 0,
    show_progress: bool = True,
    echo: Callable[[str], None] | None = None,
    note: str | None = None,
) -> LMDemoResult:
    """Train the toy transformer, estimate λ̂ over its checkpoints per model, layer and head, and write a report.

    Parameters
    ----------
    out_dir:
        The output directory (created; a rerun into it resumes the λ̂ sweep, the training is redone).
    quick:
        :data:`QUICK_PARAMS` and :data:`QUICK_LLC`: a few seconds, for tests (the numbers mean nothing).
    seed:
        Master seed of the λ̂ chains (the same for every point).
    show_progress, echo, note:
        Progress bars; a function called with a line at each stage; a line added to ``summary.md``.

    Returns
    -------
    LMDemoResult
        Files in ``out_dir``: ``run/`` (params.json, record.csv, checkpoints/), ``llc_sweep/`` (the stored
        points), ``llc_over_training.csv`` (long: checkpoint × component), ``table.csv`` (wide: one row per
        checkpoint), ``llc_over_training.png``, ``summary.md``.
    """
    say = echo or (lambda _line: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params, config = (QUICK_PARAMS, QUICK_LLC) if quick else (DEMO_PARAMS, DEMO_LLC)
    times: dict[str, float] = {}
    start = time.perf_counter()
    say(
        f"[1/3] training the attention-only transformer ({params.n_layers} layers × {params.n_heads} heads, "
        f"{params.steps} steps, {params.checkpoints} checkpoints) into {out / 'run'}"
    )
    run = train(params, out / "run", show_progress=show_progress)
    times["training"] = time.perf_counter() - start
    n_points = len(run.steps) * len(components(params))
    say(
        f"[2/3] λ̂ at {len(run.steps)} checkpoints × {len(components(params))} components ({n_points} estimates)"
    )
    t = time.perf_counter()
    llc = _sweep(run, config, quick, out / "llc_sweep", seed, show_progress)
    times["llc"] = time.perf_counter() - t
    say("[3/3] tables, figure and summary")
    table = wide_table(run, llc)
    story = measured_story(table, run)
    files = [out / "llc_over_training.csv", out / "table.csv", out / "llc_over_training.png"]
    llc.to_csv(files[0], index=False)
    table.to_csv(files[1], index=False)
    fig = plot_demo(table, params)
    fig.savefig(files[2], dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    times["total"] = time.perf_counter() - start
    result = LMDemoResult(out, run, llc, table, story, times, files)
    result.files.insert(0, out / "summary.md")
    result.files[0].write_text(_summary(result, config, llc.attrs, quick, note))
    return result


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def _summary(
    res: LMDemoResult, config: LLCConfig, attrs: Mapping[str, Any], quick: bool, note: str | None
) -> str:
    p = res.run.params
    lines = ["# lambdahat lm demo: induction heads", ""]
    if quick:
        lines += ["_Quick mode: a shrunken run for tests; the numbers mean nothing._", ""]
    lines += [
        f"Model: attention-only transformer, {p.n_layers} layers × {p.n_heads} heads, d_model {p.d_model}, "
        f"d_head {p.d_head}, vocabulary {p.vocab}, context {p.n_ctx}; data: random tokens repeated with a period "
        f"drawn from [{p.min_period}, {p.max_period}]; AdamW lr {p.learning_rate}, batch {p.batch_size}, "
        f"{p.steps} steps.",
        "",
        f"λ̂: SGLD, learning_rate {config.learning_rate:g}, localization {config.localization:g}, "
        f"nβ = {attrs.get('nbeta', math.nan):.1f} (n = {attrs.get('n_tokens')} counted tokens of "
        f"{attrs.get('llc_sequences')} sequences), {config.chains} chains × {config.draws} draws after "
        f"{config.burnin_steps} burn-in steps. Token-subset λ̂ (repeated / random tokens) on a held-out "
        "evaluation set with the same nβ.",
        "",
        "## What was measured",
        "",
        *[f"- {line}" for line in res.story],
        "",
        "## Per checkpoint",
        "",
    ]
    cols = ["step", "loss_repeated", "induction_score_max", "previous_token_score_max", "top_induction_head"]
    cols += [c for c in res.table.columns if c.startswith("llc_") and not c.endswith("_stderr")]
    lines.append(
        "| " + " | ".join(c.removeprefix("llc_") if c.startswith("llc_") else c for c in cols) + " |"
    )
    lines.append("|" + "---:|" * len(cols))
    for _, row in res.table.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    statuses = res.llc["status"].map(lambda s: s.split(":")[0]).value_counts().to_dict()
    lines += [
        "",
        f"Trust statuses of the {len(res.llc)} estimates: {statuses} (reasons per point in llc_over_training.csv).",
        "",
        "Wall times: " + ", ".join(f"{k} {v:.1f} s" for k, v in res.wall_seconds.items()),
    ]
    if note:
        lines += ["", note]
    lines += ["", "## Files", "", *[f"- `{os.path.relpath(f, res.out_dir)}`" for f in res.files]]
    return "\n".join(lines) + "\n"
