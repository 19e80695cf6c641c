"""An independent check of `python -m trainer.evaluate`: the IWAE NLL of a run computed a second way.

    .venv/bin/python -m bench.check_iwae                                        # the bundled binarised MLP VAE, 2,000 images, K 1000
    .venv/bin/python -m bench.check_iwae checkpoints/RUN --images 200 --samples 1000 --seed 1

The second estimate shares nothing with trainer/evaluate.py but the model and the test images: the
densities are torch.distributions' (Normal for q(z|x) and the prior, Bernoulli on the decoder's logits
for p(x|z)), the samples are drawn by `Normal.sample` under their own seed (default 1; trainer.evaluate's
is 0), K samples of an image at once, and log (1/K) sum_k w_k is a plain logsumexp over them in float64.
Both are printed as one JSON line: the two NLLs, trainer.evaluate's standard error over images, their
difference and whether it is within that standard error plus TOLERANCE_NATS (issue 10's criterion). The
images are the run's test split, binarised once by the fixed seed for a `--binarize dynamic` run, as
trainer.evaluate takes them (the check refuses a run whose test set cannot be loaded). Only BCE runs
(Bernoulli decoders) are checked.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import torch
from torch.distributions import Bernoulli, Normal

from models import to_float_images
from trainer import binarize
from trainer.data import load_dataset
from trainer.paths import DEFAULT_CHECKPOINTS_DIR, PROJECT_ROOT
from trainer.runs import Run, load_run

BUNDLED_RUN = DEFAULT_CHECKPOINTS_DIR / "mnist-mlp-vae-z20-binarized"
DEFAULT_SAMPLES = 1000  # K, as the README's IWAE figures
DEFAULT_SEED = 1  # not trainer.evaluate's default (0): independent samples
TOLERANCE_NATS = 0.5  # issue 10: agree within the standard error plus this
IMAGES_PER_CHUNK = 8  # images whose K samples are decoded in one pass (8 x 1000 x 784 logits: 25 MB)


def test_images(run: Run, limit: int | None) -> torch.Tensor:
    """The run's first `limit` test images (N, C, H, W) uint8, binarised once as for evaluation when the run was."""
    tc, mc = run.train_config, run.model_config
    data_dir = tc.data_dir if tc.data_dir.startswith("/") else str(PROJECT_ROOT / tc.data_dir)
    data = load_dataset(tc.dataset, data_dir, mc.image_size, mc.in_channels, download=False, seed=tc.seed)
    x = data.test_x[:limit] if not binarize.is_dynamic(tc.binarize) else binarize.binarized_test_set(data.test_x)[:limit]
    return x


@torch.no_grad()
def independent_nll(model: torch.nn.Module, images: torch.Tensor, samples: int, seed: int) -> torch.Tensor:
    """-log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x) per image, (N,) float64, with torch.distributions' densities."""
    out = torch.empty(len(images), dtype=torch.float64)
    prior = Normal(torch.tensor(0.0), torch.tensor(1.0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, len(images), IMAGES_PER_CHUNK):
            x = to_float_images(images[start : start + IMAGES_PER_CHUNK])  # (B, C, H, W) in [0, 1]
            posterior = model.encode(x)
            q = Normal(posterior.mean, torch.exp(0.5 * posterior.logvar))  # batch shape (B, D)
            z = q.sample((samples,))  # (K, B, D)
            log_q = q.log_prob(z).double().sum(-1)  # (K, B)
            log_prior = prior.log_prob(z).double().sum(-1)  # (K, B)
            logits = model.decode(z.reshape(-1, z.shape[-1])).reshape(samples, len(x), -1)  # (K, B, C*H*W)
            log_lik = Bernoulli(logits=logits.double(), validate_args=False).log_prob(x.reshape(1, len(x), -1).double()).sum(-1)  # (K, B)
            out[start : start + len(x)] = math.log(samples) - torch.logsumexp(log_lik + log_prior - log_q, dim=0)
    return out


def check(run: Run, images: int | None = None, samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """Both estimates on the same images: the independent one here and trainer.evaluate's (its default seed)."""
    from trainer.evaluate import evaluate_run  # the estimate under test, called as its users call it

    if run.train_config.recon_loss != "bce" or run.model_config.kind != "vae":
        raise SystemExit(f"check_iwae: run '{run.name}' is not a BCE VAE (recon {run.train_config.recon_loss}, {run.model_config.kind})")
    x = test_images(run, images)
    t0 = time.perf_counter()
    nll = independent_nll(run.model, x, samples, seed)
    t1 = time.perf_counter()
    record = evaluate_run(run, samples=samples, images=len(x))
    t2 = time.perf_counter()
    if record["image_set"] != "test" or record["images"] != len(x):
        raise SystemExit(f"check_iwae: trainer.evaluate used other images ({record['images_used']})")
    mine = float(nll.mean())
    difference = mine - record["nll_iwae"]
    return {
        "run": run.name, "epoch": run.epoch, "images": len(x), "samples": samples, "binary": bool(((x == 0) | (x == 255)).all()),
        "nll_independent": mine, "nll_independent_stderr": float(nll.std()) / math.sqrt(len(x)) if len(x) > 1 else None,
        "seed_independent": seed, "nll_trainer_evaluate": record["nll_iwae"], "nll_trainer_evaluate_stderr": record["nll_iwae_stderr"],
        "seed_trainer_evaluate": record["seed"], "difference": difference,
        "agree": abs(difference) <= (record["nll_iwae_stderr"] or 0.0) + TOLERANCE_NATS,
        "seconds_independent": round(t1 - t0, 1), "seconds_trainer_evaluate": round(t2 - t1, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.check_iwae", description=__doc__.splitlines()[0])
    p.add_argument("run", nargs="?", default=str(BUNDLED_RUN), help="a run folder (default: the bundled binarised MLP VAE)")
    p.add_argument("--images", type=int, default=None, help="the first N test images (default all)")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help=f"K (default {DEFAULT_SAMPLES})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed of the independent samples (default {DEFAULT_SEED})")
    args = p.parse_args(argv)
    result = check(load_run(args.run), args.images, args.samples, args.seed)
    print(json.dumps(result), flush=True)
    return 0 if result["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
