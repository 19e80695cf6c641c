"""Datasets: the IDX reader, the search order and offline fallback, folders of images, clear errors."""
from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer import data as data_mod
from trainer.data import DataError, load_dataset, parse_idx, read_idx

from .helpers import idx_bytes


def write_mnist_like(folder: Path, n_train: int = 12, n_test: int = 6, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    for name, arr in arrays.items():
        raw = idx_bytes(arr)
        (folder / (name + (".gz" if gz else ""))).write_bytes(gzip.compress(raw) if gz else raw)


def test_idx_reader_hand_built(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(arr)
    assert np.array_equal(parse_idx(raw), arr)
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "b").write_bytes(raw)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr) and np.array_equal(read_idx(tmp_path / "b"), arr)


@pytest.mark.parametrize(
    "raw,match",
    [
        (b"\x01\x00\x08\x01", "magic"), (b"\x00\x00\x08\x03\x00\x00", "truncated"),
        (idx_bytes(np.zeros((2, 2)))[:-1], "expected 4 bytes"), (b"\x00\x00\x07\x01", "type code"),
    ],
)
def test_idx_reader_rejects_bad_files(raw, match):
    with pytest.raises(DataError, match=match):
        parse_idx(raw)


def test_bundled_subset_is_the_offline_default(tmp_path):
    data = load_dataset("mnist", data_dir=tmp_path)
    assert data.train_x.shape == (8000, 1, 28, 28) and data.test_x.shape == (2000, 1, 28, 28)
    assert data.train_x.dtype.is_floating_point is False
    assert data.source["kind"] == "subset" and "offline subset" in data.source["note"]
    assert sorted(set(data.train_y.tolist())) == list(range(10))


def test_data_dir_wins_over_subset(tmp_path):
    write_mnist_like(tmp_path / "mnist", gz=False)
    data = load_dataset("mnist", data_dir=tmp_path)
    assert len(data.train_x) == 12 and data.source["path"] == str(tmp_path / "mnist")
    write_mnist_like(tmp_path / "tv" / "MNIST" / "raw")  # torchvision's layout
    assert load_dataset("mnist", data_dir=tmp_path / "tv").source["path"].endswith("MNIST/raw")


def test_fashion_mnist_missing_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_fashion_mnist_from_data_dir(tmp_path):
    write_mnist_like(tmp_path / "fashion-mnist")
    data = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert data.class_names[0] == "T-shirt/top" and len(data.test_x) == 6


def test_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'cifar'"):
        load_dataset("cifar", data_dir=tmp_path)


def test_resize_and_channels(tmp_path):
    write_mnist_like(tmp_path / "mnist")
    data = load_dataset("mnist", data_dir=tmp_path, image_size=32, channels=3)
    assert data.train_x.shape == (12, 3, 32, 32) and data.train_x.dtype.itemsize == 1


def png_bytes(color, size=(40, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_folder_with_class_subfolders(tmp_path):
    root = tmp_path / "photos"
    for cls, color in (("cats", (255, 0, 0)), ("dogs", (0, 0, 255))):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            (root / cls / f"{i}.png").write_bytes(png_bytes(color))
    (root / "dogs" / "broken.jpg").write_bytes(b"not an image")
    data = load_dataset(f"folder:{root}", image_size=32, channels=3)
    assert data.class_names == ["cats", "dogs"]
    assert len(data.train_x) + len(data.test_x) == 10 and data.source["skipped"] == 1
    assert data.train_x.shape[1:] == (3, 32, 32)
    red = data.train_x[data.train_y == 0][0]
    assert red[0].float().mean() > 200 and red[2].float().mean() < 50
    again = load_dataset(f"folder:{root}", image_size=32, channels=3)  # served from the cache
    assert again.source["skipped"] == 1 and list((root / ".vae_cache").iterdir())
    assert np.array_equal(np.sort(again.train_y.numpy()), np.sort(data.train_y.numpy()))


def test_folder_flat_grayscale(tmp_path):
    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(128, mode="L", size=(80, 64)))
    data = load_dataset(f"folder:{tmp_path}", image_size=28, channels=1)
    assert data.class_names == ["image"] and data.train_x.shape[1:] == (1, 28, 28)


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(DataError, match="holds no images"):
        load_dataset(f"folder:{tmp_path}")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="could be read"):
        load_dataset(f"folder:{tmp_path}")


def test_dataset_problem_agrees_with_load_dataset(tmp_path, monkeypatch):
    """The app's cheap check before starting the trainer finds what load_dataset finds and refuses what it refuses, in its words."""
    monkeypatch.setattr(data_mod, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    assert data_mod.dataset_problem("mnist", tmp_path) is None  # the bundled subset
    problem = data_mod.dataset_problem("fashion-mnist", tmp_path)
    assert problem and "apt-get install dataset-fashion-mnist" in problem and "--download" not in problem  # the app cannot download
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert str(info.value).startswith(problem)
    write_mnist_like(tmp_path / "tv" / "FashionMNIST" / "raw")  # torchvision's layout, data dir relative to `root`
    assert data_mod.dataset_problem("fashion-mnist", "tv", root=tmp_path) is None
    empty = tmp_path / "empty"
    empty.mkdir()
    for bad in ("cifar", "folder:", "folder:  ", f"folder:{tmp_path / 'nope'}", f"folder:{empty}"):
        problem = data_mod.dataset_problem(bad, tmp_path)
        with pytest.raises(DataError) as info:
            load_dataset(bad, data_dir=tmp_path)
        assert problem == str(info.value), bad
    (empty / "cats").mkdir()
    (empty / "cats" / "a.png").write_bytes(png_bytes((1, 2, 3)))
    assert data_mod.dataset_problem(f"folder:{empty}") is None and data_mod.dataset_problem("folder:empty", root=tmp_path) is None
