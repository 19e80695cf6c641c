"""End to end in a real browser: `streamlit run app/main.py` driven by Debian's Chromium through Playwright.

Drags a latent slider's thumb (mouse down, moves, up) and counts the images decoded in the browser during the
drag, sees the scatter marker follow the release, runs an interpolation, opens the Compare and Train pages;
screenshots go to test-artifacts/ (gitignored). Skipped only when /usr/bin/chromium is absent.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest

from bench.bench_browser import CHROMIUM, chromium_page, drag, live_sliders, marker_xy, streamlit_server
from trainer.paths import PROJECT_ROOT

from .helpers import wait_until

ARTIFACTS = PROJECT_ROOT / "test-artifacts"
STEP_MS = 45_000  # per wait in the browser; the machine is small and shared
DRAG_MOVES = 40  # mouse moves while the slider thumb is held
VIEWPORT = {"width": 1400, "height": 1000}
TALL_VIEWPORT = {"width": 1400, "height": 2600}  # streamlit scrolls inside the page: a tall window shows it all

SCATTER_CHART = ".scatter-chart"  # the points scatter's Plotly div (app.components.scatter_chart, in the page itself)
# Page coordinates and atlas index of the atlas point farthest from any other, so that a click there hits it alone.
LONE_POINT_JS = f"""() => {{
  const gd = document.querySelector({SCATTER_CHART!r}), box = gd.getBoundingClientRect(), L = gd._fullLayout;
  const pts = gd._fullData.filter((t) => t.customdata).flatMap((t) => Array.from(t.x, (x, i) =>
    [box.left + L._size.l + L.xaxis.l2p(x), box.top + L._size.t + L.yaxis.l2p(t.y[i]), Number(t.customdata[i])]));
  const gap = (p) => Math.min(...pts.filter((q) => q !== p).map((q) => Math.hypot(p[0] - q[0], p[1] - q[1])));
  return pts.reduce((best, p) => (gap(p) > gap(best) ? p : best));
}}"""

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium): no real-browser test")]


@pytest.fixture
def server(runs_root: Path) -> Iterator[str]:
    """A headless streamlit server of app/main.py over the tiny runs; killed (its whole session) afterwards."""
    ARTIFACTS.mkdir(exist_ok=True)
    with streamlit_server(runs_root, ARTIFACTS / "browser-server.log") as url:
        yield url


def test_explore_compare_train_in_chromium(server: str) -> None:
    with chromium_page(VIEWPORT, STEP_MS) as page:
        requests: list[str] = []  # what the live sliders' frame asks for: onnxruntime-web must come from the app
        page.on("request", lambda r: requests.append(r.url) if "latent_sliders" in (r.frame.url or "") else None)
        page.goto(server)

        # Explore: the live sliders decode in the browser while a thumb is dragged; letting go moves the scatter marker.
        frame = live_sliders(page, timeout_ms=STEP_MS)
        page.screenshot(path=str(ARTIFACTS / "browser-explore.png"))
        chart = page.locator(SCATTER_CHART)
        chart.evaluate("(el) => { el.dataset.kept = 'yes'; }")
        before = marker_xy(page)
        held = drag(page, frame, moves=DRAG_MOVES)
        page.screenshot(path=str(ARTIFACTS / "browser-explore-dragging.png"))
        page.mouse.up()
        assert held.frames > 0, f"no decoded image was drawn during a drag of {held.moves} mouse moves"
        wait_until(lambda: marker_xy(page) not in (None, before), "the scatter marker to follow the released slider")
        page.screenshot(path=str(ARTIFACTS / "browser-explore-moved.png"))
        assert chart.get_attribute("data-kept") == "yes", "the scatter was mounted anew for a moved marker, not updated in place"

        # A click on a point of the scatter picks its image (the component's click, as Streamlit's plotly selection did).
        x, y, idx = page.evaluate(LONE_POINT_JS)
        page.mouse.click(x, y)
        page.get_by_text(f"Clicked: image #{idx},").wait_for()
        foreign = [url for url in requests if urlsplit(url).netloc != urlsplit(server).netloc]
        assert not foreign, f"the live sliders fetched from another host: {foreign[:3]}"

        # Interpolation: open the tab, see its frames, ask for one more frame and see it drawn.
        page.get_by_role("tab", name="Interpolation").click()
        frames = page.locator("[data-testid='stImageCaption']").filter(has_text="t=")
        wait_until(lambda: frames.count() >= 3, "the interpolation frames")
        n_frames = frames.count()
        page.get_by_role("slider", name="Frames").focus()
        page.get_by_role("slider", name="Frames").press("ArrowRight")
        wait_until(lambda: frames.count() == n_frames + 1, "one more interpolation frame")
        page.screenshot(path=str(ARTIFACTS / "browser-interpolation.png"))

        # Compare: two runs side by side with the metrics table.
        page.get_by_role("link", name="Compare").click()
        page.get_by_text("Metrics at the last epoch").wait_for()
        page.locator("[data-testid='stDataFrame']").first.wait_for()
        wait_until(lambda: page.locator("[data-testid='stImage']").filter(has_text="Prior samples").count() == 2, "both runs' prior samples")
        page.set_viewport_size(TALL_VIEWPORT)
        page.wait_for_timeout(1000)  # plotly re-lays out to the new size
        page.screenshot(path=str(ARTIFACTS / "browser-compare.png"))

        # Train: the form and the list of past jobs (the tiny runs have status.json files).
        page.get_by_role("link", name="Train").click()
        page.get_by_role("button", name="Start training", exact=True).wait_for()
        page.get_by_text("finished").first.wait_for()
        bar = page.locator("[data-testid='stProgress'] [role='progressbar']").first
        wait_until(lambda: bar.get_attribute("aria-valuenow") == "100", "a finished job's full progress bar")
        page.wait_for_timeout(1000)  # the bars animate to their value
        page.screenshot(path=str(ARTIFACTS / "browser-train.png"))


THUMBNAILS_FRAME = "iframe[title*='sprite_scatter']"  # the thumbnail scatter component's iframe
BACKGROUND_TOLERANCE = 30  # summed RGB difference from the plot's background that counts as drawn


def thumbnail_position(canvas) -> tuple[float, float]:
    """Page coordinates of a pixel well inside a drawn thumbnail, the one nearest the canvas centre (from a screenshot)."""
    import io

    import numpy as np
    from PIL import Image

    box = canvas.bounding_box()
    pixels = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")).astype(int)  # (H, W, 3)
    drawn = np.abs(pixels - pixels[1, 1]).sum(-1) > BACKGROUND_TOLERANCE  # a corner pixel is background (the fit leaves a margin)
    inside = drawn[2:-2, 2:-2] & drawn[:-4, 2:-2] & drawn[4:, 2:-2] & drawn[2:-2, :-4] & drawn[2:-2, 4:]  # 2 px from any background
    ys, xs = np.nonzero(inside)
    assert len(xs), "no thumbnail drawn on the canvas"
    h, w = drawn.shape
    k = int(np.argmin((xs + 2 - w / 2) ** 2 + (ys + 2 - h / 2) ** 2))
    return box["x"] + (xs[k] + 2) * box["width"] / w, box["y"] + (ys[k] + 2) * box["height"] / h


def test_thumbnail_scatter_in_chromium(server: str) -> None:
    """The Explore page's thumbnail mode: the atlas drawn as images, hover shows one large, a click selects it like a Plotly click."""
    with chromium_page(VIEWPORT, STEP_MS) as page:
        page.goto(server)
        page.get_by_text("Draw the atlas as").wait_for()
        page.get_by_text("thumbnails", exact=True).click()
        frame = page.frame_locator(THUMBNAILS_FRAME)
        canvas = frame.locator("#gl[data-ready='1']")
        canvas.wait_for()
        x, y = thumbnail_position(canvas)
        page.mouse.move(x, y)
        caption = frame.locator("#caption")
        caption.wait_for(state="visible")
        idx = int(re.search(r"image #(\d+)$", caption.inner_text())[1])
        page.screenshot(path=str(ARTIFACTS / "browser-explore-thumbnails.png"))
        page.mouse.click(x, y)
        page.get_by_text(f"Clicked: image #{idx},").wait_for()  # the same session state as a click on a Plotly point
        page.mouse.move(x, y + 1)
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "browser-explore-thumbnails-clicked.png"))


