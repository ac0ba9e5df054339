"""docs/conventions.md: each row of its tables reproduces another code base's number.

Every row of the page carries an id (``rw-...``, ``fs-...``, ``td-...``,
``ce-...``, ``gen-...``) and is checked here by the tests marked with
``@row(id)``; `test_every_row_has_a_test_and_every_test_a_row` checks that the
page and this file name the same ids. The other code's formula is restated in
float64 NumPy in our own words, never imported or copied, and the ncgeom call
(or the page's recipe) is checked against it to a relative 1e-10 unless the
test says why not.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ncgeom import ClassStats, metrics, nc_report, ncc_agreement
from ncgeom.theory import ufm_relu_optimum
from ncgeom.theory_metrics import classifier_gram_error, gof_error, logit_structure_error

PAGE = Path(__file__).resolve().parents[1] / "docs" / "conventions.md"
EPS = np.finfo(np.float64).eps
REL = 1e-10

#: The ids of the page's rows, each with the tests that check it (filled by `row`).
ROW_TESTS: dict[str, list[str]] = {}


def row(*ids: str):
    """Mark a test as the check of the page's rows `ids`."""

    def mark(test):
        for name in ids:
            ROW_TESTS.setdefault(name, []).append(test.__name__)
        return test

    return mark


# ----------------------------------------------------------------------------- helpers
def nf(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a)


def class_means(features, labels, k):
    return np.stack([features[labels == c].mean(axis=0) for c in range(k)])


def upper(grid: np.ndarray) -> np.ndarray:
    """The entries k < l of a square grid, row by row."""
    i, j = np.triu_indices(grid.shape[0], 1)
    return grid[i, j]


def unit_rows(a: np.ndarray, eps: float = 0.0) -> np.ndarray:
    return a / (np.linalg.norm(a, axis=1, keepdims=True) + eps)


def pinv_nc1(sigma_w, sigma_b, k, rcond):
    return float(np.trace(sigma_w @ np.linalg.pinv(sigma_b, rcond=rcond)) / k)


def same(ours, theirs, rel: float = REL) -> None:
    """`ours` equals `theirs` to a relative `rel` (elementwise for arrays)."""
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=rel, atol=0)


@dataclass(frozen=True)
class Peer:
    """Imbalanced features with unequal spreads, a classifier, held-out and OOD data."""

    features: np.ndarray
    labels: np.ndarray
    counts: np.ndarray
    classifier: np.ndarray
    bias: np.ndarray
    test_features: np.ndarray
    test_labels: np.ndarray
    ood_features: np.ndarray
    ood_labels: np.ndarray
    stats: ClassStats

    @property
    def k(self) -> int:
        return len(self.counts)

    @property
    def d(self) -> int:
        return self.features.shape[1]


def make_peer(relu: bool = False) -> Peer:
    rng = np.random.default_rng(7)
    counts = np.array([80, 40, 25, 12, 9, 5, 3])
    k, d = len(counts), 12
    centres = 2 * rng.normal(size=(k, d)) + 1.0
    spread = rng.uniform(0.2, 0.8, size=k)

    def draw(per_class):
        labels = np.repeat(np.arange(k), per_class)
        x = centres[labels] + spread[labels, None] * rng.normal(size=(labels.size, d))
        return (np.maximum(x, 0) if relu else x), labels

    features, labels = draw(counts)
    test_features, test_labels = draw(np.full(k, 30))
    classifier = centres - centres.mean(axis=0) + 0.3 * rng.normal(size=(k, d))
    bias = 0.5 * rng.normal(size=k)
    ood_labels = rng.integers(0, 5, size=60)
    ood_features = rng.normal(size=(60, d)) + 0.5
    stats = ClassStats.from_features(features, labels, k, gram=True)
    return Peer(
        features, labels, counts, classifier, bias, test_features, test_labels,
        ood_features, ood_labels, stats,
    )  # fmt: skip


@pytest.fixture(scope="module")
def peer() -> Peer:
    return make_peer()


@pytest.fixture(scope="module")
def relu_peer() -> Peer:
    return make_peer(relu=True)


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


# ----------------------------------------------------------------------------- the page
def page_rows() -> list[list[str]]:
    """Cells of every table row of the page whose first cell is an id in backticks."""
    rows = []
    for line in PAGE.read_text().splitlines():
        if re.match(r"^\| `[a-z0-9]+(-[a-z0-9]+)*` \|", line):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


#: The files of each code base that the rows of its prefix cite.
PEER_FILES = {
    "rw": (
        "rhubarbwu/neural-collapse",
        ("neural_collapse/measure.py", "neural_collapse/kernels.py",
         "neural_collapse/accumulate.py", "neural_collapse/util.py", "examples/mnist.py"),
    ),
    "fs": ("felixsh/nc-toolbox", ("nc_toolbox/metrics.py", "nc_toolbox/statistic.py")),
    "td": ("tding1/Neural-Collapse", ("validate_NC.py",)),
    "ce": ("Fsoft-AIC/Cross-Entropy-Imbalanced", ("validate_NC_unbalanced.py",)),
}  # fmt: skip


