"""The numerical UFM+ solver against the closed form, written here from the theorem.

The reference below is an independent float64 NumPy transcription of the
closed-form minimiser (margins, feature norms, logits, classifier, optimal
value); the published test vectors are hard-coded.
"""

from __future__ import annotations

import importlib.util
import math
import re
import time
import tracemalloc

import array_api_compat
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ncgeom import solve
from ncgeom.solve import UFMSolution, solve_ufm, working_memory
from ncgeom.utils import to_host

from reference import PUBLISHED_VECTORS as VECTORS
from reference import ufm_closed_form

HAS_TORCH = importlib.util.find_spec("torch") is not None


# ---------------------------------------------------------------------------
# independent closed form (bias-free, lambda_w, lambda_h > 0)


def check_geometry(sol: UFMSolution, counts, lambda_w, lambda_h, tol: float = 1e-4) -> None:
    """Orthogonal non-negative means with the predicted norms, logits and classifier."""
    margins, norms2, _ = ufm_closed_form(counts, lambda_w, lambda_h)
    n = np.asarray(counts, dtype=np.float64)
    k = n.shape[0]
    W, means = to_host(sol.classifier), to_host(sol.means)
    assert np.all(means >= 0)
    # Natural units where every class collapses: ||h||^2 ~ sqrt(lambda_W / (lambda_H n)),
    # ||w||^2 ~ sqrt(lambda_H n / lambda_W).
    unit_h = math.sqrt(lambda_w / (lambda_h * n.max()))
    unit_w = math.sqrt(math.sqrt(lambda_h * n.max() / lambda_w))
    # Gram of the means: diag(||h_k||^2), relative to the largest norm.
    scale = max(norms2.max(), unit_h)
    np.testing.assert_allclose(means @ means.T, np.diag(norms2), rtol=0, atol=tol * scale)
    # Logits of class k's mean: M_k (e_k - 1/K).
    logits = means @ W.T
    expected = margins[:, None] * (np.eye(k) - 1.0 / k)
    np.testing.assert_allclose(logits, expected, rtol=0, atol=tol * max(1.0, margins.max()))
    # Classifier: w_j = gamma (sqrt(n_j) h_j - (1/K) sum_k sqrt(n_k) h_k).
    gamma = np.sqrt(k * lambda_h / ((k - 1) * lambda_w))
    scaled = np.sqrt(n)[:, None] * means
    predicted = gamma * (scaled - scaled.mean(axis=0))
    w_scale = max(np.abs(predicted).max(), unit_w)
    np.testing.assert_allclose(W, predicted, rtol=0, atol=tol * w_scale)
    # Balance lambda_W ||W||^2 = lambda_H sum_k n_k ||h_k||^2.
    reg_w = lambda_w * np.sum(W**2)
    reg_h = lambda_h * np.sum(n * np.sum(means**2, axis=1))
    assert reg_w == pytest.approx(reg_h, rel=tol, abs=tol * 1e-10)


def kkt_residual(sol: UFMSolution, lambda_w, lambda_h) -> float:
    """The documented KKT residual, from gradients written here (bias-free, collapsed)."""
    n = np.asarray(sol.counts, dtype=np.float64)
    W, means = to_host(sol.classifier), to_host(sol.means)
    logits = means @ W.T
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    g = (n / n.sum())[:, None] * (p - np.eye(len(n)))
    grad_w = g.T @ means + lambda_w * W
    grad_h = g @ W + lambda_h * n[:, None] * means
    grad_h = np.where(means > 0, grad_h, np.minimum(grad_h, 0))
    total = np.sum(grad_w**2) / lambda_w + np.sum(grad_h**2 / (lambda_h * n[:, None]))
    return math.sqrt(total)


def _solve(backend, *args, **kwargs) -> UFMSolution:
    """solve_ufm on the backend's namespace and device."""
    return solve_ufm(*args, xp=backend.xp, device=backend.device, **kwargs)


