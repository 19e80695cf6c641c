"""The CUDA-graphed training step (--cuda-graph; issue 12, item 2).

On any machine: when the trainer captures (cuda_graph.plan), and the wrapper's own logic (static buffers, the
learning rate and beta as device tensors, warm-up, the short last batch, a NaN in a replayed step, save and resume)
driven by `capture_eagerly`, whose replay runs the step on the static buffers: an epoch so trained must equal an
eager one bitwise. On a CUDA machine the capture itself: graphed and eager epochs agree up to floating-point
reordering, and a NaN inside a replayed step is still caught. Those are skipped without a GPU.
"""
from __future__ import annotations

import pytest
import torch

from models import ModelConfig
from trainer import cli, cuda_graph
from trainer.config import TrainConfig
from trainer.runs import load_run, read_config
from trainer.train import Trainer, TrainingFailed, fit

from .helpers import TINY_WIDTHS, poison_from, tiny_data

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TINY = ModelConfig(latent_dim=2, widths=TINY_WIDTHS)
N_TRAIN, BATCH = 100, 8  # 12 full batches and a short one of 4 per epoch
FULL_STEPS = N_TRAIN // BATCH
PLAN_DEFAULTS = {"processes": 1, "fp16_scaler": False, "sharp": False, "compiled": False, "deterministic": False}


def schedule_config(**kw) -> TrainConfig:
    """The LR and beta change at every step (cosine, KL warm-up): a schedule the graph must read from the device."""
    base = {"epochs": 2, "batch_size": BATCH, "lr": 0.01, "lr_schedule": "cosine", "beta_warmup": 2, "atlas_size": 20, "seed": 0}
    return TrainConfig(**(base | kw))


def emulated(monkeypatch) -> None:
    """Make the trainer graph its steps on this machine (plan says used; GraphedStep then captures eagerly off CUDA)."""
    monkeypatch.setattr(cuda_graph, "plan", lambda requested, device, **kw: cuda_graph.GraphPlan(requested, True, "emulated"))


def weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [t.detach().cpu().clone() for t in model.state_dict().values()]


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


# ---------------------------------------------------------------- when to capture


@pytest.mark.parametrize("requested, device, kw, used, reason", [
    ("auto", "cpu", {}, False, "not on a CUDA device (cpu)"),
    ("off", "cuda", {}, False, "asked for off"),
    ("auto", "cuda", {}, True, "full batches replayed after 3 eager warm-up steps"),
    ("on", "cuda", {"deterministic": True}, True, "full batches replayed after 3 eager warm-up steps"),
    ("auto", "cuda", {"deterministic": True}, False, "--deterministic keeps eager steps (add --cuda-graph on to capture anyway)"),
    ("auto", "cuda", {"processes": 2}, False, "eager with 2 processes (DDP)"),
    ("auto", "cuda", {"fp16_scaler": True, "compiled": True}, False, "eager with --amp fp16's gradient scaler, --compile"),
    ("auto", "cuda", {"sharp": True}, False, "eager with the sharpness losses"),
])
def test_the_plan_captures_only_where_it_can(requested, device, kw, used, reason):
    plan = cuda_graph.plan(requested, torch.device(device), **(PLAN_DEFAULTS | kw))
    assert (plan.used, plan.reason) == (used, reason)
    assert plan.info() == {"requested": requested, "used": used, "reason": reason}


@pytest.mark.parametrize("device, kw, message", [
    ("cpu", {}, r"^--cuda-graph on needs a CUDA device \(this run trains on cpu\): use --cuda-graph auto or off$"),
    ("cuda", {"processes": 2, "sharp": True}, r"^--cuda-graph on cannot capture this run's step \(2 processes \(DDP\), the sharpness losses\)"),
])
def test_asking_for_a_graph_where_none_can_be_captured_is_one_line(device, kw, message):
    with pytest.raises(ValueError, match=message):
        cuda_graph.plan("on", torch.device(device), **(PLAN_DEFAULTS | kw))
    with pytest.raises(ValueError, match="choose one of auto, on, off"):
        cuda_graph.plan("yes", torch.device(device), **PLAN_DEFAULTS)


def test_the_cli_refuses_a_graph_on_the_cpu_in_one_line(tmp_path, capsys):
    code = cli.main(["--device", "cpu", "--cuda-graph", "on", "--checkpoints-dir", str(tmp_path), "--progress", "none", "--epochs", "1"])
    err = capsys.readouterr().err
    assert code != 0 and "--cuda-graph on needs a CUDA device" in err and "Traceback" not in err
    assert cli.trainer_options()["cuda_graph"].choices == cuda_graph.GRAPH_CHOICES


