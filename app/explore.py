"""The Explore page: the latent scatter with sliders and the decoded digit on top, the other views in tabs.

Computation lives in app.latent / app.images / app.plots (pure) and app.explore_data (cached);
this module only lays out widgets. Widget keys that belong to one run end in `:<run id>`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import streamlit as st

from app import explore_data as data
from app import images, latent, plots
from app.sidebar import current_selection
from trainer.runs import Run

TABS = ("Manifold grid", "Traversal", "Interpolation", "Sampling", "Reconstruction", "Training replay")
TAB_KEY = "explore_tab"
CLICK_KEY = "click_mode"
CLICK_MODES = ("slider origin", "interpolation end A", "interpolation end B")
PROJECTION_KEY = "projection"
PROJECTION_LABELS = {"pca": "PCA", "umap": "UMAP", "tsne": "t-SNE", "raw": "two raw dimensions"}
END_SOURCES = ("atlas image", "upload")
FULL_RERUN_KEY = "explore_full_rerun"  # set by a callback inside a fragment that changes more than the fragment
PLAY_KEY = "replay_playing"
REPLAY_TICK_S = 0.6
DIGIT_SIDE = 224  # px of the decoded slider digit
THUMB_SIDE = 84
FRAME_SIDE = 84
GRID_SIDE = 560
UPLOAD_SIDE = 168
SLIDER_BOX_HEIGHT = 560
RECON_PER_CLASS = 2
MAX_RECON_COLUMNS = 20
DEFAULT_TRAVERSAL_DIMS = 8
MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class View:
    """One run as the page sees it: latest-snapshot posteriors and statistics."""

    run: Run
    rid: str  # namespaces this run's widget keys
    key: str  # cache identity of this epoch of the run
    stats: latent.DimStats
    means: np.ndarray  # (N, D) posterior means of the atlas images
    stds: np.ndarray  # (N, D) posterior standard deviations (0 for an AE)
    labels: np.ndarray  # (N,)
    class_names: list[str]
    deterministic: bool  # an autoencoder

    @property
    def latent_dim(self) -> int:
        return self.means.shape[1]

    def k(self, name: str) -> str:
        """A widget key for this run."""
        return f"{name}:{self.rid}"

    def class_name(self, label: int) -> str:
        return plots.class_name(self.class_names, int(label))


@dataclass
class Overlay:
    """Something a tab draws on the scatter, in latent space (projected by the scatter)."""

    kind: str  # "marker", "path" or "outline"
    name: str
    z: np.ndarray  # (B, D)
    extra: dict = field(default_factory=dict)


def make_view(run: Run) -> View:
    key = data.run_key(run)
    posterior = run.atlas.posterior(-1)
    means = run.atlas.means[-1]
    stds = np.zeros_like(means) if posterior.deterministic else posterior.std.numpy()
    return View(run, data.run_id(run), key, data.dim_stats(key, run), means, stds, run.atlas.labels, run.class_names, posterior.deterministic)


# ---------------------------------------------------------------- the slider point

def slider_key(view: View, d: int) -> str:
    return f"z{d}:{view.rid}"


def slider_bounds(view: View) -> tuple[np.ndarray, np.ndarray]:
    """Slider ranges rounded outwards to half units, so a new epoch rarely changes a slider's identity."""
    return np.floor(view.stats.lo * 2.0) / 2.0, np.ceil(view.stats.hi * 2.0) / 2.0


def origin(view: View) -> np.ndarray:
    """Values of the dims without a slider (and the sliders' starting values): (D,).

    A VAE starts at the prior's mean (zero); an autoencoder, which has no prior, at the mean of its codes."""
    z = st.session_state.get(view.k("origin"))
    if not isinstance(z, np.ndarray) or z.shape != (view.latent_dim,):
        z = np.round(view.stats.mean, 2) if view.deterministic else np.zeros(view.latent_dim, np.float32)
        st.session_state[view.k("origin")] = z
    return z


