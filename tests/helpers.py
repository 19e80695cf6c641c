"""What several test files share: tiny runs, AppTest plumbing, image and IDX bytes, waiting, the trainer as a subprocess,
and the tiny command-line runs that one process and torchrun train alike.

Fixtures live in tests/conftest.py; the fault-injection harness is tests/helpers_kill.py.
Streamlit is imported only by the AppTest helpers that need it, so model and trainer tests do not load it.
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pytest
from PIL import Image

from models import ModelConfig
from trainer import train as train_mod
from trainer.config import TrainConfig
from trainer.data import ImageData, load_dataset
from trainer.paths import PROJECT_ROOT
from trainer.runs import load_run, read_config
from trainer.train import fit

if TYPE_CHECKING:
    from streamlit.testing.v1 import AppTest

TINY_WIDTHS = (4, 8, 8)
WAIT_TIMEOUT_S = 60.0  # the machine is slow and shared
WAIT_POLL_S = 0.25
PROCESS_TIMEOUT_S = 120  # a trainer subprocess (or torchrun job) that should have ended
IDX_N_TRAIN, IDX_N_TEST = 76, 48  # 76 training images: three global batches of 25 and a last batch of 1
CLI_RUN_FLAGS = ["--device", "cpu", "--progress", "none", "--no-projections"]  # no UMAP / t-SNE at the end of a test run
CLI_TINY_FLAGS = ["--dataset", "mnist", "--widths", ",".join(map(str, TINY_WIDTHS)), "--hidden-dim", "0", "--latent-dim", "2",
                  "--batch-size", "25", "--lr", "0.01", "--atlas-size", "40", *CLI_RUN_FLAGS]
REPRO_REL_TOL = 1e-5  # the same run in one process or several: only the order of float sums differs

# ---------------------------------------------------------------- tiny data and runs


def tiny_data(n_train: int = 96, n_test: int = 48, image_size: int = 28, channels: int = 1) -> ImageData:
    """A slice of the bundled real MNIST subset, small enough to train in a second."""
    full = load_dataset("mnist", image_size=image_size, channels=channels)
    return full.head(n_train, n_test)


def make_run(root: Path, name: str, *, arch: str = "conv", kind: str = "vae", latent_dim: int = 2, epochs: int = 2, **train_kw) -> Path:
    """Train a tiny run with the project's trainer into root/name and return its folder."""
    hidden = 16 if arch == "mlp" else 0
    model_config = ModelConfig(arch=arch, kind=kind, latent_dim=latent_dim, widths=TINY_WIDTHS, hidden_dim=hidden)
    train_config = TrainConfig(epochs=epochs, batch_size=32, seed=0, atlas_size=40, **train_kw)
    run_dir = root / name
    fit(model_config, train_config, tiny_data(), run_dir, progress="none")
    return run_dir


# ---------------------------------------------------------------- file bytes


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    """The bytes of `im` saved by PIL in format `fmt` (PNG, JPEG, GIF, ...), save options in kw."""
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def idx_bytes(array: np.ndarray) -> bytes:
    """MNIST's IDX format by hand: magic 0 0 0x08 (ubyte) ndim, big-endian dimensions, then uint8 data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape) + array.tobytes()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write `array` as an IDX file."""
    path.write_bytes(idx_bytes(array))


# ---------------------------------------------------------------- waiting and subprocesses


def wait_until(predicate: Callable[[], Any], what: str = "condition", timeout_s: float = WAIT_TIMEOUT_S, poll_s: float = WAIT_POLL_S) -> Any:
    """Poll `predicate` until it returns something truthy and return that; fail after timeout_s naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def run_module(module: str, args: Sequence[str], *, env: dict[str, str] | None = None, **popen_kw) -> subprocess.Popen:
    """`python -m MODULE ARGS` from the project root (importable there), stdout and stderr piped as text."""
    full_env = os.environ | {"PYTHONPATH": str(PROJECT_ROOT)} | (env or {})
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=PROJECT_ROOT, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen_kw)


def finish(proc: subprocess.Popen, timeout: float = PROCESS_TIMEOUT_S) -> tuple[int, str]:
    """(exit code, stderr) of a process started in its own session; its whole group is killed and the test fails after timeout."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"the job did not end within {timeout} s: {err[-2000:]}")
    return proc.returncode, err


# ---------------------------------------------------------------- tiny command-line runs on IDX files


