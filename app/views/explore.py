"""Explore page: the latent scatter with sliders and the decoded digit on top, the other views in tabs.

A layout only: the computation is app.latent, app.images and app.plots (pure functions) behind the caches
of app.explore_cache; every session-state key comes from app.state. st.navigation in app/main.py runs
this file as the page script.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import streamlit as st

from app import bounds, images, latent, plots, spatial, state
from app import explore_cache as cache
from app.components.latent_sliders import SliderSpec, latent_sliders, reported_error, reported_ready, reported_z
from app.components.scatter_chart import clicked_index as scatter_clicked_index
from app.components.scatter_chart import scatter_chart
from app.components.sprite_scatter import clicked_index, sprite_scatter
from app.plots import Overlay
from app.sidebar import current_selection
from app.sprites import SpriteGrid, sprite_sheet
from trainer.evaluate import read_evaluation
from trainer.onnx_export import decoder_onnx
from trainer.projections import is_cached
from trainer.runs import Run

CLICK_MODES = ("slider origin", "interpolation end A", "interpolation end B")
SCATTER_MODES = ("points", "thumbnails")  # Plotly's WebGL markers, or every atlas image drawn at its point
SCATTER_MODE_KEY = "scatter_mode"  # page-wide: which of SCATTER_MODES the scatter draws
THUMBNAILS_KEY = "scatter_thumbnails"  # the thumbnail scatter component's value (one browser frame kept across runs)
SCATTER_KEY = "scatter_points"  # the points scatter component's value (one chart, one WebGL context, kept across runs)
SCATTER_CONFIG = {"scrollZoom": True, "displaylogo": False, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}
SLIDER_POINT = "slider point"  # the scatter's name of the slider point (a layout shape; bench.bench_browser finds it by name)
PROJECTION_LABELS = {"pca": "PCA", "umap": "UMAP", "tsne": "t-SNE", "raw": "two raw dimensions"}
GRID_PLANES = {"pca": "PCA plane of the codes", "raw": "two raw dimensions"}
REPLAY_MAPS = {"pca": "PCA (fitted on the last epoch)", "raw": "the scatter's two raw dims"}
END_SOURCES = ("atlas image", "upload")
UPLOAD_HOW = {
    "digit": "a dark digit on light paper works: it is inverted to white-on-black and centred by mass in a 20×20 box, like MNIST",
    "object": "it is made white-on-black and fitted to the frame, like Fashion-MNIST",
    "photo": "it is resized and centre-cropped like the run's images",
    "emoji": "it is put on white, padded to a square and resized like the emoji, in colour",
}
REPLAY_TICK_S = 0.6
DIGIT_SIDE = 224  # px of the decoded slider digit
THUMB_SIDE = 84
FRAME_SIDE = 84
GRID_SIDE = 560
SAMPLES_SIDE = 420
POSTERIOR_SAMPLE_COLS = 8  # at most this many decodes of one image's posterior per row
TRAVERSAL_IMAGE_SIDE = 56
TRAVERSAL_STEPS_WIDTH = 300  # px of the traversal's steps slider
UPLOAD_SIDE = 168
SLIDER_BOX_HEIGHT = 560
SLIDER_ROW_PX = 75  # height of one Streamlit slider with its label: SLIDER_BOX_HEIGHT // SLIDER_ROW_PX show without scrolling
SLIDER_STEP = 0.01
LIVE_RUN_KEY_CHARS = 16
GRAPH_CACHE_ENTRIES = 8  # decoder graphs kept in memory (about 1 MB each for the bundled runs)
RECON_PER_CLASS = 2
MAX_RECON_COLUMNS = 20
DEFAULT_GRID_N = 15
DEFAULT_TRAVERSAL_DIMS = 8
DEFAULT_FRAMES = 10


@dataclass(frozen=True)
class View:
    """One run as the page sees it: latest-snapshot posteriors and statistics."""

    run: Run
    rid: str  # the suffix of this run's session-state keys (state.key)
    cache_key: str  # cache identity of this epoch of the run (explore_cache.run_key)
    stats: latent.DimStats
    means: np.ndarray  # (N, D) posterior means of the atlas images
    stds: np.ndarray  # (N, D) posterior standard deviations (0 for an AE)
    labels: np.ndarray  # (N,)
    class_names: list[str]
    deterministic: bool  # an autoencoder

    @property
    def latent_dim(self) -> int:
        return self.means.shape[1]

    @property
    def setting(self) -> bounds.Setting:
        """What the run's numbers mean (kind, beta, reconstruction term): how the page words them."""
        return bounds.Setting.of_run(self.run)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """(C_z, h, w) for a spatial latent (the means are its flattened maps), else (D,)."""
        return tuple(self.run.model_config.latent_shape)

    def dim_name(self, d: int) -> str:
        """`z17`, or `c2 (3, 5)` (channel, row, column) in a spatial latent."""
        return latent.dim_name(d, self.latent_shape)

    def class_name(self, label: int) -> str:
        return plots.class_name(self.class_names, int(label))

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Latents (B, D) -> uint8 images (B, C, H, W), cached."""
        return cache.decode(self.cache_key, self.run, z)


def make_view(run: Run) -> View:
    key = cache.run_key(run)
    posterior = run.atlas.posterior(-1)
    means = run.atlas.means[-1]
    stds = np.zeros_like(means) if posterior.deterministic else posterior.std.numpy()
    return View(run, state.run_id(run), key, cache.dim_stats(key, run), means, stds, run.atlas.labels, run.class_names, posterior.deterministic)


def show_image(image, caption=None, **kwargs) -> None:
    """st.image with lossless PNG (JPEG would smear the pixels of small digits)."""
    st.image(image, caption=caption, output_format="PNG", **kwargs)


def show_atlas_image(view: View, idx: int, what: str) -> None:
    """A thumbnail of atlas image `idx` captioned `<what>: image #idx, class c`."""
    show_image(images.thumbnail(view.run.atlas.images[idx], THUMB_SIDE), caption=f"{what}: image #{idx}, class {view.class_name(view.labels[idx])}",
               width=THUMB_SIDE)


# ---------------------------------------------------------------- the slider point

def slider_bounds(view: View) -> tuple[np.ndarray, np.ndarray]:
    """Slider ranges rounded outwards to half units, so a new epoch rarely changes a slider's identity."""
    return np.floor(view.stats.lo * 2.0) / 2.0, np.ceil(view.stats.hi * 2.0) / 2.0