def test_every_row_has_a_test_and_every_test_a_row():
    ids = [cells[0].strip("`") for cells in page_rows()]
    assert len(ids) == len(set(ids)), "an id is used by two rows"
    assert set(ids) == set(ROW_TESTS), (
        f"rows without a test: {sorted(set(ids) - set(ROW_TESTS))}; "
        f"tests without a row: {sorted(set(ROW_TESTS) - set(ids))}"
    )


def test_every_row_says_what_to_call_and_what_differs():
    for cells in page_rows():
        assert len(cells) == 4 and all(cells), cells


def test_every_peer_row_cites_a_file_of_its_code_base():
    text = PAGE.read_text()
    for repository, files in PEER_FILES.values():
        assert repository in text
        assert all(path in text for path in files)
    for cells in page_rows():
        prefix = cells[0].strip("`").split("-")[0]
        assert prefix in (*PEER_FILES, "gen"), cells[0]
        if prefix in PEER_FILES:
            assert any(path in cells[1] for path in PEER_FILES[prefix][1]), cells[:2]


def test_the_page_recipes_run():
    code = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert code
    scope: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for block in code:
            exec(compile(block, str(PAGE), "exec"), scope)


# ----------------------------------------------------------------------------- rhubarbwu
def rw_means(features, labels, k):
    """The mean accumulator: class totals over ``n_k + eps``."""
    n = np.bincount(labels, minlength=k).astype(np.float64)
    totals = np.zeros((k, features.shape[1]))
    np.add.at(totals, labels, features)
    return n, totals / (n + EPS)[:, None]


def rw_centre(n, mu, weighted=False):
    """The accumulator's global mean: of the class means, or weighted by counts."""
    return n @ mu / (n.sum() + EPS) if weighted else mu.mean(axis=0)


def rw_within(features, labels, mu):
    """The covariance accumulator: pooled scatter about the class means over ``N + eps``."""
    dev = features - mu[labels]
    return dev.T @ dev / (len(labels) + EPS)


def rw_unit(a):
    """Rows over their norm plus eps (the library's `normalize`)."""
    return unit_rows(a, EPS)


def rw_pair_stats(values):
    """Mean and population variance over the pairs k < l (the library's `symm_reduce`)."""
    mean = values.mean()
    return mean, ((values - mean) ** 2).mean()


def rw_pair_distances(peer: Peer):
    n, mu = rw_means(peer.features, peer.labels, peer.k)
    u = rw_unit(mu - rw_centre(n, mu))
    return upper(np.linalg.norm(u[:, None, :] - u[None, :, :], axis=2))


@row("rw-nc1-pinv")
def test_rw_nc1_pinv(peer):
    n, mu = rw_means(peer.features, peer.labels, peer.k)
    sigma_w = rw_within(peer.features, peer.labels, mu)
    rcond = peer.d * EPS  # torch.linalg.pinv: max(rows, cols) * eps, relative
    for weighted, global_mean in ((False, "classes"), (True, "samples")):
        c = mu - rw_centre(n, mu, weighted)
        theirs = pinv_nc1(sigma_w, c.T @ c / peer.k, peer.k, rcond)
        same(metrics.nc1(peer.stats, global_mean=global_mean), theirs)
    unweighted = pinv_nc1(sigma_w, (mu - mu.mean(0)).T @ (mu - mu.mean(0)) / peer.k, peer.k, rcond)
    assert float(metrics.nc1(peer.stats)) != pytest.approx(unweighted, rel=1e-3)


@row("rw-nc1-pinv")
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


@row("rw-nc1-pinv")
def test_reports_agree_with_the_recipes_on_in_memory_input(data):
    features, labels, _, classifier, stats = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = nc_report((features, labels), classifier, global_mean="classes")
    assert report.nc1 == pytest.approx(float(metrics.nc1(stats, global_mean="classes")))


@row("rw-nc1-svd")
def test_rw_nc1_svd_is_the_pseudo_inverse_at_rank_k_minus_1(peer):
    n, mu = rw_means(peer.features, peer.labels, peer.k)
    sigma_w = rw_within(peer.features, peer.labels, mu)
    for weighted, global_mean in ((False, "classes"), (True, "samples")):
        c = mu - rw_centre(n, mu, weighted)
        sigma_b = c.T @ c / peer.k
        # the top K - 1 singular triplets of the symmetric Sigma_B, inverted
        values, vectors = np.linalg.eigh(sigma_b)
        top = np.argsort(values)[::-1][: peer.k - 1]
        inverse = vectors[:, top] @ np.diag(1 / values[top]) @ vectors[:, top].T
        theirs = float(np.trace(sigma_w @ inverse)) / peer.k
        same(metrics.nc1(peer.stats, global_mean=global_mean), theirs)


