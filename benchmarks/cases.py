"""Benchmark cases, their sizes, their floors and the targets they are held to.

Every case is built on one backend from one data set (made on the device, not
timed) and returns the call to time plus the floor operations it is compared
with; the runner times them interleaved in the same rounds.

Sizes
-----
``small``
    Seconds in all; a smoke test of every case.
``ci``
    The CPU targets: float32, N=200,000, d=512, K=100 for the report and the
    streaming update (batches of 8192); N=262,144, d=256, K=32,768 for class
    sums; the engine (`from_features`, one `update`) at N=262,144, d=256 and
    K=100, 4096, 32,768, 131,072; pair metrics at K=4096, d=256 (float32 and
    float64); the UFM optimum at K=100,000.
``large``
    The GPU targets: N=1,000,000, d=2048, K=1000 (update batches of 65,536);
    class sums and pair metrics at K=32,768, d=4096; the engine as at ``ci``;
    the UFM optimum at K=100,000.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends import BenchBackend

__all__ = [
    "CASES",
    "ENGINE_CLASSES",
    "FLOORS",
    "SIZES",
    "Case",
    "CaseSkipped",
    "Prepared",
    "Size",
    "memory_target",
    "time_target",
]

Array = Any


@dataclass(frozen=True)
class Size:
    """Problem sizes of one ``--size``.

    Attributes
    ----------
    features : (N, d, K)
        In-memory features for the report, the streaming update and memory.
    batch : int
        Rows per `ClassStats.update` call in the streaming cases.
    segments : (N, d, K)
        Rows, width and segments of the class-sum case.
    engine : (N, d)
        Rows and width of the engine cases (`from_features` and one `update`
        at each K of `ENGINE_CLASSES`).
    classes : (K, d)
        Class means for the pair metrics (built from 4 samples per class).
    ufm_classes : int
        K for the closed-form UFM optimum.
    solver : (K, d)
        Classes and dimension of one solver iteration / one gradient.
    repeat : int
        Default number of timed rounds.
    """

    features: tuple[int, int, int]
    batch: int
    segments: tuple[int, int, int]
    engine: tuple[int, int]
    classes: tuple[int, int]
    ufm_classes: int
    solver: tuple[int, int]
    repeat: int


SIZES: dict[str, Size] = {
    "small": Size(
        features=(4096, 64, 10),
        batch=1024,
        segments=(8192, 32, 1024),
        engine=(8192, 32),
        classes=(512, 64),
        ufm_classes=10_000,
        solver=(50, 64),
        repeat=3,
    ),
    "ci": Size(
        features=(200_000, 512, 100),
        batch=8192,
        segments=(262_144, 256, 32_768),
        engine=(262_144, 256),
        classes=(4096, 256),
        ufm_classes=100_000,
        solver=(500, 512),
        repeat=5,
    ),
    "large": Size(
        features=(1_000_000, 2048, 1000),
        batch=65_536,
        segments=(262_144, 4096, 32_768),
        engine=(262_144, 256),
        classes=(32_768, 4096),
        ufm_classes=100_000,
        solver=(10_000, 4096),
        repeat=5,
    ),
}

#: The pair metrics of the ``pair_metrics`` cases: the four computed together
#: since the first version.
PAIR_METRICS = ("cdnv", "etf_error", "equiangularity", "orthogonality_error")

#: Classes of the engine cases (``from_features_k<K>``, ``update_k<K>``), at
#: every size: class sums must not cost more with K than the scatter-add does.
ENGINE_CLASSES = (100, 4096, 32_768, 131_072)

#: Floor operations and how each is printed. The scatter-add is each library's
#: fastest (`benchmarks.backends.BenchBackend.scatter_add`): SciPy's product of
#: the (K, N) class indicator with X on NumPy, ``index_add_`` on torch,
#: ``cupyx.scatter_add`` on CuPy; NumPy also times the product with the
#: transposed indicator, which skips a sort (`scatter_t`).
FLOORS: dict[str, str] = {
    "read": "X.sum(axis=0)",
    "matmul": "X @ V",
    "gram": "X.T @ X",
    "scatter": "scatter-add X into K rows",
    "scatter_t": "indicator(N, K).T @ X",
    "means_gram": "M @ M.T",
    "sort": "sort(counts)",
    "forward": "model(X) alone, under no_grad",
    "few_classes": f"the same batches into K = {1000:,} rows",
    "train_steps": "the same training steps without the callback",
}

#: The engine's target, on every device: ``from_features`` and one ``update``
#: within 4x of one scatter-add (its two passes, each about one scatter-add).
_ENGINE_TARGETS = {
    (f"{case}_k{classes}", "scatter"): 4.0
    for case in ("from_features", "update")
    for classes in ENGINE_CLASSES
}

# Targets hold for the (device kind, size) they were set for: the CPU ones at
# the ``ci`` sizes, the GPU ones at the ``large`` sizes.
_TIME_TARGETS: dict[tuple[str, str], dict[tuple[str, str], float]] = {
    ("cpu", "ci"): {
        ("report", "matmul"): 2.0,
        ("update_gram", "gram"): 1.5,
        ("class_sums", "read"): 5.0,
        ("pair_metrics", "means_gram"): 1.5,
        ("pair_metrics_f64", "means_gram"): 1.5,
        ("pair_metrics_all", "means_gram"): 2.5,
        ("pair_metrics_all_f64", "means_gram"): 2.5,
        ("depth_resnet18", "forward"): 1.3,
        ("update_tokens", "few_classes"): 1.5,
        ("hf_callback", "train_steps"): 1.3,
        **_ENGINE_TARGETS,
    },
    ("gpu", "large"): {
        ("report", "matmul"): 1.5,
        ("update_gram", "gram"): 1.3,
        ("class_sums", "scatter"): 2.0,
        **_ENGINE_TARGETS,
    },
}
# Memory targets: ("ratio", r) = peak extra <= r x input; ("bytes", b) = <= b.
_MEMORY_TARGETS: dict[tuple[str, str], dict[str, tuple[str, float]]] = {
    ("cpu", "ci"): {"memory": ("ratio", 0.25), "report_stats_k": ("bytes", 2.0 * 2**30)},
    ("gpu", "large"): {"memory": ("ratio", 0.25), "cdnv": ("bytes", 2.0 * 2**30)},
}


def time_target(case: str, floor: str, gpu: bool, size: str) -> float | None:
    """The largest accepted ``time / floor`` ratio, or None where none is set."""
    return _TIME_TARGETS.get(("gpu" if gpu else "cpu", size), {}).get((case, floor))


def memory_target(case: str, gpu: bool, size: str) -> tuple[str, float] | None:
    """``("ratio", r)`` or ``("bytes", b)`` for the case's peak extra memory."""
    return _MEMORY_TARGETS.get(("gpu" if gpu else "cpu", size), {}).get(case)


