"""Latent-space arithmetic for the explorer: grids, paths, densities, statistics, samples, the scatter's projection.

Pure numpy/torch, no Streamlit. Every function takes arrays (latents `z` are float32 rows of shape (B, D))
and returns arrays, so the page, the benchmark and the tests share one implementation. PCA, the UMAP /
t-SNE maps and their cache file in the run folder live in trainer.projections (the study uses them too).
"""
from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Callable, Mapping

import numpy as np
import torch

from models import DiagonalGaussian, ModelConfig, standard_normal_log_density
from trainer.metrics import ACTIVE_UNIT_THRESHOLD
from trainer.projections import EMBEDDINGS, PCA, as_latents, cached_embedding, fit_pca, knn_place, projection_path  # noqa: F401  (re-exported)

GRID_QUANTILES = (0.05, 0.95)  # the manifold grid spans these Gaussian quantiles on each axis
GRID_SIZE_RANGE = (5, 30)
SLIDER_STDS = 3.0  # slider range: aggregate posterior mean +/- this many standard deviations
MAX_SLIDERS = 32
INACTIVE_THRESHOLD = ACTIVE_UNIT_THRESHOLD  # nats of mean KL (variance of the codes for an AE)
INTERPOLATION_STEPS = (3, 20)
INTERPOLATIONS = ("linear", "spherical")
MAX_SEED = 2**31 - 1  # the largest seed a sampling widget accepts
CACHED_PROJECTIONS = EMBEDDINGS  # UMAP and t-SNE maps are computed once per epoch and kept in the run folder
# How every page samples an autoencoder (code_samples, atlas_code_samples), said in these words wherever it does.
AE_SAMPLES_NOTE = ("An autoencoder has no prior: its samples are drawn from a Gaussian fitted to its codes "
                   "(the mean and covariance of the atlas images' codes).")


# ---------------------------------------------------------------- grids and paths

def gaussian_quantiles(n: int, lo: float = GRID_QUANTILES[0], hi: float = GRID_QUANTILES[1]) -> np.ndarray:
    """n values of the standard normal inverse CDF at evenly spaced probabilities lo..hi, (n,)."""
    if n < 1 or not 0.0 < lo < hi < 1.0:
        raise ValueError(f"need n >= 1 and 0 < lo < hi < 1, got n={n}, lo={lo}, hi={hi}")
    probs = np.linspace(lo, hi, n) if n > 1 else np.array([0.5 * (lo + hi)])
    normal = NormalDist()
    return np.array([normal.inv_cdf(float(p)) for p in probs], dtype=np.float32)


def lerp(z0: np.ndarray, z1: np.ndarray, steps: int) -> np.ndarray:
    """Straight line from z0 to z1 (D,), both ends included: (steps, D)."""
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    return ((1.0 - t) * z0[None] + t * z1[None]).astype(np.float32)


def slerp(z0: np.ndarray, z1: np.ndarray, steps: int, eps: float = 1e-6) -> np.ndarray:
    """Spherical path: the direction turns along the great circle, the norm changes linearly: (steps, D).

    Equal-norm ends keep their norm all the way (the path a Gaussian prior favours); opposite or
    zero-length ends have no great circle and fall back to the straight line.
    """
    z0, z1 = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
    n0, n1 = np.linalg.norm(z0), np.linalg.norm(z1)
    if n0 < eps or n1 < eps:
        return lerp(z0, z1, steps)
    u0, u1 = z0 / n0, z1 / n1
    omega = np.arccos(np.clip(u0 @ u1, -1.0, 1.0))
    if omega < eps or np.pi - omega < 1e-3:
        return lerp(z0, z1, steps)
    t = np.linspace(0.0, 1.0, steps)[:, None]
    direction = (np.sin((1.0 - t) * omega) * u0 + np.sin(t * omega) * u1) / np.sin(omega)
    norm = (1.0 - t) * n0 + t * n1
    return (direction * norm).astype(np.float32)


