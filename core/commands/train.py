"""``launch.py train``: train (or go on training) a 4D model on the synthetic world."""

from __future__ import annotations

import signal

from ..errors import InputError

NAME = "train"
HELP = "train a 4D model on the synthetic world in a wall-clock budget (resumable)"

STAGE_SHORTCUTS = {
    "all": None,  # the default schedule
    "1": "1@72x128:1", "2": "2@72x128:1", "3": "3@72x128:1",
    "3-curriculum": "3@40x72:0.3,3@72x128:0.7",
}


def add_arguments(p) -> None:
    from ..train.config import DEFAULT_SCHEDULE, TrainConfig

    d = TrainConfig(out="")
    p.add_argument("--out", required=True, help="training folder (model/, state.pt, log.jsonl, curve, samples)")
    p.add_argument("--resume", default=None,
                   help="a training folder (exact resume) or any model folder (start from its weights)")
    p.add_argument("--minutes", type=float, default=d.minutes, help=f"wall-clock budget (default {d.minutes:g})")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (default: budget only)")
    p.add_argument("--stage", default="all",
                   help="'all' (default schedule: %s), '1', '2', '3', '3-curriculum', or a schedule "
                        "'STAGE@HxW:SHARE,...'" % DEFAULT_SCHEDULE.replace("%", "%%"))
    p.add_argument("--batch", type=int, default=d.batch, help=f"grids a step at the model's size (default {d.batch})")
    p.add_argument("--max-batch", type=int, default=d.max_batch)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer's layers")
    p.add_argument("--no-bf16", action="store_true", help="train in fp32 on CUDA (default: bf16 autocast)")
    p.add_argument("--preset", default=d.preset, help="model preset for a fresh start (default 'default')")
    p.add_argument("--reference-inputs", default=None, choices=["on", "off"],
                   help="fresh start: show each cell the frames of (v,0) and (0,t) (default: the preset's)")
    p.add_argument("--residual", default=None, choices=["on", "off"],
                   help="fresh start: run the flow on x - ref, ref = column 0 of its view (default: the preset's)")
    p.add_argument("--anchor-input", default=None, choices=["on", "off"],
                   help="show each cell the frame of (0,0) too (fresh start: default the preset's; with --resume "
                        "of a model folder, 'on' widens a model without it by zero channels, outputs unchanged)")
    p.add_argument("--warp-input", default=None, choices=["on", "off"],
                   help="show each cell the frames of (0,t) and (0,0) carried into its view by the optical flow "
                        "of column 0 (pixel models; fresh start: default the preset's; with --resume of a model "
                        "folder, 'on' adds it with zero weights, outputs unchanged)")
    p.add_argument("--layers", type=int, default=None,
                   help="transformer blocks: a fresh start's depth (default: the preset's); with --resume of a model "
                        "folder, more blocks than it has grows it (new blocks start as the identity, outputs unchanged)")
    p.add_argument("--mode", default=d.mode,
                   help="stream mode to train: soft (default), hard, sequential, fused, or a comma list whose "
                        "modes alternate by step (the first is the model's default)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=["cosine", "constant"],
                   help="cosine (default): from --lr down to a tenth of it over this call's --minutes, anew in "
                        "every call, resumes included; constant: --lr throughout (for runs resumed in short calls)")
    p.add_argument("--warmup", type=int, default=d.warmup_steps,
                   help="warm-up steps of the learning rate from a fresh optimizer (a start, or a resume from a "
                        "model folder's weights); an exact resume of a run restores its optimizer and skips it")
    p.add_argument("--ema", type=float, default=d.ema_decay, help="EMA decay")
    p.add_argument("--ema-start", default=d.ema_start, choices=["fresh", "warm"],
                   help="with --resume of a model folder's weights: fresh (default) starts a new average that "
                        "follows the raw weights closely for the first few hundred steps; warm takes the loaded "
                        "weights (an average themselves) as one already warmed up, moving at --ema from the start")
    p.add_argument("--sigma-shift", type=float, default=None,
                   help="time shift of the training noise levels (default: the model's sampling shift when "
                        "resuming, 3 from scratch)")
    p.add_argument("--masks", default=d.masks, help="known-cell families and weights for stages 2-3")
    p.add_argument("--views", type=int, default=d.views)
    p.add_argument("--times", type=int, default=d.times)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--save-every", type=float, default=d.save_every_min, help="minutes between checkpoints")
    p.add_argument("--eval-every", type=float, default=d.eval_every_min, help="minutes between curve points")
    p.add_argument("--eval-scenes", type=int, default=d.eval_scenes)
    p.add_argument("--eval-steps", type=int, default=d.eval_steps)
    p.add_argument("--eval-size", default=d.eval_size)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--reuse", default=None,
                   help="stages 2-3: use each rendered grid about this many times (replay pool), or 'auto' "
                        "(render about half as long as a step takes); default auto on cuda, 1 on cpu")
    p.add_argument("--render-share", type=float, default=d.render_share,
                   help="with --reuse auto: render fresh grids for about this share of a step's time (default 0.5; "
                        "lower reuses grids more and waits less)")
    p.add_argument("--pool", type=int, default=d.pool_grids, help="replay pool size in grids (default 512)")
    p.add_argument("--workers", type=int, default=None,
                   help="scene-planning processes (default 6 on cuda, 0 on cpu)")


