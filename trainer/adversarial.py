"""The losses for sharpness beside the VAE objective: a PatchGAN discriminator and a perceptual loss.

They follow latent diffusion's LPIPSWithDiscriminator (ldm/modules/losses/contperceptual.py) and
taming-transformers' VQLPIPSWithDiscriminator. For a batch x (B, C, H, W) in [0, 1] and its
reconstruction x_hat = sigmoid(logits), per image and averaged over the batch:
    nll       = recon_weight * recon + perceptual_weight * C*H*W * LPIPS(x_hat, x)
                (latent diffusion adds perceptual_weight * LPIPS to every pixel's error and sums)
    g_loss    = -mean D(2 x_hat - 1)                                 (once step >= disc_start)
    objective = nll + beta * KL + disc_weight * adaptive_weight(nll, g_loss) * g_loss
where adaptive_weight is the ratio of the two losses' gradient norms at the decoder's last layer (clamped
to [0, 1e4]). After the model's step the discriminator D takes one Adam step (betas 0.5, 0.9, the model's
learning rate) on hinge(D(2 x - 1), D(2 x_hat - 1)).

Differences from the reference, all deliberate: the discriminator is not run at all before disc_start
(the reference runs it with factor 0, which changes only its BatchNorm statistics and Adam's step count);
its step reuses the model step's reconstructions rather than a second forward pass; it runs in float32
outside autocast; recon is measured on [0, 1] images (the reference's L1 on [-1, 1] is twice as large).

The perceptual term needs a local VGG16 state dict (`--perceptual-weights`, read by trainer.lpips,
never unpickled); without one the run says in one line that the term is off and trains without it.
The discriminator trains in one process only (its adaptive weight takes gradients outside DDP).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save

from models import VAE, PatchDiscriminator, adaptive_weight, decoder_last_layer, generator_loss, hinge_d_loss

from .config import TrainConfig
from .lpips import LPIPSError, PerceptualDistance, load_perceptual_distance
from .runs import Run, model_state_tensors, optimizer_state_bytes

DISC_BETAS = (0.5, 0.9)  # the discriminator's Adam betas in taming-transformers and latent diffusion
DISC_FILE, DISC_OPTIM_FILE = "disc", "disc-optim"  # runs.OPTIONAL_FILES keys
LOGGED = ("perceptual", "g_loss", "d_loss", "disc_weight")  # per-epoch means in the history, as train_<name>


def perceptual_note(config: TrainConfig) -> str | None:
    """One line saying the perceptual term is off although asked for, or None."""
    if config.perceptual_weight > 0 and not config.perceptual_weights:
        return (f"perceptual term off: --perceptual-weight {config.perceptual_weight:g} needs --perceptual-weights PATH "
                "(a local torchvision VGG16 state dict; nothing is downloaded), so this run trains without it")
    if config.perceptual_weights and config.perceptual_weight == 0:
        return "perceptual term off: --perceptual-weights is given but --perceptual-weight is 0"
    return None


def wanted(config: TrainConfig) -> bool:
    """Whether the config asks for any sharpness loss (or names its weights): False keeps the classic objective untouched."""
    return config.disc_weight > 0 or config.perceptual_weight > 0 or bool(config.perceptual_weights)


def perceptual_distance(net: PerceptualDistance, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The distance of each pair (B,) WITH gradients (PerceptualDistance.forward, the metric, runs under no_grad)."""
    forward = type(net).forward
    return getattr(forward, "__wrapped__", forward)(net, x_hat, x)