@row("rw-nc1-uncentred")
def test_rw_nc1_without_a_centre_is_the_recipe(peer):
    _, mu = rw_means(peer.features, peer.labels, peer.k)
    sigma_w = rw_within(peer.features, peer.labels, mu)
    theirs = pinv_nc1(sigma_w, mu.T @ mu / peer.k, peer.k, peer.d * EPS)
    m, k = np.asarray(peer.stats.means), peer.k
    recipe = np.trace(peer.stats.within_covariance() @ np.linalg.pinv(m.T @ m / k)) / k
    same(recipe, theirs)
    assert float(metrics.nc1(peer.stats, global_mean="classes")) != pytest.approx(theirs, rel=1e-3)


@row("rw-nc1-quotient")
def test_rw_nc1_quotient(peer):
    n, mu = rw_means(peer.features, peer.labels, peer.k)
    c = mu - rw_centre(n, mu)
    theirs = np.trace(rw_within(peer.features, peer.labels, mu)) / np.trace(c.T @ c / peer.k)
    same(metrics.nc1_trace_ratio(peer.stats, global_mean="classes"), theirs)
    assert float(metrics.nc1_trace_ratio(peer.stats)) != pytest.approx(theirs, rel=1e-3)


@row("rw-cdnv")
def test_rw_cdnv_with_a_distance_exponent(peer):
    n, mu = rw_means(peer.features, peer.labels, peer.k)
    sq = ((peer.features - mu[peer.labels]) ** 2).sum(axis=1)
    var_norms = np.bincount(peer.labels, weights=sq, minlength=peer.k) / (n + EPS)
    dist2 = ((mu[:, None, :] - mu[None, :, :]) ** 2).sum(axis=2)
    for exponent in (1.0, 2.0, 0.5):
        with np.errstate(divide="ignore"):  # the diagonal divides by 0; only k < l is read
            grid = (var_norms[:, None] + var_norms[None, :]) / 2 / dist2**exponent
        same(metrics.cdnv(peer.stats, exponent=exponent), upper(grid).mean())
    with np.errstate(divide="ignore"):
        same(metrics.cdnv(peer.stats), upper((var_norms[:, None] + var_norms) / 2 / dist2).mean())


@row("rw-mean-norms")
def test_rw_mean_norms_recipe_and_its_spread(peer):
    n, mu = rw_means(peer.features, peer.labels, peer.k)
    norms = np.linalg.norm(mu - rw_centre(n, mu), axis=1)
    m = np.asarray(peer.stats.means)
    recipe = np.linalg.norm(m - m.mean(axis=0), axis=1)
    same(recipe, norms)
    same(metrics.equinorm(peer.stats, global_mean="classes"), norms.std() / norms.mean())


@row("rw-log-norms")
def test_rw_log_norms_spread_is_log_equinorm(peer):
    n, mu = rw_means(peer.features, peer.labels, peer.k)
    logs = np.log(np.linalg.norm(mu - rw_centre(n, mu), axis=1))
    same(metrics.log_equinorm(peer.stats, global_mean="classes"), logs.std())
    sample = logs.std(ddof=1)  # torch's Tensor.std()
    k = peer.k
    same(metrics.log_equinorm(peer.stats, global_mean="classes") * np.sqrt(k / (k - 1)), sample)


@row("rw-interference-grid")
def test_rw_interference_grid_in_feature_units(peer):
    n, mu = rw_means(peer.features, peer.labels, peer.k)
    c = mu - rw_centre(n, mu)
    theirs = c @ c.T
    ours = np.asarray(metrics.interference_grid(peer.stats, global_mean="classes", cosine=False))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=REL * np.abs(theirs).max())
    # m_G left at 0: the raw means
    m = np.asarray(peer.stats.means)
    np.testing.assert_allclose(m @ m.T, mu @ mu.T, rtol=REL)


@row("rw-interference-stats")
def test_rw_interference_statistics_of_the_cosines(peer):
    n, mu = rw_means(peer.features, peer.labels, peer.k)
    u = rw_unit(mu - rw_centre(n, mu))
    grid = u @ u.T
    cosines = upper(grid)
    stats = peer.stats
    same(metrics.interference_mean(stats, global_mean="classes"), cosines.mean())
    same(metrics.equiangularity_std(stats, global_mean="classes"), cosines.std())
    same(metrics.interference_min(stats, global_mean="classes"), cosines.min())
    same(metrics.interference_max(stats, global_mean="classes"), cosines.max())
    ours = np.asarray(metrics.interference_grid(stats, global_mean="classes"))
    np.testing.assert_allclose(upper(ours), cosines, rtol=REL)


@row("rw-similarities")
def test_rw_similarities_recipe_and_its_spread(peer):
    n, mu = rw_means(peer.features, peer.labels, peer.k)
    dots = np.sum(peer.classifier * (mu - rw_centre(n, mu)), axis=1)
    m = np.asarray(peer.stats.means)
    same(np.sum(peer.classifier * (m - m.mean(axis=0)), axis=1), dots)
    ours = metrics.uniform_duality(peer.classifier, peer.stats, global_mean="classes")
    same(ours, dots.std() / dots.mean())


