"""Compiled chunks of several steps: the same chains as single steps (eager or compiled), whatever the data's
batch shapes and however the run length divides into chunks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lambdahat.chains as chains
from lambdahat import LLCEstimator


def test_chunking_is_for_small_models_and_long_planned_work():
    assert chains.chunk_steps_for(1000) == chains.CHUNK_STEPS > 1
    assert chains.chunk_steps_for(1000, planned_steps=chains.CHUNK_MIN_STEPS) == chains.CHUNK_STEPS
    assert (
        chains.chunk_steps_for(1000, planned_steps=chains.CHUNK_MIN_STEPS - 1) == 1
    )  # compiling it won't pay
    assert chains.chunk_steps_for(chains.CHUNK_MAX_DIM + 1) == 1
    # a chunk compiled before on this machine comes from inductor's caches: it pays over shorter work
    warm = chains.CHUNK_MIN_STEPS_WARM
    assert warm < chains.CHUNK_MIN_STEPS
    assert chains.chunk_steps_for(1000, planned_steps=warm, warm=True) == chains.CHUNK_STEPS
    assert chains.chunk_steps_for(1000, planned_steps=warm - 1, warm=True) == 1
    assert chains.chunk_steps_for(chains.CHUNK_MAX_DIM + 1, planned_steps=warm, warm=True) == 1


def test_a_recorded_chunk_makes_short_compiled_runs_take_chunks(tmp_path, monkeypatch):
    """The compile record decides: a run of moderate length takes single steps until a chunk of its kind has been
    compiled."""
    from lambdahat import LLCConfig, prepare

    monkeypatch.setattr(chains, "_record_file", lambda: str(tmp_path / "compiles.json"))
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    data = TensorDataset(torch.randn(40, 4), torch.randint(0, 3, (40,)))
    problem = prepare(model, DataLoader(data, batch_size=10), LLCConfig(), compile=True)
    fm, sampler = problem.slots[0], LLCConfig().build_sampler()
    planned = chains.CHUNK_MIN_STEPS_WARM
    assert chains.chunk_steps_of(fm, sampler, planned_steps=planned) == 1
    chains.record_compile(chains.compile_kind(fm, sampler, chains.CHUNK_STEPS), 60.0)
    assert chains.chunk_steps_of(fm, sampler, planned_steps=planned) == chains.CHUNK_STEPS
    assert chains.chunk_steps_of(fm, sampler, planned_steps=planned - 1) == 1


@pytest.mark.slow
def test_compiled_chunks_equal_eager_steps(monkeypatch):
    """Chunks of 3 on passes of batches [32, 32, 32, 4]: whole chunks, the short batch of each pass in a single
    step, and a last chunk trimmed to the 17 steps of the run."""
    monkeypatch.setattr(chains, "CHUNK_STEPS", 3)
    monkeypatch.setattr(chains, "CHUNK_MIN_STEPS", 0)
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
def test_batches_of_varying_shapes_compile_with_dynamic_shapes(tmp_path, monkeypatch):
    """A loader that is not a TensorDataset (here a list of batches of 24 and 16 rows) may change shapes from batch
    to batch: its compiled step keeps torch's automatic dynamic shapes, the record says so, and the chains equal
    the eager ones."""
    monkeypatch.setattr(
        chains, "_record_file", lambda: str(tmp_path / "compiles.json")
    )  # this test's record only
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

    fm = prepare(model, batches, LLCConfig()).slots[0]
    sampler = LLCConfig().build_sampler()
    assert chains.compiled_before(chains.compile_kind(fm, sampler, 1, static_shapes=False)) is not None
    assert chains.compiled_before(chains.compile_kind(fm, sampler, 1, static_shapes=True)) is None


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


def test_the_compile_record_is_read_once_until_it_changes(tmp_path, monkeypatch):
    """A run asks the record for several kinds (chunk, step) and a sweep at every point: the file is read again
    only when it has changed, and a recorded compile is seen at once."""
    monkeypatch.setattr(chains, "_record_file", lambda: str(tmp_path / "compiles.json"))
    assert chains.compiled_before("a") is None  # no file yet
    chains.record_compile("a", 1.0)
    loads = []
    real_load = chains.json.load
    monkeypatch.setattr(chains.json, "load", lambda f: loads.append(1) or real_load(f))
    assert [chains.compiled_before(k) for k in ("a", "b", "a")] == [1.0, None, 1.0]
    assert len(loads) == 1
    chains.record_compile(
        "b", 2.5
    )  # reads the file afresh (another process may have written it), then writes it
    assert chains.compiled_before("b") == 2.5 and chains.compiled_before("a") == 1.0
    assert len(loads) == 3
