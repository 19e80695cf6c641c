"""Images for the explorer: display scaling, uploads preprocessed like the run's data, replay frames and GIFs.

Pure numpy / PIL, no Streamlit. Pixel arrays are uint8; batches are (N, C, H, W) like the atlas, single
display images (H, W) for grayscale or (H, W, 3) for colour. Decoding latents, tiling and PNG encoding
live in trainer.images (the study uses them too) and are imported here, so the pages find every image
helper in this module.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from trainer.emoji import BACKGROUND as EMOJI_BACKGROUND
from trainer.emoji import EMOJI_DATASET
from trainer.images import (  # noqa: F401  (balanced_cols, decode_uint8, png_bytes, reconstruct_uint8, tile, to_display: the pages use them from here)
    IMAGE_EXTENSIONS,
    LIGHT,
    MAX_IMAGE_PIXELS,
    ImageError,
    balanced_cols,
    decode_uint8,
    fit_square,
    flatten_alpha,
    open_image,
    png_bytes,
    reconstruct_uint8,
    tile,
    to_display,
)

MAX_UPLOAD_BYTES = 10 * 2**20
MAX_UPLOAD_PIXELS = MAX_IMAGE_PIXELS  # uploads and folder datasets share one decoder and its limits
UPLOAD_TYPES = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)  # what the file picker offers
MNIST_SIZE, MNIST_BOX = 28, 20  # MNIST digits fit a 20x20 box, centred by mass in 28x28
INK_FLOOR = 0.2  # after stretching to [0, 1], fainter pixels are background (paper texture, JPEG noise)
DISPLAY_PIXELS = 8  # nearest-neighbour upscale of a 28x28 digit for display
PREVIEW_SIDE = 256  # the uploaded original is shown at most this large
UPLOAD_STYLES = ("digit", "object", "photo", "emoji")


class UploadError(ValueError):
    """An upload that cannot be used; the message is one line for st.error."""


# ---------------------------------------------------------------- display

def upscale(image: np.ndarray, factor: int = DISPLAY_PIXELS) -> np.ndarray:
    """Nearest-neighbour enlargement of a display image (H, W[, 3]) so pixels stay crisp in the browser."""
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def display_scale(image_size: int, target: int) -> int:
    """Integer upscale factor that brings an image side near `target` pixels (at least 1)."""
    return max(1, round(target / image_size))


def thumbnail(image: np.ndarray, side: int) -> np.ndarray:
    """One image (C, H, W) uint8 -> a display image enlarged (crisp pixels) to about `side` pixels wide."""
    return upscale(to_display(image), display_scale(image.shape[-1], side))


def enlarge(display: np.ndarray, side: int) -> np.ndarray:
    """A display image (H, W[, 3]) enlarged (crisp pixels) to about `side` pixels wide."""
    return upscale(display, display_scale(display.shape[1], side))


# ---------------------------------------------------------------- uploads

@dataclass(frozen=True)
class Upload:
    preview: np.ndarray  # (h, w, 3) uint8: the upload as received (orientation fixed), at most PREVIEW_SIDE
    x: np.ndarray  # (C, S, S) uint8: preprocessed like the run's training data


def upload_style(dataset: str) -> str:
    """How to preprocess uploads for a run's dataset: MNIST digits, Fashion-MNIST objects, emoji, or photos (folders)."""
    return {"mnist": "digit", "fashion-mnist": "object", EMOJI_DATASET: "emoji"}.get(dataset, "photo")


def _preview(rgb: np.ndarray) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(rgb)
    im.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    return np.asarray(im)


def _on_white(im) -> np.ndarray:
    """A PIL image with its transparency composited on white, as the emoji were drawn: (H, W, 3) uint8."""
    from PIL import Image

    drawing = im.convert("RGBA")
    canvas = Image.new("RGB", drawing.size, EMOJI_BACKGROUND)
    canvas.paste(drawing, (0, 0), mask=drawing)
    return np.asarray(canvas, np.uint8)


