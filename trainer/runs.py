"""The run folder is the checkpoint: writing it atomically, loading it safely, listing many cheaply.

Layout of `checkpoints/<run>/`:
    config.json                    model + train config, data provenance, class names (written at creation)
    atlas-images.npz               the fixed test subset: images (N, C, H, W) uint8, labels (N,)
    weights-EEEEEE.safetensors     model weights after epoch E
    optim-EEEEEE.safetensors       optimiser state after epoch E (for --resume)
    history-EEEEEE.jsonl           one JSON line per completed epoch up to E
    latents-EEEEEE.npz             posterior mean/log-variance (float16) of the atlas images at the snapshot
                                   epochs up to E (latent_snapshots: every epoch below LATENTS_EVERY_EPOCH,
                                   then log-spaced ones and E, at most MAX_LATENT_SNAPSHOTS in all)
    disc-EEEEEE.safetensors        with --disc-weight only: the PatchGAN discriminator's weights and its
    disc-optim-EEEEEE.safetensors  optimiser state after epoch E, for --resume (load_run and the app never read them)
    manifest.json                  names the consistent set above (and their sha256); replaced last
    status.json                    live progress for the app (not part of the set)
    lock                           flock-ed by the training process

Every file is written to a temporary name, fsynced and renamed into place (trainer.safe_io). The manifest is
replaced only after the files it names exist, and the previous epoch's set is kept until the
next one lands, so a reader that follows one manifest always sees one epoch's files. The last save
of a run (its final epoch, or an early stop) removes the previous set: a finished run keeps one.

Growth is bounded: a run folder holds one or two epoch sets (plus --keep-epochs weights); the latents
file holds at most MAX_LATENT_SNAPSHOTS snapshots, however long the run; the history grows by one line per
epoch (about 600 bytes plus ~8 bytes per latent dimension, for KL per dimension), so a reader's limit for it
scales with the run: history_limit(epochs, latent_dim) allows HISTORY_ROW_BYTES plus HISTORY_NUMBER_BYTES per
latent dimension for each of the run's epochs (the larger of its configured and saved epochs, at most
MAX_EPOCHS), and never less than MAX_JSON_BYTES. A hostile history file is still bounded (2 GB for a
latent-512 run of MAX_EPOCHS epochs, MAX_JSON_BYTES for a short one).

Nothing here unpickles: safetensors for tensors, JSON, and npz with allow_pickle=False.

Run folders may come from strangers, so reading trusts nothing: files are read through trainer.safe_io
(no symlinks or FIFOs, size- and depth-limited JSON, npz checked from its headers); manifest file names
are plain names; a model, atlas or latents file may not declare more than the run's
config implies (checked from headers, before anything is decompressed or allocated); weights must be
finite and the set consistent (history, latents and manifest name the same epoch). Every problem is
one RunError whose one-line message names the file.

This module is the run-folder format; generic hostile-file I/O is trainer.safe_io, whose
UnsafeFileError is RunError under another name (one class: `except RunError` catches both).
"""
from __future__ import annotations

import errno
import fcntl
import functools
import json
import math
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors.torch import save as st_save

from models import VAE, DiagonalGaussian, ModelConfig, build_model

