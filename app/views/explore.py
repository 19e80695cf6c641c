"""Explore page script, run by st.navigation in app/main.py; the page itself is app.explore."""
from app.explore import render

render()
