"""The execution plan: a pure rule of the run's facts, recorded on the result, carried out as planned; the compiled
step cache, out-of-memory errors, the compile lock and the reported chunk size."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lambdahat.chains as chains
import lambdahat.plan as plan
from lambdahat import LLCConfig, LLCEstimator, prepare, sample
from lambdahat.functional import FunctionalModel
from lambdahat.plan import ExecutionPlan, RunFacts, plan_execution

FACTS = RunFacts(
    dim=4433,
    samples_per_batch=128,
    steps=150,
    chains=8,
    chain_batch=8,
    slots=1,
    planned_runs=1,
    device_type="cpu",
    compile="auto",
    chunkable=True,
)


def facts(**changes) -> RunFacts:
    return RunFacts(**{**FACTS.__dict__, **changes})


def test_auto_stays_eager_for_a_notebook_sized_call_and_compiles_long_work():
    assert plan_execution(FACTS).mode == "eager"
    calls = plan.AUTO_COMPILE_CALLS["cpu"]
    assert plan_execution(facts(steps=calls)).compiled  # many calls of a small model
    assert not plan_execution(facts(steps=calls - 1)).compiled
    assert plan_execution(facts(planned_runs=calls // 150 + 1)).compiled  # a sweep that says its points
    big = plan.AUTO_COMPILE_FLOPS["cpu"] / (6 * 150 * 8 * 1024)  # many flops in few calls
    assert plan_execution(facts(dim=int(big) + 1, samples_per_batch=1024)).mode == "compiled"
    assert plan_execution(facts(dim=int(big) - 1, samples_per_batch=1024)).mode == "eager"


def test_the_rule_counts_calls_per_device_slot():
    # 8 chains in batches of 2 over one slot: 4 calls per step; over two slots: 2
    assert facts(chain_batch=2).calls == 4 * 150
    assert facts(chain_batch=2, slots=2).calls == 2 * 150
    assert facts(planned_runs=3).flops == pytest.approx(6 * 4433 * 128 * 150 * 8 * 3)


def test_the_callers_choice_is_obeyed_and_chunks_need_long_work_of_a_small_model():
    assert plan_execution(facts(compile=False, steps=10**7)).mode == "eager"
    assert plan_execution(facts(compile=True)) == ExecutionPlan("compiled", 1, "compile=True")
    long = plan.CHUNK_MIN_CALLS
    chunked = plan_execution(facts(compile=True, steps=long))
    assert chunked.mode == "chunked" and chunked.chunk_steps == plan.CHUNK_STEPS
    assert plan_execution(facts(compile=True, steps=long, chunkable=False)).mode == "compiled"
    assert plan_execution(facts(compile=True, steps=long, dim=plan.CHUNK_MAX_DIM + 1)).mode == "compiled"


def test_the_plan_is_the_same_whatever_ran_before():
    """A pure function: no timing, no process history, no files."""
    first = plan_execution(FACTS)
    plan_execution(facts(compile=True))
    assert plan_execution(FACTS) == first


# ----------------------------------------------------------------------------------------------------
# Carried out as planned (torch.compile replaced by a stand-in: these tests are about the machinery)
# ----------------------------------------------------------------------------------------------------


def _stand_in_compile(monkeypatch, wrap=None):
    """``torch.compile`` returning a new function object that runs ``fn`` (through ``wrap`` when given)."""

    def compile_(fn, **options):
        def compiled(*args, **kwargs):
            return fn(*args, **kwargs) if wrap is None else wrap(fn, *args, **kwargs)

        return compiled

    monkeypatch.setattr(torch, "compile", compile_)


def _data(rows=100, batch=32):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(rows, 4, generator=g), torch.randint(0, 3, (rows,), generator=g))
    return DataLoader(data, batch_size=batch, shuffle=True)


FAST = dict(draws=10, chains=4, burnin_steps=4, learning_rate=1e-3, localization=10.0, nbeta=20.0)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def test_the_plan_is_recorded_and_auto_ignores_a_compiled_step_made_before(monkeypatch):
    _stand_in_compile(monkeypatch)
    model, loader = _model(), _data()
    est = LLCEstimator(**FAST)
    kwargs = dict(criterion_fn=F.cross_entropy, seed=3, show_progress=False, warn=False)
    eager = est.run(model, loader, compile=False, **kwargs)
    assert eager.settings["plan"] == {"mode": "eager", "chunk_steps": 1, "reason": "compile=False"}
    est.run(model, loader, compile=True, **kwargs)
    auto = est.run(model, loader, compile="auto", **kwargs)
    assert auto.settings["plan"]["mode"] == "eager"
    assert auto.settings["compiled"] is False
    assert torch.equal(auto.loss_trace, eager.loss_trace)


def test_a_default_call_gives_the_same_bits_in_a_fresh_process(monkeypatch):
    """The same default call, once in a process that compiled a step for the model before and once in a fresh
    process, gives the same per-chain λ̂ to the bit."""
    _stand_in_compile(monkeypatch)
    script = textwrap.dedent(
        """
        import torch, torch.nn.functional as F
        from torch import nn
        from torch.utils.data import DataLoader, TensorDataset
        from lambdahat import LLCEstimator
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(100, 4, generator=g), torch.randint(0, 3, (100,), generator=g))
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        est = LLCEstimator(draws=10, chains=4, burnin_steps=4, learning_rate=1e-3, localization=10.0, nbeta=20.0)
        r = est.run(model, DataLoader(data, batch_size=32, shuffle=True), criterion_fn=F.cross_entropy, seed=3,
                    show_progress=False, warn=False)
        print(" ".join(float(v).hex() for v in r.llcs))
        """
    )
    fresh = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    model, loader = _model(), _data()
    est = LLCEstimator(**FAST)
    kwargs = dict(criterion_fn=F.cross_entropy, seed=3, show_progress=False, warn=False)
    est.run(model, loader, compile=True, **kwargs)
    here = est.run(model, loader, **kwargs)
    assert " ".join(float(v).hex() for v in here.llcs) == fresh.stdout.strip()


def test_new_loss_functions_do_not_pile_up_model_copies(monkeypatch):
    """Five compiled calls on one model, each with a new loss_fn lambda: at most one private copy of the model
    stays alive with the model once the results are dropped (the compiled step of the latest objective)."""
    _stand_in_compile(monkeypatch)
    model, loader = _model(), _data()
    est = LLCEstimator(**FAST)
    for _ in range(5):
        est.run(
            model,
            loader,
            loss_fn=lambda m, batch: F.cross_entropy(m(batch[0]), batch[1], reduction="none"),
            compile=True,
            seed=0,
            show_progress=False,
            warn=False,
        )
    est.result = None
    gc.collect()
    copies = [o for o in gc.get_objects() if isinstance(o, FunctionalModel)]
    assert len(copies) <= 1
    assert len(chains._COMPILED.get(model, {})) == 1


def test_out_of_memory_in_a_compiled_step_halves_the_chain_batch_not_the_compile(monkeypatch):
    """A device out-of-memory error is not a compiler failure: it reaches the chain-batch halving, the compiled
    step stays, and the results are those of the eager step (the stand-in runs it)."""
    calls = []

    def wrap(fn, state, *args):
        calls.append(state.theta.shape[0])
        if state.theta.shape[0] > 2:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return fn(state, *args)

    model, loader = _model(), _data()
    eager = LLCEstimator(**FAST).run(model, loader, seed=1, compile=False, show_progress=False, warn=False)
    _stand_in_compile(monkeypatch, wrap)
    with pytest.raises(torch.OutOfMemoryError):  # a fixed chain batch: reported as it is
        LLCEstimator(**FAST).run(model, loader, seed=1, compile=True, show_progress=False, warn=False)
    monkeypatch.setattr("lambdahat.problem.choose_chain_batch", lambda fm, x, y, n: (n, _Memory(), 0))
    result = LLCEstimator(**FAST).run(
        model, loader, seed=1, compile=True, chain_batch="auto", show_progress=False, warn=False
    )
    assert 4 in calls and 2 in calls
    assert result.settings["compiled"] is True and "fell_back" not in result.settings["plan"]
    assert torch.equal(result.loss_trace, eager.loss_trace)


class _Memory:
    base, per_chain, how = 0, 0, "test"


def test_every_call_that_may_compile_holds_the_lock_under_static_settings(monkeypatch):
    """Dynamo's settings are process-wide: each patch happens under the compile lock (the first call, and the
    later calls that meet a new batch shape: here the pass's last batch of 4 rows)."""
    if chains.static_compiles() is None:
        pytest.skip("this torch lacks the settings")
    _stand_in_compile(monkeypatch)
    entries = []

    class Recording:
        def __enter__(self):
            entries.append(chains._COMPILE_LOCK.locked())

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(chains, "static_compiles", lambda: lambda: Recording())
    LLCEstimator(**FAST).run(_model(), _data(), seed=0, compile=True, show_progress=False, warn=False)
    assert len(entries) == 2 and all(entries)


