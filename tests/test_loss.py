"""The UFM+ objective and gradients against independent references.

References: a float64 NumPy loop written here from the definition, PyTorch
autograd on an objective written here with torch.nn.functional, and central
finite differences.
"""

from __future__ import annotations

import importlib.util

import array_api_compat
import numpy as np
import pytest

from ncgeom import loss
from ncgeom.loss import (
    CollapsedGradients,
    UFMGradients,
    collapsed_gradients,
    collapsed_objective,
    ufm_gradients,
    ufm_objective,
)

HAS_TORCH = importlib.util.find_spec("torch") is not None

# (bias, lambda_b, class weights, logit adjustment tau, explicit prior)
VARIANTS = {
    "plain": (False, 0.0, False, None, False),
    "bias": (True, 0.0, False, None, False),
    "bias+decay": (True, 0.3, False, None, False),
    "weights": (False, 0.0, True, None, False),
    "logit-adjusted": (False, 0.0, False, 0.7, False),
    "prior": (False, 0.0, False, 1.3, True),
    "everything": (True, 0.05, True, 1.0, True),
}


def _problem(seed: int, num_classes: int = 4, dim: int = 5, num_samples: int = 11) -> dict:
    rng = np.random.default_rng(seed)
    labels = np.concatenate(
        [np.arange(num_classes), rng.integers(0, num_classes, num_samples - num_classes)]
    )
    rng.shuffle(labels)
    return {
        "classifier": rng.standard_normal((num_classes, dim)),
        "features": rng.standard_normal((num_samples, dim)) * 1.5,
        "labels": labels,
        "bias": rng.standard_normal(num_classes),
        "weights": rng.uniform(0.2, 3.0, num_classes),
        "prior": rng.uniform(0.1, 1.0, num_classes),
        "lambda_w": 0.03,
        "lambda_h": 0.02,
    }


def _options(p: dict, variant: str) -> dict:
    has_bias, lambda_b, weights, tau, prior = VARIANTS[variant]
    return {
        "bias": p["bias"] if has_bias else None,
        "lambda_b": lambda_b,
        "class_weights": p["weights"] if weights else None,
        "logit_adjustment": tau,
        "prior": p["prior"] if prior else None,
    }


def _on(backend, options: dict) -> dict:
    return {
        key: backend.asarray(value) if isinstance(value, np.ndarray) else value
        for key, value in options.items()
    }


# ---------------------------------------------------------------------------
# independent float64 references


def reference_full(
    W,
    H,
    y,
    lambda_w,
    lambda_h,
    *,
    bias=None,
    lambda_b=0.0,
    class_weights=None,
    logit_adjustment=None,
    prior=None,
):
    """(1/N) sum_i w_{y_i} CE_i + decay, one sample at a time."""
    num_classes = W.shape[0]
    n = len(y)
    if logit_adjustment is not None and prior is None:
        prior = np.bincount(y, minlength=num_classes) / n
    total = 0.0
    for i in range(n):
        z = W @ H[i]
        if bias is not None:
            z = z + bias
        if logit_adjustment is not None:
            z = z + logit_adjustment * np.log(prior)
        top = z.max()
        ce = top + np.log(np.sum(np.exp(z - top))) - z[y[i]]
        total += (1.0 if class_weights is None else class_weights[y[i]]) * ce
    value = total / n + lambda_w / 2 * np.sum(W**2) + lambda_h / 2 * np.sum(H**2)
    if bias is not None:
        value += lambda_b / 2 * np.sum(bias**2)
    return value


