"""Train page: start `python -m trainer` in the background, follow its jobs live, stop them, resume them.

The form's values go through app/jobs.py, which checks them with the trainer's own parser and
config rules, then starts the trainer detached: it keeps training if the browser closes. The job
list refreshes itself (a fragment with run_every) only while a job is starting or running.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import streamlit as st

from app import bounds, jobs
from app.common import checkpoints_dir, is_public, open_run
from app.latent import make_projection
from app.plots import LEGEND_RIGHT, WALL_SECONDS_HELP, latent_scatter, loss_figure, number
from trainer.cli import OptionSpec
from trainer.data import DATASETS, FOLDER_PREFIX
from trainer.runs import MANIFEST_FILE, summarize_run

REFRESH_S = 2.0  # how often the job list redraws while something trains
PAST_JOBS_SHOWN = 10
LIVE_SCATTER_HEIGHT = 320
DATASET_CHOICES = (*DATASETS, "folder")
JS_MAX_SAFE_INTEGER = 2**53 - 1  # a browser number input holds no larger bound
NAME_KEY, NEW_NAME_FLAG, STARTED_KEY, STOP_FEEDBACK_KEY = "train_run_name", "train_new_name", "train_started", "train_stop_feedback"
STATE_ICONS = {  # Streamlit's material icons (emoji fonts are often missing on Linux desktops)
    "starting": ":material/hourglass_top:", "running": ":material/play_circle:", "finished": ":material/check_circle:",
    "stopped": ":material/stop_circle:", "failed": ":material/error:", "died": ":material/heart_broken:",
}


def suggested_name() -> str:
    return f"run-{time.strftime('%Y%m%d-%H%M%S')}"


def blank_to_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


def choice_box(label: str, option: OptionSpec, key: str) -> Any:
    """A selectbox over the option's choices at its default; "default" first where the trainer decides (image size)."""
    assert option.choices is not None
    if option.default is None:
        return st.selectbox(label, (None, *option.choices), format_func=lambda v: "default" if v is None else str(v), help=option.help, key=key)
    return st.selectbox(label, option.choices, index=option.choices.index(option.default), help=option.help, key=key)


def int_input(label: str, option: OptionSpec, key: str) -> int | None:
    """A number input with the config field's bounds (the browser keeps typed values within them) and default."""
    spec = option.spec
    assert spec is not None
    low = None if spec.min is None else int(spec.min) + (1 if spec.min_open else 0)
    high = spec.max if spec.max is not None and spec.max <= JS_MAX_SAFE_INTEGER else None
    return st.number_input(label, low, high, option.default, placeholder="default", help=option.help, key=key)


def float_input(label: str, option: OptionSpec, key: str, step: float) -> float:
    """A number input with the field's default and no bounds: the browser would silently snap an out-of-range
    value back, where the trainer's validation says what is wrong (the help shows the allowed range)."""
    return st.number_input(label, value=option.default, format="%g", step=step, help=option.help, key=key)


