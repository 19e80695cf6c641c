"""Sprite sheets (app/sprites.py) and the thumbnail scatter component (app/components/sprite_scatter).

Sheet geometry and pixel content for grayscale and colour atlases, the size of a 10,000-image sheet, the
wrapper's arguments and return value, and (slow tier, real Chromium) the component itself in the bench's
harness page: it draws, shows the hovered image with its class and index, reports a click, pans and zooms.
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.components import sprite_scatter as component
from app.sprites import MAX_SHEET_SIDE, SpriteGrid, sheet_array, sprite_grid, sprite_sheet
from trainer.images import class_colors

TINY_COUNT = 10_000
# 10,000 8x8 grayscale noise images (nothing to compress): 640,000 pixel bytes, plus PNG's filter byte per
# row and zlib's stored-block overhead; a sheet must not be bigger than that.
TINY_SHEET_LIMIT = 660_000


def numbered_images(n: int, channels: int = 1, side: int = 6, seed: int = 0) -> np.ndarray:
    """(n, C, side, side) uint8 images, each different (random) so a misplaced one is caught."""
    return np.random.default_rng(seed).integers(1, 256, size=(n, channels, side, side), dtype=np.uint8)


def decode_png(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


# ---------------------------------------------------------------- geometry


@pytest.mark.parametrize(("count", "cols", "rows"), [(1, 1, 1), (2, 2, 1), (10, 4, 3), (16, 4, 4), (17, 5, 4), (2000, 45, 45), (10_000, 100, 100)])
def test_grid_is_square_enough(count: int, cols: int, rows: int) -> None:
    grid = sprite_grid(count, side=28)
    assert (grid.cols, grid.rows, grid.cell) == (cols, rows, 28)
    assert grid.cols * grid.rows >= count > grid.cols * (grid.rows - 1)
    assert (grid.width, grid.height) == (cols * 28, rows * 28)


def test_origin_walks_rows_then_columns() -> None:
    grid = sprite_grid(10, side=5)  # 4 columns
    assert [grid.origin(k) for k in (0, 1, 3, 4, 9)] == [(0, 0), (5, 0), (15, 0), (0, 5), (5, 10)]
    with pytest.raises(IndexError):
        grid.origin(10)


def test_cells_shrink_to_fit_the_largest_sheet() -> None:
    grid = sprite_grid(10_000, side=64)
    assert grid.cols == 100 and grid.cell == MAX_SHEET_SIDE // 100
    assert max(grid.width, grid.height) <= MAX_SHEET_SIDE
    assert sprite_grid(100, side=64, max_side=200).cell == 20
    with pytest.raises(ValueError, match="do not fit"):
        sprite_grid(100, side=64, max_side=5)


def test_to_dict_carries_the_sheet_size() -> None:
    assert SpriteGrid(count=5, cols=3, rows=2, cell=7, channels=3).to_dict() == {
        "count": 5, "cols": 3, "rows": 2, "cell": 7, "channels": 3, "width": 21, "height": 14}


# ---------------------------------------------------------------- pixels


@pytest.mark.parametrize(("channels", "mode"), [(1, "L"), (3, "RGB")])
def test_thumbnail_k_lands_in_its_cell(channels: int, mode: str) -> None:
    images = numbered_images(11, channels)
    png, grid = sprite_sheet(images)
    sheet = np.asarray(decode_png(png))
    assert decode_png(png).mode == mode and sheet.shape[:2] == (grid.height, grid.width) == (3 * 6, 4 * 6)
    sheet = sheet.reshape(grid.height, grid.width, channels)
    for k in range(11):
        x, y = grid.origin(k)
        np.testing.assert_array_equal(sheet[y : y + 6, x : x + 6], images[k].transpose(1, 2, 0), err_msg=f"thumbnail {k}")
    assert not sheet[2 * 6 :, 3 * 6 :].any(), "the unused last cell is black"


def test_sheet_array_matches_the_png() -> None:
    images = numbered_images(7, 3)
    array, grid = sheet_array(images)
    png, grid2 = sprite_sheet(images)
    assert grid == grid2
    np.testing.assert_array_equal(np.asarray(decode_png(png)), array)


def test_a_chosen_side_resamples_each_thumbnail_alone() -> None:
    # image k is flat grey k * 20: shrunk, its cell is still exactly that grey, nothing of a neighbour's
    n, side = 9, 24
    images = np.zeros((n, 1, side, side), np.uint8)
    for k in range(n):
        images[k] = k * 20
    array, grid = sheet_array(images, side=8)
    assert grid.cell == 8 and array.shape == (3 * 8, 3 * 8, 1)
    for k in range(n):
        x, y = grid.origin(k)
        assert set(np.unique(array[y : y + 8, x : x + 8])) == {k * 20}
    up, grid = sheet_array(images[:4], side=48)  # enlarged by nearest neighbour: still flat
    x, y = grid.origin(3)
    assert grid.cell == 48 and set(np.unique(up[y : y + 48, x : x + 48])) == {60}


def test_ten_thousand_tiny_images_stay_small() -> None:
    png, grid = sprite_sheet(numbered_images(TINY_COUNT, side=8))
    assert (grid.cols, grid.rows, grid.cell) == (100, 100, 8)
    assert len(png) < TINY_SHEET_LIMIT, f"{len(png):,} bytes"


@pytest.mark.parametrize(("images", "match"), [
    (np.zeros((3, 1, 4, 4), np.float32), "uint8"),
    (np.zeros((3, 4, 4), np.uint8), "uint8 images"),
    (np.zeros((3, 2, 4, 4), np.uint8), "1 or 3 channels"),
    (np.zeros((3, 1, 4, 5), np.uint8), "square"),
    (np.zeros((0, 1, 4, 4), np.uint8), "at least one"),
])
def test_unusable_atlases_are_refused_in_one_line(images: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sprite_sheet(images)


# ---------------------------------------------------------------- the wrapper


def scatter_inputs(n: int = 5, n_classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    xy = rng.normal(size=(n, 2)).astype(np.float64)
    labels = np.arange(n) % n_classes
    png, grid = sprite_sheet(numbered_images(n))
    return xy, labels, png, grid


def test_component_args_pack_points_as_little_endian_bytes() -> None:
    xy, labels, png, grid = scatter_inputs()
    args = component.component_args(xy, labels, png, grid, ["a", "b", "c"], selected=2, height=400, thumb_px=12)
    np.testing.assert_array_equal(np.frombuffer(args["xy"], "<f4").reshape(-1, 2), xy.astype(np.float32))
    np.testing.assert_array_equal(np.frombuffer(args["labels"], "<i4"), labels)
    assert args["sheet"] == png and args["grid"] == grid.to_dict()
    assert (args["count"], args["selected"], args["height"], args["thumb_px"]) == (5, 2, 400, 12)
    assert args["class_names"] == ["a", "b", "c"] and args["colors"] == class_colors(3)


def test_component_args_keys_change_only_with_their_content() -> None:
    xy, labels, png, grid = scatter_inputs()
    first = component.component_args(xy, labels, png, grid, ["a", "b", "c"])
    again = component.component_args(xy.copy(), labels.copy(), bytes(png), grid.to_dict(), ["a", "b", "c"], selected=1)
    moved = component.component_args(xy + 1, labels, png, grid, ["a", "b", "c"])
    other_sheet, _ = sprite_sheet(numbered_images(5, seed=1))
    assert (again["sheet_key"], again["data_key"]) == (first["sheet_key"], first["data_key"])
    assert moved["sheet_key"] == first["sheet_key"] and moved["data_key"] != first["data_key"]
    assert component.component_args(xy, labels, other_sheet, grid, ["a"])["sheet_key"] != first["sheet_key"]


def test_component_args_fill_missing_names_and_colours() -> None:
    xy, _, png, grid = scatter_inputs()
    labels = np.array([0, 1, 4, 4, 0])
    args = component.component_args(xy, labels, png, grid, ["zero", "one"], colors=["#000000"], selected=99)
    assert args["class_names"] == ["zero", "one", "2", "3", "4"]
    assert args["colors"] == ["#000000", *class_colors(5)[1:]]
    assert args["selected"] == component.NO_SELECTION and args["thumb_px"] == 0


@pytest.mark.parametrize(("change", "match"), [
    (lambda a: a | {"xy": a["xy"][:, :1]}, r"\(N, 2\)"),
    (lambda a: a | {"xy": np.where(np.eye(5, 2, dtype=bool), np.nan, a["xy"])}, "NaN"),
    (lambda a: a | {"labels": a["labels"][:4]}, "labels"),
    (lambda a: a | {"labels": a["labels"].astype(float)}, "labels"),
    (lambda a: a | {"labels": a["labels"] - 1}, ">= 0"),
    (lambda a: a | {"sprite_png": b"GIF89a" + a["sprite_png"]}, "not a PNG"),
    (lambda a: a | {"grid": sprite_grid(6, 6)}, "6 thumbnails for 5 points"),
])
def test_component_args_refuse_inconsistent_inputs(change, match: str) -> None:
    xy, labels, png, grid = scatter_inputs()
    kw = change({"xy": xy, "labels": labels, "sprite_png": png, "grid": grid})
    with pytest.raises(ValueError, match=match):
        component.component_args(kw["xy"], kw["labels"], kw["sprite_png"], kw["grid"], ["a", "b", "c"])


@pytest.mark.parametrize(("value", "expected"), [
    ({"index": 3, "click": 1}, 3), ({"index": 0, "click": 7}, 0), ({"index": 5}, None), ({"index": -1}, None),
    ({"index": True}, None), ({"index": "2"}, None), (None, None), (3, None), ([3], None),
])
def test_clicked_index(value, expected) -> None:
    assert component.clicked_index(value, count=5) == expected


def test_sprite_scatter_passes_key_and_callback_and_returns_the_click(monkeypatch) -> None:
    calls = []

    def fake_component(**kwargs):
        calls.append(kwargs)
        return {"index": 4, "click": 2}

    monkeypatch.setattr(component, "_component", lambda: fake_component)
    xy, labels, png, grid = scatter_inputs()

    def on_click() -> None:
        pass

    assert component.sprite_scatter(xy, labels, png, grid, ["a", "b", "c"], key="thumbs", selected=1, on_click=on_click) == 4
    (kwargs,) = calls
    assert kwargs["key"] == "thumbs" and kwargs["default"] is None and kwargs["on_change"] is on_click
    assert kwargs["selected"] == 1 and kwargs["sheet"] == png


def test_sprite_scatter_renders_in_an_app() -> None:
    from streamlit.testing.v1 import AppTest

    def script() -> None:
        import numpy as np

        from app.components.sprite_scatter import sprite_scatter
        from app.sprites import sprite_sheet

        images = np.full((4, 1, 5, 5), 200, np.uint8)
        png, grid = sprite_sheet(images)
        clicked = sprite_scatter(np.arange(8.0).reshape(4, 2), np.array([0, 1, 0, 1]), png, grid, ["x", "y"], key="thumbs")
        import streamlit as st

        st.write(f"clicked: {clicked}")

    at = AppTest.from_function(script, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.markdown[0].value == "clicked: None"


def test_frontend_is_self_contained() -> None:
    """No CDN and no other host: every asset the page loads is a relative path inside the component folder."""
    html = (component.FRONTEND_DIR / "index.html").read_text()
    sources = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert sources == ["sprite_scatter.js"]
    for path in component.FRONTEND_DIR.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://|//cdn|import\s*\(|fetch\(", text), f"{path.name} reaches out of the component"


# ---------------------------------------------------------------- in Chromium (the bench's harness page)

GRID_POINTS = 9  # a 3 x 3 grid of points: number 4 sits in the middle of the canvas


@pytest.mark.slow
def test_component_in_chromium(tmp_path: Path) -> None:
    from bench.bench_browser import CHROMIUM, launch_chromium
    from bench.bench_sprites import VIEWPORT, frames, harness_server, open_harness, write_harness
    from trainer.paths import PROJECT_ROOT

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium): no real-browser test")
    from playwright.sync_api import sync_playwright

    xy = np.stack(np.meshgrid(np.arange(3.0), np.arange(3.0)), axis=-1).reshape(-1, 2)
    labels = np.arange(GRID_POINTS) % 2
    png, grid = sprite_sheet(numbered_images(GRID_POINTS, channels=3, side=16))
    write_harness(tmp_path, component.component_args(xy, labels, png, grid, ["even", "odd"]))
    artifacts = PROJECT_ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with harness_server(tmp_path) as url, sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            canvas = open_harness(page, url)
            inside = page.frame_locator("#component")
            box = canvas.bounding_box()
            cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.wait_for_timeout(300)
            settled = frames(canvas)
            page.wait_for_timeout(500)
            assert frames(canvas) == settled > 0, "frames are drawn on change only"

            page.mouse.move(cx, cy)
            caption = inside.locator("#caption")
            caption.wait_for(state="visible")
            assert caption.inner_text() == "even · image #4"
            page.screenshot(path=str(artifacts / "sprite-scatter-hover.png"))

            page.mouse.click(cx, cy)
            page.wait_for_function("window.received.some(m => m.type === 'streamlit:setComponentValue')")
            values = [m["value"] for m in page.evaluate("window.received") if m["type"] == "streamlit:setComponentValue"]
            assert values == [{"index": 4, "click": 1}]

            before = frames(canvas)
            page.mouse.move(cx, cy)
            page.mouse.down()
            page.mouse.move(cx + 60, cy, steps=4)
            page.mouse.up()
            page.mouse.move(cx + 60, cy + 1)
            page.wait_for_function("() => document.querySelector('#component').contentDocument.querySelector('#caption').textContent.endsWith('#4')")
            assert frames(canvas) > before, "panning redraws"
            if "SwiftShader" in (canvas.get_attribute("data-renderer") or ""):  # software GL: motion at half resolution, then sharp
                assert int(canvas.get_attribute("data-motion-frames") or 0) > 0
            page.wait_for_function("() => document.querySelector('#component').contentDocument.querySelector('#gl').dataset.res === '1'")
            assert canvas.evaluate("(c) => c.width === Math.round(c.clientWidth * devicePixelRatio)"), "the settled view is drawn at full resolution"
            clicks = len([m for m in page.evaluate("window.received") if m["type"] == "streamlit:setComponentValue"])
            assert clicks == 1, "a drag is not a click"

            page.mouse.wheel(0, -400)  # zoom in about the cursor: the same thumbnail stays under it
            page.mouse.move(cx + 60, cy + 2)
            page.wait_for_timeout(300)
            assert caption.inner_text().endswith("image #4")

            # unmounted (Streamlit removes the iframe): its WebGL context is handed back at once
            lost = page.evaluate("""() => { const frame = document.getElementById('component');
                const gl = frame.contentDocument.getElementById('gl').getContext('webgl2') || frame.contentDocument.getElementById('gl').getContext('webgl');
                const before = gl.isContextLost(); frame.remove(); return [before, gl.isContextLost()]; }""")
            assert lost == [False, True]
        finally:
            browser.close()


# ---------------------------------------------------------------- on the Explore page


@pytest.mark.slow
def test_explore_page_draws_thumbnails(monkeypatch, runs_root: Path) -> None:
    from app.views.explore import SCATTER_MODE_KEY, SCATTER_MODES

    from .helpers import ok, start_app

    at = ok(start_app(monkeypatch, runs_root))
    assert not [c for c in at.caption if "atlas images at their points" in c.value], "points are the default"
    at.session_state[SCATTER_MODE_KEY] = SCATTER_MODES[1]
    ok(at.run())
    assert [c for c in at.caption if "40 atlas images at their points" in c.value]
