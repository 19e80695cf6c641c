"""The explorer on spatial latents ((C_z, h, w) maps flattened channel-major) and on colour runs: the latent maths
that names and maps the dims, the heat-map figures, uploads in colour, the live decoder of a resnet, and every
Explore tab (the Spatial latent tab included) and Compare through AppTest on tiny runs trained by the real trainer."""
from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from app import images, latent, spatial
from app.state import TAB_KEY, TABS
from models import DiagonalGaussian, ModelConfig, build_model
from trainer.config import TrainConfig
from trainer.data import ImageData
from trainer.emoji import EMOJI_DATASET, to_square_rgb
from trainer.onnx_export import ONNX_TOLERANCE, decoder_onnx, decoder_paths
from trainer.runs import load_run
from trainer.safe_io import read_json_dict
from trainer.train import fit

from .helpers import COMPARE_PAGE, TINY_WIDTHS, choose_run, encode, image_with_caption, make_run, ok, open_tab, start_app, tiny_data

TAB_SPATIAL = "Spatial latent"  # app/views/explore.py's name (the page module runs when imported)
SPATIAL_NAME = re.compile(r"^c\d+ \(\d+, \d+\)")  # how a dim of a map is named: c2 (3, 5)
SPATIAL_IN_TEXT = re.compile(r"c\d+ \(\d+, \d+\)")
RGB_SIZE = 32
RGB_COLOURS = ((220, 30, 30), (30, 160, 30), (30, 30, 220))


def spatial_config(kind: str = "vae", **kw) -> ModelConfig:
    return ModelConfig(arch="resnet", kind=kind, bottleneck="spatial", latent_channels=2, widths=TINY_WIDTHS, hidden_dim=0, **kw)


