"""The settings of modular addition, without torch: :class:`ExperimentParams` and λ̂'s measured defaults.

Everything here is plain Python (no torch, numpy, pandas or matplotlib), so that the ``lambdahat modadd ...``
commands can declare their options, with these defaults, without importing the heavy libraries: ``--help`` stays
quick. :mod:`lambdahat.modadd.train`, :mod:`lambdahat.modadd.model` and :mod:`lambdahat.modadd.llc` re-export what
they used to define (``ExperimentParams``, ``Activation``, the ``DEFAULT_*`` λ̂ settings).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

__all__ = [
    "ACTIVATIONS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_BURNIN_STEPS",
    "DEFAULT_CHAINS",
    "DEFAULT_DRAWS",
    "DEFAULT_LEARNING_RATE",
    "DEFAULT_LOCALIZATION",
    "DEFAULT_RESTRICT_TO_ORTH_GRAD",
    "Activation",
    "ExperimentParams",
]

#: The hidden nonlinearity of :class:`~lambdahat.modadd.ModAddModel`: GELU, ReLU or ``x ↦ x²``.
Activation = Literal["gelu", "relu", "quad"]
ACTIVATIONS: tuple[str, ...] = get_args(Activation)

# -- λ̂ of a modular-addition run: the defaults measured on the default ExperimentParams (see lambdahat.modadd.llc) --

#: γ, the pull towards ``w*`` (the hackathon's ``gamma``).
DEFAULT_LOCALIZATION = 100.0
#: ε, the SGLD step size (the hackathon's ``epsilon``).
DEFAULT_LEARNING_RATE = 1e-4
DEFAULT_DRAWS = 200
DEFAULT_BURNIN_STEPS = 300
DEFAULT_CHAINS = 8
DEFAULT_BATCH_SIZE = 64
#: Sample orthogonally to the full-batch gradient at ``w*`` (checkpoints early in training are far from a minimum).
DEFAULT_RESTRICT_TO_ORTH_GRAD = True


@dataclass(frozen=True)
class ExperimentParams:
    """Everything that defines one modular-addition training run (the run is a pure function of these).

    The defaults train a small GELU network on ``p = 53`` (half of the pairs for training) that groks in a few
    seconds on a CPU (see the notes of :func:`~lambdahat.modadd.train` on threads): the training accuracy reaches
    0.99 around step 1000 while the test accuracy is still below 0.2, then the weight decay pulls the test accuracy
    above 0.9 by step 1600-2100 and to 0.99-1.0 at step 4000 (checked for run_id 0 .. 9).

    Parameters
    ----------
    p : int
        The modulus.
    embed_dim, hidden_size : int
        Widths of the embedding and the hidden layer.
    activation : {"gelu", "relu", "quad"}
        Hidden nonlinearity.
    tie_unembed, linear_1_tied, scale_embed, scale_linear_1_factor, freeze_middle
        Architecture options, see :class:`~lambdahat.modadd.ModAddModel`.
    use_random_dataset : bool
        Train on the memorization control (random labels) instead of ``(a + b) mod p``.
    train_frac : float
        Fraction of the ``p²`` pairs in the training split, in ``(0, 1]``.
    lr : float
        Adam learning rate.
    weight_decay : float
        Coupled L2 weight decay of Adam (``torch.optim.Adam(weight_decay=...)``: ``g ← g + wd · w``).
    batch_size : int
        Minibatch size; minibatches are drawn with replacement from the training split.
    n_batches : int
        Number of optimizer steps.
    n_save_model_checkpoints : int
        Number of checkpoints, evenly spaced over ``0 .. n_batches`` (see
        :func:`~lambdahat.modadd.checkpoint_steps`); checkpoint 0 is the initialization and the last is the final
        model. Between 2 and ``n_batches + 1``.
    num_no_weight_decay_steps : int
        The first this-many steps use weight decay 0.
    run_id : int
        The seed: initialization, split, random labels and minibatch order are all derived from it.

    Examples
    --------
    >>> params = ExperimentParams(p=23, activation="relu")
    >>> params.p, params.activation, params.n_batches
    (23, 'relu', 4000)
    >>> ExperimentParams.from_dict(params.to_dict()) == params
    True
    >>> ExperimentParams(train_frac=0)
    Traceback (most recent call last):
        ...
    ValueError: ExperimentParams: train_frac must be a number in (0, 1], got 0.
    """

    p: int = 53
    embed_dim: int = 32
    hidden_size: int = 128
    activation: Activation = "gelu"
    tie_unembed: bool = False
    linear_1_tied: bool = False
    scale_embed: float = 1.0
    scale_linear_1_factor: float = 1.0
    freeze_middle: bool = False
    use_random_dataset: bool = False
    train_frac: float = 0.5
    lr: float = 0.003
    weight_decay: float = 3e-3
    batch_size: int = 128
    n_batches: int = 4000
    n_save_model_checkpoints: int = 41
    num_no_weight_decay_steps: int = 0
    run_id: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ValueError:
            value = getattr(self, name)
            return ValueError(f"ExperimentParams: {name} must be {expected}, got {value!r}.")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.p) or self.p < 2:
            raise bad("p", "an integer >= 2 (the modulus, e.g. 53)")
        for name in ("embed_dim", "hidden_size", "batch_size", "n_batches"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "a positive integer")
        if not is_int(self.num_no_weight_decay_steps) or self.num_no_weight_decay_steps < 0:
            raise bad("num_no_weight_decay_steps", "a non-negative integer")
        if not is_int(self.run_id):
            raise bad("run_id", "an integer (the seed)")
        n_ckpt = self.n_save_model_checkpoints
        if not is_int(n_ckpt) or not 2 <= n_ckpt <= self.n_batches + 1:
            raise bad(
                "n_save_model_checkpoints",
                f"an integer in [2, n_batches + 1] = [2, {self.n_batches + 1}] "
                "(checkpoint 0 is the initialization and the last one the final model)",
            )
        if self.activation not in ACTIVATIONS:
            raise bad("activation", "one of " + ", ".join(repr(a) for a in ACTIVATIONS))
        if not isinstance(self.train_frac, (int, float)) or not 0.0 < self.train_frac <= 1.0:
            raise bad("train_frac", "a number in (0, 1]")
        for name in ("lr", "weight_decay", "scale_embed", "scale_linear_1_factor"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(name, "a finite number")
        if self.lr <= 0:
            raise bad("lr", "positive")
        if self.weight_decay < 0:
            raise bad("weight_decay", "non-negative")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (JSON-serializable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExperimentParams:
        """Build from a dict; unknown keys raise (a typo must not silently become a default)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"ExperimentParams.from_dict: unknown field(s) {unknown}; the known fields are "
                f"{sorted(known)}."
            )
        return cls(**values)
