"""Shared fixtures: run folders trained by the real trainer, a tiny IDX data folder. Shared plain helpers are in tests/helpers.py."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .helpers import make_run, write_idx_digits


@pytest.fixture(scope="session")
def _session_torch_threads() -> int:
    """Torch's thread count when the session starts (the environment's: OMP_NUM_THREADS=1 on a shared machine)."""
    return torch.get_num_threads()


@pytest.fixture(autouse=True)
def _torch_threads_restored(_session_torch_threads: int):
    """Every test runs with the session's torch thread count: the in-process CLI (main) and the app set their own,
    also from module-scoped fixtures, and extra spinning threads on a loaded machine slow later tests several-fold."""
    if torch.get_num_threads() != _session_torch_threads:
        torch.set_num_threads(_session_torch_threads)
    yield
    if torch.get_num_threads() != _session_torch_threads:
        torch.set_num_threads(_session_torch_threads)


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory) -> Path:
    """A checkpoints folder with a 2-D VAE, a 2-D AE and a 5-D VAE (session-scoped: trained once).

    Torch keeps the thread count of the environment (OMP_NUM_THREADS=1 on a shared machine)."""
    root = tmp_path_factory.mktemp("checkpoints")
    make_run(root, "vae2", latent_dim=2)
    make_run(root, "ae2", kind="ae", latent_dim=2)
    make_run(root, "vae5", latent_dim=5, epochs=3)
    return root


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A --data-dir whose mnist/ holds IDX files of IDX_N_TRAIN + IDX_N_TEST bundled digits (the tiny CLI runs' data)."""
    return write_idx_digits(tmp_path_factory.mktemp("data"))