def colour_squares(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n RGB images (n, 3, S, S) uint8: one square of a class colour on white each, labels (n,)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((n, 3, RGB_SIZE, RGB_SIZE), 255, dtype=torch.uint8)
    y = torch.randint(0, len(RGB_COLOURS), (n,), generator=g)
    colours = torch.tensor(RGB_COLOURS, dtype=torch.uint8)
    for i in range(n):
        r = int(torch.randint(4, 12, (1,), generator=g))
        cy, cx = torch.randint(r, RGB_SIZE - r, (2,), generator=g).tolist()
        x[i, :, cy - r : cy + r, cx - r : cx + r] = colours[y[i]][:, None, None]
    return x, y


@pytest.fixture(scope="module")
def spatial_root(tmp_path_factory) -> Path:
    """Tiny runs: a spatial VAE and a spatial AE (2 x 7 x 7 on MNIST digits), a spatial VAE on colour images labelled as
    the emoji dataset (2 x 8 x 8 at 32 px), and a 2-D conv VAE (no map)."""
    root = tmp_path_factory.mktemp("spatial")
    train = dict(epochs=2, batch_size=32, seed=0, atlas_size=40)
    fit(spatial_config(), TrainConfig(**train), tiny_data(), root / "spatial", progress="none")
    fit(spatial_config("ae"), TrainConfig(**train), tiny_data(), root / "spatial-ae", progress="none")
    (train_x, train_y), (test_x, test_y) = colour_squares(96, 0), colour_squares(48, 1)
    colour = ImageData(train_x, train_y, test_x, test_y, ["red", "green", "blue"], {"name": EMOJI_DATASET, "kind": "generated"})
    fit(spatial_config(in_channels=3, image_size=RGB_SIZE), TrainConfig(**train, dataset=EMOJI_DATASET, recon_loss="mse"), colour,
        root / "rgb", progress="none")
    make_run(root, "conv")
    return root


# ---------------------------------------------------------------- the latent maths

def test_dims_of_a_map_are_named_by_channel_row_and_column():
    shape = (4, 7, 7)
    assert latent.dim_name(2 * 49 + 3 * 7 + 5, shape) == "c2 (3, 5)"
    assert latent.dim_name(0, shape) == "c0 (0, 0)" and latent.dim_name(195, shape) == "c3 (6, 6)"
    assert latent.dim_name(124) == "z124" and latent.dim_name(3, (16,)) == "z3"
    for d in range(196):
        assert np.ravel_multi_index(latent.dim_position(d, shape), shape) == d
    assert latent.latent_size_text(shape) == "196 (a 4 × 7 × 7 map)" and latent.latent_size_text((16,)) == "16"
    assert latent.is_spatial(shape) and not latent.is_spatial((16,))


def test_as_maps_is_the_models_own_layout():
    """A flat posterior mean reshaped by as_maps is the encoder's map: channel c, row r, column k where the model put it."""
    torch.manual_seed(0)
    model = build_model(spatial_config()).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        flat = model.encode(x).mean.numpy()  # (3, D)
        raw_mean = model.encoder(x).chunk(2, dim=1)[0].numpy()  # (3, C, h, w) as the encoder made it
    np.testing.assert_array_equal(latent.as_maps(flat, model.latent_shape), raw_mean)
    np.testing.assert_array_equal(latent.as_maps(flat[0], model.latent_shape), raw_mean[0])
    with pytest.raises(ValueError, match="not latents"):
        latent.as_maps(flat[:, :-1], model.latent_shape)
    with pytest.raises(ValueError, match="not latents"):
        latent.as_maps(flat, (flat.shape[1],))


def test_kl_maps_sum_to_the_kl_term_and_match_the_slider_scores():
    rng = np.random.default_rng(0)
    shape = (3, 4, 5)
    means, logvars = rng.normal(size=(50, 60)), rng.normal(scale=0.5, size=(50, 60))
    maps = latent.kl_maps(means, logvars, shape)
    assert maps.shape == shape and (maps >= 0).all()
    total_kl = DiagonalGaussian(torch.from_numpy(means), torch.from_numpy(logvars)).kl().mean().item()
    assert maps.sum() == pytest.approx(total_kl, rel=1e-9)
    totals = latent.position_totals(maps)
    assert totals.shape == (4, 5) and totals.sum() == pytest.approx(total_kl, rel=1e-9)
    np.testing.assert_allclose(totals, maps.sum(0))
    np.testing.assert_allclose(latent.as_maps(latent.dimension_stats(means, logvars).scores, shape), maps, rtol=1e-6)
    assert maps[1, 2, 3] == pytest.approx(0.5 * np.mean(means[:, 33] ** 2 + np.exp(logvars[:, 33]) - 1 - logvars[:, 33]))


def test_symmetric_limit():
    assert latent.symmetric_limit(np.array([[-3.0, 1.0], [2.0, np.nan]])) == 3.0
    assert latent.symmetric_limit(np.zeros((2, 2))) > 0  # a flat map still gets a scale


# ---------------------------------------------------------------- the heat-maps

def test_posterior_mean_heatmaps_one_panel_per_channel_centred_on_zero():
    maps = np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4) - 5.0  # (C, h, w), values -5..18
    fig = spatial.posterior_mean_figure(maps)
    assert [t.type for t in fig.data] == ["heatmap", "heatmap"]
    np.testing.assert_array_equal(np.asarray(fig.data[1].z), maps[1])  # row 0 of the map is z's first row
    axis = fig.layout.coloraxis
    assert (axis.cmin, axis.cmax, axis.cmid) == (-18.0, 18.0, 0.0) and axis.colorscale is not None
    assert fig.layout.yaxis.autorange == "reversed" and fig.layout.yaxis2.autorange == "reversed"  # row 0 on top
    assert fig.layout.yaxis2.scaleanchor == "x2"  # square cells in every panel
    assert [a.text for a in fig.layout.annotations] == ["c0", "c1"]


def test_cost_heatmaps_start_at_zero_and_wrap():
    maps = np.random.default_rng(0).uniform(0, 2, size=(10, 2, 2))
    fig = spatial.cost_maps_figure(maps, "nats")
    assert len(fig.data) == 10 and fig.layout.coloraxis.cmin == 0.0 and fig.layout.coloraxis.cmax == pytest.approx(maps.max())
    assert fig.layout.height > spatial.PANEL_PX  # 10 channels: two rows of MAX_COLUMNS at most
    total = spatial.position_total_figure(maps.sum(0), "nats")
    assert len(total.data) == 1 and total.layout.coloraxis.cmax == pytest.approx(maps.sum(0).max())
    with pytest.raises(ValueError):
        spatial.heatmap_panels(maps[0], ["a"], zmin=0, zmax=1, colorscale="Blues", colorbar_title="")


# ---------------------------------------------------------------- uploads in colour

def red_ring_png(mode: str = "RGBA", size: tuple[int, int] = (48, 40)) -> tuple[bytes, Image.Image]:
    im = Image.new(mode, size, (0, 0, 0, 0) if mode == "RGBA" else (255, 255, 255))
    ImageDraw.Draw(im).ellipse([6, 4, 42, 36], outline=(210, 20, 20, 255) if mode == "RGBA" else (210, 20, 20), width=6)
    return encode(im, "PNG"), im