def test_a_run_that_cannot_chunk_reports_single_steps(monkeypatch):
    """With an evaluation set a run takes single steps: the plan and settings["chunk_steps"] say 1."""
    _stand_in_compile(monkeypatch)
    monkeypatch.setattr(plan, "CHUNK_MIN_CALLS", 0)
    model, loader = _model(), _data()
    config = LLCConfig(**FAST)
    problem = prepare(model, loader, config, compile=True, evaluation=_data(rows=8, batch=8))
    result = sample(problem, config, seed=0, show_progress=False, warn=False)
    assert result.settings["plan"]["mode"] == "compiled"
    assert result.settings["chunk_steps"] == 1
    chunked = sample(
        prepare(model, loader, config, compile=True), config, seed=0, show_progress=False, warn=False
    )
    assert chunked.settings["plan"]["mode"] == "chunked"
    assert chunked.settings["chunk_steps"] == plan.CHUNK_STEPS


def test_a_call_plans_all_its_runs_together(planned_facts):
    """With accuracy checks, the main run and its companions each plan with the call's total (1 + 0.5 + 1 + 1
    main runs, rounded up): one decision for the whole call, so a long call with checks compiles as one."""
    config = LLCConfig(**FAST, checks="all")
    sample(prepare(_model(), _data(), config), config, seed=0, show_progress=False, warn=False)
    # the main run, the step, localization and start companions
    assert [facts.planned_runs for facts in planned_facts] == [4, 4, 4, 4]
