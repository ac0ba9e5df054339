"""Out-of-core statistics: reduce a Dask array of features to one `ClassStats`.

Each row block becomes a `ClassStats` (on the block's own backend: NumPy, or
CuPy for GPU-backed Dask arrays) and the blocks are merged in a tree of
`split_every`-way merges, the same shape as Dask's own reductions. Merging is
exact, so the result equals `ClassStats.from_features` on the whole array, and
memory is bounded by a few blocks per worker, whatever the array's size.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._lib.backend import array_device, namespace
from .._lib.validate import (
    check_batch,
    check_container,
    check_instance,
    check_int_at_least,
    check_num_classes,
)
from .stats import ClassStats, merge_stats

__all__ = ["stats_from_dask"]

Array = Any


def stats_from_dask(
    features: Any,
    labels: Any,
    num_classes: int,
    *,
    gram: bool = True,
    check_finite: bool = True,
    split_every: int = 8,
    compute: bool = True,
    **compute_kwargs: Any,
) -> ClassStats | Any:
    """`ClassStats` of a Dask array of features, block by block.

    Parameters
    ----------
    features : dask.array.Array, shape (N, d), N >= 1
        Features; row blocks may be of any size, empty ones included. Column
        blocks are joined (each row block must hold whole rows). Chunk sizes
        must be known (call ``compute_chunk_sizes()`` after boolean
        indexing).
    labels : dask.array.Array or array, shape (N,)
        Integer labels, rechunked to the row blocks of `features`.
    num_classes : int
    gram : bool
        Keep the pooled within-class Gram (d, d) in each block's statistics.
    check_finite : bool
        Scan each block for NaN/Inf.
    split_every : int
        Number of statistics merged by one task of the reduction tree (>= 2).
    compute : bool
        Return the computed `ClassStats` (default) or the `dask.delayed`
        object that computes it.
    **compute_kwargs
        Passed to ``dask.compute`` (e.g. ``scheduler="threads"``); with a
        `distributed.Client` active, its cluster runs the tasks.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from ncgeom import ClassStats
    >>> from ncgeom.outofcore import stats_from_dask
    >>> x = np.random.default_rng(0).normal(size=(1000, 4))
    >>> y = np.arange(1000) % 3
    >>> lazy = stats_from_dask(da.from_array(x, chunks=(128, 4)), y, 3)
    >>> bool(np.allclose(lazy.within_covariance(),
    ...                  ClassStats.from_features(x, y, 3).within_covariance()))
    True
    """
    import dask
    import dask.array as da

    num_classes = check_num_classes(num_classes)
    check_instance(features, da.Array, "features", what="dask.array.Array")
    _check_known_chunks(features, "features")
    if features.ndim != 2:
        msg = f"`features` must be 2-D (samples, dim); got shape {features.shape}"
        raise ValueError(msg)
    if features.shape[0] == 0:
        msg = f"`features` must hold at least one sample; got shape {features.shape}"
        raise ValueError(msg)
    split_every = check_int_at_least(split_every, "split_every", 2)
    if isinstance(labels, da.Array):
        _check_known_chunks(labels, "labels")
    else:
        check_container(labels, "labels")
        labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        msg = (
            f"`labels` must have shape ({features.shape[0]},) like the rows of `features`; "
            f"got {labels.shape}"
        )
        raise ValueError(msg)
    if len(features.chunks[1]) > 1:
        features = features.rechunk({1: -1})
    if isinstance(labels, da.Array):
        labels = labels.rechunk((features.chunks[0],))
    else:
        labels = da.from_array(labels, chunks=(features.chunks[0],))

    def block_stats(block: Array, block_labels: Array, first_row: int) -> ClassStats:
        xp = namespace(features=block, labels=block_labels)
        # Checked here so that a bad row is named by its row in the whole array.
        check_batch(
            block,
            block_labels,
            num_classes,
            xp,
            check_finite=check_finite,
            first_row=first_row,
        )
        if block.shape[0] == 0:  # an empty block (e.g. after filtering) adds nothing
            return ClassStats.empty(
                num_classes,
                block.shape[1],
                gram=gram,
                xp=xp,
                device=array_device(block),
                dtype=block.dtype,
            )
        return ClassStats.from_features(
            block, block_labels, num_classes, gram=gram, check_finite=False
        )

    starts = np.cumsum((0, *features.chunks[0][:-1])).tolist()
    level = [
        dask.delayed(block_stats)(block, block_labels, start)
        for block, block_labels, start in zip(
            features.to_delayed().ravel(), labels.to_delayed().ravel(), starts, strict=True
        )
    ]
    while len(level) > 1:
        level = [
            dask.delayed(merge_stats)(*level[lo : lo + split_every])
            for lo in range(0, len(level), split_every)
        ]
    result = level[0]
    if not compute:
        return result
    (stats,) = dask.compute(result, **compute_kwargs)
    return stats


def _check_known_chunks(array: Any, name: str) -> None:
    """A Dask array whose chunk sizes are known (not NaN), else a TypeError with the remedy."""
    if any(math.isnan(size) for size in array.shape):
        msg = (
            f"`{name}` must have known chunk sizes; got a Dask array of shape {array.shape} "
            f"(unknown sizes, e.g. after boolean indexing): call `{name}.compute_chunk_sizes()` "
            "first"
        )
        raise TypeError(msg)
