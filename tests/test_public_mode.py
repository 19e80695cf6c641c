"""Public mode (`streamlit run app/main.py -- --public`, or VAE_PUBLIC=1) and many runs, through AppTest.

- the folder is fixed: no text input, and session state, query parameters or the environment do not move it;
- the Train page is not in the navigation (and refuses to render if reached), no page has a control that
  starts or stops a process, and app.jobs refuses to;
- with a Python audit hook: while every page renders (and an upload is reconstructed), no file of the sandbox
  outside the configured folder is opened, nothing is written outside it and no process is started;
- UMAP / t-SNE maps are bounded process-wide: with every slot taken a public app shows PCA and says so;
- many runs: the picker is labelled from summaries (small files), and only the selected run is loaded.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from app import common, jobs
from app.deploy import CHECKPOINTS_ENV, PUBLIC_ENV, public_checkpoints_dir, resolve_checkpoints_dir, resolve_public
from app.state import PROJECTION_KEY, TAB_KEY, TAB_RECONSTRUCTION, TABS
from trainer.runs import HISTORY_NUMBERS, MANIFEST_FILE, list_runs, load_run, summarize_run

from .helpers import COMPARE_PAGE, MAIN, TIMEOUT_S, TRAIN_PAGE, app_test, ok

RUN_KEY = "run_path"
MANY_RUNS = 200
PROCESS_EVENTS = ("subprocess.Popen", "os.system", "os.posix_spawn", "os.exec", "os.spawn", "os.fork", "os.forkpty", "pty.spawn")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
PROCESS_WORDS = ("train", "stop", "start training", "resume")  # no control of a public page is labelled like these


# ---------------------------------------------------------------- the audit hook (one per process, muted when idle)

@dataclass
class Audit:
    """Opens (path, writes) and process starts of this process while `active`."""

    active: bool = False
    opens: list[tuple[str, bool]] = field(default_factory=list)
    processes: list[tuple[str, str]] = field(default_factory=list)

    def hook(self, event: str, args: tuple) -> None:
        if not self.active:
            return
        if event == "open":
            path, mode, flags = args
            if not isinstance(path, int):
                writes = any(c in str(mode or "") for c in "wax+") or bool((flags or 0) & WRITE_FLAGS)
                self.opens.append((os.fsdecode(path), writes))
        elif event.startswith(PROCESS_EVENTS):
            self.processes.append((event, repr(args)[:200]))

    def start(self) -> None:
        self.opens.clear()
        self.processes.clear()
        self.active = True


_AUDIT: Audit | None = None


def audit() -> Audit:
    global _AUDIT
    if _AUDIT is None:
        _AUDIT = Audit()
        sys.addaudithook(_AUDIT.hook)
    return _AUDIT


def inside(path: str, folder: Path) -> bool:
    full = Path(os.path.abspath(path))
    return full == folder or folder in full.parents


# ---------------------------------------------------------------- fixtures

@dataclass
class Sandbox:
    root: Path  # the configured checkpoints folder
    secret: Path  # a folder beside it with a run in it, which no page may read


@pytest.fixture
def sandbox(runs_root, tmp_path) -> Sandbox:
    box = tmp_path.resolve()
    root, secret = box / "checkpoints", box / "secret"
    for name in ("vae2", "ae2", "vae5"):
        shutil.copytree(runs_root / name, root / name)
    shutil.copytree(runs_root / "vae2", secret / "stolen-run")
    return Sandbox(root, secret)


@pytest.fixture
def public(monkeypatch, sandbox):
    """Public mode for the AppTests of this test (the folder is pinned per process: unpinned before and after)."""
    monkeypatch.setenv(PUBLIC_ENV, "1")
    public_checkpoints_dir.cache_clear()
    yield sandbox
    public_checkpoints_dir.cache_clear()


def public_app(monkeypatch, sandbox: Sandbox):
    return app_test(monkeypatch, sandbox.root)


def digit_png() -> bytes:
    im = Image.new("RGB", (90, 90), (240, 238, 230))
    ImageDraw.Draw(im).ellipse([25, 15, 65, 75], outline=(20, 20, 20), width=7)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def run_names(at) -> list[str]:
    """The run picker's runs, by name (its options are shown as "NAME — description")."""
    return [label.split(" — ")[0] for label in at.selectbox(key=RUN_KEY).options]


def process_controls(at) -> list[str]:
    """Buttons, forms and inputs of the last run that start, stop or configure a process."""
    found = [b.label for b in at.button if any(w in b.label.lower() for w in PROCESS_WORDS)]
    found += [w.key for w in (*at.button, *at.text_input, *at.number_input, *at.selectbox) if (w.key or "").startswith(("train_", "stop_"))]
    return found