def write_idx_digits(root: Path, n_train: int = IDX_N_TRAIN, n_test: int = IDX_N_TEST) -> Path:
    """root/mnist/ as MNIST IDX files of the first bundled digits; returns root, a --data-dir for `--dataset mnist`."""
    folder = root / "mnist"
    folder.mkdir(parents=True)
    d = tiny_data(n_train, n_test)
    write_idx(folder / "train-images-idx3-ubyte", d.train_x[:, 0].numpy())
    write_idx(folder / "train-labels-idx1-ubyte", d.train_y.numpy())
    write_idx(folder / "t10k-images-idx3-ubyte", d.test_x[:, 0].numpy())
    write_idx(folder / "t10k-labels-idx1-ubyte", d.test_y.numpy())
    return root


def cli_args(data_dir: Path, checkpoints: Path, name: str, *extra: str) -> list[str]:
    """A new tiny run's flags; with --resume in `extra`, only what a resumed run may be given."""
    flags = CLI_RUN_FLAGS if "--resume" in extra else CLI_TINY_FLAGS
    return [*flags, "--data-dir", str(data_dir), "--checkpoints-dir", str(checkpoints), "--run-name", name, *extra]


def one_process(data_dir: Path, run_dir: Path, epochs: int, resume: bool = False) -> None:
    """The tiny run in this process, with the configs the CLI builds from the same flags."""
    from trainer.cli import build_parser, configs_from_args  # heavy (LPIPS pulls torchvision): only where needed

    model_config, train_config, channels = configs_from_args(build_parser().parse_args(cli_args(data_dir, run_dir.parent, run_dir.name)))
    if resume:
        model_config, train_config, _ = read_config(run_dir)
    train_config = TrainConfig.from_dict(train_config.to_dict() | {"epochs": epochs})
    data = load_dataset("mnist", str(data_dir), model_config.image_size, channels, seed=train_config.seed)
    fit(model_config, train_config, data, run_dir, resume=resume, progress="none")


def poison_from(monkeypatch, first_call: int, value: float = float("nan")) -> dict[str, int]:
    """trainer.train's vae_loss returns a `value` loss from its `first_call`-th call on; returns the call counter."""
    real, calls = train_mod.vae_loss, {"n": 0}

    def poisoned(*args, **kw):
        calls["n"] += 1
        terms = real(*args, **kw)
        return terms._replace(loss=terms.loss * value) if calls["n"] >= first_call else terms

    monkeypatch.setattr(train_mod, "vae_loss", poisoned)
    return calls


def assert_same_weights(a: Path, b: Path) -> None:
    """Two runs' weights agree to REPRO_REL_TOL of each tensor's largest magnitude."""
    wa, wb = load_run(a).model.state_dict(), load_run(b).model.state_dict()
    for name, va in wa.items():
        scale = wb[name].abs().max().item() or 1.0
        assert (va - wb[name]).abs().max().item() <= REPRO_REL_TOL * scale, name


# ---------------------------------------------------------------- streamlit AppTest

MAIN = PROJECT_ROOT / "app" / "main.py"
TIMEOUT_S = 60  # per AppTest run: the machine is slow and shared
EXPLORE_PAGE, COMPARE_PAGE, TRAIN_PAGE = "views/explore.py", "views/compare.py", "views/train.py"


def ok(at: AppTest) -> AppTest:
    """Fail with the app's own exception messages if the last run raised."""
    assert not at.exception, [e.value for e in at.exception]
    return at


def app_test(monkeypatch, checkpoints: Path) -> AppTest:
    """An AppTest of app/main.py browsing `checkpoints`, not yet run."""
    from streamlit.testing.v1 import AppTest

    from app.common import CHECKPOINTS_ENV

    monkeypatch.setenv(CHECKPOINTS_ENV, str(checkpoints))
    return AppTest.from_file(str(MAIN), default_timeout=TIMEOUT_S)


def start_app(monkeypatch, checkpoints: Path) -> AppTest:
    """A started AppTest of app/main.py browsing `checkpoints`."""
    return app_test(monkeypatch, checkpoints).run()


def choose_run(at: AppTest, root: Path, name: str) -> AppTest:
    """Pick root/name in the sidebar's run picker and rerun."""
    at.selectbox(key="run_path").set_value(str(root / name))
    return ok(at.run())


def open_tab(at: AppTest, name: str) -> AppTest:
    """Open the Explore page's tab `name` and rerun."""
    from app.state import TAB_KEY

    at.session_state[TAB_KEY] = name
    return ok(at.run())


def image_with_caption(at: AppTest, start: str):
    """The one image whose caption starts with `start` (fails listing the captions if there is none)."""
    found = [im for im in at.image if any(c.startswith(start) for c in im.captions)]
    assert found, f"no image captioned {start!r}: {[im.captions for im in at.image]}"
    return found[0]
