"""Faults injected into a training run: SIGKILL anywhere, SIGTERM/SIGINT, non-finite losses, full and
read-only disks, two trainers on one run, and a reader loading a run hundreds of times while it is written.

Every trainer here is the real CLI (`python -m trainer`), forked from one zygote process (tests/helpers_kill.py)
so that a kill point costs a fork, not an interpreter start. The run is tiny (120 digit PNGs, 2 epochs) and
seeded: every interrupted run, once resumed, must end with exactly the reference run's weights.
"""
from __future__ import annotations

import json
import math
import random
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.data import load_dataset
from trainer.runs import MANIFEST_FILE, STATUS_FILE, RunError, latent_snapshots, list_runs, load_run, read_status

from .helpers_kill import ERROR_MODES, KILL_MODES, Outcome, Trace, Zygote

N_IMAGES = 120  # digit PNGs in class folders: 108 train / 12 test with the folder loader's 10% split
EPOCHS = 2
BATCH = 32
MODEL_ARGS = ["--widths", "4,8,8", "--hidden-dim", "0", "--latent-dim", "2", "--image-size", "28", "--channels", "1"]
TRAIN_ARGS = ["--batch-size", str(BATCH), "--atlas-size", "50", "--seed", "3", "--lr", "0.01", "--progress", "none"]
# Write points of a fresh EPOCHS-epoch run: atlas + config, then per save (epochs 0..EPOCHS) weights, optim,
# history, latents and manifest followed by a "running" status, and the final "finished" status.
FILES_PER_SAVE = 5
WRITE_POINTS = 2 + (EPOCHS + 1) * (FILES_PER_SAVE + 1) + 1
FIRST_SAVE_POINTS = 2 + FILES_PER_SAVE  # create() and the epoch-0 save, before the training loop
N_TIMED_KILLS = 12
TIMED_KILL_SEED = 20240611
STOP_DEADLINE_S = 5.0  # SIGTERM / SIGINT: exit within this many seconds
N_READER_LOADS = 500
MIN_EPOCHS_SEEN = 10  # the reader must have seen the run move on this often (proof it raced the writer)
LATENT_TOL = 2e-3  # float16 storage of the atlas latents
TRAINER_PREFIX = "python -m trainer:"
NOT_SAVED_YET = r"(config|manifest)\.json: missing|no such run folder"  # load_run before the first save landed

pytestmark = pytest.mark.slow  # the fault-injection matrix: a real trainer per case


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """A folder dataset of real MNIST digits (class sub-folders), its decode cache already built."""
    root = tmp_path_factory.mktemp("digits")
    full = load_dataset("mnist")
    for i in range(N_IMAGES):
        folder = root / str(int(full.train_y[i]))
        folder.mkdir(exist_ok=True)
        Image.fromarray(full.train_x[i, 0].numpy()).save(folder / f"{i}.png")
    load_dataset(f"folder:{root}", image_size=28, channels=1)  # builds .vae_cache: later runs write nothing there
    return root


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    with Zygote(tmp_path_factory.mktemp("zygote-logs")) as z:
        yield z


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


def new_run_args(digits: Path, checkpoints: Path, name: str, epochs: int = EPOCHS, *extra: str) -> list[str]:
    return ["--dataset", f"folder:{digits}", *MODEL_ARGS, *TRAIN_ARGS, "--epochs", str(epochs),
            "--checkpoints-dir", str(checkpoints), "--run-name", name, *extra]


def resume_args(checkpoints: Path, name: str, *extra: str) -> list[str]:
    return ["--resume", "--run-name", name, "--checkpoints-dir", str(checkpoints), "--progress", "none", *extra]


@pytest.fixture(scope="module")
def reference(zygote, digits, checkpoints, tmp_path_factory):
    """The uninterrupted run every interrupted one must end up equal to, with the trace of its write points."""
    trace = tmp_path_factory.mktemp("traces") / "reference"
    outcome = zygote.run(new_run_args(digits, checkpoints, "reference"), trace=trace)
    assert outcome.code == 0, outcome.output
    return load_run(checkpoints / "reference"), Trace.read(trace), outcome.seconds


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(TRAINER_PREFIX)]


def assert_one_line_error(outcome: Outcome, code: int, *needles: str) -> str:
    """Exit `code`, no traceback, exactly one `python -m trainer: ...` line holding every needle; returns it."""
    out = outcome.output
    assert outcome.code == code, out
    assert "Traceback" not in out, out
    lines = error_lines(out)
    assert len(lines) == 1, out
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def assert_same_run(run, reference_run) -> None:
    """Bit-identical weights, history losses and latents: the run is the reference run."""
    assert run.epoch == reference_run.epoch
    for (name, a), b in zip(reference_run.model.state_dict().items(), run.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["test_loss"] for r in run.history] == [r["test_loss"] for r in reference_run.history]
    assert np.array_equal(run.atlas.means, reference_run.atlas.means)


