"""The closed-form UFM+ optimum: published values, KKT conditions, backends, errors."""

from __future__ import annotations

import math
import time
import tracemalloc
from fractions import Fraction

import array_api_compat as compat
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ncgeom.theory import (
    UFMOptimum,
    collapse_threshold,
    critical_regularization,
    min_samples_to_survive,
    ufm_relu_optimum,
)

from reference import PUBLISHED_VECTORS as VECTORS

PER_CLASS = ("margins", "feature_norms", "classifier_norms", "cosines")


# ---------------------------------------------------------------------------
# independent reference formulas (float64 NumPy, written from the definitions)


def _grad_logits(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """softmax(Z) - Y per row; the true-class entry as minus the other probabilities."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    p = e / e.sum(axis=1, keepdims=True)
    onehot = np.zeros_like(p, dtype=bool)
    onehot[np.arange(len(labels)), labels] = True
    others = np.where(onehot, 0.0, p).sum(axis=1)
    return np.where(onehot, -others[:, None], p)


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    top = logits.max(axis=1)
    lse = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    return lse - logits[np.arange(len(labels)), labels]


def _full_objective(w, h, labels, lw, lh) -> float:
    ce = _cross_entropy(h @ w.T, labels).mean()
    return ce + 0.5 * lw * np.sum(w * w) + 0.5 * lh * np.sum(h * h)


def _alive_exact(counts, lw, lh) -> np.ndarray:
    k, n = len(counts), sum(counts)
    rhs = Fraction(n * n * k) * Fraction(lw) * Fraction(lh)
    return np.array([Fraction(c * (k - 1)) > rhs for c in counts])


def _check_kkt(w, h, grad_w, grad_h, scale_w, scale_h, rtol=1e-10) -> None:
    """Gradient in W zero; in H zero where H > 0 and >= 0 where H = 0 (relative)."""
    assert np.max(np.abs(grad_w)) <= rtol * scale_w
    positive = h > 0
    if positive.any():
        assert np.max(np.abs(grad_h[positive])) <= rtol * scale_h
    if (~positive).any():
        assert np.min(grad_h[~positive]) >= -rtol * scale_h


@st.composite
def configs(draw):
    """K 2..10, counts 1..200 in any order, lambdas log-uniform in [1e-5, 1e-1].

    Half the draws put lambda_W * lambda_H among the per-class collapse limits,
    so that some (minority) classes collapse and others survive.
    """
    k = draw(st.integers(2, 10))
    counts = draw(st.lists(st.integers(1, 200), min_size=k, max_size=k))
    log_w = draw(st.floats(-5.0, -1.0))
    if draw(st.booleans()):
        log_h = draw(st.floats(-5.0, -1.0))
    else:
        n = sum(counts)
        limits = [math.log10(c * (k - 1) / (k * n * n)) for c in counts]
        log_p = draw(st.floats(min(limits) - 0.1, max(limits) + 0.1))
        log_h = min(-1.0, max(-5.0, log_p - log_w))
    extra = draw(st.integers(0, 3))
    return counts, 10.0**log_w, 10.0**log_h, extra


def _dim(counts, lw, lh, extra) -> int:
    return max(1, int(_alive_exact(counts, lw, lh).sum())) + extra


def _optimum(backend, counts, lw, lh, **kwargs) -> UFMOptimum:
    """The optimum computed on the backend's namespace and device."""
    return ufm_relu_optimum(counts, lw, lh, xp=backend.xp, device=backend.device, **kwargs)


def _host(backend, value) -> np.ndarray:
    """`value` as NumPy, after checking it lives on the backend and its device."""
    assert compat.array_namespace(value) is backend.xp
    assert str(compat.device(value)) == str(_device_of(backend))
    return backend.to_numpy(value)


# ---------------------------------------------------------------------------
# published values


@pytest.mark.parametrize(("counts", "lw", "lh", "margins", "sq_norms", "f_star"), VECTORS)
def test_published_vectors(backend, counts, lw, lh, margins, sq_norms, f_star):
    opt = _optimum(backend, counts, lw, lh)
    np.testing.assert_allclose(_host(backend, opt.margins), margins, rtol=0, atol=1e-10)
    norms = _host(backend, opt.feature_norms)
    np.testing.assert_allclose(norms**2, sq_norms, rtol=0, atol=1e-10)
    assert abs(float(_host(backend, opt.objective)) - f_star) <= 1e-10
    assert _host(backend, opt.alive).tolist() == [m > 0 for m in margins]


def test_balanced_case_is_simplex_etf(backend):
    opt = _optimum(backend, [7, 7, 7, 7], 1e-3, 2e-3)
    w = _host(backend, opt.classifier())
    gram = w @ w.T
    k = 4
    etf = (np.eye(k) - 1.0 / k) * gram[0, 0] * k / (k - 1)
    np.testing.assert_allclose(gram, etf, rtol=1e-12, atol=1e-12)
    h = _host(backend, opt.means())
    norm = _host(backend, opt.feature_norms)[0]
    np.testing.assert_allclose(h @ h.T, np.eye(k) * norm**2, rtol=1e-12)


def test_margin_near_threshold_is_accurate(backend):
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    counts = [1000, 500, 30]
    k, n = 3, 1530
    # lambda_W * lambda_H a hair below class 2's limit: its margin is tiny.
    product = 30 * (k - 1) / (k * n * n) * (1 - 1e-9)
    lw = lh = math.sqrt(product)
    margins = _host(backend, _optimum(backend, counts, lw, lh).margins)
    for i, c in enumerate(counts):
        ratio = (
            mpmath.mpf(n)
            * mpmath.sqrt(mpmath.mpf(lw) * mpmath.mpf(lh) * (k - 1) / k)
            / mpmath.sqrt(c)
        )
        exact = mpmath.log((k - 1) * (1 / ratio - 1))
        assert abs(float(margins[i]) - float(exact)) <= 1e-12 * float(exact)
    assert 0 < margins[2] < 1e-8


# ---------------------------------------------------------------------------
# KKT conditions


@settings(max_examples=60, deadline=None)
@given(configs())
@example(([30, 20, 3, 1], 2e-2, 2e-2, 0))
@example(([1, 200, 5, 1, 90], 1e-5, 1e-5, 2))
@example(([989, 11], 0.011, 5e-4, 0))  # class 1 alive by less than 1e-15
def test_kkt_collapsed_problem(config):
    counts, lw, lh, extra = config
    opt = ufm_relu_optimum(counts, lw, lh, dim=_dim(counts, lw, lh, extra))
    w, h = opt.classifier(), opt.means()
    n = np.asarray(counts, dtype=np.float64)
    weight = n / n.sum()
    k = len(counts)
    g = weight[:, None] * _grad_logits(h @ w.T, np.arange(k))
    data_w, decay_w = g.T @ h, lw * w
    data_h, decay_h = g @ w, lh * n[:, None] * h
    scale_w = max(np.abs(data_w).max(), np.abs(decay_w).max())
    scale_h = max(np.abs(data_h).max(), np.abs(decay_h).max())
    _check_kkt(w, h, data_w + decay_w, data_h + decay_h, scale_w, scale_h)


@settings(max_examples=40, deadline=None)
@given(configs())
@example(([30, 20, 3, 1], 2e-2, 2e-2, 1))
@example(([989, 11], 0.011, 5e-4, 0))
def test_kkt_full_problem(config):
    counts, lw, lh, extra = config
    opt = ufm_relu_optimum(counts, lw, lh, dim=_dim(counts, lw, lh, extra))
    labels = np.repeat(np.arange(len(counts)), counts)
    w, h = opt.classifier(), opt.means()[labels]
    g = _grad_logits(h @ w.T, labels) / len(labels)
    data_w, decay_w = g.T @ h, lw * w
    data_h, decay_h = g @ w, lh * h
    scale_w = max(np.abs(data_w).max(), np.abs(decay_w).max())
    scale_h = max(np.abs(data_h).max(), np.abs(decay_h).max())
    _check_kkt(w, h, data_w + decay_w, data_h + decay_h, scale_w, scale_h)
    # Balance of the two penalties at the optimum.
    np.testing.assert_allclose(lw * np.sum(w * w), lh * np.sum(h * h), rtol=1e-12, atol=1e-300)


def test_kkt_on_every_backend(backend):
    # The fixed examples of the properties above, computed on each backend.
    for counts, lw, lh, extra in (([30, 20, 3, 1], 2e-2, 2e-2, 1), ([989, 11], 0.011, 5e-4, 0)):
        opt = _optimum(backend, counts, lw, lh, dim=_dim(counts, lw, lh, extra))
        w, means = _host(backend, opt.classifier()), _host(backend, opt.means())
        labels = np.repeat(np.arange(len(counts)), counts)
        h = means[labels]
        g = _grad_logits(h @ w.T, labels) / len(labels)
        data_w, decay_w = g.T @ h, lw * w
        data_h, decay_h = g @ w, lh * h
        scale_w = max(np.abs(data_w).max(), np.abs(decay_w).max())
        scale_h = max(np.abs(data_h).max(), np.abs(decay_h).max())
        _check_kkt(w, h, data_w + decay_w, data_h + decay_h, scale_w, scale_h)


def test_minority_collapse_structure(backend):
    opt = _optimum(backend, [30, 20, 3, 1], 2e-2, 2e-2)
    w, h = _host(backend, opt.classifier()), _host(backend, opt.means())
    assert opt.num_alive == 3
    assert np.all(h[3] == 0)
    assert np.isnan(_host(backend, opt.cosines)[3])
    # The collapsed class's classifier row points away from every alive mean.
    assert np.all(w[3] <= 0) and np.any(w[3] < 0)


def test_global_collapse(backend):
    counts = [5, 3, 2]
    lw = lh = 1.0  # n_crit = 10^2 * 1 * 3/2 = 150 > every count
    opt = _optimum(backend, counts, lw, lh)
    assert opt.num_alive == 0
    assert not _host(backend, opt.alive).any()
    assert np.all(_host(backend, opt.margins) == 0)
    assert np.all(_host(backend, opt.feature_norms) == 0)
    assert np.all(_host(backend, opt.classifier_norms) == 0)
    assert np.all(np.isnan(_host(backend, opt.cosines)))
    assert abs(float(_host(backend, opt.objective)) - math.log(3)) <= 1e-15
    w, means = _host(backend, opt.classifier()), _host(backend, opt.means())
    assert np.all(means == 0) and np.all(w == 0)
    labels = np.repeat(np.arange(3), counts)
    assert _full_objective(w, means[labels], labels, lw, lh) == pytest.approx(
        math.log(3), rel=1e-15
    )


# ---------------------------------------------------------------------------
# explicit instance, matrices, norms


@settings(max_examples=40, deadline=None)
@given(configs())
def test_instance_reproduces_reported_values(config):
    counts, lw, lh, extra = config
    dim = _dim(counts, lw, lh, extra)
    opt = ufm_relu_optimum(counts, lw, lh, dim=dim)
    w, h = opt.classifier(), opt.means()
    assert w.shape == h.shape == (len(counts), dim)
    assert np.all(h >= 0)
    gram = h @ h.T
    np.testing.assert_array_equal(gram - np.diag(np.diag(gram)), 0.0)
    tol = dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gram, opt.feature_gram(), **tol)
    np.testing.assert_allclose(w @ w.T, opt.classifier_gram(), **tol)
    np.testing.assert_allclose(h @ w.T, opt.logits(), **tol)
    np.testing.assert_allclose(np.linalg.norm(h, axis=1), opt.feature_norms, **tol)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), opt.classifier_norms, **tol)
    alive = np.linalg.norm(h, axis=1) > 0
    cos = np.sum(w * h, axis=1)[alive] / (
        np.linalg.norm(w, axis=1)[alive] * np.linalg.norm(h, axis=1)[alive]
    )
    np.testing.assert_allclose(opt.cosines[alive], cos, rtol=1e-12)
    assert np.all(np.isnan(opt.cosines[~alive]))
    labels = np.repeat(np.arange(len(counts)), counts)
    direct = _full_objective(w, h[labels], labels, lw, lh)
    assert abs(direct - float(opt.objective)) <= 1e-12 * direct
    # Margins: the true logit beats every other logit by M_k.
    logits = h @ w.T
    gaps = np.diag(logits)[:, None] - logits
    off = ~np.eye(len(counts), dtype=bool)
    np.testing.assert_allclose(
        gaps[off], np.repeat(opt.margins, len(counts) - 1), rtol=1e-12, atol=1e-12
    )


