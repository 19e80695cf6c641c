"""The latent-size study: train models x latent sizes x seeds to convergence and write a report folder.

    python -m trainer.study                                   # defaults below, report in reports/latent-size-study/
    python -m trainer.study --latent-sizes 2 16 --models conv:vae conv:ae --seeds 0 1 --max-epochs 3 --out /tmp/s

Every run holds out `--val-size` training images as a validation set and stops early when their negative
ELBO has not improved by more than `--min-improvement` nats for `--patience` epochs (`--max-epochs` is the cap). Adam at `--lr`, multiplied by
`--lr-gamma` after each epoch of `--lr-milestones` (1e-3, then 1e-4 after epoch 40: the sources' recipe; at a
constant 1e-3 the runs still gained about 0.1 nats an epoch at epoch 75). Each run is an ordinary run folder (open it in the explorer). A half-done sweep
resumes: finished runs are skipped, interrupted ones continue from their last epoch. The report holds
results.csv (one row per run), results.md (per model and latent size, mean and sd over the seeds of the
negative ELBO, objective, recon, KL, MSE, PSNR, set PSNR, SSIM, active units by both definitions, epochs
and seconds) and, for the first seed of each cell, a reconstruction strip and a 2-D latent scatter (PNG).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import CLASSIC_MLP_HIDDEN_DIM, DEFAULT_HIDDEN_DIM, DEFAULT_WIDTHS, ModelConfig

from . import metrics
from .config import TrainConfig
from .data import DataError, load_dataset
from .images import class_colors, png_bytes, reconstruct_uint8, tile
from .projections import plane_2d
from .runs import MANIFEST_FILE, Run, RunError, load_run, read_config, read_status
from .safe_io import UnsafeFileError, atomic_write_json, read_json_dict
from .train import TrainingFailed, best_validation, early_stop_message, fit

DEFAULT_LATENT_SIZES = (2, 4, 10, 16, 64, 256)
# The MLP (784-400-z, as Kingma & Welling's latent-size figure): about 4 s an epoch on the shared 2-core machine
# the report was made on, where the default conv model took 12-30 s (by load): too slow for 3 seeds of 6 latent
# sizes to converge within an hour there. The conv models run with --models conv:vae conv:ae.
DEFAULT_MODELS = ("mlp:vae", "mlp:ae")
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_VAL_SIZE = 1000
DEFAULT_PATIENCE = 5
DEFAULT_MAX_EPOCHS = 100
DEFAULT_LR = 1e-3
# Adam 1e-3, then 1e-4 (the sources' recipe) after epoch 40, where constant-1e-3 runs were still gaining 0.5-1.5 nats in
# 5 epochs; early stopping then ends each run. (A cosine schedule annealed to 0 made every run look converged at its end.)
DEFAULT_LR_MILESTONES = (40,)
DEFAULT_LR_GAMMA = 0.1
# early stopping's smallest validation gain that counts, nats: at 1e-4 a VAE still gains 0.02-0.03 nats an epoch for
# many epochs, so the trainer's default (0.01 in 5 epochs) would run every run to the cap; 0.1 nats in 5 epochs is
# below the smallest sd over seeds (0.18 nats) of the 40-epoch sweep's bound
DEFAULT_MIN_IMPROVEMENT = 0.1
# TrainConfig fields a saved run may differ in from the planned one and still be resumed as it: the cap, and the LR
# milestones and early-stopping threshold when the saved epochs are the start of the planned run (schedule_so_far_differs)
RESUMABLE_DIFFERENCES = ("epochs", "lr_milestones", "min_improvement")
DEFAULT_BATCH_SIZE = 128
DATA_SEED = 0  # the data set is the same for every seed; seeds vary the initialisation, the validation split and the noise
STRIP_IMAGES = 10
SCATTER_SIDE = 240
SCATTER_POINTS = 1000
# results.csv, one row per run; the test-set figures are those of the last trained epoch (the saved weights)
COLUMNS = [
    "model", "kind", "latent_dim", "seed", "epochs", "best_epoch", "stopped_early", "val_neg_elbo", "val_gain", "neg_elbo", "objective",
    "recon", "kl", "mse", "psnr", "psnr_set", "ssim", "active_units_kl", "active_units_burda", "parameters", "seconds",
]
# results.md: (column key, header, decimals) aggregated as mean ± sd over seeds
AGGREGATED = [
    ("neg_elbo", "neg. ELBO", 2), ("objective", "objective", 2), ("recon", "recon", 2), ("kl", "KL", 2), ("mse", "MSE", 4),
    ("psnr", "PSNR (dB)", 2), ("psnr_set", "set PSNR (dB)", 2), ("ssim", "SSIM", 3), ("active_units_kl", "AU (KL > 0.01)", 1),
    ("active_units_burda", "AU (Burda)", 1), ("epochs", "epochs", 1), ("val_gain", "val. gain, last P", 2), ("seconds", "seconds", 0),
]
NOT_APPLICABLE = "—"
# each invocation that trains leaves one record (its command, wall time, load) in the checkpoints folder, so a
# report rewritten by --report-only (e.g. over two processes' disjoint seeds) states what the training cost
SWEEP_RECORD_GLOB = "sweep-*.json"


@dataclass(frozen=True)
class StudyRun:
    """One cell of the sweep: a model at a latent size, trained with one seed."""

    model_config: ModelConfig
    seed: int

    @property
    def name(self) -> str:
        return run_name(self.model_config.arch, self.model_config.kind, self.model_config.latent_dim, self.seed)


def run_name(arch: str, kind: str, latent_dim: int, seed: int) -> str:
    return f"study-{arch}-{kind}-z{latent_dim:03d}-s{seed}"


def parse_model(text: str) -> tuple[str, str]:
    arch, _, kind = text.partition(":")
    ModelConfig(arch=arch, kind=kind or "vae")  # validates, one-line ValueError
    return arch, kind or "vae"


def validation_gain(history: list[dict[str, Any]], window: int) -> float | None:
    """How much the validation negative ELBO fell over the last `window` epochs (> 0: still improving), or None."""
    values = [row["val_neg_elbo"] for row in history if "val_neg_elbo" in row]
    return values[-1 - window] - values[-1] if len(values) > window else None


def result_row(run: Run) -> dict[str, Any]:
    """One run's line of results.csv: the test figures of its last epoch, its early-stopping record and its cost.
    An AE has no KL: its negative ELBO (not a bound) and KL-threshold active units are left empty."""
    last, vae = run.history[-1], run.model_config.kind == "vae"
    tc = run.train_config
    best = best_validation(run.history, tc.min_improvement)
    gain = validation_gain(run.history, tc.patience or DEFAULT_PATIENCE)
    burda = last.get("active_units_burda")
    if burda is None:  # a run trained before the trainer recorded it: the atlas is the test set's first images
        burda = metrics.active_units_burda(torch.from_numpy(run.atlas.means[-1].astype(np.float64)))
    return {
        "model": run.model_config.arch, "kind": run.model_config.kind, "latent_dim": run.model_config.latent_dim,
        "seed": run.train_config.seed, "epochs": run.epoch, "best_epoch": "" if best is None else best[0],
        "stopped_early": early_stop_message(run.history, tc.patience, tc.min_improvement) is not None,
        "val_neg_elbo": "" if best is None else round(best[1], 3), "val_gain": "" if gain is None else round(gain, 3),
        "neg_elbo": round(metrics.neg_elbo(last), 3) if vae else "",
        "objective": round(last["test_loss"], 3), "recon": round(last["test_recon"], 3), "kl": round(last["test_kl"], 3),
        "mse": round(last["mse"], 6), "psnr": round(last["psnr"], 3),
        "psnr_set": round(last.get("psnr_set", metrics.psnr_from_mse(last["mse"])), 3), "ssim": round(last["ssim"], 4),
        "active_units_kl": last["active_units"] if vae else "", "active_units_burda": int(burda),
        "parameters": run.model.num_parameters(), "seconds": round(sum(r["seconds"] for r in run.history), 1),
    }


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, kind, latent size): the seeds and, for each AGGREGATED key, (mean, sd) or None where not applicable."""
    cells: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["latent_dim"], r["model"], r["kind"]), []).append(r)
    out = []
    for (latent, model, kind), group in sorted(cells.items()):
        cell: dict[str, Any] = {"latent_dim": latent, "model": model, "kind": kind, "seeds": sorted(r["seed"] for r in group),
                                "parameters": group[0]["parameters"], "stopped_early": sum(bool(r["stopped_early"]) for r in group)}
        for key, _, _ in AGGREGATED:
            values = [float(r[key]) for r in group if r[key] != ""]
            cell[key] = mean_sd(values) if values else None
        out.append(cell)
    return out


