"""Standard 3DGS ``.ply`` files: write a set of Gaussians the way 3DGS viewers expect, read one back.

Layout (binary little endian, one ``vertex`` element, all float32, in this order):
``x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 opacity scale_0 scale_1 scale_2 rot_0 rot_1 rot_2 rot_3``.
Opacity is a logit, scales are logs, ``rot`` is a wxyz quaternion, normals are zero and
``f_dc = (rgb - 0.5) / C0`` (the degree-0 spherical harmonic). No ``f_rest``: our splats are
view-independent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SH_C0 = 0.28209479177387814
PROPERTIES = (
    "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
    "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
)
_PLY_TYPES = {"float": "f4", "float32": "f4", "double": "f8", "float64": "f8", "uchar": "u1",
              "uint8": "u1", "char": "i1", "int8": "i1", "ushort": "u2", "uint16": "u2",
              "short": "i2", "int16": "i2", "uint": "u4", "uint32": "u4", "int": "i4", "int32": "i4"}


def rgb_to_sh0(rgb: np.ndarray) -> np.ndarray:
    return (np.asarray(rgb, dtype=np.float64) - 0.5) / SH_C0


def sh0_to_rgb(f_dc: np.ndarray) -> np.ndarray:
    return np.asarray(f_dc, dtype=np.float64) * SH_C0 + 0.5


def write_splat_ply(
    path: str | os.PathLike,
    means: np.ndarray,  # [N, 3]
    log_scales: np.ndarray,  # [N, 3] (or [N, 1] for isotropic Gaussians)
    quats_wxyz: np.ndarray,  # [N, 4]
    opacity_logits: np.ndarray,  # [N]
    rgb: np.ndarray,  # [N, 3] in 0..1
) -> Path:
    """Write Gaussians as a standard 3DGS ``.ply`` (atomic: temporary name, then rename).

    Raises ValueError on wrong shapes or non-finite values: a file with NaNs in it would load
    in a viewer as garbage, so it is never written.
    """
    arrays = {k: _as_2d(v, k) for k, v in dict(means=means, log_scales=log_scales,
                                                quats_wxyz=quats_wxyz, rgb=rgb).items()}
    opacity = np.asarray(opacity_logits, dtype=np.float64).reshape(-1, 1)
    n = arrays["means"].shape[0]
    if arrays["log_scales"].shape[1] == 1:
        arrays["log_scales"] = np.repeat(arrays["log_scales"], 3, axis=1)
    want = dict(means=3, log_scales=3, quats_wxyz=4, rgb=3)
    for k, cols in want.items():
        if arrays[k].shape != (n, cols):
            raise ValueError(f"{k} must be [N, {cols}] with N = {n}, got {arrays[k].shape}")
    if opacity.shape[0] != n:
        raise ValueError(f"opacity_logits must be [N] with N = {n}, got {opacity.shape[0]}")
    table = np.concatenate([
        arrays["means"], np.zeros((n, 3)), rgb_to_sh0(arrays["rgb"]), opacity,
        arrays["log_scales"], arrays["quats_wxyz"],
    ], axis=1).astype("<f4")  # [N, 17]
    if not np.isfinite(table).all():
        bad = sorted({PROPERTIES[j] for j in np.nonzero(~np.isfinite(table))[1]})
        raise ValueError(f"refusing to write non-finite Gaussians (in {', '.join(bad)})")
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {name}" for name in PROPERTIES]
    header += ["end_header"]
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as fh:
        fh.write(("\n".join(header) + "\n").encode("ascii"))
        fh.write(np.ascontiguousarray(table).tobytes())
    os.replace(tmp, path)
    return path


def _as_2d(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {a.shape}")
    return a


def read_ply_header(path: str | os.PathLike) -> tuple[str, list[tuple[str, int, list[tuple[str, str]]]], int]:
    """(format, [(element, count, [(property, type), ...]), ...], byte offset of the body)."""
    with open(path, "rb") as fh:
        if fh.readline().strip() != b"ply":
            raise ValueError(f"{path} is not a PLY file")
        fmt, elements = None, []
        while True:
            line = fh.readline()
            if not line:
                raise ValueError(f"{path}: PLY header has no end_header")
            words = line.decode("ascii", errors="replace").split()
            if not words or words[0] in ("comment", "obj_info"):
                continue
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                elements.append((words[1], int(words[2]), []))
            elif words[0] == "property":
                if words[1] == "list":
                    raise ValueError(f"{path}: list properties are not splat data")
                elements[-1][2].append((words[2], words[1]))
            elif words[0] == "end_header":
                return fmt, elements, fh.tell()


def read_splat_ply(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a binary little-endian 3DGS ``.ply`` into float32 arrays.

    Returns ``means [N,3]``, ``log_scales [N,3]``, ``quats_wxyz [N,4]``, ``opacity_logits [N]``,
    ``rgb [N,3]`` (from ``f_dc``; may leave 0..1 for files from other tools), ``normals [N,3]``
    and ``raw`` (the structured array with every property, ``f_rest_*`` included).
    """
    fmt, elements, offset = read_ply_header(path)
    if fmt != "binary_little_endian":
        raise ValueError(f"{path}: only binary_little_endian PLY is supported, got {fmt}")
    if not elements or elements[0][0] != "vertex":
        raise ValueError(f"{path}: the first PLY element must be 'vertex'")
    _, n, props = elements[0]
    try:
        dtype = np.dtype([(name, "<" + _PLY_TYPES[typ]) for name, typ in props])
    except KeyError as e:
        raise ValueError(f"{path}: unknown PLY property type {e}") from None
    raw = np.fromfile(path, dtype=dtype, count=n, offset=offset)
    if raw.shape[0] != n:
        raise ValueError(f"{path}: file is truncated ({raw.shape[0]} of {n} vertices)")
    names = set(dtype.names)
    need = {"x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "rot_0"}
    if not need <= names:
        raise ValueError(f"{path}: not a 3DGS splat file (missing {sorted(need - names)})")

    def cols(*keys):
        return np.stack([raw[k].astype(np.float32) for k in keys], axis=1)

    scale_keys = [k for k in ("scale_0", "scale_1", "scale_2") if k in names]
    log_scales = cols(*scale_keys)
    if log_scales.shape[1] == 1:
        log_scales = np.repeat(log_scales, 3, axis=1)
    return {
        "means": cols("x", "y", "z"),
        "normals": cols("nx", "ny", "nz") if {"nx", "ny", "nz"} <= names else np.zeros((n, 3), np.float32),
        "log_scales": log_scales,
        "quats_wxyz": cols("rot_0", "rot_1", "rot_2", "rot_3"),
        "opacity_logits": raw["opacity"].astype(np.float32),
        "rgb": sh0_to_rgb(cols("f_dc_0", "f_dc_1", "f_dc_2")).astype(np.float32),
        "raw": raw,
    }
