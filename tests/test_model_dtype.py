"""dtype="model": parameters, chains and arithmetic in the model's own dtype (a bfloat16 model stays bfloat16)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lambdahat import LLCConfig, LLCEstimator, prepare, sample


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 6, generator=g)
    return TensorDataset(x, (x[:, :3].sum(1) > 0).long())


def _model(dtype):
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2)).to(dtype)


HP = dict(draws=60, chains=4, burnin_steps=40, learning_rate=1e-3, localization=50.0, nbeta=50.0)


def test_model_dtype_on_a_float32_model_is_float32():
    loader = DataLoader(_data(), batch_size=64)
    run = lambda dtype: LLCEstimator(**HP, dtype=dtype).estimate_llc(  # noqa: E731
        _model(torch.float32),
        loader,
        criterion_fn=F.cross_entropy,
        seed=2,
        compile=False,
        show_progress=False,
    )
    torch.testing.assert_close(run("model"), run("float32"), rtol=0, atol=0)


def test_a_bfloat16_model_samples_in_bfloat16_and_records_float32_losses():
    model = _model(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = _data()
    loader = DataLoader(data, batch_size=64)
    problem = prepare(
        model, loader, LLCConfig(**HP, dtype="model"), criterion_fn=F.cross_entropy, compile=False
    )
    assert problem.slots[0].w_star.dtype == torch.bfloat16  # the chains' state: half the bytes of float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = sample(problem, LLCConfig(**HP, dtype="model"), seed=0, show_progress=False)
    assert result.loss_trace.dtype == torch.float32
    assert result.settings["dtype"] == "model"
    assert torch.isfinite(result.llcs).all()
    # L0 is the bfloat16 model's own loss on the data (its forward in bfloat16), computed in float64 sums
    with torch.no_grad():
        x, y = data.tensors
        own = F.cross_entropy(model(x.to(torch.bfloat16)).float(), y).item()
    assert result.init_loss == pytest.approx(own, rel=2e-2)  # bfloat16 forward: ~3 significant digits
    for k, v in model.state_dict().items():
        assert v.dtype == torch.bfloat16 and torch.equal(v, before[k])  # the caller's model is untouched


def test_model_dtype_refuses_a_model_of_mixed_dtypes():
    model = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 2).to(torch.float64))
    with pytest.raises(ValueError, match="mixes"):
        LLCEstimator(**HP, dtype="model").estimate_llc(
            model, DataLoader(_data(), batch_size=64), seed=0, compile=False, show_progress=False
        )
