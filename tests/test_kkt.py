"""The KKT residual of UFM+ over (W, H >= 0): an independent formula, and known optima."""

from __future__ import annotations

import numpy as np
import pytest

from ncgeom import ufm_relu_optimum
from ncgeom.kkt import ufm_kkt_parts, ufm_kkt_residual


def reference_parts(W, H, y, lw, lh, b=None):
    """The residual's parts written out in float64 NumPy, from the docs' formula."""
    W, H = np.asarray(W, np.float64), np.asarray(H, np.float64)
    n, k = H.shape[0], W.shape[0]
    logits = H @ W.T + (0.0 if b is None else np.asarray(b, np.float64))
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    r = p - np.eye(k)[y]
    c_w, c_h = r.T @ H / n, r @ W / n
    g_w, g_h = c_w + lw * W, c_h + lh * H

    def ratio(top, bottom):
        return 0.0 if bottom == 0 else top / bottom

    parts = {
        "classifier": ratio(np.linalg.norm(g_w), max(lw * np.linalg.norm(W), np.linalg.norm(c_w))),
        "features": ratio(
            np.linalg.norm(np.minimum(H, g_h / lh)),
            max(np.linalg.norm(H), np.linalg.norm(c_h) / lh),
        ),
    }
    if b is not None:
        g_b = r.sum(axis=0) / n
        parts["bias"] = ratio(np.linalg.norm(g_b), np.linalg.norm(r, axis=1).mean())
    return parts


def random_point(seed=0, n=40, k=4, d=6):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    W = rng.normal(size=(k, d))
    H = np.maximum(rng.normal(size=(n, d)) + 0.3, 0.0)  # some exact zeros
    return W, H, y


@pytest.mark.parametrize("bias", [False, True])
def test_parts_equal_an_independent_float64_formula(bias):
    W, H, y = random_point()
    b = np.array([0.3, -0.2, 0.1, 0.0]) if bias else None
    got = ufm_kkt_parts(W, H, y, 4, 3e-3, 7e-2, bias=b)
    want = reference_parts(W, H, y, 3e-3, 7e-2, b)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=1e-12, abs=1e-15), name
    assert ufm_kkt_residual(W, H, y, 4, 3e-3, 7e-2, bias=b) == max(got.values())


@pytest.mark.parametrize(
    ("counts", "lam", "dim"),
    [
        ([30, 20, 3, 1], 2e-2, None),  # class 3 collapses
        ([50, 50, 50], 1e-3, 7),  # balanced, d > K
        ([100, 40, 10, 10, 2], 4e-3, None),  # the 2-sample class collapses
    ],
)
def test_zero_at_the_closed_form_optimum_and_clearly_positive_off_it(counts, lam, dim):
    opt = ufm_relu_optimum(counts, lam, lam, dim)
    y = np.repeat(np.arange(len(counts)), counts)
    W, H = np.asarray(opt.classifier()), np.asarray(opt.means())[y]
    k = len(counts)
    assert ufm_kkt_residual(W, H, y, k, lam, lam) < 1e-10
    assert ufm_kkt_residual(1.1 * W, H, y, k, lam, lam) > 0.03
    assert ufm_kkt_residual(W, 0.9 * H, y, k, lam, lam) > 0.03
    rng = np.random.default_rng(1)
    noisy = H + 0.05 * np.abs(rng.normal(size=H.shape)) * np.abs(H).max()
    assert ufm_kkt_residual(W, noisy, y, k, lam, lam) > 0.01
    # the same point with the other lambdas is not stationary either
    assert ufm_kkt_residual(W, H, y, k, 2 * lam, lam / 2) > 0.1


def test_a_collapsed_class_pushed_positive_breaks_complementarity():
    counts = [30, 20, 3, 1]
    opt = ufm_relu_optimum(counts, 2e-2, 2e-2)
    y = np.repeat(np.arange(4), counts)
    W, H = np.asarray(opt.classifier()), np.asarray(opt.means())[y].copy()
    H[y == 3] = 0.2 * np.abs(H).max()  # a dead class given features
    parts = ufm_kkt_parts(W, H, y, 4, 2e-2, 2e-2)
    assert parts["features"] > 0.01
    want = reference_parts(W, H, y, 2e-2, 2e-2)
    assert parts["features"] == pytest.approx(want["features"], rel=1e-12)


def test_the_origin_is_a_kkt_point_and_a_dead_network_is_not():
    y = np.array([0, 1, 2])
    zero_w, zero_h = np.zeros((3, 4)), np.zeros((3, 4))
    assert ufm_kkt_residual(zero_w, zero_h, y, 3, 1e-2, 1e-2) == 0.0
    # features all zero but a classifier left: W still decays, nothing balances it
    assert ufm_kkt_residual(np.ones((3, 4)), zero_h, y, 3, 1e-2, 1e-2) == pytest.approx(1.0)


def test_scale_free_in_the_lambdas_units():
    """Scaling W and H and the lambdas as the objective's symmetry leaves it unchanged."""
    W, H, y = random_point(3)
    base = ufm_kkt_residual(W, H, y, 4, 1e-2, 1e-2)
    # f(cW, H/c) with lambda_w / c^2, lambda_h * c^2 is the same problem
    c = 3.0
    assert ufm_kkt_residual(c * W, H / c, y, 4, 1e-2 / c**2, 1e-2 * c**2) == pytest.approx(
        base, rel=1e-10
    )


def test_backends_agree_with_numpy(backend):
    W, H, y = random_point(2, n=12, k=3, d=4)
    want = ufm_kkt_parts(W, H, y, 3, 1e-2, 5e-3)
    got = ufm_kkt_parts(backend.asarray(W), backend.asarray(H), backend.asarray(y), 3, 1e-2, 5e-3)
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=1e-10), name


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lambda_w": 0.0}, ValueError, r"`lambda_w` must be > 0.*0\.0"),
        ({"lambda_h": -1.0}, ValueError, r"`lambda_h` must be > 0.*-1\.0"),
        ({"lambda_w": True}, TypeError, r"`lambda_w` must be a real number.*True"),
        ({"num_classes": 5}, ValueError, r"`W` must have shape \(num_classes, d\) = \(5, d\)"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, error, match):
    W, H, y = random_point()
    args = {"num_classes": 4, "lambda_w": 1e-2, "lambda_h": 1e-2, **kwargs}
    with pytest.raises(error, match=match):
        ufm_kkt_residual(W, H, y, **args)
