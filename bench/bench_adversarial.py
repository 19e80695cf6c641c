"""Does the PatchGAN discriminator sharpen? The same spatial resnet VAE trained with and without it, measured.

    .venv/bin/python -m bench.bench_adversarial --runs-dir /tmp/adv/runs            # train both (if absent), then report
    .venv/bin/python -m bench.bench_adversarial --runs-dir /tmp/adv/runs --only with --no-report   # one of them
    .venv/bin/python -m bench.bench_adversarial --runs-dir /tmp/adv/runs --report-only
    .venv/bin/python -m bench.bench_adversarial --runs-dir /tmp/adv/runs --latent-channels 1   # a tighter 1 x 7 x 7 bottleneck

Both runs share every setting (model, data, epochs, batch, seed, learning rate, --recon-loss l1, --beta); the
second adds `--disc-weight W --disc-start S` (hinge PatchGAN, adaptive weight: trainer/adversarial.py). Steps
before S are bit-for-bit the first run's, so the comparison isolates what the adversarial term does after S.
Each run trains in this process with --threads intra-op threads (default 1, see DEFAULT_THREADS). Its CPU time
(this process's, all threads), wall time and the 1-minute load average at its start
and end go to `<runs-dir>/<name>.cost.json`.

Measured on the whole test set, each image reconstructed through its posterior mean (the decoder's sigmoid),
as the trainer's PSNR is. With F the 2-D DFT of an image minus its own mean, |F(u, v)|^2 its power at spatial
frequency (u, v) in cycles per pixel, and "HF" the frequencies of radius sqrt(u^2 + v^2) > HF_CUTOFF (0.25
cycles/px: periods shorter than 4 pixels):
  hf_ratio     sum over the set of HF power of the reconstructions / the same of the originals. 1 = as much
               fine detail as the data, < 1 = blurred (on the MNIST test digits a Gaussian blur of sigma 0.5 px
               gives 0.45, of sigma 1 px 0.03; adding noise of sd 0.05 gives 1.06).
               It counts detail, not correctness: invented edges raise it too, hence hf_error.
  hf_error     HF power of the error (reconstruction - original) / HF power of the originals: fine detail that
               is wrong or missing; lower is better (blur sigma 0.5 px: 0.12, sigma 1 px: 0.75; an exact copy 0).
  grad_ratio   mean gradient magnitude |(dx, dy)| (forward differences) of the reconstructions / of the originals
               (blur sigma 0.5 / 1 px: 0.90 / 0.69).
  lapvar_ratio mean per-image variance of the 4-neighbour Laplacian, reconstructions / originals (0.46 / 0.08).
  band ratios  power of the reconstructions / of the originals in radial bands of 0.1 cycles/px.
plus PSNR (per image, data range 1 on [0, 1], averaged), SSIM (trainer.metrics, 11-px Gaussian window) and
the negative ELBO of the last epoch's history row. Side-by-side strips (originals / without / with, 4x nearest
upscaling) go to `<out>/strips.png`; the numbers to `<out>/results.json` and `<out>/results.md` (`<out>` is
reports/adversarial/cC for a C x 7 x 7 latent unless --out says otherwise).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer import metrics
from trainer.data import load_dataset
from trainer.images import png_bytes, tile
from trainer.runs import Run, load_run, read_status
from trainer.safe_io import atomic_write_bytes, atomic_write_json
from trainer.sharp_study import cost_record, train_recorded
from trainer.train import ssim_per_image

HF_CUTOFF = 0.25  # cycles per pixel: periods under 4 px count as fine detail (Nyquist is 0.5)
BAND_WIDTH = 0.1  # cycles per pixel, radial bands of the power-ratio table
STRIP_IMAGES = 12
STRIP_SCALE = 4  # nearest-neighbour upscaling of the strips
LABEL_WIDTH = 120  # pixels of row labels left of the strips
EVAL_BATCH = 250
# Intra-op threads of each training process. The CLI would take os.cpu_count() (2 here); on this shared machine a
# second thread spun in OpenMP barriers and cost 10x the CPU time per image (32 against 3 ms at load ~15).
DEFAULT_THREADS = 1

# The comparison (MNIST 28 px): a small spatial resnet (4 x 7 x 7 latent), L1 pixels and latent diffusion's small
# beta (their kl_weight 1e-6 on [-1, 1] images is 5e-7 here, README "Sharp models"); the discriminator joins at
# step DISC_START of EPOCHS * 125, with latent diffusion's disc_weight 0.5 and a 2-layer PatchGAN (receptive field
# 34 px, one logit per 5 x 5 patch grid cell at 28 px) of 32 first-layer channels.
EPOCHS = 10
BATCH = 64
DISC_START = 500  # optimiser steps: epoch 4 of 10 at 125 steps an epoch
DEFAULT_LATENT_CHANNELS = 4
COMMON = ["--model", "resnet", "--bottleneck", "spatial", "--widths", "16,16,32", "--res-blocks", "1",
          "--recon-loss", "l1", "--beta", "5e-7", "--batch-size", str(BATCH), "--lr", "1e-3", "--seed", "0",
          "--atlas-size", "200", "--no-projections", "--progress", "none"]
DISC = ["--disc-weight", "0.5", "--disc-start", str(DISC_START), "--disc-layers", "2", "--disc-channels", "32"]
VARIANTS = {"without": [], "with": DISC}


def run_name(key: str, latent_channels: int) -> str:
    """'adv-with-c4': the run folder of a variant at a latent channel count."""
    return f"adv-{key}-c{latent_channels}"


# ---------------------------------------------------------------- sharpness metrics (pure, tested)

def radial_frequency(h: int, w: int) -> torch.Tensor:
    """sqrt(u^2 + v^2) in cycles per pixel of each bin of an (h, w) 2-D DFT, (h, w)."""
    u = torch.fft.fftfreq(h).view(h, 1)
    v = torch.fft.fftfreq(w).view(1, w)
    return (u.square() + v.square()).sqrt()


def power_spectrum(x: torch.Tensor) -> torch.Tensor:
    """|DFT|^2 of each image minus its own mean, summed over channels: (B, C, H, W) -> (B, H, W) float64."""
    x = x.double()
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    return torch.fft.fft2(x).abs().square().sum(dim=1)


def hf_power(x: torch.Tensor, cutoff: float = HF_CUTOFF) -> float:
    """Total power of a set of images (B, C, H, W) at radial frequencies above `cutoff` cycles per pixel."""
    mask = radial_frequency(*x.shape[-2:]) > cutoff
    return float(power_spectrum(x)[:, mask].sum())


def band_ratios(x_hat: torch.Tensor, x: torch.Tensor, width: float = BAND_WIDTH) -> list[tuple[float, float, float]]:
    """(low, high, power of x_hat / power of x) per radial band [low, high) of `width` cycles per pixel."""
    radius = radial_frequency(*x.shape[-2:])
    p_hat, p = power_spectrum(x_hat).sum(0), power_spectrum(x).sum(0)  # (H, W)
    out = []
    for k in range(math.ceil(float(radius.max()) / width)):
        mask = (radius >= k * width) & (radius < (k + 1) * width)
        if k == 0:
            mask &= radius > 0  # the DC bin is 0 after removing the mean
        if mask.any() and float(p[mask].sum()) > 0:
            out.append((k * width, (k + 1) * width, float(p_hat[mask].sum() / p[mask].sum())))
    return out


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Mean |(dx, dy)| per image from forward differences, (B, C, H, W) -> (B,)."""
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx.square() + dy.square()).sqrt().flatten(1).mean(1)


