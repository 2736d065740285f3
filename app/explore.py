"""What the studio shows and offers for one finished run: cached cell images for instant scrubbing,
the V x T contact sheet, the download bundles, and the HTML of the scrub widget.

Everything derived is written once per run into ``RUN/.studio/`` (a hidden cache beside the run's
own files, rebuilt if missing), so a slider move in the browser only swaps which cached image is
visible; no server round trip per frame.
"""

from __future__ import annotations

import html
import json
import zipfile
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from urllib.parse import quote

import numpy as np

from core.export import GUTTER, contact_sheet
from core.grid import Grid
from core.runfolder import new_subfolder, open_run

CACHE = ".studio"
CELL_MAX_SIDE = 640  # cells larger than this are shown downscaled (the downloads keep full size)
SHEET_MAX_WIDTH = 1600
JPEG_QUALITY = 92


@dataclass
class RunView:
    """Paths and shape of one run as the studio shows it (CPU data only: fits in gr.State)."""

    run: Path
    V: int
    T: int
    H: int
    W: int
    fps: float
    caption: str
    known: list[list[bool]]
    cells: list[list[Path]]  # [V][T] cached JPEGs
    sheet: Path  # contact sheet JPEG
    sheet_size: tuple[int, int]  # (height, width) of the full-size sheet, for cell geometry
    downloads: dict[str, Path] = field(default_factory=dict)  # grid_mp4, videos_zip, frames_zip, manifest

    def view_video(self, v: int) -> Path:
        return self.run / "views" / f"view_{v:02d}.mp4"

    def time_video(self, t: int) -> Path:
        return self.run / "times" / f"time_{t:02d}.mp4"

    @property
    def spiral(self) -> Path:
        return self.run / "spiral.mp4"


def _save_jpeg(path: Path, image: np.ndarray, max_side: int | None = None, max_width: int | None = None) -> None:
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(image))
    w, h = im.size
    s = 1.0
    if max_side and max(w, h) > max_side:
        s = max_side / max(w, h)
    if max_width and w * s > max_width:
        s = max_width / w
    if s < 1.0:
        im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
    im.save(path, format="JPEG", quality=JPEG_QUALITY)


def _write_cache(folder: Path, run: Path, grid: Grid) -> None:
    from PIL import Image

    (folder / "cells").mkdir()
    for v in range(grid.V):
        for t in range(grid.T):
            _save_jpeg(folder / "cells" / f"v{v:02d}_t{t:02d}.jpg", grid.frames[v, t], max_side=CELL_MAX_SIDE)
    sheet = contact_sheet(grid)  # known cells are outlined by the page, crisp at any size
    _save_jpeg(folder / "sheet.jpg", sheet, max_width=SHEET_MAX_WIDTH)
    # mp4s and PNGs are already compressed: store them, don't deflate them again
    with zipfile.ZipFile(folder / "videos.zip", "w", zipfile.ZIP_STORED) as z:
        for rel in ["grid.mp4", "spiral.mp4"] + [f"views/view_{v:02d}.mp4" for v in range(grid.V)] \
                + [f"times/time_{t:02d}.mp4" for t in range(grid.T)]:
            if (run / rel).is_file():
                z.write(run / rel, rel)
    with zipfile.ZipFile(folder / "frames.zip", "w", zipfile.ZIP_STORED) as z:
        for v in range(grid.V):
            for t in range(grid.T):
                buf = BytesIO()
                Image.fromarray(grid.frames[v, t]).save(buf, format="PNG", compress_level=1)
                z.writestr(f"frames/view_{v:02d}/time_{t:02d}.png", buf.getvalue())
    (folder / "info.json").write_text(json.dumps({"sheet_size": list(sheet.shape[:2])}))


