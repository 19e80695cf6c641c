"""Compare runs: the computation behind the Compare page (alignment, shared inputs, metrics).

Nothing here calls Streamlit or draws; every function takes loaded `Run`s (or arrays) and returns arrays
or rows, so the page (app/views/compare.py) only lays them out side by side. Its figures are app.plots'.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from app import bounds
from app.latent import INTERPOLATIONS, FittedGaussian, atlas_code_samples, is_spatial, latent_size_text, latent_text, make_projection
from app.latent import interpolate as latent_path
from app.plots import RowValue
from trainer.images import decode_uint8, reconstruct_uint8
from trainer.runs import Run, RunSummary

MIN_RUNS, MAX_RUNS = 2, 4
# Curves whose numbers are in the runs' reconstruction units (nats only on binary images): their axis says which.
BOUND_CURVES = ("test neg. ELBO (bound)", "train neg. ELBO (bound)", "test objective", "train objective", "test reconstruction term")
# Training-curve choices: label -> history key, or a number derived from a row (the bound of rows written before it was recorded).
CURVE_METRICS: dict[str, str | RowValue] = {
    "test neg. ELBO (bound)": functools.partial(bounds.row_bound, split="test"),
    "train neg. ELBO (bound)": functools.partial(bounds.row_bound, split="train"),
    "test objective": "test_loss",
    "train objective": "train_loss",
    "test reconstruction term": "test_recon",
    "test KL (nats)": "test_kl",
    "MSE": "mse",
    "PSNR (dB)": "psnr",
    "SSIM": "ssim",
    "active units (KL > 0.01; an AE: code variance > 0.01)": "active_units",
    "learning rate": "lr",
    "beta": "beta",
    "seconds per epoch": "seconds",
}
# Metrics-table columns taken as they are from the last history row: column -> history key.
TABLE_METRICS = {
    "objective": "test_loss",
    "recon": "test_recon",
    "KL": "test_kl",
    "MSE": "mse",
    "PSNR (dB)": "psnr",
    "SSIM": "ssim",
    "active units": "active_units",
}
# The two tables of the page: the ranking by the bound, then reconstruction quality, codes and cost.
RANKING_COLUMNS = ("rank", "run", "dataset", "β", "recon loss", "neg. ELBO", "IWAE NLL", "objective", "recon", "KL")
QUALITY_COLUMNS = ("run", "model", "latent", "MSE", "PSNR (dB)", "SSIM", "active units", "params", "epochs", "time (s)")
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


def prior_samples(run: Run, count: int, seed: int, gaussian: FittedGaussian | None = None) -> np.ndarray:
    """Decoded uint8 samples for the shared seed: a VAE's from N(0, I) (runs with the same latent shape decode the very
    same z), an AE's from the Gaussian fitted to its codes, as Explore samples it (latent.AE_SAMPLES_NOTE; `gaussian`
    is latent.fit_gaussian of its atlas codes when the page keeps it)."""
    z = atlas_code_samples(run.atlas.means[-1], run.atlas.logvars is None, count, 1.0, seed, gaussian)  # (count, D)
    return decode_uint8(run.model, z)


def latent_cell(run: Run) -> int | str:
    """The table's latent column: a vector latent's size, or a map's size and shape (`98 (a 2 × 7 × 7 map)`)."""
    shape = run.model_config.latent_shape
    return latent_size_text(shape) if is_spatial(shape) else run.model_config.latent_dim


def same_latents(runs: Sequence[Run]) -> bool:
    """Whether the runs' latents have one shape: then a seed's prior sample is the very same z in every run (a
    98-dim vector and a 2 x 7 x 7 map draw the same numbers, but they are not the same code)."""
    return len({r.model_config.latent_shape for r in runs}) == 1


# ---------------------------------------------------------------- which runs, which images

def dataset_of(config: Mapping[str, Any] | None) -> str:
    """A run's dataset as the tables name it, from its config.json document: 'mnist (subset)' for the offline
    subset (its test set is not full MNIST's), else the --dataset value."""
    config = config or {}
    name = str((config.get("train") or {}).get("dataset", "?"))
    return name + (" (subset)" if (config.get("data") or {}).get("kind") == "subset" else "")


def comparable_key(config: Mapping[str, Any] | None) -> tuple[str, Any, Any]:
    """Runs with equal keys saw the same kind of images: dataset, channels and size."""
    model = (config or {}).get("model") or {}
    return dataset_of(config), model.get("in_channels"), model.get("image_size")


def default_runs(summaries: Sequence[RunSummary], preferred: str | None = None) -> list[str]:
    """The names Compare opens on: `preferred` (the sidebar's run) or else the first run that opens, and a second run
    of the same dataset and image shape (one of the same latent size and shape first), so the two are comparable; a run of
    another dataset only when no run shares the first one's."""
    openable = [s for s in summaries if not s.error]
    if not openable:
        return []
    first = next((s for s in openable if s.name == preferred), openable[0])
    others = [s for s in openable if s is not first]
    key, latent = comparable_key(first.config), latent_text((first.config or {}).get("model") or {})
    same = [s for s in others if comparable_key(s.config) == key]
    same.sort(key=lambda s: latent_text((s.config or {}).get("model") or {}) != latent)  # stable: listing order within
    partner = (same or others)[: MIN_RUNS - 1]
    return [first.name] + [s.name for s in partner]


