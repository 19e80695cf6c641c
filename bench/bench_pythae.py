"""This trainer against pythae 0.1.2, side by side: the same layers and initial weights, data, batch and optimiser.

    pip install --target /tmp/pythae-site -r bench/requirements-pythae.txt     # once; never into the project's venv
    PYTHONPATH=/tmp/pythae-site .venv/bin/python -m bench.bench_pythae --threads 2
    PYTHONPATH=/tmp/pythae-site .venv/bin/python -m bench.bench_pythae --models mlp --epochs 4 --runs 3

pythae is an optional benchmark requirement, not a dependency: without it the script says so in one line.
Both train the project's own modules (pythae's encoder and decoder wrap the model built from the same seed, so
layers and initial weights are the same) on the bundled MNIST subset (8,000 training / 2,000 test digits):
BCE + KL, Adam 1e-3, batch 128, `epochs` epochs, CPU, denormals flushed for both. Each run is one `fit` (this
project: a run folder saved every epoch, the test pass with PSNR, SSIM and the atlas) or one pythae
`BaseTrainer.train()` (its eval loss every epoch, a copy of the best model, the final model saved); the two
alternate run by run. Reported, medians over runs of the medians over epochs after the first: training alone,
training plus the per-epoch test pass, and each run's wall time (set-up, every epoch, saving).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import CLASSIC_MLP_HIDDEN_DIM, ModelConfig, build_model
from trainer.config import TrainConfig
from trainer.data import ImageData, load_dataset
from trainer.train import fit

MODELS = {
    "mlp": ModelConfig(arch="mlp", latent_dim=20, hidden_dim=CLASSIC_MLP_HIDDEN_DIM),  # 784-400-20
    "conv": ModelConfig(arch="conv", latent_dim=16),  # the default widths
}
BATCH_SIZE = 128
LR = 1e-3
SEED = 0
NOT_INSTALLED = ("bench_pythae: pythae is not importable, nothing measured: install it apart from the project "
                 "(pip install --target DIR -r bench/requirements-pythae.txt) and run with PYTHONPATH=DIR")


def pythae_available() -> bool:
    try:
        import pythae  # noqa: F401
    except ImportError:
        return False
    return True


def ours(name: str, data: ImageData, epochs: int, tmp: Path) -> dict[str, Any]:
    """One `fit` of this project's trainer: per-epoch training and training + test pass seconds, wall, test loss."""
    t0 = time.perf_counter()
    trainer = fit(MODELS[name], TrainConfig(batch_size=BATCH_SIZE, lr=LR, epochs=epochs, seed=SEED), data, tmp / f"ours-{name}-{time.time_ns()}",
                  progress="none")
    wall = time.perf_counter() - t0
    rows = trainer.history
    return {"train": [r["train_seconds"] for r in rows], "epoch": [r["seconds"] for r in rows], "wall": wall, "test_loss": rows[-1]["test_loss"]}