@row("rw-unc3")
def test_rw_logged_uniform_duality_is_the_sample_variance(peer):
    n, mu = rw_means(peer.features, peer.labels, peer.k)
    dots = np.sum(peer.classifier * (mu - rw_centre(n, mu)), axis=1)
    theirs = dots.var(ddof=1)  # torch's Tensor.var()
    ours = metrics.uniform_duality_variance(peer.classifier, peer.stats, global_mean="classes")
    same(ours, theirs)


@row("rw-similarities-cos")
def test_rw_cosine_similarities_from_distance_norms(peer):
    n, mu = rw_means(peer.features, peer.labels, peer.k)
    c = mu - rw_centre(n, mu)
    w = peer.classifier
    # torch's cosine_similarity: each norm clamped below at 1e-8
    clamp = 1e-8
    theirs = np.sum(w * c, axis=1) / (
        np.maximum(np.linalg.norm(w, axis=1), clamp) * np.maximum(np.linalg.norm(c, axis=1), clamp)
    )
    distances = np.asarray(metrics.distance_norms(w, peer.stats, global_mean="classes"))
    same(1 - distances**2 / 2, theirs)


@row("rw-distance-norms")
def test_rw_distance_norms(peer):
    n, mu = rw_means(peer.features, peer.labels, peer.k)
    c = mu - rw_centre(n, mu)
    w = peer.classifier
    theirs = np.linalg.norm(rw_unit(w) - rw_unit(c), axis=1)
    same(metrics.distance_norms(w, peer.stats, global_mean="classes"), theirs)
    raw = np.linalg.norm(w - c, axis=1)  # norm=False
    m = np.asarray(peer.stats.means)
    same(np.linalg.norm(w - (m - m.mean(axis=0)), axis=1), raw)


def structure_error(a: np.ndarray, b: np.ndarray) -> float:
    """``|| nf(B A^T) - nf(I - J/K) ||_F`` (the ideal scaled to unit norm)."""
    k = a.shape[0]
    ideal = (np.eye(k) - np.ones((k, k)) / k) / np.sqrt(k - 1)
    return float(np.linalg.norm(nf(b @ a.T) - ideal))


@row("rw-self-duality")
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


@row("rw-self-duality")
def test_rw_self_duality_on_imbalanced_data(peer):
    n, mu = rw_means(peer.features, peer.labels, peer.k)
    theirs = structure_error(mu - rw_centre(n, mu), peer.classifier)
    m = np.asarray(peer.stats.means)
    same(logit_structure_error(peer.classifier, m - m.mean(axis=0), np.ones(peer.k)), theirs)


@row("rw-etf")
def test_rw_simplex_etf_error(peer):
    n, mu = rw_means(peer.features, peer.labels, peer.k)
    c = mu - rw_centre(n, mu)
    theirs = structure_error(c, c)
    same(metrics.etf_error(peer.stats, global_mean="classes"), theirs)
    assert float(metrics.etf_error(peer.stats)) != pytest.approx(theirs, rel=1e-3)


@row("rw-etf")
def test_etf_error_of_an_exact_etf_under_imbalance_needs_global_mean_classes():
    k = 3
    etf = np.eye(k) - 1 / k  # rows: a simplex ETF, centred at the mean of the rows
    counts = [50, 10, 2]
    labels = np.repeat(np.arange(k), counts)
    stats = ClassStats.from_features(etf[labels] + 1.0, labels, k)
    assert float(metrics.etf_error(stats, global_mean="classes")) < 1e-12
    assert float(metrics.etf_error(stats)) == pytest.approx(0.87, abs=0.01)


@row("rw-structure-w", "td-etf-w")
def test_structure_error_of_w_with_itself_is_classifier_etf_error(peer):
    w = peer.classifier
    k = peer.k
    theirs = np.linalg.norm(nf(w @ w.T) - (np.eye(k) - np.ones((k, k)) / k) / np.sqrt(k - 1))
    same(metrics.classifier_etf_error(w), theirs)
    same(metrics.classifier_etf_error(w, peer.stats), theirs)  # every class has samples


@row("rw-ncc")
def test_rw_classifier_ncc_agreement(peer):
    _, mu = rw_means(peer.features, peer.labels, peer.k)
    x, y, w = peer.test_features, peer.test_labels, peer.classifier
    dist2 = (x**2).sum(1)[:, None] + (mu**2).sum(1)[None, :] - 2 * x @ mu.T
    hits = (np.argmax(x @ w.T, axis=1) == np.argmin(dist2, axis=1)).astype(np.float64)
    n = np.bincount(y, minlength=peer.k).astype(np.float64)
    rates = np.bincount(y, weights=hits, minlength=peer.k) / (n + EPS)
    weighted = n @ rates / (n.sum() + EPS)  # the default, weighted=True
    unweighted = rates.mean()
    means = peer.stats.means
    same(ncc_agreement(x, w, means).fraction, weighted)
    recipe = np.mean([ncc_agreement(x[y == c], w, means).fraction for c in range(peer.k)])
    same(recipe, unweighted)


