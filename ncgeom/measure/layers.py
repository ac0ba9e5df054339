"""Features of intermediate layers: `layer_features` and the second pass `SecondPass`.

A layer's output may be a feature map (N, C, H, W), a sequence (N, C, L) or
(N, T, d), or already a vector per sample (N, d). `layer_features` turns it
into rows of features, in one of the `REDUCE_MODES`:

- ``"pool"`` (default): the mean over the spatial or sequence axes;
- ``"flatten"``: every entry a coordinate, d = C * H * W;
- ``"tokens"``: every position of a sequence a sample of its own.

Flattened features are too wide for a (d, d) Gram. NC1 only needs the
within-class scatter along the span of the centred class means (rank at most
K - 1), so a second pass over the same data, given the final class means of
the first, projects each deviation on an orthonormal basis of that span and
sums an (r, r) Gram: `SecondPass`, O(K d) memory. The same pass gives the
nearest-class-centre accuracy against the labels. ``docs/depth.md`` derives
both.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from .._lib.backend import (
    array_device,
    detach,
    gather_rows,
    index_dtype,
    namespace,
    segment_count,
    segment_sum,
    subtract_rows,
    to_host,
    wide_float,
)
from .._lib.validate import check_choice, check_features, check_instance, check_labels
from .classes import GLOBAL_MEANS, Classes, populated, undefined
from .metrics import NearestCentre, between_basis
from .stats import ClassStats, row_chunks, rows_per_chunk

__all__ = ["LAYOUTS", "REDUCE_MODES", "SecondPass", "layer_features"]

Array = Any

#: How a layer's output of rank > 2 becomes rows of features.
REDUCE_MODES = ("pool", "flatten", "tokens")
#: Where the channel axis of a layer's output lies: after the batch axis
#: (torch's (N, C, H, W), (N, C, L)) or last (JAX's (N, H, W, C), tokens (N, T, d)).
LAYOUTS = ("channels_first", "channels_last")


def layer_features(
    features: Array,
    labels: Array,
    *,
    reduce: str = "pool",
    layout: str = "channels_first",
) -> tuple[Array, Array]:
    """Rows of features (M, d) and their labels (M,) from a layer's output.

    Parameters
    ----------
    features : array, shape (N, d) or (N, ...)
        A layer's output, any array-API array. 2-D features are returned as
        they are, whatever `reduce` says.
    labels : array, shape (N,), or (N, T) for ``reduce="tokens"``
        Integer labels of the samples (or of every token).
    reduce : {"pool", "flatten", "tokens"}
        ``"pool"``: the mean over every axis but the batch and channel axes
        (H, W of an image, L or T of a sequence); d = C.
        ``"flatten"``: (N, prod(rest)) in the array's own order; d = C H W.
        ``"tokens"``: a 3-D output's positions as samples: (N * T, d); labels
        (N,) are repeated for every position, labels (N, T) taken as they are.
    layout : {"channels_first", "channels_last"}
        Where the channel axis is: ``(N, C, *spatial)`` (torch's NCHW and
        (N, C, L)) or ``(N, *spatial, C)`` (JAX's NHWC, tokens (N, T, d)).
        ``"flatten"`` ignores it.

    Returns
    -------
    features : array, shape (M, d)
    labels : array, shape (M,)

    Raises
    ------
    ValueError
        An unknown `reduce` or `layout`, features of rank below 2, labels of
        the wrong shape, ``"tokens"`` on an output that is not 3-D.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import layer_features
    >>> maps = np.arange(16.0).reshape(2, 2, 2, 2)  # (N, C, H, W)
    >>> x, y = layer_features(maps, np.array([0, 1]))
    >>> x.tolist(), y.tolist()
    ([[1.5, 5.5], [9.5, 13.5]], [0, 1])
    >>> layer_features(maps, np.array([0, 1]), reduce="flatten")[0].shape
    (2, 8)
    >>> tokens = np.zeros((2, 3, 4))  # (N, T, d)
    >>> x, y = layer_features(tokens, np.array([0, 1]), reduce="tokens", layout="channels_last")
    >>> x.shape, y.tolist()
    ((6, 4), [0, 0, 0, 1, 1, 1])
    """
    check_choice(reduce, "reduce", REDUCE_MODES)
    check_choice(layout, "layout", LAYOUTS)
    xp = namespace(features=features, labels=labels)
    shape = tuple(features.shape)
    if len(shape) < 2:
        msg = f"`features` must have a batch axis and at least one more; got shape {shape}"
        raise ValueError(msg)
    num = shape[0]
    if reduce == "tokens" and len(shape) == 3 and labels.ndim == 2:
        if tuple(labels.shape) != (num, _positions(shape, layout)):
            msg = (
                f"`labels` must have shape ({num},) or ({num}, {_positions(shape, layout)}) "
                f"(one per sample or one per token) for features {shape}; "
                f"got {tuple(labels.shape)}"
            )
            raise ValueError(msg)
    elif labels.ndim != 1 or labels.shape[0] != num:
        msg = (
            f"`labels` must have shape ({num},), one per sample of `features` {shape}; "
            f"got {tuple(labels.shape)}"
        )
        raise ValueError(msg)
    if len(shape) == 2:
        return features, labels
    if reduce == "flatten":
        return xp.reshape(features, (num, math.prod(shape[1:]))), labels
    if reduce == "pool":
        axes = (
            tuple(range(2, len(shape)))
            if layout == "channels_first"
            else tuple(range(1, len(shape) - 1))
        )
        return xp.mean(features, axis=axes), labels
    if len(shape) != 3:
        msg = (
            "`features` must be 3-D, (N, T, d) or (N, d, T), for reduce='tokens'; "
            f"got shape {shape}"
        )
        raise ValueError(msg)
    if layout == "channels_first":
        features = xp.permute_dims(features, (0, 2, 1))
    positions, dim = features.shape[1], features.shape[2]
    rows = xp.reshape(features, (num * positions, dim))
    if labels.ndim == 1:
        labels = xp.broadcast_to(labels[:, None], (num, positions))
    return rows, xp.reshape(labels, (num * positions,))


def _positions(shape: tuple[int, ...], layout: str) -> int:
    """Number of tokens of a 3-D output in `layout`."""
    return shape[1] if layout == "channels_last" else shape[2]


class SecondPass:
    """A second pass over the data, with the final class means of the first.

    The first pass (`ClassStats`, combined across processes) gives the class
    means. Replaying the same samples, `update` projects each deviation
    ``h_i - mu_{y_i}`` on an orthonormal basis U (d, r), r <= K, of the span
    of the centred means and sums, in float64, their (r, r) Gram and their
    class sums (``scatter=True``), and counts the samples whose nearest class
    mean is their own label (``ncc=True``). Memory is O(K d): no (d, d)
    array is ever formed, so it serves features of any width (flattened
    feature maps).

    NC1 needs the within-class covariance only along that span:
    ``Sigma_B^+ = U U^T Sigma_B^+ U U^T``, hence
    ``tr(Sigma_W Sigma_B^+) = tr((U^T Sigma_W U)(U^T Sigma_B U)^+)``
    (``docs/depth.md``). `nc1` equals `ncgeom.metrics.nc1` of statistics
    with the Gram, with the same pseudo-inverse cut-off.

    Parameters
    ----------
    stats : ClassStats
        The final statistics of the first pass (every rank's, combined);
        no Gram needed. At least two classes must have samples.
    scatter : bool
        Sum the projected within-class scatter (for `nc1`).
    ncc : bool
        Count the nearest-class-centre hits (for `ncc_accuracy`).

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, SecondPass, metrics
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, size=60)
    >>> x = 3 * np.eye(5)[y] + rng.normal(size=(60, 5))
    >>> stats = ClassStats.from_features(x, y, 3)
    >>> second = SecondPass(stats, scatter=True).update(x[:25], y[:25]).update(x[25:], y[25:])
    >>> bool(np.isclose(second.nc1(), metrics.nc1(stats), rtol=1e-12))
    True
    >>> float(second.ncc_accuracy()) == float(np.mean(
    ...     np.argmin(((x[:, None] - stats.means[None]) ** 2).sum(-1), axis=1) == y))
    True
    """

    def __init__(self, stats: ClassStats, *, scatter: bool = False, ncc: bool = True) -> None:
        check_instance(stats, ClassStats, "stats")
        self.stats = stats
        self.scatter = bool(scatter)
        self.ncc = bool(ncc)
        xp = stats.xp
        view = populated(stats, "samples", warn=False)  # one host read: the counts
        self._view = view
        self._basis, self._weights = between_basis(view.centred, xp)
        device = stats.device
        index = xp.asarray(view.index, dtype=index_dtype(xp), device=device)
        self._rule = NearestCentre.of(view.centred, index, self._basis)
        # The final means in units of the scale, and the coordinates of every
        # class's centred mean along the basis (empty classes: their shift's).
        self._means = stats.scaled_means
        self._centred_along = (self._means - view.global_mean) @ self._basis
        # Features of ordinary size (scale 1, the usual case) are used as they
        # are: one multiplication less per chunk, for one read here.
        unit = float(to_host(stats.unit_scale)) == 1.0
        self._inverse_scale = None if unit else 1 / stats.unit_scale
        rank = int(self._basis.shape[1])
        wide = wide_float(xp)
        num_classes = stats.num_classes
        self._counts = xp.zeros(num_classes, dtype=index_dtype(xp), device=device)
        self._matches = xp.zeros((), dtype=index_dtype(xp), device=device)
        self._gram = xp.zeros((rank, rank), dtype=wide, device=device) if scatter else None
        self._sums = xp.zeros((num_classes, rank), dtype=wide, device=device) if scatter else None

    # ------------------------------------------------------------------ accumulate
    def update(
        self, features: Array, labels: Array, *, chunk_size: int | None = None
    ) -> SecondPass:
        """Add one batch (in place) and return ``self``.

        `features` (N, d) on the statistics' namespace and device (any real
        floating dtype; used in the statistics' dtype), `labels` (N,)
        integers in [0, K): the samples of the first pass, replayed. No host
        read: labels are not range-checked here (the first pass checked them).
        """
        xp = namespace(stats=self.stats.shift, features=features, labels=labels)
        check_features(features, xp)
        check_labels(labels, features.shape[0], xp)
        if features.shape[1] != self.stats.dim:
            msg = (
                f"`features` must have {self.stats.dim} columns like the statistics; "
                f"got {features.shape[1]}"
            )
            raise ValueError(msg)
        features = detach(features)
        wide = index_dtype(xp)
        labels = labels if labels.dtype == wide else xp.astype(labels, wide)
        num, dim = features.shape
        if num == 0:
            return self
        stats = self.stats
        num_classes = stats.num_classes
        self._counts = self._counts + segment_count(labels, num_classes, xp)
        rows = rows_per_chunk(
            num, dim, stats.dtype, xp, chunk_size, array_device(features), gram=True
        )
        for part in row_chunks(num, rows):
            y = labels[part]
            x = xp.astype(features[part, ...], stats.dtype, copy=False)
            if self._inverse_scale is not None:
                x = x * self._inverse_scale
            along = subtract_rows(x, self._means, y, xp) @ self._basis
            if self._gram is not None:
                projected = xp.astype(along, wide_float(xp))
                self._gram = self._gram + projected.T @ projected
                self._sums = segment_sum(projected, y, num_classes, xp, into=self._sums)
            if self.ncc:
                nearest = self._rule.nearest(along + gather_rows(self._centred_along, y, xp))
                hits = xp.sum(xp.astype(nearest == y, index_dtype(xp)))
                self._matches = self._matches + hits
        return self

    # ------------------------------------------------------------------ combine
    @property
    def arrays(self) -> tuple[Array, ...]:
        """The sums to add across processes: class counts (K,), NCC hits (),
        and with ``scatter=True`` the projected Gram (r, r) and class sums (K, r)."""
        parts = (self._counts, self._matches)
        if self._gram is not None:
            parts = (*parts, self._gram, self._sums)
        return parts

    def with_arrays(self, arrays: tuple[Array, ...]) -> SecondPass:
        """A copy of this pass holding `arrays` (e.g. `arrays` summed over processes)."""
        expected = tuple(tuple(a.shape) for a in self.arrays)
        got = tuple(tuple(getattr(a, "shape", ())) for a in arrays)
        if got != expected:
            msg = f"`arrays` must have the shapes of `SecondPass.arrays`, {expected}; got {got}"
            raise ValueError(msg)
        other = copy.copy(self)
        other._counts, other._matches = arrays[0], arrays[1]
        if self._gram is not None:
            other._gram, other._sums = arrays[2], arrays[3]
        return other

    # ------------------------------------------------------------------ results
    @property
    def counts(self) -> Array:
        """Samples per class seen by the second pass (K,)."""
        return self._counts

    @property
    def same_samples(self) -> Array:
        """0-d bool: whether the second pass saw the first pass's class counts."""
        return self.stats.xp.all(self._counts == self.stats.counts)

    def ncc_accuracy(self) -> Array:
        """Fraction of the samples seen whose nearest class mean is their label.

        Euclidean distance to the final means of the classes with samples;
        a tie goes to the lowest class index. 0-d float64 (NaN before any
        sample); no host read.
        """
        if not self.ncc:
            msg = "`SecondPass.ncc_accuracy` needs the NCC counts: build it with ncc=True"
            raise ValueError(msg)
        xp = self.stats.xp
        wide = wide_float(xp)
        total = xp.astype(xp.sum(self._counts), wide)
        hits = xp.astype(self._matches, wide)
        return xp.where(total > 0, hits / xp.where(total > 0, total, 1.0), xp.nan)

    def nc1(self, *, global_mean: str = "samples") -> Array:
        """``tr(Sigma_W Sigma_B^+) / K`` from the projected within-class scatter.

        The same value as `ncgeom.metrics.nc1` (same centring, same
        pseudo-inverse cut-off). NaN when the class means coincide (as the
        metric) or when the second pass did not see the first pass's class
        counts (`same_samples`). 0-d array in the statistics' dtype.
        """
        check_choice(global_mean, "global_mean", GLOBAL_MEANS)
        if self._gram is None:
            msg = "`SecondPass.nc1` needs the projected scatter: build it with scatter=True"
            raise ValueError(msg)
        stats = self.stats
        xp = stats.xp
        wide = wide_float(xp)
        view = self._view
        scatter = self._scatter()
        if global_mean == "samples":
            along, weights = xp.linalg.diagonal(scatter), self._weights
        else:
            view = populated(stats, global_mean, warn=False)
            basis, weights = between_basis(view.centred, xp)
            turn = xp.astype(self._basis.T @ basis, wide)
            along = xp.sum(turn * (scatter @ turn), axis=0)
        total = xp.astype(xp.sum(view.counts), wide)
        value = xp.sum(xp.astype(weights, wide) * xp.clip(along, min=0)) / total
        value = xp.where(self.same_samples, value, xp.nan)
        return undefined(xp.astype(value, stats.dtype), view, "nc1")

    def _scatter(self) -> Array:
        """``U^T S_W U`` in units of ``scale**2`` (r, r), float64: the Gram of the
        projected deviations less the part of their class sums (the rounding of
        the means), ``G - sum_k s_k s_k^T / n_k``."""
        xp = self.stats.xp
        n = xp.astype(xp.clip(self._counts, min=1), wide_float(xp))
        return self._gram - self._sums.T @ (self._sums / n[:, None])

    @property
    def view(self) -> Classes:
        """The populated classes of the first pass (global mean over samples)."""
        return self._view

    def __repr__(self) -> str:
        return (
            f"SecondPass(num_classes={self.stats.num_classes}, dim={self.stats.dim}, "
            f"rank={int(self._basis.shape[1])}, scatter={self.scatter}, ncc={self.ncc})"
        )
