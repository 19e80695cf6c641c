"""Figures of a spatial latent, a (C_z, h, w) map: one small heat-map per channel, row 0 at the top.

Pure functions from arrays to `go.Figure`, no Streamlit; the numbers come from app.latent (as_maps, kl_maps,
position_totals, symmetric_limit). A posterior mean is drawn on a diverging scale centred on 0 (the prior's
mean): blue below, white at 0, red above. A per-element KL (or, for an autoencoder, the variance of its codes)
is drawn on a sequential scale from 0.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.latent import symmetric_limit

DIVERGING_SCALE = "RdBu_r"  # blue below 0, white at 0, red above
SEQUENTIAL_SCALE = "YlOrRd"  # pale at 0, dark red where the code spends the most
PANEL_PX = 170  # height of one row of heat-maps
MAX_COLUMNS = 8  # heat-maps per row before wrapping
TITLE_PX = 24  # room above a row for the panels' titles
MARGIN = dict(l=10, r=10, t=TITLE_PX, b=10)


def channel_names(channels: int) -> list[str]:
    """The panels' titles: c0, c1, ... (dim_name's channel part)."""
    return [f"c{c}" for c in range(channels)]


def heatmap_panels(maps: np.ndarray, titles: Sequence[str], *, zmin: float, zmax: float, colorscale: str, colorbar_title: str,
                   unit: str = "", zmid: float | None = None, columns: int = MAX_COLUMNS) -> go.Figure:
    """Heat-maps (K, h, w), one square panel per map titled by `titles`, all on one colour scale [zmin, zmax];
    row 0 at the top, hover names the panel, row, column and value."""
    maps = np.asarray(maps, np.float64)
    if maps.ndim != 3 or len(titles) != len(maps):
        raise ValueError(f"need maps (K, h, w) and K titles, got {maps.shape} and {len(titles)}")
    k = len(maps)
    cols = max(1, min(k, columns))
    rows = math.ceil(k / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(titles), horizontal_spacing=0.02, vertical_spacing=0.12 / rows)
    for i, (m, title) in enumerate(zip(maps, titles)):
        fig.add_trace(go.Heatmap(z=m, coloraxis="coloraxis", xgap=1, ygap=1,
                                 hovertemplate=f"{title} (row %{{y}}, column %{{x}}): %{{z:.3f}} {unit}<extra></extra>"),
                      row=i // cols + 1, col=i % cols + 1)
        axis = "" if i == 0 else str(i + 1)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{axis}", constrain="domain", showticklabels=False, showgrid=False,
                         zeroline=False, row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, constrain="domain")
    coloraxis = dict(colorscale=colorscale, cmin=zmin, cmax=zmax, colorbar=dict(title=dict(text=colorbar_title), thickness=12))
    if zmid is not None:
        coloraxis["cmid"] = zmid
    fig.update_layout(coloraxis=coloraxis, height=rows * PANEL_PX + TITLE_PX, margin=MARGIN, plot_bgcolor="white")
    fig.update_annotations(font_size=12)
    return fig


def posterior_mean_figure(mean_maps: np.ndarray) -> go.Figure:
    """One image's posterior mean (C_z, h, w) as C_z heat-maps on a diverging scale centred on 0, symmetric about it."""
    limit = symmetric_limit(mean_maps)
    return heatmap_panels(mean_maps, channel_names(len(mean_maps)), zmin=-limit, zmax=limit, zmid=0.0, colorscale=DIVERGING_SCALE,
                          colorbar_title="mean")


def cost_maps_figure(maps: np.ndarray, unit: str) -> go.Figure:
    """Per-element cost maps (C_z, h, w) (mean KL in nats, or code variance) as C_z heat-maps on one scale from 0."""
    top = max(float(np.nanmax(maps)) if np.size(maps) else 0.0, 1e-6)
    return heatmap_panels(maps, channel_names(len(maps)), zmin=0.0, zmax=top, colorscale=SEQUENTIAL_SCALE, colorbar_title=unit, unit=unit)


def position_total_figure(total: np.ndarray, unit: str) -> go.Figure:
    """The cost maps summed over channels (h, w): one heat-map on its own scale from 0."""
    top = max(float(np.nanmax(total)) if np.size(total) else 0.0, 1e-6)
    return heatmap_panels(np.asarray(total)[None], ["sum over channels"], zmin=0.0, zmax=top, colorscale=SEQUENTIAL_SCALE,
                          colorbar_title=unit, unit=unit)
