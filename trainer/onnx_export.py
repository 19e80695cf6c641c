"""A run's decoder as an ONNX graph, for decoding in the browser while a latent slider is dragged.

`decoder_onnx(run)` returns the bytes of a graph z (B, D) float32 -> image (B, C, H, W) in [0, 1] (the
sigmoid applied, dynamic batch), exported with torch.onnx's TorchScript exporter and checked against torch
with onnxruntime on random latents (max abs error <= ONNX_TOLERANCE). It is kept in the run folder as
`decoder-EEEEEE.onnx` beside a sidecar `decoder-EEEEEE.json` naming the SHA-256 of the weights it came from
and of the graph. A cached graph is used only when both checksums match, it passes the structural check
(no external data, no functions or sub-graphs, only plain tensor ops from ONNX's default domain) and it
matches torch again: a stale, corrupt or foreign file is re-exported, never trusted. A read-only run
folder only means no disk cache. The graph is data, not code, and nothing is ever unpickled.

None (with the reason logged) means the decoder cannot be exported or checked; callers then decode on the server.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import safe_io
from .errors import one_line
from .runs import parse_versioned, versioned

if TYPE_CHECKING:
    from models import VAE

    from .runs import Run

log = logging.getLogger(__name__)

DECODER_STEM = "decoder"
ONNX_SUFFIX = ".onnx"
SIDECAR_SUFFIX = ".json"
SIDECAR_FORMAT = 1
ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-4  # max abs difference from torch's sigmoid(decode(z)) on the check latents
INPUT_NAME = "z"
OUTPUT_NAME = "image"
BATCH_AXIS = "batch"
CHECK_BATCH = 8  # random latents decoded by both torch and onnxruntime (a batch other than the export's 1)
CHECK_SCALE = 3.0  # their spread: N(0, CHECK_SCALE^2), beyond the prior's bulk
CHECK_SEED = 0
ORT_TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"  # read when onnxruntime loads: its Linux wheels otherwise keep a device id
# under ~/.cache/Microsoft and may post usage events; this app writes only run folders and calls no host
MAX_DECODER_BYTES = 64 * 2**20  # larger decoders stay on the server: too much to send to a browser
# The only operators a graph sent to the browser may use (what the conv, conv-upsample, MLP and resnet decoders export
# to: the resnet's GroupNorm becomes InstanceNormalization, its self-attention Softmax and Sqrt; the vendored
# onnxruntime-web's WASM backend runs all of them).
ALLOWED_OPS = frozenset({
    "Add", "Cast", "Concat", "Constant", "Conv", "ConvTranspose", "Div", "Flatten", "Gather", "Gemm", "Identity",
    "InstanceNormalization", "MatMul", "Mod", "Mul", "Relu", "Reshape", "Resize", "Shape", "Sigmoid", "Slice", "Softmax",
    "Sqrt", "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze",
})


class DecoderExportError(Exception):
    """The decoder could not be exported or the graph does not decode like torch; one line saying why."""


class _SigmoidDecoder(torch.nn.Module):
    """z (B, D) -> sigmoid(model.decode(z)) (B, C, H, W): the image, as the graph computes it."""

    def __init__(self, model: VAE):
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model.decode(z))


# ---------------------------------------------------------------- paths and fingerprints

def decoder_paths(run_dir: Path, epoch: int) -> tuple[Path, Path]:
    """(graph, sidecar) of epoch `epoch`'s decoder in a run folder: decoder-EEEEEE.onnx, decoder-EEEEEE.json."""
    run_dir = Path(run_dir)
    return run_dir / versioned(DECODER_STEM, epoch, ONNX_SUFFIX), run_dir / versioned(DECODER_STEM, epoch, SIDECAR_SUFFIX)


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state (names, dtypes, shapes, values): a cached graph is only used for exactly these weights."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- export and checks

def export_decoder(model: VAE) -> bytes:
    """The ONNX bytes of sigmoid(model.decode(z)) with a dynamic batch axis (the model is expected in eval mode, as load_run gives it)."""
    device = next(model.parameters()).device
    cpu_model = model if device.type == "cpu" else _cpu_copy(model)
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notices say nothing about this graph
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                _SigmoidDecoder(cpu_model), (torch.zeros(1, model.latent_dim),), buf, dynamo=False, opset_version=ONNX_OPSET,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}},
            )
        except Exception as e:  # noqa: BLE001 - any exporter failure means "decode on the server"
            raise DecoderExportError(f"torch.onnx.export failed: {one_line(e)}") from None
    return buf.getvalue()


def _cpu_copy(model: VAE) -> VAE:
    from models import build_model

    copy = build_model(model.config).eval()
    copy.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return copy


def check_graph(data: bytes, latent_dim: int, image_shape: tuple[int, ...]) -> None:
    """Refuse a graph that is not a plain decoder: external data, functions, sub-graphs, foreign domains or ops, other I/O."""
    import onnx

    if len(data) > MAX_DECODER_BYTES:
        raise DecoderExportError(f"the graph is {len(data):,} bytes, more than the {MAX_DECODER_BYTES:,} sent to a browser")
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as e:  # noqa: BLE001 - protobuf parse errors have no common base class
        raise DecoderExportError(f"not an ONNX model: {one_line(e)}") from None
    graph = proto.graph
    if proto.functions or any(o.domain not in ("", "ai.onnx") for o in proto.opset_import):
        raise DecoderExportError("the graph declares functions or non-standard operator sets")
    tensors = list(graph.initializer) + [a.t for n in graph.node for a in n.attribute if a.HasField("t")]
    if any(t.data_location == onnx.TensorProto.EXTERNAL or t.external_data for t in tensors) or graph.sparse_initializer:
        raise DecoderExportError("the graph refers to external or sparse data")
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in ALLOWED_OPS:
            raise DecoderExportError(f"the graph uses operator {node.domain + '.' if node.domain else ''}{node.op_type}, not one a decoder needs")
        if any(a.HasField("g") or a.graphs for a in node.attribute):
            raise DecoderExportError("the graph has sub-graphs")
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in graph.output] != [OUTPUT_NAME]:
        raise DecoderExportError(f"the graph's inputs/outputs are not '{INPUT_NAME}' -> '{OUTPUT_NAME}'")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 2 or dims[1] != latent_dim or dims[0] is not None:
        raise DecoderExportError(f"the graph's input is not (batch, {latent_dim})")


