"""The colour emoji dataset, offline: Noto Color Emoji rendered with PIL, labelled by Unicode emoji group.

Two Debian packages hold everything: `fonts-noto-color-emoji` (the CBDT bitmap font) and `unicode-data`
(`emoji-test.txt`, which lists every emoji with its group). Each fully-qualified entry is drawn in colour
(`embedded_color=True`) into the font's glyph cell, composited on white, padded to a square and resized to
the image size: about 3,600 images in 9 groups (Smileys & Emotion, People & Body, Animals & Nature, ...).
Sequences the font cannot draw as one glyph (it would fall back to several side by side) are skipped and
counted.

The images are rendered once per image size and cached as an npz under the data directory
(`DATA_DIR/emoji-cache/`), keyed by the contents of the font and of emoji-test.txt; a stale, truncated or
malformed cache is rebuilt, never trusted or unpickled. The train/test split is a fixed permutation
(EMOJI_SPLIT_SEED), independent of the run's seed. This module imports nothing from trainer.data (which
imports it) and reports problems as EmojiError.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from . import safe_io

log = logging.getLogger(__name__)

EMOJI_DATASET = "emoji"
EMOJI_FONT_PATH = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST_PATH = Path("/usr/share/unicode/emoji/emoji-test.txt")
EMOJI_PACKAGES = ("fonts-noto-color-emoji", "unicode-data")
INSTALL_COMMAND = f"apt-get install {' '.join(EMOJI_PACKAGES)}"
CBDT_FONT_SIZE = 109  # a CBDT bitmap font loads at its one strike size only (136 x 128 px glyphs)
EMOJI_IMAGE_SIZE = 64  # default side
EMOJI_CHANNELS = 3
EMOJI_TEST_FRACTION = 0.1
EMOJI_SPLIT_SEED = 0  # the fixed permutation whose last tenth is the test split
QUALIFIED = "fully-qualified"  # the status of the entries kept (one per emoji; the others are keyboard variants)
MAX_GLYPH_ASPECT = 1.25  # a drawing wider than this times its height is a fallback of several glyphs: skipped
BACKGROUND = (255, 255, 255)
CACHE_SUBDIR = "emoji-cache"  # under the data directory
CACHE_FORMAT = "vae-emoji-cache/1"  # part of the cache key: change it when the rendering changes
CACHE_KEY_CHARS = 16
CACHE_MAX_BYTES = 2 * 2**30  # refuse a cache declaring more uncompressed bytes than this
CACHE_ARRAYS = {"images": 4, "labels": 1, "class_names": 1, "names": 1, "sequences": 1, "versions": 0}
DPKG_TIMEOUT_S = 10

RenderFn = Callable[[str], Image.Image]  # an emoji sequence -> its RGBA drawing (any size; transparent outside)


class EmojiError(Exception):
    """The emoji dataset cannot be built or read; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class EmojiEntry:
    sequence: str  # the emoji's code points as a string (ZWJ sequences, flags, modifiers included)
    name: str  # its CLDR short name, e.g. "dog face"
    group: str  # its Unicode emoji group, e.g. "Animals & Nature"


@dataclass(frozen=True)
class EmojiSet:
    images: np.ndarray  # (N, 3, S, S) uint8, on white
    labels: np.ndarray  # (N,) int64 index into class_names
    class_names: list[str]  # the groups, in emoji-test.txt's order
    names: list[str]  # (N,) each image's emoji name
    sequences: list[str]  # (N,) each image's emoji
    source: dict[str, Any] = field(default_factory=dict)
    cache_file: Path | None = None


# ---------------------------------------------------------------- emoji-test.txt

def parse_emoji_test(text: str) -> list[EmojiEntry]:
    """The fully-qualified entries of emoji-test.txt, in file order, each with the group it is listed under.

    Entry lines read `1F468 200D 1F469 ; fully-qualified # 👨‍👩 E2.0 name`; `# group: NAME` starts a group."""
    entries, group = [], None
    for line in text.splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
            continue
        if line.startswith("#") or ";" not in line:
            continue
        codes, rest = line.split(";", 1)
        status, _, comment = rest.partition("#")
        if status.strip() != QUALIFIED or group is None:
            continue
        try:
            sequence = "".join(chr(int(c, 16)) for c in codes.split())
        except ValueError:  # not hex, or beyond U+10FFFF
            continue
        if not sequence:
            continue
        words = comment.split()  # emoji, E<version>, name...
        name = " ".join(words[2:]) if len(words) > 2 and words[1].startswith("E") else " ".join(words[1:])
        entries.append(EmojiEntry(sequence, name, group))
    return entries


def emoji_groups(entries: Sequence[EmojiEntry]) -> list[str]:
    """The groups of `entries` in order of first appearance."""
    return list(dict.fromkeys(e.group for e in entries))


