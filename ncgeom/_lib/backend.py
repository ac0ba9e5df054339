"""The one place that talks to array-api-compat.

Everything backend-specific lives here: namespace and device resolution, the
accumulation dtype, host transfer of final scalars, and segment sums (the
class-wise scatter-add) with fast paths for NumPy, torch and CuPy plus a
generic path that uses only the array-API standard.
"""

from __future__ import annotations

import functools
import importlib
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

import array_api_compat as compat
import numpy as np

__all__ = [
    "BACKENDS",
    "accumulation_dtype",
    "adds_in_place",
    "array_device",
    "backend_name",
    "backend_namespace",
    "check_container",
    "detach",
    "divide_in_place",
    "gather_rows",
    "has_native_segment_sum",
    "index_dtype",
    "is_host_data",
    "like",
    "namespace",
    "on_host",
    "quiet_division",
    "quiet_invalid",
    "resolve_namespace",
    "segment_count",
    "segment_sum",
    "subtract_rows",
    "to_host",
    "warn_caller",
    "wide_float",
    "x64_disabled",
]

Array = Any

#: The array libraries ncgeom supports, by name: the choices of the command
#: line's ``--backend``, the libraries the benchmarks time and the test suite's
#: ``backend`` fixture.
BACKENDS = ("numpy", "array-api-strict", "torch", "jax", "cupy")
_BACKEND_MODULES = {
    "numpy": "array_api_compat.numpy",
    "array-api-strict": "array_api_strict",
    "torch": "array_api_compat.torch",
    "jax": "jax.numpy",
    "cupy": "array_api_compat.cupy",
}


def backend_namespace(name: str) -> ModuleType:
    """The array-API namespace of the library called `name` (one of `BACKENDS`).

    For ``"jax"`` this turns on JAX's float64 mode (``jax_enable_x64``) for the
    process: without it JAX makes float32 arrays where float64 is asked for.

    Raises
    ------
    ValueError
        For a name not in `BACKENDS`.
    ImportError
        When the library is not installed.
    """
    if name not in _BACKEND_MODULES:
        msg = f"`backend` must be one of {BACKENDS}; got {name!r}"
        raise ValueError(msg)
    if name == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
    return importlib.import_module(_BACKEND_MODULES[name])


def namespace(**arrays: Array) -> ModuleType:
    """Return the common array namespace of keyword-named arrays.

    Every array passes `check_container` first.

    Raises
    ------
    TypeError
        If an argument is not an array, is a container whose values cannot be
        read as they are (see `check_container`), or the arrays come from
        different libraries; the message names the arguments.
    """
    spaces: dict[str, ModuleType] = {}
    for name, value in arrays.items():
        if value is None:
            continue
        check_container(value, name)
        try:
            spaces[name] = compat.array_namespace(value)
        except TypeError:
            msg = f"`{name}` must be an array of an array-API library; got {type(value).__name__}"
            raise TypeError(msg) from None
    if not spaces:
        msg = "no array given"
        raise TypeError(msg)
    names = list(spaces)
    first = spaces[names[0]]
    for name in names[1:]:
        if spaces[name] is not first:
            msg = (
                f"`{names[0]}` and `{name}` must come from the same array library; got "
                f"{backend_name(first)} and {backend_name(spaces[name])}"
            )
            raise TypeError(msg)
    devices = {name: array_device(arrays[name]) for name in names}
    for name in names[1:]:
        if devices[name] != devices[names[0]]:
            msg = (
                f"`{names[0]}` and `{name}` must be on the same device; got "
                f"{devices[names[0]]} and {devices[name]}"
            )
            raise ValueError(msg)
    return first


def resolve_namespace(xp: Any) -> ModuleType:
    """The array-API namespace of the module `xp` (NumPy's for None).

    The one resolver of every ``xp=`` argument. Accepts plain library modules
    (``numpy``, ``torch``, ``cupy``, ``jax.numpy``), which are wrapped through
    array-api-compat, as well as array-API namespaces.

    Raises
    ------
    TypeError
        For anything else (a string, an array, a module that makes no
        arrays), naming `xp`.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom._lib.backend import resolve_namespace
    >>> resolve_namespace(np).__name__
    'array_api_compat.numpy'
    >>> resolve_namespace("numpy")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: `xp` must be an array library module (...); got 'numpy' (str)
    """
    if xp is None:
        import array_api_compat.numpy as compat_numpy

        return compat_numpy
    problem = f"{xp!r} ({type(xp).__name__})"
    if isinstance(xp, ModuleType):
        try:
            return compat.array_namespace(xp.zeros(0))
        except (AttributeError, TypeError):
            problem = f"module {xp.__name__}, which makes no array-API arrays"
    msg = f"`xp` must be an array library module (numpy, torch, jax.numpy, ...); got {problem}"
    raise TypeError(msg) from None


