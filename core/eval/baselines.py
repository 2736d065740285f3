"""Grids that need no model: the two copy baselines every generated grid must beat.

Given row 0 and column 0 (the fixed-view and freeze-time inputs), fill every other cell with
- ``copy_column0``: the frame of its own view at time 0, ``out[v, t] = gt[v, 0]`` (right for the
  static world, wrong wherever something moves);
- ``copy_row0``: the frame of its own time seen from view 0, ``out[v, t] = gt[0, t]`` (right for
  the motion, wrong wherever the camera moved).
Known cells keep their ground truth in both.

Given only cell (0, 0) (image to 4D), ``copy_cell0`` fills every other cell with that one image
(right wherever neither the camera nor the world moves): the bar the image-to-4D row must clear.
"""

from __future__ import annotations

import numpy as np

BASELINES = ("copy_column0", "copy_row0")  # for row 0 + column 0 given
IMAGE_BASELINE = "copy_cell0"  # for cell (0, 0) given


def copy_column0(frames: np.ndarray, known: np.ndarray) -> np.ndarray:
    """frames [V, T, ...] (ground truth; only row 0 and column 0 are read where unknown)."""
    out = np.repeat(frames[:, :1], frames.shape[1], axis=1)
    out[known] = frames[known]
    return out


def copy_row0(frames: np.ndarray, known: np.ndarray) -> np.ndarray:
    out = np.repeat(frames[:1], frames.shape[0], axis=0)
    out[known] = frames[known]
    return out


def copy_cell0(frames: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Every cell is the frame of cell (0, 0), ``out[v, t] = gt[0, 0]``."""
    out = np.broadcast_to(frames[:1, :1], frames.shape).copy()
    out[known] = frames[known]
    return out


def baseline(name: str, frames: np.ndarray, known: np.ndarray) -> np.ndarray:
    if name == "copy_column0":
        return copy_column0(frames, known)
    if name == "copy_row0":
        return copy_row0(frames, known)
    if name == IMAGE_BASELINE:
        return copy_cell0(frames, known)
    raise ValueError(f"unknown baseline {name!r}; allowed: {', '.join(BASELINES + (IMAGE_BASELINE,))}")
