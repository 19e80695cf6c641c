"""The seeds' study row: the spatial resnet VAE at latent channels 2 / 4 / 16 on the MNIST subset, beside their numbers.

    python -m trainer.sharp_study --checkpoints-dir /tmp/sharp-study          # train what is missing, then report
    python -m trainer.sharp_study --checkpoints-dir /tmp/sharp-study --report-only --out reports/sharp-study

One run per latent channel count C (a C x 7 x 7 posterior at 28 px), all else equal (RECIPE, EPOCHS, seed 0),
each an ordinary run folder named sharp-study-cC. The report (results.md, results.json, strips.png) gives for
the 2,000 test digits, each reconstructed through its posterior mean:
  PSNR (range 1)  the project's: mean over images of 10 log10(1 / MSE_i) on [0, 1] images;
  PSNR (+6.02)    10 log10(2^2 / MSE_i) with MSE_i still measured on [0, 1]: the range-1 figure + 20 log10 2.
                  That is what quoting "data range 2" gives when the error is not rescaled too; on images truly
                  mapped to [-1, 1] with range 2 the MSE quadruples and the PSNR equals the range-1 figure;
  SSIM            trainer.metrics (11-px Gaussian window, data range 1);
  LPIPS           only with --lpips-weights (a local file, as the trainer's); absent otherwise, said so;
  neg. ELBO       the last epoch's test negative ELBO (recon + KL at beta = 1; BCE on grayscale pixels, so a
                  BCE-based bound, not a density of the images), and its KL part alone (nats);
beside the seeds' PSNR 30.5 / 32.8 / 35.5 dB and SSIM 0.98-0.99, with each run's epochs, CPU and wall seconds.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

from . import cli, distributed, metrics
from .data import load_dataset
from .demo import cost_path
from .images import png_bytes, tile
from .runs import MANIFEST_FILE, Run, RunError, load_run, read_status
from .safe_io import atomic_write_bytes, atomic_write_json, read_json_dict
from .train import ssim_per_image

DEFAULT_CHANNELS = (2, 4, 16)
SEEDS_NUMBERS = {2: 30.5, 4: 32.8, 16: 35.5}  # the seeds' PSNR (dB) at latent channels 2 / 4 / 16; their SSIM: 0.98-0.99
SEEDS_SSIM = "0.98–0.99"
RANGE_2_DB = 20 * math.log10(2)  # +6.02 dB: data range 2 with the error measured on [0, 1]
EPOCHS = 12
# The recipe of the bundled sharp MNIST run (python -m bench.bench_sharp: widths 16, 32, 64 for 28 -> 14 -> 7 px, one
# residual block per resolution, BCE pixels, beta 1e-4, batch 64, Adam 1e-3 then 1e-4), at half its 24 epochs
# (milestone 10 instead of 20) to keep the three runs near 30 CPU-minutes on the shared 2-core machine.
RECIPE = ["--model", "resnet", "--bottleneck", "spatial", "--widths", "16,32,64", "--res-blocks", "1", "--recon-loss", "bce",
          "--beta", "1e-4", "--batch-size", "64", "--lr", "1e-3", "--lr-milestones", "10", "--lr-gamma", "0.1", "--seed", "0",
          "--atlas-size", "200", "--no-projections", "--progress", "none"]
EVAL_BATCH = 250
STRIP_IMAGES = 12
STRIP_SCALE = 3
LABEL_WIDTH = 110
# Intra-op threads per training process. The CLI would take os.cpu_count() (2 here); on the shared machine a second
# thread spun in OpenMP barriers and cost 10x the CPU time per image (32 against 3 ms at load ~15).
DEFAULT_THREADS = 1


def run_name(channels: int) -> str:
    return f"sharp-study-c{channels}"


def train_argv(channels: int, root: Path, epochs: int, lpips_weights: str | None) -> list[str]:
    extra = ["--lpips-weights", lpips_weights] if lpips_weights else []
    return ["--run-name", run_name(channels), "--checkpoints-dir", str(root), "--latent-channels", str(channels),
            "--epochs", str(epochs), *RECIPE, *extra]


def finished(run_dir: Path) -> bool:
    return (run_dir / MANIFEST_FILE).exists() and (read_status(run_dir) or {}).get("state") == "finished"


def load_1min() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def cost_record(root: Path, name: str) -> dict[str, Any] | None:
    """The cost file of run `name` (every training invocation of it), or None."""
    path = cost_path(root, name)
    return read_json_dict(path) if path.exists() else None


def train_recorded(name: str, argv: list[str], root: Path, threads: int = DEFAULT_THREADS) -> int:
    """Run `python -m trainer argv` in this process with `threads` intra-op threads (adding --resume when the run
    folder exists), and add the invocation to `<root>/<name>.cost.json`: its CPU seconds (this process, all
    threads), wall seconds, 1-minute load at start and end and the run's state after it. The file's cpu_s and
    wall_s are the sums over invocations, so a run stopped and resumed is counted whole. The trainer's exit
    status, or 1 when the run stopped before its last epoch (the trainer exits 0 after a clean stop)."""
    if (root / name / MANIFEST_FILE).exists():
        argv = [*argv, "--resume"]  # an interrupted run continues from its last saved epoch
    load0, cpu0, wall0 = load_1min(), time.process_time(), time.perf_counter()
    with mock.patch.object(distributed, "cpu_threads", lambda ctx: threads):  # the CLI takes every core otherwise
        code = cli.main(argv)
    state = (read_status(root / name) or {}).get("state")
    record = cost_record(root, name) or {"command": "python -m trainer " + shlex.join([a for a in argv if a != "--resume"]),
                                         "threads": threads, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
                                         "segments": []}
    record["segments"].append({"cpu_s": time.process_time() - cpu0, "wall_s": time.perf_counter() - wall0, "load_start": load0,
                               "load_end": load_1min(), "state": state, "exit": code})
    for key in ("cpu_s", "wall_s"):
        record[key] = sum(seg[key] for seg in record["segments"] if seg.get(key) is not None)
    record["load_start"], record["load_end"] = record["segments"][0]["load_start"], record["segments"][-1]["load_end"]
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cost_path(root, name), record)
    if code == 0 and state != "finished":
        print(f"{name}: stopped before its last epoch (run again to resume)", file=sys.stderr)
        return 1
    return code


def train(channels: int, root: Path, epochs: int, lpips_weights: str | None, threads: int = DEFAULT_THREADS) -> int:
    """Train the run of `channels` latent channels unless it is finished (train_recorded). The trainer's exit status."""
    name = run_name(channels)
    if finished(root / name):
        print(f"{name}: finished, skipped")
        return 0
    return train_recorded(name, train_argv(channels, root, epochs, lpips_weights), root, threads)