@row("rw-ood")
def test_rw_orthogonality_deviation(peer):
    _, mu = rw_means(peer.features, peer.labels, peer.k)
    n_ood, mu_ood = rw_means(peer.ood_features, peer.ood_labels, 5)
    ood_mean = rw_centre(n_ood, mu_ood)  # the example's OOD "global mean": of class means
    clamp = 1e-8
    cosines = (mu @ ood_mean) / (
        np.maximum(np.linalg.norm(mu, axis=1), clamp) * max(np.linalg.norm(ood_mean), clamp)
    )
    same(metrics.ood_deviation(peer.stats, ood_mean), np.abs(cosines).mean())


@row("rw-dist-kernel")
def test_rw_distance_kernel_statistics_are_riesz_with_s_minus_1(peer):
    mean, variance = rw_pair_stats(rw_pair_distances(peer))
    stats = peer.stats
    same(np.exp(metrics.riesz_log_energy(stats, s=-1, global_mean="classes")), mean)
    same(np.exp(metrics.riesz_log_variance(stats, s=-1, global_mean="classes")), variance)


@row("rw-log-kernel")
def test_rw_log_kernel_statistics(peer):
    distances = rw_pair_distances(peer)
    stats = peer.stats
    energy = metrics.log_energy(stats, global_mean="classes")
    spread = metrics.log_energy_variance(stats, global_mean="classes")
    mean, variance = rw_pair_stats(np.log(distances**-1.0))  # the default exponent -1
    same(energy, mean)
    same(spread, variance)
    mean, variance = rw_pair_stats(np.log(distances**-2.0))  # another exponent e
    same(2.0 * np.asarray(energy), mean)
    same(4.0 * np.asarray(spread), variance)


@row("rw-riesz")
def test_rw_riesz_kernel_statistics(peer):
    s = peer.d - 2  # the feature dimension minus 2
    mean, variance = rw_pair_stats(np.sign(s) * rw_pair_distances(peer) ** -float(s))
    stats = peer.stats
    same(np.sign(s) * np.exp(metrics.riesz_log_energy(stats, global_mean="classes")), mean)
    same(np.exp(metrics.riesz_log_variance(stats, global_mean="classes")), variance)


@row("rw-filter")
def test_rw_class_filter_bounds(peer):
    n = peer.counts
    minimum, maximum = 5, 25  # theirs: minimum <= n_k < maximum
    theirs = tuple(int(c) for c in np.flatnonzero((n >= minimum) & (n < maximum)))
    view = metrics.populated(peer.stats, min_count=minimum, max_count=maximum - 1)
    assert view.index == theirs == (3, 4, 5)


# ----------------------------------------------------------------------------- felixsh
def fs_statistics(peer: Peer):
    """Class means, class variances with n_k - 1, the mean of all samples."""
    x, y, k = peer.features, peer.labels, peer.k
    mu = class_means(x, y, k)
    var = np.array([((x[y == c] - mu[c]) ** 2).sum() / ((y == c).sum() - 1) for c in range(k)])
    return mu, var, x.mean(axis=0)


def fs_covariances(peer: Peer):
    mu, _, g = fs_statistics(peer)
    c = mu - g
    dev = peer.features - mu[peer.labels]
    return dev.T @ dev / len(peer.labels), c.T @ c / peer.k


def cov(values: np.ndarray) -> float:
    """std / mean, population std."""
    return float(values.std() / values.mean())


@row("fs-nc1-strong")
def test_fs_nc1_strong(peer):
    sigma_w, sigma_b = fs_covariances(peer)
    theirs = pinv_nc1(sigma_w, sigma_b, peer.k, 1e-15)  # NumPy's default cutoff
    same(metrics.nc1(peer.stats), theirs)


@row("fs-pinv-cutoff")
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


@row("fs-nc1-weak")
def test_fs_nc1_weak_from_the_trace_ratio(peer):
    sigma_w, sigma_b = fs_covariances(peer)
    between, within = np.trace(sigma_b), np.trace(sigma_w)
    theirs = (between / (between + within), within / (between + within))
    r = float(metrics.nc1_trace_ratio(peer.stats))
    same((1 / (1 + r), r / (1 + r)), theirs)


@row("fs-cdnv")
def test_fs_cdnv_mean_with_sample_variances(peer):
    mu, var, _ = fs_statistics(peer)
    i, j = np.triu_indices(peer.k, 1)
    pairs = (var[i] + var[j]) / (2 * ((mu[i] - mu[j]) ** 2).sum(axis=1))
    n = peer.counts
    v = np.asarray(peer.stats.class_variances) * n / (n - 1)
    m = np.asarray(peer.stats.means)
    recipe = (v[i] + v[j]) / (2 * ((m[i] - m[j]) ** 2).sum(axis=1))
    same(recipe.mean(), pairs.mean())
    same(cov(recipe), cov(pairs))
    assert float(metrics.cdnv(peer.stats)) != pytest.approx(pairs.mean(), rel=1e-3)


