"""trainer.onnx_export: a run's decoder as a checked ONNX graph, cached in the run folder and never trusted blindly."""
from __future__ import annotations

import errno
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from trainer import onnx_export, safe_io
from trainer.onnx_export import DecoderExportError, check_graph, decoder_onnx, decoder_paths, weights_sha256
from trainer.runs import load_run

from .helpers import make_run

VARIANTS = {"conv": ("conv", "vae"), "upsample": ("conv-upsample", "vae"), "mlp": ("mlp", "vae"), "ae": ("conv", "ae")}
LATENT_DIM = 3


@pytest.fixture(scope="module")
def variant_root(tmp_path_factory) -> Path:
    """One tiny one-epoch run per architecture and kind."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("onnx-runs")
    for name, (arch, kind) in VARIANTS.items():
        make_run(root, name, arch=arch, kind=kind, latent_dim=LATENT_DIM, epochs=1)
    return root


@pytest.fixture
def run_copy(variant_root, tmp_path):
    """A fresh copy of a variant's run folder (the cache tests write into it)."""

    def copy(name: str = "conv"):
        return load_run(shutil.copytree(variant_root / name, tmp_path / name))

    return copy


def ort_decode(data: bytes, z: np.ndarray) -> np.ndarray:
    session = onnx_export.import_onnxruntime().InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {"z": z.astype(np.float32)})[0]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_exports_and_matches_torch(run_copy, name):
    run = run_copy(name)
    data = decoder_onnx(run)
    assert data is not None
    z = np.random.default_rng(1).normal(0, 2, (5, LATENT_DIM)).astype(np.float32)  # a batch size the export never saw
    got = ort_decode(data, z)
    expected = run.model.decode_images(torch.from_numpy(z)).numpy()
    assert got.shape == (5, *run.model_config.image_shape)
    assert np.abs(got - expected).max() <= onnx_export.ONNX_TOLERANCE
    assert got.min() >= 0.0 and got.max() <= 1.0  # the sigmoid is in the graph


def test_cache_is_written_and_reused(run_copy, monkeypatch):
    run = run_copy("mlp")
    first = decoder_onnx(run)
    graph_path, sidecar_path = decoder_paths(run.path, run.epoch)
    assert graph_path.name == f"decoder-{run.epoch:06d}.onnx" and graph_path.read_bytes() == first
    sidecar = json.loads(sidecar_path.read_text())
    assert sidecar["weights_sha256"] == weights_sha256(run.model)
    assert sidecar["onnx_sha256"] == safe_io.sha256(first)

    def no_export(model):
        raise AssertionError("the cached graph should have been used")

    monkeypatch.setattr(onnx_export, "export_decoder", no_export)
    assert decoder_onnx(load_run(run.path)) == first


def test_older_epochs_decoder_files_are_removed(run_copy):
    run = run_copy("conv")
    stale_graph, stale_sidecar = decoder_paths(run.path, run.epoch + 7)
    stale_graph.write_bytes(b"old")
    stale_sidecar.write_text("{}")
    assert decoder_onnx(run) is not None
    assert not stale_graph.exists() and not stale_sidecar.exists()
    assert decoder_paths(run.path, run.epoch)[0].exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "no-sidecar", "sidecar-not-json", "other-weights"])
def test_a_corrupt_or_stale_cache_is_replaced(run_copy, damage):
    run = run_copy("conv")
    good = decoder_onnx(run)
    graph_path, sidecar_path = decoder_paths(run.path, run.epoch)
    if damage == "truncated":
        graph_path.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        graph_path.write_bytes(b"\x00not a graph" * 100)
    elif damage == "no-sidecar":
        sidecar_path.unlink()
    elif damage == "sidecar-not-json":
        sidecar_path.write_text("{nope")
    else:
        sidecar = json.loads(sidecar_path.read_text())
        sidecar_path.write_text(json.dumps({**sidecar, "weights_sha256": "0" * 64}))
    assert decoder_onnx(run) == good
    assert graph_path.read_bytes() == good
    assert json.loads(sidecar_path.read_text())["weights_sha256"] == weights_sha256(run.model)


