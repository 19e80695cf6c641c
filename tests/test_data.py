"""Datasets: the IDX reader, the search order and offline fallback, folders of images, clear errors."""
from __future__ import annotations

import gzip
import io
import json
import os
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


# ---------------------------------------------------------------- the memory-mapped folder cache

CACHE_SIZE = 16  # px: the folder-cache tests decode at this size


def write_noise_folder(root: Path, per_class: int = 6, seed: int = 0) -> None:
    """Two class sub-folders of distinct random RGB PNGs (no two decode to the same pixels)."""
    rng = np.random.default_rng(seed)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")


def load_noise(root: Path, size: int = CACHE_SIZE) -> data_mod.ImageData:
    return load_dataset(f"folder:{root}", image_size=size, channels=3)


def cache_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / data_mod.CACHE_DIR).iterdir())


def all_rows(data: data_mod.ImageData) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([data.train_x.numpy(), data.test_x.numpy()]), np.concatenate([data.train_y.numpy(), data.test_y.numpy()])


def fresh_decode(root: Path) -> dict[bytes, int]:
    """Every image file of `root` decoded now, as {pixels: label}."""
    files, labels, _ = data_mod._folder_files(root)
    return {data_mod.decode_image(p.read_bytes(), CACHE_SIZE, 3).tobytes(): label for p, label in zip(files, labels)}


def mapped_path(tensor) -> str | None:
    """The file whose mapping holds `tensor`'s memory, from /proc/self/maps (None: anonymous memory)."""
    ptr = tensor.untyped_storage().data_ptr()
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(v, 16) for v in parts[0].split("-"))
            if lo <= ptr < hi:
                return parts[5] if len(parts) > 5 else None
    return None


def test_folder_cache_is_built_once_memory_mapped_and_reused(tmp_path, monkeypatch):
    write_noise_folder(tmp_path)
    data = load_noise(tmp_path)
    assert data.cache_file is not None and data.cache_file.parent == tmp_path / data_mod.CACHE_DIR
    assert cache_files(tmp_path) == sorted([data.cache_file.name, data.cache_file.with_suffix(".json").name])
    assert len(data.train_x) == 11 and len(data.test_x) == 1  # 12 images, a tenth (rounded, at least one) for test
    if Path("/proc/self/maps").exists():  # the tensors view the cache file itself: no copy in memory
        assert mapped_path(data.train_x) == str(data.cache_file) == mapped_path(data.test_x)
    assert data.train_x.untyped_storage().data_ptr() == data.test_x.untyped_storage().data_ptr()  # one mapping, two views
    stamp = data.cache_file.stat().st_mtime_ns

    def no_decoding(*_args, **_kw):
        raise AssertionError("a current cache must not decode again")

    monkeypatch.setattr(data_mod, "decode_image", no_decoding)
    again = load_noise(tmp_path)
    assert again.cache_file == data.cache_file and data.cache_file.stat().st_mtime_ns == stamp
    assert np.array_equal(again.train_x.numpy(), data.train_x.numpy()) and np.array_equal(again.test_y.numpy(), data.test_y.numpy())


def test_memory_mapped_pixels_are_a_fresh_decode(tmp_path):
    """Every row of the cache is exactly what decode_image makes of one file, with that file's label, each file once."""
    write_noise_folder(tmp_path)
    load_noise(tmp_path)  # build
    x, y = all_rows(load_noise(tmp_path))  # served from the cache
    expected = fresh_decode(tmp_path)
    assert len(x) == len(expected) == 12
    assert {row.tobytes(): int(label) for row, label in zip(x, y)} == expected
    assert set(y.tolist()) == {0, 1}


def test_stale_cache_is_rebuilt(tmp_path):
    write_noise_folder(tmp_path)
    first = load_noise(tmp_path).cache_file
    write_noise_folder(tmp_path, per_class=7, seed=1)  # adds a/6.png, b/6.png and changes the other twelve
    added = load_noise(tmp_path)
    assert added.cache_file != first and cache_files(tmp_path) == sorted([added.cache_file.name, added.cache_file.with_suffix(".json").name])
    assert {r.tobytes(): int(lab) for r, lab in zip(*all_rows(added))} == fresh_decode(tmp_path)  # the new pixels, 14 of them
    (tmp_path / "b" / "3.png").unlink()
    removed = load_noise(tmp_path)
    assert len(all_rows(removed)[0]) == 13 and {r.tobytes(): int(lab) for r, lab in zip(*all_rows(removed))} == fresh_decode(tmp_path)


