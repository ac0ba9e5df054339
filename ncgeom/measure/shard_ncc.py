"""The NCC agreement from class shards: each rank scores a batch against its own classes.

``argmin_k ||x - mu_k||^2`` and ``argmax_k (W x + b)_k`` over all K classes,
where rank r holds the means and the rows of W and b of its classes only.
The ranks' batches are all-gathered; each rank finds, for every gathered row,
its best class of both rules among its own classes (the nearest centre
through ``||c_k||^2 - 2 (x - g).c_k``, ``c_k = mu_k - g``); one all-gather of
these (score, class) pairs then gives the best over all ranks, the lowest
class on a tie, as `ncgeom.metrics.ncc_agreement` takes it.
"""

from __future__ import annotations

import math
from typing import Any

from .._lib.backend import array_device, index_dtype, namespace, to_host, wide_float
from .._lib.validate import check_instance
from .distributed import ClassShard, Collectives
from .metrics import NCCAgreement
from .shard_metrics import _classes, _largest, check_shard_classifier
from .stats import row_chunks, rows_per_chunk

__all__ = ["shard_ncc_agreement"]

Array = Any


def shard_ncc_agreement(
    features: Array,
    shard: ClassShard,
    collectives: Collectives,
    classifier: Array,
    bias: Array | None = None,
) -> NCCAgreement:
    """`ncgeom.metrics.ncc_agreement` of every rank's `features` against the
    means of all shards; every rank must call it (with a batch, maybe empty).

    Parameters
    ----------
    features : array, shape (B, d)
        This rank's rows, on the statistics' namespace and device; finite.
    shard : ClassShard
        This rank's shard (`ShardedClassStats.shard`): its classes' means.
    collectives : Collectives
    classifier : array, shape (K_r, d)
        The rows of W of this rank's classes.
    bias : array, shape (K_r,), optional
        The same rows of the bias.

    Returns
    -------
    NCCAgreement
        The matches and rows of all ranks' batches, the same on every rank:
        equal to ``ncc_agreement`` of the gathered rows against the whole
        table (a row whose two best classes score equal to rounding may go
        either way in either).

    Raises
    ------
    ValueError, TypeError
        On every rank, if any rank's batch is refused (the rank that passed
        it raises its own error, the others name that rank).

    Notes
    -----
    Per call a rank receives every rank's rows, P B d numbers, and then
    4 P^2 B numbers of (score, class) pairs; it scores P B rows against its
    K_r classes, in chunks of rows.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats
    >>> from ncgeom.metrics import ncc_agreement
    >>> from ncgeom.plugins import Collectives, reduce_scatter_class_stats, shard_ncc_agreement
    >>> x = np.array([[0.9, 0.1], [0.2, 0.7], [0.6, 0.5]])
    >>> w = np.array([[1.0, 0.0], [0.0, 2.0]])
    >>> alone = Collectives(0, 1, lambda a: [a], lambda a: a, lambda a: a)
    >>> stats = ClassStats.from_features(np.eye(2), np.arange(2), 2)
    >>> shard = reduce_scatter_class_stats(stats, alone)
    >>> found = shard_ncc_agreement(x, shard, alone, w)
    >>> int(found.matches), int(found.total), int(ncc_agreement(x, w, np.eye(2)).matches)
    (2, 3, 2)
    """
    check_instance(shard, ClassShard, "shard")
    check_instance(collectives, Collectives, "collectives")
    stats = shard.stats
    xp, dtype, dim = stats.xp, stats.dtype, stats.dim
    device = array_device(stats.shift)
    check_shard_classifier(shard, classifier, bias)
    error: Exception | None = None
    try:
        features = _checked_features(features, stats.shift, dim, classifier, bias)
    except (TypeError, ValueError) as err:
        error = err
    rows = 0 if error is not None else int(features.shape[0])
    header = xp.asarray([rows, int(error is not None)], dtype=index_dtype(xp), device=device)
    table = [[int(v) for v in to_host(h)] for h in collectives.all_gather(header)]
    if error is not None:
        raise error
    refused = [r for r, (_, bad) in enumerate(table) if bad]
    if refused:
        msg = f"rank {refused[0]}'s features were refused there; no rank measured the batch"
        raise ValueError(msg)
    longest = max(n for n, _ in table)
    zero = xp.zeros((), dtype=index_dtype(xp), device=device)
    if longest == 0:
        return NCCAgreement(zero, zero)
    # The means (in units of the scale) and one scale of W for every rank.
    own = _classes(shard, collectives, "classes")
    w = xp.astype(classifier, dtype)
    local = xp.reshape(_largest(xp.reshape(xp.abs(w), (-1,)), xp), (1,))
    top = xp.max(xp.concat([xp.astype(t, wide_float(xp)) for t in collectives.all_gather(local)]))
    w_scale = xp.astype(xp.where(top > 0, top, xp.ones_like(top)), dtype)
    w = w / w_scale
    scale = xp.astype(stats.unit_scale, dtype)
    shift = None if bias is None else xp.astype(bias, dtype) / (w_scale * scale)
    seen = xp.nonzero(own.seen)[0]
    centred = xp.take(own.means, seen, axis=0) - own.centre
    sq = xp.vecdot(centred, centred)
    classes = xp.astype(seen, dtype) + shard.offset
    # Every rank's rows, without their padding.
    x = xp.astype(features, dtype) / scale
    x = xp.concat([x, xp.zeros((longest - rows, dim), dtype=dtype, device=device)])
    gathered = collectives.all_gather(x)
    x = xp.concat([part[:n, ...] for (n, _), part in zip(table, gathered, strict=True)])
    best = _local_best(x, own.centre, centred, sq, classes, w, shift, shard.offset, xp)
    # The best of every rank: the lowest rank (so the lowest class) on a tie.
    parts = xp.stack(list(collectives.all_gather(best)))  # (P, M, 4)
    ranks = xp.reshape(xp.arange(parts.shape[0], device=device), (-1, 1))
    first = ranks == xp.reshape(xp.argmin(parts[:, :, 0], axis=0), (1, -1))
    nearest = xp.sum(xp.where(first, parts[:, :, 1], xp.zeros_like(parts[:, :, 1])), axis=0)
    first = ranks == xp.reshape(xp.argmax(parts[:, :, 2], axis=0), (1, -1))
    predicted = xp.sum(xp.where(first, parts[:, :, 3], xp.zeros_like(parts[:, :, 3])), axis=0)
    matches = xp.sum(xp.astype(nearest == predicted, index_dtype(xp)))
    total = xp.asarray(int(x.shape[0]), dtype=index_dtype(xp), device=device)
    return NCCAgreement(matches, total)


