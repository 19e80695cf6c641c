"""The bundled demo runs: train each with the project's trainer, slim it, and document the commands.

    python -m trainer.demo                 # train the runs missing under checkpoints/ (make demo-runs)
    python -m trainer.demo --force         # retrain all of them
    python -m trainer.demo --list          # print the commands only
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import cli, evaluate, metrics, projections, safe_io
from .binarize import is_dynamic
from .export import export_run
from .runs import MANIFEST_FILE, Run, load_run, read_status

BINARIZED_RUN = "mnist-mlp-vae-z20-binarized"
IWAE_SAMPLES = 1000  # importance samples of the IWAE NLL that `make demo-runs` computes for the runs in EVALUATED_RUNS
EVALUATED_RUNS = (BINARIZED_RUN,)  # runs whose IWAE NLL is computed right after training (the literature comparison)
CONV_SCHEDULE = ["--batch-size", "64", "--lr", "2e-3", "--lr-schedule", "cosine", "--weights-dtype", "float16"]
# The sharp residual runs (issue 11): Adam 1e-3, then 1e-4 for the last epochs; float16 weights; small atlases, since
# a run keeps its atlas posteriors of every epoch (epochs x atlas x latent size) and checkpoints/ must stay small.
# They train with --no-projections so their recorded cost is training alone; main() caches the app's maps afterwards.
SHARP_SCHEDULE = ["--res-blocks", "1", "--lr", "1e-3", "--lr-gamma", "0.1", "--weights-dtype", "float16", "--no-projections"]
SHARP_MNIST_RUN = "mnist-resnet-vae-4x7x7"
EMOJI_VECTOR_RUN = "emoji-resnet-vae-z64"
EMOJI_SPATIAL_RUN = "emoji-resnet-vae-4x16x16"
COST_SUFFIX = ".cost.json"  # <checkpoints>/<run>.cost.json: what training the run cost (CPU and wall seconds, load), beside the folder
DEMO_RUNS: list[tuple[str, str, list[str]]] = [
    ("mnist-conv-vae-z2", "conv VAE, latent 2: the scatter and manifold-grid classic", ["--latent-dim", "2", "--epochs", "30", *CONV_SCHEDULE]),
    ("mnist-conv-vae-z16", "conv VAE, latent 16", ["--latent-dim", "16", "--epochs", "15", *CONV_SCHEDULE]),
    (
        "mnist-conv-ae-z2", "conv autoencoder, latent 2: no KL, compare its scatter with the VAE's",
        ["--kind", "ae", "--latent-dim", "2", "--epochs", "20", *CONV_SCHEDULE],
    ),
    (
        "mnist-upsample-vae-z16", "conv VAE with an Upsample + Conv decoder, latent 16",
        ["--model", "conv-upsample", "--latent-dim", "16", "--epochs", "15", *CONV_SCHEDULE],
    ),
    (
        "mnist-mlp-vae-z20", "the classic 784-400-20 MLP VAE",
        ["--model", "mlp", "--latent-dim", "20", "--epochs", "30", "--batch-size", "128", "--lr", "1e-3", "--weights-dtype", "float16"],
    ),
    ("mnist-conv-vae-z2-nokl", "ablation: latent 2 without the KL term (beta 0)", ["--latent-dim", "2", "--beta", "0", "--epochs", "20", *CONV_SCHEDULE]),
    ("mnist-conv-vae-z2-beta4", "ablation: latent 2 with beta 4", ["--latent-dim", "2", "--beta", "4", "--epochs", "20", *CONV_SCHEDULE]),
    (
        BINARIZED_RUN, "the classic 784-400-20 MLP VAE on dynamically binarised MNIST: the literature's benchmark setting, a true NLL",
        ["--model", "mlp", "--latent-dim", "20", "--binarize", "dynamic", "--epochs", "100", "--batch-size", "128", "--lr", "1e-3", "--atlas-size", "500"],
    ),
    (
        "fashion-conv-vae-z16", "Fashion-MNIST (full, Debian's dataset-fashion-mnist) conv VAE, latent 16",
        ["--dataset", "fashion-mnist", "--latent-dim", "16", "--epochs", "3", *CONV_SCHEDULE],
    ),
    (
        SHARP_MNIST_RUN, "sharp residual VAE, a 4 x 7 x 7 spatial latent (beta 1e-4): the seeds' sharp MNIST model",
        ["--model", "resnet", "--bottleneck", "spatial", "--latent-channels", "4", "--widths", "16,32,64", "--recon-loss", "bce",
         "--beta", "1e-4", "--epochs", "24", "--batch-size", "64", "--lr-milestones", "20", "--atlas-size", "150", *SHARP_SCHEDULE],
    ),
    (
        EMOJI_VECTOR_RUN, "colour emoji (64 px) residual VAE, vector latent 64 (beta 1): sample the prior",
        ["--dataset", "emoji", "--model", "resnet", "--bottleneck", "vector", "--latent-dim", "64", "--widths", "8,16,32,64",
         "--recon-loss", "bce", "--beta", "1", "--epochs", "25", "--batch-size", "32", "--lr-milestones", "20", "--atlas-size", "200",
         *SHARP_SCHEDULE],
    ),
    (
        EMOJI_SPATIAL_RUN, "colour emoji (64 px) residual VAE, a 4 x 16 x 16 spatial latent (beta 1e-4): sharp reconstructions",
        ["--dataset", "emoji", "--model", "resnet", "--bottleneck", "spatial", "--latent-channels", "4", "--widths", "8,16,32",
         "--recon-loss", "bce", "--beta", "1e-4", "--epochs", "15", "--batch-size", "32", "--lr-milestones", "12", "--atlas-size", "24",
         *SHARP_SCHEDULE],
    ),
]


def command(name: str, args: list[str], checkpoints: str) -> list[str]:
    return ["python", "-m", "trainer", "--run-name", name, "--checkpoints-dir", checkpoints, "--seed", "0", *args]


def write_readme(root: Path) -> None:
    lines = [
        "# Bundled demo runs",
        "",
        "Complete run folders trained with this project's own trainer, so the explorer has real models on first start.",
        "Retrain all of them with `make demo-runs` (`python -m trainer.demo --force`); each run alone with the command below,",
        "followed by `python -m trainer.export checkpoints/NAME --drop-optimizer` (bundled runs carry only their latest epoch",
        "and no optimiser state, to stay small: they open everywhere but cannot be resumed).",
        "",
        "| run | what | data | epochs | test objective | test negative ELBO | IWAE NLL | reconstruction term | PSNR (dB) | SSIM "
        "| training time, device | command |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, what, args in DEMO_RUNS:
        run_dir = root / name
        if not (run_dir / MANIFEST_FILE).exists():
            continue
        run = load_run(run_dir)
        last = run.history[-1]
        data = run.info["data"]
        data_text = f"{data['name']} ({data['kind']}: {len(run.atlas.images):,}-image atlas)"
        cmd = " ".join(shlex.quote(a) for a in command(name, args, "checkpoints"))
        term = metrics.recon_label(run.train_config.recon_loss, is_dynamic(run.train_config.binarize), run.model_config.in_channels > 1)
        lines.append(
            f"| `{name}` | {what} | {data_text} | {run.epoch} | {last['test_loss']:.2f} | {_bound_text(run, last)} | {_iwae_text(run)} "
            f"| {term} | {last['psnr']:.2f} | {_ssim_text(last)} | {_cost_text(read_cost(root, name), str(run.info.get('device', '?')))} | `{cmd}` |"
        )
    lines += [
        "",
        "Test objective: what was optimised, recon_weight x reconstruction + beta x KL. Test negative ELBO: reconstruction + KL,",
        "unweighted (beta = 1), the bound; the two differ where beta is not 1 (the beta-4 and beta-0 runs, and the sharp residual runs",
        "at beta 1e-4, whose KL of hundreds to thousands of nats is nearly free in their objective). IWAE NLL: `python -m trainer.evaluate RUN`",
        "(importance-weighted bound, K samples, mean over the first N test images, +- its standard error), where it was run.",
        "Only for binary targets is the reconstruction term a likelihood: the negative ELBO and IWAE NLL of the other runs are",
        "BCE on grayscale pixels, which even a perfect model cannot bring below 44.06 nats per test digit (their binary entropy).",
        "",
        "MNIST here is the bundled offline subset (8,000 train / 2,000 test real digits, see `data/mnist-subset/README.md`):",
        "numbers measured on it are not comparable with numbers on full MNIST.",
        "",
        "PSNR and SSIM: the last epoch's test figures (mean per image, data range 1, reconstructions through the posterior mean).",
        "Training time: from `<run>.cost.json` beside the run folder where one was recorded (`python -m bench.bench_sharp train`,",
        "or `make demo-runs` itself): wall minutes, CPU minutes (user + sys, all threads) and CPU seconds / 2, what the run takes",
        "on 2 idle cores, with the 1-minute load average at its start, at its end and its mean over samples; the record's `note`",
        "says when a run was trained in several sittings (`--resume` continues exactly). On a shared machine set OMP_WAIT_POLICY=PASSIVE: the default spinning",
        "wait of OpenMP threads bills CPU seconds for idling. The sharp runs' figures on their whole test sets, with image strips:",
        "`python -m bench.bench_sharp measure checkpoints/RUN` (the README's \"Sharp models: measured\").",
        "",
    ]
    (root / "README.md").write_text("\n".join(lines))


class CostMeter:
    """What training one run costs this process: CPU seconds (user + sys, all threads), wall seconds, the 1-minute load.

    The same record `python -m bench.bench_sharp train` writes for a trainer run as a child process."""

    def __init__(self) -> None:
        self.usage = resource.getrusage(resource.RUSAGE_SELF)
        self.wall = time.perf_counter()
        self.load = os.getloadavg()[0]

    def record(self, trainer_args: list[str]) -> dict[str, Any]:
        after = resource.getrusage(resource.RUSAGE_SELF)
        user, system = after.ru_utime - self.usage.ru_utime, after.ru_stime - self.usage.ru_stime
        load_end = os.getloadavg()[0]
        return {
            "command": "python -m trainer " + shlex.join(trainer_args), "exit": 0, "cpu_s": user + system, "user_s": user, "sys_s": system,
            "wall_s": time.perf_counter() - self.wall, "load_start": self.load, "load_end": load_end,
            "threads": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count())),
            "wait_policy": f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(default)')}",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        }


def cost_path(root: Path, name: str) -> Path:
    return root / f"{name}{COST_SUFFIX}"


def read_cost(root: Path, name: str) -> dict[str, Any] | None:
    """The run's cost record, or None when there is none (runs trained before costs were recorded) or it is unreadable."""
    path = cost_path(root, name)
    if not path.exists():
        return None
    try:
        doc = safe_io.read_json_dict(path)
    except (OSError, safe_io.UnsafeFileError):
        return None
    numbers = ("cpu_s", "wall_s", "load_start", "load_end")
    return doc if all(isinstance(doc.get(k), (int, float)) for k in numbers) else None


