"""Write the analyses of a run to files (figures as PNG, tables as CSV, verdicts as JSON).

Shared by the ``lambdahat modadd ...`` commands and ``lambdahat demo``; every function returns what it found
together with the paths it wrote, so callers can print both.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from lambdahat.modadd.circuits import CircuitReport, classify_circuit
from lambdahat.modadd.fourier import mode_ablation_table, mode_magnitudes, mode_magnitudes_over_checkpoints
from lambdahat.modadd.llc import plot_llc_over_training
from lambdahat.modadd.plots import (
    plot_mode_ablation,
    plot_mode_circle,
    plot_mode_heatmap,
    plot_mode_magnitudes,
    plot_training_curves,
)
from lambdahat.modadd.train import Run
from lambdahat.trust import MIN_ACCEPTANCE, status_kind

__all__ = [
    "KEY_MODE_FRACTION",
    "FourierSummary",
    "LLCSummary",
    "circuit_json",
    "key_modes",
    "write_circuit_report",
    "write_fourier_report",
    "write_llc_report",
    "write_training_curves",
]

#: A non-constant mode is a key mode when its embedding magnitude is at least this fraction of the largest one.
KEY_MODE_FRACTION = 0.25
_MAX_KEY_MODES = 8
_DPI = 120


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    return path


def write_training_curves(run: Run, out_dir: Path) -> Path:
    """``out_dir/training_curves.png``: train/test loss and accuracy over the checkpoints."""
    return _save(plot_training_curves(run), Path(out_dir) / "training_curves.png")


@dataclass
class LLCSummary:
    """The λ̂ curve in a few numbers: at the first and last checkpoints, and at its peak; and the trust policy's
    verdicts (:mod:`lambdahat.trust`): the checkpoints whose estimate is untrusted or diverged, and why."""

    first: float
    peak: float
    peak_stderr: float
    peak_step: int
    peak_checkpoint: int
    final: float
    final_stderr: float
    final_step: int
    mala_min: float
    mala_mean: float
    files: list[Path] = field(default_factory=list)
    #: ``checkpoint -> status`` of every checkpoint whose status is not ``"ok"`` (untrusted, diverged, failed).
    distrusted: dict[int, str] = field(default_factory=dict)
    n_checkpoints: int = 0

    def trust_line(self) -> str:
        """One line on the verdicts, e.g. ``"trust: 41 of 41 checkpoints ok"``."""
        if not self.distrusted:
            return f"trust: {self.n_checkpoints} of {self.n_checkpoints} checkpoints ok"
        kinds = pd.Series([status_kind(v) for v in self.distrusted.values()]).value_counts()
        counts = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
        first_c, first_s = next(iter(self.distrusted.items()))
        return (
            f"trust: {self.n_checkpoints - len(self.distrusted)} of {self.n_checkpoints} checkpoints ok, {counts} "
            f"(checkpoint {first_c}: {first_s})"
        )

    @classmethod
    def from_table(cls, df: pd.DataFrame) -> LLCSummary:
        ok = df[df["llc_mean"].notna()]
        if ok.empty:
            raise ValueError(
                "no checkpoint has a λ̂ estimate: every one failed or diverged (see the 'status' and 'warnings' "
                "columns)."
            )
        peak = ok.loc[ok["llc_mean"].idxmax()]
        last = ok.iloc[-1]
        statuses = df["status"] if "status" in df else pd.Series("ok", index=df.index)
        distrusted = {int(c): str(v) for c, v in zip(df["checkpoint"], statuses) if status_kind(v) != "ok"}
        return cls(
            first=float(ok["llc_mean"].iloc[0]),
            peak=float(peak["llc_mean"]),
            peak_stderr=float(peak["llc_stderr"]),
            peak_step=int(peak["step"]),
            peak_checkpoint=int(peak["checkpoint"]),
            final=float(last["llc_mean"]),
            final_stderr=float(last["llc_stderr"]),
            final_step=int(last["step"]),
            mala_min=float(ok["mala_acceptance"].min()),
            mala_mean=float(ok["mala_acceptance"].mean()),
            distrusted=distrusted,
            n_checkpoints=len(df),
        )

    def mala_line(self) -> str:
        """The acceptance in one line, against the trust policy's least mean acceptance."""
        return (
            f"MALA acceptance: mean {self.mala_mean:.3f}, lowest {self.mala_min:.3f} (the trust policy asks for "
            f">= {MIN_ACCEPTANCE:g})"
        )


