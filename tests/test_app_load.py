"""The app under hostile folders and load, through streamlit's AppTest on app/main.py.

- good runs among every hostile variant of tests/test_hostile_runs.py: no exception, one error per broken run
  (once chosen: only the selected run is loaded);
- the app writes nothing outside the checkpoints folder and opens nothing of the sandbox outside it
  (file opens, renames and removals are recorded with a Python audit hook);
- four sessions move sliders on different runs, one of them being trained meanwhile: no exception and
  no session sees another's run or slider values;
- listing does not open weights, optimiser or latents files (what keeps 200 runs fast, bench/bench_list.py).
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from trainer.runs import MANIFEST_FILE, list_runs, load_run

from .helpers import COMPARE_PAGE, TRAIN_PAGE, app_test, ok
from .helpers_kill import Zygote
from .test_hostile_runs import GOOD_RUNS, VARIANTS, Ctx, make_variant

RUN_KEY = "run_path"
N_SESSIONS = 4
SLIDER_ROUNDS = 3
TRAINING_EPOCHS = 100_000  # stopped by SIGTERM when the sessions are done
FIRST_SAVE_TIMEOUT_S = 120
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
MUTATING_EVENTS = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.truncate", "os.chmod",
                   "os.chown", "shutil.copyfile", "shutil.copytree", "shutil.move", "shutil.rmtree", "os.utime"}


# ---------------------------------------------------------------- AppTest plumbing

def z_sliders(at) -> list:
    return sorted((s for s in at.slider if (s.key or "").startswith("z") and ":" in (s.key or "")), key=lambda s: s.key)


# ---------------------------------------------------------------- hostile folders

@pytest.mark.slow  # the app over every hostile variant (test_hostile_runs checks each at the loader)
def test_app_serves_good_runs_among_every_hostile_one(monkeypatch, runs_root, tmp_path):
    root = tmp_path / "checkpoints"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    ctx = Ctx(outside, tmp_path / "UNPICKLED")
    for name in GOOD_RUNS:
        shutil.copytree(runs_root / name, root / name)
    for variant in VARIANTS:
        make_variant(runs_root, root, variant, ctx)
    broken = sorted(s.name for s in list_runs(root) if s.name not in GOOD_RUNS)
    assert len(broken) == len(VARIANTS) - 1  # all but the empty folder are listed

    at = ok(app_test(monkeypatch, root).run())
    assert at.selectbox(key=RUN_KEY).value == str(root / "vae2")
    # Only the selected run is loaded: a broken run shows its error when chosen, and is listed as broken from then on.
    for name in broken:
        at.selectbox(key=RUN_KEY).set_value(str(root / name))
        assert any(text.startswith(f"{name}: ") and "\n" not in text for text in [e.value for e in ok(at.run()).error]), name
    at.selectbox(key=RUN_KEY).set_value(str(root / "vae2"))
    shown = [e.value for e in ok(at.run()).error]
    for name in broken:
        assert any(text.startswith(f"{name}: ") and "\n" not in text for text in shown), name
    assert z_sliders(at)  # the good run is explored as usual

    for name in ("weights-fifo", "manifest-deeply-nested", "atlas-pickled-objects", "ae2"):
        at.selectbox(key=RUN_KEY).set_value(str(root / name))
        ok(at.run())
    for page in (COMPARE_PAGE, TRAIN_PAGE):
        ok(at.switch_page(page).run())
    assert not ctx.marker.exists()


# ---------------------------------------------------------------- no writes outside the checkpoints folder

@dataclass
class FileAudit:
    """File system events of this process while `active` (audit hooks cannot be removed, only muted)."""

    active: bool = False
    events: list[tuple[str, str, bool]] = field(default_factory=list)  # (event, path, writes)
    followed: list[str] = field(default_factory=list)  # paths opened in a way that follows a final symlink

    def hook(self, event: str, args: tuple) -> None:
        if not self.active:
            return
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int):
                return
            writes = any(c in str(mode or "") for c in "wax+") or bool((flags or 0) & WRITE_FLAGS)
            self.events.append((event, os.fsdecode(path), writes))
            if not (flags or 0) & os.O_NOFOLLOW:
                self.followed.append(os.fsdecode(path))
        elif event in MUTATING_EVENTS:
            for arg in args[:2]:
                if isinstance(arg, (str, bytes, os.PathLike)):
                    self.events.append((event, os.fsdecode(arg), True))

    def start(self) -> None:
        self.events.clear()
        self.followed.clear()
        self.active = True


_AUDIT: FileAudit | None = None


def file_audit() -> FileAudit:
    global _AUDIT
    if _AUDIT is None:
        _AUDIT = FileAudit()
        sys.addaudithook(_AUDIT.hook)
    return _AUDIT


def inside(path: str, folder: Path) -> bool:
    full = Path(os.path.abspath(path))
    return full == folder or folder in full.parents


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if not p.is_symlink()}


@pytest.mark.slow
def test_app_touches_nothing_outside_the_checkpoints_folder(monkeypatch, runs_root, tmp_path):
    sandbox = tmp_path.resolve()
    root, home, cwd, secret = sandbox / "checkpoints", sandbox / "home", sandbox / "cwd", sandbox / "secret"
    for folder in (root, home, cwd, secret):
        folder.mkdir()
    for name in ("vae2", "ae2", "vae5"):
        shutil.copytree(runs_root / name, root / name)
    shutil.copytree(runs_root / "vae2", secret / "stolen-run")
    # hostile runs pointing at the secret folder: a symlinked file and a manifest path escaping the folder
    make_variant(runs_root, root, next(v for v in VARIANTS if v.id == "weights-symlink-outside"), Ctx(secret, sandbox / "x"))
    escaping = make_variant(runs_root, root, next(v for v in VARIANTS if v.id == "manifest-path-traversal"), Ctx(secret, sandbox / "x"))
    (root / "linked-run").symlink_to(secret / "stolen-run")
    before = {folder: snapshot(folder) for folder in (home, cwd, secret)}
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)

    at = app_test(monkeypatch, root)  # the test harness itself makes a temporary folder: not audited
    audit = file_audit()
    audit.start()
    try:
        ok(at.run())
        sliders = z_sliders(at)
        sliders[0].set_value(float(sliders[0].max)).run()
        from app.state import TAB_KEY, TABS

        for tab in TABS:
            at.session_state[TAB_KEY] = tab
            ok(at.run())
        for name in ("vae5", "ae2", escaping.name, "weights-symlink-outside"):
            at.selectbox(key=RUN_KEY).set_value(str(root / name))
            ok(at.run())
        for page in (COMPARE_PAGE, TRAIN_PAGE):
            ok(at.switch_page(page).run())
    finally:
        audit.active = False

    in_sandbox = [(e, p, w) for e, p, w in audit.events if inside(p, sandbox)]
    assert in_sandbox, "the audit saw no file activity at all"
    writes_outside = [(e, p) for e, p, w in in_sandbox if w and not inside(p, root)]
    assert not writes_outside, writes_outside
    streamlit_config = (home / ".streamlit", cwd / ".streamlit")  # streamlit may look for its config.toml there
    reads_outside = [p for e, p, w in in_sandbox if not inside(p, root) and not any(inside(p, c) for c in streamlit_config)]
    assert not reads_outside, reads_outside
    outside_writes = [p for e, p, w in audit.events if w and not inside(p, root) and not p.startswith(("/dev/", "/proc/"))]
    assert not outside_writes, outside_writes
    assert {folder: snapshot(folder) for folder in (home, cwd, secret)} == before
    assert not [p for p in audit.followed if inside(os.path.realpath(p), secret)]  # nothing read through a symlink


def test_the_audit_sees_writes_and_symlink_reads(tmp_path):
    """The probe itself: a write and a read through a symlink are both recorded."""
    (tmp_path / "real").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    audit = file_audit()
    audit.start()
    try:
        (tmp_path / "written").write_text("y")
        (tmp_path / "link").read_text()
    finally:
        audit.active = False
    assert (("open", str(tmp_path / "written"), True)) in audit.events
    assert str(tmp_path / "link") in audit.followed


# ---------------------------------------------------------------- listing reads small files only

def test_listing_opens_no_weights_optimizer_or_latents(runs_root, tmp_path):
    for i in range(5):
        shutil.copytree(runs_root / "vae2", tmp_path / f"run-{i}")
    audit = file_audit()
    audit.start()
    try:
        summaries = list_runs(tmp_path)
    finally:
        audit.active = False
    assert len(summaries) == 5 and all(s.error is None for s in summaries)
    opened = {Path(p).name for e, p, _ in audit.events if e == "open" and inside(p, tmp_path.resolve())}
    assert opened and opened <= {"config.json", "manifest.json", "status.json"}, opened


# ---------------------------------------------------------------- four sessions, one run training

def test_shared_runs_decode_the_same_in_concurrent_threads(runs_root):
    """The server shares one cached Run between sessions: threads decoding different points on it concurrently
    get exactly what each would get alone (no state leaks between requests through the shared model)."""
    from app.images import decode_uint8

    shared = {name: load_run(runs_root / name) for name in ("vae2", "ae2", "vae5")}
    jobs = [(name, np.full((1, run.model_config.latent_dim), 0.1 * i, np.float32))
            for i, (name, run) in enumerate(list(shared.items()) * N_SESSIONS)]
    expected = [decode_uint8(shared[name].model, z) for name, z in jobs]
    results: list = [None] * len(jobs)

    def work(i: int) -> None:
        for _ in range(SLIDER_ROUNDS):
            results[i] = decode_uint8(shared[jobs[i][0]].model, jobs[i][1])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        assert np.array_equal(got, want)


@dataclass
class Session:
    """One browser session: its run and what it set its first slider to."""

    run_path: str
    index: int
    at: object = None
    values: list[float] = field(default_factory=list)


def step(session: Session, r: int) -> None:
    """Move the session's first z slider to a value of its own (round r), checking the page after it."""
    at = session.at
    slider = z_sliders(at)[0]
    lo, hi = float(slider.min), float(slider.max)
    value = round(lo + (hi - lo) * (0.2 + 0.15 * r + 0.04 * session.index), 2)
    slider.set_value(value).run()
    ok(at)
    assert at.session_state[RUN_KEY] == session.run_path
    session.values.append(value)


