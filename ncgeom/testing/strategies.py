"""Hypothesis strategies for class-labelled features and exact collapse geometries.

Use them to test your own model's geometry code, or a plugin, against the
invariants of neural collapse. All values are float64 NumPy arrays; move them
to another backend with that library's ``asarray``.

Examples
--------
>>> from hypothesis import given, settings
>>> from ncgeom.testing import strategies as nst
>>> @settings(max_examples=5)
... @given(nst.labelled_features())
... def test_counts_add_up(data):
...     assert data.features.shape[0] == data.labels.shape[0] == sum(data.counts)
>>> test_counts_add_up()
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

try:
    from hypothesis import strategies as st
except ImportError as error:  # pragma: no cover - depends on the environment
    msg = "ncgeom.testing.strategies needs Hypothesis: pip install hypothesis"
    raise ImportError(msg) from error

__all__ = [
    "LabelledFeatures",
    "class_counts",
    "labelled_features",
    "orthogonal_frames",
    "orthogonal_matrices",
    "simplex_etfs",
]


class LabelledFeatures(NamedTuple):
    """Features (N, d), labels (N,), class means (K, d) and counts (K,)."""

    features: np.ndarray
    labels: np.ndarray
    means: np.ndarray
    counts: tuple[int, ...]


def class_counts(
    min_classes: int = 2, max_classes: int = 8, min_count: int = 1, max_count: int = 40
) -> st.SearchStrategy[tuple[int, ...]]:
    """Per-class sample counts, in any order (imbalanced as often as not)."""
    return st.lists(
        st.integers(min_count, max_count), min_size=min_classes, max_size=max_classes
    ).map(tuple)


def orthogonal_matrices(dim: int) -> st.SearchStrategy[np.ndarray]:
    """Haar-random orthogonal (dim, dim) matrices (QR of a Gaussian, signs fixed)."""

    def build(seed: int) -> np.ndarray:
        q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
        return q * np.sign(np.diag(r))

    return st.integers(0, 2**32 - 1).map(build)


@st.composite
def labelled_features(
    draw: st.DrawFn,
    counts: st.SearchStrategy[tuple[int, ...]] | None = None,
    min_dim: int = 1,
    max_dim: int = 8,
    spread: st.SearchStrategy[float] | None = None,
    scale: st.SearchStrategy[float] | None = None,
    shuffle: bool = True,
) -> LabelledFeatures:
    """Gaussian clusters around random class means.

    Parameters
    ----------
    counts : strategy of tuples, optional
        Samples per class (default `class_counts()`).
    min_dim, max_dim : int
        Feature dimension range.
    spread : strategy of floats, optional
        Within-class standard deviation relative to the means' scale
        (default log-uniform in [1e-3, 1]); 0 gives fully collapsed features.
    scale : strategy of floats, optional
        Size of the class means (default in [0.1, 10]).
    shuffle : bool
        Interleave the classes (otherwise rows are sorted by class).
    """
    sizes = draw(counts if counts is not None else class_counts())
    dim = draw(st.integers(min_dim, max_dim))
    sigma = draw(spread if spread is not None else st.floats(-3, 0).map(lambda e: 10.0**e))
    size = draw(scale if scale is not None else st.floats(0.1, 10.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    means = size * rng.normal(size=(len(sizes), dim))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    if shuffle:
        labels = rng.permutation(labels)
    features = means[labels] + sigma * size * rng.normal(size=(labels.size, dim))
    return LabelledFeatures(features, labels, means, tuple(sizes))


@st.composite
def simplex_etfs(draw: st.DrawFn, min_classes: int = 2, max_classes: int = 8) -> np.ndarray:
    """Means (K, d) of a simplex ETF (centred, equal norms, cosines -1/(K-1)).

    Randomly scaled, rotated into d >= K dimensions and translated.
    """
    num = draw(st.integers(min_classes, max_classes))
    dim = draw(st.integers(num, num + 3))
    rotation = draw(orthogonal_matrices(dim))
    frame = np.zeros((num, dim))
    frame[:, :num] = np.eye(num) - 1.0 / num
    size = draw(st.floats(0.1, 10.0))
    translation = draw(st.floats(-5.0, 5.0)) * rotation[-1]
    return size * frame @ rotation + translation


@st.composite
def orthogonal_frames(
    draw: st.DrawFn, min_classes: int = 2, max_classes: int = 8, allow_zero: bool = True
) -> np.ndarray:
    """Non-negative, mutually orthogonal means (K, d) of unequal lengths.

    The optimum of ReLU features: each mean lives on its own coordinates.
    With `allow_zero`, some classes may have a zero mean (minority collapse).
    """
    num = draw(st.integers(min_classes, max_classes))
    dim = draw(st.integers(num, num + 4))
    low = 0.0 if allow_zero else 0.1
    lengths = draw(st.lists(st.floats(low, 10.0), min_size=num, max_size=num))
    columns = draw(st.permutations(list(range(dim))))
    frame = np.zeros((num, dim))
    for k, length in enumerate(lengths):
        frame[k, columns[k]] = length
    return frame
