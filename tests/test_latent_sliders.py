"""app.components.latent_sliders: the arguments the browser component gets and what its wrapper returns (no browser)."""
from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest

from app.components import latent_sliders as ls
from app.components.latent_sliders import SliderSpec, component_args, needs_model, reported_error, reported_z, stable_z

RUN = "runs/a|epoch-3"
SPECS = [SliderSpec(2, "z2 · 1.20 nats", -3.0, 3.0), SliderSpec(0, "z0 · 0.00 nats · inactive", -0.5, 0.5, inactive=True, help="ignored")]


def args_for(z=(0.25, 0.0, 9.0), **kw) -> dict[str, Any]:
    return component_args(b"onnx", RUN, SPECS, np.asarray(z, np.float32), z_token="t1", image_shape=(1, 28, 28), **kw)


def test_component_args_are_json_with_the_model_as_bytes():
    args = args_for(side=200, strip=9, max_height=300, caption="Decoded in your browser")
    assert args["model"] == b"onnx"
    rest = {k: v for k, v in args.items() if k != "model"}
    assert json.loads(json.dumps(rest)) == rest  # everything else survives JSON unchanged
    assert args["run_key"] == RUN and args["z_token"] == "t1" and args["image_shape"] == [1, 28, 28]
    assert args["z"] == [0.25, 0.0, 9.0]
    assert [s["dim"] for s in args["sliders"]] == [2, 0]  # the caller's order (by KL), not sorted
    first, second = args["sliders"]
    assert first == {"dim": 2, "label": "z2 · 1.20 nats", "min": -3.0, "max": 3.0, "step": 0.01, "inactive": False, "help": "", "value": 3.0}  # 9 clipped
    assert second["inactive"] is True and second["value"] == 0.25 and second["help"] == "ignored"
    assert (args["side"], args["strip"], args["max_height"], args["layout"]) == (200, 9, 300, "row")
    assert args["input_name"] == "z" and args["output_name"] == "image"  # the names trainer.onnx_export gives the graph
    assert args["height"] >= 200  # a first frame height that shows the whole image


def test_z_is_rounded_so_float32_noise_does_not_change_the_message():
    a = args_for(z=np.float32([0.1, 0.2, 0.3]))
    b = args_for(z=np.float64([0.1, 0.2, 0.3]))
    assert a == b and a["z"] == [0.1, 0.2, 0.3]


@pytest.mark.parametrize("bad, match", [
    (dict(z=(0.0, np.nan, 0.0)), "finite"),
    (dict(layout="grid"), "layout"),
    (dict(image_shape=(2, 28, 28)), "C 1 or 3"),
    (dict(image_shape=(28, 28)), r"\(C, H, W\)"),
    (dict(sliders=[SliderSpec(3, "z3", -1.0, 1.0)]), "outside"),
    (dict(sliders=[SliderSpec(0, "z0", 1.0, 1.0)]), "min < max"),
    (dict(sliders=[SliderSpec(0, "z0", -1.0, 1.0, step=0.0)]), "step > 0"),
])
def test_component_args_refuse_what_the_browser_could_not_draw(bad, match):
    kw = dict(z=np.zeros(3), image_shape=(1, 28, 28), sliders=SPECS)
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        component_args(b"", RUN, kw.pop("sliders"), kw.pop("z"), z_token="t", **kw)


def test_reported_z_takes_only_this_runs_well_formed_report():
    assert np.array_equal(reported_z({"z": [0.5, -1.0, 2], "run_key": RUN, "seq": 3}, RUN, 3), np.float32([0.5, -1.0, 2.0]))
    assert reported_z({"z": [0.5, -1.0, 2.0], "run_key": "runs/b|epoch-3"}, RUN, 3) is None  # another run's sliders
    assert reported_z({"z": [0.5, -1.0], "run_key": RUN}, RUN, 3) is None  # wrong length
    assert reported_z({"z": [0.5, True, 1.0], "run_key": RUN}, RUN, 3) is None
    assert reported_z({"z": [0.5, "1", 1.0], "run_key": RUN}, RUN, 3) is None
    assert reported_z({"z": [0.5, float("inf"), 1.0], "run_key": RUN}, RUN, 3) is None
    assert reported_z({"need": RUN, "run_key": RUN}, RUN, 3) is None
    assert reported_z(None, RUN, 3) is None and reported_z("garbage", RUN, 3) is None


def test_reported_error_is_one_line_of_this_run():
    assert reported_error({"error": "no wasm\nstack...", "run_key": RUN}, RUN) == "no wasm"
    assert reported_error({"error": "no wasm", "run_key": "other"}, RUN) is None
    assert reported_error({"z": [0.0], "run_key": RUN}, RUN) is None