@pytest.mark.slow
def test_four_sessions_move_sliders_on_different_runs_while_one_trains(monkeypatch, runs_root, tmp_path):
    root = tmp_path / "checkpoints"
    root.mkdir()
    for name in ("vae2", "ae2", "vae5"):
        shutil.copytree(runs_root / name, root / name)
    live = root / "training-now"
    argv = ["--widths", "4,8,8", "--hidden-dim", "0", "--latent-dim", "2", "--atlas-size", "50", "--batch-size", "256",
            "--epochs", str(TRAINING_EPOCHS), "--progress", "none", "--checkpoints-dir", str(root), "--run-name", live.name]
    with Zygote(tmp_path) as zygote:
        pid = zygote.start(argv)
        try:
            deadline = time.monotonic() + FIRST_SAVE_TIMEOUT_S
            while not (live / MANIFEST_FILE).exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert (live / MANIFEST_FILE).exists(), "the trainer did not save its first epoch"
            first_epoch = load_run(live).epoch
            sessions = [Session(str(root / name), i) for i, name in enumerate(("vae2", "ae2", "vae5", live.name))]
            for s in sessions:
                s.at = ok(app_test(monkeypatch, root).run())
                s.at.selectbox(key=RUN_KEY).set_value(s.run_path)
                ok(s.at.run())
            for r in range(SLIDER_ROUNDS):  # interleaved: AppTest instances cannot run in threads at once
                for s in sessions:
                    step(s, r)
        finally:
            stopped = zygote.wait(pid, signal_at=(signal.SIGTERM, live / MANIFEST_FILE, 0))
    assert stopped.code == 0, stopped.output
    assert len({s.run_path for s in sessions}) == N_SESSIONS
    for s in sessions:  # after all sessions ran: each still shows its own run and its own last value
        ok(s.at.run())
        assert s.at.session_state[RUN_KEY] == s.run_path
        assert len(s.values) == SLIDER_ROUNDS
        if s.run_path != str(live):  # the live run's slider ranges may move with its epochs
            assert z_sliders(s.at)[0].value == pytest.approx(s.values[-1])
    assert load_run(live).epoch > first_epoch  # it really trained while the sessions ran
