"""Bad input gives clear errors that say what was expected and how to fix it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import FAST
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lambdahat import LLCEstimator


def estimate(model, loader, **kw):
    return LLCEstimator(**FAST).estimate_llc(model, loader, compile=False, show_progress=False, **kw)


def test_dict_batches_without_unpack_fn(classification_data):
    class DictData(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"input_ids": torch.zeros(4), "labels": torch.tensor(0)}

    with pytest.raises(TypeError, match=r"pass unpack_fn .*input_ids"):
        estimate(nn.Linear(4, 3), DataLoader(DictData(), batch_size=4))


def test_three_element_batches_without_unpack_fn():
    data = TensorDataset(torch.zeros(8, 4), torch.zeros(8, dtype=torch.long), torch.zeros(8))
    with pytest.raises(TypeError, match="3 elements.*unpack_fn"):
        estimate(nn.Linear(4, 3), DataLoader(data, batch_size=4))


def test_empty_loader():
    data = TensorDataset(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="yielded no batch"):
        estimate(nn.Linear(4, 3), DataLoader(data, batch_size=4, drop_last=True))


def test_targets_that_do_not_fit_the_criterion(classification_data):
    with pytest.raises(ValueError, match="criterion_fn failed.*targets"):
        estimate(nn.Linear(4, 3), DataLoader(classification_data, batch_size=32), criterion_fn=F.mse_loss)


def test_non_scalar_loss(classification_data):
    crit = lambda out, y: F.cross_entropy(out, y, reduction="none")  # noqa: E731
    with pytest.raises(ValueError, match="scalar mean loss.*reduction='mean'"):
        estimate(nn.Linear(4, 3), DataLoader(classification_data, batch_size=32), criterion_fn=crit)


def test_model_without_parameters(classification_data):
    with pytest.raises(ValueError, match="no parameters"):
        estimate(nn.ReLU(), DataLoader(classification_data, batch_size=32))


def test_not_a_module(classification_data):
    with pytest.raises(TypeError, match="torch.nn.Module"):
        estimate(lambda x: x, DataLoader(classification_data, batch_size=32))


def test_unknown_dataset_size_needs_nbeta():
    class Stream(IterableDataset):
        def __iter__(self):
            for _ in range(4):
                yield torch.zeros(4), torch.tensor(0)

    with pytest.raises(ValueError, match="pass nbeta=nbeta_from_effective_size"):
        estimate(nn.Linear(4, 3), DataLoader(Stream(), batch_size=2))
    # with nbeta given it runs
    est = LLCEstimator(**{**FAST, "nbeta": 10.0})
    assert est.estimate_llc(
        nn.Linear(4, 3), DataLoader(Stream(), batch_size=2), compile=False, show_progress=False
    ).shape == (4,)


def test_model_failing_on_inputs(classification_data):
    with pytest.raises(ValueError, match="model failed on the inputs"):
        estimate(nn.Linear(5, 3), DataLoader(classification_data, batch_size=32))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"draws": 0}, "draws must be an int >= 1"),
        ({"chains": 2.5}, "chains must be an int"),
        ({"burnin_steps": -1}, "burnin_steps must be an int >= 0"),
        ({"learning_rate": -1.0}, "learning_rate must be a finite number"),
        ({"learning_rate": 0.0}, "learning_rate must be a finite number > 0"),
        ({"localization": float("nan")}, "localization must be a finite number"),
        ({"nbeta": 0.0}, "nbeta must be a finite number > 0"),
        ({"sampler": "hmc"}, "sampler must be one of"),
        ({"dtype": torch.int32}, "dtype must be one of"),
        ({"sampler": "sgld", "sampler_options": {"alpha": 0.9}}, "sampler_options"),
    ],
)
def test_bad_estimator_arguments(kwargs, match, classification_data):
    with pytest.raises(ValueError, match=match):
        est = LLCEstimator(**{**FAST, **kwargs})
        est.estimate_llc(
            nn.Linear(4, 3),
            DataLoader(classification_data, batch_size=32),
            compile=False,
            show_progress=False,
        )


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"devices": []}, ValueError, "devices is empty"),
        ({"devices": "tpu:0"}, ValueError, "not a device"),
        ({"chain_batch": 0}, ValueError, "chain_batch must be an int >= 1"),
        ({"seed": -3}, ValueError, "seed must be a non-negative int"),
        ({"compile": "yes"}, ValueError, "compile must be True, False or 'auto'"),
        ({"params": "nonexistent.*"}, ValueError, "matches no parameter"),
        ({"params": {"nope": True}}, ValueError, "does not have"),
    ],
)
def test_bad_call_arguments(kwargs, exc, match, classification_data):
    est = LLCEstimator(**FAST)
    with pytest.raises(exc, match=match):
        est.estimate_llc(
            nn.Linear(4, 3),
            DataLoader(classification_data, batch_size=32),
            show_progress=False,
            **{"compile": False, **kwargs},
        )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where CUDA is absent")
def test_cuda_device_without_cuda(classification_data):
    with pytest.raises(ValueError, match="CUDA is not available"):
        estimate(nn.Linear(4, 3), DataLoader(classification_data, batch_size=32), devices="cuda")


def test_non_finite_loss_at_w_star(classification_data):
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="loss at w\\* is nan"):
        estimate(model, DataLoader(classification_data, batch_size=32))


def test_error_messages_name_the_function_that_raised():
    """An error says which function raised it (prepare, run_chains, sample, the data feed), not the facade's name
    when the user called another entry point."""
    from lambdahat import LLCConfig, prepare, sample
    from lambdahat.problem import run_chains

    x, y = torch.randn(16, 4), torch.randn(16, 1)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    with pytest.raises(TypeError, match="^prepare: model must be a torch.nn.Module"):
        prepare("not a model", loader, criterion_fn=F.mse_loss)
    with pytest.raises(ValueError, match="^prepare: params pattern 'nothing'"):
        prepare(nn.Linear(4, 1), loader, criterion_fn=F.mse_loss, params=["nothing"])
    problem = prepare(nn.Linear(4, 1), loader, criterion_fn=F.mse_loss, compile=False)
    config = LLCConfig(draws=2, chains=2, burnin_steps=1, learning_rate=1e-4)
    with pytest.raises(ValueError, match="^sample: seed must be a non-negative int"):
        sample(problem, config, seed=-1)
    with pytest.raises(ValueError, match="^run_chains: chain_batch must be"):
        run_chains(problem, config, chain_batch=0)
    with pytest.raises(TypeError, match="^run_chains: config must be an LLCConfig"):
        run_chains(problem, {"draws": 2})
