"""Label and feature dtypes, layouts and containers, for every entry point that
takes (features, labels).

Each input class is one `Case`: how to make the input on NumPy and/or torch,
the outcome the contract gives it, and, for a correct result, the float64
values and tolerance the result is checked against. `probes()` crosses the
cases with the entry points (`ENTRIES`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import torch

from ncgeom import ClassStats, nc_report, ncc_agreement, stats_from_dask, ufm_objective
from ncgeom_torch import NCTracker

from . import Either, Probe, Raises, Returns
from . import formulas as f
from .data import (
    CLASSIFIER,
    LAMBDA_H,
    LAMBDA_W,
    MEANS,
    D,
    K,
    base,
    like_features,
    namespace_of,
    tt,
)

#: (features, labels, float64 features, labels) the formula uses, tolerance.
Made = tuple[Any, Any, np.ndarray, np.ndarray]
TYPE, VALUE, ERROR = (TypeError,), (ValueError,), (TypeError, ValueError)


@dataclass(frozen=True)
class Case:
    """One input class. `outcome` is "ok", TYPE, VALUE, ERROR or ("either", kinds)."""

    id: str
    name: str  # the argument the error names
    outcome: Any
    numpy: Callable[[], Made] | None = None
    torch: Callable[[], Made] | None = None
    rtol: float = 1e-10
    also: tuple[str, ...] = ()
    #: Entry points whose outcome differs (e.g. `update` of an empty batch).
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Entry:
    """A public entry point taking (features, labels)."""

    name: str
    call: Callable[[Any, Any], Any]
    check: Callable[[np.ndarray, np.ndarray, float], f.Check]
    backends: tuple[str, ...] = ("numpy", "torch")
    #: Whether it takes labels (the label cases apply).
    labels: bool = True


def _update(x: Any, y: Any) -> ClassStats:
    xp, device = namespace_of(x)
    return ClassStats.empty(K, D, xp=xp, device=device).update(x, y)


def _observe(x: Any, y: Any) -> ClassStats:
    tracker = NCTracker(K)
    tracker.observe(x, y)
    return tracker.stats


def _dask(x: Any, y: Any) -> ClassStats:
    rows = np.shape(x)[0] if np.ndim(x) else 0
    chunks = (min(10, max(rows, 1)), *(-1,) * max(np.ndim(x) - 1, 0))
    return stats_from_dask(da.from_array(x, chunks=chunks), y, K, scheduler="synchronous")


def _objective(x: Any, y: Any) -> Any:
    return ufm_objective(like_features(CLASSIFIER, x), x, y, LAMBDA_W, LAMBDA_H)


def _agreement(x: Any, y: Any) -> Any:
    return ncc_agreement(x, like_features(CLASSIFIER, x), like_features(MEANS, x))


def _agreement_check(x: np.ndarray, y: np.ndarray, rtol: float) -> f.Check:
    return f.agreement_check(f.ncc_agreement(x, CLASSIFIER, MEANS))


def _objective_check(x: np.ndarray, y: np.ndarray, rtol: float) -> f.Check:
    want = f.objective(CLASSIFIER, x, y, LAMBDA_W, LAMBDA_H)
    return f.scalar_check("objective", want, max(rtol, 1e-12))


ENTRIES = (
    Entry(
        "from_features",
        lambda x, y: ClassStats.from_features(x, y, K),
        lambda x, y, r: f.stats_check(x, y, K, r),
    ),
    Entry("update", _update, lambda x, y, r: f.stats_check(x, y, K, r)),
    Entry(
        "nc_report",
        lambda x, y: nc_report((x, y), num_classes=K),
        lambda x, y, r: f.report_check(x, y, K, r),
    ),
    Entry("ufm_objective", _objective, _objective_check),
    Entry("stats_from_dask", _dask, lambda x, y, r: f.stats_check(x, y, K, r), ("numpy",)),
    Entry("NCTracker.observe", _observe, lambda x, y, r: f.stats_check(x, y, K, r), ("torch",)),
    Entry("ncc_agreement", _agreement, _agreement_check, labels=False),
)


# --------------------------------------------------------------------------- labels


def _labels(
    make: Callable[[np.ndarray], Any], keep: np.ndarray | None = None
) -> Callable[[], Made]:
    """Base features with labels `make(base labels)`; `keep` marks the rows a
    correct result counts (a mask honoured)."""

    def made() -> Made:
        x, y = base()
        rows = np.ones(len(y), dtype=bool) if keep is None else keep
        return x, make(y), x[rows], y[rows]

    return made


def _torch_labels(make: Callable[[torch.Tensor], Any]) -> Callable[[], Made]:
    def made() -> Made:
        x, y = base()
        return tt(x), make(tt(y)), x, y

    return made


def _set(y: np.ndarray, row: int, value: Any, dtype: Any = None) -> np.ndarray:
    out = y.astype(dtype if dtype is not None else y.dtype)
    out[row] = value
    return out


_MASKED_ROWS = np.zeros(24, dtype=bool)
_MASKED_ROWS[[2, 11]] = True


def _masked_labels(y: np.ndarray) -> np.ma.MaskedArray:
    return np.ma.array(_set(y, 2, 0), mask=_MASKED_ROWS)


#: Integer label dtypes every entry point accepts, on NumPy and torch.
INTEGER_DTYPES = ("int8", "int16", "int32", "uint8", "uint16", "uint32", "uint64")
EITHER_TYPE = ("either", TYPE)


def _cast(name: str) -> tuple[Callable[[], Made], Callable[[], Made]]:
    return _labels(lambda y: y.astype(name)), _torch_labels(lambda y: y.to(getattr(torch, name)))


def _label_at(row: int, value: Any, dtype: Any = None) -> tuple[Callable[[], Made], ...]:
    """The base labels with one entry replaced, on NumPy and torch."""
    return (
        _labels(lambda y: _set(y, row, value, dtype)),
        _torch_labels(lambda y: torch.from_numpy(_set(y.numpy(), row, value, dtype))),
    )


LABEL_CASES = (
    Case("bool", "labels", TYPE, _labels(lambda y: y == 1), _torch_labels(lambda y: y == 1)),
    Case("float", "labels", TYPE, *_cast("float64")),
    Case("float-nan", "labels", TYPE, *_label_at(3, np.nan, np.float64)),
    Case("str", "labels", TYPE, _labels(lambda y: y.astype(str))),
    Case("object", "labels", TYPE, _labels(lambda y: y.astype(object))),
    *(Case(name, "labels", "ok", *_cast(name)) for name in INTEGER_DTYPES),
    Case(
        "uint64-2**63+5",
        "labels",
        VALUE,
        *_label_at(1, 2**63 + 5, np.uint64),
        also=("9223372036854775813",),
    ),
    Case("negative", "labels", VALUE, *_label_at(4, -1)),
    Case("out-of-range", "labels", VALUE, *_label_at(4, K)),
    Case("list", "labels", EITHER_TYPE, _labels(list), _torch_labels(lambda y: y.tolist())),
    Case("tuple", "labels", EITHER_TYPE, _labels(tuple)),
    Case("0-d", "labels", ERROR, _labels(lambda y: y[0]), _torch_labels(lambda y: y[0])),
    Case(
        "2-D", "labels", ERROR, _labels(lambda y: y[:, None]), _torch_labels(lambda y: y[:, None])
    ),
    Case("masked", "labels", EITHER_TYPE, _labels(_masked_labels, keep=~_MASKED_ROWS)),
    Case("matrix", "labels", ERROR, _labels(np.matrix)),
    Case(
        "strided-view",
        "labels",
        "ok",
        _labels(lambda y: np.repeat(y, 2)[::2]),
        _torch_labels(lambda y: y.repeat_interleave(2)[::2]),
    ),
    Case("read-only", "labels", "ok", _labels(lambda y: _read_only(y))),
    Case("meta-device", "labels", ERROR, torch=_torch_labels(lambda y: y.to("meta"))),
)


def _read_only(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.setflags(write=False)
    return a


# --------------------------------------------------------------------------- features


def _features(
    make: Callable[[np.ndarray], Any], rows: np.ndarray | None = None
) -> Callable[[], Made]:
    """Features `make(base features)` with the base labels; the formula uses the
    float64 values of the features (rows `rows` where a mask is honoured)."""

    def made() -> Made:
        x, y = base()
        out = make(x)
        values = _values(out)
        if rows is not None:
            return out, y, values[rows], y[rows]
        return out, y, values, y

    return made


def _values(x: Any) -> np.ndarray:
    """The float64 values of features of any dtype (the formula's input)."""
    if isinstance(x, torch.Tensor):
        if x.layout != torch.strided:
            x = x.to_dense()
        if x.device.type == "meta" or x.dtype.is_complex or not x.dtype.is_floating_point:
            return np.zeros((0,))
        return x.detach().double().numpy()
    data = np.ma.getdata(x) if isinstance(x, np.ma.MaskedArray) else np.asarray(x)
    if data.dtype.kind != "f":
        return np.zeros((0,))
    return np.asarray(data, dtype=np.float64)


def _torch_features(
    make: Callable[[torch.Tensor], Any], labels: Callable[[torch.Tensor], Any] | None = None
) -> Callable[[], Made]:
    def made() -> Made:
        x, y = base()
        out = make(tt(x))
        y_out = tt(y) if labels is None else labels(tt(y))
        return out, y_out, _values(out), y

    return made


_NAN_ROW = np.zeros(24, dtype=bool)
_NAN_ROW[3] = True


def _masked_nan(x: np.ndarray) -> np.ma.MaskedArray:
    x = x.copy()
    x[3, 1] = np.nan
    return np.ma.array(x, mask=np.repeat(_NAN_ROW[:, None], x.shape[1], axis=1))


def _masked_rows(x: np.ndarray) -> np.ma.MaskedArray:
    return np.ma.array(x, mask=np.repeat(_MASKED_ROWS[:, None], x.shape[1], axis=1))


def _strided_rows() -> Made:
    x, y = base()
    big, labels = np.repeat(x, 2, axis=0), np.repeat(y, 2)
    return big[::2], labels[::2], x, y


def _reversed_rows() -> Made:
    x, y = base()
    return x[::-1], y[::-1], x[::-1].copy(), y[::-1].copy()


def _zero_rows() -> Made:
    x, y = base()
    return x[:0], y[:0], x[:0], y[:0]


def _torch_zero_rows() -> Made:
    x, y = base()
    return tt(x)[:0], tt(y)[:0], x[:0], y[:0]


def _requires_grad(x: torch.Tensor) -> torch.Tensor:
    return x.clone().requires_grad_(True)


def _empty_check(*_: Any) -> f.Check:
    def check(stats: Any) -> None:
        got = f.host(stats.counts).tolist()
        if got != [0] * K or stats.dim != D:
            raise AssertionError(f"an empty batch must leave empty statistics; got {got}")

    return check


def _no_rows_check(agreement: Any) -> None:
    if int(f.host(agreement.total)) != 0:
        raise AssertionError(f"an empty batch must count no rows; got {agreement.total}")


_EMPTY_UPDATE = Returns(_empty_check())
_EITHER_VALUE = Either(_EMPTY_UPDATE, Raises(ValueError, ("features",)))
_NO_ROWS = Either(Returns(_no_rows_check), Raises(ValueError, ("features",)))


def _large_longdouble() -> Made:
    """longdouble features near 1e10 with a within-class spread of about 0.3, on a
    grid of 2**-18 so that float64 holds them exactly (the formula's input)."""
    x, y = base()
    exact = 1e10 + np.round(x / 3 * 2.0**18) / 2.0**18
    return exact.astype(np.longdouble), y, exact, y


FEATURE_CASES = (
    Case(
        "float16",
        "features",
        "ok",
        _features(lambda x: x.astype(np.float16)),
        _torch_features(lambda x: x.half()),
        rtol=1e-5,
    ),
    Case("bfloat16", "features", "ok", torch=_torch_features(lambda x: x.bfloat16()), rtol=1e-5),
    Case(
        "float32",
        "features",
        "ok",
        _features(lambda x: x.astype(np.float32)),
        _torch_features(lambda x: x.float()),
        rtol=1e-5,
    ),
    Case("float64", "features", "ok", _features(lambda x: x), _torch_features(lambda x: x)),
    Case(
        "longdouble",
        "features",
        EITHER_TYPE,
        _features(lambda x: x.astype(np.longdouble)),
        rtol=1e-10,
    ),
    # float64 class means at 1e10 carry a rounding of about eps * 1e10, which
    # limits NC1 to about 50 eps * 1e10 (the offset probes' tolerance).
    Case(
        "longdouble-1e10",
        "features",
        EITHER_TYPE,
        _large_longdouble,
        rtol=50 * float(np.finfo(np.float64).eps) * 1e10,
    ),
    Case(
        "int",
        "features",
        TYPE,
        _features(lambda x: np.round(x).astype(np.int64)),
        _torch_features(lambda x: x.round().long()),
    ),
    Case(
        "complex",
        "features",
        TYPE,
        _features(lambda x: x.astype(np.complex128)),
        _torch_features(lambda x: x.to(torch.complex128)),
    ),
    Case("bool", "features", TYPE, _features(lambda x: x > 0), _torch_features(lambda x: x > 0)),
    Case(
        "1-D", "features", VALUE, _features(lambda x: x[:, 0]), _torch_features(lambda x: x[:, 0])
    ),
    Case(
        "3-D",
        "features",
        VALUE,
        _features(lambda x: x[:, :, None]),
        _torch_features(lambda x: x[:, :, None]),
    ),
    Case(
        "zero-rows",
        "features",
        VALUE,
        _zero_rows,
        _torch_zero_rows,
        overrides={
            "update": _EMPTY_UPDATE,
            "NCTracker.observe": _EITHER_VALUE,
            "ncc_agreement": _NO_ROWS,
        },
    ),
    Case(
        "zero-columns",
        "features",
        VALUE,
        _features(lambda x: x[:, :0]),
        _torch_features(lambda x: x[:, :0]),
    ),
    Case(
        "transposed-view",
        "features",
        "ok",
        _features(lambda x: np.ascontiguousarray(x.T).T),
        _torch_features(lambda x: x.T.contiguous().T),
    ),
    Case(
        "strided-rows",
        "features",
        "ok",
        _strided_rows,
        _torch_features(lambda x: x.repeat_interleave(2, dim=0)[::2]),
    ),
    Case(
        "strided-columns",
        "features",
        "ok",
        _features(lambda x: np.repeat(x, 2, axis=1)[:, ::2]),
        _torch_features(lambda x: x.repeat_interleave(2, dim=1)[:, ::2]),
    ),
    Case("reversed-rows", "features", "ok", _reversed_rows),
    Case("fortran-order", "features", "ok", _features(np.asfortranarray)),
    Case("read-only", "features", "ok", _features(_read_only)),
    Case("matrix", "features", EITHER_TYPE, _features(np.matrix)),
    Case("masked-rows", "features", EITHER_TYPE, _features(_masked_rows, rows=~_MASKED_ROWS)),
    Case("masked-nan", "features", EITHER_TYPE, _features(_masked_nan, rows=~_NAN_ROW)),
    Case("sparse-coo", "features", EITHER_TYPE, torch=_torch_features(lambda x: x.to_sparse())),
    Case(
        "sparse-csr",
        "features",
        EITHER_TYPE,
        torch=_torch_features(lambda x: x.to_sparse_csr()),
    ),
    Case(
        "meta-device",
        "features",
        ERROR,
        torch=_torch_features(lambda x: x.to("meta"), lambda y: y.to("meta")),
    ),
    Case("requires-grad", "features", "ok", torch=_torch_features(_requires_grad)),
)


# --------------------------------------------------------------------------- expansion


def _expectation(case: Case, entry: Entry, x: np.ndarray, y: np.ndarray) -> Any:
    if entry.name in case.overrides:
        return case.overrides[entry.name]
    outcome = case.outcome
    if outcome == "ok":
        return Returns(entry.check(x, y, case.rtol))
    if isinstance(outcome, tuple) and outcome and outcome[0] == "either":
        raises = Raises(outcome[1], (case.name,), case.also)
        return Either(Returns(entry.check(x, y, case.rtol)), raises)
    return Raises(outcome, (case.name,), case.also)


def _probe(group: str, case: Case, backend: str, make: Callable[[], Made], entry: Entry) -> Probe:
    made = make()

    def call() -> Any:
        features, labels, _, _ = make()
        return entry.call(features, labels)

    expect = _expectation(case, entry, made[2], made[3])
    return Probe(f"{group}-{case.id}-{backend}-{entry.name}", call, expect)


def probes() -> list[Probe]:
    """Every label and feature case on every entry point that takes its backend."""
    out = []
    for group, cases in (("labels", LABEL_CASES), ("features", FEATURE_CASES)):
        for case in cases:
            for backend in ("numpy", "torch"):
                make = getattr(case, backend)
                if make is None:
                    continue
                for entry in ENTRIES:
                    if backend in entry.backends and (entry.labels or group == "features"):
                        out.append(_probe(group, case, backend, make, entry))
    return out + dask_probes()


def _unknown_rows(x: np.ndarray) -> Any:
    """A Dask array whose row chunks are unknown (NaN), as boolean indexing leaves them."""
    keep = da.from_array(np.ones(x.shape[0], dtype=bool), chunks=10)
    return da.from_array(x, chunks=(10, *x.shape[1:]))[keep]


def dask_probes() -> list[Probe]:
    """Dask arrays with unknown chunk sizes: refused with the `compute_chunk_sizes()` hint."""
    x, y = base()
    hint = ("compute_chunk_sizes()",)

    def call(features: Any, labels: Any) -> Callable[[], Any]:
        return lambda: stats_from_dask(features, labels, K, scheduler="synchronous")

    masked = da.from_array(_masked_rows(x), chunks=(10, -1))
    rows = ~_MASKED_ROWS
    return [
        Probe(
            "dask-unknown-chunks-features",
            call(_unknown_rows(x), y),
            Raises(ERROR, ("features",), hint),
        ),
        Probe(
            "dask-unknown-chunks-labels",
            call(da.from_array(x, chunks=(10, -1)), _unknown_rows(y)),
            Raises(ERROR, ("labels",), hint),
        ),
        Probe(
            "dask-unknown-chunks-both",
            call(_unknown_rows(x), _unknown_rows(y)),
            Raises(ERROR, ("features", "labels"), hint),
        ),
        Probe(
            "dask-masked-features",
            call(masked, y),
            Either(
                Returns(f.stats_check(x[rows], y[rows], K, 1e-10)), Raises(TYPE, ("features",))
            ),
        ),
        Probe("dask-numpy-features", call(x, y), Raises(TYPE, ("features",))),
    ]
