"""Sprite scatter frame rate: 10,000 thumbnails panned and zoomed in real Chromium, frames counted by the component.

    .venv/bin/python -m bench.bench_sprites                        # 10,000 MNIST digits, 3 s of pan and zoom
    .venv/bin/python -m bench.bench_sprites --points 2000 --seconds 5

A static harness page plays Streamlit's side of the components protocol (it posts the render message with
the arguments `component_args` builds and records what the component sends back); it and the component's
own frontend folder are served from a temp dir on a loopback port and opened in Debian's Chromium
(bench_browser.launch_chromium: software GL, --disable-gpu). The mouse drags and wheels over the canvas for
N seconds; frames per second come from the canvas's data-frames counter (one per drawn frame).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from app.components.sprite_scatter import FRONTEND_DIR, component_args
from app.sprites import sprite_sheet
from bench.bench_browser import CHROMIUM, free_port, launch_chromium

DEFAULT_POINTS = 10_000
GOAL_FPS = 30  # issue 13: 10,000 thumbnails pan and zoom at 30 frames per second or more
DEFAULT_SECONDS = 3.0
VIEWPORT = {"width": 1100, "height": 760}
FRAME_WIDTH, FRAME_HEIGHT = 1000, 640  # the harness iframe (the component sets its own height)
READY_MS = 60_000
BYTES_ARGS = ("xy", "labels", "sheet")  # component_args entries served as files, the rest as args.json
CLUSTER_RADIUS, CLUSTER_SPREAD = 4.0, 1.0
DRAG_STEPS, DRAG_PX = 8, 160  # one pan: 8 mouse moves, 20 px each
WHEEL_STEPS, WHEEL_DELTA = 6, 100  # one zoom: 6 wheel notches in, then 6 out

HARNESS_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>sprite scatter harness</title></head>
<body style="margin:0">
<iframe id="component" src="component/index.html" style="width:%(width)dpx;height:%(height)dpx;border:0;display:block"></iframe>
<script>
// Streamlit's half of the components v1 protocol: render on componentReady, record every message back.
window.received = [];
const frame = document.getElementById("component");
const fetchBytes = async (name) => new Uint8Array(await (await fetch(name)).arrayBuffer());
const argsReady = (async () => {
  const args = await (await fetch("args.json")).json();
  for (const name of %(bytes_args)s) args[name] = await fetchBytes(name + ".bin");
  return args;
})();
window.renderComponent = async (extra) => {
  const args = Object.assign({}, await argsReady, extra || {});
  frame.contentWindow.postMessage({ type: "streamlit:render", args: args, dfs: [], disabled: false, theme: null }, "*");
};
window.addEventListener("message", (ev) => {
  const d = ev.data;
  if (!d || !d.isStreamlitMessage) return;
  window.received.push({ type: d.type, value: d.value === undefined ? null : d.value, height: d.height === undefined ? null : d.height });
  if (d.type === "streamlit:setFrameHeight") frame.style.height = d.height + "px";
  if (d.type === "streamlit:componentReady") window.renderComponent();
});
</script>
</body></html>
"""