class CaseSkipped(Exception):
    """A case cannot run here (a module it needs is missing); carries the reason."""


@dataclass
class Prepared:
    """A built case: the call to time and the floors it is compared with.

    Attributes
    ----------
    run : callable
        The measured call (its result is dropped).
    floors : dict
        Floor name (a key of `FLOORS`) to the floor call on the same data.
    input_bytes : int
        Size of the case's input arrays, the denominator of memory ratios.
    params : dict
        Problem sizes, recorded in the JSON.
    """

    run: Callable[[], Any]
    floors: dict[str, Callable[[], Any]]
    input_bytes: int
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """A benchmark case.

    Attributes
    ----------
    name : str
    description : str
    data : str
        The data set it is built from (cases on one data set share it).
    build : callable
        ``build(context) -> Prepared``; raises `CaseSkipped` when it cannot run.
    timed : bool
        Time it against its floors.
    memory : bool
        Also measure the peak extra memory of one call.
    """

    name: str
    description: str
    data: str
    build: Callable[[Context], Prepared]
    timed: bool = True
    memory: bool = False


class Context:
    """Backend, sizes and the data set in use (one held at a time).

    Parameters
    ----------
    backend : BenchBackend
    size : Size
    seed : int
        Seed of every random array.
    """

    def __init__(self, backend: BenchBackend, size: Size, seed: int = 0) -> None:
        self.backend = backend
        self.size = size
        self.seed = seed
        self._key: str | None = None
        self._data: dict[str, Any] = {}

    def data(self, key: str) -> dict[str, Any]:
        """The data set `key`, made on first use; the previous one is dropped."""
        if key != self._key:
            self._data = {}  # free the previous data set before making the next
            self._key = key
            self._data = _MAKERS[key](self)
        return self._data

    def release(self) -> None:
        """Drop the data set in use."""
        self._key, self._data = None, {}