def test_a_colour_upload_keeps_its_colour_at_the_runs_size():
    data, _ = red_ring_png("RGB", (90, 70))
    for style in ("photo", "emoji"):
        x = images.preprocess_upload(data, RGB_SIZE, 3, style).x
        assert x.shape == (3, RGB_SIZE, RGB_SIZE) and x.dtype == np.uint8
        ink = x.min(0) < 200  # (S, S): where the ring is
        assert ink.any() and (x[0][ink].astype(int) - x[1][ink] > 40).all()  # red, not gray
    assert images.preprocess_upload(data, 64, 1, "photo").x.shape == (1, 64, 64)


def test_an_emoji_runs_upload_is_made_like_the_rendered_emoji():
    data, drawing = red_ring_png()
    assert images.upload_style(EMOJI_DATASET) == "emoji"
    upload = images.preprocess_upload(data, 64, 3, "emoji")
    np.testing.assert_array_equal(upload.x, to_square_rgb(drawing, 64))  # on white, padded to a square, nothing cropped
    assert upload.preview[0, 0].tolist() == [255, 255, 255]  # transparency shown on white
    gray = images.preprocess_upload(data, 64, 1, "emoji").x
    np.testing.assert_array_equal(gray, np.round(upload.x.astype(np.float32).mean(0, keepdims=True)).astype(np.uint8))


# ---------------------------------------------------------------- the live decoder of a resnet

def test_a_spatial_resnet_decoder_is_exported_for_the_browser(spatial_root):
    """GroupNorm, self-attention and nearest upsampling export and match torch: the sliders decode in the browser."""
    run = load_run(spatial_root / "rgb")
    data = decoder_onnx(run)
    assert data is not None
    sidecar = read_json_dict(decoder_paths(run.path, run.epoch)[1])
    assert sidecar["max_abs_error"] <= ONNX_TOLERANCE and sidecar["image_shape"] == [3, RGB_SIZE, RGB_SIZE]


# ---------------------------------------------------------------- the pages

@pytest.fixture
def app(monkeypatch, spatial_root):
    return start_app(monkeypatch, spatial_root)


@pytest.mark.parametrize("name", ["spatial", "spatial-ae", "rgb"])
def test_every_explore_tab_renders_on_a_spatial_run(app, spatial_root, name):
    choose_run(app, spatial_root, name)
    shape = load_run(spatial_root / name).model_config.latent_shape
    assert any(m.value.startswith(f"### {name} ·") and latent.latent_size_text(shape) in m.value for m in app.markdown)
    labels = [s.label for s in app.slider if (s.key or "").startswith("z")]
    assert len(labels) == latent.MAX_SLIDERS and all(SPATIAL_NAME.match(label) for label in labels)
    more = [w for w in app.multiselect if (w.key or "").startswith("extra_dims")]
    assert more and all(SPATIAL_NAME.match(o) for o in more[0].options)  # the "more" control names dims the same way
    for tab in (*TABS, TAB_SPATIAL):
        open_tab(app, tab)
        assert not app.error, (tab, [e.value for e in app.error])
    assert app.session_state[TAB_KEY] == TAB_SPATIAL
    assert image_with_caption(app, "image #").captions[1] == "reconstruction"
    assert any("Colours:" in c.value and "white at 0" in c.value for c in app.caption)
    cost = "nats per image" if name != "spatial-ae" else "no KL"
    assert any("Colours:" in c.value and cost in c.value for c in app.caption)
    app.radio(key=next(r.key for r in app.radio if (r.key or "").startswith("spatial_source"))).set_value("an image chosen here").run()
    assert image_with_caption(ok(app), "image #").captions[0].startswith("image #")


def test_the_map_views_work_on_a_spatial_run(app, spatial_root):
    choose_run(app, spatial_root, "spatial")
    app.selectbox(key="projection").set_value("raw").run()
    x_axis = next(s for s in ok(app).selectbox if (s.key or "").startswith("proj_x"))
    assert x_axis.options and all(SPATIAL_NAME.match(o) for o in x_axis.options)
    app.selectbox(key="projection").set_value("pca").run()
    open_tab(ok(app), "Manifold grid")
    assert image_with_caption(app, "15×15 decodes")
    open_tab(app, "Traversal")
    assert sum(1 for im in app.image for c in im.captions if SPATIAL_NAME.match(c)) == 8  # the default rows, named by position
    open_tab(app, "Training replay")
    app.radio(key="replay_map").set_value("raw").run()
    assert any(SPATIAL_IN_TEXT.search(str(c.proto.spec)) for c in ok(app).get("plotly_chart"))  # the raw dims' axis titles