class SharpLosses:
    """The discriminator (with its optimiser) and the perceptual network of one Trainer, and their per-epoch logs."""

    def __init__(self, config: TrainConfig, model: VAE, device: torch.device):
        self.config = config
        self.note = perceptual_note(config)
        self.perceptual: PerceptualDistance | None = None
        if config.perceptual_weight > 0 and config.perceptual_weights:
            try:
                self.perceptual = load_perceptual_distance(config.perceptual_weights).to(device)
            except LPIPSError as e:
                raise LPIPSError(f"--perceptual-weights: {e}") from None
        self.disc: PatchDiscriminator | None = None
        self.disc_optimizer: torch.optim.Optimizer | None = None
        if config.disc_weight > 0:
            self.disc = PatchDiscriminator(model.config.in_channels, config.disc_channels, config.disc_layers).to(device)
            self.disc_optimizer = torch.optim.Adam(self.disc.parameters(), lr=config.lr, betas=DISC_BETAS)
        self.last_layer = decoder_last_layer(model)
        self.sums = {name: torch.zeros((), device=device) for name in LOGGED}
        self.counts = dict.fromkeys(LOGGED, 0)

    @property
    def active(self) -> bool:
        """Whether any term changes the objective (not so when the perceptual term is off and there is no discriminator)."""
        return self.disc is not None or self.perceptual is not None

    def disc_on(self, step: int) -> bool:
        """Whether the discriminator and its loss count at global optimiser step `step` (0-based)."""
        return self.disc is not None and step >= self.config.disc_start

    def _log(self, name: str, value: torch.Tensor) -> None:
        self.sums[name] += value.detach()
        self.counts[name] += 1

    def generator_terms(self, x: torch.Tensor, logits: torch.Tensor, nll: torch.Tensor, step: int) -> torch.Tensor:
        """What the sharpness losses add to step `step`'s objective (a scalar with gradients); x (B, C, H, W) in [0, 1],
        logits the model's output for it, nll the weighted reconstruction term (batch mean)."""
        images = torch.sigmoid(logits.float())  # (B, C, H, W)
        extra = images.new_zeros(())
        if self.perceptual is not None:
            distance = perceptual_distance(self.perceptual, images, x.float()).mean()
            term = self.config.perceptual_weight * math.prod(images.shape[1:]) * distance
            nll, extra = nll + term, extra + term
            self._log("perceptual", distance)
        if self.disc_on(step):
            assert self.disc is not None
            self.disc.requires_grad_(False)  # the generator's loss moves the decoder only
            g_loss = generator_loss(self.disc(2 * images - 1))
            weight = adaptive_weight(nll, g_loss, self.last_layer) * self.config.disc_weight
            extra = extra + weight * g_loss
            self._log("g_loss", g_loss)
            self._log("disc_weight", weight)
        return extra

    def discriminator_step(self, x: torch.Tensor, logits: torch.Tensor, step: int, lr: float) -> None:
        """One Adam step of the discriminator on the hinge loss of real x and the (detached) reconstructions, from `step` on."""
        if not self.disc_on(step):
            return
        assert self.disc is not None and self.disc_optimizer is not None
        self.disc.requires_grad_(True)
        fake = 2 * torch.sigmoid(logits.detach().float()) - 1
        d_loss = hinge_d_loss(self.disc(2 * x.float() - 1), self.disc(fake))
        for group in self.disc_optimizer.param_groups:
            group["lr"] = lr
        self.disc_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        self.disc_optimizer.step()
        self._log("d_loss", d_loss)

    def epoch_terms(self) -> dict[str, float]:
        """The epoch's means (train_perceptual, train_g_loss, train_d_loss, train_disc_weight) of the steps where each
        counted, then reset."""
        out = {f"train_{name}": float(self.sums[name]) / self.counts[name] for name in LOGGED if self.counts[name]}
        for name in LOGGED:
            self.sums[name].zero_()
            self.counts[name] = 0
        return out

    def info(self) -> dict[str, Any]:
        """What config.json records about the sharpness losses."""
        out: dict[str, Any] = {}
        if self.disc is not None:
            out["discriminator"] = {
                "kind": "PatchGAN (taming-transformers NLayerDiscriminator), hinge loss, adaptive weight",
                "layers": self.config.disc_layers, "channels": self.config.disc_channels, "start_step": self.config.disc_start,
                "weight": self.config.disc_weight, "parameters": sum(p.numel() for p in self.disc.parameters()),
            }
        if self.perceptual is not None:
            out["perceptual"] = f"{self.perceptual.name} from {Path(self.config.perceptual_weights).name}, weight {self.config.perceptual_weight:g}"
        elif self.note is not None:
            out["perceptual"] = self.note
        return out

    def state_files(self, weights_dtype: str) -> dict[str, bytes]:
        """The discriminator's weights and optimiser state as safetensors bytes, by runs.OPTIONAL_FILES key ({} without one)."""
        if self.disc is None or self.disc_optimizer is None:
            return {}
        return {DISC_FILE: st_save(model_state_tensors(self.disc, weights_dtype)), DISC_OPTIM_FILE: optimizer_state_bytes(self.disc_optimizer)}

    def load_state(self, run: Run) -> None:
        """Continue from the discriminator state of a run's saved epoch (RunError, one line, if it has none or it does not fit)."""
        if self.disc is None or self.disc_optimizer is None:
            return
        run.load_extra_weights(DISC_FILE, self.disc)
        self.disc_optimizer.load_state_dict(run.optimizer_state(DISC_OPTIM_FILE, list(self.disc.parameters())))
