"""The residual model family (arch='resnet'): GroupNorm + SiLU residual blocks, a self-attention mid block.

Encoder: conv in, then for each of the config's `widths` (one resolution each) `res_blocks` residual
blocks, with a stride-2 conv between resolutions (28 px, three widths: 28 -> 14 -> 7); a mid block
(residual, single-head self-attention, residual); GroupNorm, SiLU and a conv to the latent map.
Decoder: the mirror image, upsampling by nearest neighbour + conv.

Two bottlenecks:
- spatial: the posterior is a (C_z, h, w) map (C_z = latent_channels, e.g. 4 x 7 x 7 at 28 px with two
  downsamplings). The model returns it FLATTENED, channel-major, as (B, D) with D = C_z * h * w
  (index c * h * w + row * w + col), and decode takes (B, D) and reshapes, so everything written for
  vector latents works unchanged; `latent_shape` gives (C_z, h, w) for views that want the map.
- vector: the encoder's C_z-channel map is flattened and linear heads (with the optional hidden layer)
  give a latent of any size; the decoder maps it back to a C_z-channel map by a linear layer.

No skip connection crosses the bottleneck, unlike a U-Net: a skip from encoder to decoder would let
the decoder copy the image around z and ignore it, and the latent space the explorer shows would mean
nothing. The reconstruction depends on the input only through z.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .distributions import DiagonalGaussian
from .vae import LOGVAR_RANGE, VAE, ModelConfig, halved_sizes

MAX_NORM_GROUPS = 32


def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the most groups (up to 32) that divide `channels`."""
    return nn.GroupNorm(math.gcd(MAX_NORM_GROUPS, channels), channels)


class ResBlock(nn.Module):
    """x + conv(SiLU(norm(conv(SiLU(norm(x)))))), with a 1x1 conv on the shortcut when the width changes."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.net = nn.Sequential(
            norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1), norm(c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1)
        )
        self.shortcut: nn.Module = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H, W)
        return self.shortcut(x) + self.net(x)


class SelfAttention(nn.Module):
    """Single-head self-attention over the h * w positions, added to its input."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=-1)  # each (B, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, HW, C)
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


def mid_block(channels: int) -> nn.Sequential:
    return nn.Sequential(ResBlock(channels, channels), SelfAttention(channels), ResBlock(channels, channels))


class ResNetEncoder(nn.Module):
    """(B, C, H, W) -> (B, out_channels, h, w)."""

    def __init__(self, config: ModelConfig, out_channels: int):
        super().__init__()
        widths = config.widths
        layers: list[nn.Module] = [nn.Conv2d(config.in_channels, widths[0], 3, padding=1)]
        c = widths[0]
        for i, width in enumerate(widths):
            for _ in range(config.res_blocks):
                layers.append(ResBlock(c, width))
                c = width
            if i < len(widths) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))  # halves the side: 28 -> 14, 7 -> 4
        layers += [mid_block(c), norm(c), nn.SiLU(), nn.Conv2d(c, out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResNetDecoder(nn.Module):
    """(B, C_z, h, w) -> logits (B, C, H, W)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        widths = config.widths
        sizes = halved_sizes(config.image_size, len(widths) - 1)  # e.g. [28, 14, 7]
        c = widths[-1]
        layers: list[nn.Module] = [nn.Conv2d(config.latent_channels, c, 3, padding=1), mid_block(c)]
        for i in reversed(range(len(widths))):
            for _ in range(config.res_blocks):
                layers.append(ResBlock(c, widths[i]))
                c = widths[i]
            if i > 0:  # nearest to the encoder's size at this level (7 -> 14, 4 -> 7), then a conv
                layers += [nn.Upsample(size=sizes[i - 1], mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]
        layers += [norm(c), nn.SiLU(), nn.Conv2d(c, config.in_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z_map: torch.Tensor) -> torch.Tensor:
        return self.net(z_map)


class ResNetVAE(VAE):
    """A residual VAE (kind='vae') or autoencoder (kind='ae') with a spatial or a vector bottleneck.

    Same interface as VAE (encode, decode, forward, decode_images, encode_batches, ...); latents are
    (B, latent_dim) in both forms (see the module docstring for the spatial layout)."""

    def __init__(self, config: ModelConfig):
        nn.Module.__init__(self)  # VAE's own layers are not built: this class defines its own; VAE's methods use only config, encode, decode
        if config.arch != "resnet":
            raise ValueError(f"ResNetVAE needs arch='resnet', got {config.arch!r}")
        self.config = config
        c_z = config.latent_channels
        side = halved_sizes(config.image_size, len(config.widths) - 1)[-1]
        self.map_shape = (c_z, side, side)  # the map between encoder/decoder and the bottleneck: the latent itself when spatial
        spatial_heads = 2 if config.spatial_latent and config.kind == "vae" else 1  # mean (and log-variance) maps
        self.encoder = ResNetEncoder(config, c_z * spatial_heads)
        self.decoder = ResNetDecoder(config)
        if config.spatial_latent:
            self.enc_hidden: nn.Module = nn.Identity()
            self.fc_mean: nn.Module | None = None
            self.fc_logvar: nn.Module | None = None
            self.dec_in: nn.Module = nn.Identity()
            return
        features = math.prod(self.map_shape)
        hidden = config.hidden_dim
        self.enc_hidden = nn.Sequential(nn.Linear(features, hidden), nn.SiLU()) if hidden else nn.Identity()
        head_in = hidden or features
        self.fc_mean = nn.Linear(head_in, config.latent_dim)
        self.fc_logvar = nn.Linear(head_in, config.latent_dim) if config.kind == "vae" else None
        if hidden:
            self.dec_in = nn.Sequential(nn.Linear(config.latent_dim, hidden), nn.SiLU(), nn.Linear(hidden, features))
        else:
            self.dec_in = nn.Linear(config.latent_dim, features)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """(C_z, h, w) for a spatial bottleneck, (latent_dim,) for a vector one."""
        return self.config.latent_shape

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """x (B, C, H, W) in [0, 1] -> q(z|x) over the flattened latent (B, D)."""
        h = self.encoder(x)  # (B, C_z or 2 C_z, h, w)
        if self.config.spatial_latent:
            if self.config.kind == "ae":
                return DiagonalGaussian(h.flatten(1))
            mean, logvar = h.chunk(2, dim=1)  # each (B, C_z, h, w)
            return DiagonalGaussian(mean.flatten(1), logvar.clamp(*LOGVAR_RANGE).flatten(1))
        assert self.fc_mean is not None
        h = self.enc_hidden(h.flatten(1))
        mean = self.fc_mean(h)
        if self.fc_logvar is None:
            return DiagonalGaussian(mean)
        return DiagonalGaussian(mean, self.fc_logvar(h).clamp(*LOGVAR_RANGE))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D) -> logits (B, C, H, W); sigmoid(logits) is the image."""
        return self.decoder(self.dec_in(z).reshape(z.shape[0], *self.map_shape))
