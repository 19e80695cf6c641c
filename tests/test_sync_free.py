"""The training step without host round-trips, --deterministic, and --amp auto's timed choice (issue 12, items 1 and 3).

A host sync cannot be counted on the CPU; instead the step is run with every tensor-to-host read (item, tolist,
bool, float, int) made to raise, and a NaN injected mid-epoch must still fail the run at the next check step with
the last good checkpoint kept. --amp auto's decision is tested with fake timings (the timed branch needs a GPU).
"""
from __future__ import annotations

import os

import pytest
import torch

from models import ModelConfig
from trainer import cli, compat
from trainer import train as train_mod
from trainer.config import TrainConfig
from trainer.runs import load_run, read_config, read_status
from trainer.train import Trainer, TrainingFailed, fit

from .helpers import TINY_WIDTHS, cli_args, poison_from, tiny_data, write_idx_digits

TINY = ModelConfig(latent_dim=2, widths=TINY_WIDTHS)
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")  # every way a tensor's value reaches Python
N_TRAIN, BATCH = 96, 8  # 12 steps per epoch
CHECK_EVERY = 4  # NONFINITE_CHECK_STEPS in these tests


def tiny_train(**kw) -> TrainConfig:
    return TrainConfig(**({"epochs": 2, "batch_size": BATCH, "lr": 0.01, "atlas_size": 20, "seed": 0} | kw))


