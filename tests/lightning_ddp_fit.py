"""A tiny Lightning fit with `NeuralCollapseCallback`, shared by tests/test_lightning.py.

Run as a script (``python tests/lightning_ddp_fit.py OUT [DEVICES]``) it fits on
CPU with DDP over gloo; Lightning starts the other ranks by running this
script again. Each rank saves the penultimate features it produced in the
last epoch, so the test can compare the callback's report with
`ncgeom.nc_report` of exactly those features.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn

from ncgeom_torch.lightning import NeuralCollapseCallback

K, D_IN, DIM = 3, 6, 16
LAMBDA = 5e-3


def make_data(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Imbalanced, roughly separable inputs: classes of 3:2:1."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([0, 0, 0, 1, 1, 2]).repeat(n // 6)
    x = torch.randn(n, D_IN, generator=g) + 2.0 * torch.eye(K, D_IN)[y]
    return x, y


def loader(n: int = 96, seed: int = 0) -> torch.utils.data.DataLoader:
    x, y = make_data(n, seed)
    return torch.utils.data.DataLoader(list(zip(x, y, strict=True)), batch_size=16)


class Tiny(pl.LightningModule):
    """Two layers and a bias-free linear classifier; records what the classifier sees."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(D_IN, DIM), nn.ReLU())
        self.head = nn.Linear(DIM, K, bias=False)
        self.seen: dict[tuple[str, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        h = self.body(x)
        if not self.trainer.sanity_checking:
            key = (stage, self.current_epoch)
            self.seen.setdefault(key, []).append((h.detach().double(), y))
        return nn.functional.cross_entropy(self.head(h), y)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        self._step(batch, "validate")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.2, weight_decay=LAMBDA)

    def features(self, stage: str, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The features (float64) and labels of one stage of one epoch."""
        parts = self.seen[(stage, epoch)]
        return torch.cat([h for h, _ in parts]), torch.cat([y for _, y in parts])


def trainer_for(out: Path, callback: pl.Callback, *, devices: int = 1, **kwargs) -> pl.Trainer:
    strategy: str | pl.strategies.Strategy = "auto"
    if devices > 1:
        strategy = pl.strategies.DDPStrategy(process_group_backend="gloo")
    return pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        callbacks=[callback],
        logger=pl.loggers.CSVLogger(out, name="logs"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
        **kwargs,
    )


def main(out: Path, devices: int) -> None:
    model = Tiny()
    callback = NeuralCollapseCallback(K, lambda_w=LAMBDA, lambda_h=LAMBDA, report_dir=out)
    trainer = trainer_for(out, callback, devices=devices, max_epochs=2)
    trainer.fit(model, loader())
    h, y = model.features("train", trainer.current_epoch - 1)
    torch.save(
        {
            "features": h,
            "labels": y,
            "weight": model.head.weight.detach().double(),
            "history": callback.history,
        },
        out / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 2)
