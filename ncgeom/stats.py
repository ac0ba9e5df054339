"""Sufficient statistics of class-labelled features: `ClassStats`.

A `ClassStats` holds, per class k, the count n_k, a reference point s_k (the
*shift*), the shifted sum ``sum_i (x_i - s_k)`` and the shifted squared norm
``sum_i ||x_i - s_k||^2``; optionally the pooled shifted Gram
``sum_k sum_i (x_i - s_k)(x_i - s_k)^T`` (d, d).

Each shift is set to the class mean of the first batch that holds the class,
so the shifted values are of the size of the within-class spread: variances and
covariances come out of small numbers instead of the difference of two large
raw moments, which keeps float32 exact enough even when the spread is 1e-4 of
the mean's norm. Merging re-bases one side onto the other's shifts (an exact
identity), then adds: counts, sums and Grams merge in any order.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ._array import (
    accumulation_dtype,
    array_device,
    gather_rows,
    has_native_segment_sum,
    namespace,
    on_host,
    quiet_invalid,
    resolve_namespace,
    segment_count,
    segment_sum,
)
from ._validate import check_batch, check_float_dtype, check_num_classes, check_positive_int

__all__ = ["ClassStats", "merge_stats"]

Array = Any

#: Bytes of shifted features materialised at once on a GPU (rows are processed
#: in chunks): large, so that each chunk is a few large kernel launches.
CHUNK_BYTES = 32 * 2**20
#: The same on the CPU: small enough that a chunk's deviations stay in cache
#: between the operations that read them, and that its buffer is reused by the
#: allocator instead of being mapped (and zeroed) afresh for every chunk.
HOST_CHUNK_BYTES = 2 * 2**20


@dataclass(frozen=True, eq=False)
class ClassStats:
    """Immutable, mergeable sufficient statistics of features grouped by class.

    Build with `from_features` (in-memory data) or `empty` followed by
    `update` (streaming); combine with `merge` / `merge_stats`. All arrays live
    on one namespace and device.

    Attributes
    ----------
    counts : array, shape (K,), int64
        Samples per class.
    shift : array, shape (K, d)
        Reference point of each class (its mean in the first batch holding it).
    sums : array, shape (K, d)
        ``sum_i (x_i - shift_k)`` over the samples of class k.
    sqnorms : array, shape (K,)
        ``sum_i ||x_i - shift_k||^2`` over the samples of class k.
    gram : array, shape (d, d), or None
        ``sum_k sum_i (x_i - shift_k)(x_i - shift_k)^T``; present when built
        with ``gram=True``.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.normal(size=(100, 8)), rng.integers(0, 3, size=100)
    >>> whole = ClassStats.from_features(x, y, 3)
    >>> parts = ClassStats.empty(3, 8).update(x[:40], y[:40]).update(x[40:], y[40:])
    >>> bool(np.allclose(whole.means, parts.means))
    True
    >>> bool(np.allclose(whole.within_covariance(), parts.within_covariance()))
    True
    """

    counts: Array
    shift: Array
    sums: Array
    sqnorms: Array
    gram: Array | None = None

    # ------------------------------------------------------------------ build
    @classmethod
    def empty(
        cls,
        num_classes: int,
        dim: int,
        *,
        gram: bool = True,
        xp: ModuleType | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> ClassStats:
        """Statistics of no samples, ready for `update`.

        Parameters
        ----------
        num_classes, dim : int
            Number of classes K (>= 2) and feature dimension d (>= 1).
        gram : bool
            Keep the (d, d) within-class Gram (needed by `within_covariance`
            and by `ncgeom.metrics.nc1` on streamed statistics).
        xp, device, dtype
            Array namespace (default NumPy), device and floating dtype
            (default float64) of the statistics. Batches of lower precision
            are promoted to this dtype; half precision accumulates in float32.

        Examples
        --------
        >>> from ncgeom import ClassStats
        >>> ClassStats.empty(4, 16).counts.tolist()
        [0, 0, 0, 0]
        """
        num_classes = check_num_classes(num_classes)
        dim = check_positive_int(dim, "dim")
        xp = resolve_namespace(xp)
        dtype = accumulation_dtype(xp, check_float_dtype(dtype, xp))
        zeros = functools.partial(xp.zeros, dtype=dtype, device=device)
        return cls(
            counts=xp.zeros(num_classes, dtype=xp.int64, device=device),
            shift=zeros((num_classes, dim)),
            sums=zeros((num_classes, dim)),
            sqnorms=zeros(num_classes),
            gram=zeros((dim, dim)) if gram else None,
        )

    @classmethod
    def from_features(
        cls,
        features: Array,
        labels: Array,
        num_classes: int,
        *,
        gram: bool = True,
        check_finite: bool = True,
        chunk_size: int | None = None,
    ) -> ClassStats:
        """Statistics of in-memory features (N, d) with integer labels in [0, K).

        Shifts are the exact class means of `features` (one pass for the means,
        one for the shifted sums), on the features' namespace and device, in
        their precision (half precision accumulates in float32).

        Parameters
        ----------
        features : array, shape (N, d)
        labels : array, shape (N,), integer
        num_classes : int
        gram : bool
            Keep the pooled within-class Gram (d, d).
        check_finite : bool
            Scan `features` for NaN/Inf and raise if any (default). Pass False
            to skip the scan on trusted data.
        chunk_size : int, optional
            Rows processed at once; default keeps each chunk near 32 MiB.

        Examples
        --------
        >>> import numpy as np
        >>> from ncgeom import ClassStats
        >>> x = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
        >>> stats = ClassStats.from_features(x, np.array([0, 0, 1]), 2)
        >>> stats.means.tolist(), stats.class_variances.tolist()
        ([[2.0, 0.0], [0.0, 2.0]], [1.0, 0.0])
        """
        xp = namespace(features=features, labels=labels)
        num_classes = check_num_classes(num_classes)
        scan = check_finite and not on_host(xp, array_device(features))
        check_batch(features, labels, num_classes, xp, check_finite=scan)
        start = cls.empty(
            num_classes,
            features.shape[1],
            gram=gram,
            xp=xp,
            device=array_device(features),
            dtype=features.dtype,
        )
        if features.shape[0] == 0:
            return start
        return start._add_batch(
            features, labels, xp, chunk_size, fresh=True, check_after=check_finite and not scan
        )

    def update(
        self,
        features: Array,
        labels: Array,
        *,
        check_finite: bool = True,
        chunk_size: int | None = None,
    ) -> ClassStats:
        """Return new statistics that also hold one batch (one pass over it).

        The batch must be on the statistics' namespace and device; an empty
        batch returns ``self``. A class seen for the first time takes its mean
        in this batch as its shift.

        Examples
        --------
        >>> import numpy as np
        >>> from ncgeom import ClassStats
        >>> stats = ClassStats.empty(2, 2).update(np.ones((3, 2)), np.array([0, 1, 1]))
        >>> stats.counts.tolist()
        [1, 2]
        """
        xp = namespace(stats=self.shift, features=features, labels=labels)
        scan = check_finite and not on_host(xp, self.device)
        check_batch(features, labels, self.num_classes, xp, check_finite=scan)
        if features.shape[1] != self.dim:
            msg = (
                f"`features` must have {self.dim} columns like the statistics; "
                f"got {features.shape[1]}"
            )
            raise ValueError(msg)
        if features.shape[0] == 0:
            return self
        return self._add_batch(
            features, labels, xp, chunk_size, check_after=check_finite and not scan
        )

    def _add_batch(
        self,
        features: Array,
        labels: Array,
        xp: ModuleType,
        chunk_size: int | None,
        *,
        fresh: bool = False,
        check_after: bool = False,
    ) -> ClassStats:
        """Add a validated batch. With `check_after`, NaN and Inf are looked for
        in the batch's squared norms (K numbers, which they reach) instead of in
        the features beforehand: on the host that saves a pass over the batch;
        on a device it would cost a second host read, so there the callers scan
        first."""
        rows = chunk_rows(
            features.shape[0],
            self.dim,
            self.dtype,
            xp,
            chunk_size,
            array_device(features),
            gram=self.gram is not None,
        )
        counts = segment_count(labels, self.num_classes, xp)
        new = (self.counts == 0) & (counts > 0)
        # On the host, asking whether a class is new costs nothing and saves a
        # pass; on a GPU the pass is cheap and the question would synchronise.
        if fresh or not on_host(xp, self.device) or bool(xp.any(new)):
            batch_means = class_means(features, labels, counts, self.dtype, xp, rows)
            # A class seen for the first time takes its mean in this batch as shift;
            # its running statistics are all zero, so replacing its shift is exact.
            shift = xp.where(new[:, None], batch_means, self.shift)
        else:
            # Every class of the batch has a shift already: no pass for means.
            shift = self.shift
        # On fresh statistics every shift is this batch's exact class mean: the
        # class sums of the deviations are rounding errors and are skipped.
        with quiet_invalid() if check_after else contextlib.nullcontext():
            sums, sqnorms, gram, _ = shifted_moments(
                features, labels, shift, xp, rows, gram=self.gram is not None, class_sums=not fresh
            )
        if check_after and not bool(xp.all(xp.isfinite(sqnorms))):
            # Locate the bad rows and raise; finite rows whose squares overflowed pass.
            check_batch(features, labels, self.num_classes, xp, check_finite=True)
        batch = ClassStats(counts, shift, sums, sqnorms, gram)
        return ClassStats(self.counts, shift, self.sums, self.sqnorms, self.gram)._plus(batch)

    # ------------------------------------------------------------------ merge
    def merge(self, other: ClassStats) -> ClassStats:
        """Statistics of the union of both sample sets (exact; order-free).

        Both must have the same number of classes, dimension, namespace and
        device, and both or neither must keep the Gram. The result has the
        wider of the two dtypes.

        Examples
        --------
        >>> import numpy as np
        >>> from ncgeom import ClassStats
        >>> a = ClassStats.from_features(np.eye(2), np.array([0, 1]), 2)
        >>> b = ClassStats.from_features(3 * np.eye(2), np.array([0, 1]), 2)
        >>> a.merge(b).means.tolist()
        [[2.0, 0.0], [0.0, 2.0]]
        """
        if not isinstance(other, ClassStats):
            msg = f"`other` must be a ClassStats; got {type(other).__name__}"
            raise TypeError(msg)
        xp = namespace(self=self.shift, other=other.shift)
        if (self.num_classes, self.dim) != (other.num_classes, other.dim):
            msg = (
                "cannot merge statistics of different shape: `self` has "
                f"{self.num_classes} classes x {self.dim} dims, `other` has "
                f"{other.num_classes} classes x {other.dim} dims"
            )
            raise ValueError(msg)
        if (self.gram is None) != (other.gram is None):
            which = "`self`" if self.gram is None else "`other`"
            msg = (
                "cannot merge statistics with and without a Gram: "
                f"{which} was built with gram=False"
            )
            raise ValueError(msg)
        dtype = xp.result_type(self.shift.dtype, other.shift.dtype)
        left, right = self.astype(dtype), other.astype(dtype)
        shift = xp.where((left.counts > 0)[:, None], left.shift, right.shift)
        return left._rebase(shift)._plus(right._rebase(shift))

    def astype(self, dtype: Any) -> ClassStats:
        """The same statistics with floating arrays cast to `dtype`."""
        if dtype == self.shift.dtype:
            return self
        xp = self.xp

        def cast(array: Array) -> Array:
            return xp.astype(array, dtype)

        return ClassStats(
            self.counts,
            cast(self.shift),
            cast(self.sums),
            cast(self.sqnorms),
            None if self.gram is None else cast(self.gram),
        )

    def _rebase(self, shift: Array) -> ClassStats:
        """Express the statistics relative to new shifts (an exact identity).

        With delta_k = s_k - s'_k and x - s' = (x - s) + delta:
        sums' = sums + n delta, sqnorms' = sqnorms + 2 delta.sums + n |delta|^2,
        gram' = gram + D^T S + S^T D + D^T diag(n) D  (D, S: rows delta_k, sums_k).
        """
        xp = self.xp
        delta = self.shift - shift
        n = xp.astype(self.counts, delta.dtype)
        n_delta = n[:, None] * delta
        sums = self.sums + n_delta
        sqnorms = self.sqnorms + xp.sum(delta * (2 * self.sums + n_delta), axis=1)
        gram = self.gram
        if gram is not None:
            cross = delta.T @ self.sums
            gram = gram + cross + cross.T + delta.T @ n_delta
        return ClassStats(self.counts, shift, sums, sqnorms, gram)

    def _plus(self, other: ClassStats) -> ClassStats:
        """Add statistics that already share shifts."""
        gram = None if self.gram is None else self.gram + other.gram
        return ClassStats(
            self.counts + other.counts,
            self.shift,
            self.sums + other.sums,
            self.sqnorms + other.sqnorms,
            gram,
        )

    # ---------------------------------------------------------------- derived
    @property
    def xp(self) -> ModuleType:
        """The array namespace of the statistics."""
        return namespace(stats=self.shift)

    @property
    def device(self) -> Any:
        """The device the statistics live on."""
        return array_device(self.shift)

    @property
    def dtype(self) -> Any:
        """Floating dtype of the accumulated sums."""
        return self.shift.dtype

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return int(self.shift.shape[0])

    @property
    def dim(self) -> int:
        """Feature dimension d."""
        return int(self.shift.shape[1])

    @property
    def num_samples(self) -> Array:
        """Total number of samples N (0-d int64 array, on the device)."""
        return self.xp.sum(self.counts)

    @property
    def offsets(self) -> Array:
        """Class mean minus shift, (K, d); zero rows for empty classes."""
        xp = self.xp
        return self.sums / xp.astype(xp.clip(self.counts, min=1), self.dtype)[:, None]

    @property
    def means(self) -> Array:
        """Class means (K, d); NaN rows for classes with no samples."""
        xp = self.xp
        means = self.shift + self.offsets
        return xp.where((self.counts > 0)[:, None], means, xp.nan)

    @property
    def global_mean(self) -> Array:
        """Mean of all samples, (d,)."""
        xp = self.xp
        n = xp.astype(self.counts, self.dtype)
        weighted = n[:, None] * (self.shift + self.offsets)
        return xp.sum(weighted, axis=0) / xp.sum(n)

    @property
    def class_variances(self) -> Array:
        """``v_k = (1/n_k) sum_i ||x_i - mu_k||^2`` (K,); NaN for empty classes."""
        xp = self.xp
        n = xp.clip(xp.astype(self.counts, self.dtype), min=1)
        # ||offset_k||^2 = ||sums_k||^2 / n_k^2: no (K, d) temporary.
        spread = self.sqnorms / n - xp.vecdot(self.sums, self.sums) / (n * n)
        return xp.where(self.counts > 0, xp.clip(spread, min=0), xp.nan)

    def within_scatter(self) -> Array:
        """``sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})^T`` (d, d); needs the Gram."""
        xp = self.xp
        if self.gram is None:
            msg = "the within-class scatter needs the Gram: build the statistics with gram=True"
            raise ValueError(msg)
        offsets = self.offsets
        n = xp.astype(self.counts, self.dtype)
        return self.gram - offsets.T @ (n[:, None] * offsets)

    def within_covariance(self) -> Array:
        """``Sigma_W = (1/N) sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})^T`` (d, d).

        Needs statistics built with ``gram=True``.
        """
        xp = self.xp
        return self.within_scatter() / xp.astype(self.num_samples, self.dtype)

    def __repr__(self) -> str:
        gram = "with" if self.gram is not None else "without"
        return (
            f"ClassStats(num_classes={self.num_classes}, dim={self.dim}, dtype={self.dtype}, "
            f"device={self.device}, {gram} gram)"
        )


def merge_stats(*stats: ClassStats) -> ClassStats:
    """Merge any number of `ClassStats` (in any order; the result is the same).

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, merge_stats
    >>> parts = [ClassStats.from_features(np.eye(2) * i, np.array([0, 1]), 2) for i in (1, 2, 3)]
    >>> merge_stats(*parts).counts.tolist()
    [3, 3]
    """
    if not stats:
        msg = "`merge_stats` needs at least one ClassStats; got none"
        raise ValueError(msg)
    return functools.reduce(ClassStats.merge, stats)


def chunk_rows(
    num_rows: int,
    dim: int,
    dtype: Any,
    xp: ModuleType,
    chunk_size: int | None = None,
    device: Any = None,
    *,
    gram: bool = False,
) -> int:
    """Rows per chunk: `chunk_size` if given, else about `HOST_CHUNK_BYTES` (CPU)
    or `CHUNK_BYTES` (GPU) of features.

    Chunks that feed a (d, d) Gram product take `CHUNK_BYTES` on every device:
    the product dominates their cost and runs faster on more rows.
    """
    if chunk_size is not None:
        return check_positive_int(chunk_size, "chunk_size")
    itemsize = 8 if dtype == xp.float64 else 4
    budget = HOST_CHUNK_BYTES if on_host(xp, device) and not gram else CHUNK_BYTES
    return max(1, min(max(num_rows, 1), budget // (itemsize * max(dim, 1))))


def row_chunks(num_rows: int, rows: int) -> list[slice]:
    """Slices of at most `rows` rows covering ``range(num_rows)`` (in bounds)."""
    return [slice(lo, min(lo + rows, num_rows)) for lo in range(0, num_rows, rows)]


def class_means(
    features: Array, labels: Array, counts: Array, dtype: Any, xp: ModuleType, rows: int
) -> Array:
    """Class means (K, d) of a batch with known class `counts`; zero rows for absent classes."""
    num_classes = counts.shape[0]
    total = None
    if features.dtype == dtype and has_native_segment_sum(xp):
        # No cast, so no temporary of the chunk's size: chunks only bound the
        # length of each float accumulation, and few calls save per-call costs.
        rows = max(rows, CHUNK_BYTES // (4 * max(1, features.shape[1])))
    for part_rows in row_chunks(features.shape[0], rows):
        chunk = xp.astype(features[part_rows, ...], dtype, copy=False)
        part = segment_sum(chunk, labels[part_rows], num_classes, xp)
        total = part if total is None else total + part
    return total / xp.astype(xp.clip(counts, min=1), dtype)[:, None]


def shifted_moments(
    features: Array,
    labels: Array,
    shift: Array,
    xp: ModuleType,
    rows: int,
    *,
    gram: bool,
    class_sums: bool = True,
    visit: Callable[[Array, Array, Array], tuple[Array, ...]] | None = None,
) -> tuple[Array, Array, Array | None, tuple[Array, ...] | None]:
    """One chunked pass over ``dev_i = x_i - shift[y_i]``.

    Returns the class sums of ``dev`` (K, d; zeros unless `class_sums`: when
    the shift is the exact class mean they are rounding errors), of
    ``||dev||^2`` (K,), the pooled
    Gram ``dev^T dev`` (d, d) if `gram`, and the chunk-wise sum of
    ``visit(features_chunk, dev_chunk, labels_chunk)`` if `visit` is given
    (other quantities computed from the same chunk while it is in cache).
    """
    num_classes, dim = shift.shape
    dtype = shift.dtype
    sums = xp.zeros((num_classes, dim), dtype=dtype, device=array_device(shift))
    sqnorms = xp.zeros(num_classes, dtype=dtype, device=array_device(shift))
    gram_sum = xp.zeros((dim, dim), dtype=dtype, device=array_device(shift)) if gram else None
    extra = None
    # One chunk-sized temporary: gather -shift, then add the features in place
    # (x + (-s) rounds exactly like x - s).
    neg_shift = -shift
    for part_rows in row_chunks(features.shape[0], rows):
        y = labels[part_rows]
        dev = gather_rows(neg_shift, y, xp)
        dev += xp.astype(features[part_rows, ...], dtype, copy=False)
        if class_sums:
            sums = sums + segment_sum(dev, y, num_classes, xp)
        sqnorms = sqnorms + segment_sum(xp.vecdot(dev, dev), y, num_classes, xp)
        if gram_sum is not None:
            gram_sum = gram_sum + dev.T @ dev
        if visit is not None:
            part = visit(features[part_rows, ...], dev, y)
            extra = (
                part if extra is None else tuple(a + b for a, b in zip(extra, part, strict=True))
            )
    return sums, sqnorms, gram_sum, extra
