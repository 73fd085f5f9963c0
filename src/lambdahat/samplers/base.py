"""Pieces shared by the samplers: hyperparameters, the localized potential, projection, MALA acceptance.

Every sampler module exposes the same names: ``State`` and ``Info`` (NamedTuples of tensors with a leading chain
dimension), ``init(theta, ...) -> State``, ``step(state, loss, grad, noise, hyper, ctx) -> (State, Info)`` and
``build(**options) -> Sampler``. Steps are pure tensor functions (no host syncs, no branches on values), so they can
be compiled and run for all chains at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

__all__ = [
    "Context",
    "Hyper",
    "Info",
    "Previous",
    "Sampler",
    "exact_acceptance_step",
    "exact_log_accept",
    "langevin_log_accept",
    "localized_drift",
    "log_proposal_ratio",
    "mala_log_accept",
    "potential",
    "project",
    "virial",
]


class Hyper(NamedTuple):
    """Hyperparameters that may change between runs without recompiling (0-d tensors): ``learning_rate`` is ε,
    ``nbeta`` is nβ, ``localization`` is γ."""

    learning_rate: torch.Tensor
    nbeta: torch.Tensor
    localization: torch.Tensor


class Context(NamedTuple):
    """Fixed settings of a run: the anchor ``w*`` ``[D]``, the unit gradient direction ``u`` ``[D]`` removed by
    ``restrict_to_orth_grad`` (or ``None``), the half-width of the optional bounding box around ``w*`` and the
    coefficient ``wd`` of the optional ``(wd/2)||w||²`` term of the potential, and whether the step's loss is the
    full-data loss (one batch holding the whole data set), so that the exact MALA acceptance can be computed from
    potentials (:func:`exact_log_accept`) instead of estimated from gradients (Python values: a step compiled for
    one setting is specialised to it)."""

    w_star: torch.Tensor
    orth_u: torch.Tensor | None = None
    box: float | None = None
    weight_decay: float = 0.0
    exact_acceptance: bool = False


class Info(NamedTuple):
    """What one step observed, per chain (shape ``[chains]``).

    ``loss`` is the minibatch loss at the position *before* the step (the draw), ``log_accept`` the log MALA
    acceptance probability of the transition that led to that position (NaN where undefined), ``grad_norm`` the
    norm of the minibatch loss gradient, ``noise_norm`` that of the injected noise, ``distance`` ``||w - w*||``
    and ``virial`` ``(w - w*)·∇U(w)`` (with the minibatch gradient; its posterior mean is the number of sampled
    directions, see :func:`virial`).
    """

    loss: torch.Tensor
    log_accept: torch.Tensor
    grad_norm: torch.Tensor
    noise_norm: torch.Tensor
    distance: torch.Tensor
    virial: torch.Tensor


class Sampler(NamedTuple):
    """A sampler: its name and its two pure functions with the options bound."""

    name: str
    init: Callable
    step: Callable


def project(v: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    """Remove the component along the unit vector ``u``: ``(I - u uᵀ) v`` for each chain (identity if ``u`` is None)."""
    if u is None:
        return v
    return v - (v @ u).unsqueeze(-1) * u


def localized_drift(
    theta: torch.Tensor, grad: torch.Tensor, hyper: Hyper, ctx: Context
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of the potential of the localized tempered posterior.

    .. math::

        U(w) = n\\beta L_B(w) + \\frac{\\gamma}{2}\\|w - w^*\\|^2 + \\frac{wd}{2}\\|w\\|^2, \\qquad
        \\nabla U(w) = n\\beta \\nabla L_B(w) + \\gamma (w - w^*) + wd\\, w

    Returns
    -------
    drift ``∇U`` projected by ``restrict_to_orth_grad`` : ``[chains, D]``; ``w - w*`` : ``[chains, D]``.
    """
    delta = theta - ctx.w_star
    drift = torch.addcmul(grad * hyper.nbeta, delta, hyper.localization)
    if ctx.weight_decay:
        drift = drift.add(theta, alpha=ctx.weight_decay)
    return project(drift, ctx.orth_u), delta