def render_every_page(at, sandbox: Sandbox) -> None:
    """Explore (every tab, every run, an upload), then Compare; the Train page cannot be switched to."""
    ok(at.run())
    for tab in TABS:
        at.session_state[TAB_KEY] = tab
        ok(at.run())
        assert not process_controls(at), process_controls(at)
    at.session_state[TAB_KEY] = TAB_RECONSTRUCTION
    ok(at.run())
    uploader = [u for u in at.file_uploader if (u.key or "").startswith("recon_upload")]
    assert uploader, "the upload stays in public mode"
    uploader[0].set_value(("digit.png", digit_png(), "image/png")).run()
    assert any("reconstruction" in im.captions for im in ok(at).image)
    for name in ("vae5", "ae2", "vae2"):
        at.selectbox(key=RUN_KEY).set_value(str(sandbox.root / name))
        ok(at.run())
        assert not process_controls(at), process_controls(at)
    ok(at.switch_page(COMPARE_PAGE).run())
    assert not process_controls(at), process_controls(at)
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page(TRAIN_PAGE)


# ---------------------------------------------------------------- switching public mode on

def test_public_mode_from_the_flag_or_the_environment():
    assert resolve_public(["--public"], {})
    assert resolve_public(["--checkpoints-dir", "runs", "--public"], {})
    assert resolve_public([], {PUBLIC_ENV: "1"}) and resolve_public([], {PUBLIC_ENV: "true"})
    assert not resolve_public([], {}) and not resolve_public([], {PUBLIC_ENV: "0"}) and not resolve_public(["--checkpoints-dir", "x"], {})
    assert resolve_checkpoints_dir(["--public", "--checkpoints-dir", "/srv/runs"], {}) == Path("/srv/runs")


# ---------------------------------------------------------------- the folder is fixed

def test_public_sidebar_shows_the_folder_and_offers_no_input(monkeypatch, public):
    at = ok(public_app(monkeypatch, public).run())
    assert not at.text_input, [w.key for w in at.text_input]
    assert any(public.root.name in c.value for c in at.sidebar.caption)
    assert sorted(run_names(at)) == ["ae2", "vae2", "vae5"]


def test_private_mode_keeps_the_editable_folder(monkeypatch, sandbox):
    monkeypatch.delenv(PUBLIC_ENV, raising=False)
    at = ok(app_test(monkeypatch, sandbox.root).run())
    at.text_input(key="checkpoints_dir").set_value(str(sandbox.secret)).run()
    assert run_names(ok(at)) == ["stolen-run"]  # the contrast: only a private app may be pointed elsewhere


def test_public_folder_cannot_be_pointed_elsewhere(monkeypatch, public):
    at = ok(public_app(monkeypatch, public).run())
    expected = run_names(at)
    at.session_state["checkpoints_dir"] = str(public.secret)  # the private mode's key
    at.query_params["checkpoints_dir"] = str(public.secret)
    at.query_params["checkpoints-dir"] = str(public.secret)
    monkeypatch.setenv(CHECKPOINTS_ENV, str(public.secret))  # a later change of the environment: the folder is pinned
    monkeypatch.setattr(sys, "argv", [str(MAIN), "--public", f"--checkpoints-dir={public.secret}"])
    ok(at.run())
    assert run_names(at) == expected
    assert Path(at.selectbox(key=RUN_KEY).value).parent == public.root
    for page in (COMPARE_PAGE,):
        ok(at.switch_page(page).run())
        assert all("stolen-run" not in str(o) for w in at.multiselect for o in w.options)
    fresh = ok(public_app(monkeypatch, public).run())  # a new session of the same process
    assert run_names(fresh) == expected


# ---------------------------------------------------------------- no processes

def test_train_page_is_absent_and_refuses_when_run(monkeypatch, public):
    from streamlit.testing.v1 import AppTest

    at = ok(public_app(monkeypatch, public).run())
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page(TRAIN_PAGE)
    page = ok(AppTest.from_file(str(MAIN.parent / TRAIN_PAGE), default_timeout=TIMEOUT_S).run())  # reached some other way
    assert [e.value for e in page.error] == ["Training is not available on this public deployment."]
    assert not page.button and not page.text_input and not page.number_input


def test_jobs_refuse_to_start_or_stop_in_public_mode(monkeypatch, public):
    with pytest.raises(jobs.JobError, match="public"):
        jobs.start_job({"run_name": "new", "epochs": 1}, public.root)
    with pytest.raises(jobs.JobError, match="public"):
        jobs.stop_job(public.root / "vae2")
    assert not (public.root / "new").exists()