def _host(backend, value) -> np.ndarray:
    """`value` as NumPy, after checking it lives on the backend and its device."""
    like = backend.asarray(np.zeros(1))
    assert array_api_compat.array_namespace(value) is array_api_compat.array_namespace(like)
    assert str(array_api_compat.device(value)) == str(array_api_compat.device(like))
    return backend.to_numpy(value)


# ---------------------------------------------------------------------------
# published test vectors


def test_reference_reproduces_the_published_vectors():
    for counts, lw, lh, margins, norms2, value in VECTORS:
        m, h2, f = ufm_closed_form(counts, lw, lh)
        np.testing.assert_allclose(m, margins, rtol=0, atol=1e-11)
        np.testing.assert_allclose(h2, norms2, rtol=0, atol=1e-11)
        assert f == pytest.approx(value, rel=1e-13)


@pytest.mark.parametrize("form", ["collapsed", "full"])
@pytest.mark.parametrize("vector", VECTORS, ids=["imbalanced", "minority-collapse", "balanced"])
def test_published_vectors(backend, vector, form):
    counts, lw, lh, margins, norms2, value = vector
    sol = _solve(backend, counts, lw, lh, len(counts), form=form, seed=0, frame_start=False)
    assert sol.converged
    assert sol.objective == pytest.approx(value, rel=1e-10)
    assert min(sol.restart_objectives) >= value - 1e-9
    means = _host(backend, sol.means)
    np.testing.assert_allclose(np.sum(means**2, axis=1), norms2, rtol=0, atol=1e-6)
    logits = means @ _host(backend, sol.classifier).T
    k = len(counts)
    np.testing.assert_allclose(
        np.diag(logits) - logits.sum(axis=1) / k,
        np.asarray(margins) * (k - 1) / k,
        rtol=0,
        atol=1e-6,
    )


def test_spurious_stationary_value_is_the_optimum_in_two_dimensions(backend):
    # The minority-collapse vector has a stationary point with two classes
    # collapsed at f = 0.7359. With two dimensions (room for two orthogonal
    # non-negative means) the solver ends there; with four its starts must get
    # past it to the optimum.
    counts, lw, lh = [30, 20, 3, 1], 2e-2, 2e-2
    low = _solve(backend, counts, lw, lh, 2, seed=1)
    assert low.objective == pytest.approx(0.7359, abs=5e-5)
    assert np.count_nonzero(np.linalg.norm(_host(backend, low.means), axis=1)) == 2
    high = _solve(backend, counts, lw, lh, 4, seed=1, frame_start=False)
    assert high.objective == pytest.approx(VECTORS[1][5], rel=1e-10)


def test_kkt_residual_is_the_documented_quantity(backend):
    counts, lw, lh = [30, 20, 3, 1], 2e-2, 2e-2
    sol = _solve(backend, counts, lw, lh, 4, seed=2, max_iter=30, restarts=2)
    assert not sol.converged
    assert sol.kkt_residual > sol.tol
    _host(backend, sol.classifier)
    assert sol.kkt_residual == pytest.approx(kkt_residual(sol, lw, lh), rel=1e-8)
    done = _solve(backend, counts, lw, lh, 4, seed=2)
    assert done.kkt_residual <= done.tol == 1e-10
    assert kkt_residual(done, lw, lh) <= 1.01e-10


# ---------------------------------------------------------------------------
# Hypothesis: random configurations against the closed form


@st.composite
def configurations(draw, max_classes=10, max_count=200, max_extra_dims=2):
    """(counts, lambda_w, lambda_h, dim, seed) with dim >= the surviving classes."""
    k = draw(st.integers(2, max_classes))
    counts = draw(st.lists(st.integers(1, max_count), min_size=k, max_size=k))
    lambda_w = 10 ** draw(st.floats(-5, -1))
    lambda_h = 10 ** draw(st.floats(-5, -1))
    alive = int(np.count_nonzero(ufm_closed_form(counts, lambda_w, lambda_h)[0]))
    dim = max(alive, 1) + draw(st.integers(0, max_extra_dims))
    seed = draw(st.integers(0, 2**32 - 1))
    return counts, lambda_w, lambda_h, dim, seed


