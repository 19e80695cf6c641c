"""The Train page through streamlit's AppTest: the form, its one-line errors, and a real job started from it."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from app import jobs
from tests.helpers import TRAIN_PAGE, ok, start_app

JOB_TIMEOUT_S = 60.0


@pytest.fixture
def train_page(monkeypatch, tmp_path: Path) -> AppTest:
    """app/main.py on the Train page, with an empty checkpoints folder."""
    at = ok(start_app(monkeypatch, tmp_path))
    return ok(at.switch_page(TRAIN_PAGE).run())


def submit(at: AppTest, **values) -> AppTest:
    """Fill the form's widgets (by their `train_<option>` keys) and press Start training."""
    for name, value in values.items():
        key = "train_run_name" if name == "run_name" else f"train_{name}"
        at.get_by_key(key).set_value(value)
    at.button(key="train_submit").click()
    return ok(at.run())


def test_train_page_renders(train_page: AppTest, tmp_path: Path) -> None:
    at = train_page
    assert at.title[0].value == "Train"
    assert at.button(key="train_submit").label == "Start training"
    assert at.selectbox(key="train_model").value == "conv" and at.number_input(key="train_epochs").value >= 1
    assert at.text_input(key="train_run_name").value.startswith("run-")
    assert any(f"No training jobs in {tmp_path}" in c.value for c in at.caption)


def test_form_defaults_bounds_and_help_are_the_trainers(train_page: AppTest) -> None:
    """Each widget starts at the trainer's default, with the config field's bounds and the CLI's help text."""
    at, options = train_page, jobs.trainer_options()
    for name in ("latent_dim", "epochs", "batch_size", "beta_warmup", "atlas_size", "hidden_dim", "lr", "beta"):
        widget, option = at.number_input(key=f"train_{name}"), options[name]
        assert widget.value == option.default and widget.help == option.help, name
        if option.parse is int:
            assert (widget.min, widget.max) == (option.spec.min, option.spec.max), name
    for name in ("model", "kind", "recon_loss"):
        widget, option = at.selectbox(key=f"train_{name}"), options[name]
        assert widget.options == list(option.choices) and widget.value == option.default and widget.help == option.help
    assert at.selectbox(key="train_image_size").options == ["default", *map(str, options["image_size"].choices)]


@pytest.mark.parametrize("name", ["a/b", "..", "/abs", ""])
def test_invalid_run_name_shows_error_and_starts_nothing(train_page: AppTest, tmp_path: Path, name: str) -> None:
    at = submit(train_page, run_name=name)
    assert len(at.error) == 1 and "run name" in at.error[0].value and "\n" not in at.error[0].value
    assert not at.success
    assert list(tmp_path.iterdir()) == [] and jobs.list_jobs(tmp_path) == []


def test_each_mistake_on_its_own_line(train_page: AppTest, tmp_path: Path) -> None:
    at = submit(train_page, run_name="fine", lr=0.0, beta=-1.0, model="mlp", hidden_dim=0)
    messages = [e.value for e in at.error]
    assert len(messages) == 2, messages  # lr and beta; the mlp/hidden rule waits until single options pass
    assert any(m.startswith("lr must be") for m in messages) and any(m.startswith("beta must be") for m in messages)
    assert list(tmp_path.iterdir()) == []


