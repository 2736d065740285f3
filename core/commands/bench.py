"""``launch.py bench``: seconds per step of each stream mode, whole-grid time and peak memory."""

from __future__ import annotations

import argparse

NAME = "bench"
HELP = "time the 4D transformer: s/step per mode, whole grid, peak memory, ratio to the floor"


def add_arguments(p) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--modes", nargs="+", default=["soft", "hard", "sequential", "fused"],
                   choices=["soft", "hard", "sequential", "fused"])
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the blocks (default: on with cuda, off on the cpu)")
    from ..model.config import PRESETS

    p.add_argument("--preset", default=None, choices=PRESETS,
                   help="model shape (default: wan2.1-1.3b on cuda, default on cpu)")
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--times", type=int, default=8, help="latent times")
    p.add_argument("--size", default=None, help="HxW in pixels (default: the preset's)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row (default 3 cuda, 1 cpu)")
    p.add_argument("--grid-steps", type=int, default=25, help="steps of the whole-grid timing")
    p.add_argument("--no-grid", action="store_true", help="skip the whole-grid timings")
    p.add_argument("--no-ablations", action="store_true", help="skip the rows that show what each change buys")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no row that would end after this long (s; default 480 on cuda, 400 on cpu)")
    p.add_argument("--options", default=None, choices=["none", "quick", "all"],
                   help="speed-option rows: attention kernels, FFN epilogue, shared Q/K/V, whole-step compile, "
                        "CUDA graphs, max-autotune (default: all on cuda, none on cpu)")
    p.add_argument("--quick", action="store_true",
                   help="about 5 minutes on an H100: per mode an eager reference, the old compiled baseline and "
                        "the engine's defaults, whole grids (soft, fused), the soft kernel profile")
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                   help="print the top CUDA kernels of the fastest soft step (default: on with cuda)")
    p.add_argument("--prompt-tokens", type=int, default=24,
                   help="rows of the text states before Wan's zero padding (default 24; the text length fills it)")
    p.add_argument("--json", default=None, help="write the results here")


def run(args) -> int:
    from ..bench import BenchConfig, run_bench
    from ..engine import resolve_device
    from ..errors import InputError
    from ..grid import parse_size

    h = w = None
    if args.size:
        h, w = parse_size(args.size)
    if args.views < 1 or args.times < 1:
        raise InputError("views and times must be at least 1")
    if args.steps is not None and not 1 <= args.steps <= 1000:
        raise InputError(f"--steps (timed steps per row) must be between 1 and 1000, got {args.steps}")
    if not 1 <= args.grid_steps <= 1000:
        raise InputError(f"--grid-steps must be between 1 and 1000, got {args.grid_steps}")
    if args.prompt_tokens < 1:
        raise InputError(f"--prompt-tokens must be at least 1, got {args.prompt_tokens}")
    cfg = BenchConfig(device=resolve_device(args.device), preset=args.preset, views=args.views, times=args.times,
                      height=h, width=w, modes=tuple(args.modes), compile=args.compile, steps=args.steps,
                      grid_steps=args.grid_steps, grid=not args.no_grid, ablations=not args.no_ablations,
                      budget_s=args.budget_s, json_path=args.json, options=args.options, quick=args.quick,
                      profile=args.profile, prompt_tokens=args.prompt_tokens)
    run_bench(cfg, log=lambda s: print(s, flush=True))
    return 0
