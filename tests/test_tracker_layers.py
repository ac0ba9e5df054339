"""`NCTracker` through depth: one pass fills every layer, checked against float64 formulas.

A linear network is set by hand so that the within-class spread shrinks by
known factors layer by layer and vanishes at the last block: the per-layer
values come from the float64 NumPy formulas of docs/metrics.md written here.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import ncgeom.stats  # noqa: E402
from ncgeom import ClassStats, NCReport  # noqa: E402
from ncgeom_torch import FeatureTap, NCTracker  # noqa: E402

K, M, N = 3, 4, 240
#: Ratio of the within-class spread of each block to the previous one: the
#: spread is 1, 1/2, 1/8 and 0 after the blocks "0" to "3" (powers of two and
#: small dyadic inputs: every product is exact, so the last block collapses exactly).
RATIOS = (1.0, 0.5, 0.25, 0.0)
BLOCKS = ("0", "1", "2", "3")


# ----------------------------------------------------------------------------- reference
def reference(h: np.ndarray, y: np.ndarray, num_classes: int) -> dict[str, float]:
    """The depth metrics of features `h` (float64), straight from their definitions."""
    n, d = h.shape
    mu = np.stack([h[y == k].mean(axis=0) for k in range(num_classes)])
    mu_g = h.mean(axis=0)
    dev = h - mu[y]
    sigma_w = dev.T @ dev / n
    centred = mu - mu_g
    sigma_b = centred.T @ centred / num_classes
    cutoff = max(d, num_classes) * np.finfo(np.float64).eps
    nc1 = float(np.trace(sigma_w @ np.linalg.pinv(sigma_b, rcond=cutoff))) / num_classes
    v = np.array([np.mean(np.sum(dev[y == k] ** 2, axis=1)) for k in range(num_classes)])
    pairs = [(k, j) for k in range(num_classes) for j in range(k + 1, num_classes)]
    cdnv = np.mean([(v[k] + v[j]) / (2 * np.sum((mu[k] - mu[j]) ** 2)) for k, j in pairs])
    norms = np.linalg.norm(centred, axis=1)
    gram = centred @ centred.T
    target = np.eye(num_classes) - 1 / num_classes
    etf = np.linalg.norm(gram / np.linalg.norm(gram) - target / np.linalg.norm(target))
    unit = mu / np.linalg.norm(mu, axis=1, keepdims=True)
    orth = np.mean([abs(unit[k] @ unit[j]) for k, j in pairs])
    nearest = np.argmin(((h[:, None, :] - mu[None]) ** 2).sum(axis=2), axis=1)
    return {
        "nc1": nc1,
        "cdnv": float(cdnv),
        "nc1_trace_ratio": float(np.trace(sigma_w) / np.trace(sigma_b)),
        "etf_error": float(etf),
        "orthogonality_error": float(orth),
        "equinorm": float(norms.std() / norms.mean()),
        "ncc_accuracy": float(np.mean(nearest == y)),
    }


# ----------------------------------------------------------------------------- the network
def dyadic() -> tuple[torch.Tensor, torch.Tensor]:
    """Noise n (N, M) in multiples of 1/8 and a mixing matrix B (K, M) of small integers."""
    gen = torch.Generator().manual_seed(5)
    noise = torch.randint(-8, 9, (N, M), generator=gen).double() / 8
    mix = torch.randint(-2, 3, (K, M), generator=gen).double()
    return noise, mix


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``[3 e_y + B n, n]`` (K class coordinates, M noise coordinates)."""
    y = torch.arange(N) % K
    noise, mix = dyadic()
    classes = 3 * torch.eye(K, dtype=torch.float64)[y] + noise @ mix.T
    return torch.cat([classes, noise], dim=1), y