def _cost_text(cost: dict[str, Any] | None, device: str) -> str:
    """`24.6 min wall, 12.8 CPU-min (6.4 min on 2 idle cores), load 9.0 at start, 12.0 at end, mean 10.2, cpu`, or the device alone."""
    if cost is None:
        return f"- ({device})"
    return (f"{cost['wall_s'] / 60:.1f} min wall, {cost['cpu_s'] / 60:.1f} CPU-min ({cost['cpu_s'] / 120:.1f} min on 2 idle cores), "
            f"load {cost['load_start']:.1f} at start, {cost['load_end']:.1f} at end{_mean_load_text(cost)}, {device}")


def _mean_load_text(cost: dict[str, Any]) -> str:
    mean = cost.get("load_mean")
    return f", mean {mean:.1f}" if isinstance(mean, (int, float)) else ''


def cache_projections(run_dir: Path) -> None:
    """The app's UMAP and t-SNE maps of the run's last atlas snapshot, cached in the run folder (as the trainer does when
    it trains without --no-projections), so the bundled run's first view computes nothing."""
    run = load_run(run_dir)
    means = run.atlas.means[-1].astype(np.float32)  # (N, D)
    for method in projections.EMBEDDINGS:
        projections.cached_embedding(run_dir, run.epoch, means, method, seed=run.train_config.seed)


