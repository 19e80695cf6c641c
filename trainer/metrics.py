"""Image-quality and latent-usage metrics; images are (B, C, H, W) in [0, 1] (data range 1).

Definitions (README "Metrics" lists what the project shows):
- MSE: mean squared error per pixel of one image; reported as the mean over images.
- PSNR, per image: 10 log10(1 / MSE_i) in dB for each image i, then the mean over images
  (`psnr_per_image`). PSNR of the set: 10 log10(1 / MSE over every pixel of every image)
  (`psnr_of_set`). By Jensen's inequality (-log is convex) the per-image mean is >= the set PSNR,
  equal only when every image has the same MSE; easy images with a tiny MSE pull the mean up.
- SSIM: Wang et al. (2004) with an 11 x 11 Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03,
  averaged over the window positions that lie inside the image (no padding), then over channels
  and images. This is what scikit-image's `structural_similarity(..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1)` computes; torchmetrics (1.9) pads the
  image by reflection and averages over every pixel, border windows included, so its numbers differ.
- Active units: `kl_active_units` (mean KL per dimension over the test set above 0.01 nats) and
  `active_units_burda` (Burda et al. 2015: variance over the test set of each dimension's posterior
  mean above 0.01).
- Objective and bound: a history row's `test_loss` is the training objective, recon_weight * recon +
  beta * KL (what was optimised); `test_neg_elbo` is the negative ELBO, recon + KL unweighted (beta =
  1), the bound (`neg_elbo`). What the recon term is depends on the loss and the targets (`recon_label`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from pytorch_msssim import ssim as _ssim

ACTIVE_UNIT_THRESHOLD = 0.01  # nats of mean KL per dimension, or variance of the posterior mean (Burda et al.)
DATA_RANGE = 1.0  # images in [0, 1]
PSNR_EPS = 1e-10  # MSE floor: a perfect reconstruction scores 100 dB, not inf
SSIM_WINDOW = 11  # Gaussian window size (Wang et al. 2004)
SSIM_SIGMA = 1.5  # Gaussian window standard deviation, pixels
SSIM_K = (0.01, 0.03)  # K1, K2 stabilising constants


def mse_per_image(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image (B,): the mean over its C * H * W pixels, images in [0, 1]."""
    return (x_hat - x).pow(2).flatten(1).mean(dim=1)


def psnr_from_mse(mse: float, eps: float = PSNR_EPS) -> float:
    """10 log10(DATA_RANGE^2 / mse) in dB, mse floored at eps."""
    return 10.0 * math.log10(DATA_RANGE**2 / max(float(mse), eps))


def psnr_per_image(x_hat: torch.Tensor, x: torch.Tensor, eps: float = PSNR_EPS) -> torch.Tensor:
    """PSNR in dB of each image (B,): 10 log10(1 / MSE_i), data range 1.

    The project reports the mean of these over the test set ("PSNR"); it is >= `psnr_of_set`
    (Jensen), as -log is convex."""
    return 10.0 * torch.log10(DATA_RANGE**2 / mse_per_image(x_hat, x).clamp_min(eps))


def psnr_of_set(x_hat: torch.Tensor, x: torch.Tensor, eps: float = PSNR_EPS) -> float:
    """PSNR in dB of a whole set: 10 log10(1 / MSE over all pixels of all images), data range 1.

    Equal to `psnr_from_mse` of the mean per-image MSE (every image has the same pixel count), so an
    evaluation that already averages `mse_per_image` needs only `psnr_from_mse(mean_mse)`."""
    return psnr_from_mse(float((x_hat.double() - x.double()).pow(2).mean()), eps)


