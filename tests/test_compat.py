"""trainer/compat.py: features of torch 2.4 and later are detected, and each fallback works when a feature is faked absent.

The torch installed here has every feature; older or newer signatures are faked by monkeypatching, and the
object-collective fallback runs for real in two gloo processes.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainer import cli, compat, distributed
from trainer.distributed import DistContext
from trainer.paths import PROJECT_ROOT


class Opaque:
    """A class only pickle can carry: a weights_only load must refuse it."""

    def __init__(self, value: int):
        self.value = value


def legacy_broadcast_object_list(object_list, src=None, group=None, device=None):  # torch 2.11: no weights_only
    raise AssertionError("the fallback must not call torch's object collective")


def legacy_all_gather_object(object_list, obj, group=None):
    raise AssertionError("the fallback must not call torch's object collective")


# ---------------------------------------------------------------- detection


def test_accepts_reads_keywords_and_var_keywords():
    def f(a, *, b=1):
        return a

    def g(a, **kw):
        return a

    assert compat.accepts(f, "b") and not compat.accepts(f, "c")
    assert compat.accepts(g, "anything")
    assert not compat.accepts(object(), "b")  # no signature to read: treated as absent


def test_object_collectives_detection_follows_the_signature(monkeypatch):
    monkeypatch.setattr(dist, "broadcast_object_list", lambda object_list, src=None, weights_only=False: None)
    monkeypatch.setattr(dist, "all_gather_object", lambda object_list, obj, group=None, weights_only=False: None)
    assert compat.object_collectives_weights_only()
    monkeypatch.setattr(dist, "broadcast_object_list", legacy_broadcast_object_list)
    assert not compat.object_collectives_weights_only()


def test_object_collectives_of_one_process_never_touch_torch(monkeypatch):
    monkeypatch.setattr(dist, "broadcast_object_list", legacy_broadcast_object_list)
    monkeypatch.setattr(dist, "all_gather_object", legacy_all_gather_object)
    assert distributed.broadcast_object(distributed.SINGLE, {"a": 1}) == {"a": 1}
    assert distributed.gather_objects(distributed.SINGLE, "x") == ["x"]


def _collective_worker(rank: int, store_path: str, out_dir: str) -> None:
    """One of two gloo processes on a torch faked without weights_only in its object collectives."""
    dist.broadcast_object_list = legacy_broadcast_object_list
    dist.all_gather_object = legacy_all_gather_object
    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank, world_size=2)
    ctx = DistContext(rank=rank, world_size=2, local_rank=rank, local_world_size=2, backend="gloo")
    try:
        assert not compat.object_collectives_weights_only()
        sent = {"epoch": 3, "model": {"w": torch.arange(6.0).view(2, 3)}, "names": ["a", None]} if rank == 0 else None
        got = distributed.broadcast_object(ctx, sent)
        gathered = distributed.gather_objects(ctx, "x" * (1 + 40 * rank))  # different lengths: padded and cut back
        first = distributed.first_error(ctx, None if rank == 0 else "disk full")
        try:
            distributed.broadcast_object(ctx, Opaque(1) if rank == 0 else None)
            refused = "no"
        except pickle.UnpicklingError:
            refused = "yes"
        ok = (got["epoch"] == 3 and torch.equal(got["model"]["w"], torch.arange(6.0).view(2, 3)) and got["names"] == ["a", None]
              and gathered == ["x", "x" * 41] and first == "rank 1: disk full")
        Path(out_dir, f"rank{rank}").write_text(f"{ok} {refused}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_object_collectives_fallback_in_two_processes(tmp_path):
    """Without weights_only in torch's object collectives (torch 2.11), objects still travel between processes,
    and a pickle-only object is refused on every process (weights_only load), never run."""
    mp.spawn(_collective_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["True yes", "True yes"]


def test_bytes_round_trip_refuses_pickles():
    data = distributed._to_bytes({"a": [1, 2.5, "s"], "t": torch.ones(2)}, None)
    back = distributed._from_bytes(data)
    assert back["a"] == [1, 2.5, "s"] and torch.equal(back["t"], torch.ones(2))
    with pytest.raises(pickle.UnpicklingError):
        distributed._from_bytes(distributed._to_bytes(Opaque(2), None))


def test_load_weights_refuses_a_pickled_object(tmp_path):
    path = tmp_path / "obj.pt"
    torch.save({"w": torch.zeros(1), "o": Opaque(3)}, path)
    with pytest.raises(pickle.UnpicklingError):
        compat.load_weights(path)


# ---------------------------------------------------------------- optimiser


def test_adam_fused_where_possible():
    p = [torch.nn.Parameter(torch.zeros(3))]
    assert compat.is_fused(compat.adam(p, 1e-3, fused=True)) == compat.accepts(torch.optim.Adam.__init__, "fused")
    assert not compat.is_fused(compat.adam(p, 1e-3))


def test_adam_falls_back_when_fused_is_missing_or_refused(monkeypatch):
    class NoFused(torch.optim.Adam):
        def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *, foreach=None, capturable=False):
            super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, foreach=foreach, capturable=capturable)

    class RefusesFused(torch.optim.Adam):
        def __init__(self, params, lr=1e-3, *, fused=None, capturable=False):
            if fused:
                raise RuntimeError("fused=True requires all the params to be floating point Tensors of supported devices")
            super().__init__(params, lr=lr, capturable=capturable)

    p = [torch.nn.Parameter(torch.zeros(3))]
    for cls in (NoFused, RefusesFused):
        monkeypatch.setattr(torch.optim, "Adam", cls)
        opt = compat.adam(p, 1e-3, fused=True)
        assert type(opt) is cls and not compat.is_fused(opt)


def test_capturable_adam_is_required_not_guessed(monkeypatch):
    p = [torch.nn.Parameter(torch.zeros(3))]
    assert compat.adam(p, 1e-3, capturable=True).defaults["capturable"] is True

    class Old(torch.optim.Adam):
        def __init__(self, params, lr=1e-3):
            super().__init__(params, lr=lr)

    monkeypatch.setattr(torch.optim, "Adam", Old)
    with pytest.raises(ValueError, match="capturable"):
        compat.adam(p, 1e-3, capturable=True)


# ---------------------------------------------------------------- mixed precision


def test_autocast_without_torch_amp_autocast(monkeypatch):
    monkeypatch.delattr(torch.amp, "autocast")
    a = torch.ones(4, 4)
    with compat.autocast("cpu", torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
    assert (a @ a).dtype == torch.float32


def test_grad_scaler_without_torch_amp_grad_scaler(monkeypatch):
    assert hasattr(compat.grad_scaler("cpu"), "scale")
    monkeypatch.delattr(torch.amp, "GradScaler")
    with pytest.raises(ValueError, match="--amp bf16 or off"):
        compat.grad_scaler("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.cuda.amp.GradScaler is deprecated, and disabled without a GPU
        assert hasattr(compat.grad_scaler("cuda"), "scale")


@pytest.mark.parametrize("major, native", [(7, False), (8, True), (9, True)])
def test_native_bf16_from_capability_on_a_torch_without_including_emulation(monkeypatch, major, native):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)  # older torch: no argument
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    assert compat.cuda_bf16_native(torch.device("cuda")) is native
    assert distributed.resolve_amp("auto", torch.device("cuda")) == (torch.bfloat16 if native else None)


def test_native_bf16_asks_torch_without_emulation(monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: asked.append(including_emulation) or False)
    assert not compat.cuda_bf16_native()
    assert asked == [False]
    with pytest.raises(ValueError, match="no native bfloat16"):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Old GPU")
        distributed.resolve_amp("bf16", torch.device("cuda"))


def test_no_cuda_means_no_native_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not compat.cuda_bf16_native()


def test_process_group_device_id_detection(monkeypatch):
    assert compat.process_group_device_id() == compat.accepts(dist.init_process_group, "device_id")
    monkeypatch.setattr(dist, "init_process_group", lambda backend=None, store=None, rank=-1, world_size=-1, timeout=None: None)
    assert not compat.process_group_device_id()


# ---------------------------------------------------------------- two processes on one GPU


def test_two_processes_on_one_gpu_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    ctx = DistContext(rank=1, world_size=2, local_rank=1, local_world_size=2)
    with pytest.raises(ValueError) as info:
        distributed.device_for(ctx, torch.device("cuda"))
    message = str(info.value)
    assert "\n" not in message
    assert "2 processes on 1 GPU" in message and "--nproc-per-node 1" in message and "--device cpu" in message


def test_cli_says_it_in_one_line(monkeypatch, capsys, tmp_path):
    """Rank 0 of `torchrun --nproc-per-node 2 -m trainer --device cuda` on a one-GPU machine: exit 2, one line."""
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    code = cli.main(["--device", "cuda", "--progress", "none", "--checkpoints-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "asked for 2 processes on 1 GPU" in err
    assert not any(tmp_path.iterdir())  # refused before any run folder was made


# ---------------------------------------------------------------- denormals


def test_the_trainer_flushes_denormals_while_it_runs(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "_main", lambda argv: seen.append(compat.denormals_flushed()) or 0)
    torch.set_flush_denormal(False)  # torch's default
    assert cli.main([]) == 0
    assert seen == [True]
    assert not compat.denormals_flushed()  # put back for an in-process caller


@pytest.mark.slow
def test_the_trainer_process_flushes_denormals_in_every_thread():
    """Set first thing in `python -m trainer`, the setting reaches torch's intra-op threads, started later."""
    code = ("import sys, torch; from trainer import cli; "
            "cli._main = lambda argv: print(int((torch.full((1 << 20,), 1e-38) * 0.01 == 0).sum())) or 0; sys.exit(cli.main([]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "2"}, check=True)
    assert int(out.stdout.strip()) == 1 << 20  # every product (1e-40, subnormal) flushed, whichever thread made it