def check_container(value: Any, name: str) -> None:
    """The container rule: an array whose values ncgeom reads exactly as they are.

    Refused with a `TypeError` naming `name`, because their values would be
    read wrongly or not at all:

    - NumPy masked arrays (the mask would be ignored: masked entries counted);
    - ``numpy.matrix`` (its operators are not array operators);
    - torch tensors with a sparse or other non-strided layout, and tensors on
      torch's ``meta`` device (they hold no values);
    - Dask arrays (use `ncgeom.stats_from_dask`).

    Called by `namespace` for every array argument and by the checks that
    copy host data, so that every entry point applies it. One ``isinstance``
    test per kind: free next to any array operation.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom.checks import check_container
    >>> check_container(np.ma.masked_array([0, 1], mask=[0, 1]), "labels")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: `labels` must not be a masked array: ncgeom does not apply masks; ...
    """
    problem = _container_problem(value, name)
    if problem:
        msg = f"`{name}` must {problem}"
        raise TypeError(msg)


def _container_problem(value: Any, name: str) -> str:
    """What is wrong with the container `value` ("" when nothing is)."""
    if isinstance(value, np.ndarray):
        if isinstance(value, np.ma.MaskedArray):
            return (
                "not be a masked array: ncgeom does not apply masks; drop the masked "
                f"samples from every array first, or pass `{name}.data` to use every value"
            )
        if isinstance(value, np.matrix):
            return f"be an array, not a numpy.matrix; pass `np.asarray({name})`"
        return ""
    if compat.is_torch_array(value):
        import torch

        if value.layout is not torch.strided:
            layout = value.layout
            return f"be a dense (strided) tensor; got layout {layout}: pass `{name}.to_dense()`"
        if value.is_meta:
            return "hold values; got a tensor on torch's meta device, which has none"
        return ""
    if compat.is_dask_array(value):
        return (
            "be an in-memory array; got a Dask array: pass Dask arrays to ncgeom.stats_from_dask"
        )
    return ""


def is_host_data(value: Any) -> bool:
    """Whether `value` is host data (a NumPy array, a list, a number, ...) rather
    than an array of another array library (torch, CuPy, ...).

    The one test of "host data or array?": host data is copied to wherever the
    computation runs; an array decides where it runs.
    """
    return isinstance(value, np.ndarray) or not compat.is_array_api_obj(value)


def like(value: Any, reference: Array, dtype: Any = None) -> Array:
    """Host data `value` as an array in the namespace, on the device and in the
    dtype (or `dtype`) of `reference`."""
    xp = namespace(reference=reference)
    return xp.asarray(
        value, dtype=reference.dtype if dtype is None else dtype, device=array_device(reference)
    )


def array_device(x: Array) -> Any:
    """The device an array lives on."""
    return compat.device(x)


def detach(x: Array) -> Array:
    """`x` without its autograd history (a torch tensor that requires grad);
    any other array as it is. Statistics never keep a training step's graph."""
    if compat.is_torch_array(x) and x.requires_grad:
        return x.detach()
    return x


def backend_name(xp: ModuleType) -> str:
    """Short name of a namespace: 'numpy', 'torch', 'cupy', 'array_api_strict', ..."""
    name = xp.__name__
    if name.startswith("array_api_compat."):
        name = name.split(".")[1]
    return name.split(".")[0]


def x64_disabled(xp: ModuleType) -> bool:
    """Whether `xp` is JAX's namespace with its 64-bit mode (``jax_enable_x64``) off.

    JAX then makes int32 and float32 arrays where int64 and float64 are asked
    for, with a warning for every request.
    """
    if not compat.is_jax_namespace(xp):
        return False
    import jax

    return not jax.config.read("jax_enable_x64")


def index_dtype(xp: ModuleType) -> Any:
    """The integer dtype of counts and labels: int64, or int32 on JAX without
    its 64-bit mode (JAX's own integer dtype there)."""
    return xp.int32 if x64_disabled(xp) else xp.int64


