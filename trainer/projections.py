"""2-D maps of latents shared by the study and the explorer: PCA, UMAP / t-SNE embeddings and their cache file.

Pure numpy (umap-learn and scikit-learn are imported only when an embedding is computed). Latents `z` are
float32 rows of shape (B, D). A UMAP or t-SNE map of a run's atlas is slow, so it is kept in the run folder
as `projection-<method>-<epoch>.npz` (written atomically, read without pickle, reused only for the very
latents it was computed from).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import safe_io
from .runs import parse_versioned, versioned

EMBEDDINGS = ("umap", "tsne")  # the non-linear maps: slow enough to be kept on disk in the run folder
EMBEDDING_NAMES = {"umap": "UMAP", "tsne": "t-SNE"}
KNN_NEIGHBOURS = 10  # out-of-sample placement on a UMAP / t-SNE map
UMAP_NEIGHBOURS = 15
TSNE_PERPLEXITY = 30.0
UMAP_EPOCHS = 200
TSNE_ITERATIONS = 500
MIN_EMBEDDING_POINTS = 5  # fewer points get their PCA plane instead
PROJECTION_MAX_BYTES = 2**26  # a cached 2-D map: N x 2 floats and a fingerprint
FINGERPRINT_CHARS = 16


def as_latents(z: np.ndarray | torch.Tensor) -> np.ndarray:
    """Any latent batch -> float32 numpy (B, D); a single vector becomes (1, D)."""
    arr = z.detach().cpu().numpy() if isinstance(z, torch.Tensor) else np.asarray(z)
    arr = arr.astype(np.float32, copy=False)
    return arr[None] if arr.ndim == 1 else arr


# ---------------------------------------------------------------- PCA

@dataclass(frozen=True)
class PCA:
    """Principal axes of a set of latents: coords = (z - mean) @ components.T."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (K, D) orthonormal rows, by decreasing variance
    std: np.ndarray  # (K,) standard deviation of the data along each component

    def transform(self, z: np.ndarray, k: int = 2) -> np.ndarray:
        """(B, D) -> (B, k)."""
        return ((as_latents(z) - self.mean) @ self.components[:k].T).astype(np.float32)

    def inverse(self, coords: np.ndarray) -> np.ndarray:
        """(B, k) coordinates on the first k components -> (B, D) latents."""
        coords = np.asarray(coords, np.float32)
        return (self.mean + coords @ self.components[: coords.shape[1]]).astype(np.float32)

    def move_in_plane(self, z_base: np.ndarray, coords: np.ndarray) -> np.ndarray:
        """Latents whose first two PCA coords are `coords` (B, 2) and whose other components are z_base's: (B, D)."""
        base = as_latents(z_base)[0]
        shift = np.asarray(coords, np.float32) - self.transform(base[None])[0]
        return (base[None] + shift @ self.components[:2]).astype(np.float32)


def fit_pca(z: np.ndarray) -> PCA:
    """All principal components of z (N, D) by SVD (K = min(N, D); zero-padded to D for tiny N)."""
    z = np.asarray(z, np.float64)
    mean = z.mean(0)
    _, s, vt = np.linalg.svd(z - mean, full_matrices=False)
    std = s / np.sqrt(max(len(z) - 1, 1))
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])  # deterministic orientation
    vt = vt * np.where(signs == 0, 1.0, signs)[:, None]
    if len(vt) < z.shape[1]:  # fewer points than dims: complete the basis so inverse() of 2 coords still works
        q, _ = np.linalg.qr(np.concatenate([vt.T, np.eye(z.shape[1])], axis=1))
        vt = np.concatenate([vt, q[:, len(vt) : z.shape[1]].T])
        std = np.concatenate([std, np.zeros(z.shape[1] - len(std))])
    return PCA(mean.astype(np.float32), vt.astype(np.float32), std.astype(np.float32))


def plane_2d(means: np.ndarray) -> np.ndarray:
    """Latent means (N, D) as 2-D points: the raw dims for D = 2, (z0, 0) for D = 1, the PCA plane above: (N, 2)."""
    means = np.asarray(means, np.float32)
    if means.shape[1] == 1:
        return np.stack([means[:, 0], np.zeros(len(means), np.float32)], axis=1)
    if means.shape[1] == 2:
        return means.copy()
    return fit_pca(means).transform(means, 2)


