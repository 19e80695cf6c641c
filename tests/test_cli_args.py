"""Every option of `python -m trainer --help` given out-of-range and wrong-type values: exit code 2, one line.

The table below holds bad values per option; a test checks it covers every option the parser has, so a new
option without bad values fails here. Each case runs the real `main()` with training itself replaced by
a sentinel: a bad value must be refused before any model is built (a huge model would exhaust memory).
Run names with path separators, '..', absolute paths and control characters are refused by the CLI and
by the app's Train page validation (app/jobs.py) alike.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from models import ModelConfig
from models.config import field_spec
from trainer import cli
from trainer.cli import PROG, build_parser, main, trainer_options
from trainer.config import TrainConfig
from trainer.paths import PROJECT_ROOT

EXIT_USAGE = 2
FLAGS = ("download", "resume", "compile", "no_projections")  # on/off options (--resume may take the word auto): no missing-value case
CHECKPOINTS_IS_A_FILE = "<a regular file>"  # --checkpoints-dir pointing at a file (filled in per test)

# option dest -> [(bad value, a fragment the one-line error must hold, or None for the option's own name)]
BAD_VALUES: dict[str, list[tuple[str, str | None]]] = {
    "model": [("unet", "invalid choice"), ("", "invalid choice")],
    "kind": [("vqvae", "invalid choice"), ("VAE", "invalid choice")],
    "latent_dim": [("0", None), ("513", None), ("-1", None), ("abc", "invalid int"), ("1.5", "invalid int"), ("", "invalid int")],
    "widths": [("0,8,8", None), ("4,8", None), ("4,8,8,8", None), ("-4,8,8", None), ("a,b,c", "comma-separated integers"),
               ("100000000,8,8", None)],
    "bottleneck": [("unet", "invalid choice"), ("", "invalid choice")],
    "latent_channels": [("0", None), ("65", None), ("abc", "invalid int")],
    "res_blocks": [("0", None), ("9", None), ("abc", "invalid int")],
    "hidden_dim": [("-1", None), ("abc", "invalid int"), ("1e3", "invalid int"), ("1000000000000", None)],
    "dataset": [("cifar", "unknown dataset"), ("", "dataset"), ("folder:/nonexistent/images", "does not exist"),
                ("folder:", "names no folder")],
    "data_dir": [],  # any path: MNIST falls back to the bundled subset by design; only a missing value is wrong
    "image_size": [("30", None), ("0", None), ("-28", None), ("abc", "invalid int")],
    "channels": [("2", None), ("0", None), ("abc", "invalid int")],
    "download": [("yes", "ignored explicit argument")],
    "epochs": [("0", None), ("-1", None), ("100001", None), ("abc", "invalid int"), ("1.5", "invalid int")],
    "batch_size": [("0", None), ("65537", None), ("abc", "invalid int")],
    "lr": [("0", None), ("-1", None), ("nan", None), ("inf", None), ("11", None), ("abc", "invalid float")],
    "lr_schedule": [("linear", "invalid choice")],
    "lr_milestones": [("5,2", None), ("0", None), ("-1", None), ("a,b", "comma-separated integers")],
    "lr_gamma": [("0", None), ("1.5", None), ("nan", None), ("abc", "invalid float")],
    "beta": [("-1", None), ("1001", None), ("nan", None), ("abc", "invalid float")],
    "beta_warmup": [("-1", None), ("100001", None), ("abc", "invalid int")],
    "recon_loss": [("huber", "invalid choice"), ("L1", "invalid choice")],
    "recon_weight": [("-1", None), ("1001", None), ("inf", None), ("abc", "invalid float")],
    "seed": [("-1", None), (str(2**63), None), ("abc", "invalid int")],
    "atlas_size": [("0", None), ("100001", None), ("abc", "invalid int")],
    "keep_epochs": [("-1", None), ("a", "comma-separated integers")],
    "weights_dtype": [("int8", "invalid choice"), ("bfloat16", "invalid choice")],
    "val_size": [("-1", None), ("10000001", None), ("abc", "invalid int"), ("1.5", "invalid int")],
    "patience": [("-1", None), ("100001", None), ("abc", "invalid int"), ("3", "val.size")],  # 3: without --val-size
    "min_improvement": [("-1", None), ("1001", None), ("nan", None), ("abc", "invalid float")],
    "binarize": [("static", "invalid choice"), ("", "invalid choice")],
    "deterministic": [("yes", "invalid choice"), ("", "invalid choice")],
    "lpips_weights": [],  # any path: the file is read (and a bad one refused with one line) when training starts
    "disc_weight": [("-1", None), ("1001", None), ("nan", None), ("abc", "invalid float")],
    "disc_start": [("-1", None), ("1000000001", None), ("abc", "invalid int"), ("1.5", "invalid int")],
    "disc_layers": [("0", None), ("7", None), ("abc", "invalid int")],
    "disc_channels": [("0", None), ("513", None), ("abc", "invalid int")],
    "perceptual_weight": [("-1", None), ("inf", None), ("abc", "invalid float")],
    "perceptual_weights": [],  # any path: unused (and said so) without --perceptual-weight; with it a missing file is one line
    "run_name": [("../evil", "invalid run name"), ("", "invalid run name")],  # more in BAD_RUN_NAMES
    "checkpoints_dir": [(CHECKPOINTS_IS_A_FILE, "cannot create run folder")],
    "resume": [("yes", "invalid choice"), ("", "invalid choice")],
    "device": [("tpu", "(?i)device|tpu"), ("cuda:99", "(?i)cuda|device"), ("", "(?i)device"), ("cpu:abc", "(?i)device|cpu")],
    "progress": [("verbose", "invalid choice")],
    "amp": [("fp8", "invalid choice")],
    "compile": [("1", "ignored explicit argument")],
    "cuda_graph": [("maybe", "invalid choice"), ("on", "needs a CUDA device")],
    "no_projections": [("1", "ignored explicit argument")],
}
BAD_RUN_NAMES = {
    "slash": "a/b", "dot-dot": "..", "parent": "../x", "absolute": "/tmp/abs", "hidden": ".hidden", "too-long": "a" * 101,
    "dots-inside": "a..b", "newline": "run\nname", "trailing-newline": "x\n", "tab": "run\tname", "carriage-return": "run\rx",
    "escape-sequence": "\x1b[31mred", "nul": "run\x00x", "bell": "run\x07", "delete": "run\x7f", "rtl-override": "\u202eevil",
    "space": "my run", "backslash": "a\\b", "unicode-letters": "lauf-\u00fc",
}


def option_dests() -> list[str]:
    return list(trainer_options())


def takes_value(dest: str) -> bool:
    return trainer_options()[dest].takes_value


def flag(dest: str) -> str:
    return trainer_options()[dest].flag


def cases() -> list:
    out = []
    for dest, values in BAD_VALUES.items():
        for i, entry in enumerate(values):
            marks = entry.marks if hasattr(entry, "marks") else ()
            value, fragment = entry.values if hasattr(entry, "values") else entry
            out.append(pytest.param(dest, value, fragment, marks=marks, id=f"{dest}-{i}-{value[:12]!r}"))
        if dest not in FLAGS:
            out.append(pytest.param(dest, None, "expected one argument", id=f"{dest}-missing-value"))
    return out


@pytest.fixture()
def no_training(monkeypatch):
    """Replace training by a sentinel; leave the test process's signal handlers alone."""

    class Accepted(Exception):
        pass

    def accepted(*args, **kw):
        raise Accepted("the bad value was accepted and training would have started")

    monkeypatch.setattr(cli, "fit", accepted)
    monkeypatch.setattr(cli.StopFlag, "install", lambda self: None)
    return Accepted


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def assert_one_error_line(code: int, err: str, *fragments: str) -> str:
    lines = err.strip().splitlines()
    assert code == EXIT_USAGE, err
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error:"), err
    for fragment in fragments:
        assert re.search(fragment, lines[0]), lines[0]
    return lines[0]


