"""docs/metrics.md, "Conventions in other public code": each recipe reproduces the
other code's number. The other code's formula is restated here in our own words
(as the docs describe it), never imported."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ncgeom import ClassStats, metrics, nc_report
from ncgeom.theory_metrics import logit_structure_error


def nf(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a)


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    counts = np.array([60, 25, 9, 4])
    k, d = len(counts), 12
    labels = np.repeat(np.arange(k), counts)
    centres = rng.random((k, d)) * 3
    features = centres[labels] + 0.3 * rng.normal(size=(labels.size, d))
    classifier = centres + 0.2 * rng.normal(size=(k, d))
    stats = ClassStats.from_features(features, labels, k, gram=True)
    return features, labels, counts, classifier, stats


def class_means(features, labels, k):
    return np.stack([features[labels == c].mean(axis=0) for c in range(k)])


def test_sigma_b_at_the_mean_of_class_means_is_global_mean_classes(data):
    features, labels, counts, _, stats = data
    k = len(counts)
    mu = class_means(features, labels, k)
    centred = mu - mu.mean(axis=0)  # the unweighted mean of the class means
    sigma_b = centred.T @ centred / k
    dev = features - mu[labels]
    sigma_w = dev.T @ dev / len(labels)
    theirs = np.trace(sigma_w @ np.linalg.pinv(sigma_b)) / k
    assert float(metrics.nc1(stats, global_mean="classes")) == pytest.approx(theirs, rel=1e-12)
    assert float(metrics.nc1(stats)) != pytest.approx(theirs, rel=1e-3)  # the default differs


def test_sigma_b_weighted_by_class_frequency_recipe(data):
    features, labels, counts, _, stats = data
    k = len(counts)
    # restated: Sigma_B = sum_k (n_k/N)(mu_k - mu_G)(mu_k - mu_G)^T, mu_G the sample mean
    mu = class_means(features, labels, k)
    dev_b = mu - features.mean(axis=0)
    sigma_b = (dev_b * (counts / counts.sum())[:, None]).T @ dev_b
    dev = features - mu[labels]
    theirs = np.trace(dev.T @ dev / len(labels) @ np.linalg.pinv(sigma_b)) / k
    # the docs' recipe, from the statistics only
    mu_s, n = stats.means, stats.counts
    weights = n / n.sum()
    centred = mu_s - (weights[:, None] * mu_s).sum(0)
    sigma_b_weighted = centred.T @ (weights[:, None] * centred)
    ours = np.trace(stats.within_covariance() @ np.linalg.pinv(sigma_b_weighted)) / k
    assert ours == pytest.approx(theirs, rel=1e-10)


def test_fixed_pinv_cutoff_keeps_the_rounding_direction_in_float32():
    rng = np.random.default_rng(0)
    k, d, per = 4, 16, 500
    labels = np.repeat(np.arange(k), per)
    centres = np.eye(k, d) * 5.0
    features64 = centres[labels] + 1e-4 * rng.normal(size=(labels.size, d))
    features = features64.astype(np.float32)

    def nc1_with_cutoff(x: np.ndarray, rcond: float) -> float:
        mu = class_means(x, labels, k)  # in the input's dtype, as NumPy code keeps it
        centred = mu - x.mean(axis=0)
        sigma_b = centred.T @ centred / k
        dev = x - mu[labels]
        sigma_w = dev.T @ dev / len(labels)
        return float(np.trace(sigma_w @ np.linalg.pinv(sigma_b, rcond=rcond)) / k)

    reference = nc1_with_cutoff(features64, 1e-15)
    fixed = nc1_with_cutoff(features, 1e-15)  # NumPy's default cutoff
    relative = nc1_with_cutoff(features, max(d, k) * np.finfo(np.float32).eps)
    ours = float(metrics.nc1(ClassStats.from_features(features, labels, k, gram=True)))
    assert fixed > 1e3 * reference  # the noise direction of Sigma_B is inverted
    assert relative == pytest.approx(reference, rel=0.05)
    assert ours == pytest.approx(reference, rel=1e-3)


def test_self_duality_of_other_code_is_logit_structure_error_with_unit_margins(data):
    features, labels, counts, classifier, stats = data
    k = len(counts)
    mu = class_means(features, labels, k)
    mc = mu - mu.mean(axis=0)
    ideal = np.eye(k) - np.ones((k, k)) / k
    theirs = np.linalg.norm(nf(classifier @ mc.T) - nf(ideal))
    ours = float(logit_structure_error(classifier, mc, np.ones(k)))
    assert ours == pytest.approx(theirs, rel=1e-12)
    # not our self_duality_error, which compares nf(W) with nf(Mc)
    assert float(metrics.self_duality_error(classifier, stats)) != pytest.approx(theirs, rel=1e-2)


def test_unbiased_variances_and_coefficient_of_variation_cdnv(data):
    features, labels, counts, _, stats = data
    k = len(counts)
    mu = class_means(features, labels, k)
    var = np.array(
        [((features[labels == c] - mu[c]) ** 2).sum() / (counts[c] - 1) for c in range(k)]
    )
    i, j = np.triu_indices(k, 1)
    pairs = (var[i] + var[j]) / (2 * ((mu[i] - mu[j]) ** 2).sum(axis=1))
    theirs = pairs.std() / pairs.mean()  # their reduction: std / mean of the pairs
    # recipe: our per-class variances times n/(n-1), the pairs, then std/mean
    v = np.asarray(stats.class_variances) * counts / (counts - 1)
    m = np.asarray(stats.means)
    ours_pairs = (v[i] + v[j]) / (2 * ((m[i] - m[j]) ** 2).sum(axis=1))
    assert ours_pairs.std() / ours_pairs.mean() == pytest.approx(theirs, rel=1e-10)
    # and the mean of the pairs with n-1 is not our cdnv (mean with 1/n)
    assert float(metrics.cdnv(stats)) == pytest.approx(
        np.mean(((v * (counts - 1) / counts)[i] + (v * (counts - 1) / counts)[j])
                / (2 * ((m[i] - m[j]) ** 2).sum(axis=1))), rel=1e-10
    )  # fmt: skip


def test_signed_equiangularity_recipe(data):
    features, labels, counts, _, stats = data
    k = len(counts)
    mu = class_means(features, labels, k)
    unit = mu - features.mean(axis=0)
    unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
    i, j = np.triu_indices(k, 1)
    shifted = (unit @ unit.T)[i, j] + 1 / (k - 1)
    theirs = shifted.std() / shifted.mean()  # signed, std / mean
    assert float(metrics.equiangularity(stats)) == pytest.approx(np.abs(shifted).mean())
    centred = np.asarray(stats.means) - np.asarray(stats.global_mean)
    centred = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    recipe = (centred @ centred.T)[i, j] + 1 / (k - 1)
    assert recipe.std() / recipe.mean() == pytest.approx(theirs, rel=1e-10)


def test_equinorm_with_the_sample_std_of_torch(data):
    features, labels, counts, _, stats = data
    k = len(counts)
    norms = np.linalg.norm(class_means(features, labels, k) - features.mean(axis=0), axis=1)
    theirs = norms.std(ddof=1) / norms.mean()  # torch's Tensor.std() is unbiased
    ours = float(metrics.equinorm(stats))
    assert ours == pytest.approx(norms.std() / norms.mean(), rel=1e-10)
    assert ours * np.sqrt(k / (k - 1)) == pytest.approx(theirs, rel=1e-10)


def test_scaled_alignment_with_equal_counts_is_centred_self_duality():
    rng = np.random.default_rng(3)
    k, per = 4, 20
    labels = np.repeat(np.arange(k), per)
    features = rng.random((k, 6))[labels] * 2 + 0.1 * rng.random((k * per, 6))
    classifier = rng.normal(size=(k, 6))
    stats = ClassStats.from_features(features, labels, k)
    scaled = float(metrics.scaled_alignment_error(classifier, stats))
    assert scaled == pytest.approx(float(metrics.self_duality_error(classifier, stats)))
    uncentred = np.linalg.norm(nf(classifier) - nf(np.asarray(stats.means)))
    assert scaled != pytest.approx(uncentred, rel=1e-3)


def test_etf_error_of_an_exact_etf_under_imbalance_needs_global_mean_classes():
    k = 3
    etf = np.eye(k) - 1 / k  # rows: a simplex ETF, centred at the mean of the rows
    counts = [50, 10, 2]
    labels = np.repeat(np.arange(k), counts)
    stats = ClassStats.from_features(etf[labels] + 1.0, labels, k)
    assert float(metrics.etf_error(stats, global_mean="classes")) < 1e-12
    assert float(metrics.etf_error(stats)) == pytest.approx(0.87, abs=0.01)


def test_relu_of_the_means_changes_nothing_for_relu_features(data):
    features, labels, counts, _, _ = data
    k = len(counts)
    mu = class_means(np.maximum(features, 0), labels, k)
    assert np.array_equal(np.maximum(mu, 0), mu)  # post-ReLU features: ReLU(mean) = mean


def test_reports_agree_with_the_recipes_on_in_memory_input(data):
    features, labels, _, classifier, stats = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = nc_report((features, labels), classifier, global_mean="classes")
    assert report.nc1 == pytest.approx(float(metrics.nc1(stats, global_mean="classes")))
