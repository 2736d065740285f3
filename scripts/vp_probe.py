"""Do the camera estimate's rotations agree with the frames' dominant vanishing point?

    python scripts/vp_probe.py SEEDS [--cache DIR] [--min-inliers N]

SEEDS: A..B or A,B,C (evaluation scenes of the synthetic world). For each seed's column 0, the
line segments of every view (OpenCV's LSD) vote for one dominant vanishing point (RANSAC over
pairs of segments, weighted by length, refined by least squares): on a striped floor, the stripes'
direction. A vanishing point is the image of a 3D direction, so with right cameras every view's
ray towards it, rotated into the world (``R_v^T K_v^-1 vp_v``), is the same direction. Printed per
seed: the inlier segments of the weakest view, the largest angle of those world directions from
their mean under the true cameras (how well the vanishing points were found) and under the
default camera estimate (``api.grid_cameras``, as ``reconstruct`` makes it), next to that
estimate's errors against ground truth. Grids are the camera bench's
(``python -m core.recon.bench --cameras-only --cache DIR``; rendered here when missing).
A diagnostic for the camera estimate (core/recon/cameras.py); reconstruction never reads ground truth.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.recon.vanishing import direction_spread, view_vanishing_points  # noqa: E402


def probe(run: Path) -> dict:
    from core.grid import Grid
    from core.recon.api import grid_cameras, load_gt_cameras
    from core.recon.cameras import SfMConfig
    from core.recon.metrics import camera_errors

    grid = Grid.load_npz(run / "grid.npz")
    V = grid.V
    gt = load_gt_cameras(run / "cameras.json", V)
    K = np.array([v["K"] for v in json.loads((run / "cameras.json").read_text())["views"]], dtype=np.float64)
    found = view_vanishing_points(list(grid.frames[:, 0]))
    est, *_ = grid_cameras(grid.frames, np.ones(grid.frames.shape[:2], bool), SfMConfig(threads=1))
    e = camera_errors(est.viewmats, gt)
    out = {"inliers_min": min(n for _, n in found), "rot_deg_max": e["rot_deg_max"], "tdir_deg_max": e["tdir_deg_max"],
           "pass": bool(e["rot_deg_max"] <= 2.0 and e["tdir_deg_max"] <= 5.0), "spread_true": None, "spread_est": None}
    if all(vp is not None for vp, _ in found):
        vps = [vp for vp, _ in found]
        out["spread_true"] = direction_spread(gt, K, vps)
        out["spread_est"] = direction_spread(est.viewmats, est.Ks, vps)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("seeds", help="A..B or A,B,C")
    p.add_argument("--cache", type=Path, default=Path("/tmp/camera_bench"), help="the camera bench's grid folder")
    args = p.parse_args(argv)
    from core.recon.bench import _seed_range, cached_grid

    print("seed        inliers  spread true  spread est  estimate rot / tdir")
    for s in _seed_range(args.seeds):
        run = cached_grid(args.cache, s)
        r = probe(run)
        f = lambda x: "     -" if x is None else f"{x:6.2f}"  # noqa: E731
        print(f"{s}  {r['inliers_min']:7d}  {f(r['spread_true'])}°     {f(r['spread_est'])}°    "
              f"{r['rot_deg_max']:6.2f}° / {r['tdir_deg_max']:6.2f}°  {'pass' if r['pass'] else 'FAIL'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
