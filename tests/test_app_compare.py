"""The Compare page: alignment and metrics (pure), and the page itself through AppTest."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app import compare, plots
from trainer.runs import Run, load_run


@pytest.fixture(scope="module")
def runs(runs_root: Path) -> dict[str, Run]:
    return {name: load_run(runs_root / name) for name in ("vae2", "ae2", "vae5")}


def random_rotation(rng: np.random.Generator, k: int, reflect: bool) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(k, k)))
    q = q * np.sign(np.diag(r))
    if (np.linalg.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q


# ---------------------------------------------------------------- pure

@pytest.mark.parametrize("reflect", [False, True])
@pytest.mark.parametrize("k", [2, 3])
def test_procrustes_recovers_rotation_scale_translation(k: int, reflect: bool) -> None:
    rng = np.random.default_rng(k + 10 * reflect)
    reference = rng.normal(size=(200, k))
    q = random_rotation(rng, k, reflect)
    other = 3.7 * reference @ q + rng.normal(size=k) * 5
    aligned = compare.procrustes_align(reference, other)
    np.testing.assert_allclose(aligned, reference, atol=1e-9)


def test_procrustes_with_noise_is_close_and_not_worse() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(300, 2))
    other = 0.2 * reference @ random_rotation(rng, 2, True) - 4 + rng.normal(scale=0.01, size=(300, 2))
    aligned = compare.procrustes_align(reference, other)
    assert np.abs(aligned - reference).max() < 0.3
    assert np.linalg.norm(aligned - reference) < np.linalg.norm(other - reference)


def test_procrustes_degenerate_and_bad_shapes() -> None:
    reference = np.arange(8.0).reshape(4, 2)
    aligned = compare.procrustes_align(reference, np.ones((4, 2)))
    np.testing.assert_allclose(aligned, np.broadcast_to(reference.mean(0), (4, 2)))
    with pytest.raises(ValueError, match="same shape"):
        compare.procrustes_align(reference, np.ones((3, 2)))


def test_aligned_projections(runs: dict[str, Run]) -> None:
    chosen = [runs["vae2"], runs["ae2"], runs["vae5"]]
    out = compare.aligned_projections(chosen)
    assert [aligned for _, aligned in out] == [True, True, True]  # same atlas images in all three
    np.testing.assert_allclose(out[0][0], runs["vae2"].atlas.means[-1], atol=1e-6)  # the reference is unchanged
    assert all(points.shape == (len(runs["vae2"].atlas.images), 2) for points, _ in out)
    # A mirrored, scaled, shifted copy of the reference comes back onto it.
    np.testing.assert_allclose(compare.procrustes_align(out[0][0], out[0][0] @ np.diag([-2.0, 2.0]) + 1), out[0][0], atol=1e-9)
    # The 5-D run is projected by PCA before alignment, and ends up no farther than unaligned.
    pca = compare.project_2d(runs["vae5"].atlas.means[-1])
    assert np.linalg.norm(out[2][0] - out[0][0]) <= np.linalg.norm(pca - out[0][0]) + 1e-9


def test_metrics_table_equals_last_history_rows(runs: dict[str, Run]) -> None:
    chosen = list(runs.values())
    rows = compare.metrics_table(chosen)
    assert [r["run"] for r in rows] == [r.name for r in chosen]
    for row, run in zip(rows, chosen):
        last = run.history[-1]
        for column, key in compare.TABLE_METRICS.items():
            assert row[column] == last[key]
        assert row["epochs"] == run.epoch == last["epoch"]
        assert row["parameters"] == sum(p.numel() for p in run.model.parameters())
        assert row["latent dim"] == run.model_config.latent_dim
        assert row["training seconds"] == pytest.approx(sum(r["seconds"] for r in run.history))


def test_curves_figure_one_trace_per_run(runs: dict[str, Run]) -> None:
    chosen = [runs["vae2"], runs["vae5"]]
    fig = plots.curves_figure(chosen, compare.CURVE_METRICS["PSNR (dB)"], "PSNR (dB)")
    assert [t.name for t in fig.data] == ["vae2", "vae5"]
    assert list(fig.data[1].y) == [r["psnr"] for r in runs["vae5"].history]
    assert fig.layout.yaxis.title.text == "PSNR (dB)"


def test_shared_inputs(runs: dict[str, Run]) -> None:
    vae2, ae2, vae5 = runs["vae2"], runs["ae2"], runs["vae5"]
    pair = vae2.atlas.images[[0, 1]]
    path = compare.interpolate(ae2, pair, 5)
    assert path.shape == (5, *ae2.model_config.image_shape)
    # The ends of an AE's interpolation are its reconstructions of the two images.
    assert np.abs(path[[0, -1]].astype(int) - compare.reconstruct(ae2, pair).astype(int)).max() <= 1
    # Same seed and latent size: the same z, so the same images from the same decoder.
    np.testing.assert_array_equal(compare.prior_samples(vae2, 4, 3), compare.prior_samples(vae2, 4, 3))
    assert compare.prior_samples(vae5, 4, 3).shape == (4, *vae5.model_config.image_shape)
    assert compare.accepts_images(vae5, pair) and not compare.accepts_images(vae5, np.zeros((1, 3, 28, 28), np.uint8))


# ---------------------------------------------------------------- the page

@pytest.fixture
def compare_page(monkeypatch, runs_root: Path, tmp_path: Path):
    """app/main.py on the Compare page over a copy of the tiny runs plus one broken run."""
    import shutil

    from tests.helpers import COMPARE_PAGE, ok, start_app

    root = tmp_path / "runs"
    for name in ("vae2", "ae2", "vae5"):
        shutil.copytree(runs_root / name, root / name)
    (root / "broken").mkdir()
    (root / "broken" / "config.json").write_text("{not json")
    at = ok(start_app(monkeypatch, root))
    return ok(at.switch_page(COMPARE_PAGE).run()), ok


def test_compare_page_shows_metrics_table(compare_page) -> None:
    at, ok = compare_page
    assert at.title[0].value == "Compare runs"
    assert at.multiselect(key="compare_runs").value == ["ae2", "vae2"]  # the first two that open
    assert "broken" not in at.multiselect(key="compare_runs").options
    assert any(m.value.startswith("- **broken**: ") and "not valid JSON" in m.value for m in at.markdown)
    table = at.dataframe[0].value
    assert list(table["run"]) == ["ae2", "vae2"]
    assert {"test loss", "PSNR (dB)", "SSIM", "active units", "parameters", "epochs", "training seconds"} <= set(table.columns)
    assert len(at.get("plotly_chart")) == 3  # the curves and one scatter per run
    # A third run, and another curve metric: still no exception, one more column of views.
    at.multiselect(key="compare_runs").set_value(["vae2", "ae2", "vae5"])
    at.selectbox(key="compare_metric").set_value("PSNR (dB)")
    at = ok(at.run())
    assert list(at.dataframe[0].value["run"]) == ["vae2", "ae2", "vae5"]
    assert len(at.get("plotly_chart")) == 4
    assert any("aligned to vae2" in str(c.proto) for c in at.get("plotly_chart"))


def test_compare_page_needs_two_runs(compare_page) -> None:
    at, ok = compare_page
    at.multiselect(key="compare_runs").set_value(["vae5"])
    at = ok(at.run())
    assert any("at least 2" in i.value for i in at.info)
    assert not at.get("arrow_data_frame") and not at.get("plotly_chart")
