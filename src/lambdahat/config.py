"""``LLCConfig``: every sampling setting of an LLC run, validated once, in one frozen object.

It is the single source of the settings for :class:`~lambdahat.LLCEstimator`, :func:`~lambdahat.sample`, the grid
search, the YAML/TOML sweep files, the CLI options and the metadata of every result: one name per concept
(``draws``, ``chains``, ``burnin_steps``, ``steps_bw_draws``, ``learning_rate`` = ε, ``localization`` = γ,
``nbeta`` = nβ, ...), one parser for each value (``dtype`` by object or by name).

The run it describes samples the localized tempered posterior

.. math::

    p(w) \\propto \\exp\\Big(-n\\beta L_n(w) - \\frac{\\gamma}{2}\\|w - w^*\\|^2 - \\frac{wd}{2}\\|w\\|^2\\Big)

with ``chains`` chains of ``burnin_steps + draws · steps_bw_draws`` steps of step size ε, and estimates
``λ̂ = nβ (mean draw loss − L0)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "ACCURACY_CHECKS",
    "DTYPES",
    "MODEL_MODES",
    "SAMPLER_NAMES",
    "STRUCTURAL_FIELDS",
    "LLCConfig",
    "Schedule",
    "parse_dtype",
]

#: Precisions a run can use, by name (``torch.<name>``). This module does not import torch until a config is built,
#: so that the command line can declare its options from it quickly.
DTYPES: tuple[str, ...] = ("float32", "float64", "bfloat16", "float16", "model")
#: ``"eval"``: dropout off, BatchNorm on its running statistics; ``"train"``: dropout active, BatchNorm on the
#: statistics of each batch (the caller's running statistics are never updated).
MODEL_MODES = ("eval", "train")
SAMPLER_NAMES = ("sgld", "rmsprop_sgld", "sgnht")
#: The accuracy checks of :mod:`lambdahat.accuracy` a run can make after its chains (``checks=``).
ACCURACY_CHECKS = ("step", "localization", "start")
#: Settings fixed by :func:`~lambdahat.prepare` (they shape the prepared model, L0 and the compiled step); the others
#: may change between :func:`~lambdahat.sample` calls on one prepared problem.
STRUCTURAL_FIELDS = ("dtype", "model_mode", "restrict_to_orth_grad")


def parse_dtype(value: Any) -> torch.dtype | str:
    """A ``torch.dtype`` from itself or its name (``"float32"``, ``"torch.bfloat16"``, ``"bf16"``, ...), or
    ``"model"`` (the model's own dtype, parameters included).

    Examples
    --------
    >>> parse_dtype("bf16"), parse_dtype("torch.float64"), parse_dtype("model")
    (torch.bfloat16, torch.float64, 'model')
    """
    import torch

    if value == "model":
        return "model"
    if isinstance(value, torch.dtype):
        if dtype_name(value) in DTYPES:
            return value
    elif isinstance(value, str):
        name = value.removeprefix("torch.")
        name = {"fp32": "float32", "fp64": "float64", "bf16": "bfloat16", "fp16": "float16"}.get(name, name)
        if name in DTYPES:
            return getattr(torch, name)
    raise ValueError(
        f"LLCConfig: dtype must be one of {', '.join(DTYPES)} (a torch.dtype or its name); got {value!r}."
    )


def dtype_name(dtype: torch.dtype | str) -> str:
    """``torch.float32`` → ``"float32"`` (``"model"`` stays ``"model"``)."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Schedule:
    """``burnin_steps`` discarded steps, then ``draws`` draws taken every ``steps_bw_draws`` steps."""

    draws: int
    burnin_steps: int
    steps_bw_draws: int

    @property
    def total_steps(self) -> int:
        return self.burnin_steps + self.draws * self.steps_bw_draws

    def draw_steps(self) -> torch.Tensor:
        """Indices of the steps whose loss is a draw."""
        import torch

        return torch.arange(self.burnin_steps, self.total_steps, self.steps_bw_draws)


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"LLCConfig: {name} must be an int >= {minimum}; got {value!r}.")
    return int(value)


def _number(name: str, value: Any, *, positive: bool) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"LLCConfig: {name} must be a finite number {bound}; got {value!r}.")
    return float(value)


