"""The sidebar every page shares: the checkpoints folder and the run picker.

`render_sidebar()` is called by app/main.py on every run; pages read the choice with `current_selection()`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from app.common import cached_run_list, checkpoints_dir, describe_run, open_run
from trainer.runs import Run, RunSummary

CHECKPOINTS_KEY = "checkpoints_dir"  # the text input; app.common.checkpoints_dir() reads the same key
RUN_KEY = "run_path"  # the run picker's value: the run folder's path as a string
SELECTION_KEY = "sidebar_selection"
DEFAULT_LATENT_DIM = 2  # the first screen shows a 2-D VAE's latent scatter when there is one
TRAIN_HINT = "python -m trainer --latent-dim 2 --epochs 5 --checkpoints-dir {root}"


@dataclass(frozen=True)
class Selection:
    """The run chosen in the sidebar: `run` is None when it cannot be opened (then `error` says why)."""

    root: Path
    summary: RunSummary | None
    run: Run | None
    error: str | None


def default_run_path(summaries: list[RunSummary], runs: dict[str, Run | None]) -> str | None:
    """A loadable 2-D VAE if there is one, else the first loadable run, else the first run."""
    loadable = [s for s in summaries if runs.get(str(s.path)) is not None]
    for s in loadable:
        model = (s.config or {}).get("model", {})
        if model.get("latent_dim") == DEFAULT_LATENT_DIM and model.get("kind") == "vae":
            return str(s.path)
    if loadable:
        return str(loadable[0].path)
    return str(summaries[0].path) if summaries else None


def run_label(summary: RunSummary, run: Run | None, error: str | None) -> str:
    """What the picker shows for one run."""
    if run is None:
        return f"{summary.name} — cannot be opened"
    state = (summary.status or {}).get("state")
    live = " · training" if state == "running" else ""
    return f"{summary.name} — {describe_run(summary, run)}{live}"


def render_sidebar() -> Selection:
    """Draw the shared sidebar and remember the selection for the pages."""
    root = checkpoints_dir()
    with st.sidebar:
        st.text_input("Checkpoints folder", key=CHECKPOINTS_KEY, help="The folder whose sub-folders are run folders written by `python -m trainer`.")
        typed = str(st.session_state.get(CHECKPOINTS_KEY) or "").strip()
        if not typed:
            st.error("Enter the folder that holds the run folders.")
            selection = Selection(root, None, None, None)
        else:
            selection = _pick_run(Path(typed).expanduser())
    st.session_state[SELECTION_KEY] = selection
    return selection


def _pick_run(root: Path) -> Selection:
    if not root.is_dir():
        st.error(f"{root}: no such folder")
        return Selection(root, None, None, f"{root}: no such folder")
    summaries = cached_run_list(str(root))
    if not summaries:
        st.info(f"No runs in {root} yet. Train one with `{TRAIN_HINT.format(root=root)}`.")
        return Selection(root, None, None, None)
    opened = {str(s.path): open_run(s) for s in summaries}
    by_path = {str(s.path): s for s in summaries}
    runs = {path: run for path, (run, _) in opened.items()}
    if st.session_state.get(RUN_KEY) not in by_path:
        st.session_state[RUN_KEY] = default_run_path(summaries, runs)
    st.selectbox(
        "Run", options=list(by_path), key=RUN_KEY,
        format_func=lambda path: run_label(by_path[path], *opened[path]),
        help="Dataset, model, kind, latent size, epochs done / planned, test loss and PSNR of the latest epoch.",
    )
    path = st.session_state[RUN_KEY]
    summary = by_path[path]
    run, error = opened[path]
    if run is None:
        st.error(error or "this run cannot be opened")
    else:
        st.caption(describe_run(summary, run))
        note = (run.info.get("data") or {}).get("note")
        if note and (run.info.get("data") or {}).get("kind") == "subset":
            st.caption(f"Data: {note}")
    broken = [(s, opened[str(s.path)][1]) for s in summaries if opened[str(s.path)][0] is None and str(s.path) != path]
    if broken:
        with st.expander(f"{len(broken)} run(s) cannot be opened"):
            for s, err in broken:
                st.error(f"{s.name}: {err}")
    return Selection(root, summary, run, error)


def current_selection() -> Selection:
    """The selection made by this run's sidebar (an empty one before the sidebar ran)."""
    selection = st.session_state.get(SELECTION_KEY)
    return selection if isinstance(selection, Selection) else Selection(checkpoints_dir(), None, None, None)
