"""Compare runs: the computation behind the Compare page (alignment, shared inputs, metrics).

Nothing here calls Streamlit or draws; every function takes loaded `Run`s (or arrays) and returns arrays
or rows, so the page (app/views/compare.py) only lays them out side by side. Its figures are app.plots'.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from app.latent import INTERPOLATIONS, make_projection
from app.latent import interpolate as latent_path
from app.latent import prior_samples as prior_latents
from trainer.images import decode_uint8, reconstruct_uint8
from trainer.runs import Run

MIN_RUNS, MAX_RUNS = 2, 4
# Training-curve choices: label -> history key.
CURVE_METRICS = {
    "test loss (nats)": "test_loss",
    "train loss (nats)": "train_loss",
    "test reconstruction (nats)": "test_recon",
    "test KL (nats)": "test_kl",
    "MSE": "mse",
    "PSNR (dB)": "psnr",
    "SSIM": "ssim",
    "active units": "active_units",
    "learning rate": "lr",
    "beta": "beta",
    "seconds per epoch": "seconds",
}
# Metrics-table columns taken from the last history row: column -> history key.
TABLE_METRICS = {
    "test loss": "test_loss",
    "recon": "test_recon",
    "KL": "test_kl",
    "MSE": "mse",
    "PSNR (dB)": "psnr",
    "SSIM": "ssim",
    "active units": "active_units",
}
EPS = 1e-12


# ---------------------------------------------------------------- alignment

def procrustes_align(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """`other` (N, K) moved onto `reference` (N, K) by translation, uniform scale and an orthogonal map.

    The map (rotation or reflection) minimises the squared distance between matching rows
    (orthogonal Procrustes via the SVD of the centred cross-covariance); the result lives in the
    reference's coordinates, so two runs' scatters of the same images face the same way."""
    reference = np.asarray(reference, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    if reference.shape != other.shape or reference.ndim != 2:
        raise ValueError(f"procrustes_align needs two (N, K) arrays of the same shape, got {reference.shape} and {other.shape}")
    ref_mean, other_mean = reference.mean(axis=0), other.mean(axis=0)
    a, b = other - other_mean, reference - ref_mean
    norm_a = float((a**2).sum())
    if norm_a < EPS:  # all points equal: nothing to rotate
        return np.broadcast_to(ref_mean, reference.shape).copy()
    u, s, vt = np.linalg.svd(a.T @ b)
    rotation = u @ vt
    scale = float(s.sum()) / norm_a
    return scale * a @ rotation + ref_mean


def project_2d(means: np.ndarray) -> np.ndarray:
    """Latent means (N, D) as 2-D points the way the Explore page shows them: raw for D <= 2, PCA above."""
    return make_projection(np.asarray(means, np.float32), "pca").xy.astype(np.float64)


def same_atlas(a: Run, b: Run) -> bool:
    """True when both runs recorded latents of the very same images (same pixels, same order)."""
    ia, ib = a.atlas.images, b.atlas.images
    return ia.shape == ib.shape and np.array_equal(ia, ib)


def aligned_projections(runs: Sequence[Run], snapshot: int = -1) -> list[tuple[np.ndarray, bool]]:
    """For each run, the 2-D projection of its atlas latents at `snapshot`, and whether it was aligned
    to the first run (only runs with the same atlas images can be; the first run counts as aligned)."""
    out: list[tuple[np.ndarray, bool]] = []
    reference = project_2d(runs[0].atlas.means[snapshot]) if runs else None
    for i, run in enumerate(runs):
        points = project_2d(run.atlas.means[snapshot])
        if i == 0:
            out.append((points, True))
        elif same_atlas(runs[0], run):
            out.append((procrustes_align(reference, points), True))
        else:
            out.append((points, False))
    return out


# ---------------------------------------------------------------- shared inputs

def accepts_images(run: Run, images: np.ndarray) -> bool:
    """Whether `run`'s model takes images of this (N, C, H, W) shape."""
    return tuple(images.shape[1:]) == run.model_config.image_shape


def reconstruct(run: Run, images: np.ndarray) -> np.ndarray:
    """Reconstructions (posterior mean, decoded) of uint8 images (N, C, H, W): uint8 (N, C, H, W)."""
    return reconstruct_uint8(run.model, images)


def interpolate(run: Run, pair: np.ndarray, steps: int, method: str = INTERPOLATIONS[0]) -> np.ndarray:
    """Decoded uint8 images (steps, C, H, W) along the path (linear or spherical) between the posterior
    means of two uint8 images (2, C, H, W)."""
    means = run.model.encode_batches(torch.from_numpy(np.ascontiguousarray(pair))).mode().numpy()
    return decode_uint8(run.model, latent_path(means[0], means[1], steps, method))


def prior_samples(run: Run, count: int, seed: int) -> np.ndarray:
    """Decoded uint8 draws from N(0, I) for the shared seed: runs with the same latent size decode the very same z."""
    return decode_uint8(run.model, prior_latents(count, run.model_config.latent_dim, 1.0, seed))


# ---------------------------------------------------------------- metrics

def training_seconds(run: Run) -> float:
    """Wall-clock seconds of training and evaluation over the run's epochs (from its history)."""
    return float(sum(r.get("seconds", 0.0) for r in run.history))


def metrics_table(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per run: the last epoch's test metrics, parameters, latent size, epochs and training time."""
    rows = []
    for run in runs:
        last = run.history[-1] if run.history else {}
        row: dict[str, Any] = {"run": run.name, "model": f"{run.model_config.arch} {run.model_config.kind.upper()}"}
        row |= {column: last.get(key) for column, key in TABLE_METRICS.items()}
        row |= {
            "latent dim": run.model_config.latent_dim,
            "parameters": run.model.num_parameters(),
            "epochs": run.epoch,
            "training seconds": training_seconds(run),
        }
        rows.append(row)
    return rows
