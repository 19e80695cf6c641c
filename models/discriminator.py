"""The PatchGAN discriminator and the adversarial pieces of the sharp-model objective (pure torch).

Follows taming-transformers (taming/modules/discriminator/model.py, losses/vqperceptual.py) and latent
diffusion's LPIPSWithDiscriminator:
- `PatchDiscriminator` is NLayerDiscriminator: a stride-2 4x4 conv + LeakyReLU(0.2), then n_layers - 1
  stride-2 4x4 convs (no bias) + BatchNorm + LeakyReLU, doubling the channels up to 8 x ndf, a stride-1
  4x4 conv block, and a stride-1 4x4 conv to one logit per patch. Convs are initialised N(0, 0.02),
  BatchNorm scales N(1, 0.02) and shifts 0 (their weights_init).
- `hinge_d_loss` is the discriminator's hinge loss, `generator_loss` the generator's -mean(logits_fake).
- `adaptive_weight` is calculate_adaptive_weight: the ratio of the gradient norms of the reconstruction
  (+ perceptual) loss and of the generator loss at the decoder's last layer, clamped to [0, 1e4] and
  detached; the trainer multiplies it by --disc-weight.

The discriminator sees images in [-1, 1] (2 x - 1), as the reference's do. Nothing here reads files.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KERNEL = 4  # the reference's kw
PADDING = 1  # the reference's padw
LEAKY_SLOPE = 0.2
MAX_CHANNEL_MULT = 8  # channels stop doubling at 8 x ndf
INIT_STD = 0.02
ADAPTIVE_EPS = 1e-4  # added to the generator gradient's norm
ADAPTIVE_MAX = 1e4  # the adaptive weight's clamp


def patch_grid(image_size: int, n_layers: int) -> int:
    """Side of the discriminator's logit map for square images of `image_size` px (< 1: too many layers)."""
    side = image_size
    for _ in range(n_layers):  # stride-2 convs
        side = (side + 2 * PADDING - KERNEL) // 2 + 1
    for _ in range(2):  # the two stride-1 convs
        side = side + 2 * PADDING - KERNEL + 1
    return side


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, INIT_STD)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, INIT_STD)
        nn.init.zeros_(m.bias)


class PatchDiscriminator(nn.Module):
    """taming-transformers' NLayerDiscriminator: images (B, C, H, W) in [-1, 1] -> patch logits (B, 1, h, w)."""

    def __init__(self, in_channels: int, channels: int = 64, n_layers: int = 3):
        super().__init__()
        if n_layers < 1 or channels < 1:
            raise ValueError(f"a PatchGAN discriminator needs n_layers >= 1 and channels >= 1, got {n_layers} and {channels}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, KERNEL, stride=2, padding=PADDING), nn.LeakyReLU(LEAKY_SLOPE, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, MAX_CHANNEL_MULT)
            layers += [
                nn.Conv2d(channels * prev, channels * mult, KERNEL, stride=2, padding=PADDING, bias=False),
                nn.BatchNorm2d(channels * mult),
                nn.LeakyReLU(LEAKY_SLOPE, True),
            ]
        prev, mult = mult, min(2**n_layers, MAX_CHANNEL_MULT)
        layers += [
            nn.Conv2d(channels * prev, channels * mult, KERNEL, stride=1, padding=PADDING, bias=False),
            nn.BatchNorm2d(channels * mult),
            nn.LeakyReLU(LEAKY_SLOPE, True),
            nn.Conv2d(channels * mult, 1, KERNEL, stride=1, padding=PADDING),  # one logit per patch
        ]
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, 1, h, w)
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake))): 0 once real logits are >= 1 and fake ones <= -1."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The generator's hinge loss: -mean(logits of the reconstructions)."""
    return -logits_fake.mean()


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """||d nll / d last_layer|| / (||d g_loss / d last_layer|| + 1e-4), clamped to [0, 1e4], detached (a scalar).

    Both graphs are kept (retain_graph) for the backward pass that follows."""
    nll_grads = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = torch.linalg.vector_norm(nll_grads) / (torch.linalg.vector_norm(g_grads) + ADAPTIVE_EPS)
    return torch.clamp(weight, 0.0, ADAPTIVE_MAX).detach()


def decoder_last_layer(model: nn.Module) -> nn.Parameter:
    """The weight of the last layer that makes the logits: the decoder's last conv/linear weight, or for the mlp
    (whose decoder only reshapes) that of its input layers (`dec_in`)."""
    for module in (getattr(model, "decoder", None), getattr(model, "dec_in", None)):
        weights = [p for p in module.parameters() if p.ndim > 1] if module is not None else []
        if weights:
            return weights[-1]
    raise ValueError(f"{type(model).__name__} has no decoder weight to weigh the adversarial loss at")
