"""The GPU contract, checked on CPU tensors: few host reads, none inside loops.

`HostSyncAudit` records every torch call that would make the host wait for a
CUDA device. The core takes its GPU branches here because `on_host` is patched
to say "device" for every torch tensor. Each test compares a call made of one
chunk (batch, block) with the same call made of many: the record must not grow
with the number of chunks, and no read may be of feature size.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest

torch = pytest.importorskip("torch")

from host_sync import HostSyncAudit  # noqa: E402

import ncgeom.stats  # noqa: E402
from ncgeom import ClassStats, metrics, nc_report, ufm_relu_optimum  # noqa: E402
from ncgeom import solve as solve_module  # noqa: E402

N, D, K = 4096, 24, 6
#: The one read a batch costs: min and max label plus the count of non-finite rows.
BATCH_CHECK = [("read", "cpu")]


@pytest.fixture(autouse=True)
def _device_branches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the core treat torch CPU tensors as device tensors."""
    monkeypatch.setattr(ncgeom.stats, "on_host", lambda xp, device=None: False)


def _data(num: int = N, dim: int = D, classes: int = K, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(num) % classes
    labels = labels[torch.randperm(num, generator=gen)]
    centres = 3 * torch.randn(classes, dim, generator=gen, dtype=torch.float64)
    features = centres[labels] + torch.randn(num, dim, generator=gen, dtype=torch.float64)
    return features, labels


def test_the_audit_records_every_kind_of_synchronising_call() -> None:
    x = torch.arange(6.0)
    with HostSyncAudit() as audit:
        _ = bool(x.sum() > 1)
        _ = x[x > 2]
        _ = x[[0, 1]]
        _ = torch.asarray([1.0, 2.0])
        _ = x.to("cpu")
        _ = torch.arange(3).bincount()
        _ = x.tolist()
        _ = x + 1  # asynchronous: not recorded
        _ = x.to(torch.float64)  # a cast, not a transfer: not recorded
    assert audit.kinds() == [
        ("read", "__bool__"),
        ("data-shaped", "__getitem__[mask]"),
        ("upload", "__getitem__[host index]"),
        ("upload", "asarray"),
        ("read", "to"),
        ("data-shaped", "bincount"),
        ("read", "tolist"),
    ]
    assert audit.largest() == 6


@pytest.mark.parametrize("chunk_size", [N, N // 16, 100])
@pytest.mark.parametrize("gram", [True, False])
def test_update_reads_the_host_once_whatever_the_chunks(chunk_size: int, gram: bool) -> None:
    x, y = _data()
    first = ClassStats.empty(K, D, gram=gram, xp=torch)
    with HostSyncAudit() as audit:
        stats = first.update(x, y, chunk_size=chunk_size)
        stats = stats.update(x, y, chunk_size=chunk_size, check_finite=False)
    assert audit.kinds() == BATCH_CHECK * 2
    assert audit.largest() <= 3


@pytest.mark.parametrize("chunk_size", [N, 100])
def test_from_features_reads_the_host_once(chunk_size: int) -> None:
    x, y = _data()
    with HostSyncAudit() as audit:
        ClassStats.from_features(x, y, K, chunk_size=chunk_size)
    assert audit.kinds() == BATCH_CHECK


def test_streaming_costs_one_read_per_batch_and_merging_none() -> None:
    x, y = _data()
    stats = ClassStats.empty(K, D, xp=torch)
    batches = list(zip(x.split(512), y.split(512), strict=True))
    with HostSyncAudit() as audit:
        for xb, yb in batches:
            stats = stats.update(xb, yb)
    assert audit.kinds() == BATCH_CHECK * len(batches)
    other = ClassStats.from_features(x[:100] + 1, y[:100], K)
    with HostSyncAudit() as audit:
        stats.merge(other).merge(stats)
    assert audit.syncs == []


def _report_syncs(chunk_size: int, **kwargs) -> HostSyncAudit:
    x, y = _data()
    with HostSyncAudit() as audit:
        nc_report((x, y), chunk_size=chunk_size, **kwargs)
    return audit


@pytest.mark.parametrize("with_classifier", [False, True])
def test_report_reads_do_not_depend_on_the_chunks(with_classifier: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    kwargs = {"num_classes": K}
    if with_classifier:
        kwargs |= {
            "classifier": torch.randn(K, D, generator=gen, dtype=torch.float64),
            "bias": torch.randn(K, generator=gen, dtype=torch.float64),
            # Computed on the device, so the report uploads nothing.
            "theory": ufm_relu_optimum(torch.full((K,), N // K), 1e-3, 1e-3),
        }
    one = _report_syncs(N, **kwargs)
    many = _report_syncs(64, **kwargs)
    assert many.kinds() == one.kinds()
    # With the theory: its values and its counts, read once for the verdict's
    # context (before the features are touched). Then the label range, the
    # counts with the finiteness of the means, the eigensolver's status (the
    # basis of the centred means), the SVD's status of each nearest ideal
    # geometry (simplex ETF, equal frame, and with the theory the optimum's
    # frame), then the one transfer of every metric and degeneracy flag (40
    # scalars with the objective and NC1's rounding estimate, 20 flags and 5
    # per-class vectors at most). The finiteness of the classifier and bias is
    # read with the label range.
    theory = [("read", "cpu")] * 2 if with_classifier else []
    fits = [("checked", "linalg_svd")] * (3 if with_classifier else 2)
    assert one.kinds() == [
        *theory,
        *[("read", "cpu")] * 2,
        ("checked", "linalg_eigh"),
        *fits,
        ("read", "cpu"),
    ]
    assert one.largest() <= 40 + 20 + 5 * K
    assert many.largest() < N  # never a feature-sized read


def test_report_infers_the_class_count_with_one_more_read() -> None:
    assert len(_report_syncs(N).syncs) == len(_report_syncs(N, num_classes=K).syncs) + 1


def test_report_from_statistics_reads_the_counts_and_the_results_only() -> None:
    x, y = _data()
    stats = ClassStats.from_features(x, y, K)
    with HostSyncAudit() as audit:
        nc_report(stats)
    assert audit.kinds() == [
        ("read", "cpu"),
        ("checked", "linalg_eigh"),
        *[("checked", "linalg_svd")] * 2,  # the nearest simplex ETF and equal frame
        ("read", "cpu"),
    ]


@pytest.mark.parametrize("names", [(name,) for name in metrics.PAIR_METRICS] + [None])
def test_pair_metrics_never_read_the_host_per_block(names) -> None:
    x, y = _data(num=3000, dim=8, classes=300)
    view = metrics.populated(ClassStats.from_features(x, y, 300))
    names = names or metrics.PAIR_METRICS
    with HostSyncAudit() as one_block:
        metrics.pair_metrics(view, names, None)
    with HostSyncAudit() as many_blocks:
        metrics.pair_metrics(view, names, 7)
    assert one_block.syncs == many_blocks.syncs == []


def test_solver_reads_the_host_once_per_check_interval() -> None:
    every = solve_module._CHECK_EVERY

    def syncs(max_iter: int) -> int:
        with HostSyncAudit() as audit:
            run = solve_module.solve_ufm(
                [5, 3, 2], 1e-2, 1e-2, 4, xp=torch, max_iter=max_iter, tol=1e-300, restarts=2
            )
        assert run.iterations == max_iter  # the tolerance is out of reach
        return len(audit.syncs)

    assert syncs(6 * every) - syncs(every) == 5


def test_tracker_observe_reads_the_host_once_per_batch() -> None:
    from ncgeom_torch import NCTracker

    x, y = _data()
    tracker = NCTracker(num_classes=K, dtype=torch.float64)
    with HostSyncAudit() as audit:
        for xb, yb in zip(x.split(1024), y.split(1024), strict=True):
            tracker.observe(xb, yb)
    assert audit.kinds() == BATCH_CHECK * 4


def _run_case(case: str, rows: int) -> None:
    x, y = _data()
    if case.startswith("update"):
        empty = ClassStats.empty(K, D, gram=case == "update_gram", xp=torch)
        empty.update(x, y, chunk_size=rows)
    else:
        w = torch.randn(K, D, dtype=torch.float64) if case == "report_classifier" else None
        nc_report((x, y), w, num_classes=K, chunk_size=rows)


#: Most kernel-launching torch calls per chunk: the work queued for each chunk
#: of both passes (class means in float64; then deviations, scaled, with their
#: class sums, squared norms and Gram or projections).
KERNELS_PER_CHUNK = {"update_gram": 12, "update_nogram": 10, "report": 16, "report_classifier": 32}


@pytest.mark.parametrize("case", list(KERNELS_PER_CHUNK))
def test_each_chunk_queues_the_same_few_kernels(case: str) -> None:
    chunks = 64
    with HostSyncAudit() as one:
        _run_case(case, N)
    with HostSyncAudit() as many:
        _run_case(case, N // chunks)
    extra = sum(many.kernels.values()) - sum(one.kernels.values())
    # Every further chunk adds the same calls: nothing loops over classes or rows.
    assert extra % (chunks - 1) == 0, many.kernels - one.kernels
    assert 0 < extra // (chunks - 1) <= KERNELS_PER_CHUNK[case]


def _cuda_syncs(run: Callable[[], object]) -> int:
    """Synchronisations torch itself reports for `run` (its sync debug mode)."""
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_synchronisations_do_not_grow_with_the_chunks() -> None:
    x, y = (t.cuda() for t in _data())
    w = torch.randn(K, D, dtype=torch.float64, device="cuda")
    empty = ClassStats.empty(K, D, xp=torch, device=x.device)

    def update(rows: int) -> Callable[[], object]:
        return lambda: empty.update(x, y, chunk_size=rows)

    def report(rows: int) -> Callable[[], object]:
        return lambda: nc_report((x, y), w, num_classes=K, chunk_size=rows)

    for case in (update, report):
        case(64)()  # warm-up: first calls load kernels
        assert _cuda_syncs(case(N)) == _cuda_syncs(case(64)), case.__name__
    assert 1 <= _cuda_syncs(update(64)) <= 2  # the batch check's one read


def test_a_training_step_with_the_tap_and_the_regulariser_never_waits() -> None:
    from torch import nn
    from torch.nn import functional as F

    from ncgeom_torch import FeatureTap, UFMRegularizer

    gen = torch.Generator().manual_seed(2)
    net = nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, K, bias=False))
    reg = UFMRegularizer(lambda_w=5e-3, lambda_h=5e-3, num_samples=N)
    x, y = torch.randn(64, D, generator=gen), torch.randint(0, K, (64,), generator=gen)
    with HostSyncAudit() as audit:
        with FeatureTap(net, net[2], detach=False) as tap:
            loss = F.cross_entropy(net(x), y) + reg(net[2], tap.features)
        loss.backward()
    assert audit.syncs == []
    assert audit.kernels["matmul"] + audit.kernels["linear"] >= 2  # the audit saw the step
