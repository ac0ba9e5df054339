"""Sufficient statistics of class-labelled features: `ClassStats`.

A `ClassStats` holds, per class k, the count n_k, a reference point s_k (the
*shift*), the shifted sum ``sum_i (x_i - s_k)`` and the shifted squared norm
``sum_i ||x_i - s_k||^2``; optionally the pooled shifted Gram
``sum_k sum_i (x_i - s_k)(x_i - s_k)^T`` (d, d). All of them describe the
features divided by `scale`, a power of two that keeps their squares inside the
range of the dtype (1 for features of ordinary size).

One engine makes every set of statistics, in two chunked passes over a batch:

1. class means, summed in float64 (or, on the host, in the batch's own
   precision where every class has few rows, which bounds the rounding), so
   that a float32 class mean is exact to its last bit whatever the class size;
2. deviations from those means: their class sums (the residual of the mean's
   rounding), squared norms and, optionally, their Gram.

Every merge -- batch into running statistics, rank into rank, block into block
-- re-centres both sides on the merged class mean (Chan et al.'s pairwise
update), so the shifted values stay of the size of the within-class spread and
no path subtracts large, nearly equal numbers, whatever the order of batches.
``docs/accuracy.md`` gives the error analysis.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from .._lib import lanes
from .._lib.backend import (
    accumulation_dtype,
    adds_in_place,
    array_device,
    divide_in_place,
    gather_rows,
    has_native_segment_sum,
    index_dtype,
    is_numpy,
    namespace,
    on_host,
    put_rows,
    quiet_invalid,
    resolve_namespace,
    segment_count,
    segment_sum,
    subtract_rows,
    to_host,
    warn_caller,
    wide_float,
    writes_rows_in_place,
    x64_disabled,
)
from .._lib.validate import (
    check_batch,
    check_float_dtype,
    check_instance,
    check_num_classes,
    check_positive_int,
    check_stream_batch,
)

__all__ = [
    "ClassStats",
    "NC1_ROUNDING_LIMIT",
    "class_moments",
    "merge_stats",
    "warn_nc1_rounding",
]

Array = Any
#: ``visit(features_chunk, deviations_chunk, labels_chunk, squared_norms_chunk)``:
#: more sums taken from a chunk while it is in cache (see `class_moments`); the
#: last argument holds each row's ``||deviation||^2``. The deviations' array may be
#: written over by the next chunk: a visit keeps no reference to it.
Visit = Callable[[Array, Array, Array, Array], tuple[Array, ...]]

#: Bytes of shifted features materialised at once on a GPU (rows are processed
#: in chunks): large, so that each chunk is a few large kernel launches.
CHUNK_BYTES = 32 * 2**20
#: The same on the CPU: small enough that a chunk's deviations stay in cache
#: between the operations that read them, and that its buffer is reused by the
#: allocator instead of being mapped (and zeroed) afresh for every chunk.
HOST_CHUNK_BYTES = 2 * 2**20
#: On the host with NumPy or torch, `ClassStats.update` works on the rows of
#: the batch's classes alone, at a cost that follows the batch and not K, when
#: they are at most this fraction of K.
PRESENT_CLASS_FRACTION = 0.5
#: Features whose largest class-mean entry lies within ``2**+-SCALE_FREE_EXPONENT``
#: are used as they are (scale 1); others are divided by a power of two first.
SCALE_FREE_EXPONENT = 16


@dataclass(frozen=True, eq=False)
class ClassStats:
    """Immutable, mergeable sufficient statistics of features grouped by class.

    Build with `from_features` (in-memory data) or `empty` followed by
    `update` (streaming); combine with `merge` / `merge_stats`. All arrays live
    on one namespace and device. The stored arrays describe the features
    divided by `scale`; the properties (`means`, `class_variances`,
    `within_covariance`, ...) are in the features' own units.

    What is accumulated in what (the dtype of the statistics):

    ============================  ==========================================
    features                      statistics
    ============================  ==========================================
    float16, bfloat16             float32
    float32                       float32; class means summed in float64
                                  where float32 sums would cost precision
    float64                       float64
    longdouble (x86-64 NumPy)     float64, with a warning: precision beyond
                                  float64 is dropped
    integer, bool, complex        refused: `TypeError` naming `features`
    ============================  ==========================================

    `empty` takes the dtype given (float64 by default) and `update`
    accumulates every batch in it. On JAX without its 64-bit mode
    (``jax_enable_x64``) there is no float64: float32, and int32 counts.

    Attributes
    ----------
    counts : array, shape (K,), int64
        Samples per class (int32 on JAX without its 64-bit mode).
    shift : array, shape (K, d)
        Reference point of each class, in units of `scale`: the class mean
        as of the last batch or merge (re-centred by every merge).
    sums : array, shape (K, d)
        ``sum_i (x_i / scale - shift_k)`` over the samples of class k: the
        residual that makes ``shift + sums / n`` the exact mean.
    sqnorms : array, shape (K,)
        ``sum_i ||x_i / scale - shift_k||^2`` over the samples of class k.
    gram : array, shape (d, d), or None
        ``sum_k sum_i (x_i / scale - shift_k)(x_i / scale - shift_k)^T``;
        present when built with ``gram=True``.
    scale : array, shape (), or None
        A power of two (1 for features of ordinary size) that keeps the
        squares of the features inside the dtype's range; None means 1.

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
    scale: Array | None = None

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
            Array namespace (default NumPy; a library module such as
            ``torch`` is accepted), device and real floating dtype (default
            float64) of the statistics. Every batch is accumulated in this
            dtype; half precision is stored as float32, a ``longdouble`` as
            float64 (with a warning), see the table of `ClassStats`.

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
            counts=xp.zeros(num_classes, dtype=index_dtype(xp), device=device),
            shift=zeros((num_classes, dim)),
            sums=zeros((num_classes, dim)),
            sqnorms=zeros(num_classes),
            gram=zeros((dim, dim)) if gram else None,
            scale=xp.ones((), dtype=dtype, device=device),
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

        Two chunked passes (class means, then deviations from them), on the
        features' namespace and device, in the dtype the table of
        `ClassStats` gives for theirs. Exact in float32 at any class size:
        see `class_moments`.

        Parameters
        ----------
        features : array, shape (N, d), N >= 1
        labels : array, shape (N,), integer
        num_classes : int
        gram : bool
            Keep the pooled within-class Gram (d, d).
        check_finite : bool
            Raise if `features` hold NaN/Inf (default). Pass False to skip
            the check on trusted data.
        chunk_size : int, optional
            Rows processed at once; default keeps each chunk near 32 MiB.

        Raises
        ------
        ValueError
            For zero rows or columns (name and shape in the message), labels
            outside [0, K), NaN or Inf in `features`.
        TypeError
            For features that are not real floating (integer, complex) or
            not a plain array (masked, sparse, ...: see `ncgeom.checks.check_container`).

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
        features, labels = check_stream_batch(features, labels, num_classes, xp, check_finite)
        if features.shape[0] == 0:
            msg = (
                f"`features` must hold at least one sample; got shape {tuple(features.shape)} "
                "(use ClassStats.empty for statistics of no samples)"
            )
            raise ValueError(msg)
        dtype = accumulation_dtype(xp, features.dtype)
        stats, _ = class_moments(
            features,
            labels,
            num_classes,
            dtype=dtype,
            gram=gram,
            chunk_size=chunk_size,
            check_finite=check_finite,
        )
        return stats

    def update(
        self,
        features: Array,
        labels: Array,
        *,
        check_finite: bool = True,
        chunk_size: int | None = None,
    ) -> ClassStats:
        """Return new statistics that also hold one batch.

        On the host, a batch whose classes all have samples already is summed
        about the running means (one pass) and added; where that would cost
        precision (a batch far from the running means), and on a GPU, the
        batch's own statistics (`class_moments`) are merged in with `merge`,
        which re-centres every class on its new mean (on the host, the first
        batch's statistics are the result as they are). Either way the result
        does not depend on how the samples were split into batches, nor on
        their order, beyond rounding. On the host with NumPy or torch, a batch
        that holds at most half of the classes (`PRESENT_CLASS_FRACTION`) takes
        these steps on its classes' rows alone, so the arithmetic follows the
        batch, not K; the result is new tables, a copy of K d numbers (see
        `ncgeom.StreamingClassStats` for updates without it). The batch must
        be on the statistics' namespace and device; an empty batch returns
        ``self``. Framework tensors are detached (no autograd graph is kept).

        Examples
        --------
        >>> import numpy as np
        >>> from ncgeom import ClassStats
        >>> stats = ClassStats.empty(2, 2).update(np.ones((3, 2)), np.array([0, 1, 1]))
        >>> stats.counts.tolist()
        [1, 2]
        """
        return self._update(features, labels, check_finite=check_finite, chunk_size=chunk_size)

    def _update(
        self,
        features: Array,
        labels: Array,
        *,
        check_finite: bool,
        chunk_size: int | None,
        in_place: bool = False,
    ) -> ClassStats:
        """`update`; with `in_place`, the rows of the batch's classes are
        written into these very tables where the rows path allows it (the
        caller owns them: `ncgeom.StreamingClassStats`)."""
        xp = namespace(stats=self.shift, features=features, labels=labels)
        features, labels = check_stream_batch(features, labels, self.num_classes, xp, check_finite)
        if features.shape[1] != self.dim:
            msg = (
                f"`features` must have {self.dim} columns like the statistics; "
                f"got {features.shape[1]}"
            )
            raise ValueError(msg)
        if features.shape[0] == 0:
            return self
        if on_host(xp, self.device) and writes_rows_in_place(xp):
            # Host reads are cheap here: find the batch's classes (a device would
            # wait for them) and work on their rows alone when they are few.
            present = batch_classes(labels, self.num_classes, xp)
            if present.shape[0] <= PRESENT_CLASS_FRACTION * self.num_classes:
                return self._update_present(
                    features,
                    labels,
                    present,
                    check_finite=check_finite,
                    chunk_size=chunk_size,
                    in_place=in_place,
                )
        batch, _ = class_moments(
            features,
            labels,
            self.num_classes,
            dtype=self.dtype,
            gram=self.gram is not None,
            chunk_size=chunk_size,
            check_finite=check_finite,
            pilot=self,
        )
        if batch.shift is self.shift:
            # Deviations from these very shifts, within the cancellation bound:
            # the sums add exactly, and the running offsets stay within it too.
            return self._plus(batch)
        if on_host(xp, self.device) and not bool(xp.any(self.counts)):
            # Nothing to merge with (the first batch): the batch's statistics are
            # the merge, without its passes over (K, d) arrays.
            return batch
        return self.merge(batch)

    def _update_present(
        self,
        features: Array,
        labels: Array,
        present: Array,
        *,
        check_finite: bool,
        chunk_size: int | None,
        in_place: bool = False,
    ) -> ClassStats:
        """`update` by the rows of the batch's classes `present` (sorted, unique):
        the same steps on a table of those rows, written back at a cost of
        O(rows) with `in_place` (else a copy of the tables)."""
        xp = self.xp
        compact = xp.searchsorted(present, labels)
        rows = self._rows(present)
        batch, _ = class_moments(
            features,
            compact,
            present.shape[0],
            dtype=self.dtype,
            gram=self.gram is not None,
            chunk_size=chunk_size,
            check_finite=check_finite,
            pilot=rows,
        )
        whole = self
        if batch.shift is rows.shift:
            merged = rows._plus(batch)
        elif not (bool(xp.any(rows.counts)) or bool(xp.any(self.counts))):
            # The first batch: its statistics are the result, in its own scale.
            whole = self.rescaled(batch.unit_scale)
            merged = batch
        else:
            # Every row must share one scale: the larger one, as `merge` takes it.
            scale = xp.maximum(self.unit_scale, batch.unit_scale)
            if bool(scale != self.unit_scale):
                whole = self.rescaled(scale)
            # (`merge` takes the rows to `scale` too, or keeps the batch's scale
            # where the rows hold no samples: so the batch goes to `scale` first)
            merged = rows.merge(batch.rescaled(scale))
        return whole._with_rows(present, merged, in_place=in_place and whole is self)

    def _rows(self, index: Array) -> ClassStats:
        """The classes `index` alone, with the pooled Gram and the scale of all."""
        xp = self.xp
        return ClassStats(
            gather_rows(self.counts, index, xp),
            gather_rows(self.shift, index, xp),
            gather_rows(self.sums, index, xp),
            gather_rows(self.sqnorms, index, xp),
            self.gram,
            self.unit_scale,
        )

    def _with_rows(self, index: Array, rows: ClassStats, *, in_place: bool) -> ClassStats:
        """These statistics with the classes `index` replaced by `rows` (of `_rows`)."""
        xp = self.xp

        def put(table: Array, values: Array) -> Array:
            return put_rows(table, index, values, xp, in_place=in_place)

        return ClassStats(
            put(self.counts, rows.counts),
            put(self.shift, rows.shift),
            put(self.sums, rows.sums),
            put(self.sqnorms, rows.sqnorms),
            rows.gram,
            rows.unit_scale,
        )

    # ------------------------------------------------------------------ merge
    def merge(self, other: ClassStats) -> ClassStats:
        """Statistics of the union of both sample sets.

        Both sides are re-centred on the merged class means before they are
        added (the pairwise update of Chan, Golub and LeVeque), so the result
        is the same, up to rounding of the final values, in any order and any
        merge tree. Both must have the same number of classes, dimension,
        namespace and device, and both or neither must keep the Gram. The
        result has the wider of the two dtypes.

        Examples
        --------
        >>> import numpy as np
        >>> from ncgeom import ClassStats
        >>> a = ClassStats.from_features(np.eye(2), np.array([0, 1]), 2)
        >>> b = ClassStats.from_features(3 * np.eye(2), np.array([0, 1]), 2)
        >>> a.merge(b).means.tolist()
        [[2.0, 0.0], [0.0, 2.0]]
        """
        check_instance(other, ClassStats, "other")
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
        # A common scale: the larger one, unless a side holds no samples.
        sa, sb = left.unit_scale, right.unit_scale
        none_a, none_b = xp.sum(left.counts) == 0, xp.sum(right.counts) == 0
        scale = xp.where(none_a, sb, xp.where(none_b, sa, xp.maximum(sa, sb)))
        left, right = left.rescaled(scale), right.rescaled(scale)
        n_a = xp.astype(left.counts, dtype)
        n_b = xp.astype(right.counts, dtype)
        weight = n_b / xp.clip(n_a + n_b, min=1)
        mean_a = left.shift + left.offsets
        mean_b = right.shift + right.offsets
        shift = mean_a + weight[:, None] * (mean_b - mean_a)
        return left.rebase(shift)._plus(right.rebase(shift))

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
            cast(self.unit_scale),
        )

    def rescaled(self, scale: Array) -> ClassStats:
        """The same statistics stored in units of another power of two `scale`.

        Exact (a power-of-two factor) unless values leave the dtype's range.
        """
        xp = self.xp
        factor = self.unit_scale / scale
        # Two factors, not their square: 0 stays 0 when the square would overflow.
        return ClassStats(
            self.counts,
            self.shift * factor,
            self.sums * factor,
            self.sqnorms * factor * factor,
            None if self.gram is None else self.gram * factor * factor,
            xp.asarray(scale, dtype=self.dtype, device=self.device),
        )

    def rebase(self, shift: Array) -> ClassStats:
        """The same statistics relative to new shifts (K, d), in units of `scale`.

        An exact identity: with delta_k = s_k - s'_k and x - s' = (x - s) + delta,
        ``sums' = sums + n delta``, ``sqnorms' = sqnorms + delta.(2 sums + n delta)``
        and ``gram' = gram + P + P^T`` with ``P = D^T (S + diag(n) D / 2)`` (rows
        of D and S: delta_k and sums_k). It keeps the stored values small when
        the new shifts lie near the class means, as `merge` chooses them.

        Examples
        --------
        >>> import numpy as np
        >>> from ncgeom import ClassStats
        >>> stats = ClassStats.from_features(np.eye(2), np.array([0, 1]), 2)
        >>> moved = stats.rebase(np.zeros((2, 2)))
        >>> moved.sums.tolist(), moved.means.tolist() == stats.means.tolist()
        ([[1.0, 0.0], [0.0, 1.0]], True)
        """
        xp = self.xp
        delta = self.shift - shift
        n = xp.astype(self.counts, delta.dtype)
        n_delta = n[:, None] * delta
        sums = self.sums + n_delta
        sqnorms = self.sqnorms + xp.sum(delta * (2 * self.sums + n_delta), axis=1)
        gram = self.gram
        if gram is not None:
            half = delta.T @ (self.sums + 0.5 * n_delta)
            gram = gram + half + half.T
        return ClassStats(self.counts, shift, sums, sqnorms, gram, self.unit_scale)

    def _plus(self, other: ClassStats) -> ClassStats:
        """Add statistics that already share shifts and scale."""
        gram = None if self.gram is None else self.gram + other.gram
        return ClassStats(
            self.counts + other.counts,
            self.shift,
            self.sums + other.sums,
            self.sqnorms + other.sqnorms,
            gram,
            self.unit_scale,
        )

    # ---------------------------------------------------------------- derived
    @functools.cached_property
    def xp(self) -> ModuleType:
        """The array namespace of the statistics (resolved once per object)."""
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
    def unit_scale(self) -> Array:
        """`scale` as a 0-d array (1 where it is None)."""
        if self.scale is not None:
            return self.scale
        return self.xp.ones((), dtype=self.dtype, device=self.device)

    @property
    def num_samples(self) -> Array:
        """Total number of samples N (0-d int64 array, on the device)."""
        return self.xp.sum(self.counts)

    @property
    def offsets(self) -> Array:
        """Class mean minus shift in units of `scale`, (K, d); zero rows for empty classes."""
        xp = self.xp
        return self.sums / xp.astype(xp.clip(self.counts, min=1), self.dtype)[:, None]

    @property
    def scaled_means(self) -> Array:
        """Class means divided by `scale` (K, d); rows of empty classes are their shifts.

        Scale-invariant metrics are computed from these: their squares stay
        inside the dtype's range whatever the features' size.
        """
        return self.shift + self.offsets

    @property
    def means(self) -> Array:
        """Class means (K, d); NaN rows for classes with no samples."""
        xp = self.xp
        means = self.scaled_means * self.unit_scale
        return xp.where((self.counts > 0)[:, None], means, xp.nan)

    @property
    def global_mean(self) -> Array:
        """Mean of all samples, (d,)."""
        xp = self.xp
        n = xp.astype(self.counts, self.dtype)
        weighted = n[:, None] * self.scaled_means
        return xp.sum(weighted, axis=0) / xp.sum(n) * self.unit_scale

    def scaled_variances(self) -> Array:
        """`class_variances` divided by ``scale**2`` (K,); NaN for empty classes."""
        xp = self.xp
        n = xp.clip(xp.astype(self.counts, self.dtype), min=1)
        # ||offset_k||^2 = ||sums_k||^2 / n_k^2: no (K, d) temporary.
        spread = self.sqnorms / n - xp.vecdot(self.sums, self.sums) / (n * n)
        return xp.where(self.counts > 0, xp.clip(spread, min=0), xp.nan)

    @property
    def class_variances(self) -> Array:
        """``v_k = (1/n_k) sum_i ||x_i - mu_k||^2`` (K,); NaN for empty classes."""
        scale = self.unit_scale
        return self.scaled_variances() * scale * scale

    def scaled_scatter(self) -> Array:
        """`within_scatter` divided by ``scale**2`` (d, d); needs the Gram."""
        xp = self.xp
        if self.gram is None:
            msg = "the within-class scatter needs the Gram: build the statistics with gram=True"
            raise ValueError(msg)
        offsets = self.offsets
        n = xp.astype(self.counts, self.dtype)
        return self.gram - offsets.T @ (n[:, None] * offsets)

    def scatter_along(self, basis: Array, weights: Array) -> tuple[Array, Array]:
        """The within scatter along orthonormal directions, and how far the
        Gram's rounding may move a weighted sum of it (NC1).

        Parameters
        ----------
        basis : array, shape (d, r)
            Orthonormal columns v_r (the between-class directions of NC1).
        weights : array, shape (r,)
            Non-negative weights w_r (NC1's inverse eigenvalues of Sigma_B).

        Returns
        -------
        along : array, shape (r,)
            ``v_r^T S_W v_r`` in units of ``scale**2`` (`scaled_scatter`).
        rounding : array, shape ()
            The relative bound ``eps ||S_W||_F / (sum_r w_r along_r / sum_r w_r)``
            on the error of ``sum_r w_r along_r`` that storing the (d, d) Gram
            in the statistics' dtype allows (``docs/accuracy.md``); 0 without
            scatter or weights, +Inf when nothing is left along the directions.
            `warn_nc1_rounding` turns it into a warning above
            `NC1_ROUNDING_LIMIT`.

        Examples
        --------
        >>> import numpy as np
        >>> from ncgeom import ClassStats
        >>> x = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
        >>> stats = ClassStats.from_features(x, np.array([0, 0, 1, 1]), 2)
        >>> along, rounding = stats.scatter_along(np.eye(2), np.ones(2))
        >>> along.tolist(), bool(rounding < 1e-15)
        ([2.0, 2.0], True)
        """
        xp = self.xp
        scatter = self.scaled_scatter()
        along = xp.sum(basis * (scatter @ basis), axis=0)
        largest = xp.max(xp.abs(scatter))
        unit = xp.where(largest > 0, largest, xp.ones_like(largest))
        frobenius = unit * xp.sqrt(xp.sum((scatter / unit) * (scatter / unit)))
        total = xp.sum(weights)
        share = weights / xp.where(total > 0, total, xp.ones_like(total))
        typical = xp.sum(share * along)
        eps = xp.finfo(self.dtype).eps
        zero = xp.zeros_like(typical)
        resolved = eps * frobenius / xp.where(typical > 0, typical, xp.ones_like(typical))
        rounding = xp.where(
            (frobenius > 0) & (total > 0),
            xp.where(typical > 0, resolved, xp.full_like(typical, xp.inf)),
            zero,
        )
        return along, rounding

    def within_scatter(self) -> Array:
        """``sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})^T`` (d, d); needs the Gram."""
        scale = self.unit_scale
        return self.scaled_scatter() * scale * scale

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


