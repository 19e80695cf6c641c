"""Files the app reads from run folders besides the run itself: the job log and cached projections."""
from __future__ import annotations

import os

import numpy as np
import pytest

from app import jobs, latent


def test_log_tail_of_a_pipe_or_link_is_empty_and_does_not_block(tmp_path):
    os.mkfifo(tmp_path / jobs.LOG_FILE)
    assert jobs.log_tail(tmp_path) == []  # a blocking read would hang here
    (tmp_path / jobs.LOG_FILE).unlink()
    secret = tmp_path / "secret.txt"
    secret.write_text("do not show\n")
    (tmp_path / jobs.LOG_FILE).symlink_to(secret)
    assert jobs.log_tail(tmp_path) == []


def test_log_tail_reads_only_the_end(tmp_path):
    (tmp_path / jobs.LOG_FILE).write_text("old line\n" * 10_000 + '{"epoch": 1}\nlast message\n')
    assert jobs.log_tail(tmp_path) == ["old line"] * (jobs.LOG_TAIL_LINES - 1) + ["last message"]


@pytest.mark.slow  # real UMAP
def test_projection_cache_ignores_hostile_files(tmp_path):
    z = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
    path = latent.projection_path(tmp_path, "umap", 1)
    os.mkfifo(path)
    xy = latent.cached_embedding(tmp_path, 1, z, "umap")  # recomputed, not read from the pipe
    assert xy.shape == (30, 2) and np.isfinite(xy).all()
    assert path.is_file() and not path.is_fifo()
    again = latent.cached_embedding(tmp_path, 1, z, "umap")  # now served from the file
    assert np.array_equal(again, xy)
    np.save(path.with_suffix(".tmp.npy"), np.array([object()], dtype=object), allow_pickle=True)
    os.replace(path.with_suffix(".tmp.npy"), path)
    assert np.array_equal(latent.cached_embedding(tmp_path, 1, z, "umap"), xy)