def assert_consistent(run) -> None:
    """One epoch's set: history, manifest and latent snapshots agree (the thinned epochs), and the weights are that epoch's."""
    assert len(run.history) == run.epoch and run.atlas.epochs.tolist() == latent_snapshots(list(range(run.epoch + 1)), run.epoch)
    assert run.atlas.epochs[-1] == run.epoch
    with torch.no_grad():
        mean = run.model.encode(torch.from_numpy(run.atlas.images).float() / 255).mean.numpy()
    np.testing.assert_allclose(mean, run.atlas.means[-1], rtol=LATENT_TOL, atol=LATENT_TOL)


def check_after_fault(checkpoints: Path, name: str, trace: Trace, exact: bool = True) -> int | None:
    """The folder holds the last epoch whose manifest landed (or clearly none) and lists without error.

    exact: the fault is known to have stopped the write it hit (not so for a SIGKILL on a timer)."""
    run_dir = checkpoints / name
    landed = trace.landed_epochs(MANIFEST_FILE, exact)
    listed = {s.name: s for s in list_runs(checkpoints)}
    try:
        run = load_run(run_dir)
    except RunError as e:
        assert None in landed and re.search(NOT_SAVED_YET, str(e)), (landed, str(e))
        if name in listed:
            assert listed[name].error and "\n" not in listed[name].error
        return None
    assert run.epoch in landed, (run.epoch, landed)
    assert_consistent(run)
    assert listed[name].error is None and listed[name].epoch == run.epoch
    return run.epoch


def finish(zygote: Zygote, digits: Path, checkpoints: Path, name: str, saved: int | None) -> None:
    """Resume an interrupted run (or start it again if it never saved) and let it complete."""
    argv = resume_args(checkpoints, name) if saved is not None else new_run_args(digits, checkpoints, name)
    outcome = zygote.run(argv)
    assert outcome.code == 0, outcome.output
    assert read_status(checkpoints / name)["state"] == "finished"


# ---------------------------------------------------------------- SIGKILL

def test_reference_run_writes_every_point_once(reference):
    run, trace, _ = reference
    assert run.epoch == EPOCHS and read_status(run.path)["state"] == "finished"
    assert len(trace.begun) == len(trace.ended) == WRITE_POINTS, trace.begun
    assert [n for _, n in trace.begun].count(MANIFEST_FILE) == EPOCHS + 1
    assert [n for _, n in trace.begun][-1] == STATUS_FILE


@pytest.mark.parametrize("k", range(1, WRITE_POINTS + 1))
@pytest.mark.parametrize("mode", KILL_MODES)
def test_sigkill_at_write_point_then_resume(zygote, digits, checkpoints, reference, tmp_path, mode, k):
    """SIGKILL as write point k begins, half-way through its bytes, or just before its rename."""
    name = f"kill-{mode}-{k}"
    outcome = zygote.run(new_run_args(digits, checkpoints, name), kill_at=k, mode=mode, trace=tmp_path / "trace")
    assert outcome.killed, outcome.output
    trace = Trace.read(tmp_path / "trace")
    assert len(trace.begun) == k and len(trace.ended) == k - 1
    saved = check_after_fault(checkpoints, name, trace)
    finish(zygote, digits, checkpoints, name, saved)
    assert_same_run(load_run(checkpoints / name), reference[0])


@pytest.mark.parametrize("i", range(N_TIMED_KILLS))
def test_sigkill_at_random_moment_then_resume(zygote, digits, checkpoints, reference, tmp_path, i):
    """SIGKILL after a seeded random delay within the reference run's duration (anywhere: training, saving)."""
    _, _, seconds = reference
    delay = random.Random(TIMED_KILL_SEED + i).uniform(0.0, seconds)
    name = f"timed-{i}"
    outcome = zygote.run(new_run_args(digits, checkpoints, name), trace=tmp_path / "trace", kill_after=delay)
    assert outcome.killed or outcome.code == 0, outcome.output  # a slow kill may find the run finished
    saved = check_after_fault(checkpoints, name, Trace.read(tmp_path / "trace"), exact=False)
    finish(zygote, digits, checkpoints, name, saved)
    assert_same_run(load_run(checkpoints / name), reference[0])


