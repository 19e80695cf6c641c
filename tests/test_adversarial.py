"""The losses for sharpness: L1, the PatchGAN discriminator (shape, hinge loss, adaptive weight, schedule, exact
resume, run folder) and the perceptual loss (off without weights, on with a local VGG16 state dict)."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from models import (
    ModelConfig,
    PatchDiscriminator,
    adaptive_weight,
    decoder_last_layer,
    generator_loss,
    hinge_d_loss,
    patch_grid,
    reconstruction_per_sample,
)
from models.discriminator import ADAPTIVE_EPS, ADAPTIVE_MAX
from trainer import adversarial, cli, metrics
from trainer.cli import PROG, main
from trainer.config import TrainConfig
from trainer.lpips import LPIPSError
from trainer.runs import CONFIG_FILE, MANIFEST_FILE, OPTIONAL_FILES, epoch_file, load_run
from trainer.train import Trainer, fit

from .helpers import CLI_TINY_FLAGS, TINY_WIDTHS, ok, start_app, tiny_data

MODEL = ModelConfig(arch="resnet", widths=(8, 8), latent_channels=2)  # 2 x 14 x 14 latent map at 28 px
SHARP = {"recon_loss": "l1", "beta": 1e-3, "disc_weight": 0.5, "disc_layers": 2, "disc_channels": 8}
N_TRAIN, N_TEST, BATCH = 48, 24, 16  # three steps per epoch


def train_config(**kw) -> TrainConfig:
    return TrainConfig(**({"epochs": 3, "batch_size": BATCH, "seed": 0, "atlas_size": 12} | kw))


def trainer(**kw) -> Trainer:
    return Trainer(MODEL, train_config(**kw), tiny_data(N_TRAIN, N_TEST))


def batch(t: Trainer, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n training images (B, 1, 28, 28) and fixed noise (B, D)."""
    return t.images(t.train_x, slice(0, n)), torch.randn(n, MODEL.latent_dim, generator=torch.Generator().manual_seed(1))


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------- pure pieces

def test_l1_reconstruction_values_and_label() -> None:
    x = torch.tensor([0.0, 1.0, 0.25, 1.0]).view(1, 1, 2, 2)
    logits = torch.tensor([0.0, 0.0, 0.0, 40.0]).view(1, 1, 2, 2)  # sigmoid: 0.5, 0.5, 0.5, ~1
    assert reconstruction_per_sample(logits, x, "l1").item() == pytest.approx(0.5 + 0.5 + 0.25 + 0.0, abs=1e-6)
    assert reconstruction_per_sample(logits, x, "mse").item() == pytest.approx(0.25 + 0.25 + 0.0625, abs=1e-6)
    assert metrics.recon_label("l1", binarized=False) == "sum of absolute errors (not nats)"
    with pytest.raises(ValueError, match="bce, mse, l1"):
        reconstruction_per_sample(logits, x, "huber")


@pytest.mark.parametrize("channels,size,layers,ndf", [(1, 28, 3, 8), (1, 28, 2, 4), (3, 64, 3, 8), (3, 32, 1, 4)])
def test_discriminator_gives_one_logit_per_patch(channels: int, size: int, layers: int, ndf: int) -> None:
    torch.manual_seed(0)
    d = PatchDiscriminator(channels, ndf, layers)
    out = d(torch.rand(2, channels, size, size) * 2 - 1)
    side = patch_grid(size, layers)
    assert out.shape == (2, 1, side, side) and side >= 1
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [ndf * min(2**n, 8) for n in range(layers + 1)] + [1]  # doubling, capped at 8x
    assert len(convs) == layers + 2 and all(c.bias is None for c in convs[1:-1])  # BatchNorm follows the middle convs
    assert abs(convs[1].weight.std().item() - 0.02) < 0.005  # N(0, 0.02) initialisation


def test_too_many_layers_leave_no_patch() -> None:
    assert patch_grid(28, 3) == 1 and patch_grid(28, 4) < 1
    args = cli.build_parser().parse_args(["--disc-weight", "1", "--disc-layers", "4"])
    with pytest.raises(cli.UserError, match="--disc-layers 4 is too deep for 28 px"):
        cli.configs_from_args(args)


