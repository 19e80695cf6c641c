"""The Explore page's session state: one key builder, the names of its keys, its tabs.

A key that belongs to one run ends in `:<run id>` (`key(name, run_id)`), so switching runs never hands
one run's slider values, picks or uploads to another; page-wide keys (the open tab, the scatter's map)
have no suffix. Every key the page reads away from its own widget is named here, so a reader and the
widget that writes it cannot drift apart.
"""
from __future__ import annotations

import hashlib
from typing import Any, Sequence

import streamlit as st

from trainer.runs import Run

RUN_ID_CHARS = 10

# ---------------------------------------------------------------- the tabs under the scatter
TAB_GRID = "Manifold grid"
TAB_TRAVERSAL = "Traversal"
TAB_INTERPOLATION = "Interpolation"
TAB_SAMPLING = "Sampling"
TAB_RECONSTRUCTION = "Reconstruction"
TAB_REPLAY = "Training replay"
TABS = (TAB_GRID, TAB_TRAVERSAL, TAB_INTERPOLATION, TAB_SAMPLING, TAB_RECONSTRUCTION, TAB_REPLAY)

# ---------------------------------------------------------------- page-wide keys
TAB_KEY = "explore_tab"  # the open tab (st.tabs)
CLICK_KEY = "click_mode"  # what a click on the scatter does
PROJECTION_KEY = "projection"  # the scatter's map: pca, umap, tsne or raw
FULL_RERUN_KEY = "explore_full_rerun"  # set by a callback inside a fragment that changes more than the fragment
PLAY_KEY = "replay_playing"  # the training replay is playing
LIVE_SLIDERS_KEY = "live_sliders"  # the browser-decoding slider component (one frame kept across runs)
LIVE_OK_KEY = "live_decoding_ok"  # the browser has loaded a decoder in this session: draw the live sliders
LIVE_FAILED_KEY = "live_decoding_failed"  # {run key: reason}: runs whose decoder the browser could not load

# ---------------------------------------------------------------- per-run names (pass them through key())
ORIGIN = "origin"  # (D,) values of the dims without a slider, and the sliders' starting point
LIVE_TOKEN = "live_token"  # counts the page's moves of the slider point (the live sliders jump only when it changes)
SELECTED = "selected"  # atlas index of the last clicked scatter point
START_SEED = "start_seed"
EXTRA_DIMS = "extra_dims"  # dims given a slider beyond the MAX_SLIDERS highest-scoring
PROJ_X, PROJ_Y = "proj_x", "proj_y"  # raw dims of the scatter
GRID_X, GRID_Y = "grid_x", "grid_y"  # raw dims of the manifold grid
TRAV_DIMS = "trav_dims"
REPLAY_SNAPSHOT = "replay_snapshot"
RECON_UPLOAD = "recon_upload"
POSTERIOR_PICK = "post"  # the image whose posterior the Sampling tab samples
# An image pick (interpolation ends "interp_A" / "interp_B", the posterior samples' "post") keeps these parts.
PICK_CLASS, PICK_INDEX, PICK_SOURCE, PICK_UPLOAD = "class", "index", "source", "upload"


def run_id(run: Run) -> str:
    """A short stable id of a run folder, the suffix of its keys."""
    return hashlib.sha1(str(run.path.resolve()).encode()).hexdigest()[:RUN_ID_CHARS]


def key(name: str, rid: str | None = None) -> str:
    """The session-state (and widget) key of `name`: `name:<rid>` for one run's state, `name` page-wide."""
    return name if rid is None else f"{name}:{rid}"


def slider_key(dim: int, rid: str) -> str:
    """The key of latent dimension `dim`'s slider."""
    return key(f"z{dim}", rid)


def pick_key(pick: str, part: str, rid: str) -> str:
    """The key of one part (PICK_CLASS, PICK_INDEX, ...) of an image pick such as end_pick("A") or POSTERIOR_PICK."""
    return key(f"{pick}_{part}", rid)


def end_pick(end: str) -> str:
    """The image pick of interpolation end "A" or "B"."""
    return f"interp_{end}"


def keep_choice(k: str, options: Sequence[Any], default: Any) -> None:
    """Reset a select widget's value to `default` when it is not among its options (a new run, a new epoch)."""
    if st.session_state.get(k) not in options:
        st.session_state[k] = default


def request_full_rerun() -> None:
    """From a callback inside a fragment: rerun the whole page, not just the fragment."""
    st.session_state[FULL_RERUN_KEY] = True


def rerun_if_requested() -> None:
    """Call at the top of a fragment: a pending request_full_rerun() reruns the whole page now."""
    if st.session_state.pop(FULL_RERUN_KEY, False):
        st.rerun()