def current_z(view: View) -> np.ndarray:
    """The point the sliders describe: (D,)."""
    lo, hi = slider_bounds(view)
    z = origin(view).copy()
    for d in range(view.latent_dim):
        value = st.session_state.get(slider_key(view, d))
        if isinstance(value, (int, float)):
            z[d] = value
    return np.clip(z, lo, hi).astype(np.float32)


def set_point(view: View, z: np.ndarray) -> None:
    """Move every slider to z (D,) (call from a callback or before the sliders are drawn)."""
    lo, hi = slider_bounds(view)
    z = np.round(np.clip(np.asarray(z, np.float32), lo, hi), 2)
    st.session_state[view.k("origin")] = z.astype(np.float32)
    for d in range(view.latent_dim):
        st.session_state[slider_key(view, d)] = float(z[d])


def selected_index(view: View) -> int | None:
    idx = st.session_state.get(view.k("selected"))
    return idx if isinstance(idx, int) and 0 <= idx < len(view.means) else None


def _start_random(view: View) -> None:
    seed = int(st.session_state.get(view.k("start_seed"), 0))
    set_point(view, latent.random_start(view.stats, view.deterministic, seed))


def _start_selected(view: View) -> None:
    idx = selected_index(view)
    set_point(view, view.means[idx if idx is not None else 0])


def _on_scatter_select(view: View, chart_key: str) -> None:
    """A click on the scatter: remember the image, then use it as the slider origin or an interpolation end."""
    idx = plots.selected_atlas_index(st.session_state.get(chart_key))
    if idx is None or not 0 <= idx < len(view.means):
        return
    st.session_state[view.k("selected")] = idx
    mode = st.session_state.get(CLICK_KEY, CLICK_MODES[0])
    if mode == CLICK_MODES[0]:
        set_point(view, view.means[idx])
        return
    end = "A" if mode == CLICK_MODES[1] else "B"
    st.session_state[view.k(f"interp_{end}_source")] = END_SOURCES[0]
    st.session_state[view.k(f"interp_{end}_class")] = int(view.labels[idx])
    st.session_state[view.k(f"interp_{end}_index")] = idx
    st.session_state[TAB_KEY] = "Interpolation"
    st.session_state[FULL_RERUN_KEY] = True


def _rerun_app_if_asked() -> None:
    if st.session_state.pop(FULL_RERUN_KEY, False):
        st.rerun()


# ---------------------------------------------------------------- the top block

def scatter_projection(view: View) -> latent.Projection:
    """The scatter's projection as chosen by the projection widgets (2-D latents are shown directly)."""
    method = st.session_state.get(PROJECTION_KEY, "pca") if view.latent_dim > 2 else "raw"
    dims = (0, 1) if view.latent_dim > 1 else (0, 0)
    if method == "raw" and view.latent_dim > 2:
        order = view.stats.order
        dims = (int(st.session_state.get(view.k("proj_x"), order[0])), int(st.session_state.get(view.k("proj_y"), order[1])))
    if method in latent.CACHED_PROJECTIONS:
        label = PROJECTION_LABELS[method]
        with st.spinner(f"Computing the {label} map of {len(view.means):,} points (once; then kept in the run folder)…"):
            return data.projection(view.key, view.run, method, dims)
    return data.projection(view.key, view.run, method, dims)


def _projection_controls(view: View) -> None:
    if view.latent_dim <= 2:
        st.caption(f"{view.latent_dim}-D latents, shown directly (posterior means of {len(view.means):,} test images).")
        return
    cols = st.columns([2, 1, 1])
    cols[0].selectbox("Map", list(PROJECTION_LABELS), format_func=PROJECTION_LABELS.get, key=PROJECTION_KEY,
                      help="How the latent means are laid out in 2-D. UMAP and t-SNE are computed once per epoch and kept in the run folder.")
    if st.session_state.get(PROJECTION_KEY) == "raw":
        dims = [int(d) for d in view.stats.order]
        for col, axis, default in ((cols[1], "proj_x", dims[0]), (cols[2], "proj_y", dims[1])):
            if st.session_state.get(view.k(axis)) not in dims:
                st.session_state[view.k(axis)] = default
            col.selectbox(axis[-1], dims, format_func=lambda d: f"z{d}", key=view.k(axis))


