"""Binarised images (`--binarize dynamic`): the benchmark setting of the VAE literature on MNIST.

A grayscale pixel of intensity p in [0, 1] becomes a Bernoulli(p) draw: 1 where a uniform draw u in
[0, 1) is below p, else 0, so its expected value is p. With `dynamic` binarisation the training
images are drawn afresh at every step (from the epoch's seeded generator, see trainer/train.py),
while the test set is binarised once, by the fixed `TEST_BINARIZE_SEED`, the same for every run:
runs trained with different seeds are evaluated on the same binary images, and their reconstruction
term is then a true Bernoulli negative log-likelihood (nats).
"""
from __future__ import annotations

import math

import torch

from models import to_float_images

BINARIZE_MODES = ("none", "dynamic")
DYNAMIC = "dynamic"
TEST_BINARIZE_SEED = 1729  # the one fixed seed of every run's binarised test set (never the run's own seed)
DRAW_PIXELS = 2**24  # uniforms drawn per chunk when binarising a stored set (64 MiB of float32)
UINT8_MAX = 255


def is_dynamic(mode: str) -> bool:
    """Whether a TrainConfig.binarize mode resamples binary training pixels."""
    return mode == DYNAMIC


def bernoulli_pixels(x: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Binary images of x's dtype, 1 where uniforms < x, else 0: one Bernoulli(x) draw per pixel.

    x: (B, C, H, W) intensities in [0, 1]; uniforms: the same shape, in [0, 1). A pixel of 0 never
    lights up and a pixel of 1 always does."""
    return torch.lt(uniforms, x).to(x.dtype)


def binarize_uint8(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> one Bernoulli draw of each pixel as uint8 0 / 255, on the CPU.

    Uniforms come from `generator` (a CPU generator) in chunks of whole images of a fixed size, so the
    same generator state gives the same pixels whatever the machine."""
    if images.dtype != torch.uint8:
        raise ValueError(f"binarize_uint8 takes uint8 images, got {images.dtype}")
    images = images.cpu()
    out = torch.empty_like(images)
    rows = max(1, DRAW_PIXELS // max(1, math.prod(images.shape[1:])))
    for start in range(0, len(images), rows):
        chunk = to_float_images(images[start : start + rows])  # (b, C, H, W) in [0, 1]
        u = torch.rand(chunk.shape, generator=generator)
        out[start : start + rows] = bernoulli_pixels(chunk, u).to(torch.uint8) * UINT8_MAX
    return out


def binarized_test_set(test_x: torch.Tensor) -> torch.Tensor:
    """The test set binarised once by TEST_BINARIZE_SEED: uint8 0 / 255 (N, C, H, W), the same for every run."""
    return binarize_uint8(test_x, torch.Generator().manual_seed(TEST_BINARIZE_SEED))


def eval_images(test_x: torch.Tensor, mode: str) -> torch.Tensor:
    """The test images a run with binarise `mode` is evaluated on: binarised once for `dynamic`, else as they are."""
    return binarized_test_set(test_x) if is_dynamic(mode) else test_x

