"""The ``lambdahat`` command line (Typer)."""

from __future__ import annotations

import typer

from .cli_options import int_or_auto

app = typer.Typer(
    name="lambdahat",
    help="Estimate local learning coefficients (LLC, λ̂) of PyTorch models, and study them on modular addition.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def validate(
    quick: bool = typer.Option(
        False, "--quick", help="Run the three-case quick set instead of the full one."
    ),
    seed: int = typer.Option(0, help="Master seed of every run."),
    compile: str = typer.Option(
        "auto",
        "--compile",
        help="auto (compile when the planned work is large, a rule of the run's facts: lambdahat.plan), true or "
        "false.",
    ),
    csv: str | None = typer.Option(None, help="Also write the table to this CSV file."),
    calibrate: bool = typer.Option(
        False,
        "--calibrate",
        help="Choose each case's step size on its measured step bias (learning_rate='auto').",
    ),
    scale: str | None = typer.Option(
        None,
        "--scale",
        help="Instead of the small cases, rotated deep linear networks of these sizes (comma list of 1e3, 1e4, "
        "1e5), with learning_rate='auto' and the accuracy checks; each row gives its time.",
    ),
    burnin_steps: int | None = typer.Option(
        None,
        "--burnin-steps",
        parser=int_or_auto,
        metavar="INT|auto",
        help="Every case's burn-in instead of its own; auto: run until the chains have relaxed.",
    ),
) -> None:
    """Estimate λ̂ on models with known learning coefficients and print the table.

    Columns: case, d, true λ, the exact finite-sample reference where one is known, λ̂ ± standard error, relative
    error against λ, z-score against the reference, the step size used, mean MALA acceptance, R-hat, ESS, diverged
    chains and wall time.
    """
    from .validation import SCALE_SETTINGS, format_table, run_validation

    choices = {"auto": "auto", "true": True, "false": False}
    if compile.lower() not in choices:
        raise typer.BadParameter(f"expected auto, true or false; got {compile!r}.", param_hint="--compile")
    compile = choices[compile.lower()]
    if scale is not None:
        from .truth import scale_cases

        try:
            cases = scale_cases([size.strip() for size in scale.split(",") if size.strip()])
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--scale") from None
        df = run_validation(
            seed=seed,
            compile=compile,
            calibrate=True,
            cases=cases,
            settings=SCALE_SETTINGS,
            burnin_steps=burnin_steps,
        )
    else:
        df = run_validation(
            quick=quick, seed=seed, compile=compile, calibrate=calibrate, burnin_steps=burnin_steps
        )
    typer.echo(format_table(df))
    if csv:
        df.to_csv(csv, index=False)
        typer.echo(f"wrote {csv}")


def _register_commands() -> None:
    from .lm.cli import register as register_lm
    from .modadd.cli import register as register_modadd
    from .sweeps.cli import register as register_sweep

    register_modadd(app)
    register_sweep(app)
    register_lm(app)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
