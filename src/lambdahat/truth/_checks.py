"""Input checks shared by the modules of :mod:`lambdahat.truth` (package-internal)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from fractions import Fraction

__all__ = ["check_int", "check_real", "monomial_ratios"]


def check_int(func: str, name: str, value: object, minimum: int) -> int:
    """Return ``value`` as an ``int`` if it is an integer ``>= minimum``, else raise a ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{func}: expected {name} to be an integer >= {minimum}, got {value!r}.")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{func}: expected {name} to be an integer >= {minimum}, got {value}.")
    return value


def check_real(func: str, name: str, value: object, *, lower: float, strict: bool) -> float:
    """Return ``value`` as a finite ``float`` above ``lower`` (strictly or not), or raise a ``ValueError``."""
    bound = f"> {lower:g}" if strict else f">= {lower:g}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{func}: expected {name} to be a finite real number {bound}, got {value!r}.")
    value = float(value)
    if not math.isfinite(value) or value < lower or (strict and value == lower):
        raise ValueError(f"{func}: expected {name} to be a finite real number {bound}, got {value!r}.")
    return value


def monomial_ratios(func: str, k: Sequence[float], h: Sequence[float] | None) -> list[Fraction]:
    """Exact ratios ``(h_i + 1) / (2 k_i)`` over the coordinates with ``k_i > 0``."""
    if isinstance(k, str | bytes) or not hasattr(k, "__iter__"):
        raise ValueError(f"{func}: expected k to be a sequence of exponents, got {k!r}.")
    ks = [check_real(func, f"k[{i}]", ki, lower=0.0, strict=False) for i, ki in enumerate(k)]
    if not ks:
        raise ValueError(f"{func}: expected at least one exponent in k, got an empty sequence.")
    if h is None:
        hs = [0.0] * len(ks)
    elif isinstance(h, str | bytes) or not hasattr(h, "__iter__"):
        raise ValueError(f"{func}: expected h to be a sequence of prior exponents, got {h!r}.")
    else:
        hs = [check_real(func, f"h[{i}]", hi, lower=-1.0, strict=True) for i, hi in enumerate(h)]
        if len(hs) != len(ks):
            raise ValueError(
                f"{func}: expected h to have one entry per exponent in k ({len(ks)}), got {len(hs)} entries."
            )
    ratios = [(Fraction(hi) + 1) / (2 * Fraction(ki)) for ki, hi in zip(ks, hs) if ki > 0]
    if not ratios:
        raise ValueError(
            f"{func}: all exponents in k are 0, so K is constant and has no learning coefficient; "
            f"got k = {ks}."
        )
    return ratios