def origin(view: View) -> np.ndarray:
    """Values of the dims without a slider (and the sliders' starting values): (D,).

    A VAE starts at the prior's mean (zero); an autoencoder, which has no prior, at the mean of its codes; a VAE trained
    with 0 < beta < 1 at the code of atlas image #0, since its codes may sit far from N(0, I) and zero decode to no image."""
    k = state.key(state.ORIGIN, view.rid)
    z = st.session_state.get(k)
    if not isinstance(z, np.ndarray) or z.shape != (view.latent_dim,):
        if view.deterministic:
            z = np.round(view.stats.mean, 2)
        elif starts_from_an_image(view):
            z = np.round(view.means[0], 2).astype(np.float32)
        else:
            z = np.zeros(view.latent_dim, np.float32)
        st.session_state[k] = z
    return z


def starts_from_an_image(view: View) -> bool:
    """Whether the sliders start at an image's code rather than at zero (a low-beta VAE: bounds.Setting.low_beta)."""
    return view.setting.low_beta


def current_z(view: View) -> np.ndarray:
    """The point the sliders describe: (D,)."""
    lo, hi = slider_bounds(view)
    z = origin(view).copy()
    for d in range(view.latent_dim):
        value = st.session_state.get(state.slider_key(d, view.rid))
        if isinstance(value, (int, float)):
            z[d] = value
    return np.clip(z, lo, hi).astype(np.float32)


def store_point(view: View, z: np.ndarray) -> None:
    """Record z (D,) as the slider point: the origin and every slider's value (the live sliders keep their position)."""
    lo, hi = slider_bounds(view)
    z = np.round(np.clip(np.asarray(z, np.float32), lo, hi), 2)
    st.session_state[state.key(state.ORIGIN, view.rid)] = z.astype(np.float32)
    for d in range(view.latent_dim):
        st.session_state[state.slider_key(d, view.rid)] = float(z[d])


def set_point(view: View, z: np.ndarray) -> None:
    """Move every slider to z (D,) (call from a callback or before the sliders are drawn)."""
    store_point(view, z)
    k = state.key(state.LIVE_TOKEN, view.rid)
    st.session_state[k] = int(st.session_state.get(k, 0)) + 1  # the live sliders jump to the new point


def selected_index(view: View) -> int | None:
    """The atlas index of the last clicked scatter point, if any."""
    idx = st.session_state.get(state.key(state.SELECTED, view.rid))
    return idx if isinstance(idx, int) and 0 <= idx < len(view.means) else None


def _start_random(view: View) -> None:
    seed = int(st.session_state.get(state.key(state.START_SEED, view.rid), 0))
    set_point(view, latent.random_start(view.stats, view.deterministic, seed))


def _start_selected(view: View) -> None:
    idx = selected_index(view)
    set_point(view, view.means[idx if idx is not None else 0])


def _on_scatter_select(view: View) -> None:
    """A click on the points scatter."""
    idx = scatter_clicked_index(st.session_state.get(SCATTER_KEY), len(view.means))
    if idx is not None:
        select_atlas_image(view, idx)


def _on_thumbnail_click(view: View) -> None:
    """A click on the thumbnail scatter."""
    idx = clicked_index(st.session_state.get(THUMBNAILS_KEY), len(view.means))
    if idx is not None:
        select_atlas_image(view, idx)


def select_atlas_image(view: View, idx: int) -> None:
    """A click on either scatter: remember the image, then use it as the slider origin or an interpolation end."""
    st.session_state[state.key(state.SELECTED, view.rid)] = idx
    mode = st.session_state.get(state.CLICK_KEY, CLICK_MODES[0])
    if mode == CLICK_MODES[0]:
        set_point(view, view.means[idx])
        return
    pick = state.end_pick("A" if mode == CLICK_MODES[1] else "B")
    st.session_state[state.pick_key(pick, state.PICK_SOURCE, view.rid)] = END_SOURCES[0]
    st.session_state[state.pick_key(pick, state.PICK_CLASS, view.rid)] = int(view.labels[idx])
    st.session_state[state.pick_key(pick, state.PICK_INDEX, view.rid)] = idx
    st.session_state[state.TAB_KEY] = state.TAB_INTERPOLATION
    state.request_full_rerun()


# ---------------------------------------------------------------- the top block: scatter, digit, sliders

def scatter_projection(view: View) -> latent.Projection:
    """The scatter's projection as chosen by the projection widgets (2-D latents are shown directly)."""
    method = st.session_state.get(state.PROJECTION_KEY, "pca") if view.latent_dim > 2 else "raw"
    dims = (0, 1) if view.latent_dim > 1 else (0, 0)
    if method == "raw" and view.latent_dim > 2:
        order = view.stats.order
        dims = (int(st.session_state.get(state.key(state.PROJ_X, view.rid), order[0])),
                int(st.session_state.get(state.key(state.PROJ_Y, view.rid), order[1])))
    if method not in latent.CACHED_PROJECTIONS or is_cached(view.run.path, method, view.run.epoch):
        return cache.projection(view.cache_key, view.run, method, dims)  # the trainer computes the maps when training ends
    with st.spinner(f"Computing the {PROJECTION_LABELS[method]} map of {plots.number(len(view.means))} points: this run was trained "
                    "without it (once; then kept in the run folder)…"):
        return cache.projection(view.cache_key, view.run, method, dims)


def scatter_is_linear(view: View) -> bool:
    """Whether the scatter's map is linear (PCA or raw dims), so that a region such as the grid's extent keeps its shape there."""
    return view.latent_dim <= 2 or st.session_state.get(state.PROJECTION_KEY, "pca") not in latent.CACHED_PROJECTIONS


