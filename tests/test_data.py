"""DataFeed: identical batches per pass in every feed with the same seed, whatever RNG the loader shuffles with;
PassLedger catches loaders whose passes cannot be controlled."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    SubsetRandomSampler,
    TensorDataset,
)

from lambdahat.data import DataFeed, PassLedger, default_unpack, move_to

N, BATCH, PASSES = 20, 4, 3
CPU = torch.device("cpu")


class MapDataset(Dataset):
    """A map-style dataset that is not a TensorDataset (so DataLoader collates samples)."""

    def __init__(self, n: int = N) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.tensor([float(i)]), torch.tensor(i)


class NumpyShuffledStream(IterableDataset):
    """Shuffles with its own numpy RNG on every iteration: lambdahat cannot control it."""

    def __init__(self, n: int = N) -> None:
        self.n = n
        self.rng = np.random.default_rng(0)

    def __iter__(self):
        for i in self.rng.permutation(self.n):
            yield torch.tensor([float(i)]), torch.tensor(int(i))


def dataset(kind: str):
    if kind == "tensor":
        return TensorDataset(torch.arange(N, dtype=torch.float32).unsqueeze(1), torch.arange(N))
    return MapDataset()


def make_loader(case: str, kind: str, g: torch.Generator | None = None) -> DataLoader:
    ds = dataset(kind)
    g = torch.Generator().manual_seed(1) if g is None else g
    if case == "loader_generator":
        return DataLoader(ds, batch_size=BATCH, shuffle=True, generator=g)
    if case == "random_sampler":
        return DataLoader(ds, batch_size=BATCH, sampler=RandomSampler(ds, generator=g))
    if case == "batch_sampler":
        return DataLoader(ds, batch_sampler=BatchSampler(RandomSampler(ds, generator=g), BATCH, False))
    if case == "subset_sampler":
        return DataLoader(ds, batch_size=BATCH, sampler=SubsetRandomSampler(range(0, N, 2), generator=g))
    if case == "replacement":  # draws lazily every 32 samples
        sampler = RandomSampler(ds, replacement=True, num_samples=70, generator=g)
        return DataLoader(ds, batch_size=BATCH, sampler=sampler)
    if case == "global":
        return DataLoader(ds, batch_size=BATCH, shuffle=True)
    raise AssertionError(case)


CASES = ["loader_generator", "random_sampler", "batch_sampler", "subset_sampler", "replacement"]


def ids_of(batch) -> tuple[int, ...]:
    return tuple(int(v) for v in batch[1])


def passes(feed: DataFeed, loader, n_passes: int = PASSES) -> list[tuple[int, ...]]:
    return [ids_of(b) for b in itertools.islice(iter(feed), n_passes * len(loader))]


@pytest.mark.parametrize("kind", ["tensor", "map"])
@pytest.mark.parametrize("case", CASES)
def test_same_seed_same_batches_in_every_feed(case, kind):
    loader = make_loader(case, kind)
    a = DataFeed(loader, None, CPU, seed=5)
    b = DataFeed(loader, None, CPU, seed=5)
    assert a.fast == (kind == "tensor")
    seq_a = passes(a, loader)
    seq_b = passes(b, loader)
    assert seq_a == seq_b
    per_pass = len(loader)
    first, second = seq_a[:per_pass], seq_a[per_pass : 2 * per_pass]
    assert first != second  # each pass is shuffled anew
    assert [ids_of(x) for x in a.one_pass()] == [ids_of(x) for x in b.one_pass()]


@pytest.mark.parametrize("kind", ["tensor", "map"])
@pytest.mark.parametrize("case", CASES)
def test_interleaved_feeds_agree(case, kind):
    loader = make_loader(case, kind)
    a, b = iter(DataFeed(loader, None, CPU, seed=3)), iter(DataFeed(loader, None, CPU, seed=3))
    got_a, got_b = [], []
    for _ in range(PASSES * len(loader)):
        got_a.append(ids_of(next(a)))
        got_b.append(ids_of(next(b)))
    assert got_a == got_b


@pytest.mark.parametrize("kind", ["tensor", "map"])
@pytest.mark.parametrize("case", [*CASES, "global"])
def test_different_seeds_give_different_orders(case, kind):
    loader = make_loader(case, kind)
    one = passes(DataFeed(loader, None, CPU, seed=1), loader)
    two = passes(DataFeed(loader, None, CPU, seed=2), loader)
    assert one != two


@pytest.mark.parametrize("kind", ["tensor", "map"])
@pytest.mark.parametrize("case", [*CASES, "global"])
def test_caller_generator_and_global_rng_are_untouched(case, kind):
    g = torch.Generator().manual_seed(11)
    torch.manual_seed(99)
    loader = make_loader(case, kind, g)
    g_before, global_before = g.get_state(), torch.random.get_rng_state()
    feed = DataFeed(loader, None, CPU, seed=4)
    passes(feed, loader)
    list(feed.one_pass())
    assert torch.equal(g.get_state(), g_before)
    assert torch.equal(torch.random.get_rng_state(), global_before)


@pytest.mark.parametrize("kind", ["tensor", "map"])
@pytest.mark.parametrize("case", CASES)
def test_two_threads_get_identical_sequences(case, kind):
    loader = make_loader(case, kind)
    n_passes = 15
    results: dict[int, list] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(slot: int) -> None:
        try:
            feed = DataFeed(loader, None, CPU, seed=8)
            start.wait()
            results[slot] = passes(feed, loader, n_passes)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results[0] == results[1]
    assert len(results[0]) == n_passes * len(loader)


class AugmentingDataset(MapDataset):
    """Draws from torch's RNG per sample, like a random augmentation."""

    def __getitem__(self, i: int):
        return torch.tensor([float(i)]) + torch.rand(1), torch.tensor(i)


