"""Folder datasets larger than memory: build the memory-mapped decode cache, then train one epoch from it.

    .venv/bin/python -m bench.bench_memmap                    # 122,000 64x64 RGB PNGs: a ~1.5 GB cache
    .venv/bin/python -m bench.bench_memmap --quick            # 2,000 images: checks the script runs
    .venv/bin/python -m bench.bench_memmap --images 40000     # any size
    .venv/bin/python -m bench.bench_memmap --folder ~/photos  # an existing folder of images (its cache is kept)

Writes a synthetic folder of random-ish PNGs (smooth colour fields plus noise, ten class sub-folders) to a
temporary folder on disk, then runs three child processes, one after the other, each measured alone:
  build    load_dataset decodes the folder into PATH/.vae_cache/ (streaming: one image in memory at a time);
  memmap   one epoch of a small conv VAE through the project's Trainer, batches gathered by index from the
           memory-mapped cache (what the trainer does with every folder dataset);
  memory   the same epoch with the images first copied into ordinary tensors in memory (the former path),
           skipped when twice the cache does not fit in MemAvailable.
The cache file is read through once before each training child, so it is in the page cache (as the goal
states). Memory is read from /proc/self/status: peak RssAnon (sampled every 20 ms: the process's own,
unreclaimable memory, what bounds how much data it can train on), VmHWM (peak resident set, including the
mapped cache's file pages, which the kernel can drop and re-read at will) and RssFile at the end. Speed is
given per wall-clock second and per CPU-second of the process (time.process_time, page faults included): on
a shared machine the second is the steadier figure.
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from trainer.paths import PROJECT_ROOT

IMAGE_SIZE = 64
CHANNELS = 3
N_CLASSES = 10
CACHE_TARGET_BYTES = 1.5e9  # the default size: a cache of about this many bytes
DEFAULT_IMAGES = int(CACHE_TARGET_BYTES // (CHANNELS * IMAGE_SIZE * IMAGE_SIZE))  # 122,070
QUICK_IMAGES = 2000
COARSE_SIDE = 8  # the random colour field each image is smoothed from
NOISE_LEVEL = 24  # +- grey levels of per-pixel noise on top
PNG_COMPRESS_LEVEL = 1  # fast to write; decoding speed is what the cache build measures
SAMPLE_S = 0.02  # memory sampling period
MEMORY_FIT_FACTOR = 2.0  # the in-memory case runs when MemAvailable holds this many caches
BATCH_SIZE = 128
LATENT_DIM = 16
WIDTHS = (8, 16, 16)  # a small conv VAE: the data path is a visible share of each step
HIDDEN_DIM = 64
REPEATS = 2
RESULT_MARK = "BENCH_MEMMAP_RESULT "
MB = 2**20


# ---------------------------------------------------------------- memory figures

def proc_status() -> dict[str, int]:
    """The kB fields of /proc/self/status (VmHWM, VmRSS, RssAnon, RssFile, ...), in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0]) * 1024
    return out


class PeakAnon:
    """Samples RssAnon every SAMPLE_S in a thread while in use; `peak` is the highest seen (bytes)."""

    def __init__(self) -> None:
        self.peak = proc_status()["RssAnon"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.peak = max(self.peak, proc_status()["RssAnon"])

    def __enter__(self) -> "PeakAnon":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, proc_status()["RssAnon"])


