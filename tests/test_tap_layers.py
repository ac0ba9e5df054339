"""`FeatureTap(layers=)`: the outputs of named modules, module types or a predicate.

The default tap (`layer`, the input of the classifier) must stay as it was:
one forward pre-hook on that layer, nothing else.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from ncgeom_torch import FeatureTap, match_layers  # noqa: E402


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x))


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 6), nn.ReLU(), Block(6), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)
    )


def hooks(net: nn.Module) -> list[tuple[str, int, int]]:
    """(name, forward hooks, forward pre-hooks) of every module that has any."""
    found = []
    for name, module in net.named_modules():
        counts = (len(module._forward_hooks), len(module._forward_pre_hooks))
        if any(counts):
            found.append((name, *counts))
    return found


def test_names_types_predicates_and_sequences_in_module_order() -> None:
    net = make_net()
    assert list(match_layers(net, "2.act")) == ["2.act"]
    assert list(match_layers(net, nn.ReLU)) == ["1", "4"]
    assert list(match_layers(net, nn.Linear)) == ["0", "2.linear", "3", "5"]
    assert list(match_layers(net, lambda name, m: name.startswith("2"))) == [
        "2",
        "2.linear",
        "2.act",
    ]
    # a sequence mixes names, modules and types; the order is the model's
    assert list(match_layers(net, ["4", net[2], nn.Tanh, "1", "4"])) == ["1", "2", "2.act", "4"]
    # the names of a wrapped model are those of the module inside
    assert list(match_layers(nn.DataParallel(net), ["module.3", "1"])) == ["1", "3"]


def test_outputs_are_the_modules_outputs() -> None:
    net = make_net()
    x = torch.randn(7, 4)
    with FeatureTap(net, layers=[nn.ReLU, "2"]) as tap:
        net(x)
        outputs = tap.outputs
    assert tap.names == ("1", "2", "4")
    assert list(outputs) == ["1", "2", "4"]
    with torch.no_grad():
        assert torch.equal(outputs["1"], net[:2](x))
        assert torch.equal(outputs["2"], net[:3](x))
        assert torch.equal(outputs["4"], net[:5](x))
    assert not any(t.requires_grad for t in outputs.values())
    assert hooks(net) == []  # removed on exit
    assert tap.num_forwards == 1
    # a block runs after its parts, but the outputs keep the model's order
    with FeatureTap(net, layers=["2.linear", "2"]) as tap:
        net(x)
    assert list(tap.outputs) == ["2", "2.linear"]


def test_raw_shapes_are_kept_and_each_pass_replaces_the_last() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 2))
    with FeatureTap(net, layers=["0", "2"]) as tap:
        net(torch.randn(5, 2, 4, 4))
        first = tap.outputs
        x = torch.randn(2, 2, 4, 4)
        net(x)
        second = tap.outputs
    assert tuple(first["0"].shape) == (5, 3, 4, 4)
    assert tuple(second["0"].shape) == (2, 3, 4, 4)
    with torch.no_grad():
        assert torch.equal(second["2"], net[:3](x))
    assert tap.num_forwards == 2


def test_detach_false_keeps_the_graph() -> None:
    net = make_net()
    with FeatureTap(net, layers="3", detach=False) as tap:
        net(torch.randn(3, 4))
    assert tap.outputs["3"].requires_grad


def test_the_default_tap_is_unchanged() -> None:
    net = make_net()
    x = torch.randn(6, 4)
    with FeatureTap(net, "5") as tap:
        assert hooks(net) == [("5", 0, 1)]  # one pre-hook on the classifier, nothing else
        net(x)
    with torch.no_grad():
        assert torch.equal(tap.features, net[:5](x))
    assert tap.layer is net[5] and tap.layers == {}
    assert tap.names == ("5",)
    assert hooks(net) == []
    with pytest.raises(RuntimeError, match="read `features`"):
        _ = tap.outputs


def test_hooks_are_removed_when_the_block_raises() -> None:
    net = make_net()
    with pytest.raises(ZeroDivisionError), FeatureTap(net, layers=nn.Linear):
        assert len(hooks(net)) == 5  # four modules and the model's start-of-pass hook
        _ = 1 / 0
    assert hooks(net) == []


def test_an_output_changed_in_place_is_refused() -> None:
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(inplace=True), nn.Linear(3, 2))
    with FeatureTap(net, layers="0") as tap:
        net(torch.randn(4, 3))
    with pytest.raises(RuntimeError, match=r"output of layer '0' was changed in place"):
        _ = tap.outputs


def test_an_output_that_is_not_a_tensor_names_the_module() -> None:
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pair = Pair()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.pair(x)[0]

    net = Net()
    with pytest.raises(TypeError, match=r"output of layer 'pair' \(Pair\) must be a tensor"):
        with FeatureTap(net, layers="pair"):
            net(torch.ones(2, 2))


@pytest.mark.parametrize(
    ("layers", "error", "pattern"),
    [
        ("2.lin", ValueError, r"`layers` names '2.lin', which is not in the model; did you mean"),
        (["1", "nope"], ValueError, r"`layers` names 'nope', which is not in the model"),
        (nn.Conv2d, ValueError, r"`layers` Conv2d matched no layer of the model; its layers: \["),
        (lambda n, m: False, ValueError, r"`layers` <function .* matched no layer"),
        ([], ValueError, r"`layers` must name at least one layer; got an empty sequence"),
        (3, TypeError, r"`layers` must be a dotted name, .*; got int 3$"),
        ([1.5], TypeError, r"`layers` must be a dotted name, .*; got list \[1.5\]$"),
        (int, TypeError, r"`layers` types must be torch.nn.Module subclasses; got int$"),
        (nn.Linear(2, 2), ValueError, r"`layers` holds a Linear that is not a submodule"),
    ],
)
def test_bad_layers_name_the_argument_and_show_the_value(layers, error, pattern) -> None:
    net = make_net()
    with pytest.raises(error, match=pattern):
        FeatureTap(net, layers=layers)


def test_exactly_one_of_layer_and_layers() -> None:
    net = make_net()
    with pytest.raises(TypeError, match=r"exactly one of `layer` .* got both"):
        FeatureTap(net, "5", layers="1")
    with pytest.raises(TypeError, match=r"exactly one of `layer` .* got neither"):
        FeatureTap(net)
    with pytest.raises(RuntimeError, match="no forward pass has been captured yet"):
        _ = FeatureTap(net, layers="1").outputs
    with pytest.raises(RuntimeError, match="read `outputs`"):
        _ = FeatureTap(net, layers="1").features