def _pm(value: tuple[float, float] | None, decimals: int) -> str:
    if value is None:
        return NOT_APPLICABLE
    return f"{value[0]:.{decimals}f} ± {value[1]:.{decimals}f}"


def markdown_table(cells: list[dict[str, Any]]) -> str:
    """results.md's table: one line per model and latent size, mean ± sd over its seeds."""
    head = "| latent | model | seeds | " + " | ".join(h for _, h, _ in AGGREGATED) + " | early-stopped | parameters |"
    lines = [head, "|" + " --- |" * (len(AGGREGATED) + 5)]
    for c in cells:
        values = " | ".join(_pm(c[key], d) for key, _, d in AGGREGATED)
        lines.append(f"| {c['latent_dim']} | {c['model']} {c['kind'].upper()} | {len(c['seeds'])} | {values} | "
                     f"{c['stopped_early']} of {len(c['seeds'])} | {c['parameters']:,} |")
    return "\n".join(lines) + "\n"


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
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def latent_scatter(run: Run) -> bytes:
    """The atlas posterior means of the last epoch as a PNG scatter (PCA plane above 2 dimensions)."""
    means = run.atlas.means[-1][:SCATTER_POINTS]  # (N, D)
    return scatter_png(np.asarray(plane_2d(means), np.float64), run.atlas.labels[: len(means)])


