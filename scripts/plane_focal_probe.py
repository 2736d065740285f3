"""How well the floor alone determines the focal length, measured against ground truth.

    python scripts/plane_focal_probe.py SEED[,SEED...] [--cache DIR] [--matcher sift|flow] [--texture T]

Plane-based self-calibration: the floor's homography from view 0 to view i, taken to Euclidean
form with a candidate focal length, decomposes into a rotation, a translation and the floor's
normal in view 0's frame (``cv2.decomposeHomographyMat``); at the right focal length every view
gives one and the same normal. The probe scans the field of view (30-94.5 deg, 0.5 deg steps) for
the one where the views' normals agree best, from three sets of floor homographies between
neighbouring views, chained from view 0:
- the true ones (from the true cameras and the floor plane z = 0: how well the idea works at all),
- SIFT matches + MAGSAC (``--matcher sift``) or dense DIS flow checked forward-backward
  (``--matcher flow``, ``--texture`` the min-eigenvalue threshold, low so smooth noise floors count),
and prints, per seed, the true field of view, both estimates, and how far the measured homographies
lie from the true ones (mean px over the lower half of the frame). Grids are the camera bench's
(``python -m core.recon.bench --cameras-only --cache DIR``; rendered here when missing).
A diagnostic for the camera estimate (core/recon/cameras.py); reconstruction never reads ground truth.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def _sift_h(a: np.ndarray, b: np.ndarray, sift) -> np.ndarray | None:
    ka, da = sift.detectAndCompute(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), None)
    kb, db = sift.detectAndCompute(cv2.cvtColor(b, cv2.COLOR_RGB2GRAY), None)
    if da is None or db is None or len(ka) < 8 or len(kb) < 8:
        return None
    good = [p[0] for p in cv2.BFMatcher().knnMatch(da, db, k=2) if len(p) == 2 and p[0].distance < 0.8 * p[1].distance]
    if len(good) < 8:
        return None
    pa = np.float32([ka[g.queryIdx].pt for g in good])
    pb = np.float32([kb[g.trainIdx].pt for g in good])
    H, _ = cv2.findHomography(pa, pb, cv2.USAC_MAGSAC, 1.5, maxIters=5000, confidence=0.999)
    return None if H is None else H / H[2, 2]


def _flow_h(a: np.ndarray, b: np.ndarray, texture: float) -> np.ndarray | None:
    from flow_probe import flow_matches

    xa, xb, _, _ = flow_matches(a, b, "medium", 4, 0.5, texture)
    if len(xa) < 20:
        return None
    H, _ = cv2.findHomography(xa.astype(np.float32), xb.astype(np.float32), cv2.USAC_MAGSAC, 1.0,
                              maxIters=5000, confidence=0.999)
    return None if H is None else H / H[2, 2]


def _normals(H: np.ndarray, K: np.ndarray) -> list[np.ndarray]:
    out = []
    for n in cv2.decomposeHomographyMat(H, K)[3]:
        n = n[:, 0] / np.linalg.norm(n)
        out.append(-n if n[1] > 0 else n)  # the floor's normal points up: -y in OpenCV camera axes
    return out


def normal_spread(Hs: list[np.ndarray], W: int, H: int, fov: float) -> float:
    """RMS angle (deg) between each view's best-agreeing floor normal and their common mean."""
    from core.recon.geometry import focal_from_fov, intrinsics

    K = intrinsics(focal_from_fov(fov, W), H, W)
    cands = [_normals(h, K) for h in Hs]
    best = float("inf")
    for start in [n for c in cands for n in c]:
        n = start
        for _ in range(3):
            pick = [max(c, key=lambda m: float(m @ n)) for c in cands]
            n = np.mean(pick, 0)
            n /= np.linalg.norm(n)
        ang = [math.degrees(math.acos(float(np.clip(p @ n, -1, 1)))) for p in pick]
        best = min(best, float(np.sqrt(np.mean(np.square(ang)))))
    return best


def true_floor_hs(cams: dict, V: int) -> list[np.ndarray]:
    """Homographies of the floor (z = 0) from view i to view i + 1, from the true cameras."""
    g = np.array([[x, y, 0.0, 1.0] for x in (-1, 1, 0.5) for y in (-1, 1, 0.3)])

    def proj(i):
        pc = (np.array(cams["views"][i]["viewmat"]) @ g.T).T[:, :3]
        uv = (np.array(cams["views"][i]["K"]) @ pc.T).T
        return (uv[:, :2] / uv[:, 2:]).astype(np.float32)

    return [cv2.findHomography(proj(i), proj(i + 1))[0] for i in range(V - 1)]


FOVS = np.arange(30, 95, 0.5)  # the scanned fields of view (deg)


def best_fov(links: list[np.ndarray], W: int, H: int) -> float:
    """The scanned field of view at which the chained homographies ``links`` (view i -> i + 1)
    agree best on one floor normal."""
    Hs = _chain(links)
    return float(FOVS[int(np.argmin([normal_spread(Hs, W, H, f) for f in FOVS]))])


def _chain(links: list[np.ndarray]) -> list[np.ndarray]:
    out, acc = [], np.eye(3)
    for h in links:
        acc = h @ acc
        out.append(acc / acc[2, 2])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("seeds", help="comma-separated evaluation seeds")
    p.add_argument("--cache", type=Path, default=Path("/tmp/camcache"))
    p.add_argument("--matcher", choices=["sift", "flow"], default="sift")
    p.add_argument("--texture", type=float, default=1e-7, help="with --matcher flow: min-eigenvalue threshold")
    args = p.parse_args(argv)
    from core.recon.bench import cached_grid
    from core.grid import Grid
    from core.recon.geometry import fov_from_focal

    sift = cv2.SIFT_create(nfeatures=4000)
    for s in (int(x) for x in args.seeds.split(",")):
        run = cached_grid(args.cache, s)
        frames = Grid.load_npz(run / "grid.npz").frames[:, 0]
        cams = json.loads((run / "cameras.json").read_text())
        V, H, W = frames.shape[:3]
        fov_true = fov_from_focal(cams["views"][0]["K"][0][0], W)
        truth = true_floor_hs(cams, V)
        links = [_sift_h(frames[v], frames[v + 1], sift) if args.matcher == "sift"
                 else _flow_h(frames[v], frames[v + 1], args.texture) for v in range(V - 1)]
        ys, xs = np.mgrid[H // 2:H:16, 0:W:16]
        q = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
        off = []
        for h, t in zip(links, truth):
            if h is None:
                off.append(float("nan"))
                continue
            a, b = h @ q, t @ q
            off.append(float(np.linalg.norm(a[:2] / a[2] - b[:2] / b[2], axis=0).mean()))
        from_truth = best_fov(truth, W, H)
        measured = ("no homography for every link" if any(h is None for h in links)
                    else f"{best_fov(links, W, H):.1f} deg")
        print(f"{s}: true fov {fov_true:.1f} deg; from the true floor homographies {from_truth:.1f} deg, "
              f"from {args.matcher} {measured}; measured links off the true floor homography by "
              f"{', '.join(f'{o:.2f}' for o in off)} px", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
