"""What the app says about a run's numbers: the bound (negative ELBO at β = 1), the training objective, the
IWAE estimate, and what each is in (nats only where the reconstruction term is a true log-density).

Plain functions of configs, history rows and evaluation records; no Streamlit. The sidebar line
(app.common.describe_run), Explore's run summary and Compare's table all word their numbers here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from trainer import metrics
from trainer.binarize import is_dynamic
from trainer.config import is_number
from trainer.runs import Run

NO_VALUE = "—"  # a number that does not exist (an autoencoder's bound), never 0
BETA_ZERO_NOTE = "β = 0: an autoencoder-like VAE; its codes need not follow the prior"
BETA_ZERO_SAMPLES_NOTE = (BETA_ZERO_NOTE + ". Nothing pulled its posteriors towards N(0, I), so prior samples may land where no image's "
                          "code is and decode to something unlike the data.")
AE_NOTE = ("an autoencoder has no KL term and so no bound: its reconstruction term is not comparable with a VAE's negative ELBO, "
           "so it is not ranked among them")
BOUND_NOTE = ("neg. ELBO: reconstruction + KL at β = 1, the bound on −log p(x), lower is better; it is in nats only for a Bernoulli "
              "NLL on binary (binarised) images; on grayscale targets it is BCE-based (not a density), with mse SSE-based and with l1 "
              "L1-based (sums of squared / absolute errors, not nats). "
              "objective: what training minimised, recon weight × reconstruction + β × KL.")
RECON_UNITS = {"mse": "SSE-based", "l1": "L1-based"}  # how a bound over a sum of squared / absolute errors is read
RECON_SHORT = {"mse": "SSE", "l1": "L1, sum of absolute errors"}  # table cells (metrics.recon_label says it in full)
EVALUATE_HINT = "python -m trainer.evaluate {name}"  # a run name under the default checkpoints folder, or its path


def bound_unit(recon_loss: str, binarized: bool) -> str:
    """How to read a negative ELBO: "nats" only where the reconstruction term is a true log-density (BCE on binary
    images, a Bernoulli NLL); "BCE-based bound" for BCE on grayscale targets; "SSE-based" for a sum of squared errors;
    "L1-based" for a sum of absolute errors (both not densities)."""
    if recon_loss == "bce":
        return "nats" if binarized else "BCE-based bound"
    return RECON_UNITS.get(recon_loss, f"{recon_loss}-based")


def recon_short(recon_loss: str, binarized: bool, colour: bool = False) -> str:
    """A table cell naming the reconstruction term (metrics.recon_label says it in full)."""
    if recon_loss == "bce":
        return "Bernoulli NLL" if binarized else "BCE, colour" if colour else "BCE, grayscale"
    return RECON_SHORT.get(recon_loss, recon_loss)


def objective_label(beta: float, recon_weight: float = 1.0) -> str:
    """'objective (β=4)', with the reconstruction weight when it is not 1."""
    weight = "" if recon_weight == 1 else f", recon ×{recon_weight:g}"
    return f"objective (β={beta:g}{weight})"


def low_beta_samples_note(beta: float, kl: float | None) -> str:
    """Sampling a VAE trained with 0 < beta < 1, as latent-diffusion-style autoencoders are: what to expect of its prior samples."""
    spent = f" (here {kl:,.1f} nats per test image)" if kl is not None and math.isfinite(kl) else ""
    return (f"β = {beta:g} < 1: the objective weighs the KL term {beta:g} times the reconstruction, so the posteriors may sit far "
            f"from N(0, I){spent}, and prior samples (and z = 0) may decode to something unlike the data. Autoencoders trained "
            "this way are sampled through a second model fitted to their codes; here, start from an image's code "
            "(\"the clicked image\") or interpolate between two.")


@dataclass(frozen=True)
class Setting:
    """What one run's numbers mean: its kind, loss weights and reconstruction term."""

    kind: str  # "vae" or "ae"
    beta: float
    recon_weight: float
    recon_loss: str
    binarized: bool  # trained and evaluated on binary images (--binarize dynamic)
    colour: bool = False  # 3-channel images: the reconstruction term is worded for colour targets

    @classmethod
    def of_run(cls, run: Run) -> Setting:
        t = run.train_config
        return cls(run.model_config.kind, float(t.beta), float(t.recon_weight), t.recon_loss, is_dynamic(getattr(t, "binarize", "none")),
                   run.model_config.in_channels > 1)

    @classmethod
    def of_config(cls, config: Mapping[str, Any] | None) -> Setting:
        """From a config.json document (a run summary's config); missing or odd values fall back to the defaults."""
        model = (config or {}).get("model") or {}
        train = (config or {}).get("train") or {}
        number = lambda v, default: float(v) if is_number(v) else default  # noqa: E731
        return cls(str(model.get("kind", "vae")), number(train.get("beta"), 1.0), number(train.get("recon_weight"), 1.0),
                   str(train.get("recon_loss", "bce")), is_dynamic(str(train.get("binarize", "none"))), model.get("in_channels") == 3)

    @property
    def has_bound(self) -> bool:
        """A VAE has a negative ELBO; an autoencoder (no posterior variance, no KL) has none."""
        return self.kind != "ae"

    @property
    def beta_zero(self) -> bool:
        return self.kind == "vae" and self.beta == 0

    @property
    def low_beta(self) -> bool:
        """A VAE whose KL term weighs less than its reconstruction (0 < beta < 1): its codes may drift from the prior."""
        return self.kind == "vae" and 0 < self.beta < 1

    @property
    def unit(self) -> str:
        return bound_unit(self.recon_loss, self.binarized)

    @property
    def recon_label(self) -> str:
        return metrics.recon_label(self.recon_loss, self.binarized, self.colour)

    @property
    def recon_short(self) -> str:
        return recon_short(self.recon_loss, self.binarized, self.colour)

    @property
    def kind_label(self) -> str:
        """'VAE', 'AE', or 'VAE (β = 0)' for the no-KL ablation."""
        return "VAE (β = 0)" if self.beta_zero else self.kind.upper()

    def objective_label(self, beta: float | None = None) -> str:
        return objective_label(self.beta if beta is None else beta, self.recon_weight)

    def bound_text(self, value: float, digits: int = 1) -> str:
        """'143.2 nats' or '143.2 (BCE-based bound)'."""
        return f"{value:.{digits}f} nats" if self.unit == "nats" else f"{value:.{digits}f} ({self.unit})"