def test_hinge_losses_on_a_known_case() -> None:
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    # real: relu(1 - 2) = 0, relu(1 - 0.5) = 0.5 -> 0.25; fake: relu(1 - 2) = 0, relu(1 + 0.5) = 1.5 -> 0.75
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.75))
    assert hinge_d_loss(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -5.0])).item() == 0.0  # beyond the margins: nothing to learn
    assert generator_loss(torch.tensor([1.0, 3.0])).item() == -2.0


def test_adaptive_weight_is_the_gradient_norm_ratio_clamped() -> None:
    w = torch.nn.Parameter(torch.ones(3, 4))
    nll, g = (3.0 * w).sum(), (0.5 * w).sum()  # gradients 3 and 0.5 everywhere
    ratio = adaptive_weight(nll, g, w)
    norm_nll, norm_g = 3.0 * math.sqrt(12), 0.5 * math.sqrt(12)
    assert not ratio.requires_grad and math.isfinite(ratio.item())
    assert ratio.item() == pytest.approx(norm_nll / (norm_g + ADAPTIVE_EPS), rel=1e-6)
    tiny_g = (1e-12 * w).sum()  # a generator gradient of ~0: the ratio would be ~3e5, clamped
    assert adaptive_weight((3.0 * w).sum(), tiny_g, w).item() == ADAPTIVE_MAX
    assert adaptive_weight((0.0 * w).sum(), g, w).item() == 0.0


def test_the_last_layer_is_the_one_that_makes_the_logits() -> None:
    from models import build_model

    for arch in ("mlp", "conv", "resnet"):
        model_config = ModelConfig(arch=arch, widths=(8, 8) if arch == "resnet" else TINY_WIDTHS, hidden_dim=16 if arch == "mlp" else 0)
        model = build_model(model_config)
        last = decoder_last_layer(model)
        expected = model.dec_in[-1].weight if arch == "mlp" else [p for p in model.decoder.parameters() if p.ndim > 1][-1]
        assert last is expected, arch
        (grad,) = torch.autograd.grad(model.decode(torch.randn(2, model_config.latent_dim)).sum(), last)  # on the path to the logits
        assert grad.abs().sum() > 0


# ---------------------------------------------------------------- the schedule in training

def test_no_adversarial_term_before_disc_start_then_both_steps() -> None:
    """Steps before --disc-start train exactly the classic objective and leave the discriminator alone; from it on,
    the model's step changes and the discriminator trains."""
    classic, sharp = trainer(recon_loss="l1", beta=1e-3), trainer(**SHARP, disc_start=2)
    assert classic.sharp is None and sharp.sharp is not None and sharp.sharp.disc is not None
    assert same(params(classic.model), params(sharp.model))  # the discriminator is built after the model: same start
    x, eps = batch(sharp)
    disc_before = params(sharp.sharp.disc)
    for step in (0, 1):
        classic.global_step = sharp.global_step = step
        a, b = classic.train_step(x, 1e-3, eps=eps), sharp.train_step(x, 1e-3, eps=eps)
        assert torch.equal(a.loss, b.loss)
        assert same(params(classic.model), params(sharp.model)), f"step {step}"
        assert same(disc_before, params(sharp.sharp.disc))
    assert sharp.sharp.counts["g_loss"] == sharp.sharp.counts["d_loss"] == 0
    classic.global_step = sharp.global_step = 2
    classic.train_step(x, 1e-3, eps=eps), sharp.train_step(x, 1e-3, eps=eps)
    assert not same(params(classic.model), params(sharp.model))
    assert not same(disc_before, params(sharp.sharp.disc))
    logs = sharp.sharp.epoch_terms()
    assert set(logs) == {"train_g_loss", "train_d_loss", "train_disc_weight"}
    assert 0 < logs["train_disc_weight"] <= ADAPTIVE_MAX * SHARP["disc_weight"] and math.isfinite(logs["train_g_loss"])
    assert sharp.sharp.epoch_terms() == {}  # reset


