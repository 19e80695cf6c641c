"""Background training jobs: build and validate the trainer's command line, start it detached, list, stop.

Plain functions, no Streamlit: the Train page calls them, and so can tests or scripts.

A job is a run folder being (or having been) trained by `python -m trainer` in its own session:
    <run>/job.json     written here at start: pid, argv, start time, log file (and the exit code once reaped)
    <run>/train.log    the trainer's stdout (one JSON line per epoch) and stderr
    <run>/status.json  written by the trainer: state, epoch/total, seconds, ETA, message; inside an epoch (every few
                       seconds) the step counter: step/steps, images/s
Options use the trainer's own names (`latent_dim`, `batch_size`, ...; trainer.cli.trainer_options) and
are checked by the trainer's own parser, config classes and dataset search, so the app and the CLI
accept exactly the same values.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import threading
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from app.deploy import is_public
from trainer import cli
from trainer.cli import PROG, OptionSpec, UserError, build_parser, configs_from_args, flag, has_saved_epoch, resume_plan
from trainer.data import dataset_problem
from trainer.paths import PROJECT_ROOT
from trainer.runs import STATUS_FILE, RunError, read_manifest, read_status, validate_run_name
from trainer.safe_io import atomic_write_json, read_json_dict, read_tail

JOB_FILE = "job.json"
LOG_FILE = "train.log"
TRAINER_MODULE = "trainer"
LOG_TAIL_BYTES = 16384
LOG_TAIL_LINES = 5
# Trainer flags the app sets itself or never offers (offline app: no --download; a new run: no --resume).
APP_CONTROLLED = ("checkpoints_dir", "progress", "resume", "download")
ACTIVE_STATES = ("starting", "running")
EXEC_RETRIES, EXEC_RETRY_S = 5, 0.02  # a process inside exec() shows an empty command line for a moment
OPTIMIZER_FILE = "optim"  # the manifest's name for an epoch's optimiser state, which a resume needs


class JobError(Exception):
    """A job that cannot be started or stopped; `errors` holds one line per problem."""

    def __init__(self, errors: list[str] | str):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("; ".join(self.errors))


def refuse_if_public() -> None:
    """A public app starts and stops no process (app/deploy.py); its pages offer no such control either."""
    if is_public():
        raise JobError("training jobs cannot be started or stopped on a public deployment")


# ---------------------------------------------------------------- options -> argv

def trainer_options() -> dict[str, OptionSpec]:
    """The trainer's options by dest (flag, help, default, choices, bounds), minus those the app controls."""
    return {dest: o for dest, o in cli.trainer_options().items() if dest not in APP_CONTROLLED}


def format_value(value: Any) -> str:
    """How an option value is written on the command line (lists as comma-separated, floats exactly)."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def is_unset(value: Any) -> bool:
    """None or blank text means "the trainer's default"."""
    return value is None or (isinstance(value, str) and not value.strip())


def option_flags(options: Mapping[str, Any]) -> list[str]:
    """`--name=value` for every set option (`=` keeps values that start with '-' attached to their flag)."""
    known = trainer_options()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise JobError([f"unknown option {name!r}: not a trainer option the app can set" for name in unknown])
    flags, wrong = [], []
    for name, option in known.items():  # the parser's order: stable argv
        if name not in options or is_unset(options[name]):
            continue
        value = options[name]
        if not option.takes_value:  # an on/off flag such as --compile
            if not isinstance(value, bool):
                wrong.append(f"option {name!r} is on or off (True or False), got {value!r}")
            elif value:
                flags.append(flag(name))
            continue
        flags.append(f"{option.flag}={format_value(value).strip() if isinstance(value, str) else format_value(value)}")
    if wrong:
        raise JobError(wrong)
    return flags


def build_argv(options: Mapping[str, Any], checkpoints_dir: str | os.PathLike) -> list[str]:
    """The full command: this Python, `-m trainer`, the options, the app's checkpoints folder, JSON progress."""
    root = Path(checkpoints_dir).expanduser().resolve()
    return [sys.executable, "-m", TRAINER_MODULE, *option_flags(options), f"--checkpoints-dir={root}", "--progress=json"]


