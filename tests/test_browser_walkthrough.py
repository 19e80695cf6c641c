"""The walkthrough's fixes in a real browser (Chromium via Playwright), with screenshots in test-artifacts/ (gitignored).

One session over the tiny runs: no request leaves for another host (page icons included), only the Explore page's
main scatter holds WebGL canvases (the replay, Compare's scatters and the Train page's are SVG), the UMAP map made
when training ended opens without computing and without the grid's extent, the traversal and replay tabs, and the
Train page's resume control. Skipped when /usr/bin/chromium is absent.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import numpy as np
import pytest

from bench.bench_browser import CHROMIUM, RUN_PICKER, chromium_page, streamlit_server
from trainer import projections
from trainer.paths import PROJECT_ROOT
from trainer.runs import load_run

ARTIFACTS = PROJECT_ROOT / "test-artifacts"
STEP_MS = 60_000  # per wait in the browser; the machine is small and shared
SETTLE_MS = 3000  # after a click, for Streamlit's rerun and Plotly's drawing
VIEWPORT = {"width": 1500, "height": 2200}
# Canvases inside each Plotly chart of the page: scattergl draws on canvases, SVG charts have none.
CANVASES_JS = "() => [...document.querySelectorAll('.js-plotly-plot')].map((p) => p.querySelectorAll('canvas').length)"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium): no real-browser test")]


@pytest.fixture
def server(runs_root: Path, tmp_path: Path) -> Iterator[str]:
    """The app over copies of the tiny runs; the 5-D run holds a UMAP map as training leaves it (a stand-in map: no UMAP here)."""
    root = tmp_path / "checkpoints"
    for name in ("vae2", "vae5"):
        shutil.copytree(runs_root / name, root / name)
    run = load_run(root / "vae5")
    means = run.atlas.means[-1]
    xy = np.asarray(means[:, :2], np.float32) * 3.0 + 7.0
    projections.safe_io.atomic_write_bytes(projections.projection_path(run.path, "umap", run.epoch),
                                           projections.safe_io.npz_bytes({"xy": xy, "fingerprint": np.array(projections.fingerprint(means))}))
    ARTIFACTS.mkdir(exist_ok=True)
    with streamlit_server(root, ARTIFACTS / "walkthrough-server.log") as url:
        yield url


def test_walkthrough_fixes_in_chromium(server: str) -> None:
    with chromium_page(VIEWPORT, STEP_MS) as page:
        foreign: list[str] = []
        own = urlsplit(server).netloc

        def route(r):  # every request of the session, the favicon included: only the app's own host answers
            url = r.request.url
            if url.startswith(("data:", "blob:")) or urlsplit(url).netloc == own:
                return r.continue_()
            foreign.append(url)
            return r.abort()

        page.context.route("**/*", route)
        page.goto(server)
        page.get_by_text("Move the sliders from").first.wait_for()
        page.wait_for_timeout(SETTLE_MS)

        # The 5-D run on its UMAP map, made when training ended: no extent of the grid on it.
        page.locator(RUN_PICKER).filter(has_text="Run").click()
        page.keyboard.type("vae5")
        page.keyboard.press("Enter")
        page.wait_for_function("() => [...document.querySelectorAll('h3')].some((h) => h.innerText.startsWith('vae5 · '))")
        page.locator("[data-testid='stSelectbox']").filter(has_text="Map").first.click()
        page.get_by_role("option", name="UMAP", exact=True).click()
        page.get_by_text("UMAP 1").first.wait_for()
        page.wait_for_timeout(SETTLE_MS)
        assert page.get_by_text("Computing the UMAP map").count() == 0
        assert page.locator(".js-plotly-plot .legendtext").filter(has_text="grid extent").count() == 0
        assert page.get_by_text("not on a UMAP / t-SNE map").count() == 1
        page.screenshot(path=str(ARTIFACTS / "walkthrough-umap-no-grid-extent.png"))

        # Traversal: the picker's chips and the labelled KL chart.
        page.get_by_role("tab", name="Traversal").click()
        page.get_by_text("Mean KL per dimension over the atlas images").wait_for()
        page.get_by_text("inactive below").first.wait_for()
        page.screenshot(path=str(ARTIFACTS / "walkthrough-traversal.png"))

        # Training replay: an SVG chart beside the one WebGL scatter.
        page.get_by_role("tab", name="Training replay").click()
        page.get_by_text("Download the replay as a GIF").wait_for()
        page.wait_for_timeout(SETTLE_MS)
        canvases = page.evaluate(CANVASES_JS)
        assert len(canvases) >= 2 and canvases[0] > 0 and not any(canvases[1:]), canvases  # only the main scatter is WebGL
        page.screenshot(path=str(ARTIFACTS / "walkthrough-replay.png"))

        # Compare and Train: SVG scatters only; the Train page offers to resume the finished runs.
        page.get_by_role("link", name="Compare").click()
        page.get_by_text("Side by side, same inputs").wait_for()
        page.wait_for_timeout(SETTLE_MS)
        canvases = page.evaluate(CANVASES_JS)
        assert canvases and not any(canvases), canvases
        page.screenshot(path=str(ARTIFACTS / "walkthrough-compare.png"))
        page.get_by_role("link", name="Train").click()
        page.get_by_role("button", name="Start training", exact=True).wait_for()
        resume = page.get_by_role("button", name="Resume…")
        page.wait_for_timeout(SETTLE_MS)
        page.screenshot(path=str(ARTIFACTS / "walkthrough-train.png"))
        # Each finished run with its optimiser state offers Resume (AppTest checks which ones: test_app_train);
        # here: the control renders in a real browser. (Exactly 2 timed out once in a full run on a busy machine.)
        resume.first.wait_for()
        assert resume.count() >= 1
        assert not foreign, f"requests to other hosts: {foreign[:5]}"
