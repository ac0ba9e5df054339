"""The shared validators: TypeError for a wrong type, ValueError for a wrong value."""

from __future__ import annotations

import numpy as np
import pytest

import ncgeom
from ncgeom import ClassStats, checks, reduce_class_stats
from ncgeom._lib import validate


def _world(**kwargs):
    args = {"rank": 0, "world_size": 1, "all_gather": lambda x: [x], "all_reduce": lambda x: x}
    return reduce_class_stats(ClassStats.empty(2, 2), **{**args, **kwargs})


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: ClassStats.empty(2, 2.0), TypeError, r"`dim` must be an integer; got 2\.0"),
        (lambda: ClassStats.empty(2.0, 2), TypeError, r"`num_classes` must be an integer"),
        (lambda: _world(rank=0.0), TypeError, r"`rank` must be an integer; got 0\.0"),
        (lambda: _world(world_size=True), TypeError, r"`world_size` must be an integer"),
        (lambda: _world(step=-1), ValueError, r"`step` must be an integer >= 0; got -1"),
        (lambda: _world(rank=-1), ValueError, r"`rank` must lie in \[0, 1\); got -1"),
        (lambda: _world(rank=1), ValueError, r"`rank` must lie in \[0, 1\); got 1"),
    ],
)
def test_integers_are_type_checked_then_value_checked(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_int_at_least():
    assert validate.check_int_at_least(np.int64(3), "n", 2) == 3
    with pytest.raises(TypeError, match=r"`n` must be an integer; got 2\.5"):
        validate.check_int_at_least(2.5, "n", 2)
    with pytest.raises(ValueError, match=r"`n` must be an integer >= 2; got 1"):
        validate.check_int_at_least(1, "n", 2)


def test_flag_choice_seed():
    assert validate.check_flag(np.bool_(True), "bias") is True
    with pytest.raises(TypeError, match=r"`bias` must be True or False; got 1"):
        validate.check_flag(1, "bias")
    assert validate.check_choice("full", "form", ("collapsed", "full")) == "full"
    with pytest.raises(ValueError, match=r"`form` must be one of \('a', 'b'\); got 'c'"):
        validate.check_choice("c", "form", ("a", "b"))
    assert validate.check_seed(np.int32(4)) == 4
    with pytest.raises(TypeError, match=r"`seed` must be an int >= 0"):
        validate.check_seed(1.5)
    with pytest.raises(ValueError, match=r"`seed` must be >= 0; got -1"):
        validate.check_seed(-1)


def test_instance_and_protocol():
    with pytest.raises(TypeError, match=r"`stats` must be a ClassStats; got dict; see x"):
        validate.check_instance({}, ClassStats, "stats", advice="see x")

    class Plugin:
        name = " padded "

        def owns(self, obj):
            return False

    with pytest.raises(TypeError, match=r"`plugin` must implement P \(name, owns, run\); "):
        validate.check_protocol(Plugin(), "plugin", "P", ("name", "owns", "run"))
    with pytest.raises(TypeError, match=r"`plugin.name` must be a non-empty string"):
        validate.check_protocol(Plugin(), "plugin", "P", ("name", "owns"))


def test_arrays():
    xp = ncgeom._backend.namespace(x=np.zeros(1))
    with pytest.raises(TypeError, match=r"`means` must be an array; got None"):
        validate.check_arrays_given(classifier=np.zeros(1), means=None)
    with pytest.raises(
        ValueError, match=r"`w` must be finite; got inf at \[1\] \(NaN or Inf in 1 "
    ):
        validate.check_finite(np.array([1.0, np.inf]), "w", xp)
    with pytest.raises(ValueError, match=r"`bias` must have shape \(3,\); got \(2,\)"):
        validate.check_bias_vector(np.zeros(2), 3, xp)
    with pytest.raises(TypeError, match=r"`bias` must have a real floating dtype"):
        validate.check_bias_vector(np.zeros(3, dtype=int), 3, xp)
    vector = validate.check_class_vector([1, 2], "counts", 2, xp, "cpu", np.float32)
    assert vector.dtype == np.float32
    with pytest.raises(ValueError, match=r"`prior` must be finite and > 0; got \[1\.0, 0\.0\]"):
        validate.check_class_vector([1.0, 0.0], "prior", 2, xp, "cpu", np.float64, positive=True)


def test_the_facade_exports_every_public_check():
    assert checks.__all__ == validate.__all__
    for name in checks.__all__:
        assert getattr(checks, name) is getattr(validate, name)
