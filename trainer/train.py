"""The training loop: small `train_step` / `evaluate` pieces, a `fit` that saves a run folder each epoch.

Determinism: the shuffling and the reparameterisation noise of epoch e come from a generator
seeded by (seed, e), and the LR and beta schedules are functions of (epoch, step), so a run
resumed at an epoch boundary continues exactly as if it had never stopped.

Several processes (torchrun, see distributed.py) draw the same permutation and the noise of the
whole global batch from that generator, each process taking its slice; gradients are exchanged by
DistributedDataParallel, so N processes follow the one-process run up to floating-point rounding,
and a run may be resumed with another number of processes.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from models import VAE, DiagonalGaussian, LossTerms, ModelConfig, build_model, to_float_images, vae_loss
from models import loss as model_loss

from . import adversarial, binarize, compat, distributed, metrics, projections
from . import cuda_graph as cuda_graph_module
from .config import DEFAULT_MIN_IMPROVEMENT, TrainConfig
from .data import ImageData
from .distributed import DistContext, all_reduce_sum, shard_bounds
from .errors import first_line, one_line
from .lpips import PerceptualDistance, load_optional
from .paths import PROJECT_ROOT
from .runs import MANIFEST_FILE, RunError, RunLock, RunWriter, discard_after, latent_snapshots, load_run, write_status

log = logging.getLogger(__name__)
EVAL_BATCH_SIZE = 1000
# CPU test pass: the model runs on pieces of each chunk this big and the outputs are joined (the same numbers:
# every model maps each image alone); the conv's activations of 250 images stay in cache, ~1.5x faster than 1,000.
EVAL_PIECE_ROWS = 250
EVAL_SEED_OFFSET = 7919  # evaluation noise is seeded apart from training noise
VAL_SEED_OFFSET = 104_729  # the validation split and its posterior noise are seeded apart from both
VAL_MIN_IMPROVEMENT = DEFAULT_MIN_IMPROVEMENT  # nats per image: a smaller fall of the validation negative ELBO is no improvement (early stopping)
EVAL_SUMS = ("loss", "recon", "kl", "mse", "psnr", "ssim")  # test metrics summed over images, then averaged
STOP_SLOT = len(LossTerms._fields)  # index of the stop flag after the loss terms in a step's all-reduce
STATUS_EVERY_S = 2.0  # status.json's step counter: first written this far into an epoch, then at most this often
PROGRESS_LINE_EVERY_S = 10.0  # --progress json: a progress line on stderr at most this often
DEVICE_DATA_SHARE = 0.5  # the data sets live on the GPU if they take at most this share of its free memory
# Training steps between host reads of the device-side non-finite flag (and, with several processes, of the stop
# vote): the only host synchronisations of a training epoch besides its end. See Trainer.train_epoch.
NONFINITE_CHECK_STEPS = 50
CUBLAS_WORKSPACE = ":4096:8"  # the cuBLAS workspace setting --deterministic sets (NVIDIA's reproducibility notes)
DETERMINISTIC_CUBLAS = (":4096:8", ":16:8")  # either makes cuBLAS deterministic


class TrainingFailed(Exception):
    """The run stopped as failed (non-finite loss, unwritable folder); the message says why."""


class ProcessLost(TrainingFailed):
    """A collective failed: another process of a multi-process job died or broke off."""


# Errors of rank 0's run-folder work that every process re-raises (see distributed.share_main_error).
SHARED_ERRORS: tuple[type[BaseException], ...] = (RunError, TrainingFailed, OSError)


def code_version() -> str:
    """The short git commit of the code that trains, or 'unknown'."""
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA GPU is available: use --device cpu or auto")
    return device


def prepare_cublas() -> bool:
    """Set CUBLAS_WORKSPACE_CONFIG for --deterministic unless it already holds a deterministic value; returns whether
    that happened in time (before CUDA started in this process; cuBLAS reads the setting when it first starts).
    The CLI calls this first thing when the run is deterministic; the Trainer calls it again (use_deterministic)."""
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") in DETERMINISTIC_CUBLAS:
        return True
    late = torch.cuda.is_initialized()
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    return not late


def use_deterministic() -> dict[str, Any]:
    """--deterministic: deterministic algorithms (an operation without one raises), cuDNN without benchmarking and
    with its deterministic kernels, and a deterministic cuBLAS workspace; for the whole process (which trains one run),
    left on. Returns what config.json records; warns in one line if CUDA started before the cuBLAS setting."""
    in_time = prepare_cublas()
    if not in_time:
        log.warning("--deterministic: CUDA had started before CUBLAS_WORKSPACE_CONFIG=%s was set, so cuBLAS may not use it; "
                    "for bitwise-reproducible runs set CUBLAS_WORKSPACE_CONFIG=%s in the environment", CUBLAS_WORKSPACE, CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    return {"algorithms": torch.are_deterministic_algorithms_enabled(), "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cublas_workspace_config": os.environ["CUBLAS_WORKSPACE_CONFIG"], "cublas_set_in_time": in_time}


def epoch_generator(seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + epoch) % (2**63))
    return g


def atlas_indices(n_test: int, atlas_size: int, seed: int) -> np.ndarray:
    """The fixed test images whose posteriors the run records (all of them if there are few)."""
    if n_test <= atlas_size:
        return np.arange(n_test)
    return np.sort(np.random.default_rng(seed).choice(n_test, atlas_size, replace=False))


def validation_split(n_train: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of a training set of `n_train` images: `val_size` rows held out,
    a fixed choice seeded by `seed` (both sorted, disjoint, together every row)."""
    if not 0 <= val_size < n_train:
        raise TrainingFailed(f"--val-size {val_size} leaves no training images: the training set has {n_train}; give a smaller --val-size")
    held = np.zeros(n_train, dtype=bool)
    held[np.random.default_rng(seed + VAL_SEED_OFFSET).choice(n_train, val_size, replace=False)] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def best_validation(history: list[dict[str, Any]], min_improvement: float = VAL_MIN_IMPROVEMENT) -> tuple[int, float] | None:
    """(epoch, value) of the history's best `val_neg_elbo`: the last epoch that improved on every earlier one
    by more than `min_improvement` nats (TrainConfig.min_improvement); None without a validation score."""
    best: tuple[int, float] | None = None
    for row in history:
        value = row.get("val_neg_elbo")
        if value is not None and (best is None or value < best[1] - min_improvement):
            best = (row["epoch"], value)
    return best


def early_stop_message(history: list[dict[str, Any]], patience: int, min_improvement: float = VAL_MIN_IMPROVEMENT) -> str | None:
    """Why training stops early after the history's last epoch (None: it goes on). A function of the
    history (and the config's patience and min_improvement) alone, so a resumed run stops where the uninterrupted one did."""
    best = best_validation(history, min_improvement) if patience > 0 else None
    if best is None:
        return None
    epoch, last = best[0], history[-1]["epoch"]
    if last - epoch < patience:
        return None
    return (f"stopped early after epoch {last}: the validation negative ELBO has not improved (by over {min_improvement:g} nats) for {last - epoch} epochs "
            f"(patience {patience}); the best, {best[1]:.2f}, was at epoch {epoch}")


@dataclass
class EvalResult:
    loss: float
    recon: float
    kl: float
    mse: float
    psnr: float
    ssim: float
    active_units: int  # KL > 0.01 nats (an AE: code variance > 0.01), see metrics.active_units
    kl_per_dim: np.ndarray  # (D,) mean KL per latent dimension
    mean: torch.Tensor  # (M, D) posterior means of the whole test set
    logvar: torch.Tensor | None  # (M, D), None for an AE
    neg_elbo: float = math.nan  # recon + kl, unweighted (beta = 1): the bound; `loss` is the objective
    psnr_set: float = math.nan  # PSNR of the whole set (of the mean MSE); `psnr` is the mean per-image PSNR
    active_units_burda: int = 0  # Burda et al.: variance of the posterior mean over the test set > 0.01
    lpips: float | None = None  # mean LPIPS of the mode's reconstructions, only with --lpips-weights
    lpips_name: str | None = None  # what `lpips` is (LPIPS (alex), or the uniform-weights distance)


