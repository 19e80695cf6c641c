"""The IWAE evaluation: the estimator against closed-form and quadrature likelihoods, bound ordering, the CLI."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal, Normal

from models import DiagonalGaussian, reconstruction_per_sample, standard_normal_log_density
from trainer.evaluate import (
    binary_targets,
    evaluate_model,
    evaluation_path,
    iwae_log_likelihood,
    likelihood_label,
    main,
    posterior_log_density,
    read_evaluation,
)
from trainer.paths import PROJECT_ROOT
from trainer.runs import load_run

from .helpers import make_run

REQUIRED_KEYS = {"nll_iwae", "nll_iwae_stderr", "neg_elbo", "samples", "images", "epoch", "recon_loss", "likelihood", "images_used"}


# ---------------------------------------------------------------- the estimator on a linear-Gaussian model


def linear_gaussian(seed: int = 0, latent: int = 2, observed: int = 3, noise_std: float = 0.5):
    """z ~ N(0, I), x | z ~ N(W z + b, s^2 I): a model whose marginal and posterior are known in closed form."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(observed, latent, generator=g, dtype=torch.float64)
    b = torch.randn(observed, generator=g, dtype=torch.float64)
    marginal = MultivariateNormal(b, w @ w.T + noise_std**2 * torch.eye(observed, dtype=torch.float64))
    x = marginal.sample((4,))  # (N, X)
    post_cov = torch.linalg.inv(torch.eye(latent, dtype=torch.float64) + w.T @ w / noise_std**2)  # (D, D)
    post_mean = (x - b) @ w @ post_cov / noise_std**2  # (N, D)  (post_cov is symmetric)

    def log_px_given_z(z: torch.Tensor) -> torch.Tensor:  # z (..., N, D) -> (..., N)
        return Normal(z @ w.T + b, noise_std).log_prob(x).sum(-1)

    return marginal.log_prob(x), post_mean, post_cov, log_px_given_z


def test_exact_posterior_gives_the_log_marginal_for_every_k():
    log_px, post_mean, post_cov, log_px_given_z = linear_gaussian()
    q = MultivariateNormal(post_mean, post_cov)  # the exact posterior of each x: every weight is p(x)
    torch.manual_seed(1)
    for k in (1, 7, 300):
        z = q.sample((k,))  # (K, N, D)
        estimate = iwae_log_likelihood(log_px_given_z(z), standard_normal_log_density(z), q.log_prob(z))
        assert estimate.shape == log_px.shape and estimate.dtype == torch.float64
        torch.testing.assert_close(estimate, log_px, rtol=0, atol=1e-9)


def test_inexact_posterior_rises_towards_the_log_marginal_as_k_grows():
    log_px, post_mean, post_cov, log_px_given_z = linear_gaussian(seed=3)
    # A mean-field q with the exact means but twice the marginal variances: not the posterior.
    q = Normal(post_mean, (2 * torch.diagonal(post_cov)).sqrt())
    torch.manual_seed(0)
    repeats = 200
    gaps = []
    for k in (1, 10, 100, 2000):
        z = q.sample((k, repeats))  # (K, R, N, D)
        estimate = iwae_log_likelihood(log_px_given_z(z), standard_normal_log_density(z), q.log_prob(z).sum(-1))  # (R, N)
        gaps.append(float((log_px - estimate.mean(0)).mean()))
    assert gaps[0] > 0.05  # IWAE-1 (the ELBO) sits clearly below log p(x)
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps  # the bound tightens with K
    assert abs(gaps[-1]) < 0.01, gaps


# ---------------------------------------------------------------- the model-level estimator against quadrature


class OneDimBernoulli(nn.Module):
    """A VAE-interface model with a 1-D latent and a Bernoulli decoder logits = a z + c over 2x2 images."""

    def __init__(self, slope: float, q_mean: float, q_logvar: float):
        super().__init__()
        self.a = nn.Parameter(torch.tensor([[[slope, -slope], [0.5 * slope, 2.0 * slope]]]))  # (1, 2, 2)
        self.c = nn.Parameter(torch.tensor([[[0.3, -0.2], [0.1, 0.0]]]))
        self.q_mean, self.q_logvar = q_mean, q_logvar

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        mean = torch.full((len(x), 1), self.q_mean)  # (B, 1)
        return DiagonalGaussian(mean, torch.full_like(mean, self.q_logvar))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z[:, :, None, None] * self.a + self.c  # (B, 1, 2, 2)


