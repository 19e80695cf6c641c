"""app/jobs.py: argv building and validation for every option, and real detached training jobs."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from app import jobs
from trainer.runs import load_run

from .helpers import wait_until

# A model that trains an epoch of the bundled MNIST subset in about a second on two cores.
TINY = {"model": "mlp", "hidden_dim": 16, "latent_dim": 2, "atlas_size": 50, "batch_size": 256}


def one_job(root: Path, name: str) -> jobs.Job | None:
    return next((j for j in jobs.list_jobs(root) if j.name == name), None)


# ---------------------------------------------------------------- argv

def test_build_argv_every_option(tmp_path: Path) -> None:
    options = {
        "model": "conv-upsample", "kind": "ae", "latent_dim": 8, "dataset": "fashion-mnist", "epochs": 3, "batch_size": 64,
        "lr": 3e-4, "beta": 0.5, "beta_warmup": 2, "recon_loss": "mse", "seed": 7, "run_name": "r1",
        "widths": [4, 8, 8], "hidden_dim": 32, "image_size": 32, "channels": 3, "atlas_size": 100,
        "lr_schedule": "cosine", "recon_weight": 2.0, "weights_dtype": "float16",
    }
    argv = jobs.build_argv(options, tmp_path)
    assert argv[:3] == [sys.executable, "-m", "trainer"]
    for name, value in options.items():
        expected = ",".join(map(str, value)) if isinstance(value, list) else (repr(value) if isinstance(value, float) else str(value))
        assert f"{jobs.flag(name)}={expected}" in argv
    assert f"--checkpoints-dir={tmp_path.resolve()}" in argv and argv[-1] == "--progress=json"
    parsed = jobs.build_parser().parse_args(argv[3:])  # the trainer's own parser takes it unchanged
    assert parsed.lr == 3e-4 and parsed.widths == [4, 8, 8] and parsed.run_name == "r1"


def test_unset_options_are_left_to_the_trainer(tmp_path: Path) -> None:
    argv = jobs.build_argv({"model": None, "dataset": "  ", "epochs": 2, "run_name": "x"}, tmp_path)
    assert not any(a.startswith(("--model", "--dataset")) for a in argv)
    assert "--epochs=2" in argv


def test_on_off_flags(tmp_path: Path) -> None:
    assert "--compile" in jobs.build_argv({"compile": True, "run_name": "x"}, tmp_path)
    assert not any(a.startswith("--compile") for a in jobs.build_argv({"compile": False, "run_name": "x"}, tmp_path))
    assert jobs.validate_options({"compile": "yes", "run_name": "x"}, tmp_path) == ["option 'compile' is on or off (True or False), got 'yes'"]


def test_valid_options_pass(tmp_path: Path) -> None:
    assert jobs.validate_options(TINY | {"epochs": 2, "run_name": "ok-1.a_b"}, tmp_path) == []
    assert jobs.validate_options({"run_name": "defaults"}, tmp_path) == []


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("model", "unet", "invalid choice: 'unet'"),
        ("kind", "gan", "invalid choice: 'gan'"),
        ("latent_dim", 0, "latent_dim must be an integer from 1 to 512"),
        ("latent_dim", 513, "latent_dim must be an integer from 1 to 512"),
        ("latent_dim", "two", "--latent-dim: invalid int value: 'two'"),
        ("latent_dim", True, "--latent-dim: invalid int value: 'True'"),
        ("dataset", "cifar10", "unknown dataset 'cifar10'"),
        ("dataset", "folder:/no/such/folder", "is not a folder"),
        ("epochs", 0, "epochs must be an integer from 1 to 100000"),
        ("epochs", 2.5, "--epochs: invalid int value: '2.5'"),
        ("batch_size", 0, "batch_size must be an integer from 1 to 65536"),
        ("batch_size", "lots", "--batch-size: invalid int value: 'lots'"),
        ("lr", 0.0, "lr must be a number in (0, 10]"),
        ("lr", 11.0, "lr must be a number in (0, 10]"),
        ("lr", float("nan"), "lr must be a number in (0, 10], got nan"),
        ("lr", "fast", "--lr: invalid float value: 'fast'"),
        ("beta", -1.0, "beta must be a number from 0 to 1000"),
        ("beta", "x", "--beta: invalid float value: 'x'"),
        ("beta_warmup", -1, "beta_warmup must be a non-negative integer"),
        ("beta_warmup", 1.5, "--beta-warmup: invalid int value: '1.5'"),
        ("recon_loss", "huber", "invalid choice: 'huber'"),
        ("seed", -1, "seed must be a non-negative integer"),
        ("seed", "abc", "--seed: invalid int value: 'abc'"),
        ("widths", [4, 8], "widths must be 3 channel counts from 1 to"),
        ("widths", "a,b", "--widths: expected comma-separated integers"),
        ("hidden_dim", -1, "hidden_dim must be an integer from 0 to"),
        ("image_size", 30, "image_size must be one of"),
        ("channels", 2, "in_channels must be 1 or 3"),
        ("atlas_size", 0, "atlas_size must be an integer from 1 to 100000"),
        ("lr_schedule", "linear", "invalid choice: 'linear'"),
        ("recon_weight", -2.0, "recon_weight must be a number from 0 to 1000"),
        ("weights_dtype", "int8", "invalid choice: 'int8'"),
    ],
)
def test_bad_option_gives_one_clear_line(tmp_path: Path, option: str, value: Any, fragment: str) -> None:
    errors = jobs.validate_options({"run_name": "fine", option: value}, tmp_path)
    assert len(errors) == 1, errors
    assert fragment in errors[0] and "\n" not in errors[0] and "--help" not in errors[0]


def test_several_mistakes_reported_together(tmp_path: Path) -> None:
    errors = jobs.validate_options({"run_name": "a/b", "epochs": 0, "lr": "fast", "model": "x"}, tmp_path)
    assert len(errors) == 4
    assert all("\n" not in e for e in errors)


def test_rules_involving_two_options(tmp_path: Path) -> None:
    assert jobs.validate_options({"run_name": "m", "model": "mlp", "hidden_dim": 0}, tmp_path) == [
        "the mlp model needs hidden_dim > 0 (the classic MNIST VAE uses 400)"
    ]
    errors = jobs.validate_options({"run_name": "m", "beta": 0.0, "recon_weight": 0.0}, tmp_path)
    assert len(errors) == 1 and "cannot both be 0" in errors[0]


def test_unknown_option_refused(tmp_path: Path) -> None:
    errors = jobs.validate_options({"run_name": "m", "checkpoints_dir": "/etc"}, tmp_path)
    assert errors == ["unknown option 'checkpoints_dir': not a trainer option the app can set"]


@pytest.mark.parametrize("name", ["a/b", "..", "/abs", "x\n", "", "   ", "a\tb", "../up", "a\\b", ".hidden", None, 5])
def test_bad_run_names_refused(tmp_path: Path, name: Any) -> None:
    errors = jobs.validate_options({"run_name": name}, tmp_path)
    assert len(errors) == 1 and "run name" in errors[0] and "\n" not in errors[0]


def test_existing_run_name_refused(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    assert jobs.validate_options({"run_name": "taken"}, tmp_path) == [f"run 'taken' already exists in {tmp_path}: choose another run name"]
    with pytest.raises(jobs.JobError, match="already exists"):
        jobs.start_job({"run_name": "taken"}, tmp_path)


def test_start_refuses_invalid_and_starts_nothing(tmp_path: Path) -> None:
    with pytest.raises(jobs.JobError) as info:
        jobs.start_job({"run_name": "bad/name", "epochs": -3}, tmp_path)
    assert len(info.value.errors) == 2
    assert list(tmp_path.iterdir()) == [] and jobs.list_jobs(tmp_path) == []


def test_stop_refuses_what_is_not_our_running_trainer(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    (run / "status.json").write_text('{"state": "running", "pid": 1, "epoch": 1, "total": 5, "updated": 0}')
    job = jobs.job_state(run)
    assert job is not None and job.state == "died" and "pid 1" in (job.message or "")  # pid 1 is init, not a trainer
    with pytest.raises(jobs.JobError, match="not running"):
        jobs.stop_job(run)
    assert not jobs.is_trainer_process(1) and not jobs.is_trainer_process(None) and not jobs.is_trainer_process(True)


def test_format_seconds() -> None:
    assert [jobs.format_seconds(s) for s in (None, 4.4, 75, 3725)] == ["-", "4 s", "1 min 15 s", "1 h 02 min"]


# ---------------------------------------------------------------- real jobs

@pytest.mark.slow
def test_job_runs_to_finished_and_is_listed(tmp_path: Path) -> None:
    started = jobs.start_job(TINY | {"epochs": 2, "run_name": "tiny"}, tmp_path)
    assert started.run_dir == (tmp_path / "tiny").resolve() and started.pid > 0
    assert jobs.is_trainer_process(started.pid)
    job = wait_until(lambda: (j := one_job(tmp_path, "tiny")) and not j.active and j, what="the job to end")
    assert job.state == "finished", (job, jobs.log_tail(job.path))
    assert (job.epoch, job.total, job.fraction) == (2, 2, 1.0)
    run = load_run(tmp_path / "tiny")
    assert run.epoch == 2 and len(run.history) == 2
    assert '"epoch": 2' in started.log_path.read_text()  # JSON progress went to the log
    assert jobs.validate_options({"run_name": "tiny"}, tmp_path)[0].startswith("run 'tiny' already exists")


@pytest.mark.slow
def test_stop_a_running_job_keeps_it_loadable(tmp_path: Path) -> None:
    started = jobs.start_job(TINY | {"epochs": 500, "run_name": "long"}, tmp_path)
    try:
        job = wait_until(lambda: (j := one_job(tmp_path, "long")) and j.state == "running" and j.epoch >= 1 and j,
                         what="the first epoch")
        assert job.eta is not None and job.eta > 0 and job.pid == started.pid
        message = jobs.stop_job(job.path)
        assert "asked long" in message and str(started.pid) in message
        job = wait_until(lambda: (j := one_job(tmp_path, "long")) and not j.active and j, what="the job to stop")
        assert job.state == "stopped", (job, jobs.log_tail(job.path))
        assert 1 <= job.epoch < 500
        run = load_run(tmp_path / "long")
        assert run.epoch == job.epoch
        job_file = tmp_path / "long" / jobs.JOB_FILE
        # list_jobs reaps the exited process and records its exit code.
        wait_until(lambda: jobs.list_jobs(tmp_path) and "returncode" in job_file.read_text(), what="the exit code")
        assert '"returncode": 0' in job_file.read_text() and "stop_requested" in job_file.read_text()
    finally:
        if jobs.is_trainer_process(started.pid):
            import os
            import signal

            os.kill(started.pid, signal.SIGKILL)


@pytest.mark.slow
def test_job_that_dies_early_shows_why(tmp_path: Path) -> None:
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "broken.png").write_bytes(b"not a png")  # passes the app's check, fails in the trainer
    jobs.start_job({"dataset": f"folder:{images}", "run_name": "doomed", "epochs": 1}, tmp_path / "ck")
    job = wait_until(lambda: (j := one_job(tmp_path / "ck", "doomed")) and j.state == "died" and j, what="the job to die")
    assert "none of its 1 image files could be read" in (job.message or ""), job


# ---------------------------------------------------------------- progress inside an epoch, resuming

@pytest.fixture
def fake_trainer() -> Iterator[int]:
    """The pid of a live process whose command line names the trainer (argv[0] .../trainer): what is_trainer_process looks for."""
    proc = subprocess.Popen(["bash", "-c", "exec -a /fake/trainer sleep 60"])
    try:
        wait_until(lambda: jobs.is_trainer_process(proc.pid), what="the fake trainer's exec")
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data))


def test_the_step_counter_counts_in_the_progress(tmp_path: Path, fake_trainer: int) -> None:
    run = tmp_path / "r"
    run.mkdir()
    write_json(run / "status.json", {"state": "running", "pid": fake_trainer, "epoch": 1, "total": 4, "step": 30, "steps": 60,
                                     "images_per_s": 1234.5, "eta": 12.0, "seconds": 9.0, "updated": 1.0})
    job = jobs.job_state(run)
    assert job is not None and job.state == "running" and job.in_epoch
    assert (job.step, job.steps, job.images_per_s) == (30, 60, 1234.5)
    assert job.fraction == pytest.approx((1 + 30 / 60) / 4)
    write_json(run / "status.json", {"state": "running", "pid": fake_trainer, "epoch": 2, "total": 4, "images_per_s": 1000.0, "updated": 2.0})
    job = jobs.job_state(run)
    assert job is not None and not job.in_epoch and job.fraction == 0.5  # between epochs: completed epochs only


def test_a_relaunched_job_starts_before_its_trainer_writes_a_status(tmp_path: Path, fake_trainer: int) -> None:
    run = tmp_path / "r"
    run.mkdir()
    write_json(run / "status.json", {"state": "finished", "pid": 1, "epoch": 2, "total": 2, "seconds": 5.0, "updated": 100.0})
    write_json(run / jobs.JOB_FILE, {"pid": fake_trainer, "argv": jobs.resume_argv("r", 5, tmp_path), "started": 200.0, "log": jobs.LOG_FILE})
    job = jobs.job_state(run)
    assert job is not None and job.state == "starting" and job.active and (job.epoch, job.total) == (2, 5) and "resuming" in (job.message or "")


def test_resume_argv() -> None:
    argv = jobs.resume_argv("r", 7, "/x")
    assert argv[:3] == [sys.executable, "-m", "trainer"]
    assert argv[3:] == ["--run-name=r", "--resume", "--epochs=7", f"--checkpoints-dir={Path('/x').resolve()}", "--progress=json"]


def test_resume_problems_are_one_line(runs_root: Path, tmp_path: Path, fake_trainer: int) -> None:
    run = shutil.copytree(runs_root / "vae2", tmp_path / "vae2")  # trained 2 epochs, finished
    assert jobs.resume_problem(run, 3) is None
    assert jobs.resume_problem(run, 2) == "vae2 has trained 2 epochs already: ask for more than 2"
    assert jobs.resume_problem(run, "3") == "epochs must be a whole number, got '3'"
    assert "epochs" in (jobs.resume_problem(run, 10**9) or "")  # the trainer's bound on --epochs
    assert jobs.resume_problem(tmp_path / "nothing", 3) == "nothing has no saved epoch to resume from"
    write_json(run / "status.json", {"state": "running", "pid": fake_trainer, "epoch": 2, "total": 9, "updated": 1.0})
    assert jobs.resume_problem(run, 3) == "vae2 is running: stop it before resuming it"
    with pytest.raises(jobs.JobError, match="invalid run name"):
        jobs.resume_job("../vae2", 3, tmp_path)


def test_an_exported_run_without_optimiser_state_is_not_resumable(runs_root: Path, tmp_path: Path) -> None:
    from trainer.export import export_run

    run = shutil.copytree(runs_root / "vae2", tmp_path / "vae2")
    assert jobs.resumable(run)
    export_run(run, drop_optimizer=True)
    assert not jobs.resumable(run) and not jobs.resumable(tmp_path / "nothing")
    assert "exported without its optimiser state" in (jobs.resume_problem(run, 3) or "")


def test_a_public_app_resumes_nothing(runs_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(jobs, "is_public", lambda: True)
    shutil.copytree(runs_root / "vae2", tmp_path / "vae2")
    with pytest.raises(jobs.JobError, match="public"):
        jobs.resume_job("vae2", 3, tmp_path)


@pytest.mark.slow
def test_resume_a_finished_job_for_more_epochs(tmp_path: Path) -> None:
    jobs.start_job(TINY | {"epochs": 1, "run_name": "more"}, tmp_path)
    wait_until(lambda: (j := one_job(tmp_path, "more")) and not j.active, what="the first job to end")
    started = jobs.resume_job("more", 2, tmp_path)
    assert "--resume" in started.argv and "--epochs=2" in started.argv
    job = wait_until(lambda: (j := one_job(tmp_path, "more")) and not j.active and j, what="the resumed job to end")
    assert job.state == "finished" and (job.epoch, job.total) == (2, 2), (job, jobs.log_tail(job.path))
    run = load_run(tmp_path / "more")
    assert run.epoch == 2 and len(run.history) == 2