@pytest.fixture()
def deterministic_state():
    """Put back torch's process-wide determinism settings and CUBLAS_WORKSPACE_CONFIG after a test that sets them."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[1], saved[2]
    if saved[3] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[3]


def forbid_host_reads(monkeypatch) -> None:
    def refuse(self, *args, **kw):
        raise AssertionError("the training step read a tensor's value on the host (a device sync on a GPU)")

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, refuse)


# ---------------------------------------------------------------- the step reads nothing back


def test_train_step_reads_no_tensor_value_on_the_host(monkeypatch):
    trainer = Trainer(TINY, tiny_train(), tiny_data(N_TRAIN))
    x = trainer.images(trainer.train_x, slice(0, BATCH))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with monkeypatch.context() as m:
        forbid_host_reads(m)
        for _ in range(3):
            terms = trainer.train_step(x, 1.0, eps=trainer.noise(BATCH, None))
    assert terms is not None and all(t.shape == () for t in terms)
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))  # it did step
    trainer.check_finite()  # nothing flagged


def test_a_non_finite_step_is_flagged_on_the_device_and_raised_by_the_check(monkeypatch):
    trainer = Trainer(TINY, tiny_train(), tiny_data(N_TRAIN))
    x = trainer.images(trainer.train_x, slice(0, BATCH))
    trainer.train_step(x, 1.0, eps=trainer.noise(BATCH, None))
    poison_from(monkeypatch, 1, float("inf"))
    with monkeypatch.context() as m:
        forbid_host_reads(m)
        for _ in range(2):  # no raise inside the step: the optimiser steps on
            trainer.train_step(x, 1.0, eps=trainer.noise(BATCH, None))
    assert bool(trainer.nonfinite)
    with pytest.raises(TrainingFailed, match=r"^loss became inf \(recon [0-9.e+]+, kl [0-9.e+-]+\)$"):
        trainer.check_finite()


def test_the_step_callback_gets_host_ints(monkeypatch):
    trainer = Trainer(TINY, tiny_train(), tiny_data(N_TRAIN))
    seen: list[tuple[int, int]] = []
    assert trainer.train_epoch(on_step=lambda step, images: seen.append((step, images))) is not None
    assert seen == [(k, min(k * BATCH, N_TRAIN)) for k in range(1, N_TRAIN // BATCH + 1)]
    assert all(type(a) is int and type(b) is int for a, b in seen)


# ---------------------------------------------------------------- a NaN mid-epoch still fails the run


def test_nan_mid_epoch_fails_at_the_next_check_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(train_mod, "NONFINITE_CHECK_STEPS", CHECK_EVERY)
    data, run_dir = tiny_data(N_TRAIN), tmp_path / "r"
    fit(TINY, tiny_train(epochs=1), data, run_dir, progress="none")
    saved = load_run(run_dir)
    # resumed: call 1 is the 2nd epoch's first step; the NaN comes at its step 6, the host reads the flag after step 8
    calls = poison_from(monkeypatch, 6)
    with pytest.raises(TrainingFailed, match=r"^loss became nan \(recon .*\) in epoch 2; the last good checkpoint \(epoch 1\) is kept$"):
        fit(TINY, tiny_train(epochs=3), data, run_dir, resume=True, progress="none")
    assert calls["n"] == 2 * CHECK_EVERY  # stopped at the check step, not at the epoch's end (12 steps)
    status = read_status(run_dir)
    assert status["state"] == "failed" and "loss became nan" in status["message"] and "(epoch 1) is kept" in status["message"]
    run = load_run(run_dir)
    assert run.epoch == 1
    for a, b in zip(saved.model.state_dict().values(), run.model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_stop_after_an_unchecked_nan_still_fails(tmp_path, monkeypatch):
    """A stop request between the NaN and the next check: the run ends failed, not stopped."""
    data, run_dir = tiny_data(N_TRAIN), tmp_path / "r"
    poison_from(monkeypatch, 1 + 3)  # call 1 is the epoch-0 evaluation: the NaN comes at the 3rd step of epoch 1
    steps = {"n": 0}

    def stop() -> bool:
        steps["n"] += 1
        return steps["n"] > 5

    with pytest.raises(TrainingFailed, match="loss became nan.*in epoch 1; the last good checkpoint \\(epoch 0\\) is kept"):
        fit(TINY, tiny_train(), data, run_dir, stop=stop, progress="none")
    assert read_status(run_dir)["state"] == "failed" and load_run(run_dir).epoch == 0


# ---------------------------------------------------------------- --deterministic


def test_deterministic_is_an_option_of_the_cli_and_the_config():
    option = cli.trainer_options()["deterministic"]
    assert option.flag == "--deterministic" and option.choices == ("off", "on") and option.default == "off"
    _, train_config, _ = cli.configs_from_args(cli.build_parser().parse_args(["--deterministic", "on"]))
    assert train_config.deterministic == "on"
    with pytest.raises(ValueError, match="deterministic must be off or on"):
        TrainConfig(deterministic="yes")


def test_deterministic_is_applied_and_recorded(deterministic_state):
    trainer = Trainer(TINY, tiny_train(deterministic="on"), tiny_data(N_TRAIN), amp="auto")
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == train_mod.CUBLAS_WORKSPACE
    info = trainer.setup_info()
    assert info["deterministic"]["algorithms"] is True and info["deterministic"]["cublas_workspace_config"] == ":4096:8"
    assert info["precision"] == "float32" and info["amp_auto"]["picked"] == "float32"


def test_deterministic_run_resumes_bit_identically(tmp_path, deterministic_state):
    data = tiny_data(N_TRAIN)
    fit(TINY, tiny_train(epochs=3, deterministic="on"), data, tmp_path / "straight", progress="none")
    fit(TINY, tiny_train(epochs=1, deterministic="on"), data, tmp_path / "split", progress="none")
    fit(TINY, tiny_train(epochs=3, deterministic="on"), data, tmp_path / "split", resume=True, progress="none")
    straight, split = load_run(tmp_path / "straight"), load_run(tmp_path / "split")
    assert straight.epoch == split.epoch == 3
    for a, b in zip(straight.model.state_dict().values(), split.model.state_dict().values()):
        assert torch.equal(a, b)
    assert [r["test_loss"] for r in straight.history] == [r["test_loss"] for r in split.history]
    _, train_config, info = read_config(tmp_path / "split")
    assert train_config.deterministic == "on" and info["deterministic"]["algorithms"] is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_deterministic_cuda_run_resumes_bit_identically(tmp_path, deterministic_state):
    """The issue's goal on a GPU: --deterministic on, --amp auto (float32, untimed), --cuda-graph auto (eager)."""
    data, conv = tiny_data(N_TRAIN), ModelConfig(latent_dim=4, widths=TINY_WIDTHS)
    common = {"progress": "none", "amp": "auto", "device": "cuda"}
    fit(conv, tiny_train(epochs=3, deterministic="on"), data, tmp_path / "straight", **common)
    fit(conv, tiny_train(epochs=1, deterministic="on"), data, tmp_path / "split", **common)
    fit(conv, tiny_train(epochs=3, deterministic="on"), data, tmp_path / "split", resume=True, **common)
    straight, split = load_run(tmp_path / "straight"), load_run(tmp_path / "split")
    for a, b in zip(straight.model.state_dict().values(), split.model.state_dict().values()):
        assert torch.equal(a, b)
    assert [r["test_loss"] for r in straight.history] == [r["test_loss"] for r in split.history]
    assert read_config(tmp_path / "split")[2]["cuda_graph"]["used"] is False


