"""Stochastic gradient Nosé–Hoover thermostat (Ding, Fang, Babbush, Chen, Skeel & Neven 2014).

With step ``h = sqrt(ε)`` (so that ``learning_rate`` ε has the same stability limit ``h² κ < 4`` as SGLD on a
quadratic of curvature κ), momentum ``p`` and one thermostat ``ξ`` per chain:

.. math::

    p \\leftarrow p - h\\, \\xi\\, p - h \\nabla U(w) + \\sqrt{2 A h}\\, \\mathcal N(0, I), \\qquad
    w \\leftarrow w + h\\, p, \\qquad
    \\xi \\leftarrow \\xi + h\\,(p^\\top p / d - 1)

The thermostat absorbs the unknown gradient-noise heat so that ``w`` samples ``exp(-U)``. ``A`` is the injected
diffusion (``diffusion``), ``ξ`` starts at ``A``. MALA acceptance is not defined for it (reported as NaN).

A step lasts ``h = √ε`` time units, and the thermostat takes tens of them to settle: burn in for at least
``30 / √ε`` steps (:data:`lambdahat.guidance.MIN_THERMOSTAT_TIME`). Shorter, the chains run hot and λ̂ reads high
(on a regular model with λ = 5: 6.37 after 1.1 time units of burn-in, 5.38 after 2.1, 4.99 after 35), which is
what made SGNHT read well above SGLD at SGLD's burn-in.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

from .base import Context, Hyper, Info, Sampler, finish_position, localized_drift, project, virial

__all__ = ["State", "build", "init", "step"]


class State(NamedTuple):
    """Positions ``[chains, D]``, momenta ``[chains, D]`` and thermostats ``[chains]``."""

    theta: torch.Tensor
    momentum: torch.Tensor
    thermostat: torch.Tensor


def init(theta: torch.Tensor, diffusion: float = 1.0) -> State:
    """Start at ``theta`` with zero momentum and ``ξ = A``."""
    return State(
        theta.clone(),
        torch.zeros_like(theta),
        torch.full(theta.shape[:1], diffusion, device=theta.device, dtype=theta.dtype),
    )


def step(
    state: State,
    loss: torch.Tensor,
    grad: torch.Tensor,
    noise: torch.Tensor,
    hyper: Hyper,
    ctx: Context,
    diffusion: float = 1.0,
) -> tuple[State, Info]:
    """One SGNHT step for all chains (arguments as in :func:`lambdahat.samplers.sgld.step`)."""
    h = hyper.learning_rate.sqrt()
    drift, delta = localized_drift(state.theta, grad, hyper, ctx)
    kick = project(noise, ctx.orth_u) * (2 * diffusion * h).sqrt()
    momentum = state.momentum - h * state.thermostat.unsqueeze(-1) * state.momentum - h * drift + kick
    theta = finish_position(state.theta + h * momentum, ctx)
    dof = momentum.shape[-1] - (0 if ctx.orth_u is None else 1)
    thermostat = state.thermostat + h * ((momentum * momentum).sum(-1) / dof - 1.0)
    nan = torch.full_like(loss, math.nan)
    info = Info(loss, nan, grad.norm(dim=-1), kick.norm(dim=-1), delta.norm(dim=-1), virial(delta, drift))
    return State(theta, momentum, thermostat), info


def build(diffusion: float = 1.0) -> Sampler:
    """SGNHT with injected diffusion ``A = diffusion``."""
    if diffusion <= 0:
        raise ValueError(f"sgnht: diffusion must be positive; got {diffusion}.")
    return Sampler(
        "sgnht", functools.partial(init, diffusion=diffusion), functools.partial(step, diffusion=diffusion)
    )
