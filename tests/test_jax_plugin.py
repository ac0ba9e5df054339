"""ncgeom_jax: conformance, jit-compiled accumulation, psum across devices, Flax capture, UFM+."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

jax = pytest.importorskip("jax")
flax_linen = pytest.importorskip("flax.linen")
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

import ncgeom_jax  # noqa: E402
from ncgeom import ClassStats, NCReport, nc_report  # noqa: E402
from ncgeom.loss import ufm_gradients, ufm_objective  # noqa: E402
from ncgeom.plugins import get_plugin  # noqa: E402
from ncgeom.testing.conformance import CHECKS, check_plugin  # noqa: E402
from ncgeom_jax import (  # noqa: E402
    batch_stats,
    capture_features,
    init_stats,
    nc_metrics,
    ufm_loss,
    ufm_penalty,
    update_stats,
    validate_batch,
)

K, D = 5, 12


def data(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.choice(K, size=n, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    means = 4.0 * rng.normal(size=(K, D))
    return means[labels] + 0.3 * rng.normal(size=(n, D)), labels.astype(np.int64)


def close(a, b, tol=1e-12) -> None:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(float(np.max(np.abs(b), initial=0.0)), 1.0)
    assert np.max(np.abs(a - b), initial=0.0) <= tol * scale


def assert_same_reports(got: NCReport, want: NCReport, tol: float) -> None:
    assert got.counts == want.counts
    for metric in NCReport.METRICS:
        a, b = getattr(got, metric), getattr(want, metric)
        assert (a is None) == (b is None), metric
        if b is not None:
            close(a, b, tol)


@pytest.mark.parametrize("check", CHECKS)
def test_conformance(check: str) -> None:
    import torch

    outcome = check_plugin(
        ncgeom_jax.plugin, jnp.asarray, foreign=[np.zeros(3), torch.zeros(2)], checks=[check]
    )
    assert outcome[check] == "passed"


def test_the_entry_point_finds_the_plugin_for_jax_arrays() -> None:
    assert get_plugin("jax") is ncgeom_jax.plugin
    assert get_plugin(jnp.zeros(2)) is ncgeom_jax.plugin


def test_importing_the_plugin_does_not_import_jax() -> None:
    code = "import sys, ncgeom_jax; print('jax' in sys.modules, ncgeom_jax.plugin.owns(1.0))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def on_host(stats: ClassStats) -> ClassStats:
    """The same statistics as NumPy arrays (reports on the host are cheap to compute)."""
    fields = (stats.counts, stats.shift, stats.sums, stats.sqnorms, stats.gram, stats.scale)
    return ClassStats(*(None if a is None else np.asarray(a) for a in fields))


def test_jit_accumulation_equals_the_eager_core_to_1e_12() -> None:
    x, y = data(384)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    step = jax.jit(update_stats, static_argnames="validate")
    compiled, eager = init_stats(K, D), ClassStats.empty(K, D, xp=jnp)
    for lo in range(0, x.shape[0], 128):
        compiled = step(compiled, xj[lo : lo + 128], yj[lo : lo + 128], validate=False)
        eager = eager.update(xj[lo : lo + 128], yj[lo : lo + 128])  # the core, op by op
    assert isinstance(compiled, ClassStats)
    assert isinstance(compiled.shift, jax.Array)
    assert compiled.counts.tolist() == eager.counts.tolist()
    for field in ("means", "class_variances"):
        close(getattr(compiled, field), getattr(eager, field))
    close(compiled.within_covariance(), eager.within_covariance())
    got, want = nc_report(on_host(compiled)), nc_report(on_host(eager))
    assert_same_reports(got, want, 1e-12)
    assert_same_reports(got, nc_report(ClassStats.from_features(x, y, K)), 1e-12)
    close(got.nc1, nc_report((x, y), num_classes=K).nc1)


def test_accumulation_inside_a_scan_equals_the_batch_by_batch_updates() -> None:
    x, y = data(512, seed=1)
    xs, ys = jnp.asarray(x).reshape(4, 128, D), jnp.asarray(y).reshape(4, 128)

    @jax.jit
    def epoch(stats, xs, ys):
        def body(state, batch):
            return update_stats(state, *batch, validate=False), None

        return jax.lax.scan(body, stats, (xs, ys))[0]

    scanned = epoch(init_stats(K, D), xs, ys)
    step = jax.jit(update_stats, static_argnames="validate")
    stepped = init_stats(K, D)
    for b in range(4):
        stepped = step(stepped, xs[b], ys[b], validate=False)
    close(scanned.means, stepped.means)
    close(scanned.within_covariance(), stepped.within_covariance())
    close(scanned.means, ClassStats.from_features(x, y, K).means)


def test_large_features_are_stored_scaled_inside_jit() -> None:
    x, y = data(200, seed=2)
    stats = jax.jit(batch_stats, static_argnums=2)(jnp.asarray(x * 1e30), jnp.asarray(y), K)
    assert float(stats.unit_scale) != 1.0
    reference = ClassStats.from_features(x * 1e30, y, K)
    close(stats.means, reference.means)
    close(stats.class_variances, reference.class_variances, 1e-10)


def test_validation_runs_on_the_host_and_is_refused_inside_jit() -> None:
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 5\)"):
        update_stats(init_stats(K, D), jnp.ones((3, D)), jnp.asarray([0, 1, 7]))
    with pytest.raises(ValueError, match="must be finite"):
        validate_batch(jnp.full((2, D), jnp.nan), jnp.asarray([0, 1]), K)
    with pytest.raises(TypeError, match="validate=False"):
        jax.jit(update_stats)(init_stats(K, D), jnp.ones((3, D)), jnp.asarray([0, 1, 2]))


def test_theory_comparison_of_the_functional_tracker() -> None:
    x, y = data(300, seed=3)
    stats = update_stats(init_stats(K, D), jnp.asarray(np.abs(x)), jnp.asarray(y))
    weight = jnp.asarray(np.random.default_rng(3).normal(size=(K, D)))
    report = nc_metrics(stats, weight, lambda_w=5e-3, lambda_h=5e-3)
    assert report.gof_error is not None and report.margins_predicted is not None
    assert report.self_duality_error is not None
    with pytest.raises(ValueError, match="given together"):
        nc_metrics(stats, lambda_w=1e-3)


def test_ufm_loss_and_its_jax_grad_equal_ncgeom_loss() -> None:
    rng = np.random.default_rng(4)
    w, h = rng.normal(size=(K, D)), np.abs(rng.normal(size=(40, D)))
    y = rng.integers(0, K, size=40)
    wj, hj, yj = jnp.asarray(w), jnp.asarray(h), jnp.asarray(y)
    lw, lh = 3e-2, 2e-3
    value, (grad_w, grad_h) = jax.value_and_grad(ufm_loss, argnums=(0, 1))(
        wj, hj, yj, lambda_w=lw, lambda_h=lh
    )
    reference = ufm_gradients(w, h, y, lw, lh)
    close(value, ufm_objective(w, h, y, lw, lh))
    close(value, reference.objective)
    close(grad_w, reference.classifier)
    close(grad_h, reference.features)
    # the penalty alone: its gradient in closed form, and the batch estimate's scaling
    gw, gh = jax.grad(ufm_penalty, argnums=(0, 1))(
        wj, hj, lambda_w=lw, lambda_h=lh, num_samples=400
    )
    close(gw, lw * w)
    close(gh, lh * 10 * h)


class Net(flax_linen.Module):
    sow_features: bool = False

    @flax_linen.compact
    def __call__(self, x):
        h = flax_linen.relu(flax_linen.Dense(16)(x))
        h = flax_linen.relu(flax_linen.Dense(D, name="penultimate")(h))
        if self.sow_features:
            self.sow("intermediates", "features", h)
        return flax_linen.Dense(K, use_bias=False, name="head")(h)


def test_flax_capture_sown_named_and_default() -> None:
    x = jnp.asarray(np.random.default_rng(5).normal(size=(32, 6)))
    for model in (Net(), Net(sow_features=True)):
        variables = model.init(jax.random.key(0), x)
        kernel = variables["params"]["head"]["kernel"]
        logits, h = jax.jit(lambda v, x, m=model: capture_features(m, v, x))(variables, x)
        close(logits, h @ kernel)
        _, named = capture_features(model, variables, x, layer="head")
        close(named, h, 0.0)
        _, inner = capture_features(model, variables, x, layer="penultimate")
        assert inner.shape == (32, 16)
    with pytest.raises(ValueError, match="never called"):
        capture_features(model, variables, x, layer="nope")


def test_flax_training_step_tracks_collapse_inside_jit() -> None:
    x, y = data(256, seed=6)
    x, y = jnp.asarray(x[:, :6]), jnp.asarray(y)
    model = Net()
    variables = model.init(jax.random.key(1), x)

    @jax.jit
    def step(variables, stats, x, y):
        logits, h = capture_features(model, variables, x)
        return update_stats(stats, h, y, validate=False), logits

    stats, _ = step(variables, init_stats(K, D), x, y)
    _, h = capture_features(model, variables, x)
    close(stats.means, ClassStats.from_features(np.asarray(h), np.asarray(y), K).means)


PSUM_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from jax.sharding import Mesh, PartitionSpec as P
    from ncgeom import ClassStats
    from ncgeom_jax import batch_stats, psum_stats

    devices = jax.devices("cpu")
    assert len(devices) == 4, devices
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 4, size=4 * 64)
    labels[192:] = np.where(labels[192:] == 0, 1, labels[192:])  # device 3: no class 0
    x = 1e3 + rng.normal(size=(4 * 64, 6)) + 5.0 * np.eye(4, 6)[labels]
    mesh = Mesh(np.array(devices), ("d",))

    def per_device(x, y):
        stats = psum_stats(batch_stats(x, y, 4), "d")
        return stats.counts, stats.means, stats.class_variances, stats.within_covariance()

    f = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("d"), P("d")),
                              out_specs=P(), check_vma=False))
    counts, means, variances, cov = f(jnp.asarray(x), jnp.asarray(labels))
    ref = ClassStats.from_features(x, labels, 4)
    err = lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
    print(json.dumps({
        "counts": np.asarray(counts).tolist(), "ref_counts": ref.counts.tolist(),
        "means": err(means, ref.means), "variances": err(variances, ref.class_variances),
        "cov": err(cov, ref.within_covariance()),
    }))
    """
)


def test_psum_combines_four_cpu_devices_exactly() -> None:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, "-c", PSUM_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["counts"] == result["ref_counts"]
    assert result["means"] < 1e-10
    assert result["variances"] < 1e-10
    assert result["cov"] < 1e-10
