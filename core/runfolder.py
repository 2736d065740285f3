"""Run folders: the unit of work on disk, written whole or not at all.

A run folder is built under a hidden temporary name beside its destination and renamed into place
when complete, so a crash never leaves a half-written folder and a second run never overwrites the
first. Layout (see the README): ``manifest.json``, ``inputs/``, ``grid.npz``, exports, ``splats/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterator

from . import __version__
from .errors import InputError
from .grid import Grid

MANIFEST = "manifest.json"
GRID = "grid.npz"


def check_new_output(out: str | os.PathLike) -> Path:
    """Return ``out`` as a Path if a new run folder can be made there; else raise InputError."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise InputError(f"output folder {out} already exists; choose a new path (nothing was changed)")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"output path {out} lies inside {parent}, which is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise InputError(f"cannot write in {parent} (permission denied)")
            break
    return out


def unique_path(out: str | os.PathLike) -> Path:
    """``out`` if free, else ``out-2``, ``out-3``, ... (for callers that suffix instead of refusing)."""
    out = Path(out)
    if not out.exists():
        return out
    k = 2
    while (cand := out.with_name(f"{out.name}-{k}")).exists():
        k += 1
    return cand


class new_run_folder:
    """Context manager: a temporary folder that becomes the run folder ``out`` on success.

    ``with new_run_folder(out) as tmp: ...`` writes into ``tmp``; on success it is renamed to
    ``out``, on any error it is removed. Refuses an existing ``out``. The rename is atomic on one
    file system; if something appeared at ``out`` meanwhile, the finished work is kept under a
    suffixed name instead, and ``.final`` says where.
    """

    def __init__(self, out: str | os.PathLike):
        self.out = check_new_output(out)
        self.final: Path | None = None

    def __enter__(self) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out.with_name(f".{self.out.name}.partial-{uuid.uuid4().hex[:8]}")
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        try:
            os.rename(self.tmp, self.out)
            self.final = self.out
        except OSError:
            self.final = unique_path(self.out)
            os.rename(self.tmp, self.final)
        return False


@contextlib.contextmanager
def new_subfolder(run: str | os.PathLike, name: str, replace: bool = False) -> Iterator[Path]:
    """Like ``new_run_folder`` for a folder inside an existing run (``splats/``, ``views/``).

    With ``replace`` the old folder is swapped out only after the new one is complete.
    """
    dest = Path(run) / name
    if dest.exists() and not replace:
        raise InputError(f"{dest} already exists; nothing was changed")
    tmp = dest.with_name(f".{name}.partial-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dest.exists():
        old = dest.with_name(f".{name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(dest, old)
        os.rename(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, dest)


def base_manifest(command: str, **asked) -> dict:
    """The manifest every run starts from: what was asked, versions, and a creation time."""
    import numpy

    versions = {"project": __version__, "python": platform.python_version(), "numpy": numpy.__version__}
    try:
        import torch

        versions["torch"] = torch.__version__
    except ImportError:  # the foundation works without torch
        pass
    return {
        "command": command,
        "asked": asked,
        "versions": versions,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "timings": {},
        "status": "running",
    }


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_manifest(run: str | os.PathLike) -> dict:
    p = Path(run) / MANIFEST
    if not p.is_file():
        raise InputError(f"{run} is not a run folder (no {MANIFEST})")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{p} is not valid JSON ({e})") from None


def open_run(run: str | os.PathLike) -> tuple[Path, dict, Grid]:
    """Check that ``run`` is a complete run folder and load its manifest and grid."""
    run = Path(run)
    if not run.exists():
        raise InputError(f"run folder {run} does not exist")
    if not run.is_dir():
        raise InputError(f"{run} is a file, not a run folder")
    manifest = read_manifest(run)
    grid = Grid.load_npz(run / GRID)
    return run, manifest, grid


def write_run(
    out: str | os.PathLike,
    grid: Grid,
    manifest: dict,
    inputs: dict[str, str | os.PathLike] | None = None,
    extra_files: dict[str, bytes | str] | None = None,
    exports: bool = True,
) -> Path:
    """Write a complete run folder at ``out`` (refusing an existing one) and return its path.

    ``inputs`` maps names under ``inputs/`` to files to copy; ``extra_files`` maps relative paths
    to contents. With ``exports`` the mp4s and contact sheet are written too.
    """
    from .export import export_grid

    t0 = time.perf_counter()
    folder = new_run_folder(out)
    with folder as tmp:
        grid.save_npz(tmp / GRID)
        if inputs:
            (tmp / "inputs").mkdir()
            for name, src in inputs.items():
                shutil.copyfile(src, tmp / "inputs" / name)
        for rel, data in (extra_files or {}).items():
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            (p.write_bytes if isinstance(data, bytes) else p.write_text)(data)
        if exports:
            t1 = time.perf_counter()
            export_grid(grid, tmp)
            manifest.setdefault("timings", {})["export_s"] = round(time.perf_counter() - t1, 3)
        manifest["grid"] = {"views": grid.V, "times": grid.T, "height": grid.H, "width": grid.W,
                            "fps": grid.fps, "caption": grid.caption,
                            "known": grid.known.astype(int).tolist()}
        manifest.setdefault("timings", {})["write_s"] = round(time.perf_counter() - t0, 3)
        manifest["status"] = "done"
        write_json(tmp / MANIFEST, manifest)
    return folder.final
