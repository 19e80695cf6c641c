"""The run folder is the checkpoint: writing it atomically, loading it safely, listing many cheaply.

Layout of `checkpoints/<run>/`:
    config.json                    model + train config, data provenance, class names (written at creation)
    atlas-images.npz               the fixed test subset: images (N, C, H, W) uint8, labels (N,)
    weights-EEEEEE.safetensors     model weights after epoch E
    optim-EEEEEE.safetensors       optimiser state after epoch E (for --resume)
    history-EEEEEE.jsonl           one JSON line per completed epoch up to E
    latents-EEEEEE.npz             posterior mean/log-variance of the atlas images at every epoch up to E
    manifest.json                  names the consistent set above (and their sha256); replaced last
    status.json                    live progress for the app (not part of the set)
    lock                           flock-ed by the training process

Every file is written to a temporary name, fsynced and renamed into place. The manifest is
replaced only after the files it names exist, and the previous epoch's set is kept until the
next one lands, so a reader that follows one manifest always sees one epoch's files.
Nothing here unpickles: safetensors for tensors, JSON, and npz with allow_pickle=False.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from models import VAE, DiagonalGaussian, ModelConfig, build_model

from .config import TrainConfig

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
STATUS_FILE = "status.json"
ATLAS_IMAGES_FILE = "atlas-images.npz"
LOCK_FILE = "lock"
MAX_JSON_BYTES = 16 * 2**20
MAX_TENSOR_FILE_BYTES = 4 * 2**30
RUN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
LOAD_RETRIES = 5


class RunError(Exception):
    """A run folder that cannot be used; the message is one line naming the file and what is wrong."""


def validate_run_name(name: str) -> str:
    """Run names become folder names: letters, digits, '.', '_' and '-', no path separators or '..'."""
    if not isinstance(name, str) or not RUN_NAME_RE.fullmatch(name) or ".." in name:
        raise ValueError(
            f"invalid run name {name!r}: use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit (no '/', no '..')"
        )
    return name


def versioned(stem: str, epoch: int, suffix: str) -> str:
    return f"{stem}-{epoch:06d}{suffix}"


# ---------------------------------------------------------------- atomic writes

def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode())


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- safe reads

def _read_bytes(path: Path, limit: int) -> bytes:
    if path.is_symlink():
        raise RunError(f"{path}: is a symbolic link; run files must be regular files")
    try:
        size = path.stat().st_size
        if size > limit:
            raise RunError(f"{path}: {size} bytes is larger than the {limit}-byte limit")
        return path.read_bytes()
    except FileNotFoundError:
        raise RunError(f"{path}: missing") from None
    except IsADirectoryError:
        raise RunError(f"{path}: is a folder, expected a file") from None
    except PermissionError:
        raise RunError(f"{path}: not readable (permission denied)") from None


def read_json(path: Path) -> Any:
    data = _read_bytes(path, MAX_JSON_BYTES)
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: not valid JSON ({e})") from None


def read_json_dict(path: Path) -> dict[str, Any]:
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise RunError(f"{path}: expected a JSON object")
    return obj


def _read_checked(run_dir: Path, manifest: dict[str, Any], key: str, limit: int = MAX_TENSOR_FILE_BYTES) -> tuple[Path, bytes]:
    name = manifest["files"].get(key)
    if not isinstance(name, str) or "/" in name or name.startswith("."):
        raise RunError(f"{run_dir / MANIFEST_FILE}: bad or missing file name for '{key}'")
    path = run_dir / name
    data = _read_bytes(path, limit)
    expected = manifest.get("sha256", {}).get(name)
    if expected is not None and sha256(data) != expected:
        raise RunError(f"{path}: contents do not match the manifest's checksum (corrupt or modified file)")
    return path, data


def load_npz(path: Path, data: bytes, required: dict[str, int]) -> dict[str, np.ndarray]:
    """Read an npz without pickle; `required` maps array names to their number of dimensions."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as e:  # zip, zlib and format errors of many kinds; object arrays raise ValueError
        raise RunError(f"{path}: unreadable npz ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    for name, ndim in required.items():
        if name not in arrays:
            raise RunError(f"{path}: array '{name}' is missing")
        if arrays[name].ndim != ndim or arrays[name].dtype == object:
            raise RunError(f"{path}: array '{name}' has {arrays[name].ndim} dimensions, expected {ndim}")
    return arrays


def load_safetensors(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    try:
        return st_load(data)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as e:
        raise RunError(f"{path}: not a valid safetensors file ({str(e).splitlines()[0]})") from None


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The __metadata__ of a safetensors file held in memory (already validated by load_safetensors)."""
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    return header.get("__metadata__", {}) or {}


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

    def optimizer_state(self) -> dict[str, Any]:
        """The optimiser's state_dict saved with this epoch (for resuming)."""
        if "optim" not in self.manifest["files"]:
            raise RunError(f"{self.path}: this run was exported without optimiser state, so it cannot be resumed; train a new run instead")
        path, data = _read_checked(self.path, self.manifest, "optim")
        tensors = load_safetensors(path, data)
        meta = safetensors_metadata(data)
        try:
            param_groups = json.loads(meta["param_groups"])
        except (KeyError, json.JSONDecodeError):
            raise RunError(f"{path}: optimiser param_groups metadata missing or invalid") from None
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = value
        return {"state": state, "param_groups": param_groups}


def read_config(run_dir: Path) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
    path = run_dir / CONFIG_FILE
    info = read_json_dict(path)
    try:
        model_config = ModelConfig.from_dict(info["model"])
        train_config = TrainConfig.from_dict(info["train"])
    except KeyError as e:
        raise RunError(f"{path}: key {e} is missing") from None
    except (TypeError, ValueError) as e:
        raise RunError(f"{path}: invalid config ({e})") from None
    return model_config, train_config, info


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MANIFEST_FILE
    if not path.exists() and not path.is_symlink():
        raise RunError(f"{path}: missing (the run has not completed its first save yet)")
    manifest = read_json_dict(path)
    if not isinstance(manifest.get("epoch"), int) or not isinstance(manifest.get("files"), dict):
        raise RunError(f"{path}: 'epoch' or 'files' is missing or invalid")
    return manifest


def _load_atlas(run_dir: Path, manifest: dict[str, Any], model_config: ModelConfig) -> Atlas:
    images_path = run_dir / ATLAS_IMAGES_FILE
    arrays = load_npz(images_path, _read_bytes(images_path, MAX_TENSOR_FILE_BYTES), {"images": 4, "labels": 1})
    images, labels = arrays["images"], arrays["labels"]
    if images.dtype != np.uint8 or tuple(images.shape[1:]) != model_config.image_shape or len(labels) != len(images):
        raise RunError(f"{images_path}: images must be uint8 of shape (N, {', '.join(map(str, model_config.image_shape))}) with one label each")
    path, data = _read_checked(run_dir, manifest, "latents")
    need = {"epochs": 1, "means": 3} | ({"logvars": 3} if model_config.kind == "vae" else {})
    lat = load_npz(path, data, need)
    means = lat["means"].astype(np.float32)
    expected = (len(lat["epochs"]), len(images), model_config.latent_dim)
    if means.shape != expected:
        raise RunError(f"{path}: means have shape {means.shape}, expected {expected}")
    logvars = None
    if model_config.kind == "vae":
        logvars = lat["logvars"].astype(np.float32)
        if logvars.shape != expected:
            raise RunError(f"{path}: logvars have shape {logvars.shape}, expected {expected}")
    return Atlas(images, labels.astype(np.int64), lat["epochs"].astype(np.int64), means, logvars)


def _load_history(run_dir: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    path, data = _read_checked(run_dir, manifest, "history", MAX_JSON_BYTES)
    history = []
    for i, line in enumerate(data.decode(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise RunError(f"{path}: line {i} is not valid JSON") from None
        if not isinstance(row, dict):
            raise RunError(f"{path}: line {i} is not a JSON object")
        history.append(row)
    return history


def load_weights(model: VAE, path: Path, data: bytes) -> None:
    tensors = load_safetensors(path, data)
    try:
        model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()
        detail = "; ".join(s.strip() for s in first[1:3]) or first[0]
        raise RunError(f"{path}: weights do not fit the model in config.json ({detail})") from None


def load_run(path: str | os.PathLike, device: str | torch.device = "cpu") -> Run:
    """Load a run folder: model in eval mode on `device`, configs, history and atlas, all of one epoch.

    Raises RunError (one line naming the file) for anything missing, corrupt or inconsistent.
    """
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run folder")
    model_config, train_config, info = read_config(run_dir)
    for attempt in range(LOAD_RETRIES):
        manifest = read_manifest(run_dir)
        try:
            model = build_model(model_config)
            weights_path, data = _read_checked(run_dir, manifest, "weights")
            load_weights(model, weights_path, data)
            history = _load_history(run_dir, manifest)
            atlas = _load_atlas(run_dir, manifest, model_config)
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
    target = getattr(torch, dtype)
    return {k: v.detach().to("cpu", target).contiguous() for k, v in model.state_dict().items()}


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> bytes:
    sd = optimizer.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{idx}.{name}"] = t.detach().cpu().contiguous()
    return st_save(tensors, metadata={"param_groups": json.dumps(sd["param_groups"])})


class RunWriter:
    """Writes one run folder; `save_epoch` lands one consistent set of files per call."""

    KEEP_SETS = 2  # the newest set and the one before it, for readers that still follow the old manifest

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
        atomic_write_bytes(self.run_dir / ATLAS_IMAGES_FILE, npz_bytes({"images": atlas_images, "labels": atlas_labels}))
        self.write_config(model_config, train_config, info)

    def write_config(self, model_config: ModelConfig, train_config: TrainConfig, info: dict[str, Any]) -> None:
        doc = {"format": FORMAT_VERSION, **info, "model": model_config.to_dict(), "train": train_config.to_dict()}
        atomic_write_json(self.run_dir / CONFIG_FILE, doc)

    def save_epoch(
        self,
        epoch: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        history: list[dict[str, Any]],
        latents: dict[str, np.ndarray],
        weights_dtype: str = "float32",
        keep: bool = False,
    ) -> None:
        """Write epoch `epoch`'s weights, optimiser, history and latents, then point the manifest at them."""
        blobs = {
            "weights": (versioned("weights", epoch, ".safetensors"), st_save(model_state_tensors(model, weights_dtype))),
            "optim": (versioned("optim", epoch, ".safetensors"), optimizer_state_bytes(optimizer)),
            "history": (versioned("history", epoch, ".jsonl"), "".join(json.dumps(r) + "\n" for r in history).encode()),
            "latents": (versioned("latents", epoch, ".npz"), npz_bytes(latents)),
        }
        for name, data in blobs.values():
            atomic_write_bytes(self.run_dir / name, data)
        previous = self._manifest_or_none()
        kept = list(previous.get("kept", [])) if previous else []
        if keep:
            kept_name = versioned("kept-weights", epoch, ".safetensors")
            atomic_write_bytes(self.run_dir / kept_name, blobs["weights"][1])
            kept.append(kept_name)
        manifest = {
            "format": FORMAT_VERSION,
            "epoch": epoch,
            "files": {key: name for key, (name, _) in blobs.items()},
            "sha256": {name: sha256(data) for name, data in blobs.values()},
            "kept": kept,
            "saved_at": time.time(),
        }
        atomic_write_json(self.run_dir / MANIFEST_FILE, manifest)
        self._collect_garbage(manifest, previous)

    def _manifest_or_none(self) -> dict[str, Any] | None:
        try:
            return read_manifest(self.run_dir)
        except RunError:
            return None

    def _collect_garbage(self, manifest: dict[str, Any], previous: dict[str, Any] | None) -> None:
        live = set(manifest["files"].values()) | set(manifest["kept"])
        if previous:
            live |= set(previous["files"].values())
        pattern = re.compile(r"^(weights|optim|history|latents)-\d{6}\.(safetensors|jsonl|npz)$")
        for p in self.run_dir.iterdir():
            if (pattern.match(p.name) and p.name not in live) or (p.name.startswith(".") and p.name.endswith(".tmp")):
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass


def discard_after(run_dir: Path, epoch: int) -> None:
    """Remove versioned files newer than `epoch` (left by a crash between file writes and the manifest)."""
    for p in Path(run_dir).iterdir():
        m = re.match(r"^(weights|optim|history|latents)-(\d{6})\.", p.name)
        if m and int(m.group(2)) > epoch:
            p.unlink(missing_ok=True)


# ---------------------------------------------------------------- status and lock

def write_status(run_dir: Path, **status: Any) -> None:
    atomic_write_json(Path(run_dir) / STATUS_FILE, {**status, "updated": time.time()})


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
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                holder = self.path.read_text().strip() or "another process"
                raise RunError(f"run '{self.path.parent.name}' is already being trained by pid {holder}; stop it first or choose another --run-name") from None
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


def summarize_run(run_dir: Path) -> RunSummary:
    config, epoch, error = None, None, None
    try:
        read_config(run_dir)
        config = read_json_dict(run_dir / CONFIG_FILE)
        epoch = read_manifest(run_dir)["epoch"]
    except RunError as e:
        error = str(e)
    manifest = run_dir / MANIFEST_FILE
    try:
        mtime = manifest.stat().st_mtime_ns / 1e9 if manifest.exists() else run_dir.stat().st_mtime
    except OSError:
        mtime = 0.0
    return RunSummary(run_dir.name, run_dir, config, epoch, read_status(run_dir), error, mtime)


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
