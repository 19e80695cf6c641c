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
import stat
import sys
import time
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from models import CLASSIC_MLP_HIDDEN_DIM, DEFAULT_HIDDEN_DIM, ModelConfig, patch_grid
from models.config import FieldSpec, field_spec, field_types

from . import adversarial, compat, cuda_graph, distributed, metrics
from .config import TrainConfig
from .data import DATASETS, FOLDER_PREFIX, DataError, ImageData, default_channels, default_image_size, load_dataset
from .distributed import AMP_CHOICES, DistContext
from .errors import one_line
from .lpips import LPIPSError
from .runs import (
    ATLAS_IMAGES_FILE,
    CONFIG_FILE,
    MANIFEST_FILE,
    STATUS_FILE,
    RunError,
    RunLock,
    epoch_file,
    read_config,
    read_manifest,
    read_status,
    validate_run_name,
)
from .train import ProcessLost, StopFlag, TrainingFailed, fit, pick_device, prepare_cublas

DEFAULT_CHECKPOINTS_DIR = "checkpoints"
PROG = "python -m trainer"
PROGRESS_CHOICES = ("auto", "bar", "json", "none")
RESUME_AUTO = "auto"  # --resume auto: continue the run if it has a saved epoch, else start it
FIXED_GROUPS = ("model", "data")  # option groups a run keeps for good: a resume given other values is refused
RESUME_CHANGEABLE = "epochs"  # the one config option a resume may change (to extend the run)
# What a start killed before its first save leaves in the run folder, besides epoch files and temporaries.
UNSAVED_START_FILES = (CONFIG_FILE, ATLAS_IMAGES_FILE, STATUS_FILE)
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
    choices: tuple[Any, ...] | None = None  # for an on/off flag, the words it may optionally take (--resume auto)
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
    """An option of the CLI alone (no config field); a bool default makes it an on/off flag (with `choices`, one
    that may take one of them as its value)."""
    is_flag = isinstance(default, bool)
    shown = None if is_flag else _shown(default)
    return OptionSpec(dest, flag(dest), group, _with_notes(help, shown and f"default {shown}"), takes_value=not is_flag, default=default, choices=choices)


RESUME_HELP = (
    "continue the run named by --run-name from its last saved epoch (an error if it has none); "
    f"--resume {RESUME_AUTO}: continue it if it has a saved epoch, else start it (one command for every restart). "
    "Other flags given must equal the run's config.json, except --epochs, which may extend the run; "
    "a model, data or training flag with another value is refused"
)


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
        _cli_option("resume", "run", RESUME_HELP, default=False, choices=(RESUME_AUTO,)),
        _cli_option("device", "run", "auto (CUDA if present), cpu, cuda or cuda:N", default="auto"),
        _cli_option("progress", "run", "auto: a tqdm bar on a terminal (training images, step by step), else one JSON line per epoch "
                    "(and a progress line on stderr every few seconds)", default="auto", choices=PROGRESS_CHOICES),
        _cli_option("amp", "run", "mixed precision: auto, off, bf16 or fp16. auto: off on the CPU; on a GPU with native bf16, a few steps "
                    "are timed in float32 and bf16 at the start and bf16 is used only if at least 1.05 times as fast (the choice and timings are "
                    "printed and kept in config.json; a resumed run keeps it)", default="auto", choices=AMP_CHOICES),
        _cli_option("compile", "run", "torch.compile the training forward: 15-30 s of compiling at the start, and no faster afterwards for the "
                    "bundled models' sizes as measured (README, Performance: --compile)", default=False),
        _cli_option("cuda_graph", "run", "capture the training step of full batches in a CUDA graph and replay it (the step is bound by kernel "
                    "launches at these models' sizes). auto: on for one CUDA process without --compile, fp16, the sharpness losses or "
                    "--deterministic; on: also with --deterministic, an error where it cannot; off: eager steps", default="auto",
                    choices=cuda_graph.GRAPH_CHOICES),
        _cli_option("no_projections", "run", "do not compute the app's UMAP and t-SNE maps of the last epoch's atlas when training ends "
                    "(computed by default for latents of more than 2 dims, so the app shows them at once)", default=False),
    )


