"""Model family: shapes for every model x kind x size, the posterior's maths, the loss, training steps."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from models import ARCHS, IMAGE_SIZES, KINDS, DiagonalGaussian, ModelConfig, build_model, standard_normal_log_density, vae_loss


def tiny_config(**kw) -> ModelConfig:
    base = {"widths": (4, 8, 8), "hidden_dim": 16 if kw.get("arch") == "mlp" else 0}
    if kw.get("arch") == "resnet":  # the vector form takes latent_dim as given; the spatial one derives it (tests/test_resnet.py)
        base["bottleneck"] = "vector"
    return ModelConfig(**(base | kw))


@pytest.mark.parametrize("arch,kind,image_size,channels", itertools.product(ARCHS, KINDS, IMAGE_SIZES, (1, 3)))
def test_shapes_every_model(arch, kind, image_size, channels):
    torch.manual_seed(0)
    model = build_model(tiny_config(arch=arch, kind=kind, image_size=image_size, in_channels=channels, latent_dim=3))
    x = torch.rand(2, channels, image_size, image_size)  # (B, C, H, W)
    posterior = model.encode(x)
    assert posterior.mean.shape == (2, 3) and posterior.logvar.shape == (2, 3)
    assert model.decode(posterior.sample()).shape == x.shape
    out = model(x)
    assert out.x_hat.shape == x.shape and out.z.shape == (2, 3)


@pytest.mark.parametrize("latent_dim", [1, 512])
def test_latent_size_limits(latent_dim):
    model = build_model(tiny_config(latent_dim=latent_dim))
    assert model.encode(torch.rand(1, 1, 28, 28)).mean.shape == (1, latent_dim)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"latent_dim": 0}, "latent_dim"),
        ({"latent_dim": 513}, "latent_dim"),
        ({"arch": "unet"}, "unknown model"),
        ({"kind": "gan"}, "unknown kind"),
        ({"image_size": 30}, "image_size"),
        ({"in_channels": 2}, "in_channels"),
        ({"widths": (4, 8)}, "widths"),
        ({"arch": "mlp", "hidden_dim": 0}, "hidden_dim"),
    ],
)
def test_bad_model_config(kw, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**({"widths": (4, 8, 8)} | kw))


def test_config_is_frozen_and_round_trips():
    config = tiny_config(arch="conv-upsample", latent_dim=7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.latent_dim = 3  # type: ignore[misc]
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict(config.to_dict() | {"dropout": 0.1})


def test_kl_non_negative_and_zero_at_prior():
    torch.manual_seed(0)
    posterior = DiagonalGaussian(torch.randn(64, 5) * 3, torch.randn(64, 5) * 2)
    assert (posterior.kl() >= 0).all()
    prior = DiagonalGaussian(torch.zeros(4, 5), torch.zeros(4, 5))
    assert torch.allclose(prior.kl(), torch.zeros(4))


def test_kl_matches_torch_distributions():
    torch.manual_seed(1)
    mean, logvar = torch.randn(8, 3), torch.randn(8, 3)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    assert torch.allclose(DiagonalGaussian(mean, logvar).kl(), expected, atol=1e-5)


def test_sample_is_seeded_and_reparameterised():
    mean, logvar = torch.zeros(2, 3, requires_grad=True), torch.zeros(2, 3, requires_grad=True)
    posterior = DiagonalGaussian(mean, logvar)
    a = posterior.sample(torch.Generator().manual_seed(0))
    b = posterior.sample(torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, posterior.mode())
    a.sum().backward()
    assert mean.grad is not None and logvar.grad is not None


def test_sample_with_given_noise_is_mean_plus_std_times_eps():
    torch.manual_seed(2)
    mean, logvar, eps = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    posterior = DiagonalGaussian(mean, logvar)
    assert torch.equal(posterior.sample(eps=eps), mean + torch.exp(0.5 * logvar) * eps)
    with pytest.raises(ValueError, match="differ in shape"):
        posterior.sample(eps=eps[:2])
    with pytest.raises(ValueError, match="not both"):
        posterior.sample(torch.Generator().manual_seed(0), eps=eps)
    ae = DiagonalGaussian(mean)
    assert torch.equal(ae.sample(eps=eps), mean) and torch.equal(ae.sample(torch.Generator()), mean)


def test_autoencoder_posterior_is_deterministic():
    model = build_model(tiny_config(kind="ae", latent_dim=4)).train()
    x = torch.rand(3, 1, 28, 28)
    posterior = model.encode(x)
    assert posterior.deterministic and torch.all(posterior.std == 0)
    assert torch.equal(posterior.sample(), posterior.mean) and torch.equal(posterior.kl(), torch.zeros(3))
    assert torch.equal(model(x).z, model(x).z)


def test_prior_log_density():
    z = torch.zeros(1, 4)
    assert torch.allclose(standard_normal_log_density(z), torch.distributions.Normal(0, 1).log_prob(z).sum(1))


def test_loss_terms_per_sample_in_nats():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 28, 28).round()
    logits = torch.zeros_like(x)  # p = 0.5 everywhere -> recon = 784 * ln 2 per image
    posterior = DiagonalGaussian(torch.ones(4, 2), torch.zeros(4, 2))  # KL = 0.5 * sum(mu^2) = 1 per image
    terms = vae_loss(x, logits, posterior, beta=2.0)
    assert terms.recon.item() == pytest.approx(784 * torch.log(torch.tensor(2.0)).item(), rel=1e-5)
    assert terms.kl.item() == pytest.approx(1.0)
    assert terms.loss.item() == pytest.approx(terms.recon.item() + 2.0)
    ablated = vae_loss(x, logits, posterior, recon_weight=0.0)
    assert ablated.loss.item() == pytest.approx(1.0)
    mse = vae_loss(x, logits, posterior, recon_loss="mse", beta=0.0)
    assert mse.loss.item() == pytest.approx(((0.5 - x) ** 2).sum().item() / 4)
    l1 = vae_loss(x, logits, posterior, recon_loss="l1", beta=0.0)
    assert l1.loss.item() == pytest.approx((0.5 - x).abs().sum().item() / 4)  # 0.5 per pixel of binary images
    with pytest.raises(ValueError, match="recon_loss"):
        vae_loss(x, logits, posterior, recon_loss="huber")


def test_the_cpu_bce_matches_torch_in_value_and_gradient():
    """models.loss.bce_with_logits (a vectorised form on the CPU) against torch's, with logits far into both tails."""
    import torch.nn.functional as F

    from models.loss import bce_with_logits

    g = torch.Generator().manual_seed(0)
    z = torch.cat([8 * torch.randn(64, 784, generator=g), torch.tensor([[-100.0, -30.0, -1e-3, 0.0, 1e-3, 30.0, 100.0]]).expand(64, 7)], 1)
    x = torch.cat([torch.rand(64, 784, generator=g), torch.tensor([[0.0, 1.0, 0.5, 0.3, 1.0, 0.0, 1.0]]).expand(64, 7)], 1)
    exact = F.binary_cross_entropy_with_logits(z.double(), x.double(), reduction="none")
    outputs = {}
    for name, fn in (("project", bce_with_logits), ("torch", lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction="none"))):
        zz, xx = z.clone().requires_grad_(), x.clone().requires_grad_()
        value = fn(zz, xx)
        (value * torch.linspace(0.5, 2.0, value.shape[1])).sum().backward()  # an uneven upstream gradient
        outputs[name] = (value.detach(), zz.grad, xx.grad)
    assert torch.isfinite(outputs["project"][0]).all()
    assert (outputs["project"][0].double() - exact).abs().max() < 2e-5  # float32 rounding of values up to ~800
    assert (outputs["project"][0].sum(1).double() - exact.sum(1)).abs().max() < 1e-3
    torch.testing.assert_close(outputs["project"][1], outputs["torch"][1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outputs["project"][2], outputs["torch"][2], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("arch,kind", itertools.product(ARCHS, KINDS))
def test_one_step_changes_weights_and_lowers_loss(arch, kind):
    torch.manual_seed(0)
    model = build_model(tiny_config(arch=arch, kind=kind, latent_dim=2))
    x = torch.rand(8, 1, 28, 28)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = []
    for _ in range(5):
        out = model(x, generator=torch.Generator().manual_seed(0))
        loss = vae_loss(x, out.x_hat, out.posterior).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) == len(before)
    assert losses[-1] < losses[0]


def test_batched_helpers_match_direct_calls():
    torch.manual_seed(0)
    model = build_model(tiny_config(latent_dim=3)).eval()
    x = (torch.rand(10, 1, 28, 28) * 255).to(torch.uint8)
    posterior = model.encode_batches(x, batch_size=4)
    direct = model.encode(x.float() / 255)
    assert torch.allclose(posterior.mean, direct.mean, atol=1e-6)
    images = model.decode_images(posterior.mean, batch_size=3)
    assert images.shape == (10, 1, 28, 28) and images.min() >= 0 and images.max() <= 1
    assert torch.allclose(images, torch.sigmoid(model.decode(direct.mean)), atol=1e-6)
