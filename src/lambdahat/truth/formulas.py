"""Closed-form learning coefficients λ of regular, monomial, radial, reduced-rank and deep linear models, and the
exact finite-nβ SGLD value of the regular model.

All functions work on plain Python numbers, return ``float`` (or ``int``) and raise ``ValueError`` on bad input.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from ._checks import check_int, check_real, monomial_ratios

__all__ = [
    "multiplicity_monomial",
    "regular_posterior_mean_nbeta_k",
    "rlct_deep_linear",
    "rlct_monomial",
    "rlct_radial",
    "rlct_reduced_rank",
    "rlct_regular",
]


# ----------------------------------------------------------------------------------------------------
# Regular models
# ----------------------------------------------------------------------------------------------------


def rlct_regular(d: int) -> float:
    """Learning coefficient of a regular model with ``d`` parameters.

    .. math::

        \\lambda = d / 2 .

    Parameters
    ----------
    d : int
        Number of parameters, ``>= 1``.

    Returns
    -------
    float
        ``d / 2``.

    Examples
    --------
    >>> rlct_regular(10)
    5.0
    """
    d = check_int("rlct_regular", "d", d, 1)
    return d / 2


def regular_posterior_mean_nbeta_k(
    d: int, a: float, nbeta: float, gamma: float, epsilon: float = 0.0
) -> float:
    """Exact stationary mean of ``nbeta * K`` under SGLD for the quadratic ``K(w) = a ||w - w*||^2``.

    With localization :math:`\\gamma` the potential is :math:`U(w) = n\\beta a\\|w\\|^2 +
    \\tfrac{\\gamma}{2}\\|w\\|^2 = \\tfrac{\\kappa}{2}\\|w\\|^2` (taking :math:`w^* = 0`), :math:`\\kappa = 2
    n\\beta a + \\gamma`. The SGLD step :math:`w' = w - \\tfrac{\\varepsilon}{2}\\nabla U(w) +
    \\sqrt{\\varepsilon}\\,\\xi` is, per coordinate, the AR(1) process :math:`w' = (1 -
    \\varepsilon\\kappa/2)\\, w + \\sqrt{\\varepsilon}\\,\\xi`, stable for :math:`0 \\le \\varepsilon\\kappa <
    4`, with stationary variance

    .. math::

        v = \\frac{\\varepsilon}{1 - (1 - \\varepsilon\\kappa/2)^2} = \\frac{1}{\\kappa (1 -
        \\varepsilon\\kappa/4)},

    so that

    .. math::

        \\mathbb{E}[n\\beta K] = n\\beta a\\, d\\, v
        = \\frac{d}{2} \\cdot \\frac{2 n\\beta a / \\kappa}{1 - \\varepsilon\\kappa/4}.

    ``epsilon = 0`` gives the exact posterior mean; it tends to ``d / 2`` as ``nbeta * a / gamma`` grows.

    Parameters
    ----------
    d : int
        Number of parameters, ``>= 1``.
    a : float
        Curvature ``a > 0`` of ``K``.
    nbeta : float
        Inverse temperature times sample size, ``> 0``.
    gamma : float
        Localization strength, ``>= 0``.
    epsilon : float, default 0.0
        SGLD step size (learning rate), ``>= 0``; needs ``epsilon * kappa < 4``.

    Returns
    -------
    float
        :math:`\\mathbb{E}[n\\beta K(w)]` at stationarity.

    Examples
    --------
    >>> regular_posterior_mean_nbeta_k(2, 1.0, nbeta=100.0, gamma=0.0)
    1.0
    >>> round(regular_posterior_mean_nbeta_k(2, 1.0, nbeta=100.0, gamma=1.0, epsilon=1e-3), 6)
    1.04767
    """
    func = "regular_posterior_mean_nbeta_k"
    d = check_int(func, "d", d, 1)
    a = check_real(func, "a", a, lower=0.0, strict=True)
    nbeta = check_real(func, "nbeta", nbeta, lower=0.0, strict=True)
    gamma = check_real(func, "gamma", gamma, lower=0.0, strict=False)
    epsilon = check_real(func, "epsilon", epsilon, lower=0.0, strict=False)
    kappa = 2.0 * nbeta * a + gamma
    if epsilon * kappa >= 4.0:
        raise ValueError(
            f"{func}: SGLD on this quadratic diverges for epsilon * kappa >= 4 "
            f"(kappa = 2 * nbeta * a + gamma = {kappa:g}, epsilon = {epsilon:g}); "
            f"use epsilon < {4.0 / kappa:g}."
        )
    return (d / 2.0) * (2.0 * nbeta * a / kappa) / (1.0 - epsilon * kappa / 4.0)


# ----------------------------------------------------------------------------------------------------
# Monomials and radial potentials
# ----------------------------------------------------------------------------------------------------


def rlct_monomial(k: Sequence[float], h: Sequence[float] | None = None) -> float:
    """Learning coefficient of the monomial potential ``K(w) = prod_i w_i^(2 k_i)`` at ``w = 0``.

    With a prior density :math:`\\propto \\prod_i |w_i|^{h_i}` near the origin (``h = 0``: any smooth positive
    prior, such as the Gaussian localization),

    .. math::

        \\lambda = \\min_{i:\\, k_i > 0} \\frac{h_i + 1}{2 k_i},

    which for ``h = 0`` is :math:`1 / (2 \\max_i k_i)`. Coordinates with ``k_i = 0`` do not enter ``K`` and do
    not constrain :math:`\\lambda`.

    Parameters
    ----------
    k : sequence of float
        Exponents ``k_i >= 0``, not all zero.
    h : sequence of float, optional
        Prior exponents ``h_i > -1`` (so the prior is integrable), one per ``k_i``; default all zero.

    Returns
    -------
    float
        :math:`\\lambda`.

    Examples
    --------
    >>> rlct_monomial([1, 3])
    0.16666666666666666
    >>> rlct_monomial([1, 2], h=[0, 2])
    0.5
    >>> rlct_monomial([0, 2])
    0.25
    """
    return float(min(monomial_ratios("rlct_monomial", k, h)))


def multiplicity_monomial(k: Sequence[float], h: Sequence[float] | None = None) -> int:
    """Multiplicity ``m`` of the monomial potential: the number of coordinates attaining the minimum in λ.

    .. math::

        m = \\#\\Big\\{ i : k_i > 0,\\ \\frac{h_i + 1}{2 k_i} = \\lambda \\Big\\}.

    The free energy is :math:`n L_n(w_0) + \\lambda \\log n - (m - 1) \\log\\log n + O_p(1)`: a multiplicity
    ``m > 1`` (e.g. the normal crossing ``k = (1, 1)``) brings ``log log n`` corrections, so finite-``n``
    estimates converge to ``λ`` more slowly.

    Parameters
    ----------
    k, h :
        As in :func:`rlct_monomial`.

    Returns
    -------
    int
        The multiplicity, ``>= 1``.

    Examples
    --------
    >>> multiplicity_monomial([1, 1])
    2
    >>> multiplicity_monomial([1, 2])
    1
    """
    ratios = monomial_ratios("multiplicity_monomial", k, h)
    lam = min(ratios)
    return sum(1 for q in ratios if q == lam)


def rlct_radial(d: int, k: float) -> float:
    """Learning coefficient of the radial potential ``K(w) = ||w||^(2k)`` in ``d`` dimensions.

    In polar coordinates the volume :math:`V(t) = \\int_{K < t} dw \\propto t^{d / (2k)}`, so

    .. math::

        \\lambda = \\frac{d}{2k}.

    Parameters
    ----------
    d : int
        Dimension, ``>= 1``.
    k : float
        Exponent, ``> 0`` (``k = 1`` is the regular quadratic).

    Returns
    -------
    float
        ``d / (2 k)``.

    Examples
    --------
    >>> rlct_radial(3, 2)
    0.75
    """
    d = check_int("rlct_radial", "d", d, 1)
    k = check_real("rlct_radial", "k", k, lower=0.0, strict=True)
    return d / (2.0 * k)


# ----------------------------------------------------------------------------------------------------
# Reduced-rank regression and deep linear networks
# ----------------------------------------------------------------------------------------------------


def rlct_reduced_rank(M: int, H: int, N: int, r: int) -> float:
    """Learning coefficient of reduced-rank regression ``y = B A x`` (Aoyagi & Watanabe 2005).

    ``x`` has ``M`` entries, ``A`` is ``H x M``, ``B`` is ``N x H`` and the true product ``B0 A0`` has rank
    ``r``.

    * If :math:`N + r \\le M + H`, :math:`M + r \\le N + H` and :math:`H + r \\le M + N`:

      .. math::

          \\lambda = \\frac{2 (H + r)(M + N) - (M - N)^2 - (H + r)^2}{8}
          \\; \\Big( + \\frac{1}{8} \\text{ if } M + H + N + r \\text{ is odd} \\Big);

    * if :math:`M + H < N + r`: :math:`\\lambda = (HM - Hr + Nr) / 2`;
    * if :math:`N + H < M + r`: :math:`\\lambda = (HN - Hr + Mr) / 2`;
    * if :math:`M + N < H + r`: :math:`\\lambda = MN / 2`.

    Since :math:`r \\le \\min(M, H, N)` at most one of the last three conditions can hold. The value is
    symmetric in ``M`` and ``N``. It is the *global* learning coefficient; the local one at a true parameter
    where ``A`` and ``B`` both have rank exactly ``r`` equals it (see :func:`reduced_rank_case`).

    Parameters
    ----------
    M : int
        Input dimension, ``>= 1``.
    H : int
        Hidden (inner) dimension, ``>= 1``.
    N : int
        Output dimension, ``>= 1``.
    r : int
        Rank of the true product, ``0 <= r <= min(M, H, N)``.

    Returns
    -------
    float
        :math:`\\lambda`.

    Examples
    --------
    >>> rlct_reduced_rank(5, 3, 5, 0)
    6.5
    >>> rlct_reduced_rank(4, 3, 4, 1)
    6.0
    """
    func = "rlct_reduced_rank"
    M = check_int(func, "M", M, 1)
    H = check_int(func, "H", H, 1)
    N = check_int(func, "N", N, 1)
    r = check_int(func, "r", r, 0)
    if r > min(M, H, N):
        raise ValueError(
            f"{func}: the true rank r cannot exceed min(M, H, N) = {min(M, H, N)}; got r = {r} "
            f"with (M, H, N) = ({M}, {H}, {N})."
        )
    if M + H < N + r:
        return (H * M - H * r + N * r) / 2
    if N + H < M + r:
        return (H * N - H * r + M * r) / 2
    if M + N < H + r:
        return M * N / 2
    num = 2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2
    if (M + H + N + r) % 2 == 1:
        num += 1
    return num / 8


def rlct_deep_linear(widths: Sequence[int], r: int) -> float:
    """Learning coefficient of a deep linear network ``f(x) = W_L ... W_1 x`` (Aoyagi 2024).

    ``widths = [H_0, H_1, ..., H_L]`` with :math:`H_0 = N` the input and :math:`H_L = M` the output width;
    :math:`W_l` is :math:`H_l \\times H_{l-1}` and the true product has rank ``r``. Let :math:`M_i = H_i - r`.
    The set :math:`S` is the :math:`\\ell + 1` smallest :math:`M_i` for the first :math:`\\ell = 1, \\dots, L`
    with

    (a) :math:`\\max_{j \\in S} M_j < \\min_{k \\notin S} M_k`,
    (b) :math:`\\sum_{j \\in S} M_j \\ge \\ell \\max_{j \\in S} M_j`,
    (c) :math:`\\sum_{j \\in S} M_j < \\ell \\min_{k \\notin S} M_k`

    ((a) and (c) hold vacuously when :math:`S` is everything). With :math:`\\Sigma = \\sum_{j \\in S} M_j`,
    :math:`\\bar M = \\lceil \\Sigma / \\ell \\rceil` and :math:`a = \\Sigma - (\\bar M - 1)\\ell`,

    .. math::

        \\lambda = \\frac{-r^2 + r(N + M)}{2} + \\frac{a(\\ell - a)}{4\\ell}
        - \\frac{\\ell(\\ell - 1)}{4} \\Big(\\frac{\\Sigma}{\\ell}\\Big)^2
        + \\frac{1}{2} \\sum_{i < j;\\ i, j \\in S} M_i M_j .

    Such an :math:`\\ell` always exists and is unique ((b) at :math:`\\ell + 1` is the negation of (c) at
    :math:`\\ell`, (b) holds at :math:`\\ell = 1`, and once (c) holds it holds for every larger
    :math:`\\ell`). For ``L = 1`` this gives the regular value :math:`NM/2`; for ``L = 2`` it equals
    :func:`rlct_reduced_rank`. The value is the global one; the local value at a true parameter where every
    layer has rank exactly ``r`` equals it.

    Parameters
    ----------
    widths : sequence of int
        ``[input, hidden..., output]``, at least two widths, each ``>= 1``.
    r : int
        Rank of the true end-to-end map, ``0 <= r <= min(widths)``.

    Returns
    -------
    float
        :math:`\\lambda`.

    Examples
    --------
    >>> rlct_deep_linear([5, 3, 5], 0)
    6.5
    >>> rlct_deep_linear([10, 20, 20, 10], 10)
    50.0
    """
    func = "rlct_deep_linear"
    if isinstance(widths, str | bytes) or not hasattr(widths, "__len__"):
        raise ValueError(
            f"{func}: expected widths to be a sequence [input, hidden..., output], got {widths!r}."
        )
    hs = [check_int(func, f"widths[{i}]", w, 1) for i, w in enumerate(widths)]
    if len(hs) < 2:
        raise ValueError(
            f"{func}: expected at least two widths [input, ..., output] (one layer), got {len(hs)}: {hs}."
        )
    r = check_int(func, "r", r, 0)
    if r > min(hs):
        raise ValueError(
            f"{func}: the true rank r cannot exceed the smallest width {min(hs)}; "
            f"got r = {r} with widths {hs}."
        )
    n_layers = len(hs) - 1
    m = sorted(h - r for h in hs)
    for ell in range(1, n_layers + 1):
        inside, outside = m[: ell + 1], m[ell + 1 :]
        total, largest = sum(inside), inside[-1]
        cond_a = not outside or largest < outside[0]
        cond_b = total >= ell * largest
        cond_c = not outside or total < ell * outside[0]
        if cond_a and cond_b and cond_c:
            break
    else:  # pragma: no cover - unreachable, see the docstring
        raise RuntimeError(f"{func}: found no set S for widths {hs} and r = {r}; please report this.")
    m_bar = -(-total // ell)
    a = total - (m_bar - 1) * ell
    pair_sum = (total * total - sum(x * x for x in inside)) // 2
    lam = (
        Fraction(-r * r + r * (hs[0] + hs[-1]), 2)
        + Fraction(a * (ell - a), 4 * ell)
        - Fraction(ell * (ell - 1), 4) * Fraction(total, ell) ** 2
        + Fraction(pair_sum, 2)
    )
    return float(lam)
