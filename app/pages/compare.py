"""Placeholder: the compare page is being written by another engineer."""
import streamlit as st

st.title("Compare")
st.info("This page is not ready yet.")
