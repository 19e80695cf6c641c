"""Slimming a run for shipping (trainer.export): a run trained with the discriminator loses its discriminator files
with --drop-optimizer, keeps them without it, and still opens."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from models import ModelConfig
from trainer.config import TrainConfig
from trainer.export import export_run, main
from trainer.runs import MANIFEST_FILE, OPTIONAL_FILES, RunError, load_run, read_manifest
from trainer.train import fit

from .helpers import tiny_data

MODEL = ModelConfig(arch="resnet", widths=(8, 8), latent_channels=2)  # 2 x 14 x 14 latent map at 28 px
SHARP = TrainConfig(epochs=2, batch_size=16, seed=0, atlas_size=12, recon_loss="l1", beta=1e-3, disc_weight=0.5, disc_layers=2, disc_channels=8)


@pytest.fixture(scope="module")
def sharp_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("export") / "sharp"
    fit(MODEL, SHARP, tiny_data(48, 24), run_dir, progress="none")
    return run_dir


def kinds(run_dir: Path) -> list[str]:
    """The file kinds left in the folder: 'disc-optim' from disc-optim-000002.safetensors."""
    return sorted(p.name.rsplit("-", 1)[0] for p in run_dir.iterdir() if p.name.rsplit("-", 1)[-1][:1].isdigit())


def test_drop_optimizer_drops_the_discriminator_files_too(sharp_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    shutil.copytree(sharp_run, run_dir)
    assert {"disc", "disc-optim"} <= set(kinds(run_dir))  # both epochs' sets before
    before = load_run(run_dir)
    assert main([str(run_dir), "--drop-optimizer"]) == 0
    assert kinds(run_dir) == ["history", "latents", "weights"]
    manifest = read_manifest(run_dir)
    assert not set(manifest["files"]) & {"optim", *OPTIONAL_FILES} and manifest["optimizer_dropped"]
    assert set(manifest["sha256"]) == set(manifest["files"].values())
    after = load_run(run_dir)  # still opens, same model
    assert after.epoch == before.epoch and all((a == b).all() for a, b in zip(after.model.state_dict().values(), before.model.state_dict().values()))
    with pytest.raises(RunError, match="without optimiser state"):
        after.optimizer_state()


def test_export_without_drop_keeps_the_latest_discriminator_set(sharp_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    shutil.copytree(sharp_run, run_dir)
    assert export_run(run_dir, drop_optimizer=False) > 0  # epoch 1's set goes
    assert kinds(run_dir) == ["disc", "disc-optim", "history", "latents", "optim", "weights"]
    assert all((run_dir / name).exists() for name in read_manifest(run_dir)["files"].values())
    assert (run_dir / MANIFEST_FILE).exists()
