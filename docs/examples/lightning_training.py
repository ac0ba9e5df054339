"""Track neural collapse during a Lightning fit with NeuralCollapseCallback."""

import tempfile

import lightning.pytorch as pl
import torch
from torch import nn

from ncgeom_torch import UFMRegularizer
from ncgeom_torch.lightning import NeuralCollapseCallback

K, LAMBDA = 3, 5e-3
torch.manual_seed(0)
counts = [48, 32, 16]  # imbalanced classes
labels = torch.repeat_interleave(torch.arange(K), torch.tensor(counts))
inputs = torch.randn(labels.numel(), 8) + 2.0 * torch.eye(K, 8)[labels]
data = torch.utils.data.TensorDataset(inputs, labels)


class Classifier(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
        self.fc = nn.Linear(16, K, bias=False)  # the classifier: its input is tapped
        self.reg = UFMRegularizer(LAMBDA, LAMBDA, num_samples=len(data))

    def training_step(self, batch, batch_idx):
        x, y = batch
        h = self.body(x)
        loss = nn.functional.cross_entropy(self.fc(h), y) + self.reg(self.fc, h)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


callback = NeuralCollapseCallback(
    K, every_n_epochs=5, lambda_w=LAMBDA, lambda_h=LAMBDA, counts=counts
)
with tempfile.TemporaryDirectory() as folder:
    trainer = pl.Trainer(
        max_epochs=20,
        accelerator="cpu",
        callbacks=[callback],
        logger=pl.loggers.CSVLogger(folder),  # nc/nc1, nc/gof_error, ... a measured epoch
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(Classifier(), torch.utils.data.DataLoader(data, batch_size=32, shuffle=True))
    print(callback.report_path.read_text()[:200])  # neural_collapse.json in the log folder

print([epoch for epoch, _ in callback.history])  # [4, 9, 14, 19]
print(callback.last_report)
assert callback.last_report.num_samples == sum(counts)
