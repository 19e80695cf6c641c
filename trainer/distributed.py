"""Several training processes on torch.distributed (launched by `torchrun`), and the device-side options.

torchrun starts one process per GPU (or per CPU slot) and sets WORLD_SIZE, RANK and LOCAL_RANK;
without those variables (or with WORLD_SIZE=1) training is one process and no process group is made.
Every process holds the whole in-memory data set and takes its slice of every global batch; only
rank 0 touches the run folder. The backend follows the device: gloo on CPU, nccl on CUDA.
"""
from __future__ import annotations

import gc
import io
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Sequence

import torch
import torch.distributed as dist

from . import compat

BACKENDS = {"cpu": "gloo", "cuda": "nccl"}
AMP_CHOICES = ("auto", "off", "bf16", "fp16")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_NAMES = {None: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
MAIN_RANK = 0
# How long a collective may wait: the others wait while rank 0 decodes a large image folder or saves.
# A process that dies is noticed sooner (gloo: its sockets close; torchrun: it tears the job down).
COLLECTIVE_TIMEOUT = timedelta(minutes=60)
ATTEMPT_STORE_PREFIX = "vae-trainer/attempt-"  # + torchrun's restart count: each attempt's keys apart (see _attempt_store)
RESTART_COUNT_VAR = "TORCHELASTIC_RESTART_COUNT"  # set by torchrun: 0, then 1, 2, ... after each --max-restarts restart
ERROR_CLASS_KEY = 0  # position of the class name in a shared error; the message follows it


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job: rank `rank` of `world_size` (1: no process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None  # set once the process group exists

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == MAIN_RANK

    def describe(self) -> str:
        return f"{self.world_size} ({self.backend})" if self.enabled else "1"


SINGLE = DistContext()


def _env_int(env: dict[str, str], name: str, default: int) -> int:
    text = env.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not an integer (it is set by torchrun)") from None


def env_rank(env: dict[str, str] | None = None) -> int:
    """This process's global rank from torchrun's RANK (0 when not launched by torchrun)."""
    return _env_int(os.environ if env is None else env, "RANK", 0)


def restart_count(env: dict[str, str] | None = None) -> int:
    """How many times torchrun has restarted the job's processes (TORCHELASTIC_RESTART_COUNT; 0 without torchrun)."""
    try:
        return _env_int(os.environ if env is None else env, RESTART_COUNT_VAR, 0)
    except ValueError:
        return 0  # only ever shown in a message


def context_from_env(env: dict[str, str] | None = None) -> DistContext:
    """Read WORLD_SIZE / RANK / LOCAL_RANK / LOCAL_WORLD_SIZE as set by torchrun (no process group yet)."""
    env = dict(os.environ if env is None else env)
    world = _env_int(env, "WORLD_SIZE", 1)
    if world <= 1:
        return SINGLE
    rank, local_rank = _env_int(env, "RANK", 0), _env_int(env, "LOCAL_RANK", 0)
    local_world = _env_int(env, "LOCAL_WORLD_SIZE", world)
    if not (0 <= rank < world and 0 <= local_rank < local_world):
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, LOCAL_RANK={local_rank}, WORLD_SIZE={world}")
    return DistContext(rank, world, local_rank, local_world)


def device_for(ctx: DistContext, device: torch.device) -> torch.device:
    """The device of this process: with several processes, CUDA means the GPU numbered LOCAL_RANK."""
    if not ctx.enabled or device.type != "cuda":
        return device
    if device.index is not None:
        raise ValueError(f"--device {device} names one GPU, but torchrun runs one process per GPU: pass --device cuda (or auto)")
    count = torch.cuda.device_count()
    if ctx.local_world_size > count:  # checked alike by every process of the machine, so rank 0 reports it
        raise ValueError(too_many_processes_message(ctx.local_world_size, count))
    return torch.device("cuda", ctx.local_rank)


def too_many_processes_message(processes: int, gpus: int) -> str:
    """The one line for `processes` torchrun processes on a machine with `gpus` GPUs (one process per GPU)."""
    fewer = f"--nproc-per-node {gpus}, or " if gpus else ""
    return (f"asked for {processes} processes on {gpus} GPU{'' if gpus == 1 else 's'} (torchrun --nproc-per-node {processes}), but each process "
            f"needs a GPU of its own: use {fewer}--device cpu for {processes} CPU processes")


def init(ctx: DistContext, device: torch.device) -> DistContext:
    """Create the process group for `ctx` (nothing for one process); returns the context with its backend."""
    if not ctx.enabled:
        return ctx
    backend = BACKENDS.get(device.type)
    if backend is None:
        raise ValueError(f"several processes need a cpu or cuda device, not {device.type}")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # object collectives and nccl use the current device
    bind = {"device_id": device} if device.type == "cuda" and compat.process_group_device_id() else {}
    dist.init_process_group(backend, store=_attempt_store(), rank=ctx.rank, world_size=ctx.world_size, timeout=COLLECTIVE_TIMEOUT, **bind)
    return DistContext(ctx.rank, ctx.world_size, ctx.local_rank, ctx.local_world_size, backend)


def _attempt_store() -> dist.Store:
    """torchrun's store (MASTER_ADDR:MASTER_PORT, as init_method env:// finds it) under a prefix naming this attempt.

    After `torchrun --max-restarts` restarts the processes they meet on the same store as the dead attempt, whose
    keys (its processes' addresses) are still there: without the prefix a new process may read a dead peer's
    address and fail to connect ("Connection refused"), using up the restarts."""
    store, _, _ = next(dist.rendezvous("env://", timeout=COLLECTIVE_TIMEOUT))
    return dist.PrefixStore(f"{ATTEMPT_STORE_PREFIX}{restart_count()}/", store)


def shutdown(ctx: DistContext, together: bool = False) -> None:
    """Destroy the process group if this process made one (safe after a failed collective).

    together (this process finished its work normally): first wait at a barrier for the others, so that no process
    tears its connections down while another is still in its last collective or writing the run folder, and collect
    the garbage (DDP's reducer and its pending work live in reference cycles) while the interpreter is whole: a
    process whose gloo group outlived it into interpreter shutdown was once seen aborting ("terminate called
    without an active exception") after a successful run. A process that failed skips the barrier (its sockets
    close, which the others' barrier notices) and leaves at once, so that its error is printed before torchrun tears it down."""
    if not (ctx.enabled and dist.is_initialized()):
        return
    if together:
        try:
            dist.barrier()
        except RuntimeError:
            pass
        gc.collect()  # not after a failure: collecting a reducer whose peer died can block until torchrun kills the process
    try:
        dist.destroy_process_group()
    except RuntimeError:
        pass


def cpu_threads(ctx: DistContext) -> int:
    """Intra-op threads for a CPU process: the machine's cores shared by the processes on it."""
    return max(1, (os.cpu_count() or 1) // max(1, ctx.local_world_size))


# ---------------------------------------------------------------- sharding and collectives

def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[lo, hi) of rank's contiguous share of n items; the first n % world_size ranks take one more."""
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def all_reduce_sum(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all processes in place (unchanged for one process); returns it."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def _object_device(ctx: DistContext) -> torch.device | None:
    return torch.device("cuda", torch.cuda.current_device()) if ctx.backend == "nccl" else None


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's `obj` on every process; plain data and tensors only (loaded with weights_only)."""
    if not ctx.enabled:
        return obj
    if not compat.object_collectives_weights_only():
        return _broadcast_as_bytes(obj if ctx.is_main else None, _object_device(ctx))
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=MAIN_RANK, device=_object_device(ctx), weights_only=True)
    return box[0]


def gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Every process's `obj`, in rank order (plain data only)."""
    if not ctx.enabled:
        return [obj]
    if not compat.object_collectives_weights_only():
        return _gather_as_bytes(obj, ctx.world_size, _object_device(ctx))
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj, weights_only=True)
    return out


# Object collectives on a torch without their `weights_only` argument: the objects travel as torch.save
# bytes in uint8 tensors and are read back by torch.load(weights_only=True), as the native ones do.

def _to_bytes(obj: Any, device: torch.device | None) -> torch.Tensor:
    """`obj` as torch.save bytes, a uint8 tensor (n,) on `device` (CPU when None)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8).to(device or "cpu")


def _from_bytes(data: torch.Tensor) -> Any:
    """The object in torch.save bytes `data` (n,), loaded with weights_only: plain data and tensors only."""
    return compat.load_weights(io.BytesIO(data.cpu().numpy().tobytes()))


def _broadcast_as_bytes(obj: Any, device: torch.device | None) -> Any:
    """Rank 0's `obj` (ignored elsewhere) on every process of the default group."""
    data = _to_bytes(obj, device) if dist.get_rank() == MAIN_RANK else None
    size = torch.tensor([0 if data is None else len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=MAIN_RANK)
    if data is None:
        data = torch.empty(int(size), dtype=torch.uint8, device=device)
    dist.broadcast(data, src=MAIN_RANK)
    return _from_bytes(data)


def _gather_as_bytes(obj: Any, world_size: int, device: torch.device | None) -> list[Any]:
    """Every process's `obj` in rank order (all_gather needs equal sizes: each padded to the longest)."""
    data = _to_bytes(obj, device)
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    longest = max(int(s) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: len(data)] = data
    slots = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(slots, padded)
    return [_from_bytes(slot[: int(n)]) for slot, n in zip(slots, sizes)]


def share_main_error(ctx: DistContext, error: BaseException | None, kinds: Sequence[type[BaseException]]) -> None:
    """Make rank 0's outcome everyone's: if rank 0 had `error`, every process raises it (rank 0 its own).

    Only rank 0 does some work (writing the run folder); the others wait here to learn whether it
    worked, so a failure there ends every process the same way instead of leaving them in a collective.
    """
    if not ctx.enabled:
        if error is not None:
            raise error
        return
    payload = None if error is None else [type(error).__name__, str(error)]
    payload = broadcast_object(ctx, payload)
    if payload is None:
        return
    if ctx.is_main and error is not None:
        raise error
    by_name = {k.__name__: k for k in kinds}
    raise by_name.get(payload[ERROR_CLASS_KEY], RuntimeError)(payload[ERROR_CLASS_KEY + 1])


def first_error(ctx: DistContext, message: str | None) -> str | None:
    """The first process's error message (with its rank when not rank 0), or None if all went well."""
    for rank, m in enumerate(gather_objects(ctx, message)):
        if m is not None:
            return m if rank == MAIN_RANK else f"rank {rank}: {m}"
    return None


# ---------------------------------------------------------------- precision

def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for --amp on `device`, or None for float32.

    auto: bfloat16 *as a candidate* on a CUDA GPU with native bf16 (Ampere or newer), else float32; the trainer
    then times both and keeps bf16 only if it is faster (train.Trainer.settle_amp), so auto never means bf16 untimed.
    bf16 / fp16 are honoured on CUDA (fp16 with a gradient scaler) and on CPU (slow without bf16 hardware).
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"--amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    if amp == "off":
        return None
    if amp == "auto":
        if device.type == "cuda" and compat.cuda_bf16_native(device):
            return torch.bfloat16
        return None
    if amp == "bf16" and device.type == "cuda" and not compat.cuda_bf16_native(device):
        raise ValueError(f"--amp bf16: {torch.cuda.get_device_name(device)} has no native bfloat16; use --amp fp16 or off")
    return AMP_DTYPES[amp]


def precision_name(dtype: torch.dtype | None) -> str:
    return PRECISION_NAMES[dtype]
