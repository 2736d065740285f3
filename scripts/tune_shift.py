"""Choose a model's sampling shift on scenes that are not evaluation scenes.

    python scripts/tune_shift.py [--model default] [--first 1001000100] [--scenes 8]
                                 [--shifts 1,2,3,4,6,9] [--steps 25] [--device cpu]

Renders ``--scenes`` scenes from seed ``--first`` on (which must lie outside the evaluation
range, so ``launch.py eval`` stays an honest test of the choice), generates each grid from
row 0 + column 0 at every shift, the same noise for all, and prints PSNR / SSIM over the unknown
cells, as ``launch.py eval`` scores them. The default model's shift (9) was chosen this way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.commands import add_precision_argument  # noqa: E402
from core.engine import Engine  # noqa: E402
from core.errors import InputError  # noqa: E402
from core.eval.run import EvalScene, score_scenes  # noqa: E402
from core.sampler import check_shift  # noqa: E402
from core.world import render_scene, sample_scene  # noqa: E402
from core.world.split import EVAL_SEEDS, MAX_SEED  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--first", type=int, default=1_001_000_100, help="first seed (outside the evaluation range)")
    p.add_argument("--scenes", type=int, default=8)
    p.add_argument("--shifts", default="1,2,3,4,6,9", help="comma list of shifts to try")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add_precision_argument(p)
    args = p.parse_args(argv)
    try:
        seeds = range(args.first, args.first + args.scenes)
        if args.scenes < 1 or args.first < 0 or seeds[-1] > MAX_SEED:
            raise InputError(f"--first and --scenes must give seeds between 0 and {MAX_SEED}")
        if seeds.start < EVAL_SEEDS.stop and seeds[-1] >= EVAL_SEEDS.start:
            raise InputError(f"seeds {seeds.start}..{seeds[-1]} overlap the evaluation seeds "
                             f"{EVAL_SEEDS.start}..{EVAL_SEEDS.stop - 1}: tune elsewhere, then evaluate")
        try:
            shifts = [float(s) for s in args.shifts.split(",") if s.strip()]
        except ValueError:
            raise InputError(f"--shifts must be a comma list of numbers, got {args.shifts!r}") from None
        for s in shifts:
            check_shift(s)
        model = Engine(args.model, args.device, precision=args.precision).load()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = model.config
    scenes = []
    for seed in seeds:
        r = render_scene(sample_scene(seed), cfg.views, cfg.times, cfg.height, cfg.width, device=model.device)
        scenes.append(EvalScene(seed, r.frames, r.caption))
    print(f"{len(scenes)} scenes from seed {args.first}, {args.steps} steps, the model's shift {cfg.shift:g}")
    print("| shift | PSNR (dB) | changing / static | SSIM | s / grid |\n|---|---|---|---|---|")
    for s in shifts:
        r = score_scenes(model, scenes, "row0+col0", args.steps, cfg.mode, shift=s)
        print(f"| {s:g} | {r['psnr']:.2f} | {r['psnr_changing']:.2f} / {r['psnr_static']:.2f} | {r['ssim']:.3f} | "
              f"{r['seconds']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