@pytest.fixture(scope="module")
def spatial_server(tmp_path_factory) -> Iterator[str]:
    """A headless server over one tiny spatial resnet VAE (a 2 x 7 x 7 latent map)."""
    from models import ModelConfig
    from trainer.config import TrainConfig
    from trainer.train import fit

    from .helpers import TINY_WIDTHS, tiny_data

    root = tmp_path_factory.mktemp("spatial-browser")
    model_config = ModelConfig(arch="resnet", bottleneck="spatial", latent_channels=2, widths=TINY_WIDTHS, hidden_dim=0)
    fit(model_config, TrainConfig(epochs=1, batch_size=32, seed=0, atlas_size=40), tiny_data(), root / "spatial", progress="none")
    ARTIFACTS.mkdir(exist_ok=True)
    with streamlit_server(root, ARTIFACTS / "browser-spatial-server.log") as url:
        yield url


def test_spatial_run_in_chromium(spatial_server: str) -> None:
    """A run with a (C_z, h, w) latent in the browser: sliders named by (channel, row, column) decode in the page while
    dragged, and the Spatial latent tab draws the posterior-mean maps and the per-position KL maps."""
    with chromium_page(TALL_VIEWPORT, STEP_MS) as page:
        page.goto(spatial_server)
        frame = live_sliders(page, timeout_ms=STEP_MS)
        names = frame.evaluate("() => document.body.innerText")
        assert re.search(r"c\d \(\d, \d\)", names), f"no slider named by (channel, row, column): {names[:300]}"
        held = drag(page, frame, moves=DRAG_MOVES)
        page.mouse.up()
        assert held.frames > 0, "the resnet decoder drew nothing in the browser during a drag"

        page.get_by_role("tab", name="Spatial latent").click()
        page.get_by_text("one map per channel").wait_for()
        page.get_by_text("Where the code spends its nats").wait_for()
        charts = page.locator("[data-testid='stPlotlyChart']")
        wait_until(lambda: charts.count() >= 3, "the posterior-mean maps, the KL maps and their total")  # the scatter is not a stPlotlyChart
        page.screenshot(path=str(ARTIFACTS / "browser-spatial.png"))