def training_form() -> dict[str, Any] | None:
    """The trainer's options as a form, its defaults, bounds and help from the trainer's options; the options dict when submitted."""
    o = jobs.trainer_options()
    if st.session_state.pop(NEW_NAME_FLAG, False) or NAME_KEY not in st.session_state:
        st.session_state[NAME_KEY] = suggested_name()
    with st.form("train_form"):
        c1, c2, c3, c4 = st.columns(4)
        with c1:
            model = choice_box("Model", o["model"], "train_model")
            kind = choice_box("Kind", o["kind"], "train_kind")
            latent_dim = int_input("Latent size", o["latent_dim"], "train_latent_dim")
        with c2:
            dataset = st.selectbox("Dataset", DATASET_CHOICES, help=o["dataset"].help, key="train_dataset")
            folder = st.text_input("Image folder (dataset 'folder')", placeholder="/path/to/images",
                                   help="A folder of images, or of class sub-folders of images.", key="train_folder")
            recon_loss = choice_box("Reconstruction loss", o["recon_loss"], "train_recon_loss")
        with c3:
            epochs = int_input("Epochs", o["epochs"], "train_epochs")
            batch_size = int_input("Batch size", o["batch_size"], "train_batch_size")
            lr = float_input("Learning rate", o["lr"], "train_lr", step=1e-4)
        with c4:
            beta = float_input("Beta (KL weight)", o["beta"], "train_beta", step=0.1)
            beta_warmup = int_input("Beta warm-up (epochs)", o["beta_warmup"], "train_beta_warmup")
            seed = int_input("Seed", o["seed"], "train_seed")
        with st.expander("Advanced"):
            a1, a2, a3 = st.columns(3)
            with a1:
                widths = st.text_input("Conv widths", placeholder=",".join(map(str, o["widths"].default)), help=o["widths"].help, key="train_widths")
                hidden_dim = int_input("Hidden layer", o["hidden_dim"], "train_hidden_dim")
            with a2:
                image_size = choice_box("Image size", o["image_size"], "train_image_size")
                channels = choice_box("Channels", o["channels"], "train_channels")
            with a3:
                atlas_size = int_input("Atlas size", o["atlas_size"], "train_atlas_size")
                lr_milestones = st.text_input("LR milestones (epochs)", placeholder="e.g. 20", help=o["lr_milestones"].help + " (times the LR factor "
                                              f"{o['lr_gamma'].default:g}: 20 trains at the learning rate above, then a tenth of it from epoch 21)",
                                              key="train_lr_milestones")
                deterministic = choice_box("Deterministic", o["deterministic"], "train_deterministic")
            st.caption("Model **resnet** only (residual blocks, self-attention mid block). A spatial bottleneck's latent size follows from "
                       "the latent channels and the image size, so the latent size above is not sent for it.")
            r1, r2, r3 = st.columns(3)
            with r1:
                bottleneck = choice_box("Bottleneck (resnet)", o["bottleneck"], "train_bottleneck")
            with r2:
                latent_channels = int_input("Latent channels (resnet)", o["latent_channels"], "train_latent_channels")
            with r3:
                res_blocks = int_input("Residual blocks (resnet)", o["res_blocks"], "train_res_blocks")
        sharp = sharpness_inputs(o)
        run_name = st.text_input("Run name", key=NAME_KEY, help="The run's folder name: letters, digits, '.', '_' or '-'.")
        submitted = st.form_submit_button("Start training", type="primary", key="train_submit")
    if not submitted:
        return None
    spatial = model == "resnet" and bottleneck == "spatial"  # its latent size is derived: --latent-dim would be refused
    return {
        "model": model, "kind": kind, "latent_dim": None if spatial else latent_dim,
        "dataset": f"{FOLDER_PREFIX}{folder.strip()}" if dataset == "folder" else dataset,
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "beta": beta, "beta_warmup": beta_warmup,
        "recon_loss": recon_loss, "seed": seed, "run_name": run_name,
        "widths": blank_to_none(widths), "hidden_dim": hidden_dim, "image_size": image_size, "channels": channels,
        "atlas_size": atlas_size, "lr_milestones": blank_to_none(lr_milestones), "deterministic": deterministic,
        "bottleneck": bottleneck, "latent_channels": latent_channels, "res_blocks": res_blocks, **sharp,
    }


def sharpness_inputs(o: dict[str, OptionSpec]) -> dict[str, Any]:
    """The "Sharpness" expander: the discriminator and perceptual-loss options (all off by default), by option name."""
    with st.expander("Sharpness: adversarial and perceptual losses"):
        st.caption("A PatchGAN discriminator (hinge loss, weighted adaptively at the decoder's last layer) and an LPIPS-style "
                   "perceptual loss, as latent-diffusion autoencoders train; both off at weight 0. Pair them with a small beta and "
                   "the l1 reconstruction loss (latent diffusion's kl_weight 1e-6 is beta 5e-7 here: see the beta help).")
        s1, s2, s3 = st.columns(3)
        with s1:
            disc_weight = float_input("Discriminator weight", o["disc_weight"], "train_disc_weight", step=0.1)
            disc_start = int_input("Discriminator start (steps)", o["disc_start"], "train_disc_start")
        with s2:
            disc_layers = int_input("Discriminator layers", o["disc_layers"], "train_disc_layers")
            disc_channels = int_input("Discriminator channels", o["disc_channels"], "train_disc_channels")
        with s3:
            perceptual_weight = float_input("Perceptual weight", o["perceptual_weight"], "train_perceptual_weight", step=0.1)
            perceptual_weights = st.text_input("Perceptual weights file (VGG16)", placeholder="/path/to/vgg16.safetensors",
                                               help=o["perceptual_weights"].help, key="train_perceptual_weights")
    return {"disc_weight": disc_weight, "disc_start": disc_start, "disc_layers": disc_layers, "disc_channels": disc_channels,
            "perceptual_weight": perceptual_weight, "perceptual_weights": blank_to_none(perceptual_weights)}


