"""The thumbnail scatter: every atlas point drawn as its own image from a sprite sheet, in WebGL.

A Streamlit custom component (components v1, an iframe); its frontend is the two static files in
`frontend/` (no CDN, no network, no build step). One instanced draw call per frame samples the sheet
texture; drag pans, the wheel zooms about the cursor, hovering shows the image large with its class,
clicking a thumbnail reports its index. See `sprite_scatter`.

Transport: the sheet, the coordinates and the labels travel as bytes arguments (no base64: a third
fewer bytes and nothing to decode). Streamlit hashes each element's message and sends an unchanged one
as a reference only, so a rerun with the same projection resends nothing; the browser keeps its decoded
texture while `sheet_key` (a hash of the PNG) stays the same, and its pan and zoom while `data_key` does.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from app.sprites import SpriteGrid
from trainer.images import class_colors

COMPONENT_NAME = "sprite_scatter"
FRONTEND_DIR = Path(__file__).resolve().parent / "frontend"
DEFAULT_HEIGHT = 580  # px of the drawing area; the legend line above it adds a little
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KEY_BYTES = 16  # blake2b digest size of sheet_key and data_key
NO_SELECTION = -1


@functools.cache
def _component() -> Callable[..., Any]:
    """The declared component (declared on first use: nothing runs at import time)."""
    import streamlit.components.v1 as components

    return components.declare_component(COMPONENT_NAME, path=str(FRONTEND_DIR))


def _digest(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=KEY_BYTES)
    for part in parts:
        h.update(part)
    return h.hexdigest()


def component_args(
    xy: np.ndarray,
    labels: np.ndarray,
    sprite_png: bytes,
    grid: SpriteGrid | Mapping[str, int],
    class_names: Sequence[str],
    colors: Sequence[str] | None = None,
    *,
    selected: int | None = None,
    height: int = DEFAULT_HEIGHT,
    thumb_px: int | None = None,
) -> dict[str, Any]:
    """The arguments the frontend reads, checked: xy float32 and labels int32 as little-endian bytes, the PNG, keys.

    Raises ValueError naming the first thing wrong (shapes, non-finite coordinates, a sheet that is not a
    PNG or holds a different number of thumbnails, a negative label).
    """
    xy = np.asarray(xy)
    labels = np.asarray(labels)
    if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) == 0:
        raise ValueError(f"xy must be (N, 2) with N >= 1, got {xy.shape}")
    if not np.all(np.isfinite(xy)):
        raise ValueError("xy holds NaN or infinite coordinates")
    if labels.shape != (len(xy),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers (N,) = ({len(xy)},), got {labels.dtype} {labels.shape}")
    if labels.min() < 0:
        raise ValueError("labels must be >= 0")
    geometry = grid.to_dict() if isinstance(grid, SpriteGrid) else dict(grid)
    if geometry.get("count") != len(xy):
        raise ValueError(f"the sprite sheet holds {geometry.get('count')} thumbnails for {len(xy)} points")
    if not bytes(sprite_png[: len(PNG_SIGNATURE)]) == PNG_SIGNATURE:
        raise ValueError("sprite_png is not a PNG")
    n_classes = max(len(class_names), int(labels.max()) + 1)
    palette = list(colors) if colors else []
    palette += class_colors(n_classes)[len(palette):]
    names = [str(class_names[c]) if c < len(class_names) else str(c) for c in range(n_classes)]
    xy_bytes = np.ascontiguousarray(xy, dtype="<f4").tobytes()  # (N, 2) x, y interleaved
    label_bytes = np.ascontiguousarray(labels, dtype="<i4").tobytes()  # (N,)
    if selected is not None and not 0 <= int(selected) < len(xy):
        selected = None
    return {
        "xy": xy_bytes,
        "labels": label_bytes,
        "count": len(xy),
        "sheet": bytes(sprite_png),
        "sheet_key": _digest(bytes(sprite_png)),
        "data_key": _digest(xy_bytes, label_bytes),
        "grid": geometry,
        "class_names": names,
        "colors": palette[:n_classes],
        "selected": NO_SELECTION if selected is None else int(selected),
        "height": int(height),
        "thumb_px": int(thumb_px) if thumb_px else 0,  # 0: the frontend picks a size from the point density
    }


def clicked_index(value: Any, count: int) -> int | None:
    """The atlas index in a component value {"index": i, "click": n}, or None if there is none or it is out of range."""
    if not isinstance(value, Mapping):
        return None
    index = value.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        return None
    return index


def sprite_scatter(
    xy: np.ndarray,
    labels: np.ndarray,
    sprite_png: bytes,
    grid: SpriteGrid | Mapping[str, int],
    class_names: Sequence[str],
    colors: Sequence[str] | None = None,
    *,
    key: str,
    selected: int | None = None,
    height: int = DEFAULT_HEIGHT,
    thumb_px: int | None = None,
    on_click: Callable[[], None] | None = None,
) -> int | None:
    """Draw points xy (N, 2) as thumbnails of a sprite sheet (app.sprites.sprite_sheet); return the last clicked index.

    `key` keeps one browser instance (one WebGL context) across reruns and names the value in session state;
    `selected` is ringed; `on_click` runs (no arguments) before the rerun a click causes, like a widget's
    on_change: the value, {"index": i, "click": n}, is then in st.session_state[key] (see `clicked_index`).
    """
    args = component_args(xy, labels, sprite_png, grid, class_names, colors, selected=selected, height=height, thumb_px=thumb_px)
    value = _component()(**args, key=key, default=None, on_change=on_click)
    return clicked_index(value, len(xy))
