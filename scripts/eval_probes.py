"""Where the default model's error lies: probes beside `launch.py eval`, on the same evaluation
scenes (given row 0 + column 0), in the soft mode, PSNR over unknown cells (changing / static).

    python scripts/eval_probes.py [--model assets/model] [--seeds 8] [--steps 25] [--device cpu]

Rows:
- ``sampled``: the grid sampled with ``--steps`` steps (as `eval` scores it);
- ``one step``: the model's one-step estimate of the mean grid;
- ``oracle static``: each of the two with every pixel that truly does not change since time 0
  taken from column 0 (needs the ground truth: a bound on what a change mask could gain, not a method);
- ``mask from one step, tau``: the sampled grid with column 0 wherever the one-step estimate stays
  within tau/255 of it (a mask the model could make itself);
- ``row-0 guidance g``: one-step estimates, ``given column 0 + g * (given row 0 + column 0 - given column 0)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.eval.metrics import changing_pixels, psnr_unknown, psnr_unknown_regions  # noqa: E402
from core.eval.run import region_means, render_eval_scenes  # noqa: E402
from core.grid import known_mask  # noqa: E402
from core.model.codec import frames_to_model  # noqa: E402
from core.model.pipeline import FourDModel  # noqa: E402
from core.sampler import SampleSettings, sample_grid, to_uint8  # noqa: E402


def score(grids: list[np.ndarray], truths: list[np.ndarray], known: np.ndarray) -> str:
    ps, regions = [], []
    for g, t in zip(grids, truths):
        g = g.copy()
        g[known] = t[known]
        ps.append(psnr_unknown(g, t, known))
        regions.append(psnr_unknown_regions(g, t, known))
    r = region_means(regions)  # as `eval` averages them (a scene without a region is skipped)
    f = lambda x: "–" if x is None else f"{x:.2f}"  # noqa: E731
    return f"{np.mean(ps):.2f} dB ({f(r['psnr_changing'])} / {f(r['psnr_static'])})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="assets/model")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    model = FourDModel.from_pretrained(a.model, device=a.device,
                                       dtype=torch.bfloat16 if a.device == "cuda" else torch.float32)
    scenes = render_eval_scenes(a.seeds, 8, 8, 72, 128)
    known, col0_only = known_mask(8, 8, "row0+col0"), known_mask(8, 8, "col0")
    truths, sampled, one, one_col0 = [], [], [], []
    for k, sc in enumerate(scenes):
        x = frames_to_model(sc.frames)[0]

        def run(steps, kn):
            s = SampleSettings(steps=steps, guidance=model.config.guidance, seed=k, mode="soft", preview_every=0)
            return sample_grid(model, x, torch.from_numpy(kn), sc.caption, s).float().cpu()

        truths.append(sc.frames)
        sampled.append(to_uint8(run(a.steps, known)))
        one.append(run(1, known))
        one_col0.append(run(1, col0_only))
        print(f"scene {k + 1} of {len(scenes)}", file=sys.stderr, flush=True)
    one_u8 = [to_uint8(y) for y in one]

    def col0_where(grids, keep):  # column 0 of each view wherever keep is False
        return [np.where(kp[..., None], g, np.repeat(t[:, :1], t.shape[1], 1)) for g, t, kp in zip(grids, truths, keep)]

    changes = [changing_pixels(t).numpy() for t in truths]  # the pixels `eval` calls changing
    print(f"sampled, {a.steps} steps: {score(sampled, truths, known)}")
    print(f"one step: {score(one_u8, truths, known)}")
    print(f"oracle static, {a.steps} steps: {score(col0_where(sampled, changes), truths, known)}")
    print(f"oracle static, one step: {score(col0_where(one_u8, changes), truths, known)}")
    for tau in (6, 10, 16, 24):
        keep = [(np.abs(o.astype(np.int16) - t[:, :1].astype(np.int16)) > tau).any(-1) for o, t in zip(one_u8, truths)]
        print(f"mask from one step, tau {tau}: {score(col0_where(sampled, keep), truths, known)}")
    for g in (1.25, 1.5, 2.0):
        guided = [to_uint8((u + g * (c - u)).clamp(-1, 1)) for c, u in zip(one, one_col0)]
        print(f"row-0 guidance {g}: {score(guided, truths, known)}")


if __name__ == "__main__":
    main()