@settings(max_examples=30, deadline=None)
@given(configs(), st.randoms(use_true_random=False))
def test_counts_in_any_order(config, rnd):
    counts, lw, lh, _ = config
    order = list(range(len(counts)))
    rnd.shuffle(order)
    opt = ufm_relu_optimum(counts, lw, lh)
    perm = ufm_relu_optimum([counts[i] for i in order], lw, lh)
    for name in PER_CLASS:
        np.testing.assert_allclose(getattr(perm, name), getattr(opt, name)[order], rtol=1e-14)
    assert float(perm.objective) == pytest.approx(float(opt.objective), rel=1e-14)


def test_dim_between_alive_and_classes(backend):
    opt = _optimum(backend, [30, 20, 3, 1], 2e-2, 2e-2, dim=3)
    h = _host(backend, opt.means())
    assert h.shape == (4, 3)
    norms = _host(backend, opt.feature_norms)
    np.testing.assert_allclose(np.linalg.norm(h, axis=1), norms, rtol=1e-15)
    np.testing.assert_allclose(h @ h.T, _host(backend, opt.feature_gram()), atol=1e-15)


def test_to_dict_is_plain_python(backend):
    d = _optimum(backend, [30, 20, 3, 1], 2e-2, 2e-2).to_dict()
    assert d["counts"] == [30, 20, 3, 1]
    assert d["alive"] == [True, True, True, False]
    assert all(type(v) is float for v in d["margins"])
    assert abs(d["objective"] - 0.730155472976704) <= 1e-10


