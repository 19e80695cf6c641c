"""The router, the shared sidebar and the Explore page, driven by streamlit's AppTest on real tiny runs."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from app.components.scatter_chart import drawn_figure
from app.state import TABS
from trainer.runs import load_run

from .helpers import choose_run, image_with_caption, ok, open_tab, start_app


@pytest.fixture
def app(monkeypatch, runs_root):
    """A started AppTest of app/main.py browsing the tiny runs."""
    return start_app(monkeypatch, runs_root)


def by_key_prefix(widgets, prefix: str):
    found = [w for w in widgets if (w.key or "").startswith(prefix)]
    assert found, f"no widget with a key starting {prefix!r}"
    return found[0]


def digit_png(size: tuple[int, int] = (90, 90)) -> bytes:
    im = Image.new("RGB", size, (240, 238, 230))
    ImageDraw.Draw(im).ellipse([25, 15, 65, 75], outline=(20, 20, 20), width=7)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_first_screen_is_a_2d_vae_with_scatter_sliders_and_digit(app, runs_root):
    ok(app)
    assert app.selectbox(key="run_path").value == str(runs_root / "vae2")
    labels = app.selectbox(key="run_path").options
    assert any("ae2" in s and "AE, latent 2" in s and "PSNR" in s for s in labels)
    assert len([s for s in app.slider if (s.key or "").startswith("z")]) == 2
    assert image_with_caption(app, "Decoded z")
    assert any(m.value.startswith("### vae2") for m in app.markdown)


def test_moving_a_slider_changes_the_decoded_image(app):
    before = image_with_caption(app, "Decoded z").value  # media URLs are content hashes of the PNG
    slider = by_key_prefix(app.slider, "z0:")
    slider.set_value(float(slider.max)).run()
    after = image_with_caption(ok(app), "Decoded z").value
    assert after != before
    by_key_prefix(app.slider, "z0:").set_value(float(slider.min)).run()
    assert image_with_caption(ok(app), "Decoded z").value != after


def scatter_figure(at) -> dict:
    """The main scatter as the browser draws it (app.components.scatter_chart): points, overlays, shapes."""
    return drawn_figure(json.loads(next(c for c in at.get("bidi_component") if "slider point" in c.proto.json).proto.json))


def test_the_scatter_moves_only_its_slider_point_when_a_slider_moves(app, runs_root):
    first = json.loads(next(c for c in app.get("bidi_component") if "slider point" in c.proto.json).proto.json)
    assert str(runs_root) not in json.dumps(first)  # no server path reaches the browser (the chart's revisions are hashes)
    cross = [s for s in scatter_figure(app)["layout"]["shapes"] if s.get("name") == "slider point"]
    by_key_prefix(app.slider, "z0:").set_value(float(by_key_prefix(app.slider, "z0:").max)).run()
    moved = json.loads(next(c for c in ok(app).get("bidi_component") if "slider point" in c.proto.json).proto.json)
    assert moved["base"] == first["base"] and moved["revision"] == first["revision"]  # the points are not redrawn
    assert [s for s in scatter_figure(app)["layout"]["shapes"] if s.get("name") == "slider point"] != cross
    assert {t["type"] for t in scatter_figure(app)["data"]} == {"scattergl"}


def test_start_buttons_move_the_sliders(app):
    by_key_prefix(app.button, "start_random").click().run()
    values = [s.value for s in app.slider if (s.key or "").startswith("z")]
    assert any(abs(v) > 0 for v in values)
    by_key_prefix(app.button, "start_zero").click().run()
    assert all(s.value == 0 for s in ok(app).slider if (s.key or "").startswith("z"))


def test_interpolation_strip_has_the_asked_number_of_frames(app):
    open_tab(app, "Interpolation")
    by_key_prefix(app.selectbox, "interp_A_class").set_value(1).run()
    by_key_prefix(app.selectbox, "interp_B_class").set_value(7).run()
    instances = by_key_prefix(app.selectbox, "interp_B_index")
    instances.set_value(instances.options and int(instances.options[-1].removeprefix("image #"))).run()
    app.slider(key="interp_steps").set_value(7).run()
    app.radio(key="interp_method").set_value("spherical").run()
    strip = image_with_caption(ok(app), "t=0.00")
    assert len(strip.value) == 7
    assert strip.captions[-1].startswith("t=1.00")


@pytest.mark.parametrize("run_name", ["ae2", "vae5"])
def test_every_view_renders(app, runs_root, run_name):
    choose_run(app, runs_root, run_name)
    for tab in TABS:
        open_tab(app, tab)
        assert not app.error, (tab, [e.value for e in app.error])
    if run_name == "ae2":
        open_tab(app, "Sampling")
        assert any("no prior" in i.value for i in app.info)
    else:
        for method in ("raw", "pca"):
            app.selectbox(key="projection").set_value(method).run()
            ok(app)
        open_tab(app, "Manifold grid")
        app.radio(key="grid_plane").set_value("raw").run()
        assert image_with_caption(ok(app), "15×15 decodes")


def test_upload_is_reconstructed_and_bad_files_get_one_error_line(app):
    open_tab(app, "Reconstruction")
    uploader = by_key_prefix(app.file_uploader, "recon_upload")
    uploader.set_value(("digit.png", digit_png(), "image/png")).run()
    trio = image_with_caption(ok(app), "input")
    assert trio.captions == ["input", "preprocessed (what the model sees)", "reconstruction"]
    by_key_prefix(app.file_uploader, "recon_upload").set_value(("notes.png", b"plain text, not pixels", "image/png")).run()
    errors = [e.value for e in ok(app).error]
    assert len(errors) == 1 and errors[0].startswith("notes.png:") and "\n" not in errors[0]


def test_a_corrupt_run_shows_its_error_while_the_others_load(monkeypatch, app, runs_root, tmp_path):
    root = tmp_path / "checkpoints"
    root.mkdir()
    for name in ("vae2", "ae2"):
        shutil.copytree(runs_root / name, root / name)
    broken = root / "broken"
    shutil.copytree(runs_root / "vae2", broken)
    weights = sorted(broken.glob("weights-*.safetensors"))[-1]
    weights.write_bytes(weights.read_bytes()[:100])
    app.text_input(key="checkpoints_dir").set_value(str(root)).run()
    assert ok(app).selectbox(key="run_path").value == str(root / "vae2")
    assert any("broken" in e.value for e in app.error)  # listed with its error
    choose_run(app, root, "broken")
    assert any("broken" in e.value and "weights" in e.value for e in app.error)
    assert not [im for im in app.image if any(c.startswith("Decoded z") for c in im.captions)]
    choose_run(app, root, "ae2")
    assert image_with_caption(app, "Decoded z")
    assert [e.value for e in app.error if "broken" not in e.value] == []  # only the broken run's line, in its list


def test_missing_checkpoints_folder_is_one_error(app, tmp_path):
    app.text_input(key="checkpoints_dir").set_value(str(tmp_path / "nowhere")).run()
    assert [e.value for e in ok(app).error] == [f"{tmp_path / 'nowhere'}: no such folder"]


@pytest.mark.slow  # real UMAP
def test_umap_map_is_cached_in_the_run_folder_and_the_replay_writes_nothing(monkeypatch, runs_root, tmp_path):
    """The 5-D run's UMAP map is computed once and kept in its run folder (for these very latents); nothing else is written."""
    from trainer.projections import fingerprint, projection_path

    root = tmp_path / "checkpoints"
    shutil.copytree(runs_root / "vae5", root / "vae5")
    before = {p for p in Path.cwd().rglob("projection-*.npz")}
    at = ok(start_app(monkeypatch, root))
    at.selectbox(key="projection").set_value("umap").run()
    assert any("UMAP 1" in str(c.proto) for c in ok(at).get("bidi_component"))  # the scatter (app.components.scatter_chart)
    run = load_run(root / "vae5")
    cached = projection_path(root / "vae5", "umap", run.epoch)
    with np.load(cached, allow_pickle=False) as npz:
        assert npz["xy"].shape == (len(run.atlas.labels), 2) and str(npz["fingerprint"]) == fingerprint(run.atlas.means[-1])
    assert sorted(p.name for p in (root / "vae5").glob("projection-*.npz")) == [cached.name]
    open_tab(at, "Training replay")
    assert at.select_slider(key=by_key_prefix(at.select_slider, "replay_snapshot").key).value is not None
    assert sorted(p.name for p in (root / "vae5").glob("projection-*.npz")) == [cached.name]
    assert {p for p in Path.cwd().rglob("projection-*.npz")} == before
    np.testing.assert_equal(len(at.button), len({b.key for b in at.button}))