def test_worker_randomness_reproduces_with_loader_generator():
    g = torch.Generator().manual_seed(1)
    loader = DataLoader(AugmentingDataset(8), batch_size=4, shuffle=True, num_workers=2, generator=g)
    before = g.get_state()
    xs = [[x for x, _ in itertools.islice(iter(DataFeed(loader, None, CPU, seed=2)), 4)] for _ in range(2)]
    for x0, x1 in zip(*xs):
        assert torch.equal(x0, x1)
    assert torch.equal(g.get_state(), before)


def test_ledger_catches_an_iterable_dataset_that_reshuffles():
    loader = DataLoader(NumpyShuffledStream(), batch_size=BATCH)
    ledger = PassLedger()
    first = DataFeed(loader, None, CPU, seed=0, ledger=ledger)
    second = DataFeed(loader, None, CPU, seed=0, ledger=ledger)
    next(iter(first))
    with pytest.raises(ValueError, match="chain_batch") as info:
        next(iter(second))
    assert "pass 0" in str(info.value)
    assert "single device" in str(info.value)


def test_ledger_checks_the_l0_pass():
    loader = DataLoader(NumpyShuffledStream(), batch_size=BATCH)
    ledger = PassLedger()
    list(DataFeed(loader, None, CPU, seed=0, ledger=ledger).one_pass())
    with pytest.raises(ValueError, match=r"pass -1 .*chain_batch"):
        list(DataFeed(loader, None, CPU, seed=0, ledger=ledger).one_pass())


@pytest.mark.parametrize("kind", ["tensor", "map"])
@pytest.mark.parametrize("case", [*CASES, "global"])
def test_ledger_accepts_a_deterministic_loader(case, kind):
    loader = make_loader(case, kind)
    ledger = PassLedger()
    feeds = [DataFeed(loader, None, CPU, seed=6, ledger=ledger) for _ in range(3)]
    for feed in feeds:
        list(feed.one_pass())
        passes(feed, loader)
    # an unrelated seed over the same ledger is another stream, not a conflict
    passes(DataFeed(loader, None, CPU, seed=7, ledger=ledger), loader)
    assert len(ledger) == 2 * (PASSES + 1) - 1


def test_ledger_fingerprint_of_nested_batches():
    ledger = PassLedger()
    batch = {
        "x": torch.arange(6.0).reshape(3, 2),
        "meta": [object(), "a", 3],
        "y": (torch.tensor([1, 2, 3]),),
    }
    ledger.check(0, batch)
    ledger.check(0, {**batch, "meta": [object(), "a", 3]})  # default reprs hold addresses: not compared
    reordered = {**batch, "x": torch.arange(6.0).reshape(3, 2)[[1, 0, 2]]}  # same sum, other order
    with pytest.raises(ValueError, match="pass 0"):
        ledger.check(0, reordered)
    with pytest.raises(ValueError):
        ledger.check(0, {**batch, "meta": [object(), "b", 3]})
    ledger.check(1, reordered)  # another pass records its own
    ledger.check(0, {"x": torch.tensor([float("nan")])}, seed=1)
    ledger.check(0, {"x": torch.tensor([float("nan")])}, seed=1)  # NaN sums compare equal


def test_empty_loader_raises():
    loader = DataLoader(TensorDataset(torch.zeros(3, 1), torch.zeros(3)), batch_size=4, drop_last=True)
    with pytest.raises(ValueError, match="no batch"):
        next(iter(DataFeed(loader, None, CPU, seed=0)))


def test_unpack_fn_and_float_dtype():
    loader = DataLoader(MapDataset(), batch_size=BATCH)
    feed = DataFeed(loader, lambda b: (b[0], b[1]), CPU, seed=0, float_dtype=torch.float64)
    x, y = next(iter(feed))
    assert x.dtype == torch.float64 and y.dtype == torch.int64