def test_per_class_values_cost_linear_memory():
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 1000, size=100_000)
    tracemalloc.start()
    opt = ufm_relu_optimum(counts, 1e-6, 1e-6)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert opt.margins.shape == (100_000,)
    assert peak < 64 * 2**20  # one K x K float64 matrix would be 80 GB


# ---------------------------------------------------------------------------
# thresholds


@settings(max_examples=50, deadline=None)
@given(configs())
def test_alive_iff_above_collapse_threshold(config):
    counts, lw, lh, _ = config
    k, n = len(counts), sum(counts)
    threshold = collapse_threshold(counts, lw, lh)
    assert threshold == pytest.approx(n * n * lw * lh * k / (k - 1), rel=1e-15)
    opt = ufm_relu_optimum(counts, lw, lh)
    assert opt.collapse_count == threshold
    np.testing.assert_array_equal(opt.alive, _alive_exact(counts, lw, lh))
    limits = critical_regularization(counts)
    np.testing.assert_allclose(limits, np.asarray(counts) * (k - 1) / (k * n * n), rtol=1e-15)


def test_class_exactly_at_threshold_collapses(backend):
    # N = 8, K = 2, lambda_W lambda_H = 1/64: n_crit = 64 / 64 * 2 = 2 exactly.
    opt = _optimum(backend, [6, 2], 0.125, 0.125)
    assert opt.collapse_count == 2.0
    assert _host(backend, opt.alive).tolist() == [True, False]
    assert _host(backend, opt.margins)[1] == 0.0 and _host(backend, opt.feature_norms)[1] == 0.0


