"""Compare page: 2 to 4 runs side by side on identical inputs, one metrics table, overlaid training curves."""
from __future__ import annotations

import numpy as np
import streamlit as st

from app import bounds, compare, latent, plots
from app import explore_cache as cache
from app.common import cached_run_list, checkpoints_dir, describe_run, open_run
from app.images import display_scale, tile, upscale
from app.latent import INTERPOLATION_STEPS, INTERPOLATIONS, MAX_SEED, robust_range
from app.sidebar import current_selection
from trainer.evaluate import read_evaluation
from trainer.runs import Run, RunSummary

SCATTER_HEIGHT = 340
IMAGE_TARGET_PX = 56  # each small image is enlarged to about this many pixels
ROW_COLUMNS = 8  # images per row in a column's strip
DEFAULT_STEPS = 8
DEFAULT_SAMPLES = 8
MAX_SAMPLES = 32
COLUMN_HELP = {
    "rank": "By the negative ELBO, lower first, among runs of the same dataset and reconstruction term; an autoencoder has no bound and no rank.",
    "β": "Weight of the KL term in the training objective (at the last epoch).",
    "recon loss": ("What the reconstruction term is: Bernoulli NLL (nats) only on binary images; BCE on grayscale targets is not "
                   "a density; SSE is a sum of squared errors and L1 one of absolute errors (not nats)."),
    "neg. ELBO": "Test negative ELBO: reconstruction + KL at β = 1, the bound on −log p(x). Lower is better.",
    "IWAE NLL": "Importance-weighted estimate of −log p(x) ± its standard error (python -m trainer.evaluate), when computed for this epoch.",
    "objective": "Test value of what training minimised: recon weight × reconstruction + β × KL.",
    "recon": "Test reconstruction term per image (see recon loss for what it is).",
    "KL": "Test KL(q(z|x) || N(0, I)) per image, nats.",
    "active units": "Dimensions whose mean KL exceeds 0.01 nats (for an AE: whose code variance does).",
    "latent": "Latent dimensions; a spatial latent gives its map's shape, channels × rows × columns.",
    "params": "Trainable parameters of the model.",
    "time (s)": plots.WALL_SECONDS_HELP,
}


def show_strip(images: np.ndarray, caption: str | None = None) -> None:
    """A row (or rows) of uint8 images (N, C, H, W), enlarged with crisp pixels."""
    factor = display_scale(images.shape[-1], IMAGE_TARGET_PX)
    st.image(upscale(tile(images, ROW_COLUMNS), factor), caption=caption)


def pick_runs(summaries: list[RunSummary]) -> tuple[list[tuple[RunSummary, Run]], list[tuple[str, str]]]:
    """The multiselect of runs that open; returns the chosen (summary, run) pairs and (name, error) of those that do not."""
    openable = [s for s in summaries if not s.error]
    broken = [(s.name, s.error or "") for s in summaries if s.error]
    by_name = {s.name: s for s in openable}
    selected = current_selection().summary
    names = st.multiselect(
        f"Runs to compare ({compare.MIN_RUNS} to {compare.MAX_RUNS})", list(by_name),
        default=compare.default_runs(openable, selected.name if selected is not None else None),
        max_selections=compare.MAX_RUNS, key="compare_runs",
        help="Each run is shown in its own column with the same inputs. It opens on the sidebar's run and another run of the same dataset.",
    )
    chosen = []
    for name in names:
        run, error = open_run(by_name[name])
        if run is None:
            broken.append((name, error or "cannot be opened"))
        else:
            chosen.append((by_name[name], run))
    return chosen, broken


