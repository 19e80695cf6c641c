"""The trainer: exact resume, schedules, failure handling, and the CLI end to end."""
from __future__ import annotations

import json
import re
import signal
import subprocess

import pytest
import torch

from models import ModelConfig
from trainer import metrics
from trainer.cli import main
from trainer.config import TrainConfig
from trainer.runs import load_run, read_status
from trainer.train import TrainingFailed, fit

from .helpers import TINY_WIDTHS, cli_args, poison_from, run_module, tiny_data, wait_until, write_idx_digits

TINY = ModelConfig(latent_dim=2, widths=TINY_WIDTHS)


def tiny_train(**kw) -> TrainConfig:
    return TrainConfig(**({"epochs": 4, "batch_size": 32, "atlas_size": 20, "lr_milestones": (3,), "beta_warmup": 2} | kw))


def test_resume_equals_uninterrupted_run(tmp_path):
    data = tiny_data()
    fit(TINY, tiny_train(), data, tmp_path / "straight", progress="none")
    fit(TINY, tiny_train(epochs=2), data, tmp_path / "split", progress="none")
    fit(TINY, tiny_train(), data, tmp_path / "split", resume=True, progress="none")
    a, b = load_run(tmp_path / "straight"), load_run(tmp_path / "split")
    for (name, wa), wb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(wa, wb), name
    assert [r["test_loss"] for r in a.history] == [r["test_loss"] for r in b.history]
    assert a.history[-1]["lr"] == pytest.approx(1e-4) and a.history[0]["beta"] < 1.0 == a.history[-1]["beta"]
    assert (a.atlas.means == b.atlas.means).all() and b.atlas.epochs.tolist() == [0, 1, 2, 3, 4]


def test_float16_weights_resume_exactly_and_only_the_finished_run_is_rounded(tmp_path):
    """--weights-dtype float16 rounds the finished run's weights; a run stopped part-way keeps float32 weights, so
    its resume ends bitwise where the straight run does (rounded weights made a bundled run drift after a resume)."""
    from safetensors import safe_open

    from trainer.runs import read_manifest

    def stored_dtypes(run_dir) -> set[torch.dtype]:
        with safe_open(run_dir / read_manifest(run_dir)["files"]["weights"], "pt") as f:
            return {f.get_tensor(k).dtype for k in f.keys()}

    data, config = tiny_data(), tiny_train(epochs=3, weights_dtype="float16")
    fit(TINY, config, data, tmp_path / "straight", progress="none")
    calls = {"n": 0}

    def stop_in_epoch_2() -> bool:
        calls["n"] += 1
        return calls["n"] > -(-len(data.train_x) // config.batch_size) + 2  # epoch 1's steps, then two of epoch 2

    fit(TINY, config, data, tmp_path / "resumed", progress="none", stop=stop_in_epoch_2)
    assert load_run(tmp_path / "resumed").epoch == 1 and stored_dtypes(tmp_path / "resumed") == {torch.float32}
    fit(TINY, config, data, tmp_path / "resumed", progress="none", resume=True)
    a, b = load_run(tmp_path / "straight"), load_run(tmp_path / "resumed")
    assert stored_dtypes(tmp_path / "straight") == stored_dtypes(tmp_path / "resumed") == {torch.float16}
    for name, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[name]), name
    assert [r["test_loss"] for r in a.history] == [r["test_loss"] for r in b.history]


@pytest.mark.parametrize("beta", [4.0, 0.0])
def test_history_records_the_objective_and_the_bound_apart(beta, tmp_path):
    """test_loss is what was optimised (recon + beta KL); test_neg_elbo is the bound (recon + KL) whatever beta."""
    trainer = fit(TINY, tiny_train(epochs=2, beta=beta, beta_warmup=0), tiny_data(), tmp_path / "r", progress="none")
    for row in load_run(tmp_path / "r").history:
        assert row["beta"] == beta and row["test_kl"] > 0 and row["train_kl"] > 0
        for split in ("train", "test"):
            recon, kl = row[f"{split}_recon"], row[f"{split}_kl"]
            assert row[f"{split}_loss"] == pytest.approx(recon + beta * kl, rel=1e-5)
            assert row[f"{split}_neg_elbo"] == pytest.approx(recon + kl, rel=1e-9)
            assert metrics.neg_elbo(row, split) == row[f"{split}_neg_elbo"]
        assert abs(row["test_neg_elbo"] - row["test_loss"]) > 0.1 * row["test_kl"]  # the two numbers really differ
    assert trainer.history[-1]["test_neg_elbo"] == load_run(tmp_path / "r").history[-1]["test_neg_elbo"]


