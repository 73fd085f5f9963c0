"""The immutable result of an LLC estimate, with its diagnostics and the verdict of the trust policy."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from . import diagnostics, trust
from .config import Schedule
from .samplers import Info

__all__ = ["LLCResult"]


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _caller_level() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside lambdahat (the user's call)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def _temperature(virial: torch.Tensor, settings: dict[str, Any]) -> tuple[float, float]:
    """Configurational temperature of the draws ``[kept chains, draws]`` and its standard error across chains."""
    dim = settings.get("dim")
    if not dim or settings.get("bounding_box_size") is not None or len(virial) == 0:
        return math.nan, math.nan
    directions = dim - (1 if settings.get("restrict_to_orth_grad") else 0)
    per_chain = virial.mean(dim=1) / directions
    if not torch.isfinite(per_chain).all():
        return math.nan, math.nan
    stderr = float(per_chain.std() / math.sqrt(len(per_chain))) if len(per_chain) > 1 else math.nan
    return float(per_chain.mean()), stderr


def _stderr(llc_std: float, kept: int) -> float:
    """Standard error of λ̂ across ``kept`` independent chains, ``llc_std / sqrt(kept)`` (NaN below two)."""
    return llc_std / math.sqrt(kept) if kept > 1 else math.nan


def _judge(
    *,
    mala: float,
    kind: str,
    rhat: float,
    ess: float,
    trend: float,
    dist_trend: float,
    distance: torch.Tensor,
    temperature: float,
    temperature_stderr: float,
    diverged: torch.Tensor,
    llc_mean: float,
    llc_stderr: float,
    settings: dict[str, Any],
) -> trust.Verdict:
    """The trust policy's verdict on a run's statistics (with the accuracy checks of ``settings["accuracy"]``)."""
    ok = ~diverged
    n_kept = int(ok.sum())
    return trust.assess(
        acceptance=mala,
        acceptance_kind=kind,
        rhat=rhat,
        ess=ess,
        trend_p=diagnostics.trend_p_value(trend, n_kept),
        trend_z=trend,
        distance_trend_p=diagnostics.trend_p_value(dist_trend, n_kept),
        distance_trend_z=dist_trend,
        distance_growth=diagnostics.half_growth(distance[ok].numpy()),
        temperature=temperature,
        temperature_stderr=temperature_stderr,
        diverged=torch.nonzero(diverged).flatten().tolist(),
        chains=len(diverged),
        llc_mean=llc_mean,
        llc_stderr=llc_stderr,
        sampler=settings.get("sampler"),
        accuracy=settings.get("accuracy") or {},
        guidance=tuple(settings.get("guidance") or ()),
    )


@dataclass(frozen=True)
class LLCResult:
    """Everything an LLC run produced. Traces are ``(chain, draw)`` CPU tensors.

    The estimate of chain ``c`` is ``llcs[c] = nbeta * (Σ_t c_t losses[c, t] / Σ_t c_t - init_loss)``, with
    ``c_t`` the samples (tokens) that counted in the batch of draw ``t`` (all equal for equal batches, giving the
    plain mean); ``llc_mean`` and
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
    per_sample_losses:
        ``[chains, draws, samples(, tokens)]`` losses of the evaluation set at every draw (NaN where a token does
        not count), or ``None`` when no evaluation set was given.
    per_sample_losses_at_init:
        ``[samples(, tokens)]`` the same losses at ``w*`` (per-token L0; :mod:`lambdahat.lm.tokens`), or ``None``.
    diverged, divergence_step:
        ``[chains]``: whether each chain diverged and at which step (-1 if not).
    seed:
        The master seed (drawn from the OS when none was given), enough to repeat the run.
    llc_mean, llc_std:
        Mean and standard deviation of ``llcs`` over the chains that did not diverge.
    mala_acceptance:
        Mean acceptance of the draws of the kept chains (NaN where the sampler has none: see
        ``acceptance_kind`` and ``trust_notes``).
    rhat, ess:
        R-hat and bulk ESS of the loss traces of the kept chains.
    trend_z, distance_trend_z:
        The across-chain trend t statistics (:func:`~lambdahat.diagnostics.trend_z`) of the loss and of the
        distance ``||w − w*||`` over the draws.
    temperature, temperature_stderr:
        The configurational temperature of the draws, ``T = mean (w − w*)·∇U(w) / d`` over the draws of the kept
        chains (``d`` sampled directions), which is exactly 1 under the posterior (see
        :func:`lambdahat.samplers.base.virial`), and its standard error across chains. NaN with a bounding box
        (the identity then has boundary terms) or when ``settings`` do not give ``dim``.
    warnings:
        The trust policy's plain-language sentences, one per problem (:attr:`lambdahat.trust.Verdict.advice`).
    settings:
        The sampler, schedule, devices, compile decision, and other settings of the run.
    status:
        The verdict of :func:`lambdahat.trust.assess`: ``"ok"``, ``"untrusted"`` or ``"diverged"``.
    trust_reasons:
        One short phrase per failed check (``"acceptance 0.86 < 0.9"``), empty when ``status == "ok"``.
    trust_notes:
        The checks that could not be made and why (a NaN acceptance, a one-chain R-hat).
    acceptance_kind:
        How ``mala_acceptance`` was obtained (:data:`lambdahat.trust.ACCEPTANCE_KINDS`).
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
    status: str = "ok"
    trust_reasons: tuple[str, ...] = ()
    trust_notes: tuple[str, ...] = ()
    acceptance_kind: str = "gradient estimate"
    distance_trend_z: float = math.nan
    per_sample_losses: torch.Tensor | None = None
    temperature: float = math.nan
    temperature_stderr: float = math.nan
    per_sample_losses_at_init: torch.Tensor | None = None

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
        counts: torch.Tensor | None = None,
        per_sample_losses: torch.Tensor | None = None,
    ) -> LLCResult:
        """Build the result from the runner's ``[fields, chains, steps]`` trace (see :class:`~lambdahat.samplers.Info`)
        and judge it by the trust policy (:func:`lambdahat.trust.assess`).

        The draws of chain ``c`` are the steps ``schedule.draw_steps()``; ``llcs[c] = nβ (mean draw loss − L0)``,
        the mean weighted by ``counts`` (``[steps]``, the samples that counted in each batch) when given.
        The acceptance kind is ``settings["acceptance_kind"]`` when the runner recorded it, else that of the
        sampler ``settings["sampler"]`` (:func:`lambdahat.trust.acceptance_kind`). With ``warn``, every sentence of
        the verdict's advice is issued as a ``RuntimeWarning``.
        """
        fields = dict(zip(Info._fields, trace.to(torch.float64)))
        draw_steps = schedule.draw_steps()
        losses = fields["loss"][:, draw_steps]
        if counts is None:
            weights = torch.ones(losses.shape[1], dtype=torch.float64)
        else:
            weights = counts.to(torch.float64).cpu()[draw_steps]
        weighted = (losses * weights).cumsum(dim=1) / weights.cumsum(dim=0)
        llcs = nbeta * (weighted[:, -1] - init_loss)
        llc_trace = nbeta * (weighted - init_loss)
        accept = fields["log_accept"][:, draw_steps].exp()
        distance = fields["distance"][:, draw_steps]
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
        dist_trend = diagnostics.trend_z(distance[ok].numpy())
        temperature, temperature_stderr = _temperature(fields["virial"][:, draw_steps][ok], settings)
        sampler = settings.get("sampler")
        kind = settings.get("acceptance_kind") or trust.acceptance_kind(sampler)
        verdict = _judge(
            mala=mala,
            kind=kind,
            rhat=rhat,
            ess=ess,
            trend=trend,
            dist_trend=dist_trend,
            distance=distance,
            temperature=temperature,
            temperature_stderr=temperature_stderr,
            diverged=diverged,
            llc_mean=llc_mean,
            llc_stderr=_stderr(llc_std, len(kept)),
            settings=settings,
        )
        if warn:
            for note in verdict.advice:
                warnings.warn(f"lambdahat: {note}", RuntimeWarning, stacklevel=_caller_level())
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
            distance=distance.float(),
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
            warnings=verdict.advice,
            settings=dict(settings),
            status=verdict.status,
            trust_reasons=verdict.reasons,
            trust_notes=verdict.notes,
            acceptance_kind=kind,
            distance_trend_z=dist_trend,
            per_sample_losses=None if per_sample_losses is None else per_sample_losses.float(),
            temperature=temperature,
            temperature_stderr=temperature_stderr,
        )

    def rejudged(self, settings: dict[str, Any], warn: bool = True) -> LLCResult:
        """This result with new ``settings`` (e.g. the accuracy checks of :func:`lambdahat.accuracy.with_accuracy`
        in ``settings["accuracy"]``) and the trust policy's verdict made again from them."""
        verdict = _judge(
            mala=self.mala_acceptance,
            kind=self.acceptance_kind,
            rhat=self.rhat,
            ess=self.ess,
            trend=self.trend_z,
            dist_trend=self.distance_trend_z,
            distance=self.distance.double(),
            temperature=self.temperature,
            temperature_stderr=self.temperature_stderr,
            diverged=self.diverged,
            llc_mean=self.llc_mean,
            llc_stderr=self.llc_stderr,
            settings=settings,
        )
        if warn:
            for note in verdict.advice:
                warnings.warn(f"lambdahat: {note}", RuntimeWarning, stacklevel=_caller_level())
        return dataclasses.replace(
            self,
            settings=dict(settings),
            warnings=verdict.advice,
            status=verdict.status,
            trust_reasons=verdict.reasons,
            trust_notes=verdict.notes,
        )

    def to_arviz(self) -> Any:
        """The traces as ArviZ data (:func:`lambdahat.interop.to_arviz`): ``arviz.rhat``, ``arviz.ess`` and
        ``arviz.plot_trace`` read them. Needs ``pip install "lambdahat[interop]"``."""
        from .interop import to_arviz

        return to_arviz(self)

    def to_xarray(self) -> Any:
        """The traces, and the per-sample losses when recorded, as an ``xarray.Dataset`` with named dimensions
        (:func:`lambdahat.interop.to_xarray`); ``.to_netcdf(path)`` writes it. Needs ``lambdahat[interop]``."""
        from .interop import to_xarray

        return to_xarray(self)

    @property
    def llc_stderr(self) -> float:
        """Standard error of ``llc_mean`` across the kept chains (``llc_std / sqrt(chains kept)``)."""
        return _stderr(self.llc_std, int((~self.diverged).sum()))

    @property
    def verdict(self) -> trust.Verdict:
        """The trust policy's :class:`~lambdahat.trust.Verdict` of this result (``advice`` = ``warnings``)."""
        return trust.Verdict(
            self.status, tuple(self.trust_reasons), tuple(self.warnings), tuple(self.trust_notes)
        )

    @property
    def status_line(self) -> str:
        """The one-line status of tables: ``"ok"``, ``"diverged"`` or ``"untrusted: <reasons>"``."""
        return trust.status_line(self.verdict)

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
            "distance_trend_z": self.distance_trend_z,
            "temperature": self.temperature,
            "temperature_stderr": self.temperature_stderr,
            "grad_norm": self.grad_norm,
            "noise_norm": self.noise_norm,
            "distance": self.distance,
            "loss_trace": self.loss_trace,
            "diverged": self.diverged,
            "divergence_step": self.divergence_step,
            "seed": self.seed,
            "warnings": list(self.warnings),
            "status": self.status,
            "trust_reasons": list(self.trust_reasons),
            "trust_notes": list(self.trust_notes),
            "acceptance_kind": self.acceptance_kind,
            "per_sample_losses": self.per_sample_losses,
            **{k: v for k, v in self.settings.items() if k not in ("nbeta", "learning_rate", "localization")},
        }
