"""Early stopping on a validation split, the latent-size study, the demo-run tooling and run export, on tiny sweeps."""
from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
import torch

from models import ModelConfig, vae_loss
from trainer import demo, study
from trainer.config import TrainConfig
from trainer.export import export_run
from trainer.paths import PROJECT_ROOT
from trainer.runs import RunError, load_run, read_status
from trainer.train import VAL_SEED_OFFSET, Trainer, TrainingFailed, best_validation, early_stop_message, epoch_generator, fit, validation_split

from .helpers import TINY_WIDTHS, tiny_data

TINY_MODEL = ModelConfig(latent_dim=2, widths=TINY_WIDTHS, hidden_dim=0)
PLATEAU_LR = 1e-7  # so small that the validation bound moves by far less than train.VAL_MIN_IMPROVEMENT per epoch


def stopping_config(**kw) -> TrainConfig:
    return TrainConfig(**({"epochs": 12, "batch_size": 32, "atlas_size": 20, "val_size": 24, "patience": 2} | kw))


def rows(*values: float) -> list[dict]:
    return [{"epoch": e, "val_neg_elbo": v} for e, v in enumerate(values, 1)]


# ---------------------------------------------------------------- the validation split


def test_validation_split_is_disjoint_complete_and_seeded():
    keep, held = validation_split(100, 10, seed=3)
    assert len(held) == 10 and len(keep) == 90
    assert not set(keep) & set(held) and sorted([*keep, *held]) == list(range(100))
    again_keep, again_held = validation_split(100, 10, seed=3)
    assert (again_held == held).all() and (again_keep == keep).all()
    assert not (validation_split(100, 10, seed=4)[1] == held).all()
    assert held.tolist() != list(range(90, 100)) and held.tolist() != list(range(10))  # a random choice, not a slice


def test_validation_split_must_leave_training_images():
    with pytest.raises(TrainingFailed, match="--val-size 96 leaves no training images: the training set has 96"):
        validation_split(96, 96, seed=0)


def test_trainer_holds_out_the_recorded_validation_rows(tmp_path):
    data = tiny_data()
    trainer = Trainer(TINY_MODEL, stopping_config(), data)
    keep, held = validation_split(len(data.train_x), 24, seed=0)
    assert torch.equal(trainer.val_x, data.train_x[torch.from_numpy(held)])
    assert torch.equal(trainer.train_x, data.train_x[torch.from_numpy(keep)])
    assert trainer.steps_per_epoch == 3  # 72 training images in batches of 32
    info = trainer.setup_info()["validation"]
    assert info["images"] == 24 and info["rows_sha256"] == hashlib.sha256(held.astype("<i8").tobytes()).hexdigest()
    assert "validation" not in Trainer(TINY_MODEL, stopping_config(val_size=0, patience=0), data).setup_info()


def test_patience_needs_a_validation_set():
    with pytest.raises(ValueError, match="patience 3 needs a validation set"):
        TrainConfig(patience=3)
    with pytest.raises(ValueError, match="val_size must be"):
        TrainConfig(val_size=-1)


# ---------------------------------------------------------------- the stopping rule


def test_best_validation_counts_only_real_improvements():
    assert best_validation([{"epoch": 1, "test_loss": 3.0}]) is None
    assert best_validation(rows(10.0, 9.0, 9.5)) == (2, 9.0)
    assert best_validation(rows(10.0, 9.995, 9.99)) == (1, 10.0)  # less than 0.01 nats better: no improvement
    assert best_validation(rows(10.0, 9.0, 9.0)) == (2, 9.0)  # a tie keeps the earlier epoch


def test_early_stop_message_after_patience_epochs():
    assert early_stop_message(rows(10.0, 11.0, 12.0), patience=0) is None  # 0: never
    assert early_stop_message(rows(10.0, 11.0), patience=2) is None
    message = early_stop_message(rows(10.0, 11.0, 12.0), patience=2)
    assert message is not None and "stopped early after epoch 3" in message and "the best, 10.00, was at epoch 1" in message
    assert early_stop_message(rows(10.0, 11.0, 9.0), patience=2) is None  # improved at the last epoch


# ---------------------------------------------------------------- fit with early stopping