def row_beta(row: Mapping[str, Any], setting: Setting) -> float:
    """The β a history row's objective was computed with (a warm-up changes it per epoch), else the run's."""
    beta = row.get("beta")
    return float(beta) if is_number(beta) else setting.beta


def row_bound(row: Mapping[str, Any], split: str = "test") -> float | None:
    """metrics.neg_elbo of a history row, or None when the row has neither the bound nor its two terms."""
    try:
        value = metrics.neg_elbo(row, split)
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def numbers_text(setting: Setting, objective: float | None, bound: float | None, psnr: float | None, beta: float | None = None) -> str:
    """The numbers of one run's latest epoch for a one-line description: neg. ELBO and objective apart (an AE: its
    reconstruction term, no bound), and PSNR."""
    parts = []
    if not setting.has_bound:
        recon = bound if bound is not None else objective  # an AE's KL is 0: recon + KL is its reconstruction term
        if recon is not None:
            parts.append(f"recon {recon:.1f} ({setting.recon_short}; no bound: an AE)")
    else:
        if bound is not None:
            parts.append(f"neg. ELBO {setting.bound_text(bound)}")
        if objective is not None:
            parts.append(f"{setting.objective_label(beta)} {objective:.1f}")
    if psnr is not None:
        parts.append(f"PSNR {psnr:.1f} dB")
    return " · ".join(parts)


def iwae_text(evaluation: Mapping[str, Any] | None, digits: int = 2) -> str | None:
    """'IWAE NLL 102.87 ± 0.64 (K = 1,000 samples, 2,000 images; <what it is>)', or None without an evaluation."""
    if not evaluation:
        return None
    err = evaluation.get("nll_iwae_stderr")
    pm = f" ± {err:.{digits}f}" if is_number(err) else ""
    what = evaluation.get("likelihood")
    return (f"IWAE NLL {evaluation['nll_iwae']:.{digits}f}{pm} (K = {evaluation['samples']:,} samples, {evaluation['images']:,} "
            f"{evaluation.get('image_set', 'test')} images" + (f"; {what})" if isinstance(what, str) and what else ")"))


def iwae_cell(evaluation: Mapping[str, Any] | None) -> str:
    """A table cell: '102.87 ± 0.64', or NO_VALUE."""
    if not evaluation:
        return NO_VALUE
    err = evaluation.get("nll_iwae_stderr")
    return f"{evaluation['nll_iwae']:.2f}" + (f" ± {err:.2f}" if is_number(err) else "")


def run_summary_lines(run: Run, evaluation: Mapping[str, Any] | None) -> list[str]:
    """Explore's run summary: the latest epoch's bound and objective apart, what the reconstruction term is, the
    IWAE estimate when there is one, and the β = 0 warning."""
    setting = Setting.of_run(run)
    row = run.history[-1] if run.history else {}
    lines = []
    if row:
        bound, objective = row_bound(row), row.get("test_loss")
        head = f"Test set, epoch {row.get('epoch', run.epoch)}: "
        if setting.has_bound and bound is not None:
            has_terms = is_number(row.get("test_recon")) and is_number(row.get("test_kl"))
            terms = f" = reconstruction {row['test_recon']:.2f} + KL {row['test_kl']:.2f}" if has_terms else ""
            text = f"neg. ELBO {setting.bound_text(bound, 2)}{terms}"
            if is_number(objective):
                text += f" · {setting.objective_label(row_beta(row, setting))} {objective:.2f}"
            lines.append(head + text)
        elif is_number(row.get("test_recon")):
            lines.append(head + f"reconstruction term {row['test_recon']:.2f}; {AE_NOTE}")
    lines.append(f"Reconstruction term: {setting.recon_label}.")
    if setting.has_bound:
        iwae = iwae_text(evaluation)
        lines.append(iwae + "." if iwae else f"No IWAE estimate of this epoch yet (`{EVALUATE_HINT.format(name=run.name)}`).")
    if setting.beta_zero:
        lines.append(BETA_ZERO_NOTE + ".")
    return lines


def loss_curves(setting: Setting) -> tuple[list[tuple[str, Any]], str]:
    """The Train page's curves of one run, (name, history key or row function) each, and their axis title: the
    objective on train and test and, for a VAE, the test negative ELBO apart from it."""
    curves: list[tuple[str, Any]] = [("train objective", "train_loss"), ("test objective", "test_loss")]
    if not setting.has_bound:
        return curves, f"objective ({setting.recon_short}; no bound: an AE)"
    curves.append(("test neg. ELBO", lambda row: row_bound(row, "test")))
    return curves, f"{setting.objective_label()} and neg. ELBO, {setting.unit}"
