"""How big a run folder grows with epochs: an MLP latent-20 VAE trained to 500 epochs, measured, extrapolated to 5,000.

    .venv/bin/python -m bench.bench_growth                          # 512 training images, sizes at 50/100/250/500 epochs
    .venv/bin/python -m bench.bench_growth --points 5,10 --train-images 128 --extrapolate 100   # a smoke run

The run (the classic 784-400-20 MLP VAE, batch 128, the default 2,000-image atlas) trains on the first
--train-images images of the bundled MNIST subset; it is trained to each point in turn with --resume, so every
figure is the folder of a finished run of that many epochs (one epoch set). The folder's size depends on the
epochs, the model and the latent and atlas sizes, not on the number of training images.

Extrapolation (E epochs): size(E) = fixed + set + h * E + s * S(E), where
  fixed = config, atlas images, manifest, status (measured), set = weights + optimiser state (measured, constant),
  h = history bytes per epoch (measured at the last point), S(E) = len(latent_snapshots(range(E + 1), E)) the
  number of atlas-latent snapshots kept, s = latents bytes per snapshot (measured at the last point).
While training, the previous epoch's set is kept too: about set + h * E + s * S(E) more at the peak.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from models import CLASSIC_MLP_HIDDEN_DIM, ModelConfig
from trainer.config import TrainConfig
from trainer.data import load_dataset
from trainer.runs import MANIFEST_FILE, epoch_file, latent_snapshots
from trainer.train import fit

MODEL = ModelConfig(arch="mlp", latent_dim=20, hidden_dim=CLASSIC_MLP_HIDDEN_DIM)
BATCH_SIZE = 128
DEFAULT_POINTS = (50, 100, 250, 500)
DEFAULT_TRAIN_IMAGES = 512
DEFAULT_EXTRAPOLATE = 5000
MB = 1e6


def folder_sizes(run_dir: Path) -> dict[str, int]:
    """Bytes of the run folder by kind: each epoch file's stem (weights, optim, history, latents), and 'fixed' for the rest."""
    sizes: dict[str, int] = {}
    for p in run_dir.iterdir():
        if p.is_file() and not p.is_symlink():
            parts = epoch_file(p.name)
            key = parts.stem if parts is not None else "fixed"
            sizes[key] = sizes.get(key, 0) + p.stat().st_size
    return sizes


def snapshots(epochs: int) -> int:
    """How many atlas-latent snapshots a run of `epochs` epochs keeps."""
    return len(latent_snapshots(list(range(epochs + 1)), epochs))


def extrapolate(sizes: dict[str, int], epochs: int, target: int) -> dict[str, float]:
    """The folder of a finished `target`-epoch run from one measured at `epochs` (see the module docstring)."""
    h = sizes["history"] / epochs
    s = sizes["latents"] / snapshots(epochs)
    fixed, weights = sizes["fixed"], sizes["weights"] + sizes["optim"]
    history, latents = h * target, s * snapshots(target)
    return {"fixed": fixed, "weights+optim": weights, "history": history, "latents": latents,
            "total": fixed + weights + history + latents, "peak while training": fixed + 2 * (weights + history + latents),
            "bytes per history row": h, "bytes per snapshot": s, "snapshots": snapshots(target)}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_growth", description=__doc__.splitlines()[0])
    ap.add_argument("--points", default=",".join(map(str, DEFAULT_POINTS)), help="epochs at which the folder is measured")
    ap.add_argument("--train-images", type=int, default=DEFAULT_TRAIN_IMAGES)
    ap.add_argument("--extrapolate", type=int, default=DEFAULT_EXTRAPOLATE)
    ap.add_argument("--dir", type=Path, default=None, help="where the run is written (default: a temporary folder)")
    args = ap.parse_args(argv)
    points = sorted(int(p) for p in args.points.split(","))

    full = load_dataset("mnist")
    data = dataclasses.replace(full, train_x=full.train_x[: args.train_images], train_y=full.train_y[: args.train_images])
    root = args.dir or Path(tempfile.mkdtemp(prefix="bench-growth-"))
    run_dir = root / "mlp-z20"
    print(f"MLP 784-{CLASSIC_MLP_HIDDEN_DIM}-{MODEL.latent_dim} VAE, batch {BATCH_SIZE}, atlas {TrainConfig().atlas_size} images, "
          f"{len(data.train_x)} training / {len(data.test_x)} test images ({data.source.get('kind', '?')}); torch threads from the environment "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); run in {run_dir}")
    print(f"{'epochs':>7} {'snapshots':>9} {'weights+optim':>14} {'history':>9} {'latents':>9} {'fixed':>7} {'total MB':>9} {'train s':>8}")
    measured: dict[int, dict[str, int]] = {}
    t_start = time.perf_counter()
    for i, epochs in enumerate(points):
        t0 = time.perf_counter()
        fit(MODEL, TrainConfig(epochs=epochs, batch_size=BATCH_SIZE, seed=0), data, run_dir, resume=i > 0, progress="none")
        seconds = time.perf_counter() - t0
        sizes = folder_sizes(run_dir)
        assert json.loads((run_dir / MANIFEST_FILE).read_text())["epoch"] == epochs
        measured[epochs] = sizes
        print(f"{epochs:>7} {snapshots(epochs):>9} {(sizes['weights'] + sizes['optim']) / MB:>14.2f} {sizes['history'] / MB:>9.3f} "
              f"{sizes['latents'] / MB:>9.2f} {sizes['fixed'] / MB:>7.2f} {sum(sizes.values()) / MB:>9.2f} {seconds:>8.1f}")
    last = points[-1]
    est = extrapolate(measured[last], last, args.extrapolate)
    print(f"\nExtrapolated from {last} epochs to {args.extrapolate}: size(E) = fixed + weights+optim + h*E + s*S(E), "
          f"h = {est['bytes per history row']:.0f} B/epoch, s = {est['bytes per snapshot'] / 1e3:.1f} kB/snapshot, S({args.extrapolate}) = {est['snapshots']}")
    for key in ("fixed", "weights+optim", "history", "latents", "total", "peak while training"):
        print(f"  {key:<20} {est[key] / MB:8.2f} MB")
    every_epoch = measured[last]["latents"] / snapshots(last) * (args.extrapolate + 1)
    print(f"  (latents of every epoch, as before thinning: {every_epoch / MB:.0f} MB)")
    print(f"\ntraining wall time {time.perf_counter() - t_start:.0f} s; uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
