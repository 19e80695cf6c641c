"""Images for the explorer: decoding to pixels, tiling, uploads preprocessed like the run's data, GIFs.

Pure numpy / PIL / torch, no Streamlit. Pixel arrays are uint8; batches are (N, C, H, W) like the atlas,
single display images (H, W) for grayscale or (H, W, 3) for colour.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from models import VAE

MAX_UPLOAD_BYTES = 10 * 2**20
MAX_UPLOAD_PIXELS = 40_000_000
UPLOAD_TYPES = ("png", "jpg", "jpeg", "gif", "webp", "bmp", "tif", "tiff")
# The decoders PIL may use for them (never EPS & co, whose plugins run programs such as Ghostscript).
UPLOAD_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
WORK_SIDE = 1024  # larger uploads are shrunk to this before any array is made of them (results are 28-128 px)
MNIST_SIZE, MNIST_BOX = 28, 20  # MNIST digits fit a 20x20 box, centred by mass in 28x28
INK_FLOOR = 0.2  # after stretching to [0, 1], fainter pixels are background (paper texture, JPEG noise)
LIGHT = 128  # a background brighter than this is paper: invert to MNIST's white-on-black
DISPLAY_PIXELS = 8  # nearest-neighbour upscale of a 28x28 digit for display
PREVIEW_SIDE = 256  # the uploaded original is shown at most this large
UPLOAD_STYLES = ("digit", "object", "photo")


class UploadError(ValueError):
    """An upload that cannot be used; the message is one line for st.error."""


# ---------------------------------------------------------------- decoding and layout

def decode_uint8(model: VAE, z: np.ndarray | torch.Tensor) -> np.ndarray:
    """Decode latents (B, D) in one batch to uint8 images (B, C, H, W)."""
    zt = torch.as_tensor(np.asarray(z, np.float32)) if not isinstance(z, torch.Tensor) else z.float()
    with torch.inference_mode():
        x = model.decode_images(zt)  # (B, C, H, W) in [0, 1]
    return (x.numpy() * 255.0 + 0.5).astype(np.uint8)


def reconstruct_uint8(model: VAE, x: np.ndarray) -> np.ndarray:
    """Images (B, C, H, W) uint8 -> reconstructions through the posterior mean, uint8 (B, C, H, W)."""
    posterior = model.encode_batches(torch.from_numpy(np.ascontiguousarray(x)))
    return decode_uint8(model, posterior.mean)


def to_display(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W) for one channel, (H, W, 3) for three."""
    return image[0] if image.shape[0] == 1 else np.ascontiguousarray(image.transpose(1, 2, 0))


