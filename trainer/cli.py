"""`python -m trainer`: train a model into a run folder. User mistakes exit non-zero with one line.

Under `torchrun --nproc-per-node N -m trainer ...` every process runs this; rank 0 decides the run
folder and prints, and the others follow it (see trainer/distributed.py).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from models import ARCHS, CLASSIC_MLP_HIDDEN_DIM, DEFAULT_HIDDEN_DIM, DEFAULT_WIDTHS, IMAGE_SIZES, KINDS, RECON_LOSSES, ModelConfig

from . import distributed
from .config import LR_SCHEDULES, WEIGHT_DTYPES, TrainConfig
from .data import DataError, ImageData, default_channels, default_image_size, load_dataset
from .distributed import AMP_CHOICES, DistContext
from .runs import MANIFEST_FILE, RunError, read_config, validate_run_name
from .train import ProcessLost, StopFlag, TrainingFailed, fit, one_line, pick_device

DEFAULT_CHECKPOINTS_DIR = "checkpoints"
PROG = "python -m trainer"
# Model and data options that a resumed run takes from its config.json; they cannot change mid-run.
FIXED_ON_RESUME = ("model", "kind", "latent_dim", "dataset", "image_size", "channels", "widths", "hidden_dim")


class UserError(Exception):
    """Exits with status 2 and one line."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise UserError(f"{message} (see {PROG} --help)")


def int_list(text: str) -> list[int]:
    text = text.strip()
    if not text:
        return []
    try:
        return [int(v) for v in re.split(r"[,\s]+", text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> Parser:
    p = Parser(prog=PROG, description="Train a VAE or autoencoder into a self-contained run folder.")
    m = p.add_argument_group("model")
    m.add_argument("--model", choices=ARCHS, default=None, help="architecture (default conv)")
    m.add_argument("--kind", choices=KINDS, default=None, help="vae, or ae for a plain autoencoder (default vae)")
    m.add_argument("--latent-dim", type=int, default=None, help="latent size, 1 to 512 (default 16)")
    m.add_argument("--widths", type=int_list, default=None, help=f"conv channels of the three stages (default {','.join(map(str, DEFAULT_WIDTHS))})")
    m.add_argument("--hidden-dim", type=int, default=None, help=f"fully connected hidden layer, 0 for none (default {DEFAULT_HIDDEN_DIM} for conv, {CLASSIC_MLP_HIDDEN_DIM} for mlp)")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default=None, help="mnist, fashion-mnist or folder:PATH (default mnist)")
    d.add_argument("--data-dir", default="data", help="where to look for dataset files (default data/)")
    d.add_argument("--image-size", type=int, default=None, help=f"one of {IMAGE_SIZES} (default 28, or 64 for folders)")
    d.add_argument("--channels", type=int, default=None, help="1 (grayscale) or 3 (RGB); default 1 for MNIST-like, 3 for folders")
    d.add_argument("--download", action="store_true", help="allow torchvision to download MNIST / Fashion-MNIST if not found")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=None, help="total epochs (default 10); with --resume, may extend the run")
    t.add_argument("--batch-size", type=int, default=None, help="default 128")
    t.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-3)")
    t.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None, help="step (milestones) or cosine (default step)")
    t.add_argument("--lr-milestones", type=int_list, default=None, help="epochs at which the LR is multiplied by --lr-gamma, e.g. 2000")
    t.add_argument("--lr-gamma", type=float, default=None, help="LR factor at each milestone (default 0.1)")
    t.add_argument("--beta", type=float, default=None, help="weight of the KL term (default 1; 0 = no KL ablation)")
    t.add_argument("--beta-warmup", type=int, default=None, help="epochs of linear warm-up of beta from 0 (default 0)")
    t.add_argument("--recon-loss", choices=RECON_LOSSES, default=None, help="bce (Bernoulli) or mse (default bce)")
    t.add_argument("--recon-weight", type=float, default=None, help="weight of the reconstruction term (default 1; 0 = KL only)")
    t.add_argument("--seed", type=int, default=None, help="default 0")
    t.add_argument("--atlas-size", type=int, default=None, help="test images whose latents are recorded every epoch (default 2000)")
    t.add_argument("--keep-epochs", type=int_list, default=None, help="epochs whose weights are kept besides the latest")
    t.add_argument("--weights-dtype", choices=WEIGHT_DTYPES, default=None, help="float32 (default) or float16 (half the size)")
    r = p.add_argument_group("run")
    r.add_argument("--run-name", default=None, help="folder name under --checkpoints-dir (default: made from the options)")
    r.add_argument("--checkpoints-dir", default=DEFAULT_CHECKPOINTS_DIR, help="where run folders live (default checkpoints/)")
    r.add_argument("--resume", action="store_true", help="continue the run named by --run-name from its last completed epoch")
    r.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    r.add_argument("--progress", choices=("auto", "bar", "json", "none"), default="auto", help="tqdm bar on a terminal, else one JSON line per epoch")
    r.add_argument("--amp", choices=AMP_CHOICES, default="auto", help="mixed precision: auto (bf16 on a GPU that has it, else off), off, bf16 or fp16")
    r.add_argument("--compile", action="store_true", help="torch.compile the training step (slow first epoch; pays off on long GPU runs)")
    return p


