"""The CIFAR ResNet-18 of ncgeom_torch: architecture, parameter count, block names, features."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ncgeom_torch.resnet import BLOCK_NAMES, resnet18  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: small networks on a shared CPU run faster and steadier so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def expected_parameter_count(num_classes: int, width: int, bias: bool) -> int:
    """Parameters of the CIFAR ResNet-18, counted from its layer shapes (He et al., 2016).

    conv 3x3 (3 -> w), BN(w); four stages of two basic blocks with w, 2w, 4w,
    8w channels: each block has conv 3x3 (c_in -> c), BN(c), conv 3x3 (c -> c),
    BN(c), plus a 1x1 conv and BN on the shortcut where the shape changes;
    a linear layer 8w -> K.
    """

    def conv(c_in: int, c_out: int, k: int) -> int:
        return c_in * c_out * k * k

    def bn(c: int) -> int:
        return 2 * c  # weight and bias; running statistics are buffers

    total = conv(3, width, 3) + bn(width)
    c_in = width
    for stage in range(4):
        c = width * 2**stage
        for block in range(2):
            total += conv(c_in, c, 3) + bn(c) + conv(c, c, 3) + bn(c)
            if block == 0 and c_in != c:
                total += conv(c_in, c, 1) + bn(c)
            c_in = c
    return total + c_in * num_classes + (num_classes if bias else 0)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_count_matches_the_published_resnet18():
    # the CIFAR ResNet-18 with 10 classes and a biased head has 11,173,962 parameters
    assert expected_parameter_count(10, 64, bias=True) == 11_173_962
    assert count(resnet18(10, bias=True)) == expected_parameter_count(10, 64, bias=True)
    assert count(resnet18(10)) == 11_173_962 - 10


@pytest.mark.parametrize(("num_classes", "width"), [(100, 64), (7, 4), (3, 1)])
def test_parameter_count_other_shapes(num_classes, width):
    model = resnet18(num_classes, width=width)
    assert count(model) == expected_parameter_count(num_classes, width, bias=False)


def test_bias_free_classifier_named_fc():
    model = resnet18(10, width=4)
    assert isinstance(model.fc, torch.nn.Linear)
    assert model.fc.bias is None
    assert tuple(model.fc.weight.shape) == (10, 32)
    linears = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert linears == ["fc"]


def test_block_names_in_depth_order():
    model = resnet18(10, width=2)
    modules = dict(model.named_modules())
    assert len(BLOCK_NAMES) == 8
    assert all(name in modules for name in BLOCK_NAMES)
    order = [name for name, _ in model.named_modules() if name in BLOCK_NAMES]
    assert tuple(order) == BLOCK_NAMES
    outputs = {}
    hooks = [
        modules[name].register_forward_hook(
            lambda _m, _i, out, name=name: outputs.__setitem__(name, out.shape)
        )
        for name in BLOCK_NAMES
    ]
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    # spatial size 32, 32, 16, 16, 8, 8, 4, 4; channels w, w, 2w, 2w, 4w, 4w, 8w, 8w
    sizes = [32, 32, 16, 16, 8, 8, 4, 4]
    channels = [2, 2, 4, 4, 8, 8, 16, 16]
    assert [tuple(outputs[n]) for n in BLOCK_NAMES] == [
        (2, c, s, s) for c, s in zip(channels, sizes, strict=True)
    ]


def test_features_are_the_nonnegative_input_of_fc():
    torch.manual_seed(0)
    model = resnet18(5, width=4).eval()
    x = torch.randn(6, 3, 32, 32)
    seen = {}
    hook = model.fc.register_forward_hook(lambda _m, inp, _o: seen.update(h=inp[0]))
    with torch.no_grad():
        logits = model(x)
        features = model.features(x)
    hook.remove()
    assert tuple(features.shape) == (6, 32)
    assert bool((features >= 0).all())
    torch.testing.assert_close(features, seen["h"])
    # fc is bias-free: logits are W h exactly
    torch.testing.assert_close(logits, features @ model.fc.weight.T)
    # the pooled feature is the mean of the last block's output over the 4x4 grid
    last = {}
    hook = model.layer4[1].register_forward_hook(lambda _m, _i, out: last.update(o=out))
    with torch.no_grad():
        model(x)
    hook.remove()
    torch.testing.assert_close(features, last["o"].mean(dim=(2, 3)))


def test_in_channels_and_bad_arguments():
    model = resnet18(4, width=2, in_channels=1)
    assert tuple(model(torch.zeros(1, 1, 32, 32)).shape) == (1, 4)
    with pytest.raises(ValueError, match="`num_classes`"):
        resnet18(0)
    with pytest.raises(TypeError, match="`width`"):
        resnet18(10, width=2.5)