def write_llc_report(df: pd.DataFrame, out_dir: Path) -> LLCSummary:
    """``out_dir/llc_over_training.csv`` and ``.png`` from the table of :func:`llc_over_training`.

    The table is always written; the figure only when some checkpoint has an estimate (otherwise this raises a
    ``ValueError`` after writing the CSV, rather than saving an empty figure).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv = out_dir / "llc_over_training.csv"
    df.to_csv(csv, index=False)
    summary = LLCSummary.from_table(df)
    png = _save(plot_llc_over_training(df), out_dir / "llc_over_training.png")
    summary.files = [csv, png]
    return summary


def key_modes(magnitudes: Any) -> list[int]:
    """Non-constant modes with magnitude >= ``KEY_MODE_FRACTION`` × the largest, strongest first (at most 8)."""
    mags = [float(m) for m in magnitudes]
    nonconst = sorted(range(1, len(mags)), key=lambda k: -mags[k])
    if not nonconst or mags[nonconst[0]] <= 0:
        return []
    top = mags[nonconst[0]]
    return [k for k in nonconst if mags[k] >= KEY_MODE_FRACTION * top][:_MAX_KEY_MODES]


@dataclass
class FourierSummary:
    """The embedding's key Fourier modes at one checkpoint and their keep-only-mode ablation losses."""

    checkpoint: int
    step: int
    key_modes: list[int]
    magnitudes: dict[int, float]
    ablation_loss: dict[int, float]
    baseline_loss: float
    ablation_split: str
    files: list[Path] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"key modes at checkpoint {self.checkpoint} (step {self.step}): "
            + ", ".join(f"k={k} (magnitude {self.magnitudes[k]:.3g})" for k in self.key_modes)
        ]
        out.append(
            f"keep-only-mode-k {self.ablation_split} loss: "
            + ", ".join(f"k={k}: {self.ablation_loss[k]:.3g}" for k in self.key_modes)
            + f" (unablated: {self.baseline_loss:.3g})"
        )
        return out


def write_fourier_report(run: Run, out_dir: Path, checkpoint: int = -1) -> FourierSummary:
    """The Fourier analysis of a run's embedding, written to ``out_dir``.

    Files: ``mode_heatmap.png`` and ``mode_magnitudes_over_checkpoints.csv`` (all checkpoints),
    ``mode_magnitudes.png`` and ``mode_magnitudes.csv`` (the chosen checkpoint), ``mode_ablation.csv`` and
    ``.png`` (keep-only-mode-k losses on the test split, or the training split when there is no test split) and
    ``mode_circle_k{k}.png`` (the tokens in the plane of the dominant mode).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = run.checkpoint_index(checkpoint)
    files: list[Path] = []

    over = mode_magnitudes_over_checkpoints(run)
    csv = out_dir / "mode_magnitudes_over_checkpoints.csv"
    over.to_csv(csv)
    files += [csv, _save(plot_mode_heatmap(over), out_dir / "mode_heatmap.png")]

    model = run.model(index)
    mags = mode_magnitudes(model.embed_matrix, run.params.p)
    mags_df = pd.DataFrame({"mode": range(len(mags)), "magnitude": mags.numpy()})
    csv = out_dir / "mode_magnitudes.csv"
    mags_df.to_csv(csv, index=False)
    files += [csv, _save(plot_mode_magnitudes(model), out_dir / "mode_magnitudes.png")]

    data, split = run.test_data(), "test"
    if len(data) == 0:
        data, split = run.train_data(), "train"
    table = mode_ablation_table(model, data)
    csv = out_dir / "mode_ablation.csv"
    table.to_csv(csv)
    files += [csv, _save(plot_mode_ablation(table), out_dir / "mode_ablation.png")]

    keys = key_modes(mags.tolist())
    if keys:
        files.append(_save(plot_mode_circle(model, keys[0]), out_dir / f"mode_circle_k{keys[0]}.png"))
    return FourierSummary(
        checkpoint=index,
        step=run.steps[index],
        key_modes=keys,
        magnitudes={k: float(mags[k]) for k in range(len(mags))},
        ablation_loss={int(k): float(v) for k, v in table["loss"].items()},
        baseline_loss=float(table.attrs["baseline_loss"]),
        ablation_split=split,
        files=files,
    )


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def circuit_json(report: CircuitReport, run: Run, checkpoint: int) -> dict[str, Any]:
    """A JSON-able record of a :class:`CircuitReport` (NaN written as null)."""
    index = run.checkpoint_index(checkpoint)

    def doubling(d) -> dict[str, Any]:
        return {
            "mode": d.mode,
            "double_mode": d.double_mode,
            "magnitude_k": _finite(d.magnitude_k),
            "magnitude_2k": _finite(d.magnitude_2k),
            "ratio": _finite(d.ratio),
        }

    return {
        "run": str(run.path),
        "checkpoint": index,
        "step": run.steps[index],
        "verdict": report.verdict,
        "votes": dict(report.votes),
        "ratio_2k": _finite(report.ratio_2k),
        "gradient_symmetricity": _finite(report.gradient_symmetricity),
        "distance_irrelevance": _finite(report.distance_irrelevance),
        "doubling_hidden": doubling(report.doubling),
        "doubling_logits": doubling(report.doubling_logits),
        "evidence": report.evidence,
    }


def write_circuit_report(
    run: Run, path: Path, checkpoint: int = -1, n_triples: int = 1000, seed: int = 0
) -> tuple[CircuitReport, Path]:
    """Classify the circuit at ``checkpoint`` (pizza / clock / unclear) and write the evidence as JSON to ``path``."""
    report = classify_circuit(run, checkpoint=checkpoint, n_triples=n_triples, seed=seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(circuit_json(report, run, checkpoint), indent=2) + "\n")
    return report, path
