"""The reusable pieces exported by appendix-A/appendix-A.ipynb (via appendix-A/previous_chapters.py)."""
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import exports

pc = exports("appendix-A")


def test_network_shapes_and_parameter_count():
    model = pc.NeuralNetwork(2, 2)
    # (2*30 + 30) + (30*20 + 20) + (20*2 + 2), counted by hand
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 752
    assert model(torch.zeros(5, 2)).shape == (5, 2)
    assert pc.NeuralNetwork(50, 3)(torch.zeros(1, 50)).shape == (1, 3)
    with pytest.raises(ValueError, match="got 0 and 2"):
        pc.NeuralNetwork(0, 2)


def test_toy_data_and_dataset():
    X_train, y_train, X_test, y_test = pc.make_toy_data()
    assert X_train.shape == (8, 2) and X_test.shape == (4, 2)
    assert y_train.tolist().count(0) == 4 and y_test.tolist().count(1) == 2
    ds = pc.ToyDataset(X_train, y_train)
    assert len(ds) == 8
    x, y = ds[3]
    assert torch.equal(x, X_train[3]) and y.item() == y_train[3].item()
    with pytest.raises(ValueError, match="features has 8 rows but labels has 4"):
        pc.ToyDataset(X_train, y_test)


class _Fixed(torch.nn.Module):
    """Predicts class 1 exactly when the first feature is positive."""

    def forward(self, x):
        return torch.stack([-x[:, 0], x[:, 0]], dim=1)


def test_compute_accuracy_against_a_known_classifier():
    X_train, y_train, X_test, y_test = pc.make_toy_data()
    # the rule "class 1 iff feature 1 > 0" is right on all the toy data ...
    assert pc.compute_accuracy(_Fixed(), DataLoader(pc.ToyDataset(X_train, y_train), batch_size=3)) == 1.0
    # ... and right on exactly 1 of 4 examples after flipping three labels
    flipped = torch.tensor([1, 0, 1, 1])
    assert pc.compute_accuracy(_Fixed(), DataLoader(pc.ToyDataset(X_test, flipped), batch_size=3)) == 0.25
    empty = pc.ToyDataset(X_test[:0], y_test[:0])
    with pytest.raises(ValueError, match="no examples"):
        pc.compute_accuracy(_Fixed(), DataLoader(empty, batch_size=2))
