"""Datasets as uint8 tensors: MNIST, Fashion-MNIST (IDX files) in memory, folders of images memory-mapped.

Search order for `mnist` / `fashion-mnist`:
  1. the data directory (default `data/`): `DIR/<name>/`, `DIR/<Name>/raw/` (torchvision's layout) or `DIR/` itself;
  2. fashion-mnist only: /usr/share/datasets/fashion-mnist (Debian's package `dataset-fashion-mnist`);
  3. with `download=True`: torchvision's downloader into the data directory;
  4. mnist only: the bundled offline subset `data/mnist-subset/` (10,000 real digits), said plainly.
`dataset_problem` runs the same search without reading or downloading anything (the app's check before
it starts the trainer). `emoji` is rendered from two Debian packages and cached under the data directory
(trainer/emoji.py).

A folder of images is decoded once, streaming, into `PATH/.vae_cache/`: a raw uint8 file of rows (N, C, S, S)
and a JSON header (shape, dtype, labels, the checksum of the file list). Every folder, whatever its size, is
then memory-mapped from it, so a folder larger than memory trains with bounded resident memory and one in the
page cache as fast as from memory (see bench/bench_memmap.py); torchrun processes on one machine share its
pages instead of holding a copy each. The rows are stored in a fixed shuffled order and the last tenth is the
test split, so both splits are views of the one mapping (the split does not depend on the run's seed). A stale
cache (files added, removed or changed), a truncated or malformed one is rebuilt, never trusted or unpickled.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import math
import os
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import safe_io
from .config import is_int
from .emoji import EMOJI_CHANNELS, EMOJI_DATASET, EMOJI_IMAGE_SIZE, EmojiError, emoji_problem, load_emoji, split_indices
from .images import IMAGE_EXTENSIONS, decode_image  # the one image decoder and its allow-list: folder images and the explorer's uploads
from .paths import BUNDLED_DATA_DIR

log = logging.getLogger(__name__)

BUNDLED_MNIST_SUBSET = BUNDLED_DATA_DIR / "mnist-subset"
DEFAULT_DATA_DIR = "data"  # relative to the working folder, as TrainConfig.data_dir
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
}
DATASETS = (*CLASS_NAMES, EMOJI_DATASET)  # the named datasets; any other must be folder:PATH
TORCHVISION_DIRS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
# How to get a missing named dataset without downloading (load_dataset adds "or pass --download").
INSTALL_HINTS = {
    "mnist": "put the four MNIST IDX files in data/mnist/",
    "fashion-mnist": "run `apt-get install dataset-fashion-mnist` or put the IDX files in data/fashion-mnist/",
}
NATIVE_SIZE = 28
FOLDER_IMAGE_SIZE = 64  # default side for folders of images
FOLDER_CHANNELS = 3
FOLDER_TEST_FRACTION = 0.1
FOLDER_PREFIX = "folder:"
CACHE_DIR = ".vae_cache"  # decoded folder images, inside the folder
CACHE_FORMAT = "vae-folder-cache/1"  # the header's format tag: a cache of another format is rebuilt
CACHE_DATA_SUFFIX = ".u8"  # raw uint8 rows (N, C, S, S), no header of its own
CACHE_KEY_CHARS = 16  # hex digits of the file-list checksum in the cache's file names
CACHE_ORDER_SEED = 0  # the fixed shuffle of the cache's rows; its last rows are the test split
CACHE_HEADER_MAX_BYTES = 256 * 2**20  # the header lists one label per image (a few bytes each)
CACHE_WRITE_BUFFER = 2**22  # decoded rows are written out in chunks of this many bytes
CACHE_TEMP_MAX_AGE_S = 24 * 3600  # a temporary cache file older than this is a crashed build's: removed
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class DataError(Exception):
    """A dataset that cannot be found or read; the message says what was looked for and how to get it."""


@dataclass(frozen=True)
class ImageData:
    train_x: torch.Tensor  # (N, C, H, W) uint8
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor  # (M, C, H, W) uint8
    test_y: torch.Tensor  # (M,) int64
    class_names: list[str]
    source: dict[str, Any] = field(default_factory=dict)  # name, kind (full/subset/folder), path, note
    cache_file: Path | None = None  # the file the images are memory-mapped from (a folder's decode cache); None: in memory

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    def head(self, n_train: int, n_test: int) -> ImageData:
        """The first n_train training and n_test test images (views, not copies): a small set for tests and benchmarks."""
        return ImageData(self.train_x[:n_train], self.train_y[:n_train], self.test_x[:n_test], self.test_y[:n_test],
                         self.class_names, self.source)


# ---------------------------------------------------------------- IDX

def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """Parse the IDX format used by MNIST (big-endian header: 0, 0, dtype code, ndim, then dims)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{name}: not an IDX file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES or ndim == 0:
        raise DataError(f"{name}: unsupported IDX type code 0x{code:02x} or 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated IDX header")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[code])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(f"{name}: expected {expected} bytes of data for shape {dims}, found {len(data) - header}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file, gzipped (.gz) or not."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: corrupt gzip ({e})") from None
    return parse_idx(raw, str(path))


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def has_idx_files(folder: Path) -> bool:
    """Whether `folder` holds the four MNIST-style IDX files (gzipped or not); reads none of them."""
    return all(_find_idx(folder, stem) is not None for stem in IDX_FILES.values())


def read_idx_folder(folder: Path) -> dict[str, np.ndarray] | None:
    """The four MNIST-style IDX files of `folder`, or None if any is absent."""
    paths = {key: _find_idx(folder, stem) for key, stem in IDX_FILES.items()}
    if any(p is None for p in paths.values()):
        return None
    arrays = {key: read_idx(p) for key, p in paths.items()}  # type: ignore[arg-type]
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{folder}: {split} images {x.shape} and labels {y.shape} do not match")
    return arrays


# ---------------------------------------------------------------- MNIST-like

def _candidate_dirs(name: str, data_dir: Path) -> list[Path]:
    """Where a named dataset's IDX files are looked for, in order (before any download or the bundled subset)."""
    dirs = [data_dir / name, data_dir / TORCHVISION_DIRS[name] / "raw", data_dir]
    if name == "fashion-mnist":
        dirs.append(DEBIAN_FASHION_MNIST)
    return dirs


def _torchvision_download(name: str, data_dir: Path) -> Path | None:
    try:
        import torchvision.datasets as tvd

        cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
        for train in (True, False):
            cls(str(data_dir), train=train, download=True)
        return data_dir / TORCHVISION_DIRS[name] / "raw"
    except Exception as e:  # no network, mirror down, disk full: report and fall back
        log.warning("torchvision could not download %s (%s)", name, e)
        return None


def load_mnist_like(name: str, data_dir: Path, download: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    looked = []
    for folder in _candidate_dirs(name, data_dir):
        looked.append(str(folder))
        arrays = read_idx_folder(folder)
        if arrays is not None:
            n = len(arrays["train_x"]) + len(arrays["test_x"])
            kind = "full" if n >= 70_000 else "subset"
            return arrays, {"name": name, "kind": kind, "path": str(folder), "note": f"{name} from {folder} ({n:,} images)"}
    if download:
        folder = _torchvision_download(name, data_dir)
        if folder is not None and (arrays := read_idx_folder(folder)) is not None:
            return arrays, {"name": name, "kind": "full", "path": str(folder), "note": f"{name} downloaded by torchvision to {folder}"}
    if name == "mnist" and (arrays := read_idx_folder(BUNDLED_MNIST_SUBSET)) is not None:
        n = len(arrays["train_x"]) + len(arrays["test_x"])
        note = (
            f"full MNIST not found (looked in {', '.join(looked)}); using the bundled offline subset "
            f"of {n:,} real MNIST digits ({len(arrays['train_x']):,} train / {len(arrays['test_x']):,} test) — "
            "pass --download to fetch full MNIST with torchvision"
        )
        return arrays, {"name": name, "kind": "subset", "path": str(BUNDLED_MNIST_SUBSET), "note": note}
    raise DataError(f"{_not_found(name, looked)}, or pass --download")


def _not_found(name: str, looked: list[str]) -> str:
    return f"{name} not found (looked in {', '.join(looked)}): {INSTALL_HINTS[name]}"


# ---------------------------------------------------------------- folders of images

def _image_files(root: Path) -> Iterator[Path]:
    """The image files under `root` (by extension), in no particular order, outside the decode cache."""
    return (p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and CACHE_DIR not in p.parts and p.is_file())


def _folder_problem(root: Path) -> str | None:
    """Why `root` is not a usable image folder (missing, or no image files), or None."""
    if not root.is_dir():
        return f"image folder {root} does not exist or is not a folder (use folder:/path/to/images)"
    if next(_image_files(root), None) is None:
        return f"image folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)}), in it or its class sub-folders"
    return None


def _folder_files(root: Path) -> tuple[list[Path], list[int], list[str]]:
    files = sorted(_image_files(root))
    subdirs = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    if subdirs and all(len(p.relative_to(root).parts) > 1 for p in files):
        class_names = subdirs
        labels = [subdirs.index(p.relative_to(root).parts[0]) for p in files]
    else:
        class_names = ["image"]
        labels = [0] * len(files)
    return files, labels, class_names


def folder_cache_key(root: Path, files: list[Path], image_size: int, channels: int) -> str:
    """SHA-256 of the cache format, the image size and channels, and every file's relative path, size and mtime."""
    key = hashlib.sha256(f"{CACHE_FORMAT}:{image_size}:{channels}".encode())
    for p in files:
        st = p.stat()
        key.update(f"{p.relative_to(root)}\0{st.st_size}:{st.st_mtime_ns}\n".encode())
    return key.hexdigest()


def folder_cache_paths(root: Path, image_size: int, channels: int, key: str) -> tuple[Path, Path]:
    """(data file, header file) of a folder's decode cache: raw uint8 rows (N, C, S, S) and their JSON header."""
    stem = f"{_cache_prefix(image_size, channels)}{key[:CACHE_KEY_CHARS]}"
    return root / CACHE_DIR / f"{stem}{CACHE_DATA_SUFFIX}", root / CACHE_DIR / f"{stem}.json"


def _cache_prefix(image_size: int, channels: int) -> str:
    return f"{image_size}px-{channels}ch-"


def _map_rows(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """`path` memory-mapped copy-on-write as uint8 `shape`, if it is a regular file of exactly that many bytes.

    Copy-on-write: the array is writable (torch.from_numpy takes it without a warning, and without a copy),
    a write would change this process's pages only, never the file. Symlinks and FIFOs are refused unopened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != math.prod(shape):  # truncated, grown or not a file
            return None
        return np.memmap(f, dtype=np.uint8, mode="c", shape=shape)  # the mapping outlives the file object


def _read_cache(
    data_path: Path, header_path: Path, key: str, row_shape: tuple[int, int, int], n_files: int, n_classes: int
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(memory-mapped images (N, C, S, S), labels (N,), files skipped) of a sound, current cache, else None.

    Nothing in it is trusted: the header must name this file list's checksum and a shape and labels that fit
    it, and the data file must hold exactly the bytes the header declares."""
    try:
        header = json.loads(safe_io.read_regular_file(header_path, CACHE_HEADER_MAX_BYTES))
    except (safe_io.UnsafeFileError, ValueError, RecursionError):
        return None
    if not isinstance(header, dict) or header.get("format") != CACHE_FORMAT or header.get("files_sha256") != key:
        return None  # another format, or stale: files were added, removed or changed
    shape, skipped = header.get("shape"), header.get("skipped")
    if header.get("dtype") != "uint8" or not isinstance(shape, list) or len(shape) != 4 or not all(is_int(s) for s in shape):
        return None
    if tuple(shape[1:]) != row_shape or not is_int(skipped) or shape[0] < 1 or skipped < 0 or shape[0] + skipped != n_files:
        return None
    try:
        labels = np.asarray(header.get("labels"))
    except (ValueError, TypeError):
        return None
    if labels.ndim != 1 or len(labels) != shape[0] or labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= n_classes:
        return None
    images = _map_rows(data_path, tuple(shape))
    return None if images is None else (images, labels.astype(np.int64), int(skipped))


def _decode_rows(f: BinaryIO, files: list[Path], labels: list[int], image_size: int, channels: int) -> tuple[list[int], int]:
    """Decode `files` one by one, appending each readable image's (C, S, S) uint8 bytes to `f`: (kept labels, skipped)."""
    kept, skipped = [], 0
    for p, label in zip(files, labels):
        try:
            image = decode_image(p.read_bytes(), image_size, channels)  # (C, S, S) uint8
        except Exception:  # unreadable or not an image: skipped and counted
            skipped += 1
            continue
        f.write(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
        kept.append(label)
    f.flush()
    return kept, skipped


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _remove_stale(cache_dir: Path, image_size: int, channels: int, keep: tuple[Path, ...]) -> None:
    """Remove this size's other caches (stale file lists, the old .npz format) and crashed builds' old temporary files."""
    prefix, now = _cache_prefix(image_size, channels), time.time()
    try:
        for p in cache_dir.iterdir():
            if p in keep:
                continue
            stale = p.name.startswith(prefix) and p.suffix in (CACHE_DATA_SUFFIX, ".json", ".npz")
            crashed = p.name.startswith("." + prefix) and p.suffix == ".tmp" and now - p.lstat().st_mtime > CACHE_TEMP_MAX_AGE_S
            if stale or crashed:
                p.unlink()
    except OSError:
        pass  # another process cleaning up, or a read-only folder: harmless


def _build_cache(
    root: Path, files: list[Path], labels: list[int], class_names: list[str], image_size: int, channels: int, key: str
) -> tuple[np.ndarray, np.ndarray, int, Path | None]:
    """Decode every file once into the folder's cache, streaming (one image in memory at a time); memory-map it:
    (images (N, C, S, S), labels (N,), files skipped, the data file or None for an unnamed temporary file).

    Rows are written in a fixed shuffled order (CACHE_ORDER_SEED) so the last rows make a fair test split. The
    data file is written to a temporary name, fsynced and renamed, then its header (written last: a cache
    without one is rebuilt). A folder that cannot be written decodes into an unnamed temporary file instead."""
    data_path, header_path = folder_cache_paths(root, image_size, channels, key)
    order = np.random.default_rng(CACHE_ORDER_SEED).permutation(len(files))
    files, labels = [files[i] for i in order], [labels[i] for i in order]
    tmp: str | None = None
    try:
        data_path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{data_path.name}.", suffix=".tmp", dir=data_path.parent)
        with os.fdopen(fd, "wb", buffering=CACHE_WRITE_BUFFER) as f:
            kept, skipped = _decode_rows(f, files, labels, image_size, channels)
            os.fsync(f.fileno())
        if kept:
            os.replace(tmp, data_path)
            tmp = None
            _fsync_dir(data_path.parent)
    except OSError as e:  # read-only folder, disk full: decode into a temporary file that disappears with the process
        log.warning("cannot write the decode cache in %s (%s); decoding into a temporary file", data_path.parent, e)
        try:
            f = tempfile.TemporaryFile(buffering=CACHE_WRITE_BUFFER)
            kept, skipped = _decode_rows(f, files, labels, image_size, channels)
        except OSError as e2:
            raise DataError(
                f"image folder {root}: no room to decode it, neither in {data_path.parent} ({e.strerror or e}) "
                f"nor in a temporary file ({e2.strerror or e2})"
            ) from None
        data_path = None  # type: ignore[assignment]
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    if not kept:
        raise DataError(f"image folder {root}: none of its {len(files)} image files could be read")
    if skipped:
        log.warning("skipped %d unreadable image files in %s", skipped, root)
    shape = (len(kept), channels, image_size, image_size)
    kept_labels = np.asarray(kept, dtype=np.int64)
    if data_path is None:
        with f:
            return np.memmap(f, dtype=np.uint8, mode="c", shape=shape), kept_labels, skipped, None
    header = {
        "format": CACHE_FORMAT, "source": str(root), "files_sha256": key, "n_files": len(files),
        "shape": list(shape), "dtype": "uint8", "data_file": data_path.name, "skipped": skipped,
        "class_names": class_names, "labels": kept,
    }
    try:
        safe_io.atomic_write_bytes(header_path, json.dumps(header, separators=(",", ":")).encode())
        _remove_stale(data_path.parent, image_size, channels, keep=(data_path, header_path))
    except OSError:
        pass  # no header: the next load decodes again
    images = _map_rows(data_path, shape)
    if images is None:  # replaced under us by another process's build of other files: theirs is not ours
        raise DataError(f"image folder {root}: its decode cache {data_path} changed while it was being built; try again")
    return images, kept_labels, skipped, data_path


def folder_test_size(n: int) -> int:
    """How many of a folder's `n` images (the last rows of its cache) are its test split: 0 for one image (test = train)."""
    return max(1, int(round(n * FOLDER_TEST_FRACTION))) if n > 1 else 0


def load_folder(root: Path, image_size: int, channels: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any], list[str], Path | None]:
    """A folder's images (N, C, S, S) uint8 memory-mapped from its decode cache (built or rebuilt when needed),
    labels (N,), source, class names and the cache's data file (None: an unnamed temporary file)."""
    problem = _folder_problem(root)
    if problem:
        raise DataError(problem)
    files, labels, class_names = _folder_files(root)
    key = folder_cache_key(root, files, image_size, channels)
    data_path, header_path = folder_cache_paths(root, image_size, channels, key)
    cached = _read_cache(data_path, header_path, key, (channels, image_size, image_size), len(files), len(class_names))
    if cached is not None:
        images, kept_labels, skipped = cached
        cache_file: Path | None = data_path
    else:
        images, kept_labels, skipped, cache_file = _build_cache(root, files, labels, class_names, image_size, channels, key)
    note = f"{len(images):,} images from folder {root} at {image_size}px, {channels} channel(s)" + (f"; {skipped} unreadable files skipped" if skipped else "")
    source = {"name": f"{FOLDER_PREFIX}{root}", "kind": "folder", "path": str(root), "skipped": skipped, "note": note}
    return images, kept_labels, source, class_names, cache_file


# ---------------------------------------------------------------- entry point

def _to_tensor_images(x: np.ndarray, image_size: int, channels: int) -> torch.Tensor:
    """(N, H, W) or (N, C, H, W) uint8 -> (N, channels, image_size, image_size) uint8."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.ndim == 3:
        t = t[:, None]
    if t.shape[1] != channels:
        t = t.expand(-1, channels, -1, -1) if t.shape[1] == 1 else t.float().mean(1, keepdim=True).round().to(torch.uint8)
    if t.shape[-1] != image_size or t.shape[-2] != image_size:
        t = F.interpolate(t.float(), size=(image_size, image_size), mode="bilinear", align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return t.contiguous()


def default_image_size(dataset: str) -> int:
    if dataset == EMOJI_DATASET:
        return EMOJI_IMAGE_SIZE
    return NATIVE_SIZE if not dataset.startswith(FOLDER_PREFIX) else FOLDER_IMAGE_SIZE


def default_channels(dataset: str) -> int:
    if dataset == EMOJI_DATASET:
        return EMOJI_CHANNELS
    return 1 if not dataset.startswith(FOLDER_PREFIX) else FOLDER_CHANNELS


def _resolve(path: str | os.PathLike, root: Path | None) -> Path:
    """`path` with ~ expanded; a relative path is taken from `root` (default: the working folder)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() or root is None else root / p


def _folder_of(dataset: str, root: Path | None) -> Path:
    """The folder named by `folder:PATH`; DataError if it names none (Path("") would scan the working folder)."""
    text = dataset[len(FOLDER_PREFIX):].strip()
    if not text:
        raise DataError(f"dataset '{dataset}' names no folder: use folder:/path/to/images")
    return _resolve(text, root)


def _unknown(dataset: str) -> str:
    return f"unknown dataset '{dataset}': use {', '.join(DATASETS)} or folder:PATH (a folder of images)"


def dataset_problem(dataset: str, data_dir: str | os.PathLike = DEFAULT_DATA_DIR, root: Path | None = None) -> str | None:
    """Why `load_dataset(dataset, data_dir)` would find nothing to load without downloading, or None.

    The same search as load_dataset, but cheap: it reads no data and decodes no image. Relative paths
    are taken from `root` (the trainer's working folder; default the current one)."""
    if dataset == EMOJI_DATASET:
        return emoji_problem()
    if dataset in DATASETS:
        dirs = _candidate_dirs(dataset, _resolve(data_dir, root))
        if any(has_idx_files(d) for d in dirs) or (dataset == "mnist" and has_idx_files(BUNDLED_MNIST_SUBSET)):
            return None
        return _not_found(dataset, [str(d) for d in dirs])
    if not dataset.startswith(FOLDER_PREFIX):
        return _unknown(dataset)
    try:
        return _folder_problem(_folder_of(dataset, root))
    except DataError as e:
        return str(e)


def _load_emoji(data_dir: Path, image_size: int, channels: int) -> ImageData:
    """The emoji set (rendered once, cached under `data_dir`), split by its fixed permutation, in memory."""
    try:
        emoji = load_emoji(data_dir, image_size)
    except EmojiError as e:
        raise DataError(str(e)) from None
    train, test = split_indices(len(emoji.images))
    x, y = _to_tensor_images(emoji.images, image_size, channels), torch.from_numpy(emoji.labels)  # (N, C, S, S)
    return ImageData(x[train], y[train], x[test], y[test], emoji.class_names, emoji.source)


def load_dataset(
    dataset: str,
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    image_size: int | None = None,
    channels: int | None = None,
    download: bool = False,
    seed: int = 0,
) -> ImageData:
    """Load `mnist`, `fashion-mnist`, `emoji` (into memory) or `folder:PATH` (memory-mapped from its decode cache) as uint8 tensors.

    `seed` is accepted for callers' sake: no split depends on it (a folder's is fixed by its cache)."""
    image_size = image_size or default_image_size(dataset)
    channels = channels or default_channels(dataset)
    if dataset.startswith(FOLDER_PREFIX):
        images, labels, source, class_names, cache_file = load_folder(_folder_of(dataset, None), image_size, channels)
        x, y = torch.from_numpy(images), torch.from_numpy(labels)  # views of the mapping: no pixel is read here
        n_train = len(x) - folder_test_size(len(x))
        test = slice(n_train, None) if n_train < len(x) else slice(None)  # one image: test = train
        return ImageData(x[:n_train], y[:n_train], x[test], y[test], class_names, source, cache_file)
    if dataset == EMOJI_DATASET:
        return _load_emoji(_resolve(data_dir, None), image_size, channels)
    if dataset not in DATASETS:
        raise DataError(_unknown(dataset))
    arrays, source = load_mnist_like(dataset, _resolve(data_dir, None), download)
    class_names = CLASS_NAMES[dataset]
    return ImageData(
        train_x=_to_tensor_images(arrays["train_x"], image_size, channels),
        train_y=torch.from_numpy(arrays["train_y"].astype(np.int64)),
        test_x=_to_tensor_images(arrays["test_x"], image_size, channels),
        test_y=torch.from_numpy(arrays["test_y"].astype(np.int64)),
        class_names=class_names,
        source=source,
    )