SETTINGS = {"deadline": None, "derandomize": True, "suppress_health_check": [HealthCheck.too_slow]}


@settings(max_examples=100, **SETTINGS)
@given(configurations())
def test_collapsed_solver_reaches_the_ufm_closed_form(config):
    check_collapsed_solution(config)


def check_collapsed_solution(config):
    """From random starts, the collapsed solver reaches the closed form's value and geometry."""
    counts, lw, lh, dim, seed = config
    _, _, value = ufm_closed_form(counts, lw, lh)
    sol = solve_ufm(counts, lw, lh, dim, seed=seed, frame_start=False)
    assert sol.converged
    assert min(sol.restart_objectives) >= value - 1e-9
    assert sol.objective == pytest.approx(value, rel=1e-6)
    check_geometry(sol, counts, lw, lh)


@settings(max_examples=30, **SETTINGS)
@given(configurations(max_classes=5, max_count=20))
def test_full_solver_reaches_the_closed_form_with_nc1(config):
    counts, lw, lh, dim, seed = config
    _, _, value = ufm_closed_form(counts, lw, lh)
    sol = solve_ufm(counts, lw, lh, dim, form="full", seed=seed, frame_start=False, restarts=4)
    assert sol.converged
    assert min(sol.restart_objectives) >= value - 1e-9
    assert sol.objective == pytest.approx(value, rel=1e-6)
    features, labels = np.asarray(sol.features), np.asarray(sol.labels)
    means = np.asarray(sol.means)
    np.testing.assert_array_equal(np.bincount(labels, minlength=len(counts)), counts)
    scale = max(np.linalg.norm(means, axis=1).max(), 1e-12)
    np.testing.assert_allclose(features, means[labels], rtol=0, atol=1e-5 * scale)
    check_geometry(sol, counts, lw, lh)


@settings(max_examples=25, **SETTINGS)
@given(configurations(max_classes=6, max_count=100), st.sampled_from([0.0, 1e-3, 1e-1]))
def test_bias_never_hurts_and_satisfies_kkt(config, lambda_b):
    counts, lw, lh, dim, seed = config
    _, _, value = ufm_closed_form(counts, lw, lh)
    sol = solve_ufm(counts, lw, lh, dim, bias=True, lambda_b=lambda_b, seed=seed)
    assert sol.converged
    assert sol.kkt_residual <= 1e-10
    assert sol.objective <= value + 1e-9
    assert sol.bias is not None
    assert sol.bias.shape == (len(counts),)


# ---------------------------------------------------------------------------
# variants, backends, reproducibility


def test_full_and_collapsed_agree_with_weights_and_logit_adjustment(backend):
    counts, lw, lh = [30, 20, 3, 1], 2e-2, 2e-2
    options = {"class_weights": [1.0, 1.5, 10.0, 30.0], "logit_adjustment": 0.5, "bias": True}
    a = _solve(backend, counts, lw, lh, 4, seed=0, **options)
    b = _solve(backend, counts, lw, lh, 4, seed=0, form="full", restarts=4, **options)
    assert a.converged and b.converged
    assert a.objective == pytest.approx(b.objective, rel=1e-9)
    _host(backend, a.bias)


def test_seed_reproduces_and_stays_within_the_batch(backend):
    a = _solve(backend, [7, 3, 1], 1e-3, 1e-2, 3, seed=11)
    b = _solve(backend, [7, 3, 1], 1e-3, 1e-2, 3, seed=11)
    np.testing.assert_array_equal(_host(backend, a.classifier), _host(backend, b.classifier))
    np.testing.assert_array_equal(_host(backend, a.means), _host(backend, b.means))
    assert a.restart_objectives == b.restart_objectives
    assert len(a.restart_objectives) == 8
    assert a.objective == min(a.restart_objectives)
    assert a.restart_objectives[a.best_restart] == a.objective