def prepare_run(run: str | Path) -> RunView:
    """Open a finished run folder and make sure its studio cache exists; return what to show."""
    run, manifest, grid = open_run(run)
    folder = run / CACHE
    if not (folder / "info.json").is_file():
        with new_subfolder(run, CACHE, replace=True) as tmp:
            _write_cache(tmp, run, grid)
    info = json.loads((folder / "info.json").read_text())
    cells = [[folder / "cells" / f"v{v:02d}_t{t:02d}.jpg" for t in range(grid.T)] for v in range(grid.V)]
    downloads = {
        "grid_mp4": run / "grid.mp4",
        "videos_zip": folder / "videos.zip",
        "frames_zip": folder / "frames.zip",
        "manifest": run / "manifest.json",
    }
    return RunView(run=run, V=grid.V, T=grid.T, H=grid.H, W=grid.W, fps=grid.fps, caption=grid.caption,
                   known=grid.known.tolist(), cells=cells, sheet=folder / "sheet.jpg",
                   sheet_size=tuple(info["sheet_size"]), downloads=downloads)


def file_url(path: Path) -> str:
    """The URL gradio serves ``path`` under (it must lie in ``allowed_paths``); relative, so it
    also works behind a proxy that mounts the studio below a prefix."""
    return "gradio_api/file=" + quote(str(Path(path).resolve()))


def scrub_html(view: RunView | None) -> str:
    """The scrub widget: every cell stacked (one visible), the contact sheet with a highlight, and
    view/time sliders. ``app/web.py``'s script swaps the visible cell on slider input."""
    if view is None:
        return ('<div class="scrub-empty"><div class="scrub-empty-title">Your 4D grid appears here</div>'
                "<div>Add inputs on the left and press <b>Generate</b>. Then drag the sliders to move "
                "through views and time.</div></div>")
    V, T, H, W = view.V, view.T, view.H, view.W
    sh, sw = view.sheet_size
    geom = {  # fractions of the sheet: a cell's size and the stride between cells
        "cw": W / sw, "ch": H / sh, "sx": (W + GUTTER) / sw, "sy": (H + GUTTER) / sh,
    }
    imgs = "".join(
        f'<img class="cell{" on" if v == 0 and t == 0 else ""}" data-v="{v}" data-t="{t}" '
        f'src="{file_url(view.cells[v][t])}" alt="view {v}, time {t}" draggable="false">'
        for v in range(V) for t in range(T)
    )
    data = " ".join(f'data-{k}="{val:.6f}"' for k, val in geom.items())
    caption = f'<div class="scrub-caption">{html.escape(view.caption)}</div>' if view.caption else ""
    known_boxes = "".join(
        f'<div class="sheet-known" style="left:{100 * t * geom["sx"]:.4f}%;top:{100 * v * geom["sy"]:.4f}%;'
        f'width:{100 * geom["cw"]:.4f}%;height:{100 * geom["ch"]:.4f}%"></div>'
        for v in range(V) for t in range(T) if view.known[v][t])
    known = "".join("1" if k else "0" for row in view.known for k in row)  # row-major [V, T]
    return f"""
<div class="scrub" data-v="{V}" data-t="{T}" data-fps="{view.fps:g}" data-run="{html.escape(view.run.name)}" data-known="{known}" {data}>
  <div class="scrub-main">
    <div class="scrub-left">
      <div class="scrub-frame" style="aspect-ratio:{W}/{H}">{imgs}
        <div class="scrub-badge"><span class="b-view">view 0</span> · <span class="b-time">time 0</span>
          <span class="b-known"></span></div>
      </div>
      <div class="scrub-controls">
        <button class="scrub-play" type="button" title="Play through time (space)">▶</button>
        <label class="scrub-slider"><span>View</span>
          <input class="sv" type="range" min="0" max="{V - 1}" step="1" value="0" aria-label="view">
          <output class="ov">0 / {V - 1}</output></label>
        <label class="scrub-slider"><span>Time</span>
          <input class="st" type="range" min="0" max="{T - 1}" step="1" value="0" aria-label="time">
          <output class="ot">0 / {T - 1}</output></label>
      </div>
    </div>
    <div class="scrub-right">
      <div class="sheet-title">Contact sheet · {V} views × {T} times <span class="sheet-legend">
        <i class="lg-cur"></i>current <i class="lg-known"></i>given</span></div>
      <div class="scrub-sheet" title="Click a cell to jump to it">
        <img src="{file_url(view.sheet)}" alt="contact sheet" draggable="false">{known_boxes}
        <div class="sheet-hl"></div>
      </div>
      <div class="sheet-axes"><span>↓ views</span><span>times →</span></div>
      {caption}
    </div>
  </div>
</div>"""
