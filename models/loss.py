"""The one objective: recon_weight * reconstruction + beta * KL, averaged over the batch.

With beta = 1 and recon_weight = 1 it is the negative ELBO (the bound); otherwise it is a training
objective, not a bound. What the reconstruction term is depends on the loss and the targets:
- bce on binary targets (0/1 pixels, `--binarize dynamic`): the Bernoulli negative log-likelihood
  -log p(x|z), in nats, so the negative ELBO bounds -log p(x).
- bce on grayscale targets in [0, 1]: a cross-entropy that is not a density of the image; it is the
  expected Bernoulli NLL of images binarised at random from x, and even a perfect model pays the
  pixels' binary entropy (44.06 nats per bundled MNIST test digit).
- mse: the sum of squared errors of sigmoid(logits) over the pixels, not nats (a Gaussian NLL with
  sigma fixed at 1/sqrt(2) minus its constant, 0.5 log(pi) per pixel).
- l1: the sum of absolute errors of sigmoid(logits) over the pixels, not nats (a Laplace NLL with
  scale 1 minus its constant, log 2 per pixel); the pixel term of latent-diffusion autoencoders, whose
  images are in [-1, 1], so theirs is twice this one for the same images.

Every term is a sum over pixels (and latent dimensions), averaged over the batch. Latent diffusion's
KL autoencoders reduce the same way (sum over elements / batch), so their kl_weight 1e-6 against an L1
on [-1, 1] images is beta = 5e-7 here with recon_loss='l1' (or recon_weight 2, beta 1e-6). A weight w
quoted per element of a mean-reduced loss (mean over the C*H*W pixels) is beta = w * C*H*W here.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .distributions import DiagonalGaussian

RECON_LOSSES = ("bce", "mse", "l1")


class LossTerms(NamedTuple):
    loss: torch.Tensor  # recon_weight * recon + beta * kl, scalar: the objective (the negative ELBO only at beta = recon_weight = 1)
    recon: torch.Tensor  # reconstruction term, summed over pixels, mean over batch, unweighted (see reconstruction_per_sample)
    kl: torch.Tensor  # KL(q(z|x) || N(0, I)) in nats, summed over latent dims, mean over batch, unweighted


class _CpuBCEWithLogits(torch.autograd.Function):
    """Per-pixel BCE of targets x under logits z as max(z, 0) - x z - log(sigmoid(|z|)), gradient sigmoid(z) - x.

    torch's binary_cross_entropy_with_logits computes log1p(exp(-|z|)), and on the CPU its log1p is not vectorised:
    on a 128 x 784 batch it took 0.55 ms forward and 0.74 ms with backward, more than a 784 x 400 matmul, against
    0.15 ms forward for this form (sigmoid and log are vectorised; `python -m bench.bench_bce`).
    The two differ by at most about 1e-7 nats per pixel (log near 1 in float32), 1e-6 of an MNIST image's term."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) each
        ctx.save_for_backward(z, x)
        return z.clamp(min=0) - x * z - torch.sigmoid(z.abs()).log()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        z, x = ctx.saved_tensors
        grad_z = torch.sigmoid(z).sub_(x).mul_(grad) if ctx.needs_input_grad[0] else None
        grad_x = -grad * z if ctx.needs_input_grad[1] else None
        return grad_z, grad_x


def bce_with_logits(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-pixel binary cross-entropy of x under logits x_hat (same shape): torch's on a GPU (one kernel), the
    vectorised form above on the CPU."""
    if x_hat.device.type == "cpu" and x_hat.dtype == torch.float32 and x.dtype == torch.float32:
        return _CpuBCEWithLogits.apply(x_hat, x)
    return F.binary_cross_entropy_with_logits(x_hat, x, reduction="none")


def reconstruction_per_sample(x_hat: torch.Tensor, x: torch.Tensor, recon_loss: str = "bce") -> torch.Tensor:
    """Per-sample reconstruction error (B,), summed over pixels.

    bce: binary cross-entropy of x under logits x_hat. For binary x it is the Bernoulli NLL -log p(x|z)
        in nats; for grayscale x it is not a density (see the module docstring).
    mse: sum of squared errors of sigmoid(x_hat) against x, not nats (a Gaussian NLL with sigma
        1/sqrt(2) up to its constant).
    l1: sum of absolute errors of sigmoid(x_hat) against x, not nats (a Laplace NLL with scale 1 up to
        its constant).
    """
    if recon_loss == "bce":
        per_pixel = bce_with_logits(x_hat, x)
    elif recon_loss == "mse":
        per_pixel = (torch.sigmoid(x_hat) - x).pow(2)
    elif recon_loss == "l1":
        per_pixel = (torch.sigmoid(x_hat) - x).abs()
    else:
        raise ValueError(f"unknown recon_loss '{recon_loss}': choose one of {', '.join(RECON_LOSSES)}")
    return per_pixel.flatten(1).sum(dim=1)


def vae_loss(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    posterior: DiagonalGaussian,
    *,
    recon_loss: str = "bce",
    beta: float | torch.Tensor = 1.0,
    recon_weight: float = 1.0,
) -> LossTerms:
    """The objective and its two unweighted terms for a batch: x (B, C, H, W) in [0, 1], x_hat logits of the same shape.
    beta may be a 0-dim tensor on x's device (a schedule that lives on the device, as a captured CUDA graph reads it).

    loss = recon_weight * recon + beta * kl; recon + kl is the negative ELBO whatever the weights.
    beta=0 is the reconstruction-only ablation, recon_weight=0 the KL-only one.
    """
    x_hat = x_hat.float()
    recon = reconstruction_per_sample(x_hat, x, recon_loss).mean()
    kl = posterior.kl().float().mean()
    return LossTerms(recon_weight * recon + beta * kl, recon, kl)
