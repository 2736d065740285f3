"""Choose a model's sampling shift on scenes that are not evaluation scenes.

    python scripts/tune_shift.py [--model default] [--first 1001000100] [--scenes 8]
                                 [--shifts 1,2,3,4,6,9] [--steps 25] [--device cpu]
                                 [--solver euler|unipc]

Renders ``--scenes`` scenes from seed ``--first`` on (which must lie outside the evaluation
range, so ``launch.py eval`` stays an honest test of the choice), generates each grid from
row 0 + column 0 at every shift, the same noise for all, and prints PSNR / SSIM over the unknown
cells, as ``launch.py eval`` scores them. The default model's shift (9) was chosen this way.
``--solver unipc`` samples with the solver Wan's releases ship (UniPC on flow predictions) in
place of the flow-matching Euler steps, to compare the two; the studio samples with Euler.
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
    p.add_argument("--solver", default="euler", choices=["euler", "unipc"],
                   help="euler: the studio's sampler; unipc: Wan's multistep solver, for comparison")
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
    if args.solver == "unipc":
        use_unipc()
    scenes = []
    for seed in seeds:
        r = render_scene(sample_scene(seed), cfg.views, cfg.times, cfg.height, cfg.width, device=model.device)
        scenes.append(EvalScene(seed, r.frames, r.caption))
    print(f"{len(scenes)} scenes from seed {args.first}, {args.steps} steps, the model's shift {cfg.shift:g}, "
          f"{args.solver} solver")
    print("| shift | PSNR (dB) | changing / static | SSIM | s / grid |\n|---|---|---|---|---|")
    for s in shifts:
        r = score_scenes(model, scenes, "row0+col0", args.steps, cfg.mode, shift=s)
        print(f"| {s:g} | {r['psnr']:.2f} | {r['psnr_changing']:.2f} / {r['psnr_static']:.2f} | {r['ssim']:.3f} | "
              f"{r['seconds']:.2f} |", flush=True)
    return 0


def use_unipc() -> None:
    """Sample with ``UniPCMultistepScheduler`` on flow predictions at the same shift (the settings
    of Wan's diffusers pipelines) in place of ``FlowMatchEulerDiscreteScheduler``."""
    from diffusers import UniPCMultistepScheduler

    from core import sampler

    def make(model, shift=None):
        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                       flow_shift=model.config.shift if shift is None else float(shift),
                                       num_train_timesteps=model.config.num_train_timesteps)

    sampler.make_scheduler = make


if __name__ == "__main__":
    sys.exit(main())