def virial(delta: torch.Tensor, drift: torch.Tensor) -> torch.Tensor:
    """``(w - w*)·∇U(w)`` per chain.

    Integrating by parts against the posterior ``p ∝ exp(-U)`` gives, for every direction ``i`` in which the chains
    move (``d`` of them: ``D``, or ``D - 1`` with ``restrict_to_orth_grad``),

    .. math::

        \\mathbb E_p\\big[(w - w^*)_i\\, \\partial_i U(w)\\big] = 1, \\qquad
        T = \\frac{1}{d}\\,\\mathbb E\\big[(w - w^*)^\\top \\nabla U(w)\\big] = 1

    whatever the shape of ``U`` (singular or not), so the *configurational temperature* ``T`` of the draws checks
    that the chains sample the posterior: a finite step inflates it (by ``1/(1 - εκ/4)`` along a direction of
    curvature κ for SGLD), chains still spreading out lower it. The minibatch gradient gives an unbiased estimate.
    """
    return (delta * drift).sum(-1)


def finish_position(theta: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Keep a new position inside the optional bounding box ``w* ± box``."""
    if ctx.box is None:
        return theta
    return torch.minimum(torch.maximum(theta, ctx.w_star - ctx.box), ctx.w_star + ctx.box)


def log_proposal_ratio(
    prev_theta: torch.Tensor,
    theta: torch.Tensor,
    prev_drift: torch.Tensor,
    drift: torch.Tensor,
    learning_rate: torch.Tensor,
    prev_precond: torch.Tensor | float = 1.0,
    precond: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """``log q(w|w') − log q(w'|w)`` per chain for the Langevin proposal
    ``q(w'|w) = N(w'; w − (ε/2) G ∇U(w), ε G)`` (``G`` diagonal; ``prev_*`` belong to ``w``)."""
    step = theta - prev_theta
    half = 0.5 * learning_rate
    fwd = step + half * prev_precond * prev_drift
    bwd = -step + half * precond * drift
    log_q_fwd = -(fwd * fwd / prev_precond).sum(-1) / (2 * learning_rate)
    log_q_bwd = -(bwd * bwd / precond).sum(-1) / (2 * learning_rate)
    if isinstance(prev_precond, torch.Tensor):
        log_q_fwd = log_q_fwd - 0.5 * torch.log(prev_precond).sum(-1)
        log_q_bwd = log_q_bwd - 0.5 * torch.log(precond).sum(-1)
    return log_q_bwd - log_q_fwd


def mala_log_accept(
    prev_theta: torch.Tensor,
    theta: torch.Tensor,
    prev_drift: torch.Tensor,
    drift: torch.Tensor,
    learning_rate: torch.Tensor,
    prev_precond: torch.Tensor | float = 1.0,
    precond: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """Log Metropolis–Hastings acceptance of the Langevin transition ``w → w'`` (Furman & Lau 2024).

    With the proposal ``q(w'|w) = N(w'; w - (ε/2) G ∇U(w), ε G)`` (``G`` a diagonal preconditioner, 1 for SGLD):

    .. math::

        \\log a = \\min\\Big(0,\\; U(w) - U(w') + \\log q(w|w') - \\log q(w'|w)\\Big),
        \\qquad U(w') - U(w) \\approx \\tfrac12 \\big(\\nabla U(w) + \\nabla U(w')\\big)^\\top (w' - w)

    The potential difference comes from the trapezoid rule on the gradients the sampler computes anyway: exact
    for quadratic potentials, and free of the offset between the *losses* of two different minibatches, which
    at large nβ swamps ``U(w) - U(w')`` and drives a loss-based acceptance towards 0.5 whatever the step.
    ``prev_*`` belong to ``w``, the others to ``w'``; NaN where ``prev_drift`` is NaN (no previous step).
    """
    log_ratio = log_proposal_ratio(prev_theta, theta, prev_drift, drift, learning_rate, prev_precond, precond)
    delta_potential = 0.5 * ((prev_drift + drift) * (theta - prev_theta)).sum(-1)
    return torch.clamp(-delta_potential + log_ratio, max=0.0)


def potential(loss: torch.Tensor, theta: torch.Tensor, delta: torch.Tensor, hyper: Hyper, ctx: Context):
    """``U(w) = nβ L(w) + (γ/2)||w − w*||² + (wd/2)||w||²`` per chain, from the loss at ``w`` and ``w − w*``."""
    value = hyper.nbeta * loss + 0.5 * hyper.localization * (delta * delta).sum(-1)
    if ctx.weight_decay:
        value = value + 0.5 * ctx.weight_decay * (theta * theta).sum(-1)
    return value


def exact_log_accept(
    prev_theta: torch.Tensor,
    theta: torch.Tensor,
    prev_drift: torch.Tensor,
    drift: torch.Tensor,
    prev_potential: torch.Tensor,
    potential_now: torch.Tensor,
    learning_rate: torch.Tensor,
    prev_precond: torch.Tensor | float = 1.0,
    precond: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """The exact log Metropolis–Hastings acceptance of the Langevin transition ``w → w'``:

    .. math::

        \\log a = \\min\\Big(0,\\; U(w) - U(w') + \\log q(w|w') - \\log q(w'|w)\\Big),
        \\qquad q(w'|w) = \\mathcal N\\big(w'; w - \\tfrac{\\varepsilon}{2} G \\nabla U(w), \\varepsilon G\\big)

    with the potentials themselves (valid when ``U`` is the full-data potential, the same function at both points).
    """
    log_ratio = log_proposal_ratio(prev_theta, theta, prev_drift, drift, learning_rate, prev_precond, precond)
    return torch.clamp(prev_potential - potential_now + log_ratio, max=0.0)


class Previous(NamedTuple):
    """The previous position, drift (and preconditioner) and potential, kept only for the exact acceptance."""

    theta: torch.Tensor
    drift: torch.Tensor
    potential: torch.Tensor
    precond: torch.Tensor | float = 1.0


def exact_acceptance_step(
    prev: Previous | None,
    theta: torch.Tensor,
    drift: torch.Tensor,
    loss: torch.Tensor,
    delta: torch.Tensor,
    hyper: Hyper,
    ctx: Context,
    precond: torch.Tensor | float = 1.0,
) -> tuple[torch.Tensor, Previous]:
    """The exact log acceptance of the transition into ``theta`` (NaN at the first step) and the record of this
    point for the next step."""
    now = potential(loss, theta, delta, hyper, ctx)
    if prev is None:
        log_accept = torch.full_like(now, float("nan"))
    else:
        log_accept = exact_log_accept(
            prev.theta,
            theta,
            prev.drift,
            drift,
            prev.potential,
            now,
            hyper.learning_rate,
            prev.precond,
            precond,
        )
    return log_accept, Previous(theta, drift, now, precond)


def langevin_log_accept(
    prev_energy: torch.Tensor, energy: torch.Tensor, learning_rate: torch.Tensor
) -> torch.Tensor:
    """:func:`mala_log_accept` for an unclamped Langevin step, in closed form from two scalars per chain.

    Substituting the step ``w' − w = −(ε/2) G ∇U(w) + sqrt(ε G) ξ`` (fixed diagonal ``G``) into
    :func:`mala_log_accept` with the trapezoid potential difference, every noise term cancels and

    .. math::

        \\log a = \\min\\Big(0,\\; \\tfrac{\\varepsilon}{8}\\big(\\|\\nabla U(w)\\|_G^2
        - \\|\\nabla U(w')\\|_G^2\\big)\\Big), \\qquad \\|v\\|_G^2 = v^\\top G v

    so a sampler needs to keep only the previous ``energy = ||∇U||²_G`` (``[chains]``), not the previous position
    and drift. Exact under these assumptions (tests check it against :func:`mala_log_accept`); with a bounding box
    that clamps the step, or a preconditioner that changed during the step, it is an approximation.
    """
    return torch.clamp(0.125 * learning_rate * (prev_energy - energy), max=0.0)
