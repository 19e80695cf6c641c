"""Slim a finished run for shipping: keep only the latest epoch's set, optionally without optimiser state.

    python -m trainer.export checkpoints/RUN [--drop-optimizer]

--drop-optimizer also drops the discriminator's weights and optimiser state (disc-E, disc-optim-E) of a run
trained with --disc-weight: only resuming reads them. A run exported so still opens everywhere (app,
load_run) but cannot be resumed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import safe_io
from .runs import LOCK_FILE, MANIFEST_FILE, OPTIONAL_FILES, RunError, epoch_file, load_run, read_manifest

RESUME_ONLY = ("optim", *OPTIONAL_FILES)  # the set's files only --resume reads: the model's optimiser, the discriminator's state


def export_run(run_dir: Path, drop_optimizer: bool) -> int:
    """Rewrite the manifest to the latest set alone and delete everything else versioned; returns bytes freed."""
    load_run(run_dir)  # refuse to slim a run that does not load
    manifest = read_manifest(run_dir)
    if drop_optimizer:
        for key in RESUME_ONLY:
            name = manifest["files"].pop(key, None)
            manifest.get("sha256", {}).pop(name, None)
        manifest["optimizer_dropped"] = True
    safe_io.atomic_write_json(run_dir / MANIFEST_FILE, manifest)
    live = set(manifest["files"].values()) | set(manifest.get("kept", []))
    freed = 0
    for p in run_dir.iterdir():
        if (epoch_file(p.name) and p.name not in live) or p.name == LOCK_FILE or p.name.endswith(".tmp") or p.name.endswith(".log"):
            freed += p.stat().st_size
            p.unlink()
    return freed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.export", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--drop-optimizer", action="store_true", help="remove the optimiser and discriminator state (the run can no longer be resumed)")
    args = parser.parse_args(argv)
    for run_dir in args.runs:
        try:
            freed = export_run(run_dir, args.drop_optimizer)
        except RunError as e:
            print(f"python -m trainer.export: error: {e}", file=sys.stderr)
            return 2
        print(f"{run_dir}: freed {freed / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
