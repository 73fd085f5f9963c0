import dataclasses
import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from lambdahat.modadd import ExperimentParams, Run, build_model, checkpoint_steps, evaluate, load_run, train
from lambdahat.modadd._seeding import generator
from lambdahat.modadd.train import RECORD_COLUMNS, RUN_FORMAT, RUN_FORMAT_VERSION


def _state(run: Run, i: int) -> dict[str, torch.Tensor]:
    return load_file(str(run.checkpoint_path(i)))


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize(
    ("n_batches", "n", "expected"),
    [(10, 4, [0, 3, 7, 10]), (20, 5, [0, 5, 10, 15, 20]), (3, 4, [0, 1, 2, 3]), (7, 2, [0, 7])],
)
def test_checkpoint_steps(n_batches, n, expected):
    assert checkpoint_steps(n_batches, n) == expected


def test_checkpoint_steps_rejects_too_many():
    with pytest.raises(ValueError, match=r"\[2, n_batches \+ 1\]"):
        checkpoint_steps(3, 5)


def test_run_directory_layout_and_record(tiny_run, tiny_params):
    run = tiny_run
    header = json.loads((run.path / "params.json").read_text())
    assert header["format"] == RUN_FORMAT and header["version"] == RUN_FORMAT_VERSION
    assert header["params"] == tiny_params.to_dict()
    assert header["checkpoint_steps"] == [0, 5, 10, 15, 20]
    assert sorted(q.name for q in (run.path / "checkpoints").iterdir()) == [
        f"ckpt_{i:04d}.safetensors" for i in range(5)
    ]
    assert run.n_checkpoints == 5 and run.steps == [0, 5, 10, 15, 20]
    assert list(run.record.columns) == list(RECORD_COLUMNS)
    assert run.record["checkpoint"].tolist() == list(range(5))
    assert run.record["step"].tolist() == run.steps
    assert run.params == tiny_params


def test_checkpoint_zero_is_the_initialization_and_last_is_final(tiny_run, tiny_params):
    init = build_model(tiny_params)
    m0 = tiny_run.model(0)
    for (n, a), b in zip(init.named_parameters(), m0.parameters()):
        assert torch.equal(a, b), n
    assert not torch.equal(tiny_run.model(-1).embed_matrix, init.embed_matrix)
    _assert_same_state(_state(tiny_run, -1), _state(tiny_run, 4))


def test_record_matches_a_fresh_evaluation_of_the_checkpoints(tiny_run):
    train_ds, test_ds = tiny_run.train_data(), tiny_run.test_data()
    for i, row in tiny_run.record.iterrows():
        m = tiny_run.model(i)
        tl, ta = evaluate(m, train_ds)
        vl, va = evaluate(m, test_ds)
        assert row.train_loss == pytest.approx(tl, rel=1e-6) and row.train_acc == pytest.approx(ta)
        assert row.test_loss == pytest.approx(vl, rel=1e-6) and row.test_acc == pytest.approx(va)


def test_train_and_test_data_are_the_training_split(tiny_run):
    tr, te = tiny_run.train_data(), tiny_run.test_data()
    p = tiny_run.params.p
    assert len(tr) == round(0.6 * p * p) and len(tr) + len(te) == p * p
    codes = torch.cat([tr.tensors[0], te.tensors[0]]) @ torch.tensor([p, 1])
    assert torch.equal(codes.sort().values, torch.arange(p * p))
    assert torch.equal(tiny_run.train_data().tensors[0], tr.tensors[0])


def test_training_is_bitwise_reproducible(tmp_path, tiny_params):
    a = train(tiny_params, tmp_path / "a", show_progress=False)
    b = train(tiny_params, tmp_path / "b", show_progress=False)
    for i in range(a.n_checkpoints):
        _assert_same_state(_state(a, i), _state(b, i))
    pd.testing.assert_frame_equal(a.record, b.record)
    c = train(dataclasses.replace(tiny_params, run_id=1), tmp_path / "c", show_progress=False)
    assert not torch.equal(_state(a, -1)["embed.weight"], _state(c, -1)["embed.weight"])


