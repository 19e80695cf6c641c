"""Plotly figures for the explorer: the latent scatter and its overlays, training curves, small charts.

Pure functions from arrays (or runs) to `go.Figure`; no Streamlit. Also `number`, the one way the app writes a
count or a measurement in text (thousands separated: 2,000).

Every WebGL (scattergl) chart holds one of the browser's few WebGL contexts (Chromium keeps 16 per page and
drops the oldest, blanking its chart): only the Explore page's main scatter uses WebGL (`webgl=True`); the other
scatters, a few thousand points at most, are SVG.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import plotly.graph_objects as go

from trainer.images import class_colors
from trainer.runs import Run

SCATTER_HEIGHT = 580
MARKER_SIZE = 5
OVERLAY_COLOR = "#111111"
PATH_COLOR = "#d62728"
OUTLINE_COLOR = "#444444"
OVERLAY_MARKER_SIZE = 12
CROSS_WIDTH, CROSS_HALO = 2.5, 1.5  # px of the slider point's cross and of the white line around it
CHART_MARGIN = dict(l=10, r=10, t=10, b=10)
CURVES_MARGIN = dict(l=10, r=10, t=30, b=10)
CURVES_LEGEND = dict(orientation="h", yanchor="bottom", y=1.02, x=0)
CURVES_HEIGHT, LOSS_HEIGHT, SMALL_CHART_HEIGHT = 360, 300, 220
UNIT_TICKS_UP_TO = 10  # epochs axis: one tick per epoch for short runs
SVG_TRACE, WEBGL_TRACE = "scatter", "scattergl"
# Legends away from the top right, where Plotly's toolbar appears on hover: under the plot (wide charts) or
# beside it (short ones).
LEGEND_BELOW = dict(orientation="h", yref="container", yanchor="bottom", y=0.0, x=0.0)
LEGEND_RIGHT = dict(orientation="v", yanchor="top", y=1.0, x=1.02)
THRESHOLD_COLOR = PATH_COLOR
# Streamlit's light theme for a chart Streamlit does not draw itself (app.components.scatter_chart; st.plotly_chart
# themes its own): its font and text colour, white paper, horizontal grid lines only.
TEXT_COLOR, GRID_COLOR = "#31333F", "#E6EAF1"
PAGE_TEMPLATE = dict(layout=dict(
    font=dict(family='"Source Sans", "Source Sans Pro", sans-serif', size=12, color=TEXT_COLOR),
    paper_bgcolor="white", plot_bgcolor="white",
    xaxis=dict(showgrid=False, zeroline=False, automargin=True, ticks="outside", tickcolor=GRID_COLOR, linecolor=GRID_COLOR),
    yaxis=dict(gridcolor=GRID_COLOR, zeroline=False, automargin=True),
    hoverlabel=dict(bgcolor="white", bordercolor=GRID_COLOR, font=dict(color=TEXT_COLOR)),
))


# Where a run's training time is shown (the Compare table, the Train page's job cards).
WALL_SECONDS_HELP = ("Wall-clock seconds of training and evaluation on the machine that trained the run, as it was at the time: "
                     "not comparable across runs trained at different times or on a shared machine. The bundled runs were trained "
                     "while other jobs shared the CPU: an epoch of the latent-2 VAE took 2 to 73 s, one of its beta-4 twin (the same "
                     "network and data) 1.8 s.")


def number(value: float, digits: int = 0) -> str:
    """A count or measurement as the app writes it in text: thousands separated, `digits` decimals (2,000; 1,234.5)."""
    return f"{value:,.{digits}f}"


def class_name(class_names: list[str], label: int) -> str:
    return class_names[label] if 0 <= label < len(class_names) else str(label)


def latent_scatter(
    xy: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    *,
    axis_titles: tuple[str, str] = ("z0", "z1"),
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    title: str | None = None,
    height: int = SCATTER_HEIGHT,
    webgl: bool = False,
    legend: dict | None = None,
) -> go.Figure:
    """Scatter of points (N, 2), one trace per class; customdata holds each point's atlas index.

    SVG unless `webgl` (see the module's note on WebGL contexts); the legend under the plot unless `legend`
    (e.g. LEGEND_RIGHT) places it elsewhere. Built from plain dicts without plotly's per-property validation (`_validate=False`): that takes a
    few ms instead of tens, and it reruns on every slider move. st.plotly_chart still validates the figure.
    """
    labels = np.asarray(labels)
    n_classes = max(len(class_names), int(labels.max()) + 1 if len(labels) else 0)
    colors = class_colors(n_classes)
    data = []
    for c in np.unique(labels):
        idx = np.nonzero(labels == c)[0]
        name = class_name(class_names, int(c))
        data.append(dict(
            type=WEBGL_TRACE if webgl else SVG_TRACE, x=xy[idx, 0], y=xy[idx, 1], mode="markers", name=name, customdata=idx,
            marker=dict(size=MARKER_SIZE, color=colors[int(c)], opacity=0.75),
            hovertemplate=f"class {name}<br>image #%{{customdata}}<extra></extra>",
        ))
    layout = dict(
        height=height, margin=dict(l=10, r=10, t=60 if title else 30, b=10), title=dict(text=title) if title else None,
        xaxis=dict(title=dict(text=axis_titles[0])), yaxis=dict(title=dict(text=axis_titles[1])),
        legend=dict(itemsizing="constant", **(LEGEND_BELOW if legend is None else legend)),
        dragmode="pan", uirevision="latent-scatter", clickmode="event+select",
    )
    if x_range is not None:
        layout["xaxis"].update(range=list(x_range), autorange=False)
    if y_range is not None:
        layout["yaxis"].update(range=list(y_range), autorange=False)
    return go.Figure(data=data, layout={k: v for k, v in layout.items() if v is not None}, _validate=False)


def trace_type(fig: go.Figure) -> str:
    """The scatter type of the figure's points: overlays on WebGL points must be WebGL too (SVG would be drawn
    underneath them), and on SVG points SVG (no WebGL context for a marker)."""
    return WEBGL_TRACE if any(t.type == WEBGL_TRACE for t in fig.data) else SVG_TRACE


def plain_list(a: np.ndarray) -> list:
    """An array as a plain list for JSON, a non-finite number as None (null: Plotly leaves the point out; NaN is not JSON)."""
    a = np.asarray(a)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        return np.where(np.isfinite(a), a, None).tolist()
    return a.tolist()


def _columns(xy: np.ndarray) -> tuple[list[float], list[float]]:
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    return plain_list(xy[:, 0]), plain_list(xy[:, 1])


def marker_trace(xy: np.ndarray, name: str, symbol: str = "x", color: str = OVERLAY_COLOR, size: int = 16, *, webgl: bool = False) -> dict:
    """A highlighted point (2,) or points (B, 2) as a plain-JSON trace (lists, not arrays)."""
    x, y = _columns(xy)
    return dict(type=WEBGL_TRACE if webgl else SVG_TRACE, x=x, y=y, mode="markers", name=name, hovertemplate=f"{name}<extra></extra>",
                marker=dict(symbol=symbol, size=size, color=color, line=dict(width=2, color="white")))


def path_trace(xy: np.ndarray, name: str, color: str = PATH_COLOR, *, webgl: bool = False) -> dict:
    """A path (B, 2) with its frames marked, as a plain-JSON trace."""
    x, y = _columns(xy)
    return dict(type=WEBGL_TRACE if webgl else SVG_TRACE, x=x, y=y, mode="lines+markers", name=name, line=dict(color=color, width=2),
                marker=dict(size=7, color=color), hovertemplate=f"{name} frame %{{pointNumber}}<extra></extra>")


def outline_trace(xy: np.ndarray, name: str, color: str = OUTLINE_COLOR, *, webgl: bool = False) -> dict:
    """A closed outline (B, 2) such as the manifold grid's extent, as a plain-JSON trace."""
    x, y = _columns(xy)
    return dict(type=WEBGL_TRACE if webgl else SVG_TRACE, x=x, y=y, mode="lines", name=name, line=dict(color=color, width=2, dash="dash"),
                hoverinfo="skip")


