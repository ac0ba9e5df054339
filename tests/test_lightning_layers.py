"""`NeuralCollapseCallback(layers=)`: per-layer metrics logged as ``nc/<layer>/<metric>``.

The validation stage measures one fixed network; its per-layer values must
equal the float64 formulas of docs/metrics.md on the layers' outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lightning")

import lightning.pytorch as pl
import torch
from torch import nn

from ncgeom_torch.lightning import NeuralCollapseCallback

K, N = 3, 96


def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(N) % K
    x = torch.randn(N, 2, 4, 4, generator=g, dtype=torch.float64) + y[:, None, None, None]
    return x, y


def loader(seed: int = 0) -> torch.utils.data.DataLoader:
    x, y = data(seed)
    return torch.utils.data.DataLoader(list(zip(x, y, strict=True)), batch_size=32)


class ConvNet(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        ).double()
        self.head = nn.Linear(3, K, bias=False).double()
        self.seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def training_step(self, batch, _: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, _: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))
        if not self.trainer.sanity_checking:  # what the tapped layers output, pooled
            with torch.no_grad():
                pooled = self.body[:2](x).mean(dim=(2, 3))
                self.seen.append((pooled, self.body(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path: Path, callback: pl.Callback, devices: int = 1) -> tuple[pl.Trainer, ConvNet]:
    model = ConvNet()
    strategy = pl.strategies.DDPStrategy(process_group_backend="gloo") if devices > 1 else "auto"
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_epochs=1,
        callbacks=[callback],
        logger=pl.loggers.CSVLogger(tmp_path, name="logs"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, loader(), loader(seed=1))
    return trainer, model


def reference(h: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """NC1, the trace ratio and CDNV of features `h` in float64 (docs/metrics.md)."""
    mu = np.stack([h[y == k].mean(axis=0) for k in range(K)])
    dev = h - mu[y]
    sigma_w = dev.T @ dev / len(h)
    centred = mu - h.mean(axis=0)
    sigma_b = centred.T @ centred / K
    v = np.array([np.mean(np.sum(dev[y == k] ** 2, axis=1)) for k in range(K)])
    pairs = [(k, j) for k in range(K) for j in range(k + 1, K)]
    return {
        "nc1": float(np.trace(sigma_w @ np.linalg.pinv(sigma_b))) / K,
        "nc1_trace_ratio": float(np.trace(sigma_w) / np.trace(sigma_b)),
        "cdnv": float(
            np.mean([(v[k] + v[j]) / (2 * np.sum((mu[k] - mu[j]) ** 2)) for k, j in pairs])
        ),
    }


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory):
    tmp_path = tmp_path_factory.mktemp("lightning_layers")
    callback = NeuralCollapseCallback(
        K, layers=["body.1", "body.3"], stage="validate", report_dir=tmp_path / "nc"
    )
    trainer, model = fit(tmp_path, callback)
    x, y = data(seed=1)
    with torch.no_grad():
        outputs = {
            "body.1": model.body[:2](x).mean(dim=(2, 3)).numpy(),  # pooled over H, W
            "body.3": model.body(x).numpy(),
        }
    return callback, trainer, outputs, y.numpy(), tmp_path / "nc"


def test_every_layer_matches_the_float64_formulas(fitted) -> None:
    callback, trainer, outputs, y, _ = fitted
    got = callback.history[-1][1]
    assert got["layers"] == ["body.1", "body.3"]
    assert got["reduce"] == {"body.1": "pool", "body.3": "pool"}
    for layer, h in outputs.items():
        for metric, expected in reference(h, y).items():
            assert got["values"][layer][metric] == pytest.approx(expected, rel=1e-9), (
                layer,
                metric,
            )
            logged = trainer.callback_metrics[f"nc/{layer}/{metric}"].item()
            assert logged == pytest.approx(expected, rel=1e-6)
    # the NCC accuracy needs a second pass over the data: not logged
    assert "nc/body.1/ncc_accuracy" not in trainer.callback_metrics
    # the classifier metrics belong to the last layer only
    assert got["reports"]["body.3"]["self_duality_error"] is not None
    assert got["reports"]["body.1"]["self_duality_error"] is None


def test_the_depth_report_files_are_written(fitted) -> None:
    callback, _, _, _, folder = fitted
    assert callback.report_path == folder / "neural_collapse.json"
    saved = json.loads(callback.report_path.read_text())
    assert saved["layers"] == ["body.1", "body.3"] and len(saved["history"]) == 1
    depth = json.loads((folder / "neural_collapse_depth.json").read_text())
    assert depth["values"] == callback.history[-1][1]["values"]
    table = (folder / "neural_collapse.md").read_text()
    assert "| body.1 | pool |" in table and "Collapse" in table
    assert (folder / "neural_collapse_depth.png").stat().st_size > 0


def test_the_default_callback_hooks_only_the_classifier_input(tmp_path: Path) -> None:
    callback = NeuralCollapseCallback(K, stage="validate", report_dir=tmp_path / "nc")
    model = ConvNet()
    callback.setup(None, model, "fit")
    hooked = [
        (name, len(m._forward_hooks), len(m._forward_pre_hooks))
        for name, m in model.named_modules()
        if m._forward_hooks or m._forward_pre_hooks
    ]
    assert hooked == [("head", 0, 1)]
    callback.teardown(None, model, "fit")


def test_bad_layers_and_reduce_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"`reduce` must be one of .*; got 'avg'"):
        NeuralCollapseCallback(K, layers="body.1", reduce="avg")
    callback = NeuralCollapseCallback(K, layers="body.9")
    with pytest.raises(ValueError, match=r"`layers` names 'body.9', which is not in the model"):
        callback.setup(None, ConvNet(), "fit")


def test_two_process_ddp_fit_combines_every_layer(tmp_path: Path) -> None:
    """Each rank measures half of the validation set; the report covers all of it."""
    here = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(here.parent / "plugins"), str(here)]))
    env.pop("MASTER_PORT", None)
    out = subprocess.run(
        [sys.executable, __file__, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["history"] == ranks[1]["history"]  # the same report on every rank
    seen = [part for rank in ranks for part in rank["seen"]]
    y = torch.cat([labels for _, _, labels in seen]).numpy()
    assert y.shape[0] == N  # each rank saw half of the samples
    got = ranks[0]["history"][-1][1]["values"]
    for index, layer in enumerate(("body.1", "body.3")):
        h = torch.cat([part[index] for part in seen]).numpy()
        for metric, expected in reference(h, y).items():
            assert got[layer][metric] == pytest.approx(expected, rel=1e-9), (layer, metric)


def _ddp_main(out: Path) -> None:
    callback = NeuralCollapseCallback(
        K, layers=["body.1", "body.3"], stage="validate", report_dir=out
    )
    trainer, model = fit(out, callback, devices=2)
    torch.save(
        {"history": callback.history, "seen": model.seen}, out / f"rank{trainer.global_rank}.pt"
    )


if __name__ == "__main__":
    _ddp_main(Path(sys.argv[1]))