# ----------------------------------------------------------------------------- data
def nbytes(x: Array, xp: Any) -> int:
    """Bytes of an array's elements, on any backend."""
    if xp.isdtype(x.dtype, "real floating"):
        bits = xp.finfo(x.dtype).bits
    else:
        bits = xp.iinfo(x.dtype).bits
    return math.prod(int(n) for n in x.shape) * bits // 8


def _labelled(
    ctx: Context, num: int, dim: int, classes: int, spread: float
) -> tuple[Array, Array]:
    """Labels uniform in [0, K) and features ``spread * centre[label] + noise``."""
    be, xp = ctx.backend, ctx.backend.xp
    labels = be.integers(classes, num, ctx.seed)
    # In place: at the large size each (N, d) temporary is 8 GB of GPU memory.
    features = xp.take(be.normal((classes, dim), ctx.seed + 1), labels, axis=0)
    features *= spread
    features += be.normal((num, dim), ctx.seed + 2)
    return features, labels


def _features_data(ctx: Context) -> dict[str, Any]:
    num, dim, classes = ctx.size.features
    be = ctx.backend
    x, y = _labelled(ctx, num, dim, classes, 3.0)
    return {
        "x": x,
        "y": y,
        "v": be.normal((dim, min(dim, classes - 1)), ctx.seed + 3),
        "w": be.normal((classes, dim), ctx.seed + 4),
        "shape": (num, dim, classes),
    }


def _segments_data(ctx: Context) -> dict[str, Any]:
    num, dim, classes = ctx.size.segments
    be = ctx.backend
    return {
        "x": be.normal((num, dim), ctx.seed + 5),
        "y": be.integers(classes, num, ctx.seed + 6),
        "shape": (num, dim, classes),
    }


def _engine_data(ctx: Context) -> dict[str, Any]:
    num, dim = ctx.size.engine
    return {
        "x": ctx.backend.normal((num, dim), ctx.seed + 13),
        "labels": {},
        "shape": (num, dim),
    }


def _engine_labels(ctx: Context, data: dict[str, Any], classes: int) -> Array:
    """Labels uniform in [0, `classes`) for the engine data (one K held at a time)."""
    held = data["labels"]
    if classes not in held:
        held.clear()
        held[classes] = ctx.backend.integers(classes, data["shape"][0], ctx.seed + 14)
    return held[classes]


def _classes_data(ctx: Context) -> dict[str, Any]:
    from ncgeom import ClassStats

    classes, dim = ctx.size.classes
    xp = ctx.backend.xp
    per_class = 4
    labels = xp.arange(per_class * classes, device=ctx.backend.device) % classes
    noise = ctx.backend.normal((per_class * classes, dim), ctx.seed + 7)
    centres = ctx.backend.normal((classes, dim), ctx.seed + 8)
    features = xp.take(centres, labels, axis=0)
    features *= 3.0
    features += noise
    stats = ClassStats.from_features(features, labels, classes, gram=False)
    return {"float32": {"stats": stats, "means": stats.means}, "shape": (classes, dim)}


def _class_stats(ctx: Context, data: dict[str, Any], dtype: str) -> dict[str, Any]:
    """The statistics and means of the classes data in `dtype`; float64 ones are
    the float32 ones cast (the same values), made on first use."""
    if dtype not in data:
        stats = data["float32"]["stats"].astype(getattr(ctx.backend.xp, dtype))
        data[dtype] = {"stats": stats, "means": stats.means}
    return data[dtype]


def _counts_data(ctx: Context) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(ctx.seed + 9)
    # Long-tailed counts: a few large classes, many small ones.
    counts = np.maximum(1, (5000 * rng.pareto(1.2, ctx.size.ufm_classes))).astype(np.int64)
    return {"counts": counts, "shape": (ctx.size.ufm_classes,)}


