"""The residual model family (arch='resnet'): shapes of every form, no bypass of the bottleneck, the config's
derived spatial latent and its JSON round trip, a training step and a run folder's save/load."""
from __future__ import annotations

import itertools

import pytest
import torch

from models import KINDS, MAX_SPATIAL_LATENT_DIM, ModelConfig, ResNetVAE, build_model, vae_loss
from trainer.cli import UserError, build_parser, configs_from_args, trainer_options
from trainer.config import TrainConfig
from trainer.runs import load_run
from trainer.train import Trainer, fit

from .helpers import tiny_data

TINY_RES_WIDTHS = (8, 16, 16)  # 28 px: 28 -> 14 -> 7
BOTTLENECKS = ("spatial", "vector")


def tiny_resnet(**kw) -> ModelConfig:
    base = {"arch": "resnet", "widths": TINY_RES_WIDTHS, "latent_channels": 2, "latent_dim": 5, "hidden_dim": 0}
    return ModelConfig(**(base | kw))


@pytest.mark.parametrize(
    "bottleneck,kind,image_size,channels", itertools.product(BOTTLENECKS, KINDS, (28, 32, 64), (1, 3))
)
def test_shapes_every_form(bottleneck, kind, image_size, channels):
    torch.manual_seed(0)
    config = tiny_resnet(bottleneck=bottleneck, kind=kind, image_size=image_size, in_channels=channels)
    side = {28: 7, 32: 8, 64: 16}[image_size]  # two downsamplings
    expected_dim = 2 * side * side if bottleneck == "spatial" else 5
    assert config.latent_dim == expected_dim
    assert config.latent_shape == ((2, side, side) if bottleneck == "spatial" else (5,))
    model = build_model(config)
    assert isinstance(model, ResNetVAE) and model.latent_dim == expected_dim and model.latent_shape == config.latent_shape
    x = torch.rand(3, channels, image_size, image_size)  # (B, C, H, W)
    posterior = model.encode(x)
    assert posterior.mean.shape == (3, expected_dim)
    assert posterior.deterministic == (kind == "ae")
    if kind == "vae":
        assert posterior.logvar.shape == (3, expected_dim)
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert out.x_hat.shape == x.shape and out.z.shape == (3, expected_dim)
    assert model.decode(torch.randn(4, expected_dim)).shape == (4, channels, image_size, image_size)
    images = model.decode_images(torch.randn(5, expected_dim), batch_size=2)
    assert images.shape == (5, channels, image_size, image_size) and 0 <= images.min() and images.max() <= 1
    batched = model.eval().encode_batches((x * 255).to(torch.uint8), batch_size=2)
    assert batched.mean.shape == (3, expected_dim)
    assert model.num_parameters() == sum(p.numel() for p in model.parameters()) > 0


def test_spatial_latent_is_the_flattened_channel_major_map():
    """The spatial posterior is the encoder's (C_z, h, w) mean map, flattened channel-major."""
    torch.manual_seed(0)
    model = build_model(tiny_resnet(bottleneck="spatial")).eval()
    x = torch.rand(2, 1, 28, 28)
    mean_map = model.encoder(x).chunk(2, dim=1)[0]  # (B, C_z, 7, 7)
    flat = model.encode(x).mean  # (B, C_z * 49)
    c, row, col = 1, 3, 5
    assert torch.equal(flat[:, c * 49 + row * 7 + col], mean_map[:, c, row, col])
    # changing one latent entry changes the decoder's input map at exactly that (channel, row, column)
    z = torch.zeros(1, model.latent_dim)
    z[0, c * 49 + row * 7 + col] = 1.0
    assert model.dec_in(z).reshape(1, *model.latent_shape)[0, c, row, col] == 1.0


@pytest.mark.parametrize("bottleneck,kind", itertools.product(BOTTLENECKS, KINDS))
def test_decoder_sees_the_input_only_through_z(bottleneck, kind):
    """No skip connection bypasses the bottleneck: given the same z, two different inputs decode identically."""
    torch.manual_seed(0)
    model = build_model(tiny_resnet(bottleneck=bottleneck, kind=kind)).eval()
    a, b = torch.rand(2, 1, 28, 28), torch.rand(2, 1, 28, 28)
    za, zb = model.encode(a).mean, model.encode(b).mean
    assert not torch.allclose(za, zb)  # the inputs differ where the model can see it
    assert not torch.allclose(model(a).x_hat, model(b).x_hat)
    # forward(x) is decode(z) alone, and decode keeps nothing of an earlier encode: the same z decodes identically
    # whichever input was encoded last (a U-Net skip, passed or cached, would make these differ)
    z = torch.randn(2, model.latent_dim)
    model.encode(a)
    after_a = model.decode(z)
    model(b)
    assert torch.equal(model.decode(z), after_a)
    assert torch.equal(model(a).x_hat, model.decode(za))


def test_no_module_connects_encoder_to_decoder():
    """The only modules between image and reconstruction are encoder -> heads -> dec_in -> decoder."""
    model = build_model(tiny_resnet(bottleneck="vector"))
    assert {name for name, _ in model.named_children()} == {"encoder", "decoder", "enc_hidden", "fc_mean", "fc_logvar", "dec_in"}


def eval_loss(model: torch.nn.Module, x: torch.Tensor) -> float:
    """The loss of `x` (B, C, H, W) at the posterior mode; the model is left in training mode."""
    with torch.no_grad():
        out = model.eval()(x)
    model.train()
    return vae_loss(x, out.x_hat, out.posterior).loss.item()


