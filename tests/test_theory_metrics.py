"""Theory-based metrics against direct float64 NumPy formulas."""

from __future__ import annotations

import array_api_compat as compat
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ncgeom.theory_metrics as tm
from ncgeom.theory import ufm_relu_optimum
from ncgeom.theory_metrics import (
    classifier_gram_error,
    gof_error,
    logit_structure_error,
    margin_comparison,
    norm_comparison,
)

# ---------------------------------------------------------------------------
# reference formulas, written from the definitions


def _nf(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a)


def _ref_gof(means, margins, counts):
    target = np.diag(margins / np.sqrt(counts))
    return np.linalg.norm(_nf(means @ means.T) - _nf(target))


def _ref_wwt(w, margins, counts):
    k = len(margins)
    c = k * np.eye(k) - np.ones((k, k))
    target = c @ np.diag(np.sqrt(counts) * margins) @ c
    return np.linalg.norm(_nf(w @ w.T) - _nf(target))


def _ref_wh(w, means, margins):
    k = len(margins)
    target = (np.eye(k) - np.ones((k, k)) / k) @ np.diag(margins)
    return np.linalg.norm(_nf(w @ means.T) - _nf(target))


def _ref_margins(w, means, against):
    z = means @ w.T  # row k: logits of the class-k mean
    k = z.shape[0]
    true = np.diag(z)
    off = z[~np.eye(k, dtype=bool)].reshape(k, k - 1)
    return true - (off.max(axis=1) if against == "max" else off.mean(axis=1))


def _ref_norms(margins, counts, ratio):
    k = len(margins)
    return np.sqrt(np.sqrt((k - 1) * ratio / (k * counts)) * margins)


def _random_geometry(k=5, d=7, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(k, d))
    means = np.abs(rng.normal(size=(k, d)))
    margins = rng.uniform(0.5, 4.0, size=k)
    counts = rng.integers(1, 100, size=k).astype(np.float64)
    return w, means, margins, counts


def _assert_on_backend(value, backend, like):
    assert compat.array_namespace(value) is backend.xp
    assert str(compat.device(value)) == str(compat.device(like))


# ---------------------------------------------------------------------------
# against the reference, on every backend


def test_matrix_errors_match_reference(backend):
    w, means, margins, counts = _random_geometry()
    bw, bm = backend.asarray(w), backend.asarray(means)
    cases = [
        (gof_error(bm, margins, counts=counts), _ref_gof(means, margins, counts)),
        (classifier_gram_error(bw, margins, counts=counts), _ref_wwt(w, margins, counts)),
        (logit_structure_error(bw, bm, margins), _ref_wh(w, means, margins)),
    ]
    for got, expected in cases:
        _assert_on_backend(got, backend, bm)
        assert got.shape == ()
        assert expected > 0.05  # a random geometry is far from the prediction
        np.testing.assert_allclose(backend.to_numpy(got), expected, rtol=1e-12)


@pytest.mark.parametrize("against", ["max", "mean"])
def test_margin_comparison_matches_reference(backend, against):
    w, means, margins, _ = _random_geometry()
    bw, bm = backend.asarray(w), backend.asarray(means)
    cmp = margin_comparison(bw, bm, backend.asarray(margins), against=against)
    _assert_on_backend(cmp.measured, backend, bm)
    _assert_on_backend(cmp.predicted, backend, bm)
    np.testing.assert_allclose(
        backend.to_numpy(cmp.measured), _ref_margins(w, means, against), rtol=1e-12
    )
    np.testing.assert_array_equal(backend.to_numpy(cmp.predicted), margins)


def test_norm_comparison_matches_reference(backend):
    _, means, margins, counts = _random_geometry()
    bm = backend.asarray(means)
    cmp = norm_comparison(bm, margins, counts=counts, lambda_ratio=3.0)
    _assert_on_backend(cmp.measured, backend, bm)
    np.testing.assert_allclose(
        backend.to_numpy(cmp.measured), np.linalg.norm(means, axis=1), rtol=1e-13
    )
    np.testing.assert_allclose(
        backend.to_numpy(cmp.predicted), _ref_norms(margins, counts, 3.0), rtol=1e-13
    )
    scaled = norm_comparison(bm, margins, counts=counts, normalize=True)
    expected = _ref_norms(margins, counts, 1.0)
    np.testing.assert_allclose(
        backend.to_numpy(scaled.predicted), expected / np.linalg.norm(expected), rtol=1e-13
    )
    measured = np.linalg.norm(means, axis=1)
    np.testing.assert_allclose(
        backend.to_numpy(scaled.measured), measured / np.linalg.norm(measured), rtol=1e-13
    )


