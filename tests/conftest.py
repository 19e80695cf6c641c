"""Shared fixtures: run folders trained by the real trainer. Shared plain helpers are in tests/helpers.py."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .helpers import make_run


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory) -> Path:
    """A checkpoints folder with a 2-D VAE, a 2-D AE and a 5-D VAE (session-scoped: trained once)."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("checkpoints")
    make_run(root, "vae2", latent_dim=2)
    make_run(root, "ae2", kind="ae", latent_dim=2)
    make_run(root, "vae5", latent_dim=5, epochs=3)
    return root