def _checks(value: Any) -> str:
    """``checks`` in its canonical form: ``"auto"``, ``"all"``, ``"none"`` or the chosen checks, comma-separated in
    the order of :data:`ACCURACY_CHECKS` (a list or tuple of names is accepted)."""
    if isinstance(value, list | tuple):
        names = [str(v).strip() for v in value]
    elif isinstance(value, str):
        if value.strip().lower() in ("auto", "all", "none"):
            return value.strip().lower()
        names = [v.strip() for v in value.split(",") if v.strip()]
    else:
        names = None
    if names is None or not set(names) <= set(ACCURACY_CHECKS):
        raise ValueError(
            f"LLCConfig: checks must be 'auto', 'all', 'none' or a comma list of {', '.join(ACCURACY_CHECKS)}; "
            f"got {value!r}."
        )
    return ",".join(name for name in ACCURACY_CHECKS if name in names) or "none"


#: What each field means (used for docstrings, CLI help and the sweep-file schema).
FIELD_HELP: dict[str, str] = {
    "draws": "draws per chain after burn-in",
    "chains": "independent chains, all in one vmapped call",
    "burnin_steps": "steps discarded before the first draw, or 'auto' to run until the chains have relaxed",
    "steps_bw_draws": "steps between consecutive draws",
    "learning_rate": "step size ε, or 'auto' to choose it on its measured step bias",
    "localization": "γ, the strength of the pull towards w*",
    "nbeta": "nβ, inverse temperature times n; empty for n / log n with n the data set size",
    "dtype": "float32, float64, bfloat16/float16 (forward under autocast, parameters in float32), or model (the "
    "model's own dtype, parameters and chains included: less memory, drift below its resolution lost)",
    "sampler": "sgld, rmsprop_sgld or sgnht",
    "sampler_options": "options of the sampler (rmsprop_sgld: alpha, eps, adapt_steps; sgnht: diffusion)",
    "weight_decay": "coefficient of an extra (wd/2)||w||² term in the potential",
    "bounding_box_size": "clamp every coordinate to w* ± this size after each step (empty: no box)",
    "restrict_to_orth_grad": "sample in the hyperplane orthogonal to the full-batch gradient at w*",
    "model_mode": "eval (dropout off, BatchNorm running statistics) or train (dropout on, batch statistics)",
    "grad_accum_steps": "micro-batches per step: each step's gradient and loss are those of k loader batches together",
    "checks": "accuracy checks after the run: auto (all with learning_rate=auto, none otherwise), all, none, or a "
    "comma list of step, localization, start",
    "max_burnin_steps": "cap of burnin_steps='auto' (empty: 32 times the first burn-in it tries)",
}


