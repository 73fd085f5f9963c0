"""Command-line options generated from :class:`~lambdahat.LLCConfig`: one option per setting, one name per concept.

Every command that takes sampling settings gets them from :func:`llc_options`, which adds one Typer option per
``LLCConfig`` field to the command (``--draws``, ``--chains``, ``--burnin-steps``, ``--steps-bw-draws``,
``--learning-rate`` (a number or ``auto``), ``--localization``, ``--nbeta``, ``--dtype``, ``--sampler``,
``--sampler-options`` (a JSON object), ``--weight-decay``, ``--bounding-box-size``,
``--restrict-to-orth-grad/--no-restrict-to-orth-grad``, ``--model-mode``), with the field's line of
``FIELD_HELP`` as help, and hands the command the validated ``LLCConfig``.

``lambdahat --help`` must answer in well under a second, and importing torch alone takes seconds: this module reads
the fields of ``LLCConfig`` (:func:`llc_settings`) from :mod:`lambdahat.config`, which imports torch only when a
config is built, so declaring the options costs no torch.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import typer

from .config import DTYPES, FIELD_HELP, MODEL_MODES, SAMPLER_NAMES, LLCConfig

__all__ = [
    "Setting",
    "build_config",
    "int_or_auto",
    "llc_options",
    "llc_settings",
    "option_name",
]

#: String fields of ``LLCConfig`` whose value is one of a tuple of names.
_CHOICES: dict[str, tuple[str, ...]] = {"sampler": SAMPLER_NAMES, "model_mode": MODEL_MODES, "dtype": DTYPES}


@dataclass(frozen=True)
class Setting:
    """One ``LLCConfig`` field as the command line sees it.

    ``kind`` is its annotation in ``config.py`` (a string, e.g. ``"float | None"``); ``default`` the value the
    option shows and passes when omitted (``dtype`` by name); ``choices`` the allowed strings of a choice field.
    """

    name: str
    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"cli_options: LLCConfig.{f.name} has no default, so it cannot be an optional option.")


@functools.cache
def llc_settings() -> tuple[Setting, ...]:
    """The fields of ``LLCConfig``, in declaration order, with their defaults, help and choices.

    Examples
    --------
    >>> settings = {s.name: s for s in llc_settings()}
    >>> draws = settings["draws"]
    >>> draws.name, draws.kind, draws.default, draws.help
    ('draws', 'int', 200, 'draws per chain after burn-in')
    >>> settings["model_mode"].choices
    ('eval', 'train')
    """
    return tuple(
        Setting(f.name, str(f.type), _field_default(f), FIELD_HELP.get(f.name, ""), _CHOICES.get(f.name))
        for f in dataclasses.fields(LLCConfig)
    )


def option_name(field_name: str) -> str:
    """``"burnin_steps"`` → ``"--burnin-steps"``."""
    return "--" + field_name.replace("_", "-")


def _or_auto(convert: Callable[[str], Any], expected: str) -> Callable[[Any], Any]:
    """A parser of ``"auto"`` or a value ``convert`` reads (``expected`` names it in the error)."""

    def parse(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if value.strip().lower() == "auto":
            return "auto"
        try:
            return convert(value)
        except ValueError:
            raise typer.BadParameter(f"expected {expected} or 'auto'; got {value!r}.") from None

    return parse


_number_or_auto = _or_auto(float, "a positive number")
int_or_auto = _or_auto(int, "a whole number")


def _json_mapping(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(
            f"expected a JSON object such as '{{\"alpha\": 0.99}}'; got {value!r} ({exc})."
        ) from None
    if not isinstance(parsed, dict):
        raise typer.BadParameter(f"expected a JSON object such as '{{\"alpha\": 0.99}}'; got {value!r}.")
    return parsed


def _option(setting: Setting, default: Any, decl: str, panel: str | None, hidden: bool = False, help=None):
    """``(annotation, default)`` of the Typer parameter of one setting."""
    common: dict[str, Any] = {"help": setting.help if help is None else help, "rich_help_panel": panel}
    if hidden:
        common["hidden"] = True
    kind = setting.kind
    if kind == "bool":
        negative = "--no-" + decl.removeprefix("--")
        return Annotated[bool, typer.Option(f"{decl}/{negative}", **common)], default
    if setting.choices is not None:
        choice = Literal[setting.choices]  # type: ignore[valid-type]
        return Annotated[choice | None, typer.Option(decl, **common)], default
    if kind in ("int", "int | None", "float", "float | None"):
        base = int if kind.startswith("int") else float
        return Annotated[base | None, typer.Option(decl, **common)], default
    if kind == "int | str":
        option = typer.Option(decl, parser=int_or_auto, metavar="INT|auto", **common)
        return Annotated[int | None, option], default
    if kind == "float | str":
        option = typer.Option(decl, parser=_number_or_auto, metavar="FLOAT|auto", **common)
        return Annotated[float | None, option], default
    if kind == "str":
        return Annotated[str | None, typer.Option(decl, **common)], default
    if kind.startswith("Mapping"):
        option = typer.Option(decl, parser=_json_mapping, metavar="JSON", **common)
        return Annotated[dict | None, option], json.dumps(default) if isinstance(
            default, Mapping
        ) else default
    raise TypeError(
        f"llc_options: LLCConfig.{setting.name} has annotation {kind!r}, which the command line cannot parse yet; "
        "teach lambdahat.cli_options._option how to read it."
    )


def build_config(values: Mapping[str, Any], option_names: Mapping[str, str] | None = None):
    """The :class:`~lambdahat.LLCConfig` of parsed option values (building it imports torch).

    Raises ``typer.BadParameter`` (exit code 2) with ``LLCConfig``'s message, named by the option
    (``option_names``: the command's spelling where it is not :func:`option_name`'s), when a value is refused.
    """
    try:
        return LLCConfig.from_dict(values)
    except ValueError as exc:
        message = str(exc).removeprefix("LLCConfig: ")
        spelled = {s.name: option_name(s.name) for s in llc_settings()} | dict(option_names or {})
        for field_name, decl in sorted(spelled.items(), key=lambda kv: -len(kv[0])):
            if message.startswith(f"{field_name} "):
                raise typer.BadParameter(message.removeprefix(field_name + " "), param_hint=decl) from None
        raise typer.BadParameter(message) from None


def _own_option_names(signature: inspect.Signature) -> set[str]:
    """The option strings a Typer command function already declares (``--x``, ``--no-x``, ...)."""
    names = set()
    for p in signature.parameters.values():
        infos = [
            m for m in getattr(p.annotation, "__metadata__", ()) if isinstance(m, typer.models.ParameterInfo)
        ]
        info = infos[0] if infos else p.default if isinstance(p.default, typer.models.ParameterInfo) else None
        if isinstance(info, typer.models.ArgumentInfo) or (
            info is None and p.default is inspect.Parameter.empty
        ):
            continue
        decls = list(info.param_decls or ()) if info is not None else []
        if infos and isinstance(info.default, str) and info.default.startswith("-"):
            decls.append(info.default)  # Annotated[..., typer.Option("--name")]
        for decl in decls or [option_name(p.name)]:
            names.update(d for d in decl.split("/") if d)
    return names


def llc_options(
    *,
    fields: Sequence[str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    names: Mapping[str, str] | None = None,
    aliases: Mapping[str, str] | None = None,
    panel: str | None = None,
    param: str = "config",
) -> Callable[[Callable], Callable]:
    """Decorate a Typer command so that it takes the ``LLCConfig`` settings as options and receives the validated
    config in its parameter ``param`` (default ``config``).

    Parameters
    ----------
    fields:
        The settings the command offers (default: every ``LLCConfig`` field); the others keep their defaults.
    defaults:
        This command's defaults where they differ from ``LLCConfig``'s (e.g. modular addition's tuned ones).
    names:
        Option names for settings whose own name the command already uses for another concept (e.g. training's
        ``--weight-decay`` next to the sampler's, which then becomes ``--llc-weight-decay``).
    aliases:
        Hidden, deprecated spellings (``{"learning_rate": "--epsilon"}``): accepted with a warning on stderr;
        giving both spellings is an error.
    panel:
        The ``--help`` panel of these options.

    Examples
    --------
    >>> app = typer.Typer()
    >>> @app.command()
    ... @llc_options(fields=["draws", "learning_rate"], defaults={"draws": 50})
    ... def run(config) -> None:
    ...     print(config.draws, config.learning_rate)
    >>> from typer.testing import CliRunner
    >>> print(CliRunner().invoke(app, ["--learning-rate", "auto"]).output.strip())
    50 auto
    """
    settings = {s.name: s for s in llc_settings()}
    chosen = list(settings) if fields is None else list(fields)
    for group, keys in (("fields", chosen), ("defaults", defaults or {}), ("names", names or {})):
        unknown = sorted(set(keys) - set(settings))
        if unknown:
            raise ValueError(f"llc_options: unknown settings {unknown} in {group}; known: {list(settings)}.")
    unknown = sorted(set(aliases or {}) - set(chosen))
    if unknown:
        raise ValueError(f"llc_options: aliases {unknown} name settings that are not offered ({chosen}).")
    overrides = dict(defaults or {})
    decls = {n: (names or {}).get(n, option_name(n)) for n in chosen}
    alias_params = {f"{param}__alias__{n}": (n, a) for n, a in (aliases or {}).items()}

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn, eval_str=True)
        if param not in signature.parameters:
            raise TypeError(
                f"llc_options: {fn.__name__} needs a parameter {param!r} to receive the LLCConfig."
            )
        clash = sorted(set(decls.values()) & _own_option_names(signature))
        if clash:
            raise ValueError(
                f"llc_options: {fn.__name__} already has option(s) {clash}; give the setting another name with "
                "names={...}."
            )
        own = [p for p in signature.parameters.values() if p.name != param]
        added = []
        for n in chosen:
            s = settings[n]
            annotation, default = _option(s, overrides.get(n, s.default), decls[n], panel)
            added.append(
                inspect.Parameter(
                    f"{param}__{n}", inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
                )
            )
        for pname, (n, alias) in alias_params.items():
            note = f"Deprecated spelling of {decls[n]}."
            annotation, _ = _option(settings[n], None, alias, panel, hidden=True, help=note)
            added.append(
                inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
            )
        context = f"{param}__context"
        if alias_params:  # to tell an option given on the command line from its default
            added.append(inspect.Parameter(context, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))
        positional = [p for p in own if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        keyword = [p for p in own if p.kind is inspect.Parameter.KEYWORD_ONLY]
        new_signature = signature.replace(parameters=[*positional, *keyword, *added])

        def command(*args: Any, **kwargs: Any) -> Any:
            values = {n: kwargs.pop(f"{param}__{n}") for n in chosen}
            ctx = kwargs.pop(context, None)
            for pname, (n, alias) in alias_params.items():
                value = kwargs.pop(pname)
                if value is None:
                    continue
                source = ctx.get_parameter_source(f"{param}__{n}") if ctx is not None else None
                if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
                    raise typer.BadParameter(
                        f"the old spelling of {decls[n]}, which is given too; give {decls[n]} only.",
                        param_hint=alias,
                    )
                typer.echo(f"warning: {alias} is deprecated; use {decls[n]}.", err=True)
                values[n] = value
            values = {**{n: overrides[n] for n in overrides if n not in values}, **values}
            kwargs[param] = build_config(values, decls)
            return fn(*args, **kwargs)

        for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(command, attr, getattr(fn, attr))
        command.__signature__ = new_signature  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in new_signature.parameters.values()}
        return command

    return decorate
