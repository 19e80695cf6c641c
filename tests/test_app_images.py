"""Explorer images: decoding, tiling, uploads preprocessed like MNIST (generated with PIL), GIF export."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from app import images
from models import ModelConfig, build_model

from .helpers import encode


def paper_digit(size: tuple[int, int] = (160, 120), mode: str = "RGB") -> Image.Image:
    """A dark '7'-like stroke on light, slightly textured paper, off centre."""
    im = Image.new(mode, size, (235, 230, 220) if mode == "RGB" else 230)
    d = ImageDraw.Draw(im)
    ink = (30, 30, 40) if mode == "RGB" else 30
    d.line([(30, 20), (90, 20), (55, 100)], fill=ink, width=9)
    return im


def assert_mnist_like(x: np.ndarray) -> None:
    """(1, 28, 28) uint8, white ink on a black background, inside a 20x20 box, centred by mass."""
    assert x.shape == (1, 28, 28) and x.dtype == np.uint8
    g = x[0].astype(float)
    assert g[0].max() == 0 and g[-1].max() == 0 and g[:, 0].max() == 0 and g[:, -1].max() == 0
    assert g.max() > 200
    rows, cols = np.nonzero(g.any(1))[0], np.nonzero(g.any(0))[0]
    assert rows[-1] - rows[0] + 1 <= images.MNIST_BOX + 1 and cols[-1] - cols[0] + 1 <= images.MNIST_BOX + 1
    ys, xs = np.indices(g.shape)
    assert abs((ys * g).sum() / g.sum() - 13.5) <= 1.0 and abs((xs * g).sum() / g.sum() - 13.5) <= 1.0


# ---------------------------------------------------------------- layout and decoding

def test_tile_shapes_grayscale_and_colour():
    x = np.random.default_rng(0).integers(0, 255, (7, 1, 28, 28), dtype=np.uint8)
    out = images.tile(x, cols=3, pad=1)
    assert out.shape == (3 * 29 - 1, 3 * 29 - 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:28, 29:57], x[1, 0])
    rgb = images.tile(np.zeros((4, 3, 32, 32), np.uint8), cols=4, pad=0)
    assert rgb.shape == (32, 128, 3)
    assert images.upscale(out, 2).shape == (2 * out.shape[0], 2 * out.shape[1])


def test_decode_uint8_is_one_batch_of_images():
    model = build_model(ModelConfig(latent_dim=3, widths=(4, 8, 8))).eval()
    out = images.decode_uint8(model, np.zeros((5, 3), np.float32))
    assert out.shape == (5, 1, 28, 28) and out.dtype == np.uint8
    assert images.reconstruct_uint8(model, out).shape == (5, 1, 28, 28)


# ---------------------------------------------------------------- uploads

@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_upload_of_a_dark_digit_on_paper_becomes_mnist_like(fmt):
    up = images.preprocess_upload(encode(paper_digit(), fmt), 28, 1, "digit")
    assert_mnist_like(up.x)
    assert up.preview.ndim == 3 and max(up.preview.shape[:2]) <= images.PREVIEW_SIDE


def test_upload_already_white_on_black_is_not_inverted():
    im = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(im).ellipse([10, 5, 40, 60], outline=255, width=6)
    assert_mnist_like(images.preprocess_upload(encode(im, "PNG"), 28, 1, "digit").x)


def test_transparent_palette_16bit_cmyk_and_animated_uploads():
    # white strokes on a transparent background: composited on black, not lost on white
    rgba = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).line([(20, 10), (60, 70)], fill=(255, 255, 255, 255), width=8)
    assert_mnist_like(images.preprocess_upload(encode(rgba, "PNG"), 28, 1).x)
    # palette image with a transparent index
    assert_mnist_like(images.preprocess_upload(encode(paper_digit().convert("P"), "PNG", transparency=0), 28, 1).x)
    # 16-bit grayscale
    deep = (np.asarray(paper_digit(mode="L"), np.uint16) * 257).astype(np.uint16)
    deep_png = encode(Image.fromarray(deep), "PNG")
    with Image.open(io.BytesIO(deep_png)) as im:
        assert im.mode.startswith("I")
    assert_mnist_like(images.preprocess_upload(deep_png, 28, 1).x)
    # CMYK JPEG
    assert_mnist_like(images.preprocess_upload(encode(paper_digit().convert("CMYK"), "JPEG"), 28, 1).x)
    # animated GIF: the first frame has the digit, the second is blank
    frames = [paper_digit().convert("P"), Image.new("RGB", (160, 120), (235, 230, 220)).convert("P")]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert_mnist_like(images.preprocess_upload(gif, 28, 1).x)


def test_exif_orientation_is_applied():
    im = Image.new("L", (120, 60), 255)
    ImageDraw.Draw(im).line([(10, 30), (110, 30)], fill=0, width=8)  # a horizontal bar as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated by 90 degrees: the bar is vertical
    x = images.preprocess_upload(encode(im, "JPEG", exif=exif), 28, 1).x[0]
    rows, cols = np.nonzero(x.any(1))[0], np.nonzero(x.any(0))[0]
    assert rows[-1] - rows[0] > 3 * (cols[-1] - cols[0])


def test_photo_style_keeps_colour_and_size():
    up = images.preprocess_upload(encode(paper_digit(), "PNG"), 32, 3, "photo")
    assert up.x.shape == (3, 32, 32) and up.x.dtype == np.uint8


def tiny_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (the pixels are never decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("data, words", [
    (b"this is not an image", "not an image"),
    (b"", "empty"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * (images.MAX_UPLOAD_BYTES + 1), "MB"),
    (tiny_png_header(9000, 9000), "megapixels"),
    (encode(Image.new("RGB", (50, 50), (240, 240, 240)), "PNG"), "blank"),
])
def test_bad_uploads_give_one_clear_line(data, words):
    with pytest.raises(images.UploadError) as err:
        images.preprocess_upload(data, 28, 1, "digit")
    message = str(err.value)
    assert words in message and "\n" not in message


def test_truncated_image_is_an_upload_error():
    data = encode(paper_digit(), "PNG")
    with pytest.raises(images.UploadError, match="could not be decoded|not an image"):
        images.preprocess_upload(data[: len(data) // 2], 28, 1)


# ---------------------------------------------------------------- the replay GIF

def test_animated_gif_has_every_frame():
    xy = np.random.default_rng(0).normal(size=(50, 2))
    labels = np.arange(50) % 10
    colors = [(255, 0, 0), (0, 128, 0), (0, 0, 255)]
    frames = [images.scatter_frame(xy * (1 + k), labels, colors, (-4, 4), (-4, 4), size=64, text=f"epoch {k}") for k in range(4)]
    assert frames[0].shape == (64, 64, 3)
    gif = images.animated_gif(frames)
    with Image.open(io.BytesIO(gif)) as im:
        assert im.format == "GIF" and im.is_animated and im.n_frames == 4


def test_balanced_cols_fills_the_rows() -> None:
    from app import images

    assert [images.balanced_cols(n, 8) for n in (1, 4, 8, 9, 12, 16, 17, 32)] == [1, 4, 8, 5, 6, 8, 6, 8]
    for n in range(1, 33):
        cols = images.balanced_cols(n, 8)
        rows = -(-n // cols)
        assert cols <= 8 and rows == -(-n // 8) and rows * cols - n < rows  # as few rows as allowed, less than a column empty
