"""ncgeom_jax through depth: several layers captured at once, per-layer statistics, and the
same per-layer values as torch for the same weights (float64)."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
flax_linen = pytest.importorskip("flax.linen")
torch = pytest.importorskip("torch")
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

from ncgeom import ClassStats  # noqa: E402
from ncgeom.measure.depth import depth_report  # noqa: E402
from ncgeom.measure.layers import SecondPass, layer_features  # noqa: E402
from ncgeom_jax import (  # noqa: E402
    capture_features,
    init_layer_stats,
    init_second_pass,
    layer_batch_stats,
    layer_metrics,
    update_layer_stats,
    update_second_pass,
)
from ncgeom_torch.depth_runs import depth_of  # noqa: E402

from reference import cdnv, equinorm, etf_error, nc1, orthogonality_error  # noqa: E402

nn = flax_linen
K, N, SIDE, CHANNELS, WIDTH = 3, 24, 5, 4, 6
LAYERS = ("block1", "block2", "fc")
METRICS = ("nc1", "cdnv", "nc1_trace_ratio", "etf_error", "orthogonality_error", "equinorm")


class ConvBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Conv(CHANNELS, (3, 3), padding="SAME", name="conv")(x))


class DenseBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(WIDTH, name="dense")(x))
        self.sow("intermediates", "features", h)
        return h


class FlaxNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = ConvBlock(name="block1")(x)
        h = ConvBlock(name="block2")(h)
        h = DenseBlock(name="fc")(jnp.mean(h, axis=(1, 2)))
        return nn.Dense(K, use_bias=False, name="head")(h)


class TorchNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        conv = torch.nn.Conv2d
        self.block1 = torch.nn.Sequential(conv(3, CHANNELS, 3, padding=1), torch.nn.ReLU())
        self.block2 = torch.nn.Sequential(conv(CHANNELS, CHANNELS, 3, padding=1), torch.nn.ReLU())
        self.fc = torch.nn.Sequential(torch.nn.Linear(CHANNELS, WIDTH), torch.nn.ReLU())
        self.head = torch.nn.Linear(WIDTH, K, bias=False)

    def forward(self, x):
        h = self.block2(self.block1(x)).mean(dim=(2, 3))
        return self.head(self.fc(h))


def torch_twin(params) -> TorchNet:
    """The torch network with the Flax weights (kernels transposed to torch's layouts)."""
    net = TorchNet().double()
    p = jax.tree.map(lambda a: torch.as_tensor(np.array(a)), params)
    with torch.no_grad():
        for name in ("block1", "block2"):
            conv = getattr(net, name)[0]
            conv.weight.copy_(p[name]["conv"]["kernel"].permute(3, 2, 0, 1))  # HWIO -> OIHW
            conv.bias.copy_(p[name]["conv"]["bias"])
        net.fc[0].weight.copy_(p["fc"]["dense"]["kernel"].T)
        net.fc[0].bias.copy_(p["fc"]["dense"]["bias"])
        net.head.weight.copy_(p["head"]["kernel"].T)
    return net


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    labels = np.arange(N) % K
    images = rng.normal(size=(N, SIDE, SIDE, 3)) + 1.5 * np.eye(K, 3)[labels][:, None, None, :]
    model = FlaxNet()
    x = jnp.asarray(images)
    params = model.init(jax.random.key(0), x)["params"]
    logits, found = capture_features(model, {"params": params}, x, layers=list(LAYERS))
    return model, params, x, jnp.asarray(labels), logits, found


def test_capture_returns_the_outputs_of_the_named_layers_in_call_order(setup) -> None:
    _, params, x, _, logits, found = setup
    assert list(found) == list(LAYERS)
    assert found["block1"].shape == (N, SIDE, SIDE, CHANNELS)
    assert found["fc"].shape == (N, WIDTH)
    # The fc output is the head's input: logits = fc @ head kernel.
    np.testing.assert_allclose(logits, found["fc"] @ params["head"]["kernel"], rtol=1e-13)
    # block1's output from the convolution written in NumPy (cross-correlation, zero padding).
    kernel = np.asarray(params["block1"]["conv"]["kernel"])
    padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.zeros((N, SIDE, SIDE, CHANNELS))
    for i in range(3):
        for j in range(3):
            want += padded[:, i : i + SIDE, j : j + SIDE, :] @ kernel[i, j]
    want = np.maximum(want + np.asarray(params["block1"]["conv"]["bias"]), 0.0)
    np.testing.assert_allclose(np.asarray(found["block1"]), want, rtol=1e-12, atol=1e-12)


def test_capture_by_type_predicate_path_and_sown_name(setup) -> None:
    model, params, x, *_ = setup
    variables = {"params": params}
    _, by_type = capture_features(model, variables, x, layers=nn.Conv)
    assert list(by_type) == ["block1/conv", "block2/conv"]
    _, by_name = capture_features(model, variables, x, layers="conv")  # every "conv"
    assert list(by_name) == ["block1/conv", "block2/conv"]
    _, chosen = capture_features(model, variables, x, layers=lambda path, m: path == "block2")
    assert list(chosen) == ["block2"]
    # A sown value comes before the output of the module that sows it.
    _, sown = capture_features(model, variables, x, layers=["features", "fc", "block1"])
    assert list(sown) == ["block1", "fc/features", "fc"]
    np.testing.assert_array_equal(sown["fc/features"], sown["fc"])
    # Inside jit, under the same names.
    compiled = jax.jit(lambda v, x: capture_features(model, v, x, layers=["block2", "fc"])[1])
    got = compiled(variables, x)
    np.testing.assert_allclose(got["fc"], sown["fc"], rtol=1e-13)


def test_capture_errors_name_the_argument(setup) -> None:
    model, params, x, *_ = setup
    variables = {"params": params}
    with pytest.raises(ValueError, match=r"`layers` matches no submodule.*block1/conv"):
        capture_features(model, variables, x, layers="nope")
    with pytest.raises(TypeError, match="`layers` must"):
        capture_features(model, variables, x, layers=3)
    with pytest.raises(ValueError, match="one of `layer` and `layers`"):
        capture_features(model, variables, x, layer="head", layers="fc")


REDUCE = {"block1": "pool", "block2": "flatten", "fc": "pool"}


def host_rows(found, name: str) -> np.ndarray:
    """A layer's rows in NumPy: NHWC pooled over H, W, or flattened (block2)."""
    raw = np.asarray(found[name])
    if raw.ndim == 2:
        return raw
    return raw.reshape(N, -1) if REDUCE[name] == "flatten" else raw.mean(axis=(1, 2))


@pytest.fixture(scope="module")
def jax_depth(setup):
    """The depth report of the JAX statistics: block1 and fc pooled, block2 flattened (NC1
    from the second pass). The statistics are accumulated by JAX; the metrics of the core
    are then evaluated on NumPy copies of them (eager JAX would compile every operation of
    every metric, for seconds, and the core's JAX backend is tested elsewhere)."""
    _, params, _, labels, _, found = setup
    state = layer_batch_stats(found, labels, K, reduce=REDUCE)
    host = {name: jax.tree.map(np.asarray, stats) for name, stats in state.items()}
    rows = {name: np.asarray(value) for name, value in found.items()}
    second = update_second_pass(init_second_pass(host), rows, np.asarray(labels), reduce=REDUCE)
    head = np.asarray(params["head"]["kernel"]).T
    report = layer_metrics(host, head, second=second, reduce=REDUCE)
    return state, report


def test_per_layer_values_equal_numpy_formulas(setup, jax_depth) -> None:
    *_, labels, _, found = setup
    state, report = jax_depth
    assert state["block2"].gram is None and state["block1"].gram is not None
    assert report.layers == LAYERS and report.reduce == REDUCE
    y = np.asarray(labels)
    formulas = {
        "nc1": nc1,
        "cdnv": cdnv,
        "etf_error": etf_error,
        "equinorm": equinorm,
        "orthogonality_error": orthogonality_error,
    }
    for name in LAYERS:
        x = host_rows(found, name)
        want = np.stack([x[y == k].mean(axis=0) for k in range(K)])
        np.testing.assert_allclose(np.asarray(state[name].means), want, rtol=1e-12, atol=1e-14)
        for metric, formula in formulas.items():
            assert report.value(name, metric) == pytest.approx(formula(x, y, K), rel=1e-9), (
                name,
                metric,
            )
        mu = np.stack([x[y == k].mean(axis=0) for k in range(K)])
        nearest = np.argmin(((x[:, None, :] - mu[None]) ** 2).sum(axis=2), axis=1)
        assert report.value(name, "ncc_accuracy") == pytest.approx(np.mean(nearest == y))


def test_jit_accumulation_in_batches_equals_one_batch_and_keeps_the_depth_order(setup) -> None:
    *_, labels, _, found = setup
    step = jax.jit(update_layer_stats, static_argnames=("reduce", "validate"))
    state = init_layer_stats(K, found)
    for lo in range(0, N, 12):
        part = {name: value[lo : lo + 12] for name, value in found.items()}
        state = step(state, part, labels[lo : lo + 12], validate=False)
    whole = layer_batch_stats(found, labels, K)
    for name in LAYERS:
        np.testing.assert_allclose(state[name].means, whole[name].means, rtol=1e-12)
        np.testing.assert_allclose(state[name].gram, whole[name].gram, rtol=1e-10, atol=1e-12)
    host = {name: jax.tree.map(np.asarray, stats) for name, stats in state.items()}
    assert layer_metrics(host, layers=list(found)).layers == LAYERS


def test_same_per_layer_values_as_torch_for_the_same_weights(setup, jax_depth) -> None:
    _, params, x, labels, logits, _ = setup
    _, jax_report = jax_depth
    net = torch_twin(params)
    images = torch.as_tensor(np.array(x)).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    y_torch = torch.as_tensor(np.array(labels))
    outputs: dict[str, torch.Tensor] = {}
    hooks = [
        getattr(net, name).register_forward_hook(
            lambda module, args, out, name=name: outputs.__setitem__(name, out)
        )
        for name in LAYERS
    ]
    with torch.no_grad():
        torch_logits = net(images)
    for hook in hooks:
        hook.remove()
    np.testing.assert_allclose(torch_logits.numpy(), np.asarray(logits), rtol=1e-12, atol=1e-12)
    # torch: NCHW, with the core's layer_features (channels first), flattened in NCHW order.
    torch_stats, torch_second = {}, {}
    for name in LAYERS:
        rows, y = layer_features(outputs[name], y_torch, reduce=REDUCE[name])
        torch_stats[name] = ClassStats.from_features(rows, y, K, gram=REDUCE[name] == "pool")
        torch_second[name] = SecondPass(
            torch_stats[name], scatter=REDUCE[name] == "flatten"
        ).update(rows, y)
    torch_report = depth_report(
        torch_stats, second=torch_second, classifier=net.head.weight, reduce=REDUCE
    )
    # And through the torch plugin's own path: one NCTracker.evaluate(layers=...) pass.
    tracked = depth_of(
        net, images, y_torch, layers=list(LAYERS), classifier="head", reduce=REDUCE, batch_size=10
    )
    for other in (torch_report, tracked):
        assert other.layers == jax_report.layers == LAYERS
        for name in LAYERS:
            for metric in (*METRICS, "ncc_accuracy"):
                a, b = jax_report.value(name, metric), other.value(name, metric)
                assert a is not None and b is not None, (name, metric)
                assert a == pytest.approx(b, rel=1e-6, abs=1e-12), (name, metric)
        for metric in ("self_duality_error", "scaled_alignment_error", "classifier_equinorm"):
            a = getattr(jax_report.reports["fc"], metric)
            b = getattr(other.reports["fc"], metric)
            assert a is not None and a == pytest.approx(b, rel=1e-6, abs=1e-12), metric


def test_helpers_reject_mismatched_layers(setup) -> None:
    *_, labels, _, found = setup
    state = init_layer_stats(K, found)
    with pytest.raises(ValueError, match="`stats` must hold the layers of `features`"):
        update_layer_stats(state, {"fc": found["fc"]}, labels)
    with pytest.raises(ValueError, match="`reduce` gives no mode for the layer 'block2'"):
        layer_batch_stats(found, labels, K, reduce={"block1": "pool"})
    with pytest.raises(ValueError, match="`labels` must lie in"):
        update_layer_stats(state, found, labels + 5)
    with pytest.raises(ValueError, match="`layers` must name the layers"):
        layer_metrics(state, layers=["fc"])


@pytest.mark.slow  # its own network: seconds of JAX compilation of new shapes
def test_the_depth_example_of_docs_jax_md_runs(capsys) -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "jax.md").read_text()
    section = text.split("## Several layers at once", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(code, "docs/jax.md", "exec"), scope)
    report = scope["report"]
    assert report.layers == ("conv1", "conv2", "fc")
    assert report.reports["fc"].num_samples == 48
    assert "Spearman" in capsys.readouterr().out


def test_the_depth_example_of_docs_jax_md_compiles() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "jax.md").read_text()
    code = text.split("## Several layers at once", 1)[1].split("```python\n", 1)[1]
    compile(code.split("```", 1)[0], "docs/jax.md", "exec")