def _given(args: argparse.Namespace, name: str) -> Any:
    return getattr(args, name)


def configs_from_args(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig, int]:
    """Build and validate the two configs from parsed flags; returns them and the channel count."""
    arch = "conv" if args.model is None else args.model
    dataset = "mnist" if args.dataset is None else args.dataset
    model_kw: dict[str, Any] = {
        "arch": arch,
        "kind": "vae" if args.kind is None else args.kind,
        "latent_dim": 16 if args.latent_dim is None else args.latent_dim,
        "in_channels": default_channels(dataset) if args.channels is None else args.channels,
        "image_size": default_image_size(dataset) if args.image_size is None else args.image_size,
        "hidden_dim": (CLASSIC_MLP_HIDDEN_DIM if arch == "mlp" else DEFAULT_HIDDEN_DIM) if args.hidden_dim is None else args.hidden_dim,
    }
    if args.widths is not None:
        model_kw["widths"] = tuple(args.widths)
    train_kw = {
        name: getattr(args, name)
        for name in ("epochs", "batch_size", "lr", "lr_schedule", "lr_milestones", "lr_gamma", "beta", "beta_warmup",
                     "recon_loss", "recon_weight", "seed", "atlas_size", "keep_epochs", "weights_dtype")
        if getattr(args, name) is not None
    }
    train_kw["dataset"] = dataset
    train_kw["data_dir"] = args.data_dir
    try:
        return ModelConfig(**model_kw), TrainConfig(**train_kw), model_kw["in_channels"]
    except ValueError as e:
        raise UserError(str(e)) from None


def default_run_name(model_config: ModelConfig, train_config: TrainConfig) -> str:
    data = re.sub(r"[^A-Za-z0-9]+", "-", train_config.dataset.split("/")[-1]).strip("-") or "data"
    return f"{data}-{model_config.arch}-{model_config.kind}-z{model_config.latent_dim}-{time.strftime('%Y%m%d-%H%M%S')}"


def resume_configs(args: argparse.Namespace, run_dir: Path) -> tuple[ModelConfig, TrainConfig, int]:
    try:
        model_config, train_config, _ = read_config(run_dir)
    except RunError as e:
        raise UserError(f"cannot resume: {e}") from None
    changed = [n for n in FIXED_ON_RESUME if getattr(args, n) is not None and n not in ("dataset",)]
    if args.dataset is not None and args.dataset != train_config.dataset:
        changed.append("dataset")
    if changed:
        flags = ", ".join("--" + n.replace("_", "-") for n in changed)
        raise UserError(f"{flags} cannot change when resuming: the run keeps the model and data of its config.json")
    if args.epochs is not None:
        try:
            train_config = TrainConfig.from_dict(train_config.to_dict() | {"epochs": args.epochs})
        except ValueError as e:
            raise UserError(str(e)) from None
    return model_config, train_config, model_config.in_channels


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        rank = distributed.env_rank()
    except ValueError:
        rank = 0
    speaks = rank == 0  # with several processes only rank 0 prints what they all agreed on
    try:
        return _main(argv)
    except UserError as e:
        if speaks:
            print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except (DataError, RunError) as e:
        if speaks:
            print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except ProcessLost as e:  # each process saw it on its own
        print(f"{PROG}: training failed{'' if speaks else f' (rank {rank})'}: {e}", file=sys.stderr)
        return 1
    except TrainingFailed as e:
        if speaks:
            print(f"{PROG}: training failed: {e}", file=sys.stderr)
        return 1


def _decide_run(args: argparse.Namespace) -> tuple[Path, ModelConfig, TrainConfig, int]:
    """The run folder and configs from the flags (and, on --resume, the run's config.json)."""
    checkpoints = Path(args.checkpoints_dir)
    if args.resume:
        if not args.run_name:
            raise UserError("--resume needs --run-name: the run to continue")
        run_dir = checkpoints / validate_name(args.run_name)
        if not (run_dir / MANIFEST_FILE).exists():
            raise UserError(f"nothing to resume: {run_dir} has no saved epoch")
        model_config, train_config, channels = resume_configs(args, run_dir)
    else:
        model_config, train_config, channels = configs_from_args(args)
        run_dir = checkpoints / validate_name(default_run_name(model_config, train_config) if args.run_name is None else args.run_name)
        if (run_dir / MANIFEST_FILE).exists():
            raise UserError(f"run {run_dir} already exists: pass --resume to continue it, or choose another --run-name")
    return run_dir, model_config, train_config, channels