def interpolate(z0: np.ndarray, z1: np.ndarray, steps: int, method: str) -> np.ndarray:
    """`linear` or `spherical` path of `steps` latents from z0 to z1: (steps, D)."""
    if method not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation '{method}': choose one of {', '.join(INTERPOLATIONS)}")
    return lerp(z0, z1, steps) if method == "linear" else slerp(z0, z1, steps)


def prior_log_density(z: np.ndarray) -> np.ndarray:
    """log N(z; 0, I) per row in nats, (B,)."""
    return standard_normal_log_density(torch.from_numpy(as_latents(z))).numpy()


def gaussian_log_density(z: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """log N(z; mean, cov) per row in nats, (B,): the stand-in prior of an autoencoder (factored on every call:
    a page that asks again keeps the FittedGaussian of factor_gaussian instead)."""
    return factor_gaussian(mean, cov).log_density(z)


def traversal_values(lo: np.ndarray, hi: np.ndarray, steps: int) -> np.ndarray:
    """Per-dimension sweeps across the slider ranges: (D, steps)."""
    return np.linspace(lo, hi, steps, axis=1).astype(np.float32)


def traversal_latents(z: np.ndarray, dims: list[int], values: np.ndarray) -> np.ndarray:
    """For each dim, copies of z with that dim swept over values[dim] (steps,): (len(dims) * steps, D)."""
    z = as_latents(z)[0]
    rows = []
    for d in dims:
        block = np.repeat(z[None], values.shape[-1], axis=0)  # (steps, D)
        block[:, d] = values[d] if values.ndim == 2 else values
        rows.append(block)
    return np.concatenate(rows).astype(np.float32) if rows else np.empty((0, len(z)), np.float32)


# ---------------------------------------------------------------- statistics of the codes

@dataclass(frozen=True)
class DimStats:
    """Per-dimension statistics of the atlas posterior that order and bound the sliders."""

    scores: np.ndarray  # (D,) mean KL per dimension in nats (VAE) or variance of the means (AE)
    order: np.ndarray  # (D,) dims by decreasing score
    inactive: np.ndarray  # (D,) bool: score below INACTIVE_THRESHOLD
    mean: np.ndarray  # (D,) mean of the atlas means
    std: np.ndarray  # (D,) std of the atlas means
    lo: np.ndarray  # (D,) slider minimum
    hi: np.ndarray  # (D,) slider maximum
    score_name: str  # "KL" or "variance"
    cov: np.ndarray  # (D, D) covariance of the atlas means (the AE's fitted Gaussian)
    gaussian: FittedGaussian | None = None  # an AE's fitted Gaussian, factored once (None for a VAE: it has its prior)


def dimension_stats(means: np.ndarray, logvars: np.ndarray | None) -> DimStats:
    """KL per dimension averaged over images (or, for an AE, variance of its codes), ranges of mean +/- 3 std."""
    means = np.asarray(means, np.float64)  # (N, D)
    mean, std = means.mean(0), means.std(0)
    if logvars is None:
        scores, name = means.var(0), "variance"
    else:
        posterior = DiagonalGaussian(torch.from_numpy(means), torch.from_numpy(np.asarray(logvars, np.float64)))
        scores, name = posterior.kl_per_dim().mean(0).numpy(), "KL"
    order = np.argsort(-scores, kind="stable")
    spread = np.maximum(std, 1e-3)
    lo = np.minimum(mean - SLIDER_STDS * spread, 0.0)  # zero is always a reachable starting point
    hi = np.maximum(mean + SLIDER_STDS * spread, 0.0)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    code_mean, cov = fitted_gaussian(means)
    gaussian = factor_gaussian(code_mean, cov) if logvars is None else None  # once per run epoch (the page caches the stats)
    return DimStats(f32(scores), order, scores < INACTIVE_THRESHOLD, f32(mean), f32(std), f32(lo), f32(hi), name, cov, gaussian)


def fitted_gaussian(means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of codes (N, D), float32: an autoencoder's stand-in prior."""
    means = np.asarray(means, np.float64)
    d = means.shape[1]
    cov = np.cov(means, rowvar=False).reshape(d, d) if len(means) > 1 else np.zeros((d, d))
    return means.mean(0).astype(np.float32), cov.astype(np.float32)


GAUSSIAN_JITTER = 1e-6  # added to the fitted covariance's diagonal: an AE's codes may span fewer than D directions


@dataclass(frozen=True)
class FittedGaussian:
    """N(mean, cov + GAUSSIAN_JITTER I), an autoencoder's stand-in prior, with the covariance's eigendecomposition
    done once: a density or a batch of samples then costs a (D, D) product, not an inverse or a factorisation
    (about 0.3 s and 0.5 s at D = 1,024 on this CPU). Its arrays are read-only: one object may be shared by sessions."""

    mean: np.ndarray  # (D,) float32
    vecs: np.ndarray  # (D, D) float64 eigenvectors (columns) of the jittered covariance
    vals: np.ndarray  # (D,) float64 its eigenvalues, ascending

    @property
    def dim(self) -> int:
        return len(self.mean)

    @property
    def logdet(self) -> float:
        """log det of the jittered covariance (every eigenvalue at least the jitter: cov is positive semi-definite)."""
        return float(np.log(np.maximum(self.vals, GAUSSIAN_JITTER)).sum())

    def log_density(self, z: np.ndarray) -> np.ndarray:
        """log N(z; mean, cov) per row in nats: (B, D) or (D,) -> (B,)."""
        diff = as_latents(z).astype(np.float64) - np.asarray(self.mean, np.float64)  # (B, D)
        maha = ((diff @ self.vecs) ** 2 / np.maximum(self.vals, GAUSSIAN_JITTER)).sum(axis=1)
        return (-0.5 * (maha + self.logdet + self.dim * np.log(2.0 * np.pi))).astype(np.float32)

    def sample(self, n: int, temperature: float = 1.0, seed: int = 0) -> np.ndarray:
        """z ~ N(mean, T^2 cov), seeded (the eps of prior_samples for this seed): (n, D)."""
        root = self.vecs * np.sqrt(np.clip(self.vals, 0.0, None))  # root @ root.T == cov, robust to a singular cov
        eps = prior_samples(n, self.dim, 1.0, seed).astype(np.float64)
        return (self.mean[None] + temperature * eps @ root.T).astype(np.float32)


def factor_gaussian(mean: np.ndarray, cov: np.ndarray) -> FittedGaussian:
    """The FittedGaussian of a mean (D,) and covariance (D, D) (fitted_gaussian's float32 pair)."""
    mean = np.array(mean, np.float32)
    cov = np.asarray(cov, np.float64) + GAUSSIAN_JITTER * np.eye(len(mean))
    vals, vecs = np.linalg.eigh(cov)
    for a in (mean, vals, vecs):
        a.setflags(write=False)
    return FittedGaussian(mean, vecs, vals)


def fit_gaussian(means: np.ndarray) -> FittedGaussian:
    """The Gaussian fitted to codes (N, D), factored: what Explore and Compare sample an autoencoder from."""
    return factor_gaussian(*fitted_gaussian(means))


def stats_gaussian(stats: DimStats) -> FittedGaussian:
    """The fitted Gaussian of these statistics: the one factored with them, or factored now (a VAE's stats carry none)."""
    return stats.gaussian if stats.gaussian is not None else factor_gaussian(stats.mean, stats.cov)


def slider_dims(stats: DimStats, extra: list[int] | None = None) -> list[int]:
    """Dims that get a slider: all of them up to MAX_SLIDERS, else the MAX_SLIDERS highest-scoring plus `extra`."""
    top = [int(d) for d in stats.order[:MAX_SLIDERS]]
    return top + [int(d) for d in (extra or []) if int(d) not in top]


# ---------------------------------------------------------------- sampling

def prior_samples(n: int, latent_dim: int, temperature: float = 1.0, seed: int = 0) -> np.ndarray:
    """z ~ N(0, T^2 I), seeded: (n, D)."""
    g = torch.Generator().manual_seed(int(seed))
    return (temperature * torch.randn(n, latent_dim, generator=g)).numpy()


def fitted_gaussian_samples(mean: np.ndarray, cov: np.ndarray, n: int, temperature: float = 1.0, seed: int = 0) -> np.ndarray:
    """z ~ N(mean, T^2 cov): the stand-in prior of an autoencoder, fitted to its codes, factored on every call: (n, D)."""
    return factor_gaussian(mean, cov).sample(n, temperature, seed)


def posterior_samples(mean: np.ndarray, std: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n seeded samples of one image's posterior N(mean, diag(std^2)) (std 0 for an AE): (n, D)."""
    mean_t = torch.from_numpy(np.asarray(mean, np.float32))[None].expand(n, -1)  # (n, D)
    logvar_t = (2.0 * torch.log(torch.from_numpy(np.asarray(std, np.float32))))[None].expand(n, -1)  # -inf where std is 0
    eps = torch.from_numpy(prior_samples(n, len(mean), 1.0, seed))
    return DiagonalGaussian(mean_t, logvar_t).sample(eps=eps).numpy().astype(np.float32)


def code_samples(stats: DimStats, deterministic: bool, n: int, temperature: float = 1.0, seed: int = 0) -> np.ndarray:
    """n seeded samples of the prior N(0, T^2 I), or for an AE (no prior) of N(mean, T^2 cov) fitted to its codes: (n, D)."""
    if deterministic:
        return stats_gaussian(stats).sample(n, temperature, seed)
    return prior_samples(n, len(stats.mean), temperature, seed)


def atlas_code_samples(means: np.ndarray, deterministic: bool, n: int, temperature: float = 1.0, seed: int = 0,
                       gaussian: FittedGaussian | None = None) -> np.ndarray:
    """code_samples for a run given its atlas codes `means` (N, D): a VAE's prior samples (the same z for every run of
    this latent size and seed), or an AE's samples of the Gaussian fitted to `means` (AE_SAMPLES_NOTE; `gaussian` is
    fit_gaussian(means) when the caller keeps it): (n, D)."""
    if deterministic:
        return (gaussian if gaussian is not None else fit_gaussian(means)).sample(n, temperature, seed)
    return prior_samples(n, np.shape(means)[1], temperature, seed)


def random_start(stats: DimStats, deterministic: bool, seed: int) -> np.ndarray:
    """A seeded starting point: a prior sample, or for an AE a sample of the Gaussian fitted to its codes: (D,)."""
    return code_samples(stats, deterministic, 1, 1.0, seed)[0]


def log_density(z: np.ndarray, stats: DimStats, deterministic: bool) -> np.ndarray:
    """log N(z; 0, I) per row in nats, or for an AE the log density under the Gaussian fitted to its codes: (B,)."""
    return stats_gaussian(stats).log_density(z) if deterministic else prior_log_density(z)


# ---------------------------------------------------------------- spatial latents: a (C_z, h, w) map flattened to D

def is_spatial(latent_shape: tuple[int, ...]) -> bool:
    """Whether a run's latent shape is a (C_z, h, w) map (a spatial resnet) rather than a vector (D,)."""
    return len(latent_shape) == 3


def dim_position(d: int, latent_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(channel, row, column) of flat latent index d in a (C_z, h, w) map flattened channel-major (d = c*h*w + row*w + col)."""
    c, row, col = np.unravel_index(int(d), latent_shape)
    return int(c), int(row), int(col)


def dim_name(d: int, latent_shape: tuple[int, ...] = ()) -> str:
    """How the app names latent dimension d: `z17` in a vector latent, `c2 (3, 5)` (channel 2, row 3, column 5) in a map."""
    if not is_spatial(latent_shape):
        return f"z{int(d)}"
    c, row, col = dim_position(d, latent_shape)
    return f"c{c} ({row}, {col})"


def latent_size_text(latent_shape: tuple[int, ...]) -> str:
    """The latent's size in words: `16`, or `98 (a 2 × 7 × 7 map)`."""
    size = int(np.prod(latent_shape))
    return f"{size} (a {' × '.join(map(str, latent_shape))} map)" if is_spatial(latent_shape) else str(size)


def latent_text(model: Mapping[str, Any], shape: tuple[int, ...] | None = None) -> str:
    """latent_size_text of a run from its loaded latent `shape`, or else from its config.json's model section (a map's
    shape follows from a resnet's config; a config that does not build gives its size as written, or '?')."""
    if shape is None and model.get("arch") == "resnet":
        try:
            shape = ModelConfig.from_dict(dict(model)).latent_shape
        except (AttributeError, TypeError, ValueError):
            shape = None
    return latent_size_text(shape) if shape is not None else str(model.get("latent_dim", "?"))


def as_maps(values: np.ndarray, latent_shape: tuple[int, ...]) -> np.ndarray:
    """Per-dimension values (..., D) as the latent's maps (..., C_z, h, w) (channel-major, as the model flattens them)."""
    values = np.asarray(values)
    if not is_spatial(latent_shape) or values.shape[-1] != int(np.prod(latent_shape)):
        raise ValueError(f"values of shape {values.shape} are not latents of a {' x '.join(map(str, latent_shape))} map")
    return values.reshape(*values.shape[:-1], *latent_shape)


def kl_maps(means: np.ndarray, logvars: np.ndarray, latent_shape: tuple[int, ...]) -> np.ndarray:
    """Mean over images of KL(q(z|x) || N(0, 1)) per latent element, nats: (N, D) posteriors -> (C_z, h, w).

    Summed over every element it is the mean KL term per image (where the code spends its nats)."""
    posterior = DiagonalGaussian(torch.from_numpy(np.asarray(means, np.float64)), torch.from_numpy(np.asarray(logvars, np.float64)))
    return as_maps(posterior.kl_per_dim().mean(0).numpy(), latent_shape)


def position_totals(maps: np.ndarray) -> np.ndarray:
    """Per-element maps (C_z, h, w) summed over the channels: (h, w), what each position of the map costs in all."""
    return np.asarray(maps).sum(axis=0)


def symmetric_limit(values: np.ndarray, floor: float = 1e-6) -> float:
    """The largest |value| (at least `floor`): the bound of a diverging colour scale centred on 0 that clips nothing."""
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    return max(float(np.abs(finite).max()) if finite.size else 0.0, floor)


# ---------------------------------------------------------------- the scatter's projection

@dataclass(frozen=True)
class Projection:
    """How latents become scatter coordinates: raw dims, PCA, or a UMAP / t-SNE map of the atlas."""

    method: str  # "pca", "raw" or one of CACHED_PROJECTIONS; 2-D latents always use "raw"
    dims: tuple[int, int]  # the raw dims shown (method "raw")
    xy: np.ndarray  # (N, 2) the atlas on this map
    pca: PCA | None  # (method "pca")
    ref: np.ndarray | None  # (N, D) atlas means, for placing new points on a UMAP / t-SNE map
    latent_shape: tuple[int, ...] = ()  # the run's latent shape: names the raw dims ((C_z, h, w): "c2 (3, 5)")

    def transform(self, z: np.ndarray) -> np.ndarray:
        """(B, D) latents -> (B, 2) scatter coordinates."""
        z = as_latents(z)
        if self.method == "raw":
            return z[:, list(self.dims)].copy()
        if self.method == "pca":
            return self.pca.transform(z)  # type: ignore[union-attr]
        return knn_place(z, self.ref, self.xy)  # type: ignore[arg-type]

    @property
    def axis_titles(self) -> tuple[str, str]:
        if self.method == "raw":
            return dim_name(self.dims[0], self.latent_shape), dim_name(self.dims[1], self.latent_shape)
        name = {"pca": "PC", "umap": "UMAP ", "tsne": "t-SNE "}[self.method]
        return f"{name}1", f"{name}2"


def make_projection(means: np.ndarray, method: str, dims: tuple[int, int] = (0, 1), embedding: np.ndarray | None = None,
                    latent_shape: tuple[int, ...] = ()) -> Projection:
    """The projection of the atlas means (N, D); `embedding` is the precomputed (N, 2) map for umap / tsne;
    `latent_shape` names the raw dims (dim_name)."""
    means = np.asarray(means, np.float32)
    if means.shape[1] == 1:
        method, dims = "raw", (0, 0)
    elif means.shape[1] == 2 and method != "raw":
        method, dims = "raw", (0, 1)
    if method == "raw":
        return Projection("raw", dims, means[:, list(dims)].copy(), None, None, latent_shape)
    if method == "pca":
        pca = fit_pca(means)
        return Projection("pca", (0, 1), pca.transform(means), pca, None, latent_shape)
    if embedding is None:
        raise ValueError(f"the {method} projection needs its embedding")
    return Projection(method, (0, 1), np.asarray(embedding, np.float32), None, means, latent_shape)


def replay_coords(means: np.ndarray, method: str, dims: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Every snapshot (E, N, D) on one fixed map fitted to the last snapshot (PCA, or raw dims): (E, N, 2)."""
    e, n, d = means.shape
    flat = means.reshape(e * n, d)
    if d <= 2 or method == "raw":
        dims = (0, 0) if d == 1 else dims
        return flat[:, list(dims)].reshape(e, n, 2).astype(np.float32)
    return fit_pca(means[-1]).transform(flat).reshape(e, n, 2)


def replay_axis_titles(method: str, dims: tuple[int, int], latent_shape: tuple[int, ...] = ()) -> tuple[str, str]:
    """The replay's axis titles: the raw dims shown (named by dim_name), or the PCA plane's axes."""
    return (dim_name(dims[0], latent_shape), dim_name(dims[1], latent_shape)) if method == "raw" else ("PC1", "PC2")


def data_range(xy: np.ndarray, margin: float = 0.05) -> tuple[tuple[float, float], tuple[float, float]]:
    """Axis ranges covering every finite point of xy (..., 2) (all the snapshots of a replay: none is clipped), padded by `margin`."""
    flat = np.asarray(xy, np.float64).reshape(-1, 2)
    flat = flat[np.isfinite(flat).all(axis=1)]
    if not len(flat):
        return (-1.0, 1.0), (-1.0, 1.0)
    lo, hi = flat.min(axis=0), flat.max(axis=0)
    pad = np.maximum((hi - lo) * margin, 1e-3)
    return (float(lo[0] - pad[0]), float(hi[0] + pad[0])), (float(lo[1] - pad[1]), float(hi[1] + pad[1]))


def robust_range(xy: np.ndarray, margin: float = 0.08, pct: float = 0.5) -> tuple[tuple[float, float], tuple[float, float]]:
    """Axis ranges covering all but the outer `pct` percent of points on each side, padded by `margin`."""
    flat = np.asarray(xy, np.float64).reshape(-1, 2)
    lo, hi = np.percentile(flat, pct, axis=0), np.percentile(flat, 100 - pct, axis=0)
    pad = np.maximum((hi - lo) * margin, 1e-3)
    return (float(lo[0] - pad[0]), float(hi[0] + pad[0])), (float(lo[1] - pad[1]), float(hi[1] + pad[1]))


# ---------------------------------------------------------------- the 2-D manifold grid

@dataclass(frozen=True)
class ManifoldGrid:
    """An N x N grid of latents: row 0 is the top (largest second-axis value), column 0 the left."""

    z: np.ndarray  # (N * N, D), row-major
    n: int
    outline: np.ndarray  # (4 * n + 1, D) the grid's border, closed, for drawing its extent


def _grid_from_axes(n: int, make: Callable[[np.ndarray], np.ndarray]) -> ManifoldGrid:
    """Lay out make(grid indices (B, 2)) -> latents (B, D) as rows (top first) plus the closed border."""
    a = b = np.arange(n)
    rows = [make(np.stack([a, np.full(n, n - 1 - r)], 1)) for r in range(n)]  # top row first
    border_idx = np.concatenate([
        np.stack([a, np.zeros(n, int)], 1), np.stack([np.full(n, n - 1), b], 1),
        np.stack([a[::-1], np.full(n, n - 1)], 1), np.stack([np.zeros(n, int), b[::-1]], 1), [[0, 0]],
    ])
    return ManifoldGrid(np.concatenate(rows), n, make(border_idx))


def raw_grid(z_base: np.ndarray, dims: tuple[int, int], n: int, centre: np.ndarray, scale: np.ndarray) -> ManifoldGrid:
    """Grid over two raw dims at centre + scale * Gaussian quantiles, the other dims held at z_base."""
    q = gaussian_quantiles(n)
    base = as_latents(z_base)[0]
    i, j = dims

    def make(idx: np.ndarray) -> np.ndarray:  # idx (B, 2) grid indices -> (B, D) latents
        z = np.repeat(base[None], len(idx), axis=0)
        z[:, i] = centre[i] + scale[i] * q[idx[:, 0]]
        z[:, j] = centre[j] + scale[j] * q[idx[:, 1]]
        return z

    return _grid_from_axes(n, make)


def pca_grid(z_base: np.ndarray, pca: PCA, n: int) -> ManifoldGrid:
    """Grid over the first two principal axes at std * Gaussian quantiles, mapped back through inverse PCA;
    the components off the plane are held at z_base's."""
    q = gaussian_quantiles(n)

    def make(idx: np.ndarray) -> np.ndarray:
        coords = np.stack([pca.std[0] * q[idx[:, 0]], pca.std[1] * q[idx[:, 1]]], 1)
        return pca.move_in_plane(z_base, coords)

    return _grid_from_axes(n, make)


def manifold_grid(z_base: np.ndarray, means: np.ndarray, stats: DimStats, deterministic: bool, plane: str,
                  dims: tuple[int, int], n: int, pca: PCA | None = None) -> ManifoldGrid:
    """The Explore page's grid: over the PCA plane of the codes `means` (N, D) (plane "pca"; `pca` is their PCA when the
    caller has it, as fitting one takes seconds for a large spatial latent), or over two raw dims at the quantiles of
    the prior N(0, 1) (a VAE) or of the codes' mean and std (an AE)."""
    if plane == "pca":
        return pca_grid(z_base, pca if pca is not None else fit_pca(means), n)
    d = len(stats.mean)
    centre = stats.mean if deterministic else np.zeros(d, np.float32)
    scale = stats.std if deterministic else np.ones(d, np.float32)
    return raw_grid(z_base, dims, n, centre, scale)


# ---------------------------------------------------------------- an image against the test set

OOD_PERCENTILE = 99.0  # an upload scoring worse than this percentage of the atlas (test) images is flagged out of distribution
SCORE_SAMPLES = 2  # z samples per image of the negative ELBO estimate (seeded: the same number every time)
SCORE_SEED = 0
SCORE_BATCH = 500  # images per encoder / decoder pass


@dataclass(frozen=True)
class ImageScores:
    """Per-image scores of images under a run's model, (N,) float64 each."""

    mse: np.ndarray  # mean squared error per pixel of the reconstruction (posterior mean decoded), images in [0, 1]
    neg_elbo: np.ndarray | None  # negative ELBO (reconstruction term + KL, β = 1); None for an autoencoder (no bound)


def image_scores(model: torch.nn.Module, images: np.ndarray, recon_loss: str, *, samples: int = SCORE_SAMPLES, seed: int = SCORE_SEED) -> ImageScores:
    """Reconstruction error and negative ELBO of uint8 images (N, C, H, W) under a VAE-interface model (in eval mode).

    The bound is trainer.evaluate's per-image estimate with `samples` seeded z draws per image; an autoencoder gets
    only the reconstruction error."""
    from trainer.evaluate import evaluate_model

    x = torch.from_numpy(np.ascontiguousarray(images))
    mse = []
    with torch.no_grad():
        for xb in x.split(SCORE_BATCH):
            xf = xb.float() / 255.0  # (B, C, H, W)
            x_hat = torch.sigmoid(model.decode(model.encode(xf).mode()))
            mse.append((x_hat - xf).pow(2).flatten(1).mean(1).double())
    neg_elbo = None
    if not model.encode(x[:1].float() / 255.0).deterministic:
        generator = torch.Generator().manual_seed(seed)
        neg_elbo = evaluate_model(model, x, samples=samples, recon_loss=recon_loss, batch_size=SCORE_BATCH * samples, generator=generator).neg_elbo.numpy()
    return ImageScores(torch.cat(mse).numpy() if mse else np.zeros(0), neg_elbo)


def percentile_rank(value: float, reference: np.ndarray) -> float:
    """The percentage (0-100) of `reference` values strictly below `value`: 100 means worse than every one of them."""
    reference = np.asarray(reference, np.float64).ravel()
    if reference.size == 0:
        raise ValueError("percentile_rank needs at least one reference value")
    return 100.0 * float(np.count_nonzero(reference < value)) / reference.size


def out_of_distribution(percentile: float, threshold: float = OOD_PERCENTILE) -> bool:
    """Whether a score above `threshold` percent of the test images' marks an image unlike the data."""
    return percentile > threshold


def ood_report(upload: ImageScores, atlas: ImageScores, unit: str, threshold: float = OOD_PERCENTILE) -> tuple[str, bool]:
    """One line placing an image's reconstruction error (and negative ELBO, for a VAE) among the atlas images', and
    whether either is beyond `threshold` percent of them (out of distribution)."""
    parts, flagged = [], False
    scored = [("reconstruction error (MSE)", float(upload.mse[0]), atlas.mse, "{:.4f}")]
    if upload.neg_elbo is not None and atlas.neg_elbo is not None:
        scored.append((f"negative ELBO ({unit})", float(upload.neg_elbo[0]), atlas.neg_elbo, "{:.1f}"))
    for name, value, reference, fmt in scored:
        pct = percentile_rank(value, reference)
        flagged |= out_of_distribution(pct, threshold)
        parts.append(f"{name} {fmt.format(value)}, higher than {pct:.1f}% of the {len(reference):,} test images "
                     f"(median {fmt.format(float(np.median(reference)))})")
    return "; ".join(parts), flagged


def interpolation_caption(density: np.ndarray, method: str, deterministic: bool, noun: str = "image") -> str:
    """What the interpolation's density chart shows and how to read it, for the log densities (steps,) of its frames.

    The density (N(0, I), or an AE's Gaussian fitted to its codes) peaks at its centre, so a straight path passing
    near it rises in the middle; a high density there does not make a frame look like data."""
    density = np.asarray(density, np.float64)
    steps, ends = len(density), max(float(density[0]), float(density[-1]))
    what = "log density under the Gaussian fitted to the codes (an AE has no prior)" if deterministic else "prior log-density log N(z; 0, I)"
    centre = "the codes' mean" if deterministic else "the origin"
    text = f"{steps} frames, {method} path from A to B; under each frame its {what}, in nats. "
    if steps > 2 and float(density[1:-1].max()) > ends:
        text += f"The density peaks at {centre}, so this path rises where it passes nearest to it. "
    elif method == INTERPOLATIONS[1] and not deterministic:
        text += "A spherical path changes the norm linearly, so its prior density stays between the ends'. "
    text += (f"A high density does not mean a frame looks like data: frames far from the data's codes may look unlike any {noun} "
             f"even where the density is high. Compare each frame with the ends (dotted: A {density[0]:.1f}, B {density[-1]:.1f}).")
    return text


def binarize_like_test_set(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, C, H, W) binarised the way a --binarize run's test set is (one Bernoulli draw per pixel, by
    the fixed TEST_BINARIZE_SEED), so an upload is scored on the same kind of images as the atlas."""
    from trainer.binarize import TEST_BINARIZE_SEED, binarize_uint8

    generator = torch.Generator().manual_seed(TEST_BINARIZE_SEED)
    return binarize_uint8(torch.from_numpy(np.ascontiguousarray(images)), generator).numpy()
