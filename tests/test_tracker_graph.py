"""NCTracker keeps no autograd graph of the features it observes."""

from __future__ import annotations

import gc
import weakref

import torch

from ncgeom_torch import NCTracker


def test_observe_detaches_and_frees_every_batch_graph():
    w = torch.randn(16, 8, requires_grad=True)
    tracker = NCTracker(num_classes=3)
    alive = []
    for _ in range(20):
        features = torch.relu(torch.randn(24, 16) @ w)
        alive.append(weakref.ref(features))
        tracker.observe(features, torch.arange(24) % 3)
        del features
    gc.collect()
    stats = tracker.stats
    for array in (stats.shift, stats.sums, stats.sqnorms, stats.gram):
        assert array.grad_fn is None and not array.requires_grad
    assert all(ref() is None for ref in alive)