class ReparamNet(nn.Module):
    """The training forward with explicit noise, (x, eps) -> (x_hat, mean, logvar): what DDP and compile wrap.

    The noise comes in from outside so that every process can draw the whole global batch's noise
    from the epoch generator and use its own slice; logvar is None for an autoencoder.
    """

    def __init__(self, vae: VAE):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        posterior = self.vae.encode(x)  # over (B, D)
        z = posterior.sample(eps=eps)  # (B, D); the mean for an autoencoder
        return self.vae.decode(z), posterior.mean, None if posterior.deterministic else posterior.logvar


def _float_posterior(mean: torch.Tensor, logvar: torch.Tensor | None) -> DiagonalGaussian:
    """The posterior in float32 for the loss (a no-op without autocast)."""
    return DiagonalGaussian(mean.float(), None if logvar is None else logvar.float())


def _to_cpu(obj: Any) -> Any:
    """A copy of a (nested) state dict with every tensor on the CPU."""
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def encode_in_pieces(model: VAE, x: torch.Tensor, rows: int | None) -> DiagonalGaussian:
    """model.encode(x) run on pieces of `rows` images (None: at once), the posteriors joined, (B, D)."""
    if rows is None or len(x) <= rows:
        return model.encode(x)
    pieces = [model.encode(p) for p in x.split(rows)]
    mean = torch.cat([p.mean for p in pieces])
    return DiagonalGaussian(mean, None if pieces[0].deterministic else torch.cat([p.logvar for p in pieces]))


def decode_in_pieces(model: VAE, z: torch.Tensor, rows: int | None) -> torch.Tensor:
    """model.decode(z) run on pieces of `rows` latents (None: at once), the logits joined, (B, C, H, W)."""
    if rows is None or len(z) <= rows:
        return model.decode(z)
    return torch.cat([model.decode(p) for p in z.split(rows)])


def _ssim_window(like: torch.Tensor) -> torch.Tensor:
    """The 1-D Gaussian window (SSIM_WINDOW,) of metrics.ssim_per_image, built as pytorch-msssim builds it."""
    coords = torch.arange(metrics.SSIM_WINDOW, dtype=torch.float)
    coords -= metrics.SSIM_WINDOW // 2
    g = torch.exp(-(coords**2) / (2 * metrics.SSIM_SIGMA**2))
    g /= g.sum()
    return g.to(like.device, like.dtype)


