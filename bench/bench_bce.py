"""The CPU reconstruction term: torch's binary_cross_entropy_with_logits against models.loss.bce_with_logits.

    .venv/bin/python -m bench.bench_bce               # 2 threads, as the trainer's benchmarks use
    .venv/bin/python -m bench.bench_bce --threads 1

Prints, for a (128, 1, 28, 28) batch of logits and grayscale targets: median milliseconds of the forward and of
forward + backward for each, their largest error against float64 (per pixel and per image sum over 2,000
images), and the MLP 784-400-20 training step (forward, vae_loss, backward, fused Adam) with each, the two
interleaved in one process (medians of the rounds): the machine's load moves both alike.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from bench import timing
from models import CLASSIC_MLP_HIDDEN_DIM, ModelConfig, build_model, to_float_images, vae_loss
from models import loss as loss_module
from trainer.data import load_dataset

BATCH = 128
REPEATS = 200  # timed calls per micro-benchmark
ROUNDS, STEPS_PER_ROUND = 15, 20  # interleaved training-step rounds
ERROR_IMAGES = 2000

Bce = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def torch_bce(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(z, x, reduction="none")


VARIANTS: dict[str, Bce] = {"torch": torch_bce, "project": loss_module.bce_with_logits}


def median_ms(fn: Callable[[], Any], repeats: int = REPEATS) -> float:
    return timing.median_ms(fn, repeats, warmup=repeats // 10)


def micro(bce: Bce, generator: torch.Generator) -> dict[str, float]:
    x = torch.rand((BATCH, 1, 28, 28), generator=generator)
    z = (3 * torch.randn((BATCH, 1, 28, 28), generator=generator)).requires_grad_()

    def forward_backward() -> None:
        z.grad = None
        bce(z, x).flatten(1).sum(1).mean().backward()

    with torch.no_grad():
        forward = median_ms(lambda: bce(z, x))
    return {"forward_ms": round(forward, 4), "forward_backward_ms": round(median_ms(forward_backward), 4)}


def errors(bce: Bce, generator: torch.Generator) -> dict[str, float]:
    z, x = 4 * torch.randn((ERROR_IMAGES, 784), generator=generator), torch.rand((ERROR_IMAGES, 784), generator=generator)
    exact = torch_bce(z.double(), x.double())
    with torch.no_grad():
        got = bce(z, x).double()
    return {"max_pixel_error": float((got - exact).abs().max()), "max_image_error": float((got.sum(1) - exact.sum(1)).abs().max())}


def training_steps(threads: int) -> dict[str, float]:
    """ms per MLP training step with each variant as vae_loss's BCE, interleaved rounds in this process."""
    data = load_dataset("mnist")
    x = to_float_images(data.train_x[:BATCH])  # (B, 1, 28, 28)
    eps = torch.randn((BATCH, 20), generator=torch.Generator().manual_seed(1))
    steps = {}
    for name in VARIANTS:
        torch.manual_seed(0)
        model = build_model(ModelConfig(arch="mlp", latent_dim=20, hidden_dim=CLASSIC_MLP_HIDDEN_DIM))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)

        def step(model=model, optimizer=optimizer) -> None:
            posterior = model.encode(x)
            terms = vae_loss(x, model.decode(posterior.sample(eps=eps)), posterior)
            optimizer.zero_grad(set_to_none=True)
            terms.loss.backward()
            optimizer.step()

        steps[name] = step
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    original = loss_module.bce_with_logits
    try:
        for round_ in range(ROUNDS):
            for name, step in steps.items():
                loss_module.bce_with_logits = VARIANTS[name]
                if round_ == 0:
                    for _ in range(5):
                        step()
                t0 = time.perf_counter()
                for _ in range(STEPS_PER_ROUND):
                    step()
                times[name].append((time.perf_counter() - t0) / STEPS_PER_ROUND * 1e3)
    finally:
        loss_module.bce_with_logits = original
    return {name: round(statistics.median(v), 3) for name, v in times.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    print(f"torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()[0]:.2f}")
    out: dict[str, Any] = {}
    for name, bce in VARIANTS.items():
        out[name] = micro(bce, torch.Generator().manual_seed(0)) | errors(bce, torch.Generator().manual_seed(0))
        row = out[name]
        print(f"  {name:<8} forward {row['forward_ms']:.3f} ms, forward + backward {row['forward_backward_ms']:.3f} ms "
              f"(batch {BATCH} x 784); max error vs float64 {row['max_pixel_error']:.2e} per pixel, {row['max_image_error']:.2e} per image")
    out["mlp_step_ms"] = training_steps(args.threads)
    print(f"  MLP 784-400-20 training step: torch's BCE {out['mlp_step_ms']['torch']:.3f} ms, the project's "
          f"{out['mlp_step_ms']['project']:.3f} ms (medians of {ROUNDS} interleaved rounds of {STEPS_PER_ROUND} steps)")
    return out


if __name__ == "__main__":
    main()
