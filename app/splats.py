"""A run's reconstruction as the studio hands it to the viewer and to the downloads: the per-frame
splat files read into arrays, the grid cameras from ``recon.json``, and a zip of the .ply sequence."""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.recon.ply import read_splat_ply

from .explore import CACHE


def read_splats(path: Path) -> dict:
    """One .ply of Gaussians as a dict of arrays (means, rgb, log_scales, quats, opacity_logits)."""
    return read_splat_ply(path)


@dataclass
class Reconstruction:
    canonical: Path
    frame_files: list[Path]  # splats/frame_XXX.ply in time order
    cameras: list[dict]  # [{"viewmat": [4,4], "K": [3,3]}] per grid view
    info: dict  # recon.json

    def frames(self) -> list[dict]:
        """Splat arrays per time step (the canonical set alone if no per-frame files)."""
        return [read_splats(p) for p in (self.frame_files or [self.canonical])]


def find_reconstruction(run: Path) -> Reconstruction | None:
    """The reconstruction written into ``run`` (None if there is none yet)."""
    run = Path(run)
    canonical = run / "splats" / "canonical.ply"
    if not canonical.is_file():
        return None
    frame_re = re.compile(r"frame_(\d+)\.ply$")
    frames = sorted((p for p in (run / "splats").glob("frame_*.ply") if frame_re.search(p.name)),
                    key=lambda p: int(frame_re.search(p.name).group(1)))
    info = {}
    if (run / "recon.json").is_file():
        info = json.loads((run / "recon.json").read_text())
    cameras = [{"viewmat": np.asarray(c["viewmat"], np.float64), "K": np.asarray(c["K"], np.float64)}
               for c in info.get("cameras", []) if "viewmat" in c and "K" in c]
    return Reconstruction(canonical, frames, cameras, info)


def splats_zip(run: Path, recon: Reconstruction) -> Path:
    """``RUN/.studio/splats.zip``: canonical.ply and the frame_XXX.ply sequence (rewritten each time,
    as a reconstruction may be redone)."""
    folder = Path(run) / CACHE
    folder.mkdir(exist_ok=True)
    out = folder / "splats.zip"
    tmp = folder / "splats.zip.partial"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.write(recon.canonical, "splats/canonical.ply")
        for p in recon.frame_files:
            z.write(p, f"splats/{p.name}")
    tmp.replace(out)
    return out