def test_counts_in_any_order(backend):
    counts, lw, lh = [2, 12, 4, 8], 5e-3, 5e-3
    sol = _solve(backend, counts, lw, lh, 4, seed=3)
    assert sol.objective == pytest.approx(VECTORS[0][5], rel=1e-10)
    norms2 = np.sum(_host(backend, sol.means) ** 2, axis=1)
    np.testing.assert_allclose(norms2, np.asarray(VECTORS[0][4])[[3, 0, 2, 1]], atol=1e-6)


@pytest.mark.parametrize("gap", [1e-2, -1e-2])
def test_class_near_its_collapse_threshold(backend, gap):
    # Class 2 (n = 5) just above or just below n_crit = 5 (1 - gap), where the
    # objective is flattest in its direction.
    counts = [50, 20, 5, 2]
    lam = math.sqrt(5 * (1 - gap) * 3 / (77**2 * 4))
    margins, _, value = ufm_closed_form(counts, lam, lam)
    assert (margins[2] > 0) == (gap > 0)
    sol = _solve(backend, counts, lam, lam, 4, seed=0, frame_start=False)
    assert sol.converged
    assert sol.objective == pytest.approx(value, rel=1e-10)
    _host(backend, sol.means)
    check_geometry(sol, counts, lam, lam)


def test_global_collapse_gives_zero(backend):
    # Every class at or below n_crit = N^2 lw lh K/(K-1): W = 0, H = 0, f = log K.
    sol = _solve(backend, [5, 4, 3], 0.5, 0.5, 3, seed=0)
    assert sol.converged
    assert sol.objective == pytest.approx(math.log(3), rel=1e-12)
    assert np.abs(_host(backend, sol.means)).max() < 1e-8


def test_fewer_dimensions_than_classes(backend):
    sol = _solve(backend, [12, 8, 4, 2], 5e-3, 5e-3, 1, seed=0)
    assert sol.converged
    # One dimension cannot hold the orthogonal means of the optimum: a higher value,
    # the same on every backend.
    assert sol.objective > VECTORS[0][5]
    assert _host(backend, sol.means).shape == (4, 1)
    assert sol.objective == pytest.approx(
        solve_ufm([12, 8, 4, 2], 5e-3, 5e-3, 1, seed=0).objective, rel=1e-9
    )


def test_solver_on_every_backend(backend):
    counts, lw, lh, _, norms2, value = VECTORS[0]
    sol = solve_ufm(counts, lw, lh, 4, seed=5, xp=backend.xp, device=backend.device)
    assert sol.converged
    assert sol.objective == pytest.approx(value, rel=1e-10)
    assert array_api_compat.array_namespace(sol.classifier) is backend.xp
    assert sol.classifier.dtype == backend.xp.float64
    means = backend.to_numpy(sol.means)
    np.testing.assert_allclose(np.sum(means**2, axis=1), norms2, atol=1e-6)
    reference = solve_ufm(counts, lw, lh, 4, seed=5)
    assert sol.restart_objectives == pytest.approx(reference.restart_objectives, rel=1e-9)


def test_full_form_on_every_backend(backend):
    counts, lw, lh, _, _, value = VECTORS[2]
    sol = solve_ufm(
        counts, lw, lh, 3, form="full", restarts=2, seed=0, xp=backend.xp, device=backend.device
    )
    assert sol.converged
    assert sol.objective == pytest.approx(value, rel=1e-10)
    assert sol.features.shape == (30, 3)
    assert array_api_compat.array_namespace(sol.features) is backend.xp


