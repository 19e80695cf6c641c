"""Multi-process training: 2 CPU processes (gloo) under torchrun against the one-process trainer.

Every job runs `python -m torch.distributed.run ... -m trainer` on 127.0.0.1 with a free port, on a
tiny IDX copy of the bundled digits: 76 training images in global batches of 25 split 13/12 over the
two processes, and a last batch of 1 that leaves rank 1 an empty slice.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bench.bench_browser import free_port
from trainer.distributed import shard_bounds
from trainer.runs import MANIFEST_FILE, load_run, read_status

from .helpers import REPRO_REL_TOL, assert_same_weights, cli_args, finish, one_process, run_module

LONG_EPOCHS = 2000  # jobs that are stopped or killed long before the end
WAIT_S = 60


def torchrun(args: list[str], nproc: int = 2) -> subprocess.Popen:
    """`torchrun --nproc-per-node N -m trainer ARGS` on the loopback interface, in its own process group."""
    launch = ["--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "trainer", *args]
    return run_module("torch.distributed.run", launch, env={"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}, start_new_session=True)


def rank_pids(launcher: int) -> dict[int, int]:
    """The worker processes torchrun started: {RANK: pid}, read from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != launcher:  # the parent pid
                continue
            env = dict(v.split("=", 1) for v in (entry / "environ").read_bytes().decode(errors="replace").split("\0") if "=" in v)
        except (OSError, IndexError, ValueError):
            continue
        if "RANK" in env:
            found[int(env["RANK"])] = int(entry.name)
    return found


def alive(pid: int) -> bool:
    """A running process (a zombie waiting to be reaped by its new parent counts as gone)."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_for_epoch(run_dir: Path, proc: subprocess.Popen, epoch: int = 1) -> None:
    deadline = time.time() + WAIT_S
    while time.time() < deadline and proc.poll() is None:
        manifest = run_dir / MANIFEST_FILE
        if manifest.exists() and json.loads(manifest.read_text())["epoch"] >= epoch:
            return
        time.sleep(0.05)
    pytest.fail(f"no epoch {epoch} saved: {proc.poll()=} {proc.stderr.read() if proc.poll() is not None else ''}")


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory) -> Path:
    """The uninterrupted one-process run of 2 epochs."""
    run_dir = tmp_path_factory.mktemp("ref") / "one"
    one_process(data_dir, run_dir, epochs=2)
    return run_dir


def test_shards_cover_every_batch_once():
    for n in (0, 1, 12, 25):
        bounds = [shard_bounds(n, r, 2) for r in range(2)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n and bounds[0][1] == bounds[1][0]


@pytest.mark.slow
def test_two_processes_equal_one_and_only_rank0_writes(data_dir, reference, tmp_path):
    code, err = finish(torchrun(cli_args(data_dir, tmp_path, "two", "--epochs", "2")))
    assert code == 0, err
    run_dir = tmp_path / "two"
    assert_same_weights(run_dir, reference)
    two, one = load_run(run_dir), load_run(reference)
    assert [r["test_loss"] for r in two.history] == pytest.approx([r["test_loss"] for r in one.history], rel=REPRO_REL_TOL)
    assert np.allclose(two.atlas.means, one.atlas.means, atol=1e-2)  # stored as float16
    # One writer: the same files as the one-process run (no stray temporaries), its pid in status and lock.
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(p.name for p in reference.iterdir())
    status = read_status(run_dir)
    assert status["state"] == "finished" and status["world_size"] == 2
    assert str(status["pid"]) == (run_dir / "lock").read_text().strip()
    assert two.info["world_size"] == 2 and two.info["backend"] == "gloo" and two.info["precision"] == "float32"
    assert not any(k.startswith("module.") for k in load_file(run_dir / two.manifest["files"]["weights"]))


@pytest.mark.slow
def test_resume_from_one_process_into_two(data_dir, reference, tmp_path):
    one_process(data_dir, tmp_path / "grow", epochs=1)
    code, err = finish(torchrun(cli_args(data_dir, tmp_path, "grow", "--resume", "--epochs", "2")))
    assert code == 0, err
    assert load_run(tmp_path / "grow").epoch == 2
    assert_same_weights(tmp_path / "grow", reference)


@pytest.mark.slow
def test_sigterm_on_one_rank_stops_all_then_resumes_in_one_process(data_dir, tmp_path):
    proc = torchrun(cli_args(data_dir, tmp_path, "stop", "--epochs", str(LONG_EPOCHS)))
    run_dir = tmp_path / "stop"
    wait_for_epoch(run_dir, proc)
    pids = rank_pids(proc.pid)
    assert sorted(pids) == [0, 1] and read_status(run_dir)["pid"] == pids[0]
    os.kill(pids[1], signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err
    assert not any(alive(p) for p in pids.values())
    status = read_status(run_dir)
    stopped = status["epoch"]
    assert status["state"] == "stopped" and 1 <= stopped < LONG_EPOCHS and load_run(run_dir).epoch == stopped
    # Resume the 2-process run in one process: the same weights as one process straight through.
    one_process(data_dir, run_dir, epochs=stopped + 1, resume=True)
    one_process(data_dir, tmp_path / "straight", epochs=stopped + 1)
    assert_same_weights(run_dir, tmp_path / "straight")


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_killed_rank_ends_the_job_and_keeps_the_checkpoint(data_dir, tmp_path, victim):
    proc = torchrun(cli_args(data_dir, tmp_path, "kill", "--epochs", str(LONG_EPOCHS)))
    run_dir = tmp_path / "kill"
    wait_for_epoch(run_dir, proc)
    pids = rank_pids(proc.pid)
    os.kill(pids[victim], signal.SIGKILL)
    code, err = finish(proc)
    assert code != 0
    assert not any(alive(p) for p in pids.values())
    status = read_status(run_dir)
    assert status["pid"] == pids[0]
    assert not (status["state"] == "running" and alive(status["pid"]))  # the app shows 'died' for a dead pid
    if victim == 1:  # rank 0 saw the broken collective and said so
        assert status["state"] == "failed" and "failed or went away" in status["message"]
        assert "training failed" in err
    run = load_run(run_dir)
    assert run.epoch >= 1 and len(run.history) == run.epoch
    assert torch.isfinite(torch.cat([p.flatten() for p in run.model.parameters()])).all()


@pytest.mark.parametrize("together, barrier_fails, calls", [
    (True, False, ["barrier", "collect", "destroy"]),
    (True, True, ["barrier", "collect", "destroy"]),  # a peer that went away: the barrier's error is not this process's failure
    (False, False, ["destroy"]),  # this process failed: it neither waits nor collects (its error must be printed before torchrun kills it)
])
def test_shutdown_waits_for_the_others_only_after_a_normal_end(monkeypatch, together, barrier_fails, calls):
    from trainer import distributed

    seen: list[str] = []

    def barrier() -> None:
        seen.append("barrier")
        if barrier_fails:
            raise RuntimeError("Connection closed by peer")

    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "barrier", barrier)
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: seen.append("destroy"))
    monkeypatch.setattr(distributed.gc, "collect", lambda: seen.append("collect"))
    distributed.shutdown(distributed.DistContext(rank=1, world_size=2), together=together)
    assert seen == calls
    seen.clear()
    distributed.shutdown(distributed.SINGLE, together=together)  # one process: no group to leave
    assert seen == []
