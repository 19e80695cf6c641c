"""The latent-size study: train a sweep of latent sizes x models and write a report folder.

    python -m trainer.study                                   # defaults below, report in reports/latent-size-study/
    python -m trainer.study --latent-sizes 2 16 --models conv:vae conv:ae --epochs 3 --out /tmp/s

Each run is an ordinary run folder (open it in the explorer). A half-done sweep resumes: finished runs
are skipped, interrupted ones continue from their last epoch. The report holds results.csv,
results.md (latent size x model: test loss, recon, KL, MSE, PSNR, SSIM, active units, parameters,
seconds), and per run a reconstruction strip and a 2-D latent scatter (PNG).
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from models import DEFAULT_HIDDEN_DIM, DEFAULT_WIDTHS, ModelConfig

from .config import TrainConfig
from .data import DataError, load_dataset
from .images import class_colors, png_bytes, reconstruct_uint8, tile
from .projections import plane_2d
from .runs import MANIFEST_FILE, Run, RunError, load_run, read_status
from .train import TrainingFailed, fit

DEFAULT_LATENT_SIZES = (2, 4, 10, 16, 64, 128, 256)
DEFAULT_MODELS = ("conv:vae", "conv-upsample:vae", "conv:ae")
DEFAULT_EPOCHS = 8
STRIP_IMAGES = 12
SCATTER_SIDE = 360
SCATTER_POINTS = 2000
COLUMNS = ["model", "kind", "latent_dim", "epochs", "test_loss", "test_recon", "test_kl", "mse", "psnr", "ssim", "active_units", "parameters", "seconds"]


def run_name(arch: str, kind: str, latent_dim: int) -> str:
    return f"study-{arch}-{kind}-z{latent_dim:03d}"


def parse_model(text: str) -> tuple[str, str]:
    arch, _, kind = text.partition(":")
    ModelConfig(arch=arch, kind=kind or "vae")  # validates, one-line ValueError
    return arch, kind or "vae"


def result_row(run: Run) -> dict[str, Any]:
    last = run.history[-1]
    return {
        "model": run.model_config.arch, "kind": run.model_config.kind, "latent_dim": run.model_config.latent_dim, "epochs": run.epoch,
        "test_loss": round(last["test_loss"], 2), "test_recon": round(last["test_recon"], 2), "test_kl": round(last["test_kl"], 2),
        "mse": round(last["mse"], 5), "psnr": round(last["psnr"], 2), "ssim": round(last["ssim"], 4), "active_units": last["active_units"],
        "parameters": run.model.num_parameters(), "seconds": round(sum(r["seconds"] for r in run.history), 1),
    }


def reconstruction_strip(run: Run, n: int = STRIP_IMAGES) -> bytes:
    """Top row: atlas images; bottom row: their reconstructions through the posterior mean."""
    x = run.atlas.images[:n]  # (n, C, H, W) uint8
    x_hat = reconstruct_uint8(run.model, x)
    return png_bytes(tile(np.concatenate([x, x_hat]), cols=len(x)))


def scatter_png(xy: np.ndarray, labels: np.ndarray, side: int = SCATTER_SIDE) -> bytes:
    """A plain scatter of 2-D points coloured by class, drawn with PIL (no browser or kaleido needed)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (side, side), "white")
    draw = ImageDraw.Draw(image)
    lo, hi = np.percentile(xy, 0.5, axis=0), np.percentile(xy, 99.5, axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    margin = side * 0.05
    pix = margin + (xy - lo) / span * (side - 2 * margin)
    colors = class_colors(int(labels.max()) + 1)  # the explorer's palette (trainer.images), so a class looks the same everywhere
    for (px, py), label in zip(pix, labels):
        color = colors[int(label)]
        draw.ellipse([px - 1.5, side - py - 1.5, px + 1.5, side - py + 1.5], fill=color)
    for k, color in enumerate(colors):
        draw.rectangle([4, 4 + 11 * k, 12, 12 + 11 * k], fill=color)
        draw.text((15, 2 + 11 * k), str(k), fill="black")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def latent_scatter(run: Run) -> bytes:
    """The atlas posterior means of the last epoch as a PNG scatter (PCA plane above 2 dimensions)."""
    means = run.atlas.means[-1][:SCATTER_POINTS]  # (N, D)
    return scatter_png(np.asarray(plane_2d(means), np.float64), run.atlas.labels[: len(means)])


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = "| latent | model | test loss | recon | KL | MSE | PSNR (dB) | SSIM | active units | parameters | seconds |"
    lines = [head, "|" + " --- |" * 11]
    for r in sorted(rows, key=lambda r: (r["latent_dim"], r["model"], r["kind"])):
        lines.append(
            f"| {r['latent_dim']} | {r['model']} {r['kind'].upper()} | {r['test_loss']:.2f} | {r['test_recon']:.2f} | {r['test_kl']:.2f} | "
            f"{r['mse']:.4f} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['active_units']} | {r['parameters']:,} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def write_report(out: Path, runs: list[Run], command: str, data_note: str) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    rows = [result_row(r) for r in runs]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: (r["latent_dim"], r["model"], r["kind"])))
    for run in runs:
        (out / "figures" / f"{run.name}-reconstructions.png").write_bytes(reconstruction_strip(run))
        (out / "figures" / f"{run.name}-scatter.png").write_bytes(latent_scatter(run))
    text = [
        "# Latent-size study", "", f"Made by `{command}`.", "", f"Data: {data_note}.", "",
        "Test-set figures after the last epoch: loss, recon and KL in nats per image; MSE, PSNR (data range 1) and SSIM of",
        "reconstructions through the posterior mean; active units = latent dimensions with mean KL above 0.01 nats (for the AE,",
        "code variance above 0.01); seconds = training plus test passes.", "", markdown_table(rows),
        "Figures: `figures/<run>-reconstructions.png` (top: test images, bottom: reconstructions) and `figures/<run>-scatter.png`",
        "(the atlas posterior means; PCA to 2-D above 2 dimensions; colours are classes 0-9).", "",
    ]
    (out / "results.md").write_text("\n".join(text))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.study", description=__doc__.splitlines()[0])
    parser.add_argument("--latent-sizes", type=int, nargs="+", default=list(DEFAULT_LATENT_SIZES))
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="arch:kind pairs, e.g. conv:vae conv-upsample:vae conv:ae mlp:vae")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--widths", type=int, nargs=3, default=list(DEFAULT_WIDTHS), help="conv channels of the three stages")
    parser.add_argument("--hidden-dim", type=int, default=DEFAULT_HIDDEN_DIM)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoints-dir", default="checkpoints/study", help="where the sweep's run folders go")
    parser.add_argument("--out", default="reports/latent-size-study", help="report folder")
    args = parser.parse_args(argv)
    try:
        models = [parse_model(m) for m in args.models]
        train_config = TrainConfig(dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                   lr_schedule="cosine", seed=args.seed)
        configs = [ModelConfig(arch=a, kind=k, latent_dim=z, widths=tuple(args.widths), hidden_dim=args.hidden_dim)
                   for z in args.latent_sizes for a, k in models]
        data = load_dataset(args.dataset, args.data_dir, seed=args.seed)
    except (ValueError, DataError) as e:
        print(f"python -m trainer.study: error: {e}", file=sys.stderr)
        return 2
    root = Path(args.checkpoints_dir)
    runs: list[Run] = []
    t_start = time.time()
    for i, model_config in enumerate(configs, 1):
        run_dir = root / run_name(model_config.arch, model_config.kind, model_config.latent_dim)
        status = read_status(run_dir) or {}
        done = status.get("state") == "finished" and (run_dir / MANIFEST_FILE).exists()
        label = f"[{i}/{len(configs)}] {run_dir.name}"
        if not done:
            resume = (run_dir / MANIFEST_FILE).exists()
            print(f"{label}: {'resuming' if resume else 'training'} ({time.time() - t_start:.0f} s elapsed)", file=sys.stderr, flush=True)
            try:
                fit(model_config, train_config, data, run_dir, resume=resume, progress="bar" if sys.stderr.isatty() else "none")
            except (TrainingFailed, RunError) as e:
                print(f"{label}: failed: {e}", file=sys.stderr)
                continue
        run = load_run(run_dir)
        runs.append(run)
        print(f"{label}: test loss {run.history[-1]['test_loss']:.2f}, PSNR {run.history[-1]['psnr']:.2f} dB", file=sys.stderr, flush=True)
    command = "python -m trainer.study " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = write_report(Path(args.out), runs, command.strip(), data.source.get("note", args.dataset))
    print(markdown_table(rows))
    print(f"report: {args.out}/results.md ({time.time() - t_start:.0f} s)", file=sys.stderr)
    return 0 if len(runs) == len(configs) else 1


if __name__ == "__main__":
    sys.exit(main())
