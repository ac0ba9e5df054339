"""`StreamingClassStats`: class statistics updated in place, at the cost of the batch.

`ClassStats` is immutable, so each `ClassStats.update` returns new (K, d)
tables: a copy of K d numbers per batch, whatever the batch holds. With token
classes (K = 32k to 256k) and batches of a few hundred tokens that copy is
most of the cost. `StreamingClassStats` owns its tables and writes only the
rows of the classes in the batch, so on the host an update costs
O(B d + u d) (u: classes in the batch; O(B d^2 + u d^2) with the Gram), not O(K d).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from .._lib.backend import (
    resolve_namespace,
)
from .._lib.validate import check_instance
from .stats import ClassStats

__all__ = ["StreamingClassStats"]

Array = Any


class StreamingClassStats:
    """Running `ClassStats` whose `update` writes the batch's classes in place.

    Results equal those of `ClassStats.update` on the same batches (the same
    arithmetic on the same rows). On the host with NumPy or torch, a batch
    that holds at most half of the classes touches only their rows; other
    batches, other devices and libraries without in-place row writes (JAX,
    the array-API standard) take the `ClassStats.update` path.

    Parameters
    ----------
    num_classes, dim : int
        Number of classes K (>= 2) and feature dimension d (>= 1).
    gram : bool
        Keep the (d, d) within-class Gram.
    xp, device, dtype
        As for `ClassStats.empty`.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, StreamingClassStats
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.normal(size=(64, 4)), rng.integers(0, 1000, size=64)
    >>> running = StreamingClassStats(1000, 4)
    >>> for start in range(0, 64, 16):
    ...     _ = running.update(x[start:start + 16], y[start:start + 16])
    >>> whole = ClassStats.from_features(x, y, 1000)
    >>> bool(np.allclose(running.stats().within_covariance(), whole.within_covariance()))
    True
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        *,
        gram: bool = True,
        xp: ModuleType | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        self._stats = ClassStats.empty(
            num_classes, dim, gram=gram, xp=resolve_namespace(xp), device=device, dtype=dtype
        )

    @classmethod
    def from_stats(cls, stats: ClassStats) -> StreamingClassStats:
        """Continue from `stats` (copied: later updates leave it unchanged)."""
        check_instance(stats, ClassStats, "stats")
        running = cls.__new__(cls)
        running._stats = _copy(stats)
        return running

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return self._stats.num_classes

    @property
    def dim(self) -> int:
        """Feature dimension d."""
        return self._stats.dim

    def stats(self) -> ClassStats:
        """The statistics so far, as a `ClassStats` of their own (a copy)."""
        return _copy(self._stats)

    def update(
        self,
        features: Array,
        labels: Array,
        *,
        check_finite: bool = True,
        chunk_size: int | None = None,
    ) -> StreamingClassStats:
        """Add one batch (N, d) with labels in [0, K); returns `self`.

        Raises what `ClassStats.update` raises, before anything is changed.
        """
        self._stats = self._stats._update(
            features, labels, check_finite=check_finite, chunk_size=chunk_size, in_place=True
        )
        return self

    def __repr__(self) -> str:
        return f"StreamingClassStats({self._stats!r})"


def _copy(stats: ClassStats) -> ClassStats:
    xp = stats.xp

    def copy(array: Array | None) -> Array | None:
        return None if array is None else xp.asarray(array, copy=True)

    return ClassStats(
        copy(stats.counts),
        copy(stats.shift),
        copy(stats.sums),
        copy(stats.sqnorms),
        copy(stats.gram),
        copy(stats.unit_scale),
    )
