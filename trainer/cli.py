"""`python -m trainer`: train a model into a run folder. User mistakes exit non-zero with one line.

Under `torchrun --nproc-per-node N -m trainer ...` every process runs this; rank 0 decides the run
folder and prints, and the others follow it (see trainer/distributed.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import re
import sys
import time
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from models import CLASSIC_MLP_HIDDEN_DIM, DEFAULT_HIDDEN_DIM, ModelConfig
from models.config import FieldSpec, field_spec, field_types

from . import distributed
from .config import TrainConfig
from .data import DATASETS, FOLDER_PREFIX, DataError, ImageData, default_channels, default_image_size, load_dataset
from .distributed import AMP_CHOICES, DistContext
from .errors import one_line
from .runs import MANIFEST_FILE, RunError, read_config, validate_run_name
from .train import ProcessLost, StopFlag, TrainingFailed, fit, pick_device

DEFAULT_CHECKPOINTS_DIR = "checkpoints"
PROG = "python -m trainer"
PROGRESS_CHOICES = ("auto", "bar", "json", "none")
# Model and data options that a resumed run takes from its config.json; they cannot change mid-run.
FIXED_ON_RESUME = ("model", "kind", "latent_dim", "dataset", "image_size", "channels", "widths", "hidden_dim")
# Config fields whose option has another name; every other option is its field's name (batch_size: --batch-size).
OPTION_NAMES = {"arch": "model", "in_channels": "channels"}
DATA_FIELDS = ("dataset", "data_dir", "image_size", "in_channels")  # config fields listed under "data" in --help


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


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One option of `python -m trainer`, as programs that build its command line (the app's Train page) see it.

    Options that set a config field take their help, default and allowed values from that field's FieldSpec."""

    dest: str  # the parsed name: batch_size
    flag: str  # --batch-size
    group: str  # its section of --help
    help: str  # as --help shows it, default included
    takes_value: bool = True  # False for on/off flags such as --compile
    default: Any = None  # what the trainer uses when the option is left out; None where other options decide it
    choices: tuple[Any, ...] | None = None
    parse: Callable[[str], Any] | None = None  # command-line text -> value (int, float, int_list); None keeps the text
    field: str | None = None  # the ModelConfig or TrainConfig field it sets; None for options of the CLI alone
    spec: FieldSpec | None = None  # that field's help and allowed values (min/max/choices)


def option_name(field: str) -> str:
    """The option that sets config field `field`: `arch` -> `model`, `batch_size` -> `batch_size`."""
    return OPTION_NAMES.get(field, field)


def flag(dest: str) -> str:
    """`batch_size` -> `--batch-size`."""
    return "--" + dest.replace("_", "-")


def default_hidden_dim(arch: str) -> int:
    """The hidden layer an architecture gets when --hidden-dim is left out."""
    return CLASSIC_MLP_HIDDEN_DIM if arch == "mlp" else DEFAULT_HIDDEN_DIM


def _derived_defaults() -> dict[str, str]:
    """Options whose default depends on other options: what --help says for them (their OptionSpec.default is None)."""
    named, folder = DATASETS[0], FOLDER_PREFIX
    return {
        "hidden_dim": f"{default_hidden_dim('conv')} for conv, {default_hidden_dim('mlp')} for mlp",
        "image_size": f"{default_image_size(named)}, or {default_image_size(folder)} for folders",
        "channels": f"{default_channels(named)} for MNIST-like, {default_channels(folder)} for folders",
    }


def _shown(value: Any) -> str | None:
    """A default as --help writes it, or None for "no default worth showing" (None, empty)."""
    if value is None or value == () or value == "":
        return None
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return format(value, "g") if isinstance(value, float) else str(value)


def _with_notes(text: str, *notes: str | None) -> str:
    """`text (note; note)`, leaving out empty notes."""
    kept = [n for n in notes if n]
    return f"{text} ({'; '.join(kept)})" if kept else text


def _field_option(cls: type, field: dataclasses.Field, group: str, derived: dict[str, str]) -> OptionSpec:
    """The option of one config field: type from its annotation, help, default and bounds from its FieldSpec."""
    dest, spec, kind = option_name(field.name), field_spec(cls, field.name), field_types(cls)[field.name]
    if typing.get_origin(kind) is tuple:
        parse: Callable[[str], Any] | None = int_list
        allowed = f"comma-separated integers {spec.range_text()}".rstrip()
    else:
        parse = None if kind is str else kind
        allowed = None if kind is str else spec.describe(integer=kind is int)  # argparse lists string choices itself
    shown = derived.get(dest, _shown(field.default))
    help = _with_notes(spec.help, allowed, shown and f"default {shown}")
    default = None if dest in derived else field.default
    return OptionSpec(dest, flag(dest), group, help, default=default, choices=spec.choices, parse=parse, field=field.name, spec=spec)