def datasets_differ(runs: Sequence[Run]) -> bool:
    """Whether the chosen runs were trained on different datasets (or image shapes)."""
    return len({comparable_key(r.info) for r in runs}) > 1


def default_pair(labels: np.ndarray) -> tuple[int, int]:
    """Two atlas indices of different classes for the default interpolation: image 0 and the first image of another class."""
    labels = np.asarray(labels)
    if len(labels) < 2:
        return 0, 0
    other = np.nonzero(labels != labels[0])[0]
    return 0, int(other[0]) if len(other) else 1


# ---------------------------------------------------------------- metrics

def training_seconds(run: Run) -> float:
    """Wall-clock seconds of training and evaluation over the run's epochs (from its history)."""
    return float(sum(r.get("seconds", 0.0) for r in run.history))


def rank_group(run: Run) -> tuple[str, str, bool]:
    """Bounds are comparable within a group: the same dataset and the same reconstruction term."""
    setting = bounds.Setting.of_run(run)
    return dataset_of(run.info), setting.recon_loss, setting.binarized


def metrics_table(runs: Sequence[Run], evaluations: Sequence[Mapping[str, Any] | None] | None = None) -> list[dict[str, Any]]:
    """One row per run, ranked by the last epoch's test negative ELBO (lower is better) within each group of
    comparable runs (rank_group; groups in order of first appearance); runs with no bound (autoencoders) follow,
    unranked (rank and bound None). Columns: RANKING_COLUMNS and QUALITY_COLUMNS; `evaluations` (one per run, or
    None) give the IWAE NLL as text, "" where there is none."""
    evaluations = list(evaluations) if evaluations is not None else [None] * len(runs)
    rows = []
    for run, evaluation in zip(runs, evaluations):
        last = run.history[-1] if run.history else {}
        setting = bounds.Setting.of_run(run)
        bound = bounds.row_bound(last) if last and setting.has_bound else None
        row: dict[str, Any] = {
            "rank": None, "run": run.name, "dataset": dataset_of(run.info), "β": bounds.row_beta(last, setting),
            "recon loss": setting.recon_short, "neg. ELBO": bound,
            "IWAE NLL": bounds.iwae_cell(evaluation) if setting.has_bound and evaluation else None,
            "model": f"{run.model_config.arch} {setting.kind_label}",
        }
        row |= {column: last.get(key) for column, key in TABLE_METRICS.items()}
        row |= {
            "latent": latent_cell(run),
            "params": run.model.num_parameters(),
            "epochs": run.epoch,
            "time (s)": training_seconds(run),
        }
        rows.append((rank_group(run), row))
    groups = list(dict.fromkeys(g for g, _ in rows))
    ranked = sorted((r for r in rows if r[1]["neg. ELBO"] is not None), key=lambda gr: (groups.index(gr[0]), gr[1]["neg. ELBO"]))
    for i, (group, row) in enumerate(ranked):
        row["rank"] = 1 + sum(1 for g, _ in ranked[:i] if g == group)
    return [row for _, row in ranked] + [row for _, row in rows if row["neg. ELBO"] is None]


def rank_groups(runs: Sequence[Run]) -> int:
    """How many groups of comparable bounds the runs fall into (more than one: ranks are within groups)."""
    return len({rank_group(r) for r in runs})


def curve_label(metric: str, runs: Sequence[Run]) -> str:
    """The curves' axis title: a bound-like metric says its unit (nats only on binary images) when the runs share one."""
    if metric not in BOUND_CURVES:
        return metric
    units = {bounds.Setting.of_run(r).unit for r in runs}
    return f"{metric}, {units.pop()}" if len(units) == 1 else f"{metric} (units differ: see the table)"


# ---------------------------------------------------------------- table layout

TABLE_FORMATS = {  # printf formats of the number columns (st.column_config.NumberColumn and the width estimate)
    "rank": "%d", "β": "%g", "neg. ELBO": "%.2f", "objective": "%.2f", "recon": "%.2f", "KL": "%.2f", "MSE": "%.4f", "PSNR (dB)": "%.2f",
    "SSIM": "%.3f", "params": "localized", "time (s)": "%.1f",
}
TEXT_NUMBERS = ("IWAE NLL", "latent")  # numbers shown as text ("102.87 ± 0.64", "98 (a 2 × 7 × 7 map)"), aligned like the number columns
CHAR_PX = 7.5  # about one character of the table font (14 px Source Sans), digits and capitals included
CELL_PAD_PX = 24  # a cell's padding and the header's sort arrow
MIN_COLUMN_PX = 44
CONTENT_PX_AT_1500 = 1000  # the wide layout's content width in a 1,500 px window with the sidebar open (about 1,040 px)


def cell_text(column: str, value: Any) -> str:
    """A cell as the table shows it (bounds.NO_VALUE for a missing number)."""
    if value is None:
        return bounds.NO_VALUE
    if column in TABLE_FORMATS and isinstance(value, (int, float)) and TABLE_FORMATS[column].startswith("%"):
        return TABLE_FORMATS[column] % value
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def column_widths(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> dict[str, int]:
    """Pixel widths that show every header and cell in full (run names are never cut), estimated from their length."""
    return {c: max(MIN_COLUMN_PX, round(CELL_PAD_PX + CHAR_PX * max([len(c)] + [len(cell_text(c, r.get(c))) for r in rows]))) for c in columns}
