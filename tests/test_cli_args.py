"""Every option of `python -m trainer --help` given out-of-range and wrong-type values: exit code 2, one line.

The table below holds bad values per option; a test checks it covers every option the parser has, so a new
option without bad values fails here. Each case runs the real `main()` with training itself replaced by
a sentinel: a bad value must be refused before any model is built (a huge model would exhaust memory).
Run names with path separators, '..', absolute paths and control characters are refused by the CLI and
by the app's Train page validation (app/jobs.py) alike.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainer import cli
from trainer.cli import PROG, build_parser, main

ROOT = Path(__file__).resolve().parent.parent
EXIT_USAGE = 2
FLAGS = ("download", "resume", "compile")  # store_true options: a value attached to them is the wrong type
CHECKPOINTS_IS_A_FILE = "<a regular file>"  # --checkpoints-dir pointing at a file (filled in per test)

# option dest -> [(bad value, a fragment the one-line error must hold, or None for the option's own name)]
BAD_VALUES: dict[str, list[tuple[str, str | None]]] = {
    "model": [("resnet", "invalid choice"), ("", "invalid choice")],
    "kind": [("vqvae", "invalid choice"), ("VAE", "invalid choice")],
    "latent_dim": [("0", None), ("513", None), ("-1", None), ("abc", "invalid int"), ("1.5", "invalid int"), ("", "invalid int")],
    "widths": [("0,8,8", None), ("4,8", None), ("4,8,8,8", None), ("-4,8,8", None), ("a,b,c", "comma-separated integers"),
               ("100000000,8,8", None)],
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
    "recon_loss": [("l1", "invalid choice")],
    "recon_weight": [("-1", None), ("1001", None), ("inf", None), ("abc", "invalid float")],
    "seed": [("-1", None), (str(2**63), None), ("abc", "invalid int")],
    "atlas_size": [("0", None), ("100001", None), ("abc", "invalid int")],
    "keep_epochs": [("-1", None), ("a", "comma-separated integers")],
    "weights_dtype": [("int8", "invalid choice"), ("bfloat16", "invalid choice")],
    "run_name": [("../evil", "invalid run name"), ("", "invalid run name")],  # more in BAD_RUN_NAMES
    "checkpoints_dir": [(CHECKPOINTS_IS_A_FILE, "cannot create run folder")],
    "resume": [("yes", "ignored explicit argument")],
    "device": [("tpu", "(?i)device|tpu"), ("cuda:99", "(?i)cuda|device"), ("", "(?i)device"), ("cpu:abc", "(?i)device|cpu")],
    "progress": [("verbose", "invalid choice")],
    "amp": [("fp8", "invalid choice")],
    "compile": [("1", "ignored explicit argument")],
}
BAD_RUN_NAMES = {
    "slash": "a/b", "dot-dot": "..", "parent": "../x", "absolute": "/tmp/abs", "hidden": ".hidden", "too-long": "a" * 101,
    "dots-inside": "a..b", "newline": "run\nname", "trailing-newline": "x\n", "tab": "run\tname", "carriage-return": "run\rx",
    "escape-sequence": "\x1b[31mred", "nul": "run\x00x", "bell": "run\x07", "delete": "run\x7f", "rtl-override": "\u202eevil",
    "space": "my run", "backslash": "a\\b", "unicode-letters": "lauf-\u00fc",
}


def option_dests() -> list[str]:
    return [a.dest for a in build_parser()._actions if a.option_strings and a.dest != "help"]


def takes_value(dest: str) -> bool:
    return next(a for a in build_parser()._actions if a.dest == dest).nargs != 0


def flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


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


def test_real_process_exit_code_and_single_line(tmp_path):
    """The same through `python -m trainer` itself: status 2 and one line, no traceback, no usage block."""
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "trainer", "--latent-dim", "abc", "--checkpoints-dir", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_USAGE
    assert proc.stderr.strip().splitlines() == [f"{PROG}: error: argument --latent-dim: invalid int value: 'abc' (see {PROG} --help)"]
