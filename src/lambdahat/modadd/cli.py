"""The ``lambdahat modadd ...`` commands and ``lambdahat demo``.

Every command that trains or estimates runs PyTorch on ``--threads`` intra-op threads, 1 by default: these
models are tiny, and on a loaded 2-core machine one thread measured about 3x faster for training (6 s against
18 s for the default run) and 8-10x faster for λ̂ (2 s against 20 s per checkpoint), with bitwise identical
results. The library functions never change the thread count; only these commands do.

The λ̂ options of ``llc`` and ``sweep-p`` are generated from :class:`~lambdahat.LLCConfig`
(:mod:`lambdahat.cli_options`) with modular addition's measured defaults; the sampler's weight decay is
``--llc-weight-decay`` because ``--weight-decay`` is the training's. The training options and all these defaults
come from the torch-free :mod:`lambdahat.modadd.params`: nothing here imports torch until a command runs, so
``--help`` is quick.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import warnings
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from lambdahat.cli_options import llc_options
from lambdahat.modadd.params import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BURNIN_STEPS,
    DEFAULT_CHAINS,
    DEFAULT_DRAWS,
    DEFAULT_LEARNING_RATE,
    DEFAULT_LOCALIZATION,
    DEFAULT_RESTRICT_TO_ORTH_GRAD,
    Activation,
    ExperimentParams,
)

__all__ = ["register"]

#: The defaults of the training options.
_D = ExperimentParams()
#: The LLCConfig settings that llc_over_training takes (the llc and sweep-p commands offer these), with their
#: modular-addition defaults.
LLC_FIELDS = (
    "draws",
    "chains",
    "burnin_steps",
    "learning_rate",
    "localization",
    "nbeta",
    "weight_decay",
    "restrict_to_orth_grad",
)
LLC_DEFAULTS = {
    "draws": DEFAULT_DRAWS,
    "chains": DEFAULT_CHAINS,
    "burnin_steps": DEFAULT_BURNIN_STEPS,
    "learning_rate": DEFAULT_LEARNING_RATE,
    "localization": DEFAULT_LOCALIZATION,
    "restrict_to_orth_grad": DEFAULT_RESTRICT_TO_ORTH_GRAD,
}
_TRAIN = "Training (ExperimentParams)"
_LLC = "λ̂ estimation"
_RUN = "Running"
#: The sweep's default train_frac: with the default model, 0.5 generalizes only from p ≈ 23 on, 0.8 from p = 17.
SWEEP_TRAIN_FRAC = 0.8
THREADS_HELP = (
    "PyTorch intra-op threads. Default 1: these models are tiny, and on a 2-core machine 1 thread measured "
    "3x (training) to 8x (λ̂) faster than 2, with identical results."
)


class Executor(StrEnum):
    local = "local"
    ray = "ray"


class Preset(StrEnum):
    quick = "quick"
    full = "full"


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` on stderr and return the exit to raise (2: bad arguments, 1: a failure).

    The library's advice to pass ``overwrite=True`` becomes this command's ``--overwrite``.
    """
    message = message.replace("overwrite=True (CLI: --no-resume --overwrite)", "--overwrite")
    message = message.replace("overwrite=True", "--overwrite")
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextlib.contextmanager
def _warnings_to_stderr():
    """Collect the library's warnings and print each distinct one as ``warning: ...`` on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        warnings.simplefilter("always", UserWarning)
        try:
            yield
        finally:
            seen = set()
            for w in caught:
                text = str(w.message)
                if issubclass(w.category, RuntimeWarning | UserWarning) and text not in seen:
                    seen.add(text)
                    typer.echo(f"warning: {text}", err=True)


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _check_train_frac(value: float) -> float:
    if not 0.0 < value <= 1.0:
        raise typer.BadParameter(
            f"train_frac must be in (0, 1] (the fraction of the p² pairs to train on), got {value}."
        )
    return value


def _int_list(text: str, name: str) -> list[int]:
    try:
        values = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise typer.BadParameter(
            f"{name} must be a comma-separated list of integers such as 17,23,29; got {text!r}."
        ) from None
    if not values:
        raise typer.BadParameter(f"{name} is empty; pass e.g. 17,23,29.")
    return values


def _load(run_dir: Path):
    from lambdahat.modadd.train import load_run

    try:
        return load_run(run_dir)
    except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="RUN_DIR") from None


def _checkpoint_index(run, checkpoint: int, hint: str = "--checkpoint") -> int:
    try:
        return run.checkpoint_index(checkpoint)
    except (IndexError, TypeError) as exc:
        raise typer.BadParameter(str(exc), param_hint=hint) from None


#: What the console shows next to every λ̂: whether to trust it.
TRUST_COLUMNS = ("mala_acceptance", "rhat", "status")


def _echo_table(df, columns) -> None:
    """Print the columns of ``df`` that it has (4 significant digits)."""
    shown = [c for c in columns if c in df.columns]
    typer.echo(df[shown].to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def _wrote(paths) -> None:
    for p in paths:
        typer.echo(f"wrote {p}")


def _timestamped(prefix: str) -> Path:
    stem = f"{prefix}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path, i = Path(stem), 2
    while path.exists():
        path, i = Path(f"{stem}-{i}"), i + 1
    return path


def _modadd_llc(config) -> dict[str, Any]:
    """The settings of ``config`` that llc_over_training takes."""
    return {name: getattr(config, name) for name in LLC_FIELDS}


_llc_options = llc_options(
    fields=LLC_FIELDS,
    defaults=LLC_DEFAULTS,
    names={"weight_decay": "--llc-weight-decay"},
    aliases={"learning_rate": "--epsilon", "localization": "--gamma"},
    panel=_LLC,
)


# Shared option declarations (one name per concept, the same in every command).
Threads = Annotated[int, typer.Option(min=1, help=THREADS_HELP, rich_help_panel=_RUN)]
Seed = Annotated[
    int, typer.Option(help="Master seed of the chains (the same at every checkpoint).", rich_help_panel=_LLC)
]


def register(app: typer.Typer) -> None:
    """Add the ``modadd`` sub-app (train, llc, fourier, circuit, sweep-p, reproduce-p-sweep) and the ``demo`` command to ``app``."""
    sub = typer.Typer(
        help="Modular addition: train grokking models, λ̂ over training, Fourier modes, pizza or clock, λ̂ against p.",
        no_args_is_help=True,
        add_completion=False,
    )
    app.add_typer(
        sub,
        name="modadd",
        help="Modular addition: train, λ̂ over training, Fourier modes, circuits, λ̂ against p.",
    )

    @sub.command("train")
    def train_cmd(
        out: Annotated[
            Path | None,
            typer.Option("--out", "-o", help="Run directory to create (default: modadd-p<P>-<timestamp>)."),
        ] = None,
        p: Annotated[int, typer.Option("--p", min=2, help="The modulus.", rich_help_panel=_TRAIN)] = _D.p,
        embed_dim: Annotated[int, typer.Option(min=1, rich_help_panel=_TRAIN)] = _D.embed_dim,
        hidden_size: Annotated[int, typer.Option(min=1, rich_help_panel=_TRAIN)] = _D.hidden_size,
        activation: Annotated[Activation, typer.Option(rich_help_panel=_TRAIN)] = _D.activation,
        tie_unembed: Annotated[
            bool, typer.Option(help="Unembed through Eᵀ.", rich_help_panel=_TRAIN)
        ] = False,
        linear_1_tied: Annotated[
            bool, typer.Option(help="One first-layer map for both operands.", rich_help_panel=_TRAIN)
        ] = False,
        scale_embed: Annotated[float, typer.Option(rich_help_panel=_TRAIN)] = _D.scale_embed,
        scale_linear_1_factor: Annotated[
            float, typer.Option(rich_help_panel=_TRAIN)
        ] = _D.scale_linear_1_factor,
        freeze_middle: Annotated[
            bool, typer.Option(help="Train only the embedding (and unembedding).", rich_help_panel=_TRAIN)
        ] = False,
        use_random_dataset: Annotated[
            bool, typer.Option(help="Random labels (the memorization control).", rich_help_panel=_TRAIN)
        ] = False,
        train_frac: Annotated[
            float,
            typer.Option(
                callback=_check_train_frac,
                help="Fraction of the p² pairs trained on, in (0, 1].",
                rich_help_panel=_TRAIN,
            ),
        ] = _D.train_frac,
        lr: Annotated[
            float, typer.Option(min=0.0, help="Adam learning rate.", rich_help_panel=_TRAIN)
        ] = _D.lr,
        weight_decay: Annotated[
            float, typer.Option(min=0.0, help="Adam's (coupled L2) weight decay.", rich_help_panel=_TRAIN)
        ] = _D.weight_decay,
        batch_size: Annotated[int, typer.Option(min=1, rich_help_panel=_TRAIN)] = _D.batch_size,
        n_batches: Annotated[
            int, typer.Option(min=1, help="Optimizer steps.", rich_help_panel=_TRAIN)
        ] = _D.n_batches,
        n_save_model_checkpoints: Annotated[
            int, typer.Option(min=2, help="Evenly spaced checkpoints (0 = init).", rich_help_panel=_TRAIN)
        ] = _D.n_save_model_checkpoints,
        num_no_weight_decay_steps: Annotated[
            int, typer.Option(min=0, rich_help_panel=_TRAIN)
        ] = _D.num_no_weight_decay_steps,
        run_id: Annotated[
            int, typer.Option(help="The seed of everything.", rich_help_panel=_TRAIN)
        ] = _D.run_id,
        overwrite: Annotated[bool, typer.Option(help="Replace a previous run in --out.")] = False,
        threads: Threads = 1,
    ) -> None:
        """Train a modular-addition model and write its run directory (params.json, record.csv, checkpoints/).

        The defaults train a GELU network on p = 53 that memorizes its half of the pairs by step ~1000 and generalizes by step ~1600 (about 6 s on one thread).
        """
        from lambdahat.modadd.report import write_training_curves
        from lambdahat.modadd.train import train

        try:
            params = ExperimentParams(
                p=p,
                embed_dim=embed_dim,
                hidden_size=hidden_size,
                activation=activation,
                tie_unembed=tie_unembed,
                linear_1_tied=linear_1_tied,
                scale_embed=scale_embed,
                scale_linear_1_factor=scale_linear_1_factor,
                freeze_middle=freeze_middle,
                use_random_dataset=use_random_dataset,
                train_frac=train_frac,
                lr=lr,
                weight_decay=weight_decay,
                batch_size=batch_size,
                n_batches=n_batches,
                n_save_model_checkpoints=n_save_model_checkpoints,
                num_no_weight_decay_steps=num_no_weight_decay_steps,
                run_id=run_id,
            )
        except ValueError as exc:
            raise _fail(str(exc)) from None
        out = out if out is not None else _timestamped(f"modadd-p{p}")
        _set_threads(threads)
        t = time.perf_counter()
        try:
            run = train(params, out, show_progress=True, overwrite=overwrite)
        except (FileExistsError, NotADirectoryError, ValueError) as exc:
            raise _fail(str(exc)) from None
        final = run.record.iloc[-1]
        typer.echo(
            f"trained p={p} for {n_batches} steps in {time.perf_counter() - t:.1f} s: final train accuracy "
            f"{final.train_acc:.4f}, test accuracy {final.test_acc:.4f}"
        )
        _wrote(
            [out / "params.json", out / "record.csv", out / "checkpoints", write_training_curves(run, out)]
        )
        typer.echo(f"run directory: {out}")

    @sub.command("llc")
    @_llc_options
    def llc_cmd(
        run_dir: Annotated[Path, typer.Argument(help="A run directory written by `lambdahat modadd train`.")],
        out: Annotated[
            Path | None, typer.Option("--out", "-o", help="Output directory (default: RUN_DIR/llc).")
        ] = None,
        batch_size: Annotated[
            int,
            typer.Option(
                "--batch-size", "--llc-batch-size", min=1, help="SGLD minibatch size.", rich_help_panel=_LLC
            ),
        ] = DEFAULT_BATCH_SIZE,
        seed: Seed = 0,
        checkpoints: Annotated[
            str | None,
            typer.Option(
                help="Comma-separated checkpoint indices, e.g. 0,10,-1 (default: all).", rich_help_panel=_LLC
            ),
        ] = None,
        executor: Annotated[
            Executor, typer.Option(help="Run checkpoints here or on Ray.", rich_help_panel=_RUN)
        ] = Executor.local,
        address: Annotated[
            str | None, typer.Option(help="Ray cluster address.", rich_help_panel=_RUN)
        ] = None,
        overwrite: Annotated[
            bool,
            typer.Option(help="Discard λ̂ results stored in OUT/sweep (with other settings) and start again."),
        ] = False,
        threads: Threads = 1,
        *,
        config: Any,
    ) -> None:
        """Estimate λ̂ at every checkpoint of RUN_DIR; write llc_over_training.csv and .png.

        Results are stored as they come in OUT/sweep (results.csv): an interrupted run of the same command resumes. Defaults: γ = 100, ε = 1e-4, 8 chains × 200 draws after 300 burn-in steps, batch 64, nβ = n / log n, orthogonal restriction (MALA acceptance 0.91-0.95 on the default run; ~3.5 s per checkpoint).
        """
        from lambdahat.modadd.llc import llc_over_training
        from lambdahat.modadd.report import write_llc_report

        run = _load(run_dir)
        indices = None
        if checkpoints is not None:
            indices = [
                _checkpoint_index(run, c, "--checkpoints") for c in _int_list(checkpoints, "--checkpoints")
            ]
        out = out if out is not None else run_dir / "llc"
        _set_threads(threads)
        t = time.perf_counter()
        with _warnings_to_stderr():
            try:
                df = llc_over_training(
                    run,
                    **_modadd_llc(config),
                    batch_size=batch_size,
                    seed=seed,
                    checkpoints=indices,
                    out_dir=out / "sweep",
                    overwrite=overwrite,
                    executor=executor.value,
                    address=address,
                )
                summary = write_llc_report(df, out)
            except (ValueError, TypeError, FileExistsError, IndexError) as exc:
                raise _fail(str(exc)) from None
            except (RuntimeError, ImportError) as exc:
                raise _fail(str(exc), code=1) from None
        _echo_table(df, ["checkpoint", "step", "llc_mean", "llc_stderr", *TRUST_COLUMNS])
        typer.echo(
            f"λ̂ at {len(df)} checkpoint(s) in {time.perf_counter() - t:.1f} s: peak {summary.peak:.2f} ± "
            f"{summary.peak_stderr:.2f} at step {summary.peak_step}, final {summary.final:.2f} ± "
            f"{summary.final_stderr:.2f} at step {summary.final_step}; MALA acceptance mean {summary.mala_mean:.3f}, "
            f"lowest {summary.mala_min:.3f}"
        )
        _wrote([*summary.files, out / "sweep" / "results.csv"])

    @sub.command("fourier")
    def fourier_cmd(
        run_dir: Annotated[Path, typer.Argument(help="A run directory written by `lambdahat modadd train`.")],
        out: Annotated[
            Path | None, typer.Option("--out", "-o", help="Output directory (default: RUN_DIR/fourier).")
        ] = None,
        checkpoint: Annotated[
            int, typer.Option(help="Checkpoint analysed in detail (negative: from the end).")
        ] = -1,
        threads: Threads = 1,
    ) -> None:
        """Fourier modes of the embedding: heatmap over checkpoints, final magnitudes, keep-one-mode ablation, circle plot of the dominant mode (PNG and CSV)."""
        from lambdahat.modadd.report import write_fourier_report

        run = _load(run_dir)
        index = _checkpoint_index(run, checkpoint)
        _set_threads(threads)
        summary = write_fourier_report(run, out if out is not None else run_dir / "fourier", checkpoint=index)
        for line in summary.lines():
            typer.echo(line)
        _wrote(summary.files)

    @sub.command("circuit")
    def circuit_cmd(
        run_dir: Annotated[Path, typer.Argument(help="A run directory written by `lambdahat modadd train`.")],
        checkpoint: Annotated[
            int, typer.Option(help="Checkpoint to classify (negative: from the end).")
        ] = -1,
        out: Annotated[
            Path | None,
            typer.Option("--out", "-o", help="JSON file (default: RUN_DIR/circuit_ckpt<NNNN>.json)."),
        ] = None,
        n_triples: Annotated[
            int, typer.Option(min=1, help="Random (a, b, c) for the gradient symmetricity.")
        ] = 1000,
        seed: Annotated[int, typer.Option(help="Seed of the triples.")] = 0,
        threads: Threads = 1,
    ) -> None:
        """Pizza or clock? Print the verdict with its evidence (2k test, gradient symmetricity, distance irrelevance) and write it as JSON."""
        from lambdahat.modadd.report import write_circuit_report

        run = _load(run_dir)
        index = _checkpoint_index(run, checkpoint)
        _set_threads(threads)
        path = out if out is not None else run_dir / f"circuit_ckpt{index:04d}.json"
        report, path = write_circuit_report(run, path, checkpoint=index, n_triples=n_triples, seed=seed)
        typer.echo(f"checkpoint {index} (step {run.steps[index]})")
        typer.echo(report.evidence)
        _wrote([path])

    @sub.command("sweep-p")
    @_llc_options
    def sweep_p_cmd(
        ps: Annotated[str, typer.Option("--ps", help="Comma-separated moduli, e.g. 17,23,29.")] = "17,23,29",
        out: Annotated[
            Path | None,
            typer.Option("--out", "-o", help="Sweep directory (default: modadd-sweep-<timestamp>)."),
        ] = None,
        run_ids: Annotated[str, typer.Option(help="Comma-separated seeds; one model per (p, run id).")] = "0",
        random_label_control: Annotated[
            bool, typer.Option(help="Also train every model on random labels.")
        ] = True,
        embed_dim: Annotated[int, typer.Option(min=1, rich_help_panel=_TRAIN)] = _D.embed_dim,
        hidden_size: Annotated[int, typer.Option(min=1, rich_help_panel=_TRAIN)] = _D.hidden_size,
        activation: Annotated[Activation, typer.Option(rich_help_panel=_TRAIN)] = _D.activation,
        train_frac: Annotated[
            float,
            typer.Option(
                callback=_check_train_frac,
                help="Fraction of the p² pairs trained on, in (0, 1]. Default 0.8 here (0.5 in train): with 0.5 the "
                "default model generalizes only from p ≈ 23 on.",
                rich_help_panel=_TRAIN,
            ),
        ] = SWEEP_TRAIN_FRAC,
        lr: Annotated[float, typer.Option(min=0.0, rich_help_panel=_TRAIN)] = _D.lr,
        weight_decay: Annotated[float, typer.Option(min=0.0, rich_help_panel=_TRAIN)] = _D.weight_decay,
        batch_size: Annotated[
            int, typer.Option(min=1, help="Training minibatch size.", rich_help_panel=_TRAIN)
        ] = _D.batch_size,
        n_batches: Annotated[int, typer.Option(min=1, rich_help_panel=_TRAIN)] = _D.n_batches,
        n_save_model_checkpoints: Annotated[
            int, typer.Option(min=2, rich_help_panel=_TRAIN)
        ] = _D.n_save_model_checkpoints,
        llc_batch_size: Annotated[
            int, typer.Option(min=1, help="SGLD minibatch size.", rich_help_panel=_LLC)
        ] = DEFAULT_BATCH_SIZE,
        seed: Seed = 0,
        overwrite: Annotated[
            bool, typer.Option(help="Retrain runs in OUT that have other parameters.")
        ] = False,
        threads: Threads = 1,
        *,
        config: Any,
    ) -> None:
        """Train one model per p (and run id, and with random labels) and plot the final λ̂ against p.

        Writes OUT/p_sweep.csv, OUT/llc_vs_p.png and the runs under OUT/runs/ (complete runs found there are reused, so an interrupted sweep resumes). Three ps with the control take about a minute.
        """
        from lambdahat.modadd.sweep import SWEEP_TABLE, p_sweep, plot_llc_vs_p

        p_list = _int_list(ps, "--ps")
        if min(p_list) < 2:
            raise typer.BadParameter(f"every p must be an integer >= 2, got {ps!r}.", param_hint="--ps")
        ids = _int_list(run_ids, "--run-ids")
        try:
            params = ExperimentParams(
                embed_dim=embed_dim,
                hidden_size=hidden_size,
                activation=activation,
                train_frac=train_frac,
                lr=lr,
                weight_decay=weight_decay,
                batch_size=batch_size,
                n_batches=n_batches,
                n_save_model_checkpoints=n_save_model_checkpoints,
            )
        except ValueError as exc:
            raise _fail(str(exc)) from None
        out = out if out is not None else _timestamped("modadd-sweep")
        _set_threads(threads)
        t = time.perf_counter()
        with _warnings_to_stderr():
            try:
                df = p_sweep(
                    p_list,
                    params,
                    out,
                    run_ids=ids,
                    random_label_control=random_label_control,
                    overwrite=overwrite,
                    config=config,
                    batch_size=llc_batch_size,
                    seed=seed,
                )
            except (ValueError, TypeError, FileExistsError) as exc:
                raise _fail(str(exc)) from None
            except RuntimeError as exc:
                raise _fail(str(exc), code=1) from None
        png = out / "llc_vs_p.png"
        plot_llc_vs_p(df).savefig(png, dpi=120)
        shown = ["p", "run_id", "use_random_dataset", "llc_mean", "llc_stderr", *TRUST_COLUMNS, "train_acc"]
        _echo_table(df, [*shown, "test_acc"])
        typer.echo(f"{len(df)} model(s) in {time.perf_counter() - t:.1f} s")
        _wrote([out / SWEEP_TABLE, png, out / "runs"])

    @sub.command("reproduce-p-sweep")
    def reproduce_cmd(
        out: Annotated[
            Path | None,
            typer.Option(
                "--out", "-o", help="Directory (default: modadd-reproduce-<timestamp>); rerun to resume."
            ),
        ] = None,
        preset: Annotated[
            Preset,
            typer.Option(
                help="quick: 2 seeds, 1,000 SGLD steps at ε = 1e-3 and 1,500 + 1,000 at ε = 3e-4 with the step "
                "and start checks; full: the hackathon's protocol (5 seeds, 5,000 SGLD steps). Both train every "
                "model the recipe's steps."
            ),
        ] = Preset.quick,
        ps: Annotated[
            str | None, typer.Option("--ps", help="Comma-separated moduli (default: 23,29,37,41,47,53).")
        ] = None,
        run_ids: Annotated[
            str | None, typer.Option(help="Comma-separated seeds (default: the preset's).")
        ] = None,
        draws: Annotated[
            int | None,
            typer.Option(min=1, help="SGLD steps per chain (default: the preset's).", rich_help_panel=_LLC),
        ] = None,
        chains: Annotated[
            int | None, typer.Option(min=1, help="Chains (default: the preset's).", rich_help_panel=_LLC)
        ] = None,
        trusted_learning_rate: Annotated[
            float | None,
            typer.Option(min=0.0, help="The smaller ε (default: the preset's).", rich_help_panel=_LLC),
        ] = None,
        trusted_burnin_steps: Annotated[
            int | None,
            typer.Option(
                min=0, help="Burn-in steps at the smaller ε (default: the preset's).", rich_help_panel=_LLC
            ),
        ] = None,
        trusted_checks: Annotated[
            str | None,
            typer.Option(
                help="Accuracy checks at the smaller ε: all, none or a comma list of step, localization, start "
                "(default: step,start).",
                rich_help_panel=_LLC,
            ),
        ] = None,
        step_budget_factor: Annotated[
            float | None,
            typer.Option(
                min=0.0,
                help="Multiplies the recipe's 10,000 (15,000) training steps.",
                rich_help_panel=_TRAIN,
            ),
        ] = None,
        min_steps_factor: Annotated[
            float | None,
            typer.Option(
                min=0.0,
                help="No model stops at its criterion before this fraction of the recipe's steps (1).",
                rich_help_panel=_TRAIN,
            ),
        ] = None,
        check_every: Annotated[
            int | None,
            typer.Option(
                min=1, help="Training steps between criterion checks (250).", rich_help_panel=_TRAIN
            ),
        ] = None,
        seed: Seed = 0,
        overwrite: Annotated[
            bool, typer.Option(help="Discard stored results of other settings in OUT and start again.")
        ] = False,
        threads: Threads = 1,
    ) -> None:
        """Reproduce the hackathon's λ̂ against p (REFERENCE.md §3) side by side with its numbers.

        Trains the hackathon's untied GELU MLPs (embed 8, hidden 32; true and random labels) to a stated criterion, estimates λ̂ at the hackathon's ε = 1e-3 and at a smaller ε with a burn-in and the accuracy checks (step and start), and writes OUT/reproduce_p_sweep.csv (one row per model), summary.csv, fits.csv (linear against quadratic in p, with residuals), llc_vs_p_reproduction.png and summary.md (what agrees and what does not). Resumable: finished models are stored in OUT/llc at once.
        """
        from lambdahat.modadd.reproduce import FULL, QUICK, reproduce_p_sweep, write_reproduction

        base = QUICK if preset is Preset.quick else FULL
        changes: dict[str, Any] = {}
        if ps is not None:
            changes["ps"] = tuple(_int_list(ps, "--ps"))
        if run_ids is not None:
            changes["run_ids"] = tuple(_int_list(run_ids, "--run-ids"))
        given = {
            "draws": draws,
            "chains": chains,
            "trusted_learning_rate": trusted_learning_rate,
            "trusted_burnin_steps": trusted_burnin_steps,
            "trusted_checks": trusted_checks,
            "step_budget_factor": step_budget_factor,
            "min_steps_factor": min_steps_factor,
            "check_every": check_every,
        }
        for name, value in given.items():
            if value is not None:
                changes[name] = value
        try:
            protocol = dataclasses.replace(base, **changes)
        except (ValueError, TypeError) as exc:
            raise _fail(str(exc)) from None
        out = out if out is not None else _timestamped("modadd-reproduce")
        _set_threads(threads)
        with _warnings_to_stderr():
            try:
                rep = reproduce_p_sweep(out, protocol, seed=seed, overwrite=overwrite)
                files = write_reproduction(rep, out)
            except (ValueError, TypeError, FileExistsError) as exc:
                raise _fail(str(exc)) from None
            except RuntimeError as exc:
                raise _fail(str(exc), code=1) from None
        typer.echo((out / "summary.md").read_text())
        _wrote(files)

    @app.command("demo")
    def demo_cmd(
        out: Annotated[
            Path | None,
            typer.Option("--out", "-o", help="New output directory (default: ./lambdahat-demo-<timestamp>)."),
        ] = None,
        threads: Threads = 1,
        quick: Annotated[bool, typer.Option(hidden=True, help="Tiny settings, for tests only.")] = False,
    ) -> None:
        """Train the default modular-addition model (it groks), follow λ̂ over its 41 checkpoints, and explain it.

        Writes a directory with figures (PNG), tables (CSV), the training run and a summary.md: final accuracies, λ̂ at its peak and at the end, the dominant Fourier modes, the pizza-or-clock verdict with its evidence and the wall times. About 2 minutes on a 2-core CPU with the default --threads 1.
        """
        from lambdahat.modadd.demo import default_demo_dir, run_demo

        out = out if out is not None else default_demo_dir()
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise typer.BadParameter(
                f"{str(out)!r} exists and is not an empty directory; pass a new directory.",
                param_hint="--out",
            )
        _set_threads(threads)
        note = (
            f"PyTorch ran on {threads} intra-op thread(s) (`--threads`; 1 measured 3-10x faster than 2 on a "
            f"2-core machine for these tiny models, with identical results); {os.cpu_count()} CPU(s) seen."
        )
        with _warnings_to_stderr():
            try:
                res = run_demo(out, quick=quick, echo=typer.echo, note=note)
            except (ValueError, FileExistsError, RuntimeError) as exc:
                raise _fail(str(exc), code=1) from None
        rec = res.run.record.iloc[-1]
        s = res.llc_summary
        typer.echo("")
        typer.echo(f"final train accuracy {rec.train_acc:.4f}, test accuracy {rec.test_acc:.4f}")
        typer.echo(
            f"λ̂: {s.first:.1f} at init, peak {s.peak:.1f} ± {s.peak_stderr:.1f} at step {s.peak_step}, "
            f"final {s.final:.1f} ± {s.final_stderr:.1f} at step {s.final_step} "
            f"(MALA acceptance {s.mala_min:.3f}-{max(res.llc['mala_acceptance']):.3f})"
        )
        for line in res.fourier.lines():
            typer.echo(line)
        typer.echo(res.circuit.evidence)
        typer.echo(", ".join(f"{k} {v:.1f} s" for k, v in res.wall_seconds.items()))
        _wrote(res.files)
        typer.echo(f"demo directory: {res.out_dir}")