def test_optimum_on_backend_and_float32(backend):
    opt = ufm_relu_optimum([30, 20, 3, 1], 2e-2, 2e-2, xp=backend.xp, device=backend.device)
    w, means = opt.classifier(), opt.means()
    assert float(backend.to_numpy(gof_error(means, opt))) <= 1e-14
    f32 = backend.xp.float32
    w32, m32 = backend.xp.astype(w, f32), backend.xp.astype(means, f32)
    value = logit_structure_error(w32, m32, opt)
    assert value.dtype == backend.xp.float32
    assert float(backend.to_numpy(value)) <= 1e-6


# ---------------------------------------------------------------------------
# zero on the theory's own optimum


@st.composite
def configs(draw):
    k = draw(st.integers(2, 10))
    counts = draw(st.lists(st.integers(1, 200), min_size=k, max_size=k))
    n = sum(counts)
    # lambda_W lambda_H below the largest class's limit: at least one class alive.
    top = max(counts) * (k - 1) / (k * n * n)
    log_p = draw(st.floats(-10.0, min(-2.0, float(np.log10(top)) - 0.01)))
    # lambda_W and lambda_H = p / lambda_W both log-uniform within [1e-5, 1e-1]
    log_w = draw(st.floats(max(-5.0, log_p + 1.0), min(-1.0, log_p + 5.0)))
    return counts, 10.0**log_w, 10.0 ** (log_p - log_w)


@settings(max_examples=40, deadline=None)
@given(configs())
def test_zero_on_own_optimum(config):
    counts, lw, lh = config
    opt = ufm_relu_optimum(counts, lw, lh)
    assert opt.num_alive >= 1
    w, means = opt.classifier(), opt.means()
    assert gof_error(means, opt) <= 1e-13
    assert classifier_gram_error(w, opt) <= 1e-13
    assert logit_structure_error(w, means, opt) <= 1e-13
    # Explicit margins and counts give the same targets as the optimum itself.
    n = np.asarray(counts, dtype=np.float64)
    assert gof_error(means, opt.margins, counts=n) <= 1e-13
    assert classifier_gram_error(w, opt.margins, counts=n) <= 1e-13
    for against in ("max", "mean"):
        cmp = margin_comparison(w, means, opt, against=against)
        np.testing.assert_allclose(cmp.measured, opt.margins, rtol=1e-12, atol=1e-12)
    cmp = norm_comparison(means, opt)
    np.testing.assert_allclose(cmp.measured, opt.feature_norms, rtol=1e-13, atol=1e-15)
    ratio = lw / lh
    cmp = norm_comparison(means, opt.margins, counts=n, lambda_ratio=ratio)
    np.testing.assert_allclose(cmp.predicted, opt.feature_norms, rtol=1e-13)


def test_zero_on_own_optimum_on_every_backend(backend):
    # A fixed example of the property above, on each backend: minority collapse.
    counts, lw, lh = [30, 20, 3, 1], 4e-2, 1e-2
    opt = ufm_relu_optimum(counts, lw, lh, xp=backend.xp, device=backend.device)
    assert opt.num_alive == 3
    host = ufm_relu_optimum(counts, lw, lh)
    w, means = opt.classifier(), opt.means()
    n = np.asarray(counts, dtype=np.float64)
    errors = [
        gof_error(means, opt),
        classifier_gram_error(w, opt),
        logit_structure_error(w, means, opt),
        gof_error(means, host.margins, counts=n),
        classifier_gram_error(w, host.margins, counts=n),
    ]
    for value in errors:
        _assert_on_backend(value, backend, means)
        assert float(backend.to_numpy(value)) <= 1e-13
    for against in ("max", "mean"):
        cmp = margin_comparison(w, means, opt, against=against)
        _assert_on_backend(cmp.measured, backend, means)
        np.testing.assert_allclose(
            backend.to_numpy(cmp.measured), host.margins, rtol=1e-12, atol=1e-12
        )
    cmp = norm_comparison(means, opt)
    _assert_on_backend(cmp.measured, backend, means)
    np.testing.assert_allclose(
        backend.to_numpy(cmp.measured), host.feature_norms, rtol=1e-13, atol=1e-15
    )
    cmp = norm_comparison(means, host.margins, counts=n, lambda_ratio=lw / lh)
    np.testing.assert_allclose(backend.to_numpy(cmp.predicted), host.feature_norms, rtol=1e-13)


def test_explicit_margins_are_scale_free(backend):
    # Margins under another convention that differ by a constant factor give
    # the same normalised errors.
    w, means, margins, counts = _random_geometry(seed=3)
    w, means = backend.asarray(w), backend.asarray(means)
    for scale in (0.5, 7.0):
        for error, args in (
            (classifier_gram_error, (w,)),
            (logit_structure_error, (w, means)),
        ):
            kwargs = {"counts": counts} if error is classifier_gram_error else {}
            scaled = error(*args, scale * margins, **kwargs)
            _assert_on_backend(scaled, backend, w)
            assert float(backend.to_numpy(scaled)) == pytest.approx(
                float(backend.to_numpy(error(*args, margins, **kwargs))), rel=1e-13
            )


