"""Server-side latencies of the Explore page, measured with its pure functions on a real run.

    .venv/bin/python -m bench.bench_app --run checkpoints/<run>     # one run folder
    .venv/bin/python -m bench.bench_app                             # the run with the largest latent in checkpoints/

Figures are medians over repeats (after one warm-up) of: a slider move (decode one latent + PNG of the
shown image), the scatter figure rebuilt around the new slider point, a 20x20 manifold grid (one batch
+ tiling + PNG), a 16-step interpolation strip, a run switch (the whole page rerun through AppTest with
the run already cached), and the UMAP map of the atlas computed once vs served from its on-disk cache.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from app import images, latent, plots
from app.common import configure_torch, resolve_checkpoints_dir
from bench import timing
from trainer.paths import PROJECT_ROOT
from trainer.runs import Run, RunError, list_runs, load_run

REPEATS = 30
GRID_N = 20
INTERPOLATION_FRAMES = 16
SWITCH_REPEATS = 5
BUDGETS_MS = {"slider move": 20.0, f"{GRID_N}x{GRID_N} grid": 100.0, "run switch (cached)": 1000.0}


def median_ms(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    return timing.median_ms(fn, repeats, warmup=1)


def pick_run(path: str | None) -> Path:
    if path:
        return Path(path)
    root = resolve_checkpoints_dir(sys.argv[1:])
    summaries = [s for s in list_runs(root) if s.error is None]
    if not summaries:
        raise SystemExit(f"no loadable runs in {root}: pass --run DIR, or train one with `python -m trainer --latent-dim 16 --epochs 5`")
    return max(summaries, key=lambda s: (s.config or {}).get("model", {}).get("latent_dim", 0)).path


def slider_move(run: Run, stats: latent.DimStats) -> Callable[[], object]:
    z = stats.mean.copy()
    step = [0]

    def move() -> bytes:
        step[0] += 1
        z[stats.order[0]] = stats.lo[stats.order[0]] + (step[0] % 50) / 50 * (stats.hi[stats.order[0]] - stats.lo[stats.order[0]])
        x_hat = images.decode_uint8(run.model, z[None])[0]
        return images.png_bytes(images.upscale(images.to_display(x_hat), images.DISPLAY_PIXELS))

    return move


def scatter_rebuild(run: Run, projection: latent.Projection, z: np.ndarray) -> Callable[[], object]:
    import plotly.io
    import plotly.tools

    def rebuild() -> str:
        fig = plots.latent_scatter(projection.xy, run.atlas.labels, run.class_names, axis_titles=projection.axis_titles)
        plots.add_marker(fig, projection.transform(z), "slider point")
        checked = plotly.tools.return_figure_from_figure_or_data(fig, validate_figure=True)  # what st.plotly_chart does
        return plotly.io.to_json(checked, validate=False)

    return rebuild


def grid(run: Run, stats: latent.DimStats, pca: latent.PCA | None) -> Callable[[], object]:
    def make() -> bytes:
        if pca is not None:
            g = latent.pca_grid(stats.mean, pca, GRID_N)
        else:
            g = latent.raw_grid(stats.mean, (0, 1), GRID_N, np.zeros_like(stats.mean), np.ones_like(stats.mean))
        return images.png_bytes(images.tile(images.decode_uint8(run.model, g.z), GRID_N, pad=0))

    return make


def interpolation(run: Run) -> Callable[[], object]:
    a, b = run.atlas.means[-1][0], run.atlas.means[-1][1]

    def make() -> list[bytes]:
        path = latent.slerp(a, b, INTERPOLATION_FRAMES)
        latent.prior_log_density(path)
        return [images.png_bytes(images.to_display(f)) for f in images.decode_uint8(run.model, path)]

    return make


def run_switch(root: Path, names: list[str]) -> float:
    """Median seconds of a full page rerun that switches runs, all of them already cached."""
    import streamlit.testing.v1.app_test as app_test
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.testing.v1 import AppTest

    class NavigationPagesManager(PagesManager):  # see tests/test_app_explore.py
        def __init__(self, *args, **kwargs):
            PagesManager.uses_pages_directory = False
            super().__init__(*args, **kwargs)

    app_test.PagesManager = NavigationPagesManager
    os.environ["VAE_CHECKPOINTS_DIR"] = str(root)
    at = AppTest.from_file(str(PROJECT_ROOT / "app" / "main.py"), default_timeout=300).run()
    for name in names:  # warm every cache
        at.selectbox(key="run_path").set_value(str(root / name)).run()
    times = []
    for k in range(SWITCH_REPEATS * len(names)):
        at.selectbox(key="run_path").set_value(str(root / names[k % len(names)]))
        t0 = time.perf_counter()
        at.run()
        times.append((time.perf_counter() - t0) * 1e3)
        if at.exception:
            raise SystemExit(f"the page failed: {at.exception[0].value}")
    return statistics.median(times)


GAUSSIAN_CHANNELS, GAUSSIAN_SIZE = 16, 32  # a tiny spatial AE's 16 x 8 x 8 = 1,024-dim map at 32 px (widths 4, 8, 8)
GAUSSIAN_ATLAS = 2000
GAUSSIAN_SAMPLES = 64  # Explore's 8 x 8 sample grid


def fitted_gaussian_bench(repeats: int = 5) -> list[tuple[str, float]]:
    """An autoencoder's fitted Gaussian at a 1,024-dim spatial latent: the density caption of a slider move and a batch
    of samples, factored on every call as the pages did before (inverse + slogdet per density, eigh per batch) and
    from the FittedGaussian factored once per run epoch (latent.fit_gaussian, cached by the pages), with its one-off
    costs. Codes of an untrained tiny spatial resnet AE on the MNIST subset (only the linear algebra is timed)."""
    import pickle

    import torch

    from models import ModelConfig, build_model
    from trainer.data import load_dataset

    torch.manual_seed(0)
    config = ModelConfig(arch="resnet", kind="ae", bottleneck="spatial", latent_channels=GAUSSIAN_CHANNELS, image_size=GAUSSIAN_SIZE,
                         widths=(4, 8, 8), hidden_dim=0)
    model = build_model(config).eval()
    x = load_dataset("mnist", image_size=GAUSSIAN_SIZE, channels=1).test_x[:GAUSSIAN_ATLAS]
    means = model.encode_batches(x).mean.numpy()  # (N, 1024)
    mean, cov = latent.fitted_gaussian(means)
    z = means[:1]  # (1, D): a code, as Explore's sliders start

    def density_before() -> np.ndarray:  # the formula of gaussian_log_density before the factor was kept
        c = np.asarray(cov, np.float64) + latent.GAUSSIAN_JITTER * np.eye(len(mean))
        _, logdet = np.linalg.slogdet(c)
        diff = z.astype(np.float64) - mean
        return -0.5 * (np.einsum("bi,ij,bj->b", diff, np.linalg.inv(c), diff) + logdet + len(mean) * np.log(2.0 * np.pi))

    t0 = time.perf_counter()
    stats = latent.dimension_stats(means, None)  # what Explore caches per run epoch, the factor included
    stats_ms = (time.perf_counter() - t0) * 1e3
    gaussian = stats.gaussian
    # The same density up to the eigenvalues float32 rounding pushed below the jitter (floored there now): ~1e-4 relative.
    assert gaussian is not None and np.allclose(density_before(), gaussian.log_density(z), rtol=1e-3)
    blob = pickle.dumps(stats)  # st.cache_data hands every rerun an unpickled copy
    return [
        (f"latent {means.shape[1]} (a {' x '.join(map(str, config.latent_shape))} map), {len(means):,} codes: dimension stats + factor, once", stats_ms),
        ("  the factor alone (latent.fit_gaussian), once", median_ms(lambda: latent.fit_gaussian(means), repeats)),
        (f"  DimStats copy per rerun (unpickle {len(blob) / 1e6:.1f} MB)", median_ms(lambda: pickle.loads(blob), repeats)),
        ("  density caption, before (inverse + slogdet)", median_ms(density_before, repeats)),
        ("  density caption, factored each call", median_ms(lambda: latent.gaussian_log_density(z, mean, cov), repeats)),
        ("  density caption, cached factor", median_ms(lambda: latent.log_density(z, stats, True), REPEATS)),
        (f"  {GAUSSIAN_SAMPLES} AE samples, before (eigh each call)", median_ms(lambda: latent.fitted_gaussian_samples(mean, cov, GAUSSIAN_SAMPLES), repeats)),
        (f"  {GAUSSIAN_SAMPLES} AE samples, cached factor", median_ms(lambda: latent.code_samples(stats, True, GAUSSIAN_SAMPLES), REPEATS)),
        ("  Compare's 8 AE samples, before (fit + eigh)", median_ms(lambda: latent.atlas_code_samples(means, True, 8), repeats)),
        ("  Compare's 8 AE samples, cached factor", median_ms(lambda: latent.atlas_code_samples(means, True, 8, gaussian=gaussian), REPEATS)),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a run folder (default: the largest-latent run in the checkpoints folder)")
    parser.add_argument("--checkpoints-dir", help="where to look for runs and for runs to switch between")
    parser.add_argument("--skip-umap", action="store_true", help="skip the UMAP timing (tens of seconds on 2 cores)")
    parser.add_argument("--fitted-gaussian", action="store_true", help="only time an AE's fitted Gaussian at a 1,024-dim spatial latent")
    args = parser.parse_args(argv)
    if args.fitted_gaussian:
        configure_torch()
        rows = fitted_gaussian_bench()
        width = max(len(name) for name, _ in rows)
        print(f"torch threads 1, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        for name, ms in rows:
            print(f"  {name:<{width}}  {ms:9.1f} ms")
        return
    if args.checkpoints_dir:
        os.environ["VAE_CHECKPOINTS_DIR"] = args.checkpoints_dir
    configure_torch()  # as the app does
    path = pick_run(args.run)
    try:
        t0 = time.perf_counter()
        run = load_run(path)
        load_ms = (time.perf_counter() - t0) * 1e3
    except RunError as e:
        raise SystemExit(str(e)) from None
    means = run.atlas.means[-1]
    stats = latent.dimension_stats(means, None if run.atlas.logvars is None else run.atlas.logvars[-1])
    projection = latent.make_projection(means, "pca")
    pca = latent.fit_pca(means) if means.shape[1] > 2 else None
    import torch

    print(f"run {run.path} · {run.model_config.arch} {run.model_config.kind}, latent {run.model_config.latent_dim}, "
          f"atlas {len(means):,} images · torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} (other processes inflate every figure)")
    rows = [
        ("load run (uncached)", load_ms),
        ("slider move", median_ms(slider_move(run, stats))),
        ("scatter figure + st.plotly_chart encoding", median_ms(scatter_rebuild(run, projection, stats.mean))),
        (f"{GRID_N}x{GRID_N} grid", median_ms(grid(run, stats, pca))),
        (f"{INTERPOLATION_FRAMES}-frame interpolation", median_ms(interpolation(run))),
        ("dimension stats + PCA map", median_ms(lambda: (latent.dimension_stats(means, None), latent.make_projection(means, "pca")), 10)),
    ]
    root = path.parent
    names = [s.name for s in list_runs(root) if s.error is None][:3]
    if len(names) >= 2:
        rows.append(("run switch (cached)", run_switch(root, names)))
    if not args.skip_umap and means.shape[1] > 2:
        with tempfile.TemporaryDirectory() as tmp:  # never leave bench files in the run folder
            t0 = time.perf_counter()
            latent.cached_embedding(Path(tmp), run.epoch, means, "umap")
            rows.append(("UMAP map (first time, incl. numba JIT)", (time.perf_counter() - t0) * 1e3))
            rows.append(("UMAP map (from the disk cache)", median_ms(lambda: latent.cached_embedding(Path(tmp), run.epoch, means, "umap"), 10)))
    width = max(len(name) for name, _ in rows)
    for name, ms in rows:
        budget = BUDGETS_MS.get(name)
        verdict = "" if budget is None else f"   (budget {budget:g} ms: {'ok' if ms < budget else 'OVER'})"
        print(f"  {name:<{width}}  {ms:9.1f} ms{verdict}")


if __name__ == "__main__":
    main()
