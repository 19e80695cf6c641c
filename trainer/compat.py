"""What the installed torch can do, detected where it is used: the project runs on any torch from 2.4 up.

Each check looks at the signature or attribute that a feature needs instead of comparing version
numbers (nightlies, vendor builds and backports make versions a poor guide). Nothing is detected at
import time; every check is cheap and uncached, so a test can fake an older torch by monkeypatching.

Known differences between the torch versions this covers:
- object collectives (`broadcast_object_list`, `all_gather_object`) take `weights_only` in some
  versions only (absent in 2.11); without it `distributed.py` sends the objects itself as bytes
  loaded with `torch.load(weights_only=True)`, so nothing is ever unpickled either way;
- `torch.amp.GradScaler` / `torch.amp.autocast` replace the `torch.cuda.amp` names;
- Adam's `fused` (CPU support since 2.4, not on every device) and `capturable` (CUDA graphs);
- `torch.cuda.is_bf16_supported(including_emulation=...)`: older versions have no argument;
- `init_process_group(device_id=...)`.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.distributed as dist

NATIVE_BF16_MAJOR = 8  # CUDA compute capability with native bfloat16 (Ampere and newer)
DENORMAL_PROBE = 1e-39  # a float32 subnormal (the smallest normal float32 is 1.18e-38)
# --amp auto on a GPU with native bf16: bf16 only if a timing of the run's own step finds it this much faster
AMP_MIN_SPEEDUP = 1.05  # fp32 seconds per step / bf16 seconds per step
AMP_PROBE_WARMUP = 3  # untimed steps of each precision first (cuDNN algorithm choice, caches, allocator)
AMP_PROBE_STEPS = 5  # steps per timed round
AMP_PROBE_ROUNDS = 3  # rounds alternating fp32 and bf16; each precision's fastest round counts


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether `fn` takes a keyword argument `name` (False when its signature cannot be read)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def object_collectives_weights_only() -> bool:
    """Whether torch's object collectives can load what they receive with weights_only (no arbitrary unpickling)."""
    return accepts(dist.broadcast_object_list, "weights_only") and accepts(dist.all_gather_object, "weights_only")


def process_group_device_id() -> bool:
    """Whether init_process_group takes `device_id` (binds a process group to one GPU eagerly)."""
    return accepts(dist.init_process_group, "device_id")


def autocast(device_type: str, dtype: torch.dtype, **kwargs: Any) -> AbstractContextManager:
    """Autocast to `dtype` on `device_type` (kwargs: e.g. cache_enabled=False, which CUDA graph capture needs):
    torch.amp.autocast, or torch.autocast where that is missing."""
    amp_autocast = getattr(torch.amp, "autocast", None)
    return (amp_autocast or torch.autocast)(device_type, dtype=dtype, **kwargs)


def grad_scaler(device_type: str) -> Any:
    """A gradient scaler for float16 training: torch.amp.GradScaler(device), or torch.cuda.amp's on CUDA."""
    scaler = getattr(torch.amp, "GradScaler", None)
    if scaler is not None:
        return scaler(device_type)
    if device_type != "cuda":
        raise ValueError(f"--amp fp16 on {device_type} needs torch.amp.GradScaler, which this torch ({torch.__version__}) lacks: use --amp bf16 or off")
    return torch.cuda.amp.GradScaler()


def adam(params: Iterable[torch.Tensor], lr: float, *, fused: bool = False, capturable: bool = False, **kwargs: Any) -> torch.optim.Adam:
    """torch.optim.Adam with `fused` / `capturable` where this torch and the parameters' device support them.

    fused: one kernel per step (falls back to the default implementation where torch refuses it for the
    parameters' device or dtype); capturable: the step count lives on the device, as CUDA graph capture
    needs (an error if this torch cannot do that: a graph without it would be wrong, not slow)."""
    params = list(params)
    options = dict(kwargs)
    if capturable:
        if not accepts(torch.optim.Adam.__init__, "capturable"):
            raise ValueError(f"this torch ({torch.__version__}) has no capturable Adam, which CUDA graph capture needs")
        options["capturable"] = True
    if fused and accepts(torch.optim.Adam.__init__, "fused"):
        try:
            return torch.optim.Adam(params, lr=lr, fused=True, **options)
        except (RuntimeError, ValueError):  # e.g. "fused=True requires all the params to be ... of supported devices"
            pass
    return torch.optim.Adam(params, lr=lr, **options)


