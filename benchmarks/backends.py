"""Array libraries the benchmarks run on: data, device sync, floors and memory.

A `BenchBackend` knows how to make random data directly on its device, how to
wait for the device before a clock is read, how to run the floor operations
(one read of X, one product, one Gram, one scatter-add) and how to measure the
peak of the extra memory a call allocates.
"""

from __future__ import annotations

import importlib
import importlib.util
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from ncgeom._lib.backend import BACKENDS as LIBRARY_BACKENDS

__all__ = ["BACKENDS", "BackendUnavailable", "BenchBackend", "make_backend"]

#: The libraries of ncgeom's `BACKENDS` that the benchmarks time. JAX is left
#: out: it dispatches asynchronously and the results timed here (`ClassStats`,
#: reports) are not JAX arrays, so nothing could wait for its work to finish and
#: the clock would measure dispatch only.
BACKENDS = tuple(name for name in LIBRARY_BACKENDS if name != "jax")

Array = Any


class BackendUnavailable(RuntimeError):
    """The requested array library (or its device) is not usable here."""


@dataclass
class BenchBackend:
    """One array library on one device, as the benchmarks use it.

    Attributes
    ----------
    name : str
        One of `BACKENDS`.
    xp : module
        The array-API namespace (through array-api-compat where needed).
    device : Any
        Device arrays are created on (None for the library's default).
    gpu : bool
        Whether the device is a GPU (selects the GPU targets).
    """

    name: str
    xp: ModuleType
    device: Any = None
    gpu: bool = False
    _seed: int = field(default=0, repr=False)

    # ------------------------------------------------------------------ sync
    def sync(self) -> None:
        """Wait until all work queued on the device has finished."""
        if not self.gpu:
            return
        if self.name == "torch":
            import torch

            torch.cuda.synchronize(self.device)
        elif self.name == "cupy":
            import cupy

            cupy.cuda.get_current_stream().synchronize()

    # ------------------------------------------------------------------ data
    def normal(self, shape: tuple[int, ...], seed: int) -> Array:
        """Standard normal float32 array of `shape`, generated on the device."""
        if self.name == "torch":
            import torch

            gen = torch.Generator(device=self.device).manual_seed(seed)
            return torch.randn(shape, generator=gen, device=self.device, dtype=torch.float32)
        if self.name == "cupy":
            import cupy

            return cupy.random.default_rng(seed).standard_normal(shape, dtype=cupy.float32)
        values = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
        return self.from_numpy(values)

    def integers(self, high: int, size: int, seed: int) -> Array:
        """Uniform int64 labels in ``[0, high)``, generated on the device."""
        if self.name == "torch":
            import torch

            gen = torch.Generator(device=self.device).manual_seed(seed)
            return torch.randint(high, (size,), generator=gen, device=self.device)
        if self.name == "cupy":
            import cupy

            rng = cupy.random.default_rng(seed)
            return rng.integers(0, high, size=size, dtype=cupy.int64)
        labels = np.random.default_rng(seed).integers(0, high, size=size, dtype=np.int64)
        return self.from_numpy(labels)

    def from_numpy(self, values: np.ndarray) -> Array:
        """Copy a NumPy array onto this backend's device."""
        if self.name == "numpy":
            return values
        return self.xp.asarray(values, device=self.device)

    # ---------------------------------------------------------------- floors
    def read(self, x: Array) -> Array:
        """One pass over `x`: its column sums."""
        return self.xp.sum(x, axis=0)

    def scatter_add(self, x: Array, labels: Array, rows: int) -> Array | None:
        """The library's fastest scatter-add of the rows of `x` into `rows` rows.

        torch ``index_add_``, CuPy ``cupyx.scatter_add``; on NumPy SciPy's
        product of the (K, N) class indicator with X,
        ``csr_matrix((ones, (labels, arange(N))), shape=(K, N)) @ x`` (3 to
        10 times faster than ``np.add.at``, which stands in without SciPy);
        None where the library has none (array-api-strict).
        """
        if self.name == "torch":
            out = self.xp.zeros((rows, x.shape[1]), dtype=x.dtype, device=x.device)
            return out.index_add_(0, labels, x)
        if self.name == "cupy":
            import cupy
            import cupyx

            out = cupy.zeros((rows, x.shape[1]), dtype=x.dtype)
            cupyx.scatter_add(out, labels, x)
            return out
        if self.name == "numpy":
            try:
                from scipy import sparse
            except ImportError:
                out = np.zeros((rows, x.shape[1]), dtype=x.dtype)
                np.add.at(out, labels, x)
                return out
            num = labels.shape[0]
            ones = np.ones(num, dtype=x.dtype)
            return sparse.csr_matrix((ones, (labels, np.arange(num))), shape=(rows, num)) @ x
        return None

    def scatter_add_transposed(self, x: Array, labels: Array, rows: int) -> Array | None:
        """NumPy only (None elsewhere): the same product with the transposed
        indicator built directly in compressed form, ``csr_matrix((ones,
        labels, arange(N + 1)), shape=(N, K)).T @ x``, which skips the sort of
        building from coordinates: the fastest scatter-add known on NumPy."""
        if self.name != "numpy" or not self.has_transposed_scatter_add:
            return None
        from scipy import sparse

        num = labels.shape[0]
        ones = np.ones(num, dtype=x.dtype)
        indicator = sparse.csr_matrix((ones, labels, np.arange(num + 1)), shape=(num, rows))
        return indicator.T @ x

    @property
    def has_transposed_scatter_add(self) -> bool:
        """Whether `scatter_add_transposed` runs here (NumPy with SciPy)."""
        return self.name == "numpy" and importlib.util.find_spec("scipy") is not None

    @property
    def has_scatter_add(self) -> bool:
        """Whether `scatter_add` has a native implementation here."""
        return self.name != "array-api-strict"

    # ---------------------------------------------------------------- memory
    @property
    def memory_tracker(self) -> str | None:
        """How `peak_extra_bytes` measures, or None where it cannot."""
        if self.name in ("numpy", "array-api-strict"):
            return "tracemalloc"
        if self.name == "torch" and self.gpu:
            return "torch.cuda.max_memory_allocated"
        if self.name == "cupy":
            return "cupy memory hook"
        return None

    def peak_extra_bytes(self, fn: Callable[[], Any]) -> int | None:
        """Peak bytes allocated by ``fn()`` above what was allocated before it.

        The result of `fn` is dropped before returning. None where the library
        offers no allocation statistics for the device (torch on CPU).
        """
        tracker = self.memory_tracker
        if tracker is None:
            return None
        self.sync()
        if tracker == "tracemalloc":
            was_tracing = tracemalloc.is_tracing()
            if not was_tracing:
                tracemalloc.start()
            tracemalloc.reset_peak()
            base, _ = tracemalloc.get_traced_memory()
            fn()
            _, peak = tracemalloc.get_traced_memory()
            if not was_tracing:
                tracemalloc.stop()
            return max(0, peak - base)
        if self.name == "torch":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            fn()
            self.sync()
            return max(0, torch.cuda.max_memory_allocated(self.device) - base)
        hook = _cupy_peak_hook()
        with hook:
            fn()
            self.sync()
        return hook.peak