def upscale(image: np.ndarray, factor: int = DISPLAY_PIXELS) -> np.ndarray:
    """Nearest-neighbour enlargement of a display image (H, W[, 3]) so pixels stay crisp in the browser."""
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def tile(images: np.ndarray, cols: int, pad: int = 1, pad_value: int = 64) -> np.ndarray:
    """Lay out (N, C, H, W) images in rows of `cols` with `pad` pixels between: display image
    (rows * (H + pad) - pad, cols * (W + pad) - pad[, 3])."""
    n, c, h, w = images.shape
    cols = max(1, min(cols, n)) if n else 1
    rows = max(1, -(-n // cols))
    out = np.full((c, rows * (h + pad) - pad, cols * (w + pad) - pad), pad_value, np.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        out[:, r * (h + pad) : r * (h + pad) + h, q * (w + pad) : q * (w + pad) + w] = images[k]
    return to_display(out)


def display_scale(image_size: int, target: int) -> int:
    """Integer upscale factor that brings an image side near `target` pixels (at least 1)."""
    return max(1, round(target / image_size))


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- uploads

@dataclass(frozen=True)
class Upload:
    preview: np.ndarray  # (h, w, 3) uint8: the upload as received (orientation fixed), at most PREVIEW_SIDE
    x: np.ndarray  # (C, S, S) uint8: preprocessed like the run's training data


def upload_style(dataset: str) -> str:
    """How to preprocess uploads for a run's dataset: MNIST digits, Fashion-MNIST objects, or photos (folders)."""
    return {"mnist": "digit", "fashion-mnist": "object"}.get(dataset, "photo")


def _open_image(data: bytes):
    """Decode upload bytes to an RGBA/RGB/L PIL image: first frame, EXIF orientation applied, 16-bit scaled."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(f"the file is {len(data) / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB")
    if not data:
        raise UploadError("the file is empty")
    Image.MAX_IMAGE_PIXELS = MAX_UPLOAD_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
            if im.width * im.height > MAX_UPLOAD_PIXELS:
                raise UploadError(f"the image is {im.width}x{im.height} pixels; the limit is {MAX_UPLOAD_PIXELS // 10**6} megapixels")
            im.seek(0)  # animated GIF / WebP / multi-page TIFF: the first frame
            im.load()
            im = ImageOps.exif_transpose(im)
    except UploadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError(f"the image has too many pixels; the limit is {MAX_UPLOAD_PIXELS // 10**6} megapixels") from None
    except UnidentifiedImageError:
        raise UploadError("not an image file that can be read (use PNG, JPEG, GIF, WebP, BMP or TIFF)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise UploadError(f"the image could not be decoded ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    sixteen_bit = im.mode.startswith("I;16")
    im = _shrink(im)
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):  # 16-bit / float grayscale: scale to 8 bits
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if sixteen_bit or arr.max() > 255 else 1.0 if im.mode == "F" and arr.max() <= 1.0 else 255.0
        im = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
    if im.mode == "P" or im.mode == "PA":
        im = im.convert("RGBA")
    elif im.mode in ("LA", "La", "RGBa"):
        im = im.convert("RGBA")
    elif im.mode not in ("L", "RGB", "RGBA"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, 1-bit, ...
    return im


def _shrink(im):
    """A decoded upload reduced (box filter) to at most WORK_SIDE a side, so later float arrays stay small."""
    factor = -(-max(im.size) // WORK_SIDE)
    if factor <= 1:
        return im
    if im.mode in ("1", "P", "PA") or im.mode.startswith("I;16"):  # modes Image.reduce cannot average
        im = im.convert({"1": "L", "P": "RGBA", "PA": "RGBA"}.get(im.mode, "I"))
    return im.reduce(factor)


def _flatten_alpha(im) -> np.ndarray:
    """RGB(A)/L PIL image -> (H, W, 3) uint8; transparency composited on a background that contrasts with the ink."""
    rgba = np.asarray(im.convert("RGBA"), dtype=np.float64)
    rgb, alpha = rgba[..., :3], rgba[..., 3:] / 255.0
    if alpha.min() >= 1.0:
        return rgb.astype(np.uint8)
    luminance = rgb.mean(-1, keepdims=True)
    ink = (luminance * alpha).sum() / max(alpha.sum(), 1e-6)  # mean brightness of what is drawn
    background = 0.0 if ink > LIGHT else 255.0
    return (rgb * alpha + background * (1.0 - alpha) + 0.5).astype(np.uint8)


def _preview(rgb: np.ndarray) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(rgb)
    im.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    return np.asarray(im)


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

    digit: grayscale, white-on-black, ink scaled into a 20x20 box (for 28x28) and centred by mass, like MNIST;
    object: the same, but the object fills the frame and is centred by its box (Fashion-MNIST);
    photo: resize the short side and centre-crop (folder datasets), colour kept.
    """
    from PIL import Image, ImageOps

    if style not in UPLOAD_STYLES:
        raise ValueError(f"unknown upload style '{style}': choose one of {', '.join(UPLOAD_STYLES)}")
    rgb = _flatten_alpha(_open_image(data))  # (H, W, 3)
    if style == "photo":
        im = Image.fromarray(rgb).convert("L" if channels == 1 else "RGB")
        arr = np.asarray(ImageOps.fit(im, (image_size, image_size), method=Image.Resampling.BILINEAR), np.uint8)
        x = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
        return Upload(_preview(rgb), np.ascontiguousarray(x))
    ink = _white_on_black(rgb.astype(np.float64).mean(-1))
    if not ink.any():
        raise UploadError("no drawing found: the image is blank after removing its background")
    box = max(1, round(image_size * MNIST_BOX / MNIST_SIZE)) if style == "digit" else image_size
    canvas = _paste(image_size, _fit_box(ink, box), centre_of_mass=style == "digit")
    gray = (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    x = np.repeat(gray[None], channels, axis=0)
    return Upload(_preview(rgb), np.ascontiguousarray(x))


# ---------------------------------------------------------------- scatter frames and GIFs

def scatter_frame(
    xy: np.ndarray, labels: np.ndarray, colors: list[tuple[int, int, int]],
    x_range: tuple[float, float], y_range: tuple[float, float], size: int = 360, text: str = "", dot: int = 2,
) -> np.ndarray:
    """Draw points (N, 2) coloured by label on a white square with fixed axis ranges: (size, size, 3) uint8."""
    from PIL import Image, ImageDraw

    img = np.full((size, size, 3), 255, np.uint8)
    px = (xy[:, 0] - x_range[0]) / (x_range[1] - x_range[0]) * (size - 1)
    py = (1.0 - (xy[:, 1] - y_range[0]) / (y_range[1] - y_range[0])) * (size - 1)
    keep = np.isfinite(px) & np.isfinite(py) & (px >= 0) & (px < size) & (py >= 0) & (py < size)
    palette = np.asarray(colors, np.uint8)
    cols = palette[np.asarray(labels)[keep] % len(palette)]
    px, py = px[keep].astype(int), py[keep].astype(int)
    for dy in range(-dot // 2, dot - dot // 2):
        for dx in range(-dot // 2, dot - dot // 2):
            img[np.clip(py + dy, 0, size - 1), np.clip(px + dx, 0, size - 1)] = cols
    if text:
        im = Image.fromarray(img)
        ImageDraw.Draw(im).text((6, 4), text, fill=(0, 0, 0))
        img = np.asarray(im)
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