def _solver_data(ctx: Context) -> dict[str, Any]:
    import numpy as np

    classes, dim = ctx.size.solver
    be, xp = ctx.backend, ctx.backend.xp
    rng = np.random.default_rng(ctx.seed + 10)
    counts = np.maximum(1, (500 * rng.pareto(1.2, classes))).astype(np.int64)
    return {
        "counts": counts,
        "counts_xp": xp.astype(be.from_numpy(counts), xp.float32),
        "w": be.normal((classes, dim), ctx.seed + 11),
        "h": xp.abs(be.normal((classes, dim), ctx.seed + 12)),
        "shape": (classes, dim),
    }


#: Classes, batch size and side of the images of the ``depth_resnet18`` case.
DEPTH_CLASSES, DEPTH_BATCH, DEPTH_SIDE = 10, 128, 32


def _images_data(ctx: Context) -> dict[str, Any]:
    """CIFAR-sized batches (B, 3, 32, 32) and labels for the depth case: one batch
    at the small size, 4 at ``ci``, 16 at ``large``."""
    batches = {"small": 1, "ci": 4}.get(_size_name(ctx), 16)
    num = batches * DEPTH_BATCH
    be = ctx.backend
    images = be.normal((num, 3 * DEPTH_SIDE * DEPTH_SIDE), ctx.seed + 15)
    images = ctx.backend.xp.reshape(images, (num, 3, DEPTH_SIDE, DEPTH_SIDE))
    labels = be.integers(DEPTH_CLASSES, num, ctx.seed + 16)
    return {"x": images, "y": labels, "shape": (num, DEPTH_BATCH)}


#: Classes, batch size, width and batches of the ``update_tokens`` case (4 batches
#: at the small size), and the K of its floor.
TOKEN_CLASSES, TOKEN_BATCH, TOKEN_DIM, TOKEN_BATCHES, TOKEN_FLOOR_CLASSES = (
    131_072,
    512,
    64,
    32,
    1000,
)


def _tokens_data(ctx: Context) -> dict[str, Any]:
    batches = 4 if _size_name(ctx) == "small" else TOKEN_BATCHES
    num = batches * TOKEN_BATCH
    be = ctx.backend
    return {
        "x": be.normal((num, TOKEN_DIM), ctx.seed + 17),
        "y": be.integers(TOKEN_FLOOR_CLASSES, num, ctx.seed + 18),
        "shape": (num, TOKEN_DIM),
    }


def _size_name(ctx: Context) -> str:
    return next(name for name, size in SIZES.items() if size is ctx.size)


_MAKERS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "features": _features_data,
    "segments": _segments_data,
    "engine": _engine_data,
    "classes": _classes_data,
    "counts": _counts_data,
    "solver": _solver_data,
    "images": _images_data,
    "tokens": _tokens_data,
    "none": lambda ctx: {},
}


# ----------------------------------------------------------------------------- floors
def _feature_floors(ctx: Context, data: dict[str, Any], names: tuple[str, ...]) -> dict:
    be = ctx.backend
    x, y = data["x"], data["y"]
    calls = {
        "read": lambda: be.read(x),
        "matmul": lambda: x @ data["v"],
        "gram": lambda: x.T @ x,
        "scatter": lambda: be.scatter_add(x, y, data["shape"][2]),
    }
    return {name: calls[name] for name in names if name != "scatter" or be.has_scatter_add}


def _input_bytes(ctx: Context, *arrays: Array) -> int:
    return sum(nbytes(a, ctx.backend.xp) for a in arrays)


def _params(data: dict[str, Any], names: str) -> dict[str, int]:
    return dict(zip(names.split(","), data["shape"], strict=True))


# ----------------------------------------------------------------------------- cases
def _report(ctx: Context, classifier: bool) -> Prepared:
    from ncgeom import nc_report

    data = ctx.data("features")
    x, y, w = data["x"], data["y"], data["w"]
    if classifier:
        run: Callable[[], Any] = lambda: nc_report((x, y), w)  # noqa: E731
    else:
        run = lambda: nc_report((x, y))  # noqa: E731
    return Prepared(
        run,
        _feature_floors(ctx, data, ("matmul",)),
        _input_bytes(ctx, x, y),
        _params(data, "N,d,K"),
    )