def test_default_unpack():
    x, y = torch.zeros(2), torch.ones(2)
    assert default_unpack((x, y)) == (x, y)
    assert default_unpack([x, y]) == (x, y)
    with pytest.raises(TypeError, match=r"dict with keys \['inputs', 'labels'\].*unpack_fn"):
        default_unpack({"inputs": x, "labels": y})
    with pytest.raises(TypeError, match="tuple of 3 elements"):
        default_unpack((x, y, x))
    with pytest.raises(TypeError, match="yielded a Tensor"):
        default_unpack(x)


def test_move_to_nested_and_float_dtype():
    obj = {"a": (torch.zeros(2), [torch.arange(3)]), "b": "text", "c": 1.5}
    out = move_to(obj, CPU, float_dtype=torch.float64)
    assert isinstance(out["a"], tuple) and isinstance(out["a"][1], list)
    assert out["a"][0].dtype == torch.float64
    assert out["a"][1][0].dtype == torch.int64  # integers keep their dtype
    assert out["b"] == "text" and out["c"] == 1.5
    same = move_to(torch.zeros(2, dtype=torch.float16), CPU)
    assert same.dtype == torch.float16


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("batch_size", [1, 10, 103, 200])
@pytest.mark.parametrize("own_generator", [True, False])
@pytest.mark.parametrize("num_samples", [None, 250, 40])
def test_batch_indices_of_a_pass_equal_the_batch_samplers(
    shuffle, drop_last, batch_size, own_generator, num_samples
):
    """The fast path draws a pass's order as the sampler draws it and cuts it into batches: the same batches as
    torch's BatchSampler yields (the samplers' generator calls are replicated; this pins them to torch's)."""
    from lambdahat.data import _pass_indices

    data = TensorDataset(torch.arange(103))
    generator = torch.Generator().manual_seed(9) if own_generator else None
    sampler = (
        RandomSampler(data, num_samples=num_samples, generator=generator)
        if shuffle
        else SequentialSampler(data)
    )
    loader = DataLoader(data, batch_size=batch_size, sampler=sampler, drop_last=drop_last)
    state = generator.get_state() if generator is not None else None
    torch.manual_seed(5)
    expected = [torch.as_tensor(b) for b in loader.batch_sampler]
    if generator is not None:
        generator.set_state(state)
    torch.manual_seed(5)
    order, sizes = _pass_indices(loader.batch_sampler)
    got = list(torch.split(order, sizes))
    assert len(got) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


@pytest.mark.parametrize("block_bytes", [1, 200, 1 << 30])
def test_gathered_batches_equal_one_indexing_per_batch(block_bytes, monkeypatch):
    """Batches cut from blocks gathered at once (any block size, down to one batch per block) hold the values of
    one indexing per batch, in order, each contiguous."""
    import lambdahat.data as data_module

    monkeypatch.setattr(data_module, "GATHER_BLOCK_BYTES", block_bytes)
    g = torch.Generator().manual_seed(0)
    tensors = (torch.randn(50, 3, generator=g), torch.randint(0, 9, (50,), generator=g))
    order = torch.randperm(50, generator=g)[:47]
    sizes = [10, 10, 10, 10, 7]
    got = list(data_module._gathered_batches(tensors, order, sizes))
    expected = [tuple(t[idx] for t in tensors) for idx in torch.split(order, sizes)]
    assert len(got) == len(expected)
    for batch, ref in zip(got, expected):
        assert all(torch.equal(a, b) and a.is_contiguous() for a, b in zip(batch, ref))


def test_custom_batch_sampler_goes_through_the_fast_path_unchanged():
    """A batch sampler that is not torch's BatchSampler is listed as it yields (batches of any sizes)."""
    from lambdahat.data import _pass_indices

    order, sizes = _pass_indices([[3, 1], [0], [2, 4, 5]])
    assert sizes == [2, 1, 3]
    assert order.tolist() == [3, 1, 0, 2, 4, 5]


def test_batch_shapes_are_fixed_only_for_tensor_datasets_through_a_batch_sampler():
    """Compiled steps use static graphs only where every batch but a pass's last has one shape."""
    from lambdahat.data import batch_shapes_fixed

    data = TensorDataset(torch.randn(10, 2), torch.randn(10))
    assert batch_shapes_fixed(DataLoader(data, batch_size=4, shuffle=True))
    assert not batch_shapes_fixed(DataLoader(data, batch_size=4, collate_fn=lambda b: b))
    assert not batch_shapes_fixed(DataLoader(data, batch_size=None))
    assert not batch_shapes_fixed([(torch.randn(3, 2), torch.randn(3))])


def test_feed_counts_the_batches_of_its_first_pass():
    loader = [(torch.full((2, 1), float(i)), torch.zeros(2)) for i in range(3)]
    feed = DataFeed(loader, None, CPU, seed=0)
    stream = iter(feed)
    assert feed.batches_per_pass is None
    for _ in range(3):
        next(stream)
    assert feed.batches_per_pass is None  # the pass has not ended until its next batch is asked for
    next(stream)
    assert feed.batches_per_pass == 3