def _checked_features(
    features: Array, like: Array, dim: int, classifier: Array, bias: Array | None
) -> Array:
    """`features`: (B, d) of the statistics' library; it, the classifier's
    rows and the bias finite (one host read)."""
    xp = namespace(stats=like, features=features)
    if features.ndim != 2 or features.shape[1] != dim:
        msg = f"`features` must have shape (rows, {dim}); got {tuple(features.shape)}"
        raise ValueError(msg)
    for name, value in (("classifier", classifier), ("bias", bias)):
        if value is not None and not xp.isdtype(value.dtype, "real floating"):
            msg = f"`{name}` must have a real floating dtype; got {value.dtype}"
            raise TypeError(msg)
    named = {"features": features, "classifier": classifier, "bias": bias}
    named = {name: value for name, value in named.items() if value is not None}
    finite = to_host(xp.stack([xp.all(xp.isfinite(value)) for value in named.values()]))
    for name, good in zip(named, finite, strict=True):
        if not good:
            msg = f"`{name}` must be finite; got NaN or Inf entries"
            raise ValueError(msg)
    return features


def _local_best(
    x: Array,
    centre: Array,
    centred: Array,
    sq: Array,
    classes: Array,
    w: Array,
    shift: Array | None,
    offset: int,
    xp: Any,
) -> Array:
    """(M, 4): per row, the lowest centre score of this rank's seen classes and
    its class, the largest logit of its classes and its class (+-inf and -1
    where the rank has none)."""
    num, dim = x.shape
    dtype = x.dtype
    device = array_device(x)
    width = max(int(centred.shape[0]), int(w.shape[0]), dim)
    out = []
    for part in row_chunks(num, rows_per_chunk(num, width, dtype, xp, None, device)):
        rows = x[part, ...]
        size = int(rows.shape[0])
        if centred.shape[0] > 0:
            scores = sq[None, :] - 2 * ((rows - centre) @ centred.T)
            low = xp.min(scores, axis=1)
            low_class = xp.take(classes, xp.argmin(scores, axis=1))
        else:
            low = xp.full((size,), math.inf, dtype=dtype, device=device)
            low_class = xp.full((size,), -1.0, dtype=dtype, device=device)
        if w.shape[0] > 0:
            logits = rows @ w.T
            if shift is not None:
                logits = logits + shift
            high = xp.max(logits, axis=1)
            high_class = xp.astype(xp.argmax(logits, axis=1), dtype) + offset
        else:
            high = xp.full((size,), -math.inf, dtype=dtype, device=device)
            high_class = xp.full((size,), -1.0, dtype=dtype, device=device)
        out.append(xp.stack([low, low_class, high, high_class], axis=1))
    return xp.concat(out)
