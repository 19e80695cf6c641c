"""Image helpers shared by the trainer, the study and the explorer: decoding bytes, tiling, PNGs, the class palette.

Pure numpy / PIL / torch. Pixel arrays are uint8; batches are (N, C, H, W) like the atlas, single display
images (H, W) for grayscale or (H, W, 3) for colour.

`decode_image` is the one path from image bytes to a model input: folder datasets (trainer/data.py) decode
every file with it, and the explorer's uploads for a folder-trained run go through it unchanged, so an
upload is preprocessed exactly like the run's training data. `open_image` is its first step (format
allow-list, decompression-bomb guard, first frame, EXIF orientation, 16-bit scaling); the explorer's
MNIST-like uploads start from it too.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import torch

from models import VAE

# The PIL decoders an image may use: never EPS & co, whose plugins run programs such as Ghostscript.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")  # the file names of those formats
MAX_IMAGE_PIXELS = 64_000_000  # larger images are refused from their header, before any pixel is decoded
WORK_SIDE = 1024  # larger images are shrunk to this before any array is made of them (models take 28-128 px)
LIGHT = 128  # a mean brightness above this is light: transparency is composited on black, else on white
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # 16/32-bit integer and float grayscale: scaled to 8 bits
# One colour per class (Plotly's D3, Dark24 and Light24 palettes, in that order), shared by every plot and PNG.
CLASS_PALETTE = [
    "#1F77B4", "#FF7F0E", "#2CA02C", "#D62728", "#9467BD", "#8C564B", "#E377C2", "#7F7F7F", "#BCBD22", "#17BECF",
    "#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#222A2A", "#B68100", "#750D86", "#EB663B", "#511CFB",
    "#00A08B", "#FB00D1", "#FC0080", "#B2828D", "#6C7C32", "#778AAE", "#862A16", "#A777F1", "#620042", "#1616A7",
    "#DA60CA", "#6C4516", "#0D2A63", "#AF0038",
    "#FD3216", "#00FE35", "#6A76FC", "#FED4C4", "#FE00CE", "#0DF9FF", "#F6F926", "#FF9616", "#479B55", "#EEA6FB",
    "#DC587D", "#D626FF", "#6E899C", "#00B5F7", "#B68E00", "#C9FBE5", "#FF0092", "#22FFA7", "#E3EE9E", "#86CE00",
    "#BC7196", "#7E7DCD", "#FC6955", "#E48F72",
]


class ImageError(ValueError):
    """Image bytes that cannot be used; the message is one line."""


# ---------------------------------------------------------------- decoding bytes

def open_image(data: bytes):
    """Decode image bytes to an L, RGB or RGBA PIL image of at most WORK_SIDE a side. Raises ImageError.

    Only IMAGE_FORMATS are tried; an image over MAX_IMAGE_PIXELS is refused from its header; animated and
    multi-page files give their first frame; EXIF orientation is applied; 16-bit and float pixels are scaled.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise ImageError("the file is empty")
    megapixels = MAX_IMAGE_PIXELS // 10**6
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # PIL's own guard, for what our header check below cannot see
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            if im.width * im.height > MAX_IMAGE_PIXELS:  # PIL itself only warns below twice its limit
                raise ImageError(f"the image is {im.width}x{im.height} pixels; the limit is {megapixels} megapixels")
            im.seek(0)  # animated GIF / WebP / multi-page TIFF: the first frame
            im.load()
            im = ImageOps.exif_transpose(im)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"the image has too many pixels; the limit is {megapixels} megapixels") from None
    except UnidentifiedImageError:
        raise ImageError("not an image file that can be read (use PNG, JPEG, GIF, WebP, BMP or TIFF)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(f"the image could not be decoded ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    sixteen_bit = im.mode.startswith("I;16")  # known before _shrink, which may widen it to "I"
    return _to_8_bit(_shrink(im), sixteen_bit)


def _shrink(im):
    """A decoded image reduced (box filter) to at most WORK_SIDE a side, so later float arrays stay small."""
    factor = -(-max(im.size) // WORK_SIDE)
    if factor <= 1:
        return im
    if im.mode in ("1", "P", "PA") or im.mode.startswith("I;16"):  # modes Image.reduce cannot average
        im = im.convert({"1": "L", "P": "RGBA", "PA": "RGBA"}.get(im.mode, "I"))
    return im.reduce(factor)


def _to_8_bit(im, sixteen_bit: bool):
    """Any PIL mode -> L, RGB or RGBA; 16-bit / 32-bit / float grayscale scaled to 0..255 (`sixteen_bit`: as decoded)."""
    from PIL import Image

    if im.mode in WIDE_MODES:
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if sixteen_bit or arr.max() > 255 else 1.0 if im.mode == "F" and arr.max() <= 1.0 else 255.0
        return Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
    if im.mode in ("P", "PA", "LA", "La", "RGBa"):
        return im.convert("RGBA")
    if im.mode not in ("L", "RGB", "RGBA"):
        return im.convert("RGB")  # CMYK, YCbCr, LAB, 1-bit, ...
    return im


def flatten_alpha(im) -> np.ndarray:
    """L/RGB/RGBA PIL image -> (H, W, 3) uint8; transparency composited on a background that contrasts with what is drawn."""
    rgba = np.asarray(im.convert("RGBA"), dtype=np.float64)
    rgb, alpha = rgba[..., :3], rgba[..., 3:] / 255.0
    if alpha.min() >= 1.0:
        return rgb.astype(np.uint8)
    luminance = rgb.mean(-1, keepdims=True)
    ink = (luminance * alpha).sum() / max(alpha.sum(), 1e-6)  # mean brightness of what is drawn
    background = 0.0 if ink > LIGHT else 255.0
    return (rgb * alpha + background * (1.0 - alpha) + 0.5).astype(np.uint8)


def fit_square(rgb: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    """(H, W, 3) uint8 -> the short side resized to `image_size`, centre-cropped, gray or RGB: (C, S, S) uint8."""
    from PIL import Image, ImageOps

    im = Image.fromarray(rgb).convert("L" if channels == 1 else "RGB")
    arr = np.asarray(ImageOps.fit(im, (image_size, image_size), method=Image.Resampling.BILINEAR), np.uint8)
    return np.ascontiguousarray(arr[None] if channels == 1 else arr.transpose(2, 0, 1))


def decode_image(data: bytes, image_size: int, channels: int) -> np.ndarray:
    """Image bytes -> a model input (C, S, S) uint8: decoded, flattened, short side resized, centre-cropped.

    Every image of a folder dataset, and every upload to a run trained on one, goes through here. Raises ImageError.
    """
    return fit_square(flatten_alpha(open_image(data)), image_size, channels)


# ---------------------------------------------------------------- model outputs and layout

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


def balanced_cols(n: int, max_cols: int) -> int:
    """Columns for n tiles in rows of at most max_cols with as few empty cells as that allows (12 in rows of 8: 6 x 2)."""
    rows = max(1, -(-n // max_cols))
    return max(1, -(-n // rows))


def png_bytes(image: np.ndarray) -> bytes:
    """A display image (H, W[, 3]) uint8 as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- class colours

def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """'#RRGGBB' -> (r, g, b)."""
    color = color.lstrip("#")
    return int(color[0:2], 16), int(color[2:4], 16), int(color[4:6], 16)


def class_colors(n: int) -> list[str]:
    """One distinct hex colour per class (CLASS_PALETTE, repeated beyond its length): n entries (at least one)."""
    return [CLASS_PALETTE[i % len(CLASS_PALETTE)] for i in range(max(n, 1))]


def class_rgb(n: int) -> list[tuple[int, int, int]]:
    """class_colors as RGB tuples (for frames drawn with PIL)."""
    return [hex_to_rgb(c) for c in class_colors(n)]
