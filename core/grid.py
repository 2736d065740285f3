"""The 4D grid: V views x T times of frames, which cells are known, and how it is stored.

Convention (used everywhere): ``frames[v, t]`` is the frame seen from camera ``v`` at time ``t``.
Row ``v`` is the video seen from camera v (time varies); column ``t`` is the freeze-time orbit at
time t (view varies). The fixed-view input is row 0, the freeze-time input is column 0, and they
share cell (0, 0).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError

# Limits that keep a request sane on one GPU; the model may ask for tighter ones.
MAX_VIEWS = 64
MAX_TIMES = 256
MIN_SIDE = 16
MAX_SIDE = 4096


def check_grid_shape(views: int, times: int, height: int, width: int, multiple: int = 1) -> None:
    """Raise InputError unless a V x T grid of H x W frames is something we can make."""
    if not 1 <= views <= MAX_VIEWS:
        raise InputError(f"views must be between 1 and {MAX_VIEWS}, got {views}")
    if not 1 <= times <= MAX_TIMES:
        raise InputError(f"times must be between 1 and {MAX_TIMES}, got {times}")
    for name, side in (("height", height), ("width", width)):
        if not MIN_SIDE <= side <= MAX_SIDE:
            raise InputError(f"{name} must be between {MIN_SIDE} and {MAX_SIDE} pixels, got {side}")
        if side % multiple:
            raise InputError(f"{name} must be a multiple of {multiple} for this model, got {side}")


def parse_size(text: str) -> tuple[int, int]:
    """'72x128' -> (72, 128), as H x W."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise InputError(f"size must look like HxW, e.g. 72x128, got {text!r}")
    return int(parts[0]), int(parts[1])


@dataclass
class Grid:
    """A 4D video: frames ``uint8 [V, T, H, W, 3]`` and the known-cell mask ``bool [V, T]``."""

    frames: np.ndarray  # uint8 [V, T, H, W, 3]
    known: np.ndarray = None  # bool [V, T]; None means no cell is known
    fps: float = 8.0
    caption: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        f = np.asarray(self.frames)
        if f.ndim != 5 or f.shape[-1] != 3:
            raise InputError(f"grid frames must be [V, T, H, W, 3], got shape {tuple(f.shape)}")
        if f.dtype != np.uint8:
            raise InputError(f"grid frames must be uint8, got {f.dtype}")
        self.frames = f
        if self.known is None:
            self.known = np.zeros(f.shape[:2], dtype=bool)
        self.known = np.asarray(self.known, dtype=bool)
        if self.known.shape != f.shape[:2]:
            raise InputError(f"known mask must be [V, T] = {f.shape[:2]}, got {self.known.shape}")
        if not (0 < self.fps <= 240):
            raise InputError(f"fps must be in (0, 240], got {self.fps}")

    @property
    def V(self) -> int:
        return self.frames.shape[0]

    @property
    def T(self) -> int:
        return self.frames.shape[1]

    @property
    def H(self) -> int:
        return self.frames.shape[2]

    @property
    def W(self) -> int:
        return self.frames.shape[3]

    def row(self, v: int) -> np.ndarray:
        """The video seen from camera v: uint8 [T, H, W, 3]."""
        return self.frames[v]

    def column(self, t: int) -> np.ndarray:
        """The freeze-time orbit at time t: uint8 [V, H, W, 3]."""
        return self.frames[:, t]

    # -- storage ---------------------------------------------------------------------------
    def save_npz(self, path: str | os.PathLike) -> None:
        """Write losslessly to ``path`` (``frames``, ``known``, ``fps``, ``caption``); atomic."""
        path = Path(path)
        tmp = path.with_name(path.name + ".partial")
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh,
                frames=self.frames,
                known=self.known,
                fps=np.float64(self.fps),
                caption=np.str_(self.caption),
            )
        os.replace(tmp, path)

    @classmethod
    def load_npz(cls, path: str | os.PathLike) -> "Grid":
        path = Path(path)
        if not path.is_file():
            raise InputError(f"no grid file at {path} (expected a run folder's grid.npz)")
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(
                    frames=z["frames"],
                    known=z["known"],
                    fps=float(z["fps"]) if "fps" in z else 8.0,
                    caption=str(z["caption"]) if "caption" in z else "",
                )
        except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as e:
            if isinstance(e, InputError):
                raise
            raise InputError(f"{path} is not a readable grid file ({type(e).__name__}: {e})") from None


def dense_factor(n: int, trained: int) -> int:
    """The largest k with (n - 1) * k + 1 <= ``trained`` (at least 1): an axis of ``n`` cells is
    sampled as every k-th cell of one of (n - 1) * k + 1, first and last positions the same. A
    model trained on 8 x 8 grids makes a 4 x 4 grid better as the even cells of a 7 x 7 one (the
    views and times the same distance apart as in training) than directly."""
    if n < 2 or trained <= n:
        return 1
    return max(1, (trained - 1) // (n - 1))


def dense_size(n: int, k: int) -> int:
    """Cells along an axis of the denser grid whose every ``k``-th cell gives ``n``: (n - 1) * k + 1."""
    return (n - 1) * k + 1


def dense_every(views: int, times: int, cfg) -> tuple[int, int]:
    """(kv, kt) for a grid of ``views`` x ``times`` and a model config ``cfg``: the grid is every
    kv-th view and kt-th time of a denser one, as large as the model makes in one pass
    (``dense_factor`` against its default grid, within ``max_views`` and ``chunk_times``)."""
    return (dense_factor(views, min(cfg.views, cfg.max_views)), dense_factor(times, min(cfg.times, cfg.chunk_times)))


def known_mask(views: int, times: int, kind: str) -> np.ndarray:
    """Named known-cell masks: 'row0+col0', 'cell0' (image to 4D), 'none' (text to 4D),
    'col0' (extension from a previous chunk's last column), 'row0', 'all'."""
    m = np.zeros((views, times), dtype=bool)
    if kind == "row0+col0":
        m[0, :] = True
        m[:, 0] = True
    elif kind == "cell0":
        m[0, 0] = True
    elif kind == "col0":
        m[:, 0] = True
    elif kind == "row0":
        m[0, :] = True
    elif kind == "all":
        m[:] = True
    elif kind != "none":
        raise InputError(f"unknown mask kind {kind!r}; allowed: row0+col0, cell0, col0, row0, all, none")
    return m