def ssim_per_image(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """metrics.ssim_per_image (B,) with the batch laid out as channels: the same operations on the same numbers
    (bitwise equal on the CPU), about 4x faster there, as one depthwise convolution over B * C channels runs
    far faster than B images of C channels. Images smaller than the window go to metrics.ssim_per_image."""
    b, c, h, w = x.shape
    size = metrics.SSIM_WINDOW
    if h < size or w < size:
        return metrics.ssim_per_image(x_hat, x)
    X, Y = x_hat.float().reshape(1, b * c, h, w), x.float().reshape(1, b * c, h, w)  # (1, B*C, H, W)
    g = _ssim_window(X)
    along_h, along_w = g.view(1, 1, size, 1).repeat(b * c, 1, 1, 1), g.view(1, 1, 1, size).repeat(b * c, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # (1, B*C, H - size + 1, W - size + 1): valid filtering, no padding
        return nn.functional.conv2d(nn.functional.conv2d(t, along_h, groups=b * c), along_w, groups=b * c)

    c1, c2 = (metrics.SSIM_K[0] * metrics.DATA_RANGE) ** 2, (metrics.SSIM_K[1] * metrics.DATA_RANGE) ** 2
    mu1, mu2 = blur(X), blur(Y)
    mu1_sq, mu2_sq, mu1_mu2 = mu1.pow(2), mu2.pow(2), mu1 * mu2
    sigma1_sq, sigma2_sq, sigma12 = blur(X * X) - mu1_sq, blur(Y * Y) - mu2_sq, blur(X * Y) - mu1_mu2
    cs_map = (2 * sigma12 + c2) / (sigma1_sq + sigma2_sq + c2)
    ssim_map = ((2 * mu1_mu2 + c1) / (mu1_sq + mu2_sq + c1)) * cs_map
    return torch.flatten(ssim_map, 2).mean(-1).view(b, c).mean(1)


class Trainer:
    def __init__(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig,
        data: ImageData,
        device: torch.device | str = "cpu",
        *,
        dist: DistContext | None = None,
        amp: str = "off",
        compile_model: bool = False,
        cuda_graph: str = "auto",
    ):
        """dist: this process's place in a torchrun job (None: one process); amp: see distributed.resolve_amp and, for
        'auto', settle_amp; compile_model: torch.compile the training forward; cuda_graph: capture full-batch steps
        in a CUDA graph (auto, on, off: cuda_graph.plan; ValueError for 'on' where it cannot)."""
        self.model_config, self.config, self.data = model_config, train_config, data
        self.device = torch.device(device)
        self.dist = dist or distributed.SINGLE
        # --deterministic, before anything runs on the device (process-wide, see use_deterministic)
        self.determinism: dict[str, Any] | None = use_deterministic() if train_config.deterministic == "on" else None
        self.amp_dtype = distributed.resolve_amp(amp, self.device)  # for 'auto', bf16 is only a candidate until settle_amp
        self.amp_pending = amp == "auto"  # settle_amp has yet to decide
        self.amp_auto: dict[str, Any] | None = None  # what --amp auto decided and why (config.json's "amp_auto")
        self.compiled = compile_model
        self.channels_last = self.device.type == "cuda" and model_config.arch != "mlp"
        torch.manual_seed(train_config.seed)
        self.model: VAE = build_model(model_config).to(self.device)  # the bare model: what is saved, never a wrapper
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = compat.adam(self.model.parameters(), lr=train_config.lr, fused=True)
        self.scaler = compat.grad_scaler(self.device.type) if self.amp_dtype == torch.float16 else None  # never for 'auto'
        # Non-finite losses are flagged on the device, read on the host every NONFINITE_CHECK_STEPS steps (check_finite).
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)  # a step since the last reset had one
        self.bad_terms = torch.zeros(4, device=self.device)  # (loss, recon, kl, objective) of the first such step
        self.net: nn.Module = self._training_net()
        self.binarize = binarize.is_dynamic(train_config.binarize)  # training pixels resampled as Bernoulli draws every step
        test_x = binarize.eval_images(data.test_x, train_config.binarize)  # binarised once by a fixed seed, or as it is
        self.train_x, self.test_x = self._place(data.train_x, test_x)  # (N, C, H, W) uint8 stays uint8 in memory
        self.perceptual: PerceptualDistance | None = load_optional(train_config.lpips_weights)  # LPIPSError for a bad file
        if self.perceptual is not None:
            self.perceptual.to(self.device)
        # The losses for sharpness (--disc-weight, --perceptual-weight): None keeps the classic objective, untouched.
        self.sharp = adversarial.SharpLosses(train_config, self.model, self.device) if adversarial.wanted(train_config) else None
        if self.sharp is not None and self.sharp.disc is not None and (self.dist.enabled or self.scaler is not None):
            raise ValueError("--disc-weight trains in one process without fp16's gradient scaler: use one process and --amp off, bf16 or auto")
        self.global_step = 0  # optimiser steps taken before the current one (the discriminator's --disc-start counts them)
        self.val_x = self.train_x[:0]  # (V, C, H, W): training images held out for early stopping (--val-size)
        if train_config.val_size:
            keep, held = validation_split(len(self.train_x), train_config.val_size, train_config.seed)
            self.train_x, self.val_x = self.train_x[torch.from_numpy(keep)], self.train_x[torch.from_numpy(held)]
            if self.binarize:  # scored like the test set: binary images drawn once, by the fixed seed
                self.val_x = binarize.binarized_test_set(self.val_x).to(self.val_x.device)
        self.steps_per_epoch = math.ceil(len(self.train_x) / train_config.batch_size)
        self.graph_plan = cuda_graph_module.plan(
            cuda_graph, self.device, processes=self.dist.world_size, fp16_scaler=self.scaler is not None,
            sharp=self.sharp is not None, compiled=compile_model, deterministic=self.determinism is not None)
        self.graph: cuda_graph_module.GraphedStep | None = None  # made at the first full batch when graph_plan.used
        self.epoch = 0  # completed epochs
        self.history: list[dict[str, Any]] = []
        self.atlas_idx = atlas_indices(len(self.test_x), train_config.atlas_size, train_config.seed)
        self.latent_epochs: list[int] = []
        self.latent_means: list[np.ndarray] = []
        self.latent_logvars: list[np.ndarray] = []

    # ------------------------------------------------------------ device setup

    def _training_net(self) -> nn.Module:
        """ReparamNet over the model, compiled if asked, inside DDP when there are several processes."""
        net: nn.Module = ReparamNet(self.model)
        if self.compiled:
            net.compile()  # compile the inner module, then wrap: the order torch.compile's docs advise for DDP
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DistributedDataParallel(net, device_ids=ids)  # broadcasts rank 0's weights (the model has no buffers)
        return net

    def _place(self, train_x: torch.Tensor, test_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The data sets on the device if they fit there, else in pinned host memory (copied per batch)."""
        if self.device.type != "cuda":
            return train_x.to(self.device), test_x.to(self.device)
        free, _ = torch.cuda.mem_get_info(self.device)
        if train_x.nbytes + test_x.nbytes <= DEVICE_DATA_SHARE * free:
            return train_x.to(self.device), test_x.to(self.device)
        if self.data.cache_file is not None:  # memory-mapped: pinning would copy the whole set; images() pins per batch
            return train_x, test_x
        return train_x.pin_memory(), test_x.pin_memory()

    def setup_info(self) -> dict[str, Any]:
        """How this run is computed, for config.json (the run folder itself does not depend on it). Settles --amp auto."""
        self.settle_amp()
        return {
            "world_size": self.dist.world_size,
            "backend": self.dist.backend,
            "precision": distributed.precision_name(self.amp_dtype),
            **({"amp_auto": self.amp_auto} if self.amp_auto is not None else {}),
            **({"deterministic": self.determinism} if self.determinism is not None else {}),
            "compile": self.compiled,
            "cuda_graph": self.graph_plan.info(),
            "channels_last": self.channels_last,
            "data_on_device": self.train_x.device.type == self.device.type,
            **({"validation": self.validation_info()} if len(self.val_x) else {}),
            **(self.sharp.info() if self.sharp is not None else {}),
        }

    def validation_info(self) -> dict[str, Any]:
        """The recorded validation split: its size, seed and the held-out training rows' SHA-256."""
        _, held = validation_split(len(self.train_x) + len(self.val_x), self.config.val_size, self.config.seed)
        digest = hashlib.sha256(held.astype("<i8").tobytes()).hexdigest()
        return {"images": len(held), "seed": self.config.seed + VAL_SEED_OFFSET, "rows_sha256": digest, "first_rows": held[:10].tolist()}

    def autocast(self) -> AbstractContextManager:
        """Mixed precision for forward passes when --amp chose a dtype, else nothing."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        if self.graph_plan.used:  # no cast cache: a captured graph must not keep casts made outside it
            return compat.autocast(self.device.type, self.amp_dtype, cache_enabled=False)
        return compat.autocast(self.device.type, self.amp_dtype)

    # ------------------------------------------------------------ --amp auto

    def settle_amp(self, saved: dict[str, Any] | None = None) -> None:
        """Decide --amp auto, once (later calls do nothing). float32 on the CPU (bf16 autocast is not timed there), on a
        GPU without native bf16, and with --deterministic (untimed, so a resumed run computes as the straight one);
        `saved` (a resumed run's config.json) keeps the precision the run has trained in; else bf16 only if timing a
        few steps of this model at this batch size finds it compat.AMP_MIN_SPEEDUP times faster (time_amp)."""
        if not self.amp_pending:
            return
        self.amp_pending = False
        candidate, self.amp_dtype = self.amp_dtype, None
        if candidate is None:
            reason = "off on the CPU, where bf16 is not timed" if self.device.type != "cuda" else "this GPU has no native bf16"
            self.amp_auto = {"picked": "float32", "reason": reason}
        elif self.config.deterministic == "on":
            self.amp_auto = {"picked": "float32", "reason": "--deterministic: not timed, so that a resumed run computes as the straight one"}
        elif saved is not None:  # never timed here: in a multi-process job only rank 0 restores (timing is collective)
            self.amp_dtype = candidate if saved.get("precision") == distributed.precision_name(candidate) else None
            kept = saved.get("amp_auto") if isinstance(saved.get("amp_auto"), dict) else {}
            self.amp_auto = {**kept, "picked": distributed.precision_name(self.amp_dtype), "reason": "kept from the run's config.json (resumed)"}
        else:
            timing = self.time_amp()
            self.amp_dtype = candidate if timing.picks_bf16 else None
            self.amp_auto = {
                "picked": distributed.precision_name(self.amp_dtype), "reason": f"timed: {timing.describe()}",
                "fp32_ms_per_step": round(timing.fp32_s * 1e3, 4), "bf16_ms_per_step": round(timing.bf16_s * 1e3, 4),
                "min_speedup": compat.AMP_MIN_SPEEDUP, "batch_size": self.config.batch_size,
            }

    def amp_note(self) -> str | None:
        """The line that says what --amp auto picked and why (None unless the run asked for auto and it is settled)."""
        if self.amp_auto is None:
            return None
        return f"--amp auto: {self.amp_auto['picked']} ({self.amp_auto['reason']})"

    def time_amp(self, timer: Callable[[], float] = time.perf_counter) -> compat.AmpTiming:
        """Seconds per training step of this model on this process's share of one batch, in float32 and under bf16
        autocast (compat.time_amp), on copies of the model and optimiser (the run's own and its random streams are
        untouched). With several processes the mean of their timings, so that every process decides alike."""
        lo, hi = shard_bounds(min(self.config.batch_size, len(self.train_x)), self.dist.rank, self.dist.world_size)
        x = self.images(self.train_x, slice(0, max(1, hi - lo)))  # (b, C, H, W): real images, the run's slice size
        g = torch.Generator(device=self.device)
        g.manual_seed(self.config.seed)
        eps = self.noise(len(x), g)
        steps = [self._timed_step(x, eps, dtype) for dtype in (None, torch.bfloat16)]
        sync = (lambda: torch.cuda.synchronize(self.device)) if self.device.type == "cuda" else (lambda: None)
        timing = compat.time_amp(*steps, timer=timer, sync=sync)
        if self.dist.enabled:
            both = torch.tensor([timing.fp32_s, timing.bf16_s], dtype=torch.float64, device=self.device)
            timing = compat.AmpTiming(*(all_reduce_sum(self.dist, both) / self.dist.world_size).tolist())
        return timing

    def _timed_step(self, x: torch.Tensor, eps: torch.Tensor | None, dtype: torch.dtype | None) -> Callable[[], None]:
        """One training step (forward, loss, backward, Adam) of a copy of the model, under autocast to `dtype` (None:
        float32). The loss is models.loss.vae_loss itself, not this module's name for it, which fault tests replace."""
        model = copy.deepcopy(self.model)
        net, cfg = ReparamNet(model), self.config
        optimizer = compat.adam(model.parameters(), lr=cfg.lr, fused=True)

        def step() -> None:
            with contextlib.nullcontext() if dtype is None else compat.autocast(self.device.type, dtype):
                x_hat, mean, logvar = net(x, eps)
            terms = model_loss.vae_loss(x, x_hat, _float_posterior(mean, logvar), recon_loss=cfg.recon_loss, beta=cfg.beta, recon_weight=cfg.recon_weight)
            optimizer.zero_grad(set_to_none=True)
            terms.loss.backward()
            optimizer.step()

        return step

    def images(self, source: torch.Tensor, index: torch.Tensor | slice) -> torch.Tensor:
        """Rows `index` of uint8 images (N, C, H, W) as float32 in [0, 1] on the device, (B, C, H, W)."""
        xb = source[index]
        if xb.device.type != self.device.type:  # host-resident data: pinned staging buffer, asynchronous copy
            if not xb.is_pinned():
                xb = xb.pin_memory()
            xb = xb.to(self.device, non_blocking=True)
        x = to_float_images(xb)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def noise(self, n: int, generator: torch.Generator | None) -> torch.Tensor | None:
        """Reparameterisation noise (n, D) from `generator`, as DiagonalGaussian.sample draws it; None for an AE."""
        if self.model_config.kind == "ae":
            return None
        return torch.randn((n, self.model_config.latent_dim), generator=generator, device=self.device)

    # ------------------------------------------------------------ steps

    def set_schedule(self, epoch: int, step: int) -> tuple[float, float]:
        progress = step / self.steps_per_epoch
        lr, beta = self.config.lr_at(epoch, progress), self.config.beta_at(epoch, progress)
        if self.graph is not None:
            self.graph.set_lr(lr)  # the param groups hold the graph's lr tensor
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        return lr, beta

    def train_step(
        self,
        x: torch.Tensor,
        beta: float,
        generator: torch.Generator | None = None,
        *,
        eps: torch.Tensor | None = None,
        global_batch: int | None = None,
        stop: bool | None = None,
    ) -> LossTerms | None:
        """One optimiser step on a batch x (B, C, H, W) in [0, 1]; eps (B, D) is drawn from `generator` if not given.
        Returns the batch's loss terms as device tensors.

        With a CUDA graph (graph_plan.used) a full batch is a replay of the captured step (cuda_graph.GraphedStep).
        No host synchronisation (bar fp16's gradient scaler, which reads its own inf check): a non-finite loss is not
        raised here but flagged on the device (`nonfinite`, with the first such step's terms in `bad_terms`), and the
        optimiser steps on; call check_finite() to raise it (train_epoch does every NONFINITE_CHECK_STEPS steps).

        With several processes, x and eps are this process's slice of a global batch of `global_batch`
        images: the returned terms are the global batch's, the gradient is the one-process gradient of
        the whole global batch. `stop` is this process's stop vote, read back (a host sync) only when given:
        the step returns None without stepping if any process voted True.
        """
        self.settle_amp()  # --amp auto: decided before the first step (a no-op after)
        b = len(x)
        n = b if global_batch is None else global_batch
        if eps is None:
            eps = self.noise(b, generator)
        if self.graph_plan.used and b == self.config.batch_size:
            try:
                if self.graph is None:
                    self.graph = cuda_graph_module.GraphedStep(self._plain_step, self.optimizer, self.device)
                return self.graph(x, eps, beta)
            except RuntimeError as e:  # --cuda-graph auto: a torch that cannot capture this step trains eagerly instead
                if self.graph_plan.requested == "on" or (self.graph is not None and self.graph.replays):
                    raise
                self._drop_graph(e)
        if not self.dist.enabled and self.scaler is None and self.sharp is None:  # (with a graph: the short last batch)
            return self._plain_step(x, eps, beta)
        if b == 0:
            # This process's slice of a short last batch is empty. It must still join the gradient
            # exchange: one blank image stands in with weight 0 (a real size keeps torch.compile happy).
            x = x.new_zeros((1, *x.shape[1:]))
            eps = None if eps is None else eps.new_zeros((1, eps.shape[1]))
        self.net.train()
        with self.autocast():
            x_hat, mean, logvar = self.net(x, eps)
        if b:
            terms = vae_loss(x, x_hat, _float_posterior(mean, logvar), recon_loss=self.config.recon_loss, beta=beta, recon_weight=self.config.recon_weight)
            objective = terms.loss
            if self.sharp is not None and self.sharp.active:  # + perceptual and adversarial terms (trainer/adversarial.py)
                objective = objective + self.sharp.generator_terms(x, x_hat, self.config.recon_weight * terms.recon, self.global_step)
        else:
            zero = x_hat.new_zeros((), dtype=torch.float32)
            terms, objective = LossTerms(zero, zero, zero), x_hat.float().sum() * 0.0
        if self.dist.enabled:
            local = torch.stack([t.detach() for t in terms]) * b  # (3,) this slice's sums
            vote = local.new_full((1,), float(bool(stop)))  # a fill on the device, not a copy from the host
            shared = all_reduce_sum(self.dist, torch.cat([local, vote]))
            if stop is not None and shared[STOP_SLOT] > 0:  # the host reads the votes only when asked to
                return None
            terms = LossTerms(*(shared[:STOP_SLOT] / n))
            objective = objective * (b * self.dist.world_size / n)  # DDP averages over processes: weight by this slice's share
        self._flag_nonfinite(terms, objective)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            objective.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(objective).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        if self.sharp is not None and b:
            self.sharp.discriminator_step(x, x_hat, self.global_step, self.optimizer.param_groups[0]["lr"])
        return terms

    def _drop_graph(self, error: BaseException) -> None:
        """Back to eager steps after the warm-up or capture failed (nothing was replayed, so no step was lost): the
        plain float LR in Adam's groups, and a warning in one line."""
        lr = float(self.graph.lr) if self.graph is not None else self.config.lr
        for group in self.optimizer.param_groups:
            group["lr"], group["capturable"] = lr, False
        self.graph = None
        self.graph_plan = cuda_graph_module.GraphPlan(self.graph_plan.requested, False, f"capture failed: {one_line(error)}")
        log.warning("--cuda-graph auto: training eagerly, the step could not be captured (%s)", one_line(error))

    def _plain_step(self, x: torch.Tensor, eps: torch.Tensor | None, beta: float | torch.Tensor) -> LossTerms:
        """train_step in one process without the sharpness losses or fp16's scaler; what cuda_graph.GraphedStep runs
        eagerly and captures, with beta as a 0-dim device tensor. Returns the batch's loss terms."""
        self.net.train()
        with self.autocast():
            x_hat, mean, logvar = self.net(x, eps)
        terms = vae_loss(x, x_hat, _float_posterior(mean, logvar), recon_loss=self.config.recon_loss, beta=beta, recon_weight=self.config.recon_weight)
        self._flag_nonfinite(terms, terms.loss)
        self.optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        self.optimizer.step()
        return terms

    @torch.no_grad()
    def _flag_nonfinite(self, terms: LossTerms, objective: torch.Tensor) -> None:
        """Set the device flag `nonfinite` if this step's loss (the global batch's) or, with the sharpness losses, its
        objective is not finite, keeping the first such step's (loss, recon, kl, objective) in `bad_terms`; all on the
        device, no host sync."""
        values = torch.stack([terms.loss, terms.recon, terms.kl, objective.detach().float()])  # (4,)
        watched = values[0::3] if self.sharp is not None and self.sharp.active else values[:1]  # (loss, objective) or (loss,)
        self.bad_terms.copy_(torch.where(self.nonfinite, self.bad_terms, values))  # frozen once the flag is up
        self.nonfinite.logical_or_(~torch.isfinite(watched).all())

    def check_finite(self) -> None:
        """Raise TrainingFailed, in one line, if a step since the flag was last cleared had a non-finite loss (or
        objective): its terms, as the step-by-step check said them. Reads the device flag: a host sync."""
        if not bool(self.nonfinite):
            return
        loss, recon, kl, objective = self.bad_terms.tolist()
        if self.sharp is not None and self.sharp.active and not math.isfinite(objective):
            raise TrainingFailed(f"the objective with the sharpness losses became {objective} (recon {recon:.4g})")
        raise TrainingFailed(f"loss became {loss} (recon {recon:.4g}, kl {kl:.4g})")

    @torch.no_grad()
    # Longer than the ~60-line house limit on purpose: one pass over the test set fills every sum of one
    # all-reducible tensor; split up, the pieces would pass a dozen accumulators between them.
    def evaluate(self, beta: float) -> EvalResult:
        """ELBO terms (with a seeded posterior sample), the objective at `beta` and the bound (beta = 1), and
        image metrics (MSE, PSNR, SSIM, LPIPS with --lpips-weights) of the mode's reconstructions on the test set.

        Each process evaluates its slice of every chunk of the test set; sums and posteriors are added
        up over processes, so every process returns the whole test set's result. Computed in float32 whatever
        --amp trains in (the atlas latents and metrics do not depend on the training precision); an autoencoder's
        sample is its mode, decoded once.
        """
        self.model.eval()
        g = epoch_generator(self.config.seed + EVAL_SEED_OFFSET, 0, self.device)
        n, dim = len(self.test_x), self.model_config.latent_dim
        deterministic = self.model_config.kind == "ae"
        rank, world = self.dist.rank, self.dist.world_size
        names = EVAL_SUMS + (() if self.perceptual is None else ("lpips",))
        sums = torch.zeros(len(names), dtype=torch.float64, device=self.device)  # summed over images, in float64
        kl_dim = torch.zeros(dim, device=self.device)
        means = torch.zeros(n, dim, device=self.device)  # (M, D)
        logvars = None if deterministic else torch.zeros(n, dim, device=self.device)
        piece = EVAL_PIECE_ROWS if self.device.type == "cpu" else None  # a GPU takes the chunk at once
        for start in range(0, n, EVAL_BATCH_SIZE):
            size = min(EVAL_BATCH_SIZE, n - start)
            eps = self.noise(size, g)  # the whole chunk's noise on every process
            lo, hi = shard_bounds(size, rank, world)
            if lo == hi:
                continue
            x = self.images(self.test_x, slice(start + lo, start + hi))
            with torch.autocast(self.device.type, enabled=False):  # float32, even inside a caller's autocast
                encoded = encode_in_pieces(self.model, x, piece)
                z = encoded.sample(eps=None if eps is None else eps[lo:hi])  # (b, D)
                x_hat = decode_in_pieces(self.model, z, piece)
                mode_logits = x_hat if encoded.deterministic else decode_in_pieces(self.model, encoded.mode(), piece)
            posterior = _float_posterior(encoded.mean, None if encoded.deterministic else encoded.logvar)
            terms = vae_loss(x, x_hat, posterior, recon_loss=self.config.recon_loss, beta=beta, recon_weight=self.config.recon_weight)
            images = torch.sigmoid(mode_logits.float())
            b = hi - lo
            parts = [
                terms.loss.double() * b,
                terms.recon.double() * b,
                terms.kl.double() * b,
                metrics.mse_per_image(images, x).sum().double(),
                metrics.psnr_per_image(images, x).sum().double(),
                ssim_per_image(images, x).mean().double() * b,  # metrics.ssim, faster
            ]
            if self.perceptual is not None:
                parts.append(self.perceptual(images, x.float()).sum().double())
            sums += torch.stack(parts)
            kl_dim += posterior.kl_per_dim().sum(0)
            means[start + lo : start + hi] = posterior.mean
            if logvars is not None:
                logvars[start + lo : start + hi] = posterior.logvar
        if self.dist.enabled:
            all_reduce_sum(self.dist, sums)
            parts = [kl_dim, means.flatten()] + ([] if logvars is None else [logvars.flatten()])
            packed = all_reduce_sum(self.dist, torch.cat(parts))
            kl_dim = packed[:dim]
            means = packed[dim : dim + n * dim].view(n, dim)
            if logvars is not None:
                logvars = packed[dim + n * dim :].view(n, dim)
        mean = means.cpu()
        kl_per_dim = (kl_dim / n).cpu().numpy()
        active = metrics.active_units(torch.from_numpy(kl_per_dim), mean.var(0) if n > 1 else torch.zeros(mean.shape[1]), deterministic)
        avg = dict(zip(names, (sums / n).tolist()))
        return EvalResult(
            **avg,
            active_units=active,
            kl_per_dim=kl_per_dim,
            mean=mean,
            logvar=None if logvars is None else logvars.cpu(),
            neg_elbo=avg["recon"] + avg["kl"],
            psnr_set=metrics.psnr_from_mse(avg["mse"]),  # every image has as many pixels: the set's MSE is the mean MSE
            active_units_burda=metrics.active_units_burda(mean) if n > 1 else 0,
            lpips_name=None if self.perceptual is None else self.perceptual.name,
        )

    @torch.no_grad()
    def validate(self) -> float:
        """The validation set's negative ELBO per image: recon + KL, unweighted (beta = 1), with one posterior
        sample of fixed seeded noise. Each process scores its slice of every chunk; the sum is shared."""
        self.model.eval()
        g = epoch_generator(self.config.seed + VAL_SEED_OFFSET, 0, self.device)
        n, rank, world = len(self.val_x), self.dist.rank, self.dist.world_size
        total = torch.zeros(1, dtype=torch.float64, device=self.device)
        for start in range(0, n, EVAL_BATCH_SIZE):
            size = min(EVAL_BATCH_SIZE, n - start)
            eps = self.noise(size, g)  # the whole chunk's noise on every process
            lo, hi = shard_bounds(size, rank, world)
            if lo == hi:
                continue
            x = self.images(self.val_x, slice(start + lo, start + hi))  # (b, C, H, W)
            with torch.autocast(self.device.type, enabled=False):  # float32 like evaluate, whatever --amp trains in
                encoded = self.model.encode(x)
                x_hat = self.model.decode(encoded.sample(eps=None if eps is None else eps[lo:hi]))
            posterior = _float_posterior(encoded.mean, None if encoded.deterministic else encoded.logvar)
            terms = vae_loss(x, x_hat, posterior, recon_loss=self.config.recon_loss, beta=1.0, recon_weight=1.0)
            total += terms.loss.double() * (hi - lo)
        all_reduce_sum(self.dist, total)
        return float(total) / n

    def record_latents(self, result: EvalResult) -> None:
        """Add the atlas posteriors of the current epoch, then keep only the snapshots latent_snapshots keeps."""
        self.latent_epochs.append(self.epoch)
        self.latent_means.append(result.mean[self.atlas_idx].numpy().astype(np.float16))
        if result.logvar is not None:
            self.latent_logvars.append(result.logvar[self.atlas_idx].numpy().astype(np.float16))
        self._thin_latents()

    def _thin_latents(self) -> None:
        """Drop the snapshots that latent_snapshots(epochs, current epoch) does not keep (a pure function: resume is exact)."""
        keep = set(latent_snapshots(self.latent_epochs, self.epoch))
        rows = [i for i, e in enumerate(self.latent_epochs) if e in keep]
        if len(rows) == len(self.latent_epochs):
            return
        self.latent_epochs = [self.latent_epochs[i] for i in rows]
        self.latent_means = [self.latent_means[i] for i in rows]
        if self.latent_logvars:
            self.latent_logvars = [self.latent_logvars[i] for i in rows]

    def latents(self) -> dict[str, np.ndarray]:
        out = {"epochs": np.asarray(self.latent_epochs, dtype=np.int64), "means": np.stack(self.latent_means)}
        if self.latent_logvars:
            out["logvars"] = np.stack(self.latent_logvars)
        return out

    def train_epoch(self, should_stop: Callable[[], bool] = lambda: False, on_step: Callable[[int, int], None] | None = None) -> dict[str, float] | None:
        """Train epoch `self.epoch` (0-based); returns the mean train terms, or None if stopped part-way.
        `on_step(steps done, images seen)` follows each optimiser step (host ints: it must not synchronise the device).

        The steps do not synchronise with the device (train_step): the loss terms are summed and a non-finite loss is
        flagged on the device, and the host reads the flag every NONFINITE_CHECK_STEPS (N = 50) steps, at the epoch's
        last step and on a stop, raising TrainingFailed. So a non-finite loss goes unnoticed for at most N - 1 further
        steps, which is safe: those steps' weights (NaN by then) are never saved, since the run folder is written only
        at epoch ends, after this check; the optimiser keeps stepping on NaN for at most N - 1 steps, all discarded,
        and the run ends as failed with the last good checkpoint kept, as when the host checked every step.
        (The running sums are read once, at the end; the epoch's loss figures are bitwise those of a per-step check.)

        With several processes every one draws the same permutation and noise (and, with --binarize
        dynamic, the uniforms that binarise the pixels) and trains on its slice of each global batch; a
        stop asked on any process stops all of them at the same step: the next step at which they read the flag.
        """
        self.settle_amp()
        cfg, epoch = self.config, self.epoch
        rank, world = self.dist.rank, self.dist.world_size
        g = epoch_generator(cfg.seed, epoch, self.device)
        order = torch.randperm(len(self.train_x), generator=g, device=self.device)
        order = order.to(self.train_x.device)  # host-resident data is gathered on the host
        totals = torch.zeros(3, device=self.device)
        seen = 0
        lr = beta = 0.0
        stop_asked = False  # several processes: a stop asked here, voted at the next check step
        self.nonfinite.zero_()
        if self.sharp is not None:
            self.sharp.epoch_terms()  # forget the logs of an epoch stopped part-way
        for step, idx in enumerate(order.split(cfg.batch_size)):
            if not self.dist.enabled and should_stop():
                self.check_finite()  # a failure is a failure even when a stop came first
                return None
            check = (step + 1) % NONFINITE_CHECK_STEPS == 0 or step + 1 == self.steps_per_epoch  # a host read this step
            lr, beta = self.set_schedule(epoch, step)
            self.global_step = epoch * self.steps_per_epoch + step
            b = len(idx)
            eps = self.noise(b, g)  # (b, D): the global batch's noise, drawn on every process
            u = torch.rand((b, *self.train_x.shape[1:]), generator=g, device=self.device) if self.binarize else None  # (b, C, H, W)
            lo, hi = shard_bounds(b, rank, world)
            x = self.images(self.train_x, idx[lo:hi])
            if u is not None:
                x = binarize.bernoulli_pixels(x, u[lo:hi])  # fresh binary pixels at every step
            local_eps = None if eps is None else eps[lo:hi]
            stop_asked = self.dist.enabled and (stop_asked or should_stop())
            terms = self.train_step(x, beta, eps=local_eps, global_batch=b, stop=stop_asked if self.dist.enabled and check else None)
            if terms is None:
                self.check_finite()
                return None
            totals += torch.stack([t.detach() for t in terms]) * b
            seen += b
            if check:
                self.check_finite()
            if on_step is not None:
                on_step(step + 1, seen)
        self.check_finite()  # (already read at the last step; an epoch of no steps has nothing to check)
        loss, recon, kl = (totals / seen).tolist()
        sharp = self.sharp.epoch_terms() if self.sharp is not None else {}
        return {"train_loss": loss, "train_recon": recon, "train_kl": kl, "train_neg_elbo": recon + kl, "lr": lr, "beta": beta, **sharp}

    # ------------------------------------------------------------ state

    def restore(self, run_dir: Path) -> None:
        """Continue from a run folder's last completed epoch (weights, optimiser, history, latents)."""
        run = load_run(run_dir, device=self.device)
        self.model.load_state_dict(run.model.state_dict())
        self._load_optimizer_state(run.optimizer_state())
        if self.sharp is not None:
            self.sharp.load_state(run)  # the discriminator and its optimiser, saved beside the model (not read by load_run)
        self.epoch, self.history = run.epoch, list(run.history)
        self.settle_amp(run.info)  # --amp auto keeps the precision the run has trained in
        atlas = run.atlas
        self.latent_epochs = atlas.epochs.tolist()
        self.latent_means = [m.astype(np.float16) for m in atlas.means]
        self.latent_logvars = [] if atlas.logvars is None else [lv.astype(np.float16) for lv in atlas.logvars]
        self._thin_latents()  # a run saved before latents were thinned holds every epoch

    def _load_optimizer_state(self, state: dict[str, Any]) -> None:
        """Load optimiser state, laying each tensor out like its parameter (channels_last included). Whether Adam may be
        captured is this process's choice, not the saved run's (a CUDA-graphed run resumes on the CPU)."""
        capturable = [group["capturable"] for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state)
        for group, flag in zip(self.optimizer.param_groups, capturable):
            group["capturable"] = flag
        for p, st in self.optimizer.state.items():
            for key, value in st.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    st[key] = torch.empty_like(p).copy_(value)

    def broadcast_state(self) -> None:
        """Give every process rank 0's epoch, weights and optimiser state (after rank 0 restored a run)."""
        if not self.dist.enabled:
            return
        state = None
        if self.dist.is_main:
            state = {"epoch": self.epoch, "model": _to_cpu(self.model.state_dict()), "optimizer": _to_cpu(self.optimizer.state_dict()),
                     "amp": {"precision": distributed.precision_name(self.amp_dtype), "amp_auto": self.amp_auto}}
        state = distributed.broadcast_object(self.dist, state)
        if not self.dist.is_main:
            self.settle_amp(state["amp"])  # rank 0's --amp auto decision
            self.epoch = int(state["epoch"])
            self.model.load_state_dict(state["model"])
            self._load_optimizer_state(state["optimizer"])


def run_info(data: ImageData, device: torch.device, setup: dict[str, Any] | None = None) -> dict[str, Any]:
    """config.json's provenance: data, code and torch versions, device, and how the run is computed (`setup`)."""
    return {
        "data": data.source,
        "class_names": data.class_names,
        "code_version": code_version(),
        "device": str(device),
        "torch": torch.__version__,
        **(setup or {}),
    }


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop stops at the next step, keeping the last completed epoch."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        """Put back the handlers install() replaced (the CLI called in-process, e.g. by tests, leaves none behind)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        self.signal = signum

    def __call__(self) -> bool:
        return self.signal is not None


def _never() -> bool:
    return False


@dataclass(frozen=True)
class FitOptions:
    """How `fit` runs a training (not what it trains): where, on what, and how it reports."""

    run_dir: Path
    device: torch.device
    resume: bool
    stop: Callable[[], bool]  # asked at every step; True stops at the next step
    progress: str  # 'bar', 'json' or 'none' ('auto' already resolved)
    dist: DistContext
    amp: str
    compile_model: bool
    cuda_graph: str = "auto"  # capture full-batch steps in a CUDA graph: auto, on, off (cuda_graph.plan)
    projections: bool = False  # compute the app's UMAP / t-SNE maps of the last epoch's atlas once training ends


def history_row(epoch: int, train_terms: dict[str, float], result: EvalResult, seconds: float, train_seconds: float, n_train: int) -> dict[str, Any]:
    """One epoch's line of history.jsonl: train terms, test metrics, KL per dimension and timings.

    `*_loss` is the training objective (recon_weight * recon + beta * KL), `*_neg_elbo` the bound
    (recon + KL, unweighted); `lpips` and `lpips_name` only when the run computes LPIPS."""
    row = {
        "epoch": epoch,
        **train_terms,
        "test_loss": result.loss,
        "test_recon": result.recon,
        "test_kl": result.kl,
        "test_neg_elbo": result.neg_elbo,
        "mse": result.mse,
        "psnr": result.psnr,
        "psnr_set": result.psnr_set,
        "ssim": result.ssim,
        "active_units": result.active_units,
        "active_units_burda": result.active_units_burda,
        "kl_per_dim": [round(float(v), 5) for v in result.kl_per_dim],
        "seconds": seconds,
        "train_seconds": train_seconds,
        "images_per_s": n_train / train_seconds,
    }
    if result.lpips is not None:
        row |= {"lpips": result.lpips, "lpips_name": result.lpips_name}
    return row


@dataclass(frozen=True)
class StepProgress:
    """Where training stands inside an epoch: what status.json and the progress display show between epochs."""

    epoch: int  # the epoch being trained, 1-based
    epochs: int  # the run's last epoch
    step: int  # optimiser steps done in this epoch
    steps: int  # steps per epoch
    images: int  # training images seen in this epoch
    seconds: float  # since this epoch started
    eta: float | None  # seconds until the last epoch ends (None until there is a rate)

    @property
    def images_per_s(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 else None


def eta_seconds(epoch: int, epochs: int, step: int, steps: int, seconds: float, per_epoch: float | None) -> float | None:
    """Seconds left: the rest of epoch `epoch` (1-based) at this epoch's step rate, then the epochs after it at
    `per_epoch` seconds each (the mean of the epochs done, evaluation included), or at the step rate before there is one."""
    if step <= 0 or seconds <= 0:
        return None
    step_s = seconds / step
    return (steps - step) * step_s + (epochs - epoch) * (per_epoch if per_epoch else steps * step_s)


class ProgressReporter(AbstractContextManager):
    """Progress: a tqdm bar on stderr counting training images, step by step ('bar'); one JSON line per epoch on
    stdout and, at most every PROGRESS_LINE_EVERY_S, a {"progress": ...} line on stderr ('json'); or nothing ('none')."""

    def __init__(self, mode: str, total: int, initial: int, n_train: int = 0):
        self.mode = mode
        self.bar = None
        self.total, self.n_train = total, n_train
        self.last_line = time.monotonic()
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total * n_train, initial=initial * n_train, unit="img", unit_scale=True, dynamic_ncols=True,
                            desc=f"epoch {min(initial + 1, total)}/{total}")

    def step(self, p: StepProgress, images: int) -> None:
        """Report `images` more training images done (the bar), or a progress line when one is due (json)."""
        if self.bar is not None:
            self.bar.set_description(f"epoch {p.epoch}/{p.epochs}", refresh=False)
            self.bar.update(images)
        elif self.mode == "json" and time.monotonic() - self.last_line >= PROGRESS_LINE_EVERY_S:
            self.last_line = time.monotonic()
            rate = p.images_per_s
            line = {"epoch": p.epoch, "epochs": p.epochs, "step": p.step, "steps": p.steps,
                    "images_per_s": None if rate is None else round(rate, 1), "eta": None if p.eta is None else round(p.eta, 1)}
            print(json.dumps({"progress": line}), file=sys.stderr, flush=True)

    def update(self, row: dict[str, Any]) -> None:
        """Report a finished epoch's history row."""
        if self.bar is not None:
            self.bar.n = row["epoch"] * self.n_train  # exact at each epoch's end, whatever the steps added up to
            self.bar.set_postfix(objective=f"{row['test_loss']:.2f}", neg_elbo=f"{metrics.neg_elbo(row):.2f}", psnr=f"{row['psnr']:.2f}")
        elif self.mode == "json":
            print(json.dumps({k: v for k, v in row.items() if k != "kl_per_dim"}), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


class StatusWriter:
    """status.json, written by rank 0 only; a failed write is logged, never raised (the run folder is what counts)."""

    def __init__(self, run_dir: Path, dist: DistContext, total: int):
        self.run_dir, self.is_main = run_dir, dist.is_main
        self.fields: dict[str, Any] = {"pid": os.getpid(), "total": total, "started": time.time()}
        if dist.enabled:
            self.fields["world_size"] = dist.world_size
        self.seconds = 0.0  # training seconds of the epochs done so far
        self.last_step_write = -math.inf

    def write(self, state: str, epoch: int, **extra: Any) -> None:
        """status.json: `state`, `epoch` (completed epochs), the fixed fields, training seconds and `extra`."""
        if not self.is_main:
            return
        try:
            write_status(self.run_dir, **({"state": state, "epoch": epoch, **self.fields, "seconds": self.seconds} | extra))
        except OSError as e:
            log.warning("could not write status.json: %s", e)

    def step(self, p: StepProgress) -> None:
        """The step counter inside an epoch (steps done, images/s, ETA): once the epoch has run STATUS_EVERY_S, then at
        most every STATUS_EVERY_S. Epochs shorter than that write no more than before (their end is written anyway)."""
        now = time.monotonic()
        if p.seconds < STATUS_EVERY_S or now - self.last_step_write < STATUS_EVERY_S:
            return
        self.last_step_write = now
        rate = p.images_per_s
        self.write("running", p.epoch - 1, step=p.step, steps=p.steps, images_per_s=None if rate is None else round(rate, 1),
                   eta=p.eta, seconds=self.seconds + p.seconds)


def on_main(ctx: DistContext, action: Callable[[], Any]) -> None:
    """Run-folder work on rank 0 only; every process learns whether it worked and raises the same error."""
    error: BaseException | None = None
    if ctx.is_main:
        try:
            action()
        except SHARED_ERRORS as e:
            error = e
    distributed.share_main_error(ctx, error, SHARED_ERRORS)


class Checkpoints:
    """The run folder as training writes it: rank 0 writes, every process shares the outcome."""

    def __init__(self, run_dir: Path, dist: DistContext):
        self.run_dir, self.dist = run_dir, dist
        self.writer = RunWriter(run_dir)
        self.saved = 0  # the epoch the run folder holds, for messages

    def on_main(self, action: Callable[[], Any]) -> None:
        on_main(self.dist, action)

    def save_epoch(self, trainer: Trainer, keep: bool = False) -> None:
        """Save the trainer's current epoch (weights, optimiser, history, latents); the run's last save keeps one set."""
        epoch, cfg = trainer.epoch, trainer.config
        final = epoch >= cfg.epochs or early_stop_message(trainer.history, cfg.patience, cfg.min_improvement) is not None
        # --weights-dtype float16 rounds only the finished run's weights: an intermediate epoch keeps float32, so a stopped
        # run resumes from the very weights it had (rounded ones would make the resumed run drift from the straight one).
        weights_dtype = cfg.weights_dtype if final else "float32"
        extra = trainer.sharp.state_files(weights_dtype) if trainer.sharp is not None else None  # the discriminator's state
        self.on_main(
            lambda: self.writer.save_epoch(
                epoch, trainer.model, trainer.optimizer, trainer.history, trainer.latents(), weights_dtype, keep, final, extra
            )
        )
        self.saved = epoch


def fit(
    model_config: ModelConfig,
    train_config: TrainConfig,
    data: ImageData,
    run_dir: Path,
    device: torch.device | str = "cpu",
    resume: bool = False,
    stop: Callable[[], bool] | None = None,
    progress: str = "auto",
    *,
    dist: DistContext | None = None,
    amp: str = "off",
    compile_model: bool = False,
    cuda_graph: str = "auto",
    projections: bool = False,
) -> Trainer:
    """Train into `run_dir`, saving a consistent checkpoint after every epoch. Returns the trainer.

    progress: 'bar' (tqdm), 'json' (one JSON line per epoch on stdout), 'none', or 'auto' (bar on a terminal).
    dist: this process's place in a torchrun job (every process calls fit; only rank 0 touches run_dir).
    amp, compile_model, cuda_graph: see Trainer.
    projections: once the last epoch is saved, compute the UMAP and t-SNE maps of its atlas means into the run folder
    (latents of more than 2 dims), so the app's first view of the run is instant (the CLI's default; off here: tests).
    Raises TrainingFailed or RunError with a readable message; the last completed epoch stays loadable.
    """
    ctx = dist or distributed.SINGLE
    if progress == "auto":
        progress = "bar" if sys.stderr.isatty() else "json"
    if not ctx.is_main:
        progress = "none"
    opts = FitOptions(
        run_dir=Path(run_dir), device=torch.device(device), resume=resume, stop=stop or _never,
        progress=progress, dist=ctx, amp=amp, compile_model=compile_model, cuda_graph=cuda_graph, projections=projections,
    )
    lock = _lock(opts.run_dir, ctx)
    try:
        return _fit_locked(model_config, train_config, data, opts)
    finally:
        if lock is not None:
            lock.release()


def _lock(run_dir: Path, ctx: DistContext) -> RunLock | None:
    """Rank 0 creates and locks the run folder (None elsewhere); every process raises rank 0's error if that failed."""
    lock = RunLock(run_dir) if ctx.is_main else None
    error: BaseException | None = None
    if lock is not None:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except (OSError, RunError) as e:
            error = e
    distributed.share_main_error(ctx, error, SHARED_ERRORS)
    return lock


def _fit_locked(model_config: ModelConfig, train_config: TrainConfig, data: ImageData, opts: FitOptions) -> Trainer:
    """fit's body once the run folder is locked: start or resume, train, and leave status.json saying how it ended."""
    trainer = Trainer(model_config, train_config, data, opts.device, dist=opts.dist, amp=opts.amp, compile_model=opts.compile_model,
                      cuda_graph=opts.cuda_graph)
    checkpoints = Checkpoints(opts.run_dir, opts.dist)
    status = StatusWriter(opts.run_dir, opts.dist, train_config.epochs)
    try:
        _start_or_resume(trainer, checkpoints, data, opts)
        _train_epochs(trainer, checkpoints, status, opts)
    except (TrainingFailed, OSError, RuntimeError) as e:
        failure = _failure(e, opts, checkpoints.saved)
        if failure is None:
            raise
        status.write("failed", trainer.epoch, eta=None, message=str(failure))
        if failure is e:
            raise
        raise failure from None
    early = early_stop_message(trainer.history, train_config.patience, train_config.min_improvement)
    if opts.projections and (early is not None or trainer.epoch >= train_config.epochs):
        _cache_projections(trainer, status, opts)
    if early is not None:
        status.write("finished", trainer.epoch, eta=0.0, message=early)
    elif trainer.epoch < train_config.epochs:
        status.write("stopped", trainer.epoch, eta=None, message=f"stopped after epoch {trainer.epoch}; resume with --resume")
    else:
        status.write("finished", trainer.epoch, eta=0.0)
    return trainer


def _cache_projections(trainer: Trainer, status: StatusWriter, opts: FitOptions) -> None:
    """The UMAP and t-SNE maps of the last epoch's atlas means, kept in the run folder as the app reads them
    (trainer.projections.cached_embedding), on rank 0; latents of 1 or 2 dims are shown as they are. A stop
    request skips what is left; a failure is a warning (the run itself is saved)."""
    if not opts.dist.is_main or trainer.model_config.latent_dim <= 2 or not trainer.latent_means:
        return
    means = trainer.latent_means[-1].astype(np.float32)  # (N, D): the saved snapshot, as the app loads it
    for method in projections.EMBEDDINGS:
        if opts.stop():
            return
        what = f"computing the {projections.EMBEDDING_NAMES[method]} map of the atlas for the app"
        status.write("running", trainer.epoch, eta=None, message=what)
        if opts.progress != "none":
            print(f"{what}…", file=sys.stderr, flush=True)
        try:
            projections.cached_embedding(opts.run_dir, trainer.epoch, means, method, seed=trainer.config.seed)
        except Exception as e:  # noqa: BLE001 (an extra for the app: the app computes the map itself if this fails)
            log.warning("could not compute the %s map: %s", method, one_line(e))


def _start_or_resume(trainer: Trainer, checkpoints: Checkpoints, data: ImageData, opts: FitOptions) -> None:
    """Resume: every process continues from rank 0's run folder, whose later epochs are dropped.
    Start: create the run folder and save epoch 0, the untrained model's evaluation."""
    model_config, train_config = trainer.model_config, trainer.config
    if opts.resume:
        checkpoints.on_main(lambda: trainer.restore(opts.run_dir))
        trainer.broadcast_state()
        checkpoints.saved = trainer.epoch
        info = run_info(data, opts.device, trainer.setup_info()) | {"resumed_from": trainer.epoch}  # after restore: --amp auto as saved
        _say_precision_and_graph(trainer, opts)
        checkpoints.on_main(lambda: (discard_after(opts.run_dir, trainer.epoch), checkpoints.writer.write_config(model_config, train_config, info)))
        return
    info = run_info(data, opts.device, trainer.setup_info())  # settles --amp auto (timed on a GPU)
    _say_precision_and_graph(trainer, opts)
    atlas = torch.from_numpy(trainer.atlas_idx)
    # the images the model is evaluated on (binarised ones with --binarize dynamic), so the app shows what it saw
    atlas_x, atlas_y = trainer.test_x[atlas.to(trainer.test_x.device)].cpu().numpy(), data.test_y[atlas].cpu().numpy()
    checkpoints.on_main(lambda: checkpoints.writer.create(model_config, train_config, info, atlas_x, atlas_y))
    trainer.record_latents(trainer.evaluate(train_config.beta_at(0, 0.0)))
    checkpoints.save_epoch(trainer)


def _say_precision_and_graph(trainer: Trainer, opts: FitOptions) -> None:
    """Tell on stderr what --amp auto picked and why (the timings) and, on a GPU, whether steps are CUDA-graphed,
    unless progress is off."""
    notes = [trainer.amp_note(), trainer.graph_plan.note() if trainer.device.type == "cuda" else None]
    for note in notes:
        if note is not None and opts.progress != "none":
            print(note, file=sys.stderr, flush=True)


def _train_epochs(trainer: Trainer, checkpoints: Checkpoints, status: StatusWriter, opts: FitOptions) -> None:
    """Train, evaluate and save epoch after epoch until the last one, until `opts.stop` asks, or until the
    validation negative ELBO has not improved for `patience` epochs (early stopping; `epochs` is the cap)."""
    total, patience = trainer.config.epochs, trainer.config.patience
    with ProgressReporter(opts.progress, total, trainer.epoch, len(trainer.train_x)) as progress:
        status.seconds = sum(r.get("seconds", 0.0) for r in trainer.history)
        status.write("running", trainer.epoch, eta=None)
        while trainer.epoch < total and early_stop_message(trainer.history, patience, trainer.config.min_improvement) is None:
            done = _train_epoch(trainer, opts.stop, _step_reporter(trainer, status, progress))
            if done is None:
                return
            row, result = done
            status.seconds += row["seconds"]
            bad = next(((k, row[k]) for k in ("test_loss", "val_neg_elbo") if k in row and not math.isfinite(row[k])), None)
            if bad is not None:
                trainer.epoch -= 1
                kept = f"the last good checkpoint (epoch {trainer.epoch}) is kept"
                name = "test loss" if bad[0] == "test_loss" else "validation negative ELBO"
                raise TrainingFailed(f"{name} became {bad[1]} after epoch {trainer.epoch + 1}; {kept}")
            trainer.history.append(row)
            trainer.record_latents(result)
            checkpoints.save_epoch(trainer, keep=trainer.epoch in trainer.config.keep_epochs)
            per_epoch = status.seconds / max(1, len(trainer.history))
            status.write("running", trainer.epoch, eta=per_epoch * (total - trainer.epoch), images_per_s=round(row["images_per_s"], 1))
            progress.update(row)


def _step_reporter(trainer: Trainer, status: StatusWriter, progress: ProgressReporter) -> Callable[[int, int], None]:
    """The on_step callback of one epoch: a StepProgress for status.json (bounded rate) and the progress display."""
    t0, epoch, total, steps = time.perf_counter(), trainer.epoch + 1, trainer.config.epochs, trainer.steps_per_epoch
    per_epoch = status.seconds / len(trainer.history) if trainer.history else None
    seen = 0

    def on_step(step: int, images: int) -> None:
        nonlocal seen
        seconds = time.perf_counter() - t0
        p = StepProgress(epoch, total, step, steps, images, seconds, eta_seconds(epoch, total, step, steps, seconds, per_epoch))
        status.step(p)
        progress.step(p, images - seen)
        seen = images

    return on_step


def _train_epoch(trainer: Trainer, stop: Callable[[], bool], on_step: Callable[[int, int], None] | None = None) -> tuple[dict[str, Any], EvalResult] | None:
    """Train and evaluate one epoch (counting it done): its history row and test result, or None if stopped part-way."""
    t0 = time.perf_counter()
    try:
        train_terms = trainer.train_epoch(stop, on_step)
    except TrainingFailed as e:
        raise TrainingFailed(f"{e} in epoch {trainer.epoch + 1}; the last good checkpoint (epoch {trainer.epoch}) is kept") from None
    if train_terms is None:
        return None
    t_train = time.perf_counter() - t0
    trainer.epoch += 1
    result = trainer.evaluate(train_terms["beta"])
    val = trainer.validate() if len(trainer.val_x) else None
    row = history_row(trainer.epoch, train_terms, result, time.perf_counter() - t0, t_train, len(trainer.train_x))
    if val is not None:
        row["val_neg_elbo"] = val
    return row, result


def _failure(error: BaseException, opts: FitOptions, saved: int) -> TrainingFailed | None:
    """What `error` means for the run: the TrainingFailed to record and raise, or None if it is not a run failure."""
    if isinstance(error, TrainingFailed):
        return error
    if isinstance(error, OSError):  # disk full, read-only or unwritable folder: while creating the run, saving or resuming
        kept = f"the last saved epoch ({saved}) is kept" if (opts.run_dir / MANIFEST_FILE).exists() else "nothing was saved yet"
        return TrainingFailed(f"could not write the run folder {opts.run_dir} ({error.strerror or error}); {kept}")
    if isinstance(error, RuntimeError) and "use_deterministic_algorithms" in str(error):
        what = first_line(error).split(", but you set")[0]  # "<operation> does not have a deterministic implementation"
        return TrainingFailed(f"--deterministic: {what}; train without --deterministic; the last saved epoch ({saved}) is kept")
    if isinstance(error, RuntimeError) and opts.dist.enabled:
        # gloo / nccl raise RuntimeError (DistBackendError among them) when another process died or broke off.
        world = opts.dist.world_size
        return ProcessLost(f"a process of the {world}-process job failed or went away ({one_line(error)}); the last saved epoch ({saved}) is kept")
    return None