def _update(ctx: Context, gram: bool) -> Prepared:
    from ncgeom import ClassStats

    data = ctx.data("features")
    be, xp = ctx.backend, ctx.backend.xp
    x, y = data["x"], data["y"]
    num, dim, classes = data["shape"]
    batch = ctx.size.batch

    def run() -> Any:
        stats = ClassStats.empty(
            classes, dim, gram=gram, xp=xp, device=be.device, dtype=xp.float32
        )
        for lo in range(0, num, batch):
            stats = stats.update(x[lo : lo + batch, ...], y[lo : lo + batch])
        return stats

    floors = ("gram",) if gram else ("read",)
    params = {**_params(data, "N,d,K"), "batch": batch}
    return Prepared(run, _feature_floors(ctx, data, floors), _input_bytes(ctx, x, y), params)


def _class_sums(ctx: Context) -> Prepared:
    from ncgeom._array import segment_sum

    data = ctx.data("segments")
    xp = ctx.backend.xp
    x, y = data["x"], data["y"]
    classes = data["shape"][2]
    return Prepared(
        lambda: segment_sum(x, y, classes, xp),
        _feature_floors(ctx, data, ("read", "scatter")),
        _input_bytes(ctx, x, y),
        _params(data, "N,d,K"),
    )


def _report_from_stats(ctx: Context) -> Prepared:
    from ncgeom import ClassStats, nc_report

    data = ctx.data("segments")
    x, y = data["x"], data["y"]
    classes, dim = data["shape"][2], data["shape"][1]
    stats = ClassStats.from_features(x, y, classes, gram=False)
    xp = ctx.backend.xp
    means = stats.means
    # A classifier near the means (rows of classes without samples: 0.5).
    w = xp.where(xp.isnan(means), xp.zeros_like(means), means) + 0.5
    return Prepared(
        lambda: nc_report(stats, w, pairs="exact"),
        {"means_gram": lambda: means @ means.T},
        _input_bytes(ctx, stats.sums, stats.shift, w),
        {"K": classes, "d": dim},
    )


def _engine(ctx: Context, classes: int, *, streamed: bool) -> Prepared:
    from ncgeom import ClassStats

    data = ctx.data("engine")
    be, xp = ctx.backend, ctx.backend.xp
    x, (num, dim) = data["x"], data["shape"]
    y = _engine_labels(ctx, data, classes)
    if streamed:

        def run() -> Any:
            empty = ClassStats.empty(
                classes, dim, gram=False, xp=xp, device=be.device, dtype=xp.float32
            )
            return empty.update(x, y)

    else:

        def run() -> Any:
            return ClassStats.from_features(x, y, classes, gram=False)

    floors = {"read": lambda: be.read(x)}
    if be.has_scatter_add:
        floors["scatter"] = lambda: be.scatter_add(x, y, classes)
    if be.has_transposed_scatter_add:
        floors["scatter_t"] = lambda: be.scatter_add_transposed(x, y, classes)
    return Prepared(run, floors, _input_bytes(ctx, x, y), {"N": num, "d": dim, "K": classes})


def _pairs(
    ctx: Context, names: tuple[str, ...] | Callable[[], tuple[str, ...]], dtype: str = "float32"
) -> Prepared:
    """Pair metrics `names` (or the names a call returns, resolved when the
    case is built) in one blocked pass, on means of `dtype`."""
    from ncgeom import metrics

    data = ctx.data("classes")
    held = _class_stats(ctx, data, dtype)
    stats, means = held["stats"], held["means"]
    asked = names if isinstance(names, tuple) else names()

    def run() -> Any:
        # One blocked pass for all the metrics named, as nc_report makes it.
        return metrics.pair_metrics(metrics.populated(stats), asked)

    if not isinstance(names, tuple):  # names the library lists may be new to it
        _probe(run, f"metrics.pair_metrics with {asked}", ValueError)
    params = {**_params(data, "K,d"), "dtype": dtype, "metrics": len(asked)}
    return Prepared(run, {"means_gram": lambda: means @ means.T}, _input_bytes(ctx, means), params)


def _means_pair_metrics() -> tuple[str, ...]:
    """Every means-side pair metric the library has (`pairs.MEANS_PAIR_METRICS`)."""
    return tuple(_require("ncgeom.measure.pairs", "MEANS_PAIR_METRICS"))


def _require(module: str, attribute: str) -> Any:
    """``module.attribute``, or `CaseSkipped` saying which is missing."""
    try:
        found = importlib.import_module(module)
    except ImportError:
        msg = f"{module} is not available"
        raise CaseSkipped(msg) from None
    if not hasattr(found, attribute):
        msg = f"{module}.{attribute} is not available"
        raise CaseSkipped(msg)
    return getattr(found, attribute)