def add_marker(fig: go.Figure, xy: np.ndarray, name: str, symbol: str = "x", color: str = OVERLAY_COLOR, size: int = 16) -> go.Figure:
    """A highlighted point (2,) or points (B, 2) drawn over the scatter."""
    fig.add_trace(marker_trace(xy, name, symbol, color, size, webgl=trace_type(fig) == WEBGL_TRACE))
    return fig


def add_path(fig: go.Figure, xy: np.ndarray, name: str, color: str = PATH_COLOR) -> go.Figure:
    """A path (B, 2) with its frames marked, drawn over the scatter."""
    fig.add_trace(path_trace(xy, name, color, webgl=trace_type(fig) == WEBGL_TRACE))
    return fig


def add_outline(fig: go.Figure, xy: np.ndarray, name: str, color: str = OUTLINE_COLOR) -> go.Figure:
    """A closed outline (B, 2) such as the manifold grid's extent."""
    fig.add_trace(outline_trace(xy, name, color, webgl=trace_type(fig) == WEBGL_TRACE))
    return fig


def cross_shapes(xy: np.ndarray, name: str, color: str = OVERLAY_COLOR, size: int = 16) -> list[dict]:
    """A point (2,) marked by an × of `size` px as layout shapes (a white halo under a dark cross), listed in the legend as `name`.

    A shape, not a trace: moving it redraws the shape alone (app.components.scatter_chart), where moving a trace
    redraws every point. Its arms keep their pixel size at any zoom (xsizemode / ysizemode "pixel")."""
    x, y = (float(v) for v in np.asarray(xy, np.float64).reshape(2))
    r = size / 2
    cross = dict(type="path", path=f"M{-r},{-r}L{r},{r}M{-r},{r}L{r},{-r}", xref="x", yref="y", xsizemode="pixel", ysizemode="pixel",
                 xanchor=x, yanchor=y, layer="above")
    return [dict(cross, line=dict(color="white", width=CROSS_WIDTH + 2 * CROSS_HALO)),
            dict(cross, line=dict(color=color, width=CROSS_WIDTH), name=name, showlegend=True)]


