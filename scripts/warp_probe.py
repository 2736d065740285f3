"""How much the warp input knows on its own (core/model/warp.py): row 0 carried into every view
by the optical flow of column 0, scored as a prediction of the grid on the evaluation scenes
(given row 0 + column 0; PSNR over unknown cells, all / changing / static, as `launch.py eval`
splits them), next to the two copy baselines. No model is involved.

    python scripts/warp_probe.py [--seeds 16] [--size 72x128]

Rows: ``copy column 0`` and ``copy row 0`` (the baselines); ``warp, chained`` (the carried
(0, t) the model is given: view v's flow to view 0 chained through its neighbours, OpenCV DIS
medium); ``warp, direct`` (one flow from view v straight to view 0); ``warp, chained, DIS fast``
and ``ultrafast`` (cheaper presets), each with its view-flow time per grid on this machine;
``(v, 0) moved by view 0's motion`` (the input's third frame) and ``mean of the two``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.eval.metrics import psnr_unknown, psnr_unknown_regions  # noqa: E402
from core.eval.run import region_means, render_eval_scenes  # noqa: E402
from core.grid import known_mask  # noqa: E402
from core.model import warp as W  # noqa: E402
from core.model.codec import frames_to_model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--size", default="72x128")
    a = ap.parse_args()
    H, Wd = (int(s) for s in a.size.split("x"))
    import cv2

    cv2.setNumThreads(1)
    scenes = render_eval_scenes(a.seeds, 8, 8, H, Wd)
    rows = {name: ([], [], []) for name in ("copy column 0", "copy row 0", "warp, chained", "warp, direct",
                                            "warp, chained, DIS fast", "warp, chained, DIS ultrafast",
                                            "(v, 0) moved by view 0's motion", "mean of the two")}
    for sc in scenes:
        V, T = sc.frames.shape[:2]
        known = known_mask(V, T, "row0+col0")
        x = frames_to_model(sc.frames)[0]  # [V, T, 3, H, W] in [-1, 1]
        times = torch.from_numpy(W.time_flows(x[0].numpy()))
        kc = torch.from_numpy(known)[None]

        def as_frames(t):
            return ((t.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()

        preds = {"copy column 0": np.broadcast_to(sc.frames[:, :1], sc.frames.shape).copy(),
                 "copy row 0": np.broadcast_to(sc.frames[:1], sc.frames.shape).copy()}
        for name, preset, chained in (("warp, chained", "medium", True), ("warp, direct", "medium", False),
                                      ("warp, chained, DIS fast", "fast", True),
                                      ("warp, chained, DIS ultrafast", "ultrafast", True)):
            t0 = time.perf_counter()
            fl = torch.from_numpy(W.view_flows(x[:, 0].numpy(), preset, chained))
            rows[name][2].append(time.perf_counter() - t0)
            w = W.warp_inputs(x[None].float(), kc, torch.cat([fl, times])[None])[0]
            preds[name] = as_frames(w[:, :, :3])
            if name == "warp, chained":
                preds["(v, 0) moved by view 0's motion"] = as_frames(w[:, :, 6:9])
                preds["mean of the two"] = as_frames((w[:, :, :3] + w[:, :, 6:9]) / 2)
        for name, p in preds.items():
            rows[name][0].append(psnr_unknown(p, sc.frames, known))
            rows[name][1].append(psnr_unknown_regions(p, sc.frames, known))
    print(f"{len(scenes)} evaluation scenes at {H}x{Wd}, given row 0 + column 0; PSNR over unknown cells")
    print(f"{'prediction':32s} {'all':>7s} {'changing':>9s} {'static':>7s}  flow ms/grid")
    for name, (ps, regs, secs) in rows.items():
        r = region_means(regs)
        ms = f"{1000 * float(np.mean(secs)):.1f}" if secs else "-"
        print(f"{name:32s} {np.mean(ps):7.2f} {r['psnr_changing']:9.2f} {r['psnr_static']:7.2f}  {ms}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