def _projection_controls(view: View) -> None:
    if view.latent_dim <= 2:
        st.caption(f"{view.latent_dim}-D latents, shown directly (posterior means of {len(view.means):,} test images).")
        return
    cols = st.columns([2, 1, 1])
    cols[0].selectbox("Map", list(PROJECTION_LABELS), format_func=PROJECTION_LABELS.get, key=state.PROJECTION_KEY,
                      on_change=state.request_full_rerun,  # the tabs below read the map too (the grid's extent, the replay's dims)
                      help="How the latent means are laid out in 2-D. UMAP and t-SNE are computed once per epoch and kept in the run folder.")
    if st.session_state.get(state.PROJECTION_KEY) == "raw":
        dims = [int(d) for d in view.stats.order]
        for col, name, default in ((cols[1], state.PROJ_X, dims[0]), (cols[2], state.PROJ_Y, dims[1])):
            k = state.key(name, view.rid)
            state.keep_choice(k, dims, default)
            col.selectbox(name[-1], dims, format_func=view.dim_name, key=k)


def density_caption(view: View, z: np.ndarray) -> str:
    density = latent.log_density(z, view.stats, view.deterministic)[0]
    where = "fitted Gaussian" if view.deterministic else "N(0, I)"
    return f"log density under {where}: {density:.1f} nats"


def _digit_column(view: View, z: np.ndarray) -> None:
    """The decoded slider point (on the server), the start buttons and the clicked image."""
    x_hat = images.decode_uint8(view.run.model, z[None])[0]  # (C, H, W)
    show_image(images.thumbnail(x_hat, DIGIT_SIDE), caption=f"Decoded z · {density_caption(view, z)}", width="stretch")
    _start_controls(view)


def _start_controls(view: View) -> None:
    """The start buttons, the seed of the random start and the clicked image."""
    if starts_from_an_image(view):
        st.caption(f"The sliders started at image #0's code: at β = {view.run.train_config.beta:g} < 1 zero may decode to no image "
                   "(the Sampling tab says why).")
    st.caption("Move the sliders from")
    rid = view.rid
    st.button("zero", key=state.key("start_zero", rid), on_click=set_point, args=(view, np.zeros(view.latent_dim)), width="stretch")
    st.button("the clicked image", key=state.key("start_selected", rid), on_click=_start_selected, args=(view,), width="stretch",
              help="The posterior mean of the image last clicked on the scatter (image #0 until you click one).")
    st.button("a random sample", key=state.key("start_random", rid), on_click=_start_random, args=(view,), width="stretch",
              help="A sample of the Gaussian fitted to the codes (an autoencoder has no prior)" if view.deterministic else "A sample of the prior N(0, I)")
    st.number_input("Seed of the random sample", 0, latent.MAX_SEED, 0, key=state.key(state.START_SEED, rid))
    idx = selected_index(view)
    if idx is not None:
        show_atlas_image(view, idx, "Clicked")
    else:
        st.caption("Click a point on the scatter to see its image here.")


def score_unit(view: View) -> str:
    """The unit of a dimension's score: nats of mean KL (a VAE), or "var", the variance of an AE's codes."""
    return "nats" if view.stats.score_name == "KL" else "var"


def slider_label(view: View, d: int) -> str:
    unit = score_unit(view)
    return f"{view.dim_name(d)} · {float(view.stats.scores[d]):.2f} {unit}" + (" · inactive" if view.stats.inactive[d] else "")


def slider_help(view: View) -> str:
    what = "Mean KL of this dimension over the atlas images" if view.stats.score_name == "KL" else "Variance of this code over the atlas images"
    return what + f"; below {latent.INACTIVE_THRESHOLD} it is inactive (the decoder ignores it). Range: mean ± {latent.SLIDER_STDS:g} std of the codes."


def slider_heading(view: View, dims: list[int]) -> str:
    """What the slider box holds: how many of the run's dimensions have a slider, and in which order."""
    shown = f"all {view.latent_dim}" if len(dims) == view.latent_dim else f"{len(dims)} of the {view.latent_dim}"
    return f"Sliders for {shown} dimensions, highest {view.stats.score_name} first"