def is_fused(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer` runs its fused implementation."""
    return bool(optimizer.defaults.get("fused"))


def cuda_bf16_native(device: torch.device | None = None) -> bool:
    """Whether the CUDA device computes bfloat16 natively (not emulated): Ampere (compute capability 8) and newer."""
    if not torch.cuda.is_available():
        return False
    if accepts(torch.cuda.is_bf16_supported, "including_emulation"):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return torch.cuda.get_device_capability(device)[0] >= NATIVE_BF16_MAJOR


def load_weights(source: Any, map_location: Any = "cpu") -> Any:
    """torch.load of tensors and plain containers only (weights_only=True: a pickled object is refused, never run)."""
    return torch.load(source, map_location=map_location, weights_only=True)


def denormals_flushed() -> bool:
    """Whether this thread's CPU arithmetic flushes subnormal floats to zero (torch.set_flush_denormal), by trying it."""
    return float(torch.tensor([DENORMAL_PROBE]) * 1.0) == 0.0


@contextlib.contextmanager
def flushed_denormals() -> Iterator[bool]:
    """Flush subnormal floats to zero on the CPU inside the block, then restore this thread's setting; yields whether
    the CPU can (x86 with SSE3, arm64). Arithmetic on subnormals is many times slower on x86.

    The setting is per thread and copied by the threads the process starts later: set first thing in a process
    (the trainer's main), it holds for torch's intra-op threads too; their setting is not restored."""
    before = denormals_flushed()
    supported = torch.set_flush_denormal(True)
    try:
        yield supported
    finally:
        torch.set_flush_denormal(before)


@dataclass(frozen=True)
class AmpTiming:
    """Seconds per training step in float32 and under bf16 autocast, as --amp auto measured them."""

    fp32_s: float
    bf16_s: float

    @property
    def speedup(self) -> float:
        """How many times faster bf16 steps than float32 (above 1: bf16 is faster)."""
        return self.fp32_s / self.bf16_s if self.bf16_s > 0 else math.inf

    @property
    def picks_bf16(self) -> bool:
        return pick_bf16(self.fp32_s, self.bf16_s)

    def describe(self) -> str:
        """`bfloat16 (4.10 ms per step against 5.04 ms in float32, 1.23x)`: what was picked and why."""
        picked = "bfloat16" if self.picks_bf16 else "float32"
        return (f"{picked} ({self.bf16_s * 1e3:.3g} ms per step in bf16 against {self.fp32_s * 1e3:.3g} ms in float32, "
                f"{self.speedup:.2f}x; bf16 needs {AMP_MIN_SPEEDUP:.2f}x)")


def pick_bf16(fp32_s: float, bf16_s: float, min_speedup: float = AMP_MIN_SPEEDUP) -> bool:
    """Whether --amp auto trains in bf16: only if a bf16 step takes at most 1/min_speedup of a float32 one
    (at least 5 % more images per second by default); float32 on a tie, a slower bf16 or a failed timing."""
    if not (math.isfinite(fp32_s) and math.isfinite(bf16_s)) or fp32_s <= 0 or bf16_s <= 0:
        return False
    return fp32_s >= min_speedup * bf16_s


def seconds_per_step(step: Callable[[], Any], steps: int, timer: Callable[[], float] = time.perf_counter,
                     sync: Callable[[], Any] = lambda: None) -> float:
    """Mean seconds of `steps` calls of `step`, `sync` (e.g. torch.cuda.synchronize) before each reading of `timer`."""
    sync()
    t0 = timer()
    for _ in range(steps):
        step()
    sync()
    return (timer() - t0) / steps


def time_amp(fp32_step: Callable[[], Any], bf16_step: Callable[[], Any], *, timer: Callable[[], float] = time.perf_counter,
             sync: Callable[[], Any] = lambda: None, warmup: int = AMP_PROBE_WARMUP, steps: int = AMP_PROBE_STEPS,
             rounds: int = AMP_PROBE_ROUNDS) -> AmpTiming:
    """Time the same training step in float32 and under bf16 autocast: `warmup` untimed calls of each, then
    `rounds` rounds alternating the two (`steps` calls each); each precision's fastest round counts."""
    for step in (fp32_step, bf16_step):
        for _ in range(warmup):
            step()
    best = [math.inf, math.inf]
    for _ in range(rounds):
        for i, step in enumerate((fp32_step, bf16_step)):
            best[i] = min(best[i], seconds_per_step(step, steps, timer, sync))
    return AmpTiming(best[0], best[1])