def wide_float(xp: ModuleType) -> Any:
    """The widest floating dtype `xp` makes: float64, or float32 on JAX
    without its 64-bit mode."""
    return xp.float32 if x64_disabled(xp) else xp.float64


def accumulation_dtype(xp: ModuleType, dtype: Any) -> Any:
    """Floating dtype in which arrays of the real floating `dtype` are accumulated.

    The dtype rule of ncgeom's statistics:

    - float16 and bfloat16 accumulate in float32;
    - float32 accumulates in float32 (its class means are summed in float64
      where float32 sums would cost precision, see ``docs/accuracy.md``);
    - float64 accumulates in float64;
    - wider types (NumPy's ``longdouble`` on x86-64) accumulate in float64,
      with a warning that precision beyond float64 is dropped. Where
      ``longdouble`` is float64 (Windows, ARM macOS) nothing is dropped and
      nothing is said;
    - on JAX without its 64-bit mode, float64 is not available: float32, with
      a warning that says how to turn the mode on.

    Integer, boolean and complex dtypes are refused by the checks before
    this (`check_features`, `check_float_dtype`).
    """
    if dtype == xp.float64:
        if x64_disabled(xp):
            warn_caller(
                "float64 statistics need JAX's 64-bit mode, which is off: accumulating in "
                "float32; turn it on with jax.config.update('jax_enable_x64', True)"
            )
            return xp.float32
        return xp.float64
    if _wider_than_float64(dtype):
        warn_caller(
            f"{np.dtype(dtype).name} features are accumulated in float64: precision (and "
            "range) beyond float64 is dropped"
        )
        return xp.float64
    return xp.float32


def _wider_than_float64(dtype: Any) -> bool:
    """Whether `dtype` is a NumPy floating type more precise than float64."""
    try:
        kind = np.dtype(dtype)
    except TypeError:
        return False
    return kind.kind == "f" and np.finfo(kind).eps < np.finfo(np.float64).eps


