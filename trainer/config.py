"""Training hyper-parameters: one frozen dataclass, validated on construction, saved as JSON."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from models import RECON_LOSSES
from models.config import JSONConfig

LR_SCHEDULES = ("step", "cosine")
WEIGHT_DTYPES = ("float32", "float16")
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 65_536
DEFAULT_ATLAS_SIZE = 2000


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def is_int(v: Any) -> bool:
    """An int that is not a bool (JSON and argparse values alike)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite int or float that is not a bool."""
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


@dataclass(frozen=True)
class TrainConfig(JSONConfig):
    config_name: ClassVar[str] = "train config"
    dataset: str = "mnist"
    data_dir: str = "data"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "step"  # step: x lr_gamma at each milestone epoch; cosine: to 0 over the run
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    beta: float = 1.0
    beta_warmup: int = 0  # epochs of linear warm-up of beta from 0
    recon_loss: str = "bce"
    recon_weight: float = 1.0
    seed: int = 0
    atlas_size: int = DEFAULT_ATLAS_SIZE  # test images whose posteriors are stored every epoch
    keep_epochs: tuple[int, ...] = ()  # epochs whose weights are kept besides the latest
    weights_dtype: str = "float32"  # float16 halves a bundled run's size

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr_milestones", tuple(self.lr_milestones))
        object.__setattr__(self, "keep_epochs", tuple(self.keep_epochs))
        _check(isinstance(self.dataset, str) and bool(self.dataset), "dataset must be a non-empty name")
        _check(is_int(self.epochs) and 1 <= self.epochs <= MAX_EPOCHS, f"epochs must be an integer from 1 to {MAX_EPOCHS}, got {self.epochs!r}")
        _check(
            is_int(self.batch_size) and 1 <= self.batch_size <= MAX_BATCH_SIZE,
            f"batch_size must be an integer from 1 to {MAX_BATCH_SIZE}, got {self.batch_size!r}",
        )
        _check(is_number(self.lr) and 0 < self.lr <= 10, f"lr must be a number in (0, 10], got {self.lr!r}")
        _check(self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        _check(
            all(is_int(m) and m >= 1 for m in self.lr_milestones) and list(self.lr_milestones) == sorted(set(self.lr_milestones)),
            f"lr_milestones must be increasing positive epochs, got {list(self.lr_milestones)!r}",
        )
        _check(is_number(self.lr_gamma) and 0 < self.lr_gamma <= 1, f"lr_gamma must be in (0, 1], got {self.lr_gamma!r}")
        _check(is_number(self.beta) and 0 <= self.beta <= 1000, f"beta must be a number from 0 to 1000, got {self.beta!r}")
        _check(is_int(self.beta_warmup) and 0 <= self.beta_warmup <= MAX_EPOCHS, f"beta_warmup must be a non-negative integer of epochs, got {self.beta_warmup!r}")
        _check(self.recon_loss in RECON_LOSSES, f"recon_loss must be one of {', '.join(RECON_LOSSES)}, got {self.recon_loss!r}")
        _check(is_number(self.recon_weight) and 0 <= self.recon_weight <= 1000, f"recon_weight must be a number from 0 to 1000, got {self.recon_weight!r}")
        _check(self.recon_weight > 0 or self.beta > 0, "recon_weight and beta cannot both be 0: nothing would be trained")
        _check(is_int(self.seed) and 0 <= self.seed < 2**63, f"seed must be a non-negative integer, got {self.seed!r}")
        _check(is_int(self.atlas_size) and 1 <= self.atlas_size <= 100_000, f"atlas_size must be an integer from 1 to 100000, got {self.atlas_size!r}")
        _check(all(is_int(e) and e >= 0 for e in self.keep_epochs), f"keep_epochs must be non-negative epochs, got {list(self.keep_epochs)!r}")
        _check(self.weights_dtype in WEIGHT_DTYPES, f"weights_dtype must be one of {', '.join(WEIGHT_DTYPES)}, got {self.weights_dtype!r}")

    def lr_at(self, epoch: int, progress: float) -> float:
        """Learning rate during 0-based `epoch`, `progress` in [0, 1) through it."""
        if self.lr_schedule == "cosine":
            t = (epoch + progress) / self.epochs
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
        passed = sum(1 for m in self.lr_milestones if epoch >= m)
        return self.lr * self.lr_gamma**passed

    def beta_at(self, epoch: int, progress: float) -> float:
        """beta during 0-based `epoch`: linear from 0 over `beta_warmup` epochs, then constant."""
        if self.beta_warmup == 0:
            return self.beta
        return self.beta * min(1.0, (epoch + progress) / self.beta_warmup)
