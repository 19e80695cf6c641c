"""What every page shares: where the runs are, cached run loading, one-line run descriptions, and the
process-wide bound on UMAP / t-SNE computations."""
from __future__ import annotations

import contextlib
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

import streamlit as st

from app import bounds
from app.deploy import CHECKPOINTS_ENV, is_public, public_checkpoints_dir, resolve_checkpoints_dir  # noqa: F401  (re-exported)
from app.latent import latent_text
from trainer.runs import Run, RunError, RunSummary, list_runs, load_run

RUN_CACHE_ENTRIES = 16  # loaded runs kept in memory: the selected run of each session and the Compare page's
KNOWN_ERRORS_ENTRIES = 4096  # runs found unloadable, remembered (by path and save time) to label them in the picker
# One intra-op thread per request: on a small shared CPU a second thread makes a single decode wait for a
# busy core (0.2 ms becomes tens of ms under load), and concurrent sessions already use the other cores.
APP_TORCH_THREADS = 1
MAX_CONCURRENT_EMBEDDINGS = 2  # UMAP / t-SNE maps computed at once by this process, over all sessions
EMBEDDING_SLOTS = threading.BoundedSemaphore(MAX_CONCURRENT_EMBEDDINGS)


class EmbeddingsBusy(RuntimeError):
    """Public mode: every embedding slot is taken; the caller shows PCA instead and says so."""


def configure_torch(threads: int = APP_TORCH_THREADS) -> None:
    """Set torch's intra-op threads for the app process (called by app/main.py, and by the app benchmark)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def checkpoints_dir() -> Path:
    """The checkpoints folder this session browses: in public mode the configured one, fixed; otherwise the
    sidebar may change it (kept in session state)."""
    if is_public():
        return public_checkpoints_dir()
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


_known_errors: OrderedDict[tuple[str, float], str] = OrderedDict()  # (path, mtime) -> why the run does not load
_known_errors_lock = threading.Lock()


def open_run(summary: RunSummary) -> tuple[Run | None, str | None]:
    """(run, None) or (None, one-line error) for a listed run; cached by path and mtime. Loads the whole run
    (weights, history, latents): call it for the runs a page shows, never to label a list of runs."""
    if summary.error:
        return None, summary.error
    run, error = _load_run_cached(str(summary.path.resolve()), summary.mtime)
    if error is not None:
        with _known_errors_lock:
            _known_errors[(str(summary.path), summary.mtime)] = error
            while len(_known_errors) > KNOWN_ERRORS_ENTRIES:
                _known_errors.popitem(last=False)
    return run, error


def known_error(summary: RunSummary) -> str | None:
    """Why a listed run cannot be opened, if its small files show it or an earlier open_run found out; else None
    (without loading anything)."""
    if summary.error:
        return summary.error
    with _known_errors_lock:
        return _known_errors.get((str(summary.path), summary.mtime))


@st.cache_data(ttl=2, show_spinner=False)
def cached_run_list(root: str) -> list[RunSummary]:
    """The runs under `root`; refreshed every two seconds so new runs appear without a restart."""
    return list_runs(root)


def describe_run(summary: RunSummary, run: Run | None = None) -> str:
    """One line: dataset (and whether it is the offline subset), model, kind, latent size, epochs, and the latest
    test numbers: negative ELBO and objective apart (app.bounds words them), PSNR."""
    cfg = summary.config or {}
    model, train, data = cfg.get("model", {}), cfg.get("train", {}), cfg.get("data", {})
    setting = bounds.Setting.of_config(cfg)
    parts = [str(train.get("dataset", "?"))]
    if data.get("kind") == "subset":
        parts[0] += " (offline subset)"
    shape = run.model_config.latent_shape if run is not None else None
    parts.append(f"{model.get('arch', '?')} {setting.kind_label if model.get('kind') else '?'}, latent {latent_text(model, shape)}")
    parts.append(f"epoch {summary.epoch if summary.epoch is not None else '-'} / {train.get('epochs', '?')}")
    if run is not None and run.history:
        row = run.history[-1]
        numbers = bounds.numbers_text(setting, row["test_loss"], bounds.row_bound(row), row["psnr"], bounds.row_beta(row, setting))
    elif summary.last:
        numbers = bounds.numbers_text(setting, summary.last["test_loss"], summary.neg_elbo, summary.last["psnr"])
    else:
        numbers = ""
    return " · ".join(parts + [numbers] if numbers else parts)


@contextlib.contextmanager
def embedding_slot() -> Iterator[None]:
    """Hold one of the MAX_CONCURRENT_EMBEDDINGS slots while a UMAP / t-SNE map is computed. A private app waits
    for a slot; a public one raises EmbeddingsBusy at once, so no visitor queues behind others' maps."""
    if not EMBEDDING_SLOTS.acquire(blocking=not is_public()):
        raise EmbeddingsBusy(f"the server is computing {MAX_CONCURRENT_EMBEDDINGS} maps for other visitors")
    try:
        yield
    finally:
        EMBEDDING_SLOTS.release()


def cap_upload_size(megabytes: int) -> None:
    """Lower Streamlit's server.maxUploadSize (enforced by its upload endpoint, which reads the option per request)
    to `megabytes` unless it is already lower. Streamlit lets scripts set only client options through
    st.set_option, so this uses streamlit.config.set_option; `--server.maxUploadSize` on the command line or
    STREAMLIT_SERVER_MAX_UPLOAD_SIZE do the same without it."""
    from streamlit import config

    if config.get_option("server.maxUploadSize") > megabytes:
        config.set_option("server.maxUploadSize", megabytes, "app/main.py --public")
