"""What every page shares: where the runs are, cached run loading, and one-line run descriptions."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

import streamlit as st

from trainer.paths import DEFAULT_CHECKPOINTS_DIR
from trainer.runs import Run, RunError, RunSummary, list_runs, load_run

CHECKPOINTS_ENV = "VAE_CHECKPOINTS_DIR"
RUN_CACHE_ENTRIES = 16
# One intra-op thread per request: on a small shared CPU a second thread makes a single decode wait for a
# busy core (0.2 ms becomes tens of ms under load), and concurrent sessions already use the other cores.
APP_TORCH_THREADS = 1


def resolve_checkpoints_dir(argv: Sequence[str] | None = None, env: dict[str, str] | None = None) -> Path:
    """`-- --checkpoints-dir DIR` after `streamlit run app/main.py`, else $VAE_CHECKPOINTS_DIR, else checkpoints/."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--checkpoints-dir", default=None)
    args, _ = parser.parse_known_args(list(argv) if argv is not None else [])
    env = os.environ if env is None else env
    chosen = args.checkpoints_dir or env.get(CHECKPOINTS_ENV) or str(DEFAULT_CHECKPOINTS_DIR)
    return Path(chosen).expanduser()


def configure_torch(threads: int = APP_TORCH_THREADS) -> None:
    """Set torch's intra-op threads for the app process (called by app/main.py, and by the app benchmark)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def checkpoints_dir() -> Path:
    """The checkpoints folder this session browses (the sidebar may change it; kept in session state)."""
    import sys

    if "checkpoints_dir" not in st.session_state:
        st.session_state["checkpoints_dir"] = str(resolve_checkpoints_dir(sys.argv[1:]))
    return Path(st.session_state["checkpoints_dir"])


@st.cache_resource(max_entries=RUN_CACHE_ENTRIES, show_spinner=False)
def _load_run_cached(path: str, mtime: float) -> tuple[Run | None, str | None]:
    """Load once per (path, manifest mtime): a new save of the run makes a new entry."""
    try:
        return load_run(path), None
    except RunError as e:
        return None, str(e)


def open_run(summary: RunSummary) -> tuple[Run | None, str | None]:
    """(run, None) or (None, one-line error) for a listed run; cached by path and mtime."""
    if summary.error:
        return None, summary.error
    return _load_run_cached(str(summary.path.resolve()), summary.mtime)


@st.cache_data(ttl=2, show_spinner=False)
def cached_run_list(root: str) -> list[RunSummary]:
    """The runs under `root`; refreshed every two seconds so new runs appear without a restart."""
    return list_runs(root)


def describe_run(summary: RunSummary, run: Run | None = None) -> str:
    """One line: dataset (and whether it is the offline subset), model, kind, latent size, epochs, test loss, PSNR."""
    cfg = summary.config or {}
    model, train, data = cfg.get("model", {}), cfg.get("train", {}), cfg.get("data", {})
    parts = [str(train.get("dataset", "?"))]
    if data.get("kind") == "subset":
        parts[0] += " (offline subset)"
    parts.append(f"{model.get('arch', '?')} {str(model.get('kind', '?')).upper()}, latent {model.get('latent_dim', '?')}")
    parts.append(f"epoch {summary.epoch if summary.epoch is not None else '-'} / {train.get('epochs', '?')}")
    if run is not None and run.history:
        last = run.history[-1]
        parts.append(f"test loss {last['test_loss']:.1f} nats, PSNR {last['psnr']:.1f} dB")
    return " · ".join(parts)
