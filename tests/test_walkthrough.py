"""What a new user tripped on (issue 13's walkthrough): figures (WebGL only where needed, legends clear of Plotly's
toolbar, the grid extent only on linear maps, labelled charts), one number format, the replay's range and GIF,
one way to sample an autoencoder, and the Explore page's maps made when training ended."""
from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from app import images, latent, plots
from app.components.scatter_chart import drawn_figure
from trainer import projections
from trainer.images import class_rgb
from trainer.runs import load_run

from .helpers import ok, open_tab, start_app

# ---------------------------------------------------------------- figures


def scatter(**kw):
    xy = np.random.default_rng(0).normal(size=(30, 2))
    return plots.latent_scatter(xy, np.arange(30) % 3, ["a", "b", "c"], **kw)


def test_scatters_are_svg_unless_asked_and_overlays_follow_their_points():
    svg, gl = scatter(), scatter(webgl=True)
    assert {t.type for t in svg.data} == {plots.SVG_TRACE} and {t.type for t in gl.data} == {plots.WEBGL_TRACE}
    overlays = [plots.Overlay("marker", "m", np.zeros((1, 2))), plots.Overlay("path", "p", np.zeros((3, 2))),
                plots.Overlay("outline", "o", np.zeros((5, 2)))]
    for fig, kind in ((svg, plots.SVG_TRACE), (gl, plots.WEBGL_TRACE)):
        plots.add_overlays(fig, overlays, lambda z: z)
        assert [t.type for t in fig.data[-3:]] == [kind] * 3  # SVG under WebGL points would be hidden; WebGL on SVG costs a context


def test_the_grid_extent_is_drawn_only_on_a_linear_map():
    outline = [plots.Overlay("outline", "grid extent", np.zeros((5, 2))), plots.Overlay("marker", "m", np.zeros((1, 2)))]
    linear = plots.add_overlays(scatter(), outline, lambda z: z)
    bent = plots.add_overlays(scatter(), outline, lambda z: z, linear=False)
    assert [t.name for t in linear.data[3:]] == ["grid extent", "m"] and [t.name for t in bent.data[3:]] == ["m"]


def test_legends_stay_clear_of_the_toolbar_and_the_title():
    """Plotly's toolbar shows at the top right on hover: the legend sits under the plot, or beside it, never on top."""
    below, right = scatter().layout.legend, scatter(legend=plots.LEGEND_RIGHT, title="t").layout.legend
    assert below.orientation == "h" and below.yref == "container" and below.yanchor == "bottom" and below.y == 0
    assert right.orientation == "v" and right.x > 1 and right.yanchor == "top" and right.y <= 1


def test_the_kl_chart_has_a_title_and_its_threshold_a_label():
    fig = plots.bar_chart(np.array([2.0, 0.005]), ["z0", "z1"], title="Mean KL per dimension", y_title="nats", threshold=0.01,
                          threshold_label="inactive below 0.01 nats")
    assert fig.layout.title.text == "Mean KL per dimension"
    assert [a.text for a in fig.layout.annotations] == ["inactive below 0.01 nats"] and fig.layout.shapes[0].y0 == 0.01


def test_numbers_are_written_one_way():
    assert [plots.number(v) for v in (2000, 583429, 7, 2345.6)] == ["2,000", "583,429", "7", "2,346"]
    assert plots.number(1234.56, 1) == "1,234.6"
    assert "not comparable" in plots.WALL_SECONDS_HELP


# ---------------------------------------------------------------- the replay


def test_the_replay_range_holds_every_point_of_every_snapshot():
    rng = np.random.default_rng(0)
    coords = np.stack([rng.normal(scale=s, size=(500, 2)) for s in (0.1, 1.0, 3.0)])  # (E, N, 2): the spread grows
    coords[1, 0] = (40.0, -25.0)  # one far point: the robust range would clip it
    (x0, x1), (y0, y1) = latent.data_range(coords)
    flat = coords.reshape(-1, 2)
    assert x0 < flat[:, 0].min() and x1 > flat[:, 0].max() and y0 < flat[:, 1].min() and y1 > flat[:, 1].max()
    assert latent.data_range(np.full((2, 3, 2), np.nan)) == ((-1.0, 1.0), (-1.0, 1.0))
    assert latent.replay_axis_titles("raw", (3, 5)) == ("z3", "z5") and latent.replay_axis_titles("pca", (0, 1)) == ("PC1", "PC2")


def test_nice_ticks():
    assert images.nice_ticks(-6.0, 5.7, 8).tolist() == [-6.0, -4.0, -2.0, 0.0, 2.0, 4.0]
    assert images.nice_ticks(0.0, 1.0, 5).tolist() == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert images.nice_ticks(1.0, 1.0).tolist() == [1.0]


def test_a_replay_frame_has_axes_and_a_legend():
    xy = np.random.default_rng(0).normal(size=(200, 2))
    labels = np.arange(200) % 3
    colors = class_rgb(3)
    bare = images.scatter_frame(xy, labels, colors, (-4, 4), (-4, 4), size=300)
    framed = images.scatter_frame(xy, labels, colors, (-4, 4), (-4, 4), size=300, text="run · epoch 3 of 3",
                                  class_names=["zero", "one", "two"], axis_titles=("PC1", "PC2"))
    assert framed.shape == bare.shape == (300, 300, 3)
    legend = framed[:, 240:]  # the right column: a swatch of each class colour
    for color in colors:
        assert (legend == np.array(color, np.uint8)).all(axis=-1).sum() >= 20
    ink = (framed < 100).all(axis=-1)  # dark text and the axes' frame
    assert ink[:, :30].sum() > 50 and ink[260:, :].sum() > 50  # tick labels on the left, tick labels and title below
    assert ink.sum() > (bare < 100).all(axis=-1).sum() + 500


