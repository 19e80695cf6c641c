"""Browser latency of the live latent sliders, in real Chromium: frames decoded while a thumb is dragged, and
the lag from releasing it to the scatter marker.

    .venv/bin/python -m bench.bench_browser                       # every run in checkpoints/ (the bundled runs)
    .venv/bin/python -m bench.bench_browser --checkpoints-dir DIR --runs NAME NAME --seconds 2 --releases 10

Starts `streamlit run app/main.py` on a free loopback port, opens the Explore page in Debian's Chromium
(Playwright, never its own browser download), waits for the latent-slider component to decode in the browser,
and for each run (picked in the sidebar): drags the first slider's thumb back and forth for --seconds
(frames per second drawn during the drag; each frame's lag behind the thumb event it shows), then
--releases short drags, each timed from letting go to the scatter's "slider point" marker moving. Medians.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from trainer.paths import DEFAULT_CHECKPOINTS_DIR, PROJECT_ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_S = 45.0
LIVE_FRAME = "iframe[title$='latent_sliders']"  # the latent-slider component (app/components/latent_sliders)
SLIDER_INPUT = ".sliders input[type=range]"  # its sliders, highest KL first
MARKER_NAME = "slider point"  # the scatter's mark of the slider point: a layout shape (app.plots.cross_shapes), or a trace
RUN_PICKER = "[data-testid='stSidebar'] [data-testid='stSelectbox']"
RUN_LABEL_SEPARATOR = " — "  # the run picker's labels: "<run name> — <description>" (app.sidebar.run_label)
PICK_ATTEMPTS = 3
SWITCH_MS = 30_000  # per pick, until the page's heading names the run (a run's first view loads it and its decoder)
DEFAULT_SECONDS = 2.0
# Issue 13's goals, printed beside the figures: decoded frames per second during a held drag, each frame's lag behind
# the thumb event it shows (p95), release to the scatter marker (median).
GOAL_FPS, GOAL_LAG_MS, GOAL_RELEASE_MS = 20, 50, 300
DEFAULT_RELEASES = 10
WAIT_MS = 60_000  # the first page load compiles onnxruntime's WASM; the machine may be busy
DRAG_PX = 90  # amplitude of the back-and-forth drag
DRAG_PERIOD_MOVES = 16  # mouse moves per swing (about 2 rad per 8 moves)
MOVE_PAUSE_MS = 5  # between mouse moves: a steady stream of input events
RELEASE_PX = 30  # each timed release drags the thumb this far, alternately right and left
SETTLE_MS, POLL_MS = 300, 25  # a timed release starts once the marker has not moved for SETTLE_MS
MARKER_JS = f"""() => {{
  for (const el of document.querySelectorAll('.js-plotly-plot')) {{
    const s = ((el._fullLayout || {{}}).shapes || []).find((s) => s.name === {MARKER_NAME!r});
    if (s) return [Number(s.xanchor), Number(s.yanchor)];
    const t = (el._fullData || []).find((t) => t.name === {MARKER_NAME!r});
    if (t && t.x && t.x.length) return [Number(t.x[0]), Number(t.y[0])];
  }}
  return null;
}}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(checkpoints: Path, log_path: Path | None = None) -> Iterator[str]:
    """A headless `streamlit run app/main.py` over `checkpoints` on 127.0.0.1; yields its URL, kills its session after."""
    port = free_port()
    argv = [
        sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.headless", "true", "--server.port", str(port),
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none", "--", "--checkpoints-dir", str(checkpoints),
    ]
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(argv, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {proc.returncode}" + (f"; see {log_path}" if log_path else ""))
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not answer on {url} within {SERVER_START_S:.0f} s")
            time.sleep(0.3)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if log is not subprocess.DEVNULL:
            log.close()


def launch_chromium(pw):
    return pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


@contextlib.contextmanager
def chromium_page(viewport: dict[str, int], timeout_ms: int) -> Iterator:
    """A page of a fresh headless Chromium whose waits last up to timeout_ms; the browser is closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport=viewport)
            page.set_default_timeout(timeout_ms)
            yield page
        finally:
            browser.close()


@dataclass
class Drag:
    """One held drag of a slider thumb: decoded frames drawn during it and each one's lag behind its thumb event."""

    frames: int
    seconds: float
    moves: int
    lags_ms: list[float]

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def live_sliders(page, timeout_ms: int = WAIT_MS):
    """The live slider component's frame, once it is shown (not the unseen probe) and has drawn a decoded image."""
    page.wait_for_function(f"() => {{ const f = document.querySelector({LIVE_FRAME!r}); return f && f.getBoundingClientRect().height > 0; }}",
                           timeout=timeout_ms)
    frame = page.locator(LIVE_FRAME).element_handle().content_frame()
    frame.wait_for_function("() => Number(document.querySelector('canvas#digit').dataset.frames) > 0", timeout=timeout_ms)
    return frame


def frames_drawn(frame) -> int:
    return int(frame.evaluate("() => window.latentSliders.frames"))


def marker_xy(page) -> tuple[float, float] | None:
    """The scatter's slider-point marker, as plotted."""
    xy = page.evaluate(MARKER_JS)
    return None if xy is None else (xy[0], xy[1])


def thumb_xy(frame, index: int = 0) -> tuple[float, float]:
    """Page coordinates of slider `index`'s thumb (range inputs put it at value's share of the track)."""
    slider = frame.locator(SLIDER_INPUT).nth(index)
    box = slider.bounding_box()
    lo, hi, value = (float(slider.get_attribute("min")), float(slider.get_attribute("max")), float(slider.input_value()))
    share = (value - lo) / (hi - lo) if hi > lo else 0.5
    thumb = box["height"]  # Chromium's thumb is about as wide as the input is tall
    return box["x"] + thumb / 2 + share * (box["width"] - thumb), box["y"] + box["height"] / 2


def drag(page, frame, *, seconds: float | None = None, moves: int | None = None, index: int = 0) -> Drag:
    """Press slider `index`'s thumb, swing it for `seconds` (or `moves` mouse moves) and stop half a swing to the right;
    the button stays down."""
    x0, y = thumb_xy(frame, index)
    page.mouse.move(x0, y)
    page.mouse.down()
    before = frames_drawn(frame)
    t0 = time.perf_counter()
    n = 0
    while (seconds is not None and time.perf_counter() - t0 < seconds) or (moves is not None and n < moves):
        n += 1
        page.mouse.move(x0 + DRAG_PX * math.sin(2 * math.pi * n / DRAG_PERIOD_MOVES), y)
        page.wait_for_timeout(MOVE_PAUSE_MS)
    page.mouse.move(x0 + DRAG_PX / 2, y)  # end away from the start, so letting go changes z
    page.wait_for_timeout(MOVE_PAUSE_MS)
    elapsed = time.perf_counter() - t0
    frames = frames_drawn(frame) - before
    lags = frame.evaluate("(k) => k > 0 ? window.latentSliders.lags.slice(-k) : []", frames)
    return Drag(frames, elapsed, n, [float(v) for v in lags])


def settled_marker(page, quiet_ms: int = SETTLE_MS) -> tuple[float, float] | None:
    """The scatter marker once it has stayed put for `quiet_ms` (an update still on its way would end a timing early)."""
    xy, since = marker_xy(page), time.perf_counter()
    while (time.perf_counter() - since) * 1e3 < quiet_ms:
        page.wait_for_timeout(POLL_MS)
        now = marker_xy(page)
        if now != xy:
            xy, since = now, time.perf_counter()
    return xy


def release_to_marker_ms(page, frame, step: int, index: int = 0) -> float:
    """Drag slider `index` a little, let go, and time (ms) until the scatter marker has moved (from where it had settled)."""
    before = settled_marker(page)
    x0, y = thumb_xy(frame, index)
    page.mouse.move(x0, y)
    page.mouse.down()
    page.mouse.move(x0 + (RELEASE_PX if step % 2 == 0 else -RELEASE_PX), y, steps=4)
    t0 = time.perf_counter()
    page.mouse.up()
    page.wait_for_function(f"(prev) => {{ const m = ({MARKER_JS})(); return m && (m[0] !== prev[0] || m[1] !== prev[1]); }}",
                           arg=list(before or (None, None)), polling="raf")
    return (time.perf_counter() - t0) * 1e3


def shown_run(page) -> str | None:
    """The name of the run the Explore page shows (its heading starts with it)."""
    return page.evaluate("() => { const h = [...document.querySelectorAll('h3')].find((h) => h.innerText.includes(' · '));"
                         " return h ? h.innerText.split(' · ')[0] : null; }")


def _run_option(page, name: str):
    """The open run picker's option for run `name` exactly (labels are "<name> — <description>"; a prefix such as
    mnist-mlp-vae-z20 of mnist-mlp-vae-z20-binarized must not pick the longer name)."""
    return page.get_by_role("option").filter(has_text=re.compile("^" + re.escape(name + RUN_LABEL_SEPARATOR)))


def _pick_run(page, name: str) -> None:
    """Open the sidebar's run picker, narrow it to `name` by typing and click that run's own option."""
    page.keyboard.press("Escape")  # a list left open by a failed attempt
    page.locator(RUN_PICKER).filter(has_text="Run").click()
    page.get_by_role("option").first.wait_for()  # typing before the list opens is lost
    page.keyboard.type(name)
    option = _run_option(page, name).first
    option.wait_for()
    option.click()


def choose_run(page, frame, name: str, attempts: int = PICK_ATTEMPTS) -> None:
    """Pick run `name` in the sidebar and wait until the live sliders have drawn one of its images.

    The run is clicked by its exact label; if the page does not show it within SWITCH_MS (a click lost on a busy
    machine, a rerun that swallowed it), the pick is repeated, up to `attempts` times in all."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    if shown_run(page) == name:
        return
    previous = frame.locator("canvas#digit").get_attribute("data-run-key")
    for attempt in range(1, attempts + 1):
        _pick_run(page, name)
        try:
            page.wait_for_function("(name) => [...document.querySelectorAll('h3')].some((h) => h.innerText.startsWith(name + ' · '))",
                                   arg=name, timeout=SWITCH_MS)
            break
        except PlaywrightTimeout:
            if attempt == attempts:
                raise RuntimeError(f"the Explore page did not switch to run {name} after {attempts} picks (it shows {shown_run(page)})") from None
    frame.wait_for_function("(prev) => { const c = document.querySelector('canvas#digit'); return c.dataset.runKey && c.dataset.runKey !== prev; }",
                            arg=previous)


def measure(url: str, runs: list[str], seconds: float, releases: int) -> dict[str, dict[str, float]]:
    """Per run: fps during a `seconds` drag, the frames' median and p95 lag, and the median release-to-marker ms."""
    from playwright.sync_api import sync_playwright

    results: dict[str, dict[str, float]] = {}
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            page.goto(url)
            frame = live_sliders(page)
            for name in runs:
                choose_run(page, frame, name)
                start = settled_marker(page)
                held = drag(page, frame, seconds=seconds)
                page.mouse.up()  # the drag ends away from its start: this release moves the marker too
                page.wait_for_function(f"(prev) => {{ const m = ({MARKER_JS})(); return m && (m[0] !== prev[0] || m[1] !== prev[1]); }}",
                                       arg=list(start or (None, None)))
                lags = sorted(held.lags_ms) or [float("nan")]
                times = [release_to_marker_ms(page, frame, i) for i in range(releases)]
                results[name] = {"fps": held.fps, "frames": held.frames, "moves": held.moves, "lag_median_ms": statistics.median(lags),
                                 "lag_p95_ms": lags[max(0, int(round(0.95 * len(lags))) - 1)], "release_median_ms": statistics.median(times)}
        finally:
            browser.close()
    return results


def goals_line(r: dict[str, float]) -> str:
    """Which of issue 13's goals one run's figures meet: "met", or the ones missed."""
    missed = [what for what, ok in (("frames/s", r["fps"] >= GOAL_FPS), ("frame lag", r["lag_p95_ms"] <= GOAL_LAG_MS),
                                    ("release", r["release_median_ms"] <= GOAL_RELEASE_MS)) if not ok]
    return "met" if not missed else "missed: " + ", ".join(missed)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints-dir", type=Path, default=DEFAULT_CHECKPOINTS_DIR)
    parser.add_argument("--runs", nargs="+", help="run folder names (default: every loadable run in the folder)")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="length of the held drag")
    parser.add_argument("--releases", type=int, default=DEFAULT_RELEASES, help="timed releases per run")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"\nBrowser latency: skipped, {CHROMIUM} is not installed (apt-get install chromium)")
        return {}
    from trainer.runs import list_runs

    runs = args.runs or [s.name for s in list_runs(args.checkpoints_dir) if s.error is None]
    with streamlit_server(args.checkpoints_dir) as url:
        results = measure(url, runs, args.seconds, args.releases)
    load = os.getloadavg()[0]
    print(f"\nLive latent sliders in Chromium + Playwright ({args.seconds:g} s drag; {args.releases} releases per run; medians; "
          f"load average {load:.2f}):")
    print(f"  {'run':<28} {'frames/s':>9} {'frame lag':>10} {'p95':>7} {'release->marker':>16}  goals")
    print(f"  {'goal (issue 13)':<28} {'>= ' + str(GOAL_FPS):>9} {'':>10} {'<= ' + str(GOAL_LAG_MS) + 'ms':>7} "
          f"{'<= ' + str(GOAL_RELEASE_MS) + 'ms':>16}")
    for name, r in results.items():
        print(f"  {name:<28} {r['fps']:>9.1f} {r['lag_median_ms']:>8.1f}ms {r['lag_p95_ms']:>5.1f}ms {r['release_median_ms']:>14.0f}ms  "
              f"{goals_line(r)}")
    return results


if __name__ == "__main__":
    main()
