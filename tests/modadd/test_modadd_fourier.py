import math

import pandas as pd
import pytest
import torch

from lambdahat.modadd import (
    ModAddModel,
    ablate_keep_mode,
    fold_mode,
    fourier_basis,
    make_dataset,
    mode_ablation_table,
    mode_magnitudes,
    mode_magnitudes_over_checkpoints,
    mode_projector,
    project_to_modes,
)


def wave(p, k, phase=0.0, amp=1.0):
    t = torch.arange(p, dtype=torch.float64)
    return amp * torch.cos(2 * math.pi * k * t / p + phase)


def test_fourier_basis_entries():
    p = 11
    C, S = fourier_basis(p)
    i, j = 3, 7
    assert C[i, j].item() == pytest.approx(math.cos(2 * math.pi * i * j / p), abs=1e-15)
    assert S[i, j].item() == pytest.approx(math.sin(2 * math.pi * i * j / p), abs=1e-15)
    assert torch.equal(C, C.T) and torch.equal(S, S.T)
    assert fourier_basis(5, dtype=torch.float32)[0].dtype == torch.float32


@pytest.mark.parametrize("p", [11, 12])
def test_known_modes_give_exact_magnitudes(p):
    # column j: amplitude A_j at mode k_j with a phase; a constant column
    W = torch.stack(
        [wave(p, 2, 0.3, 2.0), wave(p, 5, -1.1, 0.5), wave(p, 2, 1.0, 1.5), torch.full((p,), 3.0)], 1
    )
    mags = mode_magnitudes(W, p)
    expected = torch.zeros(p // 2 + 1, dtype=torch.float64)
    expected[2] = (p / 2) * math.hypot(2.0, 1.5)
    expected[5] = (p / 2) * 0.5
    expected[0] = 3.0 * p
    torch.testing.assert_close(mags, expected, atol=1e-10, rtol=1e-12)


def test_nyquist_mode_of_even_p_has_only_a_cosine():
    p = 10
    mags = mode_magnitudes(wave(p, 5), p)
    assert mags[5].item() == pytest.approx(p) and mags[:5].abs().max() < 1e-10


def test_magnitudes_agree_with_the_fft():
    p = 13
    W = torch.randn(p, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    F = torch.fft.fft(W, dim=0)  # F[k] = sum_t W[t] e^{-2πikt/p} = (C W)[k] - i (S W)[k]
    expected = F.abs().square().sum(dim=1).sqrt()[: p // 2 + 1]
    torch.testing.assert_close(mode_magnitudes(W), expected)


def test_magnitude_input_checks():
    with pytest.raises(ValueError, match="W has 5 rows but p=7"):
        mode_magnitudes(torch.zeros(5, 2), 7)
    with pytest.raises(ValueError, match=r"shape \[p, d\]"):
        mode_magnitudes(torch.zeros(5, 2, 2))


def test_fold_mode():
    assert [fold_mode(k, 7) for k in range(-1, 9)] == [1, 0, 1, 2, 3, 3, 2, 1, 0, 1]


@pytest.mark.parametrize("p", [11, 12])
@pytest.mark.parametrize("modes", [[1], [2, 5], [0], [3, 6], [], [8]])
def test_projector_is_an_orthogonal_projection_of_the_right_rank(p, modes):
    P = mode_projector(modes, p)
    torch.testing.assert_close(P @ P, P, atol=1e-12, rtol=0)
    torch.testing.assert_close(P, P.T, atol=1e-12, rtol=0)
    folded = {fold_mode(k, p) for k in modes} | {0}
    rank = sum(1 if (k == 0 or 2 * k == p) else 2 for k in folded)
    assert torch.linalg.matrix_rank(P).item() == rank
    assert torch.trace(P).item() == pytest.approx(rank)


@pytest.mark.parametrize("p", [11, 12])
def test_projection_keeps_the_wanted_modes_and_kills_the_others(p):
    keep = wave(p, 2, 0.4, 1.3) + wave(p, 3, -0.2, 0.7) + 0.9
    drop = wave(p, 1, 1.0, 2.0) + wave(p, 4, 0.1, 0.6) + wave(p, 5, 2.0)
    W = torch.stack([keep + drop, drop, keep], dim=1)
    out = project_to_modes(W, [2, 3], p)
    torch.testing.assert_close(out[:, 0], keep)
    torch.testing.assert_close(out[:, 1], torch.zeros(p, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(out[:, 2], keep)
    # the residual is orthogonal to everything kept
    assert (W - out).T.matmul(out).abs().max() < 1e-10
    # idempotent, and a mode given as p - k is the same mode
    torch.testing.assert_close(project_to_modes(out, [2, 3]), out)
    torch.testing.assert_close(project_to_modes(W, [p - 2, 3 + p]), out)
    # without the constant
    torch.testing.assert_close(project_to_modes(W[:, 2], [2, 3], keep_constant=False), keep - 0.9)


def test_projection_preserves_shape_and_dtype():
    W = torch.randn(7, 3)
    out = project_to_modes(W, [1])
    assert out.shape == W.shape and out.dtype == torch.float32
    assert project_to_modes(W[:, 0], [1]).shape == (7,)


def _model_with_embedding(p, E):
    m = ModAddModel(p, E.shape[1], 16, activation="quad", tie_unembed=True, seed=0)
    with torch.no_grad():
        m.embed.weight.copy_(E)
    return m


def test_ablate_keep_mode_equals_evaluating_the_projected_embedding():
    p = 11
    E = torch.stack([wave(p, 3), wave(p, 3, 1.0), wave(p, 1, 0.5, 0.3)], 1).float()
    m = _model_with_embedding(p, E)
    data = make_dataset(p)
    loss = ablate_keep_mode(m, 3, data)
    before = m.embed_matrix.detach().clone()
    ref = _model_with_embedding(p, project_to_modes(E, [3]))
    expected = torch.nn.functional.cross_entropy(ref(data[0]), data[1]).item()
    assert loss == pytest.approx(expected, rel=1e-5)
    assert torch.equal(m.embed_matrix, before)  # the model is not modified
    # keeping every mode present is no ablation at all
    full = torch.nn.functional.cross_entropy(m(data[0]), data[1]).item()
    assert ablate_keep_mode(m, [1, 3], data) == pytest.approx(full, rel=1e-5)


def test_mode_ablation_table():
    p = 7
    m = ModAddModel(p, 4, 8, seed=1)
    x, y = make_dataset(p)
    table = mode_ablation_table(m, (x, y))
    assert list(table.index) == [0, 1, 2, 3] and list(table.columns) == ["loss", "accuracy", "magnitude"]
    assert table.loc[2, "loss"] == pytest.approx(ablate_keep_mode(m, 2, (x, y)))
    torch.testing.assert_close(torch.tensor(table["magnitude"].to_numpy()), mode_magnitudes(m.embed_matrix))
    assert "baseline_loss" in table.attrs
    assert list(mode_ablation_table(m, (x, y), modes=[6, 2]).index) == [1, 2]
    with pytest.raises(ValueError, match="empty"):
        mode_ablation_table(m, (x[:0], y[:0]))


def test_mode_magnitudes_over_checkpoints(tiny_run):
    table = mode_magnitudes_over_checkpoints(tiny_run)
    assert isinstance(table, pd.DataFrame)
    assert table.shape == (5, 4) and list(table.index) == tiny_run.steps
    assert table.index.name == "step" and list(table.columns) == [0, 1, 2, 3]
    torch.testing.assert_close(
        torch.tensor(table.iloc[0].to_numpy()), mode_magnitudes(tiny_run.model(0).embed_matrix)
    )
