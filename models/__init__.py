"""Pure-torch model family for VAE Latent Explorer (no file I/O, no CLI, no Streamlit)."""
from .discriminator import PatchDiscriminator, adaptive_weight, decoder_last_layer, generator_loss, hinge_d_loss, patch_grid
from .distributions import DiagonalGaussian, standard_normal_log_density
from .loss import RECON_LOSSES, LossTerms, reconstruction_per_sample, vae_loss
from .resnet import ResNetVAE
from .vae import (
    ARCHS,
    BOTTLENECKS,
    CLASSIC_MLP_HIDDEN_DIM,
    DEFAULT_HIDDEN_DIM,
    DEFAULT_WIDTHS,
    IMAGE_SIZES,
    KINDS,
    MAX_LATENT_DIM,
    MAX_SPATIAL_LATENT_DIM,
    VAE,
    ModelConfig,
    VAEOutput,
    build_model,
    to_float_images,
)

__all__ = [
    "ARCHS", "BOTTLENECKS", "CLASSIC_MLP_HIDDEN_DIM", "DEFAULT_HIDDEN_DIM", "DEFAULT_WIDTHS", "IMAGE_SIZES", "KINDS", "MAX_LATENT_DIM",
    "MAX_SPATIAL_LATENT_DIM", "RECON_LOSSES",
    "DiagonalGaussian", "LossTerms", "ModelConfig", "PatchDiscriminator", "ResNetVAE", "VAE", "VAEOutput",
    "adaptive_weight", "build_model", "decoder_last_layer", "generator_loss", "hinge_d_loss", "patch_grid", "reconstruction_per_sample",
    "standard_normal_log_density", "to_float_images", "vae_loss",
]