def test_an_operation_without_a_deterministic_kernel_is_one_line(tmp_path, monkeypatch, deterministic_state):
    def refuse(*args, **kw):
        raise RuntimeError("upsample_bilinear2d_backward_out_cuda does not have a deterministic implementation, but you set "
                           "'torch.use_deterministic_algorithms(True)'. You can turn off determinism just for this operation...\nmore")

    monkeypatch.setattr(Trainer, "train_epoch", refuse)
    with pytest.raises(TrainingFailed) as info:
        fit(TINY, tiny_train(deterministic="on"), tiny_data(N_TRAIN), tmp_path / "r", progress="none")
    assert str(info.value) == ("--deterministic: upsample_bilinear2d_backward_out_cuda does not have a deterministic implementation; "
                               "train without --deterministic; the last saved epoch (0) is kept")


# ---------------------------------------------------------------- --amp auto


@pytest.mark.parametrize("fp32_ms, bf16_ms, bf16", [
    (10.0, 9.5, True),  # 1.053x
    (10.0, 9.6, False),  # 1.042x: faster, but not by 5 %
    (10.0, 10.0, False),
    (10.0, 12.0, False),
    (10.0, 0.0, False),  # a failed timing never picks bf16
    (float("nan"), 1.0, False),
])
def test_amp_auto_picks_bf16_only_when_at_least_5_percent_faster(fp32_ms, bf16_ms, bf16):
    assert compat.pick_bf16(fp32_ms, bf16_ms) is bf16
    assert compat.AmpTiming(fp32_ms, bf16_ms).picks_bf16 is bf16


def test_time_amp_with_an_injected_timer_takes_each_precision_best_round():
    clock = {"t": 0.0, "round": 0}
    calls = {"fp32": 0, "bf16": 0}

    def fp32() -> None:
        calls["fp32"] += 1
        clock["t"] += 0.010 if calls["fp32"] != 5 else 1.0  # one slow step (in the first timed round) is outvoted

    def bf16() -> None:
        calls["bf16"] += 1
        clock["t"] += 0.008

    timing = compat.time_amp(fp32, bf16, timer=lambda: clock["t"], warmup=2, steps=4, rounds=3)
    assert calls == {"fp32": 2 + 3 * 4, "bf16": 2 + 3 * 4}
    assert timing.fp32_s == pytest.approx(0.010) and timing.bf16_s == pytest.approx(0.008)
    assert timing.picks_bf16 and "bfloat16" in timing.describe() and "1.25x" in timing.describe()


def test_amp_auto_is_off_on_the_cpu_and_says_so():
    trainer = Trainer(TINY, tiny_train(), tiny_data(N_TRAIN), amp="auto")
    info = trainer.setup_info()
    assert trainer.amp_dtype is None and info["precision"] == "float32"
    assert info["amp_auto"] == {"picked": "float32", "reason": "off on the CPU, where bf16 is not timed"}
    assert trainer.amp_note() == "--amp auto: float32 (off on the CPU, where bf16 is not timed)"
    assert Trainer(TINY, tiny_train(), tiny_data(N_TRAIN), amp="off").setup_info().get("amp_auto") is None


