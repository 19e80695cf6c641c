"""Streamlit entry point: `streamlit run app/main.py -- --checkpoints-dir DIR`. A thin router plus the shared sidebar."""
from __future__ import annotations

import sys
from pathlib import Path

# Streamlit runs this file as a script: make `app`, `models`, `trainer` importable. This must run before those
# imports, so it cannot take the root from trainer.paths.PROJECT_ROOT (the one place that spells it out besides that).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import streamlit as st  # noqa: E402

from app.common import configure_torch  # noqa: E402
from app.sidebar import render_sidebar  # noqa: E402


def main() -> None:
    st.set_page_config(page_title="VAE Latent Explorer", layout="wide")
    configure_torch()
    page = st.navigation([
        st.Page("views/explore.py", title="Explore", icon=":material/explore:", default=True),
        st.Page("views/compare.py", title="Compare", icon=":material/compare:"),
        st.Page("views/train.py", title="Train", icon=":material/model_training:"),
    ])
    render_sidebar()
    page.run()


main()
