"""trainer.sharp_study: its commands parse, finished runs are skipped, and the report sets ours beside the seeds'."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from models import ModelConfig
from trainer import cli, sharp_study
from trainer.config import TrainConfig
from trainer.runs import MANIFEST_FILE, STATUS_FILE
from trainer.train import fit

from .helpers import tiny_data


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> Path:
    """Two tiny spatial runs under the study's names (latent channels 2 and 4 of a 14 x 14 map), one epoch each."""
    root = tmp_path_factory.mktemp("sharp-study")
    for c in (2, 4):
        fit(ModelConfig(arch="resnet", widths=(8, 8), latent_channels=c), TrainConfig(epochs=1, batch_size=32, seed=0, atlas_size=12, recon_loss="mse",
            beta=1e-4), tiny_data(64, 32), root / sharp_study.run_name(c), progress="none")
    return root


def test_the_commands_parse_with_the_recipe(tmp_path: Path) -> None:
    for c in sharp_study.DEFAULT_CHANNELS:
        args = cli.build_parser().parse_args(sharp_study.train_argv(c, tmp_path, 3, None))
        assert args.latent_channels == c and args.model == "resnet" and args.bottleneck == "spatial" and args.epochs == 3
        assert "--lpips-weights" in sharp_study.train_argv(c, tmp_path, 3, "/x/vgg.pth")


def test_a_finished_run_is_not_trained_again(tiny_runs: Path, capsys) -> None:
    assert sharp_study.train(2, tiny_runs, 1, None) == 0
    assert "finished, skipped" in capsys.readouterr().out


def test_the_report_sets_ours_beside_the_seeds(tiny_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert sharp_study.main(["--checkpoints-dir", str(tiny_runs), "--out", str(out), "--channels", "2", "4", "--report-only"]) == 0
    rows = json.loads((out / "results.json").read_text())["runs"]
    assert [r["latent_channels"] for r in rows] == [2, 4] and all(r["images"] == 2000 for r in rows)  # the whole test set
    for r in rows:
        assert r["psnr_range2"] - r["psnr"] == pytest.approx(20 * math.log10(2)) and 0 < r["ssim"] <= 1
        assert r["psnr"] >= r["psnr_set"] - 1e-6 and r["lpips"] is None  # no local weights here
    md = (out / "results.md").read_text()
    assert "30.5" in md and "32.8" in md and "absent (no local weights)" in md and "mse-based" in md
    assert (out / "strips.png").stat().st_size > 0


def test_a_missing_run_is_one_line(tmp_path: Path, capsys) -> None:
    assert sharp_study.main(["--checkpoints-dir", str(tmp_path), "--out", str(tmp_path / "r"), "--report-only"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sharp-study-c2" in err


def test_a_stopped_and_resumed_run_is_costed_whole(tmp_path: Path, monkeypatch) -> None:
    """Each invocation adds a segment; the second resumes; a clean stop (exit 0, state stopped) is not success."""
    calls: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        calls.append(argv)
        run = tmp_path / "r"
        run.mkdir(exist_ok=True)
        (run / MANIFEST_FILE).write_text("{}")
        (run / STATUS_FILE).write_text(json.dumps({"state": "stopped" if len(calls) == 1 else "finished"}))
        return 0

    monkeypatch.setattr(sharp_study.cli, "main", fake_main)
    assert sharp_study.train_recorded("r", ["--run-name", "r"], tmp_path) == 1
    assert sharp_study.train_recorded("r", ["--run-name", "r"], tmp_path) == 0
    assert "--resume" not in calls[0] and calls[1][-1] == "--resume"
    record = sharp_study.cost_record(tmp_path, "r")
    assert [s["state"] for s in record["segments"]] == ["stopped", "finished"]
    assert record["cpu_s"] == pytest.approx(sum(s["cpu_s"] for s in record["segments"])) and record["command"] == "python -m trainer --run-name r"
