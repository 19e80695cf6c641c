"""`python -m trainer.evaluate RUN`: the importance-weighted bound on a run's test set, a number to cite.

    python -m trainer.evaluate checkpoints/mnist-mlp-vae-z20 [--samples 1000] [--images N] [--batch-size B] [--seed 0]

The IWAE bound (Burda, Grosse & Salakhutdinov 2015) with K samples z_k ~ q(z|x):

    log p(x) >= log (1/K) sum_k p(x | z_k) p(z_k) / q(z_k | x)

is reported as an NLL in nats per image (minus the bound, averaged over images) with its standard
error over images, beside the negative ELBO (analytic KL, reconstruction averaged over the same K
samples, beta = 1, recon_weight = 1) on the same images. log p(x|z) is minus the project's
reconstruction term (models.reconstruction_per_sample), so what the number means depends on the
run's recon loss; the `likelihood` field says it in words. The result is printed as one JSON line
and written into the run folder as `evaluation-EEEEEE.json` (E = the run's epoch);
`read_evaluation` reads it back for the app. The same seed and batch size give the same figures.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from models import DiagonalGaussian, reconstruction_per_sample, standard_normal_log_density, to_float_images
from models.distributions import LOG_2PI

from . import binarize, metrics, safe_io
from .config import is_int, is_number
from .data import FOLDER_PREFIX, DataError, load_dataset
from .errors import first_line
from .paths import DEFAULT_CHECKPOINTS_DIR, PROJECT_ROOT
from .runs import Run, RunError, load_run, versioned

PROG = "python -m trainer.evaluate"
EVALUATION_STEM = "evaluation"
DEFAULT_SAMPLES = 1000
MAX_SAMPLES = 1_000_000
DEFAULT_SEED = 0
DEFAULT_PIXELS_PER_PASS = 2**22  # decoded pixels per forward pass when --batch-size is not given (16 MiB of float32)
UINT8_MAX = 255
LIKELIHOOD_LABELS = {
    ("bce", True): "Bernoulli NLL of binary images: a bound on a true likelihood",
    ("bce", False): "BCE on grayscale targets: a bound on randomly binarised images, not a density",
    ("mse", True): "sum of squared errors: not a likelihood",
    ("mse", False): "sum of squared errors: not a likelihood",
    ("l1", True): "sum of absolute errors, not nats: not a likelihood",
    ("l1", False): "sum of absolute errors, not nats: not a likelihood",
}
RESULT_NUMBERS = ("nll_iwae", "neg_elbo")  # what read_evaluation insists on, besides the integers below
RESULT_INTEGERS = ("epoch", "samples", "images")


class UserError(Exception):
    """A mistake on the command line or an unusable run: exit status 2 and one line."""


# ---------------------------------------------------------------- the estimator


def log_importance_weights(log_px_given_z: torch.Tensor, log_pz: torch.Tensor, log_qz: torch.Tensor) -> torch.Tensor:
    """log w = log p(x|z) + log p(z) - log q(z|x), elementwise, in float64 (all inputs of one shape, e.g. (K, N))."""
    return log_px_given_z.double() + log_pz.double() - log_qz.double()


def iwae_log_likelihood(log_px_given_z: torch.Tensor, log_pz: torch.Tensor, log_qz: torch.Tensor) -> torch.Tensor:
    """The IWAE estimate log (1/K) sum_k w_k per image, (N,) float64, from (K, N) log densities of K samples.

    With K = 1 its expectation is the ELBO; it rises towards log p(x) as K grows, and equals log p(x)
    for every K when q is the exact posterior (then every weight is p(x)).
    """
    log_w = log_importance_weights(log_px_given_z, log_pz, log_qz)  # (K, N)
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


def posterior_log_density(eps: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log q(z|x) at z = mean + std * eps under the diagonal Gaussian q = N(mean, exp(logvar)), (..., D) -> (...).

    Taken from the noise rather than from z - mean, which loses precision when std is tiny next to the mean.
    """
    return -0.5 * (eps.pow(2) + logvar + LOG_2PI).sum(dim=-1)


def binary_targets(images: torch.Tensor) -> bool:
    """Whether every pixel is black or white (uint8 0/255, or float 0/1)."""
    top = UINT8_MAX if images.dtype == torch.uint8 else 1
    return bool(((images == 0) | (images == top)).all())


