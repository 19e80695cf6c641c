"""Run folders from strangers: damaged, inconsistent or hostile variants of a real run, each generated here.

Every variant must give one RunError of one line naming the file at fault, never another exception,
never a hang (FIFOs), never an unpickle (a payload whose __reduce__ would create a marker file), and
never an allocation the run's own config does not justify (zip bombs, huge declared shapes and models).
`list_runs` and the app's sidebar list each broken run as broken and keep serving the good ones.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import struct
import tracemalloc
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from models import ModelConfig, build_model
from trainer import runs as runs_mod
from trainer.runs import ATLAS_IMAGES_FILE, CONFIG_FILE, MANIFEST_FILE, MAX_JSON_BYTES, STATUS_FILE, RunError, RunLock, list_runs, load_run

from .helpers import TINY_WIDTHS

GOOD_RUNS = ("vae2", "ae2")
BOMB_IMAGES = 100_000  # a zip bomb's images of zeros: ~80 MB declared, ~80 kB on disk
BOMB_PEAK_BYTES = 16 * 2**20  # what refusing it may allocate
HUGE = 2**40
DEEP = 100_000  # nesting of the deeply nested JSON
DIGITS = 5000  # an integer beyond Python's int/str conversion limit
MAX_MESSAGE_CHARS = 1000


# ---------------------------------------------------------------- helpers that damage a run folder

def manifest(d: Path) -> dict:
    return json.loads((d / MANIFEST_FILE).read_text())


def set_manifest(d: Path, **changes) -> None:
    (d / MANIFEST_FILE).write_text(json.dumps(manifest(d) | changes))


def unchecked(d: Path) -> None:
    """Drop the manifest's checksums, as in a hand-made run."""
    m = manifest(d)
    m.pop("sha256", None)
    (d / MANIFEST_FILE).write_text(json.dumps(m))


def file_of(d: Path, key: str) -> Path:
    return d / manifest(d)["files"][key]


def config(d: Path) -> dict:
    return json.loads((d / CONFIG_FILE).read_text())


def set_config(d: Path, **changes) -> None:
    (d / CONFIG_FILE).write_text(json.dumps(config(d) | changes))