def test_same_size_change_is_seen(tmp_path):
    """A file rewritten in place with the same size is a change (its mtime is part of the file-list checksum)."""
    write_noise_folder(tmp_path)
    load_noise(tmp_path)
    target = tmp_path / "a" / "0.png"
    donor = (tmp_path / "a" / "1.png").read_bytes()
    old = target.stat()
    target.write_bytes(donor)
    os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns + 10**9))
    rows = [r.tobytes() for r in all_rows(load_noise(tmp_path))[0]]
    assert rows.count(data_mod.decode_image(donor, CACHE_SIZE, 3).tobytes()) == 2


def corrupt_truncate(data_file: Path) -> None:
    with open(data_file, "r+b") as f:
        f.truncate(data_file.stat().st_size - 1)


def corrupt_grow(data_file: Path) -> None:
    with open(data_file, "ab") as f:
        f.write(b"\0")


def corrupt_header(edit):
    def corrupt(data_file: Path) -> None:
        header_file = data_file.with_suffix(".json")
        header = json.loads(header_file.read_text())
        edit(header)
        header_file.write_text(json.dumps(header))
    return corrupt


def corrupt_fifo(data_file: Path) -> None:
    data_file.unlink()
    os.mkfifo(data_file)


@pytest.mark.parametrize("corrupt", [
    corrupt_truncate,
    corrupt_grow,
    lambda f: f.with_suffix(".json").write_text('{"format": '),  # a truncated header
    lambda f: f.with_suffix(".json").unlink(),  # crashed between the data file and its header
    corrupt_header(lambda h: h.update(shape=[h["shape"][0], 3, 8, 32])),  # same bytes, other shape
    corrupt_header(lambda h: h["labels"].__setitem__(0, 7)),  # a label with no class
    corrupt_header(lambda h: h.update(labels=h["labels"][:-1])),
    corrupt_header(lambda h: h.update(labels="x" * 12)),
    corrupt_header(lambda h: h.update(files_sha256="0" * 64)),
    corrupt_header(lambda h: h.update(format="vae-folder-cache/0")),
    corrupt_fifo,  # a FIFO would hang a reader: refused unopened
], ids=["truncated", "grown", "header-truncated", "header-missing", "shape", "label-range", "label-count", "labels-type", "checksum", "format", "fifo"])
def test_damaged_cache_is_rebuilt_never_trusted(tmp_path, corrupt):
    write_noise_folder(tmp_path)
    data_file = load_noise(tmp_path).cache_file
    corrupt(data_file)
    data = load_noise(tmp_path)
    assert data.cache_file == data_file and data_file.is_file()
    assert data_file.stat().st_size == 12 * 3 * CACHE_SIZE * CACHE_SIZE
    assert {r.tobytes(): int(lab) for r, lab in zip(*all_rows(data))} == fresh_decode(tmp_path)


def test_unwritable_folder_decodes_into_a_temporary_file(tmp_path, monkeypatch):
    write_noise_folder(tmp_path)

    def refuse(*_args, **_kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(data_mod.tempfile, "mkstemp", refuse)
    data = load_noise(tmp_path)
    assert data.cache_file is None and cache_files(tmp_path) == []
    assert {r.tobytes(): int(lab) for r, lab in zip(*all_rows(data))} == fresh_decode(tmp_path)


def test_batches_by_index_gather_the_right_rows_from_the_mapping(tmp_path):
    """The trainer keeps the mapped tensors as they are (no dense copy on the CPU) and a batch is exactly the rows asked for."""
    import torch

    from models import ModelConfig
    from trainer.config import TrainConfig
    from trainer.train import Trainer

    write_noise_folder(tmp_path, per_class=10)
    size = 28  # a size the models take
    data = load_noise(tmp_path, size)
    trainer = Trainer(ModelConfig(latent_dim=2, widths=(4, 4, 4), in_channels=3, image_size=size), TrainConfig(batch_size=4, atlas_size=2), data)
    assert trainer.train_x.untyped_storage().data_ptr() == data.train_x.untyped_storage().data_ptr()
    index = torch.tensor([5, 0, 17, 5])
    batch = trainer.images(trainer.train_x, index)  # (4, 3, S, S) float in [0, 1]
    rows = data.cache_file.read_bytes()
    row_bytes = 3 * size * size
    for k, i in enumerate(index.tolist()):  # the file's row i, read without the mapping
        expected = np.frombuffer(rows[i * row_bytes : (i + 1) * row_bytes], np.uint8).reshape(3, size, size)
        assert torch.equal(batch[k], torch.from_numpy(expected.astype(np.float32) / 255.0))
    assert torch.equal(trainer.images(trainer.test_x, slice(0, 2)), data.test_x[:2].float() / 255.0)
    n_train = len(data.train_x)
    assert np.array_equal(data.test_x[0].numpy().tobytes(), rows[n_train * row_bytes : (n_train + 1) * row_bytes])  # test rows follow the train rows