def shared_inputs(reference: Run) -> dict:
    """The inputs every column uses: two atlas images and steps, a prior seed and count, reconstruction count."""
    n_atlas = len(reference.atlas.images)
    a, b = compare.default_pair(reference.atlas.labels)  # two different classes
    c1, c2, c3, c4 = st.columns(4)
    with c1:
        first = st.number_input("Interpolate from atlas image #", 0, n_atlas - 1, a, key="compare_from")
        second = st.number_input("to atlas image #", 0, n_atlas - 1, b, key="compare_to")
    with c2:
        steps = st.slider("Interpolation steps", *INTERPOLATION_STEPS, DEFAULT_STEPS, key="compare_steps")
        method = st.segmented_control("Path", INTERPOLATIONS, default=INTERPOLATIONS[0], key="compare_path", required=True)
    with c3:
        seed = st.number_input("Prior seed", 0, MAX_SEED, 0, key="compare_seed")
        samples = st.slider("Prior samples", 1, MAX_SAMPLES, DEFAULT_SAMPLES, key="compare_samples")
    with c4:
        recon = st.slider("Reconstructions (first atlas images)", 1, min(MAX_SAMPLES, n_atlas), min(DEFAULT_SAMPLES, n_atlas), key="compare_recon")
    return {"pair": [int(first), int(second)], "steps": int(steps), "method": method or INTERPOLATIONS[0],
            "seed": int(seed), "samples": int(samples), "recon": int(recon)}


def render_columns(chosen: list[tuple[RunSummary, Run]], inputs: dict) -> None:
    """One column per run: aligned latent scatter, interpolation, prior samples, reconstructions."""
    runs = [run for _, run in chosen]
    reference = runs[0]
    projections = compare.aligned_projections(runs)
    x_range, y_range = robust_range(np.concatenate([p for p, aligned in projections if aligned]))
    pair = reference.atlas.images[inputs["pair"]]
    originals = reference.atlas.images[: inputs["recon"]]
    same_z = compare.same_latents(runs)
    sizes = " vs ".join(dict.fromkeys(latent.latent_size_text(r.model_config.latent_shape) for r in runs))
    st.caption(
        f"Scatters: atlas latents at each run's last epoch (PCA for more than 2 dimensions), turned onto "
        f"{reference.name}'s by orthogonal Procrustes (rotation/reflection, scale, shift). Prior samples: seed "
        f"{inputs['seed']}, " + ("the same z in every run" if same_z else f"same seed; the latents differ ({sizes}), so z is not the same code")
        + ("." + " " + latent.AE_SAMPLES_NOTE if any(r.model_config.kind == "ae" for r in runs) else ".")
    )
    ref_data = compare.dataset_of(reference.info)
    show_strip(pair, f"The interpolation's two atlas images ({ref_data}, from {reference.name})")
    for col, (summary, run), (points, aligned) in zip(st.columns(len(runs)), chosen, projections):
        foreign = compare.comparable_key(run.info) != compare.comparable_key(reference.info)
        fed = f" of {ref_data} images: not this run's data" if foreign else ""
        with col:
            st.markdown(f"**{run.name}**")
            st.caption(describe_run(summary, run))
            title = "aligned to " + reference.name if aligned and run is not reference else ("reference" if aligned else "not aligned: other atlas images")
            ranges = (x_range, y_range) if aligned else (None, None)
            fig = plots.latent_scatter(points, run.atlas.labels, run.class_names, axis_titles=("dim 1", "dim 2"),
                                 x_range=ranges[0], y_range=ranges[1], title=title, height=SCATTER_HEIGHT)
            fig.update_layout(showlegend=False)
            st.plotly_chart(fig, key=f"compare_scatter_{run.name}")
            if not compare.accepts_images(run, pair):
                st.warning(f"{run.name} takes {run.model_config.image_shape} images, not those of {reference.name}: no interpolation or reconstructions")
            else:
                show_strip(compare.interpolate(run, pair, inputs["steps"], inputs["method"]), "Interpolation" + fed)
                show_strip(compare.reconstruct(run, originals), "Reconstructions" + fed)
            beta_zero = bounds.Setting.of_run(run).beta_zero
            gaussian = cache.fitted_gaussian(cache.run_key(run), run) if run.atlas.logvars is None else None  # an AE's, factored once
            show_strip(compare.prior_samples(run, inputs["samples"], inputs["seed"], gaussian),
                       "Prior samples" + (f" · {bounds.BETA_ZERO_NOTE}" if beta_zero else ""))
    if all(compare.accepts_images(r, originals) for r in runs):
        show_strip(originals, "Originals of the reconstructions")


