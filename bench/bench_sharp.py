"""The sharp models' figures: reconstruction quality and the bound of a run on its test set, and what training cost.

    .venv/bin/python -m bench.bench_sharp measure checkpoints/RUN [RUN ...] [--out reports/sharp]
    .venv/bin/python -m bench.bench_sharp train /tmp/sharp/RUN.cost.json -- --run-name RUN --model resnet ...

measure: for each run folder, on the run's whole test set (trainer.evaluate.evaluation_images: the test split of
its dataset, or its atlas when that cannot be loaded, said so), each image reconstructed through its posterior
mean (the decoder's sigmoid), as the trainer's PSNR is:
  psnr           mean over images of 10 log10(1 / MSE_i), images on [0, 1] (data range 1): the project's PSNR;
  psnr_range2    the same + 20 log10 2 = +6.02 dB: 10 log10(2^2 / MSE_i) with MSE_i still measured on [0, 1],
                 what quoting "data range 2" for [-1, 1] images gives when the error is not rescaled with them;
  psnr_set       10 log10(1 / MSE over every pixel of the set) (<= psnr, by Jensen);
  ssim           trainer.metrics.ssim_per_image (11-px Gaussian window, sigma 1.5, data range 1), averaged;
  neg_elbo       recomputed here: the run's reconstruction term (bce / mse / l1, a sum over pixels) of one
                 posterior sample z ~ q(z|x) (seeded) + KL(q(z|x) || N(0, I)) in nats, at beta = 1, mean
                 over images; `kl` its KL part. With mse or l1 the reconstruction term is not nats, so the
                 bound is not a density (see models/loss.py). History's last test figure is printed beside it.
With --out DIR it also writes DIR/<run>-reconstructions.png (originals above reconstructions, images spread
evenly over the test set, not chosen), DIR/<run>-prior.png (decoded z ~ N(0, T^2 I), T = --temperature,
seeded) and DIR/results.json; with --interpolate A B (emoji runs, CLDR names such as "dog face" "cat face") also
DIR/<run>-interpolation.png: the two emoji's posterior means and INTERPOLATION_STEPS decoded points on the line between.

train: runs `python -m trainer ARGS` as a child (OMP_NUM_THREADS=2 and OMP_WAIT_POLICY=PASSIVE unless set: on a
shared machine the default spinning wait of OpenMP threads bills CPU seconds for idling, several-fold here) and
writes its cost: the child's user + sys CPU seconds (resource.getrusage of children), wall seconds, and the
1-minute load average at its start, at its end and sampled every LOAD_EVERY_S seconds. CPU seconds / 2 is what
the run would take on 2 idle cores if both were kept busy (the honest "minutes on this 2-core CPU").
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.loss import vae_loss
from trainer import demo, metrics
from trainer.emoji import EMOJI_DATASET, load_emoji
from trainer.evaluate import evaluation_images
from trainer.images import png_bytes, tile
from trainer.paths import PROJECT_ROOT
from trainer.runs import Run, RunError, load_run
from trainer.safe_io import atomic_write_bytes, atomic_write_json

RANGE_2_DB = 20 * math.log10(2)  # +6.02 dB: the PSNR of the same error quoted with data range 2
EVAL_BATCH = 250
SEED = 0
STRIP_IMAGES = 12
PRIOR_GRID = 8  # an 8 x 8 grid of prior samples
INTERPOLATION_STEPS = 10
LOAD_EVERY_S = 30
DEFAULT_THREADS = "2"


def display_scale(image_size: int) -> int:
    """Nearest-neighbour magnification so small digits stay visible in a README (28 px -> 3x, 64 px -> 2x)."""
    return max(1, 96 // image_size)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[0, 1] images (N, C, H, W) -> uint8."""
    return (x.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


def magnified_png(images: np.ndarray, cols: int, scale: int) -> bytes:
    """uint8 images (N, C, H, W) tiled in rows of `cols`, magnified `scale` times (nearest), as PNG."""
    shown = tile(images, cols=cols, pad=1, pad_value=255)  # (H', W'[, 3])
    shown = shown.repeat(scale, axis=0).repeat(scale, axis=1)
    return png_bytes(np.ascontiguousarray(shown))


@torch.no_grad()
def measure(run: Run, x_uint8: torch.Tensor) -> tuple[dict[str, Any], torch.Tensor]:
    """The figures for one run on test images (N, C, H, W) uint8, and its reconstructions (N, C, H, W) in [0, 1]."""
    model, tc = run.model.eval(), run.train_config
    gen = torch.Generator().manual_seed(SEED)
    recons, psnr, ssim, recon_sum, kl_sum = [], [], [], 0.0, 0.0
    for xb_uint8 in x_uint8.split(EVAL_BATCH):
        xb = xb_uint8.float() / 255.0  # (b, C, H, W) in [0, 1]
        posterior = model.encode(xb)
        x_hat = torch.sigmoid(model.decode(posterior.mode())).float()
        recons.append(x_hat)
        psnr.append(metrics.psnr_per_image(x_hat, xb))
        ssim.append(metrics.ssim_per_image(x_hat, xb))
        z = posterior.sample(gen)  # (b, D): one seeded sample per image for the bound
        terms = vae_loss(xb, model.decode(z), posterior, recon_loss=tc.recon_loss, beta=1.0)
        recon_sum += float(terms.recon) * len(xb)
        kl_sum += float(terms.kl) * len(xb)
    x_hat = torch.cat(recons)
    x = x_uint8.float() / 255.0
    n = len(x)
    psnr_mean = float(torch.cat(psnr).mean())
    last = run.history[-1]
    deterministic = run.model_config.kind == "ae"
    return {
        "run": run.name, "images": n, "epochs": run.epoch, "latent_shape": list(run.model_config.latent_shape),
        "parameters": model.num_parameters(), "recon_loss": tc.recon_loss, "beta": tc.beta,
        "psnr": psnr_mean, "psnr_range2": psnr_mean + RANGE_2_DB, "psnr_set": metrics.psnr_of_set(x_hat, x),
        "ssim": float(torch.cat(ssim).mean()),
        "neg_elbo": None if deterministic else (recon_sum + kl_sum) / n, "recon": recon_sum / n, "kl": kl_sum / n,
        "history_neg_elbo": None if deterministic else metrics.neg_elbo(last),
        "train_seconds": sum(float(r.get("train_seconds", 0.0)) for r in run.history),
        "epoch_seconds": sum(float(r.get("seconds", 0.0)) for r in run.history),
    }, x_hat


def strip_png(x_uint8: torch.Tensor, x_hat: torch.Tensor, image_size: int) -> bytes:
    """Originals (top row) above their reconstructions (bottom row), STRIP_IMAGES spread evenly over the set."""
    n = len(x_uint8)
    idx = [round(k * (n - 1) / (STRIP_IMAGES - 1)) for k in range(STRIP_IMAGES)]
    both = np.concatenate([x_uint8[idx].numpy(), to_uint8(x_hat[idx])])  # (2 * STRIP_IMAGES, C, H, W)
    return magnified_png(both, STRIP_IMAGES, display_scale(image_size))


@torch.no_grad()
def prior_png(run: Run, temperature: float) -> bytes:
    """PRIOR_GRID x PRIOR_GRID images decoded from z ~ N(0, temperature^2 I), seeded."""
    gen = torch.Generator().manual_seed(SEED)
    z = torch.randn(PRIOR_GRID * PRIOR_GRID, run.model_config.latent_dim, generator=gen) * temperature  # (N, D)
    images = to_uint8(run.model.eval().decode_images(z))
    return magnified_png(images, PRIOR_GRID, display_scale(run.model_config.image_size))


@torch.no_grad()
def interpolation_png(run: Run, first: str, last: str) -> bytes:
    """The emoji named `first` and `last` (any split), then INTERPOLATION_STEPS decodings from mean(first) to mean(last)."""
    data_dir = Path(run.train_config.data_dir).expanduser()
    emoji = load_emoji(data_dir if data_dir.is_absolute() or data_dir.exists() else PROJECT_ROOT / data_dir, run.model_config.image_size)
    missing = [n for n in (first, last) if n not in emoji.names]
    if missing:
        raise SystemExit(f"bench_sharp: no emoji named {missing[0]!r} (names are CLDR short names, e.g. 'dog face')")
    ends = torch.from_numpy(emoji.images[[emoji.names.index(first), emoji.names.index(last)]])  # (2, C, H, W) uint8
    means = run.model.eval().encode_batches(ends).mean  # (2, D)
    t = torch.linspace(0, 1, INTERPOLATION_STEPS)[:, None]  # (S, 1)
    frames = to_uint8(run.model.decode_images((1 - t) * means[0] + t * means[1]))  # (S, C, H, W)
    row = np.concatenate([ends[:1].numpy(), frames, ends[1:].numpy()])
    return magnified_png(row, len(row), display_scale(run.model_config.image_size))


def cost_path(run_dir: Path) -> Path:
    """Where `train` records a run's cost: beside the run folder, not in it (the run folder is the checkpoint)."""
    return demo.cost_path(run_dir.parent, run_dir.name)


def fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def cmd_measure(args: argparse.Namespace) -> int:
    rows = []
    for run_dir in args.runs:
        try:
            run = load_run(run_dir)
        except RunError as e:
            print(f"bench_sharp: {run_dir}: {e}", file=sys.stderr)
            return 2
        torch.manual_seed(SEED)
        x, which, sentence = evaluation_images(run)
        row, x_hat = measure(run, x)
        row["images_from"] = sentence
        cost_file = cost_path(Path(run_dir))
        if cost_file.exists():
            row["cost"] = json.loads(cost_file.read_text())
        rows.append(row)
        print(f"{run.name}: {sentence}")
        print(f"  PSNR (mean per image, range 1) {row['psnr']:.2f} dB | +6.02 (range 2) {row['psnr_range2']:.2f} dB | "
              f"set PSNR {row['psnr_set']:.2f} dB | SSIM {row['ssim']:.4f}")
        print(f"  negative ELBO {fmt(row['neg_elbo'])} ({row['recon_loss']} {row['recon']:.2f} + KL {row['kl']:.1f} nats; "
              f"history's last epoch {fmt(row['history_neg_elbo'])}) | beta {row['beta']:g} | {row['epochs']} epochs | "
              f"{row['parameters']:,} parameters | latent {' x '.join(map(str, row['latent_shape']))}")
        print(f"  trainer's own clock: {row['train_seconds']:.0f} s training, {row['epoch_seconds']:.0f} s with test passes")
        if "cost" in row:
            c = row["cost"]
            print(f"  cost: {c['cpu_s']:.0f} CPU s (user + sys) = {c['cpu_s'] / 2 / 60:.1f} min on 2 idle cores; wall {c['wall_s'] / 60:.1f} min; "
                  f"load {c['load_start']:.1f} -> {c['load_end']:.1f} (mean {fmt(c.get('load_mean'), 1)}); {c['threads']} threads, {c['wait_policy']}")
            if c.get("note"):
                print(f"  note: {c['note']}")
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(args.out / f"{run.name}-reconstructions.png", strip_png(x, x_hat, run.model_config.image_size))
            atomic_write_bytes(args.out / f"{run.name}-prior.png", prior_png(run, args.temperature))
            if args.interpolate and run.train_config.dataset == EMOJI_DATASET:
                atomic_write_bytes(args.out / f"{run.name}-interpolation.png", interpolation_png(run, *args.interpolate))
    if args.out:
        atomic_write_json(args.out / "results.json", {"range_2_db": RANGE_2_DB, "temperature": args.temperature, "runs": rows})
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", DEFAULT_THREADS)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = [sys.executable, "-m", "trainer", *args.trainer_args]
    loads = [os.getloadavg()[0]]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    child = subprocess.Popen(argv, env=env)
    while True:
        try:
            code = child.wait(timeout=LOAD_EVERY_S)
            break
        except subprocess.TimeoutExpired:
            loads.append(os.getloadavg()[0])
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    loads.append(os.getloadavg()[0])
    cost = {
        "command": "python -m trainer " + shlex.join(args.trainer_args), "exit": code,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "user_s": after.ru_utime - before.ru_utime, "sys_s": after.ru_stime - before.ru_stime, "wall_s": wall,
        "load_start": loads[0], "load_end": loads[-1], "load_mean": sum(loads) / len(loads),
        "threads": env["OMP_NUM_THREADS"], "wait_policy": f"OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, Python {platform.python_version()}",
    }
    atomic_write_json(args.cost, cost)
    print(f"cost: {cost['cpu_s']:.0f} CPU s, wall {wall:.0f} s, load {cost['load_start']:.1f} -> {cost['load_end']:.1f} "
          f"(mean {cost['load_mean']:.1f}) -> {args.cost}")
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_sharp", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="the figures of run folders on their test sets")
    m.add_argument("runs", nargs="+", type=Path)
    m.add_argument("--out", type=Path, help="write image strips, prior grids and results.json here")
    m.add_argument("--temperature", type=float, default=1.0, help="prior samples z ~ N(0, T^2 I) (default 1)")
    m.add_argument("--interpolate", nargs=2, metavar=("FIRST", "LAST"), help="emoji runs: interpolate between these two emoji (names)")
    t = sub.add_parser("train", help="train a run as a child process and record its CPU time, wall time and load")
    t.add_argument("cost", type=Path, help="the cost JSON to write (put it beside the run folder: RUNS/NAME.cost.json)")
    t.add_argument("trainer_args", nargs=argparse.REMAINDER, help="-- then the trainer's arguments")
    args = p.parse_args(argv)
    if args.command == "train":
        if args.trainer_args[:1] == ["--"]:
            args.trainer_args = args.trainer_args[1:]
        return cmd_train(args)
    torch.set_num_threads(min(torch.get_num_threads(), int(os.environ.get("OMP_NUM_THREADS", DEFAULT_THREADS))))
    return cmd_measure(args)


if __name__ == "__main__":
    sys.exit(main())