def test_sigkilled_trainer_holds_no_lock_and_a_second_trainer_is_refused(zygote, digits, checkpoints, reference):
    """A second trainer on a running run is refused by name; once the first is SIGKILLed, --resume works."""
    name = "two-trainers"
    first = zygote.start(new_run_args(digits, checkpoints, name, 10_000))
    manifest = checkpoints / name / MANIFEST_FILE
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (manifest.exists() and json.loads(manifest.read_text())["epoch"] >= 1):
        time.sleep(0.02)
    second = zygote.run(resume_args(checkpoints, name))
    assert_one_line_error(second, 2, f"already being trained by pid {first}")
    again = zygote.run(new_run_args(digits, checkpoints, name))
    assert_one_line_error(again, 2, "already exists", "--resume")
    killed = zygote.wait(first, kill_after=0.0)
    assert killed.killed
    saved = load_run(checkpoints / name).epoch
    third = zygote.run(resume_args(checkpoints, name, "--epochs", str(saved + 1)))
    assert third.code == 0, third.output
    assert load_run(checkpoints / name).epoch == saved + 1


# ---------------------------------------------------------------- SIGTERM / SIGINT

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_saves_marks_stopped_and_exits_0(zygote, digits, checkpoints, reference, signum):
    name = f"stop-{signum.name}"
    manifest = checkpoints / name / MANIFEST_FILE
    outcome = zygote.run(new_run_args(digits, checkpoints, name, 10_000), signal_at=(signum, manifest, 1))
    assert outcome.code == 0, outcome.output
    assert outcome.after_signal is not None and outcome.after_signal < STOP_DEADLINE_S
    assert "Traceback" not in outcome.output
    status = read_status(checkpoints / name)
    run = load_run(checkpoints / name)
    assert status["state"] == "stopped" and status["epoch"] == run.epoch >= 1 and "--resume" in status["message"]
    assert_consistent(run)
    resumed = zygote.run(resume_args(checkpoints, name, "--epochs", str(run.epoch + 1)))
    assert resumed.code == 0, resumed.output
    assert load_run(checkpoints / name).epoch == run.epoch + 1


# ---------------------------------------------------------------- non-finite losses

def loss_calls_until(epoch: int, steps_per_epoch: int) -> int:
    """Calls of the loss before epoch `epoch`'s training (1-based epochs): the epoch-0 evaluation, then per
    epoch its steps and one evaluation (the 12 test images are one evaluation batch)."""
    return 1 + (epoch - 1) * (steps_per_epoch + 1)