def test_history_rows_define_their_metrics(tmp_path):
    """The new columns beside the old ones: Burda's active units, the set's PSNR; no LPIPS without weights."""
    fit(TINY, tiny_train(epochs=1), tiny_data(), tmp_path / "r", progress="none")
    row = load_run(tmp_path / "r").history[-1]
    old = {"train_loss", "train_recon", "train_kl", "test_loss", "test_recon", "test_kl", "mse", "psnr", "ssim", "active_units", "kl_per_dim"}
    assert old <= set(row) and "lpips" not in row and "lpips_name" not in row
    assert row["psnr_set"] == pytest.approx(metrics.psnr_from_mse(row["mse"])) and row["psnr_set"] <= row["psnr"]
    assert 0 <= row["active_units_burda"] <= TINY.latent_dim and isinstance(row["active_units_burda"], int)
    legacy = {k: v for k, v in row.items() if not k.endswith("_neg_elbo")}  # a row written before the bound was recorded
    assert metrics.neg_elbo(legacy) == pytest.approx(row["test_neg_elbo"]) and metrics.neg_elbo(legacy, "train") == pytest.approx(row["train_neg_elbo"])


def _lpips_weights(path) -> str:
    """A randomly initialised AlexNet's features with positive LPIPS linear layers, as a weights-only torch file."""
    import torchvision

    from trainer import lpips

    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in torchvision.models.alexnet(weights=None).features.state_dict().items()}
    state |= {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(lpips.NETS["alex"].channels)}
    torch.save(state, path)
    return str(path)


def test_lpips_is_recorded_with_weights_and_summed_like_the_other_metrics(tmp_path):
    from trainer import lpips

    weights = _lpips_weights(tmp_path / "alex.pth")
    data = tiny_data()
    trainer = fit(TINY, tiny_train(epochs=1, lpips_weights=weights), data, tmp_path / "r", progress="none")
    row = load_run(tmp_path / "r").history[-1]
    assert row["lpips_name"] == "LPIPS (alex)" and row["lpips"] > 0
    # the mean over the test set of the distance between each image and its mode reconstruction
    model = trainer.model.eval()
    x = data.test_x.float() / 255
    with torch.no_grad():
        expected = lpips.load_perceptual_distance(weights)(torch.sigmoid(model.decode(model.encode(x).mode())), x).mean()
    assert row["lpips"] == pytest.approx(float(expected), rel=1e-4)


