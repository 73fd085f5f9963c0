"""Stochastic gradient Langevin dynamics on the localized tempered posterior (Welling & Teh 2011; Lau et al. 2023).

.. math::

    w \\leftarrow w - \\frac{\\varepsilon}{2}\\Big[n\\beta \\nabla L_B(w) + \\gamma (w - w^*) + wd\\, w\\Big]
    + \\mathcal N(0, \\varepsilon I)

With ``restrict_to_orth_grad`` the drift and the noise are projected onto the hyperplane orthogonal to the
full-batch gradient at ``w*``, so the chain stays in ``w* + u⊥``.
"""

from __future__ import annotations

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
    """Chain positions ``theta`` ``[chains, D]`` and ``||∇U||²`` of the previous step ``[chains]`` (for the MALA
    diagnostic, see :func:`~lambdahat.samplers.base.langevin_log_accept`); with full-batch data, the previous point
    for the exact acceptance (:func:`~lambdahat.samplers.base.exact_acceptance_step`)."""

    theta: torch.Tensor
    prev_energy: torch.Tensor
    prev: Previous | None = None


def init(theta: torch.Tensor) -> State:
    """Start every chain at ``theta`` ``[chains, D]`` (a copy is taken; no previous step yet: NaN energy)."""
    return State(theta.clone(), torch.full(theta.shape[:1], math.nan, device=theta.device, dtype=theta.dtype))


def step(
    state: State, loss: torch.Tensor, grad: torch.Tensor, noise: torch.Tensor, hyper: Hyper, ctx: Context
) -> tuple[State, Info]:
    """One SGLD step for all chains.

    Parameters
    ----------
    state:
        Current positions.
    loss, grad:
        Minibatch mean loss ``[chains]`` and its gradient ``[chains, D]`` at ``state.theta``.
    noise:
        Standard normal ``[chains, D]``.
    hyper, ctx:
        See :class:`~lambdahat.samplers.base.Hyper` and :class:`~lambdahat.samplers.base.Context`.
    """
    theta = state.theta
    drift, delta = localized_drift(theta, grad, hyper, ctx)
    energy = torch.linalg.vector_norm(drift, dim=-1).square()
    prev = None
    if ctx.exact_acceptance:
        log_accept, prev = exact_acceptance_step(state.prev, theta, drift, loss, delta, hyper, ctx)
    else:
        log_accept = langevin_log_accept(state.prev_energy, energy, hyper.learning_rate)
    scale = hyper.learning_rate.sqrt()
    if ctx.orth_u is None:
        noise_norm = torch.linalg.vector_norm(noise, dim=-1) * scale
        new_theta = torch.addcmul(theta, drift, -0.5 * hyper.learning_rate).addcmul_(noise, scale)
    else:
        kick = project(noise, ctx.orth_u) * scale
        noise_norm = torch.linalg.vector_norm(kick, dim=-1)
        new_theta = torch.addcmul(theta, drift, -0.5 * hyper.learning_rate).add_(kick)
    info = Info(
        loss=loss,
        log_accept=log_accept,
        grad_norm=torch.linalg.vector_norm(grad, dim=-1),
        noise_norm=noise_norm,
        distance=torch.linalg.vector_norm(delta, dim=-1),
        virial=virial(delta, drift),
    )
    return State(finish_position(new_theta, ctx), energy, prev), info


def build() -> Sampler:
    """The SGLD sampler (it has no options beyond the shared hyperparameters)."""
    return Sampler("sgld", init, step)
