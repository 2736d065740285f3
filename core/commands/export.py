"""``launch.py export DIR``: (re)write the mp4s and contact sheet of a run folder."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

NAME = "export"
HELP = "write grid.mp4, views/, times/, spiral.mp4 and grid.png of a run folder"


def add_arguments(p) -> None:
    p.add_argument("dir", type=Path, help="a run folder (with grid.npz)")


def export_run(run: Path) -> dict:
    """Write the exports of ``run`` beside its grid; files are swapped in only when all are done."""
    from ..export import export_grid
    from ..runfolder import new_subfolder, open_run, read_manifest, write_json

    run, _, grid = open_run(run)
    t0 = time.perf_counter()
    with new_subfolder(run, ".exports", replace=True) as tmp:
        written = export_grid(grid, tmp)
    staging = run / ".exports"
    for name in ("views", "times"):
        dest = run / name
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(staging / name, dest)
    for name in ("grid.mp4", "spiral.mp4", "grid.png"):
        os.replace(staging / name, run / name)
    shutil.rmtree(staging, ignore_errors=True)
    manifest = read_manifest(run)
    manifest.setdefault("timings", {})["export_s"] = round(time.perf_counter() - t0, 3)
    write_json(run / "manifest.json", manifest)
    return written


def run(args) -> int:
    written = export_run(args.dir)
    n = sum(len(v) for v in written.values())
    print(f"wrote {n} files in {args.dir}")
    return 0