def test_table_covers_every_option():
    assert sorted(BAD_VALUES) == sorted(option_dests())
    for dest in option_dests():
        assert BAD_VALUES[dest] or takes_value(dest), f"--{dest} needs bad values"


def test_options_come_from_the_config_fields():
    """Each config option's default, help and bounds are its field's; the parser leaves it None when not given."""
    options = trainer_options()
    parsed = build_parser().parse_args([])
    config_fields = [(ModelConfig, f) for f in dataclasses.fields(ModelConfig)] + [(TrainConfig, f) for f in dataclasses.fields(TrainConfig)]
    for cls, field in config_fields:
        option = options[cli.option_name(field.name)]
        assert option.field == field.name and option.spec == field_spec(cls, field.name)
        assert option.default in (None, field.default)  # None: another option decides (hidden_dim follows --model)
        assert option.help.startswith(option.spec.help)
        assert getattr(parsed, option.dest) is None
    help_text = re.sub(r"\s+", "", build_parser().format_help())  # argparse wraps lines, even inside words
    for option in options.values():
        assert re.sub(r"\s+", "", option.help) in help_text, option
        default = option.default
        if default not in (None, False, (), ""):  # no default worth showing
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else format(default, "g") if isinstance(default, float) else str(default)
            assert f"(default {shown})" in option.help or f"; default {shown})" in option.help, option


