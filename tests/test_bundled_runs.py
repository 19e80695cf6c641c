"""The bundled demo runs in checkpoints/: each loads, says where its data came from, and every view renders."""
from __future__ import annotations

import pytest

from app.state import TABS
from trainer.demo import DEMO_RUNS
from trainer.paths import DEFAULT_CHECKPOINTS_DIR
from trainer.runs import load_run

from .helpers import COMPARE_PAGE, choose_run, image_with_caption, ok, open_tab, start_app

CHECKPOINTS = DEFAULT_CHECKPOINTS_DIR  # where the bundled runs ship
NAMES = [name for name, _, _ in DEMO_RUNS]
MAX_BUNDLE_BYTES = 30 * 2**20


# Files the app and trainer cache into a run folder on the user's machine (gitignored, not shipped).
LOCAL_CACHE_PREFIXES = ("projection-", "decoder-", "lock")


def test_every_bundled_run_is_present_and_small():
    missing = [n for n in NAMES if not (CHECKPOINTS / n / "manifest.json").exists()]
    assert not missing, f"missing bundled runs (make demo-runs): {missing}"
    shipped = [p for n in NAMES for p in (CHECKPOINTS / n).rglob("*") if p.is_file() and not p.name.startswith(LOCAL_CACHE_PREFIXES)]
    size = sum(p.stat().st_size for p in shipped)
    assert size < MAX_BUNDLE_BYTES


@pytest.mark.parametrize("name", NAMES)
def test_bundled_run_loads_with_its_provenance(name):
    run = load_run(CHECKPOINTS / name)
    assert run.epoch == run.train_config.epochs and len(run.history) == run.epoch
    assert len(run.atlas.images) == run.train_config.atlas_size
    data = run.info["data"]
    expected = "fashion-mnist" if name.startswith("fashion") else "mnist"
    assert data["name"] == expected and data["kind"] in ("full", "subset") and data["note"]


@pytest.mark.slow
def test_first_screen_of_the_bundle_is_the_latent_2_vae(monkeypatch):
    at = ok(start_app(monkeypatch, CHECKPOINTS))
    assert at.selectbox(key="run_path").value == str(CHECKPOINTS / "mnist-conv-vae-z2")
    assert image_with_caption(at, "Decoded z")


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_every_view_renders_for_bundled_run(monkeypatch, name):
    at = choose_run(ok(start_app(monkeypatch, CHECKPOINTS)), CHECKPOINTS, name)
    for tab in TABS:
        open_tab(at, tab)
        assert not at.error, (name, tab, [e.value for e in at.error])


@pytest.mark.slow
def test_compare_page_on_the_bundle(monkeypatch):
    at = ok(start_app(monkeypatch, CHECKPOINTS))
    ok(at.switch_page(COMPARE_PAGE).run())
    assert at.dataframe, "no metrics table"
