"""CLI options generated from LLCConfig: the settings are LLCConfig's fields, options parse into the expected
config, aliases, errors, and no torch behind --help."""

from __future__ import annotations

import dataclasses
import doctest
import json
import subprocess
import sys
from typing import Annotated

import pytest
import torch
import typer
from typer.testing import CliRunner

import lambdahat.cli_options
from lambdahat import LLCConfig
from lambdahat.cli_options import llc_options, llc_settings, option_name
from lambdahat.config import DTYPES, FIELD_HELP, MODEL_MODES, SAMPLER_NAMES

OPTION_NAMES = [
    "--draws",
    "--chains",
    "--burnin-steps",
    "--steps-bw-draws",
    "--learning-rate",
    "--localization",
    "--nbeta",
    "--dtype",
    "--sampler",
    "--sampler-options",
    "--weight-decay",
    "--bounding-box-size",
    "--restrict-to-orth-grad",
    "--model-mode",
    "--grad-accum-steps",
    "--checks",
    "--max-burnin-steps",
]


def test_the_settings_are_llcconfigs_fields():
    settings = llc_settings()
    fields = dataclasses.fields(LLCConfig)
    assert tuple(s.name for s in settings) == LLCConfig.field_names()
    assert [s.kind for s in settings] == [f.type for f in fields]
    assert {s.name: s.help for s in settings} == FIELD_HELP
    assert [option_name(s.name) for s in settings] == OPTION_NAMES
    # the defaults are LLCConfig's own (dtype by name; sampler_options a fresh dict)
    defaults = {s.name: s.default for s in settings}
    assert defaults["dtype"] == "float32" and defaults["sampler_options"] == {}
    assert LLCConfig.from_dict(defaults) == LLCConfig()
    assert LLCConfig.from_dict(defaults).to_dict() == defaults
    choices = {s.name: s.choices for s in settings if s.choices}
    assert choices == {"dtype": DTYPES, "sampler": SAMPLER_NAMES, "model_mode": MODEL_MODES}


def test_every_kind_of_setting_has_an_option():
    """A new LLCConfig field whose annotation the command line cannot parse fails here, not in a user's shell."""
    llc_options()(lambda *, config: None)


def make_app(**kwargs) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @llc_options(**kwargs)
    def run(name: str = "x", *, config) -> None:
        typer.echo(json.dumps({"name": name, **config.to_dict()}))

    return app


