"""How accurate dense optical flow is as a matcher between neighbouring views, against ground truth.

    python scripts/flow_probe.py SEED [SEED ...] [--preset medium|fine|fast|ultrafast|farneback] [--step 6]
                                 [--fb 0.5] [--eig 1e-3] [--gap 1] [--cache /tmp/camcache]

A diagnostic, not part of the reconstruction: for each time column t and each view pair (v, v+gap)
it computes flow grid[v, t] -> grid[v+gap, t] and back, keeps points on a regular grid (every
``--step`` px) whose forward-backward error is under ``--fb`` px and whose image has texture (the
structure tensor's smaller eigenvalue over ``--eig``), and prints how many there are and which
share lands within 1 and 1.5 px of the true partner (``camera_oracle.Truth``): per pair of column 0
and pooled over the columns.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.grid import Grid  # noqa: E402
from scripts.camera_oracle import Truth  # noqa: E402


def flow_matches(a: np.ndarray, b: np.ndarray, preset: str, step: int, fb_px: float, eig: float):
    """(xy in a [n, 2], xy in b [n, 2]) from dense flow a -> b checked by b -> a."""
    import cv2

    ga = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
    gb = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
    if preset == "farneback":
        def flow(x, y):
            return cv2.calcOpticalFlowFarneback(x, y, None, 0.5, 5, 15, 5, 7, 1.5, 0)
    else:
        dis = cv2.DISOpticalFlow_create({"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
                                         "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST}.get(
                                             preset, cv2.DISOPTICAL_FLOW_PRESET_MEDIUM))
        if preset == "fine":  # OpenCV 5 has no FINE preset: medium down to full resolution
            dis.setFinestScale(0)
            dis.setPatchStride(2)

        def flow(x, y):
            return dis.calc(x, y, None)
    fab, fba = flow(ga, gb), flow(gb, ga)
    H, W = ga.shape
    ys, xs = np.mgrid[step // 2:H:step, step // 2:W:step]
    ys, xs = ys.ravel(), xs.ravel()
    f = fab[ys, xs]
    p = np.stack([xs, ys], 1).astype(np.float32) + f  # pixel indices
    back = cv2.remap(fba, p[:, 0].reshape(-1, 1), p[:, 1].reshape(-1, 1), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=(1e6, 1e6)).reshape(-1, 2)
    fb = np.linalg.norm(f + back, axis=1)
    mineig = cv2.cornerMinEigenVal(ga, 7)[ys, xs]
    inside = (p[:, 0] >= 0) & (p[:, 0] <= W - 1) & (p[:, 1] >= 0) & (p[:, 1] <= H - 1)
    ok = (fb < fb_px) & (mineig > eig) & inside
    xa = np.stack([xs, ys], 1)[ok] + 0.5  # pixel centres, as the features' xy
    return xa, p[ok] + 0.5, fb[ok], mineig[ok]


def _project(truth: Truth, i: int, j: int, t: int, xy: np.ndarray) -> np.ndarray:
    """``Truth.project`` with the depth of the pixel that holds xy (floor, not round)."""
    H, W = truth.depth.shape[-2:]
    ij = np.clip(np.floor(xy).astype(int), 0, [W - 1, H - 1])
    z = truth.depth[i, t][ij[:, 1], ij[:, 0]]
    x, y = xy[:, 0], xy[:, 1]
    cam = np.linalg.inv(truth.K) @ np.stack([x, y, np.ones_like(x)]) * z
    world = truth.vm[i][:3, :3].T @ (cam - truth.vm[i][:3, 3:])
    p = truth.K @ (truth.vm[j][:3, :3] @ world + truth.vm[j][:3, 3:])
    return (p[:2] / p[2]).T


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("seeds", type=int, nargs="+")
    p.add_argument("--preset", default="medium")
    p.add_argument("--step", type=int, default=6)
    p.add_argument("--fb", type=float, default=0.5)
    p.add_argument("--eig", type=float, default=1e-3)
    p.add_argument("--gap", type=int, default=1)
    p.add_argument("--cache", default="/tmp/camcache")
    args = p.parse_args(argv)
    import cv2

    cv2.setNumThreads(1)
    for seed in args.seeds:
        run = Path(args.cache) / f"s{seed}_8x8_288x512"
        grid = Grid.load_npz(run / "grid.npz")
        truth = Truth(run)
        V, T = grid.frames.shape[:2]
        pooled = []
        print(f"seed {seed} ({args.preset}, step {args.step}, fb < {args.fb}, eig > {args.eig}, gap {args.gap})")
        for t in range(T):
            for v in range(V - args.gap):
                a, b, _, _ = flow_matches(grid.frames[v, t], grid.frames[v + args.gap, t], args.preset,
                                          args.step, args.fb, args.eig)
                err = np.linalg.norm(_project(truth, v, v + args.gap, t, a) - b, axis=1)
                pooled.append(err)
                if t == 0:
                    print(f"  col 0 pair {v}-{v + args.gap}: {len(err)} matches, {100 * (err < 1).mean():.0f}% < 1 px, "
                          f"{100 * (err < 1.5).mean():.0f}% < 1.5 px, median {np.median(err):.2f} px")
            if t == 0:
                e0 = np.concatenate(pooled)
                print(f"  column 0: {len(e0)} matches, {100 * (e0 < 1).mean():.1f}% < 1 px, {100 * (e0 < 1.5).mean():.1f}% < 1.5 px")
        e = np.concatenate(pooled)
        print(f"  all columns: {len(e)} matches ({len(e) / T / (V - args.gap):.0f} a pair), {100 * (e < 1).mean():.1f}% < 1 px, "
              f"{100 * (e < 1.5).mean():.1f}% < 1.5 px, {100 * (e > 5).mean():.1f}% > 5 px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
