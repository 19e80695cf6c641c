"""How long `list_runs` (the app's run picker) takes over a checkpoints folder of many runs.

    .venv/bin/python -m bench.bench_list                 # 200 copies of a tiny freshly trained run
    .venv/bin/python -m bench.bench_list --runs 1000     # more
    .venv/bin/python -m bench.bench_list --dir checkpoints   # an existing folder, as it is

Listing reads only config.json, manifest.json and status.json of each run (never weights, optimiser or
latents); the figure printed is the median over repeats of a cold-ish listing (the OS file cache is warm).
The target is under 2 s for 200 runs.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from trainer.runs import list_runs

DEFAULT_RUNS = 200
REPEATS = 5
TARGET_S = 2.0
TARGET_RUNS = 200


def make_template(workdir: Path) -> Path:
    """One tiny real run (2 epochs of a small slice of the bundled MNIST subset)."""
    import torch

    from models import ModelConfig
    from trainer.config import TrainConfig
    from trainer.data import load_dataset
    from trainer.train import fit

    torch.set_num_threads(1)
    full = load_dataset("mnist")
    small = full.head(256, 64)
    run_dir = workdir / "template"
    fit(ModelConfig(latent_dim=2, widths=(4, 8, 8), hidden_dim=0), TrainConfig(epochs=2, batch_size=64, atlas_size=64), small, run_dir, progress="none")
    return run_dir


def populate(root: Path, template: Path, n: int) -> None:
    for i in range(n):
        shutil.copytree(template, root / f"run-{i:04d}")


def time_listing(root: Path, repeats: int = REPEATS) -> tuple[float, int, int]:
    """Median seconds of list_runs(root), the number of runs listed and how many are broken."""
    times, summaries = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        summaries = list_runs(root)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(summaries), sum(1 for s in summaries if s.error)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_list", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help=f"copies of a tiny run to list (default {DEFAULT_RUNS})")
    parser.add_argument("--dir", type=Path, default=None, help="list this existing checkpoints folder instead")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args(argv)
    if args.dir is not None:
        seconds, n, broken = time_listing(args.dir, args.repeats)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            template = make_template(work)
            root = work / "checkpoints"
            root.mkdir()
            populate(root, template, args.runs)
            seconds, n, broken = time_listing(root, args.repeats)
    per_run_ms = seconds / max(n, 1) * 1e3
    print(f"list_runs: {n} runs ({broken} broken) in {seconds * 1e3:.0f} ms median of {args.repeats} ({per_run_ms:.2f} ms per run)")
    if n >= TARGET_RUNS:
        scaled = seconds * TARGET_RUNS / n
        verdict = "within" if scaled < TARGET_S else "OVER"
        print(f"  {verdict} the {TARGET_S:.0f} s target for {TARGET_RUNS} runs ({scaled:.2f} s scaled to {TARGET_RUNS})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
