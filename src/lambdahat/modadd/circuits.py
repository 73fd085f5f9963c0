"""Tell a "pizza" from a "clock" circuit for modular addition (Zhong et al. 2023, arXiv 2306.17844).

Both algorithms embed token ``t`` on circles ``(cos(2π k t/p), sin(2π k t/p))`` for a few frequencies ``k``.

* **Clock**: the network multiplies the two operand circles, ``cos(w(a+b)) = cos(wa)cos(wb) - sin(wa)sin(wb)``
  (``w = 2πk/p``), so its hidden state is a function of ``a + b`` alone and the correct logit does not depend on
  the distance ``a - b``.
* **Pizza**: the network adds the two embeddings, ``E_a + E_b = 2 cos(w(a-b)/2) · (cos(w(a+b)/2), sin(...))``,
  and a nonlinearity doubles the angle; the result ``cos²(w(a-b)/2) · cos(w(a+b))`` carries the factor
  ``cos²(w(a-b)/2) = (1 + cos(w(a-b)))/2``, so (i) as a function of ``b`` the hidden state has energy at ``2k`` as
  well as ``k``, (ii) the logits depend on the embeddings only through ``E_a + E_b`` (symmetric gradients) and
  (iii) the correct logit depends on ``a - b``.

Three metrics measure (i)-(iii); :func:`classify_circuit` combines them into a verdict.

The functions accept any object following the :class:`CircuitModel` protocol (a trained :class:`ModAddModel`,
or a hand-built circuit with the same methods).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch

from lambdahat.modadd._seeding import generator
from lambdahat.modadd.fourier import fold_mode, fourier_basis, mode_magnitudes
from lambdahat.modadd.train import Run

__all__ = [
    "CLOCK_DISTANCE_IRRELEVANCE",
    "CLOCK_GRADIENT_SYMMETRICITY",
    "CLOCK_RATIO_2K",
    "PIZZA_DISTANCE_IRRELEVANCE",
    "PIZZA_GRADIENT_SYMMETRICITY",
    "PIZZA_RATIO_2K",
    "CircuitModel",
    "CircuitReport",
    "ModeDoubling",
    "classify_circuit",
    "correct_logit_grid",
    "distance_irrelevance",
    "dominant_mode",
    "gradient_symmetricity",
    "mode_doubling",
]

Verdict = Literal["pizza", "clock", "unclear"]

#: ``ratio_2k >= PIZZA_RATIO_2K`` votes pizza.
PIZZA_RATIO_2K = 0.25
#: ``ratio_2k <= CLOCK_RATIO_2K`` votes clock.
CLOCK_RATIO_2K = 0.10
#: ``gradient_symmetricity >= PIZZA_GRADIENT_SYMMETRICITY`` votes pizza.
PIZZA_GRADIENT_SYMMETRICITY = 0.90
#: ``gradient_symmetricity <= CLOCK_GRADIENT_SYMMETRICITY`` votes clock.
CLOCK_GRADIENT_SYMMETRICITY = 0.70
#: ``distance_irrelevance <= PIZZA_DISTANCE_IRRELEVANCE`` votes pizza.
PIZZA_DISTANCE_IRRELEVANCE = 0.50
#: ``distance_irrelevance >= CLOCK_DISTANCE_IRRELEVANCE`` votes clock.
CLOCK_DISTANCE_IRRELEVANCE = 0.80


@runtime_checkable
class CircuitModel(Protocol):
    """What the circuit metrics need from a model of modular addition mod ``p``.

    ``embed_matrix`` is the ``[p, d]`` embedding; ``pre_unembed(x)`` maps pairs ``[n, 2]`` to the hidden
    activations ``[n, hidden]``; ``logits_from_embeddings(e_a, e_b)`` maps operand embeddings ``[n, d]`` (given
    as inputs, so that gradients with respect to them exist) to logits ``[n, p]``; calling the model on pairs
    gives logits ``[n, p]``.
    """

    p: int

    @property
    def embed_matrix(self) -> torch.Tensor: ...

    def pre_unembed(self, x: torch.Tensor) -> torch.Tensor: ...

    def logits_from_embeddings(self, e_a: torch.Tensor, e_b: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def _check_model(model: object, where: str) -> CircuitModel:
    if not isinstance(model, CircuitModel):
        raise TypeError(
            f"{where}: expected a ModAddModel (or an object with p, embed_matrix, pre_unembed, "
            f"logits_from_embeddings and __call__), got {type(model).__name__}; for a run pass run.model()."
        )
    return model


def dominant_mode(model: CircuitModel) -> int:
    """The non-constant Fourier mode ``k ∈ 1 .. p//2`` of largest magnitude in the embedding.

    Uses :func:`~lambdahat.modadd.fourier.mode_magnitudes` of ``model.embed_matrix``; ties go to the smaller
    ``k``.
    """
    _check_model(model, "dominant_mode")
    mags = mode_magnitudes(model.embed_matrix, model.p)
    return int(torch.argmax(mags[1:]).item()) + 1


@dataclass(frozen=True)
class ModeDoubling:
    """Result of the ``2k`` test (:func:`mode_doubling`).

    Attributes
    ----------
    mode : int
        The embedding mode ``k`` tested.
    double_mode : int
        ``2k mod p`` folded to ``0 .. p//2``.
    magnitude_k, magnitude_2k : float
        Root-mean-square over the tested ``a`` of the hidden activations' magnitude at ``k`` and at ``2k``.
    ratio : float
        ``magnitude_2k / magnitude_k``; NaN when the test is undefined (``2k`` folds onto 0 or onto ``k``, or
        the hidden state has no energy at ``k``).
    """

    mode: int
    double_mode: int
    magnitude_k: float
    magnitude_2k: float
    ratio: float


@torch.no_grad()
def mode_doubling(
    model: CircuitModel,
    k: int | None = None,
    a_values: list[int] | None = None,
    on: Literal["hidden", "logits"] = "hidden",
) -> ModeDoubling:
    """The ``2k`` test: does the embedding's mode ``k`` reappear at ``2k`` in the hidden activations?

    For each fixed ``a`` in ``a_values`` the hidden activations ``H_a[b, :] = pre_unembed(a, b)``,
    ``b = 0 .. p-1`` (or, with ``on="logits"``, the logits ``H_a[b, :] = model(a, b)``), form a matrix with
    rows indexed by ``b``; its mode-``m`` energy is
    ``e_a(m) = Σ_j (C H_a)_{mj}² + (S H_a)_{mj}²`` (so ``sqrt(e_a(m))`` is
    :func:`~lambdahat.modadd.fourier.mode_magnitudes`). With ``k2 = min(2k mod p, p - 2k mod p)``::

        magnitude_k  = sqrt(mean_a e_a(k)),   magnitude_2k = sqrt(mean_a e_a(k2)),
        ratio = magnitude_2k / magnitude_k.

    A clock's hidden state is a function of ``a + b`` at frequency ``k`` (ratio ≈ 0); a pizza's carries the
    factor ``cos²(w(a-b)/2)``, which puts energy at ``2k`` (ratio of order 0.3-0.5). In a trained MLP the
    hidden neurons of a clock also have ``2k`` harmonics (each neuron is a nonlinearity of a sum; the products
    only appear after the unembedding), so the hidden-layer ratio of a clock is not 0 (about 0.2 for the
    default ``ExperimentParams``); at the logits it is about 0.1, while a pizza's logits keep ratio 0.5.

    Parameters
    ----------
    model : CircuitModel
    k : int, optional
        The mode to test; default :func:`dominant_mode`.
    a_values : list of int, optional
        The fixed first operands to average over; default all ``0 .. p-1``.
    on : {"hidden", "logits"}, default "hidden"
        Analyse the hidden activations (``pre_unembed``) or the logits.
    """
    _check_model(model, "mode_doubling")
    p = model.p
    k = dominant_mode(model) if k is None else fold_mode(int(k), p)
    if k == 0:
        raise ValueError("mode_doubling: k must be a non-constant mode (k mod p != 0); pass e.g. k=1.")
    k2 = fold_mode(2 * k, p)
    a = torch.arange(p) if a_values is None else torch.as_tensor(a_values, dtype=torch.int64) % p
    if a.numel() == 0:
        raise ValueError("mode_doubling: a_values is empty; pass at least one operand a, or None for all.")
    b = torch.arange(p)
    x = torch.stack([a.repeat_interleave(p), b.repeat(a.numel())], dim=1)
    if on not in ("hidden", "logits"):
        raise ValueError(f"mode_doubling: on must be 'hidden' or 'logits', got {on!r}.")
    out = model.pre_unembed(x) if on == "hidden" else model(x)
    H = out.detach().to(torch.float64).reshape(a.numel(), p, -1)
    C, S = fourier_basis(p)

    def energy(m: int) -> float:
        c = torch.einsum("b,abh->ah", C[m], H)
        s = torch.einsum("b,abh->ah", S[m], H)
        return float((c.square() + s.square()).sum(dim=1).mean())

    mag_k, mag_2k = math.sqrt(energy(k)), math.sqrt(energy(k2))
    undefined = k2 in (0, k) or mag_k <= 1e-12 * (1.0 + mag_2k)
    ratio = math.nan if undefined else mag_2k / mag_k
    return ModeDoubling(mode=k, double_mode=k2, magnitude_k=mag_k, magnitude_2k=mag_2k, ratio=ratio)


def gradient_symmetricity(model: CircuitModel, n_triples: int = 1000, seed: int = 0) -> float:
    """Mean cosine similarity of the gradients of a logit with respect to the two operand embeddings.

    ``s_g = mean_{(a,b,c)} cos( ∂O_c/∂E_a , ∂O_c/∂E_b )`` over ``n_triples`` triples drawn uniformly from
    ``Z_p³`` by a generator seeded with ``seed``, where ``O_c`` is the logit of class ``c`` and ``E_a, E_b`` are
    the embeddings of the two operands treated as separate inputs (Zhong et al. 2023). A network whose logits
    depend on ``E_a + E_b`` only (a pizza) gives exactly 1; a clock, whose logits multiply the operands, gives
    ``cos(w(b-a))`` per triple, about 0 on average.

    Returns NaN if a gradient vanishes identically.
    """
    _check_model(model, "gradient_symmetricity")
    if isinstance(n_triples, bool) or not isinstance(n_triples, int) or n_triples < 1:
        raise ValueError(f"gradient_symmetricity: n_triples must be a positive integer, got {n_triples!r}.")
    p = model.p
    abc = torch.randint(0, p, (n_triples, 3), generator=generator(seed, "gradient-symmetricity"))
    E = model.embed_matrix.detach()
    with torch.enable_grad():
        e_a = E[abc[:, 0]].clone().requires_grad_(True)
        e_b = E[abc[:, 1]].clone().requires_grad_(True)
        logits = model.logits_from_embeddings(e_a, e_b)
        target = logits.gather(1, abc[:, 2:3]).sum()
        g_a, g_b = torch.autograd.grad(target, (e_a, e_b))
    norms = g_a.norm(dim=1) * g_b.norm(dim=1)
    if bool((norms == 0).any()):
        return math.nan
    return float(((g_a * g_b).sum(dim=1) / norms).mean())


@torch.no_grad()
def correct_logit_grid(model: CircuitModel) -> torch.Tensor:
    """The correct logit ``O_{(a+b) mod p}(a, b)`` arranged as ``L[d, a]`` with ``d = (a - b) mod p``.

    Row ``d`` holds the ``p`` pairs ``(a, (a - d) mod p)`` at distance ``d``; along a row the sum
    ``s = a + b = 2a - d`` varies (over all residues when ``p`` is odd). Shape ``[p, p]``, float64.
    """
    _check_model(model, "correct_logit_grid")
    p = model.p
    a = torch.arange(p)
    d = torch.arange(p)
    aa = a[None, :].expand(p, p)
    bb = (aa - d[:, None]) % p
    x = torch.stack([aa.reshape(-1), bb.reshape(-1)], dim=1)
    logits = model(x).detach().to(torch.float64)
    correct = logits.gather(1, ((x[:, 0] + x[:, 1]) % p)[:, None]).squeeze(1)
    return correct.reshape(p, p)


def distance_irrelevance(model: CircuitModel) -> float:
    """How little the correct logit depends on the distance ``d = a - b`` (Zhong et al. 2023).

    With ``L[s, d]`` the correct logit of the pair with ``s = a + b`` and ``d = a - b`` (mod ``p``)::

        DI = mean_d( std_s L[s, d] ) / std_{s,d}( L[s, d] )

    (population standard deviations; for each ``d`` the std runs over the ``p`` pairs at that distance, see
    :func:`correct_logit_grid`). A pizza's correct logit is a function of ``d`` (DI ≈ 0); a clock's does not
    depend on ``d`` at all, so its variation is the same within every ``d`` (DI ≈ 1).

    Returns NaN when the correct logit is constant (``std = 0``: the ratio is undefined).
    """
    L = correct_logit_grid(model)
    total = float(L.std(correction=0))
    if total <= 1e-12 * (1.0 + float(L.abs().mean())):
        return math.nan
    return float(L.std(dim=1, correction=0).mean()) / total


@dataclass(frozen=True)
class CircuitReport:
    """Verdict of :func:`classify_circuit` with the metrics behind it.

    Attributes
    ----------
    verdict : {"pizza", "clock", "unclear"}
    doubling : ModeDoubling
        The ``2k`` test on the hidden activations (its ``mode`` is the dominant embedding mode); votes.
    doubling_logits : ModeDoubling
        The same test on the logits; reported as evidence, does not vote.
    gradient_symmetricity : float
    distance_irrelevance : float
    votes : tuple of (metric, vote) pairs
        Each metric's vote: "pizza", "clock" or "abstain".
    evidence : str
        The verdict explained with the numbers and thresholds.
    """

    verdict: Verdict
    doubling: ModeDoubling
    doubling_logits: ModeDoubling
    gradient_symmetricity: float
    distance_irrelevance: float
    votes: tuple[tuple[str, str], ...]
    evidence: str

    @property
    def ratio_2k(self) -> float:
        """``magnitude_2k / magnitude_k`` of the ``2k`` test."""
        return self.doubling.ratio

    def __str__(self) -> str:
        return self.evidence


def _vote(value: float, pizza_if, clock_if) -> str:
    if math.isnan(value):
        return "abstain"
    if pizza_if(value):
        return "pizza"
    if clock_if(value):
        return "clock"
    return "abstain"


def _verdict(votes: list[str]) -> Verdict:
    """At least two votes for one side and none for the other; otherwise "unclear"."""
    n_pizza, n_clock = votes.count("pizza"), votes.count("clock")
    if n_pizza >= 2 and n_clock == 0:
        return "pizza"
    if n_clock >= 2 and n_pizza == 0:
        return "clock"
    return "unclear"


def classify_circuit(
    model_or_run: CircuitModel | Run, checkpoint: int = -1, n_triples: int = 1000, seed: int = 0
) -> CircuitReport:
    """Classify a trained modular-addition network as a pizza or a clock circuit.

    Each of three metrics votes:

    ==========================  ===========================  ===========================
    metric                      votes "pizza" if             votes "clock" if
    ==========================  ===========================  ===========================
    ``ratio_2k`` (2k test)      ``>= 0.25``                  ``<= 0.10``
    gradient symmetricity       ``>= 0.90``                  ``<= 0.70``
    distance irrelevance        ``<= 0.50``                  ``>= 0.80``
    ==========================  ===========================  ===========================

    (the module constants ``PIZZA_*`` / ``CLOCK_*``); a value in between, or NaN, abstains. The verdict is
    "pizza" when at least two metrics vote pizza and none votes clock, "clock" when at least two vote clock and
    none votes pizza, and "unclear" otherwise. Note that a model whose first layer is tied
    (``linear_1_tied=True``) sees only ``E_a + E_b`` and has gradient symmetricity 1 whatever it computes: then
    the other two metrics decide, and a disagreement between them gives "unclear".

    Parameters
    ----------
    model_or_run : CircuitModel or Run
        A model, or a run (its checkpoint ``checkpoint`` is analysed).
    checkpoint : int, default -1
        Which checkpoint of a run (ignored for a model).
    n_triples : int, default 1000
        Triples for :func:`gradient_symmetricity`.
    seed : int, default 0
        Seed of the triples.

    Returns
    -------
    CircuitReport
    """
    model = model_or_run.model(checkpoint) if isinstance(model_or_run, Run) else model_or_run
    _check_model(model, "classify_circuit")
    doubling = mode_doubling(model)
    doubling_logits = mode_doubling(model, k=doubling.mode, on="logits")
    gs = gradient_symmetricity(model, n_triples=n_triples, seed=seed)
    di = distance_irrelevance(model)
    votes = (
        ("ratio_2k", _vote(doubling.ratio, lambda v: v >= PIZZA_RATIO_2K, lambda v: v <= CLOCK_RATIO_2K)),
        (
            "gradient_symmetricity",
            _vote(gs, lambda v: v >= PIZZA_GRADIENT_SYMMETRICITY, lambda v: v <= CLOCK_GRADIENT_SYMMETRICITY),
        ),
        (
            "distance_irrelevance",
            _vote(di, lambda v: v <= PIZZA_DISTANCE_IRRELEVANCE, lambda v: v >= CLOCK_DISTANCE_IRRELEVANCE),
        ),
    )
    verdict = _verdict([v for _, v in votes])
    n_pizza = sum(v == "pizza" for _, v in votes)
    n_clock = sum(v == "clock" for _, v in votes)
    k, k2 = doubling.mode, doubling.double_mode
    lines = [
        f"verdict: {verdict} ({n_pizza} pizza vote(s), {n_clock} clock vote(s); needs 2 and no opposing vote)",
        f"- 2k test: dominant embedding mode k={k}; hidden-state magnitude at k: {doubling.magnitude_k:.3g}, "
        f"at 2k mod p -> {k2}: {doubling.magnitude_2k:.3g}; ratio {doubling.ratio:.3f} "
        f"(pizza >= {PIZZA_RATIO_2K}, clock <= {CLOCK_RATIO_2K}) -> {votes[0][1]}",
        f"  (same test on the logits, not voting: ratio {doubling_logits.ratio:.3f}; "
        "about 0.5 for a pizza, 0 for a clock)",
        f"- gradient symmetricity {gs:.3f} over {n_triples} triples (pizza >= {PIZZA_GRADIENT_SYMMETRICITY}, "
        f"clock <= {CLOCK_GRADIENT_SYMMETRICITY}) -> {votes[1][1]}",
        f"- distance irrelevance {di:.3f} (pizza <= {PIZZA_DISTANCE_IRRELEVANCE}, "
        f"clock >= {CLOCK_DISTANCE_IRRELEVANCE}) -> {votes[2][1]}",
    ]
    if math.isnan(doubling.ratio):
        lines.append(f"  (2k test undefined: 2k folds onto {k2} for p={model.p}, or no energy at k)")
    if math.isnan(di):
        lines.append("  (distance irrelevance undefined: the correct logit is constant over all pairs)")
    return CircuitReport(
        verdict=verdict,
        doubling=doubling,
        doubling_logits=doubling_logits,
        gradient_symmetricity=gs,
        distance_irrelevance=di,
        votes=votes,
        evidence="\n".join(lines),
    )
