"""Track neural collapse while training a bias-free ReLU MLP on the UFM+ objective.

The training loss is the batch-mean cross-entropy plus `UFMRegularizer`, a
stochastic estimate of the UFM+ objective whose lambdas are the theorem's.
Every `eval_every` epochs an `NCTracker` evaluates the penultimate features.
Run it with ``python docs/examples/torch_training.py``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from ncgeom_torch import FeatureTap, NCTracker, UFMRegularizer


def imbalanced_mixture(counts: tuple[int, ...], dim: int = 10, seed: int = 0) -> TensorDataset:
    """A Gaussian mixture with `counts[k]` samples of class k."""
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(len(counts), dim, generator=g)
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    inputs = centres[labels] + torch.randn(len(labels), dim, generator=g)
    return TensorDataset(inputs, labels)


def train(
    counts: tuple[int, ...] = (200, 100, 50, 25),
    *,
    epochs: int = 60,
    lambda_w: float = 5e-4,
    lambda_h: float = 5e-4,
    width: int = 64,
    eval_every: int = 10,
    seed: int = 0,
) -> NCTracker:
    """Train, evaluating neural collapse every `eval_every` epochs; return the tracker."""
    data = imbalanced_mixture(counts, seed=seed)
    torch.manual_seed(seed)
    classifier = nn.Linear(width, len(counts), bias=False)  # the theorem is bias-free
    model = nn.Sequential(
        nn.Linear(data.tensors[0].shape[1], width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),  # the penultimate features are non-negative: UFM+
        classifier,
    )
    train_loader = DataLoader(data, batch_size=64, shuffle=True)
    eval_loader = DataLoader(data, batch_size=256)
    # lambda_W enters through the regulariser, so the optimiser has no weight decay
    # (SGD weight_decay=wd on the classifier alone would be the same as lambda_w=wd).
    regulariser = UFMRegularizer(lambda_w, lambda_h, num_samples=len(data))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    tracker = NCTracker(len(counts))
    for epoch in range(1, epochs + 1):
        with FeatureTap(model, classifier, detach=False) as tap:
            for inputs, labels in train_loader:
                logits = model(inputs)
                loss = F.cross_entropy(logits, labels) + regulariser(classifier, tap.features)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        if epoch % eval_every == 0:
            tracker.evaluate(
                model, eval_loader, classifier, step=epoch, lambda_w=lambda_w, lambda_h=lambda_h
            )
    return tracker


if __name__ == "__main__":
    for step, entry in train().history:
        nc1, orthogonality = entry["nc1"], entry["orthogonality_error"]
        print(f"epoch {step:3d}  nc1 {nc1:.3e}  orthogonality error {orthogonality:.3f}")
