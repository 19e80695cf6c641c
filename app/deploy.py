"""How the app is deployed: which checkpoints folder it browses and whether it runs in public mode.

Streamlit-free (app/jobs.py refuses to start or stop processes in public mode, and it has no Streamlit).

    streamlit run app/main.py -- --checkpoints-dir DIR            # a private app: the folder is editable
    streamlit run app/main.py -- --public --checkpoints-dir DIR   # public mode (or VAE_PUBLIC=1)

Streamlit's own config files (.streamlit/config.toml) accept only Streamlit's sections, so public mode
is a flag after `--` or an environment variable. In public mode the folder is resolved once per process
(from the flag or $VAE_CHECKPOINTS_DIR at the first request) and never changes afterwards: no session
state, query parameter or later change of the environment points the app elsewhere.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path
from typing import Mapping, Sequence

from trainer.paths import DEFAULT_CHECKPOINTS_DIR

CHECKPOINTS_ENV = "VAE_CHECKPOINTS_DIR"
PUBLIC_ENV = "VAE_PUBLIC"
PUBLIC_FLAG = "--public"
TRUE_WORDS = ("1", "true", "yes", "on")


def _app_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The app's own flags among the script arguments (anything else is ignored)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--checkpoints-dir", default=None)
    parser.add_argument(PUBLIC_FLAG, action="store_true")
    args, _ = parser.parse_known_args(list(argv) if argv is not None else [])
    return args


def resolve_checkpoints_dir(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Path:
    """`-- --checkpoints-dir DIR` after `streamlit run app/main.py`, else $VAE_CHECKPOINTS_DIR, else checkpoints/."""
    env = os.environ if env is None else env
    chosen = _app_args(argv).checkpoints_dir or env.get(CHECKPOINTS_ENV) or str(DEFAULT_CHECKPOINTS_DIR)
    return Path(chosen).expanduser()


def resolve_public(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Public mode: `-- --public` after `streamlit run app/main.py`, or $VAE_PUBLIC set to 1, true, yes or on."""
    env = os.environ if env is None else env
    return _app_args(argv).public or env.get(PUBLIC_ENV, "").strip().lower() in TRUE_WORDS


def is_public() -> bool:
    """Whether this process serves the public mode (from its command line and environment)."""
    return resolve_public(sys.argv[1:])


@functools.cache
def public_checkpoints_dir() -> Path:
    """The one folder a public app browses: resolved (absolute) at its first use, then fixed for the process."""
    return resolve_checkpoints_dir(sys.argv[1:]).resolve()
