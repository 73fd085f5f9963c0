import itertools

import pytest
import torch

from lambdahat.modadd import ModAddModel, make_dataset

P = 7


def _x():
    return make_dataset(P)[0]


@pytest.mark.parametrize(
    ("activation", "tie_unembed", "linear_1_tied"),
    list(itertools.product(["gelu", "relu", "quad"], [False, True], [False, True])),
)
def test_shapes_for_every_option(activation, tie_unembed, linear_1_tied):
    m = ModAddModel(P, 4, 9, activation=activation, tie_unembed=tie_unembed, linear_1_tied=linear_1_tied)
    x = _x()
    assert m(x).shape == (P * P, P)
    assert m.pre_unembed(x).shape == (P * P, 9)
    assert m.embed_matrix.shape == (P, 4)
    assert torch.equal(m(x), m.unembed_hidden(m.pre_unembed(x)))
    e = m.embed_matrix
    assert torch.equal(m.logits_from_embeddings(e[x[:, 0]], e[x[:, 1]]), m(x))


def test_hidden_layer_formula_and_quad_activation():
    m = ModAddModel(P, 3, 5, activation="quad")
    x = _x()
    E = m.embed_matrix
    z = m.linear_a(E[x[:, 0]]) + m.linear_b(E[x[:, 1]])
    torch.testing.assert_close(m.pre_unembed(x), z**2)
    torch.testing.assert_close(m(x), m.unembed(z**2))


def test_relu_and_gelu_activations():
    x = _x()
    for act, fn in (("relu", torch.relu), ("gelu", torch.nn.functional.gelu)):
        m = ModAddModel(P, 3, 5, activation=act)
        E = m.embed_matrix
        z = m.linear_a(E[x[:, 0]]) + m.linear_b(E[x[:, 1]])
        torch.testing.assert_close(m.pre_unembed(x), fn(z))


def test_tied_unembedding_uses_the_embedding_transpose():
    m = ModAddModel(P, 3, 5, tie_unembed=True)
    x = _x()
    h = m.pre_unembed(x)
    assert m.unembed.out_features == 3
    torch.testing.assert_close(m(x), m.unembed(h) @ m.embed_matrix.T)


def test_tied_first_layer_is_symmetric_in_the_operands():
    m = ModAddModel(P, 3, 5, linear_1_tied=True)
    assert m.linear_b is None and len(m.first_layer()) == 1
    x = _x()
    torch.testing.assert_close(m(x), m(x.flip(1)))
    untied = ModAddModel(P, 3, 5)
    assert not torch.allclose(untied(x), untied(x.flip(1)))


def test_seeded_init_does_not_touch_the_global_rng():
    state = torch.get_rng_state()
    a, b, c = ModAddModel(P, 3, 5, seed=1), ModAddModel(P, 3, 5, seed=1), ModAddModel(P, 3, 5, seed=2)
    assert torch.equal(torch.get_rng_state(), state)
    for (n, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), n
        assert not torch.equal(pa, pc), n


def test_scale_factors_multiply_the_initial_weights():
    base = ModAddModel(P, 3, 5, tie_unembed=False, seed=4)
    scaled = ModAddModel(P, 3, 5, scale_embed=2.5, scale_linear_1_factor=0.5, seed=4)
    torch.testing.assert_close(scaled.embed_matrix, 2.5 * base.embed_matrix)
    for lin_s, lin_b in zip(scaled.first_layer(), base.first_layer()):
        torch.testing.assert_close(lin_s.weight, 0.5 * lin_b.weight)
        torch.testing.assert_close(lin_s.bias, lin_b.bias)
    torch.testing.assert_close(scaled.unembed.weight, base.unembed.weight)


@pytest.mark.parametrize("tie_unembed", [False, True])
def test_freeze_middle_trains_only_embedding_and_untied_unembedding(tie_unembed):
    m = ModAddModel(P, 3, 5, tie_unembed=tie_unembed, freeze_middle=True)
    trainable = {n for n, q in m.named_parameters() if q.requires_grad}
    expected = {"embed.weight"} if tie_unembed else {"embed.weight", "unembed.weight", "unembed.bias"}
    assert trainable == expected
    before = {n: q.detach().clone() for n, q in m.named_parameters()}
    opt = torch.optim.Adam([q for q in m.parameters() if q.requires_grad], lr=0.1)
    x, y = make_dataset(P)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n, q in m.named_parameters():
        assert torch.equal(q, before[n]) == (n not in expected), n


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"p": 1}, "p must be an integer >= 2"),
        ({"p": 7, "activation": "tanh"}, "activation must be one of"),
        ({"p": 7, "embed_dim": 0}, "embed_dim must be a positive integer"),
        ({"p": 7, "hidden_size": 2.5}, "hidden_size must be a positive integer"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModAddModel(**kwargs)


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r"shape \[batch, 2\]"):
        ModAddModel(P)(torch.tensor([1, 2]))
