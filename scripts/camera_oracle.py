"""How good are the camera estimate's matches on a synthetic scene, measured against ground truth.

    python scripts/camera_oracle.py SEED [--whole-grid] [--tol 1.0] [--cache /tmp/camcache]

A diagnostic, not part of the reconstruction: it renders (or reuses, in ``--cache``, as
``python -m core.recon.bench --cameras-only --cache`` does) the evaluation scene SEED at 8 x 8,
288x512, finds the verified matches the estimate would use (column 0, or with ``--whole-grid`` the
matches pooled over every time column), and prints for each view pair how many there are and
which share lands within 1.5 px of its true partner (from the rendered depth and true cameras);
with ``--whole-grid`` also that share by how many time columns the keypoints were found at (a
static point is found at every time and pooled into one keypoint); and, either way, that share where
dense flow to the next view disagrees with itself (``cameras.flow_disagreement``: silhouettes, and
repeated texture where flow fails) and where it does not.
Then it runs the estimate twice: as it is, and with only the matches ground truth calls right
(within ``--tol`` px) -- the "oracle". If the oracle passes and the estimate does not, the
matches hold enough right ones and the trouble is telling them from the wrong ones; if the
oracle fails too, the scene lacks accurate correspondences.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.recon.bench import cached_grid  # noqa: E402
from core.grid import Grid  # noqa: E402
from core.recon import cameras as C  # noqa: E402
from core.recon.api import load_gt_cameras  # noqa: E402
from core.recon.metrics import camera_errors  # noqa: E402


class Truth:
    """Where a pixel of view i at time t lands in view j, from the rendered z-depth."""

    def __init__(self, run: Path):
        self.depth = np.load(run / "depth.npz")["depth"]  # [V, T, H, W]
        self.vm = load_gt_cameras(run / "cameras.json", self.depth.shape[0])  # world -> camera
        self.K = np.array(json.loads((run / "cameras.json").read_text())["views"][0]["K"])

    def project(self, i: int, j: int, t: int, xy: np.ndarray) -> np.ndarray:
        H, W = self.depth.shape[-2:]
        x, y = xy[:, 0], xy[:, 1]
        z = self.depth[i, t][np.clip(np.round(y).astype(int), 0, H - 1), np.clip(np.round(x).astype(int), 0, W - 1)]
        cam = np.linalg.inv(self.K) @ np.stack([x, y, np.ones_like(x)]) * z
        world = self.vm[i][:3, :3].T @ (cam - self.vm[i][:3, 3:])
        p = self.K @ (self.vm[j][:3, :3] @ world + self.vm[j][:3, 3:])
        return (p[:2] / p[2]).T

    def errors(self, feats, i: int, j: int, m: np.ndarray) -> np.ndarray:
        """Pixel distance of each match (i -> j) from where ground truth puts its partner."""
        a, b = feats[i]["xy"][m[:, 0]], feats[j]["xy"][m[:, 1]]
        times = feats[i]["time"][m[:, 0]] if "time" in feats[i] else np.zeros(len(m), int)
        err = np.zeros(len(m))
        for t in np.unique(times):
            s = times == t
            err[s] = np.linalg.norm(self.project(i, j, int(t), a[s]) - b[s], axis=1)
        return err


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("seed", type=int)
    p.add_argument("--whole-grid", action="store_true", help="matches pooled over every time column")
    p.add_argument("--tol", type=float, default=1.0, help="the oracle keeps matches within this many px of the truth")
    p.add_argument("--cache", default="/tmp/camcache", help="folder of rendered scenes (reused)")
    args = p.parse_args(argv)

    run = cached_grid(args.cache, args.seed)
    grid = Grid.load_npz(run / "grid.npz")
    truth = Truth(run)
    gt = truth.vm
    images = grid.frames if args.whole_grid else grid.frames[:, 0]

    verified = C.verified_matches
    report: dict = {}
    by_times: list[tuple[np.ndarray, np.ndarray]] = []  # (error, times seen) of every verified match
    by_flow: list[tuple[np.ndarray, np.ndarray]] = []  # (error, flow disagreement px) of every verified match

    def times_seen(f: dict) -> np.ndarray:
        # at how many time columns each pooled keypoint was found (a static point merges into one)
        n = np.zeros(len(f["xy"]), int)
        for idx in f.get("local", {}).values():
            n[idx] += 1
        return n if "local" in f else np.ones(len(f["xy"]), int)

    def measured(feats, cfg, thr_px, coherence_px=np.inf, oracle=False):
        pairs = verified(feats, cfg, thr_px, coherence_px)
        out = {}
        by_times.clear()  # keep the last verification's (the one the cameras were fitted to)
        by_flow.clear()
        seen = [times_seen(f) for f in feats] if not oracle else []
        for (i, j), m in pairs.items():
            err = truth.errors(feats, i, j, m)
            report[(i, j)] = (len(m), float((err < 1.5).mean()))
            if not oracle:
                by_times.append((err, np.minimum(seen[i][m[:, 0]], seen[j][m[:, 1]])))
                if "flow_fb" in feats[i]:  # SfMConfig.occlusion_fb_px: before the matches are dropped
                    by_flow.append((err, C.match_flow_disagreement(feats, (i, j), m)))
            keep = err < args.tol
            if not oracle:
                out[(i, j)] = m
            elif keep.sum() >= cfg.min_pair_inliers:
                out[(i, j)] = m[keep]
        return out

    for oracle in (False, True):
        report.clear()
        C.verified_matches = lambda *a, **k: measured(*a, **k, oracle=oracle)
        try:
            est = C.estimate_cameras(images, C.SfMConfig(threads=1))
        finally:
            C.verified_matches = verified
        if not oracle:
            for (i, j), (n, share) in sorted(report.items()):
                print(f"pair {i}-{j}: {n} verified matches, {100 * share:.0f}% within 1.5 px of the truth")
            if args.whole_grid and by_times:
                err = np.concatenate([e for e, _ in by_times])
                seen = np.concatenate([k for _, k in by_times])
                for lo, hi in ((1, 1), (2, grid.T - 1), (grid.T, grid.T)):
                    s = (seen >= lo) & (seen <= hi)
                    if s.any():
                        print(f"keypoints found at {lo}{'' if lo == hi else f'-{hi}'} of {grid.T} times (the fewer of "
                              f"the pair): {int(s.sum())} matches, {100 * (err[s] > 1.5).mean():.0f}% more than 1.5 px off")
            if by_flow:
                err = np.concatenate([e for e, _ in by_flow])
                default = C.SfMConfig()
                fb = np.concatenate([d for _, d in by_flow]) > C.occlusion_px(default, grid.H, grid.W)
                px = f"{default.occlusion_fb_px:g} px at 512 wide"
                for name, s in ((f"disagrees with itself by more than {px}", fb), (f"agrees with itself within {px}", ~fb)):
                    if s.any():
                        print(f"keypoints where the flow to the next view {name}: {int(s.sum())} matches, "
                              f"{100 * (err[s] > 1.5).mean():.0f}% more than 1.5 px off")
                print(f"  dropping them would drop {100 * fb[err <= 1.5].mean():.0f}% of the right matches and "
                      f"{100 * fb[err > 1.5].mean():.0f}% of the wrong ones (done when they are at most "
                      f"{100 * default.occlusion_max_share:g}% of all)")
        e = camera_errors(est.viewmats, gt)
        name = f"oracle (right within {args.tol:g} px)" if oracle else "as estimated"
        ok = e["rot_deg_max"] <= 2.0 and e["tdir_deg_max"] <= 5.0
        print(f"{name}: rotation {e['rot_deg_max']:.2f} deg, translation direction {e['tdir_deg_max']:.2f} deg, "
              f"fov {est.fov_x_deg:.1f}, {est.n_registered}/{grid.V} views ({est.source}): {'PASS' if ok else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
