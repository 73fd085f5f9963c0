"""The ``lambdahat`` command line (Typer)."""

from __future__ import annotations

import typer

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
    compile: bool = typer.Option(False, "--compile/--no-compile", help="Compile the sampler step."),
    csv: str | None = typer.Option(None, help="Also write the table to this CSV file."),
    calibrate: bool = typer.Option(
        False,
        "--calibrate",
        help="Choose each case's step size with lambdahat.calibrate (learning_rate='auto').",
    ),
) -> None:
    """Estimate λ̂ on models with known learning coefficients and print the table.

    Columns: case, d, true λ, the exact finite-sample reference where one is known, λ̂ ± standard error, relative
    error against λ, z-score against the reference, the step size used, mean MALA acceptance, R-hat, ESS, diverged
    chains and wall time.
    """
    from .validation import format_table, run_validation

    df = run_validation(quick=quick, seed=seed, compile=compile, calibrate=calibrate)
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
