import pytest
import torch

from lambdahat.modadd import all_pairs, make_dataset, train_test_split


@pytest.mark.parametrize("p", [2, 7, 13])
def test_all_pairs_once_each_in_row_major_order(p):
    x, y = make_dataset(p)
    assert x.dtype == torch.int64 and y.dtype == torch.int64
    assert x.shape == (p * p, 2) and y.shape == (p * p,)
    assert torch.equal(x[:, 0] * p + x[:, 1], torch.arange(p * p))
    assert torch.equal(y, (x[:, 0] + x[:, 1]) % p)
    assert torch.equal(all_pairs(p), x)


def test_random_labels_are_a_fixed_function_of_the_pair_and_the_seed():
    p = 13
    x, y_true = make_dataset(p)
    x_r, y_r = make_dataset(p, use_random_dataset=True, seed=3)
    assert torch.equal(x_r, x)
    assert y_r.min() >= 0 and y_r.max() < p
    # a random function agrees with (a + b) mod p on about 1/p of the pairs
    assert (y_r == y_true).double().mean() < 0.25
    assert torch.equal(make_dataset(p, use_random_dataset=True, seed=3)[1], y_r)
    assert not torch.equal(make_dataset(p, use_random_dataset=True, seed=4)[1], y_r)
    # the seed only matters for the random labels
    assert torch.equal(make_dataset(p, seed=5)[1], y_true)


@pytest.mark.parametrize(("train_frac", "n_train"), [(0.5, 24), (0.3, 15), (1.0, 49), (0.001, 1)])
def test_split_sizes_partition_and_seeds(train_frac, n_train):
    x, y = make_dataset(7)
    train, test = train_test_split(x, y, train_frac=train_frac, seed=0)
    assert len(train) == n_train and len(test) == 49 - n_train
    codes = torch.cat([train.tensors[0], test.tensors[0]]) @ torch.tensor([7, 1])
    assert torch.equal(codes.sort().values, torch.arange(49))
    xt, yt = train.tensors
    assert torch.equal(yt, (xt[:, 0] + xt[:, 1]) % 7)


def test_split_is_seeded_and_shuffled():
    x, y = make_dataset(11)
    a, _ = train_test_split(x, y, 0.5, seed=1)
    b, _ = train_test_split(x, y, 0.5, seed=1)
    c, _ = train_test_split(x, y, 0.5, seed=2)
    assert torch.equal(a.tensors[0], b.tensors[0])
    assert not torch.equal(a.tensors[0], c.tensors[0])
    assert not torch.equal(a.tensors[0], x[: len(a)])  # not the unshuffled prefix


@pytest.mark.parametrize("p", [1, 0, -3])
def test_small_p_is_rejected_with_a_fix(p):
    with pytest.raises(ValueError, match=rf"p must be an integer >= 2.*got p={p}.*p=53"):
        make_dataset(p)


def test_non_int_p_is_rejected():
    with pytest.raises(TypeError, match="p must be an int"):
        make_dataset(7.0)


@pytest.mark.parametrize("frac", [0, 0.0, -0.1, 1.5, float("nan")])
def test_bad_train_frac_is_rejected_with_a_fix(frac):
    x, y = make_dataset(5)
    with pytest.raises(ValueError, match=r"train_frac must be a number in \(0, 1\], got .*train_frac=0.4"):
        train_test_split(x, y, train_frac=frac)


def test_mismatched_xy_is_rejected():
    x, y = make_dataset(5)
    with pytest.raises(ValueError, match="same number of rows"):
        train_test_split(x, y[:-1], train_frac=0.5)
