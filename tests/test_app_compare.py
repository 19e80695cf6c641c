"""The Compare page: alignment, ranking by the bound and its labels (pure), and the page itself through AppTest;
the run line and Explore's run summary, which word the same numbers."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from app import bounds, compare, plots
from app.common import describe_run
from trainer import metrics
from trainer.runs import Run, RunSummary, load_run, summarize_run

from .helpers import make_run


@pytest.fixture(scope="module")
def runs(runs_root: Path) -> dict[str, Run]:
    return {name: load_run(runs_root / name) for name in ("vae2", "ae2", "vae5")}


@pytest.fixture(scope="module")
def beta_root(tmp_path_factory) -> Path:
    """Tiny runs of the ablations: β = 0 (no KL term) and β = 4 (the runs_root VAEs have β = 1)."""
    root = tmp_path_factory.mktemp("betas")
    make_run(root, "beta0", beta=0.0)
    make_run(root, "beta4", beta=4.0)
    return root


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
    rows = {r["run"]: r for r in compare.metrics_table(chosen)}
    assert sorted(rows) == sorted(r.name for r in chosen)
    for run in chosen:
        row, last = rows[run.name], run.history[-1]
        for column, key in compare.TABLE_METRICS.items():
            assert row[column] == last[key]
        assert row["epochs"] == run.epoch == last["epoch"]
        assert row["params"] == sum(p.numel() for p in run.model.parameters())
        assert row["latent"] == run.model_config.latent_dim
        assert row["time (s)"] == pytest.approx(sum(r["seconds"] for r in run.history))
        assert row["dataset"] == "mnist (subset)" and row["β"] == run.train_config.beta and row["recon loss"] == "BCE, grayscale"
        assert set(compare.RANKING_COLUMNS) | set(compare.QUALITY_COLUMNS) <= set(row)


# ---------------------------------------------------------------- ranking by the bound

def with_last_row(run: Run, **numbers: float) -> Run:
    """A copy of `run` whose last history row has these test numbers (and no recorded bound unless given)."""
    last = {k: v for k, v in run.history[-1].items() if k != "test_neg_elbo"} | numbers
    return dataclasses.replace(run, history=[*run.history[:-1], last])


def test_compare_ranks_by_the_negative_elbo_not_the_objective(runs: dict[str, Run], beta_root: Path) -> None:
    beta0, beta4, beta1 = load_run(beta_root / "beta0"), load_run(beta_root / "beta4"), runs["vae2"]
    rows = compare.metrics_table([beta0, runs["ae2"], beta4, beta1])
    vaes = rows[:3]
    bound = {r.name: metrics.neg_elbo(r.history[-1]) for r in (beta0, beta4, beta1)}
    assert [r["run"] for r in vaes] == sorted(bound, key=bound.get)
    assert [r["rank"] for r in vaes] == [1, 2, 3]
    for row in vaes:
        run = {r.name: r for r in (beta0, beta4, beta1)}[row["run"]]
        assert row["neg. ELBO"] == pytest.approx(bound[row["run"]])
        assert row["objective"] == run.history[-1]["test_loss"]
        assert row["β"] == run.train_config.beta
    # β ≠ 1: the objective is not the bound (β = 0 leaves the KL out, β = 4 weighs it 4 times).
    assert vaes[[r["run"] for r in vaes].index("beta0")]["objective"] < bound["beta0"]
    assert vaes[[r["run"] for r in vaes].index("beta4")]["objective"] > bound["beta4"]
    # The autoencoder has no bound: listed last, unranked, never placed by its reconstruction term.
    assert rows[3]["run"] == "ae2" and rows[3]["rank"] is None and rows[3]["neg. ELBO"] is None and rows[3]["objective"] is not None


def test_the_no_kl_run_is_not_first_when_its_bound_is_worse(runs: dict[str, Run], beta_root: Path) -> None:
    # As in the bundled runs: the β = 0 run has the lowest objective (its reconstruction alone) and the worst bound.
    beta0 = with_last_row(load_run(beta_root / "beta0"), test_loss=136.3, test_recon=136.3, test_kl=79.1)
    beta4 = with_last_row(load_run(beta_root / "beta4"), test_loss=162.0, test_recon=145.3, test_kl=4.2)
    beta1 = with_last_row(runs["vae2"], test_loss=143.2, test_recon=136.5, test_kl=6.7, test_neg_elbo=143.2)
    ae = with_last_row(runs["ae2"], test_loss=137.4, test_recon=137.4, test_kl=0.0)
    chosen = [beta0, beta4, beta1, ae]
    by_objective = sorted(chosen, key=lambda r: r.history[-1]["test_loss"])
    assert by_objective[0].name == "beta0"  # what the old "test loss" ranking put first
    rows = compare.metrics_table(chosen)
    assert [(r["run"], r["rank"]) for r in rows] == [("vae2", 1), ("beta4", 2), ("beta0", 3), ("ae2", None)]
    assert [r["neg. ELBO"] for r in rows[:3]] == pytest.approx([143.2, 149.5, 215.4])


def test_ranks_count_within_a_dataset_and_reconstruction_term(runs: dict[str, Run]) -> None:
    other = dataclasses.replace(runs["vae5"], info={**runs["vae5"].info, "train": {**runs["vae5"].info["train"], "dataset": "fashion-mnist"}},
                                path=runs["vae5"].path.with_name("fashion"))
    chosen = [with_last_row(other, test_recon=1.0, test_kl=1.0), runs["vae2"], runs["vae5"]]
    rows = compare.metrics_table(chosen)
    assert compare.rank_groups(chosen) == 2
    assert [(r["run"], r["rank"]) for r in rows][0] == ("fashion", 1)  # the best bound of its own group only
    assert sorted(r["rank"] for r in rows[1:]) == [1, 2]
    assert compare.datasets_differ(chosen) and not compare.datasets_differ([runs["vae2"], runs["vae5"]])


# ---------------------------------------------------------------- labels

@pytest.mark.parametrize(("recon_loss", "binarized", "unit", "short"), [
    ("bce", True, "nats", "Bernoulli NLL"),
    ("bce", False, "BCE-based bound", "BCE, grayscale"),
    ("mse", False, "SSE-based", "SSE"),
    ("mse", True, "SSE-based", "SSE"),
    ("l1", False, "L1-based", "L1, sum of absolute errors"),
])
def test_labels_per_reconstruction_loss(recon_loss: str, binarized: bool, unit: str, short: str) -> None:
    setting = bounds.Setting("vae", 4.0, 1.0, recon_loss, binarized)
    assert setting.unit == bounds.bound_unit(recon_loss, binarized) == unit
    assert setting.recon_short == short
    assert setting.recon_label == metrics.recon_label(recon_loss, binarized)
    text = bounds.numbers_text(setting, objective=162.0, bound=149.5, psnr=14.6)
    assert text.startswith("neg. ELBO 149.5") and "objective (β=4) 162.0" in text and "PSNR 14.6 dB" in text
    assert ("nats" in text) == (unit == "nats")  # nats only where the reconstruction term is a true log-density
    assert "test loss" not in text
    if recon_loss == "l1":  # its own wording, not the generic fallback's "l1-based"
        assert "sum of absolute errors (not nats)" in setting.recon_label and "l1-based" not in text
    ae = bounds.numbers_text(dataclasses.replace(setting, kind="ae"), objective=137.4, bound=137.4, psnr=14.8)
    assert "neg. ELBO" not in ae and "no bound" in ae and "137.4" in ae
    assert bounds.objective_label(1.0, 0.5) == "objective (β=1, recon ×0.5)"
    curves, title = bounds.loss_curves(setting)  # the Train page's job card
    assert [name for name, _ in curves] == ["train objective", "test objective", "test neg. ELBO"] and title.endswith(unit)
    assert curves[2][1]({"test_recon": 10.0, "test_kl": 2.5}) == 12.5
    assert [name for name, _ in bounds.loss_curves(dataclasses.replace(setting, kind="ae"))[0]] == ["train objective", "test objective"]


def test_the_beta_zero_run_is_called_what_it_is() -> None:
    assert bounds.Setting("vae", 0.0, 1.0, "bce", False).kind_label == "VAE (β = 0)"
    assert bounds.Setting("vae", 1.0, 1.0, "bce", False).kind_label == "VAE"
    assert not bounds.Setting("ae", 0.0, 1.0, "bce", False).beta_zero
    assert "need not follow the prior" in bounds.BETA_ZERO_NOTE and bounds.BETA_ZERO_SAMPLES_NOTE.startswith(bounds.BETA_ZERO_NOTE)


def test_colour_runs_word_their_bce_term_for_colour_targets() -> None:
    """An emoji (RGB) run's BCE is on colour pixels: the header and Compare say so, from the run and from its config.json."""
    colour = bounds.Setting.of_config({"model": {"kind": "vae", "in_channels": 3}, "train": {"recon_loss": "bce"}})
    gray = bounds.Setting.of_config({"model": {"kind": "vae", "in_channels": 1}, "train": {"recon_loss": "bce"}})
    assert colour.colour and not gray.colour
    assert colour.recon_short == "BCE, colour" and gray.recon_short == "BCE, grayscale"
    assert "colour targets" in colour.recon_label and "grayscale" in gray.recon_label
    assert colour.unit == gray.unit == "BCE-based bound"


