"""Latent sliders that decode in the browser: a Streamlit custom component (components v1) and its wrapper.

The frontend (`frontend/`: index.html, main.js, style.css and onnxruntime-web's WASM backend vendored under
`frontend/vendor/`) is served by Streamlit from this package: no CDN, no network. It receives the run's
decoder as ONNX bytes (trainer.onnx_export.decoder_onnx), draws one slider per spec and the decoded image,
decodes in the browser on every thumb movement, and reports the final z on release.

The model bytes go to the browser once per run: every report from the browser lists the run keys whose
decoders it holds (`loaded`), and the bytes are sent only while this run is not listed (the browser asks with
{need: run_key} when it lost them, e.g. after its frame was re-created). An unchanged rerun sends an unchanged
message, which Streamlit's message cache turns into a reference: `latent_sliders` keeps sending the z it first
sent for a given (run_key, z_token) rather than echoing back the z the browser reported. A new `z_token` (a new
origin: zero, a prior sample, a clicked image) moves the sliders to `z`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, MutableMapping, Sequence

import numpy as np

FRONTEND_DIR = Path(__file__).resolve().parent / "frontend"
COMPONENT_NAME = "latent_sliders"
DEFAULT_KEY = "latent_sliders"
DEFAULT_SIDE = 224  # px of the decoded image
DEFAULT_STEP = 0.01
SENT_SUFFIX = ":sent"  # session-state key (widget key + suffix) of the z last sent for (run_key, z_token)
Z_DIGITS = 6  # decimals of z in the message (float32 noise would change the message, and so re-send the model)
LAYOUTS = ("row", "column")
FRAME_PAD_PX = 40  # caption and status lines under the image, for the first height before the frame measures itself
ROW_PX = 44  # one slider row, for the same estimate


@dataclass(frozen=True)
class SliderSpec:
    """One slider: latent dimension `dim` between `min` and `max`; `inactive` marks a dimension the decoder ignores."""

    dim: int
    label: str
    min: float
    max: float
    step: float = DEFAULT_STEP
    inactive: bool = False
    help: str = ""


def _z_list(z: np.ndarray | Sequence[float]) -> list[float]:
    arr = np.asarray(z, np.float64).reshape(-1)
    if not np.isfinite(arr).all():
        raise ValueError("z must be finite")
    return [round(float(v), Z_DIGITS) for v in arr]


def component_args(
    model: bytes | None,
    run_key: str,
    sliders: Sequence[SliderSpec],
    z: np.ndarray | Sequence[float],
    *,
    z_token: str,
    image_shape: Sequence[int],
    side: int = DEFAULT_SIDE,
    strip: int = 0,
    layout: str = "row",
    max_height: int | None = None,
    caption: str = "",
    heading: str = "",
    status: str = "",
    hidden: bool = False,
) -> dict[str, Any]:
    """The keyword arguments the frontend receives (JSON except `model`, which travels as bytes)."""
    z_values = _z_list(z)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    shape = [int(n) for n in image_shape]
    if len(shape) != 3 or shape[0] not in (1, 3) or min(shape) < 1:
        raise ValueError(f"image_shape must be (C, H, W) with C 1 or 3, not {tuple(image_shape)}")
    specs = []
    for spec in sliders:
        if not 0 <= spec.dim < len(z_values):
            raise ValueError(f"slider dimension {spec.dim} is outside z's {len(z_values)} dimensions")
        if not (np.isfinite([spec.min, spec.max, spec.step]).all() and spec.min < spec.max and spec.step > 0):
            raise ValueError(f"slider z{spec.dim}: need min < max and step > 0, got {spec.min}, {spec.max}, {spec.step}")
        specs.append({**asdict(spec), "dim": int(spec.dim), "min": float(spec.min), "max": float(spec.max), "step": float(spec.step),
                      "inactive": bool(spec.inactive), "value": min(max(z_values[spec.dim], float(spec.min)), float(spec.max))})
    rows_px = ROW_PX * (len(specs) + bool(heading))
    rows_px = min(rows_px, max_height) if max_height else rows_px
    image_px = round(side * shape[1] / shape[2]) + FRAME_PAD_PX
    height = image_px + rows_px if layout == "column" else max(image_px, rows_px)  # a first guess: the frame then measures itself
    height = 0 if hidden else height
    return {
        "model": model, "run_key": str(run_key), "z": z_values, "z_token": str(z_token), "sliders": specs, "image_shape": shape,
        "side": int(side), "strip": int(strip), "layout": layout, "max_height": int(max_height) if max_height else None,
        "caption": caption, "heading": heading, "status": status, "hidden": bool(hidden), "input_name": "z", "output_name": "image",
        "height": int(height),
    }


def reported_z(value: Any, run_key: str, latent_dim: int) -> np.ndarray | None:
    """The z (D,) the browser last reported for this run, or None (nothing yet, another run's, an error, malformed)."""
    if not isinstance(value, Mapping) or value.get("run_key") != run_key:
        return None
    z = value.get("z")
    if not isinstance(z, list) or len(z) != latent_dim or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in z):
        return None
    arr = np.asarray(z, np.float32)
    return arr if np.isfinite(arr).all() else None