def warn_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn with the location of the first caller outside ncgeom and its plugins.

    The warning points at the user's line whichever public function (and
    however many internal calls) led here.
    """
    frame = sys._getframe(1)
    level = 2
    while frame is not None and _is_ours(frame.f_globals.get("__name__", "")):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)


def _is_ours(module: str) -> bool:
    """Whether `module` belongs to ncgeom or to one of its plugins (``ncgeom_*``)."""
    return module == "ncgeom" or module.startswith(("ncgeom.", "ncgeom_"))


def to_host(x: Array) -> np.ndarray:
    """Copy an array (usually a handful of final scalars) to a NumPy array."""
    if isinstance(x, np.ndarray):
        return x
    if compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if compat.is_cupy_array(x):
        return x.get()
    try:
        return np.asarray(x)
    except (TypeError, ValueError, RuntimeError):
        pass
    try:
        # Arrays off the host: DLPack's standard request for a host copy.
        return np.from_dlpack(x, device="cpu")
    except TypeError:  # NumPy before 2.1 takes no `device`
        return np.from_dlpack(compat.to_device(x, "cpu"))


def quiet_invalid() -> np.errstate:
    """Silence NumPy's "invalid value" and overflow warnings (NaN made from Inf,
    Inf from large finite numbers) in a block whose results are checked for
    NaN and Inf afterwards. Other libraries do not warn."""
    return np.errstate(invalid="ignore", over="ignore")


def quiet_division() -> np.errstate:
    """Silence NumPy's division warnings in a block whose infinities and NaNs
    are flagged by other means. Other libraries do not warn."""
    return np.errstate(divide="ignore", invalid="ignore")


def gather_rows(table: Array, index: Array, xp: ModuleType) -> Array:
    """``table[index]`` along the first axis, for a valid non-negative integer `index`.

    On torch a bare ``index_select``: the namespace's ``take`` also wraps
    negative indices, two more kernels per call that a validated index does
    not need.
    """
    if compat.is_torch_namespace(xp):
        return table.index_select(0, index)
    return xp.take(table, index, axis=0)


def subtract_rows(x: Array, table: Array, index: Array, xp: ModuleType) -> Array:
    """``x - table[index]`` (rows of `table` gathered by a valid index), as a new array.

    The gathered rows are a temporary the result is written over (NumPy,
    torch), so a call makes one array of the size of `x`, not two; the
    rounding is that of ``x - table[index]``.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom._lib.backend import resolve_namespace, subtract_rows
    >>> table = np.array([[1.0, 1.0], [0.0, 2.0]])
    >>> subtract_rows(np.ones((3, 2)), table, np.array([1, 0, 1]), resolve_namespace(np)).tolist()
    [[1.0, -1.0], [0.0, 0.0], [1.0, -1.0]]
    """
    rows = gather_rows(table, index, xp)
    if isinstance(rows, np.ndarray):
        return np.subtract(x, rows, out=rows)
    if compat.is_torch_namespace(xp):
        import torch

        return torch.sub(x, rows, out=rows)
    return x - rows


def writes_rows_in_place(xp: ModuleType) -> bool:
    """Whether ``table[index] = rows`` with an integer array `index` works (NumPy, torch, CuPy)."""
    return bool(
        compat.is_numpy_namespace(xp)
        or compat.is_torch_namespace(xp)
        or compat.is_cupy_namespace(xp)
    )


def put_rows(
    table: Array, index: Array, rows: Array, xp: ModuleType, *, in_place: bool = False
) -> Array:
    """`table` with ``table[index[i]] = rows[i]``, for unique, valid `index`:
    a copy, or `table` itself written with `in_place`. Only where
    `writes_rows_in_place` (the standard has no assignment by an index array).

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom._lib.backend import put_rows, resolve_namespace
    >>> xp = resolve_namespace(np)
    >>> put_rows(np.zeros(4), np.array([1, 3]), np.array([5.0, 7.0]), xp).tolist()
    [0.0, 5.0, 0.0, 7.0]
    """
    if not writes_rows_in_place(xp):
        msg = f"{backend_name(xp)} arrays cannot be written by an index array"
        raise TypeError(msg)
    out = table if in_place else (table.clone() if compat.is_torch_namespace(xp) else table.copy())
    out[index] = rows
    return out


def divide_in_place(a: Array, b: Array, xp: ModuleType) -> Array:
    """``a / b`` (broadcast to the shape and dtype of `a`), written over `a`
    where the library allows it (NumPy, torch, CuPy): for an `a` the caller
    owns and no longer needs."""
    if isinstance(a, np.ndarray) or compat.is_torch_namespace(xp) or compat.is_cupy_namespace(xp):
        a /= b
        return a
    return a / b


def segment_count(labels: Array, num_segments: int, xp: ModuleType) -> Array:
    """Number of occurrences of each label in ``range(num_segments)`` (`index_dtype`).

    On torch and CuPy a scatter-add of ones, not ``bincount``: their bincount
    reads the largest label back to the host to size its output, which would
    stall the device queue once per batch.
    """
    if compat.is_torch_namespace(xp):
        out = xp.zeros(num_segments, dtype=xp.int64, device=labels.device)
        ones = xp.ones(1, dtype=xp.int64, device=labels.device).expand(labels.shape[0])
        return out.index_add_(0, labels.to(dtype=xp.int64), ones)
    if compat.is_numpy_namespace(xp):
        return np.bincount(np.asarray(labels), minlength=num_segments).astype(np.int64)
    if compat.is_cupy_namespace(xp):
        cupy = _cupy()
        # CUDA's integer atomicAdd covers uint64 (not int64); counts fit either.
        out = cupy.zeros(num_segments, dtype=cupy.uint64)
        cupy.add.at(out, labels, cupy.ones(labels.shape[0], dtype=cupy.uint64))
        return out.astype(cupy.int64)
    bounds = _segment_bounds(xp.sort(labels), num_segments, xp)
    return xp.astype(bounds[1:] - bounds[:-1], index_dtype(xp))


def on_host(xp: ModuleType, device: Any = None) -> bool:
    """Whether arrays of `xp` on `device` live in host (CPU) memory."""
    if compat.is_cupy_namespace(xp):
        return False
    if compat.is_torch_namespace(xp):
        return device is None or getattr(device, "type", str(device)) == "cpu"
    return True


def is_numpy(xp: ModuleType) -> bool:
    """Whether `xp` is NumPy's namespace (plain or through array-api-compat)."""
    return bool(compat.is_numpy_namespace(xp))


def has_native_segment_sum(xp: ModuleType) -> bool:
    """Whether `segment_sum` has a compiled path on `xp` (no temporaries of the input's size)."""
    return bool(
        compat.is_torch_namespace(xp)
        or compat.is_numpy_namespace(xp)
        or compat.is_cupy_namespace(xp)
        or compat.is_jax_namespace(xp)
    )