def laplacian_variance(x: torch.Tensor) -> torch.Tensor:
    """Variance of the 4-neighbour Laplacian inside each image, (B, C, H, W) -> (B,)."""
    lap = x[..., 1:-1, :-2] + x[..., 1:-1, 2:] + x[..., :-2, 1:-1] + x[..., 2:, 1:-1] - 4 * x[..., 1:-1, 1:-1]
    return lap.flatten(1).var(1)


def sharpness(x_hat: torch.Tensor, x: torch.Tensor) -> dict[str, Any]:
    """The figures of the module docstring for reconstructions x_hat of images x, both (B, C, H, W) in [0, 1]."""
    hf_x = hf_power(x)
    return {
        "hf_ratio": hf_power(x_hat) / hf_x,
        "hf_error": hf_power(x_hat - x) / hf_x,
        "grad_ratio": float(gradient_magnitude(x_hat).mean() / gradient_magnitude(x).mean()),
        "lapvar_ratio": float(laplacian_variance(x_hat).mean() / laplacian_variance(x).mean()),
        "bands": band_ratios(x_hat, x),
    }


# ---------------------------------------------------------------- measuring a run

@torch.no_grad()
def reconstruct(run: Run, x: torch.Tensor) -> torch.Tensor:
    """Images (N, C, H, W) uint8 -> reconstructions through the posterior mean, float in [0, 1]."""
    return run.model.decode_images(run.model.encode_batches(x, EVAL_BATCH).mean, EVAL_BATCH)