def test_trajectory_does_not_depend_on_the_checkpoint_schedule(tmp_path, tiny_params):
    five = train(tiny_params, tmp_path / "five", show_progress=False)  # steps 0, 5, 10, 15, 20
    three = train(
        dataclasses.replace(tiny_params, n_save_model_checkpoints=3), tmp_path / "three", show_progress=False
    )
    assert three.steps == [0, 10, 20]
    _assert_same_state(_state(three, 1), _state(five, 2))
    _assert_same_state(_state(three, 2), _state(five, 4))


def _manual_training(params: ExperimentParams, weight_decay_at) -> dict[str, torch.Tensor]:
    """An independent re-implementation of the training loop, with a per-step weight-decay schedule."""
    model = build_model(params)
    x, y = _split_tensors(params)
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=params.lr)
    g = generator(params.run_id, "minibatches")
    for t in range(params.n_batches):
        opt.param_groups[0]["weight_decay"] = weight_decay_at(t)
        idx = torch.randint(0, len(y), (params.batch_size,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {k: v.detach() for k, v in model.state_dict().items()}


def _split_tensors(params):
    from lambdahat.modadd.data import make_dataset, train_test_split

    x, y = make_dataset(params.p, params.use_random_dataset, seed=params.run_id)
    return train_test_split(x, y, params.train_frac, seed=params.run_id)[0].tensors


def test_no_weight_decay_steps_really_have_no_decay(tmp_path, tiny_params):
    wd, k = 0.05, 8
    params = dataclasses.replace(tiny_params, weight_decay=wd, num_no_weight_decay_steps=k)
    run = train(params, tmp_path / "nowd", show_progress=False)
    manual = _manual_training(params, lambda t: 0.0 if t < k else wd)
    _assert_same_state(_state(run, -1), manual)
    # and the schedule matters: decay from the start gives different weights
    always = _manual_training(params, lambda t: wd)
    assert not torch.equal(always["embed.weight"], manual["embed.weight"])
    # before step k the run is identical to a run without any weight decay
    free = train(dataclasses.replace(params, weight_decay=0.0), tmp_path / "free", show_progress=False)
    _assert_same_state(_state(run, 1), _state(free, 1))  # step 5 < k
    assert not torch.equal(_state(run, 2)["embed.weight"], _state(free, 2)["embed.weight"])  # step 10 > k


def test_plain_training_matches_the_manual_loop(tiny_run, tiny_params):
    manual = _manual_training(tiny_params, lambda t: tiny_params.weight_decay)
    _assert_same_state(_state(tiny_run, -1), manual)


def test_freeze_middle_run_keeps_the_middle_fixed(tmp_path, tiny_params):
    run = train(dataclasses.replace(tiny_params, freeze_middle=True), tmp_path / "f", show_progress=False)
    first, last = _state(run, 0), _state(run, -1)
    for name in first:
        moved = not torch.equal(first[name], last[name])
        assert moved == name.startswith(("embed", "unembed")), name


def test_interrupted_run_loads_with_the_checkpoints_that_exist(tiny_run):
    path = tiny_run.path
    # simulate a crash after checkpoint 2 was saved but before its row was complete
    for i in (3, 4):
        (path / "checkpoints" / f"ckpt_{i:04d}.safetensors").unlink()
    lines = (path / "record.csv").read_text().splitlines(keepends=True)
    (path / "record.csv").write_text("".join(lines[:3]) + lines[3][:7])  # header, rows 0-1, half of row 2
    run = load_run(path)
    assert run.n_checkpoints == 3 and run.steps == [0, 5, 10]
    assert run.record["checkpoint"].tolist() == [0, 1]
    _assert_same_state(dict(run.model(-1).state_dict()), _state(tiny_run, 2))
    with pytest.raises(IndexError, match=r"valid indices are 0\.\.2"):
        run.model(3)


def test_record_rows_beyond_the_files_are_dropped_and_gaps_warn(tiny_run):
    path = tiny_run.path
    (path / "checkpoints" / "ckpt_0002.safetensors").unlink()
    with pytest.warns(UserWarning, match=r"ignoring checkpoint file\(s\) \[3, 4\]"):
        run = load_run(path)
    assert run.n_checkpoints == 2 and run.record["checkpoint"].tolist() == [0, 1]


def test_run_with_no_checkpoint_yet(tiny_run):
    for q in (tiny_run.path / "checkpoints").iterdir():
        q.unlink()
    (tiny_run.path / "record.csv").unlink()
    run = load_run(tiny_run.path)
    assert run.n_checkpoints == 0 and len(run.record) == 0 and run.steps == []
    with pytest.raises(IndexError, match="no checkpoints yet"):
        run.model()


@pytest.mark.parametrize("bad", [5, -6, 100])
def test_bad_checkpoint_index(tiny_run, bad):
    with pytest.raises(IndexError, match=rf"checkpoint {bad} does not exist.*5 checkpoint\(s\).*0\.\.4"):
        tiny_run.model(bad)


def test_checkpoint_index_must_be_int(tiny_run):
    with pytest.raises(TypeError, match="must be an int"):
        tiny_run.model(1.0)


def test_load_run_errors(tmp_path, tiny_run):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no params.json"):
        load_run(tmp_path / "empty")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "params.json").write_text(json.dumps({"lr": 0.1, "p": 53}))
    with pytest.raises(ValueError, match="not a lambdahat modadd run"):
        load_run(foreign)
    (foreign / "params.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_run(foreign)
    (foreign / "params.json").write_text(json.dumps({"format": RUN_FORMAT, "version": 99, "params": {}}))
    with pytest.raises(ValueError, match="version 99"):
        load_run(foreign)
    with pytest.raises(NotADirectoryError):
        load_run(tiny_run.path / "params.json")


def test_train_refuses_to_overwrite_unless_asked(tmp_path, tiny_run, tiny_params):
    with pytest.raises(FileExistsError, match="overwrite=True"):
        train(tiny_params, tiny_run.path, show_progress=False)
    again = train(
        dataclasses.replace(tiny_params, n_save_model_checkpoints=3),
        tiny_run.path,
        show_progress=False,
        overwrite=True,
    )
    assert again.n_checkpoints == 3 and len(list((tiny_run.path / "checkpoints").iterdir())) == 3
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileNotFoundError, match="params.json"):
        train(tiny_params, foreign, show_progress=False, overwrite=True)
    assert (foreign / "notes.txt").exists()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"n_save_model_checkpoints": 1}, "n_save_model_checkpoints"),
        ({"n_save_model_checkpoints": 22}, r"\[2, 21\]"),
        ({"train_frac": 0.0}, "train_frac"),
        ({"activation": "tanh"}, "activation"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"p": 1}, "p must be"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_no_weight_decay_steps": -1}, "num_no_weight_decay_steps"),
    ],
)
def test_params_validation(tiny_params, change, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(tiny_params, **change)


def test_params_from_dict_rejects_unknown_keys(tiny_params):
    d = tiny_params.to_dict()
    assert ExperimentParams.from_dict(d) == tiny_params
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['movie'\]"):
        ExperimentParams.from_dict({**d, "movie": True})


def test_progress_bar_is_printed(tmp_path, tiny_params, capsys):
    train(tiny_params, tmp_path / "bar", show_progress=True)
    err = capsys.readouterr().err
    assert "modadd p=7" in err and "20/20" in err


def test_random_label_run_trains_on_random_labels(tmp_path, tiny_params):
    run = train(
        dataclasses.replace(tiny_params, use_random_dataset=True), tmp_path / "rnd", show_progress=False
    )
    x, y = run.train_data().tensors
    assert (y != (x[:, 0] + x[:, 1]) % 7).any()
