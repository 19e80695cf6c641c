"""Issue 10's cross-check: an independent IWAE estimate of a bundled run agrees with trainer.evaluate's.

The independent estimator (bench/check_iwae.py) uses torch.distributions' Normal and Bernoulli densities,
its own sampling loop and its own seed; it shares only the model and the test images with trainer.evaluate.
The full figure (2,000 images, K 1000) is in the README, made by `python -m bench.check_iwae`.
"""
from __future__ import annotations

import math

import pytest
import torch

from bench import check_iwae
from trainer.runs import load_run

SUBSET = 100  # test images: about 15 s for both estimates on one CPU thread


@pytest.fixture(scope="module")
def bundled():
    if not (check_iwae.BUNDLED_RUN / "manifest.json").exists():
        pytest.skip("the bundled run mnist-mlp-vae-z20-binarized is not here")
    return load_run(check_iwae.BUNDLED_RUN)


@pytest.mark.slow
def test_independent_iwae_agrees_with_trainer_evaluate(bundled):
    result = check_iwae.check(bundled, images=SUBSET, samples=check_iwae.DEFAULT_SAMPLES)
    assert result["images"] == SUBSET and result["binary"]  # binarised MNIST: a true likelihood
    assert result["seed_independent"] != result["seed_trainer_evaluate"]  # independent samples
    assert abs(result["difference"]) <= result["nll_trainer_evaluate_stderr"] + check_iwae.TOLERANCE_NATS
    assert 60 < result["nll_independent"] < 140  # nats per binarised MNIST digit: a sane scale, not a sign slip


def test_independent_estimator_is_exact_for_an_exact_posterior():
    """A decoder that ignores z and an encoder whose q is the prior: every weight is p(x), so the
    estimate is the Bernoulli NLL of x under the decoder's logits, whatever K and seed."""

    class Constant(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.logits = torch.nn.Parameter(torch.linspace(-2, 2, 12).reshape(1, 1, 3, 4))

        def encode(self, x):
            from models import DiagonalGaussian

            return DiagonalGaussian(torch.zeros(len(x), 3), torch.zeros(len(x), 3))

        def decode(self, z):
            return self.logits.expand(len(z), 1, 3, 4)

    x = (torch.rand(5, 1, 3, 4, generator=torch.Generator().manual_seed(0)) > 0.5).to(torch.uint8) * 255
    model = Constant()
    p = torch.sigmoid(model.logits.detach().double()).flatten()
    xf = (x.double() / 255).reshape(5, -1)
    exact = -(xf * p.log() + (1 - xf) * (1 - p).log()).sum(-1)
    for k, seed in ((1, 0), (50, 3)):
        estimate = check_iwae.independent_nll(model, x, k, seed)
        assert torch.allclose(estimate, exact, atol=1e-9), (k, seed)
    assert math.isfinite(float(estimate.mean()))