from . import metrics, safe_io
from .config import MAX_EPOCHS, TrainConfig, is_int, is_number
from .errors import first_line
from .safe_io import (
    MAX_JSON_BYTES,
    MAX_TENSOR_FILE_BYTES,
    NPZ_SLACK_BYTES,
    UnsafeFileError,
    check_kind,
    load_npz,
    load_safetensors,
    npz_bytes,
    read_json_dict,
    read_regular_file,
    safetensors_metadata,
    sha256,
)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
STATUS_FILE = "status.json"
ATLAS_IMAGES_FILE = "atlas-images.npz"
LOCK_FILE = "lock"
RUN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")  # a file named by a manifest: no path, no dot-files
LOAD_RETRIES = 5
# What an untrusted run folder may declare before anything is allocated for it.
MAX_MODEL_PARAMS = 2**28  # 1 GiB of float32 weights
MAX_CLASSES = 100_000
MAX_FLOAT_BYTES = 8  # latents may be stored as float16 to float64
LABEL_BYTES = 8  # labels are stored as int64
HISTORY_NUMBERS = ("test_loss", "psnr")  # per-epoch numbers every reader of history.jsonl may format
LAST_BOUND = "test_neg_elbo"  # also in a manifest's "last": the latest test negative ELBO (recon + KL, beta 1)
# A history line: at most HISTORY_ROW_BYTES besides its KL per dimension, and HISTORY_NUMBER_BYTES per latent dimension.
HISTORY_ROW_BYTES = 4096  # ~600 in practice: ~25 named numbers
HISTORY_NUMBER_BYTES = 32  # ~8 in practice: KL per dimension is rounded to 5 decimals
# Atlas latents: every epoch below LATENTS_EVERY_EPOCH, then log-spaced epochs and the latest, at most MAX_LATENT_SNAPSHOTS.
LATENTS_EVERY_EPOCH = 50
MAX_LATENT_SNAPSHOTS = 200
HISTORY_TAIL_BYTES = 2**16  # a run saved before manifests named its last numbers: its history's last line is in this tail
# The files save_epoch writes for every epoch, by manifest key: versioned(key, epoch, suffix).
VERSIONED_FILES = {"weights": ".safetensors", "optim": ".safetensors", "history": ".jsonl", "latents": ".npz"}
# Epoch files of some runs only (save_epoch's `extra`): resume-only state of the sharpness losses, never read by load_run.
OPTIONAL_FILES = {"disc": ".safetensors", "disc-optim": ".safetensors"}
KEPT_WEIGHTS = "kept-weights"  # the stem of weights kept for good (--keep-epochs)
EPOCH_DIGITS = 6
VERSIONED_RE = re.compile(rf"(?P<stem>.+)-(?P<epoch>\d{{{EPOCH_DIGITS},}})(?P<suffix>\.[A-Za-z0-9]+)")

RunError = UnsafeFileError  # a run folder that cannot be used; one line naming the file and what is wrong


def validate_run_name(name: str) -> str:
    """Run names become folder names: letters, digits, '.', '_' and '-', no path separators or '..'."""
    if not isinstance(name, str) or not RUN_NAME_RE.fullmatch(name) or ".." in name:
        raise ValueError(
            f"invalid run name {name!r}: use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit (no '/', no '..')"
        )
    return name


class Versioned(NamedTuple):
    """The parts of a versioned file name NAME-EEEEEE.ext."""

    stem: str
    epoch: int
    suffix: str  # with its dot


def versioned(stem: str, epoch: int, suffix: str) -> str:
    """The one spelling of a per-epoch file name: versioned("weights", 3, ".safetensors") == "weights-000003.safetensors"."""
    return f"{stem}-{epoch:0{EPOCH_DIGITS}d}{suffix}"


def parse_versioned(name: str) -> Versioned | None:
    """The inverse of versioned: (stem, epoch, suffix) of a name it spells, else None."""
    m = VERSIONED_RE.fullmatch(name)
    if m is None:
        return None
    parts = Versioned(m["stem"], int(m["epoch"]), m["suffix"])
    return parts if versioned(*parts) == name else None


def epoch_file(name: str) -> Versioned | None:
    """The parts of `name` if it is one of the files save_epoch writes for an epoch (weights, optim, history, latents;
    the discriminator's weights and optimiser state when the run has them)."""
    parts = parse_versioned(name)
    return parts if parts is not None and (VERSIONED_FILES | OPTIONAL_FILES).get(parts.stem) == parts.suffix else None


# ---------------------------------------------------------------- reading the manifest's files

def _read_checked(run_dir: Path, manifest: dict[str, Any], key: str, limit: int = MAX_TENSOR_FILE_BYTES) -> tuple[Path, bytes]:
    name = manifest["files"].get(key)
    if not isinstance(name, str) or not FILE_NAME_RE.fullmatch(name) or ".." in name:
        raise RunError(f"{run_dir / MANIFEST_FILE}: bad or missing file name for '{key}'")
    path = run_dir / name
    data = read_regular_file(path, limit)
    expected = manifest.get("sha256", {}).get(name)
    if expected is not None and sha256(data) != expected:
        raise RunError(f"{path}: contents do not match the manifest's checksum (corrupt or modified file)")
    return path, data