# ---------------------------------------------------------------- sampling an autoencoder


def test_every_page_samples_an_autoencoder_from_the_gaussian_fitted_to_its_codes(runs_root):
    ae = load_run(runs_root / "ae2")
    means = ae.atlas.means[-1]
    stats = latent.dimension_stats(means, None)
    np.testing.assert_array_equal(latent.atlas_code_samples(means, True, 16, 1.0, 3), latent.code_samples(stats, True, 16, 1.0, 3))
    mean, cov = latent.fitted_gaussian(means)
    np.testing.assert_array_equal(mean, stats.mean)
    np.testing.assert_array_equal(cov, stats.cov)
    vae = load_run(runs_root / "vae2").atlas.means[-1]
    np.testing.assert_array_equal(latent.atlas_code_samples(vae, False, 4, 1.0, 3), latent.prior_samples(4, 2, 1.0, 3))  # same z across runs
    far = latent.atlas_code_samples(means + 100.0, True, 64, 1.0, 0)
    assert np.abs(far.mean(0) - (means.mean(0) + 100.0)).max() < 3 * means.std(0).max()  # centred on the codes, not on 0


# ---------------------------------------------------------------- the Explore page


def fake_embed(z: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    return np.asarray(z, np.float32)[:, :2] * 3.0 + 7.0


def spinner_texts(monkeypatch) -> list[str]:
    import streamlit as st

    texts: list[str] = []
    real = st.spinner

    def recording(text="", *args, **kwargs):
        texts.append(str(text))
        return real(text, *args, **kwargs)

    monkeypatch.setattr(st, "spinner", recording)
    return texts


@pytest.mark.parametrize("made_in_training", [True, False])
def test_a_map_made_when_training_ended_opens_without_computing(monkeypatch, runs_root, tmp_path, made_in_training):
    root = tmp_path / "checkpoints"
    shutil.copytree(runs_root / "vae5", root / "vae5")
    monkeypatch.setattr(projections, "embed", fake_embed)
    run = load_run(root / "vae5")
    if made_in_training:  # what fit(projections=True) leaves in the run folder
        projections.cached_embedding(run.path, run.epoch, run.atlas.means[-1], "umap", seed=run.train_config.seed)
    texts = spinner_texts(monkeypatch)
    at = ok(start_app(monkeypatch, root))
    at.selectbox(key="projection").set_value("umap")
    at = ok(at.run())
    computing = [t for t in texts if "Computing the UMAP map" in t]
    assert bool(computing) is not made_in_training
    chart = drawn_figure(json.loads(next(c for c in at.get("bidi_component") if "UMAP 1" in c.proto.json).proto.json))  # the scatter component
    assert chart["data"][0]["type"] == plots.WEBGL_TRACE  # the main scatter: the one WebGL chart
    assert "grid extent" not in {t.get("name") for t in chart["data"]}  # a UMAP map bends the grid's plane
    assert any("not on a UMAP / t-SNE map" in c.value for c in at.caption)


def test_explore_labels_its_sliders_charts_and_pickers(monkeypatch, runs_root, tmp_path):
    root = tmp_path / "checkpoints"
    shutil.copytree(runs_root / "vae5", root / "vae5")
    at = ok(start_app(monkeypatch, root))
    assert any(c.value.startswith("Sliders for all 5 dimensions, highest KL first") for c in at.caption)  # the server sliders
    chart = drawn_figure(json.loads(next(c for c in at.get("bidi_component") if "PC1" in c.proto.json).proto.json))  # the scatter component
    assert "grid extent" in {t.get("name") for t in chart["data"]}  # PCA: the grid's plane is the map's
    at = open_tab(at, "Traversal")
    picker = next(w for w in at.multiselect if (w.key or "").startswith("trav_dims"))
    assert all(o.startswith("z") and " " not in o for o in picker.options)  # short chips: none cut off
    kl = json.loads(next(c for c in at.get("plotly_chart") if '"bar"' in c.proto.spec).proto.spec)
    assert kl["layout"]["title"]["text"] == "Mean KL per dimension over the atlas images"
    assert kl["layout"]["annotations"][0]["text"].startswith("inactive below")


def test_the_replay_gif_has_every_snapshot_within_its_frames(runs_root, tmp_path):
    from app import explore_cache

    run = load_run(runs_root / "vae5")
    key = f"{tmp_path}|replay"  # the caches' identity of this run: unique to the test
    coords, x_range, y_range = explore_cache.replay(key, run, "pca", (0, 1))
    flat = coords.reshape(-1, 2)
    assert x_range[0] < flat[:, 0].min() and flat[:, 0].max() < x_range[1] and y_range[0] < flat[:, 1].min() and flat[:, 1].max() < y_range[1]
    gif = explore_cache.replay_gif(key, run, "pca", (0, 1))
    with Image.open(io.BytesIO(gif)) as im:
        assert im.n_frames == len(run.atlas.epochs) and im.size == (explore_cache.GIF_SIDE, explore_cache.GIF_SIDE)
