"""The training loop: small `train_step` / `evaluate` pieces, a `fit` that saves a run folder each epoch.

Determinism: the shuffling and the reparameterisation noise of epoch e come from a generator
seeded by (seed, e), and the LR and beta schedules are functions of (epoch, step), so a run
resumed at an epoch boundary continues exactly as if it had never stopped.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from models import VAE, LossTerms, ModelConfig, build_model, to_float_images, vae_loss

from . import metrics
from .config import TrainConfig
from .data import ImageData
from .runs import RunError, RunLock, RunWriter, discard_after, load_run, write_status

log = logging.getLogger(__name__)
EVAL_BATCH_SIZE = 1000
EVAL_SEED_OFFSET = 7919  # evaluation noise is seeded apart from training noise


class TrainingFailed(Exception):
    """The run stopped as failed (non-finite loss, unwritable folder); the message says why."""


def code_version() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
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


def epoch_generator(seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + epoch) % (2**63))
    return g


def atlas_indices(n_test: int, atlas_size: int, seed: int) -> np.ndarray:
    """The fixed test images whose posteriors the run records (all of them if there are few)."""
    if n_test <= atlas_size:
        return np.arange(n_test)
    return np.sort(np.random.default_rng(seed).choice(n_test, atlas_size, replace=False))


@dataclass
class EvalResult:
    loss: float
    recon: float
    kl: float
    mse: float
    psnr: float
    ssim: float
    active_units: int
    kl_per_dim: np.ndarray  # (D,) mean KL per latent dimension
    mean: torch.Tensor  # (M, D) posterior means of the whole test set
    logvar: torch.Tensor | None  # (M, D), None for an AE


class Trainer:
    def __init__(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig,
        data: ImageData,
        device: torch.device | str = "cpu",
    ):
        self.model_config, self.config, self.data = model_config, train_config, data
        self.device = torch.device(device)
        torch.manual_seed(train_config.seed)
        self.model: VAE = build_model(model_config).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=train_config.lr, fused=True)
        self.train_x = data.train_x.to(self.device)  # (N, C, H, W) uint8 stays uint8 in memory
        self.test_x = data.test_x.to(self.device)
        self.steps_per_epoch = math.ceil(len(self.train_x) / train_config.batch_size)
        self.epoch = 0  # completed epochs
        self.history: list[dict[str, Any]] = []
        self.atlas_idx = atlas_indices(len(self.test_x), train_config.atlas_size, train_config.seed)
        self.latent_epochs: list[int] = []
        self.latent_means: list[np.ndarray] = []
        self.latent_logvars: list[np.ndarray] = []

    # ------------------------------------------------------------ steps

    def set_schedule(self, epoch: int, step: int) -> tuple[float, float]:
        progress = step / self.steps_per_epoch
        lr, beta = self.config.lr_at(epoch, progress), self.config.beta_at(epoch, progress)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr, beta

    def train_step(self, x: torch.Tensor, beta: float, generator: torch.Generator) -> LossTerms:
        """One optimiser step on a batch x (B, C, H, W) in [0, 1]."""
        self.model.train()
        out = self.model(x, generator=generator)
        terms = vae_loss(x, out.x_hat, out.posterior, recon_loss=self.config.recon_loss, beta=beta, recon_weight=self.config.recon_weight)
        if not torch.isfinite(terms.loss):
            raise TrainingFailed(f"loss became {terms.loss.item()} (recon {terms.recon.item():.4g}, kl {terms.kl.item():.4g})")
        self.optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        self.optimizer.step()
        return terms

    @torch.no_grad()
    def evaluate(self, beta: float) -> EvalResult:
        """ELBO terms (with a seeded posterior sample) and image metrics of the mode's reconstructions on the test set."""
        self.model.eval()
        g = epoch_generator(self.config.seed + EVAL_SEED_OFFSET, 0, self.device)
        sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0, "mse": 0.0, "psnr": 0.0, "ssim": 0.0}
        kl_dim = torch.zeros(self.model_config.latent_dim, device=self.device)
        means, logvars = [], []
        n = len(self.test_x)
        for xb_u8 in self.test_x.split(EVAL_BATCH_SIZE):
            x = to_float_images(xb_u8)
            posterior = self.model.encode(x)
            x_hat = self.model.decode(posterior.sample(g))
            terms = vae_loss(x, x_hat, posterior, recon_loss=self.config.recon_loss, beta=beta, recon_weight=self.config.recon_weight)
            images = torch.sigmoid(self.model.decode(posterior.mode()))
            b = len(x)
            sums["loss"] += terms.loss.item() * b
            sums["recon"] += terms.recon.item() * b
            sums["kl"] += terms.kl.item() * b
            sums["mse"] += metrics.mse_per_image(images, x).sum().item()
            sums["psnr"] += metrics.psnr_per_image(images, x).sum().item()
            sums["ssim"] += metrics.ssim(images, x).item() * b
            kl_dim += posterior.kl_per_dim().sum(0)
            means.append(posterior.mean.float().cpu())
            if not posterior.deterministic:
                logvars.append(posterior.logvar.float().cpu())
        mean = torch.cat(means)
        kl_per_dim = (kl_dim / n).cpu().numpy()
        deterministic = self.model_config.kind == "ae"
        active = metrics.active_units(torch.from_numpy(kl_per_dim), mean.var(0) if n > 1 else torch.zeros(mean.shape[1]), deterministic)
        avg = {k: v / n for k, v in sums.items()}
        return EvalResult(**avg, active_units=active, kl_per_dim=kl_per_dim, mean=mean, logvar=None if deterministic else torch.cat(logvars))

    def record_latents(self, result: EvalResult) -> None:
        self.latent_epochs.append(self.epoch)
        self.latent_means.append(result.mean[self.atlas_idx].numpy().astype(np.float16))
        if result.logvar is not None:
            self.latent_logvars.append(result.logvar[self.atlas_idx].numpy().astype(np.float16))

    def latents(self) -> dict[str, np.ndarray]:
        out = {"epochs": np.asarray(self.latent_epochs, dtype=np.int64), "means": np.stack(self.latent_means)}
        if self.latent_logvars:
            out["logvars"] = np.stack(self.latent_logvars)
        return out

    def train_epoch(self, should_stop: Callable[[], bool] = lambda: False) -> dict[str, float] | None:
        """Train epoch `self.epoch` (0-based); returns the mean train terms, or None if stopped part-way."""
        cfg, epoch = self.config, self.epoch
        g = epoch_generator(cfg.seed, epoch, self.device)
        order = torch.randperm(len(self.train_x), generator=g, device=self.device)
        totals = torch.zeros(3, device=self.device)
        seen = 0
        lr = beta = 0.0
        for step, idx in enumerate(order.split(cfg.batch_size)):
            if should_stop():
                return None
            lr, beta = self.set_schedule(epoch, step)
            x = to_float_images(self.train_x[idx])
            terms = self.train_step(x, beta, g)
            totals += torch.stack([t.detach() for t in terms]) * len(idx)
            seen += len(idx)
        loss, recon, kl = (totals / seen).tolist()
        return {"train_loss": loss, "train_recon": recon, "train_kl": kl, "lr": lr, "beta": beta}

    # ------------------------------------------------------------ state

    def restore(self, run_dir: Path) -> None:
        """Continue from a run folder's last completed epoch (weights, optimiser, history, latents)."""
        run = load_run(run_dir, device=self.device)
        self.model.load_state_dict(run.model.state_dict())
        self.optimizer.load_state_dict(run.optimizer_state())
        self.epoch, self.history = run.epoch, list(run.history)
        atlas = run.atlas
        self.latent_epochs = atlas.epochs.tolist()
        self.latent_means = [m.astype(np.float16) for m in atlas.means]
        self.latent_logvars = [] if atlas.logvars is None else [lv.astype(np.float16) for lv in atlas.logvars]


