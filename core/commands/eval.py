"""``launch.py eval``: the quality table of a model on evaluation scenes against ground truth."""

from __future__ import annotations

import argparse

from ..errors import InputError
from . import add_precision_argument

NAME = "eval"
HELP = "score a model against ground truth on evaluation scenes (PSNR/SSIM, consistency, baselines)"

ROW_KEYS = {
    "sequential": "sequential", "hard": "parallel hard", "soft-untrained": "parallel soft untrained",
    "soft": "parallel soft trained", "fused": "fused", "image": "image-to-4D", "text": "text-to-4D",
}


def add_arguments(p) -> None:
    p.add_argument("--model", default="default", help="'default' (assets/model) or a model folder")
    p.add_argument("--seeds", type=int, default=16, help="number of evaluation scenes (default 16)")
    p.add_argument("--size", default="72x128", help="frame size HxW (default 72x128)")
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--times", type=int, default=8)
    p.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    p.add_argument("--modes", default="all",
                   help="comma list of rows: " + ", ".join(ROW_KEYS) + " (default all)")
    p.add_argument("--guidance", type=float, default=None, help="text guidance (default: the model's)")
    p.add_argument("--shift", type=float, default=None, help="noise schedule time shift (default: the model's)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add_precision_argument(p)
    p.add_argument("--dense", action=argparse.BooleanOptionalAction, default=True,
                   help="sample a grid smaller than the model's own as every k-th view and time of a denser one, "
                        "as generate does (default on)")
    p.add_argument("--no-consistency", action="store_true", help="skip the epipolar consistency figure")
    p.add_argument("--json", default="eval.json", help="where to write the result (default eval.json)")


def settings_from_args(args):
    from ..engine import Engine
    from ..eval.run import EvalSettings
    from ..grid import check_grid_shape, parse_size

    h, w = parse_size(args.size)
    if not 1 <= args.seeds <= 1000:
        raise InputError(f"--seeds must be between 1 and 1000, got {args.seeds}")
    if not 1 <= args.steps <= 1000:
        raise InputError(f"--steps must be between 1 and 1000, got {args.steps}")
    keys = list(ROW_KEYS) if args.modes.strip() == "all" else [k.strip() for k in args.modes.split(",") if k.strip()]
    bad = [k for k in keys if k not in ROW_KEYS]
    if bad or not keys:
        raise InputError(f"unknown --modes entry {bad[0] if bad else args.modes!r}; allowed: all, "
                         + ", ".join(ROW_KEYS))
    from ..sampler import check_shift

    check_shift(args.shift)
    facts = Engine(args.model, args.device, precision=args.precision).facts()
    cfg = facts["config"]
    check_grid_shape(args.views, args.times, h, w, multiple=facts["multiple"])
    if args.views > cfg.max_views or args.times > cfg.chunk_times:
        raise InputError(f"this model makes at most {cfg.max_views} views x {cfg.chunk_times} times in one pass, "
                         f"got {args.views} x {args.times}")
    return EvalSettings(model=args.model, seeds=args.seeds, views=args.views, times=args.times, height=h, width=w,
                        steps=args.steps, rows=tuple(ROW_KEYS[k] for k in keys), device=args.device,
                        precision=args.precision, guidance=args.guidance, shift=args.shift,
                        consistency=not args.no_consistency, dense=args.dense)


def run(args) -> int:
    import shlex
    import sys
    from pathlib import Path

    from ..eval.run import evaluate, format_table
    from ..runfolder import write_json

    es = settings_from_args(args)
    out = Path(args.json)
    if out.parent and not out.parent.exists():
        raise InputError(f"folder of --json {out} does not exist")
    result = evaluate(es, log=lambda s: print(s, file=sys.stderr, flush=True))
    result["command"] = (
        f"python launch.py eval --model {shlex.quote(args.model)} --seeds {args.seeds} --size {args.size} "
        f"--views {args.views} --times {args.times} --steps {args.steps} --modes {args.modes} "
        f"--device {args.device}" + (f" --precision {args.precision}" if args.precision != "auto" else "")
        + (f" --guidance {args.guidance}" if args.guidance is not None else "")
        + (f" --shift {args.shift:g}" if args.shift is not None else "")
        + (" --no-consistency" if args.no_consistency else "") + ("" if args.dense else " --no-dense")
        + f" --json {shlex.quote(str(out))}")
    table = format_table(result)
    result["table"] = table
    write_json(out, result)
    print(table)
    print(f"wrote {out}")
    return 0
