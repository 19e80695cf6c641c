"""What --compile costs and buys: the trainer's epochs with and without torch.compile, on this machine's device.

    .venv/bin/python -m bench.bench_compile                  # MLP 784-400-20 and conv (latent 16), 4 epochs each
    .venv/bin/python -m bench.bench_compile --models mlp --epochs 6

For each model, a Trainer (batch 128, Adam 1e-3, seed 0, the bundled MNIST subset) trains `--epochs` epochs eagerly,
then another from the same seed with compile_model=True (the CLI's --compile). Prints every epoch's seconds (the
first compiled epoch includes compiling), the median of the epochs after the first, the wall time from the
Trainer's construction to the last epoch's test pass, and the final test loss (the same model, so the same to
rounding). Compiling starts cold: inductor's cache goes to a fresh temporary folder (TORCHINDUCTOR_CACHE_DIR) unless
--warm-cache keeps the user's, as a second run of the same model would find it.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

import torch

from bench import timing
from models import CLASSIC_MLP_HIDDEN_DIM, ModelConfig
from trainer.config import TrainConfig
from trainer.data import load_dataset
from trainer.train import Trainer

MODELS = {
    "mlp": ModelConfig(arch="mlp", latent_dim=20, hidden_dim=CLASSIC_MLP_HIDDEN_DIM),
    "conv": ModelConfig(arch="conv", latent_dim=16),
}


def measure(name: str, compiled: bool, epochs: int, device: torch.device) -> dict[str, Any]:
    data = load_dataset("mnist")
    t0 = time.perf_counter()
    trainer = Trainer(MODELS[name], TrainConfig(batch_size=128, lr=1e-3, seed=0, epochs=epochs), data, device, compile_model=compiled)
    seconds = []
    for _ in range(epochs):
        t = time.perf_counter()
        trainer.train_epoch()
        trainer.epoch += 1
        seconds.append(time.perf_counter() - t)
    loss = trainer.evaluate(1.0).loss
    return {"model": name, "compile": compiled, "epoch_s": [round(s, 3) for s in seconds],
            "median_after_first_s": round(timing.median_after_first(seconds), 3), "wall_s": round(time.perf_counter() - t0, 1),
            "test_loss": round(loss, 3)}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warm-cache", action="store_true", help="keep inductor's usual cache (compiled kernels of earlier runs)")
    args = parser.parse_args(argv)
    if not args.warm_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-compile-")
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
        torch.set_flush_denormal(True)
    print(f"torch {torch.__version__} on {device}, load average {os.getloadavg()[0]:.2f}")
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        for compiled in (False, True):
            row = measure(name, compiled, args.epochs, device)
            rows.append(row)
            print(f"  {name:<5} {'compile' if compiled else 'eager  '} epochs {row['epoch_s']} s; median after the first "
                  f"{row['median_after_first_s']} s; wall {row['wall_s']} s; test loss {row['test_loss']}", flush=True)
    print(f"load average after {os.getloadavg()[0]:.2f}")
    return rows


if __name__ == "__main__":
    main()
