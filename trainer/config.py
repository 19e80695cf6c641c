"""Training hyper-parameters: one frozen dataclass, validated on construction, saved as JSON."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from models import RECON_LOSSES
from models.config import JSONConfig, field_spec, setting
from models.config import is_int as is_int  # the one number check, re-exported for the trainer
from models.config import is_number as is_number

from .binarize import BINARIZE_MODES

LR_SCHEDULES = ("step", "cosine")
WEIGHT_DTYPES = ("float32", "float16")
DETERMINISTIC_MODES = ("off", "on")
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 65_536
MAX_LR = 10
MAX_LOSS_WEIGHT = 1000  # beta and recon_weight
MAX_SEED = 2**63 - 1
DEFAULT_ATLAS_SIZE = 2000
MAX_ATLAS_SIZE = 100_000
MAX_VAL_SIZE = 10_000_000  # validation images carved from the training set; the data set must keep some for training
DEFAULT_MIN_IMPROVEMENT = 0.01  # nats per image: early stopping's smallest fall of the validation negative ELBO that counts
MAX_MIN_IMPROVEMENT = 1000
MAX_DISC_START = 10**9  # optimiser steps before the discriminator starts
MAX_DISC_LAYERS = 6  # PatchGAN stride-2 layers (the image must keep a patch: models.patch_grid)
MAX_DISC_CHANNELS = 512  # the PatchGAN's first-layer channels (ndf)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class TrainConfig(JSONConfig):
    """Training hyper-parameters. Each field's help text and allowed values (FieldSpec metadata) are also
    what the trainer's CLI and the app's Train form show and check."""

    config_name: ClassVar[str] = "train config"
    dataset: str = setting("mnist", "mnist, fashion-mnist, or folder:PATH for a folder of images")
    data_dir: str = setting("data", "where to look for dataset files")
    epochs: int = setting(10, "total epochs; with --resume, may extend the run", min=1, max=MAX_EPOCHS)
    batch_size: int = setting(128, "images per training step", min=1, max=MAX_BATCH_SIZE)
    lr: float = setting(1e-3, "Adam learning rate", min=0, max=MAX_LR, min_open=True)
    lr_schedule: str = setting("step", "step: times lr_gamma at each milestone epoch; cosine: to 0 over the run", choices=LR_SCHEDULES)
    lr_milestones: tuple[int, ...] = setting((), "increasing epochs at which the LR is multiplied by lr_gamma, e.g. 2000", min=1)
    lr_gamma: float = setting(0.1, "LR factor at each milestone", min=0, max=1, min_open=True)
    beta: float = setting(
        1.0, "weight of the KL term; 0 = no-KL ablation. Both terms are sums over pixels and latent dims: latent diffusion's kl_weight 1e-6 "
        "(against an L1 on [-1, 1] images) is beta 5e-7 with --recon-loss l1; a weight w per element of a mean-reduced loss is w x C*H*W",
        min=0, max=MAX_LOSS_WEIGHT,
    )
    beta_warmup: int = setting(
        0, "epochs of linear warm-up of beta from 0", min=0, max=MAX_EPOCHS, wording=f"a non-negative integer of epochs, at most {MAX_EPOCHS}"
    )
    recon_loss: str = setting(
        "bce", "bce (Bernoulli), mse or l1 (sums over pixels; l1 is latent diffusion's pixel loss)", choices=RECON_LOSSES
    )
    recon_weight: float = setting(1.0, "weight of the reconstruction term; 0 = KL only", min=0, max=MAX_LOSS_WEIGHT)
    seed: int = setting(0, "random seed", min=0, max=MAX_SEED, wording="a non-negative integer below 2**63")
    atlas_size: int = setting(DEFAULT_ATLAS_SIZE, "test images whose posteriors are recorded every epoch", min=1, max=MAX_ATLAS_SIZE)
    keep_epochs: tuple[int, ...] = setting((), "epochs whose weights are kept besides the latest", min=0)
    weights_dtype: str = setting(
        "float32", "the finished run's stored weights; float16 halves its size (epochs saved before the last stay float32, so --resume "
        "stays exact; extending a finished float16 run continues from rounded weights)", choices=WEIGHT_DTYPES,
    )
    val_size: int = setting(
        0, "training images held out (a fixed choice seeded by --seed) as a validation set, scored by its negative ELBO each epoch; 0 = none",
        min=0, max=MAX_VAL_SIZE,
    )
    patience: int = setting(
        0, "stop early when the validation negative ELBO has not improved (by over --min-improvement nats) for this many epochs (needs --val-size); "
        "0 = never", min=0, max=MAX_EPOCHS,
    )
    min_improvement: float = setting(
        DEFAULT_MIN_IMPROVEMENT, "nats per image: early stopping counts a fall of the validation negative ELBO by this much or less as no improvement",
        min=0, max=MAX_MIN_IMPROVEMENT,
    )
    binarize: str = setting(
        "none", "dynamic: train on Bernoulli draws of the pixels, resampled every step, and test on a set binarised once "
        "by a fixed seed (binarised MNIST, where the BCE is a true likelihood); none: the grayscale pixels", choices=BINARIZE_MODES,
    )
    lpips_weights: str = setting(
        "", "a local AlexNet/VGG16 (+ LPIPS linear layers) weights file: record the LPIPS of the test reconstructions each epoch; "
        "read without unpickling; empty = no LPIPS",
    )
    # Losses for sharpness (off by default): a PatchGAN discriminator and a perceptual loss, as latent diffusion's autoencoders.
    disc_weight: float = setting(
        0.0, "weight of the PatchGAN discriminator's hinge loss for the decoder, times the adaptive weight (gradient-norm ratio "
        "of the reconstruction and adversarial losses at the decoder's last layer, clamped to 1e4); 0 = no discriminator",
        min=0, max=MAX_LOSS_WEIGHT,
    )
    disc_start: int = setting(
        0, "optimiser steps before the discriminator trains and its loss counts (latent diffusion: 50001)", min=0, max=MAX_DISC_START,
        wording=f"a non-negative integer of steps, at most {MAX_DISC_START}",
    )
    disc_layers: int = setting(3, "PatchGAN discriminator: stride-2 conv layers (taming-transformers' n_layers)", min=1, max=MAX_DISC_LAYERS)
    disc_channels: int = setting(64, "PatchGAN discriminator: channels of its first layer, doubled per layer up to 8x", min=1, max=MAX_DISC_CHANNELS)
    perceptual_weight: float = setting(
        0.0, "weight of the LPIPS-style perceptual loss (VGG16 features of reconstruction and image), added to every pixel's "
        "reconstruction error as latent diffusion does (their default 1); needs --perceptual-weights; 0 = off",
        min=0, max=MAX_LOSS_WEIGHT,
    )
    perceptual_weights: str = setting(
        "", "a local torchvision VGG16 state dict (optionally with the lpips package's lin0..lin4) for the perceptual loss; "
        "read without unpickling; without it the perceptual term is off",
    )
    deterministic: str = setting(
        "off", "on: deterministic algorithms (torch.use_deterministic_algorithms, cuDNN without benchmarking, "
        "CUBLAS_WORKSPACE_CONFIG=:4096:8) so that a CUDA run and its resumed copy are bitwise equal; may be slower, "
        "and an operation without a deterministic kernel stops the run with one line; --amp auto is then float32, untimed",
        choices=DETERMINISTIC_MODES,
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr_milestones", tuple(self.lr_milestones))
        object.__setattr__(self, "keep_epochs", tuple(self.keep_epochs))
        _check(isinstance(self.dataset, str) and bool(self.dataset), "dataset must be a non-empty name")
        self.check_fields("epochs", "batch_size", "lr", "lr_schedule")
        milestones = field_spec(TrainConfig, "lr_milestones")
        _check(
            all(milestones.in_range(m, integer=True) for m in self.lr_milestones) and list(self.lr_milestones) == sorted(set(self.lr_milestones)),
            f"lr_milestones must be increasing epochs {milestones.range_text()}, got {list(self.lr_milestones)!r}",
        )
        self.check_fields("lr_gamma", "beta", "beta_warmup", "recon_loss", "recon_weight")
        _check(self.recon_weight > 0 or self.beta > 0, "recon_weight and beta cannot both be 0: nothing would be trained")
        self.check_fields("seed", "atlas_size")
        keep = field_spec(TrainConfig, "keep_epochs")
        _check(all(keep.in_range(e, integer=True) for e in self.keep_epochs), f"keep_epochs must be epochs {keep.range_text()}, got {list(self.keep_epochs)!r}")
        self.check_fields("weights_dtype", "val_size", "patience", "min_improvement")
        self.check_fields("binarize", "deterministic")
        _check(isinstance(self.lpips_weights, str), f"lpips_weights must be a file path (text), got {self.lpips_weights!r}")
        self.check_fields("disc_weight", "disc_start", "disc_layers", "disc_channels", "perceptual_weight")
        _check(isinstance(self.perceptual_weights, str), f"perceptual_weights must be a file path (text), got {self.perceptual_weights!r}")
        _check(self.patience == 0 or self.val_size > 0, f"patience {self.patience} needs a validation set: give val_size (--val-size) too")

    def lr_at(self, epoch: int, progress: float) -> float:
        """Learning rate during 0-based `epoch`, `progress` in [0, 1) through it."""
        if self.lr_schedule == "cosine":
            t = (epoch + progress) / self.epochs
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
        passed = sum(1 for m in self.lr_milestones if epoch >= m)
        return self.lr * self.lr_gamma**passed

    def beta_at(self, epoch: int, progress: float) -> float:
        """beta during 0-based `epoch`: linear from 0 over `beta_warmup` epochs, then constant."""
        if self.beta_warmup == 0:
            return self.beta
        return self.beta * min(1.0, (epoch + progress) / self.beta_warmup)