def reported_ready(value: Any, run_key: str) -> bool:
    """Whether a hidden (probe) component reported that the browser loaded this run's decoder."""
    return isinstance(value, Mapping) and value.get("run_key") == run_key and value.get("ready") == run_key


def reported_error(value: Any, run_key: str) -> str | None:
    """The browser's one-line reason when it could not load this run's decoder (then decode on the server), else None."""
    if isinstance(value, Mapping) and value.get("run_key") == run_key and isinstance(value.get("error"), str):
        return value["error"].splitlines()[0][:200] if value["error"].strip() else "unknown error"
    return None


def needs_model(value: Any, run_key: str) -> bool:
    """Whether the browser still needs this run's decoder bytes: not among the run keys its last report says it holds."""
    loaded = value.get("loaded") if isinstance(value, Mapping) else None
    return not (isinstance(loaded, list) and run_key in loaded)


def stable_z(state: MutableMapping[str, Any], key: str, run_key: str, z_token: str, z: np.ndarray | Sequence[float]) -> list[float]:
    """The z to send: the one first sent for (run_key, z_token), so an unchanged origin gives an unchanged message.

    A component without a value (new, or re-created after a rerun that did not draw it) gets `z` itself."""
    sent = state.get(key + SENT_SUFFIX)
    if state.get(key) is not None and isinstance(sent, tuple) and len(sent) == 3 and sent[0] == run_key and sent[1] == z_token:
        return sent[2]
    values = _z_list(z)
    state[key + SENT_SUFFIX] = (run_key, z_token, values)
    return values


def _declare():
    """The component, declared (and registered with the running Streamlit server) on each call: cheap, and
    correct in a fresh runtime; Streamlit serves FRONTEND_DIR at /component/<module>.latent_sliders/."""
    import streamlit.components.v1 as components

    return components.declare_component(COMPONENT_NAME, path=str(FRONTEND_DIR))


def _session_state() -> MutableMapping[str, Any]:
    import streamlit as st

    return st.session_state


def latent_sliders(
    model: bytes | None,
    run_key: str,
    sliders: Sequence[SliderSpec],
    z: np.ndarray | Sequence[float],
    *,
    z_token: str,
    image_shape: Sequence[int],
    key: str = DEFAULT_KEY,
    on_change: Callable[[], None] | None = None,
    **options: Any,
) -> np.ndarray | None:
    """Draw the sliders and the browser-decoded image; the z (D,) last reported on release for this run, or None.

    `model`: ONNX bytes of z (B, D) -> image (B, C, H, W) in [0, 1]; `z` (D,) the starting point, applied by the
    browser whenever `z_token` changes; `options`: side, strip, layout, max_height, caption, heading, status, hidden
    (component_args; a hidden component is a probe that loads the decoder, shows nothing and reports that it could).
    `on_change` runs (as a Streamlit callback) on every report, which is `st.session_state[key]`: {z, loaded, run_key,
    seq} on release, {ready, ...} when a hidden one has loaded the decoder, {need, ...} when the browser asks for the
    bytes, {error, ...} when it cannot load the decoder (reported_error: decode on the server then).
    """
    state = _session_state()
    z_sent = stable_z(state, key, run_key, z_token, z)
    send = model if needs_model(state.get(key), run_key) else None
    args = component_args(send, run_key, sliders, z_sent, z_token=z_token, image_shape=image_shape, **options)
    value = _declare()(**args, key=key, default=None, on_change=on_change)
    return reported_z(value, run_key, len(z_sent))