def _ufm_optimum(ctx: Context) -> Prepared:
    optimum = _require("ncgeom.theory", "ufm_relu_optimum")
    data = ctx.data("counts")
    be, xp = ctx.backend, ctx.backend.xp
    counts = be.from_numpy(data["counts"])

    def run() -> Any:
        return optimum(counts, 5e-4, 1e-4, xp=xp, device=be.device)

    _probe(run, "ncgeom.theory.ufm_relu_optimum")
    return Prepared(
        run,
        {"sort": lambda: xp.sort(counts)},
        _input_bytes(ctx, counts),
        {"K": data["shape"][0]},
    )


def _solver_iteration(ctx: Context) -> Prepared:
    solve = _require("ncgeom.solve", "solve_ufm")
    data = ctx.data("solver")
    be, xp = ctx.backend, ctx.backend.xp
    classes, dim = data["shape"]
    counts, w = data["counts"], data["w"]

    def run() -> Any:
        return solve(
            counts, 5e-4, 1e-4, dim, max_iter=1, restarts=1, seed=0, xp=xp, device=be.device
        )

    _probe(run, "ncgeom.solve.solve_ufm")
    return Prepared(
        run, {"means_gram": lambda: w @ w.T}, _input_bytes(ctx, w), {"K": classes, "d": dim}
    )


def _collapsed_gradients(ctx: Context) -> Prepared:
    gradients = _require("ncgeom.loss", "collapsed_gradients")
    data = ctx.data("solver")
    w, h, counts = data["w"], data["h"], data["counts_xp"]
    classes, dim = data["shape"]

    def run() -> Any:
        return gradients(w, h, counts, 5e-4, 1e-4)

    _probe(run, "ncgeom.loss.collapsed_gradients")
    return Prepared(
        run,
        {"means_gram": lambda: w @ w.T},
        _input_bytes(ctx, w, h),
        {"K": classes, "d": dim},
    )


def _depth_resnet18(ctx: Context) -> Prepared:
    """Every block of a CIFAR ResNet-18 tapped, pooled, no Gram, in eval mode under
    no_grad: forward passes with `NCTracker.observe` of all blocks, against the
    forward passes alone (width 64; 8 at the small size)."""
    if ctx.backend.name != "torch":
        msg = "the depth case runs a torch network: use --backend torch"
        raise CaseSkipped(msg)
    resnet = _require("ncgeom_torch.resnet", "resnet18")
    blocks = _require("ncgeom_torch.resnet", "BLOCK_NAMES")
    plugin = importlib.import_module("ncgeom_torch")
    import torch

    data = ctx.data("images")
    x, y = data["x"], data["y"]
    width = 8 if _size_name(ctx) == "small" else 64
    model = resnet(DEPTH_CLASSES, width=width).to(ctx.backend.device).eval()
    batches = list(zip(x.split(DEPTH_BATCH), y.split(DEPTH_BATCH), strict=True))

    def forward() -> Any:
        with torch.no_grad():
            for inputs, _ in batches:
                model(inputs)

    def run() -> Any:
        tracker = plugin.NCTracker(DEPTH_CLASSES, gram=False)
        with torch.no_grad(), plugin.FeatureTap(model, layers=list(blocks)) as tap:
            for inputs, labels in batches:
                model(inputs)
                tracker.observe(tap.outputs, labels)
        return tracker.layer_stats

    _probe(run, "NCTracker.observe({layer: features}, labels)", ValueError)
    params = {"N": data["shape"][0], "batch": DEPTH_BATCH, "width": width, "layers": len(blocks)}
    return Prepared(run, {"forward": forward}, _input_bytes(ctx, x, y), params)


