"""Denormals: seconds per epoch and the final test loss of the MLP 784-400-20 with and without flushing them to zero.

    .venv/bin/python -m bench.bench_denormal                       # seeds 0-5, 3 epochs each, both settings
    .venv/bin/python -m bench.bench_denormal --seeds 3 --epochs 5 --threads 2

Every (seed, setting) run is a fresh process, as the trainer is: torch.set_flush_denormal is per thread and
inherited by the threads started later, so it is set before torch does any work (toggling it in a running
process would leave the intra-op threads as they were). The two settings alternate seed by seed (flushed
first for even seeds, kept first for odd ones), so a load that changes during the run hits both alike.
An epoch is what `fit` times: train_epoch plus the test pass (Trainer.evaluate); batch 128, Adam 1e-3,
the bundled MNIST subset (8,000 / 2,000 digits). Medians over the epochs after the first.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from bench import timing
from trainer.paths import PROJECT_ROOT

BATCH_SIZE = 128
LR = 1e-3
SETTINGS = ("flushed", "kept")


def worker(seed: int, epochs: int, flush: bool, threads: int | None) -> dict[str, Any]:
    """One run in this process: flush (or not) before any torch work, then `epochs` epochs; seconds and test losses."""
    import torch

    supported = torch.set_flush_denormal(True) if flush else None  # None: not asked
    if threads:
        torch.set_num_threads(threads)
    from models import CLASSIC_MLP_HIDDEN_DIM, ModelConfig
    from trainer.compat import denormals_flushed
    from trainer.config import TrainConfig
    from trainer.data import load_dataset
    from trainer.train import Trainer

    data = load_dataset("mnist")
    trainer = Trainer(ModelConfig(arch="mlp", latent_dim=20, hidden_dim=CLASSIC_MLP_HIDDEN_DIM),
                      TrainConfig(batch_size=BATCH_SIZE, lr=LR, epochs=epochs, seed=seed), data)
    seconds, losses = [], []
    for _ in range(epochs):
        t0 = time.perf_counter()
        terms = trainer.train_epoch()
        trainer.epoch += 1
        losses.append(trainer.evaluate(terms["beta"]).loss)
        seconds.append(time.perf_counter() - t0)
    return {"seed": seed, "setting": SETTINGS[0] if flush else SETTINGS[1], "supported": supported, "flushing": denormals_flushed(),
            "threads": torch.get_num_threads(), "seconds": seconds, "test_loss": losses}


def run_one(seed: int, epochs: int, flush: bool, threads: int | None) -> dict[str, Any]:
    """worker() in a fresh Python process; its JSON line."""
    cmd = [sys.executable, "-m", "bench.bench_denormal", "--worker", "--seeds", str(seed), "--epochs", str(epochs)]
    cmd += (["--flush"] if flush else []) + (["--threads", str(threads)] if threads else [])
    out = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


_median = timing.median_after_first


def seeds_arg(text: str) -> list[int]:
    """'0-5' or '0,3,4' -> a list of seeds."""
    if "-" in text:
        lo, hi = text.split("-", 1)
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=seeds_arg, default=seeds_arg("0-5"), help="'0-5' or '0,3' (default 0-5)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's, e.g. OMP_NUM_THREADS)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--flush", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        out = worker(args.seeds[0], args.epochs, args.flush, args.threads)
        print(json.dumps(out))
        return out
    load = os.getloadavg()
    print(f"MLP 784-400-20, batch {BATCH_SIZE}, Adam {LR}, {args.epochs} epochs per run, seeds {args.seeds}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        for flush in ((True, False) if seed % 2 == 0 else (False, True)):
            runs.append(run_one(seed, args.epochs, flush, args.threads))
            r = runs[-1]
            print(f"  seed {seed} {r['setting']:<8} {_median(r['seconds']):7.3f} s/epoch  test loss {r['test_loss'][-1]:.2f}"
                  f"  (threads {r['threads']}, flushing {r['flushing']})", flush=True)
    by = {(r["seed"], r["setting"]): r for r in runs}
    print(f"\n{'seed':>4}  {'flushed s/epoch':>15}  {'kept s/epoch':>12}  {'kept / flushed':>14}  test loss flushed / kept  same")
    same_all = True
    for seed in args.seeds:
        f, k = by[(seed, "flushed")], by[(seed, "kept")]
        same = f"{f['test_loss'][-1]:.2f}" == f"{k['test_loss'][-1]:.2f}"
        same_all &= same
        print(f"{seed:>4}  {_median(f['seconds']):15.3f}  {_median(k['seconds']):12.3f}  {_median(k['seconds']) / _median(f['seconds']):14.2f}"
              f"  {f['test_loss'][-1]:.2f} / {k['test_loss'][-1]:.2f}  {'yes' if same else 'NO'}"
              f"{' (bitwise)' if f['test_loss'] == k['test_loss'] else ''}")
    med = {s: statistics.median(_median(by[(seed, s)]["seconds"]) for seed in args.seeds) for s in SETTINGS}
    after = os.getloadavg()
    print(f"median over seeds: flushed {med['flushed']:.3f} s/epoch, kept {med['kept']:.3f} s/epoch; "
          f"test losses the same to 0.01 for every seed: {'yes' if same_all else 'no'}")
    print(f"load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, after {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")
    out = {"runs": runs, "median_s_per_epoch": med, "same_test_loss": same_all, "load_before": load, "load_after": after}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
