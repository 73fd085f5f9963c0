"""The ``lambdahat lm ...`` commands: ``lambdahat lm demo``.

Nothing here imports torch until a command runs, so ``lambdahat lm --help`` is quick. The demo runs PyTorch on
``--threads`` intra-op threads, 1 by default (the model is tiny: on a 2-core machine one thread is faster, as
measured for the modular-addition demo); the library functions never change the thread count.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``lm`` command group to the ``lambdahat`` app."""
    lm_app = typer.Typer(
        name="lm",
        help="Language models: λ̂ over the training of a toy transformer in which induction heads form.",
        no_args_is_help=True,
    )

    @lm_app.command("demo")
    def demo_cmd(
        out: Annotated[
            Path | None,
            typer.Option("--out", "-o", help="Output directory (default: ./lambdahat-lm-demo-<timestamp>)."),
        ] = None,
        seed: Annotated[int, typer.Option(help="Master seed of the λ̂ chains.")] = 0,
        threads: Annotated[
            int, typer.Option(min=1, help="PyTorch intra-op threads (1 is fastest here).")
        ] = 1,
        quick: Annotated[bool, typer.Option("--quick", help="Tiny settings, for tests only.")] = False,
    ) -> None:
        """Train a 2-layer attention-only transformer on repeated random sequences (induction heads form), and write λ̂ over training for the whole model, per layer and per head, with the loss on the repeated tokens.

        Writes summary.md, table.csv (one row per checkpoint), llc_over_training.csv and .png, the training run and the resumable λ̂ sweep (a rerun into the same --out skips finished estimates). A few minutes on a 2-core CPU.
        """
        import time
        from datetime import datetime

        import torch

        from .demo import run_demo

        if out is None:
            out = Path(f"lambdahat-lm-demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
        if out.exists() and not out.is_dir():
            raise typer.BadParameter(f"{str(out)!r} is a file; pass a directory.", param_hint="--out")
        torch.set_num_threads(threads)
        note = f"PyTorch ran on {threads} intra-op thread(s); {os.cpu_count()} CPU(s) seen."
        start = time.perf_counter()
        try:
            res = run_demo(out, quick=quick, seed=seed, echo=typer.echo, note=note)
        except (ValueError, RuntimeError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo("")
        for line in res.story:
            typer.echo(line)
        typer.echo(", ".join(f"{k} {v:.1f} s" for k, v in res.wall_seconds.items()))
        for path in res.files:
            typer.echo(f"wrote {path}")
        typer.echo(f"demo directory: {res.out_dir} ({time.perf_counter() - start:.0f} s)")

    app.add_typer(lm_app, name="lm")