def test_blocked_equals_one_shot(backend, monkeypatch):
    w, means, margins, counts = _random_geometry(k=9, d=4, seed=5)
    w, means = backend.asarray(w), backend.asarray(means)
    one_shot = [
        gof_error(means, margins, counts=counts),
        classifier_gram_error(w, margins, counts=counts),
        logit_structure_error(w, means, margins),
        margin_comparison(w, means, margins).measured,
    ]
    monkeypatch.setattr(tm, "_BLOCK_ENTRIES", 20)  # 2 rows of 9 per block
    blocked = [
        gof_error(means, margins, counts=counts),
        classifier_gram_error(w, margins, counts=counts),
        logit_structure_error(w, means, margins),
        margin_comparison(w, means, margins).measured,
    ]
    for a, b in zip(one_shot, blocked, strict=True):
        _assert_on_backend(b, backend, w)
        np.testing.assert_allclose(backend.to_numpy(a), backend.to_numpy(b), rtol=1e-13)


def test_zero_prediction_gives_nan(backend):
    opt = ufm_relu_optimum([5, 3, 2], 1.0, 1.0)  # global collapse
    w, means, _, _ = _random_geometry(k=3)
    w, means = backend.asarray(w), backend.asarray(means)
    for value in (logit_structure_error(w, means, opt), gof_error(means, opt)):
        _assert_on_backend(value, backend, w)
        assert np.isnan(backend.to_numpy(value))


# ---------------------------------------------------------------------------
# bad input


def test_bad_inputs():
    w, means, margins, counts = _random_geometry(k=4)
    opt = ufm_relu_optimum([30, 20, 3, 1], 2e-2, 2e-2)
    with pytest.raises(ValueError, match=r"`means` must be 2-D \(classes, dim\); got shape \(4,"):
        gof_error(means[:, 0], opt)
    with pytest.raises(TypeError, match=r"`means` must have a real floating dtype; got int64"):
        gof_error(means.astype(np.int64), opt)
    with pytest.raises(
        ValueError, match=r"`predicted` describes 4 classes but the measured arrays have 3; "
    ):
        gof_error(means[:3], opt)
    with pytest.raises(ValueError, match=r"`counts` is needed with explicit margins"):
        gof_error(means, margins)
    with pytest.raises(ValueError, match=r"`counts` is taken from the UFMOptimum"):
        classifier_gram_error(w, opt, counts=counts)
    with pytest.raises(ValueError, match=r"`predicted` must have shape \(4,\).*got \(3,\)"):
        logit_structure_error(w, means, margins[:3])
    with pytest.raises(ValueError, match=r"`counts` must be positive; got \[0\.0, "):
        gof_error(means, margins, counts=np.r_[0.0, counts[1:]])
    with pytest.raises(ValueError, match=r"`predicted` must be finite"):
        logit_structure_error(w, means, np.r_[np.nan, margins[1:]])
    with pytest.raises(TypeError, match=r"`predicted` must be a UFMOptimum or a vector"):
        logit_structure_error(w, means, "margins")
    with pytest.raises(ValueError, match=r"`classifier` and `means` must have the same shape"):
        logit_structure_error(w[:, :3], means, margins)
    with pytest.raises(TypeError, match=r"`classifier` and `means` must have the same dtype"):
        logit_structure_error(w.astype(np.float32), means, margins)
    with pytest.raises(ValueError, match=r"`against` must be one of \('max', 'mean'\); got 'min'"):
        margin_comparison(w, means, margins, against="min")
    with pytest.raises(ValueError, match=r"`lambda_ratio` \(lambda_w / lambda_h\) is needed"):
        norm_comparison(means, margins, counts=counts)
    with pytest.raises(ValueError, match=r"`lambda_ratio` is taken from the UFMOptimum"):
        norm_comparison(means, opt, lambda_ratio=1.0)
    with pytest.raises(ValueError, match=r"`lambda_ratio` must be > 0; got -1\.0"):
        norm_comparison(means, margins, counts=counts, lambda_ratio=-1.0)
    with pytest.raises(TypeError, match=r"`means` must be an array"):
        gof_error(means.tolist(), opt)


def test_prediction_on_another_library_is_refused():
    torch = pytest.importorskip("torch")
    w, means, margins, _ = _random_geometry(k=4)
    with pytest.raises(TypeError, match=r"`predicted` must be host data or a numpy array"):
        logit_structure_error(w, means, torch.asarray(margins))
    opt = ufm_relu_optimum([30, 20, 3, 1], 2e-2, 2e-2, xp=torch)
    with pytest.raises(TypeError, match=r"`predicted.margins` must be host data"):
        logit_structure_error(w, means, opt)