def test_threshold_decided_exactly_where_float_comparison_is_wrong(backend):
    # In float64, n_crit = 1000^2 * 0.011 * 5e-4 * 2 rounds to exactly 11.0, so a
    # float test would collapse the class of 11. The binary values of the lambdas
    # put the true threshold just below 11: the class survives, barely.
    counts = [989, 11]
    opt = _optimum(backend, counts, 0.011, 5e-4)
    assert opt.collapse_count == 11.0
    assert _alive_exact(counts, 0.011, 5e-4).tolist() == [True, True]
    assert _host(backend, opt.alive).tolist() == [True, True]
    assert 0 < _host(backend, opt.margins)[1] < 1e-15
    on_backend = backend.asarray(np.array([989, 1]))
    assert min_samples_to_survive(on_backend, 1, 0.011, 5e-4) == 11


def test_threshold_decided_exactly_where_floats_tie(backend):
    # n_crit = 8000^2 * 5e-3 * 1e-3 * 5/4 = 400 in decimal; the binary values of
    # the lambdas decide which side class 4 falls on.
    counts = [5000, 2000, 500, 100, 400]
    opt = _optimum(backend, counts, 5e-3, 1e-3)
    np.testing.assert_array_equal(_host(backend, opt.alive), _alive_exact(counts, 5e-3, 1e-3))


def test_critical_regularization_separates_alive_and_collapsed(backend):
    counts = [30, 20, 3, 1]
    limits = _host(backend, critical_regularization(counts, xp=backend.xp, device=backend.device))
    np.testing.assert_allclose(limits, critical_regularization(counts), rtol=1e-15)
    for i in (0, 2, 3):
        limit = float(limits[i])
        below = _optimum(backend, counts, math.sqrt(limit * 0.999), math.sqrt(limit * 0.999))
        above = _optimum(backend, counts, math.sqrt(limit * 1.001), math.sqrt(limit * 1.001))
        assert bool(_host(backend, below.alive)[i]) and not bool(_host(backend, above.alive)[i])