def adds_in_place(xp: ModuleType) -> bool:
    """Whether ``segment_sum(..., into=total)`` adds to `total` in place, at a
    cost that does not depend on the number of segments.

    True on torch (``index_add_``), CuPy (``add.at``) and NumPy where SciPy's
    compiled sparse kernel is available. Elsewhere each call makes a table of
    all the segments (and adds it), so callers pass more rows per call where
    there are many segments.
    """
    return bool(
        compat.is_torch_namespace(xp)
        or compat.is_cupy_namespace(xp)
        or (compat.is_numpy_namespace(xp) and _scatter_kernel() is not None)
    )


def segment_sum(
    values: Array, labels: Array, num_segments: int, xp: ModuleType, *, into: Array | None = None
) -> Array:
    """Sum the rows of `values` that share a label: ``out[k] = sum(values[labels == k])``.

    Costs O(N * row size) on every backend (never a one-hot product over the
    segments). `values` is 1-D (N,) or 2-D (N, d); the result has the dtype of
    `values` and shape (num_segments,) or (num_segments, d). `labels` must lie
    in ``[0, num_segments)``.

    With `into`, an array of that shape and dtype which the caller owns, the
    sums are added to it and the total is returned (use the returned array):
    in place on torch (one kernel, no temporary), CuPy and NumPy (see
    `adds_in_place`); a new array on libraries without in-place updates.

    Examples
    --------
    >>> import numpy as np
    >>> from ncgeom._lib.backend import resolve_namespace, segment_sum
    >>> xp = resolve_namespace(np)
    >>> values = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    >>> segment_sum(values, np.array([2, 0, 2]), 3, xp).tolist()
    [[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]]
    """
    if into is not None:
        return _segment_sum_into(into, values, labels, num_segments, xp)
    shape = (num_segments, *values.shape[1:])
    if compat.is_torch_namespace(xp):
        out = xp.zeros(shape, dtype=values.dtype, device=values.device)
        return out.index_add_(0, labels.to(dtype=xp.int64), values)
    if compat.is_numpy_namespace(xp):
        values = np.asarray(values)
        out = np.zeros(shape, dtype=values.dtype)
        return _numpy_segment_sum_into(out, values, np.asarray(labels), num_segments)
    if compat.is_cupy_namespace(xp):
        cupy = _cupy()
        out = cupy.zeros(shape, dtype=values.dtype)
        cupy.add.at(out, labels, values)
        return out
    if compat.is_jax_namespace(xp):
        import jax

        return jax.ops.segment_sum(values, labels, num_segments=num_segments)
    return _generic_segment_sum(values, labels, num_segments, xp)


def _segment_sum_into(
    into: Array, values: Array, labels: Array, num_segments: int, xp: ModuleType
) -> Array:
    """`into` plus the segment sums of `values`, in place where the library allows."""
    if compat.is_torch_namespace(xp):
        return into.index_add_(0, labels.to(dtype=xp.int64), values)
    if compat.is_cupy_namespace(xp):
        _cupy().add.at(into, labels, values)
        return into
    if compat.is_numpy_namespace(xp):
        return _numpy_segment_sum_into(into, np.asarray(values), np.asarray(labels), num_segments)
    return into + segment_sum(values, labels, num_segments, xp)


def _numpy_segment_sum_into(
    into: np.ndarray, values: np.ndarray, labels: np.ndarray, num_segments: int
) -> np.ndarray:
    """Add the segment sums of `values` to `into` (NumPy), in place.

    With SciPy, its compiled kernel for ``Y += A X`` with A column-sparse
    (compressed sparse columns, one entry per column: the indicator of the
    labels) adds each row of `values` to its segment's row of `into`
    directly: no table of all the segments per call, so the cost is that of
    the rows whatever the number of segments. Its rounding is that of adding
    the rows in order (each is multiplied by exactly 1).
    """
    kernel = _scatter_kernel()
    if (
        kernel is not None
        and values.dtype == into.dtype
        and values.dtype in (np.float32, np.float64)
        and into.flags.c_contiguous
        and into.flags.writeable
    ):
        num = labels.shape[0]
        if num == 0:
            return into
        index = np.asarray(labels, dtype=np.intp)
        # The kernel writes wherever the labels point: they must lie in range.
        if int(index.min()) < 0 or int(index.max()) >= num_segments:
            msg = (
                f"`labels` must lie in [0, {num_segments}); got values from "
                f"{int(index.min())} to {int(index.max())}"
            )
            raise ValueError(msg)
        width = 1 if values.ndim == 1 else int(values.shape[1])
        kernel(
            num_segments,
            num,
            width,
            np.arange(num + 1, dtype=np.intp),
            index,
            np.ones(num, dtype=values.dtype),
            np.ascontiguousarray(values).reshape(-1),
            into.reshape(-1),
        )
        return into
    into += _numpy_segment_sum(values, labels, num_segments)
    return into