def hand_set_net() -> nn.Sequential:
    """Blocks mapping ``[c, n]`` to ``[c + (r - 1) B n, r n]``: the spread of the noise
    shrinks by r, in the class coordinates too; r = 0 collapses every class to 3 e_y.
    The classifier reads the class coordinates."""
    _, mix = dyadic()
    blocks = []
    for ratio in RATIOS:
        block = nn.Linear(K + M, K + M, bias=False).double()
        weight = torch.zeros(K + M, K + M, dtype=torch.float64)
        weight[:K, :K] = torch.eye(K)
        weight[:K, K:] = (ratio - 1) * mix
        weight[K:, K:] = ratio * torch.eye(M)
        block.weight.data.copy_(weight)
        blocks.append(block)
    head = nn.Linear(K + M, K, bias=False).double()
    head.weight.data.copy_(torch.cat([torch.eye(K), torch.zeros(K, M)], dim=1))
    return nn.Sequential(*blocks, head)


def loader(x: torch.Tensor, y: torch.Tensor, size: int = 50) -> list:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


def block_outputs(net: nn.Sequential, x: torch.Tensor) -> list[np.ndarray]:
    out, h = [], x.numpy()
    for block in list(net)[:-1]:
        h = h @ block.weight.detach().numpy().T
        out.append(h)
    return out


@pytest.fixture(scope="module")
def evaluated():
    x, y = data()
    net = hand_set_net()
    report = NCTracker(K).evaluate(net, loader(x, y), layers=list(BLOCKS))
    return report, block_outputs(net, x), y.numpy()


def test_the_network_collapses_at_the_known_depths(evaluated) -> None:
    report, outputs, y = evaluated
    spread = [
        math.sqrt(
            np.mean(np.sum((h - np.stack([h[y == k].mean(0) for k in range(K)])[y]) ** 2, 1))
        )
        for h in outputs
    ]
    assert spread[:3] == pytest.approx([spread[0], spread[0] / 2, spread[0] / 8], rel=1e-12)
    assert spread[-1] == 0.0  # exactly collapsed at the last block
    assert report.layers == BLOCKS
    assert report.progression().progresses


@pytest.mark.parametrize("layer", range(len(BLOCKS)))
def test_every_layer_matches_the_float64_formulas(evaluated, layer: int) -> None:
    report, outputs, y = evaluated
    want = reference(outputs[layer], y, K)
    name = BLOCKS[layer]
    for metric, expected in want.items():
        got = report.value(name, metric)
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-12), (name, metric)
    assert report.reduce[name] == "pool"


def test_the_last_layer_has_the_classifier_metrics(evaluated) -> None:
    report = evaluated[0]
    last = report.reports[BLOCKS[-1]]
    assert last.ncc_agreement == 1.0  # logits 3 e_y: argmax and nearest centre agree
    assert last.self_duality_error is not None
    assert all(report.reports[name].self_duality_error is None for name in BLOCKS[:-1])


