"""Bounded growth of run folders: thinned atlas latents, a history limit that scales with the run, one set once finished."""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from models import ModelConfig
from trainer import train as train_mod
from trainer.config import MAX_EPOCHS, TrainConfig
from trainer.runs import (
    CONFIG_FILE,
    LATENTS_EVERY_EPOCH,
    MANIFEST_FILE,
    MAX_JSON_BYTES,
    MAX_LATENT_SNAPSHOTS,
    VERSIONED_FILES,
    RunError,
    RunWriter,
    epoch_file,
    history_limit,
    latent_snapshots,
    load_run,
    read_status,
)
from trainer.train import fit

from .helpers import TINY_WIDTHS, tiny_data

SMALL = {"first": 3, "cap": 9, "max_epoch": 40}  # every epoch below 3, the first, 4 log-spaced (3, 7.1, 16.9, 40 rounded), the latest
SMALL_GRID = [3, 7, 17, 40]
TINY_MLP = ModelConfig(arch="mlp", latent_dim=2, hidden_dim=16, widths=TINY_WIDTHS)


def straight(n: int, **kw) -> list[list[int]]:
    """The kept epochs after each of epochs 0..n, recorded one at a time as training does."""
    kept: list[int] = []
    states = []
    for epoch in range(n + 1):
        kept = latent_snapshots([*kept, epoch], epoch, **kw)
        states.append(kept)
    return states


# ---------------------------------------------------------------- the thinning function


def test_every_epoch_is_kept_below_the_first_k():
    k = LATENTS_EVERY_EPOCH
    assert latent_snapshots(list(range(k)), k - 1) == list(range(k))
    assert straight(k - 1)[-1] == list(range(k))
    assert set(range(k)) <= set(latent_snapshots(list(range(10 * k)), 10 * k - 1))


