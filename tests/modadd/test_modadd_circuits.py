"""Pizza vs clock metrics on hand-built circuits whose nature is known by construction (see modadd_handmade)."""

import math

import pytest
import torch

from lambdahat.modadd import (
    CircuitModel,
    CircuitReport,
    ModAddModel,
    classify_circuit,
    correct_logit_grid,
    distance_irrelevance,
    dominant_mode,
    gradient_symmetricity,
    make_dataset,
    mode_doubling,
)
from lambdahat.modadd.circuits import _verdict

from .modadd_handmade import HandClock, HandPizza

P, K = 31, 4


def radii(p, spread=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 1.0 - spread / 2 + spread * torch.rand(p, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("model", [HandClock(P, K), HandPizza(P, K), HandClock(P, K, radii(P))])
def test_handmade_circuits_solve_modular_addition(model):
    x, y = make_dataset(P)
    assert torch.equal(model(x).argmax(dim=1), y)
    assert isinstance(model, CircuitModel)
    assert dominant_mode(model) == K


def test_pizza_metrics_match_the_theory():
    pizza = HandPizza(P, K)
    d = mode_doubling(pizza)
    assert (d.mode, d.double_mode) == (K, 2 * K)
    # neuron (cos(wa−φ) + cos(wb−φ))²: amplitude 2|cos(wa−φ)| at k, 1/2 at 2k -> ratio sqrt((1/4) / 2)
    assert d.ratio == pytest.approx(math.sqrt(1 / 8), rel=1e-9)
    # the logits depend on E_a + E_b only
    assert gradient_symmetricity(pizza) == pytest.approx(1.0, abs=1e-12)
    # the correct logit 1 + cos(w(a−b)) is a function of the distance alone
    L = correct_logit_grid(pizza)
    w = 2 * math.pi * K / P
    torch.testing.assert_close(L[:, 0], 1 + torch.cos(w * torch.arange(P, dtype=torch.float64)))
    assert distance_irrelevance(pizza) == pytest.approx(0.0, abs=1e-9)


def test_clock_metrics_match_the_theory():
    clock = HandClock(P, K, radii(P))
    d = mode_doubling(clock)
    # h = r_a r_b (cos w(a+b), sin w(a+b)): only the radius wobble leaks to 2k
    assert d.ratio < 0.1
    assert mode_doubling(HandClock(P, K)).ratio == pytest.approx(0.0, abs=1e-12)
    # per triple the cosine is cos(w(b−a)), whose mean over random pairs is 0
    n = 2000
    gs = gradient_symmetricity(clock, n_triples=n, seed=1)
    assert abs(gs) < 4 * math.sqrt(0.5 / n)
    # the correct logit r_a r_b varies as much within a distance class as overall
    assert distance_irrelevance(clock) > 0.9


def test_gradient_symmetricity_per_triple_value_for_the_clock():
    # with a == b every triple has cos(w·0) = 1
    clock = HandClock(P, K)
    e = clock.embed_matrix[torch.tensor([3, 3])].clone().requires_grad_(True)
    logit = clock.logits_from_embeddings(e[:1], e[1:])[0, 5]
    g_a, g_b = torch.autograd.grad(logit, e)[0]
    assert torch.nn.functional.cosine_similarity(g_a, g_b, dim=0).item() == pytest.approx(1.0)


def test_verdicts_on_handmade_circuits():
    pizza = classify_circuit(HandPizza(P, K))
    assert isinstance(pizza, CircuitReport)
    assert pizza.verdict == "pizza" and all(v == "pizza" for _, v in pizza.votes)
    assert "verdict: pizza" in pizza.evidence and "0.354" in pizza.evidence and str(pizza) == pizza.evidence
    assert pizza.ratio_2k == pizza.doubling.ratio
    assert pizza.doubling_logits.ratio == pytest.approx(0.5, rel=1e-9)

    clock = classify_circuit(HandClock(P, K, radii(P)))
    assert clock.verdict == "clock" and all(v == "clock" for _, v in clock.votes)
    assert clock.doubling_logits.ratio < 0.1

    # a perfect clock has a constant correct logit: distance irrelevance is undefined and abstains
    unit = classify_circuit(HandClock(P, K))
    assert math.isnan(unit.distance_irrelevance)
    assert unit.verdict == "clock" and dict(unit.votes)["distance_irrelevance"] == "abstain"
    assert "undefined" in unit.evidence


def test_pizza_with_uneven_radii_is_still_a_pizza():
    report = classify_circuit(HandPizza(P, K, radii=radii(P, spread=0.2)))
    assert report.verdict == "pizza"
    assert 0 < report.distance_irrelevance < 0.5


@pytest.mark.parametrize(
    ("votes", "verdict"),
    [
        (["pizza", "pizza", "pizza"], "pizza"),
        (["pizza", "abstain", "pizza"], "pizza"),
        (["pizza", "clock", "pizza"], "unclear"),
        (["clock", "clock", "abstain"], "clock"),
        (["clock", "abstain", "abstain"], "unclear"),
        (["abstain", "abstain", "abstain"], "unclear"),
    ],
)
def test_vote_combination(votes, verdict):
    assert _verdict(votes) == verdict


@pytest.mark.parametrize(("p", "k", "k2"), [(9, 3, 3), (8, 4, 0)])
def test_doubling_test_is_undefined_when_2k_folds_onto_k_or_0(p, k, k2):
    d = mode_doubling(HandClock(p, 1), k=k)
    assert d.double_mode == k2 and math.isnan(d.ratio)


def test_doubling_on_the_logits():
    # pizza logits (1 + cos w(a−b)) cos w(a+b−c): amplitude 1 at k, 1/2 at 2k in b; clock: pure k
    assert mode_doubling(HandPizza(P, K), on="logits").ratio == pytest.approx(0.5, rel=1e-9)
    assert mode_doubling(HandClock(P, K), on="logits").ratio == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="'hidden' or 'logits'"):
        mode_doubling(HandClock(P, K), on="output")


def test_doubling_over_a_subset_of_operands():
    pizza = HandPizza(P, K)
    one = mode_doubling(pizza, a_values=[0])
    # at a = 0 the neurons give amplitude 2|cos φ| at k and 1/2 at 2k; n = 6 angles: mean cos² φ = 1/2
    assert one.ratio == pytest.approx(math.sqrt(1 / 8), rel=1e-9)
    with pytest.raises(ValueError, match="empty"):
        mode_doubling(pizza, a_values=[])
    with pytest.raises(ValueError, match="non-constant"):
        mode_doubling(pizza, k=P)


def test_gradient_symmetricity_is_seeded():
    clock = HandClock(P, K)
    assert gradient_symmetricity(clock, 100, seed=3) == gradient_symmetricity(clock, 100, seed=3)
    assert gradient_symmetricity(clock, 100, seed=3) != gradient_symmetricity(clock, 100, seed=4)
    with pytest.raises(ValueError, match="n_triples"):
        gradient_symmetricity(clock, 0)


def test_tied_first_layer_model_is_gradient_symmetric():
    m = ModAddModel(11, 4, 8, linear_1_tied=True)
    assert gradient_symmetricity(m, 200) == pytest.approx(1.0, abs=1e-6)
    assert gradient_symmetricity(ModAddModel(11, 4, 8), 200) < 0.99


def test_classify_accepts_a_run_and_rejects_other_objects(tiny_run):
    report = classify_circuit(tiny_run, n_triples=50)
    assert report.verdict in {"pizza", "clock", "unclear"}
    assert (
        report.gradient_symmetricity == classify_circuit(tiny_run.model(), n_triples=50).gradient_symmetricity
    )
    first = classify_circuit(tiny_run, checkpoint=0, n_triples=50)
    assert (
        first.gradient_symmetricity == classify_circuit(tiny_run.model(0), n_triples=50).gradient_symmetricity
    )
    with pytest.raises(TypeError, match="expected a ModAddModel"):
        classify_circuit("runs/p53")
