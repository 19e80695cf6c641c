"""The Explore page's caches: st.cache_data around the pure functions of a run's derived data.

Every cached function takes `key` (run_key(run): path, epoch and save time) as its hashed identity and
the run itself as the unhashed `_run`, so a new epoch of a run is a new entry and nothing hashes a model.
"""
from __future__ import annotations

import gc
import hashlib

import numpy as np
import streamlit as st

from app import images, latent, plots
from app.common import EmbeddingsBusy, embedding_slot
from trainer.images import class_rgb, decode_uint8
from trainer.projections import cached_embedding
from trainer.runs import Run

CACHE_ENTRIES = 32
DECODE_CACHE_ENTRIES = 256
GIF_SIDE = 420
MAX_GIF_FRAMES = 60
UI_REVISION_CHARS = 16


def settle_heap(key: str) -> None:
    """Move the objects alive now out of the cyclic garbage collector's scans (gc.freeze), once per run epoch `key`.

    Streamlit runs a full collection after every script run (runner.postScriptGC), holding the GIL: with torch,
    plotly and a model loaded that is some 300,000 long-lived objects, 0.1-0.4 s in which the run's last messages
    wait to be sent (a slider release's scatter update among them). Frozen objects are still freed by reference
    counting; only cycles already unreachable now stay, so this runs after a run's data is loaded, not per rerun."""
    if key not in _SETTLED:
        _SETTLED.add(key)
        gc.freeze()


_SETTLED: set[str] = set()  # run keys whose loaded objects settle_heap has frozen


def run_key(run: Run) -> str:
    """Cache identity of one saved epoch of a run."""
    return f"{run.path.resolve()}|{run.epoch}|{run.manifest.get('saved_at')}"


@st.cache_data(max_entries=CACHE_ENTRIES, show_spinner=False)
def dim_stats(key: str, _run: Run) -> latent.DimStats:
    """Per-dimension KL (or code variance) and slider ranges from the atlas posterior at the latest snapshot."""
    atlas = _run.atlas
    return latent.dimension_stats(atlas.means[-1], None if atlas.logvars is None else atlas.logvars[-1])


@st.cache_resource(max_entries=CACHE_ENTRIES, show_spinner=False)
def fitted_gaussian(key: str, _run: Run) -> latent.FittedGaussian:
    """The Gaussian fitted to the atlas codes at the latest snapshot, factored once per run epoch (an autoencoder's
    samples and densities; Explore's come with dim_stats). One shared read-only object: no copy per rerun."""
    return latent.fit_gaussian(_run.atlas.means[-1])


@st.cache_data(max_entries=CACHE_ENTRIES, show_spinner=False)
def _projection(key: str, _run: Run, method: str, dims: tuple[int, int]) -> latent.Projection:
    means = _run.atlas.means[-1]
    embedding = None
    if method in latent.CACHED_PROJECTIONS and means.shape[1] > 2:
        with embedding_slot():  # EmbeddingsBusy (not cached) when a public app's slots are all taken
            embedding = cached_embedding(_run.path, _run.epoch, means, method, seed=_run.train_config.seed)
    return latent.make_projection(means, method, dims, embedding, latent_shape=_run.model_config.latent_shape)


def projection(key: str, run: Run, method: str, dims: tuple[int, int]) -> latent.Projection:
    """The scatter's projection of the latest snapshot; UMAP / t-SNE maps are also kept on disk in the run folder.

    At most MAX_CONCURRENT_EMBEDDINGS maps are computed at once; a public app that finds them all taken
    shows the PCA map with a note instead of queueing."""
    try:
        return _projection(key, run, method, dims)
    except EmbeddingsBusy as e:
        st.warning(f"Busy: {e}. Showing the PCA map instead; try again in a moment.")
        return _projection(key, run, "pca", dims)