def reference_collapsed(
    W,
    means,
    counts,
    lambda_w,
    lambda_h,
    *,
    bias=None,
    lambda_b=0.0,
    class_weights=None,
    logit_adjustment=None,
    prior=None,
):
    """sum_k (n_k/N) w_k CE_k + decay with sum_k n_k ||h_k||^2."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum()
    if logit_adjustment is not None and prior is None:
        prior = counts / n
    total = 0.0
    for k in range(W.shape[0]):
        z = W @ means[k]
        if bias is not None:
            z = z + bias
        if logit_adjustment is not None:
            z = z + logit_adjustment * np.log(prior)
        top = z.max()
        ce = top + np.log(np.sum(np.exp(z - top))) - z[k]
        total += counts[k] / n * (1.0 if class_weights is None else class_weights[k]) * ce
    value = (
        total + lambda_w / 2 * np.sum(W**2) + lambda_h / 2 * np.sum(counts * np.sum(means**2, 1))
    )
    if bias is not None:
        value += lambda_b / 2 * np.sum(bias**2)
    return value


def torch_autograd(
    W,
    rows,
    targets,
    row_factor,
    row_decay,
    lambda_w,
    *,
    bias=None,
    lambda_b=0.0,
    class_weights=None,
    offsets=None,
):
    """Gradients by autograd of an objective written with torch.nn.functional.

    f = sum_r row_factor * weight[target_r] * CE_r + lambda_w/2 ||W||^2
    + 1/2 sum_r row_decay_r ||row_r||^2 + lambda_b/2 ||b||^2.
    """
    import torch
    import torch.nn.functional as F

    t = {"dtype": torch.float64}
    w = torch.tensor(W, **t, requires_grad=True)
    h = torch.tensor(rows, **t, requires_grad=True)
    b = None if bias is None else torch.tensor(bias, **t, requires_grad=True)
    logits = h @ w.T
    if b is not None:
        logits = logits + b
    if offsets is not None:
        logits = logits + torch.tensor(offsets, **t)
    weight = None if class_weights is None else torch.tensor(class_weights, **t)
    ce = F.cross_entropy(logits, torch.tensor(targets), weight=weight, reduction="none")
    decay = torch.tensor(row_decay, **t)
    value = (
        torch.sum(torch.tensor(row_factor, **t) * ce)
        + lambda_w / 2 * torch.sum(w**2)
        + 0.5 * torch.sum(decay[:, None] * h**2)
    )
    if b is not None:
        value = value + lambda_b / 2 * torch.sum(b**2)
    value.backward()
    grads = [w.grad.numpy(), h.grad.numpy(), None if b is None else b.grad.numpy()]
    return value.item(), grads


# ---------------------------------------------------------------------------
# objective values


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_full_objective_matches_reference(backend, variant):
    p = _problem(0)
    opts = _options(p, variant)
    value = ufm_objective(
        backend.asarray(p["classifier"]),
        backend.asarray(p["features"]),
        backend.asarray(p["labels"]),
        p["lambda_w"],
        p["lambda_h"],
        **_on(backend, opts),
    )
    expected = reference_full(
        p["classifier"], p["features"], p["labels"], p["lambda_w"], p["lambda_h"], **opts
    )
    assert value.shape == ()
    assert float(backend.to_numpy(value)) == pytest.approx(expected, rel=1e-13, abs=1e-14)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_collapsed_objective_matches_reference(backend, variant):
    p = _problem(1)
    opts = _options(p, variant)
    counts = np.array([7, 1, 30, 2])
    means = np.abs(p["features"][:4])
    value = collapsed_objective(
        backend.asarray(p["classifier"]),
        backend.asarray(means),
        backend.asarray(counts),
        p["lambda_w"],
        p["lambda_h"],
        **_on(backend, opts),
    )
    expected = reference_collapsed(
        p["classifier"], means, counts, p["lambda_w"], p["lambda_h"], **opts
    )
    assert float(backend.to_numpy(value)) == pytest.approx(expected, rel=1e-13, abs=1e-14)


def _host(backend, value, like) -> np.ndarray:
    """`value` as NumPy, after checking it has the namespace and device of `like`."""
    assert array_api_compat.array_namespace(value) is array_api_compat.array_namespace(like)
    assert str(array_api_compat.device(value)) == str(array_api_compat.device(like))
    return backend.to_numpy(value)


def test_objective_of_a_hand_computed_example(backend):
    # Two classes, three samples: CE by hand, log(1 + e^-2) twice and
    # log(1 + e^-1) once, plus decay 0.005 * 2 and 0.005 * 9.
    W = backend.asarray(np.eye(2))
    H = backend.asarray(np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 1.0]]))
    value = ufm_objective(W, H, backend.asarray(np.array([0, 1, 1])), 1e-2, 1e-2)
    expected = (2 * np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0))) / 3 + 0.01 + 0.045
    assert float(_host(backend, value, W)) == pytest.approx(expected, rel=1e-15)


def test_objective_is_stable_for_huge_logits(backend):
    # Logits of order 1e4: a naive exp overflows; CE is exactly the margin
    # shortfall here (class 1 scores 3e4 above the true class 0).
    W = backend.asarray(np.array([[1e2, 0.0], [0.0, 1e2]]))
    H = backend.asarray(np.array([[100.0, 400.0]]))
    labels = backend.asarray(np.array([0]))
    value = float(_host(backend, ufm_objective(W, H, labels, 0.0, 0.0), W))
    assert np.isfinite(value)
    assert value == pytest.approx(3e4, rel=1e-15)
    grads = ufm_gradients(W, H, labels, 0.0, 0.0)
    assert np.all(np.isfinite(_host(backend, grads.classifier, W)))
    np.testing.assert_allclose(_host(backend, grads.features, W), [[-100.0, 100.0]], rtol=1e-15)


def test_tiny_cross_entropy_keeps_its_relative_precision(backend):
    # Margin 40: CE = log(1 + e^-40) ~ 4.2e-18, below the spacing of floats
    # near 1; it must not round to 0. Same for p_y - 1 in the gradient.
    W = backend.asarray(np.array([[1.0, 0.0], [0.0, 1.0]]))
    H = backend.asarray(np.array([[40.0, 0.0]]))
    labels = backend.asarray(np.array([0]))
    value = float(_host(backend, ufm_objective(W, H, labels, 0.0, 0.0), W))
    assert value == pytest.approx(np.log1p(np.exp(-40.0)), rel=1e-14)
    grads = ufm_gradients(W, H, labels, 0.0, 0.0)
    p1 = np.exp(-40.0) / (1 + np.exp(-40.0))
    np.testing.assert_allclose(
        _host(backend, grads.classifier, W), [[-p1 * 40.0, 0.0], [p1 * 40.0, 0.0]], rtol=1e-14
    )


def test_lambda_zero_is_allowed_for_the_loss(backend):
    p = _problem(2)
    W = backend.asarray(p["classifier"])
    value = ufm_objective(
        W, backend.asarray(p["features"]), backend.asarray(p["labels"]), 0.0, 0.0
    )
    expected = reference_full(p["classifier"], p["features"], p["labels"], 0.0, 0.0)
    assert float(_host(backend, value, W)) == pytest.approx(expected, rel=1e-13)


def test_inputs_are_not_modified(backend):
    p = _problem(3)
    on = {k: backend.asarray(v) for k, v in p.items() if isinstance(v, np.ndarray)}
    opts = _options({**p, **on}, "everything")
    ufm_gradients(on["classifier"], on["features"], on["labels"], 0.1, 0.1, **opts)
    collapsed_gradients(
        on["classifier"],
        on["features"][:4, ...],
        backend.asarray(np.array([3.0, 1, 2, 5])),
        0.1,
        0.1,
        **opts,
    )
    for key, value in on.items():
        np.testing.assert_array_equal(backend.to_numpy(value), p[key], err_msg=key)


# ---------------------------------------------------------------------------
# gradients


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_full_gradients_match_torch_autograd(backend, variant):
    p = _problem(4)
    opts = _options(p, variant)
    grads = ufm_gradients(
        backend.asarray(p["classifier"]),
        backend.asarray(p["features"]),
        backend.asarray(p["labels"]),
        p["lambda_w"],
        p["lambda_h"],
        **_on(backend, opts),
    )
    assert isinstance(grads, UFMGradients)
    n = len(p["labels"])
    offsets = None
    if opts["logit_adjustment"] is not None:
        prior = opts["prior"]
        if prior is None:
            prior = np.bincount(p["labels"], minlength=4) / n
        offsets = opts["logit_adjustment"] * np.log(prior)
    value, (g_w, g_h, g_b) = torch_autograd(
        p["classifier"],
        p["features"],
        p["labels"],
        np.full(n, 1.0 / n),
        np.full(n, p["lambda_h"]),
        p["lambda_w"],
        bias=opts["bias"],
        lambda_b=opts["lambda_b"],
        class_weights=opts["class_weights"],
        offsets=offsets,
    )
    assert float(backend.to_numpy(grads.objective)) == pytest.approx(value, rel=1e-13)
    np.testing.assert_allclose(backend.to_numpy(grads.classifier), g_w, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(backend.to_numpy(grads.features), g_h, rtol=1e-10, atol=1e-13)
    if g_b is None:
        assert grads.bias is None
    else:
        np.testing.assert_allclose(backend.to_numpy(grads.bias), g_b, rtol=1e-10, atol=1e-13)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_collapsed_gradients_match_torch_autograd(backend, variant):
    p = _problem(5)
    opts = _options(p, variant)
    counts = np.array([3.0, 12.0, 1.0, 40.0])
    means = np.abs(p["features"][:4])
    grads = collapsed_gradients(
        backend.asarray(p["classifier"]),
        backend.asarray(means),
        backend.asarray(counts),
        p["lambda_w"],
        p["lambda_h"],
        **_on(backend, opts),
    )
    assert isinstance(grads, CollapsedGradients)
    offsets = None
    if opts["logit_adjustment"] is not None:
        prior = counts / counts.sum() if opts["prior"] is None else opts["prior"]
        offsets = opts["logit_adjustment"] * np.log(prior)
    value, (g_w, g_h, g_b) = torch_autograd(
        p["classifier"],
        means,
        np.arange(4),
        counts / counts.sum(),
        p["lambda_h"] * counts,
        p["lambda_w"],
        bias=opts["bias"],
        lambda_b=opts["lambda_b"],
        class_weights=opts["class_weights"],
        offsets=offsets,
    )
    assert float(backend.to_numpy(grads.objective)) == pytest.approx(value, rel=1e-13)
    np.testing.assert_allclose(backend.to_numpy(grads.classifier), g_w, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(backend.to_numpy(grads.means), g_h, rtol=1e-10, atol=1e-13)
    if g_b is not None:
        np.testing.assert_allclose(backend.to_numpy(grads.bias), g_b, rtol=1e-10, atol=1e-13)


def _central_differences(objective, arrays: dict, step: float = 1e-6) -> dict:
    """d objective / d array[idx] by central differences, on NumPy copies."""
    out = {}
    for name, base in arrays.items():
        grad = np.zeros_like(base)
        for idx in np.ndindex(base.shape):
            plus, minus = dict(arrays), dict(arrays)
            plus[name] = base.copy()
            minus[name] = base.copy()
            plus[name][idx] += step
            minus[name][idx] -= step
            grad[idx] = (objective(plus) - objective(minus)) / (2 * step)
        out[name] = grad
    return out


@pytest.mark.parametrize("variant", ["plain", "everything"])
def test_full_gradients_match_finite_differences(backend, variant):
    p = _problem(6, num_classes=3, dim=4, num_samples=7)
    p["labels"] = p["labels"] % 3
    opts = _options(p, variant)
    opts["class_weights"] = None if opts["class_weights"] is None else opts["class_weights"][:3]
    opts["prior"] = None if opts["prior"] is None else opts["prior"][:3]
    labels = backend.asarray(p["labels"])
    fixed = _on(backend, {k: v for k, v in opts.items() if k != "bias"})

    def objective(a: dict) -> float:
        bias = None if a.get("bias") is None else backend.asarray(a["bias"])
        value = ufm_objective(
            backend.asarray(a["classifier"]),
            backend.asarray(a["features"]),
            labels,
            0.05,
            0.02,
            bias=bias,
            **fixed,
        )
        return float(backend.to_numpy(value))

    variables = {"classifier": p["classifier"][:3], "features": p["features"]}
    if opts["bias"] is not None:
        variables["bias"] = opts["bias"][:3]
    numeric = _central_differences(objective, variables)
    grads = ufm_gradients(
        backend.asarray(variables["classifier"]),
        backend.asarray(variables["features"]),
        labels,
        0.05,
        0.02,
        bias=None if "bias" not in variables else backend.asarray(variables["bias"]),
        **fixed,
    )
    analytic = {"classifier": grads.classifier, "features": grads.features, "bias": grads.bias}
    # Central differences with step 1e-6: rounding error ~eps/step ~ 1e-10.
    for name, approx in numeric.items():
        got = _host(backend, analytic[name], labels)
        np.testing.assert_allclose(got, approx, rtol=1e-6, atol=1e-8, err_msg=name)


def test_collapsed_gradients_match_finite_differences(backend):
    rng = np.random.default_rng(7)
    counts = backend.asarray(np.array([5.0, 1.0, 9.0]))
    variables = {
        "classifier": rng.standard_normal((3, 4)),
        "means": np.abs(rng.standard_normal((3, 4))),
        "bias": rng.standard_normal(3),
    }
    opts = {"lambda_b": 0.1, "class_weights": [1.0, 4.0, 0.5], "logit_adjustment": 0.8}

    def objective(a: dict) -> float:
        value = collapsed_objective(
            backend.asarray(a["classifier"]),
            backend.asarray(a["means"]),
            counts,
            0.05,
            0.02,
            bias=backend.asarray(a["bias"]),
            **opts,
        )
        return float(backend.to_numpy(value))

    numeric = _central_differences(objective, variables)
    grads = collapsed_gradients(
        *(backend.asarray(variables[k]) for k in ("classifier", "means")),
        counts,
        0.05,
        0.02,
        bias=backend.asarray(variables["bias"]),
        **opts,
    )
    analytic = {"classifier": grads.classifier, "means": grads.means, "bias": grads.bias}
    for name, approx in numeric.items():
        got = _host(backend, analytic[name], counts)
        np.testing.assert_allclose(got, approx, rtol=1e-6, atol=1e-8, err_msg=name)


# ---------------------------------------------------------------------------
# collapsed form == full form on collapsed features


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_collapsed_equals_full_on_collapsed_features(backend, variant):
    p = _problem(8)
    opts = _options(p, variant)
    counts = np.array([2, 5, 1, 3])
    labels = np.repeat(np.arange(4), counts)
    np.random.default_rng(0).shuffle(labels)
    means = np.abs(p["features"][:4])
    full = ufm_gradients(
        backend.asarray(p["classifier"]),
        backend.asarray(means[labels]),
        backend.asarray(labels),
        p["lambda_w"],
        p["lambda_h"],
        **_on(backend, opts),
    )
    collapsed = collapsed_gradients(
        backend.asarray(p["classifier"]),
        backend.asarray(means),
        backend.asarray(counts),
        p["lambda_w"],
        p["lambda_h"],
        **_on(backend, opts),
    )
    f_full = float(backend.to_numpy(full.objective))
    assert float(backend.to_numpy(collapsed.objective)) == pytest.approx(f_full, rel=1e-13)
    np.testing.assert_allclose(
        backend.to_numpy(collapsed.classifier), backend.to_numpy(full.classifier), rtol=1e-12
    )
    # Chain rule: the gradient in a class mean is the sum over its samples.
    per_sample = backend.to_numpy(full.features)
    summed = np.stack([per_sample[labels == k].sum(axis=0) for k in range(4)])
    np.testing.assert_allclose(backend.to_numpy(collapsed.means), summed, rtol=1e-12, atol=1e-15)
    if opts["bias"] is not None:
        np.testing.assert_allclose(
            backend.to_numpy(collapsed.bias), backend.to_numpy(full.bias), rtol=1e-12
        )


def test_results_stay_on_the_backend(backend):
    p = _problem(9)
    grads = ufm_gradients(
        backend.asarray(p["classifier"]),
        backend.asarray(p["features"]),
        backend.asarray(p["labels"]),
        0.1,
        0.1,
        bias=backend.asarray(p["bias"]),
    )
    like = backend.asarray(np.zeros(1))
    for array in (grads.objective, grads.classifier, grads.features, grads.bias):
        assert type(array) is type(like)
        assert array.dtype == backend.xp.float64
        _host(backend, array, like)  # the namespace and device of the inputs


def test_float32_inputs_give_float32_results(backend):
    p = _problem(10)
    W = backend.asarray(p["classifier"].astype(np.float32))
    H = backend.asarray(p["features"].astype(np.float32))
    grads = ufm_gradients(W, H, backend.asarray(p["labels"]), 0.1, 0.1)
    assert grads.features.dtype == backend.xp.float32
    expected = reference_full(p["classifier"], p["features"], p["labels"], 0.1, 0.1)
    assert float(backend.to_numpy(grads.objective)) == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------
# bad input


def _good() -> dict:
    p = _problem(11)
    return {k: p[k] for k in ("classifier", "features", "labels")}


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (
            {"features": np.zeros((11, 3))},
            ValueError,
            r"`features` must have shape \(samples, 5\), as many columns as `classifier`; "
            r"got \(11, 3\)",
        ),
        ({"features": np.zeros(5)}, ValueError, r"`features` must be 2-D"),
        ({"labels": np.arange(11) % 5}, ValueError, r"`labels` must lie in \[0, 4\); got max 4"),
        ({"labels": -np.ones(11, dtype=int)}, ValueError, r"`labels` must lie in .* got min -1"),
        ({"labels": np.zeros(10, dtype=int)}, ValueError, r"`labels` must have one entry"),
        ({"labels": np.zeros(11)}, TypeError, r"`labels` must have an integer dtype"),
        ({"lambda_w": -1e-3}, ValueError, r"`lambda_w` must be >= 0; got -0.001"),
        ({"lambda_h": float("nan")}, ValueError, r"`lambda_h` must be finite"),
        ({"lambda_b": 0.1}, ValueError, r"`lambda_b` acts on a bias"),
        ({"bias": np.zeros(3)}, ValueError, r"`bias` must have shape \(4,\); got \(3,\)"),
        ({"class_weights": [1.0, -1.0, 1.0, 1.0]}, ValueError, r"`class_weights` must be finite"),
        ({"class_weights": [1.0, 1.0]}, ValueError, r"`class_weights` must have shape \(4,\)"),
        ({"logit_adjustment": 1.0, "prior": [0.5, 0.0, 0.3, 0.2]}, ValueError, r"`prior`"),
        ({"logit_adjustment": "x"}, TypeError, r"`logit_adjustment` must be a real number"),
        ({"classifier": np.zeros((4, 5), dtype=int)}, TypeError, r"`classifier` must have a real"),
    ],
)
def test_bad_full_input(change, error, match):
    args = {**_good(), "lambda_w": 0.1, "lambda_h": 0.1, **change}
    with pytest.raises(error, match=match):
        ufm_objective(**args)


def test_default_prior_needs_every_class_present():
    args = _good()
    args["labels"] = np.arange(11) % 3  # class 3 never occurs
    with pytest.raises(ValueError, match=r"`prior` \(default: the label frequencies"):
        ufm_objective(**args, lambda_w=0.1, lambda_h=0.1, logit_adjustment=1.0)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"counts": [1, 2, 3]}, r"`counts` must have shape \(4,\); got \(3,\)"),
        ({"counts": [1, -2, 3, 4]}, r"`counts` must be finite and >= 0"),
        ({"counts": [0, 0, 0, 0]}, r"`counts` must have a positive total"),
        ({"means": np.zeros((3, 5))}, r"`means` must have the shape of `classifier` \(4, 5\)"),
        ({"means": np.full((4, 5), np.inf)}, r"`means` must be finite"),
        ({"logit_adjustment": 1.0, "counts": [0, 1, 2, 3]}, r"`prior` \(default: counts / N"),
    ],
)
def test_bad_collapsed_input(change, match):
    rng = np.random.default_rng(12)
    args = {
        "classifier": rng.standard_normal((4, 5)),
        "means": rng.standard_normal((4, 5)),
        "counts": [1, 2, 3, 4],
        "lambda_w": 0.1,
        "lambda_h": 0.1,
        **change,
    }
    with pytest.raises(ValueError, match=match):
        collapsed_objective(**args)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_mixed_libraries_are_a_type_error():
    import torch

    p = _good()
    with pytest.raises(TypeError, match=r"same array library"):
        ufm_objective(p["classifier"], torch.tensor(p["features"]), p["labels"], 0.1, 0.1)
    with pytest.raises(TypeError, match=r"`counts` must be host data or a numpy array"):
        collapsed_objective(
            p["classifier"], p["classifier"], torch.tensor([1.0, 2, 3, 4]), 0.1, 0.1
        )


def test_module_all_is_sorted_and_public():
    assert list(loss.__all__) == sorted(loss.__all__)
    for name in loss.__all__:
        assert not name.startswith("_")
        assert hasattr(loss, name)
