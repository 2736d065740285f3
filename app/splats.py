"""A run's reconstruction as the studio hands it to the viewer and to the downloads: the per-frame
splat files read into arrays, the grid cameras from ``recon.json``, and a zip of the .ply sequence."""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import InputError

from .explore import CACHE


def _read_3dgs_ply(path: Path) -> dict:
    """Standard 3DGS binary .ply -> dict(means, rgb, log_scales, quats, opacity_logits).

    Stand-in until ``core.recon.ply.read_splat_ply`` lands; the same keys.
    """
    with open(path, "rb") as fh:
        header = []
        while True:
            line = fh.readline()
            if not line:
                raise InputError(f"{path.name} is not a .ply file (no end_header)")
            header.append(line.decode("ascii", "replace").strip())
            if header[-1] == "end_header":
                break
        if not header or header[0] != "ply" or not any(h.startswith("format binary_little_endian") for h in header):
            raise InputError(f"{path.name} is not a binary little-endian .ply file")
        n, props, in_vertex = 0, [], False
        types = {"float": "<f4", "float32": "<f4", "double": "<f8", "uchar": "u1", "uint8": "u1",
                 "int": "<i4", "int32": "<i4", "uint": "<u4", "short": "<i2", "ushort": "<u2"}
        for h in header:
            parts = h.split()
            if parts[:2] == ["element", "vertex"]:
                n, in_vertex = int(parts[2]), True
            elif parts and parts[0] == "element":
                in_vertex = False
            elif in_vertex and parts[:1] == ["property"] and len(parts) == 3:
                props.append((parts[2], types[parts[1]]))
        data = np.frombuffer(fh.read(n * np.dtype(props).itemsize), dtype=np.dtype(props), count=n)

    def cols(*names):
        return np.stack([data[c].astype(np.float32) for c in names], axis=1)

    names = data.dtype.names
    out = {"means": cols("x", "y", "z")}
    if "f_dc_0" in names:
        out["rgb"] = np.clip(0.5 + 0.28209479177387814 * cols("f_dc_0", "f_dc_1", "f_dc_2"), 0, 1)
    elif "red" in names:
        out["rgb"] = cols("red", "green", "blue") / 255.0
    scale_names = sorted((c for c in names if c.startswith("scale_")), key=lambda c: int(c[6:]))
    if scale_names:
        out["log_scales"] = cols(*scale_names)
    if "rot_0" in names:
        out["quats"] = cols("rot_0", "rot_1", "rot_2", "rot_3")
    if "opacity" in names:
        out["opacity_logits"] = data["opacity"].astype(np.float32)
    return out


def read_splats(path: Path) -> dict:
    """One .ply of Gaussians as a dict of arrays (core's reader when present)."""
    try:
        from core.recon.ply import read_splat_ply
    except ImportError:
        return _read_3dgs_ply(Path(path))
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