def write_report(out: Path, runs: list[Run], command: str, notes: list[str]) -> list[dict[str, Any]]:
    """results.csv, results.md (`command`: how it was made, markdown) and the figures (first seed of each cell)
    into `out`; returns the aggregated cells."""
    out.mkdir(parents=True, exist_ok=True)
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    for old in figures.glob("study-*.png"):  # figures of an earlier sweep would outlive its runs
        old.unlink()
    rows = sorted((result_row(r) for r in runs), key=lambda r: (r["latent_dim"], r["model"], r["kind"], r["seed"]))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    first: dict[tuple[str, str, int], Run] = {}
    for run in sorted(runs, key=lambda r: r.train_config.seed):
        first.setdefault((run.model_config.arch, run.model_config.kind, run.model_config.latent_dim), run)
    for run in first.values():
        (figures / f"{run.name}-reconstructions.png").write_bytes(reconstruction_strip(run))
        (figures / f"{run.name}-scatter.png").write_bytes(latent_scatter(run))
    cells = aggregate(rows)
    text = [
        "# Latent-size study", "", f"Made by {command}.", "", *notes, "",
        "Test-set figures of each run's last trained epoch (its saved weights), mean ± sample sd over the seeds.",
        "neg. ELBO = recon + KL at beta 1 (the bound, per image; for BCE on grayscale MNIST a bound on randomly binarised",
        "images, not a density); objective = what was minimised (here also recon + KL: beta 1, recon weight 1; recon alone",
        f"for the AE, whose neg. ELBO is {NOT_APPLICABLE}); MSE, PSNR (mean of per-image PSNRs), set PSNR (of the set's MSE), data",
        "range 1, and SSIM (Gaussian window 11, sigma 1.5) of reconstructions through the posterior mean; AU = active units:",
        "mean KL per dimension above 0.01 nats, and Burda et al.'s variance of the posterior mean above 0.01; epochs =",
        "epochs trained (early stopping or the cap); val. gain, last P = how much the validation negative ELBO fell over the",
        "last P (= patience) epochs, > 0 where a run was still improving when it stopped; seconds = training, test and",
        "validation passes. See the README's Metrics.",
        "", markdown_table(cells),
        "Figures (first seed of each cell): `figures/<run>-reconstructions.png` (top: test images, bottom: reconstructions)",
        "and `figures/<run>-scatter.png` (the atlas posterior means; PCA to 2-D above 2 dimensions; colours are classes 0-9).", "",
    ]
    (out / "results.md").write_text("\n".join(text))
    return cells


def sweep_runs(args: argparse.Namespace) -> list[StudyRun]:
    """The sweep's runs in training order: latent size, then model, then seed."""
    models = [parse_model(m) for m in args.models]
    return [
        StudyRun(ModelConfig(arch=a, kind=k, latent_dim=z, widths=tuple(args.widths), hidden_dim=hidden_dim(args, a)), seed)
        for z in args.latent_sizes for a, k in models for seed in args.seeds
    ]