def _slider_column(view: View, dims: list[int]) -> None:
    """One slider per dim in `dims`, labelled with its KL (or code variance), and the picker of more dims."""
    lo, hi = slider_bounds(view)
    st.caption(slider_heading(view, dims) + (" (scroll the box for the rest)" if len(dims) > SLIDER_BOX_HEIGHT // SLIDER_ROW_PX else ""))
    with st.container(height=SLIDER_BOX_HEIGHT, border=False):
        for d in dims:
            st.slider(slider_label(view, d), float(lo[d]), float(hi[d]), step=SLIDER_STEP, format="%.2f",
                      key=state.slider_key(d, view.rid), help=slider_help(view))
    _more_sliders(view)


def _more_sliders(view: View) -> None:
    """The picker of sliders beyond the MAX_SLIDERS dims with the highest score."""
    if view.latent_dim > latent.MAX_SLIDERS:
        others = [int(d) for d in view.stats.order[latent.MAX_SLIDERS:]]
        st.multiselect(f"More sliders (showing the {latent.MAX_SLIDERS} dims with the highest {view.stats.score_name})", others,
                       format_func=lambda d: f"{view.dim_name(d)} ({view.stats.scores[d]:.3f} {score_unit(view)})", key=state.key(state.EXTRA_DIMS, view.rid))


@st.cache_data(max_entries=cache.CACHE_ENTRIES, show_spinner=False)
def atlas_sprites(key: str, _run: Run) -> tuple[bytes, SpriteGrid]:
    """The run's atlas images as one sprite sheet PNG and its grid (app.sprites), for the thumbnail scatter."""
    return sprite_sheet(_run.atlas.images)


def _thumbnail_scatter(view: View, projection: latent.Projection) -> None:
    """Every atlas image drawn at its point (WebGL, in the browser); hover shows it large, a click picks it."""
    png, grid = atlas_sprites(view.cache_key, view.run)
    sprite_scatter(projection.xy, view.labels, png, grid, view.class_names, key=THUMBNAILS_KEY, selected=selected_index(view),
                   height=plots.SCATTER_HEIGHT, on_click=functools.partial(_on_thumbnail_click, view))
    st.caption(f"{len(view.means):,} atlas images at their points ({', '.join(projection.axis_titles)}). "
               "The tabs' overlays and the slider point are drawn on the points scatter.")


def _points_scatter(view: View, projection: latent.Projection, z: np.ndarray, overlays: list[Overlay]) -> None:
    """The Plotly scatter with the tabs' overlays, the clicked image and the slider point.

    Drawn by app.components.scatter_chart, which keeps the chart in the browser: the points are one cached JSON text
    and the slider point a layout shape, so a slider release redraws the cross alone (st.plotly_chart would mount
    a new WebGL chart for every move)."""
    base = cache.scatter_figure(view.cache_key, projection.method, projection.dims, projection, view.labels, tuple(view.class_names))
    traces = plots.overlay_traces(overlays, projection.transform, linear=projection.method not in latent.CACHED_PROJECTIONS, webgl=True)
    idx = selected_index(view)
    if idx is not None:
        traces.append(plots.marker_trace(projection.xy[idx], "clicked image", symbol="circle-open", color=plots.OVERLAY_COLOR, size=14, webgl=True))
    scatter_chart(base, traces, plots.cross_shapes(projection.transform(z), SLIDER_POINT), key=SCATTER_KEY, count=len(view.means),
                  height=plots.SCATTER_HEIGHT, config=SCATTER_CONFIG, on_click=functools.partial(_on_scatter_select, view))


def _scatter_column(view: View, z: np.ndarray, overlays: list[Overlay]) -> None:
    """The scatter as points (with the tabs' overlays and the slider point) or as thumbnails; clicking it picks an image."""
    _projection_controls(view)
    projection = scatter_projection(view)
    mode = st.radio("Draw the atlas as", SCATTER_MODES, key=SCATTER_MODE_KEY, horizontal=True,
                    help="points: one marker per atlas image, with the tabs' overlays; thumbnails: the images themselves (zoom in to read them)")
    if mode == SCATTER_MODES[1]:
        _thumbnail_scatter(view, projection)
    else:
        _points_scatter(view, projection, z, overlays)
    st.radio("A click on the scatter sets the", CLICK_MODES, key=state.CLICK_KEY, horizontal=True)


# ---------------------------------------------------------------- the live sliders: decoded in the browser

@st.cache_resource(max_entries=GRAPH_CACHE_ENTRIES, show_spinner=False)
def decoder_graph(key: str, _run: Run) -> bytes | None:
    """The run's decoder as checked ONNX bytes (trainer.onnx_export, kept in the run folder), or None: decode on the server."""
    return decoder_onnx(_run)


def live_run_key(view: View) -> str:
    """The browser's name for this epoch of the run (its decoder session): a hash of the cache key, no server paths."""
    return hashlib.sha256(view.cache_key.encode()).hexdigest()[:LIVE_RUN_KEY_CHARS]


def live_graph(view: View) -> bytes | None:
    """The decoder graph for the browser, or None when this run decodes on the server (not exportable, or the browser failed)."""
    if live_run_key(view) in (st.session_state.get(state.LIVE_FAILED_KEY) or {}):
        return None
    return decoder_graph(view.cache_key, view.run)


def _on_live_report(view: View, run_key: str) -> None:
    """A report from the browser: a released z becomes the slider point, {ready} turns the live sliders on, an error falls back."""
    value = st.session_state.get(state.LIVE_SLIDERS_KEY)
    error = reported_error(value, run_key)
    if error is not None:
        st.session_state[state.LIVE_FAILED_KEY] = {**(st.session_state.get(state.LIVE_FAILED_KEY) or {}), run_key: error}
        return
    if reported_ready(value, run_key):
        st.session_state[state.LIVE_OK_KEY] = True
    z = reported_z(value, run_key, view.latent_dim)
    if z is not None:
        store_point(view, z)


def _live_sliders(view: View, dims: list[int], z: np.ndarray, graph: bytes, probe: bool) -> None:
    """The component: sliders for `dims` and the image, decoded in the browser; as a probe, unseen, it only loads the decoder."""
    lo, hi = slider_bounds(view)
    run_key = live_run_key(view)
    help_text = slider_help(view)
    specs = [SliderSpec(d, slider_label(view, d), float(lo[d]), float(hi[d]), SLIDER_STEP, bool(view.stats.inactive[d]), help_text) for d in dims]
    token = "probe" if probe else str(st.session_state.get(state.key(state.LIVE_TOKEN, view.rid), 0))
    latent_sliders(
        graph, run_key, specs, z, z_token=token, image_shape=view.run.model_config.image_shape, key=state.LIVE_SLIDERS_KEY,
        on_change=functools.partial(_on_live_report, view, run_key), hidden=probe, side=DIGIT_SIDE, max_height=SLIDER_BOX_HEIGHT,
        caption="" if probe else f"Decoded z, in your browser while you drag · at release, {density_caption(view, z)}",
        heading="" if probe else slider_heading(view, dims),
    )


@st.fragment
def explorer(view: View, overlays: list[Overlay]) -> None:
    """Scatter, decoded digit and sliders: a fragment, so moving a slider reruns only this block.

    Once the browser has shown it can decode (a run's decoder exported to ONNX and loaded there), the digit and the
    sliders are the live component, decoding while a thumb is dragged; until then, and for runs it cannot decode,
    they are Streamlit sliders decoded on the server, with the component loading the decoder unseen above them.
    """
    state.rerun_if_requested()
    cache.settle_heap(view.cache_key)  # this run's model and data, loaded by now: out of the post-run collection's scans
    c_chart, c_right = st.columns([5, 5], gap="medium")
    dims = latent.slider_dims(view.stats, st.session_state.get(state.key(state.EXTRA_DIMS, view.rid)) or [])
    lo, hi = slider_bounds(view)
    start = origin(view)
    for d in dims:  # every slider has a valid value before it is drawn
        k = state.slider_key(d, view.rid)
        st.session_state[k] = float(np.clip(st.session_state.get(k, float(start[d])), lo[d], hi[d]))
    z = current_z(view)
    graph = live_graph(view)
    live = graph is not None and bool(st.session_state.get(state.LIVE_OK_KEY))
    with c_right:
        if graph is not None:
            _live_sliders(view, dims, z, graph, probe=not live)
        c_digit, c_sliders = st.columns([2, 3], gap="medium")
        if live:
            with c_digit:
                _start_controls(view)
            with c_sliders:
                _more_sliders(view)
        else:
            with c_digit:
                _digit_column(view, z)
            with c_sliders:
                _slider_column(view, dims)
    with c_chart:
        _scatter_column(view, z, overlays)


# ---------------------------------------------------------------- choosing images

def pick_atlas_image(view: View, pick: str, default_rank: int = 0) -> int:
    """Class and instance pickers over the atlas; returns the chosen atlas index."""
    classes = [int(c) for c in np.unique(view.labels)]
    class_key, index_key = state.pick_key(pick, state.PICK_CLASS, view.rid), state.pick_key(pick, state.PICK_INDEX, view.rid)
    state.keep_choice(class_key, classes, classes[min(default_rank, len(classes) - 1)])
    c1, c2 = st.columns(2)
    cls = c1.selectbox("Class", classes, format_func=view.class_name, key=class_key)
    options = [int(i) for i in np.nonzero(view.labels == cls)[0]]
    state.keep_choice(index_key, options, options[0])
    return int(c2.selectbox("Instance", options, format_func=lambda i: f"image #{i}", key=index_key))


def read_upload(view: View, label: str, key: str) -> images.Upload | None:
    """A file uploader preprocessed for this run; shows one error line and returns None when unusable."""
    file = st.file_uploader(label, type=list(images.UPLOAD_TYPES), key=key, max_upload_size=images.MAX_UPLOAD_BYTES // 2**20)
    if file is None:
        return None
    cfg = view.run.model_config
    result = cache.preprocess(file.getvalue(), cfg.image_size, cfg.in_channels, images.upload_style(view.run.train_config.dataset))
    if isinstance(result, str):
        st.error(f"{file.name}: {result}")
        return None
    return result


def pick_end(view: View, end: str) -> tuple[np.ndarray, np.ndarray] | None:
    """One interpolation end: (z (D,), image (C, H, W)) from the atlas or an upload, or None."""
    pick = state.end_pick(end)
    source = st.radio(f"End {end}", END_SOURCES, key=state.pick_key(pick, state.PICK_SOURCE, view.rid), horizontal=True)
    if source == END_SOURCES[0]:
        idx = pick_atlas_image(view, pick, default_rank=0 if end == "A" else 1)
        show_atlas_image(view, idx, end)
        return view.means[idx], view.run.atlas.images[idx]
    upload = read_upload(view, f"Image for end {end}", state.pick_key(pick, state.PICK_UPLOAD, view.rid))
    if upload is None:
        st.caption("Upload an image to use it as this end.")
        return None
    mean, _ = cache.encode_upload(view.cache_key, view.run, upload.x)
    show_image(images.thumbnail(upload.x, THUMB_SIDE), caption=f"{end}: the upload, preprocessed", width=THUMB_SIDE)
    return mean, upload.x


# ---------------------------------------------------------------- tabs (each returns what it draws on the scatter)

def refresh_note(what: str) -> None:
    """The tabs run with the page, not with the slider fragment: say so and offer a refresh."""
    st.caption(f"{what} the slider point of the last page update; after moving sliders, refresh.")
    st.button("↻ Use the slider point", key=f"refresh_{what.split()[0].lower()}")


def _grid_options(view: View) -> tuple[int, str, tuple[int, int]]:
    """The grid's widgets: (N, plane "pca" or "raw", the raw dims)."""
    n = st.slider("Grid size N", *latent.GRID_SIZE_RANGE, value=DEFAULT_GRID_N, key="grid_n")
    plane = st.radio("Plane", list(GRID_PLANES), format_func=GRID_PLANES.get, key="grid_plane") if view.latent_dim > 2 else "raw"
    dims = (0, 1)
    if plane == "raw" and view.latent_dim > 2:
        order = [int(d) for d in view.stats.order]
        picked = []
        for name, label, default in ((state.GRID_X, "Horizontal", order[0]), (state.GRID_Y, "Vertical", order[1])):
            k = state.key(name, view.rid)
            state.keep_choice(k, order, default)
            picked.append(int(st.selectbox(label, order, format_func=view.dim_name, key=k)))
        dims = (picked[0], picked[1])
    lo_q, hi_q = latent.GRID_QUANTILES
    spread = "the codes' mean ± std" if view.deterministic or plane == "pca" else "the prior N(0, 1)"
    extent = ("the dashed outline on the scatter is the grid's extent" if scatter_is_linear(view)
              else "its extent is drawn on the PCA or raw-dimension scatter, not on a UMAP / t-SNE map, which bends the plane")
    st.caption(f"Each axis spans the {lo_q:.0%}–{hi_q:.0%} Gaussian quantiles of {spread}; {extent}.")
    if view.latent_dim > 2:
        refresh_note("Other dimensions are held at")
    return n, plane, dims


def grid_tab(view: View) -> list[Overlay]:
    if view.latent_dim < 2:
        st.info("A 1-D latent has no plane to grid: see the Traversal tab.")
        return []
    c_opts, c_grid = st.columns([1, 3])
    with c_opts:
        n, plane, dims = _grid_options(view)
    pca = cache.projection(view.cache_key, view.run, "pca", (0, 1)).pca if plane == "pca" else None  # the scatter's PCA, fitted once
    grid = latent.manifold_grid(current_z(view), view.means, view.stats, view.deterministic, plane, dims, n, pca)
    tiles = images.tile(view.decode(grid.z), n, pad=0)
    with c_grid:
        show_image(images.enlarge(tiles, GRID_SIDE), caption=f"{n}×{n} decodes of the manifold grid (decoded in one batch)")
    return [Overlay("outline", "grid extent", grid.outline)]


def traversal_tab(view: View) -> list[Overlay]:
    order = [int(d) for d in view.stats.order]
    k = state.key(state.TRAV_DIMS, view.rid)
    if k not in st.session_state:
        st.session_state[k] = order[: min(DEFAULT_TRAVERSAL_DIMS, len(order))]
    unit = "nats" if view.stats.score_name == "KL" else "var"
    # The picker spans the page and names dims briefly: its chips stay on one line, and longer labels were cut off.
    dims = st.multiselect(f"Dimensions to sweep (in order of {view.stats.score_name}, highest first)", order, format_func=view.dim_name, key=k)
    steps = st.slider("Steps", 5, 15, 11, key="trav_steps", width=TRAVERSAL_STEPS_WIDTH)
    st.caption("Each row sweeps one dimension across its slider range; the others stay at the slider point. "
               f"Inactive dimensions (below {latent.INACTIVE_THRESHOLD} {unit}) barely change the image.")
    if view.latent_dim > 1:
        refresh_note("Rows start from")
    if not dims:
        return []
    lo, hi = slider_bounds(view)
    decoded = view.decode(latent.traversal_latents(current_z(view), dims, latent.traversal_values(lo, hi, steps)))  # (len(dims) * steps, C, H, W)
    factor = images.display_scale(view.run.model_config.image_size, TRAVERSAL_IMAGE_SIDE)
    for r, d in enumerate(dims):
        row = images.tile(decoded[r * steps : (r + 1) * steps], steps)
        inactive = " · inactive" if view.stats.inactive[d] else ""
        show_image(images.upscale(row, factor), caption=f"{view.dim_name(d)}: {lo[d]:.1f} → {hi[d]:.1f} · {view.stats.scores[d]:.2f} {unit}{inactive}")
    what = "Mean KL per dimension over the atlas images" if view.stats.score_name == "KL" else "Variance of each code over the atlas images"
    st.plotly_chart(plots.bar_chart(view.stats.scores[order], [view.dim_name(d) for d in order], title=what, y_title=unit, threshold=latent.INACTIVE_THRESHOLD,
                                    threshold_label=f"inactive below {latent.INACTIVE_THRESHOLD:g} {unit}"), key="trav_scores")
    return []


def interpolation_tab(view: View) -> list[Overlay]:
    c_a, c_b, c_opts = st.columns(3)
    with c_a:
        a = pick_end(view, "A")
    with c_b:
        b = pick_end(view, "B")
    with c_opts:
        method = st.radio("Path", latent.INTERPOLATIONS, key="interp_method", horizontal=True,
                          help="spherical: the direction turns along a great circle and the norm changes linearly, "
                          "staying where a Gaussian prior puts its mass")
        steps = st.slider("Frames", *latent.INTERPOLATION_STEPS, value=DEFAULT_FRAMES, key="interp_steps")
        st.caption("Click the scatter with “interpolation end A/B” selected to pick an end there.")
    if a is None or b is None:
        st.info("Choose both ends to see the interpolation.")
        return []
    path = latent.interpolate(a[0], b[0], steps, method)  # (steps, D)
    frames = view.decode(path)
    density = latent.log_density(path, view.stats, view.deterministic)
    t = np.linspace(0.0, 1.0, steps)
    show_image([images.thumbnail(f, FRAME_SIDE) for f in frames], caption=[f"t={ti:.2f} · {p:.0f}" for ti, p in zip(t, density)], width=FRAME_SIDE)
    noun = "digit" if view.run.train_config.dataset == "mnist" else "training image"
    st.caption(latent.interpolation_caption(density, method, view.deterministic, noun))
    st.plotly_chart(plots.line_chart(density, x=t, x_title="t (A → B)", y_title="log density (nats)", levels=[(density[0], "A"), (density[-1], "B")]),
                    key="interp_density")
    return [Overlay("path", f"{method} path A → B", path)]


def _prior_samples(view: View) -> int:
    """Samples of the prior (or an AE's fitted Gaussian) with their widgets; returns the chosen seed."""
    st.markdown("**Samples from the prior**")
    if view.deterministic:
        st.info(latent.AE_SAMPLES_NOTE)
    elif view.setting.beta_zero:
        st.warning(bounds.BETA_ZERO_SAMPLES_NOTE)
    elif view.setting.low_beta:
        kl = view.run.history[-1].get("test_kl") if view.run.history else None
        st.info(bounds.low_beta_samples_note(view.run.train_config.beta, kl if isinstance(kl, (int, float)) else None))
    o1, o2, o3 = st.columns(3)
    temperature = o1.slider("Temperature T", 0.1, 2.0, 1.0, 0.1, key="sample_T")
    seed = int(o2.number_input("Seed", 0, latent.MAX_SEED, 0, key="sample_seed"))
    side = o3.slider("Per side", 3, 10, 6, key="sample_side")
    z = latent.code_samples(view.stats, view.deterministic, side * side, temperature, seed)
    what = "z ~ N(μ, T²Σ) fitted to the codes" if view.deterministic else "z ~ N(0, T²I)"
    grid = images.tile(view.decode(z), side)
    show_image(images.enlarge(grid, SAMPLES_SIDE), caption=f"{side * side} samples of {what}, T={temperature:g}, seed {seed}")
    return seed


def _posterior_samples(view: View, seed: int) -> np.ndarray:
    """Samples of one chosen image's posterior with their widgets; returns the samples (n, D)."""
    st.markdown("**Samples of one image's posterior**")
    idx = pick_atlas_image(view, state.POSTERIOR_PICK)
    n = st.slider("Samples", 4, 32, 12, key="post_n")
    if view.deterministic:
        st.info("An autoencoder's posterior is a single point: every sample is its code, so all decodes are the reconstruction.")
    z = latent.posterior_samples(view.means[idx], view.stds[idx], n, seed)
    decoded = view.decode(np.concatenate([view.means[idx][None], z]))
    show_image([images.thumbnail(view.run.atlas.images[idx], THUMB_SIDE), images.thumbnail(decoded[0], THUMB_SIDE)],
               caption=[f"image #{idx}", "decode of μ"], width=THUMB_SIDE)  # short: captions wrap at the thumbnail's width
    strip = images.tile(decoded[1:], images.balanced_cols(n, POSTERIOR_SAMPLE_COLS))  # full rows: no empty cells beside colour images
    show_image(images.upscale(strip, 2), caption=f"{n} decodes of z = mean + std · ε (seed {seed})")
    return z


def sampling_tab(view: View) -> list[Overlay]:
    c_prior, c_post = st.columns(2)
    with c_prior:
        seed = _prior_samples(view)
    with c_post:
        z = _posterior_samples(view, seed)
    return [Overlay("marker", "posterior samples", z, {"symbol": "circle", "size": 7})]


@st.cache_data(max_entries=cache.CACHE_ENTRIES, show_spinner=False)
def atlas_scores(key: str, _run: Run) -> latent.ImageScores:
    """Reconstruction error and negative ELBO of every atlas (test) image: the reference an upload is placed in (once per run epoch)."""
    return latent.image_scores(_run.model, _run.atlas.images, _run.train_config.recon_loss)


def upload_against_test_set(view: View, x: np.ndarray) -> None:
    """An upload's reconstruction error and negative ELBO among the test images', flagged when beyond OOD_PERCENTILE of them."""
    setting = view.setting
    with st.spinner(f"Scoring the {len(view.labels):,} test images once for this run…"):
        reference = atlas_scores(view.cache_key, view.run)
    scored = latent.binarize_like_test_set(x[None]) if setting.binarized else x[None]  # (1, C, H, W), as the atlas was stored
    line, flagged = latent.ood_report(latent.image_scores(view.run.model, scored, setting.recon_loss), reference, setting.unit)
    if flagged:
        st.warning(f"Out of distribution: {line}. The model was not trained on images like this one (think of a flower photo "
                   f"fed to an MNIST model), so its reconstruction and latent point say little about it.")
    else:
        st.caption(f"Like the test images: {line}.")


def reconstruction_tab(view: View) -> list[Overlay]:
    labels = view.labels
    picks = [int(i) for c in np.unique(labels) for i in np.nonzero(labels == c)[0][:RECON_PER_CLASS]][:MAX_RECON_COLUMNS]
    x_hat = cache.reconstructions(view.cache_key, view.run, tuple(picks))
    both = images.tile(np.concatenate([view.run.atlas.images[picks], x_hat]), len(picks), pad=2)
    show_image(images.upscale(both, 2), caption="Top: test images; bottom: their reconstructions (posterior mean → decoder)")
    st.divider()
    upload = read_upload(view, "Upload an image to reconstruct (PNG, JPEG, …)", state.key(state.RECON_UPLOAD, view.rid))
    if upload is None:
        how = UPLOAD_HOW[images.upload_style(view.run.train_config.dataset)]
        st.caption(f"Up to {images.MAX_UPLOAD_BYTES // 2**20} MB and {images.MAX_UPLOAD_PIXELS // 10**6} megapixels; {how}.")
        return []
    mean, _ = cache.encode_upload(view.cache_key, view.run, upload.x)
    recon = view.decode(mean[None])[0]
    show_image([upload.preview, images.thumbnail(upload.x, UPLOAD_SIDE), images.thumbnail(recon, UPLOAD_SIDE)],
               caption=["input", "preprocessed (what the model sees)", "reconstruction"], width=UPLOAD_SIDE)
    st.caption("Its posterior mean is the ◆ marked “upload” on the scatter.")
    upload_against_test_set(view, upload.x)
    return [Overlay("marker", "upload", mean[None], {"symbol": "diamond", "size": 14})]


def _toggle_play(view: View, snapshots: int) -> None:
    playing = not st.session_state.get(state.PLAY_KEY, False)
    st.session_state[state.PLAY_KEY] = playing
    snap_key = state.key(state.REPLAY_SNAPSHOT, view.rid)
    if playing and st.session_state.get(snap_key) == snapshots - 1:
        st.session_state[snap_key] = 0
    state.request_full_rerun()  # run_every of the player changes: the whole page must rerun


def _replay_map(view: View) -> tuple[str, tuple[int, int]]:
    """The replay's map, one for every epoch: (method "pca" or "raw", the raw dims)."""
    if view.latent_dim <= 2:
        return "raw", (0, 1) if view.latent_dim > 1 else (0, 0)
    c1, c2 = st.columns([1, 3])
    method = c1.radio("Map", list(REPLAY_MAPS), format_func=REPLAY_MAPS.get, key="replay_map")
    c2.caption("One map for every epoch, with fixed axes, so the points move as training shapes the latent space. "
               "UMAP / t-SNE would lay out each epoch anew, so the replay uses PCA or raw dimensions.")
    if method == "pca":
        return method, (0, 1)
    if st.session_state.get(state.PROJECTION_KEY) == "raw":
        return method, scatter_projection(view).dims
    return method, (int(view.stats.order[0]), int(view.stats.order[1]))


def _replay_player(view: View, method: str, dims: tuple[int, int]) -> None:
    """The epoch slider, play button and the scatter of the chosen snapshot (run as a fragment that ticks while playing)."""
    state.rerun_if_requested()
    coords, x_range, y_range = cache.replay(view.cache_key, view.run, method, dims)
    epochs = [int(e) for e in view.run.atlas.epochs]
    snap_key = state.key(state.REPLAY_SNAPSHOT, view.rid)
    playing = bool(st.session_state.get(state.PLAY_KEY, False))
    if playing:
        nxt = st.session_state[snap_key] + 1
        if nxt >= len(epochs):
            st.session_state[state.PLAY_KEY] = False
            st.rerun()
        st.session_state[snap_key] = nxt
    c_play, c_slider = st.columns([1, 8])
    c_play.button("⏸ Pause" if playing else "▶ Play", key="replay_play", on_click=_toggle_play, args=(view, len(epochs)))
    s = c_slider.select_slider("Epoch", options=list(range(len(epochs))), format_func=lambda i: f"epoch {epochs[i]}", key=snap_key)
    titles = latent.replay_axis_titles(method, dims, view.latent_shape)
    fig = plots.latent_scatter(coords[s], view.run.atlas.labels, view.class_names, axis_titles=titles, x_range=x_range, y_range=y_range,
                               title=f"epoch {epochs[s]} of {epochs[-1]}")
    st.plotly_chart(fig, key="replay_chart", config={"displaylogo": False})


def replay_tab(view: View) -> list[Overlay]:
    atlas = view.run.atlas
    method, dims = _replay_map(view)
    state.keep_choice(state.key(state.REPLAY_SNAPSHOT, view.rid), range(len(atlas.epochs)), len(atlas.epochs) - 1)
    playing = bool(st.session_state.get(state.PLAY_KEY, False))
    c_chart, c_side = st.columns([3, 1])
    with c_chart:
        st.fragment(lambda: _replay_player(view, method, dims), run_every=REPLAY_TICK_S if playing else None)()
    with c_side:
        st.caption(f"{len(atlas.epochs)} snapshots of the posterior means of the same {len(atlas.labels):,} test images; epoch 0 is the untrained model.")
        st.download_button("Download the replay as a GIF", data=lambda: cache.replay_gif(view.cache_key, view.run, method, dims),
                           file_name=f"{view.run.name}-replay.gif", mime="image/gif", on_click="ignore", key="replay_gif")
    return []


TAB_SPATIAL = "Spatial latent"  # a tab only for runs whose latent is a (C_z, h, w) map
SPATIAL_SOURCES = ("the clicked image", "an image chosen here")
SPATIAL_PICK = "spatial"  # the image pick of the Spatial latent tab
SPATIAL_SOURCE = "spatial_source"  # per run: which of SPATIAL_SOURCES the tab shows
SPATIAL_THUMB_SIDE = 112  # px of the image and its reconstruction beside the maps


def _spatial_image(view: View) -> int:
    """The atlas index the Spatial latent tab shows: the image last clicked on the scatter, or one chosen with pickers."""
    source = st.radio("Show the posterior of", SPATIAL_SOURCES, key=state.key(SPATIAL_SOURCE, view.rid))
    clicked = selected_index(view)
    if source == SPATIAL_SOURCES[0] and clicked is not None:
        return clicked
    if source == SPATIAL_SOURCES[0]:
        st.caption("No image clicked on the scatter yet: choose one here.")
    return pick_atlas_image(view, SPATIAL_PICK)


def spatial_tab(view: View) -> list[Overlay]:
    """A spatial latent as maps: the chosen image's posterior mean per channel, and where the code spends its nats over the atlas."""
    c, h, w = view.latent_shape
    st.caption(f"The latent is a {c} × {h} × {w} map ({view.latent_dim} dims): each channel is a {h} × {w} grid over the image, "
               "and the slider named c (row, column) is that channel's element at that position.")
    c_image, c_mean = st.columns([2, 5])
    with c_image:
        idx = _spatial_image(view)
        recon = cache.reconstructions(view.cache_key, view.run, (idx,))[0]
        show_image([images.thumbnail(view.run.atlas.images[idx], SPATIAL_THUMB_SIDE), images.thumbnail(recon, SPATIAL_THUMB_SIDE)],
                   caption=[f"image #{idx}, class {view.class_name(view.labels[idx])}", "reconstruction"], width=SPATIAL_THUMB_SIDE)
    with c_mean:
        st.markdown(f"**Posterior mean of image #{idx}, one map per channel**")
        st.plotly_chart(spatial.posterior_mean_figure(latent.as_maps(view.means[idx], view.latent_shape)), key="spatial_mean")
        st.caption("Colours: the mean of each latent element, blue below 0, white at 0 (the prior's mean), red above, "
                   "on a scale symmetric about 0; row 0 is the top of the image.")
    kl = view.stats.score_name == "KL"
    unit = "nats" if kl else "var"
    maps = latent.as_maps(view.stats.scores, view.latent_shape)  # (C, h, w): for a VAE, latent.kl_maps of the atlas
    st.markdown("**Where the code spends its nats** (all atlas images)" if kl else "**Where the codes vary** (all atlas images)")
    c_maps, c_total = st.columns([3, 1.3])
    c_maps.plotly_chart(spatial.cost_maps_figure(maps, unit), key="spatial_cost")
    c_total.plotly_chart(spatial.position_total_figure(latent.position_totals(maps), unit), key="spatial_total")
    n = plots.number(len(view.means))
    if kl:
        st.caption(f"Colours: the mean KL of each latent element over the {n} atlas images, pale at 0 nats to dark red at the most; the map on the right "
                   f"sums the channels. In all {float(maps.sum()):.1f} nats per image, the KL term.")
    else:
        st.caption(f"Colours: an autoencoder has no KL; the variance of each code over the {n} atlas images, pale at 0 to dark red at the "
                   "most; the map on the right sums the channels.")
    return []


TAB_VIEWS = {
    TAB_SPATIAL: spatial_tab,
    state.TAB_GRID: grid_tab,
    state.TAB_TRAVERSAL: traversal_tab,
    state.TAB_INTERPOLATION: interpolation_tab,
    state.TAB_SAMPLING: sampling_tab,
    state.TAB_RECONSTRUCTION: reconstruction_tab,
    state.TAB_REPLAY: replay_tab,
}


# ---------------------------------------------------------------- the page

def tab_names(view: View) -> tuple[str, ...]:
    """The tabs of this run: the Spatial latent tab only when its latent is a map."""
    return state.TABS + ((TAB_SPATIAL,) if latent.is_spatial(view.latent_shape) else ())


def render_tabs(view: View) -> list[Overlay]:
    """Only the open tab computes anything; it returns what it wants drawn on the scatter."""
    overlays: list[Overlay] = []
    names = tab_names(view)
    if st.session_state.get(state.TAB_KEY) not in (None, *names):  # the Spatial latent tab was open on a spatial run
        st.session_state[state.TAB_KEY] = names[0]
    for tab, name in zip(st.tabs(names, key=state.TAB_KEY, on_change="rerun"), names):
        with tab:
            if tab.open:
                overlays += TAB_VIEWS[name](view)
    return overlays


def render() -> None:
    """The whole page: a header line, the scatter block on top, the tabs below (drawn first: they feed the scatter)."""
    selection = current_selection()
    if selection.run is None:
        st.title("Explore")
        if selection.summary is not None:
            st.error(f"Run {selection.summary.name} cannot be opened: {selection.error}")
            st.caption("Choose another run in the sidebar.")
        else:
            st.info("No run to explore yet: choose a checkpoints folder with runs in the sidebar.")
        return
    view = make_view(selection.run)
    kind = "autoencoder (no prior, no KL)" if view.deterministic else view.setting.kind_label
    n_inactive = int(view.stats.inactive.sum())
    st.markdown(f"### {view.run.name} · {kind}, latent {latent.latent_size_text(view.latent_shape)}, epoch {view.run.epoch}"
                + (f" · {n_inactive} inactive dim{'s' if n_inactive != 1 else ''}" if n_inactive else ""))
    st.caption("  \n".join(bounds.run_summary_lines(view.run, read_evaluation(view.run.path, view.run.epoch))))
    top = st.container()
    overlays = render_tabs(view)
    with top:
        explorer(view, overlays)


render()