def trainer_options() -> dict[str, OptionSpec]:
    """Every option of `python -m trainer` by dest, in --help order (--help itself aside)."""
    return {o.dest: o for o in _options()}


def build_parser(*, defaults: bool = True) -> Parser:
    """The parser of `python -m trainer`. With defaults=False an option left out is absent from the parsed
    namespace, so what the command line names explicitly can be told apart (see given_options)."""
    p = Parser(prog=PROG, description="Train a VAE or autoencoder into a self-contained run folder.")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for o in _options():
        group = groups.get(o.group) or groups.setdefault(o.group, p.add_argument_group(o.group))
        # Config options parse to None when left out, so configs_from_args can tell what was given.
        default = (None if o.field else o.default) if defaults else argparse.SUPPRESS
        if not o.takes_value and o.choices:  # --resume or --resume auto
            group.add_argument(o.flag, nargs="?", const=True, choices=o.choices, default=default, metavar="|".join(o.choices), help=o.help)
        elif not o.takes_value:
            group.add_argument(o.flag, action="store_true", default=default, help=o.help)
        else:
            choices = o.choices if o.parse is None else None  # numbers out of their set are the config's to refuse, by name
            group.add_argument(o.flag, type=o.parse, choices=choices, default=default, help=o.help)
    return p