def test_the_spatial_tab_is_only_for_maps(app, spatial_root):
    choose_run(app, spatial_root, "spatial")
    open_tab(app, TAB_SPATIAL)
    choose_run(app, spatial_root, "conv")  # no map: the tab is gone and the page falls back to the first tab
    assert app.session_state[TAB_KEY] == TABS[0]
    assert image_with_caption(app, "15×15 decodes")
    assert not [c for c in app.caption if "white at 0" in c.value]


def test_a_colour_upload_is_reconstructed_in_colour(app, spatial_root):
    choose_run(app, spatial_root, "rgb")
    open_tab(app, "Reconstruction")
    assert any("padded to a square" in c.value for c in app.caption)  # how an emoji run's upload is prepared
    data, _ = red_ring_png()
    uploader = next(u for u in app.file_uploader if (u.key or "").startswith("recon_upload"))
    uploader.set_value(("ring.png", data, "image/png")).run()
    trio = image_with_caption(ok(app), "input")
    assert trio.captions == ["input", "preprocessed (what the model sees)", "reconstruction"]
    assert not app.error


MAP_TEXT = "98 (a 2 × 7 × 7 map)"  # the 2 x 7 x 7 runs' latent, worded as Explore's header words it


def compare_page(app, names: list[str]):
    at = ok(app.switch_page(COMPARE_PAGE).run())
    at.multiselect(key="compare_runs").set_value(names).run()
    assert not ok(at).warning and not at.error, [w.value for w in [*at.warning, *at.error]]
    captions = [c for im in at.image for c in im.captions]
    for what in ("Interpolation", "Reconstructions", "Prior samples"):
        assert sum(c.startswith(what) for c in captions) == 2, (what, captions)
    return at


def test_compare_two_spatial_runs(app, spatial_root):
    at = compare_page(app, ["spatial", "spatial-ae"])
    quality = at.dataframe[1].value
    assert list(quality["latent"]) == [MAP_TEXT, MAP_TEXT]  # the map's shape, not a bare 98
    assert any("the same z in every run" in c.value for c in at.caption)
    assert sum(f"latent {MAP_TEXT}" in c.value for c in at.caption) >= 2  # each column's run line
    scatters = [str(c.proto.spec) for c in at.get("plotly_chart") if "compare_scatter" in str(c.proto.id)]
    assert len(scatters) == 2 and "aligned to spatial" in scatters[1]


def test_compare_a_spatial_and_a_vector_run(app, spatial_root):
    """A 2 x 7 x 7 map beside a 2-D vector on the same atlas images: every column renders, the scatters are aligned
    (Procrustes on each run's 2-D PCA plane, so the latent sizes need not match), the table words both latents, and the
    prior samples do not claim to share z."""
    at = compare_page(app, ["spatial", "conv"])
    ranking, quality = at.dataframe[0].value, at.dataframe[1].value
    assert list(quality["latent"]) == [MAP_TEXT, "2"]
    assert sorted(ranking["run"]) == ["conv", "spatial"] and list(ranking["rank"]) == [1, 2]  # one dataset, one bound: ranked together
    assert all(np.isfinite(ranking["neg. ELBO"])) and all(np.isfinite(ranking["KL"]))
    assert any(f"the latents differ ({MAP_TEXT} vs 2)" in c.value for c in at.caption)
    assert not any("the same z in every run" in c.value for c in at.caption)
    scatters = [str(c.proto.spec) for c in at.get("plotly_chart") if "compare_scatter" in str(c.proto.id)]
    assert len(scatters) == 2 and "aligned to spatial" in scatters[1]


