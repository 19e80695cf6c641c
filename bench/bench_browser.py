"""Browser latency: from releasing a latent slider to the new decoded digit on screen, in real Chromium.

    .venv/bin/python -m bench.bench_browser                       # the bundled runs in checkpoints/
    .venv/bin/python -m bench.bench_browser --checkpoints-dir DIR --moves 30

Starts `streamlit run app/main.py` on a free loopback port, opens the Explore page in Debian's Chromium
(Playwright, never its own browser download), and for each move drags the first latent slider's thumb, lets go, and waits, inside the page, for the decoded image's src to change. Prints median and p95.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from trainer.paths import DEFAULT_CHECKPOINTS_DIR, PROJECT_ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_S = 45.0
DECODED_IMAGE = "[data-testid='stImage']"
DECODED_CAPTION = "Decoded z"
DEFAULT_MOVES = 25
WAIT_MS = 30_000
DRAG_PX = 25  # each move drags the thumb this far, alternately right and left


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


def decoded_image(page):
    return page.locator(DECODED_IMAGE).filter(has_text=DECODED_CAPTION).locator("img").first


def thumb_position(slider) -> tuple[float, float]:
    """Page coordinates of the centre of the slider's visible thumb (the hidden range input's grandparent)."""
    box = slider.locator("xpath=../..").bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def measure(url: str, moves: int) -> list[float]:
    """Milliseconds from releasing a drag of slider z0's thumb to a new decoded image src in the DOM."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            page.goto(url)
            slider = page.get_by_role("slider", name="z0")
            slider.wait_for()
            image = decoded_image(page)
            image.wait_for()
            page.wait_for_timeout(2000)  # let the first render settle
            times = []
            for i in range(moves):
                before = image.get_attribute("src")
                x, y = thumb_position(slider)
                page.mouse.move(x, y)
                page.mouse.down()
                page.mouse.move(x + (DRAG_PX if i % 2 == 0 else -DRAG_PX), y, steps=3)
                t0 = time.perf_counter()  # the user lets go of the slider
                page.mouse.up()
                page.wait_for_function(
                    "([sel, cap, prev]) => { const el = [...document.querySelectorAll(sel)].find(e => e.innerText.includes(cap));"
                    " const img = el && el.querySelector('img'); return img && img.complete && img.src !== prev; }",
                    arg=[DECODED_IMAGE, DECODED_CAPTION, before], polling="raf",
                )
                times.append((time.perf_counter() - t0) * 1e3)
                page.wait_for_timeout(200)
            return times
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints-dir", type=Path, default=DEFAULT_CHECKPOINTS_DIR)
    parser.add_argument("--moves", type=int, default=DEFAULT_MOVES)
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"\nBrowser latency: skipped, {CHROMIUM} is not installed (apt-get install chromium)")
        return {}
    with streamlit_server(args.checkpoints_dir) as url:
        times = measure(url, args.moves)
    ordered = sorted(times)
    result = {"median_ms": statistics.median(times), "p95_ms": ordered[max(0, int(round(0.95 * len(ordered))) - 1)], "moves": len(times)}
    print(f"\nBrowser slider-to-image latency, Chromium + Playwright, {len(times)} moves: "
          f"median {result['median_ms']:.0f} ms, p95 {result['p95_ms']:.0f} ms")
    return result


if __name__ == "__main__":
    main()