def test_run_stops_early_on_a_plateau(tmp_path):
    trainer = fit(TINY_MODEL, stopping_config(lr=PLATEAU_LR), tiny_data(), tmp_path / "r", progress="none")
    run = load_run(tmp_path / "r")
    assert trainer.epoch == run.epoch == 3  # best at epoch 1, then 2 epochs without improvement; the cap is 12
    values = [row["val_neg_elbo"] for row in run.history]
    assert len(values) == 3 and all(np.isfinite(values)) and max(values) - min(values) < 0.01
    status = read_status(tmp_path / "r")
    assert status["state"] == "finished" and status["epoch"] == 3
    assert "stopped early after epoch 3" in status["message"] and "was at epoch 1" in status["message"]


def test_validation_score_is_the_bound_not_the_objective(tmp_path):
    """Trained with beta 0.1, the validation score is still recon + KL at beta 1, with the fixed validation noise."""
    trainer = fit(TINY_MODEL, stopping_config(epochs=3, lr=3e-3, beta=0.1), tiny_data(), tmp_path / "r", progress="none")
    values = [row["val_neg_elbo"] for row in trainer.history]
    assert values[-1] < values[0]
    x = trainer.images(trainer.val_x, slice(None))  # (24, 1, 28, 28), one chunk
    eps = trainer.noise(len(x), epoch_generator(trainer.config.seed + VAL_SEED_OFFSET, 0))
    with torch.no_grad():
        posterior = trainer.model.encode(x)
        x_hat = trainer.model.decode(posterior.sample(eps=eps))
        bound, objective = (vae_loss(x, x_hat, posterior, beta=beta).loss.item() for beta in (1.0, 0.1))
        kl = posterior.kl().mean().item()
    assert trainer.validate() == pytest.approx(bound, rel=1e-6) == values[-1]
    assert kl > 0.01 and bound - objective == pytest.approx(0.9 * kl, rel=1e-3)  # the bound, not the objective


def test_run_without_patience_trains_to_the_cap(tmp_path):
    trainer = fit(TINY_MODEL, stopping_config(epochs=4, lr=PLATEAU_LR, patience=0), tiny_data(), tmp_path / "r", progress="none")
    assert trainer.epoch == 4 and all("val_neg_elbo" in row for row in trainer.history)
    assert "message" not in read_status(tmp_path / "r")


def assert_same_run(a, b) -> None:
    ra, rb = load_run(a), load_run(b)
    assert ra.epoch == rb.epoch
    for (name, wa), wb in zip(ra.model.state_dict().items(), rb.model.state_dict().values()):
        assert torch.equal(wa, wb), name
    drop = ("seconds", "train_seconds", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in ra.history] == [{k: v for k, v in r.items() if k not in drop} for r in rb.history]


@pytest.mark.parametrize("first_epochs", [2, 3])
def test_resume_stops_where_the_uninterrupted_run_did(first_epochs, tmp_path):
    """Cut at epoch 2 (not yet eligible) or 3 (eligible: the run would stop there), then resumed with the
    same cap: the same epochs, history and weights as the run that never stopped."""
    data = tiny_data()
    fit(TINY_MODEL, stopping_config(lr=PLATEAU_LR), data, tmp_path / "straight", progress="none")
    fit(TINY_MODEL, stopping_config(lr=PLATEAU_LR, epochs=first_epochs), data, tmp_path / "split", progress="none")
    assert read_status(tmp_path / "split")["state"] == "finished"  # the cap reached (2) or stopped early (3)
    resumed = fit(TINY_MODEL, stopping_config(lr=PLATEAU_LR), data, tmp_path / "split", resume=True, progress="none")
    assert resumed.epoch == 3
    assert_same_run(tmp_path / "straight", tmp_path / "split")
    assert "stopped early after epoch 3" in read_status(tmp_path / "split")["message"]


def test_resume_with_a_real_improvement_is_exact(tmp_path):
    """A learning run (no plateau) cut after epoch 2 and resumed: every val_neg_elbo and weight as uninterrupted."""
    data = tiny_data()
    config = stopping_config(epochs=4, lr=3e-3)
    fit(TINY_MODEL, config, data, tmp_path / "straight", progress="none")
    fit(TINY_MODEL, stopping_config(epochs=2, lr=3e-3), data, tmp_path / "split", progress="none")
    fit(TINY_MODEL, config, data, tmp_path / "split", resume=True, progress="none")
    assert_same_run(tmp_path / "straight", tmp_path / "split")
    assert len({row["val_neg_elbo"] for row in load_run(tmp_path / "split").history}) == 4