@functools.cache
def _scatter_kernel() -> Callable[..., None] | None:
    """SciPy's compiled ``Y += A X`` for a sparse A in compressed sparse columns
    (``csc_matvecs(n_row, n_col, n_vecs, indptr, indices, data, X, Y)``), or
    None when SciPy or the kernel is not there or does not add in place.

    The kernel is internal to ``scipy.sparse`` (it computes the public
    ``csc_matrix @ dense``, which always allocates its result), so it is
    checked once on a small example before it is trusted.
    """
    try:
        from scipy.sparse import _sparsetools

        kernel = _sparsetools.csc_matvecs
    except (ImportError, AttributeError):
        return None
    out = np.ones((3, 2))
    values = np.arange(6.0).reshape(3, 2)
    try:
        kernel(
            3,
            3,
            2,
            np.arange(4, dtype=np.intp),
            np.array([2, 0, 2], dtype=np.intp),
            np.ones(3),
            values.reshape(-1),
            out.reshape(-1),
        )
    except Exception:  # any failure: the public product instead
        return None
    return kernel if out.tolist() == [[3.0, 4.0], [1.0, 1.0], [5.0, 7.0]] else None


def _numpy_segment_sum(values: np.ndarray, labels: np.ndarray, num_segments: int) -> np.ndarray:
    """A new table of the segment sums (NumPy; SciPy's public product where present)."""
    if values.ndim == 1:
        return np.bincount(labels, weights=values, minlength=num_segments).astype(values.dtype)
    try:
        from scipy import sparse
    except ImportError:
        out = np.zeros((num_segments, values.shape[1]), dtype=values.dtype)
        np.add.at(out, labels, values)
        return out
    # A (N, K) CSR indicator transposed is CSC; its product with dense rows is a
    # compiled scatter-add: out[labels[i]] += values[i], no sort, no K factor.
    n = labels.shape[0]
    indicator = sparse.csr_matrix(
        (np.ones(n, dtype=values.dtype), labels, np.arange(n + 1)),
        shape=(n, num_segments),
    )
    return np.asarray(indicator.T @ values)


def _segment_bounds(sorted_labels: Array, num_segments: int, xp: ModuleType) -> Array:
    edges = xp.arange(num_segments + 1, dtype=sorted_labels.dtype, device=sorted_labels.device)
    return xp.searchsorted(sorted_labels, edges)


def _generic_segment_sum(values: Array, labels: Array, num_segments: int, xp: ModuleType) -> Array:
    """Segment sums with standard operations only: sort by label, then a
    segmented scan by doubling (Hillis and Steele) and the last entry of each
    segment.

    Each sum is a tree of additions within its own segment, so its rounding is
    relative to the segment's values (as in pairwise summation), whatever the
    other segments hold: the difference of one cumulative sum over all rows
    would round every segment at the size of the running total (positive
    squared norms: the total of all classes). Costs ceil(log2(N)) vectorised
    passes, a number known from the shape: no read of the device.
    """
    order = xp.argsort(labels, stable=True)
    ordered = xp.take(labels, order)
    bounds = _segment_bounds(ordered, num_segments, xp)
    sizes = bounds[1:] - bounds[:-1]
    scan = xp.take(values, order, axis=0)
    num = int(ordered.shape[0])
    step = 1
    while step < num:
        same = ordered[step:] == ordered[:-step]
        if scan.ndim > 1:
            same = same[:, None]
        earlier = xp.where(same, scan[:-step, ...], xp.zeros_like(scan[:-step, ...]))
        scan = xp.concat([scan[:step, ...], scan[step:, ...] + earlier], axis=0)
        step *= 2
    last = xp.clip(bounds[1:] - 1, min=0, max=max(num - 1, 0))
    shape = (num_segments, *values.shape[1:])
    if num == 0:
        return xp.zeros(shape, dtype=values.dtype, device=values.device)
    ends = xp.take(scan, last, axis=0)
    present = sizes > 0
    if ends.ndim > 1:
        present = present[:, None]
    return xp.where(present, ends, xp.zeros_like(ends))


def _cupy() -> ModuleType:
    import cupy

    return cupy