def run_info(data: ImageData, device: torch.device) -> dict[str, Any]:
    return {
        "data": data.source,
        "class_names": data.class_names,
        "code_version": code_version(),
        "device": str(device),
        "torch": torch.__version__,
    }


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop stops at the next step, keeping the last completed epoch."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.signal = signum

    def __call__(self) -> bool:
        return self.signal is not None


def fit(
    model_config: ModelConfig,
    train_config: TrainConfig,
    data: ImageData,
    run_dir: Path,
    device: torch.device | str = "cpu",
    resume: bool = False,
    stop: Callable[[], bool] | None = None,
    progress: str = "auto",
) -> Trainer:
    """Train into `run_dir`, saving a consistent checkpoint after every epoch. Returns the trainer.

    progress: 'bar' (tqdm), 'json' (one JSON line per epoch on stdout), 'none', or 'auto' (bar on a terminal).
    Raises TrainingFailed or RunError with a readable message; the last completed epoch stays loadable.
    """
    run_dir = Path(run_dir)
    stop = stop or (lambda: False)
    if progress == "auto":
        progress = "bar" if sys.stderr.isatty() else "json"
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir)
    lock.acquire()
    try:
        return _fit_locked(model_config, train_config, data, run_dir, torch.device(device), resume, stop, progress)
    finally:
        lock.release()