def set_model(d: Path, **changes) -> None:
    cfg = config(d)
    set_config(d, model=cfg["model"] | changes)


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def truncate(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def weights(d: Path) -> dict[str, torch.Tensor]:
    return st_load(file_of(d, "weights").read_bytes())


def save_weights(d: Path, tensors: dict[str, torch.Tensor]) -> None:
    unchecked(d)
    file_of(d, "weights").write_bytes(st_save(tensors))


def poison_weight(d: Path, value: float) -> None:
    tensors = weights(d)
    first = next(iter(tensors))
    tensors[first].view(-1)[0] = value
    save_weights(d, tensors)


def raw_safetensors(header: dict, payload: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # allow_pickle defaults to True when saving: object arrays are pickled
    return buf.getvalue()


def npy_header_only(shape: tuple[int, ...], dtype: str, payload: bytes = b"") -> bytes:
    """A .npy member declaring `shape` of `dtype` but holding only `payload`."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


def zip_members(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def lie_about_sizes(data: bytes, size: int) -> bytes:
    """Patch every uncompressed-size field of a zip (local and central headers) to `size`."""
    out = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (i := out.find(signature, start)) >= 0:
            out[i + offset : i + offset + 4] = struct.pack("<I", size)
            start = i + 4
    return bytes(out)


def atlas_arrays(d: Path) -> dict[str, np.ndarray]:
    with np.load(d / ATLAS_IMAGES_FILE) as z:
        return {k: z[k] for k in z.files}


def set_atlas(d: Path, **arrays) -> None:
    (d / ATLAS_IMAGES_FILE).write_bytes(npz(**(atlas_arrays(d) | arrays)))


def latents_arrays(d: Path) -> dict[str, np.ndarray]:
    with np.load(file_of(d, "latents")) as z:
        return {k: z[k] for k in z.files}


def set_latents(d: Path, drop: tuple[str, ...] = (), **arrays) -> None:
    unchecked(d)
    kept = {k: v for k, v in (latents_arrays(d) | arrays).items() if k not in drop}
    file_of(d, "latents").write_bytes(npz(**kept))


def history_rows(d: Path) -> list[dict]:
    return [json.loads(line) for line in file_of(d, "history").read_text().splitlines()]


def set_history(d: Path, lines: list[str]) -> None:
    unchecked(d)
    file_of(d, "history").write_text("".join(line + "\n" for line in lines))


def symlink_outside(d: Path, name: str, outside: Path) -> None:
    """Replace `name` by a symlink to a copy of it outside the run folder."""
    target = outside / f"outside-{d.name}-{name}"
    shutil.copy(d / name, target)
    (d / name).unlink()
    (d / name).symlink_to(target)


def fifo(d: Path, name: str) -> None:
    (d / name).unlink()
    os.mkfifo(d / name)


def sparse(path: Path, size: int) -> None:
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


class Payload:
    """Unpickling this creates `marker`: proof that a loader ran code from the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def pickled(marker: Path, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.empty(shape, dtype=object)
    arr.flat[0] = Payload(marker)
    return arr


# ---------------------------------------------------------------- the variants

@dataclass(frozen=True)
class Ctx:
    outside: Path  # a folder outside every run folder
    marker: Path  # must never exist


@dataclass(frozen=True)
class Variant:
    id: str
    damage: Callable[[Path, Ctx], None]
    culprit: str  # a file-name prefix the error must name (or the run folder's name)
    match: str  # a fragment of the message
    base: str = "vae2"


def _weights_of_latent_dim(d: Path, latent_dim: int) -> None:
    other = build_model(ModelConfig(latent_dim=latent_dim, widths=TINY_WIDTHS, hidden_dim=0))
    save_weights(d, {k: v.contiguous() for k, v in other.state_dict().items()})


def _without(tensors: dict, key: str) -> dict:
    return {k: v for k, v in tensors.items() if k != key}


V = Variant
VARIANTS: list[Variant] = [
    # ---- weights (safetensors)
    V("weights-truncated-checked", lambda d, c: truncate(file_of(d, "weights"), 100), "weights-", "checksum"),
    V("weights-truncated-unchecked", lambda d, c: (unchecked(d), truncate(file_of(d, "weights"), 100)), "weights-", "not a valid safetensors|do not fit"),
    V("weights-empty-unchecked", lambda d, c: (unchecked(d), truncate(file_of(d, "weights"), 0)), "weights-", "not a valid safetensors|do not fit"),
    V("weights-7-bytes-unchecked", lambda d, c: (unchecked(d), truncate(file_of(d, "weights"), 7)), "weights-", "not a valid safetensors|do not fit"),
    V("weights-bitflip-header-checked", lambda d, c: flip_bit(file_of(d, "weights"), 10), "weights-", "checksum"),
    V("weights-bitflip-header-unchecked", lambda d, c: (unchecked(d), flip_bit(file_of(d, "weights"), 8, 1)), "weights-", "not a valid safetensors"),
    V("weights-bitflip-data-checked", lambda d, c: flip_bit(file_of(d, "weights"), -3), "weights-", "checksum"),
    V("weights-nan-unchecked", lambda d, c: poison_weight(d, float("nan")), "weights-", "NaN or infinite"),
    V("weights-inf-unchecked", lambda d, c: poison_weight(d, float("inf")), "weights-", "NaN or infinite"),
    V("weights-huge-header-length-unchecked",
      lambda d, c: (unchecked(d), file_of(d, "weights").write_bytes(struct.pack("<Q", 2**62) + file_of(d, "weights").read_bytes()[8:])),
      "weights-", "not a valid safetensors"),
    V("weights-huge-declared-tensor-unchecked",
      lambda d, c: (
          unchecked(d),
          file_of(d, "weights").write_bytes(raw_safetensors({"w": {"dtype": "F32", "shape": [HUGE], "data_offsets": [0, 4 * HUGE]}}, b"\0" * 2**16)),
      ),
      "weights-", "not a valid safetensors"),
    V("weights-header-not-json-unchecked",
      lambda d, c: (unchecked(d), file_of(d, "weights").write_bytes(struct.pack("<Q", 5) + b"{oops" + b"\0" * 2**16)),
      "weights-", "not a valid safetensors"),
    V("weights-other-latent-dim-unchecked", lambda d, c: _weights_of_latent_dim(d, 3), "weights-", "do not fit"),
    V("weights-missing-tensor-unchecked", lambda d, c: save_weights(d, _without(weights(d), next(iter(weights(d))))), "weights-", "do not fit"),
    V("weights-extra-tensor-unchecked", lambda d, c: save_weights(d, weights(d) | {"extra.weight": torch.zeros(3)}), "weights-", "do not fit"),
    V("weights-missing", lambda d, c: file_of(d, "weights").unlink(), "weights-", "missing"),
    V("weights-is-a-folder", lambda d, c: (file_of(d, "weights").unlink(), file_of(d, "weights").mkdir()), "weights-", "is a folder"),
    V("weights-symlink-outside", lambda d, c: symlink_outside(d, file_of(d, "weights").name, c.outside), "weights-", "symbolic link"),
    V("weights-fifo", lambda d, c: fifo(d, file_of(d, "weights").name), "weights-", "not a regular file"),
    # ---- manifest.json
    V("manifest-missing", lambda d, c: (d / MANIFEST_FILE).unlink(), MANIFEST_FILE, "missing"),
    V("manifest-not-json", lambda d, c: (d / MANIFEST_FILE).write_text("{not json"), MANIFEST_FILE, "not valid JSON"),
    V("manifest-a-list", lambda d, c: (d / MANIFEST_FILE).write_text("[1, 2]"), MANIFEST_FILE, "expected a JSON object"),
    V("manifest-no-epoch",
      lambda d, c: (d / MANIFEST_FILE).write_text(json.dumps({k: v for k, v in manifest(d).items() if k != "epoch"})),
      MANIFEST_FILE, "'epoch' or 'files'"),
    V("manifest-epoch-a-string", lambda d, c: set_manifest(d, epoch="2"), MANIFEST_FILE, "'epoch' or 'files'"),
    V("manifest-epoch-negative", lambda d, c: set_manifest(d, epoch=-1), MANIFEST_FILE, "'epoch' or 'files'"),
    V("manifest-epoch-a-bool", lambda d, c: set_manifest(d, epoch=True), MANIFEST_FILE, "'epoch' or 'files'"),
    V("manifest-files-a-list", lambda d, c: set_manifest(d, files=["weights-000002.safetensors"]), MANIFEST_FILE, "'epoch' or 'files'"),
    V("manifest-no-weights-entry", lambda d, c: set_manifest(d, files=_without(manifest(d)["files"], "weights")), MANIFEST_FILE, "file name for 'weights'"),
    V("manifest-path-traversal",
      lambda d, c: set_manifest(d, files=manifest(d)["files"] | {"weights": "../vae2/weights-000002.safetensors"}),
      MANIFEST_FILE, "file name for 'weights'"),
    V("manifest-absolute-path",
      lambda d, c: set_manifest(d, files=manifest(d)["files"] | {"weights": "/etc/passwd"}),
      MANIFEST_FILE, "file name for 'weights'"),
    V("manifest-nul-in-name",
      lambda d, c: set_manifest(d, files=manifest(d)["files"] | {"weights": "weights\x00.safetensors"}),
      MANIFEST_FILE, "file name for 'weights'"),
    V("manifest-dot-file-name",
      lambda d, c: set_manifest(d, files=manifest(d)["files"] | {"weights": ".weights.tmp"}),
      MANIFEST_FILE, "file name for 'weights'"),
    V("manifest-name-a-number", lambda d, c: set_manifest(d, files=manifest(d)["files"] | {"weights": 7}), MANIFEST_FILE, "'files' must map"),
    V("manifest-sha256-a-list", lambda d, c: set_manifest(d, sha256=["abc"]), MANIFEST_FILE, "'sha256' must map"),
    V("manifest-sha256-wrong", lambda d, c: set_manifest(d, sha256=manifest(d)["sha256"] | {file_of(d, "weights").name: "0" * 64}), "weights-", "checksum"),
    V("manifest-kept-a-string", lambda d, c: set_manifest(d, kept="weights-000001.safetensors"), MANIFEST_FILE, "'kept'"),
    V("manifest-deeply-nested", lambda d, c: (d / MANIFEST_FILE).write_text("[" * DEEP + "]" * DEEP), MANIFEST_FILE, "nested too deeply"),
    V("manifest-huge-integer", lambda d, c: (d / MANIFEST_FILE).write_text('{"epoch": ' + "9" * DIGITS + "}"), MANIFEST_FILE, "not valid JSON"),
    V("manifest-invalid-utf8", lambda d, c: (d / MANIFEST_FILE).write_bytes(b'{"epoch": "\xff\xfe"}'), MANIFEST_FILE, "not valid JSON"),
    V("manifest-is-a-folder", lambda d, c: ((d / MANIFEST_FILE).unlink(), (d / MANIFEST_FILE).mkdir()), MANIFEST_FILE, "is a folder"),
    V("manifest-huge-sparse-file", lambda d, c: sparse(d / MANIFEST_FILE, MAX_JSON_BYTES + 1), MANIFEST_FILE, "larger than"),
    V("manifest-epoch-of-another-set", lambda d, c: set_manifest(d, epoch=1), "history-", "mismatched file set"),
    V("manifest-fifo", lambda d, c: fifo(d, MANIFEST_FILE), MANIFEST_FILE, "not a regular file"),
    # ---- config.json
    V("config-missing", lambda d, c: (d / CONFIG_FILE).unlink(), CONFIG_FILE, "missing"),
    V("config-not-json", lambda d, c: (d / CONFIG_FILE).write_text("nope"), CONFIG_FILE, "not valid JSON"),
    V("config-a-list", lambda d, c: (d / CONFIG_FILE).write_text("[]"), CONFIG_FILE, "expected a JSON object"),
    V("config-no-model", lambda d, c: (d / CONFIG_FILE).write_text(json.dumps(_without(config(d), "model"))), CONFIG_FILE, "'model' is missing"),
    V("config-no-train", lambda d, c: (d / CONFIG_FILE).write_text(json.dumps(_without(config(d), "train"))), CONFIG_FILE, "'train' is missing"),
    V("config-model-a-string", lambda d, c: set_config(d, model="conv"), CONFIG_FILE, "invalid config"),
    V("config-model-a-number", lambda d, c: set_config(d, model=3), CONFIG_FILE, "invalid config"),
    V("config-latent-dim-a-string", lambda d, c: set_model(d, latent_dim="2"), CONFIG_FILE, "invalid config"),
    V("config-widths-a-number", lambda d, c: set_model(d, widths=4), CONFIG_FILE, "invalid config"),
    V("config-latent-dim-mismatch", lambda d, c: set_model(d, latent_dim=3), "weights-", "do not fit"),
    V("config-unknown-model-key", lambda d, c: set_model(d, evil=1), CONFIG_FILE, "invalid config"),
    V("config-huge-widths", lambda d, c: set_model(d, widths=[10**6] * 3), CONFIG_FILE, "widths must be"),
    V("config-huge-hidden-dim", lambda d, c: set_model(d, hidden_dim=10**9), CONFIG_FILE, "hidden_dim must be"),
    V("config-huge-model", lambda d, c: set_model(d, widths=[1024] * 3, hidden_dim=16384), CONFIG_FILE, "parameters, more than"),
    V("config-class-names-a-number", lambda d, c: set_config(d, class_names=10), CONFIG_FILE, "'class_names'"),
    V("config-class-names-objects", lambda d, c: set_config(d, class_names=[{"a": 1}]), CONFIG_FILE, "'class_names'"),
    V("config-data-a-string", lambda d, c: set_config(d, data="mnist"), CONFIG_FILE, "'data'"),
    V("config-epochs-negative", lambda d, c: set_config(d, train=config(d)["train"] | {"epochs": -3}), CONFIG_FILE, "invalid config"),
    V("config-lr-nan", lambda d, c: (d / CONFIG_FILE).write_text(json.dumps(config(d)).replace('"lr": 0.001', '"lr": NaN')), CONFIG_FILE, "invalid config"),
    V("config-future-format", lambda d, c: set_config(d, format=99), CONFIG_FILE, "format 99"),
    V("config-symlink-outside", lambda d, c: symlink_outside(d, CONFIG_FILE, c.outside), CONFIG_FILE, "symbolic link"),
    V("config-fifo", lambda d, c: fifo(d, CONFIG_FILE), CONFIG_FILE, "not a regular file"),
    V("config-huge-sparse-file", lambda d, c: sparse(d / CONFIG_FILE, MAX_JSON_BYTES + 1), CONFIG_FILE, "larger than"),
    # ---- history.jsonl
    V("history-not-json-unchecked", lambda d, c: set_history(d, ["{oops"]), "history-", "line 1 is not valid JSON"),
    V("history-row-a-list-unchecked", lambda d, c: set_history(d, ["[1, 2]"]), "history-", "line 1 is not a JSON object"),
    V("history-row-without-loss-unchecked", lambda d, c: set_history(d, [json.dumps({"epoch": 1}), json.dumps({"epoch": 2})]), "history-", "lacks"),
    V("history-loss-a-string-unchecked",
      lambda d, c: set_history(d, [json.dumps(r | {"test_loss": "low"}) for r in history_rows(d)]), "history-", "lacks"),
    V("history-loss-nan-unchecked",
      lambda d, c: set_history(d, [json.dumps(r | {"test_loss": float("nan")}) for r in history_rows(d)]), "history-", "'test_loss' is nan"),
    V("history-psnr-infinite-unchecked",
      lambda d, c: set_history(d, [json.dumps(r | {"psnr": float("inf")}) for r in history_rows(d)]), "history-", "'psnr' is inf"),
    V("history-one-row-short-unchecked", lambda d, c: set_history(d, [json.dumps(history_rows(d)[0])]), "history-", "mismatched file set"),
    V("history-modified-checked", lambda d, c: file_of(d, "history").write_text("\n"), "history-", "checksum"),
    V("history-missing", lambda d, c: file_of(d, "history").unlink(), "history-", "missing"),
    # ---- atlas-images.npz
    V("atlas-missing", lambda d, c: (d / ATLAS_IMAGES_FILE).unlink(), ATLAS_IMAGES_FILE, "missing"),
    V("atlas-garbage", lambda d, c: (d / ATLAS_IMAGES_FILE).write_bytes(b"PK\x03\x04garbage"), ATLAS_IMAGES_FILE, "unreadable npz"),
    V("atlas-pickled-objects", lambda d, c: set_atlas(d, images=pickled(c.marker, (1, 1, 28, 28))), ATLAS_IMAGES_FILE, "Python objects"),
    V("atlas-float-images", lambda d, c: set_atlas(d, images=atlas_arrays(d)["images"][:8].astype(np.float32), labels=atlas_arrays(d)["labels"][:8]),
      ATLAS_IMAGES_FILE, "must be uint8"),
    V("atlas-wrong-image-size", lambda d, c: set_atlas(d, images=atlas_arrays(d)["images"][:, :, :14, :14]), ATLAS_IMAGES_FILE, "must be uint8 of shape"),
    V("atlas-no-labels", lambda d, c: (d / ATLAS_IMAGES_FILE).write_bytes(npz(images=atlas_arrays(d)["images"])), ATLAS_IMAGES_FILE, "'labels' is missing"),
    V("atlas-labels-too-few", lambda d, c: set_atlas(d, labels=atlas_arrays(d)["labels"][:-1]), ATLAS_IMAGES_FILE, "one label each"),
    V("atlas-labels-strings", lambda d, c: set_atlas(d, labels=atlas_arrays(d)["labels"].astype(str)), ATLAS_IMAGES_FILE, "expected integers"),
    V("atlas-labels-huge", lambda d, c: set_atlas(d, labels=np.full_like(atlas_arrays(d)["labels"], 10**12)), ATLAS_IMAGES_FILE, "class indices"),
    V("atlas-labels-negative", lambda d, c: set_atlas(d, labels=-atlas_arrays(d)["labels"] - 1), ATLAS_IMAGES_FILE, "class indices"),
    V("atlas-no-images", lambda d, c: set_atlas(d, images=atlas_arrays(d)["images"][:0], labels=atlas_arrays(d)["labels"][:0]), ATLAS_IMAGES_FILE, "0 < N"),
    V("atlas-more-images-than-the-config-allows",
      lambda d, c: set_atlas(d, images=np.concatenate([atlas_arrays(d)["images"]] * 2), labels=np.concatenate([atlas_arrays(d)["labels"]] * 2)),
      ATLAS_IMAGES_FILE, "0 < N|declares"),
    V("atlas-declared-huge-shape",
      lambda d, c: (d / ATLAS_IMAGES_FILE).write_bytes(zip_members({"images.npy": npy_header_only((10**9, 1, 28, 28), "u1", b"\0" * 784),
                                                                      "labels.npy": npy_header_only((10**9,), "<i8", b"\0" * 8)})),
      ATLAS_IMAGES_FILE, "declares"),
    V("atlas-zip-declares-huge-sizes", lambda d, c: (d / ATLAS_IMAGES_FILE).write_bytes(lie_about_sizes((d / ATLAS_IMAGES_FILE).read_bytes(), 2**32 - 16)),
      ATLAS_IMAGES_FILE, "declares"),
    V("atlas-zip-bomb", lambda d, c: (d / ATLAS_IMAGES_FILE).write_bytes(zip_members(
        {"images.npy": npy_header_only((BOMB_IMAGES, 1, 28, 28), "u1", bytes(BOMB_IMAGES * 784)),
         "labels.npy": npy_header_only((BOMB_IMAGES,), "<i8", bytes(BOMB_IMAGES * 8))}, zipfile.ZIP_DEFLATED)),
      ATLAS_IMAGES_FILE, "declares"),
    V("atlas-plain-npy",
      lambda d, c: np.save(d / ATLAS_IMAGES_FILE, atlas_arrays(d)["images"]) or os.replace(d / f"{ATLAS_IMAGES_FILE}.npy", d / ATLAS_IMAGES_FILE),
      ATLAS_IMAGES_FILE, "unreadable npz"),
    V("atlas-symlink-outside", lambda d, c: symlink_outside(d, ATLAS_IMAGES_FILE, c.outside), ATLAS_IMAGES_FILE, "symbolic link"),
    # ---- latents-*.npz
    V("latents-pickled-objects-unchecked", lambda d, c: set_latents(d, means=pickled(c.marker, (3, 40, 2))), "latents-", "Python objects"),
    V("latents-wrong-latent-dim-unchecked", lambda d, c: set_latents(d, means=np.zeros((3, 40, 3), np.float16)), "latents-", "means have shape"),
    V("latents-no-epochs-unchecked", lambda d, c: set_latents(d, drop=("epochs",)), "latents-", "'epochs' is missing"),
    V("latents-no-logvars-unchecked", lambda d, c: set_latents(d, drop=("logvars",)), "latents-", "'logvars' is missing"),
    V("latents-string-means-unchecked", lambda d, c: set_latents(d, means=np.full((3, 40, 2), "x")), "latents-", "expected floating point"),
    V("latents-one-snapshot-short-unchecked",
      lambda d, c: set_latents(d, epochs=np.arange(2), means=latents_arrays(d)["means"][:2], logvars=latents_arrays(d)["logvars"][:2]),
      "latents-", "mismatched file set"),
    V("latents-truncated-checked", lambda d, c: truncate(file_of(d, "latents"), 50), "latents-", "checksum"),
    V("latents-truncated-unchecked", lambda d, c: (unchecked(d), truncate(file_of(d, "latents"), 50)), "latents-", "unreadable npz"),
    V("latents-ae-pickled-objects-unchecked", lambda d, c: set_latents(d, means=pickled(c.marker, (3, 40, 2))), "latents-", "Python objects", base="ae2"),
    # ---- the folder itself
    V("empty-folder", lambda d, c: [p.unlink() for p in list(d.iterdir())], CONFIG_FILE, "missing"),
    V("only-a-status-file", lambda d, c: [p.unlink() for p in list(d.iterdir()) if p.name != STATUS_FILE], CONFIG_FILE, "missing"),
]
ATTACKS_ON_OPTIMIZER = [
    V("optim-truncated-checked", lambda d, c: truncate(file_of(d, "optim"), 64), "optim-", "checksum"),
    V("optim-param-groups-garbage",
      lambda d, c: (unchecked(d), file_of(d, "optim").write_bytes(st_save({"0.step": torch.zeros(())}, metadata={"param_groups": "[[[["}))),
      "optim-", "param_groups"),
    V("optim-foreign-tensor-name",
      lambda d, c: (
          unchecked(d),
          file_of(d, "optim").write_bytes(
              st_save({"step": torch.zeros(())}, metadata={"param_groups": json.dumps([{"params": list(range(len(weights(d))))}])})
          ),
      ),
      "optim-", "does not fit"),
    V("optim-wrong-shape",
      lambda d, c: (
          unchecked(d),
          file_of(d, "optim").write_bytes(
              st_save({"0.exp_avg": torch.zeros(7, 7)}, metadata={"param_groups": json.dumps([{"params": list(range(len(weights(d))))}])})
          ),
      ),
      "optim-", "does not fit"),
]


def make_variant(runs_root: Path, where: Path, variant: Variant, ctx: Ctx) -> Path:
    d = where / variant.id
    shutil.copytree(runs_root / variant.base, d)
    variant.damage(d, ctx)
    return d


@pytest.fixture()
def ctx(tmp_path) -> Ctx:
    outside = tmp_path / "outside"
    outside.mkdir()
    return Ctx(outside, tmp_path / "UNPICKLED")


def assert_one_clear_error(error: RunError, run_dir: Path, culprit: str, match: str) -> None:
    """One line, naming the run folder and the file at fault, saying what is wrong."""
    text = str(error)
    assert "\n" not in text and len(text) < MAX_MESSAGE_CHARS, text
    assert re.search(match, text), text
    assert f"{run_dir}/{culprit}" in text, text


# ---------------------------------------------------------------- tests

def test_payload_really_runs_code_when_unpickled(tmp_path):
    """Sanity check of the probe used below: unpickling it does create its marker."""
    marker = tmp_path / "probe"
    pickle.loads(pickle.dumps(pickled(marker, (1,))))
    assert marker.exists()


def test_the_good_runs_load(runs_root):
    for name in GOOD_RUNS:
        run = load_run(runs_root / name)
        assert run.epoch == len(run.history) == len(run.atlas.epochs) - 1


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.id)
def test_hostile_run_gives_one_clear_error(runs_root, tmp_path, ctx, variant):
    d = make_variant(runs_root, tmp_path, variant, ctx)
    with pytest.raises(RunError) as info:
        load_run(d)
    assert_one_clear_error(info.value, d, variant.culprit, variant.match)
    assert not ctx.marker.exists(), "a pickle in the run folder was executed"
    summaries = list_runs(tmp_path)  # never raises, never hangs
    listed = {s.name: s for s in summaries}
    if variant.id != "empty-folder":
        assert variant.id in listed
        if listed[variant.id].error:
            assert "\n" not in listed[variant.id].error


@pytest.mark.parametrize("variant", ATTACKS_ON_OPTIMIZER, ids=lambda v: v.id)
def test_hostile_optimizer_state_gives_one_clear_error(runs_root, tmp_path, ctx, variant):
    """The optimiser state is read only to resume: it is checked against the model before use."""
    d = make_variant(runs_root, tmp_path, variant, ctx)
    run = load_run(d)
    with pytest.raises(RunError) as info:
        run.optimizer_state()
    assert_one_clear_error(info.value, d, variant.culprit, variant.match)


def test_zip_bomb_is_refused_before_it_is_inflated(runs_root, tmp_path, ctx):
    bomb = next(v for v in VARIANTS if v.id == "atlas-zip-bomb")
    d = make_variant(runs_root, tmp_path, bomb, ctx)
    assert (d / ATLAS_IMAGES_FILE).stat().st_size < BOMB_PEAK_BYTES // 16
    tracemalloc.start()
    try:
        with pytest.raises(RunError, match="declares"):
            load_run(d)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < BOMB_PEAK_BYTES, peak


def test_huge_model_in_config_is_refused_without_allocating(runs_root, tmp_path, ctx, monkeypatch):
    """A config within every per-field bound but declaring ~5e8 parameters is refused from its size alone (counted on the meta device)."""
    d = make_variant(runs_root, tmp_path, next(v for v in VARIANTS if v.id == "config-huge-model"), ctx)
    built = []
    monkeypatch.setattr(runs_mod, "build_model", lambda cfg: built.append(cfg) or build_model(cfg))
    with pytest.raises(RunError, match="parameters"):
        load_run(d)
    assert not built  # the real (non-meta) model was never built


def test_lock_symlinked_outside_is_refused_and_its_target_untouched(runs_root, tmp_path):
    """A downloaded run whose `lock` points at a user's file: resuming it must not truncate that file."""
    d = tmp_path / "run"
    shutil.copytree(runs_root / "vae2", d)
    precious = tmp_path / "precious.txt"
    precious.write_text("do not truncate me")
    (d / "lock").unlink(missing_ok=True)
    (d / "lock").symlink_to(precious)
    with pytest.raises(RunError, match="lock: is a symbolic link"):
        RunLock(d).acquire()
    assert precious.read_text() == "do not truncate me"


def test_symlinked_run_folder_pointing_outside_is_not_listed(runs_root, tmp_path):
    root = tmp_path / "checkpoints"
    root.mkdir()
    shutil.copytree(runs_root / "vae2", tmp_path / "elsewhere")
    (root / "linked").symlink_to(tmp_path / "elsewhere")
    shutil.copytree(runs_root / "ae2", root / "good")
    assert [s.name for s in list_runs(root)] == ["good"]


def test_list_runs_serves_good_runs_among_all_broken_ones(runs_root, tmp_path, ctx):
    root = tmp_path / "checkpoints"
    root.mkdir()
    for name in GOOD_RUNS:
        shutil.copytree(runs_root / name, root / name)
    for variant in VARIANTS:
        make_variant(runs_root, root, variant, ctx)
    listed = {s.name: s for s in list_runs(root)}
    for name in GOOD_RUNS:
        assert listed[name].error is None and load_run(root / name).epoch == listed[name].epoch
    broken = [v.id for v in VARIANTS if v.id != "empty-folder"]
    assert set(listed) == set(GOOD_RUNS) | set(broken)
    assert not ctx.marker.exists()