# ---------------------------------------------------------------- UMAP / t-SNE

def knn_place(z: np.ndarray, ref: np.ndarray, ref_xy: np.ndarray, k: int = KNN_NEIGHBOURS) -> np.ndarray:
    """Place new latents on a non-linear map: inverse-distance average of their k nearest atlas points: (B, 2)."""
    z = as_latents(z)
    d2 = ((z[:, None, :] - ref[None]) ** 2).sum(-1)  # (B, N)
    k = min(k, len(ref))
    idx = np.argpartition(d2, k - 1, axis=1)[:, :k]
    w = 1.0 / (np.sqrt(np.take_along_axis(d2, idx, 1)) + 1e-6)
    return ((ref_xy[idx] * w[..., None]).sum(1) / w.sum(1, keepdims=True)).astype(np.float32)


def embed(z: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """A 2-D map of z (N, D) with UMAP or t-SNE (single-threaded, shortened schedules for a small CPU): (N, 2)."""
    z = np.asarray(z, np.float32)
    n = len(z)
    if n < MIN_EMBEDDING_POINTS:
        return fit_pca(z).transform(z)
    if method == "umap":
        import umap

        reducer = umap.UMAP(n_neighbors=min(UMAP_NEIGHBOURS, n - 1), n_components=2, n_epochs=UMAP_EPOCHS, random_state=seed, n_jobs=1)
        return reducer.fit_transform(z).astype(np.float32)
    if method == "tsne":
        from sklearn.manifold import TSNE

        tsne = TSNE(n_components=2, perplexity=min(TSNE_PERPLEXITY, (n - 1) / 3.0), init="pca", random_state=seed, max_iter=TSNE_ITERATIONS)
        return tsne.fit_transform(z).astype(np.float32)
    raise ValueError(f"unknown embedding '{method}': choose one of {', '.join(EMBEDDINGS)}")


# ---------------------------------------------------------------- the cache file in the run folder

def fingerprint(a: np.ndarray) -> str:
    """A short content hash of an array: a cached projection is only reused for exactly these latents."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:FINGERPRINT_CHARS]


def projection_path(run_dir: Path, method: str, epoch: int) -> Path:
    """Where the `method` map of epoch `epoch`'s atlas latents is kept in a run folder."""
    return Path(run_dir) / versioned(f"projection-{method}", epoch, ".npz")


def is_cached(run_dir: Path, method: str, epoch: int) -> bool:
    """Whether the run folder holds a `method` map of epoch `epoch` (computed at the end of training, or by an
    earlier view); cached_embedding still checks that it belongs to the very latents asked for."""
    return projection_path(run_dir, method, epoch).is_file()


def cached_embedding(run_dir: Path, epoch: int, z: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """embed(z) kept on disk as <run>/projection-<method>-<epoch>.npz (atomic write, no pickles): (N, 2).

    A missing, corrupt or stale file (other latents) is recomputed; older epochs' files are removed;
    a read-only run folder just means no disk cache.
    """
    path = projection_path(run_dir, method, epoch)
    key = fingerprint(np.asarray(z, np.float32))
    try:
        data = safe_io.read_regular_file(path, PROJECTION_MAX_BYTES)
        arrays = safe_io.load_npz(path, data, {"xy": 2, "fingerprint": 0}, limit=PROJECTION_MAX_BYTES)
        xy = arrays["xy"]
        if str(arrays["fingerprint"]) == key and xy.shape == (len(z), 2) and np.isfinite(xy).all():
            return xy.astype(np.float32)
    except safe_io.UnsafeFileError:  # missing, truncated, foreign, a pipe or a link: recompute
        pass
    xy = embed(z, method, seed)
    try:
        safe_io.atomic_write_bytes(path, safe_io.npz_bytes({"xy": xy, "fingerprint": np.array(key)}))
        for old in Path(run_dir).iterdir():
            parts = parse_versioned(old.name)
            if parts and (parts.stem, parts.suffix) == (f"projection-{method}", ".npz") and old.name != path.name:
                old.unlink(missing_ok=True)
    except OSError:
        pass
    return xy