def ssim_per_image(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """SSIM of each image (B,), Gaussian window 11 x 11, sigma 1.5, K1 0.01, K2 0.03, data range 1.

    Wang et al. (2004), averaged over the window positions inside the image (valid filtering, no
    padding) and over channels; agrees with scikit-image's Gaussian-window SSIM (see module docstring),
    not with torchmetrics' reflect-padded one. Computed by pytorch-msssim (separable filtering)."""
    return _ssim(
        x_hat.float(), x.float(), data_range=DATA_RANGE, size_average=False, win_size=SSIM_WINDOW, win_sigma=SSIM_SIGMA, K=SSIM_K
    )


def ssim(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean SSIM over the batch, scalar: `ssim_per_image` (Gaussian window 11, sigma 1.5) averaged."""
    return ssim_per_image(x_hat, x).mean()


def binary_entropy_per_image(x: torch.Tensor) -> torch.Tensor:
    """Sum over pixels of H(x) = -x log x - (1 - x) log(1 - x) in nats, per image (B,), float64.

    The lowest BCE any model can reach on grayscale targets x (its logits would be logit(x)): the
    floor under `--recon-loss bce` on MNIST's non-binary pixels, 44.06 nats per test image of the
    bundled subset."""
    p = x.double()
    return -(torch.xlogy(p, p) + torch.xlogy(1.0 - p, 1.0 - p)).flatten(1).sum(dim=1)


def kl_active_units(kl_per_dim_mean: torch.Tensor) -> int:
    """KL active units: latent dimensions whose KL(q(z_u|x) || N(0, 1)), averaged over the test images,
    exceeds 0.01 nats. kl_per_dim_mean is (D,). Always 0 for an autoencoder (no KL)."""
    return int((kl_per_dim_mean > ACTIVE_UNIT_THRESHOLD).sum())


def active_units_burda(means: torch.Tensor) -> int:
    """Active units as Burda et al. (2015): A_u = Cov_x(E_q(z|x)[z_u]) > 0.01, i.e. the variance over
    the test images of each dimension's posterior mean (the code itself for an autoencoder).

    means is (N, D) posterior means, N >= 2; unbiased variance over the N images."""
    if means.ndim != 2 or means.shape[0] < 2:
        raise ValueError(f"active_units_burda needs posterior means of shape (N >= 2, D), got {tuple(means.shape)}")
    return int((means.double().var(dim=0) > ACTIVE_UNIT_THRESHOLD).sum())


def active_units(kl_per_dim_mean: torch.Tensor, mean_var: torch.Tensor, deterministic: bool) -> int:
    """The history's `active_units` column (kept for the trainer until it records both counts):
    `kl_active_units` for a VAE; for an autoencoder, which has no KL, the variance of the code across
    the test images above the threshold (Burda et al.'s definition, see `active_units_burda`)."""
    if deterministic:
        return int((mean_var > ACTIVE_UNIT_THRESHOLD).sum())
    return kl_active_units(kl_per_dim_mean)


RECON_LABELS = {
    "bernoulli": "Bernoulli NLL (nats)",
    "bce": "BCE on grayscale targets (a bound on randomly binarised images, not a density)",
    "mse": "sum of squared errors (not nats)",
    "l1": "sum of absolute errors (not nats)",
}


def recon_label(recon_loss: str, binarized: bool, colour: bool = False) -> str:
    """What a run's reconstruction term is, in words: a true Bernoulli NLL only for BCE on binary targets
    (`--binarize dynamic`); BCE on grayscale (or colour) pixels is not a density; MSE and L1 are plain sums of squared /
    absolute errors. `colour`: the images have 3 channels (the same caveat, worded for them)."""
    if recon_loss == "bce":
        label = RECON_LABELS["bernoulli" if binarized else "bce"]
        return label.replace("grayscale", "colour") if colour else label
    return RECON_LABELS.get(recon_loss, f"reconstruction term '{recon_loss}'")


def neg_elbo(row: Mapping[str, Any], split: str = "test") -> float:
    """The negative ELBO (recon + KL, unweighted: beta = 1) of one history row for `split` ('train' or 'test').

    Rows written before the bound was recorded lack `<split>_neg_elbo`; it is then `<split>_recon +
    <split>_kl`, exact, as both terms are recorded unweighted. KeyError if the row has neither."""
    value = row.get(f"{split}_neg_elbo")
    if value is not None:
        return float(value)
    return float(row[f"{split}_recon"]) + float(row[f"{split}_kl"])