@pytest.mark.parametrize("where", ["train", "test"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_loss_fails_with_one_line_and_keeps_last_good(zygote, digits, checkpoints, reference, value, where):
    steps = math.ceil(len(load_dataset(f"folder:{digits}", image_size=28, channels=1).train_x) / BATCH)
    at = loss_calls_until(EPOCHS, steps) + (1 if where == "train" else steps + 1)  # first step of / evaluation after epoch 2
    name = f"poison-{value}-{where}"
    outcome = zygote.run(new_run_args(digits, checkpoints, name), poison=f"{value}@{at}")
    shown = {"nan": "nan", "inf": "inf", "-inf": "-inf"}[value]
    needle = f"loss became {shown}" if where == "train" else f"test loss became {shown}"
    line = assert_one_line_error(outcome, 1, "training failed", needle, f"(epoch {EPOCHS - 1}) is kept")
    status = read_status(checkpoints / name)
    assert status["state"] == "failed" and needle in status["message"] and status["message"] in line
    run = load_run(checkpoints / name)
    assert run.epoch == EPOCHS - 1
    assert_consistent(run)
    finish(zygote, digits, checkpoints, name, run.epoch)
    assert_same_run(load_run(checkpoints / name), reference[0])


# ---------------------------------------------------------------- full and read-only disks

def disk_cases() -> list:
    cases = []
    for mode in ERROR_MODES:
        points = range(1, WRITE_POINTS + 1) if mode != "EACCES" else (1, FIRST_SAVE_POINTS + 1, 13, WRITE_POINTS)
        for k in points:
            cases.append(pytest.param(mode, k, id=f"{mode}-{k}"))
    return cases


@pytest.mark.parametrize("mode,k", disk_cases())
def test_disk_full_or_read_only_from_write_point_k(zygote, digits, checkpoints, reference, tmp_path, mode, k):
    """Every write from point k on fails: one clear line and a non-zero exit (or, if only the final status
    write failed, a finished run and a warning); the previous checkpoint stays loadable and resumable."""
    name = f"disk-{mode}-{k}"
    outcome = zygote.run(new_run_args(digits, checkpoints, name), kill_at=k, mode=mode, trace=tmp_path / "trace")
    trace = Trace.read(tmp_path / "trace")
    last_manifest = max(i for i, n in reference[1].begun if n == MANIFEST_FILE)
    reason = {"ENOSPC": "No space left on device", "EROFS": "Read-only file system", "EACCES": "Permission denied"}[mode]
    if k > last_manifest:  # only status.json could not be written: the run itself is complete
        assert outcome.code == 0 and "could not write status.json" in outcome.output, outcome.output
    else:
        first_manifest = min(i for i, n in reference[1].begun if n == MANIFEST_FILE)
        assert_one_line_error(outcome, 1, "training failed", reason, "kept" if k > first_manifest else "nothing was saved yet")
    saved = check_after_fault(checkpoints, name, trace)
    finish(zygote, digits, checkpoints, name, saved)
    assert_same_run(load_run(checkpoints / name), reference[0])


# ---------------------------------------------------------------- a reader racing the writer

@pytest.fixture()
def one_torch_thread():
    """The reader shares two cores with the trainer child: one intra-op thread each."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_reader_never_sees_a_mixed_set_while_the_trainer_writes(zygote, digits, checkpoints, reference, one_torch_thread):
    """load_run N_READER_LOADS times while the trainer saves epoch after epoch: each load is one epoch's set."""
    name = "raced"
    run_dir = checkpoints / name
    pid = zygote.start(new_run_args(digits, checkpoints, name, 100_000))
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while not (run_dir / MANIFEST_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(N_READER_LOADS):
            run = load_run(run_dir)
            assert_consistent(run)
            seen.add(run.epoch)
    finally:
        stopped = zygote.wait(pid, signal_at=(signal.SIGTERM, run_dir / MANIFEST_FILE, 0))
    assert stopped.code == 0, stopped.output
    assert len(seen) >= MIN_EPOCHS_SEEN, sorted(seen)
    final = load_run(run_dir)
    steps = np.abs(np.diff(final.atlas.means, axis=0)).max(axis=(1, 2))
    assert (steps > 10 * LATENT_TOL).mean() > 0.9  # neighbouring epochs differ well beyond the tolerance: the check bites


# ---------------------------------------------------------------- soak (pytest -m soak; skipped otherwise)

SOAK_KILLS = 300
SOAK_EPOCHS = 4
SOAK_READER_LOADS = 5000


@pytest.fixture()
def soak(request) -> None:
    if "soak" not in (request.config.getoption("-m") or ""):
        pytest.skip("soak test: run with `pytest -m soak`")


@pytest.mark.soak
def test_soak_random_sigkills_then_resume(soak, zygote, digits, checkpoints, tmp_path):
    """SOAK_KILLS SIGKILLs at seeded random moments of a SOAK_EPOCHS-epoch run, each resumed to the same end."""
    out = zygote.run(new_run_args(digits, checkpoints, "soak-reference", SOAK_EPOCHS))
    assert out.code == 0, out.output
    reference_run = load_run(checkpoints / "soak-reference")
    rng = random.Random(TIMED_KILL_SEED)
    for i in range(SOAK_KILLS):
        name = f"soak-{i}"
        trace = tmp_path / f"trace-{i}"
        outcome = zygote.run(new_run_args(digits, checkpoints, name, SOAK_EPOCHS), trace=trace, kill_after=rng.uniform(0.0, out.seconds))
        assert outcome.killed or outcome.code == 0, outcome.output
        saved = check_after_fault(checkpoints, name, Trace.read(trace), exact=False)
        argv = resume_args(checkpoints, name) if saved is not None else new_run_args(digits, checkpoints, name, SOAK_EPOCHS)
        assert zygote.run(argv).code == 0
        assert_same_run(load_run(checkpoints / name), reference_run)


@pytest.mark.soak
def test_soak_reader_racing_the_writer(soak, zygote, digits, checkpoints, one_torch_thread):
    name = "soak-raced"
    pid = zygote.start(new_run_args(digits, checkpoints, name, 100_000))
    try:
        deadline = time.monotonic() + 60
        while not (checkpoints / name / MANIFEST_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(SOAK_READER_LOADS):
            assert_consistent(load_run(checkpoints / name))
    finally:
        stopped = zygote.wait(pid, signal_at=(signal.SIGTERM, checkpoints / name / MANIFEST_FILE, 0))
    assert stopped.code == 0, stopped.output
