"""Where the project lives on disk: the one project-root constant every package derives its paths from."""
from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINTS_DIR = PROJECT_ROOT / "checkpoints"
BUNDLED_DATA_DIR = PROJECT_ROOT / "data"