def given_options(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The options the command line names explicitly, by dest, with their parsed values (defaults suppressed)."""
    return vars(build_parser(defaults=False).parse_args(argv))


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
        model_config = ModelConfig(**model_kw)
        train_config = TrainConfig(**train_kw)
    except ValueError as e:
        raise UserError(str(e)) from None
    if model_config.spatial_latent and model_kw.get("latent_dim", model_config.latent_dim) != model_config.latent_dim:
        shape = " x ".join(map(str, model_config.latent_shape))
        raise UserError(f"a spatial resnet's latent size follows from --latent-channels and the image size ({shape} = {model_config.latent_dim}): "
                        "leave out --latent-dim, or pass --bottleneck vector")
    if train_config.disc_weight > 0 and patch_grid(model_config.image_size, train_config.disc_layers) < 1:
        raise UserError(f"--disc-layers {train_config.disc_layers} is too deep for {model_config.image_size} px images (the discriminator "
                        "would have no patch left): use fewer --disc-layers")
    if train_config.perceptual_weight > 0 and train_config.perceptual_weights and not Path(train_config.perceptual_weights).expanduser().is_file():
        raise UserError(f"--perceptual-weights {train_config.perceptual_weights}: no such file (a local torchvision VGG16 state dict; "
                        "leave it out to train without the perceptual term)")
    return model_config, train_config, model_kw["in_channels"]


def default_run_name(model_config: ModelConfig, train_config: TrainConfig) -> str:
    data = re.sub(r"[^A-Za-z0-9]+", "-", train_config.dataset.split("/")[-1]).strip("-") or "data"
    return f"{data}-{model_config.arch}-{model_config.kind}-z{model_config.latent_dim}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What the command does: which run folder, with which configs, started or resumed."""

    run_dir: Path
    model_config: ModelConfig
    train_config: TrainConfig
    channels: int
    resume: bool
    note: str | None = None  # the line --resume auto prints: whether it resumed or started the run

    def to_list(self) -> list[Any]:
        """Plain data, for broadcasting rank 0's plan to the other processes."""
        return [str(self.run_dir), self.model_config.to_dict(), self.train_config.to_dict(), self.channels, self.resume, self.note]

    @classmethod
    def from_list(cls, data: list[Any]) -> "RunPlan":
        run_dir, model_dict, train_dict, channels, resume, note = data
        return cls(Path(run_dir), ModelConfig.from_dict(model_dict), TrainConfig.from_dict(train_dict), int(channels), bool(resume), note)


@dataclasses.dataclass(frozen=True)
class Conflict:
    """An option given on resume with another value than the run's config.json."""

    option: OptionSpec
    saved: Any
    given: Any


def _value_text(value: Any) -> str:
    """A config value as a message shows it: 4,8,8 for tuples (none when empty), repr for floats."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "none"
    return repr(value) if isinstance(value, float) else str(value)


def resume_conflicts(given: dict[str, Any], model_config: ModelConfig, train_config: TrainConfig) -> list[Conflict]:
    """The config options in `given` (explicit options by dest) whose value differs from the run's configs,
    --epochs aside; in --help order."""
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    found = []
    for dest, option in trainer_options().items():
        if option.field is None or dest == RESUME_CHANGEABLE or dest not in given:
            continue
        saved = getattr(model_config if option.field in model_fields else train_config, option.field)
        value = tuple(given[dest]) if isinstance(saved, tuple) else given[dest]
        if value != saved:
            found.append(Conflict(option, saved, value))
    return found


def conflicts_message(conflicts: list[Conflict], run_name: str) -> str:
    """One line naming each conflicting option with the run's value and the given one, and why it is refused."""
    flags = ", ".join(c.option.flag for c in conflicts)
    if len(conflicts) == 1:
        c = conflicts[0]
        values = f"it is {_value_text(c.saved)} in run {run_name}, got {_value_text(c.given)}"
    else:
        values = "; ".join(f"{c.option.flag} is {_value_text(c.saved)} in run {run_name}, got {_value_text(c.given)}" for c in conflicts)
    groups = {c.option.group for c in conflicts}
    why = []
    if groups & set(FIXED_GROUPS):
        why.append("a run keeps the model and data of its config.json")
    if groups - set(FIXED_GROUPS):
        why.append(f"of its training settings only {flag(RESUME_CHANGEABLE)} may change on resume: start a new run to train with others")
    return f"{flags} cannot change when resuming: {values} ({'; '.join(why)})"


def resume_plan(given: dict[str, Any], run_dir: Path) -> RunPlan:
    """Continue the run in `run_dir`: its configs, with --epochs applied; the options given must equal the rest."""
    name = run_dir.name
    try:
        model_config, train_config, _ = read_config(run_dir)
        saved = read_manifest(run_dir)["epoch"]
    except RunError as e:
        raise UserError(f"cannot resume: {e}") from None
    conflicts = resume_conflicts(given, model_config, train_config)
    if conflicts:
        raise UserError(conflicts_message(conflicts, name))
    finished = saved >= train_config.epochs or (read_status(run_dir) or {}).get("state") == "finished"  # its last save: rounded weights
    epochs = given.get(RESUME_CHANGEABLE)
    if epochs is not None:
        try:
            train_config = dataclasses.replace(train_config, epochs=epochs)
        except ValueError as e:
            raise UserError(str(e)) from None
        if epochs < saved:
            raise UserError(f"--epochs {epochs} is fewer than the {saved} epochs run {name} has already trained: pass --epochs {saved} or more")
    note = f"resuming run {name} at epoch {saved} of {train_config.epochs}"
    if train_config.weights_dtype != "float32" and finished:
        note += (f" (it finished with {train_config.weights_dtype} weights: the extension continues from rounded weights, "
                 "close to but not bitwise what a longer uninterrupted run gives)")
    return RunPlan(run_dir, model_config, train_config, model_config.in_channels, resume=True, note=note)


def has_saved_epoch(run_dir: Path) -> bool:
    """Whether the run folder holds a saved epoch (a manifest; a broken one counts: it is never started over)."""
    manifest = run_dir / MANIFEST_FILE
    return manifest.exists() or manifest.is_symlink()


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        rank = distributed.env_rank()
    except ValueError:
        rank = 0
    speaks = rank == 0  # with several processes only rank 0 prints what they all agreed on
    try:
        # Arithmetic on subnormal floats is many times slower on x86 CPUs; flushed to zero, the MLP's test losses stayed
        # bitwise the same (seeds 0-5, 10 epochs: bench/bench_denormal.py). Set before torch starts its threads, so
        # they flush too; put back for an in-process caller.
        with compat.flushed_denormals():
            return _main(argv)
    except UserError as e:
        if speaks:
            print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except (DataError, RunError, LPIPSError) as e:
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


def _decide_run(args: argparse.Namespace, given: dict[str, Any]) -> RunPlan:
    """The run folder and configs from the flags and, when resuming, the run's config.json. Reads only."""
    checkpoints = Path(args.checkpoints_dir)
    if args.resume:
        if not args.run_name:
            raise UserError("--resume needs --run-name: the run to continue")
        run_dir = checkpoints / validate_name(args.run_name)
        if has_saved_epoch(run_dir):
            plan = resume_plan(given, run_dir)
            return plan if args.resume == RESUME_AUTO else dataclasses.replace(plan, note=None)
        if args.resume != RESUME_AUTO:
            raise UserError(f"nothing to resume: {run_dir} has no saved epoch (--resume {RESUME_AUTO} starts a run that has none)")
        model_config, train_config, channels = configs_from_args(args)
        return RunPlan(run_dir, model_config, train_config, channels, resume=False, note=f"starting run {run_dir.name}")
    model_config, train_config, channels = configs_from_args(args)
    run_dir = checkpoints / validate_name(default_run_name(model_config, train_config) if args.run_name is None else args.run_name)
    if has_saved_epoch(run_dir):
        raise UserError(f"run {run_dir} already exists: pass --resume to continue it, or choose another --run-name")
    return RunPlan(run_dir, model_config, train_config, channels, resume=False)


def _make_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create run folder {run_dir}: {e.strerror or e}") from None


def _is_unsaved_start_file(name: str) -> bool:
    return name in UNSAVED_START_FILES or epoch_file(name) is not None or (name.startswith(".") and name.endswith(".tmp"))


def clear_unsaved_start(run_dir: Path) -> None:
    """Remove what a start killed before its first save left in `run_dir` (config, atlas, status, epoch files,
    temporaries; nothing else), holding the run's lock: a trainer busy creating the run is refused, never disturbed."""
    if not run_dir.is_dir():
        return
    lock = RunLock(run_dir)
    try:
        lock.acquire()
    except RunError as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"cannot use run folder {run_dir}: {e.strerror or e}") from None
    try:
        if has_saved_epoch(run_dir):  # another trainer saved its first epoch since this one looked
            raise UserError(f"run {run_dir} was saved by another trainer meanwhile: run the command again")
        for path in run_dir.iterdir():
            if _is_unsaved_start_file(path.name) and not stat.S_ISDIR(path.lstat().st_mode):
                path.unlink(missing_ok=True)
    except OSError as e:
        raise UserError(f"cannot clear the unsaved start in {run_dir}: {e.strerror or e}") from None
    finally:
        lock.release()


