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
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.engine import Engine  # noqa: E402
from core.eval.baselines import copy_column0  # noqa: E402
from core.eval.metrics import psnr_unknown  # noqa: E402
from core.eval.run import EvalScene, render_eval_scenes, score_scenes  # noqa: E402
from core.grid import known_mask  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--dense", type=int, default=7)
    ap.add_argument("--every", type=int, default=2)
    ap.add_argument("--png", help="write the first scene's truth | direct | dense mosaic here")
    args = ap.parse_args()
    model = Engine("default", "cpu").load()
    k = args.every
    dense = render_eval_scenes(args.scenes, args.dense, args.dense, 72, 128)
    small = [EvalScene(sc.seed, np.ascontiguousarray(sc.frames[::k, ::k]), sc.caption) for sc in dense]
    # as ``launch.py eval`` scores them (scene i sampled with seed i), directly and densely
    runs = {name: score_scenes(model, scenes, "row0+col0", 25, model.config.mode, keep_first=True, every=every)
            for name, scenes, every in (("direct", small, (1, 1)), ("dense", dense, (k, k)))}
    known = known_mask(*small[0].frames.shape[:2], "row0+col0")
    res = {name: r["psnr_per_scene"] for name, r in runs.items()}
    res["copy_column0"] = [psnr_unknown(copy_column0(sc.frames, known), sc.frames, known) for sc in small]
    for i, sc in enumerate(small):
        print(sc.seed, " ".join(f"{n} {v[i]:.2f}" for n, v in res.items()))
    print(f"seconds a grid: direct {runs['direct']['seconds']:.1f}, dense {runs['dense']['seconds']:.1f}")
    if args.png:
        from core.export import write_png

        grids = (small[0].frames, runs["direct"]["first"], runs["dense"]["first"])
        write_png(args.png, np.concatenate([np.concatenate([np.concatenate(list(g[v]), 1) for g in grids], 1)
                                            for v in range(known.shape[0])], 0))
    n = known.shape[0]
    d = np.array(res["dense"]) - np.array(res["direct"])
    print(f"{n}x{n} from {args.dense}x{args.dense}, {args.scenes} scenes: "
          + ", ".join(f"{name} {np.mean(v):.2f} dB" for name, v in res.items())
          + f"; dense - direct {d.mean():+.2f} dB, {int((d > 0).sum())} of {len(d)} scenes up")


if __name__ == "__main__":
    main()