def likelihood_label(recon_loss: str, binary: bool) -> str:
    """What the reported NLL is, in words, for a reconstruction loss and binary or grayscale targets."""
    return LIKELIHOOD_LABELS.get((recon_loss, binary), f"minus the '{recon_loss}' reconstruction term used as log p(x|z)")


def units_label(recon_loss: str, binary: bool) -> str:
    """The unit of the record's figures: nats only where the reconstruction term is a true log-density."""
    if recon_loss == "bce":
        return "nats per image" if binary else "per image (a BCE-based bound on randomly binarised images, not nats of these images)"
    return f"per image ({recon_loss}-based: not nats)"


@dataclass(frozen=True)
class PerImage:
    """Per-image figures in nats, (N,) float64 on the CPU."""

    nll_iwae: torch.Tensor  # -log (1/K) sum_k w_k
    neg_elbo: torch.Tensor  # mean_k recon(z_k) + KL(q || N(0, I))


def default_batch_size(image_shape: tuple[int, ...]) -> int:
    """Latent samples decoded per pass: about DEFAULT_PIXELS_PER_PASS pixels' worth of images."""
    return max(1, DEFAULT_PIXELS_PER_PASS // max(math.prod(image_shape), 1))


def passes(n_images: int, samples: int, batch_size: int) -> tuple[int, int]:
    """(images per chunk, samples per pass) so that one pass decodes at most max(batch_size, 1 image) rows."""
    per_pass = min(samples, batch_size)
    return max(1, min(n_images, batch_size // per_pass)), per_pass


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    samples: int = DEFAULT_SAMPLES,
    recon_loss: str = "bce",
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
) -> PerImage:
    """IWAE NLL and negative ELBO of every image (N, C, H, W) (uint8, or float in [0, 1]) under `model`.

    `model` has the VAE interface: encode(x) -> DiagonalGaussian (B, D), decode(z) -> logits (B, C, H, W).
    At most `batch_size` latent samples (samples x images) are decoded per pass (default: about
    DEFAULT_PIXELS_PER_PASS pixels); `progress` is called with the number of images each chunk finished.
    Raises ValueError for a deterministic encoder (an autoencoder has no q to weight by).
    """
    if not is_int(samples) or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    n_images = len(images)
    batch_size = batch_size or default_batch_size(tuple(images.shape[1:]))
    device = next(model.parameters()).device
    chunk, per_pass = passes(n_images, samples, batch_size)
    nll, neg_elbo = torch.empty(n_images, dtype=torch.float64), torch.empty(n_images, dtype=torch.float64)
    for start in range(0, n_images, chunk):
        x = to_float_images(images[start : start + chunk]).to(device)  # (B, C, H, W)
        b = len(x)
        posterior = model.encode(x)  # over (B, D)
        if posterior.deterministic:
            raise ValueError("the model is an autoencoder: its posterior has no variance, so there is no likelihood bound to estimate")
        mean, logvar = posterior.mean.float(), posterior.logvar.float()
        lse = torch.full((b,), -math.inf, dtype=torch.float64, device=device)  # running logsumexp of the weights
        recon_sum = torch.zeros(b, dtype=torch.float64, device=device)
        for s0 in range(0, samples, per_pass):
            s = min(per_pass, samples - s0)
            q = DiagonalGaussian(mean.expand(s, b, -1).reshape(s * b, -1), logvar.expand(s, b, -1).reshape(s * b, -1))  # (S*B, D)
            eps = torch.randn(q.mean.shape, generator=generator, device=device, dtype=q.mean.dtype)  # (S*B, D)
            z = q.sample(eps=eps)  # (S*B, D)
            logits = model.decode(z).float()  # (S*B, C, H, W)
            target = x.expand(s, *x.shape).reshape(s * b, *x.shape[1:])  # (S*B, C, H, W)
            recon = reconstruction_per_sample(logits, target, recon_loss).view(s, b)  # (S, B) = -log p(x|z)
            log_w = log_importance_weights(-recon, standard_normal_log_density(z).view(s, b), posterior_log_density(eps, q.logvar).view(s, b))
            lse = torch.logaddexp(lse, torch.logsumexp(log_w, dim=0))
            recon_sum += recon.double().sum(dim=0)
        nll[start : start + b] = (math.log(samples) - lse).cpu()
        neg_elbo[start : start + b] = (recon_sum / samples + DiagonalGaussian(mean, logvar).kl().double()).cpu()
        if progress is not None:
            progress(b)
    return PerImage(nll, neg_elbo)


def mean_and_stderr(values: torch.Tensor) -> tuple[float, float | None]:
    """Mean and standard error (sample sd / sqrt(N)) of (N,) values; the error is None for a single value."""
    n = len(values)
    if n < 2:
        return float(values.mean()), None
    return float(values.mean()), float(values.std(unbiased=True)) / math.sqrt(n)


# ---------------------------------------------------------------- which images


def _data_dir(data_dir: str) -> Path:
    """The run's data folder as the trainer saw it: relative to the working folder, else to the project."""
    path = Path(data_dir).expanduser()
    return path if path.is_absolute() or path.exists() else PROJECT_ROOT / path


def _provenance_mismatch(recorded: dict[str, Any], found: dict[str, Any]) -> str | None:
    """Why the data found now is not the run's (None when it is, as far as config.json records)."""
    for key in ("name", "kind") + (("path",) if recorded.get("kind") == "folder" else ()):
        if key in recorded and recorded.get(key) != found.get(key):
            return f"the run was trained on {key} {recorded.get(key)!r}, found {found.get(key)!r}"
    return None


def evaluation_images(run: Run, limit: int | None = None) -> tuple[torch.Tensor, str, str]:
    """The run's test images (N, C, H, W) uint8, which set they are ('test' or 'atlas'), and a sentence saying so.

    The test split of the run's dataset (train_config.dataset / data_dir, the model's image size and
    channels) when it can be loaded and matches config.json's data provenance; otherwise the run's
    atlas (its fixed test subset). `limit` keeps the first N.
    """
    tc, mc = run.train_config, run.model_config
    recorded = run.info.get("data") or {}
    try:
        data = load_dataset(tc.dataset, _data_dir(tc.data_dir), mc.image_size, mc.in_channels, download=False, seed=tc.seed)
        reason = _provenance_mismatch(recorded, data.source)
        if reason is None and tuple(data.test_x.shape[1:]) != mc.image_shape:
            reason = f"its test images have shape {tuple(data.test_x.shape[1:])}, the model takes {mc.image_shape}"
    except (DataError, OSError, ValueError) as e:
        reason = f"the dataset could not be loaded ({first_line(e)})"
    if reason is None and len(data.test_x):
        test_x = binarize.eval_images(data.test_x, tc.binarize)  # a binarised run's test set: drawn once by the fixed seed
        images, total = test_x[:limit], len(test_x)
        name, kind, where = data.source.get("name", tc.dataset), data.source.get("kind", "?"), data.source.get("path")
        what = f"{name} ({kind})" if tc.dataset.startswith(FOLDER_PREFIX) or not where else f"{name} ({kind}, {where})"
        return images, "test", f"the first {len(images):,} of the {total:,} test images of {what}"
    atlas = torch.from_numpy(run.atlas.images)
    images = atlas[:limit]
    why = reason or "the test set is empty"
    return images, "atlas", f"the first {len(images):,} of the run's {len(atlas):,} atlas images (its fixed test subset), because {why}"


# ---------------------------------------------------------------- the run's evaluation file


def evaluation_path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / versioned(EVALUATION_STEM, epoch, ".json")


def read_evaluation(run_dir: str | os.PathLike, epoch: int) -> dict[str, Any] | None:
    """The evaluation saved for `epoch` of a run, or None if there is none or it is not a sound one (never raises for a bad file)."""
    try:
        doc = safe_io.read_json_dict(evaluation_path(Path(run_dir), epoch))
    except (safe_io.UnsafeFileError, RunError):
        return None
    if not all(is_number(doc.get(k)) for k in RESULT_NUMBERS) or not all(is_int(doc.get(k)) for k in RESULT_INTEGERS):
        return None
    if doc["epoch"] != epoch or doc["samples"] < 1 or doc["images"] < 1:
        return None
    return doc


def evaluate_run(
    run: Run,
    *,
    samples: int = DEFAULT_SAMPLES,
    images: int | None = None,
    batch_size: int | None = None,
    seed: int = DEFAULT_SEED,
    progress: Callable[[int], Any] | None = None,
    on_images: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """The evaluation record of a loaded run (what the CLI prints and saves). Raises UserError for an autoencoder."""
    if run.model_config.kind == "ae":
        raise UserError(f"run '{run.name}' is an autoencoder: it has no posterior variance, so it has no likelihood bound; evaluate a VAE")
    x, image_set, described = evaluation_images(run, images)
    if on_images is not None:
        on_images(len(x))
    device = next(run.model.parameters()).device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    recon_loss = run.train_config.recon_loss
    batch_size = batch_size or default_batch_size(run.model_config.image_shape)
    started = time.perf_counter()
    per_image = evaluate_model(run.model, x, samples=samples, recon_loss=recon_loss, batch_size=batch_size, generator=generator, progress=progress)
    seconds = time.perf_counter() - started
    nll, nll_err = mean_and_stderr(per_image.nll_iwae)
    elbo, elbo_err = mean_and_stderr(per_image.neg_elbo)
    if not (math.isfinite(nll) and math.isfinite(elbo)):
        raise ValueError(f"run '{run.name}': the estimate is not finite (NLL {nll}, negative ELBO {elbo})")
    binary = binary_targets(x)
    floor = float(metrics.binary_entropy_per_image(to_float_images(x)).mean()) if recon_loss == "bce" else None
    return {
        "run": run.name,
        "epoch": run.epoch,
        "nll_iwae": nll,
        "nll_iwae_stderr": nll_err,
        "neg_elbo": elbo,
        "neg_elbo_stderr": elbo_err,
        "samples": samples,
        "images": len(x),
        "image_set": image_set,
        "images_used": described,
        "recon_loss": recon_loss,
        "binary_targets": binary,
        "likelihood": likelihood_label(recon_loss, binary),
        "bce_floor": floor,  # the lowest BCE any model can reach on these images (their pixels' binary entropy); 0 for binary images
        "units": units_label(recon_loss, binary),
        "bits_per_dim": nll / (math.prod(x.shape[1:]) * math.log(2)),
        "seed": seed,
        "batch_size": batch_size,
        "device": str(device),
        "seconds": round(seconds, 3),
    }


# ---------------------------------------------------------------- command line


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise UserError(f"{message} (see {PROG} --help)")


def _bounded_int(name: str, low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{name} must be from {low:,} to {high:,}, got {value:,}")
        return value

    return parse


def build_parser() -> Parser:
    p = Parser(prog=PROG, description="Importance-weighted (IWAE) NLL bound of a run on its test set, in nats per image.")
    p.add_argument("run", help="a run folder, or the name of one in checkpoints/")
    p.add_argument(
        "--samples", "-k", type=_bounded_int("--samples", 1, MAX_SAMPLES), default=DEFAULT_SAMPLES,
        help=f"importance samples K per image (default {DEFAULT_SAMPLES})",
    )
    p.add_argument("--images", type=_bounded_int("--images", 1, 10**9), default=None, help="evaluate the first N test images only (default all)")
    p.add_argument(
        "--batch-size", type=_bounded_int("--batch-size", 1, 10**9), default=None,
        help=f"latent samples decoded per pass, samples x images (default: {DEFAULT_PIXELS_PER_PASS:,} pixels' worth)",
    )
    p.add_argument("--seed", type=_bounded_int("--seed", 0, 2**63 - 1), default=DEFAULT_SEED, help=f"seed of the importance samples (default {DEFAULT_SEED})")
    p.add_argument("--device", default="auto", help="auto (default: cuda if present, else cpu), cpu or cuda")
    return p


def resolve_run_dir(run: str) -> Path:
    """A path to a run folder, else a run name under the default checkpoints folder."""
    path = Path(run).expanduser()
    if not path.is_dir() and (DEFAULT_CHECKPOINTS_DIR / run).is_dir() and "/" not in run and run not in (".", ".."):
        return DEFAULT_CHECKPOINTS_DIR / run
    return path


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from .train import pick_device

    try:
        device = pick_device(args.device)
    except (ValueError, RuntimeError) as e:
        raise UserError(first_line(e)) from None
    run = load_run(resolve_run_dir(args.run), device)
    bar = None

    def start_bar(total: int) -> None:
        nonlocal bar
        if sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=total, unit="img", desc=f"IWAE K={args.samples}", dynamic_ncols=True, file=sys.stderr)

    try:
        record = evaluate_run(
            run, samples=args.samples, images=args.images, batch_size=args.batch_size, seed=args.seed,
            progress=lambda n: bar.update(n) if bar is not None else None, on_images=start_bar,
        )
    finally:
        if bar is not None:
            bar.close()
    print(json.dumps(record), flush=True)
    path = evaluation_path(run.path, run.epoch)
    try:
        safe_io.atomic_write_json(path, record)
    except OSError as e:
        print(f"{PROG}: error: could not write {path} ({e.strerror or e})", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except (UserError, RunError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"{PROG}: error: {first_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
