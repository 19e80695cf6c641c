"""The training step captured once in a CUDA graph and replayed (--cuda-graph).

At the batch sizes these models train with, an eager step on a GPU is bound by kernel launches, not arithmetic:
the step launches a few hundred small kernels. A CUDA graph records those launches once and replays them with
one call. `GraphedStep` wraps the trainer's single-process step (forward, loss, non-finite flag, backward, Adam):

- the first WARMUP_STEPS full batches run eagerly on a side stream (they are real training steps: Adam's state
  and cuDNN's choices must exist before capture, as torch's CUDA-graph notes require);
- the next full batch is captured (capturing runs nothing) and every full batch from then on is copied into the
  static input buffers the graph reads, the graph is replayed, and the loss terms are copied out of it;
- the schedule lives on the device: the learning rate is a tensor in Adam's param group and beta a tensor the
  loss reads, both filled before each step (a fill is a launch, not a host sync);
- a short last batch (another shape) takes the trainer's eager path with the same optimiser.

On the CPU nothing is captured (`plan` says why); tests drive the same wrapper with `capture_eagerly`, which
replays by calling the step on the static buffers, so the buffer, schedule and short-batch logic is checked on
any machine and the capture itself on a CUDA machine.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from models import LossTerms

GRAPH_CHOICES = ("auto", "on", "off")
WARMUP_STEPS = 3  # eager full-batch steps before the capture

# step(x, eps, beta) -> the batch's loss terms: forward, loss with `beta` (a 0-dim device tensor), backward, optimiser
Step = Callable[[torch.Tensor, "torch.Tensor | None", torch.Tensor], LossTerms]
Capture = Callable[[Callable[[], None]], Callable[[], None]]  # record a thunk, return what replays it


@dataclass(frozen=True)
class GraphPlan:
    """Whether this run's full-batch steps are captured, and why (config.json's "cuda_graph")."""

    requested: str
    used: bool
    reason: str

    def info(self) -> dict[str, Any]:
        return {"requested": self.requested, "used": self.used, "reason": self.reason}

    def note(self) -> str:
        return f"--cuda-graph {self.requested}: {'on' if self.used else 'off'} ({self.reason})"


def plan(requested: str, device: torch.device, *, processes: int, fp16_scaler: bool, sharp: bool, compiled: bool,
         deterministic: bool) -> GraphPlan:
    """Decide --cuda-graph. auto: on for a single CUDA process training the classic objective in float32 or bf16;
    off on the CPU, with several processes (DDP's gradient hooks), fp16's gradient scaler (it reads its inf check on
    the host), the sharpness losses (the discriminator steps in between), --compile, and --deterministic (its warm-up
    steps are eager and a resumed run's fall elsewhere: eager and replayed kernels have not been shown bitwise equal).
    on: the same, but a reason that rules it out is an error (ValueError, one line); off: never."""
    if requested not in GRAPH_CHOICES:
        raise ValueError(f"--cuda-graph {requested!r}: choose one of {', '.join(GRAPH_CHOICES)}")
    if requested == "off":
        return GraphPlan(requested, False, "asked for off")
    if device.type != "cuda":
        if requested == "on":
            raise ValueError(f"--cuda-graph on needs a CUDA device (this run trains on {device.type}): use --cuda-graph auto or off")
        return GraphPlan(requested, False, f"not on a CUDA device ({device.type})")
    blockers = [why for rules_out, why in (
        (processes > 1, f"{processes} processes (DDP)"),
        (fp16_scaler, "--amp fp16's gradient scaler"),
        (sharp, "the sharpness losses"),
        (compiled, "--compile"),
    ) if rules_out]
    if blockers:
        if requested == "on":
            raise ValueError(f"--cuda-graph on cannot capture this run's step ({', '.join(blockers)}): use --cuda-graph auto or off")
        return GraphPlan(requested, False, "eager with " + ", ".join(blockers))
    if deterministic and requested == "auto":
        return GraphPlan(requested, False, "--deterministic keeps eager steps (add --cuda-graph on to capture anyway)")
    return GraphPlan(requested, True, f"full batches replayed after {WARMUP_STEPS} eager warm-up steps")


def capture_cuda(thunk: Callable[[], None]) -> Callable[[], None]:
    """Record `thunk`'s kernels in a CUDA graph (nothing runs) and return its replay."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        thunk()
    return graph.replay


def capture_eagerly(thunk: Callable[[], None]) -> Callable[[], None]:
    """The stand-in for tests on any device: 'replaying' runs the thunk on the static buffers."""
    return thunk


class GraphedStep:
    """Full-batch training steps: WARMUP_STEPS eager, then one capture, then replays (see the module's docstring).

    Owns the learning rate and beta as device tensors: the optimiser's param groups hold `lr` from construction on,
    so every step, eager or replayed, reads the same values; call set_lr before each step."""

    def __init__(self, step: Step, optimizer: torch.optim.Optimizer, device: torch.device, *,
                 capture: Capture | None = None, warmup: int = WARMUP_STEPS):
        self.step, self.optimizer, self.device, self.warmup_left = step, optimizer, device, warmup
        self.capture = capture or (capture_cuda if device.type == "cuda" else capture_eagerly)
        lr = float(optimizer.param_groups[0]["lr"])
        # the fused CUDA kernel reads a float32 lr; elsewhere a float64 tensor is the float lr exactly
        self.lr = torch.tensor(lr, dtype=torch.float32 if device.type == "cuda" else torch.float64, device=device)
        self.beta = torch.zeros((), device=device)
        for group in optimizer.param_groups:
            group["lr"] = self.lr
            group["capturable"] = True  # step counts already live on the device (fused); Adam checks this flag under capture
        self.static_x: torch.Tensor | None = None
        self.static_eps: torch.Tensor | None = None
        self.static_terms = torch.zeros(3, device=device)  # (loss, recon, kl) of the last replay
        self.replay: Callable[[], None] | None = None
        self.side = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.replays = 0

    @property
    def captured(self) -> bool:
        return self.replay is not None

    def set_lr(self, lr: float) -> None:
        self.lr.fill_(lr)

    def __call__(self, x: torch.Tensor, eps: torch.Tensor | None, beta: float) -> LossTerms:
        """One step on a full batch x (B, C, H, W) with noise eps (B, D) (None: an AE). The terms returned are copies."""
        self.beta.fill_(beta)
        if self.replay is None and self.warmup_left > 0:
            self.warmup_left -= 1
            with self._side_stream():
                return self.step(x, eps, self.beta)
        if self.replay is None:
            self.static_x = x.clone()  # (B, C, H, W), the batch's memory format kept
            self.static_eps = None if eps is None else eps.clone()  # (B, D)
            self.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates the gradients from the graph's pool
            self.replay = self.capture(self._static_step)
        assert self.static_x is not None
        self.static_x.copy_(x)
        if self.static_eps is not None and eps is not None:
            self.static_eps.copy_(eps)
        self.replay()
        self.replays += 1
        return LossTerms(*self.static_terms.clone().unbind())

    def _static_step(self) -> None:
        assert self.static_x is not None
        terms = self.step(self.static_x, self.static_eps, self.beta)
        with torch.no_grad():
            self.static_terms.copy_(torch.stack([t.detach() for t in terms]))

    @contextlib.contextmanager
    def _side_stream(self) -> Iterator[None]:
        if self.side is None:
            yield
            return
        self.side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.side):
            yield
        torch.cuda.current_stream(self.device).wait_stream(self.side)
