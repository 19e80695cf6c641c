"""The model family: conv, conv-upsample and MLP encoders/decoders, each as a VAE or a plain AE.

Every model has one interface:
    encode(x) -> DiagonalGaussian          x: (B, C, H, W) in [0, 1]
    decode(z) -> logits (B, C, H, W)       images are sigmoid(logits)
    forward(x) -> VAEOutput(x_hat, posterior, z)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from .config import JSONConfig, field_spec, setting
from .distributions import DiagonalGaussian

ARCHS = ("conv", "conv-upsample", "mlp", "resnet")
KINDS = ("vae", "ae")
BOTTLENECKS = ("spatial", "vector")  # resnet only: a (C_z, h, w) latent map, or flatten + linear heads
IMAGE_SIZES = (28, 32, 64, 128)
CHANNELS = (1, 3)
MAX_LATENT_DIM = 512  # a latent size the user chooses (every model but the spatial resnet)
# The spatial resnet's latent size C_z * h * w follows from the image size: 4 x 16 x 16 = 1,024 at 64 px, 16 x 7 x 7 = 784 at 28 px.
MAX_SPATIAL_LATENT_DIM = 4096
MAX_LATENT_CHANNELS = 64
MAX_RES_LEVELS = 5  # resnet resolutions (len(widths)): at most 4 downsamplings
MAX_RES_BLOCKS = 8  # resnet residual blocks per resolution
N_CONV_STAGES = 3
MAX_WIDTH = 1024  # conv channels per stage
MAX_HIDDEN_DIM = 16384
DEFAULT_WIDTHS = (32, 32, 64)  # tuned on the MNIST subset: bench/bench_train.py
DEFAULT_HIDDEN_DIM = 256
CLASSIC_MLP_HIDDEN_DIM = 400  # the classic 784-400-20 MNIST VAE
# Clamp on the encoder's log-variance: keeps exp(logvar) finite in float16/bf16 and early training stable.
LOGVAR_RANGE = (-30.0, 20.0)


@dataclass(frozen=True)
class ModelConfig(JSONConfig):
    """Everything needed to rebuild a model; saved as JSON in each run.

    Each field's help text and allowed values (FieldSpec metadata) are also what the trainer's CLI and
    the app's Train form show and check."""

    config_name: ClassVar[str] = "model config"

    arch: str = setting("conv", "architecture", choices=ARCHS)
    kind: str = setting("vae", "vae, or ae for a plain autoencoder", choices=KINDS)
    latent_dim: int = setting(
        16, "latent size (a spatial resnet's is derived: latent-channels x h x w)", min=1, max=MAX_LATENT_DIM
    )
    in_channels: int = setting(1, "image channels, grayscale or RGB", choices=CHANNELS)
    image_size: int = setting(28, "image side in pixels", choices=IMAGE_SIZES)
    widths: tuple[int, ...] = setting(
        DEFAULT_WIDTHS,
        f"conv channels of the {N_CONV_STAGES} stages; resnet: channels of each resolution, 1 to {MAX_RES_LEVELS} of them, "
        "halving the image side between each",
        min=1, max=MAX_WIDTH,
    )
    hidden_dim: int = setting(
        DEFAULT_HIDDEN_DIM, "fully connected layer between image features and the latent heads, 0 for none (not used by a spatial resnet)",
        min=0, max=MAX_HIDDEN_DIM,
    )
    # The resnet's own settings; defaults that older config.json files (written before they existed) take.
    bottleneck: str = setting(
        "spatial", "resnet: spatial (the latent is a latent-channels x h x w map; its size follows from the image size) "
        "or vector (flatten + linear heads of latent-dim)", choices=BOTTLENECKS,
    )
    latent_channels: int = setting(4, "resnet: channels of the latent map (C_z)", min=1, max=MAX_LATENT_CHANNELS)
    res_blocks: int = setting(1, "resnet: residual blocks per resolution", min=1, max=MAX_RES_BLOCKS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if not field_spec(ModelConfig, "arch").allows(self.arch, integer=False):
            raise ValueError(f"unknown model '{self.arch}': choose one of {', '.join(ARCHS)}")
        if not field_spec(ModelConfig, "kind").allows(self.kind, integer=False):
            raise ValueError(f"unknown kind '{self.kind}': choose one of {', '.join(KINDS)}")
        if not field_spec(ModelConfig, "bottleneck").allows(self.bottleneck, integer=False):
            raise ValueError(f"unknown bottleneck '{self.bottleneck}': choose one of {', '.join(BOTTLENECKS)}")
        self.check_fields("in_channels", "image_size", "latent_channels", "res_blocks", "hidden_dim")
        widths = field_spec(ModelConfig, "widths")
        in_range = all(widths.in_range(w, integer=True) for w in self.widths)
        if self.arch == "resnet":
            if not (1 <= len(self.widths) <= MAX_RES_LEVELS and in_range):
                raise ValueError(f"widths must be 1 to {MAX_RES_LEVELS} channel counts {widths.range_text()} for resnet, got {self.widths!r}")
        elif len(self.widths) != N_CONV_STAGES or not in_range:
            raise ValueError(f"widths must be {N_CONV_STAGES} channel counts {widths.range_text()}, got {self.widths!r}")
        if self.spatial_latent:  # the latent size is the map's: derived, so every reader of latent_dim keeps working
            object.__setattr__(self, "latent_dim", math.prod(self.latent_shape))
            if self.latent_dim > MAX_SPATIAL_LATENT_DIM:
                raise ValueError(
                    f"the latent map {' x '.join(map(str, self.latent_shape))} has {self.latent_dim} dims, more than {MAX_SPATIAL_LATENT_DIM}: "
                    "use fewer latent channels or more downsamplings (widths)"
                )
        else:
            self.check_fields("latent_dim")
        if self.arch == "mlp" and self.hidden_dim == 0:
            raise ValueError(f"the mlp model needs hidden_dim > 0 (the classic MNIST VAE uses {CLASSIC_MLP_HIDDEN_DIM})")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def spatial_latent(self) -> bool:
        """Whether the latent is a (C_z, h, w) map (a resnet with a spatial bottleneck), flattened channel-major to latent_dim."""
        return self.arch == "resnet" and self.bottleneck == "spatial"

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The latent's shape: (C_z, h, w) for a spatial resnet, else (latent_dim,)."""
        if not self.spatial_latent:
            return (self.latent_dim,)
        side = halved_sizes(self.image_size, len(self.widths) - 1)[-1]
        return (self.latent_channels, side, side)



class VAEOutput(NamedTuple):
    x_hat: torch.Tensor  # (B, C, H, W) logits
    posterior: DiagonalGaussian
    z: torch.Tensor  # (B, D)


def halved_sizes(image_size: int, n: int) -> list[int]:
    """Sizes through `n` stride-2 convs (kernel 3, padding 1), e.g. 28, 2 -> [28, 14, 7]."""
    sizes = [image_size]
    for _ in range(n):
        sizes.append((sizes[-1] - 1) // 2 + 1)
    return sizes


def conv_sizes(image_size: int) -> list[int]:
    """Spatial sizes through the stride-2 stages, e.g. 28 -> [28, 14, 7, 4]."""
    sizes = [image_size]
    for _ in range(N_CONV_STAGES):
        sizes.append((sizes[-1] - 1) // 2 + 1)  # kernel 3, stride 2, padding 1
    return sizes


class ConvEncoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        chans = (config.in_channels, *config.widths)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Flatten())
        side = conv_sizes(config.image_size)[-1]
        self.out_features = config.widths[-1] * side * side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """Three ConvTranspose2d stages, or with `upsample` three Upsample + Conv2d stages."""

    def __init__(self, config: ModelConfig, upsample: bool):
        super().__init__()
        sizes = conv_sizes(config.image_size)[::-1]  # e.g. [4, 7, 14, 28]
        chans = (*config.widths[::-1], config.in_channels)
        self.start_shape = (config.widths[-1], sizes[0], sizes[0])
        self.in_features = math.prod(self.start_shape)
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(chans[:-1], chans[1:])):
            if upsample:
                layers += [nn.Upsample(size=sizes[i + 1], mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1)]
            else:
                extra = sizes[i + 1] - (2 * sizes[i] - 1)  # output_padding that lands exactly on the next size
                layers.append(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=extra))
            if i < N_CONV_STAGES - 1:
                layers.append(nn.SiLU())
        self.net = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h.view(h.shape[0], *self.start_shape))