def test_float32_default_tolerance(backend):
    counts, lw, lh, _, _, value = VECTORS[0]
    sol = _solve(backend, counts, lw, lh, 4, seed=0, dtype=backend.xp.float32)
    assert sol.tol == 1e-5
    assert sol.classifier.dtype == backend.xp.float32
    _host(backend, sol.classifier)
    assert sol.converged
    assert sol.objective == pytest.approx(value, rel=1e-5)


# ---------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (
            ([3, 0, 2], 1e-2, 1e-2, 3),
            {},
            ValueError,
            r"`counts` must be positive integers \(>= 1\); got 0 at index 1",
        ),
        (
            ([3, 2.5], 1e-2, 1e-2, 3),
            {},
            ValueError,
            r"`counts` must be positive integers; got 2\.5 at index 1",
        ),
        (([3, -1], 1e-2, 1e-2, 3), {}, ValueError, r"`counts` must be positive integers"),
        ((["a", "b"], 1e-2, 1e-2, 3), {}, TypeError, r"`counts` must hold integers"),
        (
            ([5], 1e-2, 1e-2, 3),
            {},
            ValueError,
            r"`counts` must describe at least 2 classes; got 1",
        ),
        (([[1, 2]], 1e-2, 1e-2, 3), {}, ValueError, r"`counts` must be 1-D"),
        (([3, 2], 0.0, 1e-2, 3), {}, ValueError, r"`lambda_w` must be > 0; got 0.0.*no minimiser"),
        (([3, 2], 1e-2, -1.0, 3), {}, ValueError, r"`lambda_h` must be > 0; got -1.0.*no minimis"),
        (([3, 2], 1e-2, 1e-2, 0), {}, ValueError, r"`dim` must be a positive integer; got 0"),
        (([3, 2], 1e-2, 1e-2, 2.0), {}, TypeError, r"`dim` must be an integer"),
        (([3, 2], 1e-2, 1e-2, 2), {"form": "sampled"}, ValueError, r"`form` must be one of"),
        (([3, 2], 1e-2, 1e-2, 2), {"lambda_b": 0.1}, ValueError, r"`lambda_b` acts on a bias"),
        (([3, 2], 1e-2, 1e-2, 2), {"bias": True, "lambda_b": -1.0}, ValueError, r"`lambda_b`"),
        (
            ([3, 2], 1e-2, 1e-2, 2),
            {"restarts": 0},
            ValueError,
            r"`restarts` must be a positive integer",
        ),
        (([3, 2], 1e-2, 1e-2, 2), {"tol": 0.0}, ValueError, r"`tol` must be > 0"),
        (([3, 2], 1e-2, 1e-2, 2), {"dtype": np.int64}, TypeError, r"`dtype` must be a real"),
        (([3, 2], 1e-2, 1e-2, 2), {"class_weights": [1.0]}, ValueError, r"`class_weights`"),
    ],
)
def test_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        solve_ufm(*args, **kwargs)


def test_module_all_is_sorted_and_public():
    assert list(solve.__all__) == sorted(solve.__all__)
    for name in solve.__all__:
        assert hasattr(solve, name)


# ---------------------------------------------------------------------------
# slow sweep


@pytest.mark.slow
@settings(max_examples=600, **SETTINGS)
@given(configurations(max_extra_dims=12))
def test_slow_collapsed_sweep(config):
    check_collapsed_solution(config)


@pytest.mark.slow
@settings(max_examples=60, **SETTINGS)
@given(configurations(max_classes=10, max_count=200))
def test_slow_full_sweep(config):
    counts, lw, lh, dim, seed = config
    _, _, value = ufm_closed_form(counts, lw, lh)
    sol = solve_ufm(counts, lw, lh, dim, form="full", seed=seed, frame_start=False)
    assert sol.converged
    assert min(sol.restart_objectives) >= value - 1e-9
    assert sol.objective == pytest.approx(value, rel=1e-6)
    means = np.asarray(sol.means)
    scale = max(np.linalg.norm(means, axis=1).max(), 1e-12)
    np.testing.assert_allclose(
        np.asarray(sol.features), means[np.asarray(sol.labels)], rtol=0, atol=1e-5 * scale
    )
    check_geometry(sol, counts, lw, lh)


