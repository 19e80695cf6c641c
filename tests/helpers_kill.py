"""Fault injection for the trainer CLI: SIGKILL, failing writes and non-finite losses at chosen moments.

The faults are injected around `trainer.safe_io.atomic_write_bytes`, the one routine every file of a run
folder goes through (status.json included), counting its calls: the k-th call is "write point k".

    before   SIGKILL as write point k begins (nothing of it written)
    partial  SIGKILL after half of write point k's bytes reached its temporary file
    replace  SIGKILL inside os.replace: write point k's temporary file is complete and fsynced, not renamed
    ENOSPC   every write from point k on fails in fsync with "No space left on device" (disk full)
    EROFS    every write from point k on fails creating its temporary file (read-only file system)
    EACCES   the same with PermissionError (a checkpoints folder made read-only)

Each call is traced to a file as "begin K NAME" / "end K NAME" lines, so a test knows which writes landed.

Two ways to run it:
    python -m tests.helpers_kill [--kill-at K --mode M] [--trace FILE] [--poison nan@3] -- TRAINER ARGS
        runs `python -m trainer TRAINER ARGS` in this process with the hook installed;
    `Zygote`: a server that imports torch and the trainer once, then forks one child per request,
        so each of dozens of kill points costs a fork instead of an interpreter start (about 5 s here).
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from trainer.paths import PROJECT_ROOT

KILL_MODES = ("before", "partial", "replace")
ERROR_MODES = {"ENOSPC": errno.ENOSPC, "EROFS": errno.EROFS, "EACCES": errno.EACCES}
MODES = KILL_MODES + tuple(ERROR_MODES)
POISONS = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}
CRASH_EXIT = 70  # the child died of an exception that escaped the trainer's main()
POLL_S = 0.005
REQUEST_TIMEOUT_S = 300.0


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _trace_line(trace: Path | None, text: str) -> None:
    if trace is not None:
        fd = os.open(trace, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, (text + "\n").encode())
        finally:
            os.close(fd)


def install_write_hook(kill_at: int | None, mode: str, trace: Path | None) -> None:
    """Wrap trainer.safe_io.atomic_write_bytes: trace every call and inject `mode` at call `kill_at` (1-based)."""
    from trainer import safe_io

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: one of {', '.join(MODES)}")
    real_write, real_replace, real_fsync, real_mkstemp = safe_io.atomic_write_bytes, os.replace, os.fsync, tempfile.mkstemp
    calls = 0

    def failing(code: int):
        def fail(*args: Any, **kw: Any) -> Any:
            cls = PermissionError if code == errno.EACCES else OSError
            raise cls(code, os.strerror(code))
        return fail

    def hooked(path: Path, data: bytes) -> None:
        nonlocal calls
        calls += 1
        path = Path(path)
        _trace_line(trace, f"begin {calls} {path.name}")
        if kill_at is not None and calls >= kill_at:
            if mode in ERROR_MODES:  # persistent from point k on, like a full or read-only disk
                if mode == "ENOSPC":
                    os.fsync = failing(ERROR_MODES[mode])
                else:
                    tempfile.mkstemp = failing(ERROR_MODES[mode])
                try:
                    real_write(path, data)
                finally:
                    os.fsync, tempfile.mkstemp = real_fsync, real_mkstemp
            elif calls == kill_at:
                if mode == "before":
                    _die()
                if mode == "partial":
                    fd, _ = real_mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
                    os.write(fd, data[: len(data) // 2])
                    _die()
                os.replace = lambda *a, **k: _die()  # mode "replace"
                real_write(path, data)
        else:
            real_write(path, data)
        os.replace = real_replace
        _trace_line(trace, f"end {calls} {path.name}")

    safe_io.atomic_write_bytes = hooked


def install_poison(value: float, at_call: int) -> None:
    """Make the training loss `value` from the `at_call`-th loss evaluation on (train steps and evaluation)."""
    from trainer import train

    real = train.vae_loss  # the trainer's own name for the loss; a rename fails here, loudly
    calls = 0

    def poisoned(*args: Any, **kw: Any):
        nonlocal calls
        calls += 1
        terms = real(*args, **kw)
        return terms._replace(loss=terms.loss * 0 + value) if calls >= at_call else terms

    train.vae_loss = poisoned


def single_thread() -> None:
    """One intra-op thread whatever the trainer asks for: identical arithmetic in every child, light on shared CPUs."""
    import torch

    torch.set_num_threads(1)
    torch.set_num_threads = lambda n: None  # type: ignore[assignment]


def run_trainer(argv: Sequence[str], kill_at: int | None = None, mode: str = "before", trace: Path | None = None,
                poison: str | None = None) -> int:
    """`python -m trainer argv` in this process with the faults installed; returns its exit code."""
    single_thread()
    install_write_hook(kill_at, mode, trace)
    if poison:
        name, _, at = poison.partition("@")
        install_poison(POISONS[name], int(at or 1))
    from trainer.cli import main

    return main(list(argv))


# ---------------------------------------------------------------- zygote

def _child(request: dict[str, Any]) -> None:
    """In the forked child: send output to the request's log, run the trainer, exit with its code."""
    code = CRASH_EXIT
    try:
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        trace = Path(request["trace"]) if request.get("trace") else None
        code = run_trainer(request["argv"], request.get("kill_at"), request.get("mode", "before"), trace, request.get("poison"))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _manifest_epoch(path: Path) -> int:
    try:
        return int(json.loads(path.read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


class _Server:
    """The zygote's side: forks children on request and reports how they ended."""

    def __init__(self) -> None:
        self.started: dict[int, float] = {}

    def start(self, request: dict[str, Any]) -> dict[str, Any]:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        self.started[pid] = time.perf_counter()
        return {"pid": pid}

    def wait(self, request: dict[str, Any]) -> dict[str, Any]:
        """Wait for child `pid`; SIGKILL it after `kill_after` s, or send `signal` once `manifest` names `epoch`."""
        pid = request["pid"]
        t0 = self.started.pop(pid)
        kill_after, signum = request.get("kill_after"), request.get("signal")
        manifest = Path(request["manifest"]) if request.get("manifest") else None
        signalled_at = None
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            now = time.perf_counter()
            if kill_after is not None and signalled_at is None and now - t0 >= kill_after:
                os.kill(pid, signal.SIGKILL)
                signalled_at = now
            if signum is not None and signalled_at is None and manifest is not None and _manifest_epoch(manifest) >= request["epoch"]:
                os.kill(pid, signum)
                signalled_at = now
            time.sleep(POLL_S)
        end = time.perf_counter()
        answer = {"seconds": end - t0, "after_signal": None if signalled_at is None else end - signalled_at}
        if os.WIFSIGNALED(status):
            return answer | {"signal": os.WTERMSIG(status), "code": None}
        return answer | {"signal": None, "code": os.WEXITSTATUS(status)}


def serve() -> int:
    """Read one JSON request per line on stdin ("start" a child or "wait" for one), answer one JSON line each."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch  # imported once here, inherited by every child

    import trainer.cli  # noqa: F401
    import trainer.train  # noqa: F401

    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])  # its first construction imports torch._dynamo (seconds)
    server = _Server()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip():
            request = json.loads(line)
            answer = server.start(request) if request["op"] == "start" else server.wait(request)
            print(json.dumps(answer), flush=True)
    return 0


@dataclass
class Outcome:
    """How a trainer child ended: killed by `signal`, or exited with `code`; its output is in `log`."""

    signal: int | None
    code: int | None
    seconds: float  # from start to exit
    after_signal: float | None  # from the signal the zygote sent (if any) to exit
    log: Path

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def killed(self) -> bool:
        return self.signal == signal.SIGKILL


class Zygote:
    """A fork server for trainer runs (see the module docstring). Use as a context manager."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.proc: subprocess.Popen | None = None
        self.count = 0
        self.logs: dict[int, Path] = {}

    def __enter__(self) -> "Zygote":
        env = os.environ | {"PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.helpers_kill", "--serve"], cwd=PROJECT_ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        for pid in self.logs:  # children still running when a test failed
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], REQUEST_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError("the trainer zygote did not answer (it died or hung)")
        return json.loads(line)

    def start(self, argv: Sequence[str], *, kill_at: int | None = None, mode: str = "before", trace: Path | None = None,
              poison: str | None = None) -> int:
        """Start the trainer with `argv` in a fresh forked child with the given faults; returns its pid."""
        self.count += 1
        log = self.workdir / f"child-{self.count}.log"
        pid = self._ask({"op": "start", "argv": list(argv), "kill_at": kill_at, "mode": mode,
                         "trace": str(trace) if trace else None, "poison": poison, "log": str(log)})["pid"]
        self.logs[pid] = log
        return pid

    def wait(self, pid: int, *, kill_after: float | None = None, signal_at: tuple[int, Path, int] | None = None) -> Outcome:
        """Wait for child `pid` to end: SIGKILL it `kill_after` s after its start, or send signal_at = (signal,
        manifest path, epoch) once the manifest names that epoch."""
        request: dict[str, Any] = {"op": "wait", "pid": pid, "kill_after": kill_after}
        if signal_at is not None:
            request |= {"signal": int(signal_at[0]), "manifest": str(signal_at[1]), "epoch": signal_at[2]}
        answer = self._ask(request)
        return Outcome(answer["signal"], answer["code"], answer["seconds"], answer["after_signal"], self.logs.pop(pid))

    def run(self, argv: Sequence[str], *, kill_after: float | None = None, signal_at: tuple[int, Path, int] | None = None,
            **faults: Any) -> Outcome:
        """start() then wait()."""
        return self.wait(self.start(argv, **faults), kill_after=kill_after, signal_at=signal_at)


# ---------------------------------------------------------------- traces

@dataclass(frozen=True)
class Trace:
    """The write points a child began and finished, in order: [(k, file name)]."""

    begun: list[tuple[int, str]]
    ended: list[tuple[int, str]]

    @classmethod
    def read(cls, path: Path) -> "Trace":
        begun, ended = [], []
        text = path.read_text() if path.exists() else ""
        for line in text.splitlines():
            what, k, name = line.split(" ", 2)
            (begun if what == "begin" else ended).append((int(k), name))
        return cls(begun, ended)

    def landed_epochs(self, manifest_name: str, exact: bool = False) -> set[int | None]:
        """Epochs the run folder may hold (None: no manifest yet): the one of the last manifest write that ended,
        or, unless `exact` (the cut write is known not to have landed), the next if a manifest write was cut."""
        done = sum(1 for _, n in self.ended if n == manifest_name)
        latest = done - 1 if done else None
        cut = bool(self.begun) and self.begun[-1][1] == manifest_name and len(self.begun) > len(self.ended)
        return {latest, done} if cut and not exact else {latest}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.helpers_kill", description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="run as a zygote (JSON requests on stdin)")
    parser.add_argument("--kill-at", type=int, default=None, help="write point (1-based) to inject the fault at")
    parser.add_argument("--mode", choices=MODES, default="before")
    parser.add_argument("--trace", type=Path, default=None, help="append begin/end lines of every write here")
    parser.add_argument("--poison", default=None, help="nan|inf|-inf[@N]: the loss from its N-th evaluation on")
    parser.add_argument("trainer_args", nargs=argparse.REMAINDER, help="-- then the trainer's arguments")
    args = parser.parse_args(argv)
    if args.serve:
        return serve()
    rest = args.trainer_args[1:] if args.trainer_args[:1] == ["--"] else args.trainer_args
    return run_trainer(rest, args.kill_at, args.mode, args.trace, args.poison)


if __name__ == "__main__":
    sys.exit(main())