# ---------------------------------------------------------------- the study


TINY_SWEEP = ["--widths", "4", "8", "8", "--hidden-dim", "0", "--max-epochs", "2", "--batch-size", "32", "--val-size", "16", "--patience", "1"]


@pytest.fixture
def tiny_study(tmp_path, monkeypatch):
    """study.main on the tiny data set, with run folders and report in tmp_path; returns (argv, report folder)."""
    monkeypatch.setattr(study, "load_dataset", lambda *a, **kw: tiny_data())
    report = tmp_path / "report"
    args = ["--latent-sizes", "2", "3", "--models", "conv:vae", "conv:ae", "--seeds", "0", "1", *TINY_SWEEP,
            "--checkpoints-dir", str(tmp_path / "ck"), "--out", str(report)]
    return args, report


def test_validation_gain_is_the_fall_over_the_last_window():
    assert study.validation_gain(rows(10.0, 8.0, 7.5, 7.0), window=2) == pytest.approx(1.0)
    assert study.validation_gain(rows(10.0, 11.0), window=1) == pytest.approx(-1.0)  # got worse: negative
    assert study.validation_gain(rows(10.0, 8.0), window=2) is None  # too short to say
    assert study.validation_gain([{"epoch": 1}, {"epoch": 2}], window=1) is None


def test_study_writes_per_run_rows_and_seed_statistics(tiny_study, capsys):
    args, report = tiny_study
    assert study.main(args) == 0
    assert capsys.readouterr().err.count(": training") == 8
    rows = list(csv.DictReader(open(report / "results.csv")))
    assert [(r["latent_dim"], r["model"], r["kind"], r["seed"]) for r in rows] == [
        (z, "conv", kind, seed) for z in ("2", "3") for kind in ("ae", "vae") for seed in ("0", "1")
    ]
    for r in rows:
        assert 1 <= int(r["epochs"]) <= 2 and int(r["best_epoch"]) <= int(r["epochs"]) and float(r["val_neg_elbo"]) > 0
        history = load_run(report.parent / "ck" / f"study-conv-{r['kind']}-z{int(r['latent_dim']):03d}-s{r['seed']}").history
        assert float(r["val_gain"]) == pytest.approx(history[0]["val_neg_elbo"] - history[1]["val_neg_elbo"], abs=1e-3)  # patience 1
        assert int(r["parameters"]) > 0 and float(r["psnr"]) >= float(r["psnr_set"]) and 0 <= int(r["active_units_burda"]) <= int(r["latent_dim"])
        if r["kind"] == "ae":  # no KL: no bound, no KL-threshold count
            assert r["neg_elbo"] == "" and r["active_units_kl"] == "" and float(r["kl"]) == 0.0
        else:
            assert float(r["neg_elbo"]) == pytest.approx(float(r["recon"]) + float(r["kl"]), abs=2e-3)
            assert float(r["neg_elbo"]) == pytest.approx(float(r["objective"]), abs=2e-3)  # beta 1, recon weight 1
    assert rows[0]["psnr"] != rows[1]["psnr"]  # two seeds, two different runs
    table = (report / "results.md").read_text()
    vae3 = [r for r in rows if r["latent_dim"] == "3" and r["kind"] == "vae"]
    psnr = [float(r["psnr"]) for r in vae3]
    line = next(line for line in table.splitlines() if line.startswith("| 3 | conv VAE | 2 |"))
    assert f"{np.mean(psnr):.2f} ± {np.std(psnr, ddof=1):.2f}" in line  # mean ± sample sd over the seeds
    ae_line = next(line for line in table.splitlines() if line.startswith("| 3 | conv AE | 2 |"))
    assert ae_line.split(" | ")[3] == study.NOT_APPLICABLE
    assert "python -m trainer.study" in table and "at most 2 epochs" in table and "seeds 0, 1" in table
    figures = sorted(p.name for p in (report / "figures").iterdir())
    assert len(figures) == 8 and all("-s0-" in f for f in figures)  # the first seed of each of the 4 cells
    assert (report / "figures" / "study-conv-vae-z003-s0-scatter.png").read_bytes()[:4] == b"\x89PNG"
    assert load_run(report.parent / "ck" / "study-conv-vae-z002-s1").train_config.seed == 1  # ordinary run folders