def invoke(app, *args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def parsed(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_option_parses_into_the_config():
    app = make_app()
    out = parsed(
        invoke(
            app,
            *("--name", "y", "--draws", 50, "--chains", 3, "--burnin-steps", 7, "--steps-bw-draws", 2),
            *("--learning-rate", "2e-4", "--localization", 30, "--nbeta", 12.5, "--dtype", "float64"),
            *("--sampler", "rmsprop_sgld", "--sampler-options", '{"alpha": 0.9}', "--weight-decay", 0.1),
            *("--bounding-box-size", 2, "--restrict-to-orth-grad", "--model-mode", "train"),
        )
    )
    name = out.pop("name")
    expected = LLCConfig(
        draws=50,
        chains=3,
        burnin_steps=7,
        steps_bw_draws=2,
        learning_rate=2e-4,
        localization=30.0,
        nbeta=12.5,
        dtype=torch.float64,
        sampler="rmsprop_sgld",
        sampler_options={"alpha": 0.9},
        weight_decay=0.1,
        bounding_box_size=2.0,
        restrict_to_orth_grad=True,
        model_mode="train",
    )
    assert name == "y" and LLCConfig.from_dict(out) == expected
    # nothing given: LLCConfig's defaults
    assert LLCConfig.from_dict({k: v for k, v in parsed(invoke(app)).items() if k != "name"}) == LLCConfig()


def test_learning_rate_auto():
    out = parsed(invoke(make_app(), "--learning-rate", "auto"))
    assert out["learning_rate"] == "auto"


def test_burnin_steps_auto_and_its_cap():
    out = parsed(invoke(make_app(), "--burnin-steps", "auto", "--max-burnin-steps", 900))
    assert out["burnin_steps"] == "auto" and out["max_burnin_steps"] == 900
    bad = invoke(make_app(), "--burnin-steps", "long")
    assert bad.exit_code == 2 and "whole number or 'auto'" in bad.output


def test_help_lists_every_option_with_its_help():
    result = invoke(make_app(), "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.replace("│", " ").split())
    for option in [*OPTION_NAMES, "--no-restrict-to-orth-grad"]:
        assert option in text
    assert "choose it on its measured step bias" in text


def test_subset_defaults_names_and_aliases():
    app = make_app(
        fields=["draws", "learning_rate", "localization", "weight_decay"],
        defaults={"draws": 20, "restrict_to_orth_grad": True},
        names={"weight_decay": "--llc-weight-decay"},
        aliases={"learning_rate": "--epsilon", "localization": "--gamma"},
    )
    out = parsed(invoke(app, "--llc-weight-decay", 0.5))
    assert out["draws"] == 20 and out["restrict_to_orth_grad"] is True and out["weight_decay"] == 0.5
    assert invoke(app, "--chains", 3).exit_code == 2  # not offered
    assert invoke(app, "--weight-decay", 3).exit_code == 2  # renamed
    help_text = invoke(app, "--help").output
    assert "--epsilon" not in help_text and "--gamma" not in help_text  # hidden
    old = invoke(app, "--epsilon", "3e-4", "--gamma", 5)
    assert parsed(old)["learning_rate"] == 3e-4 and parsed(old)["localization"] == 5.0
    assert "--epsilon is deprecated; use --learning-rate" in old.stderr
    both = invoke(app, "--epsilon", "3e-4", "--learning-rate", "1e-4")
    assert both.exit_code == 2 and "give --learning-rate only" in both.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--draws", "0"], "--draws: must be an int >= 1; got 0"),
        (["--learning-rate", "fast"], "a positive number or 'auto'"),
        (["--learning-rate", "-1"], "--learning-rate: must be a finite number > 0; got -1.0"),
        (["--dtype", "float8"], "float8"),
        (["--sampler-options", "[1]"], "JSON object"),
        (["--sampler-options", '{"alhpa": 1}'], "--sampler-options: {'alhpa': 1} do not fit 'sgld'"),
    ],
)
def test_bad_values_exit_2_with_the_option_named(args, fragment):
    result = invoke(make_app(), *args)
    assert result.exit_code == 2
    assert fragment in " ".join(result.output.replace("│", " ").split())


def test_misuse_of_the_decorator_is_refused():
    with pytest.raises(ValueError, match="unknown settings"):
        llc_options(fields=["drawz"])
    with pytest.raises(TypeError, match="needs a parameter 'config'"):
        llc_options()(lambda x=1: None)

    def clashing(weight_decay: float = 0.0, *, config) -> None: ...

    def renamed(draws: Annotated[int, typer.Option("--chains")] = 1, *, config) -> None: ...

    for fn in (clashing, renamed):
        with pytest.raises(ValueError, match="already has option"):
            llc_options()(fn)
    llc_options(names={"weight_decay": "--llc-weight-decay"})(clashing)


def test_docstring_examples_run():
    result = doctest.testmod(lambdahat.cli_options)
    assert result.attempted >= 3 and result.failed == 0


HELP_COMMANDS = [
    [],
    ["sweep"],
    ["validate"],
    ["demo"],
    ["modadd"],
    ["modadd", "train"],
    ["modadd", "llc"],
    ["modadd", "sweep-p"],
    ["modadd", "fourier"],
    ["modadd", "circuit"],
]


def test_the_command_line_and_its_help_import_no_torch():
    """`lambdahat ... --help` must stay quick: importing torch alone takes seconds."""
    script = (
        "import sys\n"
        "from lambdahat.cli import app\n"
        f"for command in {HELP_COMMANDS!r}:\n"
        "    try:\n"
        "        app([*command, '--help'])\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, (command, exc.code)\n"
        "heavy = [m for m in ('torch', 'pandas', 'matplotlib', 'numpy') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
