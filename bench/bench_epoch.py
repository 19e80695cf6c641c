"""Where an epoch goes: training against the per-epoch test pass and its parts, and the run-folder writes.

    .venv/bin/python -m bench.bench_epoch                          # MLP 784-400-20 and conv (latent 16), 4 epochs each
    .venv/bin/python -m bench.bench_epoch --model mlp --epochs 6 --baseline --threads 2

Each epoch is what `fit` does: train_epoch, Trainer.evaluate, the atlas snapshot (record_latents) and the
save of the epoch's set into a temporary run folder. After it, the same test pass is taken apart piece by
piece (not counted in the epoch): the batches, the encoder, the sample's decode, the mode's decode (as the
trainer runs them on the CPU: pieces of EVAL_PIECE_ROWS images; then the same calls on whole chunks), the
loss, MSE + PSNR, SSIM as the trainer computes it and as pytorch-msssim does. --baseline also times one
epoch of the classic per-sample DataLoader loop (bench/bench_train.py) before each epoch, interleaved, for
the ratio. Before each epoch, the floor: as many bare training steps (forward, vae_loss, backward, fused Adam)
of a fresh model on one fixed batch, with nothing around them. Medians over the epochs after the first, on the
bundled MNIST subset (8,000 / 2,000 digits).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from bench import timing
from bench.bench_train import baseline_mlp
from models import CLASSIC_MLP_HIDDEN_DIM, ModelConfig, vae_loss
from trainer import metrics
from trainer.config import TrainConfig
from trainer.data import ImageData, load_dataset
from trainer.distributed import SINGLE
from trainer.train import (
    EVAL_BATCH_SIZE,
    EVAL_PIECE_ROWS,
    EVAL_SEED_OFFSET,
    Checkpoints,
    Trainer,
    decode_in_pieces,
    encode_in_pieces,
    epoch_generator,
    history_row,
    run_info,
    ssim_per_image,
)

BATCH_SIZE = 128
LR = 1e-3
MODELS = {
    "mlp": ModelConfig(arch="mlp", latent_dim=20, hidden_dim=CLASSIC_MLP_HIDDEN_DIM),  # 784-400-20, the classic one
    "conv": ModelConfig(arch="conv", latent_dim=16),  # the default widths
}
EPOCH = "epoch (train + test pass)"
FLOOR = "floor: bare steps on one batch"  # what the model's own arithmetic costs an epoch, with no loop around it
CLASSIC = "classic per-sample loop (train + test)"


@contextlib.contextmanager
def _timer(clock: dict[str, float], name: str) -> Iterator[None]:
    """Add the seconds the block takes to clock[name]."""
    t0 = time.perf_counter()
    yield
    clock[name] = clock.get(name, 0.0) + time.perf_counter() - t0


@torch.no_grad()
def test_pass_parts(trainer: Trainer) -> dict[str, float]:
    """Seconds of each piece of one test pass, as Trainer.evaluate computes it (one process, float32)."""
    trainer.model.eval()
    model, pieces = trainer.model, EVAL_PIECE_ROWS
    g = epoch_generator(trainer.config.seed + EVAL_SEED_OFFSET, 0, trainer.device)
    clock: dict[str, float] = {}
    n = len(trainer.test_x)
    for start in range(0, n, EVAL_BATCH_SIZE):
        b = min(EVAL_BATCH_SIZE, n - start)
        eps = trainer.noise(b, g)
        with _timer(clock, "batches (uint8 to float)"):
            x = trainer.images(trainer.test_x, slice(start, start + b))
        with _timer(clock, "encode"):
            encoded = encode_in_pieces(model, x, pieces)
        with _timer(clock, "decode the sample"):
            x_hat = decode_in_pieces(model, encoded.sample(eps=eps), pieces)
        with _timer(clock, "decode the mode"):
            logits = x_hat if encoded.deterministic else decode_in_pieces(model, encoded.mode(), pieces)
        with _timer(clock, f"the same, {EVAL_BATCH_SIZE} images at once (before)"):
            model.encode(x)
            for _ in range(1 if encoded.deterministic else 2):
                model.decode(encoded.mean)
        with _timer(clock, "loss (vae_loss)"):
            vae_loss(x, x_hat, encoded, recon_loss=trainer.config.recon_loss).loss.item()
        images = torch.sigmoid(logits)
        with _timer(clock, "MSE + PSNR"):
            (metrics.mse_per_image(images, x).sum() + metrics.psnr_per_image(images, x).sum()).item()
        with _timer(clock, "SSIM (trainer: batch as channels)"):
            ssim_per_image(images, x).mean().item()
        with _timer(clock, "SSIM (pytorch-msssim, before)"):
            metrics.ssim(images, x).item()
    return clock


def bare_steps(model_config: ModelConfig, data: ImageData, steps: int) -> float:
    """Seconds of `steps` bare training steps of a fresh model on one fixed batch: forward, vae_loss, backward and
    fused Adam, nothing else (no batching, noise generator, loss bookkeeping or progress): the floor under a training
    pass of that many steps on this machine, whatever the loop around them."""
    trainer = Trainer(model_config, TrainConfig(batch_size=BATCH_SIZE, lr=LR), data)
    model, optimizer = trainer.model, trainer.optimizer
    x = data.train_x[:BATCH_SIZE].float() / 255.0  # (B, C, H, W)
    model.train()

    def step() -> None:
        x_hat, posterior, _ = model(x)
        loss = vae_loss(x, x_hat, posterior).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up: first-call allocations
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - t0


def matmul_gflops(repeats: int = 200) -> dict[str, float]:
    """The MLP's largest matmul, (128 x 784) @ (784 x 400) as its first layer computes it: median ms and GFLOP/s, the
    rate this machine does the model's arithmetic at (how close the floor is to the hardware)."""
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.rand((BATCH_SIZE, 784), generator=g), torch.randn((400, 784), generator=g), torch.zeros(400)
    ms = timing.median_ms(lambda: torch.addmm(b, x, w.t()), repeats, warmup=repeats // 10)
    return {"ms": ms, "gflops": 2 * BATCH_SIZE * 784 * 400 / (ms / 1e3) / 1e9}


def run_model(name: str, data: ImageData, epochs: int, baseline: bool) -> dict[str, Any]:
    """`epochs` epochs of one model: per-epoch seconds of each stage, the test pass's parts, the final test loss."""
    model_config = MODELS[name]
    train_config = TrainConfig(batch_size=BATCH_SIZE, lr=LR, epochs=epochs)
    trainer = Trainer(model_config, train_config, data)
    stages: dict[str, list[float]] = {}
    parts: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-epoch-") as tmp:
        checkpoints = Checkpoints(Path(tmp) / name, SINGLE)
        atlas = torch.from_numpy(trainer.atlas_idx)
        info = run_info(data, trainer.device, trainer.setup_info())
        checkpoints.writer.create(model_config, train_config, info, trainer.test_x[atlas].numpy(), data.test_y[atlas].numpy())
        for _ in range(epochs):
            if baseline and name == "mlp":
                stages.setdefault(CLASSIC, []).append(baseline_mlp(data, 1)["s_per_epoch"])
            clock: dict[str, float] = {}
            clock[FLOOR] = bare_steps(model_config, data, -(-len(trainer.train_x) // BATCH_SIZE))
            with _timer(clock, "train"):
                terms = trainer.train_epoch()
            trainer.epoch += 1
            with _timer(clock, "test pass (evaluate)"):
                result = trainer.evaluate(terms["beta"])
            row = history_row(trainer.epoch, terms, result, clock["train"] + clock["test pass (evaluate)"], clock["train"], len(trainer.train_x))
            trainer.history.append(row)
            with _timer(clock, "atlas snapshot"):
                trainer.record_latents(result)
            with _timer(clock, "save the epoch (writes)"):
                checkpoints.save_epoch(trainer)
            clock[EPOCH] = clock["train"] + clock["test pass (evaluate)"]
            clock["whole epoch (with atlas, writes)"] = sum(v for k, v in clock.items() if k not in (EPOCH, FLOOR))
            for k, v in clock.items():
                stages.setdefault(k, []).append(v)
            for k, v in test_pass_parts(trainer).items():
                parts.setdefault(k, []).append(v)
    return {"model": name, "parameters": trainer.model.num_parameters(), "test_loss": trainer.history[-1]["test_loss"],
            "stages": {k: _median(v) for k, v in stages.items()}, "test_pass_parts": {k: _median(v) for k, v in parts.items()}}


_median = timing.median_after_first


def report(row: dict[str, Any]) -> None:
    stages, parts = row["stages"], row["test_pass_parts"]
    epoch = stages[EPOCH]
    print(f"\n{row['model']} ({row['parameters']:,} parameters), batch {BATCH_SIZE}, Adam {LR}: final test loss {row['test_loss']:.2f}")
    for k, v in stages.items():
        print(f"  {k:<40} {v:8.3f} s  {100 * v / epoch:5.1f} % of train + test pass")
    if CLASSIC in stages:
        print(f"  ratio: this trainer's epoch / the classic loop's = {epoch / stages[CLASSIC]:.2f}; "
              f"the floor (bare steps + this test pass) / the classic loop's = {(stages[FLOOR] + stages['test pass (evaluate)']) / stages[CLASSIC]:.2f}")
    print(f"  training pass / its floor = {stages['train'] / stages[FLOOR]:.2f}")
    print("  the test pass, piece by piece:")
    for k, v in parts.items():
        print(f"    {k:<38} {v:8.3f} s")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=(*MODELS, "both"), default="both")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per model (medians over all but the first)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, e.g. OMP_NUM_THREADS)")
    parser.add_argument("--baseline", action="store_true", help="interleave one epoch of the classic per-sample loop (MLP only)")
    parser.add_argument("--keep-denormals", action="store_true", help="do not flush denormals to zero (the trainer flushes them)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.keep_denormals:
        torch.set_flush_denormal(True)
    data = load_dataset("mnist")
    load = os.getloadavg()
    print(f"data: {data.source['note']}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"denormals {'kept' if args.keep_denormals else 'flushed'}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    rows = [run_model(m, data, args.epochs, args.baseline) for m in (MODELS if args.model == "both" else [args.model])]
    for row in rows:
        report(row)
    matmul = matmul_gflops()
    print(f"\nthe MLP's largest matmul ({BATCH_SIZE} x 784 @ 784 x 400): {matmul['ms']:.3f} ms, {matmul['gflops']:.0f} GFLOP/s")
    out = {"rows": rows, "matmul": matmul, "load_before": load, "load_after": os.getloadavg()}
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in out['load_after'])}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