def _brute_force_survival(counts, k, lw, lh):
    num, rest = len(counts), sum(counts) - counts[k]
    c = num * lw * lh / (num - 1)
    top = int(1.0 / c) + 2  # beyond 1/c, m > c (R + m)^2 is impossible
    m = np.arange(1, top + 1, dtype=np.float64)
    hits = np.flatnonzero(m * (num - 1) > (rest + m) ** 2 * num * lw * lh)

    def survives(v):
        rhs = Fraction((rest + v) ** 2 * num) * Fraction(lw) * Fraction(lh)
        return Fraction(v * (num - 1)) > rhs

    candidates = {int(m[j]) for j in hits[:1]}
    candidates |= {v + d for v in list(candidates) for d in (-1, 1) if v + d >= 1}
    exact = sorted(v for v in candidates if survives(v))
    return exact[0] if exact else None


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 200), min_size=2, max_size=8),
    # lambda_W lambda_H >= 1e-6 keeps the brute-force scan (up to 1/c) short.
    st.floats(-3.0, -1.0),
    st.floats(-3.0, -1.0),
    st.data(),
)
def test_min_samples_to_survive_matches_brute_force(counts, log_w, log_h, data):
    lw, lh = 10.0**log_w, 10.0**log_h
    k = data.draw(st.integers(0, len(counts) - 1))
    expected = _brute_force_survival(counts, k, lw, lh)
    got = min_samples_to_survive(counts, k, lw, lh)
    assert got == expected
    if got is not None:
        changed = list(counts)
        changed[k] = got
        assert bool(ufm_relu_optimum(changed, lw, lh).alive[k])
        if got > 1:
            changed[k] = got - 1
            assert not bool(ufm_relu_optimum(changed, lw, lh).alive[k])


def test_min_samples_to_survive_impossible_and_exact_tie(backend):
    # The other classes alone (1000 samples) are too many at this decay.
    assert min_samples_to_survive(backend.asarray(np.array([1000, 1])), 1, 0.1, 0.1) is None
    # N = 8000 at m = 400 sits at the threshold in decimal arithmetic.
    counts = backend.asarray(np.array([5000, 2000, 500, 100, 20]))
    got = min_samples_to_survive(counts, 4, 5e-3, 1e-3)
    assert got == _brute_force_survival([5000, 2000, 500, 100, 20], 4, 5e-3, 1e-3)
    assert got in (400, 401)


# ---------------------------------------------------------------------------
# backends


def _device_of(backend):
    return compat.device(backend.asarray(np.zeros(1)))


def test_backend_results_live_on_backend(backend):
    counts, lw, lh = [30, 20, 3, 1], 2e-2, 2e-2
    ref = ufm_relu_optimum(counts, lw, lh, dim=6)
    opt = ufm_relu_optimum(counts, lw, lh, dim=6, xp=backend.xp, device=backend.device)
    device = _device_of(backend)
    values = {name: getattr(opt, name) for name in (*PER_CLASS, "objective", "alive", "counts")}
    for name in ("feature_gram", "classifier_gram", "logits", "means", "classifier"):
        values[name] = getattr(opt, name)()
    for name, value in values.items():
        assert compat.array_namespace(value) is backend.xp, name
        assert str(compat.device(value)) == str(device), name
        expected = getattr(ref, name)
        expected = expected() if callable(expected) else expected
        np.testing.assert_allclose(
            backend.to_numpy(value), expected, rtol=1e-13, atol=1e-15, err_msg=name
        )
    assert backend.to_numpy(opt.margins).dtype == np.float64


def test_backend_counts_array_and_float32(backend):
    counts = backend.asarray(np.array([12, 8, 4, 2]))
    opt = ufm_relu_optimum(counts, 5e-3, 5e-3, dtype=backend.xp.float32)
    assert compat.array_namespace(opt.margins) is backend.xp
    assert opt.margins.dtype == backend.xp.float32
    assert opt.means().dtype == backend.xp.float32
    np.testing.assert_allclose(backend.to_numpy(opt.margins), VECTORS[0][3], rtol=1e-6)
    assert abs(float(backend.to_numpy(opt.objective)) - VECTORS[0][5]) <= 1e-6
    limits = critical_regularization(counts)
    assert compat.array_namespace(limits) is backend.xp