BINARY_IMAGES = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 1], [1, 1, 0, 0]], dtype=torch.float32).view(3, 1, 2, 2)


def quadrature_nll(model: OneDimBernoulli, x: torch.Tensor) -> torch.Tensor:
    """-log p(x) = -log integral p(x|z) N(z; 0, 1) dz on a fine grid, per image (N,), float64."""
    z = torch.linspace(-12, 12, 24001, dtype=torch.float64)
    logits = (z[:, None, None, None] * model.a.double() + model.c.double())  # (G, 1, 2, 2)
    log_joint = torch.stack([
        -reconstruction_per_sample(logits, xi.double().expand_as(logits), "bce") + Normal(0.0, 1.0).log_prob(z) for xi in x
    ])  # (N, G)
    return -(torch.logsumexp(log_joint, dim=1) + math.log(float(z[1] - z[0])))


@torch.no_grad()
def test_model_with_exact_posterior_gives_the_exact_nll_in_any_batch_size():
    model = OneDimBernoulli(slope=0.0, q_mean=0.0, q_logvar=0.0)  # the decoder ignores z: the prior is the posterior
    exact = reconstruction_per_sample(model.decode(torch.zeros(3, 1)), BINARY_IMAGES).double()  # -log p(x)
    for batch_size in (1, 5, 1000):
        out = evaluate_model(model, BINARY_IMAGES, samples=13, batch_size=batch_size, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out.nll_iwae, exact, rtol=0, atol=1e-5)
        torch.testing.assert_close(out.neg_elbo, exact, rtol=0, atol=1e-5)


@torch.no_grad()
def test_model_estimate_approaches_quadrature_and_stays_above_it():
    model = OneDimBernoulli(slope=2.0, q_mean=0.2, q_logvar=0.3)  # q is not the posterior
    exact = quadrature_nll(model, BINARY_IMAGES)
    small = evaluate_model(model, BINARY_IMAGES.repeat(200, 1, 1, 1), samples=1, generator=torch.Generator().manual_seed(0))
    large = evaluate_model(model, BINARY_IMAGES, samples=40000, batch_size=4099, generator=torch.Generator().manual_seed(0))
    per_image_k1 = small.nll_iwae.view(200, 3).mean(0)
    assert (per_image_k1 > exact + 0.5).all()  # the ELBO is loose here (by 1.2 to 3 nats) ...
    torch.testing.assert_close(large.nll_iwae, exact, rtol=0, atol=0.03)  # ... IWAE-40000 is not (Monte Carlo sd <= 0.008)
    assert (large.neg_elbo > large.nll_iwae + 0.2).all()