def start(options: dict[str, Any], root: Path) -> None:
    """Start the job or show each problem on its own line."""
    try:
        started = jobs.start_job(options, root)
    except jobs.JobError as e:
        for error in e.errors:
            st.error(error)
        return
    st.session_state[NEW_NAME_FLAG] = True
    st.session_state[STARTED_KEY] = started.name
    st.success(f"Started {started.name} (pid {started.pid}). It keeps training if you close this page; it appears in the run picker after its first save.")


def job_header(job: jobs.Job) -> str:
    """`<icon> **name** — state · epoch e / E[ · step s / S] · N images/s · ETA · time of training`.

    Inside an epoch (the trainer's step counter) the epoch shown is the one being trained; between epochs and
    after the run, the epochs completed."""
    total = number(job.total) if job.total is not None else "?"
    parts = [f"{STATE_ICONS.get(job.state, '')} **{job.name}** — {job.state}"]
    if job.in_epoch:
        parts.append(f"epoch {number(job.epoch + 1)} / {total}, step {number(job.step or 0)} / {number(job.steps or 0)}")
    else:
        parts.append(f"epoch {number(job.epoch)} / {total}")
    if job.active and job.images_per_s is not None:
        parts.append(f"{number(job.images_per_s)} images/s")
    if job.active and job.eta is not None:
        parts.append(f"ETA {jobs.format_seconds(job.eta)}")
    if job.seconds is not None:
        parts.append(f"{jobs.format_seconds(job.seconds)} of training")
    return " · ".join(parts)


def live_views(job: jobs.Job) -> None:
    """Loss curves and the latest latent snapshot of a job's run (once it has saved an epoch)."""
    summary = summarize_run(job.path)
    if summary.epoch is None:
        st.caption("Curves and latents appear after the first save.")
        return
    run, error = open_run(summary)
    if run is None:
        st.caption(f"Not readable yet: {error}")
        return
    left, right = st.columns(2)
    with left:
        if run.history:
            st.plotly_chart(loss_figure(run.history, *bounds.loss_curves(bounds.Setting.of_run(run))), key=f"train_loss_{job.name}")
        else:
            st.caption("The loss curves start after epoch 1.")
    with right:
        projection = make_projection(run.atlas.means[-1], "pca")
        st.caption(f"Latents of {number(len(run.atlas.labels))} test images after epoch {number(run.epoch)}"
                   + (" (PCA)" if run.model_config.latent_dim > 2 else ""))
        fig = latent_scatter(projection.xy, run.atlas.labels, run.class_names, axis_titles=projection.axis_titles, height=LIVE_SCATTER_HEIGHT,
                             legend=LEGEND_RIGHT)
        st.plotly_chart(fig, key=f"train_scatter_{job.name}", config={"displaylogo": False})


def request_stop(run_dir: str) -> None:
    """Stop button callback (runs before the rerun, so a click is acted on even while the list redraws)."""
    name = Path(run_dir).name
    try:
        result = ("ok", jobs.stop_job(run_dir))
    except jobs.JobError as e:
        result = ("error", str(e))
    st.session_state.setdefault(STOP_FEEDBACK_KEY, {})[name] = result


def request_resume(run_dir: str, epochs_key: str) -> None:
    """Resume button callback: continue the run in the background up to the chosen number of epochs."""
    name = Path(run_dir).name
    try:
        started = jobs.resume_job(name, int(st.session_state[epochs_key]), Path(run_dir).parent)
        result = ("ok", f"Resumed {name} (pid {started.pid}) up to epoch {number(int(st.session_state[epochs_key]))}.")
        st.session_state[STARTED_KEY] = name
    except jobs.JobError as e:
        result = ("error", str(e))
    st.session_state.setdefault(STOP_FEEDBACK_KEY, {})[name] = result


