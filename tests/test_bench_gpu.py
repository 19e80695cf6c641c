"""bench/bench_gpu.py runs where it can: its dry run on the CPU, one line without CUDA, the graph checks on a GPU."""
from __future__ import annotations

import pytest
import torch

from bench import bench_gpu

CUDA = torch.cuda.is_available()


def test_dry_run_takes_eager_steps_on_the_cpu():
    out = bench_gpu.main(["--dry-run", "--models", "mlp", "--amp", "off", "--batches", "512"])
    assert out["device"] == "cpu (dry run)"
    assert [(r["mode"], r["batch"]) for r in out["rows"]] == [(mode, bench_gpu.DRY_RUN_BATCH) for mode in ("trainer", "trainer-eager", "eager")]
    assert all(r["images_per_s"] > 0 for r in out["rows"])


def test_eager_step_trains():
    setup = bench_gpu.Setup("mlp", bench_gpu.MODELS["mlp"], torch.device("cpu"), None, torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8))
    g = torch.Generator().manual_seed(0)
    x, eps = setup.batch(16, g)
    step, model, _ = bench_gpu.make_step(setup, "eager", 16, g)
    before = bench_gpu.loss_of(setup, model, x, eps).item()
    for _ in range(5):
        step(x, eps)
    assert bench_gpu.loss_of(setup, model, x, eps).item() < before


def test_without_cuda_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as info:
        bench_gpu.main([])
    message = str(info.value.code)
    assert "\n" not in message and "no CUDA GPU" in message and "--dry-run" in message


def test_unknown_mode_is_one_line():
    with pytest.raises(SystemExit, match="unknown mode nope"):
        bench_gpu.main(["--dry-run", "--modes", "eager,nope"])


def test_the_graph_mode_is_the_trainers_graphed_step():
    """On the CPU GraphedStep's stand-in capture replays eagerly: the graph mode's weights equal eager's bitwise."""
    setup = bench_gpu.Setup("mlp", bench_gpu.MODELS["mlp"], torch.device("cpu"), None, torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8))
    assert bench_gpu.graph_equivalence(setup, 8) == 0.0


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("model", list(bench_gpu.MODELS))
def test_graph_replay_follows_eager(model):
    """The captured step replayed equals the eager step from the same start, up to floating-point reordering."""
    setup = bench_gpu.Setup(model, bench_gpu.MODELS[model], torch.device("cuda"), None,
                            torch.randint(0, 256, (512, 1, 28, 28), dtype=torch.uint8, device="cuda"))
    assert bench_gpu.graph_equivalence(setup, 64) < 1e-4


def test_dry_run_fits_the_goal_model_and_reports_its_epochs():
    out = bench_gpu.main(["--dry-run", "--models", "mlp", "--amp", "off", "--modes", "eager", "--fit-epochs", "4"])
    assert [(r["batch"], r["amp"], r["precision"], r["cuda_graph"], r["epochs"]) for r in out["fit"]] == [
        (bench_gpu.DRY_RUN_BATCH, "off", "float32", False, 2), (bench_gpu.DRY_RUN_BATCH, "auto", "float32", False, 2)]
    assert all(r["images_per_s"] > 0 and r["test_loss"] > 0 for r in out["fit"])