def test_compare_table_and_run_lines_word_a_map(spatial_root):
    from app import compare
    from app.common import describe_run
    from app.sidebar import run_label
    from trainer.runs import summarize_run

    runs = {name: load_run(spatial_root / name) for name in ("spatial", "spatial-ae", "conv")}
    rows = {r["run"]: r for r in compare.metrics_table(list(runs.values()))}
    assert rows["spatial"]["latent"] == rows["spatial-ae"]["latent"] == MAP_TEXT and rows["conv"]["latent"] == 2
    for name, run in runs.items():  # KL and active units as the history has them; a map counts its 98 elements
        last = run.history[-1]
        assert rows[name]["KL"] == last["test_kl"] and rows[name]["active units"] == last["active_units"] <= run.model_config.latent_dim
    assert rows["spatial"]["rank"] is not None and rows["spatial-ae"]["rank"] is None
    widths = compare.column_widths(list(rows.values()), compare.QUALITY_COLUMNS)
    assert widths["latent"] >= compare.CHAR_PX * len(MAP_TEXT)  # the wording is never cut
    # Alignment: both runs' 2-D PCA planes of the same 40 atlas images, whatever their latent sizes.
    out = compare.aligned_projections([runs["spatial"], runs["conv"]])
    assert [aligned for _, aligned in out] == [True, True] and out[1][0].shape == (40, 2)
    assert compare.same_latents([runs["spatial"], runs["spatial-ae"]]) and not compare.same_latents([runs["spatial"], runs["conv"]])
    vector98 = ModelConfig(arch="resnet", bottleneck="vector", latent_dim=98, widths=TINY_WIDTHS, hidden_dim=0)
    assert vector98.latent_dim == runs["spatial"].model_config.latent_dim
    assert not compare.same_latents([runs["spatial"], SimpleNamespace(model_config=vector98)])  # same size, not the same code
    # The sidebar's label (from the small files) and its line (from the loaded run) say the same.
    summary = summarize_run(spatial_root / "spatial")
    assert f"resnet VAE, latent {MAP_TEXT}" in describe_run(summary) == describe_run(summary, runs["spatial"])
    assert f"latent {MAP_TEXT}" in run_label(summary)
    assert "latent 2 ·" in describe_run(summarize_run(spatial_root / "conv"))
    assert latent.latent_text({"arch": "resnet", "bottleneck": "spatial", "widths": "bad", "latent_dim": 98}) == "98"  # unbuildable: as written
    assert latent.latent_text({"arch": "resnet", "bottleneck": "vector", "latent_dim": 64}) == "64" and latent.latent_text({}) == "?"


def test_the_cached_gaussian_gives_the_uncached_numbers(spatial_root):
    """An AE's fitted Gaussian factored once (DimStats for Explore, explore_cache.fitted_gaussian for Compare) gives
    bit for bit the densities and samples of the one factored on every call, and the density of the textbook formula."""
    from app import compare
    from app import explore_cache as cache

    run = load_run(spatial_root / "spatial-ae")
    means = run.atlas.means[-1]  # (40, 98): fewer codes than dims, a singular covariance
    stats = latent.dimension_stats(means, None)
    assert stats.gaussian is not None and latent.dimension_stats(means, run.atlas.means[-1] * 0).gaussian is None  # a VAE has its prior
    z = np.concatenate([means[:3], latent.prior_samples(2, means.shape[1], 1.0, 7)])  # codes and points off them
    np.testing.assert_array_equal(latent.log_density(z, stats, True), latent.gaussian_log_density(z, stats.mean, stats.cov))
    np.testing.assert_array_equal(latent.code_samples(stats, True, 6, 0.7, 5), latent.fitted_gaussian_samples(stats.mean, stats.cov, 6, 0.7, 5))
    kept = cache.fitted_gaussian(cache.run_key(run), run)
    assert cache.fitted_gaussian(cache.run_key(run), run) is kept  # one object per run epoch
    assert not kept.vecs.flags.writeable and not kept.mean.flags.writeable
    np.testing.assert_array_equal(kept.vecs, stats.gaussian.vecs)
    np.testing.assert_array_equal(latent.atlas_code_samples(means, True, 6, 1.0, 3, kept), latent.atlas_code_samples(means, True, 6, 1.0, 3))
    np.testing.assert_array_equal(latent.atlas_code_samples(means, True, 6, 1.0, 3), latent.code_samples(stats, True, 6, 1.0, 3))
    np.testing.assert_array_equal(compare.prior_samples(run, 4, 3, kept), compare.prior_samples(run, 4, 3))
    # Against inverse and log-determinant on a well-conditioned covariance (more codes than dims).
    rng = np.random.default_rng(0)
    codes = (rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))).astype(np.float32)
    g = latent.fit_gaussian(codes)
    mean, cov = latent.fitted_gaussian(codes)
    c = cov.astype(np.float64) + latent.GAUSSIAN_JITTER * np.eye(6)
    diff = codes[:5].astype(np.float64) - mean
    textbook = -0.5 * (np.einsum("bi,ij,bj->b", diff, np.linalg.inv(c), diff) + np.linalg.slogdet(c)[1] + 6 * np.log(2 * np.pi))
    np.testing.assert_allclose(g.log_density(codes[:5]), textbook, rtol=1e-5)
    np.testing.assert_allclose(np.cov(g.sample(20000, 1.0, 1), rowvar=False), cov, atol=0.1 * np.abs(cov).max())


def test_the_grid_reuses_a_given_pca():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(60, 98)).astype(np.float32)
    stats = latent.dimension_stats(means, None)
    z = means[0]
    fresh = latent.manifold_grid(z, means, stats, False, "pca", (0, 1), 5)
    given = latent.manifold_grid(z, means[:0], stats, False, "pca", (0, 1), 5, latent.fit_pca(means))  # no means needed
    np.testing.assert_array_equal(fresh.z, given.z)
