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

from ncgeom._array import to_host


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


def _make(name: str) -> Backend:
    if name == "numpy":
        import array_api_compat.numpy as xp

        return Backend(name, xp)
    if name == "array_api_strict":
        import array_api_strict as xp

        return Backend(name, xp)
    if name == "array_api_strict_device1":
        import array_api_strict as xp

        return Backend(name, xp, xp.Device("device1"))
    if name == "torch":
        import array_api_compat.torch as xp

        return Backend(name, xp, "cpu")
    if name == "torch_cuda":
        import array_api_compat.torch as xp

        return Backend(name, xp, "cuda")
    if name == "cupy":
        import array_api_compat.cupy as xp

        return Backend(name, xp)
    if name == "jax":
        import jax

        # float64 arrays need x64 mode; without it JAX silently makes float32.
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as xp

        return Backend(name, xp, jax.devices("cpu")[0])
    raise ValueError(name)


BACKENDS = [
    pytest.param("numpy"),
    pytest.param("array_api_strict"),
    pytest.param("array_api_strict_device1"),
    pytest.param(
        "torch",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("torch") is None, reason="torch is not installed"
        ),
    ),
    pytest.param(
        "jax",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("jax") is None, reason="jax is not installed"
        ),
    ),
    pytest.param(
        "torch_cuda",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not _torch_cuda(), reason="no CUDA device")],
    ),
    pytest.param(
        "cupy",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not _cupy_usable(), reason="no usable CuPy")],
    ),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each array library (and device) the core must support."""
    return _make(request.param)


# JAX runs the core op by op, compiling every new operation and shape on first use:
# these cases cost 5-10 s each on two CPU cores, and each repeats, on another code
# path of the same functions, a JAX case that does run by default. They run with
# `-m slow`.
_SLOW_ON_JAX = {
    "tests/test_solve.py::test_full_form_on_every_backend[jax]",
    "tests/test_stats.py::test_float32_near_collapse_keeps_nc1_to_1e_3[jax-in_memory_report]",
    "tests/test_stats.py::test_float32_near_collapse_keeps_nc1_to_1e_3[jax-streaming]",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid in _SLOW_ON_JAX:
            item.add_marker(pytest.mark.slow)
