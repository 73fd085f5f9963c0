"""Without the extra installed, the helpers that need it say how to install it (runs whether or not it is)."""

from __future__ import annotations

import sys

import pytest
import torch

from lambdahat.lm import describe_selection, nbeta_for_tokens, next_token_loss, select


def test_without_transformers_the_helpers_say_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r'pip install "lambdahat\[lm\]"'):
        select(torch.nn.Linear(2, 2), "l0")
    with pytest.raises(ImportError, match=r'pip install "lambdahat\[lm\]"'):
        describe_selection(torch.nn.Linear(2, 2), {"weight": True})


def test_losses_and_nbeta_need_only_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    ids = torch.tensor([[1, 2, 3, 0]])
    batch = {"input_ids": ids, "attention_mask": torch.tensor([[1, 1, 1, 0]])}
    logits = torch.nn.functional.one_hot(ids, 5).float()
    losses, mask = next_token_loss(lambda **kw: logits, batch)
    assert mask.tolist() == [[True, True, False]] and losses.shape == (1, 3)
    assert nbeta_for_tokens([batch]).n == 2


@pytest.mark.parametrize("name", ["lambdahat.lm", "lambdahat.lm.losses", "lambdahat.lm.nbeta"])
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
