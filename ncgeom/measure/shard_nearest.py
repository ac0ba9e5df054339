"""The distances to the nearest simplex ETF and orthogonal frame, from class shards.

Both fits are orthogonal Procrustes problems (`ncgeom.measure.nearest`): for
rows ``a_k`` (K', d) and weights ``w_k``, the target rows are ``c w_k q_k``
with ``Q`` the polar factor of ``B = diag(w) A`` and ``c = ||B||_* / W``,
``W = sum_k w_k^2``; the squared distance is ``||A||^2 - 2 c ||B||_* + c^2 W``
(``sum_i (sigma_i - c)^2`` over the singular values of B, unit weights and
centred rows). No rank holds
``B``; each rank holds its rows and the (d, d) Grams:

1. ``G = B^T B``, all-reduced, and its eigenpairs ``(lambda_i, v_i)``. The
   largest (at most as many as the target has directions) above a cut of
   the largest are *resolved*: their directions are right to ``eps /
   cut``. Every rank scales its rows of ``B V`` by ``1 / sqrt(max(lambda_i,
   floor))``.
2. The Gram of those scaled rows, all-reduced: on the resolved directions it
   is about the identity, and its inverse square root makes their rows
   orthonormal to rounding (one exact Newton step of the polar factor):
   these are the rows ``q_k`` of ``Q``. On the other directions it holds
   their squared singular values over the floor, measured from the rows
   themselves rather than from differences of the first Gram, so that
   they are right to about ``eps`` of the largest singular value; their
   sum ``s_rest`` enters in closed form.
3. Every rank sums ``||a_k - c w_k q_k||^2`` over its rows, with
   ``<A, diag(w) Q>``, ``||diag(w) Q||^2`` and ``||A||^2`` (one all-reduce).
   The distance comes from these residual rows, not from
   ``||A||^2 - ||B||_*^2 / W`` (which cancels to ``sqrt(eps)`` near the
   ideal geometry); the unresolved directions each add ``c^2 - 2 c
   sigma_i``; and the scale is moved to its optimum ``(<A, diag(w) Q> +
   s_rest) / W`` exactly, the distance being quadratic in it.

The simplex ETF is fitted to the centred means ``a_k = mu_k - mu_G``: ``B`` is
``C A`` with ``C`` the centring projector (the reflection of `nearest` maps
``A`` to ``[C A; -sqrt(K') mean(A)]`` up to a rotation), with K' - 1
directions and unit weights; the offset ``mean(A)`` stays in the residual.
The frames are fitted to the uncentred means, with unit weights or the
given lengths.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .._lib.backend import array_device, namespace, to_host, wide_float
from .._lib.lanes import serial_lapack
from .._lib.validate import check_choice, check_instance
from .classes import DEGENERATE_METRICS, DEGENERATE_REASONS, GLOBAL_MEANS
from .distributed import ClassShard, Collectives
from .nearest import host_lengths
from .shard_metrics import spread_flags

__all__ = ["SHARD_NEAREST_METRICS", "ShardValues", "shard_nearest_metrics"]

Array = Any

#: What `shard_nearest_metrics` returns, in the vocabulary of `ncgeom.NCReport`
#: (the last only with `lengths`).
SHARD_NEAREST_METRICS = (
    "nearest_etf_distance",
    "nearest_frame_distance",
    "optimum_frame_distance",
)


class ShardValues(NamedTuple):
    """Metrics from class shards: each value, and why those that are NaN are.

    Examples
    --------
    >>> from ncgeom.plugins import ShardValues
    >>> found = ShardValues({"nearest_frame_distance": 0.25}, {})
    >>> found.values["nearest_frame_distance"], found.unavailable
    (0.25, {})
    """

    #: Each metric's value (NaN where it is undefined or not available).
    values: dict[str, float]
    #: Why each NaN value is, worded as `ncgeom.nc_report` words it.
    unavailable: dict[str, str]


def shard_nearest_metrics(
    shard: ClassShard,
    collectives: Collectives,
    *,
    global_mean: str = "samples",
    lengths: Array | None = None,
) -> ShardValues:
    """The distances to the nearest simplex ETF and orthogonal frame from class
    shards; every rank must call it, with the same arguments but its own
    `lengths`.

    Equal to ``nearest_etf_distance``, ``nearest_frame_distance`` and (with
    `lengths`) ``optimum_frame_distance`` of ``nc_report`` of the whole table
    (1e-10 relative in float64 in the tests, near the ideal geometry too):
    the relative Frobenius distance of the centred class means to the nearest
    simplex ETF and of the uncentred means to the nearest orthogonal frame of
    equal (or the given) lengths (`ncgeom.measure.nearest`), over the classes
    with samples.

    Parameters
    ----------
    shard : ClassShard
        This rank's shard (`reduce_scatter_class_stats`,
        `ShardedClassStats.shard`); no Gram needed.
    collectives : Collectives
        This process's rank, world size, ``all_gather`` and ``all_reduce``.
    global_mean : {"samples", "classes"}
        The centre of the ETF's means, as for `ncgeom.nc_report`.
    lengths : array, shape (K_r,), optional
        The relative lengths of the frame's rows for THIS rank's classes, e.g.
        ``optimum.feature_norms[offset:offset + K_r]`` of
        `ncgeom.theory.ufm_relu_optimum`: adds ``optimum_frame_distance``
        (zero lengths: classes the optimum collapses, whose target row is
        zero). Finite and >= 0; read on the host, from any array library.

    Returns
    -------
    ShardValues
        ``values``: each name to a float, NaN where ``nc_report`` gives NaN
        or leaves it out; ``unavailable``: the reason for each NaN, worded as
        ``nc_report`` words it (fewer than two classes with samples, where
        ``nc_report`` raises: "fewer than two classes have samples").

    Raises
    ------
    TypeError
        If `shard` or `collectives` has the wrong type, or `lengths` holds no
        real numbers.
    ValueError
        If `global_mean` is unknown, or `lengths` has another shape than
        (K_r,) or a negative or non-finite entry.

    Notes
    -----
    Collectives (every rank calls them in the same order): an all-reduce
    of 2 d + 3 numbers (the centre and the counts), an all-gather of 2
    (the flags of degenerate geometry) and, with `lengths`, one of 1 (their
    largest); then, for the F fits that are available and defined, three
    all-reduces: F (d^2 + 1) numbers (plus 2 d + 1 for the ETF), F d^2, and
    4 F. A fit that is not available (d < K' - 1 for the ETF, d < K' for
    the frames) sends nothing: with K' > d + 1 only the first three
    collectives run. Each rank holds its K_r rows in float64 and about 4 d^2
    numbers per fit, and solves two (d, d) symmetric eigenproblems per fit.
    Five host reads in all, whatever K and the number of ranks.

    Directions of B whose singular value lies within a factor ``eps^(1/4)``
    (given lengths: ``sqrt(max(d, K') eps)``) of the largest are fitted
    from the Gram; the smaller ones enter through their singular values,
    measured to about ``eps`` of the largest: the distance is as exact as
    the unsharded thin SVD's (1e-10 relative in the tests; near the ideal
    geometry, where the relative distance itself is small, both carry an
    error of a few ``eps`` from the rounding of the means).

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom import ClassStats, nc_report
    >>> from ncgeom.plugins import Collectives, reduce_scatter_class_stats
    >>> from ncgeom.plugins import shard_nearest_metrics
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 4, size=200)
    >>> x = 3 * np.eye(5)[y] + rng.normal(size=(200, 5))
    >>> alone = Collectives(0, 1, lambda a: [a], lambda a: a, lambda a: a)
    >>> shard = reduce_scatter_class_stats(ClassStats.from_features(x, y, 4), alone)
    >>> found = shard_nearest_metrics(shard, alone)
    >>> value = found.values["nearest_etf_distance"]
    >>> bool(abs(value - nc_report((x, y)).nearest_etf_distance) < 1e-12)
    True
    """
    check_instance(shard, ClassShard, "shard")
    check_instance(collectives, Collectives, "collectives")
    check_choice(global_mean, "global_mean", GLOBAL_MEANS)
    stats = shard.stats
    xp, dtype, dim, device = stats.xp, stats.dtype, stats.dim, stats.device
    wide = wide_float(xp)
    host_lengths = None if lengths is None else _checked_lengths(lengths, stats.num_classes)
    names = SHARD_NEAREST_METRICS[: 2 if host_lengths is None else 3]
    seen = stats.counts > 0
    means = xp.where(seen[:, None], stats.shift + stats.offsets, xp.zeros_like(stats.shift))
    rows = xp.astype(means, wide)
    counts = xp.astype(stats.counts, wide)
    weight = xp.astype(seen, wide)
    # 1) The centre, N, the classes with samples and the positive lengths of every rank.
    alive_here = 0 if host_lengths is None else int(np.count_nonzero(host_lengths))
    sizes = xp.stack(
        [xp.sum(counts), xp.sum(weight), xp.asarray(alive_here, dtype=wide, device=device)]
    )
    first = collectives.all_reduce(xp.concat([counts @ rows, weight @ rows, sizes]))
    total, classes = first[2 * dim], first[2 * dim + 1]
    centre = first[:dim] / total if global_mean == "samples" else first[dim : 2 * dim] / classes
    populated, alive = (round(float(v)) for v in to_host(first[2 * dim + 1 :]))
    if populated < 2:  # where nc_report raises; every rank returns here
        return ShardValues(
            dict.fromkeys(names, math.nan),
            dict.fromkeys(names, "fewer than two classes have samples"),
        )
    # 2) Which fits the report makes, and which geometry leaves undefined.
    centred = (means - xp.astype(centre, dtype)) * xp.astype(seen, dtype)[:, None]
    flags = spread_flags(collectives, means, centred)
    largest = 1.0
    if host_lengths is not None:
        largest = _largest_length(collectives, host_lengths, xp, device)
    unavailable = _unavailable(names, dim, populated, shard.num_classes, alive, flags)
    # 3) The fits that are left, all at once.
    fits: list[_Fit] = []
    if names[0] not in unavailable:
        fits.append(_Fit(names[0], (rows - centre) * weight[:, None], None, populated - 1))
    if names[1] not in unavailable:
        fits.append(_Fit(names[1], rows, None, populated))
    if host_lengths is not None and names[2] not in unavailable:
        w = xp.asarray(host_lengths / largest, dtype=wide, device=device)
        fits.append(_Fit(names[2], rows, w, alive))
    values = dict.fromkeys(names, math.nan)
    if fits:
        centre_weights = counts if global_mean == "samples" else weight
        ratios = _relative_distances(collectives, fits, weight, centre_weights, populated)
        values.update(zip((fit.name for fit in fits), ratios, strict=True))
    return ShardValues(values, unavailable)


def _unavailable(
    names: tuple[str, ...], dim: int, populated: int, num: int, alive: int, flags: dict
) -> dict[str, str]:
    """Why each fit is left out or undefined, in `nc_report`'s order and words."""
    reasons: dict[str, str] = {}
    if dim < populated - 1:
        reasons[names[0]] = (
            f"a simplex ETF of {populated} classes needs dim >= {populated - 1}; "
            f"the features have {dim}"
        )
    if dim < populated:
        reasons[names[1]] = (
            f"an orthogonal frame of {populated} classes needs dim >= {populated}; "
            f"the features have {dim}"
        )
    if len(names) > 2:
        if populated < num:
            reasons[names[2]] = "the theory needs every class to have samples"
        elif alive == 0:
            reasons[names[2]] = (
                "the optimum collapses every class: its frame has no non-zero row to fit"
            )
        elif dim < alive:
            reasons[names[2]] = (
                f"the optimum's frame has {alive} non-zero rows, more than dim = {dim}"
            )
    for name in names:
        raised = [flag for flag in DEGENERATE_METRICS[name] if flags.get(flag, False)]
        if name not in reasons and raised:
            reasons[name] = DEGENERATE_REASONS[raised[0]]
    return reasons


class _Fit(NamedTuple):
    """One Procrustes fit over this rank's rows, in the widest float."""

    name: str
    #: (K_r, d) the rows a_k whose distance is measured, zero where unseen; for
    #: the ETF the means less the centre, centred again in `_relative_distances`.
    rows: Array
    #: (K_r,) the weights w_k of the target rows; None: 1.
    weights: Array | None
    #: The most directions the target has: K' - 1, K' or the positive weights.
    rank: int


def _relative_distances(
    collectives: Collectives,
    fits: list[_Fit],
    weight: Array,
    centre_weights: Array,
    populated: int,
) -> list[float]:
    """``||A - c diag(w) Q|| / ||A||`` of each fit (the module's three steps;
    three all-reduces and one host read for all of them)."""
    xp = namespace(weight=weight)
    dim = fits[0].rows.shape[1]
    wide = weight.dtype
    eps = float(xp.finfo(wide).eps)
    etf = fits[0].name == "nearest_etf_distance"
    # 1) The Grams of B, the total weights, and the sums that centre the ETF's rows again.
    parts = []
    for fit in fits:
        basis = fit.rows if fit.weights is None else fit.weights[:, None] * fit.rows
        parts.append(xp.reshape(basis.T @ basis, (-1,)))
        squares = weight if fit.weights is None else fit.weights * fit.weights * weight
        parts.append(xp.reshape(xp.sum(squares), (1,)))
    if etf:
        parts += [weight @ fits[0].rows, centre_weights @ fits[0].rows]
        parts.append(xp.reshape(xp.sum(centre_weights), (1,)))
    reduced = collectives.all_reduce(xp.concat(parts))
    steps = []
    for i, fit in enumerate(fits):
        at = i * (dim * dim + 1)
        gram = xp.reshape(reduced[at : at + dim * dim], (dim, dim))
        total = reduced[at + dim * dim]
        rows = fit.rows
        basis = rows if fit.weights is None else fit.weights[:, None] * rows
        if etf and i == 0:
            # B = C A: the rows about their own mean (the Gram less K' m m^T, a
            # small correction); A centred again on the weighted mean of its rows.
            at = len(fits) * (dim * dim + 1)
            own = reduced[at : at + dim] / populated
            shift = reduced[at + dim : at + 2 * dim] / reduced[at + 2 * dim]
            gram = gram - populated * (own[:, None] * own[None, :])
            basis = (rows - own) * weight[:, None]
            rows = (rows - shift) * weight[:, None]
            total = total - 1  # K' - 1 directions
        # Unequal weights spread the Gram's eigenvalues (as w^4): keep more of them.
        cut = math.sqrt(eps) if fit.weights is None else max(populated, dim) * eps
        steps.append(_first_step(gram, basis, rows, total, fit.rank, cut, xp))
    # 2) The Grams of B G^{+1/2} (the resolved directions) and of the rest of B.
    seconds = collectives.all_reduce(
        xp.concat([xp.reshape(step.scaled.T @ step.scaled, (-1,)) for step in steps])
    )
    outs = []
    for i, (fit, step) in enumerate(zip(fits, steps, strict=True)):
        gram = xp.reshape(seconds[i * dim * dim : (i + 1) * dim * dim], (dim, dim))
        q, rest = _second_step(gram, step, fit.rank, xp)
        wq = q if fit.weights is None else fit.weights[:, None] * q
        residual = step.rows - step.scale * wq
        outs.append(
            xp.stack(
                [
                    xp.sum(residual * residual),
                    xp.sum(step.rows * wq),
                    xp.sum(wq * wq),
                    xp.sum(step.rows * step.rows),
                ]
            )
        )
        steps[i] = step._replace(rest=rest)
    # 3) The residuals; the scale moved to its optimum, the missing directions added.
    sums = collectives.all_reduce(xp.concat(outs))
    ratios = []
    for i, (fit, step) in enumerate(zip(fits, steps, strict=True)):
        residual, inner, covered, norm = (sums[4 * i + j] for j in range(4))
        total, scale, rest = step.total, step.scale, step.rest
        if fit.weights is None:
            missing = total - step.kept
        else:
            missing = xp.where(step.kept == fit.rank, xp.zeros_like(total), total - covered)
        best = (inner + rest) / total
        square = residual + scale * (scale * missing - 2 * rest) - total * (scale - best) ** 2
        square = xp.where(square > 0, square, xp.zeros_like(square))
        ratios.append(xp.sqrt(square / norm))
    return [float(v) for v in to_host(xp.stack(ratios))]


class _Step(NamedTuple):
    """A fit after its first Gram."""

    rows: Array  # (K_r, d) the rows a_k
    total: Array  # sum_k w_k^2: ||diag(w) Q||^2 of a full Q
    vectors: Array  # (d, d) the eigenvectors of B^T B
    kept: Array  # the number of directions resolved, as a float
    resolved: Array  # (d,) bool: the eigenvectors of the resolved directions
    floor: Array  # the eigenvalue the rest are scaled by
    scale: Array  # the scale c from the resolved directions
    scaled: Array  # (K_r, d) B V diag(1 / sqrt(max(lambda, floor)))
    rest: Array | None = None  # the sum of the singular values of the rest of B


def _first_step(
    gram: Array, basis: Array, rows: Array, total: Array, rank: int, cut: float, xp: Any
) -> _Step:
    """The directions of B^T B's eigenvalues above `cut` of the largest (at most
    `rank`), and B in its eigenbasis scaled by their inverse square roots (the
    rest by that of the cut)."""
    dim = gram.shape[0]
    with serial_lapack(xp, gram.shape):
        lam, vectors = xp.linalg.eigh(gram)
    largest = lam[-1]
    floor = xp.where(largest > 0, cut * largest, xp.ones_like(largest))
    top = xp.arange(dim, device=array_device(lam)) >= dim - rank
    resolved = (lam > floor) & top
    roots = xp.sqrt(xp.where(resolved, lam, floor))
    kept = xp.sum(xp.astype(resolved, lam.dtype))
    scale = xp.sum(xp.where(resolved, roots, xp.zeros_like(roots))) / total
    return _Step(rows, total, vectors, kept, resolved, floor, scale, (basis @ vectors) / roots)


def _second_step(gram: Array, step: _Step, rank: int, xp: Any) -> tuple[Array, Array]:
    """The rows of the polar factor over the resolved directions, and the sum
    of the singular values of B over the others (the largest ``rank - kept``).

    `gram` is in the eigenbasis of B^T B: its block of the resolved directions
    is about the identity, that of the others holds their squared singular
    values over the floor (at most about 1). One eigenproblem solves both
    blocks, the second shifted by -4 so that no eigenvector mixes them.
    """
    dim = gram.shape[0]
    resolved = step.resolved
    both = resolved[:, None] & resolved[None, :]
    others = ~resolved[:, None] & ~resolved[None, :]
    zero = xp.zeros_like(gram)
    shift = xp.where(resolved, xp.zeros_like(gram[0, :]), xp.full_like(gram[0, :], 4.0))
    blocks = xp.where(both | others, gram, zero) - _diag(shift, xp)
    with serial_lapack(xp, gram.shape):
        mu, turn = xp.linalg.eigh(blocks)
    ones = mu > -1  # the resolved block's eigenvalues, about 1
    roots = xp.sqrt(xp.where(ones, mu, xp.ones_like(mu)))
    polar = (turn * xp.where(ones, 1 / roots, xp.zeros_like(mu))) @ turn.T
    kept = xp.astype(resolved, gram.dtype)
    q = ((step.scaled * kept) @ polar) @ (step.vectors * kept).T
    # The others come first (ascending): the largest `rank - kept` of them.
    last = ~ones & (xp.arange(dim, device=array_device(mu)) >= dim - rank)
    nu = mu + 4.0
    singular = xp.sqrt(xp.where(last & (nu > 0), nu, xp.zeros_like(nu)) * step.floor)
    return q, xp.sum(singular)


def _diag(values: Array, xp: Any) -> Array:
    """The diagonal matrix of `values`."""
    dim = values.shape[0]
    eye = xp.eye(dim, dtype=values.dtype, device=array_device(values))
    return eye * values[None, :]


def _checked_lengths(lengths: Any, num: int) -> np.ndarray:
    """This rank's `lengths` on the host, float64: shape (num,), finite and >= 0."""
    return host_lengths(lengths, num, rows=" (this shard's classes)")


def _largest_length(collectives: Collectives, lengths: np.ndarray, xp: Any, device: Any) -> float:
    """The largest of every rank's `lengths` (1 where all are zero): one
    all-gather and one host read."""
    local = xp.asarray([float(lengths.max(initial=0.0))], dtype=wide_float(xp), device=device)
    largest = float(to_host(xp.max(xp.stack(list(collectives.all_gather(local))))))
    return largest if largest > 0 else 1.0
