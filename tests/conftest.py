"""Backend fixture: every core function is tested on each array library present.

numpy, array-api-strict, torch (CPU) and JAX (CPU, float64 enabled) always run;
cupy and torch on CUDA run where a GPU is present and are skipped with a reason
elsewhere.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from ncgeom._lib.backend import BACKENDS, backend_namespace, to_host


@dataclass(frozen=True)
class Backend:
    """An array library plus the device the tests put arrays on."""

    name: str
    xp: ModuleType
    device: Any = None

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        """Move a NumPy array (or nested list) onto this backend, keeping its dtype."""
        x = np.asarray(x)
        if dtype is None:
            dtype = getattr(self.xp, str(x.dtype))
        return self.xp.asarray(x, dtype=dtype, device=self.device)

    def to_numpy(self, x: Any) -> np.ndarray:
        return to_host(x)


def _torch_cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def _cupy_usable() -> bool:
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _usable(name: str, device: Any) -> str | None:
    """Why `name` on `device` cannot run here, or None when it can."""
    if name == "cupy":
        return None if _cupy_usable() else "no usable CuPy"
    module = {"array-api-strict": "array_api_strict"}.get(name, name)
    if importlib.util.find_spec(module) is None:
        return f"{name} is not installed"
    if device == "cuda" and not _torch_cuda():
        return "no CUDA device"
    return None


def _make(name: str, device: Any) -> Backend:
    """The `Backend` of library `name` (from ncgeom's `BACKENDS`) on `device`."""
    xp = backend_namespace(name)  # JAX: float64 mode, as the tests need float64
    if name == "array-api-strict" and device is not None:
        device = xp.Device(device)
    if name == "jax":
        import jax

        device = jax.devices(device)[0]
    return Backend(name, xp, device)


#: The devices the tests put each library's arrays on: the default one, a
#: second array-api-strict device (results must stay on the input's device),
#: and the GPUs where present.
DEVICES = {
    "numpy": [None],
    "array-api-strict": [None, "device1"],
    "torch": ["cpu", "cuda"],
    "jax": ["cpu"],
    "cupy": [None],
}
_GPU = {("torch", "cuda"), ("cupy", None)}


def _param(name: str, device: Any) -> Any:
    """One fixture case; its id ("torch_cuda", "array_api_strict_device1", ...)
    names the library, and the device where it is not the first one."""
    ident = name.replace("-", "_")
    if device is not None and device != DEVICES[name][0]:
        ident += f"_{device}"
    marks = [pytest.mark.gpu] if (name, device) in _GPU else []
    reason = _usable(name, device)
    if reason is not None:
        marks.append(pytest.mark.skip(reason=reason))
    return pytest.param((name, device), id=ident, marks=marks)


BACKEND_CASES = [_param(name, device) for name in BACKENDS for device in DEVICES[name]]


@pytest.fixture(params=BACKEND_CASES)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each array library (and device) the core must support."""
    return _make(*request.param)


# JAX runs the core op by op, compiling every new operation and shape on first use:
# these cases cost 5-10 s each on two CPU cores, and each repeats, on another code
# path of the same functions, a JAX case that does run by default. They run with
# `-m slow`.
_SLOW_ON_JAX = {
    "tests/test_solve.py::test_full_form_on_every_backend[jax]",
    "tests/test_stats.py::test_float32_near_collapse_keeps_nc1_to_1e_3[jax-in_memory_report]",
    "tests/test_stats.py::test_float32_near_collapse_keeps_nc1_to_1e_3[jax-streaming]",
    "tests/test_large_k.py::test_many_classes_on_every_backend[jax]",
    "tests/test_reference_cases.py::test_cdnv_in_float32_with_a_large_common_mean[jax]",
    "tests/test_solve.py::test_float32_default_tolerance[jax]",
    "tests/test_solve.py::test_kkt_residual_is_the_documented_quantity[jax]",
    "tests/test_solve.py::test_published_vectors[jax-imbalanced-collapsed]",
    "tests/test_solve.py::test_published_vectors[jax-imbalanced-full]",
    "tests/test_solve.py::test_published_vectors[jax-minority-collapse-full]",
    "tests/test_solve.py::test_published_vectors[jax-balanced-collapsed]",
    "tests/test_stats.py::test_half_precision_accumulates_in_float32[jax]",
    "tests/test_theory_metrics.py::test_blocked_equals_one_shot[jax]",
    "tests/test_solve.py::test_full_and_collapsed_agree_with_weights_and_logit_adjustment[jax]",
    "tests/test_solve.py::test_seed_reproduces_and_stays_within_the_batch[jax]",
    "tests/test_solve.py::test_spurious_stationary_value_is_the_optimum_in_two_dimensions[jax]",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid in _SLOW_ON_JAX:
            item.add_marker(pytest.mark.slow)