@dataclass(frozen=True)
class LLCConfig:
    """Every sampling setting of an LLC run (frozen, validated on construction).

    Parameters
    ----------
    draws:
        Draws per chain after burn-in (default 200).
    chains:
        Independent chains (default 10).
    burnin_steps:
        Steps discarded before the first draw (default 100), or ``"auto"``: run until the chains have relaxed, as
        measured on λ̂ by the start check (:mod:`lambdahat.relaxation`: the burn-in doubles from
        ``max(100, draws · steps_bw_draws)`` until chains started at ``w*`` and from ``N(w*, I/γ)`` agree, up to
        ``max_burnin_steps``). The result records the burn-in used and the search.
    steps_bw_draws:
        Steps between consecutive draws (default 1).
    learning_rate:
        Step size ε (default 1e-5), or ``"auto"`` to choose it on its measured step bias
        (:func:`lambdahat.calibrate_problem`: rounds of the run and its step check until the bias is within 5 %).
    localization:
        γ, the pull towards ``w*`` (default 100).
    nbeta:
        nβ; ``None`` uses ``n / log n`` with ``n`` the size of the data set.
    dtype:
        ``float32`` (default) or ``float64``: arithmetic in that precision; ``bfloat16`` / ``float16``: forward under
        autocast, parameters and updates in float32. A ``torch.dtype`` or its name (kept as a ``torch.dtype``).
        ``"model"``: the model's own dtype for everything, the sampled parameters and the chains' state included
        (a bfloat16 model stays bfloat16: half the memory of float32 copies, for models whose float32 chains do
        not fit). The trade-off: a bfloat16 number has 8 significant bits, so an increment below about 2⁻⁸ of a
        weight's magnitude rounds away; with a small ``learning_rate`` the drift ``ε/2 ∇U`` of most coordinates is
        lost and only the noise moves them, which biases λ̂. Losses are still recorded in float32; check the
        trust policy's verdict, and prefer ``bfloat16`` (float32 parameters, autocast forward) when it fits.
    sampler:
        ``"sgld"`` (default), ``"rmsprop_sgld"`` or ``"sgnht"``.
    sampler_options:
        Options of the sampler (``alpha``, ``eps``, ``adapt_steps`` for rmsprop_sgld, whose ``adapt_steps``
        defaults to ``burnin_steps``; ``diffusion`` for sgnht).
    weight_decay:
        Coefficient of an extra ``(wd/2)||w||²`` term in the potential (default 0).
    bounding_box_size:
        If given, clamp every coordinate to ``w* ± bounding_box_size`` after each step.
    restrict_to_orth_grad:
        Sample only in the hyperplane through ``w*`` orthogonal to the full-batch gradient at ``w*``.
    model_mode:
        ``"eval"`` (default) or ``"train"`` (dropout active, BatchNorm on batch statistics; the caller's running
        statistics are never touched). L0 is computed in the same mode as the draws.
    grad_accum_steps:
        ``k`` (default 1): every step takes ``k`` batches of the loader and uses their count-weighted mean loss and
        gradient, exactly as one batch of all of them (an effective batch ``k`` times the loader's, with the memory
        of one).
    checks:
        Which accuracy checks of :mod:`lambdahat.accuracy` run after the chains, each a companion run that measures
        one bias of λ̂ directly: ``"step"`` (λ̂ at 2ε for the same sampled time), ``"localization"`` (at γ/2),
        ``"start"`` (chains from over-dispersed starts). ``"auto"`` (default): all three when ``learning_rate`` is
        ``"auto"``, none otherwise; ``"all"``, ``"none"``, or a comma-separated list. They cost about
        ``0.5 + 1 + 1`` main runs and turn the trust verdict from proxies into measured biases. With
        ``burnin_steps="auto"`` the start check always runs (it is how relaxation is measured).
    max_burnin_steps:
        The largest burn-in ``burnin_steps="auto"`` may choose (default ``None``: 32 times the first one it tries,
        five doublings).

    Examples
    --------
    >>> cfg = LLCConfig(draws=100, chains=4, learning_rate=1e-4, dtype="bfloat16")
    >>> cfg.dtype, cfg.schedule.total_steps
    (torch.bfloat16, 200)
    >>> LLCConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    draws: int = 200
    chains: int = 10
    burnin_steps: int | str = 100
    steps_bw_draws: int = 1
    learning_rate: float | str = 1e-5
    localization: float = 100.0
    nbeta: float | None = None
    dtype: torch.dtype | str = "float32"
    sampler: str = "sgld"
    sampler_options: Mapping[str, Any] = field(default_factory=dict)
    weight_decay: float = 0.0
    bounding_box_size: float | None = None
    restrict_to_orth_grad: bool = False
    model_mode: str = "eval"
    grad_accum_steps: int = 1
    checks: str = "auto"
    max_burnin_steps: int | None = None

    def __post_init__(self) -> None:
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        put("draws", _int("draws", self.draws, 1))
        put("chains", _int("chains", self.chains, 1))
        if isinstance(self.burnin_steps, str):
            if self.burnin_steps.strip().lower() != "auto":
                raise ValueError(
                    f"LLCConfig: burnin_steps must be an int >= 0 or 'auto'; got {self.burnin_steps!r}."
                )
            put("burnin_steps", "auto")
        else:
            put("burnin_steps", _int("burnin_steps", self.burnin_steps, 0))
        if self.max_burnin_steps is not None:
            put("max_burnin_steps", _int("max_burnin_steps", self.max_burnin_steps, 1))
        put("steps_bw_draws", _int("steps_bw_draws", self.steps_bw_draws, 1))
        put("grad_accum_steps", _int("grad_accum_steps", self.grad_accum_steps, 1))
        if isinstance(self.learning_rate, str):
            if self.learning_rate != "auto":
                raise ValueError(
                    f"LLCConfig: learning_rate must be a positive number or 'auto'; got {self.learning_rate!r}."
                )
        else:
            put("learning_rate", _number("learning_rate", self.learning_rate, positive=True))
        put("localization", _number("localization", self.localization, positive=False))
        if self.nbeta is not None:
            put("nbeta", _number("nbeta", self.nbeta, positive=True))
        put("dtype", parse_dtype(self.dtype))
        if self.sampler not in SAMPLER_NAMES:
            raise ValueError(
                f"LLCConfig: sampler must be one of {', '.join(SAMPLER_NAMES)}; got {self.sampler!r}."
            )
        if not isinstance(self.sampler_options, Mapping):
            raise ValueError(
                f"LLCConfig: sampler_options must be a mapping of option names to values; got "
                f"{type(self.sampler_options).__name__}."
            )
        put("sampler_options", dict(self.sampler_options))
        self.build_sampler()  # checks the options against the sampler
        put("weight_decay", _number("weight_decay", self.weight_decay, positive=False))
        if self.bounding_box_size is not None:
            put("bounding_box_size", _number("bounding_box_size", self.bounding_box_size, positive=True))
        if not isinstance(self.restrict_to_orth_grad, bool):
            raise ValueError(
                f"LLCConfig: restrict_to_orth_grad must be True or False; got {self.restrict_to_orth_grad!r}."
            )
        if self.model_mode not in MODEL_MODES:
            raise ValueError(f"LLCConfig: model_mode must be 'eval' or 'train'; got {self.model_mode!r}.")
        put("checks", _checks(self.checks))
        if self.burnin_steps == "auto" and (self.localization <= 0 or self.chains < 2):
            raise ValueError(
                "LLCConfig: burnin_steps='auto' measures relaxation by chains started from N(w*, I/γ) against "
                f"chains from w*, which needs localization > 0 and chains >= 2; got localization="
                f"{self.localization:g}, chains={self.chains}. Give burnin_steps a number instead."
            )

    def accuracy_checks(self) -> tuple[str, ...]:
        """The accuracy checks this config asks for (``checks="auto"``: all with ``learning_rate="auto"``; the start
        check always with ``burnin_steps="auto"``).

        Examples
        --------
        >>> LLCConfig(learning_rate="auto").accuracy_checks()
        ('step', 'localization', 'start')
        >>> LLCConfig(checks="start,step").accuracy_checks(), LLCConfig().accuracy_checks()
        (('step', 'start'), ())
        >>> LLCConfig(burnin_steps="auto", checks="step").accuracy_checks()
        ('step', 'start')
        """
        if self.checks == "auto":
            chosen: tuple[str, ...] = ACCURACY_CHECKS if self.learning_rate == "auto" else ()
        elif self.checks == "all":
            chosen = ACCURACY_CHECKS
        elif self.checks == "none":
            chosen = ()
        else:
            chosen = tuple(self.checks.split(","))
        if self.burnin_steps == "auto":  # relaxation is measured by the start check
            chosen = tuple(name for name in ACCURACY_CHECKS if name in chosen or name == "start")
        return chosen

    def __hash__(self) -> int:
        data = self.to_dict()
        data["sampler_options"] = sorted(data["sampler_options"].items())
        return hash(repr(sorted(data.items())))

    @property
    def schedule(self) -> Schedule:
        """The step schedule (burn-in, draws, thinning); ``burnin_steps="auto"`` must be resolved first."""
        if self.burnin_steps == "auto":
            raise ValueError(
                "LLCConfig: burnin_steps='auto' has no schedule yet; lambdahat.sample chooses the burn-in (pass the "
                "config to sample or estimate_llc, or give burnin_steps a number)."
            )
        return Schedule(self.draws, self.burnin_steps, self.steps_bw_draws)

    @property
    def total_steps(self) -> int:
        """Steps per chain: ``burnin_steps + draws · steps_bw_draws``."""
        return self.schedule.total_steps

    def build_sampler(self):
        """The :class:`~lambdahat.samplers.Sampler` with its options bound (RMSProp-SGLD's ``adapt_steps``
        defaults to ``burnin_steps``)."""
        from .samplers import get_sampler

        options = dict(self.sampler_options)
        if self.sampler == "rmsprop_sgld":  # an automatic burn-in binds it once chosen
            options.setdefault("adapt_steps", 0 if self.burnin_steps == "auto" else self.burnin_steps)
        try:
            return get_sampler(self.sampler, **options)
        except TypeError as exc:
            raise ValueError(
                f"LLCConfig: sampler_options {options} do not fit {self.sampler!r}: {exc}"
            ) from exc

    def replace(self, **changes: Any) -> LLCConfig:
        """A copy with ``changes`` (validated like the constructor).

        Examples
        --------
        >>> LLCConfig().replace(chains=2).chains
        2
        """
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(
                f"LLCConfig.replace: unknown settings {unknown}; known: {sorted(self.field_names())}."
            )
        return dataclasses.replace(self, **changes)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The settings, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings (``dtype`` by name)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["dtype"] = dtype_name(self.dtype)
        out["sampler_options"] = dict(self.sampler_options)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LLCConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error that lists the known ones."""
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise ValueError(
                f"LLCConfig: unknown settings {unknown}; the settings are {list(cls.field_names())}."
            )
        return cls(**dict(data))

    def structural(self) -> dict[str, Any]:
        """The settings fixed by :func:`~lambdahat.prepare` (see ``STRUCTURAL_FIELDS``)."""
        return {name: getattr(self, name) for name in STRUCTURAL_FIELDS}