def test_a_low_beta_vae_says_what_its_prior_samples_are(monkeypatch, runs_root, tmp_path):
    """0 < beta < 1 (latent diffusion's regime): the Sampling tab says the codes may sit far from N(0, I), with the KL
    the run spends; a beta-1 VAE shows no such note."""
    from app import bounds, state

    from .helpers import make_run

    make_run(tmp_path, "lowbeta", beta=1e-3)
    app = choose_run(ok(start_app(monkeypatch, tmp_path)), tmp_path, "lowbeta")
    run = load_run(tmp_path / "lowbeta")
    start = np.round(run.atlas.means[-1][0].astype(np.float32), 2)  # the sliders start at atlas image #0's code, and say so
    rid = state.run_id(run)
    assert np.array_equal(app.session_state[state.key(state.ORIGIN, rid)], start) and start.any()
    assert app.session_state[state.slider_key(0, rid)] == pytest.approx(float(start[0]))
    assert any("started at image #0's code" in c.value for c in app.caption)
    open_tab(app, "Sampling")
    kl = run.history[-1]["test_kl"]
    (note,) = [i.value for i in app.info if "< 1" in i.value]
    assert note.startswith("β = 0.001 < 1") and f"{kl:,.1f} nats per test image" in note and "the clicked image" in note
    plain = choose_run(ok(start_app(monkeypatch, runs_root)), runs_root, "vae5")
    assert not plain.session_state[state.key(state.ORIGIN, state.run_id(load_run(runs_root / "vae5")))].any()  # a beta-1 VAE: zero
    assert not any("started at image" in c.value for c in plain.caption)
    open_tab(plain, "Sampling")
    assert not [i.value for i in plain.info if "< 1" in i.value]
    assert bounds.Setting("vae", 1e-4, 1.0, "bce", False).low_beta
    assert not any(bounds.Setting(kind, beta, 1.0, "bce", False).low_beta for kind, beta in (("vae", 0.0), ("vae", 1.0), ("vae", 4.0), ("ae", 0.5)))