def test_result_is_frozen():
    opt = ufm_relu_optimum([3, 1], 0.2, 0.2)
    assert isinstance(opt, UFMOptimum)
    with pytest.raises(AttributeError):
        opt.lambda_w = 1.0


# ---------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    ("counts", "error", "match"),
    [
        ([5, 2.5, 3], ValueError, r"`counts` must be positive integers; got 2\.5 at index 1"),
        ([5, 0, 3], ValueError, r"`counts` .* got 0 at index 1"),
        ([5, -4], ValueError, r"`counts` .* got -4 at index 1"),
        ([5, float("nan")], ValueError, r"`counts` .* got nan at index 1"),
        ([5], ValueError, r"`counts` must describe at least 2 classes; got 1"),
        ([], ValueError, r"`counts` must describe at least 2 classes; got 0"),
        ([[1, 2], [3, 4]], ValueError, r"`counts` must be 1-D .* shape \(2, 2\)"),
        ([True, False], TypeError, r"`counts` must hold integers; got dtype bool"),
        ("5,3", TypeError, r"`counts` must be a sequence of positive integers; got '5,3'"),
        (["a", "b"], TypeError, r"`counts` must hold integers"),
    ],
)
def test_bad_counts(counts, error, match):
    with pytest.raises(error, match=match):
        ufm_relu_optimum(counts, 1e-3, 1e-3)
    with pytest.raises(error, match=match):
        collapse_threshold(counts, 1e-3, 1e-3)
    with pytest.raises(error, match=match):
        critical_regularization(counts)


@pytest.mark.parametrize("name", ["lambda_w", "lambda_h"])
@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (0.0, ValueError, r"must be > 0; got 0\.0: .*no minimiser"),
        (-1e-3, ValueError, r"must be > 0; got -0\.001: .*no minimiser"),
        (float("nan"), ValueError, r"must be finite; got nan"),
        (float("inf"), ValueError, r"must be finite; got inf"),
        ("big", TypeError, r"must be a real number; got 'big'"),
        (True, TypeError, r"must be a real number; got True"),
    ],
)
def test_bad_lambdas(name, value, error, match):
    kwargs = {"lambda_w": 1e-3, "lambda_h": 1e-3, name: value}
    with pytest.raises(error, match=f"`{name}` {match}"):
        ufm_relu_optimum([5, 3], **kwargs)
    with pytest.raises(error, match=f"`{name}` {match}"):
        collapse_threshold([5, 3], **kwargs)
    with pytest.raises(error, match=f"`{name}` {match}"):
        min_samples_to_survive([5, 3], 0, **kwargs)


def test_dim_too_small_says_how_many():
    with pytest.raises(ValueError, match=r"`dim` must be at least 3, the number of alive .*got 2"):
        ufm_relu_optimum([30, 20, 3, 1], 2e-2, 2e-2, dim=2)
    with pytest.raises(ValueError, match=r"`dim` must be at least 1; got 0"):
        ufm_relu_optimum([5, 3, 2], 1.0, 1.0, dim=0)
    with pytest.raises(TypeError, match=r"`dim` must be an integer; got 2\.0"):
        ufm_relu_optimum([5, 3], 1e-3, 1e-3, dim=2.0)


@pytest.mark.parametrize("bias", [True, 1])
def test_bias_points_to_solver(bias):
    with pytest.raises(ValueError, match=r"`bias` must be False or None; got .*solve_ufm"):
        ufm_relu_optimum([5, 3], 1e-3, 1e-3, bias=bias)


def test_bad_dtype_and_namespace():
    with pytest.raises(TypeError, match=r"`dtype` must be a real floating dtype"):
        ufm_relu_optimum([5, 3], 1e-3, 1e-3, dtype=np.int64)
    with pytest.raises(TypeError, match=r"`xp` must be an array library module"):
        ufm_relu_optimum([5, 3], 1e-3, 1e-3, xp=math)


def test_bad_class_index():
    with pytest.raises(ValueError, match=r"`k` must lie in \[0, 2\); got 2"):
        min_samples_to_survive([5, 3], 2, 1e-3, 1e-3)
    with pytest.raises(TypeError, match=r"`k` must be an integer; got 0\.5"):
        min_samples_to_survive([5, 3], 0.5, 1e-3, 1e-3)


# ---------------------------------------------------------------------------
# exact integer counts: nothing wraps


