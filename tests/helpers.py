"""What several test files share: tiny runs, AppTest plumbing, image and IDX bytes, waiting, the trainer as a subprocess.

Fixtures live in tests/conftest.py; the fault-injection harness is tests/helpers_kill.py.
Streamlit is imported only by the AppTest helpers that need it, so model and trainer tests do not load it.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from PIL import Image

from models import ModelConfig
from trainer.config import TrainConfig
from trainer.data import ImageData, load_dataset
from trainer.paths import PROJECT_ROOT
from trainer.train import fit

if TYPE_CHECKING:
    from streamlit.testing.v1 import AppTest

TINY_WIDTHS = (4, 8, 8)
WAIT_TIMEOUT_S = 60.0  # the machine is slow and shared
WAIT_POLL_S = 0.25

# ---------------------------------------------------------------- tiny data and runs


def tiny_data(n_train: int = 96, n_test: int = 48, image_size: int = 28, channels: int = 1) -> ImageData:
    """A slice of the bundled real MNIST subset, small enough to train in a second."""
    full = load_dataset("mnist", image_size=image_size, channels=channels)
    return ImageData(full.train_x[:n_train], full.train_y[:n_train], full.test_x[:n_test], full.test_y[:n_test], full.class_names, full.source)


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