def batch_classes(labels: Array, num_classes: int, xp: ModuleType) -> Array:
    """The sorted classes that `labels` (valid, in [0, K)) hold: by sorting the
    labels when they are fewer than K, by counting them into K bins otherwise."""
    if labels.shape[0] < num_classes:
        return xp.unique_values(labels)
    return xp.nonzero(segment_count(labels, num_classes, xp) > 0)[0]


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


#: Relative bound on NC1's rounding above which `warn_nc1_rounding` warns: the
#: accuracy every other path keeps.
NC1_ROUNDING_LIMIT = 1e-4


def warn_nc1_rounding(
    rounding: Any, dtype: Any, *, nc1: float | None = None, source: str = "statistics"
) -> bool:
    """One warning when `rounding` (a relative bound on NC1's rounding error, a
    number or a 0-d array: then one host read) exceeds `NC1_ROUNDING_LIMIT`.

    With `nc1` (its value), an error below the dtype's eps in absolute terms
    (NC1 is a ratio to the between-class spread) is not worth a warning: a
    within-class scatter made only of rounding (features exactly at their
    class means) has a large relative error and none that matters.

    `source` says where the bound comes from: ``"statistics"`` (their stored
    (d, d) Gram, `ClassStats.scatter_along`) or ``"features"`` (the
    deviations of in-memory features projected in their own dtype, in
    `ncgeom.nc_report`). The warning gives the bound and the remedy; it points
    at the caller's line. Returns whether it warned.
    """
    bound = float(to_host(rounding)) if not isinstance(rounding, (int, float)) else rounding
    if not bound > NC1_ROUNDING_LIMIT:
        return False
    name = str(dtype).rsplit(".", maxsplit=1)[-1]
    if nc1 is not None and not bound * abs(nc1) > float(np.finfo(name).eps):
        return False
    size = f"up to {bound:.1e}" if math.isfinite(bound) else "entirely"
    if source == "features":
        cause = "the rounding of their deviations from the class means"
        remedy = "pass the features in float64"
        if name == "float64":
            remedy = "float64 cannot resolve it either"
    else:
        cause = "the rounding of their (d, d) within-class Gram"
        remedy = (
            "accumulate in float64: ClassStats.empty(num_classes, dim, dtype=np.float64) "
            "(or torch.float64, ...) before `update`, or `from_features` on float64 "
            "features; or nc_report((features, labels)), which needs no Gram"
        )
        if name == "float64":
            remedy = (
                "float64 cannot resolve it either; nc_report((features, labels)) needs no Gram"
            )
    warn_caller(
        f"NC1 from these {name} {source} may be off by {size} relative: {cause} "
        "(docs/accuracy.md) is large next to the scatter along the between-class "
        f"directions (one far sample away from them?); {remedy}"
    )
    return True