def _bound_text(run: Run, last: dict) -> str:
    """The test negative ELBO of a VAE; an autoencoder has none (no posterior, no KL)."""
    return "- (autoencoder: no bound)" if run.model_config.kind == "ae" else f"{metrics.neg_elbo(last):.2f}"


def _ssim_text(last: dict) -> str:
    return f"{last['ssim']:.3f}" if isinstance(last.get("ssim"), float) else "-"


def _iwae_text(run: Run) -> str:
    """`86.52 +- 0.61 (K 1000, 2,000 images)` from the run's evaluation file, or a dash."""
    doc = evaluate.read_evaluation(run.path, run.epoch)
    if doc is None:
        return "-"
    err = doc.get("nll_iwae_stderr")
    err_text = f" +- {err:.2f}" if isinstance(err, float) else ""
    return f"{doc['nll_iwae']:.2f}{err_text} (K {doc['samples']:,}, {doc['images']:,} images)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints-dir", default=cli.DEFAULT_CHECKPOINTS_DIR)
    parser.add_argument("--force", action="store_true", help="retrain runs that already exist")
    parser.add_argument("--list", action="store_true", help="print the commands and exit")
    parser.add_argument("--only", nargs="*", default=None, help="names of the runs to train")
    args = parser.parse_args(argv)
    root = Path(args.checkpoints_dir)
    for name, _, run_args in DEMO_RUNS:
        if args.only is not None and name not in args.only:
            continue
        argv_run = command(name, run_args, str(root))
        if args.list:
            print(" ".join(shlex.quote(a) for a in argv_run))
            continue
        run_dir = root / name
        if (run_dir / MANIFEST_FILE).exists() and not args.force:
            print(f"{name}: exists, skipped (--force retrains)")
            continue
        shutil.rmtree(run_dir, ignore_errors=True)
        t0 = time.time()
        meter = CostMeter()
        code = cli.main(argv_run[3:] + ["--progress", "none"])
        state = (read_status(run_dir) or {}).get("state")
        if code != 0 or state != "finished":
            print(f"{name}: {state or 'not trained'}; stopping here (run `make demo-runs` again to continue)", file=sys.stderr)
            return code or 1
        safe_io.atomic_write_json(cost_path(root, name), meter.record(argv_run[3:]))
        export_run(run_dir, drop_optimizer=True)
        if "--no-projections" in run_args:
            cache_projections(run_dir)
        if name in EVALUATED_RUNS and evaluate.main([str(run_dir), "--samples", str(IWAE_SAMPLES)]) != 0:
            print(f"{name}: the IWAE evaluation failed; stopping here", file=sys.stderr)
            return 1
        print(f"{name}: trained in {time.time() - t0:.0f} s")
    if not args.list:
        write_readme(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