def mem_available() -> int:
    """MemAvailable of /proc/meminfo in bytes."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


# ---------------------------------------------------------------- the synthetic folder

def write_folder(root: Path, n: int, seed: int = 0, chunk: int = 500) -> float:
    """n random-ish IMAGE_SIZE px RGB PNGs in N_CLASSES sub-folders of `root`; returns the seconds taken."""
    from PIL import Image

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    for c in range(N_CLASSES):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    scale = IMAGE_SIZE // COARSE_SIDE
    for start in range(0, n, chunk):
        b = min(chunk, n - start)
        coarse = rng.integers(0, 256, (b, COARSE_SIDE, COARSE_SIDE, CHANNELS)).astype(np.int16)
        fine = coarse.repeat(scale, axis=1).repeat(scale, axis=2)  # (b, S, S, 3)
        fine += rng.integers(-NOISE_LEVEL, NOISE_LEVEL + 1, fine.shape, dtype=np.int16)
        pixels = np.clip(fine, 0, 255).astype(np.uint8)
        for k in range(b):
            i = start + k
            Image.fromarray(pixels[k]).save(root / f"class{i % N_CLASSES}" / f"{i:07d}.png", compress_level=PNG_COMPRESS_LEVEL)
    return time.perf_counter() - t0


def warm_page_cache(path: Path) -> float:
    """Read `path` through once (so its pages are in the page cache); returns the seconds taken."""
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(16 * MB):
            pass
    return time.perf_counter() - t0


# ---------------------------------------------------------------- the child processes

def child(mode: str, folder: Path, batch_size: int, latent_dim: int, widths: tuple[int, ...], hidden_dim: int) -> dict[str, Any]:
    """One measured case in this (fresh) process: 'build', 'memmap' or 'memory'."""
    import torch

    from models import ModelConfig
    from trainer.config import TrainConfig
    from trainer.data import ImageData, load_dataset
    from trainer.train import Trainer

    base = proc_status()["RssAnon"]  # the interpreter, torch and numpy, before any data
    dataset = f"folder:{folder}"
    with PeakAnon() as load_peak:
        t0 = time.perf_counter()
        data = load_dataset(dataset, image_size=IMAGE_SIZE, channels=CHANNELS)
        load_s = time.perf_counter() - t0
    n = len(data.train_x) + len(data.test_x)
    out: dict[str, Any] = {"mode": mode, "images": n, "torch_threads": torch.get_num_threads(), "base_rss_anon_mb": base / MB,
                           "load_s": load_s, "load_peak_rss_anon_mb": load_peak.peak / MB,
                           "cache_file": str(data.cache_file), "cache_mb": 0 if data.cache_file is None else data.cache_file.stat().st_size / MB}
    if mode == "build":
        return out | {"decode_images_per_s": n / load_s}
    if mode == "memory":  # the former path: every image in ordinary (anonymous) memory
        data = ImageData(data.train_x.clone(), data.train_y.clone(), data.test_x.clone(), data.test_y.clone(), data.class_names, data.source)
        gc.collect()  # the mapping goes with the last view of it
    gather_s = gather_epoch(data.train_x, batch_size)
    model = ModelConfig(arch="conv", latent_dim=latent_dim, in_channels=CHANNELS, image_size=IMAGE_SIZE, widths=widths, hidden_dim=hidden_dim)
    trainer = Trainer(model, TrainConfig(batch_size=batch_size, epochs=1, atlas_size=min(256, len(data.test_x))), data)
    with PeakAnon() as train_peak:
        r0, t0, c0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), time.process_time()
        terms = trainer.train_epoch()
        train_s, train_cpu_s, r1 = time.perf_counter() - t0, time.process_time() - c0, resource.getrusage(resource.RUSAGE_SELF)
    status = proc_status()
    return out | {
        "train_images": len(data.train_x), "train_s": train_s, "images_per_s": len(data.train_x) / train_s,
        "train_cpu_s": train_cpu_s, "images_per_cpu_s": len(data.train_x) / train_cpu_s,
        "gather_images_per_s": len(data.train_x) / gather_s,
        "major_faults": r1.ru_majflt - r0.ru_majflt, "minor_faults": r1.ru_minflt - r0.ru_minflt,  # major: read from disk
        "involuntary_switches": r1.ru_nivcsw - r0.ru_nivcsw,  # preempted by other processes: a busy machine
        "train_loss": None if terms is None else terms["train_loss"], "parameters": trainer.model.num_parameters(),
        "peak_rss_anon_mb": train_peak.peak / MB, "vm_hwm_mb": status["VmHWM"] / MB, "rss_file_mb": status["RssFile"] / MB,
    }


def gather_epoch(images, batch_size: int) -> float:
    """Seconds to gather one epoch of shuffled batches as the trainer does (rows by index, to float): the data path alone."""
    import torch

    from models.vae import to_float_images

    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    for idx in order.split(batch_size):
        to_float_images(images[idx])  # (B, C, H, W) float32
    return time.perf_counter() - t0


def run_child(mode: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Run `child(mode)` in a fresh interpreter (its memory figures are its own) and return its result."""
    cmd = [sys.executable, "-m", "bench.bench_memmap", "--child", mode, "--folder", str(folder),
           "--batch-size", str(args.batch_size), "--latent-dim", str(args.latent_dim), "--widths", ",".join(map(str, args.widths)),
           "--hidden-dim", str(args.hidden_dim)]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the {mode} child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT_MARK):])


# ---------------------------------------------------------------- main

