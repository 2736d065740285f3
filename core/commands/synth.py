"""``launch.py synth``: render one synthetic scene's ground-truth 4D grid into a run folder.

    python launch.py synth --seed S --views V --times T --size HxW --out DIR

Writes ``DIR/inputs/fixed_view.mp4`` (row 0) and ``DIR/inputs/freeze_time.mp4`` (column 0),
the ground truth ``grid.npz`` (known cells: row 0 + column 0), ``depth.npz`` (camera z, 0 on the
sky), ``cameras.json`` (OpenCV world->camera viewmat and K per view), ``caption.txt``,
``scene.json`` (the scene spec), ``manifest.json`` and the usual exports.
"""

from __future__ import annotations

import dataclasses
import io
import json
import tempfile
import time
from pathlib import Path

NAME = "synth"
HELP = "render a synthetic scene's ground-truth grid (with cameras, depth, caption) into a run folder"
FPS = 8.0


def add_arguments(p) -> None:
    p.add_argument("--seed", type=int, default=0, help="scene identity (0 <= S < 2^32; see core/world/split.py)")
    p.add_argument("--views", type=int, default=8, help="V, cameras along the path (default 8)")
    p.add_argument("--times", type=int, default=8, help="T, time steps (default 8)")
    p.add_argument("--size", default="72x128", help="frame size HxW (default 72x128)")
    p.add_argument("--out", type=Path, required=True, help="new run folder to write (must not exist)")
    p.add_argument("--ssaa", type=int, default=1, help="rays per pixel side, 1-4 (default 1: same as training)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="where to render (default cpu)")
    p.add_argument("--no-video", action="store_true",
                   help="write no mp4 (no inputs/, no exports): for machines without an H.264 encoder")


def _device(name: str) -> str:
    import torch

    from ..errors import InputError

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda asked for, but no CUDA GPU is available; use --device cpu or auto")
    return name


def cameras_json(height: int, width: int, viewmats, Ks) -> dict:
    """The ``cameras.json`` contract: OpenCV world->camera viewmat and K for every view."""
    views = [{"viewmat": [[float(x) for x in row] for row in vm], "K": [[float(x) for x in row] for row in k]}
             for vm, k in zip(viewmats, Ks)]
    return {"height": int(height), "width": int(width), "convention": "opencv, world to camera", "views": views}


def synth_run(out: Path, seed: int, views: int, times: int, height: int, width: int, ssaa: int = 1,
              device: str = "cpu", videos: bool = True) -> Path:
    """Render scene ``seed`` and write the run folder ``out``; return its path.

    ``videos=False`` writes no mp4 at all (no inputs/ and no exports): for machines without an
    H.264 encoder, e.g. a headless GPU server; ``launch.py export DIR`` adds them later.
    """
    import numpy as np

    from ..errors import InputError
    from ..export import write_mp4
    from ..grid import Grid, check_grid_shape, known_mask
    from ..runfolder import base_manifest, check_new_output, write_run
    from ..world import camera_viewmats, intrinsics, render_scene, sample_scene, split_of
    from ..world.render import grid_u
    from ..world.scenes import WORLD_VERSION
    from ..world.split import MAX_SEED

    # 1. Check everything before any work.
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed must be between 0 and {MAX_SEED}, got {seed}")
    check_grid_shape(views, times, height, width)
    if not 1 <= ssaa <= 4:
        raise InputError(f"ssaa must be between 1 and 4, got {ssaa}")
    check_new_output(out)
    # 2. Render the ground truth.
    t0 = time.perf_counter()
    spec = sample_scene(seed)
    gt = render_scene(spec, views, times, height, width, device=device, ssaa=ssaa)
    render_s = time.perf_counter() - t0
    grid = Grid(gt.frames, known_mask(views, times, "row0+col0"), fps=FPS, caption=gt.caption)
    manifest = base_manifest("synth", seed=seed, views=views, times=times, size=f"{height}x{width}",
                             ssaa=ssaa, device=device)
    manifest.update(seed=seed, split=split_of(seed), world_version=WORLD_VERSION, caption=gt.caption)
    manifest["timings"]["render_s"] = round(render_s, 3)
    depth = io.BytesIO()
    np.savez_compressed(depth, depth=gt.depth)
    extra = {
        "cameras.json": json.dumps(cameras_json(height, width, camera_viewmats(spec, grid_u(views)),
                                                [intrinsics(spec, height, width)] * views), indent=1) + "\n",
        "caption.txt": gt.caption + "\n",
        "scene.json": json.dumps(dataclasses.asdict(spec), indent=1) + "\n",
        "depth.npz": depth.getvalue(),
    }
    # 3. The two inputs as videos, then the whole folder at once.
    if not videos:
        return write_run(out, grid, manifest, extra_files=extra, exports=False)
    with tempfile.TemporaryDirectory() as tmp:
        fixed, freeze = Path(tmp) / "fixed_view.mp4", Path(tmp) / "freeze_time.mp4"
        write_mp4(fixed, grid.row(0), FPS)
        write_mp4(freeze, grid.column(0), FPS)
        return write_run(out, grid, manifest, inputs={"fixed_view.mp4": fixed, "freeze_time.mp4": freeze},
                         extra_files=extra)


def run(args) -> int:
    from ..grid import parse_size

    height, width = parse_size(args.size)
    path = synth_run(args.out, args.seed, args.views, args.times, height, width, args.ssaa, _device(args.device),
                     videos=not args.no_video)
    print(f"wrote {path}")
    return 0
