"""`ShardedClassStats`: class statistics accumulated at the owner of each class.

`reduce_scatter_class_stats` leaves each rank its shard of the classes, but
before it every rank accumulates all K classes of its own samples. Here each
batch's rows travel to the rank that owns their class, so a rank only ever
holds the (K_r, d) tables of its shard (and the (d, d) Gram).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from .._lib.backend import detach, index_dtype, namespace, resolve_namespace, to_host
from .._lib.validate import (
    check_batch,
    check_index,
    check_instance,
    check_int_at_least,
    check_num_classes,
    check_positive_int,
)
from .distributed import ClassShard, Collectives, class_shards
from .stats import ClassStats
from .streaming import StreamingClassStats

__all__ = ["ShardedClassStats"]

Array = Any


class ShardedClassStats:
    """Statistics of all ranks' samples, each rank holding its own classes only.

    Rank r keeps the classes ``class_shards(K, P)[r]``. Every rank calls
    `update` with its own batch, the same number of times: the batches are
    all-gathered and each rank keeps the rows of its classes, so no rank ever
    holds a (K, d) table. `shard` then gives the `ClassShard` that
    `reduce_scatter_class_stats` gives for the same samples (the same counts,
    means, sums and squared norms, and the pooled Gram).

    Parameters
    ----------
    num_classes, dim : int
        K (>= 2) and d (>= 1), the same on every rank.
    collectives : Collectives
        This process's rank, world size, ``all_gather`` and ``all_reduce``
        (e.g. ``ncgeom_torch.plugin.collectives()``).
    gram : bool
        Keep the within-class Gram (pooled over all classes by `shard`).
    xp, device, dtype
        As for `ClassStats.empty`.

    Notes
    -----
    Per `update`, each rank receives every rank's batch: P B d numbers for
    batches of B rows (an all-to-all would move B d; the protocol has none),
    plus an all-gather of P row counts that checks every rank's batch first.
    Memory per rank: the shard's 2 K_r d + 2 K_r numbers, the Gram's d^2, and
    the P B d of the gathered batch during an update.

    Examples
    --------
    One process owns every class:

    >>> import numpy as np
    >>> from ncgeom.plugins import Collectives, ShardedClassStats
    >>> alone = Collectives(0, 1, lambda x: [x], lambda x: x)
    >>> sharded = ShardedClassStats(3, 2, alone)
    >>> _ = sharded.update(np.eye(2)[[0, 1, 1]], np.array([0, 2, 2]))
    >>> shard = sharded.shard()
    >>> shard.offset, shard.stats.counts.tolist(), shard.num_samples
    (0, [1, 0, 2], 3)
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        collectives: Collectives,
        *,
        gram: bool = True,
        xp: ModuleType | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        num_classes = check_num_classes(num_classes)
        dim = check_positive_int(dim, "dim")
        check_instance(collectives, Collectives, "collectives")
        world = check_int_at_least(collectives.world_size, "collectives.world_size", 1)
        rank = check_index(collectives.rank, "collectives.rank", world)
        for name in ("all_gather", "all_reduce"):
            if not callable(getattr(collectives, name)):
                msg = f"`collectives.{name}` must be callable; got {getattr(collectives, name)!r}"
                raise TypeError(msg)
        self.collectives = collectives
        self.num_classes, self.dim = num_classes, dim
        self.offset, stop = class_shards(num_classes, world)[rank]
        # The shard's table, which may hold fewer than 2 classes (K < 2P).
        template = ClassStats.empty(
            2, dim, gram=gram, xp=resolve_namespace(xp), device=device, dtype=dtype
        )
        self._xp = template.xp
        rows = stop - self.offset
        zeros = self._xp.zeros
        table = ClassStats(
            zeros(rows, dtype=template.counts.dtype, device=device),
            zeros((rows, dim), dtype=template.dtype, device=device),
            zeros((rows, dim), dtype=template.dtype, device=device),
            zeros(rows, dtype=template.dtype, device=device),
            template.gram,
            template.unit_scale,
        )
        self._running = StreamingClassStats.from_stats(table)
        self._like, self._device = table.shift, device

    @property
    def num_local_classes(self) -> int:
        """K_r, the classes of this rank's shard."""
        return self._running.num_classes

    def update(
        self, features: Array, labels: Array, *, check_finite: bool = True
    ) -> ShardedClassStats:
        """Add every rank's batch (this rank's: `features` (B, d), `labels` in
        [0, K)); every rank must call it. Returns `self`.

        Raises
        ------
        ValueError, TypeError
            On every rank, if any rank's batch is refused (the rank that
            passed it raises its own error, the others name that rank);
            nothing is added anywhere.
        """
        xp, comm = self._xp, self.collectives
        error: Exception | None = None
        try:
            # The finiteness is scanned here, on the host too: the owners add
            # the rows unchecked, and NaN must raise on every rank before the gather.
            labels = check_batch(features, labels, self.num_classes, xp, check_finite=check_finite)
            features = detach(features)
            namespace(stats=self._like, features=features)
            if features.shape[1] != self.dim:
                msg = f"`features` must have {self.dim} columns; got {features.shape[1]}"
                raise ValueError(msg)
        except (TypeError, ValueError) as err:
            error = err
        rows = 0 if error is not None else int(features.shape[0])
        device = self._device
        header = xp.asarray([rows, int(error is not None)], dtype=index_dtype(xp), device=device)
        table = [to_host(h).tolist() for h in comm.all_gather(header)]
        refused = [r for r, (_, bad) in enumerate(table) if bad]
        if error is not None:
            raise error
        if refused:
            msg = f"rank {refused[0]}'s batch was refused there; nothing was added on any rank"
            raise ValueError(msg)
        longest = max(n for n, _ in table)
        if longest == 0:
            return self
        pad = longest - rows
        # Every rank sends the statistics' dtype and int64 labels, whatever its own.
        features = xp.astype(features, self._like.dtype)
        labels = xp.astype(labels, index_dtype(xp))
        if pad:
            features = xp.concat(
                [features, xp.zeros((pad, self.dim), dtype=features.dtype, device=device)]
            )
            labels = xp.concat([labels, xp.full((pad,), -1, dtype=labels.dtype, device=device)])
        gathered_x = comm.all_gather(features)
        gathered_y = comm.all_gather(labels)
        start, stop = self.offset, self.offset + self.num_local_classes
        # Every rank's rows without their padding, then this rank's classes: one update.
        rows_x = xp.concat([x[:n, ...] for (n, _), x in zip(table, gathered_x, strict=True)])
        rows_y = xp.concat([y[:n] for (n, _), y in zip(table, gathered_y, strict=True)])
        mine = xp.nonzero((rows_y >= start) & (rows_y < stop))[0]
        self._running.update(
            xp.take(rows_x, mine, axis=0), xp.take(rows_y, mine) - start, check_finite=False
        )
        return self

    def shard(self) -> ClassShard:
        """This rank's classes over the samples of all ranks; every rank must call it.

        The shifts are the class means (zero for classes nobody saw), as
        `reduce_scatter_class_stats` returns them; the Gram is pooled over the
        classes of every shard (one all-reduce of d^2 + 1 numbers, after an
        all-gather of each rank's scale).
        """
        xp, comm = self._xp, self.collectives
        stats = self._running.stats()
        stats = stats.rebase(stats.shift + stats.offsets)
        scales = comm.all_gather(xp.reshape(stats.unit_scale, (1,)))
        scale = xp.max(xp.concat([xp.asarray(s, dtype=stats.dtype) for s in scales]))
        stats = stats.rescaled(scale)
        n_local = xp.reshape(xp.astype(xp.sum(stats.counts), stats.dtype), (1,))
        gram = None
        if stats.gram is not None:
            packed = comm.all_reduce(xp.concat([xp.reshape(stats.gram, (-1,)), n_local]))
            gram, total = xp.reshape(packed[:-1], (self.dim, self.dim)), packed[-1]
        else:
            total = comm.all_reduce(n_local)[0]
        rows = ClassStats(stats.counts, stats.shift, stats.sums, stats.sqnorms, None, scale)
        return ClassShard(rows, self.offset, self.num_classes, gram, int(to_host(total)))

    def __repr__(self) -> str:
        return (
            f"ShardedClassStats(num_classes={self.num_classes}, dim={self.dim}, "
            f"classes {self.offset}:{self.offset + self.num_local_classes} on rank "
            f"{self.collectives.rank} of {self.collectives.world_size})"
        )
