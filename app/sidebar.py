"""The sidebar every page shares: the checkpoints folder and the run picker.

`render_sidebar()` is called by app/main.py on every run; pages read the choice with `current_selection()`.
The picker is labelled from the runs' summaries (config, manifest and status: small files); only the
selected run is loaded, so a folder of hundreds of runs reruns as fast as one of a few.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import streamlit as st

from app.common import cached_run_list, checkpoints_dir, describe_run, is_public, known_error, open_run
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


def default_run_path(summaries: list[RunSummary], opens: Callable[[RunSummary], bool]) -> str | None:
    """A 2-D VAE that opens if there is one, else the first run that opens, else the first run.

    Candidates are tried in that order with `opens` (which loads the run) until one opens: in a healthy folder
    that is the first one; runs whose small files already show an error are never tried."""
    candidates = [s for s in summaries if known_error(s) is None]

    def preferred(s: RunSummary) -> bool:
        model = (s.config or {}).get("model", {})
        return model.get("latent_dim") == DEFAULT_LATENT_DIM and model.get("kind") == "vae"

    for s in [s for s in candidates if preferred(s)] + [s for s in candidates if not preferred(s)]:
        if opens(s):
            return str(s.path)
    return str(summaries[0].path) if summaries else None


def run_label(summary: RunSummary, error: str | None = None) -> str:
    """What the picker shows for one run, from its summary (nothing is loaded); `error` if it is known not to open."""
    if error:
        return f"{summary.name} — cannot be opened"
    state = (summary.status or {}).get("state")
    live = " · training" if state == "running" else ""
    return f"{summary.name} — {describe_run(summary)}{live}"


def render_sidebar() -> Selection:
    """Draw the shared sidebar and remember the selection for the pages."""
    root = checkpoints_dir()
    with st.sidebar:
        if is_public():  # a fixed folder: shown, not editable (and by name only: visitors need not see server paths)
            st.caption(f"Runs of **{root.name}**")
            selection = _pick_run(root)
        else:
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
    public = is_public()
    if not root.is_dir():
        st.error("The runs folder is not available." if public else f"{root}: no such folder")
        return Selection(root, None, None, f"{root}: no such folder")
    summaries = cached_run_list(str(root))
    if not summaries:
        st.info("No runs to show yet." if public else f"No runs in {root} yet. Train one with `{TRAIN_HINT.format(root=root)}`.")
        return Selection(root, None, None, None)
    by_path = {str(s.path): s for s in summaries}
    if st.session_state.get(RUN_KEY) not in by_path:
        st.session_state[RUN_KEY] = default_run_path(summaries, lambda s: open_run(s)[0] is not None)
    path = st.session_state[RUN_KEY]
    summary = by_path[path]
    run, error = open_run(summary)  # the one run this session loads (cached by path and save time)
    st.selectbox(
        "Run", options=list(by_path), key=RUN_KEY,
        format_func=lambda p: run_label(by_path[p], error if p == path else known_error(by_path[p])),
        help=("Dataset, model, kind, latent size, epochs done / planned, and the latest epoch's test numbers: the negative ELBO "
              "(the bound at β = 1; nats only on binary images), the training objective with its β, and PSNR."),
    )
    if run is None:
        st.error(f"{summary.name}: {error or 'this run cannot be opened'}")
    else:
        st.caption(describe_run(summary, run))
        note = (run.info.get("data") or {}).get("note")
        if note and (run.info.get("data") or {}).get("kind") == "subset":
            st.caption(f"Data: {note}")
    broken = [(s, err) for s in summaries if str(s.path) != path and (err := known_error(s))]
    if broken:
        with st.expander(f"{len(broken)} run(s) cannot be opened"):
            for s, err in broken:
                st.error(f"{s.name}: {err}")
    return Selection(root, summary, run, error)


def current_selection() -> Selection:
    """The selection made by this run's sidebar (an empty one before the sidebar ran)."""
    selection = st.session_state.get(SELECTION_KEY)
    return selection if isinstance(selection, Selection) else Selection(checkpoints_dir(), None, None, None)