def _cli_option(dest: str, group: str, help: str, default: Any = None, choices: tuple[str, ...] | None = None) -> OptionSpec:
    """An option of the CLI alone (no config field); a bool default makes it an on/off flag."""
    is_flag = isinstance(default, bool)
    shown = None if is_flag else _shown(default)
    return OptionSpec(dest, flag(dest), group, _with_notes(help, shown and f"default {shown}"), takes_value=not is_flag, default=default, choices=choices)


@functools.cache
def _options() -> tuple[OptionSpec, ...]:
    derived = _derived_defaults()
    model_fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    train_fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    owner = {name: ModelConfig for name in model_fields} | {name: TrainConfig for name in train_fields}
    every = model_fields | train_fields
    return (
        *(_field_option(ModelConfig, f, "model", derived) for name, f in model_fields.items() if name not in DATA_FIELDS),
        *(_field_option(owner[name], every[name], "data", derived) for name in DATA_FIELDS),
        _cli_option("download", "data", "allow torchvision to download MNIST / Fashion-MNIST if not found", default=False),
        *(_field_option(TrainConfig, f, "training", derived) for name, f in train_fields.items() if name not in DATA_FIELDS),
        _cli_option("run_name", "run", "folder name under --checkpoints-dir (default: made from the options)"),
        _cli_option("checkpoints_dir", "run", "where run folders live", default=DEFAULT_CHECKPOINTS_DIR),
        _cli_option("resume", "run", "continue the run named by --run-name from its last completed epoch", default=False),
        _cli_option("device", "run", "auto (CUDA if present), cpu, cuda or cuda:N", default="auto"),
        _cli_option("progress", "run", "auto: a tqdm bar on a terminal, else one JSON line per epoch", default="auto", choices=PROGRESS_CHOICES),
        _cli_option("amp", "run", "mixed precision: auto (bf16 on a GPU that has it, else off), off, bf16 or fp16", default="auto", choices=AMP_CHOICES),
        _cli_option("compile", "run", "torch.compile the training step (slow first epoch; pays off on long GPU runs)", default=False),
    )


def trainer_options() -> dict[str, OptionSpec]:
    """Every option of `python -m trainer` by dest, in --help order (--help itself aside)."""
    return {o.dest: o for o in _options()}


def build_parser() -> Parser:
    p = Parser(prog=PROG, description="Train a VAE or autoencoder into a self-contained run folder.")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for o in _options():
        group = groups.get(o.group) or groups.setdefault(o.group, p.add_argument_group(o.group))
        if not o.takes_value:
            group.add_argument(o.flag, action="store_true", help=o.help)
            continue
        # Config options parse to None when left out, so configs_from_args and --resume can tell what was given.
        default = None if o.field else o.default
        choices = o.choices if o.parse is None else None  # numbers out of their set are the config's to refuse, by name
        group.add_argument(o.flag, type=o.parse, choices=choices, default=default, help=o.help)
    return p


def _fields_given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of config class `cls` that the command line sets."""
    values = {f.name: getattr(args, option_name(f.name)) for f in dataclasses.fields(cls)}
    return {name: value for name, value in values.items() if value is not None}


def configs_from_args(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig, int]:
    """Build and validate the two configs from parsed flags; returns them and the channel count.

    Options left out take their field's default, except those that follow the dataset (image size,
    channels) or the architecture (hidden layer)."""
    train_kw = _fields_given(args, TrainConfig)
    model_kw = _fields_given(args, ModelConfig)
    dataset = train_kw.get("dataset", TrainConfig.dataset)
    model_kw.setdefault("in_channels", default_channels(dataset))
    model_kw.setdefault("image_size", default_image_size(dataset))
    model_kw.setdefault("hidden_dim", default_hidden_dim(model_kw.get("arch", ModelConfig.arch)))
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


def _train(
    ctx: DistContext, args: argparse.Namespace, device: torch.device, run_dir: Path, model_config: ModelConfig, train_config: TrainConfig, channels: int
) -> int:
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
    trainer = fit(
        model_config, train_config, data, run_dir, device,
        resume=args.resume, stop=stop, progress=args.progress, dist=ctx, amp=args.amp, compile_model=args.compile,
    )
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
