"""RMSProp-preconditioned SGLD (Li, Chen, Carlson & Carin 2016) as the local-sampling benchmark defines it
(Hitchcock & Hoogland 2025, Algorithms 2-3; REFERENCE.md §5).

.. math::

    v_t = b_2 v_{t-1} + (1 - b_2)\\, g_t \\odot g_t, \\quad v_0 = 1, \\qquad
    \\hat v_t = v_t / (1 - b_2^t), \\qquad \\varepsilon_t = \\varepsilon / (\\sqrt{\\hat v_t} + a), \\\\
    w \\leftarrow w - \\frac{\\varepsilon_t}{2} \\odot \\big(n\\beta\\, g_t + \\gamma (w - w^*)\\big)
        + \\sqrt{\\varepsilon_t} \\odot \\mathcal N(0, I)

with ``g_t`` the gradient of the minibatch *loss* only (not the localization), ``b_2 = alpha`` and ``a = eps``.
Drift and noise see the same per-coordinate step ``ε_t``.

``v`` adapts only during the first ``adapt_steps`` steps (the estimator passes its ``burnin_steps``) and is frozen
afterwards, its bias correction with it. A preconditioner that keeps following the position makes the chain sample
a distorted posterior unless the correction term ``Γ = Σ_j ∂G_ij/∂w_j`` of Li et al. is added; on a Gaussian test
target an uncorrected, always adapting version overestimated ``E[nβK]`` by 70 %. With ``ε_t`` frozen, the draws are
Langevin steps under a fixed metric, which target the same posterior as SGLD.
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
    """Positions, the second-moment estimate ``v`` of the loss gradient, the step count and the previous step (for
    the MALA diagnostic)."""

    theta: torch.Tensor
    square_avg: torch.Tensor
    prev_energy: torch.Tensor
    count: torch.Tensor
    prev: Previous | None = None


def init(theta: torch.Tensor) -> State:
    """Start every chain at ``theta`` with ``v = 1``; the previous energy is NaN until the first step."""
    return State(
        theta.clone(),
        torch.ones_like(theta),
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
    adapting = (state.count < adapt_steps).unsqueeze(-1)
    square_avg = torch.where(adapting, alpha * state.square_avg + (1 - alpha) * grad * grad, state.square_avg)
    updates = torch.clamp(state.count + 1, max=adapt_steps).unsqueeze(
        -1
    )  # updates of v so far (frozen after)
    correction = torch.where(updates > 0, 1 - torch.pow(alpha, updates), torch.ones_like(updates))
    precond = 1.0 / ((square_avg / correction).sqrt() + eps)
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