def draw_overlays(fig, projection: latent.Projection, overlays: list[Overlay]) -> None:
    for ov in overlays:
        xy = projection.transform(ov.z)
        if ov.kind == "path":
            plots.add_path(fig, xy, ov.name)
        elif ov.kind == "outline":
            plots.add_outline(fig, xy, ov.name)
        else:
            plots.add_marker(fig, xy, ov.name, symbol=ov.extra.get("symbol", "diamond"), color=ov.extra.get("color", plots.PATH_COLOR), size=ov.extra.get("size", 12))


def show_image(image, caption=None, **kwargs) -> None:
    """st.image with lossless PNG (JPEG would smear the pixels of small digits)."""
    st.image(image, caption=caption, output_format="PNG", **kwargs)


def thumbnail(image: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """(C, H, W) uint8 -> an upscaled display image about `side` pixels wide."""
    return images.upscale(images.to_display(image), images.display_scale(image.shape[-1], side))


@st.fragment
def explorer(view: View, overlays: list[Overlay]) -> None:
    """Scatter, decoded digit and sliders: a fragment, so moving a slider reruns only this block."""
    _rerun_app_if_asked()
    c_chart, c_digit, c_sliders = st.columns([5, 2, 3], gap="medium")
    extra = st.session_state.get(view.k("extra_dims")) or []
    dims = latent.slider_dims(view.stats, extra)
    lo, hi = slider_bounds(view)
    start = origin(view)
    for d in dims:  # every slider has a valid value before it is drawn
        key = slider_key(view, d)
        value = st.session_state.get(key, float(start[d]))
        st.session_state[key] = float(np.clip(value, lo[d], hi[d]))
    z = current_z(view)

    with c_digit:
        x_hat = images.decode_uint8(view.run.model, z[None])[0]  # (C, H, W)
        density = (latent.gaussian_log_density(z, view.stats.mean, view.stats.cov) if view.deterministic else latent.prior_log_density(z))[0]
        where = "fitted Gaussian" if view.deterministic else "N(0, I)"
        show_image(thumbnail(x_hat, DIGIT_SIDE), caption=f"Decoded z · log density under {where}: {density:.1f} nats", width="stretch")
        st.caption("Move the sliders from")
        st.button("zero", key=view.k("start_zero"), on_click=set_point, args=(view, np.zeros(view.latent_dim)), width="stretch")
        st.button("the clicked image", key=view.k("start_selected"), on_click=_start_selected, args=(view,), width="stretch",
                  help="The posterior mean of the image last clicked on the scatter (image #0 until you click one).")
        st.button("a random sample", key=view.k("start_random"), on_click=_start_random, args=(view,), width="stretch",
                  help="A sample of the Gaussian fitted to the codes (an autoencoder has no prior)" if view.deterministic else "A sample of the prior N(0, I)")
        st.number_input("Seed of the random sample", 0, MAX_SEED, 0, key=view.k("start_seed"))
        idx = selected_index(view)
        if idx is not None:
            show_image(thumbnail(view.run.atlas.images[idx]), caption=f"Clicked: image #{idx}, class {view.class_name(view.labels[idx])}", width=THUMB_SIDE)
        else:
            st.caption("Click a point on the scatter to see its image here.")

    with c_sliders:
        unit = "nats" if view.stats.score_name == "KL" else "var"
        with st.container(height=SLIDER_BOX_HEIGHT, border=False):
            for d in dims:
                score = float(view.stats.scores[d])
                inactive = " · inactive" if view.stats.inactive[d] else ""
                st.slider(
                    f"z{d} · {score:.2f} {unit}{inactive}", float(lo[d]), float(hi[d]), step=0.01, format="%.2f", key=slider_key(view, d),
                    help=("Mean KL of this dimension over the atlas images" if unit == "nats" else "Variance of this code over the atlas images")
                    + f"; below {latent.INACTIVE_THRESHOLD} it is inactive (the decoder ignores it). Range: mean ± {latent.SLIDER_STDS:g} std of the codes.",
                )
        if view.latent_dim > latent.MAX_SLIDERS:
            others = [int(d) for d in view.stats.order[latent.MAX_SLIDERS:]]
            st.multiselect(f"More sliders (showing the {latent.MAX_SLIDERS} dims with the highest {view.stats.score_name})", others,
                           format_func=lambda d: f"z{d} ({view.stats.scores[d]:.3f})", key=view.k("extra_dims"))

    with c_chart:
        _projection_controls(view)
        projection = scatter_projection(view)
        fig = plots.latent_scatter(projection.xy, view.labels, view.class_names, axis_titles=projection.axis_titles)
        draw_overlays(fig, projection, overlays)
        if idx is not None:
            plots.add_marker(fig, projection.xy[idx], "clicked image", symbol="circle-open", color=plots.OVERLAY_COLOR, size=14)
        plots.add_marker(fig, projection.transform(z), "slider point", symbol="x")
        chart_key = view.k("scatter")
        st.plotly_chart(fig, key=chart_key, on_select=functools.partial(_on_scatter_select, view, chart_key), selection_mode="points",
                        config={"scrollZoom": True, "displaylogo": False})
        st.radio("A click on the scatter sets the", CLICK_MODES, key=CLICK_KEY, horizontal=True)


# ---------------------------------------------------------------- choosing images

def pick_atlas_image(view: View, prefix: str, default_rank: int = 0) -> int:
    """Class and instance pickers over the atlas; returns the chosen atlas index."""
    classes = [int(c) for c in np.unique(view.labels)]
    ck, ik = view.k(f"{prefix}_class"), view.k(f"{prefix}_index")
    if st.session_state.get(ck) not in classes:
        st.session_state[ck] = classes[min(default_rank, len(classes) - 1)]
    c1, c2 = st.columns(2)
    cls = c1.selectbox("Class", classes, format_func=view.class_name, key=ck)
    options = [int(i) for i in np.nonzero(view.labels == cls)[0]]
    if st.session_state.get(ik) not in options:
        st.session_state[ik] = options[0]
    return int(c2.selectbox("Instance", options, format_func=lambda i: f"image #{i}", key=ik))


def read_upload(view: View, label: str, key: str) -> images.Upload | None:
    """A file uploader preprocessed for this run; shows one error line and returns None when unusable."""
    file = st.file_uploader(label, type=list(images.UPLOAD_TYPES), key=key, max_upload_size=images.MAX_UPLOAD_BYTES // 2**20)
    if file is None:
        return None
    cfg = view.run.model_config
    result = data.preprocess(file.getvalue(), cfg.image_size, cfg.in_channels, images.upload_style(view.run.train_config.dataset))
    if isinstance(result, str):
        st.error(f"{file.name}: {result}")
        return None
    return result


def pick_end(view: View, end: str) -> tuple[np.ndarray, np.ndarray] | None:
    """One interpolation end: (z (D,), image (C, H, W)) from the atlas or an upload, or None."""
    source = st.radio(f"End {end}", END_SOURCES, key=view.k(f"interp_{end}_source"), horizontal=True)
    if source == END_SOURCES[0]:
        idx = pick_atlas_image(view, f"interp_{end}", default_rank=0 if end == "A" else 1)
        show_image(thumbnail(view.run.atlas.images[idx]), caption=f"{end}: image #{idx}, class {view.class_name(view.labels[idx])}", width=THUMB_SIDE)
        return view.means[idx], view.run.atlas.images[idx]
    upload = read_upload(view, f"Image for end {end}", view.k(f"interp_{end}_upload"))
    if upload is None:
        st.caption("Upload an image to use it as this end.")
        return None
    mean, _ = data.encode_upload(view.key, view.run, upload.x)
    show_image(thumbnail(upload.x), caption=f"{end}: the upload, preprocessed", width=THUMB_SIDE)
    return mean, upload.x


# ---------------------------------------------------------------- tabs

def refresh_note(what: str) -> None:
    """The tabs run with the page, not with the slider fragment: say so and offer a refresh."""
    st.caption(f"{what} the slider point of the last page update; after moving sliders, refresh.")
    st.button("↻ Use the slider point", key=f"refresh_{what.split()[0].lower()}")


def grid_tab(view: View) -> list[Overlay]:
    if view.latent_dim < 2:
        st.info("A 1-D latent has no plane to grid: see the Traversal tab.")
        return []
    c_opts, c_grid = st.columns([1, 3])
    with c_opts:
        n = st.slider("Grid size N", *latent.GRID_SIZE_RANGE, value=15, key="grid_n")
        plane = "raw"
        if view.latent_dim > 2:
            plane = st.radio("Plane", ("pca", "raw"), format_func={"pca": "PCA plane of the codes", "raw": "two raw dimensions"}.get, key="grid_plane")
        dims = (0, 1)
        if plane == "raw" and view.latent_dim > 2:
            order = [int(d) for d in view.stats.order]
            for axis, default in (("grid_x", order[0]), ("grid_y", order[1])):
                if st.session_state.get(view.k(axis)) not in order:
                    st.session_state[view.k(axis)] = default
            dims = (int(st.selectbox("Horizontal", order, format_func=lambda d: f"z{d}", key=view.k("grid_x"))),
                    int(st.selectbox("Vertical", order, format_func=lambda d: f"z{d}", key=view.k("grid_y"))))
        lo_q, hi_q = latent.GRID_QUANTILES
        spread = "the codes' mean ± std" if view.deterministic or plane == "pca" else "the prior N(0, 1)"
        st.caption(f"Each axis spans the {lo_q:.0%}–{hi_q:.0%} Gaussian quantiles of {spread}; "
                   + "the dashed outline on the scatter is the grid's extent.")
        if view.latent_dim > 2:
            refresh_note("Other dimensions are held at")
    z_base = current_z(view)
    if plane == "pca":
        pca = latent.fit_pca(view.means)
        grid = latent.pca_grid(z_base, pca, n)
    else:
        centre = view.stats.mean if view.deterministic else np.zeros(view.latent_dim, np.float32)
        scale = view.stats.std if view.deterministic else np.ones(view.latent_dim, np.float32)
        grid = latent.raw_grid(z_base, dims, n, centre, scale)
    tiles = images.tile(data.decode(view.key, view.run, grid.z), n, pad=0)
    factor = images.display_scale(tiles.shape[1], GRID_SIDE)
    with c_grid:
        show_image(images.upscale(tiles, factor), caption=f"{n}×{n} decodes of the manifold grid (decoded in one batch)")
    return [Overlay("outline", "grid extent", grid.outline)]


def traversal_tab(view: View) -> list[Overlay]:
    order = [int(d) for d in view.stats.order]
    key = view.k("trav_dims")
    if key not in st.session_state:
        st.session_state[key] = order[: min(DEFAULT_TRAVERSAL_DIMS, len(order))]
    unit = "nats" if view.stats.score_name == "KL" else "var"
    c1, c2 = st.columns([3, 1])
    dims = c1.multiselect("Dimensions to sweep", order, format_func=lambda d: f"z{d} ({view.stats.scores[d]:.2f} {unit})", key=key)
    steps = c2.slider("Steps", 5, 15, 11, key="trav_steps")
    st.caption("Each row sweeps one dimension across its slider range; the others stay at the slider point. "
               f"Inactive dimensions (below {latent.INACTIVE_THRESHOLD} {unit}) barely change the image.")
    if view.latent_dim > 1:
        refresh_note("Rows start from")
    if not dims:
        return []
    lo, hi = slider_bounds(view)
    values = latent.traversal_values(lo, hi, steps)
    z = latent.traversal_latents(current_z(view), dims, values)
    decoded = data.decode(view.key, view.run, z)  # (len(dims) * steps, C, H, W)
    factor = images.display_scale(view.run.model_config.image_size, 56)
    for r, d in enumerate(dims):
        row = images.tile(decoded[r * steps : (r + 1) * steps], steps)
        inactive = " · inactive" if view.stats.inactive[d] else ""
        show_image(images.upscale(row, factor), caption=f"z{d}: {lo[d]:.1f} → {hi[d]:.1f} · {view.stats.scores[d]:.2f} {unit}{inactive}")
    st.plotly_chart(plots.bar_chart(view.stats.scores[order], [f"z{d}" for d in order], y_title=unit, threshold=latent.INACTIVE_THRESHOLD),
                    key="trav_scores")
    return []


def interpolation_tab(view: View) -> list[Overlay]:
    c_a, c_b, c_opts = st.columns(3)
    with c_a:
        a = pick_end(view, "A")
    with c_b:
        b = pick_end(view, "B")
    with c_opts:
        method = st.radio("Path", latent.INTERPOLATIONS, key="interp_method", horizontal=True,
                          help="spherical: the direction turns along a great circle and the norm changes linearly, staying where a Gaussian prior puts its mass")
        steps = st.slider("Frames", *latent.INTERPOLATION_STEPS, value=10, key="interp_steps")
        st.caption("Click the scatter with “interpolation end A/B” selected to pick an end there.")
    if a is None or b is None:
        st.info("Choose both ends to see the interpolation.")
        return []
    path = latent.interpolate(a[0], b[0], steps, method)  # (steps, D)
    frames = data.decode(view.key, view.run, path)
    if view.deterministic:
        density, what = latent.gaussian_log_density(path, view.stats.mean, view.stats.cov), "log density under the Gaussian fitted to the codes (an AE has no prior)"
    else:
        density, what = latent.prior_log_density(path), "prior log-density log N(z; 0, I)"
    t = np.linspace(0.0, 1.0, steps)
    show_image([thumbnail(f, FRAME_SIDE) for f in frames], caption=[f"t={ti:.2f} · {p:.0f}" for ti, p in zip(t, density)], width=FRAME_SIDE)
    st.caption(f"{steps} frames, {method} path from A to B; under each frame its {what} in nats. A dip marks frames off the data manifold.")
    st.plotly_chart(plots.line_chart(density, x=t, x_title="t (A → B)", y_title="log density (nats)"), key="interp_density")
    return [Overlay("path", f"{method} path A → B", path)]


def sampling_tab(view: View) -> list[Overlay]:
    c_prior, c_post = st.columns(2)
    with c_prior:
        st.markdown("**Samples from the prior**")
        if view.deterministic:
            st.info("An autoencoder has no prior: these samples come from a Gaussian fitted to its codes (mean and covariance of the atlas means).")
        o1, o2, o3 = st.columns(3)
        temperature = o1.slider("Temperature T", 0.1, 2.0, 1.0, 0.1, key="sample_T")
        seed = int(o2.number_input("Seed", 0, MAX_SEED, 0, key="sample_seed"))
        side = o3.slider("Per side", 3, 10, 6, key="sample_side")
        if view.deterministic:
            z = latent.fitted_gaussian_samples(view.stats.mean, view.stats.cov, side * side, temperature, seed)
            what = "z ~ N(μ, T²Σ) fitted to the codes"
        else:
            z = latent.prior_samples(side * side, view.latent_dim, temperature, seed)
            what = "z ~ N(0, T²I)"
        grid = images.tile(data.decode(view.key, view.run, z), side)
        show_image(images.upscale(grid, images.display_scale(grid.shape[1], 420)), caption=f"{side * side} samples of {what}, T={temperature:g}, seed {seed}")
    with c_post:
        st.markdown("**Samples of one image's posterior**")
        idx = pick_atlas_image(view, "post")
        n = st.slider("Samples", 4, 32, 12, key="post_n")
        if view.deterministic:
            st.info("An autoencoder's posterior is a single point: every sample is its code, so all decodes are the reconstruction.")
        z = latent.posterior_samples(view.means[idx], view.stds[idx], n, seed)
        decoded = data.decode(view.key, view.run, np.concatenate([view.means[idx][None], z]))
        show_image([thumbnail(view.run.atlas.images[idx]), thumbnail(decoded[0])], caption=[f"image #{idx}", "reconstruction (mean)"], width=THUMB_SIDE)
        show_image(images.upscale(images.tile(decoded[1:], 8), 2), caption=f"{n} decodes of z = mean + std · ε (seed {seed})")
    return [Overlay("marker", "posterior samples", z, {"symbol": "circle", "size": 7})]


def reconstruction_tab(view: View) -> list[Overlay]:
    labels = view.labels
    picks = [int(i) for c in np.unique(labels) for i in np.nonzero(labels == c)[0][:RECON_PER_CLASS]][:MAX_RECON_COLUMNS]
    x = view.run.atlas.images[picks]
    x_hat = data.reconstructions(view.key, view.run, tuple(picks))
    both = images.tile(np.concatenate([x, x_hat]), len(picks), pad=2)
    show_image(images.upscale(both, 2), caption="Top: test images; bottom: their reconstructions (posterior mean → decoder)")
    st.divider()
    upload = read_upload(view, "Upload an image to reconstruct (PNG, JPEG, …)", view.k("recon_upload"))
    if upload is None:
        style = images.upload_style(view.run.train_config.dataset)
        how = {"digit": "a dark digit on light paper works: it is inverted to white-on-black and centred by mass in a 20×20 box, like MNIST",
               "object": "it is made white-on-black and fitted to the frame, like Fashion-MNIST", "photo": "it is resized and centre-cropped like the run's images"}[style]
        st.caption(f"Up to {images.MAX_UPLOAD_BYTES // 2**20} MB and {images.MAX_UPLOAD_PIXELS // 10**6} megapixels; {how}.")
        return []
    mean, _ = data.encode_upload(view.key, view.run, upload.x)
    recon = data.decode(view.key, view.run, mean[None])[0]
    show_image([upload.preview, thumbnail(upload.x, UPLOAD_SIDE), thumbnail(recon, UPLOAD_SIDE)],
               caption=["input", "preprocessed (what the model sees)", "reconstruction"], width=UPLOAD_SIDE)
    st.caption("Its posterior mean is the ◆ marked “upload” on the scatter.")
    return [Overlay("marker", "upload", mean[None], {"symbol": "diamond", "size": 14})]


def _toggle_play(view: View, snapshots: int) -> None:
    playing = not st.session_state.get(PLAY_KEY, False)
    st.session_state[PLAY_KEY] = playing
    if playing and st.session_state.get(view.k("replay_snapshot")) == snapshots - 1:
        st.session_state[view.k("replay_snapshot")] = 0
    st.session_state[FULL_RERUN_KEY] = True  # run_every of the player changes: the whole page must rerun


def replay_tab(view: View) -> list[Overlay]:
    atlas = view.run.atlas
    method, dims = "raw", (0, 1) if view.latent_dim > 1 else (0, 0)
    if view.latent_dim > 2:
        c1, c2 = st.columns([1, 3])
        method = c1.radio("Map", ("pca", "raw"), format_func={"pca": "PCA (fitted on the last epoch)", "raw": "the scatter's two raw dims"}.get, key="replay_map")
        if method == "raw":
            dims = scatter_projection(view).dims if st.session_state.get(PROJECTION_KEY) == "raw" else tuple(int(d) for d in view.stats.order[:2])
        c2.caption("One map for every epoch, with fixed axes, so the points move as training shapes the latent space. "
                   "UMAP / t-SNE would lay out each epoch anew, so the replay uses PCA or raw dimensions.")
    coords, x_range, y_range = data.replay(view.key, view.run, method, dims)
    epochs = [int(e) for e in atlas.epochs]
    snap_key = view.k("replay_snapshot")
    if st.session_state.get(snap_key) not in range(len(epochs)):
        st.session_state[snap_key] = len(epochs) - 1
    playing = bool(st.session_state.get(PLAY_KEY, False))
    titles = ("z0", "z1") if method == "raw" and view.latent_dim <= 2 else ((f"z{dims[0]}", f"z{dims[1]}") if method == "raw" else ("PC1", "PC2"))

    def player() -> None:
        _rerun_app_if_asked()
        if st.session_state.get(PLAY_KEY):
            nxt = st.session_state[snap_key] + 1
            if nxt >= len(epochs):
                st.session_state[PLAY_KEY] = False
                st.rerun()
            st.session_state[snap_key] = nxt
        c_play, c_slider = st.columns([1, 8])
        c_play.button("⏸ Pause" if playing else "▶ Play", key="replay_play", on_click=_toggle_play, args=(view, len(epochs)))
        s = c_slider.select_slider("Epoch", options=list(range(len(epochs))), format_func=lambda i: f"epoch {epochs[i]}", key=snap_key)
        fig = plots.latent_scatter(coords[s], atlas.labels, view.class_names, axis_titles=titles, x_range=x_range, y_range=y_range,
                                   title=f"epoch {epochs[s]} of {epochs[-1]}")
        st.plotly_chart(fig, key="replay_chart", config={"displaylogo": False})

    c_chart, c_side = st.columns([3, 1])
    with c_chart:
        st.fragment(player, run_every=REPLAY_TICK_S if playing else None)()
    with c_side:
        st.caption(f"{len(epochs)} snapshots of the posterior means of the same {len(atlas.labels):,} test images; epoch 0 is the untrained model.")
        st.download_button("Download the replay as a GIF", data=lambda: data.replay_gif(view.key, view.run, method, dims),
                           file_name=f"{view.run.name}-replay.gif", mime="image/gif", on_click="ignore", key="replay_gif")
    return []


TAB_VIEWS = {
    "Manifold grid": grid_tab,
    "Traversal": traversal_tab,
    "Interpolation": interpolation_tab,
    "Sampling": sampling_tab,
    "Reconstruction": reconstruction_tab,
    "Training replay": replay_tab,
}


def render_tabs(view: View) -> list[Overlay]:
    """Only the open tab computes anything; it returns what it wants drawn on the scatter."""
    overlays: list[Overlay] = []
    for tab, name in zip(st.tabs(TABS, key=TAB_KEY, on_change="rerun"), TABS):
        with tab:
            if tab.open:
                overlays += TAB_VIEWS[name](view)
    return overlays


def render() -> None:
    """The whole page."""
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
    run = view.run
    kind = "autoencoder (no prior, no KL)" if view.deterministic else "VAE"
    n_inactive = int(view.stats.inactive.sum())
    st.markdown(f"### {run.name} · {kind}, latent {view.latent_dim}, epoch {run.epoch}"
                + (f" · {n_inactive} inactive dim{'s' if n_inactive != 1 else ''}" if n_inactive else ""))
    top = st.container()
    overlays = render_tabs(view)
    with top:
        explorer(view, overlays)