def test_a_cpu_run_records_that_it_was_not_graphed(tmp_path):
    fit(TINY, schedule_config(epochs=1), tiny_data(N_TRAIN), tmp_path / "r", progress="none")
    _, _, info = read_config(tmp_path / "r")
    assert info["cuda_graph"] == {"requested": "auto", "used": False, "reason": "not on a CUDA device (cpu)"}


# ---------------------------------------------------------------- the wrapper, replayed eagerly on this machine


@pytest.mark.parametrize("kind", ["vae", "ae"])
def test_graphed_epochs_equal_eager_ones_bitwise(monkeypatch, kind):
    config, data = ModelConfig(kind=kind, latent_dim=2, widths=TINY_WIDTHS), tiny_data(N_TRAIN)
    eager = Trainer(config, schedule_config(), data)
    for _ in range(2):
        eager_terms = eager.train_epoch()
    emulated(monkeypatch)
    graphed = Trainer(config, schedule_config(), data)
    for _ in range(2):
        graphed_terms = graphed.train_epoch()
    assert graphed.graph is not None and graphed.graph.captured
    assert graphed.graph.replays == 2 * FULL_STEPS - cuda_graph.WARMUP_STEPS  # every full batch after the warm-up
    assert graphed_terms == eager_terms  # the epoch's mean terms (the replayed steps' copies summed), the LR and beta
    assert_same(weights(graphed.model), weights(eager.model))
    assert_same([v for s in graphed.optimizer.state.values() for v in s.values()], [v for s in eager.optimizer.state.values() for v in s.values()])


def test_replays_read_the_batch_and_schedule_of_each_step(monkeypatch):
    """The replay must not run on the batch, noise, LR or beta it was captured with."""
    emulated(monkeypatch)
    trainer = Trainer(TINY, schedule_config(), tiny_data(N_TRAIN))
    x = trainer.images(trainer.train_x, slice(0, 2 * BATCH))  # (16, 1, 28, 28)
    eps = trainer.noise(2 * BATCH, torch.Generator().manual_seed(0))
    for _ in range(cuda_graph.WARMUP_STEPS + 1):
        trainer.train_step(x[:BATCH], 1.0, eps=eps[:BATCH])
    assert trainer.graph is not None and trainer.graph.captured
    first = trainer.train_step(x[:BATCH], 1.0, eps=eps[:BATCH])
    other = trainer.train_step(x[BATCH:], 0.5, eps=eps[BATCH:])
    assert float(other.recon) != pytest.approx(float(first.recon), rel=1e-3)  # the second batch's images were read
    assert float(other.loss) == pytest.approx(float(other.recon) + 0.5 * float(other.kl), rel=1e-5)  # ... with its beta
    assert float(first.loss) == pytest.approx(float(first.recon) + float(first.kl), rel=1e-5)  # an earlier step's copy holds
    trainer.set_schedule(1, 0)
    assert float(trainer.graph.lr) == pytest.approx(trainer.config.lr_at(1, 0.0))
    assert all(group["lr"] is trainer.graph.lr for group in trainer.optimizer.param_groups)


def test_a_nan_in_a_replayed_step_fails_the_run_at_the_next_check(monkeypatch):
    emulated(monkeypatch)
    trainer = Trainer(TINY, schedule_config(), tiny_data(N_TRAIN))
    poison_from(monkeypatch, cuda_graph.WARMUP_STEPS + 2)  # the second replay on
    with pytest.raises(TrainingFailed, match=r"^loss became nan \(recon [0-9.e+]+, kl [0-9.e+-]+\)$"):
        trainer.train_epoch()
    assert trainer.graph is not None and trainer.graph.replays >= 2


def test_a_capture_that_fails_under_auto_trains_eagerly_and_says_so(monkeypatch, caplog):
    """A torch that cannot capture this step: the batch is retried eagerly and the run goes on, one warning line."""
    data = tiny_data(N_TRAIN)
    eager = Trainer(TINY, schedule_config(), data)
    eager_terms = eager.train_epoch()
    emulated(monkeypatch)

    def refuse(thunk):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(cuda_graph, "capture_eagerly", refuse)
    trainer = Trainer(TINY, schedule_config(), data)
    with caplog.at_level("WARNING", logger="trainer.train"):
        terms = trainer.train_epoch()
    assert trainer.graph is None and trainer.graph_plan.used is False
    assert trainer.graph_plan.reason == "capture failed: RuntimeError: operation not permitted when stream is capturing"
    assert [r.getMessage() for r in caplog.records] == [
        "--cuda-graph auto: training eagerly, the step could not be captured (RuntimeError: operation not permitted when stream is capturing)"]
    assert all(isinstance(group["lr"], float) and group["capturable"] is False for group in trainer.optimizer.param_groups)
    assert terms == eager_terms
    assert_same(weights(trainer.model), weights(eager.model))