def hidden_dim(args: argparse.Namespace, arch: str) -> int:
    """--hidden-dim, or the architecture's own default (the classic 400 for the MLP)."""
    if args.hidden_dim is not None:
        return args.hidden_dim
    return CLASSIC_MLP_HIDDEN_DIM if arch == "mlp" else DEFAULT_HIDDEN_DIM


def train_config_for(args: argparse.Namespace, seed: int) -> TrainConfig:
    """A run's training config: step LR schedule (--lr-milestones, --lr-gamma), early stopping on the validation split."""
    return TrainConfig(
        dataset=args.dataset, data_dir=args.data_dir, epochs=args.max_epochs, batch_size=args.batch_size, lr=args.lr,
        lr_schedule="step", lr_milestones=tuple(args.lr_milestones), lr_gamma=args.lr_gamma, seed=seed, val_size=args.val_size,
        patience=args.patience, min_improvement=args.min_improvement,
    )


def schedule_so_far_differs(saved: TrainConfig, planned: TrainConfig, history: list[dict[str, Any]]) -> str | None:
    """Why a run saved under `saved` with `history` is not the start of a run under `planned` (None when every epoch it
    trained had the learning rate the planned run gives it, step by step, and the planned early stopping would not have
    ended it before its last epoch: resuming it is training the planned run). Only the step schedule, whose rate is a
    function of the epoch, is compared this way."""
    epochs_done = len(history)
    stopped = next((k for k in range(1, epochs_done) if early_stop_message(history[:k], planned.patience, planned.min_improvement)), None)
    if stopped is not None:
        return f"min_improvement {saved.min_improvement:g}: the planned {planned.min_improvement:g} would have stopped it after epoch {stopped}"
    if (saved.lr_schedule, saved.lr, saved.lr_gamma) != (planned.lr_schedule, planned.lr, planned.lr_gamma) or saved.lr_schedule != "step":
        return "another learning-rate schedule"
    bad = next((e for e in range(epochs_done) if saved.lr_at(e, 0.0) != planned.lr_at(e, 0.0)), None)
    if bad is not None:
        return f"lr_milestones {list(saved.lr_milestones)!r}, whose learning rate in epoch {bad + 1} differs from the planned {list(planned.lr_milestones)!r}"
    return None


def describe_model(config: ModelConfig) -> str:
    """`mlp VAE, 784-400-z` or `conv AE, channels 32-32-64, FC 256`: what a model row of the table is."""
    kind = config.kind.upper()
    if config.arch == "mlp":
        return f"{config.arch} {kind}, {config.in_channels * config.image_size**2}-{config.hidden_dim}-z"
    return f"{config.arch} {kind}, channels {'-'.join(map(str, config.widths))}, FC {config.hidden_dim}"


def plan_for(run_dir: Path, model_config: ModelConfig, train_config: TrainConfig) -> str:
    """What the sweep does with `run_dir`: 'train' (nothing saved yet), 'skip' (finished with these settings) or
    'resume' (interrupted, or finished under a lower --max-epochs). RunError if it holds a run with other settings."""
    if not (run_dir / MANIFEST_FILE).exists():
        return "train"
    saved_model, saved_train, _ = read_config(run_dir)
    planned = dataclasses.asdict(model_config) | dataclasses.asdict(train_config)
    saved = dataclasses.asdict(saved_model) | dataclasses.asdict(saved_train)
    differ = [f"{k} {saved[k]!r} (planned {planned[k]!r})" for k in planned if k not in RESUMABLE_DIFFERENCES and saved[k] != planned[k]]
    restart = any(saved[k] != planned[k] for k in RESUMABLE_DIFFERENCES if k != "epochs")
    if not differ and restart:
        # e.g. a run saved before a milestone it lacks: the start of the planned run, resumed under the planned settings
        why = schedule_so_far_differs(saved_train, train_config, load_run(run_dir).history)
        differ = [] if why is None else [why]
    if differ:
        raise RunError(f"{run_dir} holds a run with other settings: {', '.join(differ)}; move it away or pass another --checkpoints-dir")
    status = read_status(run_dir) or {}
    if status.get("state") != "finished":
        return "resume"
    epochs = status.get("epoch")
    if isinstance(epochs, int) and epochs > train_config.epochs:
        raise RunError(f"{run_dir} has trained {epochs} epochs, more than --max-epochs {train_config.epochs}; move it away or raise --max-epochs")
    if restart:  # config.json and status.json take the planned settings, and training goes on if they ask for more
        return "resume"
    stopped = early_stop_message(load_run(run_dir).history, train_config.patience, train_config.min_improvement)
    return "skip" if saved_train.epochs == train_config.epochs or stopped else "resume"


