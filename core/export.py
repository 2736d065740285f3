"""Exports of a grid: browser-playable H.264 mp4s (grid, per view, per time, spiral) and a PNG
contact sheet. Everything goes through ``write_mp4``, which guarantees yuv420p at even sizes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .grid import Grid

GUTTER = 2  # pixels between tiles
GUTTER_VALUE = 24  # dark grey between tiles


def even_pad(frames: np.ndarray) -> np.ndarray:
    """Pad [N, H, W, 3] by edge replication to even H and W (yuv420p needs even sizes)."""
    h, w = frames.shape[1:3]
    ph, pw = h % 2, w % 2
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return frames


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float, quality: int = 8) -> Path:
    """Write uint8 [N, H, W, 3] as H.264 yuv420p; atomic (temporary name, then rename)."""
    import imageio.v3 as iio

    path = Path(path)
    frames = even_pad(np.ascontiguousarray(frames, dtype=np.uint8))
    if len(frames) == 1:  # a one-frame mp4 is legal but some players show nothing: hold it
        frames = np.repeat(frames, 2, axis=0)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    iio.imwrite(
        tmp, frames, extension=".mp4", fps=float(fps), codec="libx264", quality=quality,
        macro_block_size=1, pixelformat="yuv420p", ffmpeg_log_level="error",
        output_params=["-movflags", "+faststart"],
    )
    os.replace(tmp, path)
    return path


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    import imageio.v3 as iio

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial.png")
    iio.imwrite(tmp, np.ascontiguousarray(image, dtype=np.uint8), extension=".png")
    os.replace(tmp, path)
    return path


def tile_layout(n: int, aspect: float = 16 / 9, h: int = 1, w: int = 1) -> tuple[int, int]:
    """Rows x columns for ``n`` tiles of h x w so the mosaic is close to ``aspect`` (W/H)."""
    best, best_err = (1, n), float("inf")
    for rows in range(1, n + 1):
        cols = -(-n // rows)
        err = abs(np.log((cols * w) / (rows * h) / aspect)) + 0.05 * (rows * cols - n)
        if err < best_err:
            best, best_err = (rows, cols), err
    return best


def mosaic(tiles: np.ndarray, rows: int, cols: int, gutter: int = GUTTER) -> np.ndarray:
    """Tile uint8 [N, H, W, 3] into one [rows*H + gaps, cols*W + gaps, 3] image, row-major."""
    n, h, w, _ = tiles.shape
    out = np.full((rows * h + (rows - 1) * gutter, cols * w + (cols - 1) * gutter, 3), GUTTER_VALUE, np.uint8)
    for k in range(min(n, rows * cols)):
        r, c = divmod(k, cols)
        out[r * (h + gutter):r * (h + gutter) + h, c * (w + gutter):c * (w + gutter) + w] = tiles[k]
    return out


def grid_video_frames(grid: Grid) -> np.ndarray:
    """All views tiled in one frame, one frame per time: uint8 [T, H', W', 3]."""
    rows, cols = tile_layout(grid.V, h=grid.H, w=grid.W)
    return np.stack([mosaic(grid.frames[:, t], rows, cols) for t in range(grid.T)])


def contact_sheet(grid: Grid, highlight: tuple[int, int] | None = None, mark_known: bool = False) -> np.ndarray:
    """The V x T sheet: row v = view v, column t = time t. Optionally outline one cell, and tint
    the border of known cells."""
    sheet = mosaic(grid.frames.reshape(-1, grid.H, grid.W, 3), grid.V, grid.T)
    step_y, step_x = grid.H + GUTTER, grid.W + GUTTER

    def outline(v, t, color, width):
        y0, x0 = v * step_y, t * step_x
        y1, x1 = y0 + grid.H, x0 + grid.W
        sheet[y0:y0 + width, x0:x1] = color
        sheet[y1 - width:y1, x0:x1] = color
        sheet[y0:y1, x0:x0 + width] = color
        sheet[y0:y1, x1 - width:x1] = color

    if mark_known:
        for v, t in zip(*np.nonzero(grid.known)):
            outline(v, t, (80, 160, 255), 1)
    if highlight is not None:
        outline(highlight[0], highlight[1], (255, 200, 0), max(1, min(grid.H, grid.W) // 24))
    return sheet


def spiral_cells(views: int, times: int) -> list[tuple[int, int]]:
    """The 4D walk-through: time advances steadily while the view sweeps out and back."""
    n = max(2 * views, times, 2)
    cells = []
    for k in range(n):
        t = round(k * (times - 1) / (n - 1))
        phase = (k / (n - 1)) * 2.0  # one sweep 0 -> V-1 -> 0
        v = round((phase if phase <= 1 else 2 - phase) * (views - 1))
        cells.append((v, t))
    return cells


def export_grid(grid: Grid, folder: str | os.PathLike) -> dict[str, list[str]]:
    """Write grid.mp4, views/view_XX.mp4, times/time_XX.mp4, spiral.mp4 and grid.png into
    ``folder``; return the relative paths written."""
    folder = Path(folder)
    (folder / "views").mkdir(exist_ok=True)
    (folder / "times").mkdir(exist_ok=True)
    fps = grid.fps
    written = {"grid": [], "views": [], "times": [], "spiral": [], "sheet": []}
    write_mp4(folder / "grid.mp4", grid_video_frames(grid), fps)
    written["grid"].append("grid.mp4")
    for v in range(grid.V):
        write_mp4(folder / "views" / f"view_{v:02d}.mp4", grid.row(v), fps)
        written["views"].append(f"views/view_{v:02d}.mp4")
    for t in range(grid.T):
        write_mp4(folder / "times" / f"time_{t:02d}.mp4", grid.column(t), fps)
        written["times"].append(f"times/time_{t:02d}.mp4")
    cells = spiral_cells(grid.V, grid.T)
    write_mp4(folder / "spiral.mp4", np.stack([grid.frames[v, t] for v, t in cells]), fps)
    written["spiral"].append("spiral.mp4")
    write_png(folder / "grid.png", contact_sheet(grid))
    written["sheet"].append("grid.png")
    return written