def test_unusable_lpips_weights_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("trainer.cli.StopFlag.install", lambda self: None)  # no SIGTERM handler left in the test process
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"not a weights file")
    data_dir = write_idx_digits(tmp_path / "data")
    code = main([*cli_args(data_dir, tmp_path / "runs", "r"), "--epochs", "1", "--lpips-weights", str(bad)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("python -m trainer: error: LPIPS weights") and str(bad) in err


def test_schedules():
    cfg = TrainConfig(epochs=10, lr=1e-3, lr_milestones=(2, 5), beta=4.0, beta_warmup=4)
    assert [cfg.lr_at(e, 0.0) for e in (0, 2, 5)] == pytest.approx([1e-3, 1e-4, 1e-5])
    assert cfg.beta_at(0, 0.0) == 0.0 and cfg.beta_at(1, 0.0) == pytest.approx(1.0) and cfg.beta_at(6, 0.5) == 4.0
    cosine = TrainConfig(epochs=4, lr_schedule="cosine")
    assert cosine.lr_at(0, 0.0) == pytest.approx(1e-3) and cosine.lr_at(2, 0.0) == pytest.approx(5e-4)


def test_non_finite_loss_fails_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    data = tiny_data()
    fit(TINY, tiny_train(epochs=1), data, tmp_path / "r", progress="none")
    poison_from(monkeypatch, 2)  # from the resumed run's second call of the loss on
    with pytest.raises(TrainingFailed, match="loss became nan.*epoch 1\\) is kept"):
        fit(TINY, tiny_train(epochs=3), data, tmp_path / "r", resume=True, progress="none")
    status = read_status(tmp_path / "r")
    assert status["state"] == "failed" and "nan" in status["message"]
    assert load_run(tmp_path / "r").epoch == 1


def test_stop_flag_keeps_last_completed_epoch(tmp_path):
    data = tiny_data()
    epochs_seen = []

    def stop() -> bool:
        run = tmp_path / "r" / "manifest.json"
        epoch = json.loads(run.read_text())["epoch"] if run.exists() else 0
        epochs_seen.append(epoch)
        return epoch >= 2

    trainer = fit(TINY, tiny_train(epochs=5), data, tmp_path / "r", stop=stop, progress="none")
    assert trainer.epoch == 2 and load_run(tmp_path / "r").epoch == 2
    assert read_status(tmp_path / "r")["state"] == "stopped"


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--latent-dim", "0"], "latent_dim must be an integer from 1 to 512"),
        (["--latent-dim", "abc"], "invalid int value"),
        (["--epochs", "-1"], "epochs must be"),
        (["--model", "unet"], "invalid choice"),
        (["--batch-size", "0"], "batch_size"),
        (["--lr", "-1"], "lr must be"),
        (["--lr", "nan"], "lr must be"),
        (["--beta", "-2"], "beta must be"),
        (["--beta", "0", "--recon-weight", "0"], "cannot both be 0"),
        (["--image-size", "30"], "image_size"),
        (["--dataset", "cifar"], "unknown dataset"),
        (["--dataset", "folder:/nonexistent"], "does not exist"),
        (["--run-name", "../evil"], "invalid run name"),
        (["--resume"], "--resume needs --run-name"),
        (["--resume", "--run-name", "nothing"], "nothing to resume"),
        (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "tpu"], "cuda|device"),
        (["--lr-milestones", "5,2"], "lr_milestones"),
    ],
)
def test_cli_bad_input_is_one_line(argv, match, tmp_path, capsys):
    epochs = ["--seed", "0"] if "--epochs" in argv else ["--epochs", "1"]  # a short run if the input were accepted
    code = main(argv + ["--checkpoints-dir", str(tmp_path), *epochs, "--progress", "none"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("python -m trainer: error:")
    assert re.search(match, err), err


@pytest.mark.slow  # two CLI runs on the full 8,000-image subset
def test_cli_refuses_existing_run_and_resume_changes(tmp_path, capsys):
    run = ["--checkpoints-dir", str(tmp_path), "--run-name", "r", "--progress", "none"]
    args = [*run, "--epochs", "1", "--widths", "4,8,8", "--latent-dim", "2", "--atlas-size", "10"]
    assert main(args) == 0
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    assert main([*run, "--resume", "--latent-dim", "3"]) == 2
    assert "--latent-dim cannot change when resuming" in capsys.readouterr().err
    assert main([*run, "--resume", "--epochs", "2"]) == 0
    assert load_run(tmp_path / "r").epoch == 2


def run_cli(args: list[str]) -> subprocess.Popen:
    return run_module("trainer", args)


@pytest.mark.slow
def test_cli_end_to_end_json_lines(tmp_path):
    model = ["--model", "mlp", "--hidden-dim", "32", "--latent-dim", "2"]
    proc = run_cli([*model, "--epochs", "1", "--atlas-size", "100", "--checkpoints-dir", str(tmp_path), "--run-name", "e2e"])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    row = json.loads(out.strip().splitlines()[-1])
    assert row["epoch"] == 1 and row["test_loss"] > 0 and 0 < row["ssim"] <= 1 and row["psnr"] > 0
    assert "offline subset" in err
    run = load_run(tmp_path / "e2e")
    assert run.info["data"]["kind"] == "subset" and run.atlas.images.shape == (100, 1, 28, 28)
    status = read_status(tmp_path / "e2e")
    assert status["state"] == "finished" and status["epoch"] == 1


@pytest.mark.slow
def test_cli_sigterm_stops_cleanly(tmp_path):
    proc = run_cli(["--latent-dim", "2", "--epochs", "200", "--checkpoints-dir", str(tmp_path), "--run-name", "long", "--widths", "4,8,8"])
    manifest = tmp_path / "long" / "manifest.json"
    # a bound on the wait, not a speed requirement: the first epoch is slow on a loaded machine
    wait_until(lambda: proc.poll() is not None or (manifest.exists() and json.loads(manifest.read_text())["epoch"] >= 1), "epoch 1", timeout_s=600)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    status = read_status(tmp_path / "long")
    assert status["state"] == "stopped" and status["epoch"] >= 1
    assert load_run(tmp_path / "long").epoch == status["epoch"]