def test_study_skips_finished_runs_and_resumes_the_rest(tiny_study, capsys, tmp_path):
    args, report = tiny_study
    config = study.train_config_for(study.build_parser().parse_args(args), 0)  # the sweep's z2 VAE, seed 0, cut at epoch 1
    fit(TINY_MODEL, TrainConfig.from_dict(config.to_dict() | {"epochs": 1}), tiny_data(), tmp_path / "ck" / "study-conv-vae-z002-s0", progress="none")
    assert study.main(args) == 0
    err = capsys.readouterr().err
    assert err.count(": training") == 7 and err.count(": resuming") == 1 and "study-conv-vae-z002-s0: resuming" in err
    first = (report / "results.csv").read_text()
    assert study.main([*args, "--report-only"]) == 0  # every run finished: nothing trains, the same report
    err = capsys.readouterr().err
    assert "training" not in err and "resuming" not in err
    assert (report / "results.csv").read_text() == first


def test_study_report_only_trains_nothing(tiny_study, capsys, tmp_path):
    args, report = tiny_study
    config = study.train_config_for(study.build_parser().parse_args(args), 0)
    fit(TINY_MODEL, config, tiny_data(), tmp_path / "ck" / "study-conv-vae-z002-s0", progress="none")
    assert study.main([*args, "--report-only"]) == 1  # seven of the eight runs are missing
    err = capsys.readouterr().err
    assert err.count("not finished, left out of the report") == 7 and ": training" not in err
    assert [r["seed"] for r in csv.DictReader(open(report / "results.csv"))] == ["0"]
    text = (report / "results.md").read_text()
    assert "(report rewritten by `--report-only`)" in text and "This invocation trained 0 of them" in text
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["study-conv-vae-z002-s0"]


def test_study_refuses_a_run_folder_with_other_settings(tiny_study, capsys, tmp_path):
    args, report = tiny_study
    config = study.train_config_for(study.build_parser().parse_args(args), 0)
    fit(TINY_MODEL, TrainConfig.from_dict(config.to_dict() | {"lr": 0.01}), tiny_data(), tmp_path / "ck" / "study-conv-vae-z002-s0", progress="none")
    assert study.main(args) == 1
    err = capsys.readouterr().err
    assert "study-conv-vae-z002-s0 holds a run with other settings: lr 0.01 (planned 0.001)" in err
    assert len(list(csv.DictReader(open(report / "results.csv")))) == 7  # the other runs are reported


@pytest.mark.slow  # two runs on the full 8,000-image subset, the defaults' data path
def test_study_on_the_bundled_subset(tmp_path, capsys):
    args = ["--latent-sizes", "2", "--models", "mlp:vae", "--seeds", "0", "1", "--max-epochs", "1", "--hidden-dim", "16",
            "--checkpoints-dir", str(tmp_path / "ck"), "--out", str(tmp_path / "report")]
    assert study.main(args) == 0
    assert "8,000 train" in (tmp_path / "report" / "results.md").read_text()
    assert load_run(tmp_path / "ck" / "study-mlp-vae-z002-s1").train_config.val_size == study.DEFAULT_VAL_SIZE


def test_study_bad_model_is_one_line(tmp_path, capsys):
    args = ["--models", "unet:vae", "--checkpoints-dir", str(tmp_path / "ck"), "--out", str(tmp_path / "report")]
    assert study.main(args) == 2
    assert "unknown model 'unet'" in capsys.readouterr().err
    assert not (tmp_path / "ck").exists()


def test_export_keeps_one_set_and_refuses_resume(runs_root, tmp_path):
    import shutil

    run_dir = tmp_path / "r"
    shutil.copytree(runs_root / "vae5", run_dir)
    before = load_run(run_dir)
    assert export_run(run_dir, drop_optimizer=True) > 0
    after = load_run(run_dir)
    assert after.epoch == before.epoch and len(after.history) == len(before.history)
    kept = sorted(p.name.split("-")[0] for p in run_dir.iterdir() if p.suffix in (".safetensors", ".jsonl") or p.name.startswith("latents"))
    assert kept == ["history", "latents", "weights"]
    with pytest.raises(RunError, match="without optimiser state"):
        after.optimizer_state()