def test_a_consistent_but_foreign_graph_is_not_trusted(run_copy, variant_root):
    """Another run's decoder with a sidecar claiming this run's weights: the checksums agree, torch does not."""
    run = run_copy("conv")
    good = decoder_onnx(run)
    foreign = onnx_export.export_decoder(load_run(variant_root / "ae").model)
    assert foreign != good
    graph_path, sidecar_path = decoder_paths(run.path, run.epoch)
    graph_path.write_bytes(foreign)
    sidecar = json.loads(sidecar_path.read_text())
    sidecar_path.write_text(json.dumps({**sidecar, "onnx_sha256": safe_io.sha256(foreign)}))
    assert decoder_onnx(run) == good
    assert graph_path.read_bytes() == good


def test_a_read_only_run_folder_exports_to_memory(run_copy, monkeypatch):
    run = run_copy("upsample")

    def read_only(path, data):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(safe_io, "atomic_write_bytes", read_only)  # chmod does not stop root, so refuse every write
    before = sorted(p.name for p in run.path.iterdir())
    data = decoder_onnx(run)
    assert data is not None and np.isfinite(ort_decode(data, np.zeros((1, LATENT_DIM)))).all()
    assert sorted(p.name for p in run.path.iterdir()) == before


def test_an_unexportable_decoder_returns_none_with_a_reason(run_copy, monkeypatch, caplog):
    run = run_copy("conv")
    decode = run.model.decode
    monkeypatch.setattr(run.model, "decode", lambda z: torch.lgamma(decode(z).abs() + 1.0))  # no ONNX symbol for lgamma
    with caplog.at_level(logging.WARNING, logger="trainer.onnx_export"):
        assert decoder_onnx(run) is None
    assert "lgamma" in caplog.text and "server" in caplog.text
    assert not decoder_paths(run.path, run.epoch)[0].exists()


def test_a_graph_that_decodes_differently_is_refused(run_copy, monkeypatch, caplog):
    run = run_copy("mlp")
    monkeypatch.setattr(onnx_export, "ONNX_TOLERANCE", -1.0)  # nothing can match: the check must fail, not pass silently
    with caplog.at_level(logging.WARNING, logger="trainer.onnx_export"):
        assert decoder_onnx(run) is None
    assert "differs from torch" in caplog.text


@pytest.mark.slow  # a fresh Python process importing the trainer
def test_onnxruntime_is_loaded_without_telemetry(tmp_path):
    """In a fresh process with an empty HOME: the export's check loads onnxruntime, and nothing appears in HOME."""
    import os
    import subprocess
    import sys

    from trainer.paths import PROJECT_ROOT

    env = {k: v for k, v in os.environ.items() if k != onnx_export.ORT_TELEMETRY_ENV} | {"HOME": str(tmp_path), "PYTHONPATH": str(PROJECT_ROOT)}
    code = "from trainer.onnx_export import import_onnxruntime; import os; ort = import_onnxruntime(); print(os.environ['ORT_DISABLE_TELEMETRY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"
    assert list(tmp_path.rglob("*")) == []  # no ~/.cache/Microsoft/DeveloperTools device id


def _tiny_graph(op: str, *, external: bool = False) -> bytes:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, 4], np.ones(8, np.float32))
    if external:
        weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2, 4], data_location=TensorProto.EXTERNAL)
        weight.external_data.add(key="location", value="/etc/passwd")
    nodes = [helper.make_node("MatMul", ["z", "w"], ["h"]), helper.make_node(op, ["h"], ["image"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 4])], [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_check_graph_accepts_plain_ops_and_refuses_others():
    check_graph(_tiny_graph("Sigmoid"), latent_dim=2, image_shape=(1, 2, 2))
    with pytest.raises(DecoderExportError, match="operator"):
        check_graph(_tiny_graph("Softplus"), latent_dim=2, image_shape=(1, 2, 2))
    with pytest.raises(DecoderExportError, match="external"):
        check_graph(_tiny_graph("Sigmoid", external=True), latent_dim=2, image_shape=(1, 2, 2))
    with pytest.raises(DecoderExportError, match=r"\(batch, 3\)"):
        check_graph(_tiny_graph("Sigmoid"), latent_dim=3, image_shape=(1, 2, 2))
    with pytest.raises(DecoderExportError, match="not an ONNX model"):
        check_graph(b"\xff" * 64, latent_dim=2, image_shape=(1, 2, 2))
    assert onnx.load_model_from_string(_tiny_graph("Sigmoid")).graph.node[1].op_type == "Sigmoid"