def report(build: dict[str, Any], rows: list[dict[str, Any]], skipped: str | None) -> None:
    print(f"\ncache: {build['images']:,} images, {build['cache_mb']:,.0f} MB, built in {build['load_s']:.1f} s "
          f"({build['decode_images_per_s']:,.0f} images/s decoded), peak RssAnon while building {build['load_peak_rss_anon_mb']:,.0f} MB "
          f"(interpreter and torch alone: {build['base_rss_anon_mb']:,.0f} MB)")
    first = rows[0]
    print(f"one epoch, conv VAE ({first['parameters']:,} parameters), {first['train_images']:,} training images, "
          f"batch {first['batch']}, {first['torch_threads']} torch thread(s):")
    for r in rows:
        print(f"  {r['mode']:<7} {r['images_per_s']:8,.0f} images/s ({r['train_s']:.1f} s), {r['images_per_cpu_s']:6,.0f} per CPU-s, "
              f"batches alone {r['gather_images_per_s']:9,.0f} images/s   peak RssAnon {r['peak_rss_anon_mb']:7,.0f} MB   "
              f"VmHWM {r['vm_hwm_mb']:7,.0f} MB   RssFile {r['rss_file_mb']:7,.0f} MB   load {r['load_s']:.2f} s   "
              f"faults {r['major_faults']} major / {r['minor_faults']:,} minor, preempted {r['involuntary_switches']:,} times")
    by_mode = {m: [r for r in rows if r["mode"] == m] for m in ("memmap", "memory")}
    if by_mode["memory"]:
        median = {m: statistics.median(r["images_per_s"] for r in rs) for m, rs in by_mode.items()}
        per_cpu = {m: statistics.median(r["images_per_cpu_s"] for r in rs) for m, rs in by_mode.items()}
        anon = {m: max(r["peak_rss_anon_mb"] for r in rs) for m, rs in by_mode.items()}
        print(f"  median images/s memmap / memory: {median['memmap']:,.0f} / {median['memory']:,.0f} = {median['memmap'] / median['memory']:.2f}; "
              f"per CPU-second {per_cpu['memmap'] / per_cpu['memory']:.2f}; peak RssAnon memmap {anon['memmap']:,.0f} MB, memory {anon['memory']:,.0f} MB")
    if skipped:
        print(f"  memory: skipped ({skipped})")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, help=f"synthetic images to write (default {DEFAULT_IMAGES:,}: a ~1.5 GB cache)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_IMAGES:,} images: checks the script runs")
    parser.add_argument("--folder", type=Path, help="an existing folder of images instead of a synthetic one (its cache is kept)")
    parser.add_argument("--dir", type=Path, help="where to make the temporary folder (default: the system's temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic folder and its cache")
    parser.add_argument("--skip-memory", action="store_true", help="only the memory-mapped case")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--latent-dim", type=int, default=LATENT_DIM)
    parser.add_argument("--widths", type=lambda s: tuple(int(w) for w in s.split(",")), default=WIDTHS)
    parser.add_argument("--repeats", type=int, default=REPEATS, help="training children per case, alternated")
    parser.add_argument("--hidden-dim", type=int, default=HIDDEN_DIM)
    parser.add_argument("--child", choices=("build", "memmap", "memory"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = child(args.child, args.folder, args.batch_size, args.latent_dim, args.widths, args.hidden_dim)
        print(RESULT_MARK + json.dumps(result))
        return result

    tmp = None
    if args.folder is None:
        n = QUICK_IMAGES if args.quick else args.images
        tmp = Path(tempfile.mkdtemp(prefix="bench-memmap-", dir=args.dir))
        folder = tmp / "images"
        print(f"writing {n:,} {IMAGE_SIZE}x{IMAGE_SIZE} RGB PNGs to {folder} ...", flush=True)
        print(f"  {write_folder(folder, n):.1f} s", flush=True)
    else:
        folder = args.folder.expanduser()
    try:
        build = run_child("build", args, folder)
        cache_bytes = build["cache_mb"] * MB
        skipped = None
        if args.skip_memory:
            skipped = "--skip-memory"
        elif mem_available() < MEMORY_FIT_FACTOR * cache_bytes:
            skipped = f"MemAvailable {mem_available() / MB:,.0f} MB < {MEMORY_FIT_FACTOR:g} x the cache"
        rows = []
        for k in range(args.repeats):  # alternated, so a busy machine's slow spell does not fall on one case only
            for mode in ("memmap",) if skipped else ("memmap", "memory")[:: 1 if k % 2 == 0 else -1]:
                print(f"{mode}: page cache warmed in {warm_page_cache(Path(build['cache_file'])):.1f} s", flush=True)
                rows.append(run_child(mode, args, folder))
        for r in rows:
            r["batch"] = args.batch_size
        report(build, rows, skipped)
        out = {"build": build, "train": rows, "memory_skipped": skipped}
        print(json.dumps(out))
        return out
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp is not None:
            print(f"kept {tmp}")


if __name__ == "__main__":
    main()