@row("fs-cdnv")
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


@row("fs-equinorm")
def test_fs_equinormness_is_order_dependent_and_the_recipe_gives_it(peer):
    mu, _, g = fs_statistics(peer)
    logs = np.log(np.linalg.norm(mu - g, axis=1))
    i, j = np.triu_indices(peer.k, 1)
    theirs = logs[i] - logs[j]
    a = np.log(np.linalg.norm(np.asarray(peer.stats.means - peer.stats.global_mean), axis=1))
    recipe = a[i] - a[j]
    same(recipe.mean(), theirs.mean())
    same(cov(recipe), cov(theirs))
    flipped = logs[::-1][i] - logs[::-1][j]  # the same classes in the reverse order
    same(flipped.mean(), -theirs.mean())
    assert abs(theirs.mean()) > 1e-3


@row("fs-equiangularity")
def test_fs_equiangularity_mean_is_the_shifted_interference_mean(peer):
    mu, _, g = fs_statistics(peer)
    u = unit_rows(mu - g)
    shifted = upper(u @ u.T) + 1 / (peer.k - 1)
    same(metrics.interference_mean(peer.stats) + 1 / (peer.k - 1), shifted.mean())
    assert float(metrics.equiangularity(peer.stats)) == pytest.approx(np.abs(shifted).mean())


@row("fs-equiangularity-cov")
def test_fs_equiangularity_cov_from_std_and_mean(peer):
    mu, _, g = fs_statistics(peer)
    u = unit_rows(mu - g)
    shifted = upper(u @ u.T) + 1 / (peer.k - 1)
    stats = peer.stats
    ours = metrics.equiangularity_std(stats) / (
        metrics.interference_mean(stats) + 1 / (peer.k - 1)
    )
    same(ours, cov(shifted))


@row("fs-equiangularity-cov")
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


def fs_log_inverse_distances(peer: Peer) -> np.ndarray:
    mu, _, g = fs_statistics(peer)
    u = unit_rows(mu - g)
    i, j = np.triu_indices(peer.k, 1)
    return np.log(1 / np.linalg.norm(u[i] - u[j], axis=1))


@row("fs-gnc2")
def test_fs_hyperspherical_uniformity_is_log_energy(peer):
    same(metrics.log_energy(peer.stats), fs_log_inverse_distances(peer).mean())


@row("fs-gnc2-cov")
def test_fs_hyperspherical_uniformity_cov(peer):
    ours = np.sqrt(metrics.log_energy_variance(peer.stats)) / metrics.log_energy(peer.stats)
    same(ours, cov(fs_log_inverse_distances(peer)))


@row("fs-nc3")
def test_fs_self_duality(peer):
    mu, _, g = fs_statistics(peer)
    theirs = np.linalg.norm(nf(peer.classifier) - nf(mu - g))
    same(metrics.self_duality_error(peer.classifier, peer.stats), theirs)


@row("fs-unc3")
def test_fs_uniform_duality_uses_the_cross_cosines(peer):
    mu, _, g = fs_statistics(peer)
    cross = upper(unit_rows(peer.classifier) @ unit_rows(mu - g).T)  # w_k against c_l, k < l
    c = np.asarray(peer.stats.means - peer.stats.global_mean)
    recipe = upper(unit_rows(peer.classifier) @ unit_rows(c).T)
    same(recipe.mean(), cross.mean())
    same(cov(recipe), cov(cross))
    diagonal = np.sum(peer.classifier * c, axis=1)  # what ncgeom's uniform_duality spreads
    assert float(metrics.uniform_duality(peer.classifier, peer.stats)) == pytest.approx(
        cov(diagonal), rel=1e-10
    )
    assert cov(diagonal) != pytest.approx(cov(cross), rel=1e-2)


@row("fs-nc4")
def test_fs_classifier_agreement(peer):
    mu, _, _ = fs_statistics(peer)
    x, w, b = peer.test_features, peer.classifier, peer.bias
    linear = np.argmax(x @ w.T + b, axis=1)
    nearest = np.array([np.argmin(np.linalg.norm(mu - h, axis=1)) for h in x])
    theirs = np.mean(linear == nearest)
    same(ncc_agreement(x, w, peer.stats.means, b).fraction, theirs)


@row("fs-class-variances")
def test_fs_class_variances_with_n_minus_1(peer):
    _, var, _ = fs_statistics(peer)
    n = peer.counts
    same(np.asarray(peer.stats.class_variances) * n / (n - 1), var)


@row("fs-global-variance")
def test_fs_global_variance_recipe(peer):
    x = peer.features
    theirs = ((x - x.mean(axis=0)) ** 2).sum() / (len(x) - 1)
    stats, n = peer.stats, peer.counts
    total = n.sum()
    between = n @ (np.asarray(stats.means - stats.global_mean) ** 2).sum(axis=1) / total
    recipe = (np.trace(stats.within_covariance()) + between) * total / (total - 1)
    same(recipe, theirs)