def test_demo_runs_cover_the_documented_set():
    names = [name for name, _, _ in demo.DEMO_RUNS]
    assert len(names) == len(set(names)) == 12
    argv = {name: args for name, _, args in demo.DEMO_RUNS}
    assert "--beta" in argv["mnist-conv-vae-z2-nokl"] and argv["mnist-conv-vae-z2-nokl"][argv["mnist-conv-vae-z2-nokl"].index("--beta") + 1] == "0"
    assert "ae" in argv["mnist-conv-ae-z2"] and "fashion-mnist" in argv["fashion-conv-vae-z16"]
    assert argv[demo.BINARIZED_RUN][argv[demo.BINARIZED_RUN].index("--binarize") + 1] == "dynamic"  # the literature comparison
    gitignore = (PROJECT_ROOT / ".gitignore").read_text()
    assert all(f"!/checkpoints/{n}/" in gitignore for n in names)


# ---------------------------------------------------------------- the study's LR schedule and its cost records


def test_a_run_saved_before_a_milestone_resumes_as_the_planned_run(tiny_study, tmp_path):
    args, _ = tiny_study
    item = study.sweep_runs(study.build_parser().parse_args(args))[0]  # conv VAE z2, seed 0
    constant = study.train_config_for(study.build_parser().parse_args([*args, "--lr-milestones", "--max-epochs", "1", "--patience", "0"]), 0)
    planned = study.train_config_for(study.build_parser().parse_args([*args, "--lr-milestones", "1", "--patience", "0"]), 0)
    assert constant.lr_milestones == () and planned.lr_milestones == (1,) and planned.epochs == 2
    resumed, scratch = tmp_path / "resumed", tmp_path / "scratch"
    fit(item.model_config, constant, tiny_data(), resumed, progress="none")
    assert study.plan_for(resumed, item.model_config, planned) == "resume"  # its one epoch had the planned rate
    fit(item.model_config, planned, tiny_data(), resumed, resume=True, progress="none")
    fit(item.model_config, planned, tiny_data(), scratch, progress="none")
    a, b = load_run(resumed), load_run(scratch)
    assert [r["lr"] for r in a.history] == [r["lr"] for r in b.history] == [pytest.approx(1e-3), pytest.approx(1e-4)]
    assert a.train_config.lr_milestones == (1,)  # config.json now names the schedule the run followed
    assert [r["val_neg_elbo"] for r in a.history] == [r["val_neg_elbo"] for r in b.history]  # the same run, step for step
    assert all(torch.equal(a.model.state_dict()[k], v) for k, v in b.model.state_dict().items())
    assert study.plan_for(resumed, item.model_config, planned) == "skip"


def test_a_run_that_trained_past_a_milestone_it_lacked_is_refused(tiny_study, tmp_path):
    args, _ = tiny_study
    item = study.sweep_runs(study.build_parser().parse_args(args))[0]
    constant = study.train_config_for(study.build_parser().parse_args([*args, "--lr-milestones", "--patience", "0"]), 0)
    planned = study.train_config_for(study.build_parser().parse_args([*args, "--lr-milestones", "1", "--patience", "0"]), 0)
    fit(item.model_config, constant, tiny_data(), tmp_path / "r", progress="none")  # 2 epochs at 1e-3
    with pytest.raises(RunError, match=r"learning rate in epoch 2 differs from the planned \[1\]"):
        study.plan_for(tmp_path / "r", item.model_config, planned)


def test_training_invocations_leave_records_the_rewritten_report_states(tiny_study, capsys, tmp_path):
    args, report = tiny_study
    assert study.main([*args, "--seeds", "0"]) == 0
    assert study.main([*args, "--seeds", "1"]) == 0  # a second process's disjoint seeds
    records = study.read_sweep_records(tmp_path / "ck")
    assert [r["trained"] for r in records] == [4, 4] and all(r["wall_s"] > 0 for r in records)
    assert all("--seeds" in r["command"] for r in records)
    assert study.main([*args, "--report-only"]) == 0
    text = (report / "results.md").read_text()
    assert text.count("trained 4 runs in") == 2 and "From the first start to the last end:" in text
    assert "Of the 8 runs, " in text and "learning rate 0.001, times 0.1 after epoch 40" in text
    assert len(list(csv.DictReader(open(report / "results.csv")))) == 8