def lr_text(args: argparse.Namespace) -> str:
    """`learning rate 0.001, times 0.1 after epoch 40` (or `constant learning rate 0.001`)."""
    if not args.lr_milestones:
        return f"constant learning rate {args.lr:g}"
    return f"learning rate {args.lr:g}, times {args.lr_gamma:g} after epoch {', '.join(map(str, args.lr_milestones))}"


def load_text() -> str:
    """The 1-, 5- and 15-minute load averages, or '' where the system has none."""
    try:
        return "load %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return ""


def load_1min() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def write_sweep_record(root: Path, record: dict[str, Any]) -> None:
    """One training invocation's record, `sweep-<start time, to the microsecond>-<pid>.json` in the checkpoints folder (atomic)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(record["started"])) + f".{int(record['started'] * 1e6) % 10**6:06d}"
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / f"sweep-{stamp}-{os.getpid()}.json", record)


def read_sweep_records(root: Path) -> list[dict[str, Any]]:
    """The checkpoints folder's invocation records that trained something, oldest first (unreadable ones skipped)."""
    records = []
    for path in sorted(root.glob(SWEEP_RECORD_GLOB)):
        try:
            record = read_json_dict(path)
        except UnsafeFileError:
            continue
        if isinstance(record.get("trained"), int) and record["trained"] > 0 and all(is_real(record.get(k)) for k in ("started", "wall_s")):
            records.append(record)
    return sorted(records, key=lambda r: r["started"])