@row("fs-sigma-b")
def test_fs_between_class_covariance_recipe(peer):
    _, sigma_b = fs_covariances(peer)
    c = np.asarray(peer.stats.means - peer.stats.global_mean)
    np.testing.assert_allclose(c.T @ c / peer.k, sigma_b, rtol=0, atol=REL * np.abs(sigma_b).max())


@row("fs-sigma-w")
def test_fs_within_class_covariance(peer):
    sigma_w, _ = fs_covariances(peer)
    ours = np.asarray(peer.stats.within_covariance())
    np.testing.assert_allclose(ours, sigma_w, rtol=0, atol=REL * np.abs(sigma_w).max())


# ----------------------------------------------------------------------------- tding1, Fsoft
def sample_mean_statistics(peer: Peer):
    """Means from sums over the counts, the mean of all samples, pooled Sigma_W, Sigma_B / K."""
    x, y, k = peer.features, peer.labels, peer.k
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, y, x)
    mu = sums / peer.counts[:, None]
    g = x.sum(axis=0) / len(x)
    dev = x - mu[y]
    return mu, g, dev.T @ dev / len(x), (mu - g).T @ (mu - g) / k


@row("td-nc1", "ce-nc1")
def test_nc1_with_scipy_pinv_default(peer):
    _, _, sigma_w, sigma_b = sample_mean_statistics(peer)
    theirs = pinv_nc1(sigma_w, sigma_b, peer.k, peer.d * EPS)  # SciPy: max(M, N) * eps
    same(metrics.nc1(peer.stats), theirs)


@row("td-wh")
def test_td_w_h_relation(peer):
    mu, g, _, _ = sample_mean_statistics(peer)
    theirs = structure_error(mu - g, peer.classifier)
    c = np.asarray(peer.stats.means - peer.stats.global_mean)
    same(logit_structure_error(peer.classifier, c, np.ones(peer.k)), theirs)


@row("td-bias")
def test_td_bias_relation(peer):
    _, g, _, _ = sample_mean_statistics(peer)
    w, b = peer.classifier, peer.bias
    same(metrics.bias_collapse(w, b, peer.stats), np.linalg.norm(w @ g + b))
    same(metrics.bias_collapse(w, np.zeros(peer.k), peer.stats), np.linalg.norm(w @ g))


def ce_margins(counts, lambda_h, lambda_w):
    """The imbalanced code's predicted margins, restated."""
    k, total = len(counts), counts.sum()
    ratio = np.sqrt(counts) / (
        total * np.sqrt(lambda_h / 2 * lambda_w / 2) * np.sqrt((k - 1) / k * lambda_w / lambda_h)
    )
    inside = (k - 1) * (ratio - 1)
    logs = np.log(np.where(inside > 0, inside, 1.0))
    return np.where(logs > 0, logs, 0.0)


@row("ce-margins")
def test_ce_margins_are_the_optimum_at_half_lambda_w(peer):
    counts = peer.counts
    for lambda_w, lambda_h in ((2e-3, 1e-3), (2e-3, 5e-2), (5e-2, 1e-4)):
        theirs = ce_margins(counts, lambda_h, lambda_w)
        same(ufm_relu_optimum(counts, lambda_w / 2, lambda_w / 2).margins, theirs)
    assert np.any(ce_margins(counts, 1e-4, 5e-2) == 0)  # the last case collapses classes
    # lambda_H cancels: the optimum of the run's own pair differs
    mixed = ufm_relu_optimum(counts, 2e-3, 1e-3).margins
    assert not np.allclose(mixed, ce_margins(counts, 1e-3, 2e-3), rtol=1e-3)


@row("ce-nc2-w")
def test_ce_nc2_w(relu_peer):
    peer = relu_peer
    mu, _, _, _ = sample_mean_statistics(peer)
    root = np.sqrt(peer.counts)
    target = peer.k * root[:, None] * mu - root @ mu
    theirs = np.linalg.norm(nf(peer.classifier) - nf(target))
    same(metrics.scaled_alignment_error(peer.classifier, peer.stats), theirs)


@row("ce-nc2-w")
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


def ce_prediction(peer: Peer):
    counts = peer.counts
    lambda_w, lambda_h = 5e-3, 1e-3
    return counts, lambda_w, lambda_h, ce_margins(counts, lambda_h, lambda_w)


@row("ce-nc2-wwt")
def test_ce_nc2_wwt(relu_peer):
    counts, _, _, margins = ce_prediction(relu_peer)
    k, a = relu_peer.k, np.sqrt(counts) * margins
    target = np.empty((k, k))
    for i in range(k):
        for j in range(k):
            others = sum(a[m] for m in range(k) if m not in (i, j))
            target[i, j] = (
                (k - 1) ** 2 * a[i] + others if i == j else (-(k - 1) * (a[i] + a[j]) + others)
            )
    w = relu_peer.classifier
    theirs = np.linalg.norm(nf(w @ w.T) - nf(target))
    same(classifier_gram_error(w, margins, counts=counts), theirs)


