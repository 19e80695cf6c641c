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
MAX_BUNDLE_BYTES = 40 * 10**6  # issue 11: all of checkpoints/ within 40 MB


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
    expected = next((d for d in ("fashion-mnist", "emoji") if name.startswith(d.split("-")[0])), "mnist")
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


def test_compare_ranks_the_bundled_latent_2_runs_by_the_bound():
    """Issue 10 on the bundled runs: the no-KL run's low objective does not put it first; beta-4 and no-KL show both numbers."""
    from app import compare

    names = ["mnist-conv-vae-z2-nokl", "mnist-conv-ae-z2", "mnist-conv-vae-z2-beta4", "mnist-conv-vae-z2"]
    rows = {r["run"]: r for r in compare.metrics_table([load_run(CHECKPOINTS / n) for n in names])}
    vaes = sorted((r for r in rows.values() if r["rank"] is not None), key=lambda r: r["rank"])
    assert [r["run"] for r in vaes] == sorted((n for n in names if "-ae-" not in n), key=lambda n: rows[n]["neg. ELBO"])
    assert vaes[-1]["run"] == "mnist-conv-vae-z2-nokl"  # the worst bound, though the lowest objective
    assert rows["mnist-conv-vae-z2-nokl"]["objective"] == min(r["objective"] for r in rows.values())
    for name, beta in (("mnist-conv-vae-z2-beta4", 4.0), ("mnist-conv-vae-z2-nokl", 0.0)):
        row = rows[name]
        assert row["β"] == beta and row["neg. ELBO"] is not None and row["objective"] is not None
        assert abs(row["neg. ELBO"] - row["objective"]) > 1  # two different numbers, both shown
    assert rows["mnist-conv-ae-z2"]["rank"] is None and rows["mnist-conv-ae-z2"]["neg. ELBO"] is None