def import_onnxruntime() -> ModuleType:
    """onnxruntime, loaded with its telemetry off (ORT_TELEMETRY_ENV set first, unless the user set it)."""
    os.environ.setdefault(ORT_TELEMETRY_ENV, "1")
    import onnxruntime

    onnxruntime.disable_telemetry_events()
    return onnxruntime


def max_abs_error(data: bytes, model: VAE) -> float:
    """Largest |onnxruntime(graph)(z) - sigmoid(decode(z))| over seeded random latents (batches CHECK_BATCH and 1)."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own unrelated exception types
        raise DecoderExportError(f"onnxruntime cannot load the graph: {one_line(e)}") from None
    gen = torch.Generator().manual_seed(CHECK_SEED)
    z = torch.randn(CHECK_BATCH, model.latent_dim, generator=gen) * CHECK_SCALE  # (B, D)
    expected = model.decode_images(z).numpy()  # (B, C, H, W) in [0, 1]
    err = 0.0
    for batch in (z, z[:1]):
        try:
            (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})
        except Exception as e:  # noqa: BLE001
            raise DecoderExportError(f"onnxruntime cannot run the graph: {one_line(e)}") from None
        if got.shape != expected[: len(batch)].shape:
            raise DecoderExportError(f"the graph decodes to shape {got.shape}, torch to {expected[: len(batch)].shape}")
        diff = np.abs(got.astype(np.float64) - expected[: len(batch)])
        err = max(err, float(diff.max()) if np.isfinite(diff).all() else float("inf"))
    return err


def verified(data: bytes, model: VAE) -> float:
    """check_graph and max_abs_error within ONNX_TOLERANCE; the error, or DecoderExportError."""
    config = model.config
    check_graph(data, config.latent_dim, tuple(config.image_shape))
    err = max_abs_error(data, model)
    if not err <= ONNX_TOLERANCE:
        raise DecoderExportError(f"the graph differs from torch by {err:.2e} (more than {ONNX_TOLERANCE:.0e})")
    return err


# ---------------------------------------------------------------- the cache in the run folder

def _read_cached(run: Run, weights_hash: str) -> bytes | None:
    """The cached graph if its sidecar names these weights and its checksum, and it still decodes like torch; else None."""
    graph_path, sidecar_path = decoder_paths(run.path, run.epoch)
    try:
        sidecar = safe_io.read_json_dict(sidecar_path)
        if sidecar.get("format") != SIDECAR_FORMAT or sidecar.get("weights_sha256") != weights_hash:
            return None
        data = safe_io.read_regular_file(graph_path, MAX_DECODER_BYTES)
        if sidecar.get("onnx_sha256") != safe_io.sha256(data):
            return None
        verified(data, run.model)
    except (safe_io.UnsafeFileError, DecoderExportError) as e:
        if not isinstance(e, safe_io.UnsafeFileError) or graph_path.exists() or sidecar_path.exists():
            log.info("%s: cached decoder not used (%s); exporting it again", run.path, e)
        return None
    return data


def _write_cache(run: Run, data: bytes, sidecar: dict[str, Any]) -> None:
    """Graph first, then the sidecar naming it; older epochs' decoder files are removed. OSError: read-only, no cache."""
    graph_path, sidecar_path = decoder_paths(run.path, run.epoch)
    try:
        safe_io.atomic_write_bytes(graph_path, data)
        safe_io.atomic_write_json(sidecar_path, sidecar)
        for old in Path(run.path).iterdir():
            parts = parse_versioned(old.name)
            if parts and parts.stem == DECODER_STEM and parts.suffix in (ONNX_SUFFIX, SIDECAR_SUFFIX) and parts.epoch != run.epoch:
                old.unlink(missing_ok=True)
    except OSError as e:
        log.info("%s: decoder graph not cached (%s)", run.path, one_line(e))


def decoder_onnx(run: Run) -> bytes | None:
    """The run's decoder as checked ONNX bytes (z (B, D) -> images (B, C, H, W) in [0, 1]); None, with the reason logged, if it cannot be."""
    try:
        weights_hash = weights_sha256(run.model)
        cached = _read_cached(run, weights_hash)
        if cached is not None:
            return cached
        data = export_decoder(run.model)
        err = verified(data, run.model)
    except DecoderExportError as e:
        log.warning("%s: decoder not exported to ONNX, decoding on the server: %s", run.path, e)
        return None
    sidecar = {
        "format": SIDECAR_FORMAT, "epoch": run.epoch, "weights_sha256": weights_hash, "onnx_sha256": safe_io.sha256(data),
        "onnx_bytes": len(data), "opset": ONNX_OPSET, "max_abs_error": err, "torch": torch.__version__,
        "latent_dim": run.model_config.latent_dim, "image_shape": list(run.model_config.image_shape),
    }
    _write_cache(run, data, sidecar)
    return data