def test_the_history_records_the_adversarial_terms_from_the_start_step(tmp_path: Path) -> None:
    t = fit(MODEL, train_config(**SHARP, epochs=2, disc_start=3), tiny_data(N_TRAIN, N_TEST), tmp_path / "r", progress="none")
    first, second = t.history  # steps 0-2, then 3-5
    assert "train_g_loss" not in first and "train_d_loss" not in first
    assert {"train_g_loss", "train_d_loss", "train_disc_weight"} <= set(second)


# ---------------------------------------------------------------- the run folder and exact resume

def disc_state(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    manifest = json.loads((run_dir / MANIFEST_FILE).read_text())
    return load_file(run_dir / manifest["files"]["disc"]) | {f"optim.{k}": v for k, v in load_file(run_dir / manifest["files"]["disc-optim"]).items()}


def test_resume_with_the_discriminator_is_exact(tmp_path: Path) -> None:
    """A run stopped part-way through epoch 2 and resumed ends with the weights, discriminator and history of a straight run."""
    data, config = tiny_data(N_TRAIN, N_TEST), train_config(**SHARP, disc_start=1)
    straight = fit(MODEL, config, data, tmp_path / "straight", progress="none")
    calls = {"n": 0}

    def stop_in_epoch_2() -> bool:
        calls["n"] += 1
        return calls["n"] > 3 + 2  # epoch 1's three steps, then two steps of epoch 2

    stopped = fit(MODEL, config, data, tmp_path / "resumed", progress="none", stop=stop_in_epoch_2)
    assert stopped.epoch == 1 and load_run(tmp_path / "resumed").epoch == 1
    fit(MODEL, config, data, tmp_path / "resumed", progress="none", resume=True)
    a, b = load_run(tmp_path / "straight"), load_run(tmp_path / "resumed")
    for name, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[name]), name
    da, db = disc_state(tmp_path / "straight"), disc_state(tmp_path / "resumed")
    assert da.keys() == db.keys() and all(torch.equal(da[k], db[k]) for k in da), "discriminator state"
    assert [r["train_g_loss"] for r in a.history] == [r["train_g_loss"] for r in b.history]
    assert [r["test_loss"] for r in a.history] == [r["test_loss"] for r in b.history]
    kinds = sorted(p.name for p in (tmp_path / "resumed").iterdir() if epoch_file(p.name))
    assert kinds == [f"{k}-000003{s}" for k, s in sorted(({"disc": ".safetensors", "disc-optim": ".safetensors", "history": ".jsonl",
                                                          "latents": ".npz", "optim": ".safetensors", "weights": ".safetensors"}).items())]
    assert straight.sharp is not None and set(OPTIONAL_FILES) <= set(a.manifest["files"])
    assert "discriminator" in a.info and a.info["discriminator"]["layers"] == SHARP["disc_layers"]


def test_a_run_without_discriminator_files_cannot_resume_with_one(tmp_path: Path) -> None:
    data = tiny_data(N_TRAIN, N_TEST)
    fit(MODEL, train_config(**SHARP, epochs=1), data, tmp_path / "r", progress="none")
    manifest = json.loads((tmp_path / "r" / MANIFEST_FILE).read_text())
    del manifest["files"]["disc"]
    (tmp_path / "r" / MANIFEST_FILE).write_text(json.dumps(manifest))
    from trainer.runs import RunError

    with pytest.raises(RunError, match="no 'disc' file"):
        fit(MODEL, train_config(**SHARP, epochs=2), data, tmp_path / "r", progress="none", resume=True)


