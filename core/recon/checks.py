"""Early refusal of grids that cannot be reconstructed (blank, one repeated image, noise), each
with one line that says what is wrong, before any time is spent on cameras or a fit."""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def _neighbour_correlation(gray: np.ndarray) -> float:
    """Correlation between horizontally and vertically adjacent pixels (natural images ~0.9, noise ~0)."""
    out = []
    for a, b in ((gray[:, :-1], gray[:, 1:]), (gray[:-1, :], gray[1:, :])):
        a = a.ravel() - a.mean()
        b = b.ravel() - b.mean()
        den = np.sqrt((a * a).sum() * (b * b).sum())
        out.append(float((a * b).sum() / den) if den > 0 else 1.0)
    return float(np.mean(out))


def check_grid_for_recon(frames: np.ndarray) -> None:
    """Raise InputError unless ``frames`` (uint8 [V, T, H, W, 3]) can carry a reconstruction."""
    V, T, H, W = frames.shape[:4]
    if V < 2:
        raise InputError(f"a reconstruction needs at least 2 views (rows) in the grid; this one has {V}")
    flat = frames.reshape(V * T, H, W, 3)
    pick = np.linspace(0, V * T - 1, min(V * T, 16)).round().astype(int)
    sample = flat[pick].astype(np.float32)
    if float(sample.std(axis=(1, 2)).max()) < 2.0 and float(flat.astype(np.float32).std(axis=(1, 2)).max()) < 2.0:
        raise InputError("the grid is blank (every frame is one flat colour); there is nothing to reconstruct")
    ref = frames[0, 0].astype(np.int16)
    if all(np.abs(frames[v, t].astype(np.int16) - ref).max() <= 2 for v in range(V) for t in range(T)):
        raise InputError("every cell of the grid is the same image; a reconstruction needs views that differ")
    gray = sample.mean(axis=-1)
    textured = sample.std(axis=(1, 2)).max(axis=-1) >= 2.0
    corr = [_neighbour_correlation(g) for g, ok in zip(gray, textured) if ok]
    if corr and float(np.median(corr)) < 0.3:
        raise InputError("the frames look like random noise (neighbouring pixels are unrelated); "
                         "there is no scene to reconstruct")


FOV_RANGE_DEG = (10.0, 150.0)  # a field of view given for the frames (across)


def check_fov(fov_x_deg: float) -> float:
    """A given field of view across, in degrees, as a float; InputError outside ``FOV_RANGE_DEG``."""
    lo, hi = FOV_RANGE_DEG
    if not lo <= float(fov_x_deg) <= hi:
        raise InputError(f"the field of view must be between {lo:g} and {hi:g} degrees across, "
                         f"got {float(fov_x_deg):g}")
    return float(fov_x_deg)