def test_the_model_is_sent_until_the_browser_says_it_holds_it():
    assert needs_model(None, RUN)
    assert needs_model({"need": RUN, "loaded": [], "run_key": RUN}, RUN)
    assert needs_model({"z": [0.0], "loaded": ["other"], "run_key": RUN}, RUN)
    assert not needs_model({"z": [0.0], "loaded": ["other", RUN], "run_key": RUN}, RUN)
    assert needs_model({"loaded": RUN}, RUN)  # malformed: send


def test_stable_z_keeps_the_first_z_of_a_token_while_the_component_lives():
    state: dict[str, Any] = {}
    assert stable_z(state, "k", RUN, "t1", [1.0, 2.0]) == [1.0, 2.0]
    state["k"] = {"z": [1.5, 2.0], "run_key": RUN}  # the browser reported a drag
    assert stable_z(state, "k", RUN, "t1", [1.5, 2.0]) == [1.0, 2.0]  # same origin: the same message as before
    assert stable_z(state, "k", RUN, "t2", [0.0, 0.0]) == [0.0, 0.0]  # a new origin moves the sliders
    assert stable_z(state, "k", "other-run", "t2", [7.0, 7.0]) == [7.0, 7.0]
    del state["k"]  # the component was not drawn for a rerun: a new frame starts from the caller's z
    assert stable_z(state, "k", "other-run", "t2", [3.0, 3.0]) == [3.0, 3.0]


class FakeComponent:
    """Stands in for the declared component: records each call's kwargs and returns the widget value."""

    def __init__(self, state: dict[str, Any]):
        self.state = state
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self.state.get(kwargs["key"], kwargs["default"])


@pytest.fixture
def fake(monkeypatch) -> FakeComponent:
    state: dict[str, Any] = {}
    component = FakeComponent(state)
    monkeypatch.setattr(ls, "_session_state", lambda: state)
    monkeypatch.setattr(ls, "_declare", lambda: component)
    return component


def call(z=(0.0, 0.0, 0.0), token="t1", **kw):
    return ls.latent_sliders(b"onnx-bytes", RUN, SPECS, np.asarray(z), z_token=token, image_shape=(1, 28, 28), key="sl", **kw)


def test_wrapper_sends_the_model_once_and_returns_the_reported_z(fake):
    assert call() is None  # nothing reported yet
    first = fake.calls[-1]
    assert first["model"] == b"onnx-bytes" and first["key"] == "sl" and first["default"] is None
    assert first["z"] == [0.0, 0.0, 0.0] and [s["dim"] for s in first["sliders"]] == [2, 0]
    fake.state["sl"] = {"z": [0.5, 0.0, -1.25], "loaded": [RUN], "run_key": RUN, "seq": 1}  # released after a drag
    z = call(z=(0.5, 0.0, -1.25))  # the caller feeds the reported z back
    assert np.array_equal(z, np.float32([0.5, 0.0, -1.25]))
    again = fake.calls[-1]
    assert again["model"] is None  # the browser holds this run's decoder
    assert again["z"] == [0.0, 0.0, 0.0]  # same token: the first message's z, not the echo
    call(z=(1.0, 1.0, 1.0), token="t2")
    assert fake.calls[-1]["z"] == [1.0, 1.0, 1.0] and fake.calls[-1]["z_token"] == "t2"


def test_wrapper_resends_the_model_when_the_browser_asks(fake):
    fake.state["sl"] = {"need": RUN, "loaded": ["another"], "run_key": RUN, "seq": 4}
    assert call() is None
    assert fake.calls[-1]["model"] == b"onnx-bytes"


def test_wrapper_passes_options_and_on_change(fake):
    def changed():
        return None

    call(side=112, strip=7, layout="column", max_height=240, caption="c", heading="h", status="s", on_change=changed)
    kw = fake.calls[-1]
    assert kw["on_change"] is changed
    assert (kw["side"], kw["strip"], kw["layout"], kw["max_height"], kw["caption"], kw["heading"], kw["status"]) == (112, 7, "column", 240, "c", "h", "s")


def test_the_real_component_is_declared_with_its_frontend(tmp_path):
    """In a Streamlit script run: registered under this package's name, JSON args and the model as a bytes argument."""
    from streamlit.testing.v1 import AppTest

    def script():
        import numpy as np
        import streamlit as st

        from app.components.latent_sliders import SliderSpec, latent_sliders

        z = latent_sliders(b"\x08\x07graph", "run-a|3", [SliderSpec(1, "z1", -1.0, 1.0)], np.zeros(2), z_token="0", image_shape=(1, 28, 28))
        st.write(f"z={z}")

    at = AppTest.from_function(script).run()
    assert not at.exception
    assert at.markdown[0].value == "z=None"
    (element,) = at.get("component_instance")
    proto = element.proto
    assert proto.component_name == "app.components.latent_sliders.latent_sliders"
    args = json.loads(proto.json_args)
    assert args["run_key"] == "run-a|3" and args["sliders"][0]["dim"] == 1 and "model" not in args
    assert [(a.key, a.bytes) for a in proto.special_args] == [("model", b"\x08\x07graph")]