@pytest.mark.parametrize("bottleneck,kind", itertools.product(BOTTLENECKS, KINDS))
def test_a_trainer_step_changes_every_weight_and_lowers_the_loss(bottleneck, kind):
    config = tiny_resnet(bottleneck=bottleneck, kind=kind)
    trainer = Trainer(config, TrainConfig(epochs=1, batch_size=16, lr=3e-3, seed=0, atlas_size=8), tiny_data(n_train=32, n_test=16))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    x = trainer.images(trainer.train_x, torch.arange(16))
    first = eval_loss(trainer.model, x)
    for _ in range(2):
        assert trainer.train_epoch() is not None
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and set(changed) == set(before)
    last = eval_loss(trainer.model, x)
    assert last < first


@pytest.mark.parametrize("bottleneck", BOTTLENECKS)
def test_a_run_folder_round_trips(tmp_path, bottleneck):
    config = tiny_resnet(bottleneck=bottleneck, widths=(4, 8), res_blocks=2)  # 28 -> 14: a 2 x 14 x 14 map when spatial
    fit(config, TrainConfig(epochs=1, batch_size=32, seed=0, atlas_size=12), tiny_data(n_train=64, n_test=24), tmp_path / "r", progress="none")
    run = load_run(tmp_path / "r")
    assert run.model_config == config and isinstance(run.model, ResNetVAE)
    assert run.atlas.means.shape[1:] == (12, config.latent_dim)  # snapshots at epochs 0 and 1
    if bottleneck == "spatial":
        assert config.latent_dim == 2 * 14 * 14 and run.model.latent_shape == (2, 14, 14)
    # the saved weights are the trained model's: the atlas's last posteriors (kept in float16) are what the loaded model computes
    images = torch.from_numpy(run.atlas.images)
    means = run.model.encode_batches(images).mean
    assert torch.allclose(means, torch.from_numpy(run.atlas.means[-1]).float(), rtol=2e-3, atol=2e-3)
    assert not torch.allclose(means, torch.from_numpy(run.atlas.means[0]).float(), rtol=2e-3, atol=2e-3)  # epoch 0's differ


def test_config_json_round_trip_and_old_configs():
    for bottleneck in BOTTLENECKS:
        config = tiny_resnet(bottleneck=bottleneck, res_blocks=2, latent_channels=3)
        assert ModelConfig.from_dict(config.to_dict()) == config
    # a config.json written before the resnet fields existed loads with their defaults
    old = {"arch": "conv", "kind": "vae", "latent_dim": 2, "in_channels": 1, "image_size": 28, "widths": [4, 8, 8], "hidden_dim": 0}
    loaded = ModelConfig.from_dict(old)
    assert loaded.latent_dim == 2 and loaded.latent_shape == (2,) and not loaded.spatial_latent
    assert (loaded.bottleneck, loaded.latent_channels, loaded.res_blocks) == ("spatial", 4, 1)
    assert loaded.to_dict() == old | {"bottleneck": "spatial", "latent_channels": 4, "res_blocks": 1}


def test_spatial_latent_dim_is_derived_and_bounded():
    config = ModelConfig(arch="resnet", latent_channels=4, latent_dim=16)  # default widths (3): two downsamplings
    assert config.latent_dim == 4 * 7 * 7 == 196 and config.latent_shape == (4, 7, 7)
    assert ModelConfig(arch="resnet", latent_channels=16, image_size=64, in_channels=3).latent_dim == 16 * 16 * 16
    assert ModelConfig(arch="resnet", latent_channels=4, image_size=64).latent_dim == 1024  # beyond MAX_LATENT_DIM: derived sizes have their own bound
    with pytest.raises(ValueError, match=str(MAX_SPATIAL_LATENT_DIM)):
        ModelConfig(arch="resnet", latent_channels=64, image_size=128, widths=(8, 8))
    with pytest.raises(ValueError, match="latent_dim"):  # the vector form keeps the user's bound
        ModelConfig(arch="resnet", bottleneck="vector", latent_dim=513)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"bottleneck": "unet"}, "unknown bottleneck"),
        ({"latent_channels": 0}, "latent_channels"),
        ({"res_blocks": 0}, "res_blocks"),
        ({"widths": ()}, "widths must be 1 to 5"),
        ({"widths": (8,) * 6}, "widths must be 1 to 5"),
        ({"widths": (8, 0)}, "widths"),
    ],
)
def test_bad_resnet_config(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny_resnet(**kw)


def test_conv_models_keep_three_widths():
    with pytest.raises(ValueError, match="widths must be 3"):
        ModelConfig(arch="conv", widths=(8, 8))


def test_cli_flags_come_from_the_config():
    options = trainer_options()
    assert options["bottleneck"].flag == "--bottleneck" and options["bottleneck"].choices == BOTTLENECKS
    assert options["latent_channels"].flag == "--latent-channels" and options["res_blocks"].flag == "--res-blocks"
    model_config, _, _ = configs_from_args(build_parser().parse_args(["--model", "resnet", "--latent-channels", "2", "--widths", "8,8"]))
    assert model_config.latent_shape == (2, 14, 14) and model_config.latent_dim == 392
    vector, _, _ = configs_from_args(build_parser().parse_args(["--model", "resnet", "--bottleneck", "vector", "--latent-dim", "16"]))
    assert vector.latent_dim == 16
    with pytest.raises(UserError, match="leave out --latent-dim"):  # a size the spatial map cannot have is refused, not ignored
        configs_from_args(build_parser().parse_args(["--model", "resnet", "--latent-dim", "16"]))
