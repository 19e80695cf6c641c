"""The GPU table: training images/s of the MLP and conv VAEs by batch size, precision and how the step runs.

    .venv/bin/python -m bench.bench_gpu                      # on a CUDA machine: the whole table
    .venv/bin/python -m bench.bench_gpu --quick              # fewer steps: checks it runs
    .venv/bin/python -m bench.bench_gpu --models conv --batches 64 --modes eager,graph
    .venv/bin/python -m bench.bench_gpu --dry-run            # any machine: the eager steps on the CPU, nothing timed
    .venv/bin/python -m bench.bench_gpu --fit-epochs 4       # also the issue's goal: whole trainer epochs (fit)

Models: MLP 784-400-20 and the conv VAE (default widths, latent 20), on the bundled MNIST subset held on the
GPU as uint8. Each step draws a random batch and its noise on the device, then runs forward, BCE + KL
(`vae_loss`), backward and Adam (lr 1e-3) in one of three ways:
- trainer: Trainer.train_step, the project's step as it is (--cuda-graph auto: on a GPU, full batches replay a
  captured graph after a few eager warm-up steps; no host synchronisation: a non-finite loss is flagged on the device
  and read every NONFINITE_CHECK_STEPS steps);
- trainer-eager: the same with --cuda-graph off;
- eager: the same step without any host synchronisation (fused Adam);
- graph: the bare step (forward, loss, backward, Adam) through the trainer's own cuda_graph.GraphedStep: 3 eager
  warm-up steps, then captured once in a CUDA graph and replayed, the batch and noise copied into static input
  buffers (fused Adam, capturable, its LR a device tensor);
- compile: the forward and loss through torch.compile (default mode); its compile time is reported apart.
amp off is float32; bf16 autocasts the forward (the loss in float32, as the trainer does). Images/s are
timed over a fixed number of steps after warm-up steps, the GPU synchronised at both ends. For each model the
graph's weights after a few steps are compared with eager's from the same start (floating-point reordering
only).

--fit-epochs N measures what the issue's goals name: `fit` of the conv VAE (latent 20) on the MNIST subset for N
epochs at each batch size, --amp off and auto, --cuda-graph auto; training images/s is the median over the epochs
after the first of history.jsonl's images_per_s (training images / the epoch's training seconds).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from bench import timing
from models import CLASSIC_MLP_HIDDEN_DIM, DiagonalGaussian, LossTerms, ModelConfig, build_model, to_float_images, vae_loss
from trainer import compat, cuda_graph
from trainer.config import TrainConfig
from trainer.data import ImageData, load_dataset

MODELS = {
    "mlp": ModelConfig(arch="mlp", latent_dim=20, hidden_dim=CLASSIC_MLP_HIDDEN_DIM),  # 784-400-20
    "conv": ModelConfig(arch="conv", latent_dim=20),  # the default widths, the goals
}
BATCHES = (64, 512, 4096)
AMPS = {"off": None, "bf16": torch.bfloat16}
MODES = ("trainer", "trainer-eager", "eager", "graph", "compile")
FIT_AMPS = ("off", "auto")
LR = 1e-3
WARMUP_STEPS = 10  # before timing: cuDNN autotuning, allocator growth, graph warm-up
TIMED_STEPS = {64: 300, 512: 150, 4096: 60}  # per batch size; --quick takes a fifth
QUICK_DIVISOR = 5
EQUIVALENCE_STEPS = cuda_graph.WARMUP_STEPS + 5  # graph against eager from the same start, same batches: 5 replays
DRY_RUN_BATCH = 8
NO_CUDA = ("bench_gpu: no CUDA GPU here (torch {version}, torch.cuda.is_available() is False): nothing to measure; "
           "run it on a GPU machine (--dry-run checks the script on the CPU)")


@dataclass
class Setup:
    """One model on one device, its data and how its forward runs."""

    name: str
    config: ModelConfig
    device: torch.device
    amp: torch.dtype | None
    images: torch.Tensor  # (N, C, H, W) uint8 on the device

    @property
    def channels_last(self) -> bool:
        return self.device.type == "cuda" and self.config.arch != "mlp"  # as the trainer lays conv data out on CUDA

    def model(self) -> torch.nn.Module:
        torch.manual_seed(0)
        model = build_model(self.config).to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def batch(self, b: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A random batch (b, C, H, W) float in [0, 1] and its noise (b, D), drawn on the device."""
        idx = torch.randint(0, len(self.images), (b,), generator=generator, device=self.device)
        x = to_float_images(self.images[idx])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, torch.randn((b, self.config.latent_dim), generator=generator, device=self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        # no cast cache: a captured graph must not keep casts made outside it (the same in every mode, to compare alike)
        return contextlib.nullcontext() if self.amp is None else compat.autocast(self.device.type, self.amp, cache_enabled=False)


def terms_of(setup: Setup, model: torch.nn.Module, x: torch.Tensor, eps: torch.Tensor, beta: float | torch.Tensor = 1.0) -> LossTerms:
    """The loss terms of one batch: forward under autocast when asked, the loss in float32."""
    with setup.autocast():
        posterior = model.encode(x)
        logits = model.decode(posterior.sample(eps=eps))
    return vae_loss(x, logits, DiagonalGaussian(posterior.mean.float(), posterior.logvar.float()), beta=beta)


def loss_of(setup: Setup, model: torch.nn.Module, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The training objective of one batch (terms_of's loss)."""
    return terms_of(setup, model, x, eps).loss


def eager_step(setup: Setup, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               loss: Callable[..., torch.Tensor] | None = None) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """step(x, eps): zero the gradients, the loss, backward, Adam; nothing waits for the GPU."""
    loss = loss or (lambda x, eps: loss_of(setup, model, x, eps))

    def step(x: torch.Tensor, eps: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss(x, eps).backward()
        optimizer.step()

    return step


def graph_step(setup: Setup, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """step(x, eps): the bare step through cuda_graph.GraphedStep, as the trainer captures its own (the first
    cuda_graph.WARMUP_STEPS calls are eager, the next captures, the rest replay)."""

    def bare(x: torch.Tensor, eps: torch.Tensor | None, beta: torch.Tensor) -> LossTerms:
        optimizer.zero_grad(set_to_none=True)
        terms = terms_of(setup, model, x, eps, beta)
        terms.loss.backward()
        optimizer.step()
        return terms

    graphed = cuda_graph.GraphedStep(bare, optimizer, setup.device)
    return lambda x, eps: graphed(x, eps, 1.0)


def trainer_step(setup: Setup, b: int, cuda_graph: str = "auto") -> tuple[Callable[[torch.Tensor, torch.Tensor], None], torch.nn.Module]:
    """step(x, eps) through the project's Trainer.train_step (full batches graphed on CUDA unless cuda_graph='off')."""
    from trainer.train import Trainer

    one, label = setup.images[:1].cpu(), torch.zeros(1, dtype=torch.long)  # the trainer's own data sets are not used here
    data = ImageData(one, label, one, label, [str(i) for i in range(10)], {"name": "bench"})
    trainer = Trainer(setup.config, TrainConfig(batch_size=b, lr=LR, atlas_size=1), data, setup.device,
                      amp="off" if setup.amp is None else "bf16", cuda_graph=cuda_graph)
    return (lambda x, eps: trainer.train_step(x, 1.0, eps=eps)), trainer.model


def make_step(setup: Setup, mode: str, b: int, generator: torch.Generator) -> tuple[Callable[[torch.Tensor, torch.Tensor], None], torch.nn.Module, float]:
    """The step of `mode`, its model, and the seconds it took to make (compile: its first calls)."""
    t0 = time.perf_counter()
    if mode in ("trainer", "trainer-eager"):
        step, model = trainer_step(setup, b, "auto" if mode == "trainer" else "off")
        return step, model, 0.0
    model = setup.model()
    cuda = setup.device.type == "cuda"
    optimizer = compat.adam(model.parameters(), LR, fused=cuda, capturable=mode == "graph")
    if mode == "graph":
        step = graph_step(setup, model, optimizer)
    elif mode == "compile":
        compiled = torch.compile(lambda x, eps: loss_of(setup, model, x, eps))
        step = eager_step(setup, model, optimizer, compiled)
        for _ in range(2):  # compile here, not in the timed steps
            step(*setup.batch(b, generator))
        _sync(setup.device)
    else:
        step = eager_step(setup, model, optimizer)
    return step, model, time.perf_counter() - t0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(setup: Setup, step: Callable[[torch.Tensor, torch.Tensor], None], b: int, steps: int, warmup: int,
               generator: torch.Generator) -> float:
    """Seconds per step over `steps` steps after `warmup` ones (the batches drawn inside the timing, as training does)."""
    for _ in range(warmup):
        step(*setup.batch(b, generator))
    _sync(setup.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(*setup.batch(b, generator))
    _sync(setup.device)
    return (time.perf_counter() - t0) / max(1, steps)


def graph_equivalence(setup: Setup, b: int) -> float:
    """Max |weight difference| between eager and graphed steps (GraphedStep: its warm-up, then replays) from the same
    start on the same batches."""
    weights = []
    for mode in ("eager", "graph"):
        g = torch.Generator(device=setup.device).manual_seed(1)
        model = setup.model()
        optimizer = compat.adam(model.parameters(), LR, fused=True, capturable=True)  # the same Adam for both
        step = graph_step(setup, model, optimizer) if mode == "graph" else eager_step(setup, model, optimizer)
        for _ in range(EQUIVALENCE_STEPS):
            step(*setup.batch(b, g))
        _sync(setup.device)
        weights.append([p.detach().float().clone() for p in model.parameters()])
    return max(float((a - c).abs().max()) for a, c in zip(*weights))


def run(models: list[str], batches: list[int], amps: list[str], modes: list[str], device: torch.device, quick: bool,
        dry_run: bool) -> list[dict[str, Any]]:
    data = load_dataset("mnist")
    images = data.train_x.to(device)
    rows = []
    for name in models:
        for amp in amps:
            setup = Setup(name, MODELS[name], device, AMPS[amp], images)
            for b in batches:
                for mode in modes:
                    generator = torch.Generator(device=device).manual_seed(0)
                    steps = 2 if dry_run else TIMED_STEPS.get(b, 100) // (QUICK_DIVISOR if quick else 1)
                    try:
                        step, _, made_s = make_step(setup, mode, b, generator)
                        seconds = time_steps(setup, step, b, steps, 1 if dry_run else WARMUP_STEPS, generator)
                    except (RuntimeError, ValueError) as e:  # e.g. a compile or capture that fails on this torch
                        rows.append({"model": name, "batch": b, "amp": amp, "mode": mode, "error": str(e).splitlines()[0][:160]})
                        print(f"  {name:<5} batch {b:>5}  amp {amp:<4} {mode:<13} failed: {rows[-1]['error']}", flush=True)
                        continue
                    rows.append({"model": name, "batch": b, "amp": amp, "mode": mode, "ms_per_step": round(seconds * 1e3, 3),
                                 "images_per_s": round(b / seconds), "setup_s": round(made_s, 1)})
                    extra = f"  (compiled in {made_s:.1f} s)" if mode == "compile" else ""
                    print(f"  {name:<5} batch {b:>5}  amp {amp:<4} {mode:<13} {seconds * 1e3:9.3f} ms/step  {b / seconds:12,.0f} images/s{extra}", flush=True)
    return rows


def dry_run_modes(modes: list[str]) -> list[str]:
    """The modes that can run on the CPU (graph capture needs CUDA; compile is left to a GPU run: minutes on a CPU)."""
    return [m for m in modes if m in ("trainer", "trainer-eager", "eager")]


def fit_epochs(batches: list[int], epochs: int, device: torch.device, limit: int | None = None) -> list[dict[str, Any]]:
    """The goals' figure: median training images/s over epochs 2..N of `fit` (conv VAE latent 20, MNIST subset;
    `limit`: its first images only, for a dry run)."""
    import tempfile
    from pathlib import Path

    from trainer.train import fit

    data, rows = load_dataset("mnist"), []
    if limit is not None:
        data = data.head(limit, limit)
    for b in batches:
        for amp in FIT_AMPS:
            with tempfile.TemporaryDirectory() as tmp:
                trainer = fit(MODELS["conv"], TrainConfig(epochs=epochs, batch_size=b, lr=LR, seed=0), data, Path(tmp) / "run", device,
                              progress="none", amp=amp)
                rate = timing.median_after_first([row["images_per_s"] for row in trainer.history])
            picked = trainer.amp_auto["picked"] if trainer.amp_auto else ("float32" if amp == "off" else amp)
            rows.append({"batch": b, "amp": amp, "precision": picked, "cuda_graph": trainer.graph_plan.used,
                         "images_per_s": round(rate), "epochs": epochs, "test_loss": round(trainer.history[-1]["test_loss"], 3)})
            print(f"  fit conv  batch {b:>5}  amp {amp:<4} ({picked}, graph {'on' if trainer.graph_plan.used else 'off'}) "
                  f"{rows[-1]['images_per_s']:12,} training images/s (median of epochs 2-{epochs}), test loss {rows[-1]['test_loss']}", flush=True)
    return rows


def _choices(text: str, allowed: tuple[str, ...] | dict[str, Any], what: str) -> list[str]:
    picked = [t for t in text.split(",") if t]
    bad = [t for t in picked if t not in allowed]
    if bad:
        raise SystemExit(f"bench_gpu: unknown {what} {', '.join(bad)}: choose from {', '.join(allowed)}")
    return picked


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--amp", default=",".join(AMPS), help="off, bf16")
    parser.add_argument("--modes", default=",".join(MODES), help=", ".join(MODES))
    parser.add_argument("--quick", action="store_true", help="a fifth of the timed steps")
    parser.add_argument("--fit-epochs", type=int, default=0, help="also fit the conv VAE this many epochs per batch size and --amp off/auto (0: skip)")
    parser.add_argument("--dry-run", action="store_true", help=f"on the CPU, batch {DRY_RUN_BATCH}, 2 steps of the eager modes: checks the script")
    args = parser.parse_args(argv)
    models, amps = _choices(args.models, MODELS, "model"), _choices(args.amp, AMPS, "amp")
    modes = _choices(args.modes, MODES, "mode")
    batches = [int(b) for b in args.batches.split(",") if b]
    if args.dry_run:
        device, batches, modes = torch.device("cpu"), [DRY_RUN_BATCH], dry_run_modes(modes)
        print(f"dry run on the CPU (torch {torch.__version__}): batch {DRY_RUN_BATCH}, modes {', '.join(modes)}; nothing here is a measurement")
    else:
        if not torch.cuda.is_available():
            raise SystemExit(NO_CUDA.format(version=torch.__version__))
        device = torch.device("cuda")
        props = torch.cuda.get_device_properties(device)
        print(f"GPU: {props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, CUDA {torch.version.cuda}, "
              f"cuDNN {torch.backends.cudnn.version()}; native bf16: {compat.cuda_bf16_native(device)}; load average {os.getloadavg()[0]:.2f}")
    rows = run(models, batches, amps, modes, device, args.quick, args.dry_run)
    out: dict[str, Any] = {"device": "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name(device), "torch": torch.__version__, "rows": rows}
    if not args.dry_run and "graph" in modes:
        out["graph_vs_eager_max_abs_weight_diff"] = {}
        for name in models:
            diff = graph_equivalence(Setup(name, MODELS[name], device, None, load_dataset("mnist").train_x.to(device)), batches[0])
            out["graph_vs_eager_max_abs_weight_diff"][name] = diff
            print(f"  {name}: graph against eager after {EQUIVALENCE_STEPS} steps of batch {batches[0]}: max |weight difference| {diff:.3g}")
    if args.fit_epochs > 0:
        dry = {"batches": [DRY_RUN_BATCH], "epochs": 2, "limit": 4 * DRY_RUN_BATCH}
        out["fit"] = fit_epochs(**dry, device=device) if args.dry_run else fit_epochs(batches, args.fit_epochs, device)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