def config_from_args(args):
    from ..engine import resolve_device
    from ..grid import parse_size
    from ..train.config import DEFAULT_SCHEDULE, TrainConfig

    from ..model.config import PRESETS

    if args.resume is None and args.preset not in PRESETS:
        raise InputError(f"unknown --preset {args.preset!r}; allowed: {', '.join(PRESETS)}")
    if args.resume is not None and (args.reference_inputs or args.residual):
        raise InputError("--reference-inputs and --residual shape a fresh model; a resumed one keeps its own")
    flag = {None: None, "on": True, "off": False}
    stage = args.stage.strip()
    schedule = STAGE_SHORTCUTS.get(stage, stage) or DEFAULT_SCHEDULE
    parse_size(args.eval_size)
    for name, val, lo, hi in (("views", args.views, 1, 8), ("times", args.times, 1, 8),
                              ("eval-scenes", args.eval_scenes, 1, 256), ("eval-steps", args.eval_steps, 1, 1000),
                              ("log-every", args.log_every, 1, 100000)):
        if not lo <= val <= hi:
            raise InputError(f"--{name} must be between {lo} and {hi}, got {val}")
    for name, val in (("save-every", args.save_every), ("eval-every", args.eval_every), ("lr", args.lr)):
        if not val > 0:
            raise InputError(f"--{name} must be > 0, got {val}")
    if args.layers is not None and not 1 <= args.layers <= 64:
        raise InputError(f"--layers must be between 1 and 64, got {args.layers}")
    if args.max_steps is not None and args.max_steps < 0:
        raise InputError(f"--max-steps must be >= 0, got {args.max_steps}")
    device = resolve_device(args.device)
    reuse = args.reuse if args.reuse is not None else ("auto" if device == "cuda" else "1")
    if reuse == "auto":
        reuse = 0.0
    else:
        try:
            reuse = float(reuse)
        except ValueError:
            raise InputError(f"--reuse must be 'auto' or a number from 1 to 1000, got {reuse!r}") from None
        if not 1 <= reuse <= 1000:
            raise InputError(f"--reuse must be 'auto' or a number from 1 to 1000, got {reuse:g}")
    if not 1 <= args.pool <= 100000:
        raise InputError(f"--pool must be between 1 and 100000, got {args.pool}")
    if not 0 <= args.ema < 1:
        raise InputError(f"--ema must be in [0, 1), got {args.ema}")
    return TrainConfig(
        out=args.out, resume=args.resume, preset=args.preset, minutes=args.minutes, schedule=schedule,
        reference_inputs=flag[args.reference_inputs], residual=flag[args.residual],
        anchor_input=flag[args.anchor_input], warp_input=flag[args.warp_input], layers=args.layers,
        max_steps=args.max_steps,
        batch=args.batch, max_batch=args.max_batch, views=args.views, times=args.times, mode=args.mode,
        lr=args.lr, lr_schedule=args.lr_schedule, warmup_steps=args.warmup, ema_decay=args.ema,
        ema_start=args.ema_start,
        sigma_shift=args.sigma_shift, masks=args.masks, device=resolve_device(args.device),
        bf16=not args.no_bf16, compile=args.compile, seed=args.seed, save_every_min=args.save_every,
        eval_every_min=args.eval_every, eval_scenes=args.eval_scenes, eval_steps=args.eval_steps,
        eval_size=args.eval_size, log_every=args.log_every,
        reuse=reuse, pool_grids=args.pool, render_share=args.render_share,
        workers=args.workers if args.workers is not None else (6 if device == "cuda" else 0))


def run(args) -> int:
    import json
    from pathlib import Path

    from ..train.loop import check_config, train

    cfg = config_from_args(args)
    check_config(cfg)
    if cfg.resume is not None and not Path(cfg.resume).exists():
        raise InputError(f"--resume {cfg.resume} does not exist")
    stop = {"asked": False}

    def on_term(signum, frame):  # finish the step, checkpoint, exit cleanly
        stop["asked"] = True

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        summary = train(cfg, should_cancel=lambda: stop["asked"], log=lambda s: print(s, flush=True))
    finally:
        signal.signal(signal.SIGTERM, old)
    print(json.dumps({k: v for k, v in summary.items() if k != "point"}))
    if summary.get("point"):
        print(f"final: PSNR {summary['point']['psnr']:.2f} dB on unknown cells "
              f"(baselines: {', '.join(f'{k} {v:.2f}' for k, v in summary['baselines'].items())})")
    return 0