class _PlainJSON(json.JSONEncoder):
    """numpy arrays as plain lists and numpy scalars as numbers."""

    def default(self, o: Any) -> Any:
        if isinstance(o, np.ndarray):
            return plain_list(o)
        if isinstance(o, np.generic):
            return o.item()
        return super().default(o)


def figure_json(fig: go.Figure) -> str:
    """The figure as Plotly JSON text with plain arrays, unvalidated (the figures here are built from dicts).

    Not plotly.io's base64 typed arrays: Plotly.react decodes those anew on every call, and a typed array never
    compares equal to the last one, so each call would redraw every point; plain arrays under an unchanged
    `layout.datarevision` are taken as unchanged (app.components.scatter_chart)."""
    figure = {"data": [t.to_plotly_json() for t in fig.data], "layout": fig.layout.to_plotly_json()}  # arrays as given, not base64
    return json.dumps(figure, cls=_PlainJSON, separators=(",", ":"), allow_nan=False)


@dataclass
class Overlay:
    """Something drawn over the scatter, given in latent space (the scatter's projection places it)."""

    kind: str  # "marker", "path" or "outline"
    name: str
    z: np.ndarray  # (B, D)
    style: dict = field(default_factory=dict)  # marker symbol, color, size


def overlay_traces(overlays: Sequence[Overlay], to_xy: Callable[[np.ndarray], np.ndarray], *, linear: bool = True,
                   webgl: bool = False) -> list[dict]:
    """Each overlay at to_xy(overlay.z) (B, 2) as a plain-JSON trace: paths and outlines as lines, the rest as markers.

    `linear`: whether to_xy is a linear map (PCA, raw dims). An outline (a region's border, like the manifold
    grid's extent) is drawn only then: a UMAP / t-SNE map places its border points one by one, and the polygon
    they make encloses nothing in particular."""
    traces = []
    for ov in overlays:
        if ov.kind == "outline" and not linear:
            continue
        xy = to_xy(ov.z)
        if ov.kind == "path":
            traces.append(path_trace(xy, ov.name, webgl=webgl))
        elif ov.kind == "outline":
            traces.append(outline_trace(xy, ov.name, webgl=webgl))
        else:
            traces.append(marker_trace(xy, ov.name, symbol=ov.style.get("symbol", "diamond"), color=ov.style.get("color", PATH_COLOR),
                                       size=ov.style.get("size", OVERLAY_MARKER_SIZE), webgl=webgl))
    return traces


def add_overlays(fig: go.Figure, overlays: Sequence[Overlay], to_xy: Callable[[np.ndarray], np.ndarray], *, linear: bool = True) -> go.Figure:
    """Draw each overlay at to_xy(overlay.z) (B, 2) over the scatter (see `overlay_traces`)."""
    for trace in overlay_traces(overlays, to_xy, linear=linear, webgl=trace_type(fig) == WEBGL_TRACE):
        fig.add_trace(trace)
    return fig