@pytest.mark.parametrize("fp32_s, bf16_s, picked", [(0.010, 0.009, "bfloat16"), (0.010, 0.0098, "float32")])
def test_amp_auto_on_a_bf16_gpu_follows_the_timing(fp32_s, bf16_s, picked):
    """The GPU branch with the timing faked: a CPU trainer given bf16 as the candidate."""
    trainer = Trainer(TINY, tiny_train(), tiny_data(N_TRAIN), amp="auto")
    trainer.amp_dtype, trainer.amp_pending = torch.bfloat16, True
    trainer.time_amp = lambda: compat.AmpTiming(fp32_s, bf16_s)  # type: ignore[method-assign]
    info = trainer.setup_info()
    assert info["precision"] == picked and info["amp_auto"]["picked"] == picked
    assert info["amp_auto"]["fp32_ms_per_step"] == pytest.approx(fp32_s * 1e3) and info["amp_auto"]["bf16_ms_per_step"] == pytest.approx(bf16_s * 1e3)
    assert f"{fp32_s * 1e3:.3g} ms in float32" in trainer.amp_note()


def test_amp_auto_keeps_a_resumed_runs_precision_untimed():
    trainer = Trainer(TINY, tiny_train(), tiny_data(N_TRAIN), amp="auto")
    trainer.amp_dtype, trainer.amp_pending = torch.bfloat16, True
    trainer.time_amp = lambda: pytest.fail("a resumed run is not timed again")  # type: ignore[method-assign]
    trainer.settle_amp({"precision": "bfloat16", "amp_auto": {"picked": "bfloat16", "fp32_ms_per_step": 5.0}})
    assert trainer.amp_dtype == torch.bfloat16 and trainer.amp_auto["fp32_ms_per_step"] == 5.0 and "resumed" in trainer.amp_auto["reason"]


def test_amp_auto_with_deterministic_is_float32_untimed(deterministic_state):
    trainer = Trainer(TINY, tiny_train(deterministic="on"), tiny_data(N_TRAIN), amp="auto")
    trainer.amp_dtype, trainer.amp_pending = torch.bfloat16, True
    trainer.time_amp = lambda: pytest.fail("--deterministic is not timed")  # type: ignore[method-assign]
    trainer.settle_amp()
    assert trainer.amp_dtype is None and "--deterministic" in trainer.amp_auto["reason"]


def test_the_cli_says_what_amp_auto_picked(tmp_path, capsys, deterministic_state):
    data_dir = write_idx_digits(tmp_path / "data")
    argv = cli_args(data_dir, tmp_path / "runs", "r", "--epochs", "1", "--progress", "json", "--deterministic", "on")
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "--amp auto: float32 (off on the CPU, where bf16 is not timed)" in err.splitlines()
    assert "precision" not in next(line for line in err.splitlines() if line.startswith("run: "))  # auto: said by the line above
    _, train_config, info = read_config(tmp_path / "runs" / "r")
    assert train_config.deterministic == "on" and info["amp_auto"]["picked"] == "float32" and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_timing_the_step_leaves_the_run_untouched():
    """time_amp trains copies: the run's weights, optimiser and random streams are as before (bf16 autocast runs on the CPU)."""
    trainer = Trainer(TINY, tiny_train(), tiny_data(N_TRAIN))
    weights = [p.detach().clone() for p in trainer.model.parameters()]
    rng = torch.get_rng_state()
    timing = trainer.time_amp()
    assert timing.fp32_s > 0 and timing.bf16_s > 0
    assert all(torch.equal(a, p) for a, p in zip(weights, trainer.model.parameters()))
    assert not trainer.optimizer.state and torch.equal(rng, torch.get_rng_state())
