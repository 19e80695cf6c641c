"""Metrics (trainer/metrics.py) and the LPIPS-style distance (trainer/lpips.py), on tiny seeded tensors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainer import metrics


def _pair(seed: int = 0, shape: tuple[int, ...] = (4, 1, 28, 28)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    x_hat = (x + 0.2 * torch.randn(shape, generator=g)).clamp(0, 1)
    return x_hat, x


# ---------------------------------------------------------------- PSNR


def test_psnr_per_image_is_its_definition() -> None:
    x_hat, x = _pair()
    mse = ((x_hat - x) ** 2).flatten(1).mean(1)
    assert torch.allclose(metrics.psnr_per_image(x_hat, x), 10 * torch.log10(1 / mse))


def test_psnr_of_set_is_mse_over_all_pixels_and_below_the_per_image_mean() -> None:
    x_hat, x = _pair()
    x_hat[0] = x[0] + 0.01  # one nearly perfect image: the per-image mean rises, the set PSNR barely moves
    set_psnr = metrics.psnr_of_set(x_hat, x)
    assert set_psnr == pytest.approx(10 * math.log10(1 / float(((x_hat - x) ** 2).mean())), rel=1e-6)
    assert set_psnr == pytest.approx(metrics.psnr_from_mse(float(metrics.mse_per_image(x_hat, x).mean())), rel=1e-6)
    assert float(metrics.psnr_per_image(x_hat, x).mean()) > set_psnr + 1.0  # Jensen: strictly larger when MSEs differ


def test_psnr_of_set_equals_per_image_mean_when_every_image_has_the_same_error() -> None:
    x = torch.full((3, 1, 8, 8), 0.5)
    x_hat = x + 0.1
    assert metrics.psnr_of_set(x_hat, x) == pytest.approx(float(metrics.psnr_per_image(x_hat, x).mean()), rel=1e-5)
    assert metrics.psnr_of_set(x_hat, x) == pytest.approx(20.0, rel=1e-5)  # MSE 0.01


def test_perfect_reconstruction_is_capped_not_infinite() -> None:
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(metrics.psnr_per_image(x, x), torch.full((2,), 100.0))
    assert metrics.psnr_of_set(x, x) == pytest.approx(100.0)


# ---------------------------------------------------------------- SSIM


def _gaussian_ssim_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Wang et al. (2004) written out: 2-D Gaussian window (11, sigma 1.5), valid positions only, (B,)."""
    r = metrics.SSIM_WINDOW // 2
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-(t**2) / (2 * metrics.SSIM_SIGMA**2))
    w = (g[:, None] * g[None, :]) / (g.sum() ** 2)
    c = a.shape[1]
    kernel = w.expand(c, 1, *w.shape)

    def blur(v: torch.Tensor) -> torch.Tensor:
        return F.conv2d(v, kernel, groups=c)

    a, b = a.double(), b.double()
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    c1, c2 = (metrics.SSIM_K[0] * metrics.DATA_RANGE) ** 2, (metrics.SSIM_K[1] * metrics.DATA_RANGE) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(2).mean(2).mean(1)


@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (2, 3, 32, 24)])
def test_ssim_is_gaussian_window_ssim_over_valid_positions(shape: tuple[int, ...]) -> None:
    x_hat, x = _pair(1, shape)
    ours = metrics.ssim_per_image(x_hat, x).double()
    assert torch.allclose(ours, _gaussian_ssim_reference(x_hat, x), atol=1e-5)
    assert float(metrics.ssim(x_hat, x)) == pytest.approx(float(ours.mean()), abs=1e-6)
    assert torch.allclose(metrics.ssim_per_image(x, x), torch.ones(shape[0]), atol=1e-6)


def test_ssim_agrees_with_scikit_image() -> None:
    skm = pytest.importorskip("skimage.metrics")
    x_hat, x = _pair(2, (3, 1, 28, 28))
    ours = metrics.ssim_per_image(x_hat, x)
    for i in range(3):
        ref = skm.structural_similarity(
            x_hat[i, 0].double().numpy(), x[i, 0].double().numpy(),
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
        )
        assert float(ours[i]) == pytest.approx(ref, abs=1e-4)


# ---------------------------------------------------------------- active units


def test_kl_active_units_counts_dimensions_above_threshold() -> None:
    assert metrics.kl_active_units(torch.tensor([0.0, 0.009, 0.011, 3.0])) == 2


def test_active_units_burda_is_variance_of_the_posterior_mean() -> None:
    g = torch.Generator().manual_seed(0)
    n = 2000
    means = torch.stack([
        torch.randn(n, generator=g),  # variance ~1: active
        0.05 * torch.randn(n, generator=g),  # variance ~0.0025: inactive
        torch.full((n,), 3.0),  # constant, however far from 0: inactive
        0.2 * torch.randn(n, generator=g),  # variance ~0.04: active
    ], dim=1)  # (N, D)
    assert metrics.active_units_burda(means) == 2
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.active_units_burda(means[:1])


def test_legacy_active_units_column_keeps_its_meaning() -> None:
    kl = torch.tensor([0.5, 0.0])
    var = torch.tensor([0.0, 0.5])
    assert metrics.active_units(kl, var, deterministic=False) == metrics.kl_active_units(kl) == 1
    assert metrics.active_units(kl, var, deterministic=True) == 1 and metrics.active_units(kl, torch.zeros(2), True) == 0


# ---------------------------------------------------------------- BCE floor on grayscale targets


def test_binary_entropy_is_the_bce_of_a_perfect_model() -> None:
    x = torch.rand(3, 1, 6, 6, dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
    bce = F.binary_cross_entropy_with_logits(torch.logit(x), x, reduction="none").flatten(1).sum(1)
    assert torch.allclose(metrics.binary_entropy_per_image(x), bce)
    assert torch.all(metrics.binary_entropy_per_image(torch.tensor([[0.0, 1.0]])) == 0)


def test_bce_floor_on_bundled_mnist_test_digits_is_44_06(tmp_path) -> None:
    """README's figure: a perfect model still scores 44.06 nats of BCE per test digit of data/mnist-subset."""
    from trainer.data import load_dataset

    data = load_dataset("mnist", data_dir=tmp_path)  # nothing there: the bundled subset
    assert data.source["kind"] == "subset" and len(data.test_x) == 2000
    floor = metrics.binary_entropy_per_image(data.test_x.double() / 255).mean()
    assert float(floor) == pytest.approx(44.06, abs=0.005)