# ---------------------------------------------------------------- the atlas

@dataclass(frozen=True)
class Atlas:
    """Fixed test images and their posteriors at every saved epoch (the latent space over training)."""

    images: np.ndarray  # (N, C, H, W) uint8
    labels: np.ndarray  # (N,) int64
    epochs: np.ndarray  # (E,) completed epochs of each snapshot
    means: np.ndarray  # (E, N, D) float32
    logvars: np.ndarray | None  # (E, N, D) float32, None for an autoencoder

    def posterior(self, snapshot: int = -1) -> DiagonalGaussian:
        mean = torch.from_numpy(self.means[snapshot])
        logvar = None if self.logvars is None else torch.from_numpy(self.logvars[snapshot])
        return DiagonalGaussian(mean, logvar)


@functools.lru_cache(maxsize=16)
def _log_grid(first: int, cap: int, max_epoch: int) -> frozenset[int]:
    """The fixed log-spaced epochs from `first` to `max_epoch` kept after the first ones: cap - first - 2 of them
    (the first ones, the first snapshot and the latest make up the rest of the cap)."""
    count = cap - first - 2
    if first < 1 or count < 2 or max_epoch <= first:
        raise ValueError(f"latent snapshots: need 1 <= first < max_epoch and cap >= first + 4, got first={first}, cap={cap}, max_epoch={max_epoch}")
    return frozenset(int(e) for e in np.rint(np.geomspace(first, max_epoch, count)))


def latent_snapshots(
    epochs: list[int], current: int, *, first: int = LATENTS_EVERY_EPOCH, cap: int = MAX_LATENT_SNAPSHOTS, max_epoch: int = MAX_EPOCHS
) -> list[int]:
    """The epochs among `epochs` whose atlas latents a run keeps once epoch `current` is the latest.

    Kept: every epoch below `first`, the first snapshot, `current`, and the epochs on one fixed log-spaced grid
    from `first` to `max_epoch`; at most `cap` in all. The grid does not depend on the run, so the kept set at
    epoch n is a subset of the one at n - 1 plus n: thinning as a run goes and thinning every epoch at once
    give the same list, and a resumed run keeps what a straight one does.
    """
    grid = _log_grid(first, cap, max_epoch)
    start = epochs[0] if epochs else current
    return [e for e in epochs if e < first or e == start or e == current or e in grid]


# ---------------------------------------------------------------- loading