def test_a_capture_that_fails_under_on_is_raised(monkeypatch):
    monkeypatch.setattr(cuda_graph, "plan", lambda requested, device, **kw: cuda_graph.GraphPlan("on", True, "emulated"))
    monkeypatch.setattr(cuda_graph, "capture_eagerly", lambda thunk: (_ for _ in ()).throw(RuntimeError("no capture here")))
    with pytest.raises(RuntimeError, match="no capture here"):
        Trainer(TINY, schedule_config(), tiny_data(N_TRAIN)).train_epoch()


def test_a_graphed_run_saves_plain_numbers_and_resumes_bitwise(tmp_path, monkeypatch):
    """The LR tensor is saved as a number; a graphed run stopped after an epoch and resumed (graphed again, or on a
    machine that does not capture) ends with the weights of an uninterrupted one."""
    data = tiny_data(N_TRAIN)
    step_lr = {"lr_schedule": "step", "lr_milestones": (2,)}  # cosine depends on --epochs, which a resumed run extends
    fit(TINY, schedule_config(epochs=3, **step_lr), data, tmp_path / "eager", progress="none")
    with monkeypatch.context() as m:
        emulated(m)
        fit(TINY, schedule_config(epochs=3, **step_lr), data, tmp_path / "straight", progress="none")
        fit(TINY, schedule_config(epochs=1, **step_lr), data, tmp_path / "split", progress="none")
        group = load_run(tmp_path / "split").optimizer_state()["param_groups"][0]
        assert isinstance(group["lr"], float) and group["capturable"] is True
        fit(TINY, schedule_config(epochs=2, **step_lr), data, tmp_path / "split", resume=True, progress="none")
    trainer = fit(TINY, schedule_config(epochs=3, **step_lr), data, tmp_path / "split", resume=True, progress="none")  # not graphed
    assert trainer.graph is None and all(group["capturable"] is False for group in trainer.optimizer.param_groups)
    runs = [load_run(tmp_path / name) for name in ("eager", "straight", "split")]
    assert [r.epoch for r in runs] == [3, 3, 3]
    for run in runs[1:]:
        assert_same(weights(run.model), weights(runs[0].model))
        assert [r["test_loss"] for r in run.history] == [r["test_loss"] for r in runs[0].history]
    assert read_config(tmp_path / "straight")[2]["cuda_graph"]["used"] is True


# ---------------------------------------------------------------- the capture itself (a CUDA machine)


def cuda_config() -> TrainConfig:
    return schedule_config(batch_size=64, lr=1e-3)


@CUDA
def test_on_cuda_a_graphed_epoch_matches_an_eager_one():
    data = tiny_data(1000)  # 15 full batches of 64 and a short one of 40
    trained = {}
    for mode in ("off", "on"):
        trainer = Trainer(ModelConfig(latent_dim=20), cuda_config(), data, "cuda", amp="off", cuda_graph=mode)
        terms = trainer.train_epoch()
        trained[mode] = (trainer, terms)
    graphed = trained["on"][0].graph
    assert graphed is not None and graphed.captured and graphed.replays == 1000 // 64 - cuda_graph.WARMUP_STEPS
    assert trained["on"][1]["train_loss"] == pytest.approx(trained["off"][1]["train_loss"], rel=1e-4)
    for a, b in zip(weights(trained["on"][0].model), weights(trained["off"][0].model)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)  # floating-point reordering only


@CUDA
def test_on_cuda_a_nan_inside_a_replayed_step_is_caught():
    trainer = Trainer(ModelConfig(latent_dim=20), cuda_config(), tiny_data(1000), "cuda", amp="off", cuda_graph="on")
    x = trainer.images(trainer.train_x, slice(0, 64))
    eps = trainer.noise(64, None)
    for _ in range(cuda_graph.WARMUP_STEPS + 2):
        trainer.train_step(x, 1.0, eps=eps)
    trainer.check_finite()
    assert trainer.graph is not None and trainer.graph.replays == 2
    trainer.train_step(x, 1.0, eps=torch.full_like(eps, float("nan")))  # the NaN goes in through the static buffer
    with pytest.raises(TrainingFailed, match="loss became nan"):
        trainer.check_finite()
