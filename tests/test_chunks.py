"""Compiled chunks of several steps: the same chains as single steps (eager or compiled), whatever the data's
batch shapes and however the run length divides into chunks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lambdahat.chains as chains
import lambdahat.plan as plan
from lambdahat import LLCEstimator


@pytest.mark.slow
def test_compiled_chunks_equal_eager_steps(monkeypatch):
    """Chunks of 3 on passes of batches [32, 32, 32, 4]: whole chunks, the short batch of each pass in a single
    step, and a last chunk trimmed to the 17 steps of the run."""
    monkeypatch.setattr(plan, "CHUNK_STEPS", 3)
    monkeypatch.setattr(plan, "CHUNK_MIN_CALLS", 0)
    samples = 100
    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 4, generator=g)
    y = torch.randint(0, 3, (samples,), generator=g)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    est = LLCEstimator(draws=12, chains=3, burnin_steps=5, learning_rate=1e-3, localization=10.0, nbeta=20.0)
    kwargs = dict(criterion_fn=F.cross_entropy, seed=4, show_progress=False)
    eager = est.estimate_llc(model, loader, compile=False, **kwargs)
    eager_trace = est.result.loss_trace
    compiled = est.estimate_llc(model, loader, compile=True, **kwargs)
    assert est.get_metrics()["compiled"] is True
    assert est.get_metrics()["chunk_steps"] == 3
    torch.testing.assert_close(est.result.loss_trace, eager_trace, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_batches_of_varying_shapes_compile_with_dynamic_shapes():
    """A loader that is not a TensorDataset (here a list of batches of 24 and 16 rows) may change shapes from batch
    to batch: its compiled step keeps torch's automatic dynamic shapes, and the chains equal the eager ones."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
    batches = [(x[:24], y[:24]), (x[24:], y[24:])]
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    est = LLCEstimator(draws=6, chains=2, burnin_steps=2, learning_rate=1e-3, localization=10.0, nbeta=20.0)
    kwargs = dict(criterion_fn=F.cross_entropy, seed=2, show_progress=False)
    eager = est.estimate_llc(model, batches, compile=False, **kwargs)
    compiled = est.estimate_llc(model, batches, compile=True, **kwargs)
    assert est.get_metrics()["compiled"] is True
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3)
    from lambdahat import LLCConfig, prepare

    assert not prepare(model, batches, LLCConfig())._static_shapes()


def _recording_compile(graphs: list):
    """``torch.compile`` with a backend that notes, for every graph dynamo captures, whether it has symbolic
    (dynamic) shapes, and runs it as captured (no inductor: the test is about what dynamo traced)."""
    real_compile = torch.compile

    def backend(gm, example_inputs):
        values = [n.meta.get("example_value") for n in gm.graph.nodes if n.op == "placeholder"]
        symbolic = any(isinstance(v, torch.SymInt) for v in values) or any(
            isinstance(v, torch.Tensor) and any(isinstance(d, torch.SymInt) for d in v.shape) for v in values
        )
        graphs.append(symbolic)
        return gm.forward

    def compile_(fn, **options):
        return real_compile(fn, backend=backend, **options)

    return compile_


def test_a_static_step_compiles_every_new_shape_as_a_static_graph(monkeypatch):
    """TensorDataset batches of 32, 32, 32 and 4 rows and chain batches of 2 and 1 chains: each new shape is a
    graph of its own with static shapes, not torch's automatic dynamic-shape graph, although the calls that meet a
    known shape run without switching dynamo's settings (what ``dynamic=False`` does on every call)."""
    if chains.static_compiles() is None:
        pytest.skip("this torch lacks the settings; compile_step uses dynamic=False")
    graphs: list[bool] = []
    monkeypatch.setattr(torch, "compile", _recording_compile(graphs))
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(100, 4, generator=g), torch.randint(0, 3, (100,), generator=g))
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    est = LLCEstimator(draws=8, chains=3, burnin_steps=2, learning_rate=1e-3, localization=10.0, nbeta=20.0)
    est.estimate_llc(
        model,
        DataLoader(data, batch_size=32, shuffle=True),
        criterion_fn=F.cross_entropy,
        seed=0,
        compile=True,
        chain_batch=2,
        show_progress=False,
    )
    assert est.get_metrics()["compiled"] is True
    assert len(graphs) >= 3 and not any(graphs)  # (32 rows, 2 chains), (4, 2), (32, 1), ...
