"""RMSProp-preconditioned SGLD (Li, Chen, Carlson & Carin 2016).

.. math::

    V \\leftarrow \\alpha V + (1-\\alpha)\\, g \\odot g, \\qquad G = 1 / (\\sqrt{V} + \\epsilon_{rms}), \\\\
    w \\leftarrow w - \\frac{\\varepsilon}{2}\\, G \\odot \\nabla U(w) + \\sqrt{\\varepsilon G} \\odot \\mathcal N(0, I)

where ``g = ∇U(w)`` is the drift of the localized potential (see
:func:`~lambdahat.samplers.base.localized_drift`) and ``V`` starts at ``g ⊙ g`` of the first step. Drift and
noise see the same ``G`` and the same ε.

``V`` adapts only during the first ``adapt_steps`` steps (the estimator passes its ``burnin_steps``) and is frozen
afterwards. A preconditioner that keeps following the position makes the chain sample a distorted posterior unless
the correction term ``Γ = Σ_j ∂G_ij/∂w_j`` of Li et al. is added; on a Gaussian test target the uncorrected, always
adapting version overestimated ``E[nβK]`` by 70 %. With ``G`` frozen, the draws are exact Langevin steps under a
fixed metric, which target the same posterior as SGLD.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

from .base import (
    Context,
    Hyper,
    Info,
    Previous,
    Sampler,
    exact_acceptance_step,
    finish_position,
    langevin_log_accept,
    localized_drift,
    project,
    virial,
)

__all__ = ["State", "build", "init", "step"]


class State(NamedTuple):
    """Positions, the second-moment estimate ``V`` and the previous step (for the MALA diagnostic)."""

    theta: torch.Tensor
    square_avg: torch.Tensor
    prev_energy: torch.Tensor
    count: torch.Tensor
    prev: Previous | None = None


def init(theta: torch.Tensor) -> State:
    """Start every chain at ``theta``; ``V`` and the previous energy are NaN until the first gradient arrives."""
    return State(
        theta.clone(),
        torch.full_like(theta, math.nan),
        torch.full(theta.shape[:1], math.nan, device=theta.device, dtype=theta.dtype),
        torch.zeros(theta.shape[:1], device=theta.device, dtype=theta.dtype),
    )


def step(
    state: State,
    loss: torch.Tensor,
    grad: torch.Tensor,
    noise: torch.Tensor,
    hyper: Hyper,
    ctx: Context,
    alpha: float = 0.99,
    eps: float = 1e-1,
    adapt_steps: int = 100,
) -> tuple[State, Info]:
    """One preconditioned step for all chains (arguments as in :func:`lambdahat.samplers.sgld.step`)."""
    theta = state.theta
    drift, delta = localized_drift(theta, grad, hyper, ctx)
    sq = drift * drift
    adapted = torch.where(torch.isnan(state.square_avg), sq, alpha * state.square_avg + (1 - alpha) * sq)
    adapting = (state.count < adapt_steps) | torch.isnan(state.square_avg[:, :1]).squeeze(-1)
    square_avg = torch.where(adapting.unsqueeze(-1), adapted, state.square_avg)
    precond = 1.0 / (square_avg.sqrt() + eps)
    energy = (precond * drift * drift).sum(-1)
    prev = None
    if ctx.exact_acceptance:
        log_accept, prev = exact_acceptance_step(state.prev, theta, drift, loss, delta, hyper, ctx, precond)
    else:
        log_accept = langevin_log_accept(state.prev_energy, energy, hyper.learning_rate)
    kick = project(noise * (hyper.learning_rate * precond).sqrt(), ctx.orth_u)
    new_theta = finish_position(
        theta - 0.5 * hyper.learning_rate * project(precond * drift, ctx.orth_u) + kick, ctx
    )
    info = Info(
        loss, log_accept, grad.norm(dim=-1), kick.norm(dim=-1), delta.norm(dim=-1), virial(delta, drift)
    )
    return State(new_theta, square_avg, energy, state.count + 1, prev), info


def build(alpha: float = 0.99, eps: float = 1e-1, adapt_steps: int = 100) -> Sampler:
    """RMSProp-SGLD with decay ``alpha`` of the second-moment average, stabilizer ``eps``, and the preconditioner
    frozen after ``adapt_steps`` steps."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"rmsprop_sgld: alpha must lie in [0, 1); got {alpha}.")
    if eps <= 0:
        raise ValueError(f"rmsprop_sgld: eps must be positive; got {eps}.")
    if adapt_steps < 0:
        raise ValueError(f"rmsprop_sgld: adapt_steps must be >= 0; got {adapt_steps}.")
    return Sampler(
        "rmsprop_sgld", init, functools.partial(step, alpha=alpha, eps=eps, adapt_steps=adapt_steps)
    )
