"""Trainer.evaluate, the per-epoch test pass: faster, the same numbers, and float32 whatever --amp trains in.

The reference below is the plain test pass (two decodes, pytorch-msssim's SSIM); the trainer's must record
exactly what it records, for a VAE and an autoencoder, MLP and conv.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models import ModelConfig, vae_loss
from trainer import metrics
from trainer.config import TrainConfig
from trainer.runs import load_run
from trainer.train import EVAL_BATCH_SIZE, EVAL_PIECE_ROWS, EVAL_SEED_OFFSET, Trainer, epoch_generator, fit, ssim_per_image

from .helpers import TINY_WIDTHS, tiny_data


@pytest.mark.filterwarnings("ignore:Skipping Gaussian Smoothing")
@pytest.mark.parametrize("shape", [(64, 1, 28, 28), (5, 3, 32, 32), (4, 1, 11, 13), (2, 3, 40, 24), (3, 1, 8, 28)])
def test_fast_ssim_is_bitwise_the_metric(shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(shape, generator=g)
    x_hat = (x + 0.2 * torch.randn(shape, generator=g)).clamp(0, 1)
    assert torch.equal(ssim_per_image(x_hat, x), metrics.ssim_per_image(x_hat, x))
    assert torch.equal(ssim_per_image(x, x), torch.ones(shape[0]))


@torch.no_grad()
def plain_test_pass(trainer: Trainer, beta: float) -> dict[str, float | torch.Tensor]:
    """The test pass written plainly (one process): what every recorded number must equal."""
    trainer.model.eval()
    g = epoch_generator(trainer.config.seed + EVAL_SEED_OFFSET, 0, trainer.device)
    n = len(trainer.test_x)
    sums = torch.zeros(6, dtype=torch.float64)
    means = []
    for start in range(0, n, EVAL_BATCH_SIZE):
        b = min(EVAL_BATCH_SIZE, n - start)
        eps = trainer.noise(b, g)
        x = trainer.images(trainer.test_x, slice(start, start + b))
        encoded = trainer.model.encode(x)
        x_hat = trainer.model.decode(encoded.sample(eps=eps))
        images = torch.sigmoid(trainer.model.decode(encoded.mode()))
        terms = vae_loss(x, x_hat, encoded, recon_loss=trainer.config.recon_loss, beta=beta, recon_weight=trainer.config.recon_weight)
        sums += torch.stack([
            terms.loss.double() * b, terms.recon.double() * b, terms.kl.double() * b,
            metrics.mse_per_image(images, x).sum().double(), metrics.psnr_per_image(images, x).sum().double(),
            metrics.ssim(images, x).double() * b,
        ])
        means.append(encoded.mean)
    return dict(zip(("loss", "recon", "kl", "mse", "psnr", "ssim"), (sums / n).tolist())) | {"mean": torch.cat(means)}


@pytest.mark.parametrize("arch, kind", [("mlp", "vae"), ("conv", "vae"), ("conv", "ae")])
def test_test_pass_records_what_the_plain_pass_computes(arch, kind, monkeypatch):
    data = tiny_data(n_train=64, n_test=EVAL_BATCH_SIZE + 24)  # two chunks, the second short
    data = type(data)(data.train_x, data.train_y, data.test_x.repeat(21, 1, 1, 1)[: EVAL_BATCH_SIZE + 24],
                      data.test_y.repeat(21)[: EVAL_BATCH_SIZE + 24], data.class_names, data.source)
    config = ModelConfig(arch=arch, kind=kind, latent_dim=3, widths=TINY_WIDTHS, hidden_dim=16 if arch == "mlp" else 0)
    trainer = Trainer(config, TrainConfig(batch_size=32, seed=1, atlas_size=40), data)
    trainer.train_epoch()
    decodes = []
    decode = trainer.model.decode
    monkeypatch.setattr(trainer.model, "decode", lambda z: decodes.append(len(z)) or decode(z))
    result = trainer.evaluate(0.5)
    monkeypatch.undo()
    plain = plain_test_pass(trainer, 0.5)
    for name in ("loss", "recon", "kl", "mse", "psnr", "ssim"):
        assert getattr(result, name) == plain[name], name
    assert torch.equal(result.mean, plain["mean"])
    assert sum(decodes) == (2 if kind == "vae" else 1) * len(data.test_x)  # an autoencoder's sample is its mode: decoded once
    assert max(decodes) == EVAL_PIECE_ROWS  # on the CPU the model runs on pieces of each chunk


def test_atlas_and_metrics_are_float32_under_bf16_training(tmp_path):
    """--amp bf16 on the CPU trains under autocast; the stored atlas is the float32 encoding of the atlas images."""
    data = tiny_data(n_train=64, n_test=48)
    config = ModelConfig(arch="mlp", latent_dim=3, hidden_dim=16)
    run_dir = tmp_path / "bf16"
    trainer = fit(config, TrainConfig(epochs=1, batch_size=32, seed=0, atlas_size=40), data, run_dir, progress="none", amp="bf16")
    assert trainer.amp_dtype == torch.bfloat16
    run = load_run(run_dir)
    x = trainer.images(trainer.test_x, torch.from_numpy(trainer.atlas_idx))
    with torch.no_grad():
        fp32 = trainer.model.encode(x).mean.numpy().astype(np.float16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = trainer.model.encode(x).mean.float().numpy().astype(np.float16)
    assert not np.array_equal(bf16, fp32)  # the test can tell the two apart
    np.testing.assert_array_equal(run.atlas.means[-1], fp32)
    assert trainer.history[-1]["test_loss"] == trainer.evaluate(trainer.history[-1]["beta"]).loss
