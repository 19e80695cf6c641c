"""Datasets as in-memory uint8 tensors: MNIST, Fashion-MNIST (IDX files) and folders of images.

Search order for `mnist` / `fashion-mnist`:
  1. the data directory (default `data/`): `DIR/<name>/`, `DIR/<Name>/raw/` (torchvision's layout) or `DIR/` itself;
  2. fashion-mnist only: /usr/share/datasets/fashion-mnist (Debian's package `dataset-fashion-mnist`);
  3. with `download=True`: torchvision's downloader into the data directory;
  4. mnist only: the bundled offline subset `data/mnist-subset/` (10,000 real digits), said plainly.
`dataset_problem` runs the same search without reading or downloading anything (the app's check before
it starts the trainer).
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

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
DATASETS = tuple(CLASS_NAMES)  # the named datasets; any other must be folder:PATH
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

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]


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


def load_folder(root: Path, image_size: int, channels: int, seed: int) -> tuple[dict[str, np.ndarray], dict[str, Any], list[str]]:
    problem = _folder_problem(root)
    if problem:
        raise DataError(problem)
    files, labels, class_names = _folder_files(root)
    key = hashlib.sha256(f"{image_size}:{channels}".encode())
    for p in files:
        st = p.stat()
        key.update(f"{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}".encode())
    cache = root / CACHE_DIR / f"{image_size}px-{channels}ch-{key.hexdigest()[:16]}.npz"
    images, kept_labels, skipped = None, None, 0
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as npz:
                images, kept_labels, skipped = npz["images"], npz["labels"], int(npz["skipped"])
        except Exception:  # a stale or damaged cache is simply rebuilt
            images = None
    if images is None:
        skipped = 0
        decoded, kept = [], []
        for p, label in zip(files, labels):
            try:
                decoded.append(decode_image(p.read_bytes(), image_size, channels))
                kept.append(label)
            except Exception:
                skipped += 1
        if not decoded:
            raise DataError(f"image folder {root}: none of its {len(files)} image files could be read")
        if skipped:
            log.warning("skipped %d unreadable image files in %s", skipped, root)
        images, kept_labels = np.stack(decoded), np.asarray(kept, dtype=np.int64)
        try:
            cache.parent.mkdir(exist_ok=True)
            from .safe_io import atomic_write_bytes, npz_bytes

            atomic_write_bytes(cache, npz_bytes({"images": images, "labels": kept_labels, "skipped": np.asarray(skipped)}))
        except OSError:
            pass  # a read-only folder just decodes again next time
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = max(1, int(round(len(images) * FOLDER_TEST_FRACTION))) if len(images) > 1 else 0
    test_idx, train_idx = order[:n_test], order[n_test:]
    if n_test == 0:
        test_idx = train_idx
    arrays = {"train_x": images[train_idx], "train_y": kept_labels[train_idx], "test_x": images[test_idx], "test_y": kept_labels[test_idx]}
    note = f"{len(images):,} images from folder {root} at {image_size}px, {channels} channel(s)" + (f"; {skipped} unreadable files skipped" if skipped else "")
    return arrays, {"name": f"{FOLDER_PREFIX}{root}", "kind": "folder", "path": str(root), "skipped": skipped, "note": note}, class_names


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
    return NATIVE_SIZE if not dataset.startswith(FOLDER_PREFIX) else FOLDER_IMAGE_SIZE


def default_channels(dataset: str) -> int:
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


def load_dataset(
    dataset: str,
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    image_size: int | None = None,
    channels: int | None = None,
    download: bool = False,
    seed: int = 0,
) -> ImageData:
    """Load `mnist`, `fashion-mnist` or `folder:PATH` into memory as uint8 tensors."""
    image_size = image_size or default_image_size(dataset)
    channels = channels or default_channels(dataset)
    if dataset in DATASETS:
        arrays, source = load_mnist_like(dataset, _resolve(data_dir, None), download)
        class_names = CLASS_NAMES[dataset]
    elif dataset.startswith(FOLDER_PREFIX):
        arrays, source, class_names = load_folder(_folder_of(dataset, None), image_size, channels, seed)
    else:
        raise DataError(_unknown(dataset))
    return ImageData(
        train_x=_to_tensor_images(arrays["train_x"], image_size, channels),
        train_y=torch.from_numpy(arrays["train_y"].astype(np.int64)),
        test_x=_to_tensor_images(arrays["test_x"], image_size, channels),
        test_y=torch.from_numpy(arrays["test_y"].astype(np.int64)),
        class_names=class_names,
        source=source,
    )