def test_the_app_opens_a_run_with_a_discriminator_as_any_other(monkeypatch, tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    fit(MODEL, train_config(**SHARP, epochs=1), tiny_data(N_TRAIN, N_TEST), root / "sharp", progress="none")
    run = load_run(root / "sharp")  # the explorer's loader: the discriminator files are not read
    assert run.epoch == 1 and set(run.model.state_dict()) == set(load_run(root / "sharp").model.state_dict())
    at = ok(start_app(monkeypatch, root))
    assert any(o.startswith("sharp") for o in at.selectbox(key="run_path").options)
    assert not at.error, [e.value for e in at.error]


# ---------------------------------------------------------------- the perceptual loss

def test_perceptual_term_is_off_without_weights_and_says_so_in_one_line(data_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    off = trainer(perceptual_weight=1.0)
    assert off.sharp is not None and not off.sharp.active and off.sharp.perceptual is None
    note = off.sharp.note
    assert note is not None and note.startswith("perceptual term off") and "\n" not in note
    assert off.setup_info()["perceptual"] == note
    classic = trainer()
    x, eps = batch(off)
    classic.train_step(x, 1.0, eps=eps), off.train_step(x, 1.0, eps=eps)
    assert same(params(classic.model), params(off.model))  # trained exactly without it

    monkeypatch.setattr(cli.StopFlag, "install", lambda self: None)
    argv = [*CLI_TINY_FLAGS, "--data-dir", str(data_dir), "--checkpoints-dir", str(tmp_path), "--run-name", "p", "--epochs", "1",
            "--perceptual-weight", "1"]
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "perceptual" in line]
    assert lines == [adversarial.perceptual_note(train_config(perceptual_weight=1.0))]
    assert json.loads((tmp_path / "p" / CONFIG_FILE).read_text())["perceptual"] == lines[0]


def test_a_missing_perceptual_weights_file_is_one_line(tmp_path: Path, capsys) -> None:
    argv = ["--checkpoints-dir", str(tmp_path), "--progress", "none", "--perceptual-weight", "1", "--perceptual-weights", str(tmp_path / "no.pth")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{PROG}: error: --perceptual-weights") and "no such file" in err[0]
    with pytest.raises(LPIPSError, match="^--perceptual-weights: "):  # the trainer itself, for an unreadable file
        (tmp_path / "bad.pth").write_bytes(b"not weights" * 10)
        trainer(perceptual_weight=1.0, perceptual_weights=str(tmp_path / "bad.pth"))


@pytest.fixture(scope="module")
def vgg16_file(tmp_path_factory) -> Path:
    """A fake torchvision VGG16 state dict with the right names and shapes (random values; nothing downloaded), torch.save'd."""
    import torchvision

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.vgg16(weights=None).features.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    state = {f"features.{k}": torch.randn(shape, generator=g) * 0.05 for k, shape in shapes.items()}
    path = tmp_path_factory.mktemp("vgg") / "vgg16-fake.pth"
    torch.save(state, path)
    return path


def test_perceptual_loss_from_a_local_vgg16_file(vgg16_file: Path) -> None:
    on, classic = trainer(perceptual_weight=1.0, perceptual_weights=str(vgg16_file)), trainer()
    assert on.sharp is not None and on.sharp.active and on.sharp.perceptual is not None and on.sharp.note is None
    assert on.setup_info()["perceptual"].startswith("perceptual distance, uniform weights (vgg16) from vgg16-fake.pth")
    x, eps = batch(on, 2)
    net = on.sharp.perceptual
    y = x.clone().requires_grad_(True)
    d = adversarial.perceptual_distance(net, y, x.flip(0))  # (B,) with gradients, grayscale repeated to 3 channels
    assert d.shape == (2,) and d.requires_grad and torch.all(d > 0)
    assert torch.allclose(d.detach(), net(x.repeat(1, 3, 1, 1), x.flip(0).repeat(1, 3, 1, 1)), rtol=1e-5)
    classic.train_step(x, 1.0, eps=eps), on.train_step(x, 1.0, eps=eps)
    assert not same(params(classic.model), params(on.model))  # the perceptual gradient moved the model
    assert set(on.sharp.epoch_terms()) == {"train_perceptual"}


def test_classic_configs_have_no_sharpness_fields_in_use() -> None:
    config = TrainConfig()
    assert not adversarial.wanted(config) and adversarial.perceptual_note(config) is None
    assert {f.name for f in dataclasses.fields(TrainConfig)} >= {"disc_weight", "disc_start", "disc_layers", "disc_channels",
                                                                   "perceptual_weight", "perceptual_weights"}
    assert TrainConfig.from_dict({k: v for k, v in config.to_dict().items() if not k.startswith(("disc_", "perceptual_"))}) == config  # old config.json