# ---------------------------------------------------------------- validation

def run_name_problem(name: Any) -> str | None:
    """Why `name` cannot be a new run's folder name, or None (the trainer's rule plus no control characters)."""
    if not isinstance(name, str) or not name.strip():
        return "run name is empty: give the run a name (letters, digits, '.', '_' or '-')"
    if any(unicodedata.category(c).startswith("C") for c in name):
        return f"invalid run name {name!r}: control characters (newlines, tabs, ...) are not allowed"
    try:
        validate_run_name(name)
    except ValueError as e:
        return str(e)
    return None


def _parse(flags: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(flags)


def _one_line(error: Exception) -> str:
    """The trainer's message on one line, without the pointer to its --help (app users have the form)."""
    return " ".join(str(error).replace(f" (see {PROG} --help)", "").split())


def _fits_model(model: list[str], one: str) -> bool:
    """Whether flag `one`, refused beside the default model, is accepted beside the chosen `model` flag (if any)."""
    if not model or one in model:
        return False
    try:
        configs_from_args(_parse([*model, one]))
    except UserError:
        return False
    return True


def validate_options(options: Mapping[str, Any], checkpoints_dir: str | os.PathLike) -> list[str]:
    """Every problem with `options` as one line each; [] means the trainer will accept them.

    Each option is first checked alone (parser type/choice, then the config's range rule, other
    options at their defaults, or beside the chosen model where that model allows it, as resnet widths)
    so several mistakes are reported at once; then all together
    (rules that involve two options, such as the mlp model needing a hidden layer)."""
    errors: list[str] = []
    name_problem = run_name_problem(options.get("run_name"))
    if name_problem:
        errors.append(name_problem)
    elif (Path(checkpoints_dir).expanduser() / options["run_name"]).exists():
        errors.append(f"run {options['run_name']!r} already exists in {checkpoints_dir}: choose another run name")
    try:
        flags = option_flags({k: v for k, v in options.items() if k != "run_name"})
    except JobError as e:
        return errors + e.errors
    model = [f for f in flags if f.startswith(f"{flag('model')}=")]
    for one in flags:
        try:
            configs_from_args(_parse([one]))
        except UserError as e:
            if not _fits_model(model, one):  # wrong alone, and not a value that the chosen model allows (resnet widths)
                errors.append(_one_line(e))
    if errors:
        return errors
    try:
        _, train_config, _ = configs_from_args(_parse(flags))
    except UserError as e:
        return [_one_line(e)]
    problem = dataset_problem(train_config.dataset, train_config.data_dir, root=PROJECT_ROOT)  # the trainer runs in the project root
    return [problem] if problem else []


# ---------------------------------------------------------------- processes

def _proc_args(pid: int, retries: int = EXEC_RETRIES) -> list[str] | None:
    """The command line of a live (not zombie) process, or None if there is none.

    A process caught inside exec() briefly shows an empty command line: look again a few times."""
    for attempt in range(retries + 1):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return None
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, IndexError):
            return None
        if raw:
            return [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        if attempt < retries:
            time.sleep(EXEC_RETRY_S)
    return None


def is_trainer_process(pid: Any) -> bool:
    """True if `pid` is alive and its command line runs this project's trainer (`-m trainer` or trainer/__main__.py)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    args = _proc_args(pid)
    if not args:
        return False
    return any(a == TRAINER_MODULE or a.rstrip("/").endswith(("/trainer", "trainer/__main__.py")) for a in args)


# The jobs this process started (pid -> process, run folder), polled to reap them and record exit codes.
# Streamlit runs each browser session in its own thread: the lock keeps two sessions from reaping one child.
_children: dict[int, tuple[subprocess.Popen, Path]] = {}
_children_lock = threading.Lock()


def reap_children() -> None:
    """Collect the jobs this process started that have exited (no zombies), recording the exit code in job.json."""
    with _children_lock:
        ended = [(pid, proc.returncode, run_dir) for pid, (proc, run_dir) in _children.items() if proc.poll() is not None]
        for pid, _, _ in ended:
            del _children[pid]
    for _, code, run_dir in ended:
        job_file = run_dir / JOB_FILE
        try:
            atomic_write_json(job_file, read_json_dict(job_file) | {"returncode": code, "ended": time.time()})
        except (RunError, OSError):
            pass


@dataclass(frozen=True)
class StartedJob:
    name: str
    run_dir: Path
    pid: int
    log_path: Path
    argv: list[str]


def start_job(options: Mapping[str, Any], checkpoints_dir: str | os.PathLike) -> StartedJob:
    """Validate, then start the trainer detached (own session, stdin closed, output to <run>/train.log).

    Returns at once; raises JobError with one line per problem. The job outlives the app and the browser."""
    refuse_if_public()
    errors = validate_options(options, checkpoints_dir)
    if errors:
        raise JobError(errors)
    root = Path(checkpoints_dir).expanduser().resolve()
    name = options["run_name"]
    run_dir = root / name
    try:
        root.mkdir(parents=True, exist_ok=True)
        run_dir.mkdir()
    except FileExistsError:
        raise JobError(f"run {name!r} already exists in {root}: choose another run name") from None
    except OSError as e:
        raise JobError(f"cannot create the run folder {run_dir}: {e.strerror or e}") from None
    return _launch(build_argv(options, root), run_dir)


def resume_argv(name: str, epochs: int, checkpoints_dir: str | os.PathLike) -> list[str]:
    """The command that continues run `name` up to `epochs` epochs: `-m trainer --run-name NAME --resume --epochs N`."""
    root = Path(checkpoints_dir).expanduser().resolve()
    return [sys.executable, "-m", TRAINER_MODULE, f"--run-name={name}", "--resume", f"--epochs={epochs}", f"--checkpoints-dir={root}", "--progress=json"]


def resume_problem(run_dir: Path, epochs: Any) -> str | None:
    """Why run_dir cannot be resumed up to `epochs` epochs now, in one line, or None (the trainer's own resume rules)."""
    job = job_state(run_dir)
    if job is not None and job.active:
        return f"{run_dir.name} is {job.state}: stop it before resuming it"
    if not has_saved_epoch(run_dir):
        return f"{run_dir.name} has no saved epoch to resume from"
    if not isinstance(epochs, int) or isinstance(epochs, bool):
        return f"epochs must be a whole number, got {epochs!r}"
    try:
        plan = resume_plan({"epochs": epochs}, run_dir)
        manifest = read_manifest(run_dir)
    except (UserError, RunError) as e:
        return _one_line(e)
    if OPTIMIZER_FILE not in manifest["files"]:
        return f"{run_dir.name} was exported without its optimiser state (like the bundled runs), so it cannot be resumed: train a new run"
    done = int(manifest["epoch"])
    if epochs <= done:
        return f"{run_dir.name} has trained {done} epochs already: ask for more than {done}"
    problem = dataset_problem(plan.train_config.dataset, plan.train_config.data_dir, root=PROJECT_ROOT)
    return f"{run_dir.name} cannot be resumed here: {problem}" if problem else None


def resumable(run_dir: Path) -> bool:
    """Whether the run folder holds a saved epoch with its optimiser state (what --resume needs); reads the manifest only."""
    try:
        return OPTIMIZER_FILE in read_manifest(Path(run_dir))["files"]
    except (RunError, OSError, KeyError, TypeError):
        return False


def resume_job(name: str, epochs: int, checkpoints_dir: str | os.PathLike) -> StartedJob:
    """Continue run `name` (stopped, finished, failed or died) in the background up to `epochs` epochs; the same
    detached trainer as start_job, its output appended to the run's train.log. Raises JobError with one line."""
    refuse_if_public()
    problem = run_name_problem(name)
    root = Path(checkpoints_dir).expanduser().resolve()
    if problem is None:
        problem = resume_problem(root / name, epochs)
    if problem:
        raise JobError(problem)
    return _launch(resume_argv(name, epochs, root), root / name)


def _launch(argv: list[str], run_dir: Path) -> StartedJob:
    """Start `argv` detached (own session, stdin closed, output appended to <run>/train.log) and record job.json."""
    log_path = run_dir / LOG_FILE
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv, cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=env, close_fds=True,
            )
    except OSError as e:
        raise JobError(f"could not start the trainer: {e.strerror or e}") from None
    with _children_lock:
        _children[proc.pid] = (proc, run_dir)
    atomic_write_json(run_dir / JOB_FILE, {"pid": proc.pid, "argv": argv, "started": time.time(), "log": LOG_FILE})
    return StartedJob(run_dir.name, run_dir, proc.pid, log_path, argv)


# ---------------------------------------------------------------- listing

@dataclass(frozen=True)
class Job:
    """One run folder's training state as the Train page shows it."""

    name: str
    path: Path
    state: str  # starting | running | finished | failed | stopped | died
    epoch: int
    total: int | None
    pid: int | None
    seconds: float | None
    eta: float | None
    message: str | None
    updated: float
    step: int | None = None  # optimiser steps done in the epoch being trained (epoch + 1), while one is
    steps: int | None = None  # steps per epoch
    images_per_s: float | None = None  # training images per second: this epoch's so far, or the last epoch's

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def in_epoch(self) -> bool:
        """Whether the status counts steps inside an epoch (the trainer writes them every few seconds)."""
        return self.active and self.step is not None and bool(self.steps)

    @property
    def fraction(self) -> float:
        """Progress in [0, 1], steps inside the current epoch included (0 while the total is unknown)."""
        if not self.total:
            return 0.0
        done = self.epoch + (min(self.step, self.steps) / self.steps if self.in_epoch else 0.0)  # type: ignore[operator]
        return min(1.0, max(0.0, done / self.total))


def log_tail(run_dir: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last non-JSON lines of the job's log (its messages, not its per-epoch records)."""
    try:
        text = read_tail(Path(run_dir) / LOG_FILE, LOG_TAIL_BYTES).decode(errors="replace")
    except RunError:  # missing, or not a regular file (a pipe would block the page)
        return []
    kept = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("{")]
    return kept[-lines:]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def job_state(run_dir: Path) -> Job | None:
    """The job of `run_dir` from status.json (or job.json before the trainer's first status), or None."""
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    record: dict[str, Any] | None = None
    try:
        record = read_json_dict(run_dir / JOB_FILE)
    except RunError:
        pass
    if status is None and record is None:
        return None
    relaunched = (status is not None and record is not None and (_number(record.get("started")) or 0.0) > (_number(status.get("updated")) or 0.0)
                  and is_trainer_process(record.get("pid")))
    if relaunched:  # resumed from the app: the status is the last run's until the trainer writes its own
        assert record is not None and status is not None
        status = {"epoch": status.get("epoch")}  # the epochs trained so far, nothing else of the old status
        pid, updated = record.get("pid"), _number(record.get("started")) or 0.0
        state, message = "starting", "resuming: loading data and the last saved epoch"
    elif status is not None:
        state = str(status.get("state", "running"))
        pid = status.get("pid")
        message = status.get("message")
        updated = _number(status.get("updated")) or 0.0
        if state == "running" and not is_trainer_process(pid):
            state = "died"
            tail = log_tail(run_dir, 1)
            message = f"the trainer (pid {pid}) is gone without finishing; the last saved epoch is kept" + (f" — {tail[-1]}" if tail else "")
    else:
        assert record is not None
        pid = record.get("pid")
        updated = _number(record.get("started")) or 0.0
        if is_trainer_process(pid):
            state, message = "starting", "loading data and evaluating the untrained model"
        elif record.get("stop_requested"):
            state, message = "stopped", "stopped before its first save"
        else:
            state = "died"
            tail = log_tail(run_dir, 1)
            code = record.get("returncode")
            why = tail[-1] if tail else "no output"
            message = f"the trainer exited before its first epoch{f' (exit code {code})' if code is not None else ''}: {why}"
    epoch = status.get("epoch") if status else 0
    total = status.get("total") if status and not relaunched else None
    return Job(
        name=run_dir.name,
        path=run_dir,
        state=state,
        epoch=epoch if isinstance(epoch, int) else 0,
        total=total if isinstance(total, int) else _total_from_argv(record),
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        seconds=_number(status.get("seconds")) if status else None,
        eta=_number(status.get("eta")) if status else None,
        message=str(message) if message else None,
        updated=updated,
        step=_count(status.get("step")) if status else None,
        steps=_count(status.get("steps")) if status else None,
        images_per_s=_number(status.get("images_per_s")) if status else None,
    )


def _total_from_argv(record: dict[str, Any] | None) -> int | None:
    for arg in (record or {}).get("argv", []):
        if isinstance(arg, str) and arg.startswith("--epochs="):
            try:
                return int(arg.split("=", 1)[1])
            except ValueError:
                return None
    return None


def list_jobs(checkpoints_dir: str | os.PathLike) -> list[Job]:
    """Jobs under `checkpoints_dir` (folders with status.json or job.json): active first, then newest first."""
    reap_children()
    root = Path(checkpoints_dir).expanduser()
    if not root.is_dir():
        return []
    jobs = []
    for d in root.iterdir():
        if d.is_dir() and not d.is_symlink() and not d.name.startswith(".") and ((d / STATUS_FILE).exists() or (d / JOB_FILE).exists()):
            job = job_state(d)
            if job is not None:
                jobs.append(job)
    return sorted(jobs, key=lambda j: (not j.active, -j.updated, j.name))


# ---------------------------------------------------------------- stopping

def stop_job(run_dir: str | os.PathLike) -> str:
    """SIGTERM the run's trainer (the pid in status.json, else job.json) if it is alive and is our trainer.

    The trainer finishes its current step, keeps the last completed epoch and writes status "stopped".
    Returns a one-line confirmation; raises JobError with one line otherwise."""
    refuse_if_public()
    run_dir = Path(run_dir)
    job = job_state(run_dir)
    if job is None:
        raise JobError(f"{run_dir.name}: no job here (no status.json or job.json)")
    if not job.active:
        raise JobError(f"{job.name} is not running (it is {job.state})")
    if not is_trainer_process(job.pid):
        raise JobError(f"{job.name}: pid {job.pid} is not a running trainer; nothing was signalled")
    job_file = run_dir / JOB_FILE
    if job_file.exists():
        try:
            atomic_write_json(job_file, read_json_dict(job_file) | {"stop_requested": time.time()})
        except (RunError, OSError):
            pass
    try:
        os.kill(job.pid, signal.SIGTERM)  # type: ignore[arg-type]
    except ProcessLookupError:
        raise JobError(f"{job.name}: the trainer (pid {job.pid}) has just exited") from None
    except PermissionError:
        raise JobError(f"{job.name}: not allowed to signal pid {job.pid}") from None
    return f"asked {job.name} (pid {job.pid}) to stop: it keeps its last completed epoch and can be resumed with the trainer's --resume"


def format_seconds(seconds: float | None) -> str:
    """`75` -> `1 min 15 s`; None -> `-`."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min"
