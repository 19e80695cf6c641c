"""Training speed: the classic per-sample-DataLoader MLP VAE against the project's trainer, and conv time-to-loss.

    .venv/bin/python -m bench.bench_train            # all sections
    .venv/bin/python -m bench.bench_train --quick    # fewer epochs (a smoke run, not the README figures)

Both MLP loops train the same network (784-400-20, BCE + KL, Adam 1e-3, batch 128) for 10 epochs on
the same data, in the same process, one after the other; times are medians over epochs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models import CLASSIC_MLP_HIDDEN_DIM, ModelConfig
from trainer.config import TrainConfig
from trainer.data import ImageData, load_dataset
from trainer.train import Trainer

MLP_EPOCHS = 10
BATCH_SIZE = 128
LR = 1e-3
# The conv VAE the README quotes: latent 20, trained against a 60-second budget.
CONV_MODEL = ModelConfig(arch="conv", latent_dim=20)  # the default widths and hidden layer
CONV_TRAIN = TrainConfig(batch_size=64, lr=2e-3, lr_schedule="cosine", epochs=30)
CONV_TARGETS = (110.0, 105.0, 100.0)
CONV_BUDGET_S = 60.0


class ClassicVAE(nn.Module):
    """The PyTorch examples' MNIST VAE: 784-400-20, written independently of models/."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = F.relu(self.fc1(x.view(-1, 784)))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.fc4(F.relu(self.fc3(z))), mu, logvar


def classic_loss(logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


class PerSampleMNIST(torch.utils.data.Dataset):
    """torchvision-style dataset: one PIL image per __getitem__, converted by ToTensor."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        from torchvision import transforms

        self.images, self.labels = images[:, 0].numpy(), labels.numpy()
        self.to_tensor = transforms.ToTensor()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.to_tensor(Image.fromarray(self.images[i], mode="L")), int(self.labels[i])


def baseline_mlp(data: ImageData, epochs: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = ClassicVAE()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    train = torch.utils.data.DataLoader(PerSampleMNIST(data.train_x, data.train_y), batch_size=BATCH_SIZE, shuffle=True)
    test = torch.utils.data.DataLoader(PerSampleMNIST(data.test_x, data.test_y), batch_size=BATCH_SIZE)
    seconds, test_loss = [], float("nan")
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        for x, _ in train:
            logits, mu, logvar = model(x)
            loss = classic_loss(logits, x, mu, logvar) / len(x)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        total = 0.0
        with torch.no_grad():
            for x, _ in test:
                logits, mu, logvar = model(x)
                total += classic_loss(logits, x, mu, logvar).item()
        test_loss = total / len(test.dataset)
        seconds.append(time.perf_counter() - t0)
    return {"loop": "per-sample DataLoader (baseline)", "s_per_epoch": statistics.median(seconds), "test_loss": test_loss}


def project_mlp(data: ImageData, epochs: int) -> dict[str, Any]:
    trainer = Trainer(ModelConfig(arch="mlp", latent_dim=20, hidden_dim=CLASSIC_MLP_HIDDEN_DIM), TrainConfig(batch_size=BATCH_SIZE, lr=LR, epochs=epochs), data)
    seconds, result = [], None
    for _ in range(epochs):
        t0 = time.perf_counter()
        trainer.train_epoch()
        trainer.epoch += 1
        result = trainer.evaluate(1.0)
        seconds.append(time.perf_counter() - t0)
    assert result is not None
    return {"loop": "project trainer (in-memory batches)", "s_per_epoch": statistics.median(seconds), "test_loss": result.loss,
            "images_per_s": len(data.train_x) / statistics.median(seconds)}


def conv_time_to_loss(data: ImageData, epochs: int) -> dict[str, Any]:
    train_config = TrainConfig.from_dict(CONV_TRAIN.to_dict() | {"epochs": epochs})
    trainer = Trainer(CONV_MODEL, train_config, data)
    elapsed, reached, curve = 0.0, {}, []
    for _ in range(epochs):
        t0 = time.perf_counter()
        trainer.train_epoch()
        elapsed += time.perf_counter() - t0  # training time only; the test pass is not counted
        trainer.epoch += 1
        loss = trainer.evaluate(1.0).loss
        curve.append((trainer.epoch, round(elapsed, 1), round(loss, 2)))
        for target in CONV_TARGETS:
            if loss <= target and target not in reached:
                reached[target] = round(elapsed, 1)
    return {"model": f"conv VAE latent 20, widths {CONV_MODEL.widths}, hidden {CONV_MODEL.hidden_dim}, batch {train_config.batch_size}, "
                     f"lr {train_config.lr} cosine over {epochs} epochs", "parameters": trainer.model.num_parameters(),
            "final_test_loss": curve[-1][2], "train_seconds": curve[-1][1], "seconds_to": {f"<= {t:g}": reached.get(t) for t in CONV_TARGETS},
            "images_per_s": len(data.train_x) * epochs / elapsed, "curve": curve}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs each: checks the script runs")
    parser.add_argument("--skip-conv", action="store_true")
    args = parser.parse_args(argv)
    data = load_dataset("mnist")
    epochs = 2 if args.quick else MLP_EPOCHS
    print(f"data: {data.source['note']}; torch threads: {torch.get_num_threads()}")
    rows = [baseline_mlp(data, epochs), project_mlp(data, epochs)]
    print(f"\nMLP VAE 784-400-20, batch {BATCH_SIZE}, Adam {LR}, {epochs} epochs (median s/epoch = train + test pass)")
    for r in rows:
        print(f"  {r['loop']:<38} {r['s_per_epoch']:6.3f} s/epoch   test loss {r['test_loss']:7.2f} (BCE bound, grayscale: not nats)")
    print(f"  speed-up: {rows[0]['s_per_epoch'] / rows[1]['s_per_epoch']:.1f}x")
    out: dict[str, Any] = {"mlp": rows}
    if not args.skip_conv:
        conv = conv_time_to_loss(data, 2 if args.quick else CONV_TRAIN.epochs)
        print(f"\n{conv['model']} ({conv['parameters']:,} parameters)")
        print(f"  training seconds to reach test loss: {conv['seconds_to']}; "
              f"final {conv['final_test_loss']} (BCE bound, grayscale) after {conv['train_seconds']} s "
              f"({conv['images_per_s']:.0f} images/s)")
        out["conv"] = conv
    print(json.dumps(out, default=str))
    return out


if __name__ == "__main__":
    main()
