"""Metrics of class pairs, in one blocked pass over the Gram of the means.

No (K, K) array is formed for a summary statistic: each block of rows is
multiplied by the rows from its own on, in matrix products of about
`PAIR_BLOCK_ELEMENTS` entries, and every metric asked for reads each
product in tiles small enough to stay in a CPU core's cache (the squares of
the blocks' own pairs in batches, under a mask), so memory stays about
`PAIR_BLOCK_ELEMENTS` entries whatever K is. Sums are accumulated in the
widest float; variances merge the tiles' own means and squared deviations
(Chan et al.), or take a mean known exactly beforehand as their shift, so
nothing cancels; the Riesz energy is kept in the log domain (a running
log-sum-exp), so nothing overflows or underflows at any d. Nothing is read
back to the host during the pass.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from .._lib.backend import (
    array_device,
    detach,
    gather_rows,
    index_dtype,
    namespace,
    on_host,
    quiet_division,
    quiet_invalid,
    wide_float,
)
from .._lib.validate import (
    check_class_matrix,
    check_finite,
    check_flag,
    check_instance,
    check_int_at_least,
    check_positive,
    check_positive_int,
    check_real,
    check_seed,
    check_stats_classifier,
)
from .classes import DEGENERATE_METRICS, Classes, populated, undefined
from .stats import ClassStats

Array = Any

#: Entries of one matrix product of the pass (a block of rows against the
#: rows after it) on a CPU: memory stays about this whatever K is.
PAIR_BLOCK_ELEMENTS = 2**20
#: The same on an accelerator, where each operation costs a kernel launch:
#: at K = 131,072 products of 2^20 entries would make about half a million
#: launches, products of 2^24 about 30,000 (and a few 2^24-entry temporaries,
#: under 1 GiB).
DEVICE_PAIR_BLOCK_ELEMENTS = 2**24
#: The four metrics of class pairs that `pair_metrics` computes by default.
PAIR_METRICS = ("cdnv", "etf_error", "equiangularity", "orthogonality_error")
#: Every metric of pairs of class means, computed together by `pair_metrics`
#: (what `ncgeom.nc_report` asks for).
MEANS_PAIR_METRICS = (
    *PAIR_METRICS,
    "equiangularity_std",
    "interference_mean",
    "interference_min",
    "interference_max",
    "log_energy",
    "log_energy_variance",
    "riesz_log_energy",
    "riesz_log_variance",
)
#: The metrics of pairs of classifier rows, computed by `classifier_pair_metrics`.
CLASSIFIER_PAIR_METRICS = ("classifier_equiangularity", "classifier_etf_error")
#: The largest grid `interference_grid` forms by default (512 MiB in float64).
INTERFERENCE_GRID_ENTRIES = 2**26

#: Entries of a tile the metrics read at once on a CPU: it and a few
#: temporaries of its size stay in a core's cache (on an accelerator, where
#: each operation costs a launch, a tile is a whole product).
_HOST_TILE_ELEMENTS = 2**18
#: Rows of a block at least, where K allows: with fewer, each block would read
#: the rows of its columns for too little work, and the columns are tiled.
_MIN_BLOCK_ROWS = 128
_EXTREMES = frozenset(("interference_min", "interference_max"))
_LOGS = frozenset(("log_energy", "log_energy_variance", "riesz_log_energy", "riesz_log_variance"))
_RIESZ = frozenset(("riesz_log_energy", "riesz_log_variance"))
#: The metrics that need the directions of the centred means (a zero one has none).
_DIRECTIONS = _EXTREMES | _LOGS | {"equiangularity_std", "interference_mean"}


def pair_block_rows(
    num: int, block_rows: int | None = None, elements: int = PAIR_BLOCK_ELEMENTS
) -> int:
    """Rows of the class-pair blocks: `block_rows` if given (>= 1), else about
    `elements` entries per block of `num` columns, and at least 128 rows (or
    `num` where fewer; the columns are then split)."""
    if block_rows is not None:
        return check_positive_int(block_rows, "block_rows")
    num = max(num, 1)
    return max(min(_MIN_BLOCK_ROWS, num), elements // num)


# ----------------------------------------------------------------------------- the pass
@dataclass(frozen=True)
class _Rows:
    """The rows whose pairs a pass visits, and what the metrics read of them.

    ``raw``: the rows as given; ``unit``: as unit vectors (zero rows stay
    zero); ``norm``, ``sq``: their lengths and squared lengths;
    ``variances``: the class variances (CDNV); ``uncentred``: the uncentred
    means as unit vectors (orthogonality).
    """

    xp: ModuleType
    raw: Array
    unit: Array
    norm: Array
    sq: Array
    variances: Array | None = None
    uncentred: Array | None = None

    @property
    def size(self) -> int:
        return int(self.unit.shape[0])

    @classmethod
    def of(
        cls,
        rows: Array,
        xp: ModuleType,
        variances: Array | None = None,
        uncentred: Array | None = None,
    ) -> _Rows:
        sq = xp.vecdot(rows, rows)
        unit = rows * _inverse_norms(sq, xp)[:, None]
        if uncentred is not None:
            uncentred = uncentred * _inverse_norms(xp.vecdot(uncentred, uncentred), xp)[:, None]
        return cls(xp, rows, unit, xp.sqrt(sq), sq, variances, uncentred)


def _inverse_norms(sq: Array, xp: ModuleType) -> Array:
    """``1 / sqrt(sq)``, and 0 where `sq` is 0 (a zero vector has cosine 0 with all)."""
    safe = xp.where(sq > 0, sq, xp.ones_like(sq))
    return xp.where(sq > 0, 1 / xp.sqrt(safe), xp.zeros_like(sq))


def _pair_mean(rows: Array, xp: ModuleType) -> Array:
    """``mean_{k<l} r_k . r_l`` (0-d, widest float) without a pair loop:
    ``sum_{k<l} r_k . r_l = (||sum_k r_k||^2 - sum_k ||r_k||^2) / 2``.

    Summed in the widest float, in row chunks: each product of the rows is
    exact there, so the result carries only the rounding of the rows
    themselves, below that of any single product formed in their dtype.
    """
    num, dim = rows.shape
    wide = wide_float(xp)
    total = xp.zeros((dim,), dtype=wide, device=array_device(rows))
    squares = xp.zeros((), dtype=wide, device=array_device(rows))
    step = max(1, PAIR_BLOCK_ELEMENTS // max(dim, 1))
    for lo in range(0, num, step):
        part = xp.astype(rows[lo : min(lo + step, num), ...], wide)
        total = total + xp.sum(part, axis=0)
        squares = squares + xp.sum(xp.vecdot(part, part))
    return (xp.vecdot(total, total) - squares) / (num * (num - 1))


def _in_place(name: str, x: Array, xp: ModuleType) -> Array:
    """``xp.<name>(x)``, written over `x` (a temporary of the pass) where the
    library allows: a tile is then not copied for an elementwise function."""
    if isinstance(x, np.ndarray):
        return getattr(np, name)(x, out=x)
    method = getattr(x, name + "_", None)  # torch's in-place twins
    if callable(method):
        return method()
    return getattr(xp, name)(x)


def _masked(x: Array, mask: Array | None, fill: float, xp: ModuleType) -> Array:
    """`x` on the pairs of a tile, `fill` elsewhere (`x` itself without a mask)."""
    if mask is None:
        return x
    return xp.where(mask, x, xp.full_like(x, fill))


def _sum_of_squares(x: Array, xp: ModuleType) -> Array:
    """``sum(x * x)`` of a tile: row dot products (a few rounding steps each)
    summed pairwise."""
    return xp.sum(xp.vecdot(x, x))


def _merge_spread(
    counts: Array, sums: Array, squares: Array, xp: ModuleType
) -> tuple[Array, Array]:
    """Mean and sum of squared deviations of all values, from each tile's
    count, sum and squared deviations from its own mean (Chan et al.): every
    term is non-negative, so nothing cancels."""
    mean = xp.sum(sums) / xp.sum(counts)
    gap = sums / counts - mean
    return mean, xp.sum(squares) + xp.sum(counts * gap * gap)


Side = Callable[[str], Array]


class _PairPass:
    """The work done on each tile of one blocked pass, and the results.

    A tile holds the cosines of its pairs, rows x columns (every entry a
    pair k < l) or a batch of diagonal squares whose pairs a mask marks. Each
    tile leaves its partial results (0-d arrays) in `parts`; they are merged
    once at the end, in the widest float.
    """

    def __init__(
        self,
        rows: _Rows,
        names: frozenset[str],
        s: float,
        exponent: float,
        *,
        size: int | None = None,
        mean_cos: Array | None = None,
        gram_shift: Array | None = None,
    ) -> None:
        """The pass over the pairs of `rows`; or, with `size`, `mean_cos` and
        `gram_shift` (those of all the rows, `_pair_mean` of their unit and
        raw vectors), a pass over some of the pairs of `size` rows of which
        `rows` are a part (`ncgeom.measure.shard_pairs`)."""
        xp = self.xp = rows.xp
        self.names, self.s, self.exponent = names, s, exponent
        self.size = rows.size if size is None else size
        self.dtype = dtype = rows.unit.dtype
        self.wide = wide_float(xp)
        self.device = array_device(rows.unit)
        self.eps = float(xp.finfo(dtype).eps)
        self.parts: dict[str, list[Array]] = {}
        self.etf_cosine = 1 / (self.size - 1)  # -cos of two vertices of a simplex ETF
        # Exact means over pairs (Gram identities), the shifts of the squared deviations.
        self.mean_cos = None
        if names & _DIRECTIONS:
            self.mean_cos = _pair_mean(rows.unit, xp) if mean_cos is None else mean_cos
        if "equiangularity_std" in names:
            self.cos_shift = xp.astype(self.mean_cos, dtype)
        if "etf_error" in names:
            if gram_shift is None:
                gram_shift = _pair_mean(rows.raw, xp)
            self.gram_shift = xp.astype(gram_shift, dtype)
        self.table = self.table_of(rows)

    def table_of(self, rows: _Rows) -> dict[str, Array]:
        """The per-row numbers that the tiles read, (rows,) each."""
        names, eps = self.names, self.eps
        table: dict[str, Array] = {"norm": rows.norm, "sq": rows.sq}
        if "etf_error" in names or "cdnv" in names:
            table["minus_2norm"] = -2 * rows.norm
        shift = 2 * self.gram_shift if "etf_error" in names else 0.0
        if "cdnv" in names:
            # d2 - 8 eps sq_l first, then + 8 eps sq_l: the rule "two means
            # closer than rounding" (d2 <= 8 eps (sq_k + sq_l)) read on the way.
            table["sq_low"] = rows.sq - 8 * eps * rows.sq - shift
            table["sq_eps"] = 8 * eps * rows.sq
            table["variances"] = rows.variances
        return table

    def _keep(self, key: str, value: Array) -> None:
        self.parts.setdefault(key, []).append(value)

    def add(
        self,
        cos: Array,
        rows: Side,
        cols: Side,
        count: int,
        mask: Array | None = None,
        ortho: Array | None = None,
    ) -> None:
        """Read one tile: `cos` of its pairs, its per-row numbers as
        ``rows(name)`` (..., r, 1) and ``cols(name)`` (..., 1, c), its `count`
        pairs, and `ortho`, the cosines of the uncentred means. Both tiles
        are overwritten."""
        xp, names = self.xp, self.names
        extreme = None
        if names & (_EXTREMES | _LOGS):
            low = xp.min(_masked(cos, mask, math.inf, xp))
            high = xp.max(_masked(cos, mask, -math.inf, xp))
            self._keep("min", low)
            self._keep("max", high)
            extreme = high if self.s > 0 else low
        if mask is not None:
            cos = xp.where(mask, cos, xp.zeros_like(cos))  # finite everywhere below
        if names & _LOGS:
            self._keep("count", xp.full((), float(count), dtype=self.wide, device=self.device))
            self._logs(cos, mask, count, extreme)
        if "cdnv" in names or "etf_error" in names:
            self._distances(cos, rows, cols, mask)
        if "equiangularity_std" in names or "equiangularity" in names:
            self._angles(cos, mask)  # the last to read `cos`: overwrites it
        if ortho is not None:
            self._keep("orth", xp.sum(_masked(_in_place("abs", ortho, xp), mask, 0.0, xp)))

    def _angles(self, cos: Array, mask: Array | None) -> None:
        xp = self.xp
        if "equiangularity_std" in self.names:
            # Deviations from the exact mean of the cosines: nothing cancels.
            cos -= self.cos_shift
            self._keep("cos_dev", _sum_of_squares(_masked(cos, mask, 0.0, xp), xp))
            cos += self.cos_shift + self.etf_cosine
        else:
            cos += self.etf_cosine
        if "equiangularity" in self.names:
            cos = _in_place("abs", cos, xp)
            self._keep("abs", xp.sum(_masked(cos, mask, 0.0, xp)))

    def _logs(self, cos: Array, mask: Array | None, count: int, extreme: Array) -> None:
        """The log kernel ``log ||u_k - u_l||^2 = log 2 + log(1 - cos)``: the
        tile's sum and squared deviations from its mean; then the Riesz
        kernel as ``exp(t - max t)``, ``t = -s/2 log ||u_k - u_l||^2``
        (`extreme`: the tile's cosine of the largest t)."""
        xp = self.xp
        logs = _in_place("log1p", -cos, xp)  # log(1 - cos)
        total = xp.sum(_masked(logs, mask, 0.0, xp))
        mean = total / count
        # -inf for two directions that coincide: the log kernel is undefined
        # (flagged), the Riesz kernel with s < 0 is 0 there.
        mean = xp.where(xp.isfinite(mean), mean, xp.zeros_like(mean))
        logs -= mean
        logs = _masked(logs, mask, 0.0, xp)
        self._keep("log_sum", total)
        self._keep("log_dev", _sum_of_squares(logs, xp))
        if not (self.names & _RIESZ) or self.s == 0:
            return
        ref = xp.log1p(-extreme)
        logs += mean - ref
        logs *= -self.s / 2
        terms = _masked(_in_place("exp", logs, xp), mask, 0.0, xp)  # in [0, 1]
        total = xp.sum(terms)
        self._keep("riesz_ref", ref)
        self._keep("riesz_sum", total)
        if "riesz_log_variance" in self.names:
            terms -= total / count
            self._keep("riesz_dev", _sum_of_squares(_masked(terms, mask, 0.0, xp), xp))

    def _distances(self, cos: Array, rows: Side, cols: Side, mask: Array | None) -> None:
        """CDNV and the off-diagonal part of the ETF error, from
        ``G_kl = n_k n_l cos_kl`` and ``d2 = n_k^2 + n_l^2 - 2 G_kl``."""
        xp = self.xp
        dist = cos * cols("minus_2norm")
        dist *= rows("norm")  # -2 G
        if "etf_error" in self.names:
            dist += 2 * self.gram_shift  # -2 (G - mean G)
            self._keep("gram_dev", _sum_of_squares(_masked(dist, mask, 0.0, xp), xp))
        if "cdnv" not in self.names:
            return
        dist += cols("sq_low")
        dist += rows("sq")  # d2 - 8 eps sq_l
        nearest = xp.min(_masked(dist, mask, math.inf, xp), axis=-1, keepdims=True)
        self._keep("close", xp.min(nearest - rows("sq_eps")))
        dist += cols("sq_eps")  # d2
        # A pair at distance 0 gives inf or NaN here, and the flag of `close`
        # makes the metric NaN: no guard is needed on every entry.
        if self.exponent == 1:
            weight = _in_place("reciprocal", dist, xp)
        else:
            weight = dist ** (-self.exponent)
        weight = _masked(weight, mask, 0.0, xp)
        # sum (v_k + v_l) / d2^e as two matrix-vector products.
        spread = xp.sum(weight @ xp.matrix_transpose(cols("variances")))
        self._keep("cdnv", spread + xp.sum(xp.matrix_transpose(rows("variances")) @ weight))

    # -------------------------------------------------------------------- results
    def _merged(self, key: str) -> Array:
        """The tiles' partial results of `key` as one vector, in the widest float."""
        return self.xp.astype(self.xp.stack(self.parts[key]), self.wide)

    def _total(self, key: str) -> Array:
        return self.xp.sum(self._merged(key))

    def results(self) -> dict[str, Array]:
        """Every metric asked for (0-d, the rows' dtype; not masked for
        degenerate geometry)."""
        xp, names, pairs = self.xp, self.names, self.size * (self.size - 1) / 2
        wide: dict[str, Array] = {}
        if "cdnv" in names:
            wide["cdnv"] = self._total("cdnv") / (2 * pairs)
        if "equiangularity" in names:
            wide["equiangularity"] = self._total("abs") / pairs
        if "orthogonality_error" in names:
            wide["orthogonality_error"] = self._total("orth") / pairs
        if "equiangularity_std" in names:
            wide["equiangularity_std"] = xp.sqrt(self._total("cos_dev") / pairs)
        if "interference_mean" in names:
            wide["interference_mean"] = self.mean_cos
        if "etf_error" in names:
            wide["etf_error"] = self._etf_error(pairs)
        if names & _LOGS:
            counts = self._merged("count")
            mean, spread = _merge_spread(
                counts, self._merged("log_sum"), self._merged("log_dev"), xp
            )
            wide["log_energy"] = -(math.log(2.0) + mean) / 2
            wide["log_energy_variance"] = spread / (4 * pairs)
        if names & _RIESZ:
            wide.update(self._riesz(pairs))
        values = {name: xp.astype(value, self.dtype) for name, value in wide.items()}
        if names & (_EXTREMES | _LOGS):
            values["interference_min"] = xp.min(xp.stack(self.parts["min"]))
            values["interference_max"] = xp.max(xp.stack(self.parts["max"]))
        return {name: values[name] for name in names}

    def flags(self) -> dict[str, Array]:
        """``coincident`` (two rows closer than rounding; False unless CDNV was
        asked) and, for the kernels, ``same_direction`` and ``riesz_singular``."""
        xp = self.xp
        close = self.parts.get("close")
        never = xp.zeros((), dtype=xp.bool, device=self.device)
        flags = {"coincident": xp.min(xp.stack(close)) <= 0 if close else never}
        if self.names & _LOGS:
            same = xp.max(xp.stack(self.parts["max"])) >= 1 - 8 * self.eps
            flags["same_direction"] = same
            flags["riesz_singular"] = same if self.s > 0 else never
        return flags

    def _etf_error(self, pairs: float) -> Array:
        """``|| G/|G| - T/|T| ||_F``, ``T = I - J/K``: the squared deviations of
        the G_kl from their exact mean give their squared distance to any
        target as a sum of two non-negative parts, and ``|G|^2`` likewise."""
        xp, num = self.xp, self.size
        shift = xp.astype(self.gram_shift, self.wide)
        around = self._total("gram_dev") / 4  # sum_{k<l} (G_kl - shift)^2
        sq = xp.astype(self.table["sq"], self.wide)
        norm = xp.sqrt(xp.sum(sq * sq) + 2 * (around + pairs * shift * shift))
        safe = xp.where(norm > 0, norm, xp.ones_like(norm))
        off_target = -safe / (num * (num - 1) ** 0.5)
        diag_target = (1 - 1 / num) / (num - 1) ** 0.5
        diag = sq / safe - diag_target
        off = around + pairs * (shift - off_target) ** 2
        return xp.sqrt(xp.sum(diag * diag) + 2 * off / (safe * safe))

    def _riesz(self, pairs: float) -> dict[str, Array]:
        """Log of the Riesz energy and of its variance: each tile's terms were
        divided by its largest, ``exp(shift_i)``; here all are divided by the
        largest of all, then merged."""
        xp = self.xp
        if self.s == 0:  # the kernel is 1 for every pair
            zero = xp.zeros((), dtype=self.wide, device=self.device)
            return {"riesz_log_energy": zero, "riesz_log_variance": zero - math.inf}
        shifts = -self.s / 2 * (math.log(2.0) + self._merged("riesz_ref"))
        top = xp.max(shifts)
        top = xp.where(xp.isfinite(top), top, xp.zeros_like(top))  # every term 0
        scale = xp.exp(shifts - top)
        counts = self._merged("count")
        sums = self._merged("riesz_sum") * scale
        results = {"riesz_log_energy": top + xp.log(xp.sum(sums) / pairs)}
        if "riesz_log_variance" in self.names:
            devs = self._merged("riesz_dev") * scale * scale
            _, spread = _merge_spread(counts, sums, devs, xp)
            # A variance of exactly 0 has the log -inf.
            results["riesz_log_variance"] = 2 * top + xp.log(spread / pairs)
        return results


def _run_pass(
    rows: _Rows,
    names: frozenset[str],
    block_rows: int | None,
    s: float,
    exponent: float,
    *,
    state: _PairPass | None = None,
) -> _PairPass:
    """One blocked pass over the pairs of `rows`, for the metrics `names`.

    Each block of rows is multiplied by the rows from its own on, in
    products of about `PAIR_BLOCK_ELEMENTS` entries on a CPU and
    `DEVICE_PAIR_BLOCK_ELEMENTS` on an accelerator (few, large matrix
    products); the metrics read each product in tiles small enough to stay
    in a CPU core's cache. The square of the block's own pairs is kept aside
    and read with the other blocks' squares, in batches, under a mask. A
    given `state` (whose table is that of `rows`) receives the tiles instead
    of a new one.
    """
    xp, num = rows.xp, rows.size
    if state is None:
        state = _PairPass(rows, names, s, exponent)
    table, unit = state.table, rows.unit
    uncentred = rows.uncentred if "orthogonality_error" in names else None
    device = array_device(unit)
    host = on_host(xp, device)
    elements = PAIR_BLOCK_ELEMENTS if host else DEVICE_PAIR_BLOCK_ELEMENTS
    tile = _HOST_TILE_ELEMENTS if host else elements
    block = pair_block_rows(num, block_rows, elements)
    squares = _Squares(state, table, tile, device)
    with quiet_division(), quiet_invalid():
        for lo in range(0, num, block):
            hi = min(lo + block, num)
            width = hi - lo
            # Few, large products: each call of a threaded BLAS costs a wake-up.
            span = max(width, elements // width)  # columns per product

            def across(name: str, lo: int = lo, hi: int = hi) -> Array:
                return table[name][lo:hi, None]

            for a in range(lo, num, span):
                b = min(a + span, num)
                cos = unit[lo:hi, ...] @ unit[a:b, ...].T
                ortho = (
                    None if uncentred is None else uncentred[lo:hi, ...] @ uncentred[a:b, ...].T
                )
                first = a
                if a == lo:  # the product starts with the block's own square
                    squares.add(cos[:, :width], None if ortho is None else ortho[:, :width])
                    first = hi
                _read_columns(state, cos, ortho, across, table, range(first, b), a, tile)
        squares.flush()
    return state


def _cross_pass(
    state: _PairPass, rows: _Rows, table: dict[str, Array], cols: _Rows, block_rows: int | None
) -> None:
    """Feed `state` every pair (k of `rows`, l of `cols`) of two disjoint sets
    of rows, in the blocks and tiles of `_run_pass`; `table` holds the
    per-row numbers of `rows` (``state.table_of(rows)``)."""
    xp = state.xp
    if rows.size == 0 or cols.size == 0:
        return
    down_table = state.table_of(cols)
    ortho = "orthogonality_error" in state.names
    host = on_host(xp, state.device)
    elements = PAIR_BLOCK_ELEMENTS if host else DEVICE_PAIR_BLOCK_ELEMENTS
    tile = _HOST_TILE_ELEMENTS if host else elements
    block = pair_block_rows(cols.size, block_rows, elements)
    with quiet_division(), quiet_invalid():
        for lo in range(0, rows.size, block):
            hi = min(lo + block, rows.size)
            span = max(hi - lo, elements // (hi - lo))

            def across(name: str, lo: int = lo, hi: int = hi) -> Array:
                return table[name][lo:hi, None]

            for a in range(0, cols.size, span):
                b = min(a + span, cols.size)
                cos = rows.unit[lo:hi, ...] @ cols.unit[a:b, ...].T
                products = None
                if ortho:
                    products = rows.uncentred[lo:hi, ...] @ cols.uncentred[a:b, ...].T
                _read_columns(state, cos, products, across, down_table, range(a, b), a, tile)


def _read_columns(
    state: _PairPass,
    cos: Array,
    ortho: Array | None,
    across: Side,
    table: dict[str, Array],
    columns: range,
    start: int,
    tile: int,
) -> None:
    """Feed `state` the tiles of a product `cos` (rows x columns ``start:``)
    whose `columns` are all pairs, about `tile` entries at a time; `table`
    holds the per-row numbers of the columns."""
    width = cos.shape[0]
    step = max(1, tile // width)
    for c0 in range(columns.start, columns.stop, step):
        c1 = min(c0 + step, columns.stop)

        def down(name: str, c0: int = c0, c1: int = c1) -> Array:
            return table[name][None, c0:c1]

        state.add(
            cos[:, c0 - start : c1 - start],
            across,
            down,
            width * (c1 - c0),
            None,
            None if ortho is None else ortho[:, c0 - start : c1 - start],
        )


class _Squares:
    """The diagonal squares of the blocks (their pairs k < l under a mask),
    read in batches of about `tile` entries as they come."""

    def __init__(self, state: _PairPass, table: dict[str, Array], tile: int, device: Any) -> None:
        self.state, self.table, self.tile, self.device = state, table, tile, device
        self.cos: list[Array] = []
        self.ortho: list[Array] = []
        self.start = 0  # first row of the squares held

    def add(self, cos: Array, ortho: Array | None) -> None:
        """The next square along the diagonal (a copy is kept, not the product)."""
        xp = self.state.xp
        if self.cos and cos.shape[0] != self.cos[0].shape[0]:
            self.flush()  # the last, narrower square goes alone
        self.cos.append(xp.asarray(cos, copy=True))
        if ortho is not None:
            self.ortho.append(xp.asarray(ortho, copy=True))
        width = cos.shape[0]
        if len(self.cos) * width * width >= self.tile:
            self.flush()

    def flush(self) -> None:
        if not self.cos:
            return
        xp, table = self.state.xp, self.table
        count, width = len(self.cos), self.cos[0].shape[0]
        start, stop = self.start, self.start + count * width
        if width >= 2:
            steps = xp.arange(width, device=self.device)
            mask = steps[None, :] > steps[:, None]

            def across(name: str) -> Array:
                return xp.reshape(table[name][start:stop], (count, width, 1))

            def down(name: str) -> Array:
                return xp.reshape(table[name][start:stop], (count, 1, width))

            ortho = xp.stack(self.ortho) if self.ortho else None
            pairs = count * width * (width - 1) // 2
            self.state.add(xp.stack(self.cos), across, down, pairs, mask, ortho)
        self.start, self.cos, self.ortho = stop, [], []


def _check_names(names: Any, known: tuple[str, ...]) -> frozenset[str]:
    """`names`: a tuple of metric names of `known`, else a ValueError naming `names`."""
    if not isinstance(names, (tuple, list, frozenset, set)) or not all(
        isinstance(n, str) for n in names
    ):
        msg = f"`names` must be a tuple of metric names; got {names!r}"
        raise TypeError(msg)
    unknown = [n for n in names if n not in known]
    if unknown:
        msg = f"`names` must be among {known}; got {unknown[0]!r}"
        raise ValueError(msg)
    return frozenset(names)


def _riesz_s(s: Any, dim: int) -> float:
    """The Riesz exponent: `s`, a finite real, or ``d - 2`` for None."""
    return float(dim - 2) if s is None else check_real(s, "s")


def pair_metrics(
    view: Classes,
    names: tuple[str, ...] = PAIR_METRICS,
    block_rows: int | None = None,
    *,
    s: float | None = None,
    exponent: float = 1.0,
) -> tuple[dict[str, Array], dict[str, Array]]:
    """The metrics of pairs of class means in one blocked pass.

    Each tile of the cosines of the centred means is formed once (one matrix
    product) and feeds every metric asked for (`MEANS_PAIR_METRICS`); the
    orthogonality error takes the same tile of the uncentred means' cosines
    (a second product: deriving it from the centred one loses short means to
    rounding). Only the pairs k < l are formed; memory stays about
    `PAIR_BLOCK_ELEMENTS` entries whatever K is, and nothing is read back to
    the host.

    Parameters
    ----------
    view : Classes
        From `populated`.
    names : tuple of str
        Metrics of `MEANS_PAIR_METRICS`.
    block_rows : int, optional
        Classes per block of pairs.
    s : float, optional
        Exponent of the Riesz kernel, ``d - 2`` by default.
    exponent : float
        Exponent of the squared distance in CDNV (> 0).

    Returns
    -------
    values : dict
        0-d arrays, not yet masked for degenerate geometry; in the means'
        dtype, except CDNV with ``exponent != 1``, which is in the widest
        float and in feature units.
    flags : dict
        0-d booleans: ``coincident`` (two means closer than rounding), and
        where the metrics asked for read them ``zero_direction`` (a centred
        mean is zero, or below the rounding of the means), ``same_direction``
        (two centred means point the same way to rounding) and
        ``riesz_singular`` (the same, with s > 0); see
        `DEGENERATE_REASONS`.
    """
    asked = _check_names(names, MEANS_PAIR_METRICS)
    xp = view.xp
    s = _riesz_s(s, view.means.shape[1])
    exponent = check_positive(exponent, "exponent")
    rows = _Rows.of(
        view.centred,
        xp,
        view.variances if "cdnv" in asked else None,
        view.means if "orthogonality_error" in asked else None,
    )
    state = _run_pass(rows, asked, block_rows, s, exponent)
    with quiet_division(), quiet_invalid():  # NaN and Inf of degenerate (flagged) geometry
        values = state.results()
    if "cdnv" in asked and exponent != 1:
        values["cdnv"] = _in_feature_units(values["cdnv"], view, exponent)
    flags = state.flags()
    if asked & _DIRECTIONS:
        # A centred mean at the rounding of the means has no direction: the
        # rule of `Classes.flags` ("between") for one class.
        eps = float(xp.finfo(rows.sq.dtype).eps)
        largest = xp.max(xp.vecdot(view.means, view.means))
        flags["zero_direction"] = xp.any(rows.sq <= (16 * eps) ** 2 * largest)
    return values, flags


def _in_feature_units(value: Array, view: Classes, exponent: float) -> Array:
    """CDNV with a distance exponent, from the statistics' scale to feature
    units (``scale^(2 - 2 exponent)``), in the widest float."""
    xp = view.xp
    wide = wide_float(xp)
    if view.stats is None:
        return xp.astype(value, wide)
    scale = xp.astype(view.stats.unit_scale, wide)
    # Two factors: the result may be in range where one factor is not.
    factor = scale ** (1 - exponent)
    return xp.astype(value, wide) * factor * factor


def classifier_pair_metrics(
    rows: Array, names: tuple[str, ...], block_rows: int | None = None
) -> tuple[dict[str, Array], dict[str, Array]]:
    """The metrics of pairs of classifier rows in one blocked pass.

    Parameters
    ----------
    rows : array, shape (K, d)
        Checked classifier rows, uncentred (those of the classes with
        samples, e.g. ``view.take(W)``).
    names : tuple of str
        Metrics of `CLASSIFIER_PAIR_METRICS`.
    block_rows : int, optional
        Rows per block of pairs.

    Returns
    -------
    values : dict
        0-d arrays in the rows' dtype, not yet masked.
    flags : dict
        ``classifier`` (every row is zero) and ``classifier_row`` (some row
        is zero: it has no direction); see `DEGENERATE_REASONS`.
    """
    asked = _check_names(names, CLASSIFIER_PAIR_METRICS)
    xp = namespace(rows=rows)
    largest = xp.max(xp.abs(rows))
    rows = rows / xp.where(largest > 0, largest, xp.ones_like(largest))  # squares stay in range
    prepared = _Rows.of(rows, xp)
    inner = frozenset(name.removeprefix("classifier_") for name in asked)
    state = _run_pass(prepared, inner, block_rows, 0.0, 1.0)
    with quiet_division(), quiet_invalid():  # NaN of zero rows (flagged)
        values = state.results()
    flags = {"classifier": largest == 0, "classifier_row": xp.any(prepared.sq == 0)}
    return {f"classifier_{name}": value for name, value in values.items()}, flags


# ----------------------------------------------------------------------------- public metrics
def _block_rows(block_rows: int | None, chunk_rows: int | None) -> int | None:
    """`block_rows`, or `chunk_rows`, its deprecated name."""
    if chunk_rows is None:
        return block_rows
    warnings.warn(
        "`chunk_rows` is deprecated; pass `block_rows` (classes per block of class pairs)",
        DeprecationWarning,
        stacklevel=4,
    )
    if block_rows is not None:
        msg = "pass `block_rows` only; `chunk_rows` is its deprecated name"
        raise TypeError(msg)
    return chunk_rows


def _pair_metric(
    stats: ClassStats,
    name: str,
    global_mean: str,
    block_rows: int | None,
    chunk_rows: int | None = None,
    **options: Any,
) -> Array:
    """One metric of pairs of class means, NaN where the geometry leaves it undefined."""
    block_rows = _block_rows(block_rows, chunk_rows)
    view = populated(stats, global_mean)
    values, flags = pair_metrics(view, (name,), block_rows, **options)
    return undefined(values[name], view, name, flags)


def cdnv(
    stats: ClassStats,
    *,
    exponent: float = 1.0,
    block_rows: int | None = None,
    chunk_rows: int | None = None,
) -> Array:
    """Class-distance normalised variance, averaged over class pairs.

    ``mean_{k<l} (v_k + v_l) / (2 (||mu_k - mu_l||^2)^exponent)`` with
    ``v_k = (1/n_k) sum_{i in k} ||x_i - mu_k||^2`` (Galanti et al. 2022;
    `exponent` is the distance exponent of rhubarbwu/neural-collapse's
    ``class_dist_norm_vars``). With ``exponent = 1`` the value is
    scale-free and in the statistics' dtype; otherwise it has units
    (length^(2 - 2 exponent)) and is returned in the widest float (float64),
    right at any feature scale. Pairs are processed in row blocks of
    `block_rows` classes (``chunk_rows``, its former name, is deprecated), so
    memory stays bounded for any number of classes. NaN when two class means
    coincide.

    Parameters
    ----------
    stats : ClassStats
    exponent : float
        A finite real > 0.
    block_rows : int, optional

    Raises
    ------
    ValueError
        For an `exponent` that is not finite or not > 0.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> x = np.array([[0.0, 1.0], [0.0, 3.0], [4.0, 0.0], [6.0, 0.0]])
    >>> stats = ClassStats.from_features(x, np.array([0, 0, 1, 1]), 2)
    >>> round(float(metrics.cdnv(stats)), 6)
    0.034483
    >>> round(float(metrics.cdnv(stats, exponent=2.0)), 6)  # 2 / (2 * 29**2)
    0.001189
    """
    return _pair_metric(stats, "cdnv", "samples", block_rows, chunk_rows, exponent=exponent)


def equiangularity(
    stats: ClassStats,
    *,
    global_mean: str = "samples",
    block_rows: int | None = None,
    chunk_rows: int | None = None,
) -> Array:
    """``mean_{k<l} |cos(mu_k - mu_G, mu_l - mu_G) + 1/(K-1)|`` (0 for a simplex ETF).

    A zero centred mean counts as cosine 0 with every other.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> etf = np.eye(3) - 1 / 3
    >>> stats = ClassStats.from_features(etf, np.arange(3), 3)
    >>> abs(float(metrics.equiangularity(stats))) < 1e-12
    True
    """
    return _pair_metric(stats, "equiangularity", global_mean, block_rows, chunk_rows)


def orthogonality_error(
    stats: ClassStats, *, block_rows: int | None = None, chunk_rows: int | None = None
) -> Array:
    """``mean_{k<l} |cos(mu_k, mu_l)|`` on the uncentred means.

    0 for an orthogonal frame, the optimum of ReLU features; a zero mean (a
    collapsed minority class) has cosine 0 with every other mean. NaN when
    fewer than two means are non-zero (every class but one collapsed, or dead
    features): there is no pair of directions to compare.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> stats = ClassStats.from_features(np.diag([1.0, 2.0, 3.0]), np.arange(3), 3)
    >>> abs(float(metrics.orthogonality_error(stats))) < 1e-12
    True
    """
    return _pair_metric(stats, "orthogonality_error", "samples", block_rows, chunk_rows)


def etf_error(
    stats: ClassStats,
    *,
    global_mean: str = "samples",
    block_rows: int | None = None,
    chunk_rows: int | None = None,
) -> Array:
    """``|| nf(Mc Mc^T) - nf(I - J/K) ||_F`` with Mc the centred means.

    0 exactly when the centred means form a simplex equiangular tight frame
    (of any scale). The (K, K) Gram G is read in blocks: its squared
    deviations from the exact mean of its off-diagonal entries (a Gram
    identity) give both ``||G||_F`` and the distance to the target as sums
    of non-negative parts, so nothing cancels near the ETF.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> stats = ClassStats.from_features(5 * (np.eye(4) - 1 / 4), np.arange(4), 4)
    >>> abs(float(metrics.etf_error(stats))) < 1e-6
    True
    """
    return _pair_metric(stats, "etf_error", global_mean, block_rows, chunk_rows)


def equiangularity_std(
    stats: ClassStats, *, global_mean: str = "samples", block_rows: int | None = None
) -> Array:
    """Population standard deviation over pairs of ``cos(mu_k - mu_G, mu_l - mu_G)``.

    Papyan et al. (2020)'s equiangularity, ``Std_{c != c'} cos``: 0 when
    every pair of centred means makes the same angle. Its square is the
    variance of the pairwise cosines. The squared deviations are taken from
    the exact mean of the cosines (`interference_mean`), so nothing cancels
    near a simplex ETF. NaN when a centred mean is zero (it has no
    direction).

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> square = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    >>> stats = ClassStats.from_features(square, np.arange(4), 4)
    >>> round(float(metrics.equiangularity_std(stats)), 6)  # cosines 0, 0, 0, 0, -1, -1
    0.471405
    """
    return _pair_metric(stats, "equiangularity_std", global_mean, block_rows)


def interference_mean(
    stats: ClassStats, *, global_mean: str = "samples", block_rows: int | None = None
) -> Array:
    """``mean_{k<l} cos(mu_k - mu_G, mu_l - mu_G)``: the mean interference of the classes.

    -1/(K-1) for a simplex ETF, the least it can be. Computed without a pass
    over the pairs: with ``u_k`` the unit centred means,
    ``sum_{k<l} u_k . u_l = (||sum_k u_k||^2 - sum_k ||u_k||^2) / 2``, summed
    in the widest float, where every product of float32 or float64 entries
    is exact; its error is that of the rounding of the ``u_k`` themselves
    (a few eps, absolute), below the rounding of any cosine formed pair by
    pair. `block_rows` is accepted for symmetry with the other pair metrics.
    NaN when a centred mean is zero.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> stats = ClassStats.from_features(np.eye(3) - 1 / 3, np.arange(3), 3)
    >>> round(float(metrics.interference_mean(stats)), 6)
    -0.5
    """
    return _pair_metric(stats, "interference_mean", global_mean, block_rows)


def interference_min(
    stats: ClassStats, *, global_mean: str = "samples", block_rows: int | None = None
) -> Array:
    """``min_{k<l} cos(mu_k - mu_G, mu_l - mu_G)``: the most separated pair's cosine.

    NaN when a centred mean is zero.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> square = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    >>> stats = ClassStats.from_features(square, np.arange(4), 4)
    >>> float(metrics.interference_min(stats))
    -1.0
    """
    return _pair_metric(stats, "interference_min", global_mean, block_rows)


def interference_max(
    stats: ClassStats, *, global_mean: str = "samples", block_rows: int | None = None
) -> Array:
    """``max_{k<l} cos(mu_k - mu_G, mu_l - mu_G)``: the closest pair's cosine.

    The worst interference between two classes; -1/(K-1) for a simplex ETF.
    NaN when a centred mean is zero.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> square = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    >>> stats = ClassStats.from_features(square, np.arange(4), 4)
    >>> abs(float(metrics.interference_max(stats))) < 1e-12
    True
    """
    return _pair_metric(stats, "interference_max", global_mean, block_rows)


def log_energy(
    stats: ClassStats, *, global_mean: str = "samples", block_rows: int | None = None
) -> Array:
    """``mean_{k<l} log(1 / ||u_k - u_l||)``, ``u_k`` the unit centred means (GNC2).

    The logarithmic energy of the class-mean directions on the sphere (Liu
    et al. 2023, "Generalizing and decoupling neural collapse via
    hyperspherical uniformity gap"; rhubarbwu/neural-collapse's
    ``log_kernel`` with exponent -1, averaged over the pairs k < l). Lower is
    more uniform. Computed as ``-(log 2 + log(1 - cos)) / 2`` from the
    cosines, accurate to about ``eps / ||u_k - u_l||^2`` a pair. NaN when a
    centred mean is zero or two directions coincide to rounding (the kernel
    is infinite there).

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> square = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    >>> stats = ClassStats.from_features(square, np.arange(4), 4)
    >>> round(float(metrics.log_energy(stats)), 6)  # (4 log(1/sqrt 2) + 2 log(1/2)) / 6
    -0.462098
    """
    return _pair_metric(stats, "log_energy", global_mean, block_rows)


def log_energy_variance(
    stats: ClassStats, *, global_mean: str = "samples", block_rows: int | None = None
) -> Array:
    """Population variance over pairs k < l of ``log(1 / ||u_k - u_l||)`` (GNC2).

    The spread of the log kernel, the value rhubarbwu/neural-collapse's
    example logs (``kernel_stats(...)[1]`` with ``log_kernel``); 0 when every
    pair of directions is equally far apart. Merged block by block from each
    block's own mean and squared deviations (Chan et al.), so nothing
    cancels. NaN as for `log_energy`.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> square = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    >>> stats = ClassStats.from_features(square, np.arange(4), 4)
    >>> round(float(metrics.log_energy_variance(stats)), 6)  # (log 2)^2 / 18
    0.026692
    """
    return _pair_metric(stats, "log_energy_variance", global_mean, block_rows)


def riesz_log_energy(
    stats: ClassStats,
    *,
    s: float | None = None,
    global_mean: str = "samples",
    block_rows: int | None = None,
) -> Array:
    """``log( mean_{k<l} ||u_k - u_l||^(-s) )``: the Riesz s-energy of the unit
    centred means ``u_k``, as a log-mean (GNC2).

    The Riesz kernel of Liu et al. (2023) with ``s = d - 2`` by default (as
    rhubarbwu/neural-collapse's ``riesz_kernel``, whose energy is
    ``sign(s) * exp(this)``). The energy itself leaves the floating range:
    at d = 4096, ``dist^-(d-2)`` is Inf in float32 for distances below about
    0.98 and 0 above about 1.03, and the mean of such terms is dominated by
    the closest pairs. Its log is in range for any s: it is accumulated as a
    running log-sum-exp, every term divided by the largest so far, so
    nothing overflows or underflows. The log of the energy changes by about
    ``s/2`` times the relative change of the squared distances: in float32 it
    is accurate to about ``s eps / min ||u_k - u_l||^2``, the size of the
    rounding of the means themselves. Lower is more uniform.

    Parameters
    ----------
    stats : ClassStats
    s : float, optional
        The kernel's exponent, any finite real; ``d - 2`` by default. With
        ``s = 0`` every term is 1 and the result 0.
    global_mean : {"samples", "classes"}
    block_rows : int, optional

    Raises
    ------
    TypeError, ValueError
        For an `s` that is not a finite real number.

    Notes
    -----
    NaN when a centred mean is zero, or, for s > 0, when two directions
    coincide to rounding (the kernel is infinite there).

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> square = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    >>> stats = ClassStats.from_features(square, np.arange(4), 4)
    >>> round(float(metrics.riesz_log_energy(stats, s=2.0)), 6)  # log((4/2 + 2/4) / 6)
    -0.875469
    """
    return _pair_metric(stats, "riesz_log_energy", global_mean, block_rows, s=s)


def riesz_log_variance(
    stats: ClassStats,
    *,
    s: float | None = None,
    global_mean: str = "samples",
    block_rows: int | None = None,
) -> Array:
    """Log of the population variance over pairs of ``||u_k - u_l||^(-s)`` (GNC2).

    The spread of the Riesz kernel (`riesz_log_energy`, s = d - 2 by
    default), whose variance rhubarbwu/neural-collapse's example logs
    (``kernel_stats(...)[1]`` with ``riesz_kernel``; that value is
    ``exp(this)``). Each block's terms are divided by the block's largest
    and merged (Chan et al.) in those scaled units, so the log is right for
    any s; -inf when the variance is exactly 0 (every pair equally far
    apart). NaN as for `riesz_log_energy`.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> square = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    >>> stats = ClassStats.from_features(square, np.arange(4), 4)
    >>> round(float(metrics.riesz_log_variance(stats, s=2.0)), 6)  # log(1/72)
    -4.276666
    """
    return _pair_metric(stats, "riesz_log_variance", global_mean, block_rows, s=s)


def interference_grid(
    stats: ClassStats,
    *,
    global_mean: str = "samples",
    cosine: bool = True,
    max_entries: int = INTERFERENCE_GRID_ENTRIES,
) -> Array:
    """The (K, K) grid of the centred means' pairwise cosines (or inner products).

    Entry (k, l) is ``cos(mu_k - mu_G, mu_l - mu_G)`` (1 on the diagonal;
    rhubarbwu/neural-collapse's ``interference``), or with
    ``cosine=False`` the inner product ``(mu_k - mu_G) . (mu_l - mu_G)`` in
    feature units, in the widest float (float64). Rows and columns of
    classes without samples are NaN, and so are those of a zero centred mean
    for the cosines. The grid holds K^2 numbers: it is refused above
    `max_entries` (the summary statistics, e.g. `interference_mean` and
    `equiangularity_std`, need no grid), and no report forms it.

    Parameters
    ----------
    stats : ClassStats
    global_mean : {"samples", "classes"}
    cosine : bool
    max_entries : int
        The largest K^2 formed (a positive integer); 2**26 by default.

    Raises
    ------
    ValueError
        When K^2 exceeds `max_entries`, or `max_entries` is not positive.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, metrics
    >>> stats = ClassStats.from_features(np.eye(3) - 1 / 3, np.arange(3), 3)
    >>> np.round(np.asarray(metrics.interference_grid(stats)), 6)
    array([[ 1. , -0.5, -0.5],
           [-0.5,  1. , -0.5],
           [-0.5, -0.5,  1. ]])
    """
    check_instance(stats, ClassStats, "stats")
    max_entries = check_positive_int(max_entries, "max_entries")
    cosine = check_flag(cosine, "cosine")
    num = stats.num_classes
    if num * num > max_entries:
        msg = (
            f"`max_entries` must be at least K^2 = {num * num:,} to form the grid of "
            f"{num:,} classes; got {max_entries:,} (the summary metrics, e.g. "
            "interference_mean, need no grid)"
        )
        raise ValueError(msg)
    view = populated(stats, global_mean)
    xp, centred = view.xp, view.centred
    if cosine:
        rows = _Rows.of(centred, xp)
        grid = rows.unit @ rows.unit.T
        steps = xp.arange(view.size, device=view.device)
        grid = xp.where(steps[:, None] == steps[None, :], xp.ones_like(grid), grid)
        alive = rows.sq > 0
        grid = xp.where(alive[:, None] & alive[None, :], grid, xp.full_like(grid, xp.nan))
    else:
        wide = xp.astype(centred, wide_float(xp)) * xp.astype(stats.unit_scale, wide_float(xp))
        grid = wide @ wide.T
    return view.spread(view.spread(grid, axis=0), axis=1)


# ----------------------------------------------------------------------------- sampled pairs
#: The metrics `sampled_pair_metrics` estimates: means over the pairs.
SAMPLED_PAIR_METRICS = (
    "cdnv",
    "equiangularity",
    "orthogonality_error",
    "log_energy",
    "interference_mean",
    "riesz_log_energy",
)
#: Classes from which sampled pairs are worth offering on a CPU: the exact
#: pass visits K(K-1)/2 pairs, minutes there from about this K (at d = 256).
SAMPLED_PAIRS_FROM = 65_536


def sampled_pair_metrics(
    view: Classes,
    names: tuple[str, ...],
    num_pairs: int,
    *,
    seed: int | np.random.Generator | None = 0,
    confidence: float = 0.95,
    s: float | None = None,
) -> tuple[dict[str, Array], dict[str, Array]]:
    """Unbiased estimates of the pair means from `num_pairs` sampled pairs,
    with confidence intervals.

    For K where the exact pass (`pair_metrics`, K(K-1)/2 pairs) is too slow,
    e.g. above `SAMPLED_PAIRS_FROM` classes on a CPU. The pairs k != l are
    drawn uniformly with replacement (NumPy's generator from `seed`), so the
    mean of a metric's terms over them is an unbiased estimate of its mean
    over all pairs; the interval is the normal one (central limit theorem),
    ``estimate +- z s_n / sqrt(n)`` with ``s_n`` the sample standard
    deviation (ddof 1) and z the two-sided normal quantile of `confidence`.
    Each term is computed from differences (``||mu_k - mu_l||``,
    ``||u_k - u_l||``), not from a Gram. ``riesz_log_energy`` is the log of
    the unbiased estimate of the energy, its interval the delta-method one on
    the log, ``+- z s_n / (sqrt(n) mean)``, both in units of the largest
    term (no overflow). ``interference_mean`` is exact (a Gram identity, see
    `interference_mean`): its half width is 0. Minima, maxima, variances and
    ``etf_error`` are not estimated.

    The intervals hold when the central limit theorem does for the terms.
    Heavy tails break it: the Riesz energy with a large s (such as the
    default d - 2 in high dimension) is carried by the few closest pairs,
    which uniform sampling rarely draws, so its estimate is low and its
    interval too narrow; compute it exactly with `pair_metrics`. CDNV has
    such a tail when a few pairs of classes are much closer than the rest.

    Parameters
    ----------
    view : Classes
        From `populated`.
    names : tuple of str
        Metrics of `SAMPLED_PAIR_METRICS`.
    num_pairs : int
        Pairs drawn (>= 2).
    seed : int, numpy.random.Generator or None
    confidence : float
        Coverage of the intervals, in (0, 1).
    s : float, optional
        Exponent of the Riesz kernel, ``d - 2`` by default.

    Returns
    -------
    estimates, half_widths : dict
        0-d arrays in the widest float, on the view's device; the metrics
        are not masked for degenerate geometry (see `pair_metrics`'s flags).

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats
    >>> from ncgeom.measure import pairs
    >>> from ncgeom.measure.classes import populated
    >>> rng = np.random.default_rng(0)
    >>> stats = ClassStats.from_features(rng.normal(size=(2000, 8)), np.arange(2000) % 500, 500)
    >>> view = populated(stats)
    >>> estimate, half = pairs.sampled_pair_metrics(view, ("equiangularity",), 20_000)
    >>> exact = pairs.pair_metrics(view, ("equiangularity",))[0]["equiangularity"]
    >>> bool(abs(estimate["equiangularity"] - exact) < 2 * half["equiangularity"])
    True
    """
    asked = _check_names(names, SAMPLED_PAIR_METRICS)
    num_pairs = check_int_at_least(num_pairs, "num_pairs", 2)
    confidence = check_real(confidence, "confidence")
    if not 0 < confidence < 1:
        msg = f"`confidence` must be in (0, 1); got {confidence!r}"
        raise ValueError(msg)
    xp, num = view.xp, view.size
    s = _riesz_s(s, view.means.shape[1])
    rng = np.random.default_rng(check_seed(seed))
    first = rng.integers(0, num, num_pairs)
    second = rng.integers(0, num - 1, num_pairs)
    second = second + (second >= first)  # uniform over the ordered pairs k != l
    wide = wide_float(xp)
    index = {
        "first": xp.asarray(first, dtype=index_dtype(xp), device=view.device),
        "second": xp.asarray(second, dtype=index_dtype(xp), device=view.device),
    }
    rows = _Rows.of(
        view.centred,
        xp,
        view.variances,
        view.means if "orthogonality_error" in asked else None,
    )
    z = statistics.NormalDist().inv_cdf((1 + confidence) / 2)
    estimates: dict[str, Array] = {}
    half: dict[str, Array] = {}
    with quiet_division(), quiet_invalid():  # degenerate (flagged) geometry
        terms, shift = _sampled_terms(view, rows, asked, index, s)
        for name, values in terms.items():
            mean = xp.mean(values)
            spread = z * xp.std(values, correction=1) / math.sqrt(num_pairs)
            if name == "riesz_log_energy":
                estimates[name] = shift + xp.log(mean)
                half[name] = spread / mean
            else:
                estimates[name], half[name] = mean, spread
    if "interference_mean" in asked:
        estimates["interference_mean"] = _pair_mean(rows.unit, xp)
        half["interference_mean"] = xp.zeros((), dtype=wide, device=view.device)
    return estimates, half


def _sampled_terms(
    view: Classes, rows: _Rows, asked: frozenset[str], index: dict[str, Array], s: float
) -> tuple[dict[str, Array], Array | None]:
    """Each metric's term on the sampled pairs (widest float), in chunks of
    about `PAIR_BLOCK_ELEMENTS` gathered entries; the Riesz terms as
    ``exp(t - max t)``, with ``max t`` returned beside them."""
    xp = view.xp
    terms = pair_terms(
        (rows, view.means), (rows, view.means), index["first"], index["second"], asked, rows.size
    )
    shift = None
    if "riesz_log_energy" in terms:
        kernel = -s / 2 * terms["riesz_log_energy"]  # log ||u_k - u_l||^-s
        shift = xp.max(kernel)
        shift = xp.where(xp.isfinite(shift), shift, xp.zeros_like(shift))
        terms["riesz_log_energy"] = xp.exp(kernel - shift)
    return terms, shift


def pair_terms(
    firsts: tuple[_Rows, Array],
    seconds: tuple[_Rows, Array],
    first: Array,
    second: Array,
    asked: frozenset[str],
    size: int,
) -> dict[str, Array]:
    """The terms of the pairs (``first[i]`` of `firsts`, ``second[i]`` of
    `seconds`), each a (rows, uncentred means) pair, in the widest float, in
    chunks of about `PAIR_BLOCK_ELEMENTS` gathered entries; `size` classes in
    all. ``log_energy`` is ``-log ||u_k - u_l||``, ``riesz_log_energy``
    ``log ||u_k - u_l||^2``."""
    (rows_a, means_a), (rows_b, means_b) = firsts, seconds
    xp = rows_a.xp
    wide = wide_float(xp)
    total = int(first.shape[0])
    step = max(1, PAIR_BLOCK_ELEMENTS // max(int(rows_a.unit.shape[1]), 1))
    parts: dict[str, list[Array]] = {name: [] for name in asked - {"interference_mean"}}
    for lo in range(0, total, step):
        hi = min(lo + step, total)
        one, two = first[lo:hi], second[lo:hi]

        def pair(table_a: Array, table_b: Array, one: Array = one, two: Array = two):
            return gather_rows(table_a, one, xp), gather_rows(table_b, two, xp)

        if asked & {"equiangularity", "log_energy", "riesz_log_energy"}:
            a, b = pair(rows_a.unit, rows_b.unit)
            if "equiangularity" in asked:
                cos = xp.astype(xp.vecdot(a, b), wide)
                parts["equiangularity"].append(xp.abs(cos + 1 / (size - 1)))
            gap = a - b
            logs = xp.log(xp.astype(xp.vecdot(gap, gap), wide))  # log ||u_k - u_l||^2
            for name in ("log_energy", "riesz_log_energy"):
                if name in asked:
                    parts[name].append(logs)
        if "cdnv" in asked:
            a, b = pair(means_a, means_b)
            gap = a - b
            own, other = pair(rows_a.variances, rows_b.variances)
            spread = xp.astype(own + other, wide)
            parts["cdnv"].append(spread / (2 * xp.astype(xp.vecdot(gap, gap), wide)))
        if "orthogonality_error" in asked:
            a, b = pair(rows_a.uncentred, rows_b.uncentred)
            parts["orthogonality_error"].append(xp.abs(xp.astype(xp.vecdot(a, b), wide)))
    terms = {
        name: xp.concat(values)
        if values
        else xp.zeros((0,), dtype=wide, device=array_device(rows_a.unit))
        for name, values in parts.items()
    }
    if "log_energy" in terms:
        terms["log_energy"] = -terms["log_energy"] / 2
    return terms


# ----------------------------------------------------------------------------- classifier
def _classifier_rows(classifier: Array, stats: ClassStats | None) -> Array:
    """The checked rows of `classifier`: those of the classes with samples of
    `stats`, or every row."""
    if stats is not None:
        weights = check_stats_classifier(classifier, stats)
        return populated(stats).take(weights)
    xp = namespace(classifier=classifier)
    check_class_matrix(classifier, "classifier", xp)
    check_finite(classifier, "classifier", xp)
    return detach(classifier)


def _classifier_metric(
    classifier: Array, stats: ClassStats | None, name: str, block_rows: int | None
) -> Array:
    rows = _classifier_rows(classifier, stats)
    values, flags = classifier_pair_metrics(rows, (name,), block_rows)
    xp = namespace(rows=rows)
    value = values[name]
    for flag in DEGENERATE_METRICS.get(name, ()):
        value = xp.where(flags[flag], xp.full_like(value, xp.nan), value)
    return value


def classifier_equiangularity(
    classifier: Array, stats: ClassStats | None = None, *, block_rows: int | None = None
) -> Array:
    """``mean_{k<l} |cos(w_k, w_l) + 1/(K-1)|`` over the classifier's rows (uncentred).

    The classifier's equiangularity in the measure of `equiangularity` (0
    when the rows form a simplex ETF, Papyan et al. 2020). With `stats`,
    over the rows of the classes with samples; without, over every row.
    NaN when one of those rows is zero (it has no direction).

    Parameters
    ----------
    classifier : array, shape (K, d)
        Last-layer weights W, one row per class.
    stats : ClassStats, optional
        Statistics of the same K and d, on the same namespace and device.
    block_rows : int, optional
        Rows per block of pairs.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import metrics
    >>> w = 2 * (np.eye(4) - 1 / 4)
    >>> abs(float(metrics.classifier_equiangularity(w))) < 1e-12
    True
    """
    return _classifier_metric(classifier, stats, "classifier_equiangularity", block_rows)


def classifier_etf_error(
    classifier: Array, stats: ClassStats | None = None, *, block_rows: int | None = None
) -> Array:
    """``|| nf(W W^T) - nf(I - J/K) ||_F``: the classifier's distance to a simplex ETF.

    Kothapalli (2023)'s structure error of W with itself (`etf_error` of the
    rows of W, uncentred; 0 when they form a simplex ETF of any scale). With
    `stats`, over the rows of the classes with samples; without, over every
    row. NaN when those rows are all zero.

    Parameters
    ----------
    classifier : array, shape (K, d)
        Last-layer weights W, one row per class.
    stats : ClassStats, optional
        Statistics of the same K and d, on the same namespace and device.
    block_rows : int, optional
        Rows per block of pairs.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import metrics
    >>> w = 3 * (np.eye(4) - 1 / 4)
    >>> abs(float(metrics.classifier_etf_error(w))) < 1e-12
    True
    >>> round(float(metrics.classifier_etf_error(np.eye(3))), 6)
    0.605811
    """
    return _classifier_metric(classifier, stats, "classifier_etf_error", block_rows)
