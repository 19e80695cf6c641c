"""Streamlit entry point: `streamlit run app/main.py -- --checkpoints-dir DIR`. A thin router plus the shared sidebar.

`-- --public` (or VAE_PUBLIC=1) serves the public mode (app/deploy.py): the folder is fixed, the Train page
and everything that writes run folders or starts processes are absent, uploads are capped.
"""
from __future__ import annotations

import sys
from pathlib import Path

# Streamlit runs this file as a script: make `app`, `models`, `trainer` importable. This must run before those
# imports, so it cannot take the root from trainer.paths.PROJECT_ROOT (the one place that spells it out besides that).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import streamlit as st  # noqa: E402

from app.common import cap_upload_size, configure_torch, is_public  # noqa: E402
from app.images import MAX_UPLOAD_BYTES  # noqa: E402
from app.sidebar import render_sidebar  # noqa: E402


def main() -> None:
    st.set_page_config(page_title="VAE Latent Explorer", layout="wide")
    configure_torch()
    public = is_public()
    if public:  # the upload endpoint refuses what no page would accept
        cap_upload_size(MAX_UPLOAD_BYTES // 2**20)
    # No page icons: a Material icon on a page makes the browser fetch the tab's favicon from a font host
    # (fonts.gstatic.com), which fails offline; emoji would need an emoji font the desktop may lack.
    pages = [
        st.Page("views/explore.py", title="Explore", default=True),
        st.Page("views/compare.py", title="Compare"),
    ]
    if not public:  # training starts processes and writes run folders
        pages.append(st.Page("views/train.py", title="Train"))
    page = st.navigation(pages)
    render_sidebar()
    page.run()


main()
