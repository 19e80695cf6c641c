"""Shared fixtures: tiny seeded datasets and run folders trained by the real trainer."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import ModelConfig
from trainer.config import TrainConfig
from trainer.data import ImageData, load_dataset
from trainer.train import fit

TINY_WIDTHS = (4, 8, 8)


def tiny_data(n_train: int = 96, n_test: int = 48, image_size: int = 28, channels: int = 1) -> ImageData:
    """A slice of the bundled real MNIST subset, small enough to train in a second."""
    full = load_dataset("mnist", image_size=image_size, channels=channels)
    return ImageData(full.train_x[:n_train], full.train_y[:n_train], full.test_x[:n_test], full.test_y[:n_test], full.class_names, full.source)


def make_run(root: Path, name: str, *, arch: str = "conv", kind: str = "vae", latent_dim: int = 2, epochs: int = 2, **train_kw) -> Path:
    """Train a tiny run with the project's trainer into root/name and return its folder."""
    hidden = 16 if arch == "mlp" else 0
    model_config = ModelConfig(arch=arch, kind=kind, latent_dim=latent_dim, widths=TINY_WIDTHS, hidden_dim=hidden)
    train_config = TrainConfig(epochs=epochs, batch_size=32, seed=0, atlas_size=40, **train_kw)
    run_dir = root / name
    fit(model_config, train_config, tiny_data(), run_dir, progress="none")
    return run_dir


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory) -> Path:
    """A checkpoints folder with a 2-D VAE, a 2-D AE and a 5-D VAE (session-scoped: trained once)."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("checkpoints")
    make_run(root, "vae2", latent_dim=2)
    make_run(root, "ae2", kind="ae", latent_dim=2)
    make_run(root, "vae5", latent_dim=5, epochs=3)
    return root
