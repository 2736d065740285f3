"""The orbit prior of a camera estimate: views v and v+1 are neighbours on a smooth path, so the
step between them changes slowly along the views. Finds the links that break that (a view placed
one texture period off on a checkered floor), predicts the poses of such links and of views that
were not placed, and polishes the cameras from those predicted poses (guided matching + bundle
adjustment). Ground-truth cameras are never read here.
"""

from __future__ import annotations

import numpy as np

from .geometry import rodrigues


def _log_R(R: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.Rodrigues(np.asarray(R, np.float64))[0].ravel()


def orbit_steps(R: dict[int, np.ndarray], t: dict[int, np.ndarray], V: int) -> tuple[np.ndarray, np.ndarray]:
    """Per link k (view k -> k+1, both placed): the rotation step (axis-angle, degrees, [V-1, 3])
    and the unit direction of the step's translation in camera k+1's frame ([V-1, 3]); NaN rows for
    links with an unplaced end. The pose of view k in view k+1's frame: x_{k+1} = R_s x_k + t_s."""
    w = np.full((V - 1, 3), np.nan)
    d = np.full((V - 1, 3), np.nan)
    for k in range(V - 1):
        if k in R and k + 1 in R:
            Rs = R[k + 1] @ R[k].T
            ts = t[k + 1] - Rs @ t[k]
            w[k] = np.degrees(_log_R(Rs))
            n = np.linalg.norm(ts)
            d[k] = ts / n if n > 1e-12 else np.nan
    return w, d


def _fit_predict(y: np.ndarray, use: np.ndarray, k: int, degree: int) -> np.ndarray:
    """The value at index k of a polynomial (per column) fitted to rows ``use`` of y [n, c]."""
    x = np.nonzero(use)[0].astype(float)
    deg = min(degree, len(x) - 1)
    if deg < 0:
        return np.full(y.shape[1], np.nan)
    return np.array([np.polyval(np.polyfit(x, y[use, c], deg), k) for c in range(y.shape[1])])


def _neighbour_predict(y: np.ndarray, use: np.ndarray, k: int) -> tuple[np.ndarray, bool]:
    """Row k of y [n, c] from the nearest usable rows: interpolated between the nearest on either
    side, else extrapolated along a line through the two nearest on one side. Returns (value,
    whether it was extrapolated); NaN when fewer than two usable rows."""
    lo = [i for i in range(k - 1, -1, -1) if use[i]]
    hi = [i for i in range(k + 1, len(y)) if use[i]]
    if lo and hi:
        a, b = lo[0], hi[0]
        return y[a] + (y[b] - y[a]) * (k - a) / (b - a), False
    side = lo if lo else hi
    if len(side) < 2:
        return np.full(y.shape[1], np.nan), True
    a, b = side[0], side[1]  # a nearer to k
    return y[a] + (y[a] - y[b]) * (k - a) / (a - b), True


def _worst_ratio(w: np.ndarray, use: np.ndarray, tol_deg: float, rel_tol: float) -> float:
    """The largest over usable links of |step - predicted from its neighbours| / tolerance."""
    worst = 0.0
    for k in np.nonzero(use)[0]:
        others = use.copy()
        others[k] = False
        pred, extrapolated = _neighbour_predict(w, others, int(k))
        if not np.all(np.isfinite(pred)):
            continue
        tol = max(tol_deg, rel_tol * float(np.linalg.norm(pred))) * (1.5 if extrapolated else 1.0)
        worst = max(worst, float(np.linalg.norm(w[k] - pred)) / tol)
    return worst


def orbit_kinks(R: dict[int, np.ndarray], t: dict[int, np.ndarray], V: int, tol_deg: float = 3.0,
                rel_tol: float = 0.25, max_kinks: int = 2) -> list[int]:
    """Links k (view k -> k+1) whose rotation step breaks the smooth path of the others. A link's
    step is predicted from its neighbours (on the line between the nearest trusted links on either
    side; at the ends, on the line through the two nearest, with 1.5x the tolerance); the path is
    smooth when every link is within ``max(tol_deg, rel_tol x the predicted step)``. If it is not,
    the link whose removal leaves the rest smoothest is flagged, and the check repeats without it
    (at most ``max_kinks``). Needs at least 4 placed links; fewer give []."""
    w, _ = orbit_steps(R, t, V)
    use = np.isfinite(w[:, 0])
    bad: list[int] = []
    while len(bad) < max_kinks and use.sum() >= 4 and _worst_ratio(w, use, tol_deg, rel_tol) > 1.0:
        scores = []
        for k in np.nonzero(use)[0]:
            rest = use.copy()
            rest[k] = False
            scores.append((_worst_ratio(w, rest, tol_deg, rel_tol), int(k)))
        k = min(scores)[1]
        bad.append(k)
        use[k] = False
    return sorted(bad)


def predict_poses(R: dict[int, np.ndarray], t: dict[int, np.ndarray], V: int, drop_links: list[int] = ()
                  ) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Every view's pose from the placed ones, following the orbit: each link that is missing (an
    unplaced end) or dropped (``drop_links``) gets the step (rotation and translation, in the next
    camera's frame) that a quadratic through the trusted links predicts; the poses are then chained
    from the first placed view across trusted links as estimated and other links as predicted.
    Within a run of trusted links the relative poses are kept exactly."""
    placed = sorted(R)
    steps_R, steps_t = {}, {}
    for k in range(V - 1):
        if k in R and k + 1 in R and k not in drop_links:
            Rs = R[k + 1] @ R[k].T
            steps_R[k], steps_t[k] = Rs, t[k + 1] - Rs @ t[k]
    trusted = np.zeros(V - 1, bool)
    trusted[list(steps_R)] = True
    W = np.zeros((V - 1, 3))
    Tt = np.zeros((V - 1, 3))
    for k in steps_R:
        W[k], Tt[k] = _log_R(steps_R[k]), steps_t[k]
    deg = 2 if trusted.sum() >= 5 else (1 if trusted.sum() >= 3 else 0)
    for k in range(V - 1):
        if not trusted[k]:
            if trusted.any():
                w = _fit_predict(W, trusted, k, deg)
                ts = _fit_predict(Tt, trusted, k, deg)
            else:  # no trusted link at all: no motion (cannot happen with two placed neighbours)
                w, ts = np.zeros(3), np.zeros(3)
            steps_R[k], steps_t[k] = rodrigues(w), ts
    # chain from the first placed view, forwards and backwards
    a = placed[0]
    Rn, tn = {a: R[a].copy()}, {a: t[a].copy()}
    for k in range(a, V - 1):  # k -> k+1: T_{k+1} = S_k T_k
        Rn[k + 1] = steps_R[k] @ Rn[k]
        tn[k + 1] = steps_R[k] @ tn[k] + steps_t[k]
    for k in range(a - 1, -1, -1):  # T_k = S_k^-1 T_{k+1}
        Rinv = steps_R[k].T
        Rn[k] = Rinv @ Rn[k + 1]
        tn[k] = Rinv @ (tn[k + 1] - steps_t[k])
    return Rn, tn


def views_seen(rec, min_obs: int = 12) -> int:
    """How many views of a reconstruction see at least ``min_obs`` triangulated points."""
    cams, _, _ = rec.observations()
    if len(cams) == 0:
        return 0
    return int((np.bincount(cams, minlength=max(rec.R) + 1) >= min_obs).sum())


def polish_from_poses(rec0, pairs: dict, cfg, H: int, W: int, thr: float, optimise_focal: bool,
                      window_scale: float = 1.0):
    """A reconstruction started from ``rec0``'s poses (every view posed, e.g. by ``predict_poses``):
    its tracks re-triangulated with those poses, guided matching around the poses' predictions,
    then bundle adjustment rounds with outlier removal (as ``_sfm_with_focal`` ends). Returns
    (reconstruction, RMS px) or (None, nan) when too little fits."""
    from .cameras import _polish, _Recon, build_tracks, guided_matches, merge_pairs

    V = len(rec0.feats)
    rec0.X[:] = np.nan
    rec0.triangulate_tracks(4 * thr, cfg.min_tri_angle_deg, only_new=False, min_obs=2)
    if int(np.isfinite(rec0.X[:, 0]).sum()) < 12:
        return None, float("nan")
    guided = guided_matches(rec0, cfg, window_px=window_scale * cfg.guided_window * max(H, W), epi_px=thr)
    merged = merge_pairs(pairs, guided)
    if not merged:
        return None, float("nan")
    tracks = build_tracks(merged, [len(f["xy"]) for f in rec0.feats])
    rec = _Recon(rec0.feats, tracks, rec0.focal, H, W)
    rec.R = {v: rec0.R[v].copy() for v in rec0.R}
    rec.t = {v: rec0.t[v].copy() for v in rec0.t}
    min_obs = 3 if V >= cfg.three_view_from else 2
    rec.triangulate_tracks(4 * thr, cfg.min_tri_angle_deg, only_new=False, min_obs=min_obs)
    if int(np.isfinite(rec.X[:, 0]).sum()) < 12:
        return None, float("nan")
    rms = _polish(rec, min(rec.R), cfg, thr, min_obs, optimise_focal and V >= 3)
    return rec, rms


def orbit_deviation(viewmats: np.ndarray) -> tuple[float, float]:
    """How far cameras ([V, 4, 4] world -> camera) are from one level orbit around one point:
    (the largest roll in degrees, a camera's x axis off the plane perpendicular to the up
    direction that suits all of them best; the largest angle in degrees between an optical axis
    and the direction to the point nearest all the axes). Ground-truth orbits of the synthetic
    world give (0, 0); NaN where it is not defined (fewer than 3 views; axes nearly parallel)."""
    vm = np.asarray(viewmats, np.float64)
    if len(vm) < 3:
        return float("nan"), float("nan")
    X, Z = vm[:, 0, :3], vm[:, 2, :3]  # each camera's x and optical axes, in the world
    up = np.linalg.eigh(X.T @ X)[1][:, 0]  # the direction most nearly perpendicular to every x axis
    roll = float(np.degrees(np.arcsin(np.clip(np.abs(X @ up), 0.0, 1.0))).max())
    C = -np.einsum("vji,vj->vi", vm[:, :3, :3], vm[:, :3, 3])
    P = np.eye(3)[None] - Z[:, :, None] * Z[:, None, :]  # projectors across each axis
    A, b = P.sum(0), np.einsum("vij,vj->i", P, C)
    w = np.linalg.eigvalsh(A)
    if w[0] < 1e-3 * w[-1]:  # the axes are (nearly) parallel: no common point
        return roll, float("nan")
    d = np.linalg.solve(A, b) - C
    cos = np.einsum("vi,vi->v", d, Z) / np.maximum(np.linalg.norm(d, axis=1), 1e-12)
    return roll, float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).max())
