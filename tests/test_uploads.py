"""Uploads from users: every odd, broken or hostile image goes through the Explore page's preprocessing.

`app.images.preprocess_upload` (called by app.explore_cache.preprocess for the Explore page) must return
the run's input format or raise UploadError with one line: never another exception, never a decode of
a decompression bomb, never a helper program (Ghostscript for EPS), and bounded memory.
"""
from __future__ import annotations

import struct
import subprocess
import tracemalloc
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile

from app import images
from app.images import MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, UploadError, preprocess_upload

from .helpers import encode

SIZE = 28
SHAPES = {"digit": (1, SIZE, SIZE), "object": (1, SIZE, SIZE), "photo": (3, 64, 64)}
BOMB_SIDE = 100_000  # declared width and height of the bombs: 10 gigapixels
BOMB_PEAK_BYTES = 8 * 2**20  # what refusing a bomb may allocate
LARGEST_ACCEPTED_SIDE = int(MAX_UPLOAD_PIXELS**0.5) - 8  # a legal upload just under the pixel limit
ACCEPTED_PEAK_BYTES = 128 * 2**20  # what preprocessing the largest legal upload may allocate (numpy + Python)
MAX_MESSAGE_CHARS = 300
EXIF_ORIENTATION = 0x0112
ROTATE_90 = 6  # EXIF: rotate 90 degrees clockwise to display
EITHER = "could not be decoded|no drawing"  # damage that may or may not leave a decodable image


# ---------------------------------------------------------------- image makers

