"""The bundled demo runs: train each with the project's trainer, slim it, and document the commands.

    python -m trainer.demo                 # train the runs missing under checkpoints/ (make demo-runs)
    python -m trainer.demo --force         # retrain all of them
    python -m trainer.demo --list          # print the commands only
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from pathlib import Path

from . import cli, evaluate, metrics
from .binarize import is_dynamic
from .export import export_run
from .runs import MANIFEST_FILE, Run, load_run, read_status

BINARIZED_RUN = "mnist-mlp-vae-z20-binarized"
IWAE_SAMPLES = 1000  # importance samples of the IWAE NLL that `make demo-runs` computes for the runs in EVALUATED_RUNS
EVALUATED_RUNS = (BINARIZED_RUN,)  # runs whose IWAE NLL is computed right after training (the literature comparison)
CONV_SCHEDULE = ["--batch-size", "64", "--lr", "2e-3", "--lr-schedule", "cosine", "--weights-dtype", "float16"]
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
        "| run | what | data | epochs | test objective | test negative ELBO | IWAE NLL | reconstruction term | PSNR (dB) | command |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
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
        term = metrics.recon_label(run.train_config.recon_loss, is_dynamic(run.train_config.binarize))
        lines.append(
            f"| `{name}` | {what} | {data_text} | {run.epoch} | {last['test_loss']:.2f} | {_bound_text(run, last)} | {_iwae_text(run)} "
            f"| {term} | {last['psnr']:.2f} | `{cmd}` |"
        )
    lines += [
        "",
        "Test objective: what was optimised, recon_weight x reconstruction + beta x KL. Test negative ELBO: reconstruction + KL,",
        "unweighted (beta = 1), the bound; the two differ for the beta-4 and beta-0 runs. IWAE NLL: `python -m trainer.evaluate RUN`",
        "(importance-weighted bound, K samples, mean over the first N test images, +- its standard error), where it was run.",
        "Only for binary targets is the reconstruction term a likelihood: the negative ELBO and IWAE NLL of the other runs are",
        "BCE on grayscale pixels, which even a perfect model cannot bring below 44.06 nats per test digit (their binary entropy).",
        "",
        "MNIST here is the bundled offline subset (8,000 train / 2,000 test real digits, see `data/mnist-subset/README.md`):",
        "numbers measured on it are not comparable with numbers on full MNIST.",
        "",
    ]
    (root / "README.md").write_text("\n".join(lines))


def _bound_text(run: Run, last: dict) -> str:
    """The test negative ELBO of a VAE; an autoencoder has none (no posterior, no KL)."""
    return "- (autoencoder: no bound)" if run.model_config.kind == "ae" else f"{metrics.neg_elbo(last):.2f}"


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
        code = cli.main(argv_run[3:] + ["--progress", "none"])
        state = (read_status(run_dir) or {}).get("state")
        if code != 0 or state != "finished":
            print(f"{name}: {state or 'not trained'}; stopping here (run `make demo-runs` again to continue)", file=sys.stderr)
            return code or 1
        export_run(run_dir, drop_optimizer=True)
        if name in EVALUATED_RUNS and evaluate.main([str(run_dir), "--samples", str(IWAE_SAMPLES)]) != 0:
            print(f"{name}: the IWAE evaluation failed; stopping here", file=sys.stderr)
            return 1
        print(f"{name}: trained in {time.time() - t0:.0f} s")
    if not args.list:
        write_readme(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