def _prepare_run_dir(plan: RunPlan) -> None:
    """Create the run folder; a start clears what an earlier start left there before its first save."""
    if not plan.resume:
        clear_unsaved_start(plan.run_dir)
    _make_run_dir(plan.run_dir)


def _shared_decision(ctx: DistContext, args: argparse.Namespace, given: dict[str, Any]) -> RunPlan:
    """Rank 0 decides the run (its name may hold the time) and prepares its folder; every process gets the same plan."""
    error, payload = None, None
    if ctx.is_main:
        try:
            plan = _decide_run(args, given)
            _prepare_run_dir(plan)
            payload = plan.to_list()
        except UserError as e:
            error = str(e)
    error, payload = distributed.broadcast_object(ctx, [error, payload])
    if error is not None:
        raise UserError(error)
    return RunPlan.from_list(payload)


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
    given = given_options(argv)
    try:
        ctx = distributed.context_from_env()
    except ValueError as e:
        raise UserError(str(e)) from None
    if not ctx.enabled:
        plan = _decide_run(args, given)
        if plan.train_config.deterministic == "on":  # before CUDA starts (a resumed run's config.json may ask for it too)
            prepare_cublas()
        device = _setup_device(ctx, args)
    else:
        if args.deterministic == "on":
            prepare_cublas()
        device = _setup_device(ctx, args)
        ctx = distributed.init(ctx, device)
    finished = False  # this process's work ended normally: it leaves the job together with the others
    try:
        if ctx.enabled:
            plan = _shared_decision(ctx, args, given)
        code = _train(ctx, args, device, plan)
        finished = True
        return code
    except RuntimeError as e:
        if not ctx.enabled:
            raise
        # a collective of the set-up failed: another process died (fit reports failures during training)
        raise ProcessLost(f"a process of the {ctx.world_size}-process job failed or went away ({one_line(e)})") from None
    finally:
        distributed.shutdown(ctx, together=finished)