def resume_default(job: jobs.Job) -> int:
    """The epochs a resume offers: the run's planned total if it stopped short, else twice what it trained."""
    if job.total is not None and job.epoch < job.total:
        return job.total
    return max(2 * job.epoch, job.epoch + 1)


def resume_control(job: jobs.Job) -> None:
    """A popover to continue a stopped, finished, failed or died run for more epochs (`python -m trainer --resume`)."""
    max_epochs = jobs.trainer_options()["epochs"].spec.max  # the trainer's bound on --epochs
    with st.popover("Resume…", help="Continue this run from its last saved epoch, exactly as if it had not stopped."):
        epochs_key = f"resume_epochs_{job.name}"
        st.number_input("Train up to epoch", min_value=job.epoch + 1, max_value=max_epochs, value=resume_default(job), step=1, key=epochs_key,
                        help=f"It has trained {number(job.epoch)} epochs; `python -m trainer --run-name {job.name} --resume --epochs N`.")
        st.button("Resume training", key=f"resume_{job.name}", type="primary", on_click=request_resume, args=(str(job.path), epochs_key))


def job_card(job: jobs.Job, detailed: bool) -> None:
    """One job: header, progress bar, message, stop or resume button; live views when `detailed`."""
    with st.container(border=True):
        head, button = st.columns([5, 1], vertical_alignment="center")
        head.markdown(job_header(job), help=None if job.active else WALL_SECONDS_HELP)
        if job.active:
            button.button("Stop training", key=f"stop_{job.name}", on_click=request_stop, args=(str(job.path),),
                          help="SIGTERM: the trainer finishes its step and keeps the last completed epoch.")
        elif jobs.resumable(job.path):  # a saved epoch with its optimiser state (exported runs have none)
            with button:
                resume_control(job)
        feedback = st.session_state.get(STOP_FEEDBACK_KEY, {}).pop(job.name, None)
        if feedback:
            (st.error if feedback[0] == "error" else st.toast)(feedback[1])
        st.progress(job.fraction)
        if job.message:
            (st.error if job.state in ("failed", "died") else st.caption)(job.message)
        if detailed:
            live_views(job)


def has_saved(job: jobs.Job) -> bool:
    """Whether the job's run has saved an epoch (then the run picker and the other pages can open it)."""
    return (job.path / MANIFEST_FILE).exists()


def jobs_section(root: Path) -> None:
    """Running and past jobs, redrawn every REFRESH_S seconds only while one is active."""
    st.subheader("Jobs")
    at_start = jobs.list_jobs(root)
    active_at_start = any(j.active for j in at_start)
    saved_at_start = {j.name for j in at_start if has_saved(j)}

    @st.fragment(run_every=REFRESH_S if active_at_start else None)
    def job_list() -> None:
        current = jobs.list_jobs(root)
        if any(j.active for j in current) != active_at_start:
            st.rerun()  # turn the timer on or off
        if any(j.active and has_saved(j) and j.name not in saved_at_start for j in current):
            st.rerun()  # a new run can be opened: redraw the sidebar's run picker too
        if not current:
            st.caption(f"No training jobs in {root} yet.")
            return
        active = [j for j in current if j.active]
        past = [j for j in current if not j.active]
        latest = st.session_state.get(STARTED_KEY)
        for job in active:
            job_card(job, detailed=True)
        for job in past[:PAST_JOBS_SHOWN]:
            job_card(job, detailed=job.name == latest)
        if len(past) > PAST_JOBS_SHOWN:
            st.caption(f"and {len(past) - PAST_JOBS_SHOWN} older jobs")

    job_list()


def render() -> None:
    st.title("Train")
    if is_public():  # not in the navigation of a public app; refused here too, before any job is listed or started
        st.error("Training is not available on this public deployment.")
        return
    root = checkpoints_dir()
    st.caption(f"New runs are written to {root} by `python -m trainer` running in the background.")
    options = training_form()
    if options is not None:
        start(options, root)
    jobs_section(root)


render()
