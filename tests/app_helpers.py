"""What the AppTest-based tests share: the entry point, a generous timeout, and a no-exception check."""
from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from app.common import CHECKPOINTS_ENV

MAIN = Path(__file__).resolve().parent.parent / "app" / "main.py"
TIMEOUT_S = 60  # the machine is slow and shared
EXPLORE_PAGE, COMPARE_PAGE, TRAIN_PAGE = "views/explore.py", "views/compare.py", "views/train.py"


def ok(at: AppTest) -> AppTest:
    """Fail with the app's own exception messages if the last run raised."""
    assert not at.exception, [e.value for e in at.exception]
    return at


def start_app(monkeypatch, checkpoints: Path) -> AppTest:
    """A started AppTest of app/main.py browsing `checkpoints`."""
    monkeypatch.setenv(CHECKPOINTS_ENV, str(checkpoints))
    return AppTest.from_file(str(MAIN), default_timeout=TIMEOUT_S).run()