@pytest.mark.slow
def test_every_page_reads_only_the_folder_and_starts_no_process(monkeypatch, public, tmp_path):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    (public.root / "linked-run").symlink_to(public.secret / "stolen-run")  # a run folder that is a link out: not listed
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    at = public_app(monkeypatch, public)
    probe = audit()
    probe.start()
    try:
        render_every_page(at, public)
        at.session_state["checkpoints_dir"] = str(public.secret)
        monkeypatch.setenv(CHECKPOINTS_ENV, str(public.secret))
        ok(at.switch_page("views/explore.py").run())
    finally:
        probe.active = False
    sandbox = tmp_path.resolve()
    seen = [(p, w) for p, w in probe.opens if inside(p, sandbox)]
    assert seen, "the audit saw no file activity at all"
    streamlit_config = (home / ".streamlit", cwd / ".streamlit")  # streamlit may look for its config.toml there
    outside = [p for p, _ in seen if not inside(p, public.root) and not any(inside(p, c) for c in streamlit_config)]
    assert not outside, outside
    writes = [p for p, w in probe.opens if w and not inside(p, public.root) and not p.startswith(("/dev/", "/proc/"))]
    assert not writes, writes
    assert not probe.processes, probe.processes


def test_the_audit_sees_a_process_start(tmp_path):
    """The probe itself: starting a process is recorded (so an empty list above means none was started)."""
    probe = audit()
    probe.start()
    try:
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        (tmp_path / "written").write_text("x")
    finally:
        probe.active = False
    assert any(event == "subprocess.Popen" for event, _ in probe.processes)
    assert (str(tmp_path / "written"), True) in probe.opens


# ---------------------------------------------------------------- bounded embeddings

def test_busy_embeddings_fall_back_to_pca_with_a_note(monkeypatch, public):
    import trainer.projections as projections

    calls = []

    def fake_embed(z: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
        calls.append(method)
        return np.asarray(z, np.float32)[:, :2].copy()

    monkeypatch.setattr(projections, "embed", fake_embed)
    at = ok(public_app(monkeypatch, public).run())
    at.selectbox(key=RUN_KEY).set_value(str(public.root / "vae5"))
    at.session_state[PROJECTION_KEY] = "umap"
    held = 0
    try:
        while common.EMBEDDING_SLOTS.acquire(blocking=False):  # every slot taken by "other visitors"
            held += 1
        ok(at.run())
        assert held == common.MAX_CONCURRENT_EMBEDDINGS
        assert any(w.value.startswith("Busy:") and "PCA" in w.value for w in at.warning), [w.value for w in at.warning]
        assert calls == []
    finally:
        for _ in range(held):
            common.EMBEDDING_SLOTS.release()
    ok(at.run())
    assert not any(w.value.startswith("Busy:") for w in at.warning)
    assert calls == ["umap"]
    assert [p.name for p in (public.root / "vae5").glob("projection-umap-*.npz")]  # kept inside the configured folder


# ---------------------------------------------------------------- many runs

def test_summaries_carry_the_latest_numbers_from_small_files(runs_root, tmp_path):
    run_dir = shutil.copytree(runs_root / "vae2", tmp_path / "vae2")
    last = load_run(run_dir).history[-1]
    summary = summarize_run(run_dir)
    assert summary.last == {k: pytest.approx(last[k]) for k in HISTORY_NUMBERS}
    manifest = json.loads((run_dir / MANIFEST_FILE).read_text())
    del manifest["last"]  # a run saved before manifests named them: read from the history's tail
    (run_dir / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert summarize_run(run_dir).last == {k: pytest.approx(last[k]) for k in HISTORY_NUMBERS}
    for hostile in ("nan", {"test_loss": "1", "psnr": 2}, {"test_loss": 10**400, "psnr": 1.0}, [1, 2]):
        (run_dir / MANIFEST_FILE).write_text(json.dumps(manifest | {"last": hostile}))
        s = summarize_run(run_dir)
        assert s.last is None and s.error is None


def test_two_hundred_runs_load_only_the_selected_one(monkeypatch, runs_root, tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(MANY_RUNS):
        shutil.copytree(runs_root / ("ae2" if i % 2 else "vae2"), root / f"run-{i:03d}")
    loaded: list[str] = []

    def counting_load_run(path, *args, **kwargs):
        loaded.append(Path(path).name)
        return load_run(path, *args, **kwargs)

    monkeypatch.setattr(common, "load_run", counting_load_run)
    monkeypatch.delenv(PUBLIC_ENV, raising=False)
    at = ok(app_test(monkeypatch, root).run())
    assert at.selectbox(key=RUN_KEY).value == str(root / "run-000")
    assert loaded == ["run-000"]
    labels = at.selectbox(key=RUN_KEY).options
    assert len(labels) == MANY_RUNS
    assert all("PSNR" in label for label in labels)  # every label has its numbers, none was loaded for it
    at.selectbox(key=RUN_KEY).set_value(str(root / "run-123"))
    ok(at.run())
    assert loaded == ["run-000", "run-123"]
    ok(at.run())
    # Compare opens on the selected run and a comparable one (same dataset and latent size: run-000, already loaded)
    ok(at.switch_page(COMPARE_PAGE).run())
    assert loaded == ["run-000", "run-123"]
    assert len(list_runs(root)) == MANY_RUNS