def digit(mode: str = "RGB", size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A dark stroke on light paper, off centre."""
    im = Image.new("RGB", size, (235, 230, 220))
    ImageDraw.Draw(im).line([(20, 12), (60, 12), (38, 60)], fill=(25, 25, 30), width=7)
    return im.convert(mode) if mode != "RGB" else im


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_bomb(side: int = BOMB_SIDE) -> bytes:
    """A PNG declaring side x side 8-bit gray pixels with a few hundred bytes of (truncated) data."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (side + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_bomb(side: int = 65_000) -> bytes:
    """A real JPEG whose frame header (SOF0) is patched to declare side x side pixels."""
    data = bytearray(encode(Image.new("L", (16, 16), 128), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def gif_bomb(side: int = 65_000) -> bytes:
    """A GIF whose logical screen and frame are patched to side x side pixels."""
    data = bytearray(encode(Image.new("P", (8, 8), 0), "GIF"))
    data[6:10] = struct.pack("<HH", side, side)
    frame = data.find(b"\x2c")
    data[frame + 5 : frame + 9] = struct.pack("<HH", side, side)
    return bytes(data)


def tiff_bomb(side: int = BOMB_SIDE) -> bytes:
    """A TIFF whose width and length tags are patched to side x side."""
    data = bytearray(encode(Image.new("L", (8, 8), 0), "TIFF"))
    offset = struct.unpack("<I", data[4:8])[0]
    n = struct.unpack("<H", data[offset : offset + 2])[0]
    for i in range(n):
        entry = offset + 2 + 12 * i
        tag, kind = struct.unpack("<HH", data[entry : entry + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength
            fmt = "<H" if kind == 3 else "<I"
            data[entry + 8 : entry + 8 + struct.calcsize(fmt)] = struct.pack(fmt, side)
    return bytes(data)


def exif_rotated() -> bytes:
    im = digit(size=(120, 80))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_90
    return encode(im, "JPEG", exif=exif)


def palette_transparent() -> bytes:
    im = Image.new("P", (64, 64), 0)
    im.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)
    ImageDraw.Draw(im).ellipse([16, 8, 48, 56], outline=1, width=5)
    return encode(im, "PNG", transparency=0)


def animated_gif() -> bytes:
    frames = [digit("P"), Image.new("P", (96, 72), 0)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def sixteen_bit(size: tuple[int, int] = (96, 72)) -> bytes:
    im = Image.fromarray(np.asarray(digit("L", size), np.uint16) * 257)
    assert im.mode.startswith("I;16")
    return encode(im, "PNG")


def float_tiff() -> bytes:
    im = Image.fromarray(np.asarray(digit("L"), np.float32) / 255.0)
    assert im.mode == "F"
    return encode(im, "TIFF")


def int32_tiff() -> bytes:
    return encode(digit("L").convert("I"), "TIFF")


def long_stroke() -> bytes:
    """2000 x 40 px: a long dark stroke on paper."""
    im = Image.new("L", (2000, 40), 230)
    ImageDraw.Draw(im).line([(100, 20), (1900, 20)], fill=20, width=9)
    return encode(im, "PNG")


def grayscale_alpha() -> bytes:
    im = Image.new("LA", (64, 64), (0, 0))
    ImageDraw.Draw(im).line([(10, 10), (50, 54)], fill=(255, 255), width=6)
    return encode(im, "PNG")


def cmyk_jpeg() -> bytes:
    return encode(digit().convert("CMYK"), "JPEG")


def too_big_file() -> bytes:
    """A valid PNG padded past the byte limit with a private ancillary chunk."""
    base = encode(digit(), "PNG")
    pad = png_chunk(b"prVt", b"\0" * (MAX_UPLOAD_BYTES + 1))
    return base[:-12] + pad + base[-12:]


def text_chunk_bomb() -> bytes:
    """A PNG with a compressed text chunk that inflates to 64 MB."""
    base = encode(digit(), "PNG")
    ztxt = png_chunk(b"zTXt", b"comment\0\0" + zlib.compress(b"A" * (64 * 2**20), 9))
    return base[:33] + ztxt + base[33:]


def eps_file() -> bytes:
    return (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n"
            b"(%pipe%touch /tmp/vae-upload-eps-ran) (w) file\nnewpath 4 4 moveto 24 24 lineto stroke showpage\n%%EOF\n")


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def flip_in_middle(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0xFF
    return bytes(out)


# ---------------------------------------------------------------- the cases

@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[], bytes]
    refused: str | None  # None: accepted; EITHER: accepted or refused; else a fragment of the one-line message


C = Case
CASES: list[Case] = [
    C("png-rgb", lambda: encode(digit(), "PNG"), None),
    C("jpeg", lambda: encode(digit(), "JPEG"), None),
    C("png-rgba", lambda: encode(digit("RGBA"), "PNG"), None),
    C("png-grayscale-alpha", grayscale_alpha, None),
    C("png-palette-transparent", palette_transparent, None),
    C("png-16-bit", sixteen_bit, None),
    C("tiff-32-bit-int", int32_tiff, None),
    C("png-1-bit", lambda: encode(digit("1"), "PNG"), None),
    C("jpeg-cmyk", cmyk_jpeg, None),
    C("jpeg-exif-rotated", exif_rotated, None),
    C("gif-animated", animated_gif, None),
    C("bmp", lambda: encode(digit(), "BMP"), None),
    C("webp", lambda: encode(digit(), "WEBP"), None),
    C("tiff", lambda: encode(digit(), "TIFF"), None),
    C("tiff-float", float_tiff, None),
    C("wrong-extension-jpeg-sent-as-png", lambda: encode(digit(), "JPEG"), None),  # the content decides, not the name
    C("extreme-aspect-ratio", long_stroke, None),
    C("png-16-bit-large", lambda: sixteen_bit((3000, 2200)), None),
    C("gif-large-palette", lambda: encode(digit("P", (3000, 2200)), "GIF"), None),
    C("zero-bytes", lambda: b"", "empty"),
    C("text-not-an-image", lambda: b"hello, this is not an image\n" * 10, "not an image"),
    C("html-not-an-image", lambda: b"<!doctype html><html><script>alert(1)</script></html>", "not an image"),
    C("svg-not-supported", lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28"><circle r="9"/></svg>', "not an image"),
    C("pdf-not-supported", lambda: b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "not an image"),
    C("eps-never-run", eps_file, "not an image|could not be decoded"),
    C("png-truncated", lambda: half(encode(digit(), "PNG")), "could not be decoded"),
    C("jpeg-truncated", lambda: half(encode(digit(size=(300, 200)), "JPEG", quality=95)), "could not be decoded"),
    C("png-corrupt-data", lambda: flip_in_middle(encode(digit(), "PNG")), EITHER),
    C("png-header-only", lambda: b"\x89PNG\r\n\x1a\n", "not an image|could not be decoded"),
    C("png-bomb", png_bomb, "pixels"),
    C("jpeg-bomb", jpeg_bomb, "pixels"),
    C("gif-bomb", gif_bomb, "pixels"),
    C("tiff-bomb", tiff_bomb, "pixels"),
    C("png-text-chunk-bomb", text_chunk_bomb, "could not be decoded"),
    C("file-over-the-byte-limit", too_big_file, f"limit is {MAX_UPLOAD_BYTES // 2**20} MB"),
    C("one-pixel", lambda: encode(Image.new("L", (1, 1), 0), "PNG"), "no drawing"),
    C("blank-white", lambda: encode(Image.new("RGB", (64, 64), "white"), "PNG"), "no drawing"),
    C("blank-transparent", lambda: encode(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), "PNG"), "no drawing"),
]


@pytest.fixture()
def no_helper_programs(monkeypatch):
    """Fail if anything tries to start a program (PIL's EPS plugin runs Ghostscript when it finds one)."""
    started = []

    def refuse(*args, **kw):
        started.append(args)
        raise AssertionError(f"a program was started: {args!r}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "check_call", refuse)
    from PIL import EpsImagePlugin

    monkeypatch.setattr(EpsImagePlugin, "gs_binary", "gs", raising=False)  # as if Ghostscript were installed
    monkeypatch.setattr(EpsImagePlugin, "gs_windows_binary", None, raising=False)
    return started


def assert_one_line_refusal(error: UploadError, fragment: str) -> None:
    import re

    text = str(error)
    assert text and "\n" not in text and len(text) < MAX_MESSAGE_CHARS, text
    assert re.search(fragment, text), text


@pytest.mark.parametrize("style", ["digit", "photo"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_upload_is_used_or_refused_with_one_line(case, style, no_helper_programs):
    data = case.make()
    channels = SHAPES[style][0]
    image_size = SHAPES[style][1]
    if case.refused is EITHER:
        try:
            up = preprocess_upload(data, image_size, channels, style)
        except UploadError as e:
            assert_one_line_refusal(e, EITHER)
        else:
            assert up.x.shape == SHAPES[style] and up.x.dtype == np.uint8
        return
    if case.refused is None:
        up = preprocess_upload(data, image_size, channels, style)
        assert up.x.shape == SHAPES[style] and up.x.dtype == np.uint8
        assert up.x.max() > 0  # something of the drawing survived
        assert up.preview.ndim == 3 and up.preview.shape[2] == 3 and max(up.preview.shape[:2]) <= images.PREVIEW_SIDE
        return
    if style == "photo" and case.refused == "no drawing":  # photos keep their background: a blank photo is a photo
        assert preprocess_upload(data, image_size, channels, style).x.shape == SHAPES[style]
        return
    with pytest.raises(UploadError) as info:
        preprocess_upload(data, image_size, channels, style)
    assert_one_line_refusal(info.value, case.refused)
    assert not no_helper_programs


def test_exif_orientation_is_applied():
    up = preprocess_upload(exif_rotated(), SIZE, 1, "digit")
    h, w = up.preview.shape[:2]
    assert h > w  # 120 x 80 stored, shown rotated to 80 x 120


def test_animated_gif_uses_its_first_frame():
    first_only = preprocess_upload(encode(digit("P"), "GIF"), SIZE, 1, "digit").x
    assert np.array_equal(preprocess_upload(animated_gif(), SIZE, 1, "digit").x, first_only)


@pytest.mark.parametrize("make", [png_bomb, jpeg_bomb, gif_bomb, tiff_bomb], ids=lambda f: f.__name__)
def test_bombs_are_refused_before_decoding(make, monkeypatch):
    """The pixel count in the header is enough: the decoder never runs and memory stays small."""
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or real_load(self))
    data = make()
    tracemalloc.start()
    try:
        with pytest.raises(UploadError, match="pixels"):
            preprocess_upload(data, SIZE, 1, "digit")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not decoded
    assert peak < BOMB_PEAK_BYTES, peak


@pytest.mark.slow
def test_largest_legal_upload_is_processed_in_bounded_memory():
    """A 6.3k x 6.3k PNG of a few kB (just under the pixel limit) is accepted without gigabytes of float arrays."""
    im = Image.new("L", (LARGEST_ACCEPTED_SIDE, LARGEST_ACCEPTED_SIDE), 255)
    ImageDraw.Draw(im).line([(1000, 800), (5000, 5200)], fill=0, width=300)
    data = encode(im, "PNG")
    assert len(data) < MAX_UPLOAD_BYTES
    tracemalloc.start()
    try:
        up = preprocess_upload(data, SIZE, 1, "digit")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert up.x.shape == (1, SIZE, SIZE) and up.x.max() > 200
    assert peak < ACCEPTED_PEAK_BYTES, f"{peak / 2**20:.0f} MiB"


def test_folder_datasets_skip_eps_and_bombs_too(tmp_path, no_helper_programs):
    """The trainer's folder loader shares the guards: an EPS or a bomb named .png is skipped, never run or decoded."""
    from trainer.data import load_dataset

    for i in range(3):
        (tmp_path / f"good-{i}.png").write_bytes(encode(digit(), "PNG"))
    (tmp_path / "eps.png").write_bytes(eps_file())
    (tmp_path / "bomb.png").write_bytes(png_bomb())
    data = load_dataset(f"folder:{tmp_path}", image_size=SIZE, channels=1)
    assert data.source["skipped"] == 2 and len(data.train_x) + len(data.test_x) == 3
    assert not no_helper_programs


FOLDER_FILES = {  # id: (bytes maker, file suffix)
    "rgba": (lambda: encode(digit("RGBA", (120, 70)), "PNG"), ".png"),
    "palette-transparent": (palette_transparent, ".png"),
    "16-bit": (lambda: sixteen_bit((90, 140)), ".png"),
    "tiff": (lambda: encode(digit(), "TIFF"), ".tiff"),
}


@pytest.mark.parametrize("case", FOLDER_FILES)
def test_upload_to_a_folder_run_is_preprocessed_exactly_like_its_training_images(tmp_path, case):
    """A folder-trained run sees an upload as the very pixels the same file became in its training data."""
    from trainer.data import load_dataset

    make, suffix = FOLDER_FILES[case]
    data = make()
    for i in range(2):
        (tmp_path / f"{i}{suffix}").write_bytes(data)
    dataset = f"folder:{tmp_path}"
    for channels in (1, 3):
        trained = load_dataset(dataset, image_size=32, channels=channels)
        upload = preprocess_upload(data, 32, channels, images.upload_style(dataset))
        assert np.array_equal(upload.x, trained.train_x[0].numpy())
