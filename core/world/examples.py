"""The studio's example inputs (``assets/examples/<name>/``) and the world's contact sheets.

Each example is an evaluation-split scene (never seen in training) given as the two inputs of
the studio: ``fixed_view.mp4`` (row 0: the first camera, time runs), ``freeze_time.mp4``
(column 0: the first instant, the camera runs along its path) and ``caption.txt``. Clips have
16 frames at 72x128 and 8 fps so the studio can resample them to its own V and T.

    python -m core.world.examples --out assets/examples          # regenerate the examples
    python -m core.world.examples --sheet docs/world_contact_sheet.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

# name -> evaluation seed; picked by eye for variety of shapes, motions, floors and skies.
EXAMPLES: dict[str, int] = {
    "rolling_ball": 1_000_000_011,
    "sliding_box": 1_000_000_131,
    "orbiting_cylinder": 1_000_000_008,
    "bouncing_ball": 1_000_000_022,
}
FRAMES = 16
SIZE = (72, 128)
FPS = 8.0
SHEET_SEEDS = (1_000_000_011, 1_000_000_008, 1_000_000_131)


def example_inputs(seed: int, frames: int = FRAMES, height: int = SIZE[0], width: int = SIZE[1], device="cpu"):
    """(row 0 uint8 [F, H, W, 3], column 0 uint8 [F, H, W, 3], caption) of scene ``seed``."""
    from .render import grid_u, pack_frames, render_frames, to_uint8
    from .scenes import sample_scene

    spec = sample_scene(seed)
    u = grid_u(frames)
    zeros = np.zeros(frames)
    fb = pack_frames([spec], np.zeros(2 * frames, np.int64), np.concatenate([zeros, u]),
                     np.concatenate([u, zeros]), height, width, device)
    rgb, _ = render_frames(fb, height, width)
    out = to_uint8(rgb)
    return out[:frames], out[frames:], spec.caption


def write_example(folder: str | Path, seed: int, frames: int = FRAMES) -> Path:
    """Write ``fixed_view.mp4``, ``freeze_time.mp4`` and ``caption.txt`` of scene ``seed``."""
    from ..export import write_mp4

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    row, column, caption = example_inputs(seed, frames)
    write_mp4(folder / "fixed_view.mp4", row, FPS)
    write_mp4(folder / "freeze_time.mp4", column, FPS)
    (folder / "caption.txt").write_text(caption + "\n")
    return folder


def write_examples(out: str | Path, names: list[str] | None = None) -> list[Path]:
    """Regenerate the shipped examples (all, or ``names``) under ``out``."""
    return [write_example(Path(out) / name, EXAMPLES[name]) for name in (names or list(EXAMPLES))]


def _label(image: np.ndarray, text: str, height: int = 16) -> np.ndarray:
    """``image`` with a white strip of ``text`` above it."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (image.shape[1], height), (255, 255, 255))
    ImageDraw.Draw(strip).text((4, 2), text, fill=(0, 0, 0))
    return np.concatenate([np.asarray(strip), image])


def contact_sheet(seeds=SHEET_SEEDS, views: int = 8, times: int = 8, height: int = SIZE[0], width: int = SIZE[1]) -> np.ndarray:
    """The 8x8 ground-truth grids of a few scenes, one under the other, each under its seed and
    caption (row = view, column = time)."""
    from ..export import contact_sheet as grid_sheet
    from ..grid import Grid
    from .render import render_scene
    from .scenes import sample_scene

    parts = []
    for seed in seeds:
        gt = render_scene(sample_scene(seed), views, times, height, width)
        sheet = grid_sheet(Grid(gt.frames))
        parts.append(_label(sheet, f"seed {seed}: {gt.caption}  (rows: views, columns: times)"))
        parts.append(np.full((10, sheet.shape[1], 3), 255, np.uint8))
    return np.concatenate(parts[:-1])


def pseudo4d_sheet(seed: int = 1_000_000_011, views: int = 8, times: int = 8) -> np.ndarray:
    """Ground truth next to the pseudo-4D grid of the same row 0."""
    from ..export import contact_sheet as grid_sheet
    from ..grid import Grid
    from .pseudo4d import pseudo4d_grid
    from .render import render_scene
    from .scenes import sample_scene

    gt = render_scene(sample_scene(seed), views, times, *SIZE)
    fake = pseudo4d_grid(gt.frames[0], views, seed)
    a = _label(grid_sheet(Grid(gt.frames)), f"seed {seed}: ground-truth 4D grid")
    b = _label(grid_sheet(Grid(fake)), "pseudo-4D grid of the same row 0 (2D homographies per view)")
    gap = np.full((a.shape[0], 10, 3), 255, np.uint8)
    return np.concatenate([a, gap, b], 1)


def main(argv=None) -> int:
    from ..export import write_png

    p = argparse.ArgumentParser(prog="python -m core.world.examples", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="write the examples under this folder (e.g. assets/examples)")
    p.add_argument("--sheet", type=Path, help="write the contact sheet PNG here")
    p.add_argument("--pseudo4d-sheet", type=Path, help="write the pseudo-4D comparison PNG here")
    args = p.parse_args(argv)
    if args.out:
        for f in write_examples(args.out):
            print(f"wrote {f}")
    if args.sheet:
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        write_png(args.sheet, contact_sheet())
        print(f"wrote {args.sheet}")
    if args.pseudo4d_sheet:
        args.pseudo4d_sheet.parent.mkdir(parents=True, exist_ok=True)
        write_png(args.pseudo4d_sheet, pseudo4d_sheet())
        print(f"wrote {args.pseudo4d_sheet}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
