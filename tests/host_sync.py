"""Record the torch calls that would make the host wait for a CUDA device.

On a GPU, kernels run asynchronously: the host queues work and moves on. A
call that needs a value on the host (``item``, ``bool(t)``, ``t.cpu()``), whose
output size depends on the data (``nonzero``, boolean-mask indexing,
``bincount``, which reads the largest label), that reads a solver's status
flag (``linalg.eigh`` and the other factorisations), or that copies host data into a
device tensor (``torch.asarray([...])``, indexing with a Python list) makes the
host wait until the queue drains. `HostSyncAudit` is a `TorchFunctionMode`
that records each such call with the number of elements involved, so tests on
CPU tensors can check the GPU contract: a fixed number of host reads per call,
none inside loops over chunks, batches or blocks, and never a feature-sized
transfer. It also counts the calls that launch device work (`kernels`): the
host pays a launch for each, so the work queued per chunk is a handful of
calls, not a loop over classes or rows.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["HostSyncAudit", "Sync"]

#: Calls that hand a tensor's values to the host. (``numpy`` is left out: it
#: only works on host tensors, after the ``cpu`` call that made the transfer.)
READS = frozenset(
    {
        "item",
        "tolist",
        "cpu",
        "__bool__",
        "__int__",
        "__float__",
        "__index__",
        "__array__",
        "__repr__",
        "__format__",
    }
)
#: Calls whose output shape depends on the data: torch reads a size back first.
DATA_SHAPED = frozenset(
    {
        "nonzero",
        "argwhere",
        "unique",
        "unique_consecutive",
        "masked_select",
        "bincount",
        "equal",
        "allclose",
    }
)
#: Factorisations that read their solver's status flag back to raise on failure
#: (torch documents each: "synchronizes that device with the CPU").
CHECKED = frozenset(
    {
        "linalg_eigh",
        "linalg_eigvalsh",
        "linalg_eig",
        "linalg_eigvals",
        "linalg_svd",
        "linalg_svdvals",
        "linalg_cholesky",
        "linalg_inv",
        "linalg_solve",
        "linalg_lstsq",
        "linalg_pinv",
        "linalg_matrix_rank",
    }
)
#: Calls that build a tensor from host data when their first argument is not a tensor.
UPLOADS = frozenset({"asarray", "tensor", "as_tensor", "from_numpy"})
#: Indexing calls; a boolean-mask index or a host-side index list synchronises.
INDEXING = frozenset({"__getitem__", "__setitem__", "index_put_", "index_put"})
#: Calls that inspect, view or re-label a tensor without a kernel of their own.
NO_KERNEL = frozenset(
    {
        "__get__",
        "__getitem__",
        "size",
        "dim",
        "moveaxis",
        "broadcast_tensors",
        "expand",
        "conj",
        "view",
        "transpose",
        "permute",
    }
)


@dataclass(frozen=True)
class Sync:
    """One synchronising call: its kind, the torch name, and how many elements it moved."""

    kind: str
    name: str
    numel: int


class HostSyncAudit(TorchFunctionMode):
    """Context manager recording host-synchronising torch calls in `syncs`.

    Examples
    --------
    >>> x = torch.arange(4.0)
    >>> with HostSyncAudit() as audit:
    ...     _ = bool(x.sum() > 1)
    >>> [(s.kind, s.name) for s in audit.syncs]
    [('read', '__bool__')]
    """

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[Sync] = []
        #: Calls that launch device work (a kernel each, or more), by torch name.
        self.kernels: Counter[str] = Counter()

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        sync = _classify(name, args, kwargs)
        if sync is not None:
            self.syncs.append(sync)
        out = func(*args, **kwargs)
        if _launches(name, args, out):
            self.kernels[name] += 1
        return out

    def kinds(self) -> list[tuple[str, str]]:
        """(kind, name) of every recorded call, in order."""
        return [(s.kind, s.name) for s in self.syncs]

    def largest(self) -> int:
        """Most elements moved by one recorded call (0 if none)."""
        return max((s.numel for s in self.syncs), default=0)


def _launches(name: str, args: tuple, out: Any) -> bool:
    """Whether a call queued device work: not a view, an attribute or a no-op cast."""
    if name in NO_KERNEL:
        # Indexing with a tensor gathers; with slices and integers it only views.
        index = args[1] if name == "__getitem__" and len(args) > 1 else ()
        parts = index if isinstance(index, tuple) else (index,)
        return any(isinstance(part, torch.Tensor) for part in parts)
    if name in {"to", "type", "contiguous"} and args and out is args[0]:
        return False  # already of that dtype, device and layout
    return True


def _numel(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel()
    try:
        return torch.as_tensor(value).numel()
    except (TypeError, ValueError, RuntimeError):
        return 1


def _classify(name: str, args: tuple, kwargs: dict) -> Sync | None:
    first = args[0] if args else None
    if name in READS:
        return Sync("read", name, _numel(first))
    # A data-shaped call moves one number, the size of its output.
    if name in DATA_SHAPED:
        return Sync("data-shaped", name, 1)
    if name in CHECKED:
        return Sync("checked", name, 1)
    if name == "repeat_interleave" and "output_size" not in kwargs:
        return Sync("data-shaped", name, 1)
    if name in UPLOADS and first is not None and not isinstance(first, torch.Tensor):
        return Sync("upload", name, _numel(first))
    if name == "to" and _targets_cpu(args[1:], kwargs):
        return Sync("read", name, _numel(first))
    if name in INDEXING and len(args) > 1:
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        for part in index:
            if isinstance(part, torch.Tensor) and part.dtype == torch.bool:
                return Sync("data-shaped", f"{name}[mask]", 1)
            if isinstance(part, (list, tuple)) or type(part).__module__ == "numpy":
                return Sync("upload", f"{name}[host index]", _numel(part))
    return None


def _targets_cpu(args: tuple, kwargs: dict) -> bool:
    for value in (*args, kwargs.get("device")):
        if isinstance(value, (str, torch.device)) and torch.device(value).type == "cpu":
            return True
    return False
