"""Resume does what the user typed, `--resume auto` works for every restart, and torchrun's elastic restarts.

The CLI runs in-process (`trainer.cli.main`) on the tiny IDX copy of the bundled digits that
tests/test_distributed.py trains on. Options are compared with the run's config.json: the same value is
accepted, another value refused by name with both values (only --epochs may change). The cases are made
from `trainer_options()`, so a new config option is covered without touching this file.

Run as `python -m tests.test_resume TRAINER ARGS` (under torchrun), this module is the trainer with a
fault: the rank named by $RESUME_TEST_KILL is SIGKILLed at its N-th training step of the first attempt.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

import pytest

from models import ModelConfig
from trainer import cli, distributed
from trainer.cli import PROG, main, trainer_options
from trainer.config import TrainConfig
from trainer.runs import CONFIG_FILE, LOCK_FILE, MANIFEST_FILE, RunLock, load_run, read_config, read_status

from .helpers import CLI_TINY_FLAGS, PROCESS_TIMEOUT_S, assert_same_weights, cli_args, finish, one_process, run_module

EXIT_USAGE = 2
NAME = "r"
KILL_ENV = "RESUME_TEST_KILL"  # "RANK:STEP:MARKER": SIGKILL rank RANK at its STEP-th training step, first attempt only
ELASTIC_EPOCHS = 5
STEPS_PER_EPOCH = 4  # 76 training images in global batches of 25 (see tests/test_distributed.py)
KILL_STEP = 2 * STEPS_PER_EPOCH + 2  # the second step of epoch 3: epochs 1 and 2 are saved
ELASTIC_TIMEOUT_S = 2 * PROCESS_TIMEOUT_S  # two attempts, each starting torch in two processes


# ---------------------------------------------------------------- helpers

def new_run_argv(data_dir: Path, checkpoints: Path, *extra: str, name: str = NAME) -> list[str]:
    """A tiny run's full command line (the flags test_distributed trains with)."""
    return [*CLI_TINY_FLAGS, "--data-dir", str(data_dir), "--checkpoints-dir", str(checkpoints), "--run-name", name, *extra]


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def one_error_line(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == EXIT_USAGE and len(lines) == 1 and lines[0].startswith(f"{PROG}: error:"), err
    return lines[0]


def shown(value: Any) -> str:
    """How the error line writes a config value."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "none"
    return repr(value) if isinstance(value, float) else str(value)


def other_value(dest: str, saved: Any) -> tuple[str, Any]:
    """A value of option `dest` other than `saved`: (command-line text, parsed value). Fails for an option kind it
    does not know, so a new kind of option is noticed here."""
    option = trainer_options()[dest]
    if option.choices:
        value = next(c for c in option.choices if c != saved)
        return str(value), value
    if isinstance(saved, tuple):
        value = (*saved[:-1], saved[-1] + 1) if saved else (1,)
        return ",".join(map(str, value)), value
    if isinstance(saved, bool):
        raise AssertionError(f"no other value known for {dest}")
    if isinstance(saved, int):
        spec = option.spec
        value = saved + 1 if spec is None or spec.max is None or saved + 1 <= spec.max else saved - 1
        return str(value), value
    if isinstance(saved, float):
        value = saved / 2 if saved > 0 else 0.5
        return repr(value), value
    if isinstance(saved, str):
        return saved + "-other", saved + "-other"
    raise AssertionError(f"no other value known for {dest} ({type(saved).__name__})")


def config_options() -> list[str]:
    """Every option that sets a config field, but --epochs (a resume may change it)."""
    return [d for d, o in trainer_options().items() if o.field is not None and d != "epochs"]


def saved_value(run_dir: Path, dest: str) -> Any:
    model_config, train_config, _ = read_config(run_dir)
    field = trainer_options()[dest].field
    return getattr(model_config if field in {f.name for f in dataclasses.fields(ModelConfig)} else train_config, field)


def manifest_epoch(run_dir: Path) -> int:
    return json.loads((run_dir / MANIFEST_FILE).read_text())["epoch"]


@pytest.fixture(autouse=True)
def keep_signal_handlers(monkeypatch):
    """The trainer's SIGTERM/SIGINT handlers stay out of the test process."""
    monkeypatch.setattr(cli.StopFlag, "install", lambda self: None)


@pytest.fixture(scope="module")
def saved_run(data_dir, tmp_path_factory) -> Path:
    """A run of 1 epoch made by the CLI; tests that write copy it (see copy_run)."""
    checkpoints = tmp_path_factory.mktemp("saved")
    assert main(new_run_argv(data_dir, checkpoints, "--epochs", "1")) == 0
    return checkpoints / NAME


def copy_run(run_dir: Path, checkpoints: Path) -> Path:
    target = checkpoints / run_dir.name
    shutil.copytree(run_dir, target)
    return target


# ---------------------------------------------------------------- the same flags, and --epochs

def test_identical_flags_on_resume_are_accepted(data_dir, saved_run, tmp_path, capsys):
    """The command that made the run, with --resume: accepted (nothing to train at epoch 1 of 1), the run unchanged."""
    run_dir = copy_run(saved_run, tmp_path)
    before = load_run(run_dir)
    code, err = run_main(new_run_argv(data_dir, tmp_path, "--epochs", "1", "--resume"), capsys)
    assert code == 0, err
    after = load_run(run_dir)
    assert after.epoch == before.epoch == 1 and after.history == before.history
    assert_same_weights(run_dir, saved_run)


def test_equal_values_spelled_otherwise_are_accepted(data_dir, saved_run, tmp_path, capsys):
    run_dir = copy_run(saved_run, tmp_path)
    respelled = ["--lr", "1e-2", "--widths", "4, 8, 8", "--beta", "1", "--seed", "00", "--epochs", "2"]
    code, err = run_main([*new_run_argv(data_dir, tmp_path), *respelled, "--resume"], capsys)
    assert code == 0, err
    assert load_run(run_dir).epoch == 2


def test_the_issues_command_resumes(data_dir, tmp_path, capsys):
    """`--model mlp --latent-dim 4 --epochs 4 --run-name r --resume` after the same command without --resume."""
    command = [*new_run_argv(data_dir, tmp_path), "--model", "mlp", "--latent-dim", "4", "--hidden-dim", "16"]
    assert main([*command, "--epochs", "1"]) == 0
    code, err = run_main([*command, "--epochs", "2", "--resume"], capsys)
    assert code == 0, err
    assert load_run(tmp_path / NAME).epoch == 2


def test_more_epochs_extend_the_run(data_dir, saved_run, tmp_path, capsys):
    run_dir = copy_run(saved_run, tmp_path)
    code, err = run_main(["--checkpoints-dir", str(tmp_path), "--run-name", NAME, "--progress", "none", "--resume", "--epochs", "3"], capsys)
    assert code == 0, err
    run = load_run(run_dir)
    assert run.epoch == 3 and len(run.history) == 3 and run.train_config.epochs == 3


def test_fewer_epochs_than_trained_is_one_line(data_dir, saved_run, tmp_path, capsys):
    run_dir = copy_run(saved_run, tmp_path)
    assert main(["--checkpoints-dir", str(tmp_path), "--run-name", NAME, "--progress", "none", "--resume", "--epochs", "2"]) == 0
    capsys.readouterr()
    code, err = run_main(["--checkpoints-dir", str(tmp_path), "--run-name", NAME, "--resume", "--epochs", "1"], capsys)
    line = one_error_line(code, err)
    assert "--epochs 1" in line and "2 epochs" in line and "--epochs 2 or more" in line
    assert manifest_epoch(run_dir) == 2


# ---------------------------------------------------------------- differing flags are refused, never ignored

@pytest.mark.parametrize("dest", config_options())
def test_a_differing_flag_is_refused_by_name_with_both_values(dest, data_dir, saved_run, tmp_path, capsys):
    """Each config option given on resume with another value: one line naming it, the run's value and the given one."""
    run_dir = copy_run(saved_run, tmp_path)
    config_bytes = (run_dir / CONFIG_FILE).read_bytes()
    option = trainer_options()[dest]
    saved = saved_value(run_dir, dest)
    text, value = other_value(dest, saved)
    for argv in (
        [*new_run_argv(data_dir, tmp_path), f"{option.flag}={text}", "--resume"],  # the whole command, one flag changed
        ["--checkpoints-dir", str(tmp_path), "--run-name", NAME, "--progress", "none", f"{option.flag}={text}", "--resume", "auto"],
    ):
        line = one_error_line(*run_main(argv, capsys))
        assert f"{option.flag} cannot change when resuming" in line
        assert f"is {shown(saved)} in run {NAME}, got {shown(value)}" in line
        why = "model and data" if option.group in cli.FIXED_GROUPS else "only --epochs may change"
        assert why in line
    assert (run_dir / CONFIG_FILE).read_bytes() == config_bytes and manifest_epoch(run_dir) == 1


def test_every_config_option_is_checked_on_resume():
    """Config options are the model, data and training groups; all but --epochs are compared with the run."""
    options = trainer_options()
    fields = {f.name for f in dataclasses.fields(ModelConfig)} | {f.name for f in dataclasses.fields(TrainConfig)}
    assert {o.field for o in options.values() if o.field} == fields
    assert {options[d].group for d in config_options()} == {"model", "data", "training"}


def test_several_differing_flags_are_named_in_one_line(data_dir, saved_run, tmp_path, capsys):
    copy_run(saved_run, tmp_path)
    argv = ["--checkpoints-dir", str(tmp_path), "--run-name", NAME, "--resume", "--latent-dim", "8", "--lr", "5", "--epochs", "4"]
    line = one_error_line(*run_main(argv, capsys))
    assert line.count("cannot change when resuming") == 1
    assert f"--latent-dim is 2 in run {NAME}, got 8" in line and f"--lr is 0.01 in run {NAME}, got 5.0" in line
    assert "model and data" in line and "only --epochs may change" in line


def test_explicit_flags_are_told_from_defaults():
    """A flag given with its default value counts as given; one left out does not."""
    given = cli.given_options(["--lr", str(TrainConfig.lr), "--resume", "auto"])
    assert given == {"lr": TrainConfig.lr, "resume": "auto"}
    assert cli.given_options(["--resume"]) == {"resume": True}
    assert cli.given_options([]) == {}


# ---------------------------------------------------------------- --resume auto

def test_resume_auto_starts_a_new_run_and_says_so(data_dir, tmp_path, capsys):
    code, err = run_main(new_run_argv(data_dir, tmp_path, "--epochs", "1", "--resume", "auto"), capsys)
    assert code == 0, err
    assert f"starting run {NAME}" in err.splitlines()
    one_process(data_dir, tmp_path / "straight", epochs=1)
    assert_same_weights(tmp_path / NAME, tmp_path / "straight")


def test_resume_auto_resumes_a_saved_run_and_says_so(data_dir, saved_run, tmp_path, capsys):
    copy_run(saved_run, tmp_path)
    code, err = run_main(new_run_argv(data_dir, tmp_path, "--epochs", "2", "--resume", "auto"), capsys)
    assert code == 0, err
    assert f"resuming run {NAME} at epoch 1 of 2" in err.splitlines()
    run = load_run(tmp_path / NAME)
    assert run.epoch == 2 and run.info["resumed_from"] == 1
    one_process(data_dir, tmp_path / "straight", epochs=2)
    assert_same_weights(tmp_path / NAME, tmp_path / "straight")


def unsaved_start(run_dir: Path) -> dict[str, bytes]:
    """What a start SIGKILLed before epoch 0 was saved leaves (plus a file of the user's); returns the stale files."""
    run_dir.mkdir(parents=True)
    stale = {
        CONFIG_FILE: b'{"model": {"latent_dim": 7}, "train": {}}',
        "atlas-images.npz": b"half an npz",
        "status.json": json.dumps({"state": "running", "pid": 2**22 + 1, "epoch": 0}).encode(),
        "weights-000000.safetensors": b"half the weights",
        ".history-000000.jsonl.abc.tmp": b"a temporary",
    }
    for name, data in stale.items():
        (run_dir / name).write_bytes(data)
    (run_dir / "notes.txt").write_text("mine")
    return stale


def test_resume_auto_clears_a_start_killed_before_its_first_save(data_dir, tmp_path, capsys):
    run_dir = tmp_path / NAME
    stale = unsaved_start(run_dir)
    code, err = run_main(new_run_argv(data_dir, tmp_path, "--epochs", "1", "--resume", "auto"), capsys)
    assert code == 0, err
    assert f"starting run {NAME}" in err.splitlines()
    run = load_run(run_dir)
    assert run.epoch == 1 and run.model_config.latent_dim == 2 and read_status(run_dir)["state"] == "finished"
    for name, data in stale.items():  # each stale file removed or rewritten by the new start
        assert not (run_dir / name).exists() or (run_dir / name).read_bytes() != data, name
    assert (run_dir / "notes.txt").read_text() == "mine"  # not a run file: left alone
    one_process(data_dir, tmp_path / "straight", epochs=1)
    assert_same_weights(run_dir, tmp_path / "straight")


def test_resume_auto_never_clears_a_run_another_trainer_holds(data_dir, tmp_path, capsys):
    """A trainer still creating the run (its lock held, nothing saved yet): refused by pid, its files untouched."""
    run_dir = tmp_path / NAME
    stale = unsaved_start(run_dir)
    with RunLock(run_dir):
        line = one_error_line(*run_main(new_run_argv(data_dir, tmp_path, "--epochs", "1", "--resume", "auto"), capsys))
    assert f"already being trained by pid {os.getpid()}" in line
    assert all((run_dir / name).read_bytes() == data for name, data in stale.items())


def test_plain_resume_still_needs_a_saved_epoch(data_dir, tmp_path, capsys):
    unsaved_start(tmp_path / NAME)
    line = one_error_line(*run_main(new_run_argv(data_dir, tmp_path, "--epochs", "1", "--resume"), capsys))
    assert "nothing to resume" in line and "--resume auto" in line
    assert (tmp_path / NAME / CONFIG_FILE).exists() and not (tmp_path / NAME / LOCK_FILE).exists()


# ---------------------------------------------------------------- elastic restarts under torchrun

def elastic_torchrun(args: list[str], env: dict[str, str]) -> Any:
    """`torchrun --standalone --nproc-per-node 2 --max-restarts 2` of this module's faulty trainer."""
    launch = ["--standalone", "--nproc-per-node", "2", "--max-restarts", "2", "-m", "tests.test_resume", *args]
    return run_module("torch.distributed.run", launch, env={"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", **env}, start_new_session=True)


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_elastic_restart_after_a_rank_is_killed_mid_epoch(victim, data_dir, tmp_path):
    """One rank SIGKILLed in epoch 3: torchrun restarts both, `--resume auto` continues from epoch 2, and the run
    ends with the weights of an uninterrupted one; the new rank 0 holds the lock (the dead one's was released)."""
    marker = tmp_path / "killed-pid"
    argv = new_run_argv(data_dir, tmp_path / "checkpoints", "--epochs", str(ELASTIC_EPOCHS), "--resume", "auto")
    code, err = finish(elastic_torchrun(argv, {KILL_ENV: f"{victim}:{KILL_STEP}:{marker}"}), ELASTIC_TIMEOUT_S)
    assert code == 0, err
    killed = int(marker.read_text())
    assert f"starting run {NAME}" in err and f"resuming run {NAME} at epoch 2 of {ELASTIC_EPOCHS} (torchrun restart 1)" in err, err
    run_dir = tmp_path / "checkpoints" / NAME
    run = load_run(run_dir)
    assert run.epoch == ELASTIC_EPOCHS and len(run.history) == ELASTIC_EPOCHS and run.info["resumed_from"] == 2
    status = read_status(run_dir)
    assert status["state"] == "finished" and status["world_size"] == 2 and status["pid"] != killed
    assert str(status["pid"]) == (run_dir / LOCK_FILE).read_text().strip()
    one_process(data_dir, tmp_path / "straight", epochs=ELASTIC_EPOCHS)
    assert_same_weights(run_dir, tmp_path / "straight")
    straight = load_run(tmp_path / "straight")
    assert [r["test_loss"] for r in run.history] == pytest.approx([r["test_loss"] for r in straight.history], rel=1e-5)


def install_kill(rank: int, step: int, marker: Path) -> None:
    """SIGKILL this process at its `step`-th training step if it is rank `rank` of torchrun's first attempt."""
    if distributed.restart_count() != 0 or distributed.env_rank() != rank:
        return
    from trainer.train import Trainer

    real, calls = Trainer.train_step, 0

    def train_step(self: Trainer, *args: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == step:
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, *args, **kw)

    Trainer.train_step = train_step  # type: ignore[method-assign]


def elastic_worker(argv: Sequence[str]) -> int:
    """The trainer with $RESUME_TEST_KILL's fault installed (see the module docstring)."""
    spec = os.environ.get(KILL_ENV)
    if spec:
        rank, step, marker = spec.split(":", 2)
        install_kill(int(rank), int(step), Path(marker))
    return main(list(argv))


if __name__ == "__main__":
    sys.exit(elastic_worker(sys.argv[1:]))


def test_in_process_cli_leaves_the_signal_handlers_it_found(tmp_path, data_dir):
    """The CLI's SIGTERM/SIGINT handler lives only while it trains: a caller (a test runner, a notebook) keeps its own."""
    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    assert main(cli_args(data_dir, tmp_path, "r", "--epochs", "1")) == 0
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_extending_a_finished_float16_run_says_it_starts_from_rounded_weights(data_dir, tmp_path, capsys):
    """Only a finished run's weights are float16; extending it cannot be bitwise a longer straight run, and the note says so."""
    code, err = run_main(new_run_argv(data_dir, tmp_path, "--epochs", "1", "--weights-dtype", "float16"), capsys)
    assert code == 0, err
    code, err = run_main(new_run_argv(data_dir, tmp_path, "--epochs", "2", "--weights-dtype", "float16", "--resume", "auto"), capsys)
    assert code == 0, err
    (note,) = [line for line in err.splitlines() if line.startswith(f"resuming run {NAME} at epoch 1 of 2")]
    assert "float16 weights" in note and "rounded" in note
    run_main(new_run_argv(data_dir, tmp_path, "--epochs", "1", name="plain"), capsys)
    code, err = run_main(new_run_argv(data_dir, tmp_path, "--epochs", "2", "--resume", "auto", name="plain"), capsys)
    assert code == 0 and "resuming run plain at epoch 1 of 2" in err.splitlines()  # float32: nothing to say