@st.cache_data(max_entries=CACHE_ENTRIES, show_spinner=False)
def scatter_figure(key: str, method: str, dims: tuple[int, int], _projection: latent.Projection, _labels: np.ndarray,
                   class_names: tuple[str, ...]) -> str:
    """The Explore page's scatter of the atlas points on a map (WebGL, one trace per class) as Plotly JSON text, built
    once per run epoch and map: a slider release then sends this text unchanged and adds only its own marker.

    Its uirevision (a hash: no server path reaches the browser) is this run epoch and map, so pan and zoom persist
    across reruns and a new run or map starts from its own extent."""
    fig = plots.latent_scatter(_projection.xy, _labels, list(class_names), axis_titles=_projection.axis_titles, webgl=True)
    revision = hashlib.sha256(f"{key}|{method}|{dims}".encode()).hexdigest()[:UI_REVISION_CHARS]
    fig.update_layout(template=plots.PAGE_TEMPLATE, uirevision=revision, clickmode="event")
    return plots.figure_json(fig)


@st.cache_data(max_entries=CACHE_ENTRIES, show_spinner=False)
def replay(key: str, _run: Run, method: str, dims: tuple[int, int]) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Every snapshot on one map fitted to the last (PCA or raw dims) and one axis range holding every snapshot's
    points: ((E, N, 2), x, y)."""
    coords = latent.replay_coords(_run.atlas.means, method, dims)
    x_range, y_range = latent.data_range(coords)
    return coords, x_range, y_range


@st.cache_data(max_entries=CACHE_ENTRIES, show_spinner=False)
def replay_gif(key: str, _run: Run, method: str, dims: tuple[int, int]) -> bytes:
    """The replay as an animated GIF (at most MAX_GIF_FRAMES snapshots, evenly spread, the last always in)."""
    coords, x_range, y_range = replay(key, _run, method, dims)
    atlas = _run.atlas
    picks = np.unique(np.linspace(0, len(coords) - 1, min(len(coords), MAX_GIF_FRAMES)).round().astype(int))
    colors = class_rgb(max(len(_run.class_names), int(atlas.labels.max()) + 1))
    titles = latent.replay_axis_titles(method, dims, _run.model_config.latent_shape)
    last = int(atlas.epochs[-1])
    frames = [
        images.scatter_frame(coords[i], atlas.labels, colors, x_range, y_range, GIF_SIDE, f"{_run.name} · epoch {int(atlas.epochs[i])} of {last}",
                             class_names=_run.class_names, axis_titles=titles)
        for i in picks
    ]
    return images.animated_gif(frames)


@st.cache_data(max_entries=DECODE_CACHE_ENTRIES, show_spinner=False)
def decode(key: str, _run: Run, z: np.ndarray) -> np.ndarray:
    """Decoded latents (B, D) as uint8 images (B, C, H, W), one batch."""
    return decode_uint8(_run.model, z)


@st.cache_data(max_entries=CACHE_ENTRIES, show_spinner=False)
def reconstructions(key: str, _run: Run, indices: tuple[int, ...]) -> np.ndarray:
    """Reconstructions (through the posterior mean) of atlas images: uint8 (B, C, H, W)."""
    return decode_uint8(_run.model, _run.atlas.means[-1][list(indices)])


@st.cache_data(max_entries=CACHE_ENTRIES, show_spinner=False)
def encode_upload(key: str, _run: Run, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and std (D,) of one preprocessed upload x (C, H, W) uint8."""
    import torch

    posterior = _run.model.encode_batches(torch.from_numpy(np.ascontiguousarray(x[None])))
    return posterior.mean[0].numpy(), posterior.std[0].numpy()


@st.cache_data(max_entries=CACHE_ENTRIES, show_spinner=False)
def preprocess(data: bytes, image_size: int, channels: int, style: str) -> images.Upload | str:
    """An upload preprocessed for a run, or the one-line reason it cannot be used."""
    try:
        return images.preprocess_upload(data, image_size, channels, style)
    except images.UploadError as e:
        return str(e)