def _emoji_square(rgb: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    """(H, W, 3) on white -> centred in a white square (nothing cropped) and resized with Lanczos, as
    trainer.emoji.to_square_rgb makes the dataset; gray as the dataset loader makes it (the mean): (C, S, S) uint8."""
    from PIL import Image

    height, width = rgb.shape[:2]
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), EMOJI_BACKGROUND)
    canvas.paste(Image.fromarray(rgb), ((side - width) // 2, (side - height) // 2))
    x = np.asarray(canvas.resize((image_size, image_size), Image.Resampling.LANCZOS), np.uint8).transpose(2, 0, 1)  # (3, S, S)
    if channels == 1:
        x = np.round(x.astype(np.float32).mean(0, keepdims=True)).astype(np.uint8)
    return np.ascontiguousarray(x)


def _white_on_black(gray: np.ndarray) -> np.ndarray:
    """Grayscale (H, W) float 0..255 -> ink in [0, 1] on a 0 background (inverted if the background is light)."""
    h, w = gray.shape
    bw = max(1, min(h, w) // 20)
    border = np.concatenate([gray[:bw].ravel(), gray[-bw:].ravel(), gray[:, :bw].ravel(), gray[:, -bw:].ravel()])
    background = float(np.median(border))
    if background >= LIGHT:
        gray, background = 255.0 - gray, 255.0 - background
    ink = np.clip((gray - background) / max(gray.max() - background, 1e-6), 0.0, 1.0)
    ink[ink < INK_FLOOR] = 0.0
    return ink


def _fit_box(ink: np.ndarray, box: int) -> np.ndarray:
    """Crop to the ink's bounding box and resize (anti-aliased) so its longer side is `box`: (h, w) float."""
    from PIL import Image

    rows, cols = np.nonzero(ink.any(1))[0], np.nonzero(ink.any(0))[0]
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape
    s = box / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    im = Image.fromarray((crop * 255.0).astype(np.uint8), "L").resize(size, Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.float64) / 255.0


def _paste(canvas_side: int, patch: np.ndarray, centre_of_mass: bool) -> np.ndarray:
    """Place `patch` in a square canvas with its centre of mass (or its box centre) at the canvas centre."""
    canvas = np.zeros((canvas_side, canvas_side))
    h, w = patch.shape
    if centre_of_mass and patch.sum() > 0:
        ys, xs = np.indices(patch.shape)
        cy, cx = (ys * patch).sum() / patch.sum(), (xs * patch).sum() / patch.sum()
    else:
        cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    top, left = int(round((canvas_side - 1) / 2.0 - cy)), int(round((canvas_side - 1) / 2.0 - cx))
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, canvas_side), min(left + w, canvas_side)
    canvas[y0:y1, x0:x1] = patch[y0 - top : y1 - top, x0 - left : x1 - left]
    return canvas


def preprocess_upload(data: bytes, image_size: int, channels: int, style: str = "digit") -> Upload:
    """Upload bytes -> the run's input format (C, S, S) uint8. Raises UploadError with one line.

    photo (folder datasets): exactly trainer.images.decode_image, the path every training image of the folder took;
    emoji: on white, padded to a square and resized, as the emoji dataset renders its glyphs (colour kept for an RGB run);
    digit: decoded the same way, then grayscale, white-on-black, ink scaled into a 20x20 box (for 28x28) and
    centred by mass, like MNIST; object: the same, but the object fills the frame and is centred by its box
    (Fashion-MNIST).
    """
    if style not in UPLOAD_STYLES:
        raise ValueError(f"unknown upload style '{style}': choose one of {', '.join(UPLOAD_STYLES)}")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(f"the file is {len(data) / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB")
    try:
        im = open_image(data)
    except ImageError as e:
        raise UploadError(str(e)) from None
    if style == "emoji":  # composited on white like the emoji were, not on a contrasting background
        on_white = _on_white(im)
        return Upload(_preview(on_white), _emoji_square(on_white, image_size, channels))
    rgb = flatten_alpha(im)  # (H, W, 3): the first steps of trainer.images.decode_image
    if style == "photo":  # the rest of decode_image: an upload becomes what a training image of the folder became
        return Upload(_preview(rgb), fit_square(rgb, image_size, channels))
    ink = _white_on_black(rgb.astype(np.float64).mean(-1))
    if not ink.any():
        raise UploadError("no drawing found: the image is blank after removing its background")
    box = max(1, round(image_size * MNIST_BOX / MNIST_SIZE)) if style == "digit" else image_size
    canvas = _paste(image_size, _fit_box(ink, box), centre_of_mass=style == "digit")
    gray = (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    x = np.repeat(gray[None], channels, axis=0)
    return Upload(_preview(rgb), np.ascontiguousarray(x))


# ---------------------------------------------------------------- scatter frames and GIFs

FRAME_FONT_PX = 11  # text of a replay frame (ticks, axis titles, legend, title)
FRAME_PAD = 6  # px around a replay frame's parts
FRAME_TICKS = 8  # at most about this many ticks per axis
FRAME_INK, FRAME_GRID = (40, 40, 40), (225, 225, 225)


def nice_ticks(lo: float, hi: float, count: int = FRAME_TICKS) -> np.ndarray:
    """Round tick values (steps of 1, 2 or 5 times a power of ten) inside [lo, hi], about `count` of them."""
    span = hi - lo
    if not np.isfinite(span) or span <= 0:
        return np.array([lo])
    raw = span / max(count, 1)
    power = 10.0 ** np.floor(np.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = np.ceil(lo / step) * step
    return np.round(np.arange(first, hi + step * 1e-9, step), 10)


def _tick_text(value: float) -> str:
    return f"{value:g}" if abs(value) >= 1e-9 else "0"


def _plot_points(img: np.ndarray, xy: np.ndarray, labels: np.ndarray, palette: np.ndarray, box: tuple[int, int, int, int],
                 x_range: tuple[float, float], y_range: tuple[float, float], dot: int) -> None:
    """Draw points (N, 2) into the pixel box (left, top, right, bottom) of img (H, W, 3) in place; points outside the ranges are left out."""
    left, top, right, bottom = box
    w, h = right - left, bottom - top
    px = left + (xy[:, 0] - x_range[0]) / (x_range[1] - x_range[0]) * (w - 1)
    py = top + (1.0 - (xy[:, 1] - y_range[0]) / (y_range[1] - y_range[0])) * (h - 1)
    keep = np.isfinite(px) & np.isfinite(py) & (px >= left) & (px < right) & (py >= top) & (py < bottom)
    cols = palette[np.asarray(labels)[keep] % len(palette)]
    px, py = px[keep].astype(int), py[keep].astype(int)
    for dy in range(-dot // 2, dot - dot // 2):
        for dx in range(-dot // 2, dot - dot // 2):
            img[np.clip(py + dy, top, bottom - 1), np.clip(px + dx, left, right - 1)] = cols


def scatter_frame(
    xy: np.ndarray, labels: np.ndarray, colors: list[tuple[int, int, int]],
    x_range: tuple[float, float], y_range: tuple[float, float], size: int = 360, text: str = "", dot: int = 2,
    *, class_names: list[str] | None = None, axis_titles: tuple[str, str] | None = None,
) -> np.ndarray:
    """Points (N, 2) coloured by label on a white square with fixed axis ranges: (size, size, 3) uint8.

    With `axis_titles`, the plot has axes (ticks, tick labels, grid, titles); with `class_names`, a legend of the
    classes on the right; `text` is the frame's title."""
    from PIL import Image, ImageDraw, ImageFont

    img = np.full((size, size, 3), 255, np.uint8)
    palette = np.asarray(colors, np.uint8)
    if axis_titles is None and class_names is None:  # a bare frame: the points fill it
        _plot_points(img, xy, labels, palette, (0, 0, size, size), x_range, y_range, dot)
        if text:
            im = Image.fromarray(img)
            ImageDraw.Draw(im).text((6, 4), text, fill=(0, 0, 0))
            img = np.asarray(im)
        return img
    im = Image.fromarray(img)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(FRAME_FONT_PX)
    line = FRAME_FONT_PX + 3
    names = [class_names[c] if c < len(class_names) else str(c) for c in range(len(colors))] if class_names else []
    legend_w = min(size // 3, int(max((draw.textlength(n, font=font) for n in names), default=0)) + line + 2 * FRAME_PAD) if names else 0
    x_ticks, y_ticks = nice_ticks(*x_range), nice_ticks(*y_range)
    y_label_w = int(max(draw.textlength(_tick_text(v), font=font) for v in y_ticks)) if axis_titles else 0
    left = FRAME_PAD + y_label_w + FRAME_PAD
    top = FRAME_PAD + line + (line if axis_titles else 0)  # the title, then the y axis title
    right = size - legend_w - FRAME_PAD
    bottom = size - FRAME_PAD - (2 * line if axis_titles else 0)  # tick labels and the x axis title
    if text:
        draw.text((FRAME_PAD, FRAME_PAD), text, fill=FRAME_INK, font=font)
    if axis_titles:
        for v in x_ticks:
            x = left + (v - x_range[0]) / (x_range[1] - x_range[0]) * (right - left - 1)
            draw.line([(x, top), (x, bottom)], fill=FRAME_GRID)
            label = _tick_text(v)
            draw.text((x - draw.textlength(label, font=font) / 2, bottom + 2), label, fill=FRAME_INK, font=font)
        for v in y_ticks:
            y = top + (1.0 - (v - y_range[0]) / (y_range[1] - y_range[0])) * (bottom - top - 1)
            draw.line([(left, y), (right, y)], fill=FRAME_GRID)
            label = _tick_text(v)
            draw.text((left - FRAME_PAD - draw.textlength(label, font=font), y - line / 2), label, fill=FRAME_INK, font=font)
        draw.rectangle([left, top, right - 1, bottom - 1], outline=FRAME_INK)
        x_title, y_title = axis_titles
        draw.text(((left + right - draw.textlength(x_title, font=font)) / 2, bottom + 2 + line), x_title, fill=FRAME_INK, font=font)
        draw.text((FRAME_PAD, top - line), y_title, fill=FRAME_INK, font=font)
    for k, name in enumerate(names):
        y = top + k * line
        x = right + FRAME_PAD
        draw.rectangle([x, y + 2, x + line - 6, y + line - 4], fill=tuple(int(c) for c in palette[k]))
        draw.text((x + line - 2, y), name, fill=FRAME_INK, font=font)
    img = np.array(im)
    _plot_points(img, xy, labels, palette, (left + 1, top + 1, right - 1, bottom - 1), x_range, y_range, dot)
    return img


def animated_gif(frames: list[np.ndarray], frame_ms: int = 400, last_frame_ms: int = 1500) -> bytes:
    """Frames (H, W, 3) uint8 -> a looping animated GIF."""
    from PIL import Image

    if not frames:
        raise ValueError("an animation needs at least one frame")
    ims = [Image.fromarray(f).convert("P", palette=Image.Palette.ADAPTIVE, colors=64) for f in frames]
    durations = [frame_ms] * (len(ims) - 1) + [last_frame_ms]
    buf = io.BytesIO()
    ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:], duration=durations, loop=0, disposal=2)
    return buf.getvalue()