def theirs(name: str, data: ImageData, epochs: int, tmp: Path) -> dict[str, Any]:
    """One pythae BaseTrainer.train() on the same modules and initial weights: the same figures."""
    from pythae.data.datasets import BaseDataset
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    torch.manual_seed(SEED)  # as Trainer does before build_model: the same initial weights
    vae = build_model(MODELS[name])

    class Encoder(BaseEncoder):
        def __init__(self, model: nn.Module):
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> ModelOutput:
            posterior = self.model.encode(x)
            return ModelOutput(embedding=posterior.mean, log_covariance=posterior.logvar)

    class Decoder(BaseDecoder):
        def __init__(self, model: nn.Module):
            super().__init__()
            self.model = model

        def forward(self, z: torch.Tensor) -> ModelOutput:
            return ModelOutput(reconstruction=torch.sigmoid(self.model.decode(z)))  # pythae's BCE takes probabilities

    config = VAEConfig(input_dim=tuple(data.train_x.shape[1:]), latent_dim=MODELS[name].latent_dim, reconstruction_loss="bce")
    model = VAE(config, encoder=Encoder(vae), decoder=Decoder(vae))
    train = BaseDataset(data.train_x.float() / 255.0, data.train_y)  # pythae's own dataset: one item per __getitem__
    test = BaseDataset(data.test_x.float() / 255.0, data.test_y)
    t0 = time.perf_counter()
    training = BaseTrainerConfig(output_dir=str(tmp / f"pythae-{name}-{time.time_ns()}"), per_device_train_batch_size=BATCH_SIZE,
                                 per_device_eval_batch_size=BATCH_SIZE, num_epochs=epochs, learning_rate=LR, optimizer_cls="Adam", no_cuda=True)
    trainer = BaseTrainer(model, train, test, training_config=training)
    times: dict[str, list[float]] = {"train": [], "eval": []}
    losses: list[float] = []
    for stage, method in (("train", trainer.train_step), ("eval", trainer.eval_step)):
        def timed(epoch: int, _method: Any = method, _stage: str = stage) -> float:
            t = time.perf_counter()
            out = _method(epoch)
            times[_stage].append(time.perf_counter() - t)
            if _stage == "eval":
                losses.append(out)
            return out
        setattr(trainer, f"{stage}_step", timed)
    trainer.train()
    wall = time.perf_counter() - t0
    return {"train": times["train"], "epoch": [a + b for a, b in zip(times["train"], times["eval"])], "wall": wall, "test_loss": losses[-1]}


def _per_run(seconds: list[float]) -> float:
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (medians over all but the first)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each trainer, alternating")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both (default 2)")
    args = parser.parse_args(argv)
    if not pythae_available():
        print(NOT_INSTALLED)
        return None
    from importlib.metadata import version as installed_version

    torch.set_flush_denormal(True)
    torch.set_num_threads(args.threads)
    logging.getLogger("pythae").setLevel(logging.WARNING)
    for name in ("pythae.trainers.base_trainer.base_trainer", "pythae.trainers.training_callbacks"):
        logging.getLogger(name).setLevel(logging.WARNING)
    data = load_dataset("mnist")
    load = os.getloadavg()
    version = installed_version("pythae")
    print(f"pythae {version} against this trainer: batch {BATCH_SIZE}, Adam {LR}, {args.epochs} epochs x {args.runs} runs each, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    out: dict[str, Any] = {"pythae": version, "threads": torch.get_num_threads(), "load_before": load, "models": {}}
    with tempfile.TemporaryDirectory(prefix="bench-pythae-") as tmp_dir:
        tmp = Path(tmp_dir)
        for name in [m for m in args.models.split(",") if m]:
            runs: dict[str, list[dict[str, Any]]] = {"ours": [], "pythae": []}
            for r in range(args.runs):
                for who in (("ours", "pythae") if r % 2 == 0 else ("pythae", "ours")):
                    runs[who].append((ours if who == "ours" else theirs)(name, data, args.epochs, tmp))
                    print(f"  {name} run {r + 1} {who:<6} train {_per_run(runs[who][-1]['train']):.3f} s/epoch, with test pass "
                          f"{_per_run(runs[who][-1]['epoch']):.3f}, wall {runs[who][-1]['wall']:.1f} s, test loss {runs[who][-1]['test_loss']:.2f}", flush=True)
            med = {who: {k: statistics.median(_per_run(run[k]) if k != "wall" else run[k] for run in rs) for k in ("train", "epoch", "wall")}
                   for who, rs in runs.items()}
            ratio = {k: med["ours"][k] / med["pythae"][k] for k in ("train", "epoch", "wall")}
            out["models"][name] = {"median": med, "ratio_ours_to_pythae": ratio, "runs": runs}
            print(f"{name}: this trainer / pythae = {ratio['train']:.2f} (training), {ratio['epoch']:.2f} (with the test pass), "
                  f"{ratio['wall']:.2f} (run wall time); medians ours {med['ours']['epoch']:.3f} s/epoch, pythae {med['pythae']['epoch']:.3f} s/epoch")
    out["load_after"] = os.getloadavg()
    print(f"load average after: {' '.join(f'{v:.2f}' for v in out['load_after'])}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
