"""``launch.py generate``: make a 4D grid from two videos, one image or a prompt into a run folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import add_compile_argument, add_precision_argument

NAME = "generate"
HELP = "generate a 4D grid (views x times) from two videos, one image, or a prompt"


def add_arguments(p) -> None:
    src = p.add_argument_group("input (two videos, or one image, or only a prompt)")
    src.add_argument("--fixed-view", help="video with a still camera: becomes row 0 (view 0)")
    src.add_argument("--freeze-time", help="video with frozen time, moving camera: becomes column 0 (time 0)")
    src.add_argument("--image", help="one image: becomes cell (0, 0) (image to 4D)")
    src.add_argument("--prompt", default="", help="text; alone it is text to 4D")
    p.add_argument("--out", required=True, type=Path, help="new run folder to write (must not exist)")
    p.add_argument("--views", type=int, default=None, help="V, number of views (default: the model's)")
    p.add_argument("--times", type=int, default=None, help="T, number of times (default: the model's; "
                   "more than the model makes at once are generated chunk by chunk)")
    p.add_argument("--size", default=None, help="HxW of each frame, e.g. 72x128 (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", default=None, choices=["soft", "hard", "sequential", "fused"],
                   help="stream mode (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="text guidance scale (1 = none)")
    p.add_argument("--shift", type=float, default=None,
                   help="noise schedule time shift; higher spends more steps at high noise (default: the model's)")
    p.add_argument("--dense", action=argparse.BooleanOptionalAction, default=True,
                   help="sample a grid smaller than the model's own (8x8) as every k-th view and time of a "
                        "denser one, e.g. 4x4 as the even cells of 7x7: closer to what the model was "
                        "trained on, and slower (default on; --no-dense samples the grid as asked)")
    p.add_argument("--model", default="default", help="'default' (embedded) or a model folder")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add_precision_argument(p)
    add_compile_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from ..engine import Engine, GenerateRequest
    from ..grid import parse_size

    engine = Engine(model=args.model, device=args.device, precision=args.precision, compile=args.compile)
    cfg = engine.facts()["config"]
    h, w = parse_size(args.size) if args.size else (cfg.height, cfg.width)
    req = GenerateRequest(
        fixed_view=args.fixed_view, freeze_time=args.freeze_time, image=args.image, prompt=args.prompt,
        views=args.views if args.views is not None else cfg.views,
        times=args.times if args.times is not None else cfg.times, height=h, width=w,
        steps=args.steps if args.steps is not None else cfg.steps, seed=args.seed,
        mode=args.mode or cfg.mode, guidance=args.guidance if args.guidance is not None else cfg.guidance,
        shift=args.shift if args.shift is not None else cfg.shift, dense=args.dense,
    )
    engine.check(req, args.out)
    bar = None  # drawn at the first step, once the inputs have been read and checked

    def on_progress(step, total, preview):
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="step", desc="generate", file=sys.stderr, dynamic_ncols=True)
        bar.total = total
        bar.n = step
        bar.refresh()

    try:
        path = engine.generate(req, args.out, on_progress=on_progress)
    finally:
        if bar is not None:
            bar.close()
    print(path)
    return 0