def _make_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create run folder {run_dir}: {e.strerror or e}") from None


def _shared_decision(ctx: DistContext, args: argparse.Namespace) -> tuple[Path, ModelConfig, TrainConfig, int]:
    """Rank 0 decides the run (its name may hold the time) and creates its folder; every process gets the same."""
    error, payload = None, None
    if ctx.is_main:
        try:
            run_dir, model_config, train_config, channels = _decide_run(args)
            _make_run_dir(run_dir)
            payload = [str(run_dir), model_config.to_dict(), train_config.to_dict(), channels]
        except UserError as e:
            error = str(e)
    error, payload = distributed.broadcast_object(ctx, [error, payload])
    if error is not None:
        raise UserError(error)
    run_dir, model_dict, train_dict, channels = payload
    return Path(run_dir), ModelConfig.from_dict(model_dict), TrainConfig.from_dict(train_dict), int(channels)


def _load_data(ctx: DistContext, args: argparse.Namespace, model_config: ModelConfig, train_config: TrainConfig, channels: int) -> ImageData:
    """Every process loads the whole data set; the first process of each machine goes first (download, folder cache)."""

    def load() -> ImageData:
        return load_dataset(train_config.dataset, train_config.data_dir, model_config.image_size, channels, download=args.download, seed=train_config.seed)

    if not ctx.enabled:
        return load()
    data, error = None, None
    for turn in (True, False):  # local rank 0 first, then the others (its cache and download are theirs to read)
        if (ctx.local_rank == 0) == turn:
            try:
                data = load()
            except DataError as e:
                error = str(e)
        shared = distributed.first_error(ctx, error)
        if shared is not None:
            raise DataError(shared)
    assert data is not None
    return data


def _setup_device(ctx: DistContext, args: argparse.Namespace) -> torch.device:
    try:
        device = distributed.device_for(ctx, pick_device(args.device))
        distributed.resolve_amp(args.amp, device)
    except (ValueError, RuntimeError) as e:
        raise UserError(str(e).splitlines()[0]) from None
    return device


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        ctx = distributed.context_from_env()
    except ValueError as e:
        raise UserError(str(e)) from None
    if not ctx.enabled:
        run_dir, model_config, train_config, channels = _decide_run(args)
        device = _setup_device(ctx, args)
    else:
        device = _setup_device(ctx, args)
        ctx = distributed.init(ctx, device)
    try:
        if ctx.enabled:
            run_dir, model_config, train_config, channels = _shared_decision(ctx, args)
        return _train(ctx, args, device, run_dir, model_config, train_config, channels)
    except RuntimeError as e:
        if not ctx.enabled:
            raise
        # a collective of the set-up failed: another process died (fit reports failures during training)
        raise ProcessLost(f"a process of the {ctx.world_size}-process job failed or went away ({one_line(e)})") from None
    finally:
        distributed.shutdown(ctx)


def _train(ctx: DistContext, args: argparse.Namespace, device: torch.device, run_dir: Path, model_config: ModelConfig, train_config: TrainConfig, channels: int) -> int:
    if device.type == "cpu":
        torch.set_num_threads(distributed.cpu_threads(ctx))
    data = _load_data(ctx, args, model_config, train_config, channels)
    speaks = args.progress != "none" and ctx.is_main
    if speaks:
        print(f"data: {data.source.get('note', data.source.get('name'))}", file=sys.stderr)
        extras = "" if not ctx.enabled else f"  processes: {ctx.describe()}"
        amp = distributed.resolve_amp(args.amp, device)
        extras += "" if amp is None else f"  precision: {distributed.precision_name(amp)}"
        extras += "  compile: on" if args.compile else ""
        print(f"run: {run_dir}  device: {device}{extras}", file=sys.stderr)
    stop = StopFlag()
    stop.install()
    if ctx.is_main:
        _make_run_dir(run_dir)
    trainer = fit(model_config, train_config, data, run_dir, device, resume=args.resume, stop=stop, progress=args.progress, dist=ctx, amp=args.amp, compile_model=args.compile)
    if speaks:
        state = "stopped" if trainer.epoch < train_config.epochs else "finished"
        last = trainer.history[-1] if trainer.history else {}
        loss = f", test loss {last['test_loss']:.2f} nats" if last else ""
        print(f"{state} at epoch {trainer.epoch}/{train_config.epochs}{loss}: {run_dir}", file=sys.stderr)
    return 0


def validate_name(name: str) -> str:
    try:
        return validate_run_name(name)
    except ValueError as e:
        raise UserError(str(e)) from None
