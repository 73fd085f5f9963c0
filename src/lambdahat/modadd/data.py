"""The modular-addition data set: every pair (a, b) of residues mod p and its label.

The task is the map ``(a, b) -> (a + b) mod p`` on all ``p²`` pairs. The memorization control replaces the
label by a fixed random function of the pair, so nothing but a lookup table can fit it.
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from lambdahat.modadd._seeding import generator

__all__ = ["all_pairs", "make_dataset", "train_test_split"]


def _check_p(p: int, where: str) -> int:
    if isinstance(p, bool) or not isinstance(p, int):
        raise TypeError(
            f"{where}: p must be an int (the modulus), got {type(p).__name__} {p!r}; pass e.g. p=53."
        )
    if p < 2:
        raise ValueError(
            f"{where}: p must be an integer >= 2 (the modulus), got p={p}; "
            "use a prime such as p=53 for the grokking experiments."
        )
    return p


def all_pairs(p: int) -> torch.Tensor:
    """All pairs of residues mod ``p`` in row-major order.

    Row ``a * p + b`` holds ``(a, b)``, for ``a, b = 0 .. p-1``.

    Parameters
    ----------
    p : int
        The modulus, ``p >= 2``.

    Returns
    -------
    torch.Tensor
        LongTensor of shape ``[p², 2]``.

    Examples
    --------
    >>> all_pairs(2).tolist()
    [[0, 0], [0, 1], [1, 0], [1, 1]]
    """
    _check_p(p, "all_pairs")
    r = torch.arange(p)
    return torch.stack(torch.meshgrid(r, r, indexing="ij"), dim=-1).reshape(p * p, 2)


def make_dataset(
    p: int, use_random_dataset: bool = False, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``p²`` inputs of modular addition and their labels.

    The true label of ``(a, b)`` is ``y = (a + b) mod p``. With ``use_random_dataset=True`` (the memorization
    control) the label is instead ``y = f(a, b)`` for a function ``f: Z_p² -> Z_p`` drawn uniformly at
    random once, from a generator seeded by ``seed`` alone: the same ``(p, seed)`` always gives the same
    labels.

    Parameters
    ----------
    p : int
        The modulus, ``p >= 2``.
    use_random_dataset : bool, default False
        Replace the true labels by the random function of the pair.
    seed : int, default 0
        Seed of the random labels (ignored when ``use_random_dataset`` is False).

    Returns
    -------
    x : torch.Tensor
        LongTensor ``[p², 2]`` of pairs ``(a, b)``, row ``a * p + b`` (see :func:`all_pairs`).
    y : torch.Tensor
        LongTensor ``[p²]`` of labels in ``0 .. p-1``.

    Examples
    --------
    >>> x, y = make_dataset(5)
    >>> x.shape, y.shape
    (torch.Size([25, 2]), torch.Size([25]))
    >>> bool((y == (x[:, 0] + x[:, 1]) % 5).all())
    True
    """
    _check_p(p, "make_dataset")
    x = all_pairs(p)
    if use_random_dataset:
        y = torch.randint(0, p, (p * p,), generator=generator(seed, "random-labels"))
    else:
        y = (x[:, 0] + x[:, 1]) % p
    return x, y


def train_test_split(
    x: torch.Tensor, y: torch.Tensor, train_frac: float, seed: int = 0
) -> tuple[TensorDataset, TensorDataset]:
    """Shuffle the examples with a seeded permutation and split them into train and test sets.

    The first ``n_train = max(1, round(train_frac · n))`` examples of the permutation form the training set
    and the remaining ``n - n_train`` the test set (empty when ``train_frac = 1``).

    Parameters
    ----------
    x, y : torch.Tensor
        Inputs and labels with the same first dimension ``n``.
    train_frac : float
        Fraction of examples used for training, in ``(0, 1]``.
    seed : int, default 0
        Seed of the permutation.

    Returns
    -------
    train, test : TensorDataset
        ``TensorDataset(x[idx], y[idx])`` for the two parts.

    Examples
    --------
    >>> x, y = make_dataset(7)
    >>> train, test = train_test_split(x, y, train_frac=0.5, seed=1)
    >>> len(train), len(test)
    (24, 25)
    """
    if (
        not isinstance(train_frac, (int, float))
        or isinstance(train_frac, bool)
        or not 0.0 < train_frac <= 1.0
    ):
        raise ValueError(
            f"train_test_split: train_frac must be a number in (0, 1], got {train_frac!r}; "
            "pass the fraction of the p² pairs to train on, e.g. train_frac=0.4."
        )
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"train_test_split: x and y must have the same number of rows, got {x.shape[0]} and "
            f"{y.shape[0]}; "
            "pass the pair (x, y) returned by make_dataset."
        )
    n = x.shape[0]
    n_train = min(n, max(1, round(train_frac * n)))
    perm = torch.randperm(n, generator=generator(seed, "train-test-split"))
    train_idx, test_idx = perm[:n_train], perm[n_train:]
    return TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[test_idx], y[test_idx])
