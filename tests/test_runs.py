"""Run folders: save/load round trips, atomic and consistent writes, clear errors, locks, listing."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import runs as runs_mod
from trainer import safe_io
from trainer.runs import MANIFEST_FILE, RunError, RunLock, list_runs, load_run, validate_run_name

from .helpers import make_run


@pytest.fixture()
def run_copy(runs_root, tmp_path) -> Path:
    dst = tmp_path / "vae5"
    shutil.copytree(runs_root / "vae5", dst)
    return dst


def manifest_file(run_dir: Path, key: str) -> Path:
    return run_dir / json.loads((run_dir / MANIFEST_FILE).read_text())["files"][key]


def test_round_trip_gives_identical_outputs(runs_root):
    run = load_run(runs_root / "vae5")
    again = load_run(runs_root / "vae5")
    x = torch.from_numpy(run.atlas.images[:8]).float() / 255
    with torch.no_grad():
        assert torch.equal(run.model.decode(run.model.encode(x).mean), again.model.decode(again.model.encode(x).mean))
        # the stored atlas of the last epoch is the model's posterior of the stored images
        assert np.allclose(run.model.encode(x).mean.numpy(), run.atlas.means[-1][:8], atol=2e-3)
    assert not run.model.training
    assert run.epoch == 3 and [r["epoch"] for r in run.history] == [1, 2, 3]
    assert run.atlas.epochs.tolist() == [0, 1, 2, 3] and run.atlas.means.shape == (4, 40, 5)
    assert run.info["data"]["kind"] == "subset" and run.class_names[:2] == ["0", "1"]


def test_autoencoder_run_has_no_logvars(runs_root):
    run = load_run(runs_root / "ae2")
    assert run.atlas.logvars is None and run.atlas.posterior().deterministic


def epoch_sets(run_dir: Path) -> dict[str, list[int]]:
    """The epochs of each kind of epoch file in the folder."""
    found: dict[str, list[int]] = {}
    for p in sorted(run_dir.iterdir()):
        parts = runs_mod.epoch_file(p.name)
        if parts is not None:
            found.setdefault(parts.stem, []).append(parts.epoch)
    return found


def test_a_finished_run_keeps_one_epoch_set_and_no_temporaries(runs_root):
    names = {p.name for p in (runs_root / "vae5").iterdir()}
    assert epoch_sets(runs_root / "vae5") == {k: [3] for k in runs_mod.VERSIONED_FILES}  # the last epoch's set alone
    assert not [n for n in names if n.endswith(".tmp")]


def test_while_training_the_previous_set_is_kept_until_the_last_save(run_copy):
    run = load_run(run_copy)
    writer = runs_mod.RunWriter(run_copy)
    opt = torch.optim.Adam(run.model.parameters())
    atlas = run.atlas
    history = list(run.history)
    for epoch, final in ((4, False), (5, False), (6, True)):
        history.append(history[-1] | {"epoch": epoch})
        latents = {"epochs": np.append(atlas.epochs, epoch), "means": np.concatenate([atlas.means, atlas.means[-1:]]).astype(np.float16),
                   "logvars": np.concatenate([atlas.logvars, atlas.logvars[-1:]]).astype(np.float16)}
        writer.save_epoch(epoch, run.model, opt, history, latents, final=final)
        expected = [epoch] if final else [epoch - 1, epoch]  # a reader may still follow the previous manifest
        assert epoch_sets(run_copy) == {k: expected for k in runs_mod.VERSIONED_FILES}
        assert load_run(run_copy).epoch == epoch


def test_interrupted_write_leaves_previous_checkpoint_loadable(run_copy, monkeypatch):
    run = load_run(run_copy)
    writer = runs_mod.RunWriter(run_copy)
    calls = {"n": 0}
    real = safe_io.atomic_write_bytes

    def crash_on_second_file(path, data):
        calls["n"] += 1
        if calls["n"] == 2:
            os.write(os.open(Path(path).parent / f".{Path(path).name}.crash.tmp", os.O_CREAT | os.O_WRONLY), data[: len(data) // 2])
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(safe_io, "atomic_write_bytes", crash_on_second_file)
    opt = torch.optim.Adam(run.model.parameters())
    with pytest.raises(OSError):
        writer.save_epoch(4, run.model, opt, run.history, {"epochs": np.arange(5), "means": np.zeros((5, 40, 5), np.float16)})
    after = load_run(run_copy)
    assert after.epoch == 3 and len(after.history) == 3


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda d: manifest_file(d, "weights").write_bytes(manifest_file(d, "weights").read_bytes()[:100]), "checksum"),
        (lambda d: manifest_file(d, "weights").unlink(), "missing"),
        (lambda d: (d / MANIFEST_FILE).write_text("{not json"), "not valid JSON"),
        (lambda d: (d / MANIFEST_FILE).unlink(), "manifest.json: missing"),
        (lambda d: (d / "config.json").write_text(json.dumps({"model": {"arch": "conv"}})), "key 'train' is missing"),
        (
            lambda d: (d / "config.json").write_text(
                json.dumps(json.loads((d / "config.json").read_text()) | {"model": {"latent_dim": 7, "widths": [4, 8, 8]}})
            ),
            "do not fit",
        ),
        (lambda d: (d / "atlas-images.npz").write_bytes(b"PK\x03\x04garbage"), "atlas-images.npz: unreadable"),
    ],
)
def test_damaged_runs_give_one_clear_error(run_copy, damage, match):
    damage(run_copy)
    with pytest.raises(RunError, match=match) as info:
        load_run(run_copy)
    assert "\n" not in str(info.value)


def test_weights_of_wrong_shape_without_checksum(run_copy):
    """A hand-made run (no checksums) with weights for another latent size is refused by name."""
    other = make_run(run_copy.parent, "other", latent_dim=3, epochs=1)
    manifest = json.loads((run_copy / MANIFEST_FILE).read_text())
    manifest.pop("sha256")
    (run_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    shutil.copy(manifest_file(other, "weights"), manifest_file(run_copy, "weights"))
    with pytest.raises(RunError, match=r"weights-000003.safetensors: weights do not fit"):
        load_run(run_copy)


def test_npz_with_object_arrays_is_not_unpickled(run_copy):
    np.savez(run_copy / "atlas-images.npz", images=np.array([{"x": 1}], dtype=object), labels=np.zeros(1))
    with pytest.raises(RunError, match="atlas-images.npz"):
        load_run(run_copy)


def test_symlinked_file_is_refused(run_copy, tmp_path):
    target = tmp_path / "elsewhere.json"
    shutil.copy(run_copy / "config.json", target)
    (run_copy / "config.json").unlink()
    (run_copy / "config.json").symlink_to(target)
    with pytest.raises(RunError, match="symbolic link"):
        load_run(run_copy)


def test_lock_refuses_a_second_writer_and_frees_on_release(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunError, match="already being trained"):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path):
        pass


@pytest.mark.parametrize("stem,epoch,suffix", [("weights", 3, ".safetensors"), ("kept-weights", 100_000, ".safetensors"), ("projection-umap", 0, ".npz")])
def test_versioned_names_parse_back(stem, epoch, suffix):
    name = runs_mod.versioned(stem, epoch, suffix)
    assert name == f"{stem}-{epoch:06d}{suffix}" and runs_mod.parse_versioned(name) == (stem, epoch, suffix)


@pytest.mark.parametrize("name", ["weights-3.safetensors", "weights-0000003.safetensors", "weights-000003", "-000003.npz", "weights-00000x.npz"])
def test_names_versioned_does_not_spell_are_not_parsed(name):
    assert runs_mod.parse_versioned(name) is None


def test_only_the_files_of_an_epoch_set_are_epoch_files():
    assert runs_mod.epoch_file("latents-000004.npz") == ("latents", 4, ".npz")
    assert runs_mod.epoch_file("kept-weights-000004.safetensors") is None and runs_mod.epoch_file("weights-000004.npz") is None


@pytest.mark.parametrize("name", ["a/b", "..", "../x", "/abs", "x\n", "", ".hidden", "a" * 101, "a..b"])
def test_bad_run_names(name):
    with pytest.raises(ValueError, match="invalid run name"):
        validate_run_name(name)


def test_list_runs_reads_small_files_only(runs_root, tmp_path):
    shutil.copytree(runs_root / "vae2", tmp_path / "good")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("nope")
    (tmp_path / "not-a-run").mkdir()
    summaries = {s.name: s for s in list_runs(tmp_path)}
    assert set(summaries) == {"good", "broken"}
    assert summaries["good"].error is None and summaries["good"].epoch == 2
    assert "not valid JSON" in summaries["broken"].error
