"""The one objective: reconstruction + beta * KL, per sample in nats."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .distributions import DiagonalGaussian

RECON_LOSSES = ("bce", "mse")


class LossTerms(NamedTuple):
    loss: torch.Tensor  # recon_weight * recon + beta * kl, scalar
    recon: torch.Tensor  # reconstruction term, summed over pixels, mean over batch
    kl: torch.Tensor  # KL(q(z|x) || N(0, I)), summed over latent dims, mean over batch


def reconstruction_per_sample(x_hat: torch.Tensor, x: torch.Tensor, recon_loss: str = "bce") -> torch.Tensor:
    """Per-sample reconstruction error (B,), summed over pixels.

    bce: Bernoulli negative log-likelihood of x under logits x_hat (nats).
    mse: squared error of sigmoid(x_hat) against x (a Gaussian NLL up to scale and constant).
    """
    if recon_loss == "bce":
        per_pixel = F.binary_cross_entropy_with_logits(x_hat, x, reduction="none")
    elif recon_loss == "mse":
        per_pixel = (torch.sigmoid(x_hat) - x).pow(2)
    else:
        raise ValueError(f"unknown recon_loss '{recon_loss}': choose one of {', '.join(RECON_LOSSES)}")
    return per_pixel.flatten(1).sum(dim=1)


def vae_loss(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    posterior: DiagonalGaussian,
    *,
    recon_loss: str = "bce",
    beta: float = 1.0,
    recon_weight: float = 1.0,
) -> LossTerms:
    """Negative ELBO terms for a batch: x (B, C, H, W) in [0, 1], x_hat logits of the same shape.

    beta=0 is the reconstruction-only ablation, recon_weight=0 the KL-only one.
    """
    x_hat = x_hat.float()
    recon = reconstruction_per_sample(x_hat, x, recon_loss).mean()
    kl = posterior.kl().float().mean()
    return LossTerms(recon_weight * recon + beta * kl, recon, kl)
