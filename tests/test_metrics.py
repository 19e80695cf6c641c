"""Metrics (trainer/metrics.py) and the LPIPS-style distance (trainer/lpips.py), on tiny seeded tensors."""
from __future__ import annotations

import math
from pathlib import Path

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


# ---------------------------------------------------------------- the bound and the labels


def test_neg_elbo_is_recorded_or_derived_from_the_unweighted_terms() -> None:
    row = {"test_loss": 161.97, "test_recon": 140.0, "test_kl": 9.5, "train_recon": 139.0, "train_kl": 9.0, "train_neg_elbo": 148.0}
    assert metrics.neg_elbo(row) == pytest.approx(149.5)  # an old row: recon + KL, not the beta-weighted objective
    assert metrics.neg_elbo(row, "train") == 148.0  # recorded: used as it is
    assert metrics.neg_elbo(row | {"test_neg_elbo": 149.25}) == 149.25
    with pytest.raises(KeyError):
        metrics.neg_elbo({"test_loss": 1.0})


def test_recon_label_says_what_the_reconstruction_term_is() -> None:
    assert metrics.recon_label("bce", binarized=True) == "Bernoulli NLL (nats)"
    assert metrics.recon_label("bce", binarized=False) == "BCE on grayscale targets (a bound on randomly binarised images, not a density)"
    assert metrics.recon_label("mse", binarized=False) == metrics.recon_label("mse", binarized=True) == "sum of squared errors (not nats)"
    assert metrics.recon_label("bce", binarized=False, colour=True) == "BCE on colour targets (a bound on randomly binarised images, not a density)"
    assert metrics.recon_label("mse", binarized=False, colour=True) == "sum of squared errors (not nats)"


# ---------------------------------------------------------------- LPIPS-style distance (local weights only)

from trainer import lpips  # noqa: E402


def _alexnet_state(with_lin: bool) -> dict[str, torch.Tensor]:
    """A randomly initialised torchvision AlexNet's feature weights (and positive LPIPS linear layers)."""
    import torchvision

    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in torchvision.models.alexnet(weights=None).features.state_dict().items()}
    if with_lin:
        for k, c in enumerate(lpips.NETS["alex"].channels):
            state[f"lin{k}.model.1.weight"] = torch.rand(1, c, 1, 1)
    return state


@pytest.fixture(scope="module")
def alex_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lpips") / "alex-lin.pth"
    torch.save(_alexnet_state(with_lin=True), path)
    return path


def _digits(seed: int, n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g)  # (B, 1, 28, 28): upsampled to 64 px inside


def test_lpips_is_zero_on_equal_images_symmetric_and_positive(alex_file: Path) -> None:
    dist = lpips.load_perceptual_distance(alex_file)
    assert dist.learned and dist.name == "LPIPS (alex)"
    x, y = _digits(0), _digits(1)
    d_xy = dist(x, y)
    assert d_xy.shape == (3,)
    assert torch.all(dist(x, x) == 0)
    assert torch.equal(d_xy, dist(y, x))
    assert torch.all(d_xy > 0)
    assert torch.all(dist(x, x + 0.01 * torch.randn_like(x).clamp(0, 1)) < d_xy)  # a small change is nearer


def test_grayscale_is_repeated_to_three_channels(alex_file: Path) -> None:
    dist = lpips.load_perceptual_distance(alex_file)
    x, y = _digits(2, 2), _digits(3, 2)
    assert torch.allclose(dist(x, y), dist(x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)))


def test_without_linear_layers_it_is_the_uniform_distance_not_lpips(tmp_path: Path) -> None:
    state = _alexnet_state(with_lin=False)
    torch.save(state, tmp_path / "alex.pth")
    uniform = lpips.load_perceptual_distance(tmp_path / "alex.pth")
    assert not uniform.learned and uniform.name == "perceptual distance, uniform weights (alex)" and "LPIPS" not in uniform.name
    for k, c in enumerate(lpips.NETS["alex"].channels):
        state[f"lin{k}.model.1.weight"] = torch.ones(1, c, 1, 1)
    ones = lpips.perceptual_distance_from_state(state)
    x, y = _digits(4, 2), _digits(5, 2)
    assert torch.allclose(uniform(x, y), ones(x, y), rtol=1e-5)  # unit linear weights = uniform weights


@pytest.mark.slow
def test_vgg16_from_safetensors(tmp_path: Path) -> None:
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    features = torchvision.models.vgg16(weights=None).features
    save_file({f"features.{k}": v.contiguous() for k, v in features.state_dict().items()}, tmp_path / "vgg.safetensors")
    dist = lpips.load_perceptual_distance(tmp_path / "vgg.safetensors")
    assert dist.name == "perceptual distance, uniform weights (vgg16)"
    x, y = _digits(6, 1), _digits(7, 1)
    assert float(dist(x, x)) == 0 and float(dist(x, y)) > 0


def test_no_path_no_metric() -> None:
    assert lpips.load_optional(None) is None and lpips.load_optional("") is None


@pytest.mark.parametrize(
    "bad, message",
    [
        ("missing", "no such file"),
        ("garbage", "not a safetensors or weights-only torch file"),
        ("nested", "flat state dict"),
        ("resnet", "unexpected key"),
        ("lin-only", "no torchvision vgg16 or alexnet feature weights"),
        ("wrong-shape", "features.3.weight has shape"),
        ("missing-layer", "lack features.10.bias"),
        ("three-lins", "needs all of lin0..lin4"),
        ("lin-shape", "lin2 has shape"),
    ],
)
def test_unusable_weights_file_gives_one_clear_line(tmp_path: Path, bad: str, message: str) -> None:
    path = tmp_path / "weights.pth"
    state = _alexnet_state(with_lin=True)
    if bad == "garbage":
        path.write_bytes(b"\x00not weights" * 100)
    elif bad == "nested":
        torch.save({"state_dict": state}, path)
    elif bad != "missing":
        if bad == "resnet":
            state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 3, 3)
        elif bad == "lin-only":
            state = {k: v for k, v in state.items() if k.startswith("lin")}
        elif bad == "wrong-shape":
            state["features.3.weight"] = torch.zeros(192, 64, 3, 3)
        elif bad == "missing-layer":
            del state["features.10.bias"]
        elif bad == "three-lins":
            del state["lin3.model.1.weight"], state["lin4.model.1.weight"]
        elif bad == "lin-shape":
            state["lin2.model.1.weight"] = torch.ones(1, 7, 1, 1)
        torch.save(state, path)
    with pytest.raises(lpips.LPIPSError, match=message) as info:
        lpips.load_perceptual_distance(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


class _Payload:
    """Unpickling this creates a marker file: what a hostile 'weights' file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("fmt", ["torch-zip", "raw-pickle"])
def test_pickle_payload_is_refused_and_never_runs(tmp_path: Path, fmt: str) -> None:
    import pickle

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"features.0.weight": torch.zeros(1), "x": _Payload(marker)}
    if fmt == "torch-zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    assert not marker.exists()
    with pytest.raises(lpips.LPIPSError, match="not a safetensors or weights-only torch file"):
        lpips.load_perceptual_distance(path)
    assert not marker.exists()
    # the payload is real: an ordinary unpickler runs it
    if fmt == "torch-zip":
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()
