"""Progress inside an epoch (status.json's step counter, the CLI's bar and JSON progress lines) and the app's
UMAP / t-SNE maps computed when training ends."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from models import ModelConfig
from trainer import cli, projections
from trainer import train as train_mod
from trainer.config import TrainConfig
from trainer.distributed import SINGLE
from trainer.runs import load_run, read_status
from trainer.train import ProgressReporter, StatusWriter, StepProgress, eta_seconds, fit

from .helpers import TINY_WIDTHS, tiny_data

N_TRAIN, BATCH = 96, 32  # tiny_data(): three steps per epoch


def tiny(latent_dim: int = 2) -> ModelConfig:
    return ModelConfig(latent_dim=latent_dim, widths=TINY_WIDTHS)


def recording_statuses(monkeypatch) -> list[dict]:
    """Every status.json the trainer writes, in order (written as well)."""
    written: list[dict] = []
    real = train_mod.write_status

    def record(run_dir, **status):
        written.append(status)
        real(run_dir, **status)

    monkeypatch.setattr(train_mod, "write_status", record)
    return written


def test_status_counts_steps_images_per_second_and_eta_inside_an_epoch(monkeypatch, tmp_path):
    monkeypatch.setattr(train_mod, "STATUS_EVERY_S", 0.0)  # every step: the tiny epochs last a fraction of a second
    written = recording_statuses(monkeypatch)
    fit(tiny(), TrainConfig(epochs=2, batch_size=BATCH, atlas_size=20), tiny_data(N_TRAIN), tmp_path / "r", progress="none")
    steps = [s for s in written if "step" in s]
    assert [(s["epoch"], s["step"]) for s in steps] == [(e, k) for e in (0, 1) for k in (1, 2, 3)]  # epoch: completed ones
    for s in steps:
        assert s["state"] == "running" and s["steps"] == math.ceil(N_TRAIN / BATCH) and s["total"] == 2
        assert s["images_per_s"] > 0 and s["eta"] >= 0 and s["seconds"] > 0
    after_epoch = [s for s in written if s["state"] == "running" and "step" not in s and s["epoch"] == 1]
    assert after_epoch and after_epoch[0]["images_per_s"] > 0  # the finished epoch's rate
    assert "step" not in read_status(tmp_path / "r") and read_status(tmp_path / "r")["state"] == "finished"


def test_the_step_counter_is_written_at_a_bounded_rate(monkeypatch, tmp_path):
    clock = [100.0]
    monkeypatch.setattr(train_mod.time, "monotonic", lambda: clock[0])
    written = recording_statuses(monkeypatch)
    status = StatusWriter(tmp_path, SINGLE, total=3)
    for step, now in enumerate((100.0, 101.0, 102.0, 103.0, 103.9, 104.1, 105.0, 106.2), start=1):
        clock[0] = now
        status.step(StepProgress(1, 3, step, 10, step * BATCH, now - 100.0, eta=10.0))  # the epoch started at 100 s
    # the first once the epoch has run 2 s (STATUS_EVERY_S), then at most one per 2 s: a short epoch writes nothing extra
    assert [s["step"] for s in written] == [3, 6, 8]
    assert read_status(tmp_path)["step"] == 8


def test_eta_adds_the_rest_of_this_epoch_and_the_epochs_after_it():
    # epoch 1 of 3, 10 of 100 steps in 5 s: 90 steps at 0.5 s, then two epochs of 100 steps at 0.5 s (or of 60 s each)
    assert eta_seconds(1, 3, 10, 100, 5.0, None) == pytest.approx(45 + 2 * 50)
    assert eta_seconds(1, 3, 10, 100, 5.0, 60.0) == pytest.approx(45 + 2 * 60)
    assert eta_seconds(3, 3, 100, 100, 50.0, 60.0) == 0.0
    assert eta_seconds(1, 3, 0, 100, 0.0, None) is None


def test_json_progress_lines_go_to_stderr_at_a_bounded_rate_and_stdout_keeps_one_line_per_epoch(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(train_mod, "PROGRESS_LINE_EVERY_S", 0.0)
    fit(tiny(), TrainConfig(epochs=2, batch_size=BATCH, atlas_size=20), tiny_data(N_TRAIN), tmp_path / "r", progress="json")
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    lines = [json.loads(line)["progress"] for line in err.splitlines() if line.startswith('{"progress"')]
    assert [(p["epoch"], p["step"]) for p in lines] == [(e, k) for e in (1, 2) for k in (1, 2, 3)]
    assert all(p["steps"] == 3 and p["epochs"] == 2 and p["images_per_s"] > 0 for p in lines)


def test_json_progress_lines_wait_for_their_interval(capsys):
    reporter = ProgressReporter("json", total=2, initial=0, n_train=N_TRAIN)
    for step in (1, 2, 3):
        reporter.step(StepProgress(1, 2, step, 3, step * BATCH, 0.1 * step, eta=1.0), BATCH)
    assert capsys.readouterr().err == ""  # the default interval (10 s) has not passed


def test_the_bar_counts_training_images_step_by_step(capsys):
    reporter = ProgressReporter("bar", total=2, initial=0, n_train=N_TRAIN)
    assert reporter.bar is not None and reporter.bar.total == 2 * N_TRAIN
    reporter.step(StepProgress(1, 2, 1, 3, BATCH, 0.5, eta=2.0), BATCH)
    assert reporter.bar.n == BATCH and "epoch 1/2" in reporter.bar.desc
    reporter.close()
    assert "img" in capsys.readouterr().err


# ---------------------------------------------------------------- the app's maps at the end of training

def fake_embed(z: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """Stands in for UMAP / t-SNE (slow): the first two dims, shifted by method."""
    return np.asarray(z, np.float32)[:, :2] + (1.0 if method == "umap" else 2.0)


def test_fit_keeps_the_maps_of_the_last_epoch_in_the_run_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(projections, "embed", fake_embed)
    written = recording_statuses(monkeypatch)
    fit(tiny(3), TrainConfig(epochs=1, batch_size=BATCH, atlas_size=20), tiny_data(N_TRAIN), tmp_path / "r", progress="none", projections=True)
    run = load_run(tmp_path / "r")
    for method in projections.EMBEDDINGS:
        assert projections.is_cached(run.path, method, run.epoch)
        calls = []
        monkeypatch.setattr(projections, "embed", lambda *a, _calls=calls, **k: _calls.append(a))
        xy = projections.cached_embedding(run.path, run.epoch, run.atlas.means[-1], method, seed=run.train_config.seed)
        assert calls == [] and np.allclose(xy, fake_embed(run.atlas.means[-1], method))  # the app's read hits the file
    messages = [s.get("message", "") for s in written]
    assert any("UMAP" in m for m in messages) and any("t-SNE" in m for m in messages)
    assert read_status(run.path)["state"] == "finished"


@pytest.mark.parametrize("latent_dim,asked", [(2, True), (3, False)])
def test_no_maps_for_2d_latents_or_when_not_asked(monkeypatch, tmp_path, latent_dim, asked):
    monkeypatch.setattr(projections, "embed", fake_embed)
    fit(tiny(latent_dim), TrainConfig(epochs=1, batch_size=BATCH, atlas_size=20), tiny_data(N_TRAIN), tmp_path / "r", progress="none",
        projections=asked)
    assert not any(projections.is_cached(tmp_path / "r", m, 1) for m in projections.EMBEDDINGS)


def test_a_failing_map_is_a_warning_not_a_failed_run(monkeypatch, tmp_path, caplog):
    def broken(*args, **kwargs):
        raise ImportError("no module named umap")

    monkeypatch.setattr(projections, "embed", broken)
    fit(tiny(3), TrainConfig(epochs=1, batch_size=BATCH, atlas_size=20), tiny_data(N_TRAIN), tmp_path / "r", progress="none", projections=True)
    assert read_status(tmp_path / "r")["state"] == "finished" and load_run(tmp_path / "r").epoch == 1
    assert "could not compute the umap map" in caplog.text


@pytest.mark.parametrize("flags,expected", [([], True), (["--no-projections"], False)])
def test_the_cli_computes_the_maps_unless_told_not_to(monkeypatch, tmp_path, flags, expected):
    seen = {}

    def fake_fit(*args, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(cli, "fit", fake_fit)
    monkeypatch.setattr(cli.StopFlag, "install", lambda self: None)
    with pytest.raises(SystemExit):
        cli.main(["--checkpoints-dir", str(tmp_path), "--run-name", "r", "--progress", "none", "--device", "cpu", *flags])
    assert seen["projections"] is expected


@pytest.mark.slow  # real UMAP and t-SNE (numba compiles UMAP on first use)
def test_the_real_maps_at_the_end_of_training(tmp_path):
    fit(tiny(3), TrainConfig(epochs=1, batch_size=BATCH, atlas_size=40), tiny_data(N_TRAIN), tmp_path / "r", progress="none", projections=True)
    run = load_run(tmp_path / "r")
    for method in projections.EMBEDDINGS:
        assert projections.is_cached(run.path, method, run.epoch)
        xy = projections.cached_embedding(run.path, run.epoch, run.atlas.means[-1], method, seed=run.train_config.seed)
        assert xy.shape == (len(run.atlas.labels), 2) and np.isfinite(xy).all()
