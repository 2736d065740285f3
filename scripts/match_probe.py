"""Which of the camera estimate's verified matches are wrong, measured against ground truth.

    python scripts/match_probe.py SEED[,SEED...] [--cache DIR] [--affine]

For each seed's column 0 (the frozen instant the camera estimate starts from), the keypoints and
verified matches are made exactly as ``estimate_cameras`` makes them (SIFT, ratio test, coherence,
fundamental-matrix RANSAC, chain check; ``--affine``: the affine-simulated fallback's features).
Each match a -> b is then checked against the truth: the keypoint in view a is lifted to 3D with
the true depth and carried into view b with the true cameras; a match whose keypoint in b lies more
than 2 px from there is wrong. Printed per seed and per band of true depth: matches, the share
wrong, the median transfer error and the median Sampson distance to the true epipolar geometry
(small for a match that slid along its epipolar line). Grids are the camera bench's
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

BANDS = ((0.0, 5.0), (5.0, 9.0), (9.0, 15.0), (15.0, np.inf))


def transfer(xy: np.ndarray, z: np.ndarray, vm_a: np.ndarray, vm_b: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Keypoints ``xy`` [m, 2] of view a (pixel centres at +0.5, as ``detect_features`` gives them)
    at camera depth ``z`` [m], carried into view b: [m, 2] in the same convention. ``vm`` are
    world -> camera [4, 4] (OpenCV), ``K`` the synthetic world's intrinsics (pixel centres at integers)."""
    p = np.c_[xy - 0.5, np.ones(len(xy))] @ np.linalg.inv(K).T * z[:, None]  # camera a
    world = (p - vm_a[:3, 3]) @ vm_a[:3, :3]  # R^T (p - t)
    q = world @ vm_b[:3, :3].T + vm_b[:3, 3]
    return q[:, :2] / q[:, 2:3] @ K[:2, :2].T + K[:2, 2] + 0.5


def probe(run: Path, affine: bool = False) -> list[dict]:
    """Per band of true depth: matches, share wrong (> 2 px), median transfer and Sampson px."""
    from core.grid import Grid
    from core.recon.api import load_gt_cameras
    from core.recon.cameras import SfMConfig, _detect_many, affine_fallback_config, checked_matches, sampson_px

    grid = Grid.load_npz(run / "grid.npz")
    V, _, H, W = grid.frames.shape[:4]
    gt = load_gt_cameras(run / "cameras.json", V)
    K = np.array(json.loads((run / "cameras.json").read_text())["views"][0]["K"])
    depth = np.load(run / "depth.npz")["depth"][:, 0]
    cfg = SfMConfig(threads=1)
    if affine:
        cfg = affine_fallback_config(cfg)
    feats = _detect_many(list(grid.frames[:, 0]), cfg)
    _, pairs = checked_matches(feats, cfg, H, W)
    err, zs, samp = [], [], []
    for (a, b), m in sorted(pairs.items()):
        xa, xb = feats[a]["xy"][m[:, 0]], feats[b]["xy"][m[:, 1]]
        ij = np.clip(np.floor(xa).astype(int), 0, [W - 1, H - 1])
        z = depth[a, ij[:, 1], ij[:, 0]].astype(np.float64)
        seen = z > 0  # 0: the keypoint sees the sky
        err.append(np.linalg.norm(transfer(xa[seen], z[seen], gt[a], gt[b], K) - xb[seen], axis=1))
        zs.append(z[seen])
        samp.append(sampson_px(xa[seen] - 0.5, xb[seen] - 0.5, gt[a], gt[b], K, K))
    if not err:
        return []
    e, z, s = np.concatenate(err), np.concatenate(zs), np.concatenate(samp)
    rows = []
    for lo, hi in ((0.0, np.inf),) + BANDS:
        sel = (z >= lo) & (z < hi)
        if sel.any():
            rows.append({"depth": f"{lo:g}-{hi:g}", "matches": int(sel.sum()), "wrong": float(np.mean(e[sel] > 2.0)),
                         "transfer_px": float(np.median(e[sel])), "sampson_px": float(np.median(s[sel]))})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("seeds", help="SEED[,SEED...]")
    p.add_argument("--cache", type=Path, default=Path("/tmp/camcache"), help="the camera bench's grid folder")
    p.add_argument("--affine", action="store_true", help="the affine-simulated fallback's features")
    args = p.parse_args(argv)
    from core.recon.bench import cached_grid

    for seed in (int(s) for s in args.seeds.split(",")):
        run = cached_grid(args.cache, seed)
        rows = probe(run, args.affine)
        if not rows:
            print(f"{seed}: no pair of views kept verified matches of seen points", flush=True)
        for r in rows:
            print(f"{seed} depth {r['depth']:>8}: {r['matches']:5d} matches, {100 * r['wrong']:5.1f} % wrong (> 2 px), "
                  f"median transfer {r['transfer_px']:7.2f} px, Sampson {r['sampson_px']:5.2f} px", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
