"""Tiny validation models at their true parameter ``w*``, with their data, their λ and their finite-nβ reference
(:class:`TruthCase`), and the builders of the standard cases."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ._checks import check_int, check_real
from .formulas import (
    multiplicity_monomial,
    rlct_deep_linear,
    rlct_monomial,
    rlct_radial,
    rlct_reduced_rank,
    rlct_regular,
)
from .potentials import monomial_potential, quadratic_potential, radial_potential
from .references import PosteriorQuadrature, RadialQuadrature, Reference, StationarySGLD

__all__ = [
    "DEFAULT_N",
    "SCALE_SHAPES",
    "PotentialModel",
    "TruthCase",
    "deep_linear_case",
    "default_cases",
    "half_squared_error",
    "mean_output_loss",
    "monomial_case",
    "potential_case",
    "radial_case",
    "reduced_rank_case",
    "regular_case",
    "scale_cases",
]

DEFAULT_N = 10_000
"""Default data set size ``n`` of the validation cases (it sets ``nbeta = n / log n``)."""


# ----------------------------------------------------------------------------------------------------
# Validation models
# ----------------------------------------------------------------------------------------------------


def mean_output_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Criterion of the potential models: the batch mean of the outputs (each output is ``K(w)``)."""
    return outputs.mean()


def half_squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Gaussian negative log-likelihood with unit variance, up to a constant.

    .. math::

        \\ell = \\frac{1}{B} \\sum_{b=1}^{B} \\frac{1}{2} \\| f(x_b) - y_b \\|^2

    (the squared error summed over output dimensions, halved, averaged over the batch).
    """
    return 0.5 * (outputs - targets).pow(2).sum(dim=-1).mean()


@dataclasses.dataclass(frozen=True)
class TruthCase:
    """A validation model at its true parameter, with its data and its known learning coefficient.

    Attributes
    ----------
    name : str
        Short identifier, e.g. ``"rrr_M4_H3_N4_r1"``.
    model : torch.nn.Module
        The model, with its parameters at the true parameter ``w*`` (copy it before changing them).
    dataset : torch.utils.data.TensorDataset
        ``n`` rows ``(x, y)``.
    criterion_fn : callable
        ``(outputs, targets) -> scalar`` mean loss, so that :math:`L_n(w)` is its value on the whole data set.
    true_lambda : float
        The learning coefficient at ``w*``.
    d : int
        Number of parameters.
    n : int
        Data set size (``nbeta = n / log n``).
    description : str
        What the case is and where ``true_lambda`` comes from.
    target : Reference or None
        How the finite-nβ value λ̂ targets is computed (see :meth:`reference`); ``None`` when only λ is known.
    """

    name: str
    model: nn.Module
    dataset: TensorDataset
    criterion_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    true_lambda: float
    d: int
    n: int
    description: str
    target: Reference | None = None

    def reference(self, nbeta: float, gamma: float, epsilon: float = 0.0) -> tuple[float, str]:
        """The value λ̂ should reproduce at inverse temperature ``nbeta``, localization ``gamma`` and SGLD step
        ``epsilon``, and what it is.

        Returns
        -------
        (float, str)
            ``target.value(nbeta, gamma, epsilon)`` and ``target.kind`` (``"exact SGLD"`` or ``"exact
            posterior"``), or ``(true_lambda, "λ")`` for a case without a finite-nβ reference.

        Examples
        --------
        >>> case = regular_case(2, n=1000)
        >>> value, kind = case.reference(100.0, 1.0, 1e-3)
        >>> round(value, 6), kind
        (1.04767, 'exact SGLD')
        >>> reduced_rank_case(3, 2, 3, 1, n=10).reference(100.0, 1.0)
        (3.5, 'λ')
        """
        if self.target is None:
            return self.true_lambda, "λ"
        return self.target.value(nbeta, gamma, epsilon), self.target.kind

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """A ``DataLoader`` over the data set; when shuffling, the order is drawn from a generator seeded by
        ``seed``.

        Parameters
        ----------
        batch_size : int
            Rows per batch, ``>= 1``.
        shuffle : bool, default False
            Reshuffle every pass.
        seed : int, default 0
            Seed of the shuffling generator.

        Returns
        -------
        torch.utils.data.DataLoader
        """
        batch_size = check_int("TruthCase.loader", "batch_size", batch_size, 1)
        generator = torch.Generator().manual_seed(int(seed)) if shuffle else None
        return DataLoader(self.dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


class PotentialModel(nn.Module):
    """A model whose only parameter is a vector ``w`` and whose per-sample output is ``K(w - w*)``.

    ``forward(x)`` returns ``K(w - w_star)`` repeated ``x.shape[0]`` times, so with :func:`mean_output_loss`
    the empirical loss is :math:`L_n(w) = K(w - w^*)` for any data.

    Parameters
    ----------
    potential : callable
        ``K``, mapping a tensor of shape ``[d]`` to a scalar.
    w_star : torch.Tensor
        The true parameter, shape ``[d]``; ``w`` starts there.
    """

    def __init__(self, potential: Callable[[torch.Tensor], torch.Tensor], w_star: torch.Tensor) -> None:
        super().__init__()
        self.potential = potential
        self.w = nn.Parameter(w_star.detach().clone())
        self.register_buffer("w_star", w_star.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.potential(self.w - self.w_star).expand(x.shape[0])

    def extra_repr(self) -> str:
        return f"d={self.w.numel()}, potential={self.potential!r}"


def _dummy_dataset(func: str, n: int) -> TensorDataset:
    n = check_int(func, "n", n, 1)
    return TensorDataset(torch.zeros(n, 1), torch.zeros(n))


def potential_case(
    name: str,
    K: Callable[[torch.Tensor], torch.Tensor],
    d: int,
    n: int,
    true_lambda: float,
    w_star: torch.Tensor | Sequence[float] | None = None,
    description: str = "",
    target: Reference | str | None = "auto",
) -> TruthCase:
    """A :class:`TruthCase` whose loss is a given potential: :math:`L_n(w) = K(w - w^*)`.

    The model is a :class:`PotentialModel` (one parameter ``w`` of shape ``[d]``, at ``w*``); the data set is
    ``n`` dummy rows (``x = 0`` of shape ``[n, 1]``, ``y = 0`` of shape ``[n]``), which only set ``n`` and the
    batching; the criterion is :func:`mean_output_loss`.

    Parameters
    ----------
    name : str
        Identifier of the case.
    K : callable
        Potential on tensors of shape ``[d]`` (and ``[..., d]``), ``>= 0`` with ``K(0) = 0``.
    d : int
        Number of parameters, ``>= 1``.
    n : int
        Data set size, ``>= 1``.
    true_lambda : float
        The learning coefficient of ``K`` at 0.
    w_star : tensor or sequence of float, optional
        The true parameter; default zeros.
    description : str, optional
        Free text; default a generic one.
    target : Reference, "auto" or None, default "auto"
        The case's finite-nβ reference; ``"auto"``: the posterior mean of ``nβK`` by quadrature
        (:class:`PosteriorQuadrature`) when ``d <= 2``, else none (λ).

    Returns
    -------
    TruthCase

    Examples
    --------
    >>> case = potential_case("quartic", radial_potential(2), d=2, n=100, true_lambda=rlct_radial(2, 2))
    >>> case.d, case.n, case.true_lambda
    (2, 100, 0.5)
    """
    func = "potential_case"
    d = check_int(func, "d", d, 1)
    dataset = _dummy_dataset(func, n)
    true_lambda = check_real(func, "true_lambda", true_lambda, lower=0.0, strict=False)
    if w_star is None:
        w_star = torch.zeros(d)
    w_star = torch.as_tensor(w_star, dtype=torch.get_default_dtype())
    if w_star.shape != (d,):
        raise ValueError(f"{func}: expected w_star of shape ({d},), got {tuple(w_star.shape)}.")
    with torch.no_grad():
        at_truth = K(torch.zeros(d))
    if not isinstance(at_truth, torch.Tensor) or at_truth.numel() != 1 or float(at_truth) != 0.0:
        raise ValueError(
            f"{func}: expected K(0) to be the scalar 0 (the true parameter must be a zero of K), "
            f"got {at_truth!r}."
        )
    if isinstance(target, str):
        if target != "auto":
            raise ValueError(f"{func}: expected target to be a Reference, 'auto' or None, got {target!r}.")
        target = PosteriorQuadrature(K, d) if d <= 2 else None
    model = PotentialModel(K, w_star)
    return TruthCase(
        name=name,
        model=model,
        dataset=dataset,
        criterion_fn=mean_output_loss,
        true_lambda=true_lambda,
        d=d,
        n=int(n),
        description=description or f"potential {K!r} in d = {d} at w*, true lambda = {true_lambda:g}",
        target=target,
    )


def regular_case(d: int, a: float = 1.0, n: int = DEFAULT_N) -> TruthCase:
    """Regular validation case ``K(w) = a ||w||^2`` in ``d`` dimensions: ``λ = d / 2``.

    At finite ``nbeta``, localization ``gamma`` and step ``epsilon`` the exact SGLD expectation of
    :math:`\\hat\\lambda` is :func:`regular_posterior_mean_nbeta_k`.

    Parameters
    ----------
    d : int
        Number of parameters.
    a : float, default 1.0
        Curvature.
    n : int, default DEFAULT_N
        Data set size.

    Returns
    -------
    TruthCase

    Examples
    --------
    >>> regular_case(10).true_lambda
    5.0
    """
    d = check_int("regular_case", "d", d, 1)
    lam = rlct_regular(d)
    return potential_case(
        f"regular_d{d}",
        quadratic_potential(a),
        d,
        n,
        lam,
        description=f"regular quadratic K = {a:g} ||w||^2 in d = {d}: lambda = d/2 = {lam:g}",
        target=StationarySGLD(d, float(a)),
    )


def monomial_case(k: Sequence[float], n: int = DEFAULT_N) -> TruthCase:
    """Monomial validation case ``K(w) = prod_i w_i^(2 k_i)``, ``d = len(k)``: ``λ = 1 / (2 max k_i)``.

    The Gaussian localization is a smooth positive prior, so ``h = 0`` in :func:`rlct_monomial`. With
    multiplicity ``m > 1`` (several ``k_i`` equal to the maximum, e.g. the normal crossing ``k = (1, 1)``) the
    free energy has a ``-(m - 1) log log n`` term and estimates approach ``λ`` slowly; for very singular ``K``
    compare finite-``n`` estimates with :func:`posterior_mean_nbeta_k_numeric`.

    Parameters
    ----------
    k : sequence of float
        Exponents ``k_i >= 0``, not all zero.
    n : int, default DEFAULT_N
        Data set size.

    Returns
    -------
    TruthCase

    Examples
    --------
    >>> case = monomial_case([1, 2])
    >>> case.name, case.d, case.true_lambda
    ('monomial_k1_2', 2, 0.25)
    """
    lam = rlct_monomial(k)
    mult = multiplicity_monomial(k)
    ks = [float(ki) for ki in k]
    tag = "_".join(f"{ki:g}" for ki in ks)
    terms = " * ".join(f"w{i + 1}^{2 * ki:g}" for i, ki in enumerate(ks) if ki > 0)
    note = f", multiplicity {mult} (log log n corrections at finite n)" if mult > 1 else ""
    return potential_case(
        f"monomial_k{tag}",
        monomial_potential(ks),
        len(ks),
        n,
        lam,
        description=f"monomial K = {terms}: lambda = 1/(2 max k) = {lam:g}{note}",
    )


def radial_case(d: int, k: float, n: int = DEFAULT_N) -> TruthCase:
    """Radial validation case ``K(w) = ||w||^(2k)`` in ``d`` dimensions: ``λ = d / (2k)``.

    Parameters
    ----------
    d : int
        Number of parameters.
    k : float
        Exponent, ``> 0``.
    n : int, default DEFAULT_N
        Data set size.

    Returns
    -------
    TruthCase

    Examples
    --------
    >>> radial_case(3, 2).true_lambda
    0.75
    """
    lam = rlct_radial(d, k)
    return potential_case(
        f"radial_d{d}_k{float(k):g}",
        radial_potential(k),
        d,
        n,
        lam,
        description=f"radial K = ||w||^{2 * float(k):g} in d = {d}: lambda = d/(2k) = {lam:g}",
        target=RadialQuadrature(d, float(k)),
    )


def _rank_r_weight(out_features: int, in_features: int, r: int) -> torch.Tensor:
    """``[[I_r, 0], [0, 0]]`` of shape ``[out, in]``: rank exactly ``r``, entries 0 and 1 (products exact)."""
    weight = torch.zeros(out_features, in_features)
    idx = torch.arange(r)
    weight[idx, idx] = 1.0
    return weight


def _orthogonal(size: int, generator: torch.Generator) -> torch.Tensor:
    """A random orthogonal ``size x size`` matrix (QR of a Gaussian one, signs fixed: Haar-distributed)."""
    q, r = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).to(torch.float32)


def _linear_chain(widths: Sequence[int], r: int, rotation_seed: int | None = None) -> nn.Sequential:
    """Bias-free linear layers, each weight ``[[I_r, 0], [0, 0]]``; with ``rotation_seed``, each
    ``Q_{l+1} [[I_r, 0], [0, 0]] Q_lᵀ`` with random orthogonal ``Q_l`` per width (a rotation of parameter space, an
    isometry: λ is unchanged, and no true direction lies along an axis)."""
    generator = None if rotation_seed is None else torch.Generator().manual_seed(int(rotation_seed))
    rotations = None if generator is None else [_orthogonal(int(w), generator) for w in widths]
    layers = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        layer = nn.Linear(fan_in, fan_out, bias=False)
        weight = _rank_r_weight(fan_out, fan_in, r)
        if rotations is not None:
            weight = rotations[i + 1] @ weight @ rotations[i].T
        with torch.no_grad():
            layer.weight.copy_(weight)
        layers.append(layer)
    return nn.Sequential(*layers)


def _regression_case(
    name: str, model: nn.Module, x: torch.Tensor, true_lambda: float, description: str
) -> TruthCase:
    with torch.no_grad():
        y = model(x)
    return TruthCase(
        name=name,
        model=model,
        dataset=TensorDataset(x, y),
        criterion_fn=half_squared_error,
        true_lambda=true_lambda,
        d=sum(p.numel() for p in model.parameters()),
        n=x.shape[0],
        description=description,
    )


def reduced_rank_case(M: int, H: int, N: int, r: int, n: int = DEFAULT_N, seed: int = 0) -> TruthCase:
    """Reduced-rank regression validation case ``y = B A x`` at a true parameter of rank ``r``.

    The model is ``nn.Sequential(Linear(M, H), Linear(H, N))`` without biases (``A`` = first weight, ``H x
    M``; ``B`` = second weight, ``N x H``), at :math:`A^* = [[I_r, 0], [0, 0]]`, :math:`B^* = [[I_r, 0], [0,
    0]]`: both factors have rank exactly ``r``, a point where the local learning coefficient equals the global
    value of :func:`rlct_reduced_rank` (at a generic factorization it can be larger). Inputs :math:`x \\sim
    N(0, I_M)` from a generator seeded by ``seed``; targets are noiseless, :math:`y = B^* A^* x`, so
    :math:`L_n(w^*) = 0` exactly; the criterion is :func:`half_squared_error` (a unit-variance Gaussian
    likelihood), ``d = H (M + N)``.

    Parameters
    ----------
    M, H, N : int
        Input, hidden and output widths.
    r : int
        True rank, ``0 <= r <= min(M, H, N)``.
    n : int, default DEFAULT_N
        Data set size.
    seed : int, default 0
        Seed of the inputs.

    Returns
    -------
    TruthCase

    Examples
    --------
    >>> case = reduced_rank_case(4, 3, 4, 1, n=100)
    >>> case.d, case.true_lambda
    (24, 6.0)
    """
    lam = rlct_reduced_rank(M, H, N, r)
    n = check_int("reduced_rank_case", "n", n, 1)
    generator = torch.Generator().manual_seed(int(seed))
    x = torch.randn(n, M, generator=generator)
    return _regression_case(
        f"rrr_M{M}_H{H}_N{N}_r{r}",
        _linear_chain([M, H, N], r),
        x,
        lam,
        f"reduced-rank regression {M}->{H}->{N}, true rank {r} (both factors rank {r}), x ~ N(0, I), "
        f"noiseless: lambda = {lam:g} (Aoyagi & Watanabe 2005), regular would be {H * (M + N) / 2:g}",
    )


def deep_linear_case(
    widths: Sequence[int], r: int, n: int = DEFAULT_N, seed: int = 0, rotated: bool = False
) -> TruthCase:
    """Deep linear network validation case ``f(x) = W_L ... W_1 x`` at a true parameter of rank ``r``.

    ``nn.Sequential`` of bias-free ``nn.Linear(widths[l], widths[l + 1])``, every weight at :math:`[[I_r, 0],
    [0, 0]]` (rank exactly ``r``; ``w* = 0`` when ``r = 0``), where the local learning coefficient equals the
    global value of :func:`rlct_deep_linear`. Inputs :math:`x \\sim U[-1, 1]^{N}` (``N = widths[0]``) from a
    generator seeded by ``seed``; noiseless targets; criterion :func:`half_squared_error`.

    Parameters
    ----------
    widths : sequence of int
        ``[input, hidden..., output]``.
    r : int
        True rank, ``0 <= r <= min(widths)``.
    n : int, default DEFAULT_N
        Data set size.
    seed : int, default 0
        Seed of the inputs (and of the rotations).
    rotated : bool, default False
        Every weight ``Q_{l+1} [[I_r, 0], [0, 0]] Q_lᵀ`` with random orthogonal ``Q_l`` (a rotation of parameter
        space: λ is unchanged, the true parameter and its singular directions are no longer axis-aligned); the
        name ends in ``_rot``.

    Returns
    -------
    TruthCase

    Examples
    --------
    >>> case = deep_linear_case([5, 4, 5], 0, n=100)
    >>> case.name, case.d, case.true_lambda
    ('dln_5-4-5_r0', 40, 8.0)
    """
    lam = rlct_deep_linear(widths, r)
    hs = [int(w) for w in widths]
    n = check_int("deep_linear_case", "n", n, 1)
    generator = torch.Generator().manual_seed(int(seed))
    x = torch.rand(n, hs[0], generator=generator) * 2.0 - 1.0
    arch = "-".join(str(w) for w in hs)
    d = sum(a * b for a, b in itertools.pairwise(hs))
    return _regression_case(
        f"dln_{arch}_r{r}" + ("_rot" if rotated else ""),
        _linear_chain(hs, r, rotation_seed=seed + 1 if rotated else None),
        x,
        lam,
        f"deep linear network {arch.replace('-', '->')}, true rank {r} (every layer rank {r}"
        + (", rotated" if rotated else "")
        + f"), x ~ U[-1, 1], noiseless: lambda = {lam:g} (Aoyagi 2024), regular would be {d / 2:g}",
    )


#: Widths and ranks of the scale cases: deep linear networks of about 10³, 10⁴ and 10⁵ parameters, every layer of
#: rank r (a fifth of the width), rotated.
SCALE_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "1e3": ((16, 16, 16, 16, 16), 3),
    "1e4": ((50, 50, 50, 50, 50), 10),
    "1e5": ((158, 158, 158, 158, 158), 30),
}


def scale_cases(
    sizes: Sequence[str] = ("1e3", "1e4", "1e5"), n: int = 100_000, seed: int = 0
) -> list[TruthCase]:
    """Rotated deep linear networks of about 10³, 10⁴ and 10⁵ parameters (:data:`SCALE_SHAPES`), ``n`` rows.

    Examples
    --------
    >>> [(c.name, c.d, c.true_lambda) for c in scale_cases(["1e3"], n=10)]
    [('dln_16-16-16-16-16_r3_rot', 1024, 96.5)]
    """
    unknown = sorted(set(sizes) - set(SCALE_SHAPES))
    if unknown:
        raise ValueError(f"scale_cases: unknown sizes {unknown}; choose from {list(SCALE_SHAPES)}.")
    return [
        deep_linear_case(SCALE_SHAPES[s][0], SCALE_SHAPES[s][1], n=n, seed=seed, rotated=True) for s in sizes
    ]


def default_cases(quick: bool = False) -> list[TruthCase]:
    """A small, varied set of validation cases for a table of estimated against true λ.

    ======================  ====  ==========  =====================================================
    name                    d     λ           what
    ======================  ====  ==========  =====================================================
    regular_d10             10    5           regular quadratic
    monomial_k1_2           2     1/4         ``K = w1^2 w2^4``
    normal_crossing_k1_1    2     1/2         ``K = w1^2 w2^2``, multiplicity 2 (``log log n``)
    radial_d3_k2            3     3/4         ``K = ||w||^4``
    rrr_M4_H3_N4_r1         24    6           reduced-rank regression 4->3->4, rank 1
    dln_4-3-3-4_r1          33    11/2        deep linear network, rank 1
    dln_5-4-5_r0            40    8           deep linear network at ``w* = 0``
    ======================  ====  ==========  =====================================================

    Parameters
    ----------
    quick : bool, default False
        Only ``regular_d10``, ``monomial_k1_2`` and ``rrr_M4_H3_N4_r1``.

    Returns
    -------
    list of TruthCase

    Examples
    --------
    >>> [case.name for case in default_cases(quick=True)]
    ['regular_d10', 'monomial_k1_2', 'rrr_M4_H3_N4_r1']
    """
    if quick:
        return [regular_case(10), monomial_case([1, 2]), reduced_rank_case(4, 3, 4, 1)]
    crossing = dataclasses.replace(monomial_case([1, 1]), name="normal_crossing_k1_1")
    return [
        regular_case(10),
        monomial_case([1, 2]),
        crossing,
        radial_case(3, 2),
        reduced_rank_case(4, 3, 4, 1),
        deep_linear_case([4, 3, 3, 4], 1),
        deep_linear_case([5, 4, 5], 0),
    ]