# ----------------------------------------------------------------------------- reduce modes
def maps(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(shape[0]) % K
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    x = x + 2 * y.reshape(-1, *([1] * (len(shape) - 1))).double() * torch.linspace(
        -1, 1, math.prod(shape[1:]), dtype=torch.float64
    ).reshape(1, *shape[1:])
    return x, y


@pytest.mark.parametrize(
    ("shape", "layout", "axes"),
    [
        ((90, 3, 4, 5), "channels_first", (2, 3)),  # torch NCHW: over H, W
        ((90, 3, 6), "channels_first", (2,)),  # (N, C, L): over L
        ((90, 4, 5, 3), "channels_last", (1, 2)),  # NHWC: over H, W
    ],
)
def test_pool_averages_the_spatial_axes(shape, layout, axes) -> None:
    x, y = maps(shape)
    tracker = NCTracker(K, layout=layout)
    for part in torch.split(torch.arange(shape[0]), 40):
        tracker.observe({"conv": x[part]}, y[part])
    stats = tracker.layer_stats["conv"]
    pooled = x.numpy().mean(axis=axes)
    want = reference(pooled, y.numpy(), K)
    report = tracker.report()
    assert stats.dim == pooled.shape[1]
    for metric in ("nc1", "cdnv", "nc1_trace_ratio", "equinorm"):
        assert report.value("conv", metric) == pytest.approx(want[metric], rel=1e-10), metric


def test_flatten_keeps_no_gram_and_the_second_pass_gives_nc1() -> None:
    x, y = maps((120, 2, 3, 3), seed=1)
    model = nn.Sequential(nn.Identity(), nn.Flatten(), nn.Linear(18, K, bias=False)).double()
    tracker = NCTracker(K, reduce={"0": "flatten"})
    report = tracker.evaluate(model, loader(x, y, 32), layers=["0", "1"])
    assert tracker.layer_stats["0"].gram is None  # flatten: no (d, d) Gram
    assert tracker.layer_stats["1"].gram is not None
    assert report.reduce == {"0": "flatten", "1": "pool"}
    want = reference(x.reshape(120, -1).numpy(), y.numpy(), K)
    for name in ("0", "1"):
        for metric, expected in want.items():
            got = report.value(name, metric)
            assert got == pytest.approx(expected, rel=1e-9), (name, metric)


def test_tokens_take_every_position_as_a_sample() -> None:
    x, y = maps((30, 4, 5), seed=2)  # (N, T, d)
    tracker = NCTracker(K, reduce="tokens", layout="channels_last")
    tracker.observe({"seq": x}, y)
    rows = x.reshape(120, 5).numpy()
    want = reference(rows, np.repeat(y.numpy(), 4), K)
    assert tracker.report().value("seq", "nc1") == pytest.approx(want["nc1"], rel=1e-10)


# ----------------------------------------------------------------------------- bounded cost
def test_one_host_read_per_batch_for_all_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    from host_sync import HostSyncAudit

    monkeypatch.setattr(ncgeom.stats, "on_host", lambda xp, device=None: False)
    x, y = maps((200, 3, 4, 4), seed=3)
    batches = list(zip(x.split(50), y.split(50), strict=True))
    tracker = NCTracker(K, reduce={"flat": "flatten"})
    with HostSyncAudit() as audit:
        for xb, yb in batches:
            tracker.observe({"pool": xb, "flat": xb, "rows": xb[:, :, 0, 0]}, yb)
    assert audit.kinds() == [("read", "cpu")] * len(batches)
    assert audit.largest() <= 2 + 3  # the label range and one count per layer


def test_evaluate_reads_once_per_first_pass_batch_and_never_in_the_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from host_sync import HostSyncAudit

    monkeypatch.setattr(ncgeom.stats, "on_host", lambda xp, device=None: False)
    x, y = data()
    net = hand_set_net()

    headless = net[:-1]  # no classifier: the second pass is the layers' SecondPass only

    def reads(size: int) -> int:
        with HostSyncAudit() as audit:
            report = NCTracker(K).evaluate(headless, loader(x, y, size), layers=list(BLOCKS))
        assert report.ncc_accuracy["3"] == 1.0
        return len(audit.syncs)

    # 6 more batches, 6 more reads: one each in the first pass, none in the second.
    assert reads(20) - reads(40) == 6


# ----------------------------------------------------------------------------- the default path
def test_the_single_layer_path_is_unchanged() -> None:
    x, y = data()
    tracker = NCTracker(K)
    stats = ClassStats.empty(K, K + M, xp=torch, dtype=torch.float64)
    for xb, yb in loader(x, y):
        tracker.observe(xb, yb)
        stats = stats.update(xb, yb)
    for field in ("counts", "shift", "sums", "sqnorms", "gram", "scale"):
        assert torch.equal(getattr(tracker.stats, field), getattr(stats, field)), field
    net = hand_set_net()
    report = NCTracker(K).evaluate(net, loader(x, y), "4")
    assert isinstance(report, NCReport)
    h = block_outputs(net, x)[-1]
    assert report.nc1 == pytest.approx(reference(h, y.numpy(), K)["nc1"], abs=1e-12)


# ----------------------------------------------------------------------------- errors
def test_bad_arguments_name_the_argument_and_show_the_value() -> None:
    with pytest.raises(ValueError, match=r"`reduce` must be one of \[.*\]; got 'max'"):
        NCTracker(K, reduce="max")
    with pytest.raises(ValueError, match=r"`reduce\['a'\]` must be one of .*; got 'mean'"):
        NCTracker(K, reduce={"a": "mean"})
    with pytest.raises(ValueError, match=r"`layout` must be one of .*; got 'NHWC'"):
        NCTracker(K, layout="NHWC")
    net = hand_set_net()
    x, y = data()
    with pytest.raises(ValueError, match=r"`layers` names 'block9', which is not in the model"):
        NCTracker(K).evaluate(net, loader(x, y), layers="block9")
    with pytest.raises(TypeError, match=r"`layers` must be a dotted name.*; got float 0.5"):
        NCTracker(K).evaluate(net, loader(x, y), layers=0.5)
    spare = nn.ModuleDict({"used": net, "spare": nn.Linear(1, 1)})
    spare.forward = net.forward  # the spare module never runs
    with pytest.raises(ValueError, match=r"did not run in the forward pass: \['spare'\]"):
        NCTracker(K).evaluate(spare, loader(x, y), layers=["used.0", "spare"])
    with pytest.raises(TypeError, match=r"`layer` \(the classifier.*required without `layers`"):
        NCTracker(K).evaluate(net, loader(x, y))


def test_bad_batches_name_the_layer() -> None:
    threads = torch.get_num_threads()
    x, y = maps((20, 3, 2, 2))
    tracker = NCTracker(K)
    with pytest.raises(TypeError, match=r"`features\['a'\]` must be a torch.Tensor; got list"):
        tracker.observe({"a": [1.0]}, y)
    with pytest.raises(ValueError, match=r"`features` must map at least one layer"):
        tracker.observe({}, y)
    bad = x.clone()
    bad[3, 1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"`features\['b'\]` must be finite; 1 row\(s\) .* row 3"):
        tracker.observe({"a": x, "b": bad}, y)
    with pytest.raises(ValueError, match=r"labels"):
        tracker.observe({"a": x}, y + K)
    assert tracker.layer_stats == {}  # nothing was added by the refused batches
    assert torch.get_num_threads() == threads  # small batches run on one thread, then back
    tracker.observe({"a": x, "b": x}, y)
    with pytest.raises(ValueError, match=r"must name the layers of the earlier batches"):
        tracker.observe({"a": x}, y)
    flat = NCTracker(K, reduce="flatten")
    flat.observe({"b": x}, y)
    with pytest.raises(ValueError, match=r"`features\['b'\]` must give 12 columns .*; got 6"):
        flat.observe({"b": x[:, :, :1]}, y)
    with pytest.raises(ValueError, match=r"one layer .* or of several"):
        tracker.observe(x[:, :, 0, 0], y)
    with pytest.raises(RuntimeError, match=r"read `layer_stats`"):
        _ = tracker.stats
    with pytest.raises(RuntimeError, match=r"use combined_layer_stats\(\)"):
        tracker.combined_stats()


def test_tap_outputs_feed_the_tracker() -> None:
    x, y = data()
    net = hand_set_net()
    tracker = NCTracker(K)
    with torch.no_grad(), FeatureTap(net, layers=["1", "3"]) as tap:
        for xb, yb in loader(x, y):
            net(xb)
            tracker.observe(tap.outputs, yb)
    report = tracker.report(net[4])
    outputs = block_outputs(net, x)
    assert report.layers == ("1", "3")
    assert report.value("1", "nc1") == pytest.approx(
        reference(outputs[1], y.numpy(), K)["nc1"], rel=1e-9
    )
    assert report.value("3", "nc1") == 0.0  # exactly collapsed
    # statistics alone give no NCC: the report says why
    assert report.ncc_accuracy["1"] is None
    assert report.reports["3"].ncc_agreement is None
    assert len(tracker.history) == 1


def test_theory_goes_to_the_last_layer_and_the_history_saves(tmp_path) -> None:
    x, y = data()
    net = hand_set_net()
    tracker = NCTracker(K)
    report = tracker.evaluate(
        net, loader(x, y), layers=list(BLOCKS), step=3, lambda_w=1e-3, lambda_h=1e-3
    )
    assert report.reports["3"].gof_error is not None
    assert all(report.reports[name].gof_error is None for name in BLOCKS[:-1])
    saved = json.loads(tracker.save(tmp_path / "nc.json").read_text())
    (entry,) = saved["history"]
    assert entry["step"] == 3 and entry["report"]["layers"] == list(BLOCKS)
    assert entry["report"]["lambda_w"] == 1e-3
    with pytest.raises(ValueError, match=r"`lambda_w` and `lambda_h` must be given together"):
        tracker.evaluate(net, loader(x, y), layers=list(BLOCKS), lambda_w=1e-3)
