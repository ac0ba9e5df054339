"""Labels of every integer dtype of every backend: one contract in `check_batch`."""

from __future__ import annotations

import numpy as np
import pytest

from ncgeom._validate import check_batch

SIGNED = ["int8", "int16", "int32", "int64"]
UNSIGNED = ["uint8", "uint16", "uint32", "uint64"]


@pytest.mark.parametrize("dtype", SIGNED + UNSIGNED)
def test_labels_come_back_as_int64_on_the_same_backend(backend, dtype):
    xp = backend.xp
    if not hasattr(xp, dtype):
        pytest.skip(f"{backend.name} has no {dtype}")
    features = backend.asarray(np.eye(3, 4))
    labels = backend.asarray(np.array([0, 2, 1], dtype=dtype))
    out = check_batch(features, labels, 3, xp)
    assert out.dtype == xp.int64
    assert backend.to_numpy(out).tolist() == [0, 2, 1]
    if dtype == "int64":
        assert out is labels  # no copy when already int64
    empty = check_batch(features[:0, :], labels[:0], 3, xp)
    assert empty.dtype == xp.int64 and empty.shape == (0,)


@pytest.mark.parametrize("dtype", SIGNED + UNSIGNED)
def test_out_of_range_labels_of_any_dtype(backend, dtype):
    xp = backend.xp
    if not hasattr(xp, dtype):
        pytest.skip(f"{backend.name} has no {dtype}")
    features = backend.asarray(np.eye(3, 4))
    labels = backend.asarray(np.array([0, 100, 1], dtype=dtype))
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 3\); got max 100 at row 1"):
        check_batch(features, labels, 3, xp)
    if dtype in SIGNED:
        labels = backend.asarray(np.array([0, 1, -5], dtype=dtype))
        with pytest.raises(ValueError, match=r"must lie in \[0, 3\); got min -5 at row 2"):
            check_batch(features, labels, 3, xp)


@pytest.mark.parametrize("value", [2**63, 2**63 + 5, 2**64 - 1])
def test_uint64_labels_beyond_int64_are_out_of_range(backend, value):
    # Cast to int64 first, these would wrap to negative numbers: the message
    # must name the true value.
    xp = backend.xp
    if not hasattr(xp, "uint64"):
        pytest.skip(f"{backend.name} has no uint64")
    labels = backend.asarray(np.array([0, 1, value, 1], dtype=np.uint64))
    features = backend.asarray(np.ones((4, 2)))
    with pytest.raises(ValueError, match=rf"`labels` must lie in \[0, 3\); got {value} at row 2"):
        check_batch(features, labels, 3, xp)


def test_torch_small_integer_labels():
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as xp

    for dtype in (torch.uint8, torch.int16, torch.int32, torch.uint16, torch.uint32):
        out = check_batch(torch.ones(3, 2), torch.tensor([2, 0, 1], dtype=dtype), 3, xp)
        assert out.dtype == torch.int64 and out.tolist() == [2, 0, 1]
    big = torch.from_numpy(np.array([0, 2**63 + 4], dtype=np.uint64))
    with pytest.raises(
        ValueError, match=r"`labels` must lie in \[0, 3\); got 9223372036854775812"
    ):
        check_batch(torch.ones(2, 2), big, 3, xp)


@pytest.mark.parametrize(
    "labels",
    [
        np.array([True, False, True]),
        np.array(["a", "b", "c"]),
        np.array([0, 1, 2], dtype=object),
        np.array([0.0, 1.0, 2.0]),
        np.array([0, 1, 2], dtype=np.complex128),
    ],
)
def test_non_integer_labels_are_a_type_error_naming_labels(labels):
    import array_api_compat.numpy as xp

    with pytest.raises(TypeError, match=r"`labels` must have an integer dtype; got "):
        check_batch(np.ones((3, 2)), labels, 3, xp)