def _train(ctx: DistContext, args: argparse.Namespace, device: torch.device, plan: RunPlan) -> int:
    run_dir, model_config, train_config, channels = plan.run_dir, plan.model_config, plan.train_config, plan.channels
    try:  # --cuda-graph on where it cannot capture: one line, before the data loads
        cuda_graph.plan(args.cuda_graph, device, processes=ctx.world_size, fp16_scaler=distributed.resolve_amp(args.amp, device) == torch.float16,
                        sharp=adversarial.wanted(train_config), compiled=args.compile, deterministic=train_config.deterministic == "on")
    except ValueError as e:
        raise UserError(str(e)) from None
    if device.type == "cpu":
        torch.set_num_threads(distributed.cpu_threads(ctx))
    data = _load_data(ctx, args, model_config, train_config, channels)
    speaks = args.progress != "none" and ctx.is_main
    if speaks:
        print(f"data: {data.source.get('note', data.source.get('name'))}", file=sys.stderr)
        extras = "" if not ctx.enabled else f"  processes: {ctx.describe()}"
        amp = None if args.amp == "auto" else distributed.resolve_amp(args.amp, device)  # auto: fit says what it picked
        extras += "" if amp is None else f"  precision: {distributed.precision_name(amp)}"
        extras += "  compile: on" if args.compile else ""
        print(f"run: {run_dir}  device: {device}{extras}", file=sys.stderr)
    if train_config.disc_weight > 0 and (ctx.enabled or distributed.resolve_amp(args.amp, device) == torch.float16):
        raise UserError("--disc-weight trains in one process and without --amp fp16 (its adaptive weight takes gradients outside DDP "
                        "and the gradient scaler): run one process with --amp off, bf16 or auto")
    note = adversarial.perceptual_note(train_config)
    if note is not None and ctx.is_main:
        print(note, file=sys.stderr)
    stop = StopFlag()
    stop.install()
    if not ctx.enabled:
        _prepare_run_dir(plan)  # (several processes: rank 0 did it while deciding, so that all share its errors)
    if ctx.is_main and plan.note:
        restart = distributed.restart_count()
        print(plan.note + (f" (torchrun restart {restart})" if restart else ""), file=sys.stderr)
    try:
        trainer = fit(
            model_config, train_config, data, run_dir, device,
            resume=plan.resume, stop=stop, progress=args.progress, dist=ctx, amp=args.amp, compile_model=args.compile, cuda_graph=args.cuda_graph,
            projections=not args.no_projections,
        )
    finally:
        stop.restore()
    if speaks:
        state = "stopped" if trainer.epoch < train_config.epochs else "finished"
        last = trainer.history[-1] if trainer.history else {}
        loss = f", test objective {last['test_loss']:.2f}, negative ELBO {metrics.neg_elbo(last):.2f}" if last else ""
        print(f"{state} at epoch {trainer.epoch}/{train_config.epochs}{loss}: {run_dir}", file=sys.stderr)
    return 0


def validate_name(name: str) -> str:
    try:
        return validate_run_name(name)
    except ValueError as e:
        raise UserError(str(e)) from None
