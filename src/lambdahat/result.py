"""The immutable result of an LLC estimate, with its diagnostics."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from . import diagnostics
from .chains import Schedule
from .samplers import Info

__all__ = ["LLCResult"]


@dataclass(frozen=True)
class LLCResult:
    """Everything an LLC run produced. Traces are ``(chain, draw)`` CPU tensors.

    The estimate of chain ``c`` is ``llcs[c] = nbeta * (losses[c].mean() - init_loss)``; ``llc_mean`` and
    ``llc_std`` are over the chains that did not diverge.

    Attributes
    ----------
    llcs:
        ``[chains]`` per-chain λ̂.
    losses:
        ``[chains, draws]`` minibatch loss at every draw.
    init_loss:
        ``L0``, the full-data loss at ``w*`` computed with the same function, precision and mode as the draws.
    nbeta, learning_rate, localization:
        The nβ, ε and γ used.
    llc_trace:
        ``[chains, draws]`` running λ̂: ``nbeta * (cumulative mean of losses - init_loss)``.
    mala_acceptance_trace:
        ``[chains, draws]`` MALA acceptance probability of the transition into each draw (NaN where undefined).
    grad_norm, noise_norm, distance:
        ``[chains, draws]`` norms of the loss gradient, of the injected noise, and of ``w - w*`` at each draw.
    loss_trace:
        ``[chains, steps]`` loss at every step, burn-in included.
    diverged, divergence_step:
        ``[chains]``: whether each chain diverged and at which step (-1 if not).
    seed:
        The master seed (drawn from the OS when none was given), enough to repeat the run.
    settings:
        The sampler, schedule, devices, compile decision, and other settings of the run.
    """

    llcs: torch.Tensor
    losses: torch.Tensor
    init_loss: float
    nbeta: float
    learning_rate: float
    localization: float
    llc_trace: torch.Tensor
    mala_acceptance_trace: torch.Tensor
    grad_norm: torch.Tensor
    noise_norm: torch.Tensor
    distance: torch.Tensor
    loss_trace: torch.Tensor
    diverged: torch.Tensor
    divergence_step: torch.Tensor
    seed: int
    llc_mean: float
    llc_std: float
    mala_acceptance: float
    rhat: float
    ess: float
    trend_z: float
    warnings: tuple[str, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_trace(
        cls,
        trace: torch.Tensor,
        schedule: Schedule,
        init_loss: float,
        nbeta: float,
        learning_rate: float,
        localization: float,
        seed: int,
        settings: dict[str, Any],
        warn: bool = True,
    ) -> LLCResult:
        """Build the result from the runner's ``[fields, chains, steps]`` trace (see :class:`~lambdahat.samplers.Info`)."""
        fields = dict(zip(Info._fields, trace.to(torch.float64)))
        draw_steps = schedule.draw_steps()
        losses = fields["loss"][:, draw_steps]
        llcs = nbeta * (losses.mean(dim=1) - init_loss)
        counts = torch.arange(1, losses.shape[1] + 1, dtype=torch.float64)
        llc_trace = nbeta * (losses.cumsum(dim=1) / counts - init_loss)
        accept = fields["log_accept"][:, draw_steps].exp()
        diverged, div_step = diagnostics.divergence(fields["loss"], init_loss)
        ok = ~diverged
        kept = llcs[ok]
        llc_mean = float(kept.mean()) if len(kept) else math.nan
        llc_std = float(kept.std()) if len(kept) > 1 else (0.0 if len(kept) == 1 else math.nan)
        acc_ok = accept[ok]
        mala = float(acc_ok[torch.isfinite(acc_ok)].mean()) if torch.isfinite(acc_ok).any() else math.nan
        rhat = diagnostics.r_hat(losses[ok].numpy())
        ess = diagnostics.effective_sample_size(losses[ok].numpy())
        trend = diagnostics.trend_z(losses[ok].numpy())
        notes = tuple(
            diagnostics.advice(
                llc_mean=llc_mean,
                llc_std=llc_std,
                n_chains=len(llcs),
                diverged=torch.nonzero(diverged).flatten().tolist(),
                mala_acceptance=mala,
                rhat=rhat,
                trend=trend,
                trend_p=diagnostics.trend_p_value(trend, int(ok.sum())),
            )
        )
        if warn:
            for note in notes:
                warnings.warn(f"estimate_llc: {note}", RuntimeWarning, stacklevel=4)
        return cls(
            llcs=llcs.float(),
            losses=losses.float(),
            init_loss=float(init_loss),
            nbeta=float(nbeta),
            learning_rate=float(learning_rate),
            localization=float(localization),
            llc_trace=llc_trace.float(),
            mala_acceptance_trace=accept.float(),
            grad_norm=fields["grad_norm"][:, draw_steps].float(),
            noise_norm=fields["noise_norm"][:, draw_steps].float(),
            distance=fields["distance"][:, draw_steps].float(),
            loss_trace=fields["loss"].float(),
            diverged=diverged,
            divergence_step=div_step,
            seed=int(seed),
            llc_mean=llc_mean,
            llc_std=llc_std,
            mala_acceptance=mala,
            rhat=rhat,
            ess=ess,
            trend_z=trend,
            warnings=notes,
            settings=dict(settings),
        )

    @property
    def llc_stderr(self) -> float:
        """Standard error of ``llc_mean`` across the kept chains (``llc_std / sqrt(chains kept)``)."""
        kept = int((~self.diverged).sum())
        return self.llc_std / math.sqrt(kept) if kept > 1 else math.nan

    def to_metrics(self) -> dict[str, Any]:
        """The dictionary of :meth:`LLCEstimator.get_metrics` (names of canonical-interp kept)."""
        kept = self.losses[~self.diverged]
        final = kept[:, -1] if len(kept) else torch.tensor([math.nan])
        return {
            "llc_mean": self.llc_mean,
            "llc_std": self.llc_std,
            "llc_stderr": self.llc_stderr,
            "llcs": self.llcs,
            "losses": self.losses,
            "losses_mean": float(final.mean()),
            "losses_std": float(final.std()) if len(final) > 1 else 0.0,
            "init_loss": self.init_loss,
            "nbeta": self.nbeta,
            "learning_rate": self.learning_rate,
            "localization": self.localization,
            "llc_trace": self.llc_trace,
            "mala_acceptance": self.mala_acceptance,
            "mala_acceptance_trace": self.mala_acceptance_trace,
            "rhat": self.rhat,
            "ess": self.ess,
            "trend_z": self.trend_z,
            "grad_norm": self.grad_norm,
            "noise_norm": self.noise_norm,
            "distance": self.distance,
            "loss_trace": self.loss_trace,
            "diverged": self.diverged,
            "divergence_step": self.divergence_step,
            "seed": self.seed,
            "warnings": list(self.warnings),
            **{k: v for k, v in self.settings.items() if k not in ("nbeta", "learning_rate", "localization")},
        }