# ---------------------------------------------------------------- packages

def _paths(font_path: Path | None, test_path: Path | None) -> tuple[Path, Path]:
    """The given paths, else the module's (read at call time, so tests can point them elsewhere)."""
    return Path(font_path or EMOJI_FONT_PATH), Path(test_path or EMOJI_TEST_PATH)


def emoji_problem(font_path: Path | None = None, test_path: Path | None = None) -> str | None:
    """Why the emoji dataset cannot be built (a package's file missing), in one line, or None."""
    font_path, test_path = _paths(font_path, test_path)
    missing = [str(p) for p in (font_path, test_path) if not p.is_file()]
    if not missing:
        return None
    return (
        f"the emoji dataset needs Debian's packages {' and '.join(EMOJI_PACKAGES)} "
        f"({', '.join(missing)} not found): run `{INSTALL_COMMAND}`"
    )


def package_versions() -> str:
    """'fonts-noto-color-emoji 2.042-0+deb12u1, unicode-data 15.0.0-1' from dpkg, or '' where dpkg cannot say."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Package} ${Version}\\n", *EMOJI_PACKAGES],
            capture_output=True, text=True, timeout=DPKG_TIMEOUT_S, check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return ", ".join(line.strip() for line in out.splitlines() if line.strip())


# ---------------------------------------------------------------- rendering

def font_renderer(font_path: Path) -> RenderFn:
    """Draw a sequence in colour with the CBDT font at `font_path`: its glyph cell as RGBA."""
    from PIL import ImageDraw, ImageFont

    try:
        font = ImageFont.truetype(str(font_path), CBDT_FONT_SIZE)
    except OSError as e:
        raise EmojiError(f"cannot load the emoji font {font_path} ({e}): reinstall it with `{INSTALL_COMMAND}`") from None

    def render(sequence: str) -> Image.Image:
        left, top, right, bottom = font.getbbox(sequence)
        image = Image.new("RGBA", (max(1, right - left), max(1, bottom - top)), (0, 0, 0, 0))
        ImageDraw.Draw(image).text((-left, -top), sequence, font=font, embedded_color=True)
        return image

    return render


def to_square_rgb(drawing: Image.Image, image_size: int) -> np.ndarray | None:
    """An RGBA drawing composited on white, centred in a square and resized: (3, S, S) uint8, or None when
    nothing was drawn or the drawing is a fallback of several glyphs side by side (wider than MAX_GLYPH_ASPECT)."""
    drawing = drawing.convert("RGBA")
    width, height = drawing.size
    if drawing.getchannel("A").getbbox() is None or width > MAX_GLYPH_ASPECT * height:
        return None
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), BACKGROUND)
    canvas.paste(drawing, ((side - width) // 2, (side - height) // 2), mask=drawing)
    canvas = canvas.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return np.asarray(canvas, dtype=np.uint8).transpose(2, 0, 1)  # (3, S, S)


def render_emoji(sequences: Sequence[str], render: RenderFn, image_size: int) -> tuple[np.ndarray, list[int]]:
    """Every sequence drawn by `render` and made square: (images (K, 3, S, S) uint8, the K indices kept)."""
    images = np.empty((len(sequences), EMOJI_CHANNELS, image_size, image_size), dtype=np.uint8)
    kept: list[int] = []
    for i, sequence in enumerate(sequences):
        image = to_square_rgb(render(sequence), image_size)
        if image is not None:
            images[len(kept)] = image
            kept.append(i)
    return images[: len(kept)], kept


def build_emoji(entries: Sequence[EmojiEntry], render: RenderFn, image_size: int) -> EmojiSet:
    """Render `entries`, labelled by group (the groups in order; a group with no drawable emoji is dropped)."""
    images, kept = render_emoji([e.sequence for e in entries], render, image_size)
    if not kept:
        raise EmojiError("the emoji font drew none of the emoji in emoji-test.txt")
    drawn = [entries[i] for i in kept]
    class_names = emoji_groups(drawn)
    labels = np.asarray([class_names.index(e.group) for e in drawn], dtype=np.int64)
    return EmojiSet(images, labels, class_names, [e.name for e in drawn], [e.sequence for e in drawn])


# ---------------------------------------------------------------- cache

def emoji_cache_key(font_path: Path, test_path: Path, image_size: int) -> str:
    """SHA-256 of the cache format, the image size and the contents of the font and of emoji-test.txt."""
    key = hashlib.sha256(f"{CACHE_FORMAT}:{image_size}".encode())
    for path in (font_path, test_path):
        key.update(hashlib.sha256(path.read_bytes()).digest())
    return key.hexdigest()


def emoji_cache_path(data_dir: Path, image_size: int, key: str) -> Path:
    return Path(data_dir) / CACHE_SUBDIR / f"emoji-{image_size}px-{key[:CACHE_KEY_CHARS]}.npz"


def _read_cache(path: Path, image_size: int) -> tuple[EmojiSet, str] | None:
    """(the cached set, the package versions it was built from), or None for a missing or unsound cache."""
    try:
        data = safe_io.read_regular_file(path, CACHE_MAX_BYTES)
        arrays = safe_io.load_npz(path, data, CACHE_ARRAYS, limit=CACHE_MAX_BYTES)
    except (safe_io.UnsafeFileError, OSError):
        return None
    images, labels = arrays["images"], arrays["labels"]
    class_names, names, sequences = (arrays[k].tolist() for k in ("class_names", "names", "sequences"))
    n = len(images)
    if images.dtype != np.uint8 or images.shape[1:] != (EMOJI_CHANNELS, image_size, image_size) or n < 1:
        return None
    if labels.dtype.kind not in "iu" or len(labels) != n or len(names) != n or len(sequences) != n:
        return None
    if not all(isinstance(s, str) for s in (*class_names, *names, *sequences)) or not class_names:
        return None
    if labels.min() < 0 or labels.max() >= len(class_names) or arrays["versions"].dtype.kind != "U":
        return None
    return EmojiSet(images, labels.astype(np.int64), class_names, names, sequences, cache_file=path), str(arrays["versions"])


def _write_cache(path: Path, emoji: EmojiSet, versions: str) -> Path | None:
    """Write the cache atomically and remove this size's older caches; None (with a warning) if it cannot be written."""
    arrays = {
        "images": emoji.images, "labels": emoji.labels, "class_names": np.asarray(emoji.class_names, dtype=str),
        "names": np.asarray(emoji.names, dtype=str), "sequences": np.asarray(emoji.sequences, dtype=str),
        "versions": np.asarray(versions, dtype=str),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        safe_io.atomic_write_bytes(path, safe_io.npz_bytes(arrays))
    except OSError as e:
        log.warning("cannot write the emoji cache %s (%s); it will be rendered again next time", path, e)
        return None
    prefix = path.name[: -len(path.name.rsplit("-", 1)[1])]  # emoji-<S>px-
    for old in path.parent.glob(f"{prefix}*.npz"):
        if old != path:
            with contextlib.suppress(OSError):  # another process cleaning up, or a read-only folder: harmless
                old.unlink()
    return path


def split_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices of an emoji set of `n` images: a fixed permutation, its last tenth the test split."""
    order = np.random.default_rng(EMOJI_SPLIT_SEED).permutation(n)
    n_test = max(1, int(round(n * EMOJI_TEST_FRACTION))) if n > 1 else 0
    return (order[: n - n_test], order[n - n_test :]) if n_test else (order, order)


def load_emoji(
    data_dir: Path,
    image_size: int = EMOJI_IMAGE_SIZE,
    *,
    font_path: Path | None = None,
    test_path: Path | None = None,
    render: RenderFn | None = None,
) -> EmojiSet:
    """The emoji set at `image_size`, from its cache under `data_dir` or rendered (then cached).

    `render` replaces the font (tests draw without one); the cache key still reads both files."""
    problem = emoji_problem(font_path, test_path)
    if problem:
        raise EmojiError(problem)
    font_path, test_path = _paths(font_path, test_path)
    key = emoji_cache_key(font_path, test_path, image_size)
    path = emoji_cache_path(data_dir, image_size, key)
    cached = _read_cache(path, image_size)
    if cached is not None:
        emoji, versions = cached
    else:
        entries = parse_emoji_test(test_path.read_text(encoding="utf-8", errors="replace"))
        if not entries:
            raise EmojiError(f"{test_path} lists no fully-qualified emoji: reinstall it with `{INSTALL_COMMAND}`")
        start = time.perf_counter()
        emoji = build_emoji(entries, render or font_renderer(font_path), image_size)
        log.info("rendered %d emoji at %dpx in %.1f s", len(emoji.images), image_size, time.perf_counter() - start)
        versions = package_versions()
        if len(emoji.images) < len(entries):
            log.warning("the emoji font drew %d of %d emoji; the others are skipped", len(emoji.images), len(entries))
        emoji = replace(emoji, cache_file=_write_cache(path, emoji, versions))
    note = (
        f"{len(emoji.images):,} colour emoji in {len(emoji.class_names)} Unicode groups at {image_size}px on white "
        f"({versions or ' and '.join(EMOJI_PACKAGES)})"
    )
    source = {"name": EMOJI_DATASET, "kind": "full", "path": str(font_path), "versions": versions, "note": note}
    return replace(emoji, source=source)