# ----------------------------------------------------------------------------- the engine
def class_moments(
    features: Array,
    labels: Array,
    num_classes: int,
    *,
    dtype: Any,
    gram: bool,
    chunk_size: int | None = None,
    check_finite: bool = True,
    visitor: Callable[[Array, Array], Visit] | None = None,
    pilot: ClassStats | None = None,
    shift_tolerance: float | None = None,
) -> tuple[ClassStats, tuple[Array, ...] | None]:
    """The statistics engine: `ClassStats` of one validated batch, in two passes.

    1. Class counts and reference points (the shifts): the class means, or
       the running means of `pilot` when it holds every class of the batch.
       The largest mean entry sets `scale`.
    2. Deviations ``x / scale - shift_y`` in `dtype`: their class sums (the
       residual that makes ``shift + sums / n`` the exact mean), squared norms
       and, with `gram`, their Gram; and, with `visitor`, the chunk-wise sums
       of ``visitor(counts, shifts)(x_chunk, dev_chunk, y_chunk, dev_sq_chunk)``.

    The squared deviations lose ``F = |shift - mean|^2 / variance`` times
    their rounding to cancellation (see ``docs/accuracy.md``). On a GPU the
    means are summed in float64, which makes F negligible at once. On the
    host a first try uses means summed in the batch's own precision (or the
    pilot's shifts) and measures F for every class from its own results, at
    no cost; only a batch with F > `MAX_CANCELLATION` (collapsed features of
    large, sorted or drifting classes) is summed again with float64 means.

    Every path that makes statistics from features (`ClassStats.from_features`,
    `ClassStats.update`, `ncgeom.nc_report`, Dask blocks, the trackers) calls
    this function; only `ClassStats.merge` combines its results.

    Parameters
    ----------
    features : array, shape (N, d), N >= 1
    labels : array, shape (N,), integer in [0, K)
    num_classes : int
    dtype
        Floating dtype of the statistics.
    gram : bool
        Also sum the (d, d) Gram of the deviations.
    chunk_size : int, optional
        Rows per chunk of both passes.
    check_finite : bool
        On the host, raise if the class means show NaN/Inf in `features`.
    visitor : callable, optional
        ``visitor(counts, scaled_shifts)`` returns the visit function of the
        second pass, which can then use the shifts (e.g. to project on them).
    pilot : ClassStats, optional
        Running statistics (same K, d and dtype) whose shifts serve as the
        reference points on the host when they cover every class of the batch.
        The result then shares the pilot's shifts and scale (`ClassStats._plus`
        adds them exactly).
    shift_tolerance : float, optional
        Also require every shift to lie within this fraction of the
        between-class spread (RMS of the centred shifts) of its class mean on
        the first try: a visitor that uses the shifts themselves (the report's
        basis of the centred means) needs them that accurate.

    Returns
    -------
    stats : ClassStats
    extra : tuple of arrays or None
        The summed results of the visit function.
    """
    xp = namespace(features=features, labels=labels)
    device = array_device(features)
    counts = segment_count(labels, num_classes, xp)
    host = on_host(xp, device)
    exact = not host
    shifts = None
    if host and pilot is not None:
        uncovered = (counts > 0) & (pilot.counts == 0)
        if not bool(xp.any(uncovered)):
            shifts = (pilot.shift, pilot.unit_scale, None)
    rounded = False
    while True:
        borrowed = shifts is not None
        if shifts is None:
            shifts = _scaled_class_means(
                features,
                labels,
                counts,
                dtype,
                xp,
                chunk_size,
                host,
                exact=exact,
                check_finite=check_finite,
            )
            # A residual from float64 sums of float64 features is rounded: checked
            # on the host (with the cancellation, one read), summed on a device.
            rounded = shifts[2] is not None and xp.finfo(features.dtype).bits >= 64
            if rounded and not host:
                shifts, rounded = (shifts[0], shifts[1], None), False
        try:
            stats, extra = _moments_about(
                features,
                labels,
                counts,
                shifts,
                dtype,
                xp,
                gram,
                chunk_size,
                check_finite,
                visitor,
                borrowed=borrowed,
            )
        except ValueError:
            if not borrowed:
                raise
            # The running statistics' scale does not fit this batch (its squares
            # overflow there): take the batch's own means and scale instead.
            exact, shifts = True, None
            continue
        if exact and not rounded:
            return stats, extra
        cancellation, residual_error = _first_try_errors(stats, xp, rounded=rounded)
        if residual_error > MAX_RESIDUAL_ERROR:
            # Same means, deviations summed in the second pass.
            shifts, rounded = (shifts[0], shifts[1], None), False
            continue
        if exact or (
            cancellation <= MAX_CANCELLATION
            and (shift_tolerance is None or _shift_error(stats, xp) <= shift_tolerance)
        ):
            return stats, extra
        exact, shifts = True, None