def test_posterior_log_density_matches_torch():
    g = torch.Generator().manual_seed(0)
    mean, logvar, eps = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(3))
    z = DiagonalGaussian(mean, logvar).sample(eps=eps)
    expected = Normal(mean, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(posterior_log_density(eps, logvar), expected)


def test_binary_targets_and_labels():
    assert binary_targets(torch.tensor([0, 255, 255], dtype=torch.uint8))
    assert not binary_targets(torch.tensor([0, 128, 255], dtype=torch.uint8))
    assert binary_targets(torch.tensor([0.0, 1.0])) and not binary_targets(torch.tensor([0.0, 0.5]))
    assert "not a density" in likelihood_label("bce", False)
    assert "not a density" not in likelihood_label("bce", True)
    assert likelihood_label("mse", True) == "sum of squared errors: not a likelihood"
    for binary in (True, False):  # l1 has its own wording, not the generic "minus the 'l1' reconstruction term"
        assert likelihood_label("l1", binary) == "sum of absolute errors, not nats: not a likelihood"


# ---------------------------------------------------------------- a tiny trained run


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    make_run(root, "vae", arch="mlp", latent_dim=2, epochs=1)
    make_run(root, "ae", arch="mlp", kind="ae", latent_dim=2, epochs=1)
    return root


def test_bounds_are_ordered_on_a_trained_run(tiny_runs):
    run = load_run(tiny_runs / "vae")
    x = torch.from_numpy(run.atlas.images).repeat(5, 1, 1, 1)  # 40 images, 5 estimates each
    nll = {k: float(evaluate_model(run.model, x, samples=k, generator=torch.Generator().manual_seed(k)).nll_iwae.mean()) for k in (1, 5, 100)}
    assert nll[1] > nll[5] > nll[100], nll  # gaps of about 2 and 0.2 nats, each several standard errors
    out = evaluate_model(run.model, x, samples=100, generator=torch.Generator().manual_seed(5))
    assert float(out.neg_elbo.mean()) > float(out.nll_iwae.mean())
    # IWAE-1 and the (analytic-KL) negative ELBO agree in expectation: averaged over many draws per image.
    one = evaluate_model(run.model, x.repeat(100, 1, 1, 1), samples=1, generator=torch.Generator().manual_seed(6))
    diff = one.nll_iwae - one.neg_elbo  # log q(z) - log p(z) - KL per draw: zero mean
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(len(diff))
    assert float(diff.std()) > 0  # they differ draw by draw, so the check above is not vacuous


def test_cli_prints_one_line_writes_and_reads_back(tiny_runs, capsys):
    run_dir = tiny_runs / "vae"
    assert main([str(run_dir), "--samples", "20", "--images", "8", "--seed", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    record = json.loads(out[0])
    assert REQUIRED_KEYS <= record.keys()
    assert (record["samples"], record["images"], record["epoch"], record["recon_loss"]) == (20, 8, 1, "bce")
    assert record["image_set"] == "test" and "not a density" in record["likelihood"]  # MNIST is grayscale
    assert 0 < record["bce_floor"] < record["nll_iwae"]
    assert record["nll_iwae_stderr"] > 0 and record["neg_elbo"] >= record["nll_iwae"] - 3 * record["nll_iwae_stderr"]
    assert evaluation_path(run_dir, 1).name == "evaluation-000001.json"
    assert read_evaluation(run_dir, 1) == record
    assert read_evaluation(run_dir, 2) is None
    # The same seed gives the same figures.
    assert main([str(run_dir), "--samples", "20", "--images", "8", "--seed", "3", "--device", "cpu"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["nll_iwae"] == record["nll_iwae"]


def test_read_evaluation_refuses_bad_files(tmp_path):
    path = evaluation_path(tmp_path, 4)
    path.write_text("[1, 2]")
    assert read_evaluation(tmp_path, 4) is None
    path.write_text(json.dumps({"epoch": 4, "samples": 10, "images": 3, "nll_iwae": "90", "neg_elbo": 95.0}))
    assert read_evaluation(tmp_path, 4) is None
    path.write_text(json.dumps({"epoch": 5, "samples": 10, "images": 3, "nll_iwae": 90.0, "neg_elbo": 95.0}))
    assert read_evaluation(tmp_path, 4) is None  # a file that names another epoch
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere.json")
    assert read_evaluation(tmp_path, 4) is None


def test_falls_back_to_the_atlas_when_the_dataset_is_not_the_runs(tiny_runs, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "moved"
    shutil.copytree(tiny_runs / "vae", run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    config["data"]["kind"] = "full"  # as if trained on full MNIST, which this machine lacks
    (run_dir / "config.json").write_text(json.dumps(config))
    assert main([str(run_dir), "--samples", "2", "--images", "5", "--device", "cpu"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["image_set"] == "atlas" and record["images"] == 5 and "atlas" in record["images_used"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["ae"], "autoencoder"),
        (["vae", "--samples", "0"], "--samples"),
        (["no-such-run"], "no such run"),
    ],
)
def test_cli_refuses_with_one_line(tiny_runs, capsys, args, words):
    assert main([str(tiny_runs / args[0]), *args[1:], "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0]
    assert not evaluation_path(tiny_runs / "ae", 1).exists()


@pytest.mark.slow
def test_module_entry_point_refuses_a_missing_run(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.evaluate", str(tmp_path / "missing")],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "no such run" in proc.stderr


def test_units_say_nats_only_for_a_true_log_density() -> None:
    from trainer.evaluate import units_label

    assert units_label("bce", True) == "nats per image"
    for recon_loss, binary in (("bce", False), ("mse", True), ("mse", False), ("l1", False)):
        assert "not nats" in units_label(recon_loss, binary)
