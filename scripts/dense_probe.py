"""Is a grid smaller than the model's own better sampled as every k-th cell of a denser one?

    python scripts/dense_probe.py [--scenes 8] [--dense 7] [--every 2] [--png FILE]

Renders the first ``--scenes`` evaluation scenes at ``--dense`` x ``--dense`` (72x128), and for
each makes the grid of its every ``--every``-th view and time (7 and 2: 4 x 4) from row 0 +
column 0 twice with the default model: directly, and as the even cells of the dense grid given
the dense grid's row 0 + column 0 (what ``Engine.generate`` does by default, ``--no-dense`` to
skip). Prints PSNR over the small grid's unknown cells for both and for copying column 0, per
scene and on average. The synthetic world spaces views and times evenly over the same arc and
clip whatever their number, so the small grid's ground truth is the dense one's every k-th cell.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.engine import Engine  # noqa: E402
from core.eval.baselines import copy_column0  # noqa: E402
from core.eval.metrics import psnr_unknown  # noqa: E402
from core.eval.run import render_eval_scenes  # noqa: E402
from core.grid import known_mask  # noqa: E402
from core.model.codec import frames_to_model  # noqa: E402
from core.sampler import SampleSettings, sample_grid, to_uint8  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--dense", type=int, default=7)
    ap.add_argument("--every", type=int, default=2)
    ap.add_argument("--png", help="write the first scene's truth | direct | dense mosaic here")
    args = ap.parse_args()
    model = Engine("default", "cpu").load()

    def generate(frames, caption, seed):
        known = known_mask(*frames.shape[:2], "row0+col0")
        s = SampleSettings(steps=25, guidance=model.config.guidance, seed=seed, mode=model.config.mode,
                           preview_every=0)
        y = to_uint8(sample_grid(model, frames_to_model(frames)[0], torch.from_numpy(known), caption, s))
        y[known] = frames[known]
        return y

    k = args.every
    res = {"direct": [], "dense": [], "copy_column0": []}
    for i, sc in enumerate(render_eval_scenes(args.scenes, args.dense, args.dense, 72, 128)):
        truth = np.ascontiguousarray(sc.frames[::k, ::k])
        known = known_mask(*truth.shape[:2], "row0+col0")
        t0 = time.perf_counter()
        direct = generate(truth, sc.caption, i)
        t1 = time.perf_counter()
        dense = generate(sc.frames, sc.caption, i)[::k, ::k]
        t2 = time.perf_counter()
        for name, g in (("direct", direct), ("dense", dense), ("copy_column0", copy_column0(truth, known))):
            res[name].append(psnr_unknown(g, truth, known))
        print(sc.seed, " ".join(f"{n} {v[-1]:.2f}" for n, v in res.items()),
              f"({t1 - t0:.0f} s direct, {t2 - t1:.0f} s dense)", flush=True)
        if i == 0 and args.png:
            from core.export import write_png

            rows = [np.concatenate([np.concatenate(list(g[v]), 1) for g in (truth, direct, dense)], 1)
                    for v in range(truth.shape[0])]
            write_png(args.png, np.concatenate(rows, 0))
    n = truth.shape[0]
    d = np.array(res["dense"]) - np.array(res["direct"])
    print(f"{n}x{n} from {args.dense}x{args.dense}, {args.scenes} scenes: "
          + ", ".join(f"{name} {np.mean(v):.2f} dB" for name, v in res.items())
          + f"; dense - direct {d.mean():+.2f} dB, {int((d > 0).sum())} of {len(d)} scenes up")


if __name__ == "__main__":
    main()