@dataclass
class Run:
    path: Path
    model: VAE
    model_config: ModelConfig
    train_config: TrainConfig
    info: dict[str, Any]  # all of config.json: data provenance, class names, code version, device
    history: list[dict[str, Any]]
    atlas: Atlas
    epoch: int  # completed epochs
    manifest: dict[str, Any] = field(repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def class_names(self) -> list[str]:
        return list(self.info.get("class_names") or [])

    def optimizer_state(self, key: str = "optim", params: list[torch.nn.Parameter] | None = None) -> dict[str, Any]:
        """The optimiser's state_dict saved with this epoch (for resuming): the model's, or with key 'disc-optim' and
        the discriminator's `params`, the discriminator's."""
        if key not in self.manifest["files"]:
            if key == "optim":
                raise RunError(f"{self.path}: this run was exported without optimiser state, so it cannot be resumed; train a new run instead")
            raise RunError(f"{self.path}: its saved epoch has no '{key}' file, so it cannot be resumed with its discriminator; train a new run instead")
        path, data = _read_checked(self.path, self.manifest, key)
        tensors = load_safetensors(path, data)
        meta = safetensors_metadata(data)
        try:
            param_groups = json.loads(meta["param_groups"])
        except (KeyError, TypeError, ValueError, RecursionError):
            raise RunError(f"{path}: optimiser param_groups metadata missing or invalid") from None
        params = list(self.model.parameters()) if params is None else params
        groups_ok = isinstance(param_groups, list) and all(isinstance(g, dict) for g in param_groups)
        indices = [i for g in param_groups for i in g.get("params", ())] if groups_ok else None
        if not indices or not all(is_int(i) for i in indices) or sorted(indices) != list(range(len(params))):
            raise RunError(f"{path}: optimiser param_groups do not describe this model's {len(params)} parameters")
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            idx, _, name = key.partition(".")
            if not (idx.isdigit() and int(idx) < len(params) and name) or value.shape not in (torch.Size([]), params[int(idx)].shape):
                raise RunError(f"{path}: optimiser tensor '{key}' does not fit this model")
            state.setdefault(int(idx), {})[name] = value
        return {"state": state, "param_groups": param_groups}

    def load_extra_weights(self, key: str, module: torch.nn.Module) -> None:
        """Load the epoch's OPTIONAL_FILES weights file `key` (e.g. 'disc') into `module`; RunError if absent or unfit."""
        if key not in self.manifest["files"]:
            raise RunError(f"{self.path}: its saved epoch has no '{key}' file, so it cannot be resumed with its discriminator; train a new run instead")
        path, data = _read_checked(self.path, self.manifest, key)
        load_weights(module, path, data)


@functools.lru_cache(maxsize=256)
def model_parameter_count(model_config: ModelConfig) -> int:
    """Parameters of the model a config describes, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(model_config).parameters())


def read_config(run_dir: Path) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
    """config.json checked to the point that every reader may use it (and build its model) without surprises."""
    path = run_dir / CONFIG_FILE
    info = read_json_dict(path)
    try:
        model_config = ModelConfig.from_dict(info["model"])
        train_config = TrainConfig.from_dict(info["train"])
    except KeyError as e:
        raise RunError(f"{path}: key {e} is missing") from None
    except (TypeError, ValueError, OverflowError) as e:
        raise RunError(f"{path}: invalid config ({first_line(e)})") from None
    fmt = info.get("format", FORMAT_VERSION)
    if not is_int(fmt) or not 1 <= fmt <= FORMAT_VERSION:
        raise RunError(f"{path}: format {fmt!r} is not one this version reads (1 to {FORMAT_VERSION}); update the app")
    names = info.get("class_names", [])
    if not (isinstance(names, list) and len(names) <= MAX_CLASSES and all(isinstance(n, str) for n in names)):
        raise RunError(f"{path}: 'class_names' must be a list of at most {MAX_CLASSES} strings")
    if not isinstance(info.get("data", {}), dict):
        raise RunError(f"{path}: 'data' must be a JSON object")
    params = model_parameter_count(model_config)
    if params > MAX_MODEL_PARAMS:
        raise RunError(f"{path}: the model it describes has {params:,} parameters, more than the {MAX_MODEL_PARAMS:,} a run may have")
    return model_config, train_config, info


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MANIFEST_FILE
    if not path.exists() and not path.is_symlink():
        raise RunError(f"{path}: missing (the run has not completed its first save yet)")
    manifest = read_json_dict(path)
    epoch, files = manifest.get("epoch"), manifest.get("files")
    if not is_int(epoch) or epoch < 0 or not isinstance(files, dict):
        raise RunError(f"{path}: 'epoch' or 'files' is missing or invalid")
    if not all(isinstance(v, str) for v in files.values()):
        raise RunError(f"{path}: 'files' must map each key to a file name")
    sums = manifest.setdefault("sha256", {})
    if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
        raise RunError(f"{path}: 'sha256' must map file names to checksums")
    kept = manifest.setdefault("kept", [])
    if not isinstance(kept, list) or not all(isinstance(v, str) for v in kept):
        raise RunError(f"{path}: 'kept' must be a list of file names")
    return manifest


def _load_atlas(run_dir: Path, manifest: dict[str, Any], model_config: ModelConfig, train_config: TrainConfig, n_classes: int) -> Atlas:
    """The atlas images and the manifest's latents, sized by the config before anything is decompressed."""
    images_path = run_dir / ATLAS_IMAGES_FILE
    n_max = train_config.atlas_size
    images_limit = n_max * (math.prod(model_config.image_shape) + LABEL_BYTES) + NPZ_SLACK_BYTES
    arrays = load_npz(images_path, read_regular_file(images_path, MAX_TENSOR_FILE_BYTES), {"images": 4, "labels": 1}, min(images_limit, MAX_TENSOR_FILE_BYTES))
    images, labels = arrays["images"], arrays["labels"]
    if images.dtype != np.uint8 or tuple(images.shape[1:]) != model_config.image_shape or len(labels) != len(images) or not 0 < len(images) <= n_max:
        raise RunError(
            f"{images_path}: images must be uint8 of shape (N, {', '.join(map(str, model_config.image_shape))}), "
            f"0 < N <= {n_max}, with one label each"
        )
    check_kind(images_path, "labels", labels, "iu", "integers")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise RunError(f"{images_path}: labels must be class indices from 0 to {n_classes - 1}")
    path, data = _read_checked(run_dir, manifest, "latents")
    epoch = manifest["epoch"]
    snapshots_limit = (epoch + 1) * (len(images) * model_config.latent_dim * MAX_FLOAT_BYTES * 2 + LABEL_BYTES) + NPZ_SLACK_BYTES
    need = {"epochs": 1, "means": 3} | ({"logvars": 3} if model_config.kind == "vae" else {})
    lat = load_npz(path, data, need, min(snapshots_limit, MAX_TENSOR_FILE_BYTES))
    check_kind(path, "epochs", lat["epochs"], "iu", "integers")
    epochs = lat["epochs"].astype(np.int64)
    if len(epochs) == 0 or epochs[0] < 0 or (np.diff(epochs) <= 0).any():
        raise RunError(f"{path}: snapshot epochs must be increasing non-negative integers")
    if epochs[-1] != epoch:
        raise RunError(f"{path}: snapshots end at epoch {epochs[-1]}, but the manifest names epoch {epoch} (a mismatched file set)")
    expected = (len(epochs), len(images), model_config.latent_dim)
    found = {}
    for name in need.keys() - {"epochs"}:
        check_kind(path, name, lat[name], "f", "floating point")
        if lat[name].shape != expected:
            raise RunError(f"{path}: {name} have shape {lat[name].shape}, expected {expected}")
        found[name] = lat[name].astype(np.float32)
    return Atlas(images, labels.astype(np.int64), epochs, found["means"], found.get("logvars"))


def history_limit(epochs: int, latent_dim: int) -> int:
    """The most bytes a history of `epochs` rows of a latent-`latent_dim` run may take (never below MAX_JSON_BYTES)."""
    rows = min(max(int(epochs), 0), MAX_EPOCHS) + 1
    return max(MAX_JSON_BYTES, rows * (HISTORY_ROW_BYTES + latent_dim * HISTORY_NUMBER_BYTES))


def _load_history(run_dir: Path, manifest: dict[str, Any], model_config: ModelConfig, train_config: TrainConfig) -> list[dict[str, Any]]:
    """One row per completed epoch; rows are objects with an integer 'epoch' and the numbers readers format.

    The file may take history_limit bytes for the larger of the run's configured and saved epochs."""
    limit = history_limit(max(train_config.epochs, manifest["epoch"]), model_config.latent_dim)
    path, data = _read_checked(run_dir, manifest, "history", limit)
    history = []
    for i, line in enumerate(data.decode(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            raise RunError(f"{path}: line {i} is not valid JSON") from None
        if not isinstance(row, dict):
            raise RunError(f"{path}: line {i} is not a JSON object")
        for key in HISTORY_NUMBERS:
            if isinstance(row.get(key), float) and not math.isfinite(row[key]):  # NaN, Infinity: JSON that json.loads accepts
                raise RunError(f"{path}: line {i}: '{key}' is {row[key]}, not a finite number")
        # is_int first: an integer of hundreds of digits is a number, but too large for is_number's isfinite
        if not is_int(row.get("epoch")) or not all(is_int(row.get(k)) or is_number(row.get(k)) for k in HISTORY_NUMBERS):
            raise RunError(f"{path}: line {i} lacks an integer 'epoch' or a number for {' / '.join(HISTORY_NUMBERS)}")
        history.append(row)
    if (history[-1]["epoch"] if history else 0) != manifest["epoch"]:
        raise RunError(
            f"{path}: ends at epoch {history[-1]['epoch'] if history else 0}, "
            f"but the manifest names epoch {manifest['epoch']} (a mismatched file set)"
        )
    return history


def load_weights(model: torch.nn.Module, path: Path, data: bytes) -> None:
    tensors = load_safetensors(path, data)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, strict=True)
    except (RuntimeError, TypeError) as e:
        first = str(e).splitlines() or [type(e).__name__]
        detail = "; ".join(s.strip() for s in first[1:3]) or first[0]
        raise RunError(f"{path}: weights do not fit the model in config.json ({detail})") from None
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise RunError(f"{path}: weights hold NaN or infinite values (in {bad[0]}); the file is corrupt")


def load_run(path: str | os.PathLike, device: str | torch.device = "cpu") -> Run:
    """Load a run folder: model in eval mode on `device`, configs, history and atlas, all of one epoch.

    Raises RunError (one line naming the file) for anything missing, corrupt or inconsistent.
    """
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run folder")
    model_config, train_config, info = read_config(run_dir)
    n_classes = len(info.get("class_names") or []) or MAX_CLASSES
    min_weight_bytes = model_parameter_count(model_config) * 2  # float16 is the smallest weights dtype
    for attempt in range(LOAD_RETRIES):
        manifest = read_manifest(run_dir)
        try:
            weights_path, data = _read_checked(run_dir, manifest, "weights")
            if len(data) < min_weight_bytes:
                raise RunError(
                    f"{weights_path}: weights do not fit the model in config.json "
                    f"({len(data)} bytes cannot hold its {min_weight_bytes // 2:,} parameters)"
                )
            model = build_model(model_config)
            load_weights(model, weights_path, data)
            history = _load_history(run_dir, manifest, model_config, train_config)
            atlas = _load_atlas(run_dir, manifest, model_config, train_config, n_classes)
            break
        except RunError as e:
            # A trainer may have replaced the manifest and removed the old set while we read it.
            if attempt + 1 < LOAD_RETRIES and read_manifest(run_dir).get("epoch") != manifest.get("epoch"):
                continue
            raise e
    model.to(device).eval()
    return Run(run_dir, model, model_config, train_config, info, history, atlas, int(manifest["epoch"]), manifest)


# ---------------------------------------------------------------- writing

def model_state_tensors(model: torch.nn.Module, dtype: str = "float32") -> dict[str, torch.Tensor]:
    """The module's state on the CPU, floating tensors as `dtype` (integer buffers such as BatchNorm's count kept)."""
    target = getattr(torch, dtype)
    return {k: v.detach().to("cpu", target if v.is_floating_point() else v.dtype).contiguous() for k, v in model.state_dict().items()}


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> bytes:
    sd = optimizer.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{idx}.{name}"] = t.detach().cpu().contiguous()
    # a schedule that lives on the device (a CUDA-graphed run's lr tensor) is saved as the number it holds
    groups = [{k: v.item() if torch.is_tensor(v) else v for k, v in group.items()} for group in sd["param_groups"]]
    return st_save(tensors, metadata={"param_groups": json.dumps(groups)})


class RunWriter:
    """Writes one run folder; `save_epoch` lands one consistent set of files per call."""

    KEEP_SETS = 2  # while training: the newest set and the one before it, for readers that still follow the old manifest

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def create(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig,
        info: dict[str, Any],
        atlas_images: np.ndarray,
        atlas_labels: np.ndarray,
    ) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        safe_io.atomic_write_bytes(self.run_dir / ATLAS_IMAGES_FILE, npz_bytes({"images": atlas_images, "labels": atlas_labels}))
        self.write_config(model_config, train_config, info)

    def write_config(self, model_config: ModelConfig, train_config: TrainConfig, info: dict[str, Any]) -> None:
        doc = {"format": FORMAT_VERSION, **info, "model": model_config.to_dict(), "train": train_config.to_dict()}
        safe_io.atomic_write_json(self.run_dir / CONFIG_FILE, doc)

    def save_epoch(
        self,
        epoch: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        history: list[dict[str, Any]],
        latents: dict[str, np.ndarray],
        weights_dtype: str = "float32",
        keep: bool = False,
        final: bool = False,
        extra: dict[str, bytes] | None = None,
    ) -> None:
        """Write epoch `epoch`'s weights, optimiser, history and latents, then point the manifest at them.

        extra: more files of the set by OPTIONAL_FILES key (the discriminator's state: disc, disc-optim), as bytes.

        keep: also keep this epoch's weights for good (--keep-epochs). final: the run's last save (its last
        epoch, or an early stop): the previous set is removed too, so a finished run holds one set.
        Every file goes through safe_io.atomic_write_bytes, looked up at call time (fault-injection tests wrap it).
        """
        contents = {
            "weights": st_save(model_state_tensors(model, weights_dtype)),
            "optim": optimizer_state_bytes(optimizer),
            "history": "".join(json.dumps(r) + "\n" for r in history).encode(),
            "latents": npz_bytes(latents),
        }
        if unknown := sorted(set(extra or {}) - set(OPTIONAL_FILES)):
            raise ValueError(f"save_epoch: unknown extra file '{unknown[0]}' (known: {', '.join(OPTIONAL_FILES)})")
        contents |= extra or {}
        suffixes = VERSIONED_FILES | OPTIONAL_FILES
        blobs = {key: (versioned(key, epoch, suffixes[key]), data) for key, data in contents.items()}
        for name, data in blobs.values():
            safe_io.atomic_write_bytes(self.run_dir / name, data)
        previous = self._manifest_or_none()
        kept = list(previous.get("kept", [])) if previous else []
        if keep:
            kept_name = versioned(KEPT_WEIGHTS, epoch, VERSIONED_FILES["weights"])
            safe_io.atomic_write_bytes(self.run_dir / kept_name, blobs["weights"][1])
            kept.append(kept_name)
        manifest = {
            "format": FORMAT_VERSION,
            "epoch": epoch,
            "files": {key: name for key, (name, _) in blobs.items()},
            "sha256": {name: sha256(data) for name, data in blobs.values()},
            "kept": kept,
            "saved_at": time.time(),
            "last": last_summary(history[-1] if history else {}),  # what a run picker shows, without reading the history
        }
        safe_io.atomic_write_json(self.run_dir / MANIFEST_FILE, manifest)
        self._collect_garbage(manifest, None if final else previous)

    def _manifest_or_none(self) -> dict[str, Any] | None:
        try:
            return read_manifest(self.run_dir)
        except RunError:
            return None

    def _collect_garbage(self, manifest: dict[str, Any], previous: dict[str, Any] | None) -> None:
        """Remove epoch files that neither `manifest` nor `previous` (the set readers may still follow) names, and stray temporaries."""
        live = set(manifest["files"].values()) | set(manifest["kept"])
        if previous:
            live |= set(previous["files"].values())
        for p in self.run_dir.iterdir():
            if (epoch_file(p.name) and p.name not in live) or (p.name.startswith(".") and p.name.endswith(".tmp")):
                try:
                    p.unlink()
                except OSError:  # gone already, or not a file: collecting garbage is best effort
                    pass


def discard_after(run_dir: Path, epoch: int) -> None:
    """Remove versioned files newer than `epoch` (left by a crash between file writes and the manifest)."""
    for p in Path(run_dir).iterdir():
        parts = epoch_file(p.name)
        if parts and parts.epoch > epoch and (p.is_symlink() or p.is_file()):
            p.unlink(missing_ok=True)


# ---------------------------------------------------------------- status and lock

def write_status(run_dir: Path, **status: Any) -> None:
    safe_io.atomic_write_json(Path(run_dir) / STATUS_FILE, {**status, "updated": time.time()})


def read_status(run_dir: Path) -> dict[str, Any] | None:
    try:
        return read_json_dict(Path(run_dir) / STATUS_FILE)
    except RunError:
        return None


class RunLock:
    """An exclusive flock on `<run>/lock`: a second trainer on the same run is refused; a dead process holds nothing."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise RunError; never follows a symlink (a downloaded run's `lock` may point anywhere)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise RunError(f"{self.path}: is a symbolic link; remove it (a run's lock must be a regular file)") from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise RunError(f"{self.path}: not a regular file; remove it")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                holder = self.path.read_bytes()[:32].decode(errors="replace").strip() or "another process"
                raise RunError(f"run '{self.path.parent.name}' is already being trained by pid {holder}; stop it first or choose another --run-name") from None
            raise
        except RunError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---------------------------------------------------------------- listing

@dataclass(frozen=True)
class RunSummary:
    """What a run picker needs, read from small files only (config, manifest, status)."""

    name: str
    path: Path
    config: dict[str, Any] | None
    epoch: int | None  # completed epochs per the manifest; None before the first save
    status: dict[str, Any] | None
    error: str | None  # why the run cannot be opened, if the small files already show it
    mtime: float  # of the manifest (or the folder): a cache key that changes with every save
    last: dict[str, float] | None = None  # HISTORY_NUMBERS of the latest epoch (test objective, PSNR), if known
    neg_elbo: float | None = None  # the latest epoch's test negative ELBO (recon + KL, beta 1), if known


def last_numbers(row: Any) -> dict[str, float] | None:
    """The HISTORY_NUMBERS of one history row (or a manifest's "last"), or None unless all are finite numbers."""
    if not isinstance(row, dict) or not all(is_number(row.get(k)) for k in HISTORY_NUMBERS):
        return None
    try:
        return {k: float(row[k]) for k in HISTORY_NUMBERS}
    except OverflowError:  # an integer beyond float range
        return None


def last_bound(row: Any) -> float | None:
    """The test negative ELBO of one history row (or a manifest's "last"): its LAST_BOUND, or for rows written
    before it was recorded test_recon + test_kl (metrics.neg_elbo); None unless a finite number."""
    if not isinstance(row, dict):
        return None
    keys = (LAST_BOUND,) if LAST_BOUND in row else ("test_recon", "test_kl")
    if not all(is_number(row.get(k)) for k in keys):
        return None
    try:
        value = metrics.neg_elbo({k: row[k] for k in keys})
    except OverflowError:  # an integer beyond float range
        return None
    return value if math.isfinite(value) else None


def last_summary(row: Any) -> dict[str, float] | None:
    """What a manifest's "last" holds: the HISTORY_NUMBERS of a history row and, when known, its LAST_BOUND."""
    numbers = last_numbers(row)
    bound = last_bound(row)
    return numbers if numbers is None or bound is None else numbers | {LAST_BOUND: bound}


def _last_row_of(run_dir: Path, manifest: dict[str, Any]) -> Any:
    """The manifest's "last"; for runs saved before it had one, the history's last line (a bounded read of the
    file's tail, never the whole history). Unchecked: read it with last_numbers and last_bound."""
    if "last" in manifest:
        return manifest["last"]
    name = manifest["files"].get("history")
    if not isinstance(name, str) or not FILE_NAME_RE.fullmatch(name) or ".." in name:
        return None
    try:
        tail = safe_io.read_tail(run_dir / name, HISTORY_TAIL_BYTES).decode(errors="replace")
        lines = [line for line in tail.splitlines() if line.strip()]
        return json.loads(lines[-1]) if lines else None
    except (RunError, ValueError, RecursionError):
        return None


def summarize_run(run_dir: Path) -> RunSummary:
    config, epoch, error, last, bound = None, None, None, None, None
    try:
        _, _, config = read_config(run_dir)
        saved = read_manifest(run_dir)
        epoch = saved["epoch"]
        row = _last_row_of(run_dir, saved)
        last, bound = last_numbers(row), last_bound(row)
    except RunError as e:
        error = str(e)
    manifest = run_dir / MANIFEST_FILE
    try:
        mtime = manifest.stat().st_mtime_ns / 1e9 if manifest.exists() else run_dir.stat().st_mtime
    except OSError:
        mtime = 0.0
    return RunSummary(run_dir.name, run_dir, config, epoch, read_status(run_dir), error, mtime, last, bound)


def list_runs(checkpoints_dir: str | os.PathLike) -> list[RunSummary]:
    """Every sub-folder of `checkpoints_dir` that looks like a run (has config.json, manifest.json or status.json)."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    runs = []
    for d in sorted(root.iterdir()):
        if d.is_dir() and not d.is_symlink() and not d.name.startswith("."):
            if any((d / f).exists() for f in (CONFIG_FILE, MANIFEST_FILE, STATUS_FILE)):
                runs.append(summarize_run(d))
    return runs
