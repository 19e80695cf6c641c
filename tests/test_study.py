"""The latent-size study, the demo-run tooling and run export, on tiny sweeps."""
from __future__ import annotations

import csv

import pytest

from trainer import demo, study
from trainer.export import export_run
from trainer.paths import PROJECT_ROOT
from trainer.runs import RunError, load_run

TINY = ["--widths", "4", "8", "8", "--hidden-dim", "0", "--epochs", "1", "--batch-size", "256"]


@pytest.mark.slow  # four runs on the full 8,000-image subset
def test_study_writes_report_and_resumes(tmp_path, capsys):
    args = ["--latent-sizes", "2", "3", "--models", "conv:vae", "conv:ae", *TINY, "--checkpoints-dir", str(tmp_path / "ck"), "--out", str(tmp_path / "report")]
    assert study.main(args) == 0
    first = capsys.readouterr().err
    assert first.count("training") == 4
    rows = list(csv.DictReader(open(tmp_path / "report" / "results.csv")))
    assert [(r["latent_dim"], r["model"], r["kind"]) for r in rows] == [("2", "conv", "ae"), ("2", "conv", "vae"), ("3", "conv", "ae"), ("3", "conv", "vae")]
    assert all(float(r["test_loss"]) > 0 and int(r["parameters"]) > 0 for r in rows)
    assert all(r["test_kl"] == "0.0" for r in rows if r["kind"] == "ae")
    table = (tmp_path / "report" / "results.md").read_text()
    assert "| 3 | conv VAE |" in table and "python -m trainer.study" in table
    figures = sorted(p.name for p in (tmp_path / "report" / "figures").iterdir())
    assert len(figures) == 8 and all(f.endswith(".png") for f in figures)
    assert (tmp_path / "report" / "figures" / "study-conv-vae-z003-scatter.png").read_bytes()[:4] == b"\x89PNG"
    # a second call finds every run finished and trains nothing
    assert study.main(args) == 0
    assert "training" not in capsys.readouterr().err
    # runs are ordinary run folders
    assert load_run(tmp_path / "ck" / "study-conv-vae-z002").epoch == 1


def test_study_bad_model_is_one_line(tmp_path, capsys):
    assert study.main(["--models", "resnet:vae", "--out", str(tmp_path)]) == 2
    assert "unknown model 'resnet'" in capsys.readouterr().err


def test_export_keeps_one_set_and_refuses_resume(runs_root, tmp_path):
    import shutil

    run_dir = tmp_path / "r"
    shutil.copytree(runs_root / "vae5", run_dir)
    before = load_run(run_dir)
    assert export_run(run_dir, drop_optimizer=True) > 0
    after = load_run(run_dir)
    assert after.epoch == before.epoch and len(after.history) == len(before.history)
    assert sorted(p.name.split("-")[0] for p in run_dir.iterdir() if p.suffix in (".safetensors", ".jsonl") or p.name.startswith("latents")) == ["history", "latents", "weights"]
    with pytest.raises(RunError, match="without optimiser state"):
        after.optimizer_state()


def test_demo_runs_cover_the_documented_set():
    names = [name for name, _, _ in demo.DEMO_RUNS]
    assert len(names) == len(set(names)) == 8
    argv = {name: args for name, _, args in demo.DEMO_RUNS}
    assert "--beta" in argv["mnist-conv-vae-z2-nokl"] and argv["mnist-conv-vae-z2-nokl"][argv["mnist-conv-vae-z2-nokl"].index("--beta") + 1] == "0"
    assert "ae" in argv["mnist-conv-ae-z2"] and "fashion-mnist" in argv["fashion-conv-vae-z16"]
    gitignore = (PROJECT_ROOT / ".gitignore").read_text()
    assert all(f"!/checkpoints/{n}/" in gitignore for n in names)
