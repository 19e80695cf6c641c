"""How fast the app serves a checkpoints folder of many runs: its first page and a rerun, through AppTest.

    .venv/bin/python -m bench.bench_many_runs                # 200 copies of a tiny freshly trained run
    .venv/bin/python -m bench.bench_many_runs --runs 500
    .venv/bin/python -m bench.bench_many_runs --dir checkpoints   # an existing folder, as it is

The sidebar labels every run from its summary (config, manifest, status) and loads only the selected run,
so the page costs one run load plus a listing, whatever the number of runs. Figures (seconds):
  - first page, cold process: the very first AppTest run (imports, plotly, the run load);
  - first page: a new session after clearing Streamlit's caches (listing + one run load + the Explore page),
    median of --repeats;
  - rerun: the same session rerun at once (the listing is cached for two seconds), median of --reruns;
  - rerun after the listing expired: the same, each after the listing's two-second cache has expired.
Targets for 200 runs: first page under 3 s, rerun under 0.5 s. The load average is printed with them: on a
shared machine it explains most of the spread.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from app.common import CHECKPOINTS_ENV
from trainer.paths import PROJECT_ROOT

from .bench_list import make_template, populate

DEFAULT_RUNS = 200
REPEATS = 5
RERUNS = 10
EXPIRED_RERUNS = 3
LISTING_TTL_S = 2.0  # app.common.cached_run_list's ttl
TIMEOUT_S = 120
TARGETS_S = {"first page": 3.0, "rerun": 0.5}
MAIN = PROJECT_ROOT / "app" / "main.py"


def _timed_run(at) -> float:
    t0 = time.perf_counter()
    at.run()
    seconds = time.perf_counter() - t0
    if at.exception:
        raise SystemExit(f"the app raised: {[e.value for e in at.exception]}")
    return seconds


def measure(root: Path, repeats: int, reruns: int) -> dict[str, float]:
    """Seconds of the first page (cold process, then median of fresh sessions) and of reruns (medians)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ[CHECKPOINTS_ENV] = str(root)
    cold = _timed_run(AppTest.from_file(str(MAIN), default_timeout=TIMEOUT_S))
    firsts = []
    for _ in range(repeats):
        st.cache_data.clear()
        st.cache_resource.clear()
        firsts.append(_timed_run(at := AppTest.from_file(str(MAIN), default_timeout=TIMEOUT_S)))
    again = [_timed_run(at) for _ in range(reruns)]
    expired = []
    for _ in range(EXPIRED_RERUNS):
        time.sleep(LISTING_TTL_S + 0.1)
        expired.append(_timed_run(at))
    return {
        "first page, cold process": cold,
        "first page": statistics.median(firsts),
        "rerun": statistics.median(again),
        "rerun after the listing expired": statistics.median(expired),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_many_runs", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help=f"copies of a tiny run (default {DEFAULT_RUNS})")
    parser.add_argument("--dir", type=Path, default=None, help="measure this existing checkpoints folder instead")
    parser.add_argument("--repeats", type=int, default=REPEATS, help=f"fresh sessions timed (default {REPEATS})")
    parser.add_argument("--reruns", type=int, default=RERUNS, help=f"reruns timed (default {RERUNS})")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.dir is not None:
        root, n = args.dir, None
        figures = measure(root, args.repeats, args.reruns)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            template = make_template(work)
            root = work / "checkpoints"
            root.mkdir()
            populate(root, template, args.runs)  # renamed copies: run-0000, run-0001, ...
            n = args.runs
            figures = measure(root, args.repeats, args.reruns)
    print(f"app with {n if n is not None else 'the runs of ' + str(root)} runs (AppTest, Explore page):")
    for name, seconds in figures.items():
        target = TARGETS_S.get(name)
        verdict = "" if target is None else f"  ({'within' if seconds < target else 'OVER'} the {target:g} s target)"
        print(f"  {name:<34} {seconds:6.3f} s{verdict}")
    print(f"  load average (1, 5, 15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