@row("ce-nc2-h")
def test_ce_nc2_h(relu_peer):
    counts, lambda_w, lambda_h, margins = ce_prediction(relu_peer)
    k = relu_peer.k
    mu, _, _, _ = sample_mean_statistics(relu_peer)
    h = np.maximum(mu, 0)  # ReLU of the means
    diagonal = np.sqrt((k - 1) / k * lambda_w / lambda_h / counts) * margins
    theirs = np.linalg.norm(nf(h @ h.T) - nf(np.diag(diagonal)))
    same(gof_error(np.asarray(relu_peer.stats.means), margins, counts=counts), theirs)


@row("ce-nc2-h")
def test_relu_of_the_means_changes_nothing_for_relu_features(data):
    features, labels, counts, _, _ = data
    k = len(counts)
    mu = class_means(np.maximum(features, 0), labels, k)
    assert np.array_equal(np.maximum(mu, 0), mu)  # post-ReLU features: ReLU(mean) = mean


@row("ce-nc3-wh")
def test_ce_nc3_wh(relu_peer):
    _, _, _, margins = ce_prediction(relu_peer)
    k = relu_peer.k
    mu, _, _, _ = sample_mean_statistics(relu_peer)
    target = (np.eye(k) - 1 / k) * margins[None, :]  # column k: M_k (e_k - 1/K)
    theirs = np.linalg.norm(nf(relu_peer.classifier @ mu.T) - nf(target))
    ours = logit_structure_error(relu_peer.classifier, np.asarray(relu_peer.stats.means), margins)
    same(ours, theirs)


# ----------------------------------------------------------------------------- general
@row("gen-sigma-b-frequency")
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


def twin_data_sets():
    """Two data sets whose `ClassStats` agree but whose classes spread along other axes.

    Class 0 (4 samples) spreads by +-1 along one axis, class 1 (2 samples) by
    +-sqrt(2) along another; the twin swaps the axes. Counts, means, class
    variances and the pooled within-class Gram are the same.
    """
    means = np.array([[3.0, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, 1.0], [1.0, 1.0, 4.0, 0.0]])
    e1, e2 = np.eye(4)[0], np.eye(4)[1]
    third = np.array([[0.3, 0.0, 0.0, 0.1], [-0.3, 0.0, 0.0, -0.1]])
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    sets = []
    for a, b in ((e1, e2), (e2, e1)):
        spread0 = np.array([a, -a, a, -a])
        spread1 = np.sqrt(2) * np.array([b, -b])
        deviations = np.concatenate([spread0, spread1, third])
        sets.append((means[labels] + deviations, labels))
    return sets


@row("gen-sigma-w-per-class")
def test_sigma_w_per_class_is_not_a_function_of_the_statistics():
    (xa, y), (xb, _) = twin_data_sets()
    k = 3
    sa, sb = (ClassStats.from_features(x, y, k, gram=True) for x in (xa, xb))
    for name in ("counts", "means", "class_variances", "global_mean"):
        np.testing.assert_allclose(getattr(sa, name), getattr(sb, name), rtol=0, atol=1e-14)
    np.testing.assert_allclose(sa.within_covariance(), sb.within_covariance(), atol=1e-14)

    def nc1_per_class(x):
        mu = class_means(x, y, k)
        sigma_w = np.mean(
            [np.cov((x[y == c] - mu[c]).T, bias=True) for c in range(k)], axis=0
        )  # per class (1/n_k), then the mean over classes
        c = mu - x.mean(axis=0)
        return pinv_nc1(sigma_w, c.T @ c / k, k, 4 * EPS)

    assert nc1_per_class(xa) != pytest.approx(nc1_per_class(xb), rel=1e-2)


@row("gen-equinorm-torch-std")
def test_equinorm_with_the_sample_std_of_torch(data):
    features, labels, counts, _, stats = data
    k = len(counts)
    norms = np.linalg.norm(class_means(features, labels, k) - features.mean(axis=0), axis=1)
    theirs = norms.std(ddof=1) / norms.mean()  # torch's Tensor.std() is unbiased
    ours = float(metrics.equinorm(stats))
    assert ours == pytest.approx(norms.std() / norms.mean(), rel=1e-10)
    assert ours * np.sqrt(k / (k - 1)) == pytest.approx(theirs, rel=1e-10)


@row("gen-classifier-equinorm")
def test_classifier_equinorm(peer):
    norms = np.linalg.norm(peer.classifier, axis=1)
    k = peer.k
    same(metrics.classifier_equinorm(peer.classifier), norms.std() / norms.mean())
    same(
        metrics.classifier_equinorm(peer.classifier) * np.sqrt(k / (k - 1)),
        norms.std(ddof=1) / norms.mean(),
    )
