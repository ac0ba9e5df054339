"""What a benchmark ran on: CPU, GPU, library versions, BLAS kernel, load.

Everything here only reads: the environment is reported, never changed.
"""

from __future__ import annotations

import ctypes
import datetime
import importlib.metadata
import os
import platform
import sys
from typing import Any

__all__ = ["blas_info", "cpu_model", "load_average", "machine_info"]

#: Distributions whose versions are recorded when installed.
PACKAGES = (
    "ncgeom",
    "numpy",
    "scipy",
    "array-api-compat",
    "array-api-strict",
    "torch",
    "cupy",
    "cupy-cuda12x",
    "cupy-cuda13x",
    "threadpoolctl",
)

#: Environment variables that steer BLAS and thread pools (read, never set).
ENV_VARS = (
    "OPENBLAS_CORETYPE",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NVPL_BLAS_DEBUG_CPU_TYPE",
    "CUDA_VISIBLE_DEVICES",
)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    if "ncgeom" not in out:
        try:
            import ncgeom

            out["ncgeom"] = ncgeom.__version__
        except ImportError:
            pass
    return out


def _loaded_openblas() -> list[dict[str, Any]]:
    """OpenBLAS libraries loaded in this process: core kernel, threads, config.

    Reads /proc/self/maps (Linux) and asks each library through its exported
    ``*openblas_get_corename*`` functions, as threadpoolctl does.
    """
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:
        return []
    found = []
    for path in sorted(p for p in paths if p.startswith("/")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        entry: dict[str, Any] = {"library": path}
        for prefix in ("scipy_openblas_", "openblas_"):
            for suffix in ("64_", ""):
                for key, name, restype in (
                    ("kernel", "get_corename", ctypes.c_char_p),
                    ("config", "get_config", ctypes.c_char_p),
                    ("threads", "get_num_threads", ctypes.c_int),
                ):
                    func = getattr(lib, f"{prefix}{name}{suffix}", None)
                    if func is None or key in entry:
                        continue
                    func.restype = restype
                    value = func()
                    entry[key] = value.decode() if isinstance(value, bytes) else value
        if "kernel" in entry:
            found.append(entry)
    return found


def blas_info() -> dict[str, Any]:
    """Which BLAS NumPy calls, and which kernel it picked on this CPU.

    Uses threadpoolctl when it is installed; else asks the loaded OpenBLAS
    libraries directly; else falls back to NumPy's build configuration.
    """
    import numpy as np

    np.ones((2, 2)) @ np.ones((2, 2))  # make sure the BLAS is loaded
    try:
        import threadpoolctl

        pools = threadpoolctl.threadpool_info()
        return {
            "source": "threadpoolctl",
            "libraries": [
                {
                    k: pool.get(k)
                    for k in ("internal_api", "version", "architecture", "num_threads", "filepath")
                }
                for pool in pools
                if pool.get("user_api") == "blas"
            ],
        }
    except ImportError:
        pass
    loaded = _loaded_openblas()
    if loaded:
        return {"source": "openblas_get_corename", "libraries": loaded}
    try:
        config = np.show_config(mode="dicts")
        blas = config.get("Build Dependencies", {}).get("blas", {})
        return {"source": "numpy.show_config", "libraries": [blas]}
    except (TypeError, AttributeError):
        return {"source": "unknown", "libraries": []}


def _gpu_info(backend: str) -> dict[str, Any] | None:
    if backend == "torch":
        import torch

        if not torch.cuda.is_available():
            return None
        props = torch.cuda.get_device_properties(0)
        return {
            "name": props.name,
            "memory_bytes": int(props.total_memory),
            "cuda": torch.version.cuda,
            "allow_tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        }
    if backend == "cupy":
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        return {
            "name": name.decode() if isinstance(name, bytes) else str(name),
            "memory_bytes": int(props["totalGlobalMem"]),
            "cuda_runtime": int(cupy.cuda.runtime.runtimeGetVersion()),
        }
    return None


def machine_info(backend: str) -> dict[str, Any]:
    """Machine, libraries and environment of a run on `backend`.

    Returns
    -------
    dict
        JSON-ready: date (UTC, ISO 8601), host platform, CPU model, core
        counts, Python, package versions, the BLAS NumPy uses, the threads
        torch uses (torch runs), the GPU (GPU runs), the BLAS/thread
        environment variables that are set, and the load average.
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "python": sys.version.split()[0],
        "versions": _versions(),
        "blas": blas_info(),
        "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
        "load_average": load_average(),
    }
    if backend == "torch":
        import torch

        info["torch_threads"] = torch.get_num_threads()
    gpu = _gpu_info(backend)
    if gpu is not None:
        info["gpu"] = gpu
    return info
