# Generated from the cells tagged "export" in appendix-A/appendix-A.ipynb.
# Edit the notebooks, not this file. Regenerate with: python tests/generate_previous_chapters.py

import torch
from torch.utils.data import Dataset


# ---- from appendix-A/appendix-A.ipynb ----

class NeuralNetwork(torch.nn.Module):
    """A multilayer perceptron: num_inputs -> 30 -> 20 -> num_outputs, ReLU in between."""

    def __init__(self, num_inputs, num_outputs):
        super().__init__()
        if num_inputs < 1 or num_outputs < 1:
            raise ValueError(f"num_inputs and num_outputs must be >= 1, got {num_inputs} and {num_outputs}")
        self.layers = torch.nn.Sequential(
            # first hidden layer
            torch.nn.Linear(num_inputs, 30),
            torch.nn.ReLU(),
            # second hidden layer
            torch.nn.Linear(30, 20),
            torch.nn.ReLU(),
            # output layer: one logit per class
            torch.nn.Linear(20, num_outputs),
        )

    def forward(self, x):
        return self.layers(x)


def make_toy_data():
    """Return (X_train, y_train, X_test, y_test): 8 + 4 points in 2D, two well-separated classes."""
    X_train = torch.tensor([
        [-1.2, 3.1], [2.3, -1.1], [-0.9, 2.9], [2.7, -1.5],
        [-0.5, 2.6], [1.9, -0.8], [-1.5, 2.2], [3.1, -1.3],
    ])
    y_train = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    X_test = torch.tensor([[-0.8, 2.8], [2.6, -1.6], [-1.1, 2.4], [2.2, -0.9]])
    y_test = torch.tensor([0, 1, 0, 1])
    return X_train, y_train, X_test, y_test


class ToyDataset(Dataset):
    """A Dataset over a features tensor and a labels tensor with the same number of rows."""

    def __init__(self, features, labels):
        if len(features) != len(labels):
            raise ValueError(f"features has {len(features)} rows but labels has {len(labels)}")
        self.features = features
        self.labels = labels

    def __getitem__(self, index):
        return self.features[index], self.labels[index]

    def __len__(self):
        return len(self.labels)


def compute_accuracy(model, dataloader, device="cpu"):
    """Fraction (0.0 to 1.0) of the examples in `dataloader` that `model` classifies correctly."""
    model.eval()
    correct, total = 0, 0
    with torch.no_grad():
        for features, labels in dataloader:
            features, labels = features.to(device), labels.to(device)
            predictions = torch.argmax(model(features), dim=1)
            correct += (predictions == labels).sum().item()
            total += len(labels)
    if total == 0:
        raise ValueError("compute_accuracy got a data loader with no examples")
    return correct / total
