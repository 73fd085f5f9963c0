"""The project's main job on its built-in default: train a grokking model, follow λ̂ over training, explain it.

:func:`run_demo` trains the default :class:`~lambdahat.modadd.ExperimentParams` (p = 53, it memorizes by step
~1000 and generalizes by step ~1600), estimates λ̂ at all its checkpoints with the defaults of
:func:`~lambdahat.modadd.llc_over_training`, runs the Fourier and circuit analyses of the final model and writes a
directory of figures, tables and a ``summary.md``. ``lambdahat demo`` is this function.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd

from lambdahat.modadd.circuits import CircuitReport
from lambdahat.modadd.llc import llc_over_training
from lambdahat.modadd.report import (
    FourierSummary,
    LLCSummary,
    write_circuit_report,
    write_fourier_report,
    write_llc_report,
    write_training_curves,
)
from lambdahat.modadd.train import ExperimentParams, Run, train
from lambdahat.trust import describe

__all__ = ["QUICK_LLC", "QUICK_PARAMS", "DemoResult", "default_demo_dir", "run_demo"]

#: The shrunken model of ``run_demo(quick=True)`` (for tests of the plumbing only: it does not grok).
QUICK_PARAMS = ExperimentParams(
    p=11, embed_dim=8, hidden_size=16, batch_size=32, n_batches=60, n_save_model_checkpoints=4, train_frac=0.8
)
#: The λ̂ settings of ``run_demo(quick=True)``.
QUICK_LLC = {"draws": 10, "burnin_steps": 10, "chains": 2}


def default_demo_dir(base: str | os.PathLike[str] = ".") -> Path:
    """A new directory name ``lambdahat-demo-YYYYmmdd-HHMMSS`` under ``base`` (suffixed ``-2``, ... if taken)."""
    stem = f"lambdahat-demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path = Path(base) / stem
    i = 2
    while path.exists():
        path = Path(base) / f"{stem}-{i}"
        i += 1
    return path


@dataclass
class DemoResult:
    """What :func:`run_demo` found and wrote."""

    out_dir: Path
    run: Run
    llc: pd.DataFrame
    llc_summary: LLCSummary
    fourier: FourierSummary
    circuit: CircuitReport
    wall_seconds: dict[str, float]
    files: list[Path] = field(default_factory=list)

    @property
    def summary_path(self) -> Path:
        return self.out_dir / "summary.md"


def _first_step(rec: pd.DataFrame, column: str, level: float) -> int | None:
    hit = rec[rec[column] >= level]
    return int(hit["step"].iloc[0]) if len(hit) else None


def _fmt_step(step: int | None) -> str:
    return "no checkpoint" if step is None else f"step {step}"


def run_demo(
    out_dir: str | os.PathLike[str] | None = None,
    *,
    quick: bool = False,
    show_progress: bool = True,
    echo: Callable[[str], None] | None = None,
    note: str | None = None,
) -> DemoResult:
    """Train the default model, estimate λ̂ over its checkpoints, analyse its circuit and write a report.

    Parameters
    ----------
    out_dir : path, optional
        A new (or empty) directory; default :func:`default_demo_dir` under the current directory.
    quick : bool, default False
        Use :data:`QUICK_PARAMS` and :data:`QUICK_LLC` instead of the defaults: a few seconds, for testing the
        plumbing (that model does not grok, and its numbers mean nothing).
    show_progress : bool, default True
        tqdm bars for the training and the λ̂ estimates.
    echo : callable, optional
        Called with a line of text at each stage (e.g. ``print``).
    note : str, optional
        A line added to ``summary.md`` (the CLI records its thread setting there).

    Returns
    -------
    DemoResult
        The run, the λ̂ table, the summaries, the wall times per stage, and every file written. Layout of
        ``out_dir``: ``run/`` (the training run), ``summary.md``, ``training_curves.png``,
        ``llc_over_training.csv`` and ``.png``, ``llc_sweep/`` (the crash-safe λ̂ results), ``fourier/``
        (mode heatmap, magnitudes, ablation, circle plot), ``circuit.json``.
    """
    say = echo or (lambda _line: None)
    out = Path(out_dir) if out_dir is not None else default_demo_dir()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"demo: {str(out)!r} exists and is not an empty directory; pass a new --out directory."
        )
    out.mkdir(parents=True, exist_ok=True)
    params = QUICK_PARAMS if quick else ExperimentParams()
    llc_options = QUICK_LLC if quick else {}
    times: dict[str, float] = {}
    t_total = time.perf_counter()

    which = "the quick test model" if quick else "the default model"
    say(f"[1/4] training {which} (p={params.p}, {params.n_batches} steps) into {out / 'run'}")
    t = time.perf_counter()
    run = train(params, out / "run", show_progress=show_progress)
    files = [write_training_curves(run, out)]
    times["training"] = time.perf_counter() - t

    say(f"[2/4] estimating λ̂ at {run.n_checkpoints} checkpoints")
    t = time.perf_counter()
    df = llc_over_training(run, out_dir=out / "llc_sweep", show_progress=show_progress, **llc_options)
    llc_summary = write_llc_report(df, out)
    files += llc_summary.files
    times["llc"] = time.perf_counter() - t

    say("[3/4] Fourier analysis of the embedding")
    t = time.perf_counter()
    fourier = write_fourier_report(run, out / "fourier")
    files += fourier.files
    times["fourier"] = time.perf_counter() - t

    say("[4/4] pizza or clock?")
    t = time.perf_counter()
    circuit, circuit_path = write_circuit_report(run, out / "circuit.json")
    files.append(circuit_path)
    times["circuit"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t_total

    result = DemoResult(
        out_dir=out,
        run=run,
        llc=df,
        llc_summary=llc_summary,
        fourier=fourier,
        circuit=circuit,
        wall_seconds=times,
        files=files,
    )
    result.summary_path.write_text(_summary_markdown(result, quick=quick, note=note))
    result.files.insert(0, result.summary_path)
    return result


def _summary_markdown(res: DemoResult, quick: bool, note: str | None) -> str:
    run, df, s, f = res.run, res.llc, res.llc_summary, res.fourier
    prm = run.params
    rec = run.record
    final = rec.iloc[-1]
    memorized = _first_step(rec, "train_acc", 0.99)
    generalized = _first_step(rec, "test_acc", 0.9)
    a = df.attrs
    drop = 100.0 * (1.0 - s.final / s.peak) if s.peak > 0 else math.nan
    lines = ["# lambdahat demo: modular addition", ""]
    if quick:
        lines += [
            "_Quick mode: a shrunken model that does not grok; the numbers test the plumbing only._",
            "",
        ]
    lines += [
        f"Model: p = {prm.p}, embed_dim = {prm.embed_dim}, hidden_size = {prm.hidden_size}, {prm.activation}, "
        f"train_frac = {prm.train_frac}, Adam lr = {prm.lr}, weight_decay = {prm.weight_decay}, "
        f"batch_size = {prm.batch_size}, {prm.n_batches} steps, {run.n_checkpoints} checkpoints, run_id = {prm.run_id}.",
        "",
        "## Training",
        "",
        f"- final train accuracy {final.train_acc:.4f}, test accuracy {final.test_acc:.4f} "
        f"(train loss {final.train_loss:.4g}, test loss {final.test_loss:.4g})",
        f"- train accuracy first >= 0.99 at {_fmt_step(memorized)}; test accuracy first >= 0.9 at "
        f"{_fmt_step(generalized)}",
        "",
        "## λ̂ over training",
        "",
        f"SGLD, γ (localization) = {a['localization']:g}, ε (learning_rate) = {a['learning_rate']:g}, "
        f"nβ = n/log n = {a['nbeta']:.1f} (n = {a['n_train']} training pairs), {a['chains']} chains × "
        f"{a['draws']} draws after {a['burnin_steps']} burn-in steps, batch {a['batch_size']}, "
        f"restrict_to_orth_grad = {a['restrict_to_orth_grad']}, seed {a['seed']}.",
        "",
        f"- λ̂ at initialization: {s.first:.1f}",
        f"- peak λ̂ = {s.peak:.1f} ± {s.peak_stderr:.1f} (stderr) at step {s.peak_step} "
        f"(checkpoint {s.peak_checkpoint})",
        f"- final λ̂ = {s.final:.1f} ± {s.final_stderr:.1f} at step {s.final_step} ({drop:.0f} % below the peak)",
        f"- {s.mala_line()}",
        f"- {s.trust_line()}",
        f"- an estimate is trusted (status ok) unless: {describe()}",
        "",
        "| step | λ̂ | ± stderr | MALA | train loss | test loss | test acc | status |",
        "|---:|---:|---:|---:|---:|---:|---:|:---|",
    ]
    statuses = df["status"] if "status" in df else pd.Series("ok", index=df.index)
    for (_, r), status in zip(df.iterrows(), statuses):
        lines.append(
            f"| {r.step} | {r.llc_mean:.1f} | {r.llc_stderr:.1f} | {r.mala_acceptance:.3f} | {r.train_loss:.3g} | "
            f"{r.test_loss:.3g} | {r.test_acc:.3f} | {status} |"
        )
    lines += ["", "## Fourier modes of the embedding (final checkpoint)", ""]
    lines += [f"- {line}" for line in f.lines()]
    lines += [
        "",
        "## Circuit: pizza or clock?",
        "",
        f"Verdict: **{res.circuit.verdict}**",
        "",
        "```",
        res.circuit.evidence,
        "```",
        "",
        "## Wall times",
        "",
        ", ".join(f"{k} {v:.1f} s" for k, v in res.wall_seconds.items()),
    ]
    if note:
        lines += ["", note]
    lines += ["", "## Files", ""]
    lines += [f"- `{os.path.relpath(p, res.out_dir)}`" for p in res.files]
    lines += [
        f"- `{os.path.relpath(run.path, res.out_dir)}/` (the training run: params.json, record.csv, checkpoints/)",
        "- `llc_sweep/` (the λ̂ results as they came in: results.csv, sweep.json)",
        "",
    ]
    return "\n".join(lines) + "\n"