def _update_tokens(ctx: Context) -> Prepared:
    """`StreamingClassStats.update` of 512-token batches into tables of K = 131,072,
    against the same batches (labels below 1,000) into tables of K = 1,000: the
    same arithmetic on the same rows, so the ratio is the cost of K itself."""
    streaming = _require("ncgeom", "StreamingClassStats")
    data = ctx.data("tokens")
    be, xp = ctx.backend, ctx.backend.xp
    x, (num, dim) = data["x"], data["shape"]

    def updates(labels: Array, classes: int) -> Callable[[], Any]:
        running = streaming(classes, dim, gram=False, xp=xp, device=be.device, dtype=xp.float32)
        # The first batch of each run pays for the (K, d) tables' first writes.
        running.update(x[:TOKEN_BATCH, ...], labels[:TOKEN_BATCH])

        def run() -> Any:
            for lo in range(0, num, TOKEN_BATCH):
                running.update(x[lo : lo + TOKEN_BATCH, ...], labels[lo : lo + TOKEN_BATCH])
            return running

        return run

    return Prepared(
        updates(data["y"], TOKEN_CLASSES),
        {"few_classes": updates(data["y"], TOKEN_FLOOR_CLASSES)},
        _input_bytes(ctx, x, data["y"]),
        {"N": num, "batch": TOKEN_BATCH, "d": dim, "K": TOKEN_CLASSES},
    )


#: Vocabulary, width, layers, batch (sequences x tokens) and steps of the
#: ``hf_callback`` case: (1024, 16, 1, 2 x 16, 2) at the small size.
LM_SIZES = {"small": (1024, 16, 1, (2, 16), 2), "ci": (32_768, 64, 2, (8, 64), 72)}