def test_the_frontend_is_self_contained():
    """Every asset index.html loads is in the package (no CDN, no network) and onnxruntime-web is set up for WASM, one thread."""
    index = (ls.FRONTEND_DIR / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', index)
    assert refs and all(not re.match(r"^[a-z]+:|^//", r) for r in refs)
    assert all((ls.FRONTEND_DIR / r).is_file() for r in refs)
    main = (ls.FRONTEND_DIR / "main.js").read_text()
    assert not re.search(r"https?://", main + (ls.FRONTEND_DIR / "style.css").read_text())
    assert 'new URL("vendor/onnxruntime-web/", document.baseURI)' in main and "ort.env.wasm.numThreads = 1" in main
    vendor = ls.FRONTEND_DIR / "vendor" / "onnxruntime-web"
    for name in ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"):
        assert (vendor / name).stat().st_size > 0
    assert (vendor / "ort-wasm-simd-threaded.wasm").read_bytes()[:4] == b"\0asm"


# ---------------------------------------------------------------- the Explore page (AppTest: no browser, so no reports)

def live_component(at):
    """The Explore page's latent-slider component and its JSON args, or None."""
    found = [e for e in at.get("component_instance") if e.proto.component_name.endswith(".latent_sliders")]
    return (found[0], json.loads(found[0].proto.json_args)) if found else None


def z_slider_keys(at) -> list[str]:
    return [s.key for s in at.slider if re.match(r"z\d+:", s.key or "")]


@pytest.fixture
def explore(monkeypatch, runs_root, tmp_path):
    """The Explore page on a copy of the tiny 2-D VAE (the page writes the decoder graph into the run folder)."""
    import shutil

    import streamlit as st

    from .helpers import ok, start_app

    root = tmp_path / "checkpoints"
    shutil.copytree(runs_root / "vae2", root / "vae2")
    st.cache_resource.clear()
    return ok(start_app(monkeypatch, root)), root


def test_explore_loads_the_decoder_unseen_beside_the_server_sliders(explore):
    """Until the browser says it can decode, the Streamlit sliders stay; the component is a hidden probe with the graph."""
    at, root = explore
    element, args = live_component(at)
    assert args["hidden"] is True and args["height"] == 0
    ((key, graph),) = [(a.key, a.bytes) for a in element.proto.special_args]
    assert key == "model" and graph == (root / "vae2" / "decoder-000002.onnx").read_bytes()
    assert [s["dim"] for s in args["sliders"]] == [int(k[1:].split(":")[0]) for k in z_slider_keys(at)]  # the same dims, same order
    assert len(z_slider_keys(at)) == 2
    assert any(c.startswith("Decoded z") for im in at.image for c in im.captions)


def test_explore_switches_to_the_live_sliders_once_the_browser_can_decode(explore):
    from app.state import LIVE_OK_KEY

    from .helpers import ok

    at, _ = explore
    at.session_state[LIVE_OK_KEY] = True  # what the probe's {ready} report does through its callback
    ok(at.run())
    _, args = live_component(at)
    assert args["hidden"] is False and "in your browser" in args["caption"] and "2 dimensions" in args["heading"]
    assert z_slider_keys(at) == []  # the server sliders and digit are gone...
    assert not any(c.startswith("Decoded z") for im in at.image for c in im.captions)
    token = args["z_token"]
    next(b for b in at.button if (b.key or "").startswith("start_random")).click()
    ok(at.run())
    _, moved = live_component(at)
    assert moved["z_token"] != token and moved["z"] != args["z"]  # ...and the start buttons move the live sliders


def test_explore_falls_back_to_the_server_when_the_browser_fails(explore):
    from app.state import LIVE_FAILED_KEY, LIVE_OK_KEY

    from .helpers import ok

    at, _ = explore
    _, args = live_component(at)
    at.session_state[LIVE_OK_KEY] = True
    at.session_state[LIVE_FAILED_KEY] = {args["run_key"]: "no WebAssembly"}
    ok(at.run())
    assert live_component(at) is None and len(z_slider_keys(at)) == 2


def test_explore_keeps_the_server_path_for_a_decoder_that_does_not_export(monkeypatch, runs_root, tmp_path):
    import shutil

    import streamlit as st

    from app.state import LIVE_OK_KEY

    from .helpers import ok, start_app

    monkeypatch.setattr("trainer.onnx_export.decoder_onnx", lambda run: None)
    shutil.copytree(runs_root / "vae2", tmp_path / "vae2")
    st.cache_resource.clear()
    at = ok(start_app(monkeypatch, tmp_path))
    at.session_state[LIVE_OK_KEY] = True
    ok(at.run())
    assert live_component(at) is None and len(z_slider_keys(at)) == 2
    assert any(c.startswith("Decoded z") for im in at.image for c in im.captions)