def is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def sweep_notes(records: list[dict[str, Any]]) -> list[str]:
    """The report's lines on what training cost: each recorded invocation's command, runs trained, wall time and
    load (1-minute load average sampled as each run started), and the span from the first start to the last end."""
    if not records:
        return []
    lines = ["Training invocations recorded in the checkpoints folder:", ""]
    for r in records:
        samples = [v for v in r.get("load_samples", []) if is_real(v)]
        load = (f"1-min load mean {statistics.fmean(samples):.1f} (range {min(samples):.1f}-{max(samples):.1f}) over {len(samples)} samples"
                if samples else "load unknown")
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["started"]))
        lines.append(f"- `{r.get('command', '?')}` (started {started}): trained {r['trained']} runs in {r['wall_s']:.0f} s wall time; {load}")
    span = max(r["started"] + r["wall_s"] for r in records) - min(r["started"] for r in records)
    lines += ["", f"From the first start to the last end: {span:.0f} s ({span / 60:.0f} min) wall time on {os.cpu_count()} CPU cores."]
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.study", description=__doc__.splitlines()[0])
    parser.add_argument("--latent-sizes", type=int, nargs="+", default=list(DEFAULT_LATENT_SIZES))
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="arch:kind pairs, e.g. conv:vae conv-upsample:vae conv:ae mlp:vae")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS), help="one run per seed in every cell")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--val-size", type=int, default=DEFAULT_VAL_SIZE, help="training images held out for early stopping")
    parser.add_argument("--patience", type=int, default=DEFAULT_PATIENCE, help="epochs without a better validation negative ELBO before stopping")
    parser.add_argument("--min-improvement", type=float, default=DEFAULT_MIN_IMPROVEMENT,
                        help="nats: a smaller fall of the validation negative ELBO is no improvement (early stopping)")
    parser.add_argument("--max-epochs", type=int, default=DEFAULT_MAX_EPOCHS, help="the cap on epochs per run")
    parser.add_argument("--widths", type=int, nargs=3, default=list(DEFAULT_WIDTHS), help="conv channels of the three stages")
    parser.add_argument("--hidden-dim", type=int, default=None,
                        help=f"hidden layer width; default {CLASSIC_MLP_HIDDEN_DIM} for mlp, {DEFAULT_HIDDEN_DIM} (the FC layer) for the conv models")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--lr", type=float, default=DEFAULT_LR, help="Adam learning rate")
    parser.add_argument("--lr-milestones", type=int, nargs="*", default=list(DEFAULT_LR_MILESTONES),
                        help="epochs after which the learning rate is multiplied by --lr-gamma (none: constant)")
    parser.add_argument("--lr-gamma", type=float, default=DEFAULT_LR_GAMMA, help="the learning-rate factor at each milestone")
    parser.add_argument("--checkpoints-dir", default="checkpoints/study", help="where the sweep's run folders go")
    parser.add_argument("--out", default="reports/latent-size-study", help="report folder")
    parser.add_argument("--report-only", action="store_true", help="train nothing: report the runs already finished (e.g. of a sweep still running)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        plan = sweep_runs(args)
        configs = {seed: train_config_for(args, seed) for seed in args.seeds}
        data = load_dataset(args.dataset, args.data_dir, seed=DATA_SEED)
    except (ValueError, DataError) as e:
        print(f"python -m trainer.study: error: {e}", file=sys.stderr)
        return 2
    root = Path(args.checkpoints_dir)
    runs: list[Run] = []
    t_start, load_start = time.time(), load_text()
    trained = 0
    load_samples: list[float] = []
    for i, item in enumerate(plan, 1):
        run_dir = root / item.name
        label = f"[{i}/{len(plan)}] {run_dir.name}"
        try:
            action = plan_for(run_dir, item.model_config, configs[item.seed])
            if action != "skip" and args.report_only:
                print(f"{label}: not finished, left out of the report", file=sys.stderr)
                continue
            if action != "skip":
                load_samples += [v for v in [load_1min()] if v is not None]
                print(f"{label}: {'resuming' if action == 'resume' else 'training'} ({time.time() - t_start:.0f} s elapsed, {load_text()})",
                      file=sys.stderr, flush=True)
                fit(item.model_config, configs[item.seed], data, run_dir, resume=action == "resume", progress="bar" if sys.stderr.isatty() else "none")
                trained += 1
            run = load_run(run_dir)
        except (TrainingFailed, RunError) as e:
            print(f"{label}: failed: {e}", file=sys.stderr)
            continue
        runs.append(run)
        last = run.history[-1]
        print(f"{label}: {run.epoch} epochs, neg. ELBO {metrics.neg_elbo(last):.2f}, PSNR {last['psnr']:.2f} dB", file=sys.stderr, flush=True)
    given = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only"]
    command = f"`{' '.join(['python -m trainer.study', *given])}`" + (" (report rewritten by `--report-only`)" if args.report_only else "")
    wall = time.time() - t_start
    if trained:
        write_sweep_record(root, {"command": " ".join(["python -m trainer.study", *given]), "trained": trained, "started": t_start,
                                  "wall_s": round(wall, 1), "load_samples": load_samples, "threads": torch.get_num_threads()})
    epoch_seconds = sum(r["seconds"] for run in runs for r in run.history)
    early = sum(early_stop_message(run.history, run.train_config.patience, run.train_config.min_improvement) is not None for run in runs)
    epochs_run = [run.epoch for run in runs]
    notes = [
        f"Data: {data.source.get('note', args.dataset)}.", "",
        f"Training: Adam, {lr_text(args)}, batch {args.batch_size}; {args.val_size} training images held out per run "
        f"(a choice seeded by the run's seed) as a validation set; early stopping when its negative ELBO has not improved by over "
        f"{args.min_improvement:g} nats for {args.patience} epochs, at most {args.max_epochs} epochs; seeds {', '.join(map(str, args.seeds))}.", "",
        "Models: " + "; ".join(sorted({describe_model(item.model_config) for item in plan})) + ".", "",
        f"Of the {len(runs)} runs, {early} stopped early and {len(runs) - early} ran to the cap of {args.max_epochs} epochs "
        f"(epochs per run: {min(epochs_run, default=0)} to {max(epochs_run, default=0)}).", "",
        f"The {len(runs)} runs' epochs took {epoch_seconds:.0f} s in all (training, test and validation passes; checkpoint writes not counted).",
        f"This invocation trained {trained} of them: {wall:.0f} s wall time on {os.cpu_count()} CPU cores (torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads); {load_start or 'load unknown'} at the start, {load_text() or 'load unknown'} at the end.",
    ]
    if args.report_only:
        notes += ["", *sweep_notes(read_sweep_records(root))]
    cells = write_report(Path(args.out), runs, command, notes)
    print(markdown_table(cells))
    print(f"report: {args.out}/results.md ({wall:.0f} s)", file=sys.stderr)
    return 0 if len(runs) == len(plan) else 1


if __name__ == "__main__":
    sys.exit(main())