def test_existing_run_name_refused(train_page: AppTest, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    at = submit(train_page, run_name="taken")
    assert [e.value for e in at.error] == [f"run 'taken' already exists in {tmp_path}: choose another run name"]


@pytest.mark.slow
def test_start_from_the_form_then_follow_it(train_page: AppTest, tmp_path: Path) -> None:
    at = submit(train_page, run_name="from-form", model="mlp", hidden_dim=16, latent_dim=2, epochs=1, atlas_size=40)
    assert not at.error, [e.value for e in at.error]
    assert "Started from-form" in at.success[0].value
    job = jobs.job_state(tmp_path / "from-form")
    try:
        assert job is not None and job.pid is not None
        assert any("from-form" in m.value for m in at.markdown)  # listed at once, as starting or running
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while (job := jobs.job_state(tmp_path / "from-form")) is not None and job.active and time.monotonic() < deadline:
            time.sleep(0.5)
        assert job is not None and job.state == "finished", (job, jobs.log_tail(tmp_path / "from-form"))
        at = ok(at.run())
        card = [m.value for m in at.markdown if "from-form" in m.value]
        assert card and "finished" in card[0] and "epoch 1 / 1" in card[0]
        assert at.text_input(key="train_run_name").value != "from-form"  # a fresh suggestion for the next run
        st.cache_data.clear()  # the run list is cached for two seconds: forget it rather than wait
        at = ok(at.run())
        assert any(o.startswith("from-form") for o in at.selectbox(key="run_path").options)  # in the sidebar picker
    finally:
        if job is not None and jobs.is_trainer_process(job.pid):
            os.kill(job.pid, signal.SIGKILL)


def test_pages_have_no_icon_fetched_from_a_font_host(monkeypatch, tmp_path: Path) -> None:
    """A Material page icon makes the browser load the tab's favicon from fonts.gstatic.com (fails offline): none is used."""
    icons: list = []
    real_page = st.Page

    def recording_page(*args, **kwargs):
        icons.append(kwargs.get("icon"))
        return real_page(*args, **kwargs)

    monkeypatch.setattr(st, "Page", recording_page)
    ok(start_app(monkeypatch, tmp_path))
    assert len(icons) == 3 and not any(isinstance(i, str) and i.startswith(":material/") for i in icons), icons


def copy_runs(runs_root: Path, tmp_path: Path, *names: str) -> Path:
    import shutil

    root = tmp_path / "checkpoints"
    for name in names:
        shutil.copytree(runs_root / name, root / name)
    return root


def test_a_finished_job_can_be_resumed_for_more_epochs(monkeypatch, runs_root: Path, tmp_path: Path) -> None:
    from app.plots import WALL_SECONDS_HELP

    root = copy_runs(runs_root, tmp_path, "vae2")
    calls = []

    def fake_resume(name, epochs, checkpoints_dir):
        calls.append((name, epochs, Path(checkpoints_dir)))
        return jobs.StartedJob(name, Path(checkpoints_dir) / name, 4242, Path(checkpoints_dir) / name / jobs.LOG_FILE, [])

    monkeypatch.setattr(jobs, "resume_job", fake_resume)
    at = ok(start_app(monkeypatch, root).switch_page(TRAIN_PAGE).run())
    card = next(m for m in at.markdown if "vae2" in m.value)
    assert "finished" in card.value and "epoch 2 / 2" in card.value and card.help == WALL_SECONDS_HELP
    epochs = at.number_input(key="resume_epochs_vae2")
    assert epochs.value == 4 and epochs.min == 3  # twice what it trained; at least one more epoch
    epochs.set_value(6)
    at.button(key="resume_vae2").click()
    at = ok(at.run())
    assert calls == [("vae2", 6, root)]
    assert any("Resumed vae2" in t.value for t in at.toast)


def test_a_resume_mistake_is_one_line(monkeypatch, runs_root: Path, tmp_path: Path) -> None:
    root = copy_runs(runs_root, tmp_path, "vae2")
    monkeypatch.setattr(jobs, "resume_problem", lambda run_dir, epochs: "vae2 cannot be resumed here: no data")
    at = ok(start_app(monkeypatch, root).switch_page(TRAIN_PAGE).run())
    at.button(key="resume_vae2").click()
    at = ok(at.run())
    assert [e.value for e in at.error] == ["vae2 cannot be resumed here: no data"]


def test_a_running_job_shows_steps_images_per_second_and_eta(monkeypatch, runs_root: Path, tmp_path: Path) -> None:
    """Inside the first epochs: the step counter of status.json, not 'epoch 0 / 3, 0 s'; the live scatter is SVG, its legend beside it."""
    import json

    root = copy_runs(runs_root, tmp_path, "vae2")
    monkeypatch.setattr(jobs, "is_trainer_process", lambda pid: pid == 4242)
    (root / "vae2" / "status.json").write_text(json.dumps({
        "state": "running", "pid": 4242, "epoch": 2, "total": 5, "step": 1200, "steps": 2500, "images_per_s": 2345.6, "eta": 75.0,
        "seconds": 12.0, "updated": 1.0}))
    at = ok(start_app(monkeypatch, root).switch_page(TRAIN_PAGE).run())
    card = next(m.value for m in at.markdown if "vae2" in m.value)
    assert "running" in card and "epoch 3 / 5, step 1,200 / 2,500" in card and "2,346 images/s" in card and "ETA 1 min 15 s" in card
    assert at.get("progress")[0].value == pytest.approx(int(100 * (2 + 1200 / 2500) / 5), abs=1)
    assert any("Latents of 40 test images after epoch 2" in c.value for c in at.caption)
    scatter = json.loads(next(c for c in at.get("plotly_chart") if "PC1" in c.proto.spec or "z0" in c.proto.spec).proto.spec)
    assert {t["type"] for t in scatter["data"]} == {"scatter"}  # SVG: no WebGL context per job card
    assert scatter["layout"]["legend"]["orientation"] == "v" and not scatter["layout"].get("title", {}).get("text")  # the caption says it


def test_an_exported_run_offers_no_resume(monkeypatch, runs_root: Path, tmp_path: Path) -> None:
    from trainer.export import export_run

    root = copy_runs(runs_root, tmp_path, "vae2", "ae2")
    export_run(root / "ae2", drop_optimizer=True)  # as the bundled runs ship: no optimiser state
    at = ok(start_app(monkeypatch, root).switch_page(TRAIN_PAGE).run())
    assert [b.key for b in at.button if (b.key or "").startswith("resume_")] == ["resume_vae2"]


def test_resnet_and_sharpness_options_validate_and_build_the_command(train_page: AppTest, tmp_path: Path, monkeypatch) -> None:
    """The resnet model and the losses for sharpness from the form: checked by the trainer's rules, then the command
    names them (the spatial resnet's latent size is derived, so --latent-dim is left out); nothing is trained here."""
    from trainer import cli

    launched: list[list[str]] = []

    def fake_launch(argv: list[str], run_dir: Path) -> jobs.StartedJob:
        launched.append(argv)
        return jobs.StartedJob(run_dir.name, run_dir, 4242, run_dir / jobs.LOG_FILE, argv)

    monkeypatch.setattr(jobs, "_launch", fake_launch)
    options = jobs.trainer_options()
    for name in ("disc_weight", "disc_start", "disc_layers", "disc_channels", "perceptual_weight", "latent_channels", "res_blocks"):
        widget, option = train_page.number_input(key=f"train_{name}"), options[name]
        assert widget.value == option.default and widget.help == option.help, name
    assert train_page.selectbox(key="train_bottleneck").options == list(options["bottleneck"].choices)
    assert train_page.selectbox(key="train_recon_loss").options == ["bce", "mse", "l1"]

    at = submit(train_page, run_name="bad-disc", model="resnet", disc_weight=0.5, disc_layers=4)  # 28 px: no patch left
    assert [e.value for e in at.error] == ["--disc-layers 4 is too deep for 28 px images (the discriminator would have no patch left): "
                                           "use fewer --disc-layers"]
    at = submit(at, run_name="bad-weight", disc_layers=2, disc_weight=-1.0)  # float inputs are unbounded: the trainer says what is wrong
    assert [e.value for e in at.error] == ["disc_weight must be a number from 0 to 1000, got -1.0"]
    assert not launched

    at = submit(at, run_name="sharp", model="resnet", bottleneck="spatial", latent_channels=2, res_blocks=1, widths="8,8", recon_loss="l1",
                beta=5e-7, disc_weight=0.5, disc_start=10, disc_layers=2, disc_channels=8, epochs=1, atlas_size=20)
    assert not at.error, [e.value for e in at.error]
    assert "Started sharp" in at.success[0].value
    (argv,) = launched
    flags = argv[argv.index("trainer") + 1:]
    for expected in ("--model=resnet", "--bottleneck=spatial", "--latent-channels=2", "--res-blocks=1", "--widths=8,8", "--recon-loss=l1",
                     "--beta=5e-07", "--disc-weight=0.5", "--disc-start=10", "--disc-layers=2", "--disc-channels=8"):
        assert expected in flags, (expected, flags)
    assert not any(f.startswith(("--latent-dim", "--perceptual-weights")) for f in flags)
    model_config, train_config, _ = cli.configs_from_args(cli.build_parser().parse_args(flags))
    assert model_config.latent_shape == (2, 14, 14) and train_config.disc_weight == 0.5 and train_config.perceptual_weight == 0.0


def test_form_sends_lr_milestones_and_deterministic(train_page: AppTest, monkeypatch) -> None:
    """The sources' schedule (Adam 1e-3, then 1e-4) and bitwise-reproducible runs from the form, as on the CLI."""
    from trainer import cli

    launched: list[list[str]] = []

    def fake_launch(argv: list[str], run_dir: Path) -> jobs.StartedJob:
        launched.append(argv)
        return jobs.StartedJob(run_dir.name, run_dir, 4242, run_dir / jobs.LOG_FILE, argv)

    monkeypatch.setattr(jobs, "_launch", fake_launch)
    assert train_page.selectbox(key="train_deterministic").value == jobs.trainer_options()["deterministic"].default
    at = submit(train_page, run_name="bad-steps", lr_milestones="20,10")
    assert [e.value for e in at.error] and "lr_milestones must be increasing" in at.error[0].value and not launched
    at = submit(at, run_name="steps", lr=1e-3, lr_milestones="20", deterministic="on", epochs=25)
    assert not at.error, [e.value for e in at.error]
    (argv,) = launched
    flags = argv[argv.index("trainer") + 1:]
    assert "--lr-milestones=20" in flags and "--deterministic=on" in flags
    _, train_config, _ = cli.configs_from_args(cli.build_parser().parse_args(flags))
    assert train_config.lr_milestones == (20,) and train_config.lr == 1e-3 and train_config.deterministic == "on"
