"""Shared small models and loaders for the estimator tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class TinyMLP(nn.Module):
    """4 -> 8 -> 3 classifier with a BatchNorm (buffers) and dropout (mode-sensitive)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


@pytest.fixture
def classification_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return TensorDataset(x, y)


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    model = TinyMLP()
    model.train()
    with torch.no_grad():  # give the BatchNorm non-trivial running statistics
        model(torch.randn(32, 4))
    return model


@pytest.fixture
def planned_facts(monkeypatch) -> list:
    """The :class:`lambdahat.plan.RunFacts` of every run planned while the test runs, in order."""
    import lambdahat.problem as problem_module

    seen: list = []
    real = problem_module.plan_execution

    def spy(facts):
        seen.append(facts)
        return real(facts)

    monkeypatch.setattr(problem_module, "plan_execution", spy)
    return seen


@pytest.fixture
def loader(classification_data):
    return DataLoader(classification_data, batch_size=32, shuffle=True)


FAST = dict(draws=12, chains=4, burnin_steps=4, learning_rate=1e-3, localization=10.0)
