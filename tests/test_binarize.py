"""--binarize dynamic: Bernoulli pixels, seeded and resume-exact; one fixed binarised test set for every run."""
from __future__ import annotations

import pytest
import torch

from models import ModelConfig
from trainer import binarize, metrics
from trainer.config import TrainConfig
from trainer.evaluate import evaluation_images
from trainer.runs import load_run
from trainer.train import Trainer, fit

from .helpers import REPRO_REL_TOL, TINY_WIDTHS, assert_same_weights, cli_args, finish, run_module, tiny_data, write_idx_digits

TINY = ModelConfig(latent_dim=2, widths=TINY_WIDTHS)


def dynamic(**kw) -> TrainConfig:
    return TrainConfig(**({"epochs": 3, "batch_size": 32, "atlas_size": 100, "binarize": "dynamic"} | kw))


def test_binarised_pixels_are_0_or_255_and_keep_black_and_white():
    x = tiny_data(8, 8).test_x  # (8, 1, 28, 28) uint8 grayscale
    out = binarize.binarize_uint8(x, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert set(out.unique().tolist()) == {0, 255}
    assert (out[x == 0] == 0).all() and (out[x == 255] == 255).all()
    assert ((x > 0) & (x < 255)).any()  # there were gray pixels to draw


def test_same_seed_same_pixels_other_seed_other_pixels():
    x = tiny_data(8, 8).test_x

    def draw(seed: int) -> torch.Tensor:
        return binarize.binarize_uint8(x, torch.Generator().manual_seed(seed))

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


def test_binarised_pixels_average_to_the_grayscale():
    """E[Bernoulli(p)] = p: the mean of many draws matches each pixel's intensity (loose: 6 standard errors)."""
    x = tiny_data(4, 4).test_x.float() / 255  # (4, 1, 28, 28) in [0, 1]
    g = torch.Generator().manual_seed(0)
    draws = 4000
    mean = torch.zeros_like(x)
    for _ in range(draws):
        mean += binarize.bernoulli_pixels(x, torch.rand(x.shape, generator=g))
    mean /= draws
    assert set(binarize.bernoulli_pixels(x, torch.rand(x.shape, generator=g)).unique().tolist()) <= {0.0, 1.0}
    assert (mean - x).abs().max() < 6 * 0.5 / draws**0.5
    assert float(mean.mean()) == pytest.approx(float(x.mean()), abs=0.002)


def test_training_sees_fresh_binary_pixels_every_step(monkeypatch):
    data = tiny_data(64, 16)
    seen: list[torch.Tensor] = []
    real = Trainer.train_step

    def spy(self, x, *args, **kw):
        seen.append(x.clone())
        return real(self, x, *args, **kw)

    monkeypatch.setattr(Trainer, "train_step", spy)
    trainer = Trainer(TINY, dynamic(batch_size=64), data)
    trainer.train_epoch()
    trainer.epoch += 1
    trainer.train_epoch()
    assert len(seen) == 2 and all(set(x.unique().tolist()) == {0.0, 1.0} for x in seen)
    # both epochs hold every training image once, in other orders: sorted by image, the draws differ
    first, second = (x.flatten(1).sum(1).sort().values for x in seen)
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(first, second)


def test_same_seed_same_run_and_binarisation_changes_the_run(tmp_path):
    data = tiny_data()
    a = fit(TINY, dynamic(epochs=2), data, tmp_path / "a", progress="none")
    b = fit(TINY, dynamic(epochs=2), data, tmp_path / "b", progress="none")
    c = fit(TINY, dynamic(epochs=2, binarize="none"), data, tmp_path / "c", progress="none")
    for (name, wa), wb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(wa, wb), name
    timing = ("seconds", "train_seconds", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in a.history] == [{k: v for k, v in r.items() if k not in timing} for r in b.history]
    assert [r["train_loss"] for r in a.history] != [r["train_loss"] for r in c.history]


def test_resume_equals_uninterrupted_binarised_run(tmp_path):
    data = tiny_data()
    fit(TINY, dynamic(epochs=4), data, tmp_path / "straight", progress="none")
    fit(TINY, dynamic(epochs=2), data, tmp_path / "split", progress="none")
    fit(TINY, dynamic(epochs=4), data, tmp_path / "split", resume=True, progress="none")
    a, b = load_run(tmp_path / "straight"), load_run(tmp_path / "split")
    for (name, wa), wb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(wa, wb), name
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    assert [r["test_neg_elbo"] for r in a.history] == [r["test_neg_elbo"] for r in b.history]


def test_test_set_is_binarised_once_the_same_for_every_seed(tmp_path):
    data = tiny_data()
    runs = [fit(TINY, dynamic(epochs=1, seed=seed), data, tmp_path / f"s{seed}", progress="none") for seed in (0, 1)]
    expected = binarize.binarized_test_set(data.test_x)  # by the fixed TEST_BINARIZE_SEED
    assert set(expected.unique().tolist()) == {0, 255}
    for trainer in runs:
        assert torch.equal(trainer.test_x.cpu(), expected)  # what every epoch is evaluated on
        run = load_run(tmp_path / f"s{trainer.config.seed}")
        assert run.train_config.binarize == "dynamic"  # recorded in config.json
        # the atlas stored in the run folder holds the binarised images the model saw
        assert torch.equal(torch.from_numpy(run.atlas.images), expected[torch.from_numpy(trainer.atlas_idx)])
    assert runs[0].history[-1]["train_loss"] != runs[1].history[-1]["train_loss"]  # the seeds did train differently


def test_evaluate_scores_a_binarised_run_on_the_binarised_test_set(tmp_path):
    """`python -m trainer.evaluate` loads the run's dataset again: it must binarise it as training did."""
    data_dir = write_idx_digits(tmp_path / "data")
    from trainer.data import load_dataset

    data = load_dataset("mnist", str(data_dir))
    fit(TINY, dynamic(epochs=1, data_dir=str(data_dir)), data, tmp_path / "r", progress="none")
    run = load_run(tmp_path / "r")
    images, image_set, _ = evaluation_images(run)
    assert image_set == "test" and torch.equal(images, binarize.binarized_test_set(data.test_x))
    assert metrics.recon_label(run.train_config.recon_loss, binarize.is_dynamic(run.train_config.binarize)) == "Bernoulli NLL (nats)"


@pytest.mark.slow  # a two-process torchrun job
def test_two_processes_draw_the_same_binary_pixels_as_one(tmp_path, monkeypatch):
    """Every process draws the whole global batch's uniforms and binarises its slice: N processes follow one."""
    from bench.bench_browser import free_port

    data_dir = write_idx_digits(tmp_path / "data")
    args = cli_args(data_dir, tmp_path, "two", "--epochs", "2", "--binarize", "dynamic")
    launch = ["--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "trainer", *args]
    code, err = finish(run_module("torch.distributed.run", launch, env={"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}, start_new_session=True))
    assert code == 0, err
    import trainer.cli as cli

    monkeypatch.setattr(cli.StopFlag, "install", lambda self: None)  # no SIGTERM handler left in the test process
    assert cli.main(cli_args(data_dir, tmp_path, "one", "--epochs", "2", "--binarize", "dynamic")) == 0
    assert_same_weights(tmp_path / "two", tmp_path / "one")
    two, one = load_run(tmp_path / "two"), load_run(tmp_path / "one")
    assert [r["train_loss"] for r in two.history] == pytest.approx([r["train_loss"] for r in one.history], rel=REPRO_REL_TOL)


def test_unknown_binarize_mode_is_refused():
    with pytest.raises(ValueError, match="binarize must be none or dynamic, got 'static'"):
        TrainConfig(binarize="static")