def line_chart(y: np.ndarray, *, x: np.ndarray | None = None, x_title: str = "", y_title: str = "", height: int = SMALL_CHART_HEIGHT,
               levels: Sequence[tuple[float, str]] = ()) -> go.Figure:
    """A small line chart with markers, e.g. the prior log-density along an interpolation; `levels` are labelled
    dotted horizontal lines (value, label), e.g. the densities of the path's two ends."""
    x = np.arange(len(y)) if x is None else x
    fig = go.Figure(go.Scatter(x=x, y=y, mode="lines+markers", line=dict(color=PATH_COLOR)))
    for value, label in levels:
        fig.add_hline(y=float(value), line_dash="dot", line_color=OUTLINE_COLOR, annotation_text=label, annotation_position="top left")
    fig.update_layout(height=height, margin=CHART_MARGIN, xaxis_title=x_title, yaxis_title=y_title, showlegend=False)
    return fig


def bar_chart(y: np.ndarray, labels: list[str], *, title: str = "", y_title: str = "", threshold: float | None = None,
              threshold_label: str = "", height: int = SMALL_CHART_HEIGHT) -> go.Figure:
    """Bars per latent dimension (e.g. KL in nats) under `title`, with an optional dashed threshold line named `threshold_label`."""
    fig = go.Figure(go.Bar(x=labels, y=y, marker_color="#1f77b4"))
    if threshold is not None:
        fig.add_hline(y=threshold, line_dash="dash", line_color=THRESHOLD_COLOR, annotation_text=threshold_label,
                      annotation_position="top right", annotation_font_color=THRESHOLD_COLOR)
    fig.update_layout(height=height, margin=CURVES_MARGIN if title else CHART_MARGIN, yaxis_title=y_title, showlegend=False,
                      title=dict(text=title, x=0.0, xanchor="left") if title else None)
    return fig


# ---------------------------------------------------------------- training curves

def epoch_axis(fig: go.Figure, last_epoch: int) -> go.Figure:
    """Whole-epoch ticks on short runs (plotly would otherwise label 1.2, 1.4, ...)."""
    if last_epoch <= UNIT_TICKS_UP_TO:
        fig.update_xaxes(dtick=1)
    return fig


RowValue = Callable[[dict[str, Any]], "float | None"]  # a number derived from one history row (None: not in that row)


def row_value(key: str | RowValue, row: dict[str, Any]) -> float | None:
    """History key `key` of a row, or `key(row)` for a derived number; None unless a number."""
    value = key(row) if callable(key) else row.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _history_trace(history: Sequence[dict[str, Any]], key: str | RowValue, name: str) -> go.Scatter:
    """History key `key` (or a number derived from each row) against epoch, skipping rows without one."""
    points = [(r["epoch"], v) for r in history if (v := row_value(key, r)) is not None]
    return go.Scatter(x=[e for e, _ in points], y=[v for _, v in points], mode="lines+markers", name=name)


def curves_figure(runs: Sequence[Run], key: str | RowValue, label: str | None = None) -> go.Figure:
    """One line per run of history key `key` (or a number derived from each row) against epoch; `label` titles the y axis."""
    fig = go.Figure([_history_trace(run.history, key, run.name) for run in runs])
    fig.update_layout(xaxis_title="epoch", yaxis_title=label or str(key), height=CURVES_HEIGHT, margin=CURVES_MARGIN, legend=CURVES_LEGEND)
    return epoch_axis(fig, max((r.epoch for r in runs), default=0))


OBJECTIVE_CURVES = (("train objective", "train_loss"), ("test objective", "test_loss"))


def loss_figure(history: Sequence[dict[str, Any]], curves: Sequence[tuple[str, str | RowValue]] = OBJECTIVE_CURVES, y_title: str = "objective") -> go.Figure:
    """Curves of one run against epoch: (name, history key or a number derived from each row), by default the training
    objective on train and test; `y_title` says what the numbers are in (nats only for true log-densities)."""
    fig = go.Figure([_history_trace(history, key, name) for name, key in curves])
    fig.update_layout(xaxis_title="epoch", yaxis_title=y_title, height=LOSS_HEIGHT, margin=CURVES_MARGIN, legend=CURVES_LEGEND)
    return epoch_axis(fig, max((int(r.get("epoch", 0)) for r in history), default=0))

