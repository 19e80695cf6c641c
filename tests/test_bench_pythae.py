"""bench/bench_pythae.py without pythae (an optional benchmark requirement): one line, nothing measured."""
from __future__ import annotations

from bench import bench_pythae


def test_without_pythae_one_line_and_nothing_run(monkeypatch, capsys):
    monkeypatch.setattr(bench_pythae, "pythae_available", lambda: False)
    monkeypatch.setattr(bench_pythae, "ours", lambda *a: (_ for _ in ()).throw(AssertionError("must not train")))
    assert bench_pythae.main(["--models", "mlp"]) is None
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and "pythae is not importable" in out and "requirements-pythae.txt" in out
