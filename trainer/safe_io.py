"""File I/O for files that may come from strangers: atomic writes, and reads that trust nothing.

Writing: every file goes through `atomic_write_bytes` (a temporary name in the same folder, fsync, rename,
fsync of the folder), the one routine fault-injection tests wrap; callers in other modules look it up on
this module at call time (`safe_io.atomic_write_bytes(...)`) so that such a wrapper sees every write.

Reading: files are opened without following symlinks and must be regular files (a FIFO would hang the
reader); sizes are capped before anything is read; JSON is size- and depth-limited; npz files are
checked from their zip directory and .npy headers before any array is decompressed, and never unpickled;
safetensors are parsed by the safetensors library alone. Every problem is one `UnsafeFileError` whose
one-line message names the file (trainer.runs calls the same class `RunError`).
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from .errors import first_line, one_line

MAX_JSON_BYTES = 16 * 2**20
MAX_TENSOR_FILE_BYTES = 4 * 2**30
READ_CHUNK = 2**24
NPZ_SLACK_BYTES = 2**16  # zip and .npy headers on top of the arrays themselves


class UnsafeFileError(Exception):
    """A file that cannot be used; the message is one line naming the file and what is wrong."""


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
    """`obj` as indented JSON (NaN and infinities refused), written by atomic_write_bytes."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode())


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed npz of `arrays`, in memory (to be written by atomic_write_bytes)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- safe reads

def _open_regular(path: Path) -> tuple[int, os.stat_result]:
    """An fd and stat of a regular file; symlinks, FIFOs, devices and folders are refused unopened."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise UnsafeFileError(f"{path}: missing") from None
    except NotADirectoryError:
        raise UnsafeFileError(f"{path}: missing (a parent is not a folder)") from None
    except PermissionError:
        raise UnsafeFileError(f"{path}: not readable (permission denied)") from None
    except ValueError:  # an embedded NUL byte
        raise UnsafeFileError(f"{path!r}: not a valid file name") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeFileError(f"{path}: is a symbolic link; run files must be regular files") from None
        raise UnsafeFileError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise UnsafeFileError(f"{path}: is a folder, expected a file")
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFileError(f"{path}: not a regular file (a pipe, socket or device); run files must be regular files")
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def read_regular_file(path: Path, limit: int) -> bytes:
    """The whole of a regular file of at most `limit` bytes (symlinks, FIFOs, devices and folders are refused)."""
    fd, info = _open_regular(path)
    try:
        if info.st_size > limit:
            raise UnsafeFileError(f"{path}: {info.st_size} bytes is larger than the {limit}-byte limit")
        chunks, total = [], 0
        while chunk := os.read(fd, min(READ_CHUNK, max(info.st_size - total, 0) + 1)):  # +1: notice growth and EOF
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise UnsafeFileError(f"{path}: grew beyond the {limit}-byte limit while being read")
        return b"".join(chunks)
    except OSError as e:
        raise UnsafeFileError(f"{path}: cannot be read ({e.strerror or e})") from None
    finally:
        os.close(fd)


def read_tail(path: Path, n_bytes: int) -> bytes:
    """The last `n_bytes` of a regular file, refused like read_regular_file (a log can be long)."""
    fd, info = _open_regular(path)
    try:
        os.lseek(fd, max(0, info.st_size - n_bytes), os.SEEK_SET)
        return os.read(fd, n_bytes)
    except OSError as e:
        raise UnsafeFileError(f"{path}: cannot be read ({e.strerror or e})") from None
    finally:
        os.close(fd)


def read_json(path: Path) -> Any:
    """A JSON file of at most MAX_JSON_BYTES; too deep, malformed or huge-integer documents are refused."""
    data = read_regular_file(path, MAX_JSON_BYTES)
    try:
        return json.loads(data)
    except RecursionError:
        raise UnsafeFileError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, integers beyond Python's digit limit
        raise UnsafeFileError(f"{path}: not valid JSON ({first_line(e)})") from None


def read_json_dict(path: Path) -> dict[str, Any]:
    """read_json, refusing anything but a JSON object."""
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise UnsafeFileError(f"{path}: expected a JSON object")
    return obj


# ---------------------------------------------------------------- npz and safetensors

def _npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype an npz member declares, read from its header alone."""
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    return tuple(shape), dtype


def _check_npz_members(path: Path, data: bytes, limit: int) -> None:
    """Refuse an npz by its zip directory and .npy headers, before any array is decompressed or allocated:
    more than `limit` bytes uncompressed, Python objects (pickles), or arrays larger than the bytes they hold."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = zf.infolist()
        total = sum(m.file_size for m in members)
        if total > limit:
            raise UnsafeFileError(f"{path}: declares {total} bytes of arrays, more than the {limit} bytes this run can hold")
        for member in members:
            name = member.filename.removesuffix(".npy")
            shape, dtype = _npy_header(zf, member)
            if dtype.hasobject:
                raise UnsafeFileError(f"{path}: array '{name}' holds Python objects, which are never unpickled")
            declared = math.prod(shape) * dtype.itemsize
            if declared > member.file_size:
                raise UnsafeFileError(f"{path}: array '{name}' declares shape {shape} ({declared} bytes) but holds {member.file_size} bytes")


def load_npz(path: Path, data: bytes, required: dict[str, int], limit: int = MAX_TENSOR_FILE_BYTES) -> dict[str, np.ndarray]:
    """Read an npz without pickle; `required` maps array names to their number of dimensions.

    Only those arrays are decompressed, and only after every member's declared size was checked against `limit`.
    """
    try:
        _check_npz_members(path, data, limit)
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files if k in required}
    except UnsafeFileError:
        raise
    except Exception as e:  # zip, zlib and format errors of many kinds
        raise UnsafeFileError(f"{path}: unreadable npz ({one_line(e)})") from None
    for name, ndim in required.items():
        if name not in arrays:
            raise UnsafeFileError(f"{path}: array '{name}' is missing")
        if arrays[name].ndim != ndim or arrays[name].dtype == object:
            raise UnsafeFileError(f"{path}: array '{name}' has {arrays[name].ndim} dimensions, expected {ndim}")
    return arrays


def check_kind(path: Path, name: str, array: np.ndarray, kinds: str, what: str) -> None:
    """Refuse array `name` of `path` unless its dtype kind is one of `kinds` ('f', 'iu', ...); `what` names them."""
    if array.dtype.kind not in kinds:
        raise UnsafeFileError(f"{path}: array '{name}' has dtype {array.dtype}, expected {what}")


def load_safetensors(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file held in memory (never unpickled)."""
    try:
        return st_load(data)
    except (SafetensorError, ValueError, RuntimeError, OverflowError, TypeError) as e:
        raise UnsafeFileError(f"{path}: not a valid safetensors file ({first_line(e)})") from None


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The __metadata__ of a safetensors file held in memory (already validated by load_safetensors)."""
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    meta = header.get("__metadata__", {}) or {}
    return meta if isinstance(meta, dict) else {}