@pytest.mark.parametrize("dest", [d for d, o in trainer_options().items() if o.spec and o.spec.max is not None and o.parse in (int, float)])
def test_cli_bounds_are_the_validation_bounds(dest, tmp_path):
    """The documented min/max are accepted and the next integer past them refused, by the configs themselves."""
    option = trainer_options()[dest]
    spec = option.spec
    extra = {"beta": ["--recon-weight=1"], "patience": ["--val-size=1"]}.get(dest, [])  # what the bound needs beside it
    for value in (spec.max, spec.min if not spec.min_open else None):
        if value is not None:
            cli.configs_from_args(build_parser().parse_args([f"{option.flag}={value}", *extra]))
    for value in (spec.max + 1, spec.min if spec.min_open else spec.min - 1):
        with pytest.raises(cli.UserError, match=re.escape("in_channels" if dest == "channels" else dest)):  # --channels sets in_channels
            cli.configs_from_args(build_parser().parse_args([f"{option.flag}={value}"]))


@pytest.mark.parametrize("dest,value,fragment", cases())
def test_bad_option_value_exits_2_with_one_line(dest, value, fragment, tmp_path, capsys, no_training):
    checkpoints = tmp_path / "checkpoints"
    base = ["--checkpoints-dir", str(checkpoints), "--progress", "none", "--epochs", "1", "--run-name", "r"]
    if value == CHECKPOINTS_IS_A_FILE:
        value = str(tmp_path / "a-file")
        Path(value).write_text("not a folder")
    if value is None:
        argv = base + [flag(dest)]  # the option last, its value missing
    else:
        argv = base + [f"{flag(dest)}={value}"]  # '=' keeps values such as '-1' attached to their option
    try:
        code, err = run_main(argv, capsys)
    except no_training:
        pytest.fail(f"{flag(dest)}={value!r} was accepted")
    names = f"{re.escape(flag(dest))}|{dest}|{dest.replace('_', ' ')}"
    assert_one_error_line(code, err, fragment or names)
    assert not (checkpoints / "r").exists() or not any((checkpoints / "r").iterdir())  # nothing was written


@pytest.mark.parametrize("name", BAD_RUN_NAMES.values(), ids=BAD_RUN_NAMES.keys())
def test_bad_run_names_refused_by_cli_and_app(name, tmp_path, capsys, no_training):
    code, err = run_main(["--run-name", name, "--checkpoints-dir", str(tmp_path), "--epochs", "1", "--progress", "none"], capsys)
    assert_one_error_line(code, err, "invalid run name")
    assert list(tmp_path.iterdir()) == []
    code, err = run_main(["--resume", "--run-name", name, "--checkpoints-dir", str(tmp_path), "--progress", "none"], capsys)
    assert_one_error_line(code, err, "invalid run name")
    from app import jobs

    problem = jobs.run_name_problem(name)
    assert problem and "\n" not in problem and "run name" in problem
    errors = jobs.validate_options({"run_name": name, "epochs": 1}, tmp_path)
    assert errors and all("\n" not in e for e in errors)


@pytest.mark.slow
def test_real_process_exit_code_and_single_line(tmp_path):
    """The same through `python -m trainer` itself: status 2 and one line, no traceback, no usage block."""
    env = os.environ | {"PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "trainer", "--latent-dim", "abc", "--checkpoints-dir", str(tmp_path)],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_USAGE
    assert proc.stderr.strip().splitlines() == [f"{PROG}: error: argument --latent-dim: invalid int value: 'abc' (see {PROG} --help)"]