@torch.no_grad()
def measure(run: Run, x_uint8: torch.Tensor) -> tuple[dict[str, Any], torch.Tensor]:
    """The report's numbers for one run on test images (N, C, H, W) uint8, and its reconstructions in [0, 1]."""
    x = x_uint8.float() / 255.0
    x_hat = run.model.decode_images(run.model.encode_batches(x_uint8, EVAL_BATCH).mean, EVAL_BATCH)
    psnr = metrics.psnr_per_image(x_hat, x)  # (N,) data range 1
    ssim = torch.cat([ssim_per_image(a, b) for a, b in zip(x_hat.split(EVAL_BATCH), x.split(EVAL_BATCH), strict=True)])
    last = run.history[-1]
    return {
        "latent_channels": run.model_config.latent_channels, "latent_shape": list(run.model_config.latent_shape),
        "latent_dim": run.model_config.latent_dim, "parameters": run.model.num_parameters(), "epochs": run.epoch,
        "psnr": float(psnr.mean()), "psnr_range2": float(psnr.mean()) + RANGE_2_DB, "psnr_set": metrics.psnr_of_set(x_hat, x),
        "ssim": float(ssim.mean()), "lpips": last.get("lpips"), "lpips_name": last.get("lpips_name"),
        "neg_elbo": metrics.neg_elbo(last), "kl": float(last["test_kl"]), "recon_loss": run.train_config.recon_loss,
        "images": len(x),
    }, x_hat