def test_images(run: Run) -> torch.Tensor:
    t, m = run.train_config, run.model_config
    return load_dataset(t.dataset, t.data_dir, image_size=m.image_size, channels=m.in_channels).test_x


def measure(run: Run, x_uint8: torch.Tensor) -> tuple[dict[str, Any], torch.Tensor]:
    """Sharpness, PSNR, SSIM and the negative ELBO of a run on images x (uint8), and the reconstructions."""
    x = x_uint8.float() / 255.0
    x_hat = reconstruct(run, x_uint8)
    last = run.history[-1]
    out = sharpness(x_hat, x) | {
        "psnr": float(metrics.psnr_per_image(x_hat, x).mean()),
        "ssim": float(torch.cat([ssim_per_image(a, b) for a, b in zip(x_hat.split(EVAL_BATCH), x.split(EVAL_BATCH))]).mean()),
        "neg_elbo": metrics.neg_elbo(last), "epoch": run.epoch, "images": len(x),
        "g_loss_last_epoch": last.get("train_g_loss"), "disc_weight_last_epoch": last.get("train_disc_weight"),
    }
    return out, x_hat


# ---------------------------------------------------------------- figures

def to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


def strips_png(rows: list[tuple[str, np.ndarray]], scale: int = STRIP_SCALE) -> bytes:
    """Labelled rows of images, each (N, C, H, W) uint8, upscaled `scale` times (nearest) into one PNG."""
    from PIL import Image, ImageDraw

    tiles = [np.kron(tile(images, cols=len(images), pad=1), np.ones((scale, scale) + (1,) * (images.shape[1] == 3), np.uint8))
             for _, images in rows]
    gap = 4
    width = LABEL_WIDTH + max(t.shape[1] for t in tiles)
    height = sum(t.shape[0] for t in tiles) + gap * (len(tiles) - 1)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for (label, _), t in zip(rows, tiles, strict=True):
        canvas.paste(Image.fromarray(t).convert("RGB"), (LABEL_WIDTH, y))
        draw.text((4, y + t.shape[0] // 2 - 6), label, fill="black")
        y += t.shape[0] + gap
    buf = np.asarray(canvas)
    return png_bytes(buf)


def strip_indices(n: int, count: int = STRIP_IMAGES) -> list[int]:
    """`count` test images spread evenly over the set (fixed, not chosen by result)."""
    return [round(k * (n - 1) / (count - 1)) for k in range(count)]


# ---------------------------------------------------------------- training and the report

def train_command(name: str, runs_dir: Path, epochs: int, latent_channels: int, extra: list[str]) -> list[str]:
    return ["--run-name", name, "--checkpoints-dir", str(runs_dir), "--epochs", str(epochs), "--latent-channels", str(latent_channels),
            *COMMON, *extra]


def train(name: str, argv: list[str], runs_dir: Path, threads: int = DEFAULT_THREADS) -> None:
    """Train one run in this process unless finished, its cost added to `<runs-dir>/<name>.cost.json`
    (trainer.sharp_study.train_recorded: CPU and wall seconds summed over invocations, load at start and end)."""
    if (read_status(runs_dir / name) or {}).get("state") == "finished" and cost_record(runs_dir, name) is not None:
        print(f"{name}: finished, skipped")
        return
    if (code := train_recorded(name, argv, runs_dir, threads)) != 0:
        raise SystemExit(f"{name}: training failed or stopped (exit {code}); run again to resume")


def fmt(v: Any, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def report(runs_dir: Path, out: Path, latent_channels: int = DEFAULT_LATENT_CHANNELS) -> dict[str, Any]:
    """Measure both runs, write results.json, results.md and strips.png under `out`; return the results."""
    names = {k: run_name(k, latent_channels) for k in VARIANTS}
    runs = {k: load_run(runs_dir / name) for k, name in names.items()}
    x = test_images(runs["without"])
    results: dict[str, Any] = {"hf_cutoff": HF_CUTOFF, "runs": {}}
    recon = {}
    for key, run in runs.items():
        numbers, recon[key] = measure(run, x)
        results["runs"][key] = numbers | {"run": names[key], "cost": cost_record(runs_dir, names[key])}
    results["curve"] = [{"epoch": w["epoch"], "psnr_without": w["psnr"], "psnr_with": d["psnr"], "ssim_without": w["ssim"], "ssim_with": d["ssim"],
                         "disc_weight": d.get("train_disc_weight"), "d_loss": d.get("train_d_loss"), "g_loss": d.get("train_g_loss")}
                        for w, d in zip(runs["without"].history, runs["with"].history, strict=True)]
    idx = strip_indices(len(x))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "strips.png", strips_png([("originals", x[idx].numpy()), ("without disc.", to_uint8(recon["without"][idx])),
                                                       ("with disc.", to_uint8(recon["with"][idx]))]))
    atomic_write_json(out / "results.json", results)
    atomic_write_bytes(out / "results.md", results_md(results).encode())
    return results


def results_md(results: dict[str, Any]) -> str:
    r = results["runs"]
    keys = ("hf_ratio", "hf_error", "grad_ratio", "lapvar_ratio", "psnr", "ssim", "neg_elbo")
    lines = ["| | " + " | ".join(keys) + " | CPU s | wall s | load |", "|---" * (len(keys) + 4) + "|"]
    for key in ("without", "with"):
        c = r[key]["cost"] or {}
        load = f"{c['load_start']:.1f}–{c['load_end']:.1f}" if c else "—"
        lines.append(f"| {key} discriminator | " + " | ".join(fmt(r[key][k], 2 if k in ("psnr", "neg_elbo") else 3) for k in keys)
                     + f" | {fmt(c.get('cpu_s'), 0)} | {fmt(c.get('wall_s'), 0)} | {load} |")
    lines += ["", "Power of reconstructions / originals per radial band (cycles per pixel):", "",
              "| band | without | with |", "|---|---|---|"]
    for (lo, hi, a), (_, _, b) in zip(r["without"]["bands"], r["with"]["bands"], strict=True):
        lines.append(f"| {lo:.1f}–{hi:.1f} | {a:.3f} | {b:.3f} |")
    lines += ["", "Per epoch (test PSNR and SSIM as the trainer records them; the discriminator's epoch means from its start step):", "",
              "| epoch | PSNR without | PSNR with | SSIM without | SSIM with | adaptive weight x W | d_loss (hinge) | g_loss |", "|---" * 8 + "|"]
    lines += [f"| {c['epoch']} | {c['psnr_without']:.2f} | {c['psnr_with']:.2f} | {c['ssim_without']:.3f} | {c['ssim_with']:.3f} | "
              f"{fmt(c['disc_weight'], 2)} | {fmt(c['d_loss'], 3)} | {fmt(c['g_loss'], 3)} |" for c in results.get("curve", [])]
    lines += ["", "Commands:", ""] + [f"    {(r[k]['cost'] or {}).get('command', '?')}" for k in ("without", "with")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_adversarial", description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, required=True, help="where the two run folders go (keep it out of git, e.g. /tmp)")
    parser.add_argument("--out", type=Path, help="report folder (default reports/adversarial/cC for C latent channels)")
    parser.add_argument("--latent-channels", type=int, default=DEFAULT_LATENT_CHANNELS, help="of the C x 7 x 7 latent map (default 4)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--only", choices=tuple(VARIANTS), help="train only this run")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="intra-op threads per training process (default 1)")
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    if not args.report_only:
        for key, extra in VARIANTS.items():
            if args.only in (None, key):
                name = run_name(key, args.latent_channels)
                train(name, train_command(name, args.runs_dir, args.epochs, args.latent_channels, extra), args.runs_dir, args.threads)
    if args.no_report:
        return 0
    results = report(args.runs_dir, args.out or Path("reports/adversarial") / f"c{args.latent_channels}", args.latent_channels)
    print(results_md(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
