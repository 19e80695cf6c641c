"""A Plotly scatter that is updated in place: a Streamlit custom component (components v2, drawn in the page).

`st.plotly_chart` makes the figure part of its element's identity, so each rerun that moves one marker mounts a
new chart in the browser (a new WebGL context, shaders and layout passes: 0.3-0.6 s without a GPU). This
component keeps its chart across reruns and calls `Plotly.react` (frontend/scatter_chart.js): the points travel as
one JSON text (`base`, cached by the caller) with a `revision` that changes only with them or with `traces`, so
a rerun that only moves `shapes` (the slider point) redraws the shapes alone.

No CDN: plotly.js is the `plotly.min.js` of the installed plotly package (the version that builds the figures),
served by Streamlit from that package's folder, declared as a components-v1 asset path. The chart lives in the
page's own DOM (not an iframe), like Streamlit's charts.
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

COMPONENT_NAME = "latent_scatter_chart"
PLOTLY_ASSETS = "plotly_js"  # components-v1 name under which Streamlit serves plotly's package_data folder
PLOTLY_FILE = "plotly.min.js"
FRONTEND_JS = Path(__file__).resolve().parent / "frontend" / "scatter_chart.js"
REVISION_BYTES = 12  # blake2b digest size of the points' revision
DEFAULT_HEIGHT = 580


def _digest(*parts: str) -> str:
    h = hashlib.blake2b(digest_size=REVISION_BYTES)
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def plotly_dir() -> Path:
    """The folder of the installed plotly package that holds plotly.min.js."""
    import plotly

    return Path(plotly.__file__).resolve().parent / "package_data"


def chart_data(
    base: str,
    traces: Sequence[Mapping[str, Any]] = (),
    shapes: Sequence[Mapping[str, Any]] = (),
    *,
    height: int = DEFAULT_HEIGHT,
    config: Mapping[str, Any] | None = None,
    plotly_path: str = PLOTLY_FILE,
) -> dict[str, Any]:
    """What the frontend receives: `base` (figure JSON text: data and layout), `traces` drawn after its data,
    layout `shapes`, and `revision`, which changes when base or traces do (not when only shapes move).

    Raises ValueError when base is not a figure's JSON or traces / shapes are not JSON.
    """
    try:
        figure = json.loads(base)
    except ValueError as e:
        raise ValueError(f"base is not JSON: {e}") from None
    if not isinstance(figure, dict) or not isinstance(figure.get("data"), list) or not isinstance(figure.get("layout", {}), dict):
        raise ValueError("base must be a figure's JSON: an object with a data list and a layout object")
    traces, shapes = [dict(t) for t in traces], [dict(s) for s in shapes]
    try:
        traces_text = json.dumps(traces, sort_keys=True, allow_nan=False)
        json.dumps(shapes, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"traces and shapes must be plain JSON (lists, not arrays; no NaN): {e}") from None
    return {
        "base": base, "traces": traces, "shapes": shapes, "revision": _digest(base, traces_text), "height": int(height),
        "config": dict(config or {}), "plotly": plotly_path,
    }


def drawn_figure(data: Mapping[str, Any]) -> dict[str, Any]:
    """The figure the browser draws from `chart_data(...)`: base's data then traces, base's layout with the shapes."""
    figure = json.loads(data["base"])
    figure["data"] = list(figure["data"]) + list(data.get("traces", []))
    figure["layout"] = {**figure.get("layout", {}), "shapes": list(data.get("shapes", []))}
    return figure


def clicked_index(value: Any, count: int) -> int | None:
    """The atlas index (a point's customdata) in the component's value {"click": i}, or None (none, out of range)."""
    index = value.get("click") if isinstance(value, Mapping) else None
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        return None
    return index


def _plotly_path() -> str:
    """The URL path, relative to the app, of plotly.min.js; declares plotly's folder with the running server (cheap)."""
    import streamlit.components.v1 as components

    return f"component/{components.declare_component(PLOTLY_ASSETS, path=str(plotly_dir())).name}/{PLOTLY_FILE}"


@functools.cache
def _mount() -> Callable[..., Any]:
    """The registered component's mount command (registered once; Streamlit re-registers it with a new runtime)."""
    import streamlit as st

    return st.components.v2.component(COMPONENT_NAME, js=FRONTEND_JS.read_text(), isolate_styles=False)


def scatter_chart(
    base: str,
    traces: Sequence[Mapping[str, Any]] = (),
    shapes: Sequence[Mapping[str, Any]] = (),
    *,
    key: str,
    count: int,
    height: int = DEFAULT_HEIGHT,
    config: Mapping[str, Any] | None = None,
    on_click: Callable[[], None] | None = None,
) -> int | None:
    """Draw the figure `base` (JSON text, e.g. plots.figure_json) with `traces` and `shapes` added; the index of the
    point clicked in this run, if any (a point's customdata, below `count`).

    `key` keeps one chart (one WebGL context) across reruns; `on_click` runs (no arguments) before the rerun a
    click causes; the click is then `st.session_state[key]["click"]` (see `clicked_index`).
    """
    data = chart_data(base, traces, shapes, height=height, config=config, plotly_path=_plotly_path())
    result = _mount()(key=key, data=data, on_click_change=on_click or (lambda: None))
    return clicked_index(result, count)