class VAE(nn.Module):
    """A VAE (kind='vae') or a deterministic autoencoder (kind='ae') of any architecture."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        n_pixels = math.prod(config.image_shape)
        if config.arch == "mlp":
            self.encoder: nn.Module = nn.Flatten()
            features, dec_features = n_pixels, n_pixels
            self.decoder: nn.Module = nn.Unflatten(1, config.image_shape)
        else:
            enc = ConvEncoder(config)
            dec = ConvDecoder(config, upsample=config.arch == "conv-upsample")
            self.encoder, self.decoder = enc, dec
            features, dec_features = enc.out_features, dec.in_features
        if config.hidden_dim:
            self.enc_hidden: nn.Module = nn.Sequential(nn.Linear(features, config.hidden_dim), nn.SiLU())
            head_in = config.hidden_dim
            self.dec_in = nn.Sequential(
                nn.Linear(config.latent_dim, config.hidden_dim), nn.SiLU(), nn.Linear(config.hidden_dim, dec_features)
            )
        else:
            self.enc_hidden = nn.Identity()
            head_in = features
            self.dec_in = nn.Linear(config.latent_dim, dec_features)
        if config.arch != "mlp":  # the conv decoder's input layer needs an activation before the first conv
            self.dec_in = nn.Sequential(self.dec_in, nn.SiLU())
        self.fc_mean = nn.Linear(head_in, config.latent_dim)
        self.fc_logvar = nn.Linear(head_in, config.latent_dim) if config.kind == "vae" else None

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """x (B, C, H, W) in [0, 1] -> q(z|x) over (B, D)."""
        h = self.enc_hidden(self.encoder(x))
        mean = self.fc_mean(h)
        if self.fc_logvar is None:
            return DiagonalGaussian(mean)
        return DiagonalGaussian(mean, self.fc_logvar(h).clamp(*LOGVAR_RANGE))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D) -> logits (B, C, H, W); sigmoid(logits) is the image."""
        return self.decoder(self.dec_in(z))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> VAEOutput:
        posterior = self.encode(x)
        z = posterior.sample(generator) if self.training else posterior.mode()
        return VAEOutput(self.decode(z), posterior, z)

    @torch.no_grad()
    def decode_images(self, z: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Decode many latents in batches to images in [0, 1], (N, C, H, W) float32 on the CPU."""
        device = next(self.parameters()).device
        out = [torch.sigmoid(self.decode(zb.to(device))).float().cpu() for zb in z.split(batch_size)]
        return torch.cat(out) if out else torch.empty(0, *self.config.image_shape)

    @torch.no_grad()
    def encode_batches(self, x: torch.Tensor, batch_size: int = 512) -> DiagonalGaussian:
        """Encode many images (N, C, H, W), uint8 or float in [0, 1], in batches; result on the CPU."""
        device = next(self.parameters()).device
        means, logvars = [], []
        for xb in x.split(batch_size):
            posterior = self.encode(to_float_images(xb).to(device))
            means.append(posterior.mean.float().cpu())
            logvars.append(posterior.logvar.float().cpu())
        if not means:
            empty = torch.empty(0, self.latent_dim)
            return DiagonalGaussian(empty, None if self.config.kind == "ae" else empty)
        mean = torch.cat(means)
        return DiagonalGaussian(mean, None if self.config.kind == "ae" else torch.cat(logvars))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def to_float_images(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 -> float32 in [0, 1]; float input is passed through as float32."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()


def build_model(config: ModelConfig) -> VAE:
    """The model a config describes (the resnet family lives in models/resnet.py)."""
    if config.arch == "resnet":
        from .resnet import ResNetVAE  # imported here: resnet.py builds on this module

        return ResNetVAE(config)
    return VAE(config)
