"""The diagonal Gaussian posterior q(z|x) every model's `encode` returns."""
from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2.0 * math.pi)


class DiagonalGaussian:
    """N(mean, diag(exp(logvar))) over a batch of latent vectors, shape (B, D).

    A deterministic encoder (an autoencoder) is the limit of zero variance: its
    `logvar` is -inf, `std` is 0, `sample()` returns the mean and `kl()` is 0
    (an autoencoder has no KL term), so every view can treat AE and VAE alike.
    """

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor | None = None):
        self.mean = mean
        self.deterministic = logvar is None
        if logvar is None:
            logvar = torch.full_like(mean, float("-inf"))
        if logvar.shape != mean.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} differ in shape")
        self.logvar = logvar

    @property
    def std(self) -> torch.Tensor:
        """exp(logvar / 2), shape (B, D); 0 for a deterministic posterior."""
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None, *, eps: torch.Tensor | None = None) -> torch.Tensor:
        """Reparameterised sample z = mean + std * eps (B, D), differentiable in mean and logvar.

        eps (B, D) is standard normal noise given from outside (several processes draw a global batch's
        noise and each uses its slice); without it eps is drawn from `generator`. A deterministic
        posterior returns the mean and ignores both.
        """
        if self.deterministic:
            return self.mean
        if eps is None:
            eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        elif generator is not None:
            raise ValueError("give sample() either a generator or eps, not both")
        elif eps.shape != self.mean.shape:
            raise ValueError(f"eps {tuple(eps.shape)} and mean {tuple(self.mean.shape)} differ in shape")
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        """The most likely latent, the mean (B, D)."""
        return self.mean

    def kl_per_dim(self) -> torch.Tensor:
        """KL(q || N(0, I)) per latent dimension in nats, shape (B, D)."""
        if self.deterministic:
            return torch.zeros_like(self.mean)
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over latent dimensions, shape (B,)."""
        return self.kl_per_dim().sum(dim=1)


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) per row of z (B, D), in nats."""
    return -0.5 * (z.pow(2).sum(dim=-1) + z.shape[-1] * LOG_2PI)
