"""The in-place Plotly scatter (app.components.scatter_chart) and the plain-JSON pieces app.plots gives it."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from app import plots
from app.components.scatter_chart import FRONTEND_JS, chart_data, clicked_index, drawn_figure, plotly_dir
from app.plots import Overlay


def base_json(n: int = 30) -> str:
    rng = np.random.default_rng(0)
    return plots.figure_json(plots.latent_scatter(rng.normal(size=(n, 2)), np.arange(n) % 3, ["a", "b", "c"], webgl=True))


def test_revision_follows_points_and_overlays_not_the_shapes():
    base = base_json()
    marker = [plots.marker_trace(np.array([0.5, 0.5]), "clicked image", webgl=True)]
    here, there = plots.cross_shapes(np.array([0.0, 0.0]), "slider point"), plots.cross_shapes(np.array([1.0, -1.0]), "slider point")
    first = chart_data(base, marker, here)
    assert chart_data(base, marker, there)["revision"] == first["revision"]  # only the slider point moved: the points stay drawn
    assert chart_data(base, [], here)["revision"] != first["revision"]
    assert chart_data(base_json(31), marker, here)["revision"] != first["revision"]
    json.dumps(first)  # what Streamlit sends: plain JSON


def test_chart_data_rejects_what_the_browser_could_not_draw():
    with pytest.raises(ValueError, match="not JSON"):
        chart_data("{points")
    with pytest.raises(ValueError, match="figure"):
        chart_data("[1, 2]")
    with pytest.raises(ValueError, match="plain JSON"):
        chart_data(base_json(), [{"x": np.zeros(2)}])
    with pytest.raises(ValueError, match="plain JSON"):
        chart_data(base_json(), [{"x": [float("nan")]}])


def test_non_finite_coordinates_become_gaps_not_invalid_json():
    xy = np.array([[0.0, 1.0], [np.nan, 2.0], [3.0, np.inf]], np.float32)
    base = json.loads(plots.figure_json(plots.latent_scatter(xy, np.zeros(3, int), ["a"], webgl=True)))  # strict JSON: no NaN
    assert base["data"][0]["x"] == [0.0, None, 3.0] and base["data"][0]["y"] == [1.0, 2.0, None]
    assert plots.marker_trace(xy, "m")["x"] == [0.0, None, 3.0]


def test_drawn_figure_is_the_points_then_the_overlays_with_the_shapes():
    base = base_json()
    path = plots.overlay_traces([Overlay("path", "A to B", np.array([[0.0, 0.0], [1.0, 1.0]]))], lambda z: z, webgl=True)
    figure = drawn_figure(chart_data(base, path, plots.cross_shapes(np.array([2.0, 3.0]), "slider point")))
    assert [t["name"] for t in figure["data"]] == ["a", "b", "c", "A to B"]
    assert all(isinstance(t[k], list) for t in figure["data"] for k in ("x", "y"))  # plain arrays: base64 ones defeat datarevision
    assert figure["data"][1]["customdata"] == [1, 4, 7, 10, 13, 16, 19, 22, 25, 28]  # each point's atlas index, for the click
    assert {t["type"] for t in figure["data"]} == {plots.WEBGL_TRACE}
    named = [s for s in figure["layout"]["shapes"] if s.get("name") == "slider point"]
    assert len(named) == 1 and (named[0]["xanchor"], named[0]["yanchor"]) == (2.0, 3.0) and named[0]["showlegend"]
    assert all(s["xsizemode"] == s["ysizemode"] == "pixel" and s["layer"] == "above" for s in figure["layout"]["shapes"])


def test_overlay_traces_are_plain_json_and_skip_outlines_on_bent_maps():
    square = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]], np.float32)
    overlays = [Overlay("outline", "grid extent", square), Overlay("marker", "upload", square[:1], {"symbol": "diamond"})]
    linear = plots.overlay_traces(overlays, lambda z: z, linear=True)
    assert [t["name"] for t in linear] == ["grid extent", "upload"] and linear[0]["type"] == plots.SVG_TRACE
    assert [t["name"] for t in plots.overlay_traces(overlays, lambda z: z, linear=False)] == ["upload"]
    assert json.loads(json.dumps(linear))[0]["x"] == [0.0, 1.0, 1.0, 0.0]


def test_clicked_index_takes_only_a_point_of_the_atlas():
    assert clicked_index({"click": 3}, 10) == 3
    assert clicked_index({"click": 10}, 10) is None
    assert clicked_index({"click": True}, 10) is None
    assert clicked_index({"click": None}, 10) is None
    assert clicked_index(None, 10) is None


def test_plotly_comes_from_the_installed_package_and_the_frontend_from_this_folder():
    assert (plotly_dir() / "plotly.min.js").is_file()
    js = FRONTEND_JS.read_text()
    assert "export default function" in js and not re.search(r"https?://", js)  # no other host: plotly.min.js comes from the app