@pytest.mark.parametrize(
    ("counts", "match"),
    [
        ([1e19, 5], r"`counts` must be at most 2\*\*63 - 1 = 9223372036854775807; got 1e\+19"),
        (
            np.array([2**63, 5], dtype=np.uint64),
            r"`counts` must be at most 2\*\*63 - 1 .*; got 9223372036854775808 at index 0",
        ),
        (
            [5, 2**70],
            r"`counts` must be positive integers \(at most 2\*\*63 - 1.*"
            r"got 1180591620717411303424 at",
        ),
        ([2**62, 2**62, 1], r"`counts` must sum to at most 2\*\*63 - 1 .*total of 92\d+"),
        ([5, -(2**70)], r"`counts` must be positive integers \(>= 1\); got -\d+ at index 1"),
        ([5, float("inf")], r"`counts` must be positive integers; got inf at index 1"),
    ],
)
def test_out_of_range_counts_never_wrap(counts, match):
    for call in (
        lambda: ufm_relu_optimum(counts, 1e-3, 1e-3),
        lambda: collapse_threshold(counts, 1e-3, 1e-3),
        lambda: critical_regularization(counts),
        lambda: min_samples_to_survive(counts, 0, 1e-3, 1e-3),
    ):
        with pytest.raises(ValueError, match=match):
            call()


def test_largest_counts_are_exact(backend):
    big = 2**62
    opt = _optimum(backend, [big, big - 1], 1e-40, 1e-40)
    assert opt.num_samples == 2**63 - 1  # no int64 wrap
    assert opt.to_dict()["counts"] == [big, big - 1]
    assert _host(backend, opt.counts).tolist() == [big, big - 1]
    assert _host(backend, opt.alive).all() and math.isfinite(float(_host(backend, opt.objective)))
    assert min_samples_to_survive([big, 5], 1, 1e-40, 1e-40) is not None
    uint = np.array([3, 2**40], dtype=np.uint64)
    assert ufm_relu_optimum(uint, 1e-3, 1e-3).counts.tolist() == [3, 2**40]


def test_survival_counts_of_every_class_match_one_by_one():
    from ncgeom.theory.optimum import _survival_counts

    counts = [5000, 2000, 500, 100, 20, 1]
    expected = [min_samples_to_survive(counts, k, 5e-3, 1e-3) for k in range(6)]
    assert _survival_counts(np.array(counts), 5e-3, 1e-3) == expected


@pytest.mark.parametrize("device", ["cuda", "gpu", 7])
def test_unusable_device_is_named(device):
    with pytest.raises(ValueError, match=r"`device` must be a device of .*numpy usable here"):
        ufm_relu_optimum([3, 2], 1e-2, 1e-2, device=device)
    with pytest.raises(ValueError, match=r"`device` must be a device of .* usable here"):
        critical_regularization([3, 2], device=device)


def _alive_exactly(m, rest, k, lw, lh):
    """``m (K-1) > (rest + m)^2 K lw lh`` in exact rational arithmetic."""
    return m * (k - 1) > (rest + m) ** 2 * k * Fraction(lw) * Fraction(lh)


def test_min_samples_to_survive_is_exact_on_a_wide_interval_far_from_zero():
    # The float discriminant rounds to <= 0 here while the exact interval is
    # 2.9e9 counts wide: a search from the float root once stepped 1.4e9 times.
    r = (2**62 - 1) // 3
    counts, lw, lh = [r // 2, r - r // 2, 1], 2.0**-32, 2.0**-31
    start = time.perf_counter()
    first = min_samples_to_survive(counts, 2, lw, lh)
    assert time.perf_counter() - start < 1.0
    rest = r
    assert _alive_exactly(first, rest, 3, lw, lh)
    assert not _alive_exactly(first - 1, rest, 3, lw, lh)


@pytest.mark.parametrize("seed", range(5))
def test_min_samples_to_survive_matches_a_brute_force_search(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 6))
    counts = rng.integers(1, 400, size=k).tolist()
    lw, lh = float(10 ** rng.uniform(-4, -2)), float(10 ** rng.uniform(-4, -2))
    for cls in range(k):
        rest = sum(counts) - counts[cls]
        alive = [m for m in range(1, 20_000) if _alive_exactly(m, rest, k, lw, lh)]
        assert min_samples_to_survive(counts, cls, lw, lh) == (alive[0] if alive else None)