def _moments_about(
    features: Array,
    labels: Array,
    counts: Array,
    shifts: tuple[Array, Array, Array | None],
    dtype: Any,
    xp: ModuleType,
    gram: bool,
    chunk_size: int | None,
    check_finite: bool,
    visitor: Callable[[Array, Array], Visit] | None,
    *,
    borrowed: bool = False,
) -> tuple[ClassStats, tuple[Array, ...] | None]:
    """The second pass: statistics of the deviations from the given shifts
    (`borrowed`: another batch's, whose finiteness is checked here; the
    first pass checks the means it makes)."""
    num, dim = features.shape
    device = array_device(features)
    host = on_host(xp, device)
    shift, scale, residual = shifts
    num_classes = counts.shape[0]
    if check_finite and borrowed and host and not bool(xp.all(xp.isfinite(shift))):
        _raise_unrepresentable(features, labels, num_classes, xp, "class means")
    visit = None
    if visitor is not None:
        with lanes.serial_lapack(xp, shift.shape):
            visit = visitor(counts, shift)
    rows = rows_per_chunk(num, dim, dtype, xp, chunk_size, device, gram=gram)
    if chunk_size is None and not adds_in_place(xp):
        # Each chunk's class sums make a (K, d) table to add up: at least K rows
        # a chunk (within the device budget), so the tables cost no more than the rows.
        itemsize = 8 if dtype == xp.float64 else 4
        rows = max(rows, min(num_classes, CHUNK_BYTES // (itemsize * dim)))
    unit = host and float(to_host(scale)) == 1.0
    with quiet_invalid() if check_finite and host else contextlib.nullcontext():
        sums, sqnorms, gram_sum, extra = _deviation_moments(
            features,
            labels,
            shift,
            None if unit else 1 / scale,
            xp,
            rows,
            gram=gram,
            visit=visit,
            class_sums=residual is None,
        )
    if residual is not None:
        sums = residual
    if check_finite and host and not bool(xp.all(xp.isfinite(sqnorms))):
        _raise_unrepresentable(features, labels, num_classes, xp, "squared deviations")
    return ClassStats(counts, shift, sums, sqnorms, gram_sum, scale), extra


#: Largest accepted ratio ``|shift - mean|^2 / variance`` of a class on the
#: host's first try (the factor by which cancellation multiplies rounding).
MAX_CANCELLATION = 1.0


def _shift_error(stats: ClassStats, xp: ModuleType) -> float:
    """``max_k |shift_k - mean_k| / rms_k |shift_k - centre|`` over classes with
    samples (a host read); 0 when the shifts have no spread to compare with."""
    n = xp.astype(stats.counts, stats.dtype)
    present = stats.counts > 0
    offset_sq = xp.vecdot(stats.sums, stats.sums) / xp.clip(n * n, min=1)
    centre = (n @ stats.shift) / xp.sum(n)
    spread = xp.vecdot(stats.shift - centre, stats.shift - centre)
    mean_spread = xp.sum(xp.where(present, spread, xp.zeros_like(spread))) / xp.sum(
        xp.astype(present, stats.dtype)
    )
    largest = xp.max(xp.where(present, offset_sq, xp.zeros_like(offset_sq)))
    values = to_host(xp.stack([largest, mean_spread]))
    return math.sqrt(values[0] / values[1]) if values[1] > 0 else 0.0


#: Largest accepted ``sqrt(n_k) eps |mean_k| / sqrt(v_k)`` of a residual taken
#: from float64 sums of float64 features: the rounding of those sums over the
#: within-class spread, which moves the variances by about as much (relative).
MAX_RESIDUAL_ERROR = 1e-10


def _first_try_errors(stats: ClassStats, xp: ModuleType, *, rounded: bool) -> tuple[float, float]:
    """The cancellation ``max_k |shift_k - mean_k|^2 / v_k`` and, when the
    residual came from `rounded` float64 sums, ``max_k sqrt(n_k) eps |shift_k| /
    sqrt(v_k)`` (else 0), over classes with samples: one host read.

    A class whose variance is zero has no rounding to amplify, unless its
    shift is off its mean: the variance is then floored at the dtype's
    smallest normal number, which makes the ratio far above 1 (or +Inf).
    """
    n = xp.clip(xp.astype(stats.counts, stats.dtype), min=1)
    offset_sq = xp.vecdot(stats.sums, stats.sums) / (n * n)
    spread = stats.sqnorms / n - offset_sq
    tiny = xp.finfo(stats.dtype).smallest_normal
    floored = xp.clip(spread, min=tiny)
    present = stats.counts > 0
    zero = xp.zeros_like(offset_sq)
    with quiet_invalid():  # an offset over a floored spread may overflow to +Inf
        ratio = xp.where(present & (offset_sq > 0), offset_sq / floored, zero)
        parts = [xp.max(ratio)]
        if rounded:
            eps = xp.finfo(stats.dtype).eps
            size = xp.vecdot(stats.shift, stats.shift)
            error = xp.where(present & (size > 0), n * (eps * eps) * size / floored, zero)
            parts.append(xp.max(error))
    values = to_host(xp.stack(parts))
    return float(values[0]), math.sqrt(float(values[1])) if rounded else 0.0


def _raise_unrepresentable(
    features: Array, labels: Array, num_classes: int, xp: ModuleType, what: str
) -> None:
    """Locate NaN/Inf rows and raise; if every row is finite, say what overflowed."""
    check_batch(features, labels, num_classes, xp, check_finite=True)
    msg = (
        f"`features` are finite but their {what} overflow {features.dtype}: the "
        "features cannot be represented at this size; pass them in float64"
    )
    raise ValueError(msg)


def _scaled_class_means(
    features: Array,
    labels: Array,
    counts: Array,
    dtype: Any,
    xp: ModuleType,
    chunk_size: int | None,
    host: bool,
    *,
    exact: bool,
    check_finite: bool = False,
) -> tuple[Array, Array, Array | None]:
    """Class means divided by a power-of-two scale (in `dtype`), the scale (0-d),
    and the class sums of the deviations from those means when the sums were
    taken in float64 (None otherwise: the second pass sums them).

    With `exact`, the sums are taken in float64; otherwise in `dtype`. With
    `check_finite`, on the host, NaN or Inf in the means (from NaN or Inf in
    `features`, or finite features whose sums overflow) raise.

    From float64 sums of float32 (or narrower) features the residual
    ``sum_i x_i / scale - n_k mean_k`` is exact to float64 rounding, so the
    second pass need not sum the deviations. From float64 sums of float64
    (or longdouble) features it carries their rounding, about
    ``sqrt(n) eps |mean|``: `class_moments` checks it (`_first_try_errors`).
    """
    num_classes = counts.shape[0]
    num, dim = features.shape
    acc = wide_float(xp) if exact else dtype
    if exact and x64_disabled(xp) and dtype != xp.float64:
        warn_caller(
            "the class means of these float32 features need float64 sums to keep NC1 and "
            "the variances within 1e-4 (collapsed features of large classes), and JAX's "
            "64-bit mode is off: they are summed in float32 and may be off by more; turn it "
            "on with jax.config.update('jax_enable_x64', True)"
        )
    rows = _mean_rows(num_classes, dim, acc, features.dtype, xp, chunk_size, host)

    itemsize = 8 if acc == xp.float64 else 4
    count = _host_lanes(features, xp, num_classes * dim * itemsize)
    step = max(1, rows // count)  # the lanes' chunks together hold `rows` rows

    def lane(start: int, stop: int) -> Array:
        total = xp.zeros((num_classes, dim), dtype=acc, device=array_device(features))
        for part_rows in row_chunks(stop, step, start=start):
            chunk = xp.astype(features[part_rows, ...], acc, copy=False)
            total = segment_sum(chunk, labels[part_rows], num_classes, xp, into=total)
        return total

    found = lanes.run_lanes(lane, num, count)
    total = found[0]
    for other in found[1:]:  # in lane order
        total = total + other
    sizes = xp.astype(xp.clip(counts, min=1), acc)[:, None]
    wide = acc == xp.float64
    # The sums are needed again only for a float64 residual: otherwise the
    # means are written over them (no second (K, d) array on the host).
    means = total / sizes if wide else divide_in_place(total, sizes, xp)
    # The largest |entry| from two reads, without a (K, d) array of |means|;
    # NaN propagates through both.
    largest = xp.maximum(xp.max(means), -xp.min(means))
    finite = xp.isfinite(largest)
    usable = finite & (largest > 0)
    exponent = xp.round(xp.log2(xp.where(usable, largest, xp.ones_like(largest))))
    # The scale and its inverse must be normal numbers of `dtype`: subnormal
    # features (below 2**-1022 in float64) are scaled by the smallest normal
    # power of two, which brings them into range, exactly.
    low, high = _normal_exponents(xp, dtype)
    exponent = xp.clip(exponent, min=low, max=high)
    far = xp.abs(exponent) > SCALE_FREE_EXPONENT
    two = xp.full_like(largest, 2.0)
    scale = xp.where(far, xp.pow(two, exponent), xp.ones_like(largest))
    ordinary = False
    if host:  # one read, free on the host
        is_finite, is_far = (bool(v) for v in to_host(xp.stack([finite, far])))
        if check_finite and not is_finite:
            _raise_unrepresentable(features, labels, num_classes, xp, "class means")
        ordinary = not is_far
    # Features of ordinary size (scale 1, known on the host): the means as they are.
    scaled = xp.astype(means if ordinary else means / scale, dtype, copy=not ordinary)
    residual = None
    if wide:
        n = xp.astype(counts, acc)[:, None]
        with quiet_invalid():  # Inf in the features: found through the means next
            residual = xp.astype(total / scale - n * xp.astype(scaled, acc), dtype)
    return scaled, xp.astype(scale, dtype), residual


def _mean_rows(
    num_classes: int,
    dim: int,
    acc: Any,
    feature_dtype: Any,
    xp: ModuleType,
    chunk_size: int | None,
    host: bool,
) -> int:
    """Rows per chunk of the class sums (in `acc`) of the first pass."""
    if chunk_size is not None:
        return check_positive_int(chunk_size, "chunk_size")
    itemsize = 8 if acc == xp.float64 else 4
    if acc == feature_dtype and has_native_segment_sum(xp):
        # No cast, so no temporary of the chunk's size: chunks only bound the
        # length of each accumulation, and few calls save per-call costs.
        return max(1, CHUNK_BYTES // (itemsize * dim))
    budget = HOST_CHUNK_BYTES if host else CHUNK_BYTES
    rows = budget // (itemsize * dim)
    if not adds_in_place(xp):
        # Each call makes a (K, d) table to add up: at least K rows a call.
        rows = max(rows, min(num_classes, CHUNK_BYTES // (itemsize * dim)))
    return max(1, rows)


def _normal_exponents(xp: ModuleType, dtype: Any) -> tuple[float, float]:
    """The smallest and largest e with 2**e and 2**-e both finite and normal in `dtype`."""
    info = xp.finfo(dtype)
    smallest = math.log2(float(info.smallest_normal))
    return smallest, float(min(-smallest, math.floor(math.log2(float(info.max)))))


def _deviation_moments(
    features: Array,
    labels: Array,
    shift: Array,
    inverse_scale: Array | None,
    xp: ModuleType,
    rows: int,
    *,
    gram: bool,
    visit: Visit | None = None,
    class_sums: bool = True,
) -> tuple[Array, Array, Array | None, tuple[Array, ...] | None]:
    """One chunked pass over ``dev_i = x_i * inverse_scale - shift[y_i]``.

    Returns the class sums of ``dev`` (K, d; zeros unless `class_sums`) and
    of ``||dev||^2`` (K,), the
    pooled Gram ``dev^T dev`` (d, d) if `gram`, and the chunk-wise sum of
    ``visit(features_chunk, dev_chunk, labels_chunk, dev_sq_chunk)`` if `visit`
    is given (``dev_sq_chunk``: each row's ``||dev||^2``, shared with the sums;
    ``dev_chunk`` is overwritten by the next chunk, so `visit` keeps no
    reference to it).
    """
    num_classes, dim = shift.shape
    dtype = shift.dtype
    device = array_device(shift)
    # Squared norms are positive and a class may have many rows: on the host
    # they are summed in the widest float, so their rounding stays that of each
    # row's norm (on a device, in `dtype`: one kernel less per chunk).
    wide = wide_float(xp) if on_host(xp, device) else dtype

    itemsize = 8 if dtype == xp.float64 else 4
    table = (num_classes * dim if class_sums else 0) + (dim * dim if gram else 0)
    count = _host_lanes(features, xp, table * itemsize + num_classes * 8)
    step = max(1, rows // count)  # the lanes' chunks together hold `rows` rows

    def lane(start: int, stop: int) -> tuple[Array, Array, Array | None, tuple[Array, ...] | None]:
        sums = xp.zeros((num_classes, dim), dtype=dtype, device=device)
        sqnorms = xp.zeros(num_classes, dtype=wide, device=device)
        gram_sum = xp.zeros((dim, dim), dtype=dtype, device=device) if gram else None
        extra = None
        # NumPy: every chunk's deviations are written into one buffer of the lane.
        buffer = np.empty((step, dim), dtype=dtype) if is_numpy(xp) else None
        for part_rows in row_chunks(stop, step, start=start):
            y = labels[part_rows]
            x = xp.astype(features[part_rows, ...], dtype, copy=False)
            dev = _deviations(
                x if inverse_scale is None else x * inverse_scale, shift, y, xp, buffer
            )
            if class_sums:
                sums = segment_sum(dev, y, num_classes, xp, into=sums)
            row_sq = xp.vecdot(dev, dev)
            wide_sq = xp.astype(row_sq, wide, copy=False)
            sqnorms = segment_sum(wide_sq, y, num_classes, xp, into=sqnorms)
            if gram_sum is not None:
                gram_sum = gram_sum + dev.T @ dev
            if visit is not None:
                part = visit(features[part_rows, ...], dev, y, row_sq)
                extra = _add_parts(extra, part)
        return sums, sqnorms, gram_sum, extra

    found = lanes.run_lanes(lane, features.shape[0], count)
    sums, sqnorms, gram_sum, extra = found[0]
    for other in found[1:]:  # in lane order: the result does not depend on timing
        sums = sums + other[0]
        sqnorms = sqnorms + other[1]
        gram_sum = None if gram_sum is None else gram_sum + other[2]
        extra = extra if other[3] is None else _add_parts(extra, other[3])
    return sums, xp.astype(sqnorms, dtype, copy=False), gram_sum, extra


def _deviations(
    x: Array, shift: Array, labels: Array, xp: ModuleType, buffer: Array | None
) -> Array:
    """``x - shift[labels]``: a new array, or on NumPy the leading rows of `buffer`
    (rows of the shift gathered there, then subtracted from `x` in place)."""
    if buffer is None:
        return subtract_rows(x, shift, labels, xp)
    out = buffer[: x.shape[0], ...]
    # Labels are checked to lie in range: "clip" gathers without a bounds pass
    # ("raise" would gather into a temporary first).
    np.take(shift, labels, axis=0, out=out, mode="clip")
    return np.subtract(x, out, out=out)


def _add_parts(total: tuple[Array, ...] | None, part: tuple[Array, ...]) -> tuple[Array, ...]:
    return part if total is None else tuple(a + b for a, b in zip(total, part, strict=True))


def _host_lanes(features: Array, xp: ModuleType, table_bytes: int) -> int:
    """Lanes (`ncgeom._lib.lanes`) for a pass over NumPy `features`; one elsewhere
    (torch spreads its own kernels over the cores, a device needs no lanes)."""
    if not is_numpy(xp):
        return 1
    return lanes.lane_count(int(features.nbytes), table_bytes)


def rows_per_chunk(
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


def row_chunks(num_rows: int, rows: int, *, start: int = 0) -> list[slice]:
    """Slices of at most `rows` rows covering ``range(start, num_rows)`` (in bounds)."""
    return [slice(lo, min(lo + rows, num_rows)) for lo in range(start, num_rows, rows)]