def strips_png(rows: list[tuple[str, np.ndarray]]) -> bytes:
    """Labelled rows of uint8 images (N, C, H, W), STRIP_SCALE times larger (nearest), as one PNG."""
    from PIL import Image, ImageDraw

    tiles = [np.kron(tile(im, cols=len(im)), np.ones((STRIP_SCALE, STRIP_SCALE), np.uint8)) for _, im in rows]
    canvas = Image.new("RGB", (LABEL_WIDTH + max(t.shape[1] for t in tiles), sum(t.shape[0] + 4 for t in tiles) - 4), "white")
    draw, y = ImageDraw.Draw(canvas), 0
    for (label, _), t in zip(rows, tiles, strict=True):
        canvas.paste(Image.fromarray(t).convert("RGB"), (LABEL_WIDTH, y))
        draw.text((4, y + t.shape[0] // 2 - 6), label, fill="black")
        y += t.shape[0] + 4
    return png_bytes(np.asarray(canvas))


def fmt(v: Any, digits: int = 2) -> str:
    return "—" if v is None else f"{v:,.{digits}f}" if isinstance(v, float) else str(v)


def results_md(rows: list[dict[str, Any]]) -> str:
    head = ("| latent | params | epochs | PSNR range 1 (dB) | PSNR +6.02 (dB) | seeds' PSNR (dB) | SSIM | seeds' SSIM | LPIPS "
            "| neg. ELBO | KL (nats) | CPU min | wall min | load |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        c = r.get("cost") or {}
        load = f"{c['load_start']:.1f}–{c['load_end']:.1f}" if c.get("load_start") is not None else "—"
        lpips = fmt(r["lpips"], 3) if r["lpips"] is not None else "absent (no local weights)"
        lines.append(f"| {' x '.join(map(str, r['latent_shape']))} | {r['parameters']:,} | {r['epochs']} | {r['psnr']:.2f} | "
                     f"{r['psnr_range2']:.2f} | {SEEDS_NUMBERS.get(r['latent_channels'], '—')} | {r['ssim']:.3f} | {SEEDS_SSIM} | {lpips} | "
                     f"{r['neg_elbo']:.1f} ({r['recon_loss']}-based) | {r['kl']:.1f} | {fmt(c.get('cpu_s', 0) / 60, 1) if c else '—'} | "
                     f"{fmt(c.get('wall_s', 0) / 60, 1) if c else '—'} | {load} |")
    commands = [f"    {(r.get('cost') or {}).get('command', '?')}" for r in rows]
    return "\n".join(lines + ["", "Commands:", "", *commands]) + "\n"


def report(root: Path, out: Path, channels: list[int]) -> list[dict[str, Any]]:
    """Measure every run, write results.json, results.md and strips.png under `out`."""
    runs = [load_run(root / run_name(c)) for c in channels]
    t, m = runs[0].train_config, runs[0].model_config
    x = load_dataset(t.dataset, t.data_dir, image_size=m.image_size, channels=m.in_channels).test_x
    rows, strips = [], []
    idx = [round(k * (len(x) - 1) / (STRIP_IMAGES - 1)) for k in range(STRIP_IMAGES)]  # spread evenly, not chosen
    strips.append(("originals", x[idx].numpy()))
    for c, run in zip(channels, runs, strict=True):
        numbers, x_hat = measure(run, x)
        rows.append(numbers | {"run": run_name(c), "cost": cost_record(root, run_name(c))})
        strips.append((f"{c} x 7 x 7", (x_hat[idx].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", {"seeds_psnr": SEEDS_NUMBERS, "seeds_ssim": SEEDS_SSIM, "range_2_db": RANGE_2_DB, "runs": rows})
    atomic_write_bytes(out / "results.md", results_md(rows).encode())
    atomic_write_bytes(out / "strips.png", strips_png(strips))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.sharp_study", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints-dir", type=Path, required=True, help="where the run folders go (keep experiment runs out of git)")
    p.add_argument("--out", type=Path, default=Path("reports/sharp-study"))
    p.add_argument("--channels", type=int, nargs="+", default=list(DEFAULT_CHANNELS), help="latent channels, one run each")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--lpips-weights", help="a local LPIPS / VGG16 weights file (trainer --lpips-weights); LPIPS is absent without one")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="intra-op threads per training process (default 1)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--no-report", action="store_true")
    args = p.parse_args(argv)
    if not args.report_only:
        for c in args.channels:
            if (code := train(c, args.checkpoints_dir, args.epochs, args.lpips_weights, args.threads)) != 0:
                print(f"python -m trainer.sharp_study: {run_name(c)} did not finish (exit {code})", file=sys.stderr)
                return code
    if args.no_report:
        return 0
    try:
        rows = report(args.checkpoints_dir, args.out, args.channels)
    except RunError as e:
        print(f"python -m trainer.sharp_study: error: {e}", file=sys.stderr)
        return 2
    print(results_md(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