def test_min_improvement_sets_what_counts_as_better():
    history = rows(10.0, 9.95, 9.88, 9.83, 9.8)  # 0.03 to 0.07 nats an epoch
    assert best_validation(history) == (5, 9.8)  # the trainer's default threshold, 0.01: every epoch improves
    assert best_validation(history, min_improvement=0.1) == (3, 9.88)  # 0.1: only epoch 3 beats epoch 1 by that much
    assert early_stop_message(history, patience=2) is None
    message = early_stop_message(history, patience=2, min_improvement=0.1)
    assert message is not None and "by over 0.1 nats" in message and "after epoch 5" in message
    with pytest.raises(ValueError, match="min_improvement"):
        TrainConfig(min_improvement=-1.0)


def test_early_stopping_in_fit_uses_the_configs_min_improvement(tmp_path):
    loose = stopping_config(patience=1, epochs=6, min_improvement=1000.0)  # nothing counts as better: stop after epoch 2
    fit(TINY_MODEL, loose, tiny_data(), tmp_path / "r", progress="none")
    run = load_run(tmp_path / "r")
    assert run.epoch == 2 and "by over 1000 nats" in read_status(tmp_path / "r")["message"]


def test_a_run_the_planned_threshold_would_have_stopped_earlier_is_refused(tiny_study, tmp_path):
    args, _ = tiny_study
    item = study.sweep_runs(study.build_parser().parse_args(args))[0]
    strict = study.train_config_for(study.build_parser().parse_args([*args, "--min-improvement", "0", "--patience", "1"]), 0)
    planned = study.train_config_for(study.build_parser().parse_args([*args, "--min-improvement", "1000", "--patience", "1"]), 0)
    fit(item.model_config, TrainConfig.from_dict(strict.to_dict() | {"patience": 0}), tiny_data(), tmp_path / "r", progress="none")
    with pytest.raises(RunError, match="patience 0 \\(planned 1\\)"):  # other fields than the threshold: refused by name
        study.plan_for(tmp_path / "r", item.model_config, planned)
    fit(item.model_config, strict, tiny_data(), tmp_path / "s", progress="none")  # 2 epochs; 1000 would have stopped it after 2 too
    assert study.plan_for(tmp_path / "s", item.model_config, planned) == "resume"  # stopping where it stopped: config follows
    fit(item.model_config, planned, tiny_data(), tmp_path / "s", resume=True, progress="none")
    assert load_run(tmp_path / "s").train_config.min_improvement == 1000 and study.plan_for(tmp_path / "s", item.model_config, planned) == "skip"
    longer = TrainConfig.from_dict(strict.to_dict() | {"epochs": 3, "patience": 1})
    fit(item.model_config, longer, tiny_data(), tmp_path / "t", progress="none")
    planned3 = TrainConfig.from_dict(planned.to_dict() | {"epochs": 3})
    assert load_run(tmp_path / "t").epoch == 3  # trained past epoch 2, where the planned threshold stops every run (patience 1)
    with pytest.raises(RunError, match="the planned 1000 would have stopped it after epoch 2"):
        study.plan_for(tmp_path / "t", item.model_config, planned3)


def test_demo_cost_records_are_read_checked_and_worded(tmp_path):
    """checkpoints/README's training-time column: a missing or malformed <run>.cost.json gives the device alone."""
    assert demo.read_cost(tmp_path, "r") is None and demo._cost_text(None, "cpu") == "- (cpu)"
    demo.cost_path(tmp_path, "r").write_text('{"cpu_s": "lots", "wall_s": 60, "load_start": 1, "load_end": 2}')
    assert demo.read_cost(tmp_path, "r") is None
    meter = demo.CostMeter()
    sum(i * i for i in range(200_000))  # some CPU time
    record = meter.record(["--run-name", "r", "--beta", "0.5"])
    assert record["command"] == "python -m trainer --run-name r --beta 0.5" and record["cpu_s"] > 0 and record["wall_s"] > 0
    assert "load_mean" not in record  # two readings are not a mean over the run
    demo.cost_path(tmp_path, "r").write_text(json.dumps(record | {"cpu_s": 240.0, "wall_s": 300.0, "load_start": 0.5, "load_end": 1.25}))
    assert demo._cost_text(demo.read_cost(tmp_path, "r"), "cpu") == (
        "5.0 min wall, 4.0 CPU-min (2.0 min on 2 idle cores), load 0.5 at start, 1.2 at end, cpu")
    assert demo._cost_text({"cpu_s": 240.0, "wall_s": 300.0, "load_start": 4, "load_end": 3, "load_mean": 4.37}, "cpu").endswith(
        "load 4.0 at start, 3.0 at end, mean 4.4, cpu")