def column_config(column: str, width: int):
    """A number column with its format, a number written as text aligned like one, or a plain column."""
    common = {"width": width, "help": COLUMN_HELP.get(column)}
    if column in compare.TABLE_FORMATS:
        return st.column_config.NumberColumn(column, format=compare.TABLE_FORMATS[column], **common)
    if column in compare.TEXT_NUMBERS:
        return st.column_config.TextColumn(column, alignment="right", **common)
    return st.column_config.Column(column, **common)


def table(rows: list[dict], columns: tuple[str, ...], key: str) -> None:
    """The columns of the metrics rows, each wide enough for its header and cells (run names in full)."""
    widths = compare.column_widths(rows, columns)
    cells = [{c: str(r[c]) if c in compare.TEXT_NUMBERS and r.get(c) is not None else r.get(c) for c in columns} for r in rows]
    st.dataframe(cells, hide_index=True, key=key, column_order=columns, placeholder=bounds.NO_VALUE,
                 width="content", column_config={c: column_config(c, widths[c]) for c in columns})


def metrics_tables(runs: list[Run]) -> None:
    """The ranking by the bound (with the IWAE estimate where there is one), then reconstruction quality, codes and cost."""
    evaluations = [read_evaluation(r.path, r.epoch) if r.model_config.kind != "ae" else None for r in runs]
    rows = compare.metrics_table(runs, evaluations)
    st.subheader("Metrics at the last epoch")
    st.markdown("**Ranked by the negative ELBO** (test set, lower is better)")
    table(rows, compare.RANKING_COLUMNS, "compare_table")
    notes = [bounds.BOUND_NOTE]
    if compare.rank_groups(runs) > 1:
        notes.append("Ranks count within runs of the same dataset and reconstruction term: other bounds are not comparable.")
    if any(r.model_config.kind == "ae" for r in runs):
        notes.append(f"{bounds.NO_VALUE}: {bounds.AE_NOTE}.")
    notes += [f"{r.name}: {bounds.BETA_ZERO_NOTE}." for r in runs if bounds.Setting.of_run(r).beta_zero]
    notes += [f"{r.name}: {bounds.iwae_text(e)}." for r, e in zip(runs, evaluations) if e]
    st.caption("  \n".join(notes))
    st.markdown("**Reconstruction, codes and cost**")
    table(rows, compare.QUALITY_COLUMNS, "compare_quality")


def render() -> None:
    st.title("Compare runs")
    root = checkpoints_dir()
    summaries = cached_run_list(str(root))
    if not summaries:
        st.info(f"No runs in {root} yet: train one on the Train page or with `python -m trainer`.")
        return
    chosen, broken = pick_runs(summaries)
    runs = [run for _, run in chosen]
    if broken:
        with st.expander(f"Runs that cannot be opened ({len(broken)})"):
            for name, error in broken:
                st.markdown(f"- **{name}**: {error}")
    if len(runs) < compare.MIN_RUNS:
        st.info(f"Pick at least {compare.MIN_RUNS} runs that can be opened.")
        return

    if compare.datasets_differ(runs):
        data = ", ".join(f"{r.name}: {compare.dataset_of(r.info)}" for r in runs)
        foreign = [r.name for r in runs if compare.comparable_key(r.info) != compare.comparable_key(runs[0].info)]
        st.warning(f"The datasets differ ({data}): bounds are ranked only within a dataset, and the side-by-side views feed "
                   f"every run {runs[0].name}'s {compare.dataset_of(runs[0].info)} images, which {', '.join(foreign)} "
                   f"{'was' if len(foreign) == 1 else 'were'} not trained on (their strips say so).")

    metrics_tables(runs)

    st.subheader("Training curves")
    metric = st.selectbox("Metric", list(compare.CURVE_METRICS), key="compare_metric")
    st.plotly_chart(plots.curves_figure(runs, compare.CURVE_METRICS[metric], compare.curve_label(metric, runs)), key="compare_curves")

    st.subheader("Side by side, same inputs")
    inputs = shared_inputs(runs[0])
    render_columns(chosen, inputs)


render()