@pytest.mark.slow
@settings(max_examples=200, **SETTINGS)
@given(configurations(), st.sampled_from([0.0, 1e-4, 1e-2, 1.0]))
def test_slow_bias_sweep(config, lambda_b):
    counts, lw, lh, dim, seed = config
    _, _, value = ufm_closed_form(counts, lw, lh)
    sol = solve_ufm(counts, lw, lh, dim, bias=True, lambda_b=lambda_b, seed=seed)
    assert sol.converged
    assert sol.objective <= value + 1e-9


# ---------------------------------------------------------------------------
# size guard: the working memory is checked before anything is allocated


@pytest.mark.parametrize("counts", [[10**9, 10], [10**6, 10]])
def test_full_form_with_huge_counts_names_the_collapsed_form(counts):
    started = time.perf_counter()
    with pytest.raises(ValueError) as info:
        solve_ufm(counts, 1e-3, 1e-3, 2, form="full")
    assert time.perf_counter() - started < 2.0
    message = str(info.value)
    assert re.search(r"need about [\d.]+ [GT]iB of working memory", message)
    assert 'pass form="collapsed"' in message and "`max_bytes`" in message
    solve_ufm(counts, 1e-3, 1e-3, 2, form="collapsed", max_iter=10, restarts=1)


def test_huge_k_is_refused_with_its_size():
    with pytest.raises(ValueError, match=r"100000 classes.*TiB.*fewer classes, a smaller `dim`"):
        solve_ufm([10] * 100_000, 1e-3, 1e-3, 100_000)
    with pytest.raises(ValueError, match=r"`max_bytes` must be a positive integer; got 0"):
        solve_ufm([3, 2], 1e-3, 1e-3, 2, max_bytes=0)
    with pytest.raises(ValueError, match=r"more than `max_bytes` = 1000 bytes"):
        solve_ufm([3, 2], 1e-3, 1e-3, 2, max_bytes=1000)
    assert solve_ufm([3, 2], 1e-3, 1e-3, 2, max_bytes=None, max_iter=5).counts == (3, 2)


@pytest.mark.parametrize(
    ("counts", "dim", "form", "restarts"),
    [([200] * 10, 10, "full", 4), ([50] * 40, 5, "full", 2), ([1] * 120, 120, "collapsed", 2)],
)
def test_working_memory_bounds_the_measured_peak(counts, dim, form, restarts):
    # Warm up first: lazy imports and caches of a first call are not working memory.
    solve_ufm([2, 1], 1e-3, 1e-3, 2, form=form, restarts=1, max_iter=2)
    tracemalloc.start()
    try:
        solve_ufm(counts, 1e-3, 1e-3, dim, form=form, restarts=restarts, max_iter=20, seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    estimate = working_memory(counts, dim, form=form, restarts=restarts)
    assert peak <= estimate <= 4 * peak


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"seed": "abc"}, TypeError, r"`seed` must be an int >= 0, a numpy.random.Generator"),
        ({"seed": -1}, ValueError, r"`seed` must be >= 0; got -1"),
        ({"bias": "yes"}, TypeError, r"`bias` must be True or False; got 'yes'"),
        ({"frame_start": None}, TypeError, r"`frame_start` must be True or False; got None"),
        ({"device": "cuda"}, ValueError, r"`device` must be a device of .*numpy usable here"),
    ],
)
def test_bad_options_name_themselves(kwargs, error, match):
    with pytest.raises(error, match=match):
        solve_ufm([3, 2], 1e-2, 1e-2, 2, **kwargs)
