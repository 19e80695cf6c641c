"""Datasets as in-memory uint8 tensors: MNIST, Fashion-MNIST (IDX files) and folders of images.

Search order for `mnist` / `fashion-mnist`:
  1. the data directory (default `data/`): `DIR/<name>/`, `DIR/<Name>/raw/` (torchvision's layout) or `DIR/` itself;
  2. fashion-mnist only: /usr/share/datasets/fashion-mnist (Debian's package `dataset-fashion-mnist`);
  3. with `download=True`: torchvision's downloader into the data directory;
  4. mnist only: the bundled offline subset `data/mnist-subset/` (10,000 real digits), said plainly.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .images import IMAGE_EXTENSIONS, decode_image  # the one image decoder and its allow-list: folder images and the explorer's uploads

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_MNIST_SUBSET = PROJECT_ROOT / "data" / "mnist-subset"
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
TORCHVISION_DIRS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
NATIVE_SIZE = 28
FOLDER_TEST_FRACTION = 0.1
FOLDER_PREFIX = "folder:"
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
    how = {
        "mnist": "put the four MNIST IDX files in data/mnist/ or pass --download",
        "fashion-mnist": "run `apt-get install dataset-fashion-mnist`, put the IDX files in data/fashion-mnist/, or pass --download",
    }[name]
    raise DataError(f"{name} not found (looked in {', '.join(looked)}): {how}")


# ---------------------------------------------------------------- folders of images

def _folder_files(root: Path) -> tuple[list[Path], list[int], list[str]]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and ".vae_cache" not in p.parts)
    subdirs = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    if subdirs and all(len(p.relative_to(root).parts) > 1 for p in files):
        class_names = subdirs
        labels = [subdirs.index(p.relative_to(root).parts[0]) for p in files]
    else:
        class_names = ["image"]
        labels = [0] * len(files)
    return files, labels, class_names


def load_folder(root: Path, image_size: int, channels: int, seed: int) -> tuple[dict[str, np.ndarray], dict[str, Any], list[str]]:
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    files, labels, class_names = _folder_files(root)
    if not files:
        raise DataError(f"image folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)}), in it or its class sub-folders")
    key = hashlib.sha256(f"{image_size}:{channels}".encode())
    for p in files:
        st = p.stat()
        key.update(f"{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}".encode())
    cache = root / ".vae_cache" / f"{image_size}px-{channels}ch-{key.hexdigest()[:16]}.npz"
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
            from .runs import atomic_write_bytes, npz_bytes

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
    return NATIVE_SIZE if not dataset.startswith(FOLDER_PREFIX) else 64


def default_channels(dataset: str) -> int:
    return 1 if not dataset.startswith(FOLDER_PREFIX) else 3


def load_dataset(
    dataset: str,
    data_dir: str | os.PathLike = "data",
    image_size: int | None = None,
    channels: int | None = None,
    download: bool = False,
    seed: int = 0,
) -> ImageData:
    """Load `mnist`, `fashion-mnist` or `folder:PATH` into memory as uint8 tensors."""
    image_size = image_size or default_image_size(dataset)
    channels = channels or default_channels(dataset)
    data_dir = Path(data_dir)
    if dataset in CLASS_NAMES:
        arrays, source = load_mnist_like(dataset, data_dir, download)
        class_names = CLASS_NAMES[dataset]
    elif dataset.startswith(FOLDER_PREFIX):
        folder = dataset[len(FOLDER_PREFIX):].strip()
        if not folder:  # Path("") would be the current folder: never scan it by accident
            raise DataError(f"dataset '{dataset}' names no folder: use folder:/path/to/images")
        arrays, source, class_names = load_folder(Path(folder).expanduser(), image_size, channels, seed)
    else:
        raise DataError(f"unknown dataset '{dataset}': use mnist, fashion-mnist or folder:PATH (a folder of images)")
    return ImageData(
        train_x=_to_tensor_images(arrays["train_x"], image_size, channels),
        train_y=torch.from_numpy(arrays["train_y"].astype(np.int64)),
        test_x=_to_tensor_images(arrays["test_x"], image_size, channels),
        test_y=torch.from_numpy(arrays["test_y"].astype(np.int64)),
        class_names=class_names,
        source=source,
    )
