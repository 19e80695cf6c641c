"""`python -m bench` (make bench): every performance figure the README quotes, in one run.

Sections: training speed (bench_train), decode latency, server-side app latency (bench_app), the live
sliders in a real browser (bench_browser: frames during a drag, release to the scatter marker, every bundled
run) and the thumbnail scatter's pan and zoom frame rate (bench_sprites, 10,000 thumbnails). The browser
sections print issue 13's goals beside their figures. Run on an otherwise idle machine.
"""
from __future__ import annotations

import platform
import statistics
import sys
import time

import torch

from models import ModelConfig, build_model

DECODE_BATCHES = (1, 64, 400)
DECODE_REPEATS = 50


def decode_latency() -> None:
    """Median milliseconds to decode B latents with the default conv VAE (latent 16), B = 1, 64, 400."""
    model = build_model(ModelConfig(latent_dim=16)).eval()
    print("\nDecode latency, default conv VAE latent 16 (median of 50, ms):")
    for b in DECODE_BATCHES:
        z = torch.randn(b, 16)
        model.decode_images(z)
        times = []
        for _ in range(DECODE_REPEATS):
            t0 = time.perf_counter()
            model.decode_images(z)
            times.append((time.perf_counter() - t0) * 1e3)
        print(f"  {b:>4} latents: {statistics.median(times):7.2f} ms")


def main() -> int:
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )
    from . import bench_app, bench_train

    bench_train.main([])
    decode_latency()
    bench_app.main([])
    try:
        from . import bench_browser, bench_sprites
    except ImportError as e:
        print(f"\n(browser benchmarks skipped: {e})")
    else:
        bench_browser.main([])
        bench_sprites.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