def _hf_callback(ctx: Context) -> Prepared:
    """Training steps of a tiny GPT-2 with `NCTrainerCallback` observing every
    step, against the same steps without it. The 72 steps' 36,288 tokens fill
    the class table once (K = 32,768 rows held, then added as one batch); the
    report, a separate cost, falls after them (``every_n_steps`` = 73).

    The callback is driven through the Trainer's public events
    (``on_train_begin``, ``on_step_begin``, ``on_step_end``) around a plain
    AdamW loop, as ``Trainer`` calls them, without the Trainer's own work.
    """
    if ctx.backend.name != "torch":
        msg = "the callback case trains a torch model: use --backend torch"
        raise CaseSkipped(msg)
    callback_class = _require("ncgeom_torch.hf", "NCTrainerCallback")
    transformers = importlib.import_module("transformers")
    import tempfile

    import torch

    vocab, width, layers, (rows, tokens), steps = LM_SIZES.get(_size_name(ctx), LM_SIZES["ci"])
    device = ctx.backend.device
    torch.manual_seed(ctx.seed)
    config = transformers.GPT2Config(
        vocab_size=vocab, n_embd=width, n_layer=layers, n_head=2, n_positions=tokens
    )
    model = transformers.GPT2LMHeadModel(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(ctx.seed + 19)
    batches = [
        torch.randint(0, vocab, (rows, tokens), generator=gen).to(device) for _ in range(steps)
    ]
    # Nothing is written there: the events that save (on_train_end) are not sent.
    folder = str(Path(tempfile.gettempdir()) / "ncgeom-bench-hf")
    args = transformers.TrainingArguments(
        folder, report_to=[], use_cpu=str(device).startswith("cpu")
    )

    def step(ids: Any) -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    def train() -> None:
        for ids in batches:
            step(ids)
        ctx.backend.sync()

    def run() -> Any:
        callback = callback_class(every_n_steps=steps + 1)
        state, control = transformers.TrainerState(), transformers.TrainerControl()
        callback.on_train_begin(args, state, control, model=model)
        for ids in batches:
            callback.on_step_begin(args, state, control)
            step(ids)
            state.global_step += 1
            callback.on_step_end(args, state, control)
        callback.remove()
        ctx.backend.sync()
        return callback

    _probe(run, "NCTrainerCallback driven by Trainer events", ValueError)
    params = {"vocab": vocab, "d": width, "layers": layers, "batch": rows * tokens, "steps": steps}
    return Prepared(run, {"train_steps": train}, 0, params)


def _probe(run: Callable[[], Any], what: str, *errors: type[Exception]) -> None:
    """Call once; a signature this benchmark does not know (or one of `errors`:
    arguments the library does not take) skips the case."""
    try:
        run()
    except (TypeError, *errors) as exc:
        msg = f"{what} has another signature than expected ({exc})"
        raise CaseSkipped(msg) from None


CASES: dict[str, Case] = {
    case.name: case
    for case in (
        Case(
            "report",
            "nc_report((X, y)) from in-memory features (two chunked passes)",
            "features",
            lambda ctx: _report(ctx, classifier=False),
        ),
        Case(
            "report_classifier",
            "nc_report((X, y), W): adds the classifier metrics and NCC agreement (X @ W.T)",
            "features",
            lambda ctx: _report(ctx, classifier=True),
        ),
        Case(
            "update_gram",
            "ClassStats.empty(...).update(batch) over all batches, with the Gram",
            "features",
            lambda ctx: _update(ctx, gram=True),
        ),
        Case(
            "update_nogram",
            "ClassStats.empty(...).update(batch) over all batches, without the Gram",
            "features",
            lambda ctx: _update(ctx, gram=False),
        ),
        Case(
            "memory",
            "peak extra memory of nc_report((X, y)) over the size of X and y",
            "features",
            lambda ctx: _report(ctx, classifier=False),
            timed=False,
            memory=True,
        ),
        Case(
            "class_sums",
            "ncgeom._array.segment_sum(X, y, K): the class-wise scatter-add",
            "segments",
            _class_sums,
        ),
        *(
            Case(
                f"{name}_k{classes}",
                f"{call} at K = {classes:,} (N, d of the size's engine): both passes",
                "engine",
                functools.partial(_engine, classes=classes, streamed=streamed),
            )
            for name, call, streamed in (
                ("from_features", "ClassStats.from_features(X, y, K, gram=False)", False),
                ("update", "ClassStats.empty(K, d, gram=False).update(X, y)", True),
            )
            for classes in ENGINE_CLASSES
        ),
        Case(
            "update_tokens",
            f"StreamingClassStats.update of {TOKEN_BATCH}-token batches (labels below "
            f"{TOKEN_FLOOR_CLASSES:,}) into K = {TOKEN_CLASSES:,} rows, d = {TOKEN_DIM}",
            "tokens",
            _update_tokens,
        ),
        Case(
            "cdnv",
            "metrics.cdnv(stats) at large K (pairs in row blocks)",
            "classes",
            lambda ctx: _pairs(ctx, ("cdnv",)),
            memory=True,
        ),
        Case(
            "pair_metrics",
            "metrics.pair_metrics: cdnv, etf_error, equiangularity, orthogonality_error "
            "in one blocked pass at large K",
            "classes",
            lambda ctx: _pairs(ctx, PAIR_METRICS),
        ),
        Case(
            "pair_metrics_f64",
            "the same four pair metrics from float64 statistics",
            "classes",
            lambda ctx: _pairs(ctx, PAIR_METRICS, "float64"),
        ),
        Case(
            "pair_metrics_all",
            "metrics.pair_metrics: every means-side pair metric (pairs.MEANS_PAIR_METRICS) "
            "in one blocked pass",
            "classes",
            lambda ctx: _pairs(ctx, _means_pair_metrics),
        ),
        Case(
            "report_stats_k",
            "nc_report(stats, W) from statistics at the class-sum K, every metric (exact pairs)",
            "segments",
            _report_from_stats,
            timed=False,
            memory=True,
        ),
        Case(
            "pair_metrics_all_f64",
            "every means-side pair metric from float64 statistics",
            "classes",
            lambda ctx: _pairs(ctx, _means_pair_metrics, "float64"),
        ),
        Case(
            "ufm_optimum",
            "theory.ufm_relu_optimum(counts, ...) (per-class values, O(K) memory)",
            "counts",
            _ufm_optimum,
            memory=True,
        ),
        Case(
            "solver_iteration",
            "solve.solve_ufm(..., max_iter=1): one iteration of the numerical solver",
            "solver",
            _solver_iteration,
        ),
        Case(
            "depth_resnet18",
            "NCTracker.observe of the 8 blocks of a CIFAR ResNet-18 (pooled, no Gram) with "
            "its forward, batches of 128 (torch only)",
            "images",
            _depth_resnet18,
        ),
        Case(
            "hf_callback",
            "72 training steps of a tiny GPT-2 (vocabulary 32,768, d = 64, 2 layers) with "
            "NCTrainerCallback observing every step, the report left out (torch only)",
            "none",
            _hf_callback,
        ),
        Case(
            "collapsed_gradients",
            "loss.collapsed_gradients(W, H, counts, ...): the work of one solver iteration",
            "solver",
            _collapsed_gradients,
        ),
    )
}
