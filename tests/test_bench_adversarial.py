"""bench/bench_adversarial's sharpness figures: 1 / 0 for an exact copy, lower detail for a blur, more for noise."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from bench import bench_adversarial as ba


def images(n: int = 8, size: int = 28) -> torch.Tensor:
    """Random bright strokes on black: sharp edges, (n, 1, size, size) in [0, 1]."""
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(n, 1, size, size)
    for k in range(n):
        r, c = torch.randint(4, size - 8, (2,), generator=g).tolist()
        x[k, 0, r : r + 4, c : c + 10] = 1.0
        x[k, 0, r : r + 12, c : c + 3] = 1.0
    return x


def box_blur(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def test_an_exact_copy_is_exactly_as_sharp() -> None:
    x = images()
    s = ba.sharpness(x, x)
    assert s["hf_ratio"] == pytest.approx(1) and s["hf_error"] == 0
    assert s["grad_ratio"] == pytest.approx(1) and s["lapvar_ratio"] == pytest.approx(1)
    assert all(r == pytest.approx(1) for _, _, r in s["bands"])


def test_a_blur_lowers_every_figure_and_noise_raises_detail() -> None:
    x = images()
    blurred = ba.sharpness(box_blur(x), x)
    assert blurred["hf_ratio"] < 0.5 and blurred["grad_ratio"] < 1 and blurred["lapvar_ratio"] < 0.5 and blurred["hf_error"] > 0.3
    bands = [r for _, _, r in blurred["bands"]]
    assert bands[-1] < bands[0]  # a low-pass filter: the highest band loses most
    noisy = ba.sharpness(x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)), x)
    assert noisy["hf_ratio"] > 1 and noisy["hf_error"] > 0  # detail, but wrong detail


def test_hf_power_ignores_the_mean_and_counts_only_high_frequencies() -> None:
    flat = torch.full((2, 1, 16, 16), 0.7)
    assert ba.hf_power(flat) == pytest.approx(0, abs=1e-9)
    cols = torch.arange(16).float().view(1, 1, 1, 16).expand(1, 1, 16, 16)
    slow, fast = torch.cos(2 * torch.pi * cols / 16), torch.cos(torch.pi * cols)  # 1/16 and 1/2 cycles per pixel
    assert ba.hf_power(slow) == pytest.approx(0, abs=1e-6) and ba.hf_power(fast) > 0


def test_strips_png_stacks_labelled_rows() -> None:
    x = (images(4) * 255).to(torch.uint8).numpy()
    png = ba.strips_png([("originals", x), ("with", x)], scale=2)
    im = Image.open(io.BytesIO(png))
    assert im.width == ba.LABEL_WIDTH + 2 * (4 * 29 - 1) and im.height == 2 * 2 * 28 + 4
    assert ba.strip_indices(2000, 12)[0] == 0 and ba.strip_indices(2000, 12)[-1] == 1999
    assert np.asarray(im).std() > 0