def _cupy_peak_hook() -> Any:
    """A CuPy memory hook that records the peak of bytes in use from the pool."""
    from cupy.cuda import memory_hook

    class PeakHook(memory_hook.MemoryHook):
        name = "NcgeomPeakHook"

        def __init__(self) -> None:
            self.used = 0
            self.peak = 0

        def malloc_postprocess(self, **kwargs: Any) -> None:
            self.used += int(kwargs["mem_size"])
            self.peak = max(self.peak, self.used)

        def free_postprocess(self, **kwargs: Any) -> None:
            self.used -= int(kwargs["mem_size"])

    return PeakHook()


def make_backend(name: str) -> BenchBackend:
    """The `BenchBackend` called `name`, on a GPU where the library has one.

    torch runs on CUDA when a device is present, else on the CPU; CuPy needs a
    GPU.

    Raises
    ------
    BackendUnavailable
        If the library is not installed, or (CuPy) no GPU is usable.
    ValueError
        If `name` is not one of `BACKENDS`.
    """
    if name not in BACKENDS:
        msg = f"`backend` must be one of {BACKENDS}; got {name!r}"
        raise ValueError(msg)
    module = {"array-api-strict": "array_api_strict"}.get(name, name)
    if importlib.util.find_spec(module) is None:
        msg = f"{name} is not installed"
        raise BackendUnavailable(msg)
    if name == "numpy":
        return BenchBackend(name, importlib.import_module("array_api_compat.numpy"))
    if name == "array-api-strict":
        return BenchBackend(name, importlib.import_module("array_api_strict"))
    if name == "torch":
        import torch

        xp = importlib.import_module("array_api_compat.torch")
        if torch.cuda.is_available():
            return BenchBackend(name, xp, torch.device("cuda"), gpu=True)
        return BenchBackend(name, xp, torch.device("cpu"))
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CuPy raises its own CUDA errors without a GPU
        msg = f"cupy cannot use a GPU here ({type(exc).__name__}: {exc})"
        raise BackendUnavailable(msg) from None
    if count < 1:
        msg = "cupy finds no GPU"
        raise BackendUnavailable(msg)
    return BenchBackend(name, importlib.import_module("array_api_compat.cupy"), gpu=True)