def synthetic_atlas(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n real MNIST digits (the bundled subset, repeated past its 10,000) and made-up 2-D coordinates:
    one Gaussian cluster per class on a circle. Returns xy (n, 2) float32, labels (n,), images (n, 1, 28, 28) uint8."""
    from trainer.data import load_dataset

    data = load_dataset("mnist", image_size=28, channels=1)
    images = np.concatenate([data.train_x, data.test_x])
    labels = np.concatenate([data.train_y, data.test_y]).astype(np.int64)
    picks = np.arange(n) % len(images)
    rng = np.random.default_rng(seed)
    angle = 2 * np.pi * labels[picks] / max(1, len(data.class_names))
    centres = CLUSTER_RADIUS * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    xy = (centres + rng.normal(scale=CLUSTER_SPREAD, size=(n, 2))).astype(np.float32)
    return xy, labels[picks], np.ascontiguousarray(images[picks], dtype=np.uint8)


def write_harness(folder: Path, args: dict[str, Any]) -> Path:
    """The harness page, the component's arguments (bytes ones as NAME.bin) and a link to the frontend, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in BYTES_ARGS:
        (folder / f"{name}.bin").write_bytes(args[name])
    (folder / "args.json").write_text(json.dumps({k: v for k, v in args.items() if k not in BYTES_ARGS}))
    (folder / "harness.html").write_text(HARNESS_HTML % {"width": FRAME_WIDTH, "height": FRAME_HEIGHT, "bytes_args": json.dumps(list(BYTES_ARGS))})
    link = folder / "component"
    if not link.exists():
        link.symlink_to(FRONTEND_DIR, target_is_directory=True)
    return folder / "harness.html"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def harness_server(folder: Path) -> Iterator[str]:
    """Serve `folder` on a free 127.0.0.1 port from a thread; yields the harness page's URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/harness.html"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def open_harness(page, url: str):
    """Load the harness and wait until the sheet is a texture; returns the canvas locator inside the iframe."""
    page.goto(url)
    component = page.frame_locator("#component")
    component.locator("#gl[data-ready='1']").wait_for(timeout=READY_MS)
    return component.locator("#gl")


def descendants_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process's descendants that are still running (Chromium's
    processes under Playwright's driver), from /proc; 0.0 where there is no /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        parent[pid] = int(fields[1])  # after "pid (comm)": state, ppid, ...; utime and stime are fields 14 and 15
        cpu[pid] = (int(fields[11]) + int(fields[12])) / ticks
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - mine
        mine |= frontier
    return sum(cpu[pid] for pid in mine)


def frames(canvas) -> int:
    return int(canvas.get_attribute("data-frames") or 0)


def pan_and_zoom(page, canvas, seconds: float) -> tuple[int, float]:
    """Alternate drags (pan) and wheel notches (zoom in, then out) over the canvas for `seconds`; (frames drawn, seconds)."""
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    start_frames, t0 = frames(canvas), time.perf_counter()
    sign = 1
    while time.perf_counter() - t0 < seconds:
        page.mouse.move(cx, cy)
        page.mouse.down()
        page.mouse.move(cx + sign * DRAG_PX, cy + sign * DRAG_PX / 2, steps=DRAG_STEPS)  # one call, DRAG_STEPS mouse moves
        page.mouse.up()
        for delta in [-WHEEL_DELTA] * WHEEL_STEPS + [WHEEL_DELTA] * WHEEL_STEPS:
            page.mouse.wheel(0, delta)
        sign = -sign
    page.wait_for_timeout(100)  # the last requested frame
    return frames(canvas) - start_frames, time.perf_counter() - t0


IN_PAGE_MOTION = """([seconds, dragSteps, dragPx, wheelSteps, wheelDelta]) => new Promise((done) => {
  // the same motion as pan_and_zoom, but as synthetic events dispatched by the page, one per animation frame
  const canvas = document.getElementById("gl"), r = canvas.getBoundingClientRect();
  const cx = r.left + r.width / 2, cy = r.top + r.height / 2, pointer = { pointerId: 1, button: 0, bubbles: true, cancelable: true };
  const events = [];
  for (const sign of [1, -1]) {
    events.push(["pointerdown", 0, 0]);
    for (let k = 1; k <= dragSteps; k++) events.push(["pointermove", sign * dragPx * k / dragSteps, sign * dragPx / 2 * k / dragSteps]);
    events.push(["pointerup", sign * dragPx, sign * dragPx / 2]);
    for (let k = 0; k < wheelSteps; k++) events.push(["wheel", -wheelDelta]);
    for (let k = 0; k < wheelSteps; k++) events.push(["wheel", wheelDelta]);
  }
  const start = Number(canvas.dataset.frames), t0 = performance.now();
  let k = 0;
  function step() {
    const t = performance.now();
    if (t - t0 >= seconds * 1000) { done([Number(canvas.dataset.frames) - start, (t - t0) / 1000]); return; }
    const [type, a, b] = events[k++ % events.length];
    if (type === "wheel") canvas.dispatchEvent(new WheelEvent("wheel", { deltaY: a, clientX: cx, clientY: cy, bubbles: true, cancelable: true }));
    else canvas.dispatchEvent(new PointerEvent(type, Object.assign({ clientX: cx + a, clientY: cy + b }, pointer)));
    requestAnimationFrame(step);
  }
  requestAnimationFrame(step);
})"""


def in_page_motion(page, seconds: float) -> tuple[int, float]:
    """pan_and_zoom's drags and wheel notches dispatched by the page itself, one event per animation frame: the
    rendering alone, without Playwright's round trip per event (each waits for the browser's acknowledgement)."""
    frame = next(f for f in page.frames if f.url.endswith("component/index.html"))
    drawn, elapsed = frame.evaluate(IN_PAGE_MOTION, [seconds, DRAG_STEPS, DRAG_PX, WHEEL_STEPS, WHEEL_DELTA])
    return int(drawn), float(elapsed)


def measure(points: int, seconds: float) -> dict[str, Any]:
    """Frames per second while panning and zooming `points` thumbnails, and the frames drawn while idle."""
    from playwright.sync_api import sync_playwright

    xy, labels, images = synthetic_atlas(points)
    png, grid = sprite_sheet(images)
    args = component_args(xy, labels, png, grid, [str(c) for c in range(10)])
    with tempfile.TemporaryDirectory(prefix="bench-sprites-") as tmp, harness_server(Path(tmp)) as url:
        write_harness(Path(tmp), args)
        with sync_playwright() as pw:
            browser = launch_chromium(pw)
            try:
                page = browser.new_page(viewport=VIEWPORT)
                canvas = open_harness(page, url)
                renderer = canvas.get_attribute("data-renderer")
                gl = canvas.get_attribute("data-gl")
                pan_and_zoom(page, canvas, min(1.0, seconds))  # warm-up: shader and texture caches
                cpu0 = descendants_cpu_s()
                drawn, elapsed = pan_and_zoom(page, canvas, seconds)
                cpu = descendants_cpu_s() - cpu0
                page_drawn, page_elapsed = in_page_motion(page, seconds)
                idle_before = frames(canvas)
                page.wait_for_timeout(1000)
                idle = frames(canvas) - idle_before
            finally:
                browser.close()
    return {"points": points, "sheet_bytes": len(png), "sheet_px": f"{grid.width}x{grid.height}", "frames": drawn, "seconds": elapsed,
            "fps": drawn / elapsed, "idle_frames_per_s": idle, "cpu_s": cpu, "cpu_ms_per_frame": 1e3 * cpu / max(1, drawn),
            "in_page_fps": page_drawn / page_elapsed, "gl": gl, "renderer": renderer, "load": os.getloadavg()}


def goal(fps: float) -> str:
    """Issue 13's goal beside a frame rate: 10,000 thumbnails pan and zoom at GOAL_FPS or more."""
    return f"goal >= {GOAL_FPS}: {'met' if fps >= GOAL_FPS else 'missed'}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=DEFAULT_POINTS)
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS)
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"\nSprite scatter: skipped, {CHROMIUM} is not installed (apt-get install chromium)")
        return {}
    r = measure(args.points, args.seconds)
    print(f"\nSprite scatter, {r['points']:,} thumbnails ({r['sheet_px']} px sheet, {r['sheet_bytes'] / 1e6:.2f} MB PNG), "
          f"Chromium {r['gl']} on {r['renderer']}:")
    print(f"  pan + zoom for {r['seconds']:.1f} s: {r['frames']} frames, {r['fps']:.1f} fps ({goal(r['fps'])}); "
          f"idle: {r['idle_frames_per_s']} frames in 1 s; load average {r['load'][0]:.2f}")
    print(f"  Chromium used {r['cpu_s']:.1f} CPU s meanwhile ({r['cpu_ms_per_frame']:.0f} CPU ms a frame, all its processes)")
    print(f"  the same pan + zoom dispatched inside the page (one event per animation frame, no Playwright round trips): "
          f"{r['in_page_fps']:.1f} fps ({goal(r['in_page_fps'])})")
    return r


if __name__ == "__main__":
    main()
