"""The CIFAR python-pickle loader and the long-tailed subsets of ncgeom_torch.cifar.

The loader reads small files written here in the exact format of the
archives (a pickled dict with b"data" uint8 (N, 3072), rows of 1024 red, then
1024 green, then 1024 blue values, and b"labels" or b"fine_labels").
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ncgeom_torch.cifar import (  # noqa: E402
    load_cifar,
    long_tailed_counts,
    long_tailed_indices,
)


def hand_image(n: int) -> list[list[list[int]]]:
    """A distinct 3 x 32 x 32 image as nested lists: [channel][row][column]."""
    return [
        [[(7 * n + 3 * c + 11 * i + j) % 256 for j in range(32)] for i in range(32)]
        for c in range(3)
    ]


def cifar_row(image: list[list[list[int]]]) -> list[int]:
    """The 3072 values of one image as the format stores them: R plane, G plane, B plane."""
    red, green, blue = image
    return (
        [v for row in red for v in row]
        + [v for row in green for v in row]
        + [v for row in blue for v in row]
    )


def write_batch(path, first: int, count: int, label_key: bytes, num_classes: int, protocol=2):
    images = [hand_image(n) for n in range(first, first + count)]
    batch = {
        b"batch_label": b"testing batch",
        b"data": np.array([cifar_row(im) for im in images], dtype=np.uint8),
        label_key: [(n * 3) % num_classes for n in range(first, first + count)],
        b"filenames": [f"img_{n}.png".encode() for n in range(first, first + count)],
    }
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [n % 20 for n in range(first, first + count)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        pickle.dump(batch, handle, protocol=protocol)
    return images, batch[label_key]


@pytest.fixture
def cifar10_root(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    images, labels = [], []
    for i in range(1, 6):
        ims, labs = write_batch(folder / f"data_batch_{i}", 4 * (i - 1), 4, b"labels", 10)
        images += ims
        labels += labs
    test_images, test_labels = write_batch(folder / "test_batch", 100, 3, b"labels", 10, 5)
    return tmp_path, (images, labels), (test_images, test_labels)


def test_cifar10_pixel_layout_and_labels(cifar10_root):
    root, (images, labels), (test_images, test_labels) = cifar10_root
    x, y = load_cifar(root)
    assert x.dtype == torch.uint8 and tuple(x.shape) == (20, 3, 32, 32)
    assert y.dtype == torch.int64 and y.tolist() == labels
    assert x.tolist() == images  # [n][channel][row][column], batches in order 1..5
    # one pixel by hand: image 5 (second batch), green channel, row 2, column 7
    assert int(x[5, 1, 2, 7]) == (7 * 5 + 3 * 1 + 11 * 2 + 7) % 256
    xt, yt = load_cifar(str(root), train=False)
    assert xt.tolist() == test_images and yt.tolist() == test_labels


def test_the_row_order_is_red_then_green_then_blue(tmp_path):
    # a single image whose stored row is 0..3071 mod 256: position p of the row is
    # channel p // 1024, row (p % 1024) // 32, column p % 32
    folder = tmp_path / "cifar-10-batches-py"
    row = np.arange(3072) % 256
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        folder.mkdir(exist_ok=True)
        with (folder / name).open("wb") as handle:
            pickle.dump({b"data": row[None].astype(np.uint8), b"labels": [9]}, handle, 2)
    x, y = load_cifar(tmp_path, train=False)
    for p in (0, 1, 31, 32, 1023, 1024, 1025, 2047, 2048, 3071):
        c, i, j = p // 1024, (p % 1024) // 32, p % 32
        assert int(x[0, c, i, j]) == p % 256
    assert y.tolist() == [9]


def test_files_pickled_by_older_numpy_load(tmp_path):
    # the published archives name numpy.core.multiarray._reconstruct (numpy < 2)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rows = (np.arange(2 * 3072) % 251).astype(np.uint8).reshape(2, 3072)
    blob = pickle.dumps({b"data": rows, b"fine_labels": [4, 99]}, protocol=2)
    legacy = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in legacy
    (folder / "test").write_bytes(legacy)
    x, y = load_cifar(tmp_path, dataset="cifar100", train=False)
    assert np.array_equal(x.numpy().reshape(2, 3072), rows) and y.tolist() == [4, 99]


def test_cifar100_reads_the_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    images, labels = write_batch(folder / "train", 0, 6, b"fine_labels", 100, protocol=4)
    write_batch(folder / "test", 50, 2, b"fine_labels", 100)
    x, y = load_cifar(tmp_path, dataset="cifar100")
    assert x.tolist() == images and y.tolist() == labels
    assert y.tolist() == [0, 3, 6, 9, 12, 15]  # not the coarse labels
    assert load_cifar(tmp_path, dataset="cifar100", train=False)[0].shape[0] == 2


def test_a_missing_copy_names_what_to_put_where(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_cifar(tmp_path / "data")
    message = str(info.value)
    assert "`root`" in message
    assert str(tmp_path / "data" / "cifar-10-batches-py") in message
    assert "data_batch_1" in message and "data_batch_5" in message and "test_batch" in message
    assert "cifar-10-python.tar.gz" in message
    assert "\n" not in message
    with pytest.raises(FileNotFoundError, match=r"files train, test in .*cifar-100-python"):
        load_cifar(tmp_path, dataset="cifar100")


def test_a_partial_copy_is_missing_too(cifar10_root):
    root = cifar10_root[0]
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar(root)
    assert load_cifar(root, train=False)[0].shape[0] == 3  # the test split is complete


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_files_that_are_not_cifar_batches_are_refused(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    with (folder / "test").open("wb") as handle:
        pickle.dump({b"data": _Evil(), b"fine_labels": [0]}, handle)
    with pytest.raises(ValueError, match="refusing to load"):
        load_cifar(tmp_path, dataset="cifar100", train=False)
    with (folder / "test").open("wb") as handle:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, handle)
    with pytest.raises(ValueError, match="fine_labels"):
        load_cifar(tmp_path, dataset="cifar100", train=False)
    with (folder / "test").open("wb") as handle:
        pickle.dump({b"data": np.zeros((2, 1024), np.uint8), b"fine_labels": [0, 1]}, handle)
    with pytest.raises(ValueError, match=r"\(N, 3072\)"):
        load_cifar(tmp_path, dataset="cifar100", train=False)
    with (folder / "test").open("wb") as handle:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100]}, handle)
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        load_cifar(tmp_path, dataset="cifar100", train=False)
    with pytest.raises(ValueError, match="`dataset`"):
        load_cifar(tmp_path, dataset="cifar1000")


# Training-set sizes of the long-tailed CIFAR subsets as published (Cao et al., 2019,
# LDAM-DRW and later work): exp profile, n_max = 5000 (CIFAR-10) or 500 (CIFAR-100).
PUBLISHED_SIZES = {
    (10, 10): 20431,
    (10, 50): 13996,
    (10, 100): 12406,
    (100, 10): 19573,
    (100, 50): 12608,
    (100, 100): 10847,
}


@pytest.mark.parametrize(("num_classes", "imbalance"), sorted(PUBLISHED_SIZES))
def test_exp_profile_matches_the_published_sizes(num_classes, imbalance):
    n_max = 5000 if num_classes == 10 else 500
    counts = long_tailed_counts(n_max, num_classes, imbalance=imbalance)
    assert sum(counts) == PUBLISHED_SIZES[num_classes, imbalance]
    k = np.arange(num_classes)
    assert counts == np.floor(n_max * float(imbalance) ** (-k / (num_classes - 1))).tolist()
    assert counts[0] == n_max and counts[-1] == n_max // imbalance


def test_exp_cifar10_rho100_counts():
    assert long_tailed_counts(5000, 10, imbalance=100) == [
        5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50,
    ]  # fmt: skip


def test_step_profile_and_bad_arguments():
    assert long_tailed_counts(5000, 10, imbalance=100, profile="step") == [5000] * 5 + [50] * 5
    assert long_tailed_counts(9, 3, imbalance=4, profile="step") == [9, 9, 2]
    assert long_tailed_counts(10, 4, imbalance=1) == [10] * 4
    assert long_tailed_counts(3, 3, imbalance=1000) == [3, 1, 1]  # at least one a class
    with pytest.raises(ValueError, match="`imbalance`"):
        long_tailed_counts(10, 3, imbalance=0.5)
    with pytest.raises(ValueError, match="`profile`"):
        long_tailed_counts(10, 3, imbalance=2, profile="linear")
    with pytest.raises(ValueError, match="`num_classes`"):
        long_tailed_counts(10, 1, imbalance=2)


def test_long_tailed_indices_draw_each_class_count():
    labels = np.repeat(np.arange(4), 30)[np.random.default_rng(1).permutation(120)]
    expected = long_tailed_counts(30, 4, imbalance=10)
    subset = long_tailed_indices(labels, 4, imbalance=10, seed=3)
    assert subset.dtype == np.int64
    assert np.all(np.diff(subset) > 0)  # sorted, no repeats
    assert np.bincount(labels[subset], minlength=4).tolist() == expected
    again = long_tailed_indices(labels, 4, imbalance=10, seed=3)
    other = long_tailed_indices(labels, 4, imbalance=10, seed=4)
    assert np.array_equal(subset, again) and not np.array_equal(subset, other)
    tensor = long_tailed_indices(torch.as_tensor(labels), 4, imbalance=10, seed=3)
    assert isinstance(tensor, torch.Tensor) and tensor.tolist() == subset.tolist()
    step = long_tailed_indices(labels, 4, imbalance=10, profile="step")
    assert np.bincount(labels[step]).tolist() == [30, 30, 3, 3]


def test_long_tailed_indices_errors():
    labels = np.array([0] * 10 + [1] * 4 + [2] * 10)
    with pytest.raises(ValueError, match="class 1 has 4 samples"):
        long_tailed_indices(labels, 3, imbalance=1)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        long_tailed_indices(labels, 2, imbalance=2)
    with pytest.raises(ValueError, match="1-D integer"):
        long_tailed_indices(labels.astype(float), 3, imbalance=2)


# --------------------------------------------------------------------------- the paper preset


@pytest.fixture
def one_thread():
    """One torch thread: small networks on a shared CPU run faster and steadier so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_random_cifar10(root, per_class: int, test_per_class: int = 1, seed: int = 0):
    """A CIFAR-10 copy of random images, `per_class` a class spread over the 5 batches."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels = np.repeat(np.arange(10), per_class)[rng.permutation(10 * per_class)]
    chunks = np.array_split(labels, 5)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    parts = [*chunks, np.repeat(np.arange(10), test_per_class)]
    for name, chunk in zip(names, parts, strict=True):
        data = rng.integers(0, 256, (len(chunk), 3072), dtype=np.uint8)
        with (folder / name).open("wb") as handle:
            pickle.dump({b"data": data, b"labels": chunk.tolist()}, handle, protocol=2)
    return labels


def test_paper_preset_smoke_run_from_the_command_line_hooks(tmp_path, capsys, one_thread):
    import argparse
    import json

    from ncgeom_torch.reproduce_paper import add_paper_arguments, run_from_args

    write_random_cifar10(tmp_path / "data", per_class=6)
    # a parser that already has --device, --out and --seed, as `ncgeom reproduce` does
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="unused")
    parser.add_argument("--seed", type=int, default=0)
    add_paper_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(
        [
            *("--data-root", str(tmp_path / "data"), "--epochs", "1", "--width", "4"),
            *("--imbalance", "6", "--factors", "0.5", "3", "--out", str(out)),
            *("--batch-size", "16", "--balanced-start", "0.5"),
        ]
    )
    assert run_from_args(args) == 0
    assert "wrote" in capsys.readouterr().out
    summary = json.loads((out / "report.json").read_text())
    markdown = (out / "report.md").read_text()
    assert markdown.startswith("# ncgeom reproduce --preset paper")
    assert markdown.index("## Claims") < markdown.index("## Runs in the terminal phase")
    assert "| 9 | 1 | dead |" in markdown  # the rarest class, predicted dead at 3x
    counts = long_tailed_counts(6, 10, imbalance=6)
    assert summary["counts"] == counts == [6, 4, 4, 3, 2, 2, 1, 1, 1, 1]
    assert summary["criteria"]["alive_fraction"] == 0.5
    assert summary["criteria"]["collapsed_fraction"] == 0.05
    assert [c["verdict"] for c in summary["claims"]] == ["inconclusive", "inconclusive"]
    runs = summary["runs"] + summary["runs_not_terminal"]
    assert [run["factor"] for run in runs] == [0.5, 3.0]
    total = sum(counts)
    # critical product of class k: n_k (K - 1) / (K N^2); lambda = factor * sqrt(min of them)
    critical = np.array(counts) * 9 / (10 * total**2)
    for run in runs:
        lam = run["factor"] * np.sqrt(critical.min())
        assert run["lambda_w"] == pytest.approx(lam, rel=1e-12)
        assert run["predicted_alive"] == (lam * lam < critical).tolist()
        measured = np.array(run["measured_norms"])
        predicted = np.array(run["predicted_norms"])
        alive = predicted > 0
        scale = measured[alive].max() if alive.any() else measured.max()
        expected = [
            "alive" if a and m >= 0.5 * p else "collapsed" if m <= 0.05 * scale else "partial"
            for m, p, a in zip(measured, predicted, alive, strict=True)
        ]
        assert run["outcomes"] == expected
        for acc, n in zip(run["train_accuracy_per_class"], counts, strict=True):
            assert acc * n == pytest.approx(round(acc * n))  # a fraction of the n_k samples
        assert len(run["test_accuracy_per_class"]) == 10
        assert run["terminal"] == run["terminal_phase"]["reached"]
        assert len(run["loss_history"]) == 1 and run["balanced_start"] == 0.5
        assert run["kkt_residual"] >= 0 and 0 <= run["relative_grad_norm"]
    assert runs[1]["predicted_alive"][-1] is False  # 3x the rarest class's critical lambda
    from ncgeom_torch.resnet import BLOCK_NAMES

    depth = runs[0]["depth"]  # collapse through depth, one row per block
    assert all(f"| {name} |" in depth["table"] for name in BLOCK_NAMES)
    assert depth["report"]["layers"] == list(BLOCK_NAMES)
    assert "depth" in depth["progression"]


def test_paper_preset_checks_before_training(tmp_path):
    from ncgeom_torch.reproduce_paper import config_from_args, run_paper

    with pytest.raises(FileNotFoundError, match="`data_root` has no cifar10 copy"):
        run_paper(data_root=str(tmp_path), out=tmp_path / "out", progress=False)
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python" / "train").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"train, test in .*cifar-100-python"):
        run_paper(data_root=str(tmp_path), dataset="cifar100", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="`epochs`"):
        run_paper(data_root=str(tmp_path), epochs=0, out=tmp_path / "out")
    with pytest.raises(ValueError, match="`factors`"):
        run_paper(data_root=str(tmp_path), factors=(), out=tmp_path / "out")
    with pytest.raises(ValueError, match="`device`"):
        run_paper(data_root=str(tmp_path), device="cpu:7", out=tmp_path / "out")
    import argparse

    with pytest.raises(ValueError, match="`--data-root` is required"):
        config_from_args(argparse.Namespace(data_root=None))


def test_claim_verdicts():
    from ncgeom_torch.reproduce_paper import _claim

    def verdict(outcomes, expected="alive"):
        return _claim("c", "p", outcomes, expected)["verdict"]

    assert verdict(["alive", "alive"]) == "pass"
    assert verdict(["alive", "partial"]) == "inconclusive"
    assert verdict(["alive", "collapsed"]) == "fail"
    assert verdict([]) == "inconclusive"
    assert verdict(["collapsed"], "collapsed") == "pass"
    assert verdict(["collapsed", "alive"], "collapsed") == "fail"


def test_synthetic_throughput_counts_one_epoch():
    from ncgeom_torch.reproduce_paper import synthetic_throughput

    threads = torch.get_num_threads()
    result = synthetic_throughput(num_images=12, batch_size=4, width=2, threads=1)
    assert torch.get_num_threads() == threads  # restored
    assert result["images"] == 12 and result["batch_size"] == 4
    assert result["images_per_second"] == pytest.approx(12 / result["seconds"])
    assert result["device"] == "cpu" and "1 torch threads" in result["machine"]
    with pytest.raises(ValueError, match="`num_images`"):
        synthetic_throughput(num_images=1)


@pytest.mark.slow
def test_paper_preset_collapses_the_classes_predicted_dead(tmp_path, one_thread):
    """A narrow ResNet-18 on random images, step profile, at 2x the critical lambda of the
    rare classes: they end collapsed and the head classes alive, with 100% train accuracy
    on the head classes and the objective within 1% of f* (about a minute on one CPU
    thread)."""
    from ncgeom_torch.reproduce_paper import run_paper

    write_random_cifar10(tmp_path / "data", per_class=20)
    summary = run_paper(
        data_root=str(tmp_path / "data"),
        out=tmp_path / "out",
        profile="step",
        imbalance=10,
        factors=(2.0,),
        epochs=100,
        width=8,
        batch_size=32,
        lr=0.2,
        progress=False,
    )
    assert summary["counts"] == [20] * 5 + [2] * 5
    (run,) = summary["runs"] + summary["runs_not_terminal"]
    assert run["predicted_alive"] == [True] * 5 + [False] * 5
    assert run["outcomes"] == ["alive"] * 5 + ["collapsed"] * 5
    critical = np.array(summary["counts"]) * 9 / (10 * 110**2)  # n_k (K-1) / (K N^2)
    assert run["predicted_alive"] == (run["lambda_w"] ** 2 < critical).tolist()
    assert run["train_accuracy_not_collapsed"] == 1.0
    assert abs(run["gap"]) < 1e-2


def test_channel_stats_and_gradient_norm_against_direct_formulas(one_thread):
    from ncgeom_torch.reproduce_paper import _channel_stats, _gradient_norm
    from ncgeom_torch.resnet import resnet18

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    mean, std = _channel_stats(images)
    host = images.numpy().astype(np.float64)
    np.testing.assert_allclose(mean.flatten().numpy(), host.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std.flatten().numpy(), host.std(axis=(0, 2, 3)), rtol=1e-5)

    torch.manual_seed(0)
    model = resnet18(3, width=2).double()
    model.train()
    model(torch.randn(4, 3, 32, 32, dtype=torch.float64))  # move the batch-norm statistics
    mean, std = mean.double(), std.double()
    lam_w, lam_h = 0.3, 0.02
    full, relative = _gradient_norm(model, images, labels, mean, std, lam_w, lam_h, chunk=3)
    # the same objective in one piece, eval mode: mean CE + lam_w/2 ||W||^2 + lam_h/2 sum ||h||^2
    model.eval()
    params = list(model.parameters())
    h = model.features((images.double() - mean) / std)
    data = torch.nn.functional.cross_entropy(model.fc(h), labels)
    penalty = 0.5 * lam_w * model.fc.weight.pow(2).sum() + 0.5 * lam_h * h.pow(2).sum()
    g_data = torch.autograd.grad(data, params, retain_graph=True, allow_unused=True)
    g_pen = torch.autograd.grad(penalty, params, allow_unused=True)

    def norm(grads):
        return float(sum(g.pow(2).sum() for g in grads if g is not None) ** 0.5)

    g_full = [
        (a if a is not None else 0) + (b if b is not None else 0)
        for a, b in zip(g_data, g_pen, strict=True)
    ]
    assert full == pytest.approx(norm(g_full), rel=1e-9)
    assert relative == pytest.approx(norm(g_full) / (norm(g_data) + norm(g_pen)), rel=1e-9)
    assert 0 < relative < 1
