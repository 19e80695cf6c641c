"""Latent arithmetic of the explorer: grids, paths, PCA, statistics, samples, the on-disk projection cache."""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch
from scipy.stats import norm

from app import latent
from trainer import projections


def rng_latents(n: int = 60, d: int = 5, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    return (g.normal(size=(n, d)) * np.linspace(2.0, 0.2, d)).astype(np.float32)  # (N, D), decreasing spread


# ---------------------------------------------------------------- grids and paths

@pytest.mark.parametrize("n", [5, 6, 30])
def test_gaussian_quantiles_monotone_symmetric_and_exact(n):
    q = latent.gaussian_quantiles(n)
    probs = np.linspace(*latent.GRID_QUANTILES, n)
    assert q.shape == (n,)
    assert np.all(np.diff(q) > 0)
    np.testing.assert_allclose(q, -q[::-1], atol=1e-6)
    np.testing.assert_allclose(q, norm.ppf(probs), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(q, [NormalDist().inv_cdf(p) for p in probs], rtol=1e-6)
    assert q[0] == pytest.approx(NormalDist().inv_cdf(0.05), rel=1e-6)


def test_gaussian_quantiles_rejects_bad_bounds():
    with pytest.raises(ValueError):
        latent.gaussian_quantiles(5, 0.0, 0.9)


def test_lerp_endpoints_and_midpoint():
    z0, z1 = np.array([1.0, -2.0, 0.5], np.float32), np.array([3.0, 0.0, -0.5], np.float32)
    path = latent.lerp(z0, z1, 5)
    assert path.shape == (5, 3)
    np.testing.assert_allclose(path[0], z0)
    np.testing.assert_allclose(path[-1], z1)
    np.testing.assert_allclose(path[2], (z0 + z1) / 2)


def test_slerp_endpoints_and_norms():
    g = np.random.default_rng(1)
    z0, z1 = g.normal(size=8).astype(np.float32), g.normal(size=8).astype(np.float32)
    path = latent.slerp(z0, z1, 7)
    np.testing.assert_allclose(path[0], z0, atol=1e-5)
    np.testing.assert_allclose(path[-1], z1, atol=1e-5)
    norms = np.linalg.norm(path, axis=1)
    np.testing.assert_allclose(norms, np.linspace(np.linalg.norm(z0), np.linalg.norm(z1), 7), rtol=1e-5)
    # equal-norm ends stay on the sphere, where lerp cuts through the low-norm middle
    z1_same = z1 / np.linalg.norm(z1) * np.linalg.norm(z0)
    on_sphere = np.linalg.norm(latent.slerp(z0, z1_same, 9), axis=1)
    np.testing.assert_allclose(on_sphere, np.linalg.norm(z0), rtol=1e-5)
    assert np.linalg.norm(latent.lerp(z0, z1_same, 9), axis=1)[4] < on_sphere[4]


def test_slerp_degenerate_cases_fall_back_to_lerp():
    z = np.array([1.0, 2.0], np.float32)
    np.testing.assert_allclose(latent.slerp(z, -z, 5), latent.lerp(z, -z, 5), atol=1e-6)
    np.testing.assert_allclose(latent.slerp(np.zeros(2), z, 4), latent.lerp(np.zeros(2), z, 4), atol=1e-6)
    with pytest.raises(ValueError):
        latent.interpolate(z, z, 3, "cubic")


def test_log_densities():
    z = np.array([[0.0, 0.0], [1.0, -2.0]], np.float32)
    expected = -0.5 * ((z**2).sum(1) + 2 * math.log(2 * math.pi))
    np.testing.assert_allclose(latent.prior_log_density(z), expected, rtol=1e-6)
    np.testing.assert_allclose(latent.gaussian_log_density(z, np.zeros(2), np.eye(2)), expected, rtol=1e-4)


def test_traversal_latents_sweep_one_dim_each():
    z = np.array([0.5, -1.0, 2.0], np.float32)
    values = latent.traversal_values(np.array([-1.0, -2.0, -3.0]), np.array([1.0, 2.0, 3.0]), 5)  # (D, steps)
    out = latent.traversal_latents(z, [2, 0], values)
    assert out.shape == (10, 3)
    np.testing.assert_allclose(out[:5, 2], np.linspace(-3, 3, 5))
    np.testing.assert_allclose(out[:5, :2], np.repeat(z[None, :2], 5, 0))
    np.testing.assert_allclose(out[5:, 0], np.linspace(-1, 1, 5))


# ---------------------------------------------------------------- PCA and grids

def test_pca_round_trip_and_orthonormal_components():
    z = rng_latents()
    pca = latent.fit_pca(z)
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(5), atol=1e-5)
    coords = pca.transform(z, k=5)
    np.testing.assert_allclose(pca.inverse(coords), z, atol=1e-4)
    assert np.all(np.diff(pca.std) <= 1e-6)  # by decreasing variance
    np.testing.assert_allclose(coords[:, :2].std(0, ddof=1), pca.std[:2], rtol=1e-4)


def test_pca_with_fewer_points_than_dims_still_inverts_the_plane():
    z = rng_latents(n=3, d=6)
    pca = latent.fit_pca(z)
    assert pca.components.shape == (6, 6)
    plane = pca.inverse(np.array([[1.0, -0.5]]))
    np.testing.assert_allclose(pca.transform(plane), [[1.0, -0.5]], atol=1e-4)


def test_move_in_plane_keeps_the_off_plane_part():
    z = rng_latents()
    pca = latent.fit_pca(z)
    base = z[3]
    moved = pca.move_in_plane(base, np.array([[0.3, -0.7], [1.0, 1.0]]))
    np.testing.assert_allclose(pca.transform(moved), [[0.3, -0.7], [1.0, 1.0]], atol=1e-4)
    np.testing.assert_allclose(pca.transform(moved, 5)[:, 2:], np.repeat(pca.transform(base[None], 5)[:, 2:], 2, 0), atol=1e-4)


def test_pca_grid_spans_quantiles_of_the_principal_axes():
    z = rng_latents()
    pca = latent.fit_pca(z)
    n = 6
    grid = latent.pca_grid(z[0], pca, n)
    assert grid.z.shape == (n * n, 5) and grid.outline.shape == (4 * n + 1, 5)
    coords = pca.transform(grid.z).reshape(n, n, 2)
    q = latent.gaussian_quantiles(n)
    np.testing.assert_allclose(coords[0, :, 0], pca.std[0] * q, rtol=1e-4, atol=1e-4)  # left to right
    np.testing.assert_allclose(coords[:, 0, 1], pca.std[1] * q[::-1], rtol=1e-4, atol=1e-4)  # top row first
    np.testing.assert_allclose(grid.outline[0], grid.outline[-1])  # closed


def test_raw_grid_holds_other_dims_at_the_base():
    base = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    n = 5
    grid = latent.raw_grid(base, (1, 3), n, np.zeros(4), np.ones(4))
    q = latent.gaussian_quantiles(n)
    z = grid.z.reshape(n, n, 4)
    np.testing.assert_allclose(z[..., 0], 0.1)
    np.testing.assert_allclose(z[..., 2], 0.3)
    np.testing.assert_allclose(z[0, :, 1], q, atol=1e-6)
    np.testing.assert_allclose(z[:, 0, 3], q[::-1], atol=1e-6)


# ---------------------------------------------------------------- statistics and samples

def test_dimension_stats_orders_by_kl_and_marks_inactive_dims():
    g = np.random.default_rng(0)
    means = np.stack([g.normal(0, 1.5, 200), g.normal(0, 0.01, 200), g.normal(0, 0.7, 200)], 1).astype(np.float32)
    logvars = np.stack([np.full(200, -2.0), np.zeros(200), np.full(200, -0.5)], 1).astype(np.float32)
    stats = latent.dimension_stats(means, logvars)
    assert stats.score_name == "KL"
    assert list(stats.order) == [0, 2, 1]
    assert list(stats.inactive) == [False, True, False]  # KL ~ 0 for the dim whose posterior is the prior
    assert np.all(stats.lo <= 0) and np.all(stats.hi >= 0)
    np.testing.assert_allclose(stats.hi[0], means[:, 0].mean() + latent.SLIDER_STDS * means[:, 0].std(), rtol=1e-4)


def test_dimension_stats_of_an_autoencoder_use_code_variance():
    means = rng_latents(d=3)
    stats = latent.dimension_stats(means, None)
    assert stats.score_name == "variance"
    np.testing.assert_allclose(stats.scores, means.var(0), rtol=1e-4)
    assert list(stats.order) == [0, 1, 2]


def test_slider_dims_caps_at_the_highest_scoring_plus_extras():
    means = rng_latents(n=80, d=40)
    stats = latent.dimension_stats(means, None)
    dims = latent.slider_dims(stats)
    assert len(dims) == latent.MAX_SLIDERS and dims == [int(d) for d in stats.order[: latent.MAX_SLIDERS]]
    hidden = int(stats.order[-1])
    assert latent.slider_dims(stats, [hidden])[-1] == hidden


def test_samples_are_seeded_and_shaped():
    a = latent.prior_samples(16, 4, 0.5, seed=3)
    np.testing.assert_array_equal(a, latent.prior_samples(16, 4, 0.5, seed=3))
    assert a.shape == (16, 4) and not np.array_equal(a, latent.prior_samples(16, 4, 0.5, seed=4))
    post = latent.posterior_samples(np.ones(4), np.zeros(4), 5, seed=0)
    np.testing.assert_allclose(post, 1.0)  # an autoencoder's posterior is a point


def test_fitted_gaussian_samples_match_the_codes():
    means = rng_latents(n=500, d=3)
    stats = latent.dimension_stats(means, None)
    s = latent.fitted_gaussian_samples(stats.mean, stats.cov, 20000, 1.0, seed=0)
    np.testing.assert_allclose(s.mean(0), stats.mean, atol=0.06)
    np.testing.assert_allclose(np.cov(s, rowvar=False), stats.cov, atol=0.12)


# ---------------------------------------------------------------- projections

def test_make_projection_shows_2d_latents_directly():
    z = rng_latents(d=2)
    proj = latent.make_projection(z, "pca")
    assert proj.method == "raw"
    np.testing.assert_allclose(proj.xy, z)
    np.testing.assert_allclose(proj.transform(z[:3]), z[:3])


def test_knn_placement_of_an_atlas_point_is_its_own_position():
    z = rng_latents()
    xy = np.random.default_rng(2).normal(size=(len(z), 2)).astype(np.float32)
    proj = latent.make_projection(z, "tsne", embedding=xy)
    np.testing.assert_allclose(proj.transform(z[7]), xy[7:8], atol=1e-3)


def test_replay_coords_use_one_map_for_every_snapshot():
    means = np.stack([rng_latents(seed=s) for s in range(3)])  # (E, N, D)
    coords = latent.replay_coords(means, "pca")
    assert coords.shape == (3, len(means[0]), 2)
    np.testing.assert_allclose(coords[-1], latent.fit_pca(means[-1]).transform(means[-1]), atol=1e-5)
    np.testing.assert_allclose(latent.replay_coords(means, "raw", (4, 1))[0], means[0][:, [4, 1]])
    (x0, x1), (y0, y1) = latent.robust_range(coords)
    assert x0 < coords[..., 0].mean() < x1 and y0 < y1


def test_embedding_is_cached_on_disk_atomically(tmp_path, monkeypatch):
    z = rng_latents(n=40)
    xy = projections.cached_embedding(tmp_path, 3, z, "tsne")
    path = projections.projection_path(tmp_path, "tsne", 3)
    assert xy.shape == (40, 2) and path.is_file()
    with np.load(path, allow_pickle=False) as npz:
        np.testing.assert_allclose(npz["xy"], xy)

    def no_recompute(*a, **k):
        raise AssertionError("the cached projection should have been used")

    monkeypatch.setattr(projections, "embed", no_recompute)
    np.testing.assert_allclose(projections.cached_embedding(tmp_path, 3, z, "tsne"), xy)  # served from disk

    calls = []
    monkeypatch.setattr(projections, "embed", lambda z, method, seed=0: calls.append(method) or np.zeros((len(z), 2), np.float32))
    projections.cached_embedding(tmp_path, 3, z + 1.0, "tsne")  # other latents: stale, recomputed
    path.write_bytes(b"not an npz")
    projections.cached_embedding(tmp_path, 3, z, "tsne")  # corrupt: recomputed
    projections.cached_embedding(tmp_path, 4, z, "tsne")  # a new epoch replaces the old file
    assert calls == ["tsne"] * 3
    assert not path.exists() and projections.projection_path(tmp_path, "tsne", 4).is_file()


def test_posterior_samples_are_mean_plus_std_times_the_seeded_noise():
    mean, std = np.array([1.0, -2.0, 0.5], np.float32), np.array([0.5, 0.0, 2.0], np.float32)
    eps = latent.prior_samples(6, 3, 1.0, seed=4)
    np.testing.assert_allclose(latent.posterior_samples(mean, std, 6, seed=4), mean + std * eps, rtol=1e-6, atol=1e-6)


def test_an_autoencoder_gets_its_fitted_gaussian_where_a_vae_has_its_prior():
    means = rng_latents(n=200, d=3)
    stats = latent.dimension_stats(means, None)
    z = means[:4]
    np.testing.assert_allclose(latent.log_density(z, stats, True), latent.gaussian_log_density(z, stats.mean, stats.cov))
    np.testing.assert_allclose(latent.log_density(z, stats, False), latent.prior_log_density(z))
    np.testing.assert_array_equal(latent.code_samples(stats, False, 5, 0.5, 3), latent.prior_samples(5, 3, 0.5, 3))
    np.testing.assert_array_equal(latent.code_samples(stats, True, 5, 0.5, 3), latent.fitted_gaussian_samples(stats.mean, stats.cov, 5, 0.5, 3))
    q = latent.gaussian_quantiles(5)
    bottom_left = 4 * 5  # row 0 is the top: the last row's first column is (q[0], q[0])
    vae = latent.manifold_grid(np.zeros(3), means, stats, False, "raw", (0, 2), 5)
    np.testing.assert_allclose(vae.z[bottom_left], [q[0], 0.0, q[0]], atol=1e-6)
    ae = latent.manifold_grid(np.zeros(3), means, stats, True, "raw", (0, 2), 5)
    np.testing.assert_allclose(ae.z[bottom_left][[0, 2]], stats.mean[[0, 2]] + stats.std[[0, 2]] * q[0], rtol=1e-5)
    pca = latent.manifold_grid(means[0], means, stats, False, "pca", (0, 1), 5)
    np.testing.assert_allclose(pca.z, latent.pca_grid(means[0], latent.fit_pca(means), 5).z)


# ---------------------------------------------------------------- an image against the test set

def test_percentile_rank_on_constructed_values():
    reference = np.arange(1.0, 101.0)  # 1 .. 100
    assert latent.percentile_rank(0.5, reference) == 0.0
    assert latent.percentile_rank(50.5, reference) == 50.0
    assert latent.percentile_rank(100.0, reference) == 99.0  # ties do not count as beaten: the worst test image is at 99
    assert latent.percentile_rank(1e9, reference) == 100.0
    assert not latent.out_of_distribution(latent.percentile_rank(100.0, reference))
    assert latent.out_of_distribution(latent.percentile_rank(100.5, reference))
    assert latent.out_of_distribution(60.0, threshold=50.0) and not latent.out_of_distribution(40.0, threshold=50.0)
    with pytest.raises(ValueError):
        latent.percentile_rank(1.0, np.array([]))


def test_ood_report_flags_a_score_beyond_the_test_set():
    atlas = latent.ImageScores(mse=np.linspace(0.01, 0.05, 200), neg_elbo=np.linspace(100.0, 200.0, 200))
    typical = latent.ImageScores(mse=np.array([0.03]), neg_elbo=np.array([150.0]))
    line, flagged = latent.ood_report(typical, atlas, "nats")
    assert not flagged and "higher than 50.0% of the 200 test images" in line and "negative ELBO (nats) 150.0" in line
    bound_only = latent.ImageScores(mse=np.array([0.03]), neg_elbo=np.array([900.0]))  # reconstructs fine, yet unlikely under the model
    line, flagged = latent.ood_report(bound_only, atlas, "BCE-based bound")
    assert flagged and "higher than 100.0%" in line
    ae = latent.ImageScores(mse=np.array([0.5]), neg_elbo=None)  # an autoencoder: no bound to place
    line, flagged = latent.ood_report(ae, latent.ImageScores(atlas.mse, None), "nats")
    assert flagged and "negative ELBO" not in line


def test_image_scores_of_a_vae_and_an_ae(runs_root):
    from trainer.runs import load_run

    vae, ae = load_run(runs_root / "vae2"), load_run(runs_root / "ae2")
    x = vae.atlas.images[:6]
    a, b = latent.image_scores(vae.model, x, "bce"), latent.image_scores(vae.model, x, "bce")
    np.testing.assert_array_equal(a.neg_elbo, b.neg_elbo)  # seeded: the same numbers every time
    assert a.mse.shape == a.neg_elbo.shape == (6,) and np.all(a.neg_elbo > 0) and np.all((a.mse >= 0) & (a.mse <= 1))
    recon = vae.model.decode(vae.model.encode_batches(torch.from_numpy(x)).mode())
    np.testing.assert_allclose(a.mse, ((torch.sigmoid(recon) - torch.from_numpy(x).float() / 255).pow(2).flatten(1).mean(1)).detach().numpy(), rtol=1e-5)
    assert latent.image_scores(ae.model, x, "bce").neg_elbo is None


def test_uploads_to_a_binarised_run_are_binarised_like_its_test_set():
    x = np.random.default_rng(0).integers(0, 256, size=(2, 1, 8, 8), dtype=np.uint8)
    once, again = latent.binarize_like_test_set(x), latent.binarize_like_test_set(x)
    np.testing.assert_array_equal(once, again)
    assert set(np.unique(once)) <= {0, 255}


# ---------------------------------------------------------------- the interpolation's caption

def test_interpolation_caption_says_a_linear_path_rises_through_the_middle():
    z0, z1 = np.array([2.0, 1.0], np.float32), np.array([-2.0, -0.5], np.float32)
    density = latent.prior_log_density(latent.interpolate(z0, z1, 7, "linear"))
    assert density[3] > max(density[0], density[-1])  # the chart: the prior peaks at the origin
    text = latent.interpolation_caption(density, "linear", False, "digit")
    assert "rises" in text and "dip" not in text and "unlike any digit" in text and f"A {density[0]:.1f}" in text
    flat = latent.prior_log_density(latent.interpolate(z0, z1, 7, "spherical"))
    text = latent.interpolation_caption(flat, "spherical", False)
    assert "rises" not in text and "between the ends" in text
    assert "fitted to the codes" in latent.interpolation_caption(density, "linear", True)
