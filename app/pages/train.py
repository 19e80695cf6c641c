"""Placeholder: the train page is being written by another engineer."""
import streamlit as st

st.title("Train")
st.info("This page is not ready yet.")