def _fit_locked(model_config, train_config, data, run_dir, device, resume, stop, progress) -> Trainer:
    trainer = Trainer(model_config, train_config, data, device)
    writer = RunWriter(run_dir)
    started = time.time()
    status = {"pid": os.getpid(), "total": train_config.epochs, "started": started}

    def set_status(state: str, **extra: Any) -> None:
        try:
            write_status(run_dir, state=state, epoch=trainer.epoch, **status, **extra)
        except OSError as e:
            log.warning("could not write status.json: %s", e)

    if resume:
        trainer.restore(run_dir)
        discard_after(run_dir, trainer.epoch)
        writer.write_config(model_config, train_config, run_info(data, device) | {"resumed_from": trainer.epoch})
    else:
        atlas_x = data.test_x[torch.from_numpy(trainer.atlas_idx)].cpu().numpy()
        atlas_y = data.test_y[torch.from_numpy(trainer.atlas_idx)].cpu().numpy()
        writer.create(model_config, train_config, run_info(data, device), atlas_x, atlas_y)
        result = trainer.evaluate(train_config.beta_at(0, 0.0))
        trainer.record_latents(result)
        writer.save_epoch(0, trainer.model, trainer.optimizer, trainer.history, trainer.latents(), train_config.weights_dtype)

    bar = None
    if progress == "bar":
        from tqdm import tqdm

        bar = tqdm(total=train_config.epochs, initial=trainer.epoch, unit="epoch", dynamic_ncols=True)
    train_seconds = sum(r.get("seconds", 0.0) for r in trainer.history)
    set_status("running", seconds=train_seconds, eta=None)
    try:
        while trainer.epoch < train_config.epochs:
            t0 = time.perf_counter()
            try:
                train_terms = trainer.train_epoch(stop)
            except TrainingFailed as e:
                raise TrainingFailed(f"{e} in epoch {trainer.epoch + 1}; the last good checkpoint (epoch {trainer.epoch}) is kept") from None
            if train_terms is None:
                break
            t_train = time.perf_counter() - t0
            trainer.epoch += 1
            result = trainer.evaluate(train_terms["beta"])
            seconds = time.perf_counter() - t0
            train_seconds += seconds
            row = {
                "epoch": trainer.epoch,
                **train_terms,
                "test_loss": result.loss,
                "test_recon": result.recon,
                "test_kl": result.kl,
                "mse": result.mse,
                "psnr": result.psnr,
                "ssim": result.ssim,
                "active_units": result.active_units,
                "kl_per_dim": [round(float(v), 5) for v in result.kl_per_dim],
                "seconds": seconds,
                "train_seconds": t_train,
                "images_per_s": len(trainer.train_x) / t_train,
            }
            if not math.isfinite(result.loss):
                trainer.epoch -= 1
                raise TrainingFailed(f"test loss became {result.loss} after epoch {trainer.epoch + 1}; the last good checkpoint (epoch {trainer.epoch}) is kept")
            trainer.history.append(row)
            trainer.record_latents(result)
            keep = trainer.epoch in train_config.keep_epochs
            writer.save_epoch(trainer.epoch, trainer.model, trainer.optimizer, trainer.history, trainer.latents(), train_config.weights_dtype, keep)
            per_epoch = train_seconds / max(1, len(trainer.history))
            set_status("running", seconds=train_seconds, eta=per_epoch * (train_config.epochs - trainer.epoch))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(test_loss=f"{result.loss:.2f}", psnr=f"{result.psnr:.2f}")
            elif progress == "json":
                print(json.dumps({k: v for k, v in row.items() if k != "kl_per_dim"}), flush=True)
    except TrainingFailed as e:
        set_status("failed", seconds=train_seconds, eta=None, message=str(e))
        raise
    except OSError as e:
        message = f"could not write the run folder {run_dir} ({e.strerror or e}); the last saved epoch ({trainer.epoch}) is kept"
        set_status("failed", seconds=train_seconds, eta=None, message=message)
        raise TrainingFailed(message) from None
    finally:
        if bar is not None:
            bar.close()
    if trainer.epoch < train_config.epochs:
        set_status("stopped", seconds=train_seconds, eta=None, message=f"stopped after epoch {trainer.epoch}; resume with --resume")
    else:
        set_status("finished", seconds=train_seconds, eta=0.0)
    return trainer
