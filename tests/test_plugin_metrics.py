"""The trackers and callbacks pass what the new metrics need to `nc_report`:
the classifier layer's bias (``bias_collapse``) and an out-of-distribution mean
(``ood_deviation``), checked against float64 formulas written here."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ncgeom_torch import NCTracker  # noqa: E402

K, D = 4, 6


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    counts = np.array([50, 30, 20, 10])
    y = np.repeat(np.arange(K), counts)
    x = np.abs(rng.random((K, D)) * 3)[y] + 0.1 * rng.normal(size=(y.size, D))
    ood = rng.normal(size=D) + 0.5
    return x, y, ood


def _bias_collapse(x, w, b):
    return np.linalg.norm(w @ x.mean(axis=0) + b)


def _ood_deviation(x, y, ood):
    mu = np.stack([x[y == k].mean(axis=0) for k in range(K)])
    cos = mu @ ood / (np.linalg.norm(mu, axis=1) * np.linalg.norm(ood))
    return np.abs(cos).mean()


def test_torch_tracker_uses_the_layer_bias_and_the_ood_mean():
    x, y, ood = _data()
    layer = torch.nn.Linear(D, K).double()
    tracker = NCTracker(K, dtype=torch.float64)
    tracker.observe(torch.from_numpy(x), torch.from_numpy(y))
    report = tracker.report(layer, ood_mean=torch.from_numpy(ood))
    w, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    assert report.bias_collapse == pytest.approx(_bias_collapse(x, w, b), rel=1e-12)
    assert report.ood_deviation == pytest.approx(_ood_deviation(x, y, ood), rel=1e-12)
    # A bare weight tensor is bias-free: b = 0.
    bare = tracker.report(layer.weight)
    assert bare.bias_collapse == pytest.approx(_bias_collapse(x, w, 0.0), rel=1e-12)
    assert bare.ood_deviation is None and "ood_mean" in dict(bare.unavailable)["ood_deviation"]


def test_torch_evaluate_takes_the_ood_mean():
    x, y, ood = _data(1)
    model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(D, K, bias=False)).double()
    report = NCTracker(K, dtype=torch.float64).evaluate(
        model,
        [(torch.from_numpy(x), torch.from_numpy(y))],
        model[1],
        ood_mean=torch.from_numpy(ood),
    )
    assert report.ood_deviation == pytest.approx(_ood_deviation(x, y, ood), rel=1e-12)


def test_jax_nc_metrics_takes_bias_and_ood_mean():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from ncgeom_jax import batch_stats, nc_metrics

    x, y, ood = _data(2)
    rng = np.random.default_rng(3)
    w, b = rng.normal(size=(K, D)), rng.normal(size=K)
    stats = batch_stats(jnp.asarray(x), jnp.asarray(y), K)
    report = nc_metrics(stats, jnp.asarray(w), bias=jnp.asarray(b), ood_mean=jnp.asarray(ood))
    assert report.bias_collapse == pytest.approx(_bias_collapse(x, w, b), rel=1e-10)
    assert report.ood_deviation == pytest.approx(_ood_deviation(x, y, ood), rel=1e-10)


def test_lightning_callback_logs_the_ood_deviation(tmp_path):
    pytest.importorskip("lightning")
    from lightning_ddp_fit import DIM, Tiny, loader, trainer_for

    from ncgeom_torch.lightning import NeuralCollapseCallback

    ood = torch.linspace(0.5, 1.5, DIM, dtype=torch.float64)
    model = Tiny()
    callback = NeuralCollapseCallback(3, ood_mean=ood)
    trainer_for(tmp_path, callback, max_epochs=1).fit(model, loader())
    h, y = model.features("train", 0)
    h, y = h.double().numpy(), y.numpy()
    mu = np.stack([h[y == k].mean(axis=0) for k in range(3)])
    cos = mu @ ood.numpy() / (np.linalg.norm(mu, axis=1) * np.linalg.norm(ood.numpy()))
    assert callback.history[-1][1]["ood_deviation"] == pytest.approx(np.abs(cos).mean(), rel=1e-10)
