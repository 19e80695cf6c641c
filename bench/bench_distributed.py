"""Scaling out: training images per second with 1 and N processes (torchrun + DDP) on this machine.

    .venv/bin/python -m bench.bench_distributed                 # MLP and conv, 1 and 2 CPU processes
    .venv/bin/python -m bench.bench_distributed --quick         # 2 epochs each: checks the script runs
    .venv/bin/python -m bench.bench_distributed --amp-compare   # on a CUDA machine: AMP off vs bf16, one GPU

Each job is the real CLI on the bundled MNIST subset at global batch 128: 1 process is plain
`python -m trainer`, N processes `torchrun --nproc-per-node N -m trainer` (gloo, 127.0.0.1). The figure
is the median over epochs after the first of the trainer's own `images_per_s` (training only, no test
pass), best of --repeats interleaved runs. CPU processes share the cores: each of N gets cores/N threads.

Denormal floats: as the MLP trains, some of its float32 values go subnormal and the CPU slows
down several-fold on them, at epochs that differ from run to run. By default the jobs flush them to
zero (torch.set_flush_denormal) so that the table measures scaling; --keep-denormals runs the
trainer exactly as `python -m trainer` does.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from bench.bench_browser import free_port
from trainer.paths import PROJECT_ROOT

BATCH_SIZE = 128
EPOCHS = 4
QUICK_EPOCHS = 2
REPEATS = 3
WARMUP_EPOCHS = 1  # left out of the median (allocations, caches, compilation)
CONFIGS = {
    "mlp": ["--model", "mlp", "--hidden-dim", "400", "--latent-dim", "20"],  # the classic 784-400-20 VAE
    "conv": ["--model", "conv", "--latent-dim", "20"],  # the default conv widths and hidden layer
}
GPU_AMP_MODES = ("off", "bf16")
# The trainer's CLI with subnormal floats flushed to zero (python -c CODE ARGS: sys.argv[1:] are the ARGS).
FLUSH_DENORMAL_MAIN = "import sys, torch; torch.set_flush_denormal(True); from trainer.cli import main; sys.exit(main(sys.argv[1:]))"


def launcher(nproc: int, flush_denormal: bool) -> list[str]:
    """The command prefix that runs the trainer in `nproc` processes."""
    trainer = [sys.executable, "-c", FLUSH_DENORMAL_MAIN] if flush_denormal else [sys.executable, "-m", "trainer"]
    if nproc == 1:
        return trainer
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
                "--master-port", str(free_port())]
    return [*torchrun, "--no-python", *trainer] if flush_denormal else [*torchrun, "-m", "trainer"]


def run_job(flags: Sequence[str], nproc: int, epochs: int, checkpoints: Path, name: str, flush_denormal: bool) -> list[dict[str, Any]]:
    """Train one run with the CLI; returns its per-epoch JSON rows."""
    cmd = [*launcher(nproc, flush_denormal), *flags, "--batch-size", str(BATCH_SIZE), "--epochs", str(epochs), "--atlas-size", "100",
           "--checkpoints-dir", str(checkpoints), "--run-name", name, "--progress", "json"]
    env = os.environ | {"PYTHONPATH": str(PROJECT_ROOT), "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def median_rate(rows: list[dict[str, Any]]) -> float:
    timed = rows[WARMUP_EPOCHS:] or rows
    return statistics.median(r["images_per_s"] for r in timed)


def scaling_table(configs: Sequence[str], nprocs: Sequence[int], epochs: int, device: str, flush_denormal: bool, repeats: int) -> list[dict[str, Any]]:
    """Each (config, processes) job `repeats` times, interleaved; the best repeat's median counts.

    Best-of because other work on a shared machine only ever slows a job down (a process with several
    threads most of all: its threads wait for the one that lost its core)."""
    rates: dict[tuple[str, int], list[float]] = {}
    losses: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-dist-") as tmp:
        for repeat in range(repeats):
            for config in configs:
                for nproc in nprocs:
                    rows = run_job([*CONFIGS[config], "--device", device], nproc, epochs, Path(tmp), f"{config}-{nproc}-{repeat}", flush_denormal)
                    rates.setdefault((config, nproc), []).append(median_rate(rows))
                    losses[(config, nproc)] = rows[-1]["test_loss"]
    results = []
    for config in configs:
        base = max(rates[(config, nprocs[0])])
        for nproc in nprocs:
            best = max(rates[(config, nproc)])
            spread = ", ".join(f"{r:.0f}" for r in rates[(config, nproc)])
            results.append({"config": config, "processes": nproc, "images_per_s": round(best), "speedup": round(best / base, 2),
                            "repeats": [round(r) for r in rates[(config, nproc)]], "test_loss": round(losses[(config, nproc)], 2)})
            print(f"  {config:<5} {nproc:>3} process(es)  {best:9.0f} images/s  x{best / base:4.2f}   "
                  f"(repeats: {spread}; test loss after {epochs} epochs {losses[(config, nproc)]:.2f})", flush=True)
    return results


def amp_commands(config: str = "conv") -> list[str]:
    flags = " ".join(CONFIGS[config])
    return [f"torchrun --nproc-per-node 1 -m trainer {flags} --batch-size {BATCH_SIZE} --epochs {EPOCHS} --device cuda "
            f"--amp {mode} --run-name amp-{mode} --progress json" for mode in GPU_AMP_MODES]


def amp_compare(epochs: int) -> list[dict[str, Any]]:
    """One GPU, conv config: float32 against bf16 autocast."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("--amp-compare needs a CUDA GPU; run the commands printed without it on a GPU machine")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-amp-") as tmp:
        for mode in GPU_AMP_MODES:
            rows = run_job([*CONFIGS["conv"], "--device", "cuda", "--amp", mode], 1, epochs, Path(tmp), f"amp-{mode}", flush_denormal=False)
            results.append({"amp": mode, "images_per_s": round(median_rate(rows)), "test_loss": round(rows[-1]["test_loss"], 2)})
            print(f"  conv, --amp {mode:<4}  {results[-1]['images_per_s']:9d} images/s  test loss {results[-1]['test_loss']:.2f}", flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EPOCHS} epochs each: checks the script runs")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated: mlp, conv")
    parser.add_argument("--nproc", default="1,2", help="comma-separated process counts (default 1,2)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda (one process per GPU)")
    parser.add_argument("--amp-compare", action="store_true", help="also time AMP off vs bf16 on one CUDA GPU")
    parser.add_argument("--repeats", type=int, default=REPEATS, help=f"runs of each job; the fastest counts (default {REPEATS})")
    parser.add_argument("--keep-denormals", action="store_true", help="run the CLI as is (subnormal floats slow the MLP down at random epochs)")
    args = parser.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown config(s) {', '.join(unknown)}: choose from {', '.join(CONFIGS)}")
    nprocs = [int(n) for n in args.nproc.split(",") if n]
    epochs = QUICK_EPOCHS if args.quick else EPOCHS
    print(f"global batch {BATCH_SIZE}, {epochs} epochs per job, median images/s over epochs {WARMUP_EPOCHS + 1}..{epochs}, best of the repeats; "
          f"{os.cpu_count()} CPU cores, device {args.device}, denormals {'kept' if args.keep_denormals else 'flushed to zero'}")
    repeats = 1 if args.quick else max(1, args.repeats)
    out: dict[str, Any] = {"scaling": scaling_table(configs, nprocs, epochs, args.device, not args.keep_denormals, repeats)}
    if args.amp_compare:
        out["amp"] = amp_compare(epochs)
    print("\nGPU mixed precision, AMP off vs on (one GPU; compare the images_per_s of the JSON lines):")
    for cmd in amp_commands():
        print(f"  {cmd}")
    print("  or: .venv/bin/python -m bench.bench_distributed --amp-compare --configs conv --nproc 1 --device cuda")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