def test_run_line_shows_the_bound_and_the_objective_apart(runs_root: Path, beta_root: Path, tmp_path: Path) -> None:
    vae = describe_run(summarize_run(runs_root / "vae2"))
    assert "neg. ELBO" in vae and "(BCE-based bound)" in vae and "objective (β=1)" in vae and "nats" not in vae
    beta4 = summarize_run(beta_root / "beta4")
    last = load_run(beta_root / "beta4").history[-1]
    assert beta4.neg_elbo == pytest.approx(metrics.neg_elbo(last))
    line = describe_run(beta4)
    assert f"neg. ELBO {beta4.neg_elbo:.1f}" in line and f"objective (β=4) {last['test_loss']:.1f}" in line
    assert describe_run(beta4, load_run(beta_root / "beta4")) == line  # from the loaded run: the same line
    assert "conv VAE (β = 0)" in describe_run(summarize_run(beta_root / "beta0"))
    assert "no bound" in describe_run(summarize_run(runs_root / "ae2"))
    # A run saved before manifests named the bound: read from the history's tail (recon + KL).
    old = shutil.copytree(beta_root / "beta4", tmp_path / "beta4")
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["last"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert summarize_run(old).neg_elbo == pytest.approx(last["test_recon"] + last["test_kl"])


# ---------------------------------------------------------------- comparable defaults

def summary(name: str, dataset: str = "mnist", latent: int = 2, error: str | None = None) -> RunSummary:
    config = {"model": {"kind": "vae", "latent_dim": latent, "in_channels": 1, "image_size": 28}, "train": {"dataset": dataset}, "data": {}}
    return RunSummary(name, Path(name), config, 1, None, error, 0.0)


def test_compare_opens_on_runs_of_one_dataset() -> None:
    listing = [summary("a-fashion", "fashion-mnist"), summary("b-broken", error="bad"), summary("c-mnist-z16", latent=16), summary("d-mnist-z2")]
    assert compare.default_runs(listing, "d-mnist-z2") == ["d-mnist-z2", "c-mnist-z16"]
    assert compare.default_runs(listing + [summary("e-mnist-z2")], "d-mnist-z2") == ["d-mnist-z2", "e-mnist-z2"]  # same latent size first
    assert compare.default_runs(listing + [summary("f-fashion", "fashion-mnist")], None) == ["a-fashion", "f-fashion"]
    assert compare.default_runs(listing, "a-fashion") == ["a-fashion", "c-mnist-z16"]  # no other fashion run: the page warns
    assert compare.default_runs([summary("x", error="bad")]) == []


def test_default_interpolation_pair_is_two_classes() -> None:
    assert compare.default_pair(np.array([3, 3, 3, 7, 1])) == (0, 3)
    assert compare.default_pair(np.array([5, 5])) == (0, 1)  # one class only: two images of it


def test_table_fits_four_runs_with_names_in_full() -> None:
    names = ["mnist-conv-vae-z2", "mnist-conv-ae-z2", "mnist-conv-vae-z2-nokl", "mnist-conv-vae-z2-beta4"]
    rows = [{"rank": i + 1, "run": n, "dataset": "mnist (subset)", "β": 4.0, "recon loss": "BCE, grayscale", "neg. ELBO": 215.41,
             "IWAE NLL": "102.87 ± 0.64", "objective": 161.97, "recon": 145.35, "KL": 79.12, "model": "conv VAE (β = 0)",
             "latent": 2, "MSE": 0.0408, "PSNR (dB)": 14.58, "SSIM": 0.478, "active units": 2, "params": 583429, "epochs": 30,
             "time (s)": 1122.6} for i, n in enumerate(names)]
    for columns in (compare.RANKING_COLUMNS, compare.QUALITY_COLUMNS):
        widths = compare.column_widths(rows, columns)
        assert sum(widths.values()) <= compare.CONTENT_PX_AT_1500, widths
        assert widths["run"] >= compare.CHAR_PX * max(map(len, names))
    assert compare.cell_text("neg. ELBO", None) == bounds.NO_VALUE and compare.cell_text("params", 583429) == "583,429"


def test_curves_figure_one_trace_per_run(runs: dict[str, Run]) -> None:
    chosen = [runs["vae2"], runs["vae5"]]
    fig = plots.curves_figure(chosen, compare.CURVE_METRICS["PSNR (dB)"], "PSNR (dB)")
    assert [t.name for t in fig.data] == ["vae2", "vae5"]
    assert list(fig.data[1].y) == [r["psnr"] for r in runs["vae5"].history]
    assert fig.layout.yaxis.title.text == "PSNR (dB)"
    # The bound is derived for rows written before it was recorded, and its axis says what it is in.
    metric = "test neg. ELBO (bound)"
    old = with_last_row(runs["vae5"], test_recon=50.0, test_kl=5.0)
    fig = plots.curves_figure([old], compare.CURVE_METRICS[metric], compare.curve_label(metric, [old]))
    assert list(fig.data[0].y)[-1] == pytest.approx(55.0)
    assert fig.layout.yaxis.title.text == "test neg. ELBO (bound), BCE-based bound"


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
    foreign = shutil.copytree(runs_root / "vae5", root / "aa-fashion")  # first in the listing, another dataset
    config = json.loads((foreign / "config.json").read_text())
    config["train"]["dataset"] = "fashion-mnist"
    (foreign / "config.json").write_text(json.dumps(config))
    (root / "broken").mkdir()
    (root / "broken" / "config.json").write_text("{not json")
    at = ok(start_app(monkeypatch, root))
    return ok(at.switch_page(COMPARE_PAGE).run()), ok


def test_compare_page_shows_metrics_table(compare_page, runs_root: Path) -> None:
    at, ok = compare_page
    assert at.title[0].value == "Compare runs"
    # The sidebar's run (a 2-D VAE) and another run of its dataset, not the first two of the listing.
    assert at.multiselect(key="compare_runs").value == ["vae2", "ae2"]
    assert not at.warning
    assert "broken" not in at.multiselect(key="compare_runs").options
    assert any(m.value.startswith("- **broken**: ") and "not valid JSON" in m.value for m in at.markdown)
    ranking, quality = at.dataframe[0].value, at.dataframe[1].value
    assert list(ranking.columns) == list(compare.RANKING_COLUMNS) and list(quality.columns) == list(compare.QUALITY_COLUMNS)
    assert list(ranking["run"]) == ["vae2", "ae2"] and list(quality["run"]) == ["vae2", "ae2"]  # the AE after the VAE, unranked
    assert ranking["rank"][0] == 1 and np.isnan(ranking["rank"][1]) and np.isnan(ranking["neg. ELBO"][1])
    assert ranking["neg. ELBO"][0] == pytest.approx(metrics.neg_elbo(load_run(runs_root / "vae2").history[-1]))
    assert set(ranking["recon loss"]) == {"BCE, grayscale"} and set(ranking["dataset"]) == {"mnist (subset)"}
    notes = " ".join(c.value for c in at.caption)
    assert "lower is better" in notes and bounds.AE_NOTE in notes
    assert at.selectbox(key="compare_metric").value == "test neg. ELBO (bound)"
    a, b = at.number_input(key="compare_from").value, at.number_input(key="compare_to").value
    labels = load_run(runs_root / "vae2").atlas.labels
    assert labels[a] != labels[b]  # the default interpolation joins two classes
    assert len(at.get("plotly_chart")) == 3  # the curves and one scatter per run
    # A third run, and another curve metric: still no exception, one more column of views.
    at.multiselect(key="compare_runs").set_value(["vae2", "ae2", "vae5"])
    at.selectbox(key="compare_metric").set_value("PSNR (dB)")
    at = ok(at.run())
    assert set(at.dataframe[0].value["run"]) == {"vae2", "ae2", "vae5"}
    assert len(at.get("plotly_chart")) == 4
    assert any("aligned to vae2" in str(c.proto) for c in at.get("plotly_chart"))


def test_compare_says_when_the_datasets_differ(compare_page) -> None:
    at, ok = compare_page
    at.multiselect(key="compare_runs").set_value(["vae2", "aa-fashion"])
    at = ok(at.run())
    assert len(at.warning) == 1 and "datasets differ" in at.warning[0].value and "aa-fashion" in at.warning[0].value
    assert list(at.dataframe[0].value["rank"]) == [1, 1]  # each the best of its own dataset
    captions = [c for im in at.image for c in im.captions]
    assert "Interpolation of mnist (subset) images: not this run's data" in captions
    assert "Reconstructions of mnist (subset) images: not this run's data" in captions


def test_compare_page_needs_two_runs(compare_page) -> None:
    at, ok = compare_page
    at.multiselect(key="compare_runs").set_value(["vae5"])
    at = ok(at.run())
    assert any("at least 2" in i.value for i in at.info)
    assert not at.get("arrow_data_frame") and not at.get("plotly_chart")


# ---------------------------------------------------------------- Explore: the run summary and an upload against the test set

def test_explore_shows_the_bound_and_the_iwae_estimate(monkeypatch, runs_root: Path, tmp_path: Path) -> None:
    from tests.helpers import ok, start_app

    root = tmp_path / "runs"
    run_dir = shutil.copytree(runs_root / "vae2", root / "vae2")
    at = ok(start_app(monkeypatch, root))
    summary = next(c.value for c in at.caption if c.value.startswith("Test set, epoch"))
    last = load_run(run_dir).history[-1]
    assert f"neg. ELBO {metrics.neg_elbo(last):.2f} (BCE-based bound)" in summary and f"objective (β=1) {last['test_loss']:.2f}" in summary
    assert "not a density" in summary and "No IWAE estimate" in summary
    epoch = load_run(run_dir).epoch
    evaluation = {"run": "vae2", "epoch": epoch, "nll_iwae": 180.25, "nll_iwae_stderr": 1.5, "neg_elbo": 190.0, "samples": 100,
                  "images": 40, "image_set": "test", "likelihood": "BCE on grayscale targets: a bound on randomly binarised images, not a density"}
    (run_dir / f"evaluation-{epoch:06d}.json").write_text(json.dumps(evaluation))
    at = ok(at.run())
    summary = next(c.value for c in at.caption if c.value.startswith("Test set, epoch"))
    assert "IWAE NLL 180.25 ± 1.50 (K = 100 samples, 40 test images; BCE on grayscale targets" in summary


def test_an_upload_unlike_the_data_is_flagged(monkeypatch, runs_root: Path) -> None:
    import io

    from PIL import Image, ImageDraw

    from tests.helpers import ok, open_tab, start_app

    at = open_tab(ok(start_app(monkeypatch, runs_root)), "Reconstruction")
    uploader = next(u for u in at.file_uploader if (u.key or "").startswith("recon_upload"))
    photo = Image.new("RGB", (90, 90), (240, 238, 230))
    ImageDraw.Draw(photo).rectangle([10, 10, 80, 80], fill=(20, 20, 20))  # a dark block on paper: a filled square, no digit
    buf = io.BytesIO()
    photo.save(buf, format="PNG")
    uploader.set_value(("block.png", buf.getvalue(), "image/png")).run()
    flagged = [w.value for w in ok(at).warning if w.value.startswith("Out of distribution")]
    assert len(flagged) == 1 and "reconstruction error (MSE)" in flagged[0] and "negative ELBO (BCE-based bound)" in flagged[0]
    assert "of the 40 test images" in flagged[0]


def test_active_units_curve_says_what_it_counts_for_an_ae(runs: dict[str, Run]) -> None:
    """The history's `active_units` counts KL > 0.01 for a VAE but code variance > 0.01 for an AE (README Metrics):
    the curve's label names both, and an AE's count is the variance one (Burda's), though its KL is 0."""
    label = next(k for k, v in compare.CURVE_METRICS.items() if v == "active_units")
    assert "KL > 0.01" in label and "AE: code variance > 0.01" in label
    last = runs["ae2"].history[-1]
    assert last["test_kl"] == 0 and last["active_units"] == last["active_units_burda"]
    no_kl, variance = torch.zeros(3), torch.tensor([0.5, 0.001, 0.2])
    assert metrics.active_units(no_kl, variance, deterministic=True) == 2
    assert metrics.active_units(no_kl, variance, deterministic=False) == 0