def test_after_the_first_k_epochs_are_log_spaced_plus_the_latest():
    n = 5000
    kept = latent_snapshots(list(range(n + 1)), n)
    grid = np.array([e for e in kept if e >= LATENTS_EVERY_EPOCH and e != n], float)
    ratios = grid[1:] / grid[:-1]
    assert kept[0] == 0 and kept[-1] == n and len(grid) > 50
    # geometric spacing: a constant ratio, up to rounding to whole epochs at the small end
    assert ratios.max() < 1.07 and ratios.min() > 1.03 and np.ptp(ratios[len(ratios) // 2:]) < 0.005
    assert len(kept) < MAX_LATENT_SNAPSHOTS


def test_the_small_grid_is_what_the_constants_say():
    assert latent_snapshots(list(range(41)), 40, **SMALL) == [0, 1, 2, *SMALL_GRID]
    assert latent_snapshots(list(range(13)), 12, **SMALL) == [0, 1, 2, 3, 7, 12]


@pytest.mark.parametrize("n", [0, 1, 49, 50, 51, 500, 5000, 99_999, MAX_EPOCHS])
def test_cap_first_and_latest_at_any_length(n):
    kept = latent_snapshots(list(range(n + 1)), n)
    assert len(kept) <= MAX_LATENT_SNAPSHOTS and kept[0] == 0 and kept[-1] == n
    assert kept == sorted(set(kept))


def test_cap_holds_at_every_epoch_of_a_small_grid():
    for epoch, kept in enumerate(straight(SMALL["max_epoch"], **SMALL)):
        assert len(kept) <= SMALL["cap"] and kept[0] == 0 and kept[-1] == epoch


def test_the_first_snapshot_is_kept_even_when_it_is_not_epoch_zero():
    assert latent_snapshots([9, 10, 11, 12, 13], 13, **SMALL) == [9, 13]


def test_a_pure_function_and_resume_from_any_epoch_keeps_what_a_straight_run_keeps():
    n = 300
    states = straight(n)
    epochs = list(range(n + 1))
    assert latent_snapshots(epochs, n) == latent_snapshots(list(epochs), n) == states[-1]
    for m in range(0, n, 7):  # resume at epoch m from what was saved there, then go on to n
        kept = list(states[m])
        for epoch in range(m + 1, n + 1):
            kept = latent_snapshots([*kept, epoch], epoch)
        assert kept == states[-1], m
    # a run saved before thinning (every epoch) resumed: the same snapshots as a thinned straight run
    assert latent_snapshots(list(range(201)), 200) == states[200]


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="latent snapshots"):
        latent_snapshots([0], 0, first=10, cap=12, max_epoch=100)


# ---------------------------------------------------------------- runs


def small_snapshots(monkeypatch) -> None:
    monkeypatch.setattr(train_mod, "latent_snapshots", functools.partial(latent_snapshots, **SMALL))


def test_a_tiny_run_with_a_small_k_keeps_the_right_epochs_and_resumes_exactly(tmp_path, monkeypatch):
    small_snapshots(monkeypatch)
    data = tiny_data()
    config = TrainConfig(epochs=12, batch_size=32, seed=0, atlas_size=20)
    fit(TINY_MLP, config, data, tmp_path / "straight", progress="none")
    fit(TINY_MLP, TrainConfig(**(config.to_dict() | {"epochs": 5})), data, tmp_path / "split", progress="none")
    assert load_run(tmp_path / "split").atlas.epochs.tolist() == [0, 1, 2, 3, 5]
    fit(TINY_MLP, config, data, tmp_path / "split", resume=True, progress="none")
    a, b = load_run(tmp_path / "straight"), load_run(tmp_path / "split")
    assert a.atlas.epochs.tolist() == b.atlas.epochs.tolist() == [0, 1, 2, 3, 7, 12]
    assert np.array_equal(a.atlas.means, b.atlas.means) and np.array_equal(a.atlas.logvars, b.atlas.logvars)
    assert a.atlas.means.shape == (6, 20, 2) and len(a.history) == 12
    # the replay still covers the first and the last epoch, on distinct snapshots
    assert a.atlas.epochs[0] == 0 and a.atlas.epochs[-1] == a.epoch == 12 and not np.array_equal(a.atlas.means[0], a.atlas.means[-1])


def epoch_sets(run_dir: Path) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for p in sorted(run_dir.iterdir()):
        parts = epoch_file(p.name)
        if parts is not None:
            found.setdefault(parts.stem, []).append(parts.epoch)
    return found


def test_one_set_after_finish_two_while_stopped(tmp_path):
    data = tiny_data()
    config = TrainConfig(epochs=4, batch_size=32, seed=0, atlas_size=20, keep_epochs=(1,))

    def stop() -> bool:
        manifest = tmp_path / "r" / MANIFEST_FILE
        return manifest.exists() and json.loads(manifest.read_text())["epoch"] >= 2

    fit(TINY_MLP, config, data, tmp_path / "r", stop=stop, progress="none")
    assert read_status(tmp_path / "r")["state"] == "stopped"
    assert epoch_sets(tmp_path / "r") == {k: [1, 2] for k in VERSIONED_FILES}  # a stopped run may be resumed: both sets
    fit(TINY_MLP, config, data, tmp_path / "r", resume=True, progress="none")
    assert read_status(tmp_path / "r")["state"] == "finished"
    assert epoch_sets(tmp_path / "r") == {k: [4] for k in VERSIONED_FILES}
    assert (tmp_path / "r" / "kept-weights-000001.safetensors").is_file()  # --keep-epochs still honoured
    assert load_run(tmp_path / "r").epoch == 4


def test_an_early_stop_keeps_one_set(tmp_path):
    config = TrainConfig(epochs=30, batch_size=32, seed=0, atlas_size=20, lr=1e-9, val_size=16, patience=1)
    trainer = fit(TINY_MLP, config, tiny_data(), tmp_path / "r", progress="none")
    status = read_status(tmp_path / "r")
    assert status["state"] == "finished" and "stopped early" in status["message"] and trainer.epoch < 30
    assert epoch_sets(tmp_path / "r") == {k: [trainer.epoch] for k in VERSIONED_FILES}


# ---------------------------------------------------------------- the history of a long run


def long_history_run(tmp_path: Path, epochs: int) -> Path:
    """A latent-512 run whose files claim `epochs` epochs: a real model, real-sized history rows (kl_per_dim of 512)."""
    model_config = ModelConfig(arch="mlp", latent_dim=512, hidden_dim=16, widths=TINY_WIDTHS)
    run_dir = tmp_path / "long"
    trainer = fit(model_config, TrainConfig(epochs=1, batch_size=32, seed=0, atlas_size=20), tiny_data(), run_dir, progress="none")
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    config["train"]["epochs"] = epochs
    (run_dir / CONFIG_FILE).write_text(json.dumps(config))
    row = trainer.history[-1]
    history = [row | {"epoch": e} for e in range(1, epochs + 1)]
    lat = trainer.latents()
    latents = {"epochs": np.array([0, epochs]), "means": lat["means"][[0, -1]], "logvars": lat["logvars"][[0, -1]]}
    RunWriter(run_dir).save_epoch(epochs, trainer.model, trainer.optimizer, history, latents, final=True)
    return run_dir


@pytest.mark.slow
def test_a_long_latent_512_history_loads_and_a_larger_file_is_refused(tmp_path):
    epochs = 3500
    run_dir = long_history_run(tmp_path, epochs)
    path = run_dir / json.loads((run_dir / MANIFEST_FILE).read_text())["files"]["history"]
    assert path.stat().st_size > MAX_JSON_BYTES  # the old flat limit would have refused it
    run = load_run(run_dir)
    assert run.epoch == epochs and len(run.history) == epochs and len(run.history[-1]["kl_per_dim"]) == 512
    # still bounded: a file beyond the run's limit is refused before it is read (a sparse file costs no disk)
    limit = history_limit(epochs, 512)
    assert limit < 2**30
    manifest = json.loads((run_dir / MANIFEST_FILE).read_text())
    manifest["sha256"].pop(path.name)
    (run_dir / MANIFEST_FILE).write_text(json.dumps(manifest))
    with open(path, "r+b") as f:
        f.truncate(limit + 1)
    with pytest.raises(RunError, match="larger than"):
        load_run(run_dir)


def test_history_limit_scales_with_epochs_and_latent_size_and_is_bounded():
    assert history_limit(10, 2) == MAX_JSON_BYTES  # short runs: the old limit
    assert history_limit(5000, 512) > history_limit(5000, 20) > history_limit(1000, 20)
    assert history_limit(10**18, 512) == history_limit(MAX_EPOCHS, 512) <= 4 * 2**30  # hostile epochs: capped
    real_row = len(json.dumps({"epoch": 99999, "kl_per_dim": [round(math.pi * 1000, 5)] * 512, **{f"metric_{i:02d}": -math.pi for i in range(30)}})) + 1
    assert history_limit(5000, 512) >= 5000 * real_row
