"""Cameras of a grid's views estimated from the frames alone: SIFT features, two-view geometry,
incremental registration with PnP, multi-view triangulation and bundle adjustment.

Views that PnP from the tracks cannot reach (a checker floor leaves few tracks through three
views) are placed last by guided registration: predicted along the orbit, matched to the points
near their predicted projections, PnP (``_register_guided``).

The input is one image per view (the freeze-time column, so the scene is frozen between them).
The output is a ``CameraEstimate``: world -> camera matrices, one shared focal length (searched,
then refined, unless given), the triangulated points and their colours (the Gaussians' seed),
normalised so the scene centre is at the origin and the mean camera distance to it is 1.
If the features cannot carry the estimate, ``orbit_prior`` gives an evenly spaced arc instead.
Ground-truth cameras are never read here.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError
from .geometry import camera_centres, focal_from_fov, fov_from_focal, intrinsics, rodrigues
from .vanishing import direction_spread, one_family, view_vanishing_points, world_directions

TWO_VIEW_TRACKS = 1 << 30  # a ``SfMConfig.three_view_from`` no grid reaches: points seen by two views count


@dataclass
class SfMConfig:
    """Settings of the camera estimate (defaults suit 64..1024-pixel frames)."""

    max_features: int = 4000  # SIFT keypoints per image
    min_detect_side: int = 360  # smaller images are upsampled to this shorter side before SIFT
    contrast_threshold: float = 0.015  # SIFT's (default 0.04): generated frames are soft
    # keypoints whose neighbourhood is an edge rather than a corner are dropped: the smaller over
    # the larger eigenvalue of the structure tensor (gradients integrated over a Gaussian of
    # ``corner_sigma`` pixels of the frame) must reach this (``cornerness``; 0: off). A keypoint
    # on a straight edge (a stripe of the floor) has no position along the edge, and its match
    # slides along it. Off by default: at 0.05 for every estimate 1000000044, 45 and 11 passed, but
    # 04, 08 and 14 were lost (it also drops blobs in the middle of checker squares, no gradient
    # within 2 px; and far checker corners look like edges); the affine fallback uses it as a
    # second candidate instead (``affine_fallback_cornerness``)
    min_cornerness: float = 0.0
    corner_sigma: float = 2.0
    # > 1: affine-simulated SIFT (OpenCV AffineFeature, tilts up to this) for floors seen at a
    # grazing angle; off by default. From column 0 alone it placed every view of 1000000011, 14,
    # 15, 18 and 19 (guided registration only on 11), 2.05-3.70 deg off (plain SIFT: 3.6-12.2
    # deg), at 8.5-135 s a grid on one CPU core instead of 2-17 s
    affine_max_tilt: int = 0
    # when column 0's plain SIFT cannot place every view by ordinary registration, try column 0
    # again with affine-simulated SIFT up to this tilt (``affine_fallback_config``; 0: off); see
    # ``api.grid_cameras`` for which estimate is kept
    affine_fallback: int = 2
    # ... and also when the estimate about to be kept moved its field of view by more than this
    # (degrees) from its first fit (``CameraEstimate.fov_first_deg``): guided matches that pulled
    # the focal length away. 1000000015's whole grid: 59.3 -> 66.9 deg in the guided round, 12.2
    # deg off (affine features: 1.1); the kept estimates of the passing seeds moved 0-2.5 deg (None: off)
    affine_fallback_fov_shift: float | None = 5.0
    # the affine fallback is made a second time without the keypoints on edges (``min_cornerness``
    # at this; 0: off) and that estimate replaces the first when it places every view as well
    # and its RMS reprojection error is below ``affine_cornerness_rms_ratio`` x the first's: the
    # fallback's two-view tracks have no third view to refuse a match that slid along a stripe's
    # edge, and such matches fit no camera motion. 1000000044 (striped floor): 0.631 -> 0.379 px,
    # 13.47 -> 0.72 deg. Where the fallback passes it gave 0.98-1.36 x the RMS and 2.0-3.5 deg
    # (1000000014, 15, 18, 19: far checker corners look like edges at 2 px), so it stays a second
    # candidate, not the fallback's own setting. The 0.8 was chosen on 1000000000-59 (only 44 gained)
    affine_fallback_cornerness: float = 0.05
    affine_cornerness_rms_ratio: float = 0.8
    # RootSIFT descriptors (Arandjelovic & Zisserman 2012: each SIFT descriptor L1-normalised, then
    # its square root, so that Euclidean distance compares them as the Hellinger kernel does). Off:
    # on 58 of the seeds 1000000000-79 it passed 33 against plain SIFT's 41 (docs/cameras.md)
    root_sift: bool = False
    ratio: float = 0.8  # Lowe's ratio test
    # a match must also beat each keypoint's nearest look-alike in its own image by this ratio: a
    # checker corner looks like every other corner of its floor, and one period off still passes
    # the ratio test after a large view change (None: off). 0.8 on column 0 of 1000000008: right
    # matches of neighbouring views 25% -> 45%, but seeds 01 and 04 lost (too few matches left)
    self_ratio: float | None = None
    chain_check: bool = True  # pairs beyond neighbours must agree with the chain of neighbours (``chain_check``)
    chain_min_frac: float = 0.25  # ``chain_check``'s share of a pair's matches that the chain must confirm
    # the fundamental-matrix estimator of verified matches: "ransac" | "magsac" (MAGSAC: more right
    # inliers on checker floors, but 1000000017 2.22 deg instead of 1.49, and 15..19 no better)
    robust: str = "ransac"
    pair_window: int = 4  # match view i with views i+1 .. i+window
    min_pair_inliers: int = 16  # a verified pair needs this many matches
    ransac_px: float = 1.5  # epipolar / PnP threshold, in pixels of a 512-wide image (scaled)
    coherence: float = 0.012  # a match may differ from its neighbours' motion by this x image size
    # matches whose keypoint (in either view) lies where dense optical flow to the neighbouring view
    # disagrees with itself, forward against backward, by more than this (px of a 512-wide image,
    # scaled; the largest disagreement within 9 px at 512) are dropped (``flow_disagreement``): at a
    # silhouette a keypoint mixes the object with the background behind it, and its match slides
    # (whole grids of 1000000062..71: 42-80 % of the matches where the true depth jumps are wrong,
    # 13-32 % elsewhere). Only where flow mostly agrees with itself: a verification that would
    # lose more than ``occlusion_max_share`` of its matches keeps them all, since flow fails over
    # whole checker and striped floors too, where it tells right matches from wrong no better than
    # chance (1000000004: 52 % of the right and 78 % of the wrong ones). 0: off. Seeds
    # 1000000000..79 at 8x8, 288x512: 55 -> 57 of 80 pass (22, 23 and 71 gained, 17 lost), the 4 px
    # and 0.2 chosen on 04, 08, 44, 59, 62, 65, 68 and 71 (docs/cameras.md)
    occlusion_fb_px: float = 4.0
    occlusion_max_share: float = 0.2
    three_view_from: int = 4  # grids with this many views keep only points seen by 3+ views
    final_two_view: bool = True  # whole grid: the last bundle adjustment takes two-view tracks that fit
    whole_grid: bool = False  # the reconstruction pools every training cell's matches (see estimate_cameras)
    # when column 0 alone cannot place every view, try again pooling the whole grid and keep the
    # estimate that places more views (checker floors: 6/10 -> 8/10 evaluation seeds pass)
    whole_grid_fallback: bool = True
    # a grid of several times: start from the whole grid's pooled matches, and try column 0 alone
    # only when they cannot place every view (False: column 0 first, the whole grid as the fallback).
    # Evaluation seeds 1000000000..09 at 8x8, 288x512: 8/10 pass this way, 6/10 column 0 first; but
    # on the 4x2 toy at 72x128 the pool is worse (3.3 deg against 0.6), so it is not the default yet
    whole_grid_first: bool = False
    # a grid of several times whose column 0 places every view: estimate from the whole grid as
    # well and keep the estimate whose cameras fit held-out matches better (``heldout_matches``:
    # views further apart than ``pair_window`` in columns 1.., which neither estimate was fitted
    # to); a grid without such matches (e.g. V <= pair_window + 1, the 4x2 toy) keeps column 0.
    # Evaluation seeds 1000000000..09 at 8x8, 288x512: 8/10 pass (column 0 first: 6/10)
    choose_heldout: bool = True
    # ... and when column 0 is kept (no held-out matches, or they chose it), the whole grid's
    # estimate is made anyway and replaces it when it places every view by ordinary registration
    # and the two fields of view differ by more than this (degrees; None: off). A focal length
    # off by 5-15 deg turns every rotation step by 10-30 %; where the two disagreed that much on
    # seeds 1000000000..39 the whole grid was right or both were wrong (1000000020: column 0
    # 66.6 deg, 7.44 deg off; whole grid 53.7, true 51.4, passes). A grid whose estimate still
    # disagrees with the other that much is warned about.
    fov_cross_check: float | None = 5.0
    guided: bool = True  # a second round of matching guided by the first cameras
    guided_window: float = 0.02  # its search radius around the predicted position, x image size
    # the guided round is kept only when it places more views or its RMS error stays within this
    # factor of the first estimate's: a fit several times worse took wrong guided matches (on
    # seeds 1000000000..19 the ratio was 1.3-2.8 except 1000000001 (4.2, 4.9) and 1000000013
    # (11.9 on column 0: 1.17 deg -> 3.10, a narrow fail; 3.7 on the whole grid: 0.22 -> 0.62))
    guided_max_rms_ratio: float = 3.0
    # the orbit prior (``orbit.py``): neighbouring views are close on a smooth path. With every
    # view placed, a link whose rotation step breaks the path (a view placed one checker period
    # off) gets the step the other links predict, and the cameras are polished from there
    # (guided matching + bundle adjustment); kept when the kink is gone
    orbit_repair: bool = True
    # when views are still unplaced after the guided round, register again: a view PnP from the
    # tracks cannot place is predicted along the orbit and placed from the points matched near
    # their predicted projections (``_register_guided``). Evaluation seeds 1000000000..19 at 8x8,
    # 288x512: 12 -> 13 of 20 pass (1000000008: 3 of 8 views -> 8, 1.39 deg); 11, 18 and 19 place
    # every view as well but on a wrong focal length (10-17 deg off) and still fail
    guided_register: bool = True
    guided_register_window: float = 0.05  # its first search radius, x image size (then a quarter)
    guided_register_min: int = 15  # PnP inliers it needs
    min_tri_angle_deg: float = 1.0  # a point needs this much parallax between some two rays
    fov_x_deg: float | None = None  # a known horizontal field of view; None = estimate it
    fov_candidates: tuple[float, ...] = (50.0, 35.0, 70.0)  # starting points, tried until one fits well
    ba_iters: int = 40
    # > 0: when every view is placed and the views' dominant vanishing points look like one line
    # family (``vanishing.one_family``), a last bundle adjustment holds each view's rotation to its
    # vanishing point (``bundle_adjust``'s ``vps``), at this weight relative to the view's point
    # observations (``_vanishing_round``). Off by default: on the twelve of 1000000020..59 where it
    # applies at 1.0 it turned the rotations of 41 and 44 from 11.2 / 13.5 deg off to 2.6 / 3.3,
    # but their translation directions stayed 11-27 deg off (the wrong matches of striped floors
    # pull the baselines too), and no seed changed from failing to passing (README)
    vanishing_weight: float = 0.0
    # ... only when the estimate's rays towards them spread by more than this (degrees, ``vp_spread``):
    # on 1000000020..59 the estimates that passed spread 0.47-1.39 deg, and held to the vanishing
    # points anyway 1000000053 went from 0.79 to 2.06 deg off (its points are 0.9 deg apart under
    # the true cameras)
    vanishing_min_spread_deg: float = 2.0
    min_registered_frac: float = 0.75  # below this many views placed, fall back to the orbit prior
    max_times: int = 8  # a whole grid given: match within at most this many time columns (evenly spaced)
    threads: int = 0  # feature detection threads (0: one per CPU core, at most 16)


@dataclass
class CameraEstimate:
    viewmats: np.ndarray  # [V, 4, 4] world -> camera (OpenCV)
    Ks: np.ndarray  # [V, 3, 3]
    points: np.ndarray  # [M, 3] triangulated scene points
    colors: np.ndarray  # [M, 3] in 0..1
    source: str  # "features" or "orbit-prior"
    fov_x_deg: float
    reproj_px: float = float("nan")  # RMS reprojection error after bundle adjustment
    n_registered: int = 0
    n_guided: int = 0  # of those, views placed by guided registration (``_register_guided``)
    # the field of view of the first fit (before the guided round, guided registration and the
    # orbit repair); far from ``fov_x_deg`` when those rounds pulled the focal length away
    fov_first_deg: float = float("nan")
    warnings: list[str] = field(default_factory=list)
    scene_centre: np.ndarray = field(default_factory=lambda: np.zeros(3))
    scene_scale: float = 1.0  # radius that holds most of the points (after normalisation)
    up: np.ndarray = field(default_factory=lambda: np.array([0.0, -1.0, 0.0]))  # world up, estimated


# Fields of view (across) outside which a camera estimate is suspect: most video cameras lie
# within them, and on 60 evaluation scenes every estimate within 2 deg of the truth did too (48-63 deg).
USUAL_FOV_DEG = (30.0, 75.0)


def unusual_fov_warnings(est: CameraEstimate, cfg: SfMConfig) -> list[str]:
    """A warning when the features set the field of view outside ``USUAL_FOV_DEG`` (not when the
    field of view was given, nor for the orbit prior, which assumes one)."""
    lo, hi = USUAL_FOV_DEG
    if cfg.fov_x_deg is not None or est.source == "orbit-prior" or lo <= est.fov_x_deg <= hi:
        return []
    return [f"the estimated field of view, {est.fov_x_deg:.1f} deg across, is outside the {lo:g}-{hi:g} deg "
            "of most video cameras, so the cameras are likely wrong; give the field of view if it is known "
            "(reconstruct --fov DEG)"]


# Cameras placed from features that stray this far from one level orbit around one point
# (``orbit.orbit_deviation``: a camera's roll, or an optical axis off the common point, in degrees)
# are warned about. On the evaluation scenes 1000000000-59 (8x8 at 288x512, the default
# estimate) the 46 estimates within 2 deg / 5 deg of the truth strayed at most 0.43 deg in roll and
# 0.23 deg in aim; of the 14 that were not, 7 (rotations 6.9-67 deg off) strayed 1.0-4.3 deg in
# roll (aim 0.4-17.6) and are warned about, the other 7 (2.2-7.0 deg off) only 0.09-0.62 / 0.03-0.33
# (a wrong focal length keeps the orbit's shape)
OFF_ORBIT_DEG = 0.75


def off_orbit_warnings(est: CameraEstimate) -> list[str]:
    """A warning when cameras placed from features stray from one level orbit around one point
    by more than ``OFF_ORBIT_DEG``: the freeze-time column is most often filmed that way, and
    the wrong estimates seen so far strayed where the right ones did not."""
    from .orbit import orbit_deviation

    if est.source != "features":
        return []
    roll, aim = orbit_deviation(est.viewmats)
    if not (roll > OFF_ORBIT_DEG or aim > OFF_ORBIT_DEG):
        return []
    what = ([f"a camera turned {roll:.1f} deg about its axis"] if roll > OFF_ORBIT_DEG else []) + \
        ([f"an axis {aim:.1f} deg off the point the others look at"] if aim > OFF_ORBIT_DEG else [])
    return [f"the estimated cameras do not follow one level arc around one point ({', '.join(what)}); if the "
            "freeze-time video was filmed that way, the cameras are likely several degrees off"]


# ---------------------------------------------------------------------------------------------
# 1. Features and matches


def detect_features(images: np.ndarray, cfg: SfMConfig) -> list[dict]:
    """SIFT keypoints per image: dicts with 'xy' [n, 2] (pixels), 'desc' [n, 128], 'rgb' [n, 3] 0..1."""
    import cv2

    H, W = images.shape[1:3]
    up = max(1.0, cfg.min_detect_side / min(H, W))
    sift = cv2.SIFT_create(nfeatures=cfg.max_features, contrastThreshold=cfg.contrast_threshold)
    if cfg.affine_max_tilt > 1:
        sift = cv2.AffineFeature_create(sift, maxTilt=int(cfg.affine_max_tilt), minTilt=0,
                                        tiltStep=math.sqrt(2), rotateStepBase=72)
    feats = []
    for img in images:
        gray = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
        if up > 1:
            gray = cv2.resize(gray, (round(W * up), round(H * up)), interpolation=cv2.INTER_CUBIC)
        kps, desc = sift.detectAndCompute(gray, None)
        if desc is None or not kps:
            feats.append({"xy": np.zeros((0, 2)), "desc": np.zeros((0, 128), np.float32), "rgb": np.zeros((0, 3))})
            continue
        # pixel centres: SIFT reports positions in upsampled pixel units, centre at +0.5
        xy = (np.array([k.pt for k in kps], dtype=np.float64) + 0.5) / up
        if cfg.min_cornerness > 0:
            keep = cornerness(gray, xy * up - 0.5, cfg.corner_sigma * up) >= cfg.min_cornerness
            xy, desc = xy[keep], desc[keep]
            if not len(xy):
                feats.append({"xy": np.zeros((0, 2)), "desc": np.zeros((0, 128), np.float32), "rgb": np.zeros((0, 3))})
                continue
        ij = np.clip(np.floor(xy).astype(int), 0, [W - 1, H - 1])
        desc = desc.astype(np.float32)
        if cfg.root_sift:
            desc = np.sqrt(desc / np.maximum(desc.sum(axis=1, keepdims=True), 1e-7))
        f = {"xy": xy, "desc": desc, "rgb": img[ij[:, 1], ij[:, 0]] / 255.0}
        if cfg.self_ratio is not None:  # only the self-ratio test reads it (an n x n search)
            f["self"] = self_distance(desc)
        feats.append(f)
    return feats


def cornerness(gray: np.ndarray, xy: np.ndarray, sigma: float) -> np.ndarray:
    """[n]: at each point ``xy`` [n, 2] (pixel coordinates of ``gray``, centres at integers), the
    smaller over the larger eigenvalue of the structure tensor (Sobel gradients, products
    integrated over a Gaussian of ``sigma`` pixels): about 1 at a corner, about 0 on a straight
    edge, where a point has no position along the edge, and 0 where there is no gradient."""
    import cv2

    g = gray.astype(np.float32) / 255.0
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    H, W = g.shape
    ij = np.clip(np.round(xy).astype(int), 0, [W - 1, H - 1])
    a, b, c = (cv2.GaussianBlur(p, (0, 0), sigma)[ij[:, 1], ij[:, 0]].astype(np.float64)
               for p in (gx * gx, gx * gy, gy * gy))
    half_tr = (a + c) / 2
    disc = np.sqrt(np.maximum(half_tr ** 2 - (a * c - b * b), 0.0))
    return np.where(half_tr + disc > 1e-12, (half_tr - disc) / np.maximum(half_tr + disc, 1e-12), 0.0)


def self_distance(desc: np.ndarray) -> np.ndarray:
    """[n]: each descriptor's distance to its nearest other descriptor of the same image (inf when
    alone): small on repeated textures (checker corners, stripes), large on distinctive points."""
    if len(desc) < 2:
        return np.full(len(desc), np.inf, np.float32)
    t = torch.from_numpy(np.ascontiguousarray(desc, np.float32))
    out = np.empty(len(desc), np.float32)
    for a in range(0, len(t), 2048):
        d = torch.cdist(t[a:a + 2048], t)  # [b, n]
        d[torch.arange(d.shape[0]), torch.arange(a, a + d.shape[0])] = float("inf")
        out[a:a + d.shape[0]] = d.min(1).values.numpy()
    return out


@contextmanager
def seeded_cv2(seed: int = 0):
    """OpenCV's robust estimators (RANSAC, MAGSAC, PnP) drawn the same way whatever the thread
    count: one thread and a fixed RNG seed inside, the thread count restored afterwards."""
    import cv2

    n = cv2.getNumThreads()
    cv2.setNumThreads(1)
    cv2.setRNGSeed(seed)
    try:
        yield
    finally:
        cv2.setNumThreads(n)


def _map_threads(fn, items: list, threads: int) -> list:
    """``[fn(x) for x in items]`` in ``threads`` threads (0: one per core, at most 16); OpenCV
    releases the GIL."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    n = threads or min(16, os.cpu_count() or 1)
    if n <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(n) as ex:
        return list(ex.map(fn, items))


def _detect_many(images: list[np.ndarray], cfg: SfMConfig) -> list[dict]:
    """``detect_features`` of many images, in threads."""
    return _map_threads(lambda img: detect_features(img[None], cfg)[0], images, cfg.threads)


def pooled_features(frames: np.ndarray, usable: np.ndarray, cfg: SfMConfig) -> list[dict]:
    """SIFT features of every usable cell of a grid, pooled per view: one feature set per view
    whose keypoints also carry 'time' [n] and, per time, 'local' {t: indices of that cell's
    keypoints in the pool}. Every time column shows the same cameras with the scene frozen, so
    views are matched within one time; what stands still gives the same keypoint at every time,
    and those repeats are merged into one (same position within 0.3 px, near-equal descriptor),
    so a static point is one track, while what moved adds new points at each time.

    ``frames`` uint8 [V, T, H, W, 3], ``usable`` bool [V, T]."""
    V, T = frames.shape[:2]
    times = [t for t in range(T) if usable[:, t].sum() >= 2]
    if len(times) > cfg.max_times:
        times = [times[i] for i in np.unique(np.round(np.linspace(0, len(times) - 1, cfg.max_times)).astype(int))]
    cells = [(v, t) for t in times for v in range(V) if usable[v, t]]
    det = dict(zip(cells, _detect_many([frames[v, t] for v, t in cells], cfg)))
    out = []
    for v in range(V):
        xy, desc, rgb, time_of, local = [], [], [], [], {}
        n = 0
        for t in times:
            if (v, t) not in det:
                continue
            f = det[(v, t)]
            idx = np.arange(n, n + len(f["xy"]))
            if n and len(f["xy"]):
                pool_xy = torch.tensor(np.concatenate(xy), dtype=torch.float32)
                d = torch.cdist(torch.tensor(f["xy"], dtype=torch.float32), pool_xy)  # [k, n]
                cand = d < 0.3
                if bool(cand.any()):
                    pool_desc = torch.from_numpy(np.concatenate(desc))
                    kk, pp = torch.nonzero(cand, as_tuple=True)
                    dd = (torch.from_numpy(f["desc"])[kk] - pool_desc[pp]).norm(dim=1)
                    good = dd < 0.15 * pool_desc[pp].norm(dim=1).clamp_min(1.0)
                    kk, pp, dd = kk[good], pp[good], dd[good]
                    order = torch.argsort(dd)
                    taken: set[int] = set()
                    for a, b in zip(kk[order].tolist(), pp[order].tolist()):
                        if idx[a] >= n and b not in taken:  # each pool keypoint once per time
                            idx[a] = b
                            taken.add(b)
            new = idx >= n
            idx[new] = n + np.arange(int(new.sum()))
            n += int(new.sum())
            xy.append(f["xy"][new])
            desc.append(f["desc"][new])
            rgb.append(f["rgb"][new])
            time_of.append(np.full(int(new.sum()), t))
            local[t] = idx
        cat = (lambda a, shape: np.concatenate(a) if a else np.zeros(shape))
        out.append({"xy": cat(xy, (0, 2)), "desc": cat(desc, (0, 128)).astype(np.float32),
                    "rgb": cat(rgb, (0, 3)), "time": cat(time_of, (0,)).astype(int), "local": local,
                    "cells": {t: det[(v, t)] for t in times if (v, t) in det}})
    return out


def _nearest_two(A: torch.Tensor, B: torch.Tensor, block: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of A [n, d]: the distances to its two nearest rows of B [m, d] ([n, 2],
    ascending) and their indices ([n, 2]), from one matrix product per block of rows."""
    nb = (B * B).sum(1)
    vals, idx = [], []
    for a0 in range(0, len(A), block):
        Ab = A[a0:a0 + block]
        d2 = torch.addmm(nb[None, :], Ab, B.T, alpha=-2.0) + (Ab * Ab).sum(1, keepdim=True)
        two = d2.topk(2, dim=1, largest=False)
        vals.append(two.values)
        idx.append(two.indices)
    return torch.cat(vals).clamp_min(0).sqrt(), torch.cat(idx)


def _match_pair_fast(fa: dict, fb: dict, ratio: float) -> np.ndarray:
    """``match_pair`` (no self-ratio) for large keypoint sets (affine-simulated SIFT: 6-14 thousand
    an image): distances by matrix products, and the backward nearest neighbour searched only for
    the keypoints of b that some keypoint of a chose (half the time on 8000 x 8000)."""
    A, B = torch.from_numpy(fa["desc"]), torch.from_numpy(fb["desc"])
    v, i = _nearest_two(A, B)
    best_b = i[:, 0]
    ok = v[:, 0] < ratio * v[:, 1]
    cand = torch.unique(best_b[ok])
    if len(cand) == 0:
        return np.zeros((0, 2), int)
    back = torch.full((len(B),), -1, dtype=torch.long)
    back[cand] = _nearest_two(B[cand], A)[1][:, 0]
    ok &= back[best_b] == torch.arange(len(A))
    a = torch.nonzero(ok)[:, 0]
    return torch.stack([a, best_b[a]], 1).numpy().astype(int).reshape(-1, 2)


def match_pair(fa: dict, fb: dict, ratio: float, self_ratio: float | None = None, fast: bool = False) -> np.ndarray:
    """Mutual nearest neighbours passing the ratio test: [m, 2] index pairs (a, b). With
    ``self_ratio`` (and 'self' distances in both feature sets, ``self_distance``) a match must
    also be closer than ``self_ratio`` x each keypoint's nearest look-alike in its own image.
    ``fast``: ``_match_pair_fast`` (without the self-ratio test; distances by matrix products,
    so a near tie may fall the other way)."""
    if len(fa["desc"]) < 2 or len(fb["desc"]) < 2:
        return np.zeros((0, 2), int)
    if fast and self_ratio is None:
        return _match_pair_fast(fa, fb, ratio)
    d = torch.cdist(torch.from_numpy(fa["desc"]), torch.from_numpy(fb["desc"]))  # [na, nb] L2
    two = d.topk(2, dim=1, largest=False)
    best_b = two.indices[:, 0]
    best_a = d.argmin(dim=0)
    ok = (two.values[:, 0] < ratio * two.values[:, 1]) & (best_a[best_b] == torch.arange(len(best_b)))
    if self_ratio is not None and "self" in fa and "self" in fb:
        best = two.values[:, 0].numpy()
        ok &= torch.from_numpy((best < self_ratio * fa["self"]) & (best < self_ratio * fb["self"][best_b.numpy()]))
    a = torch.nonzero(ok)[:, 0]
    return torch.stack([a, best_b[a]], 1).numpy().astype(int).reshape(-1, 2)


def coherent(a: np.ndarray, b: np.ndarray, tol_px: float, k: int = 8) -> np.ndarray:
    """bool [m]: matches a -> b whose displacement agrees with the median of their k nearest
    neighbours' (in image a). Repeated textures (checkers, stripes) give matches one period off
    that still obey the epipolar constraint; their neighbours disagree with them."""
    if len(a) <= k:
        return np.ones(len(a), bool)
    at = torch.tensor(a, dtype=torch.float32)
    nn_idx = torch.cdist(at, at).topk(k + 1, largest=False).indices[:, 1:].numpy()  # [m, k]
    disp = b - a
    med = np.median(disp[nn_idx], axis=1)  # [m, 2]
    return np.linalg.norm(disp - med, axis=1) <= tol_px


def verified_matches(feats: list[dict], cfg: SfMConfig, thr_px: float, coherence_px: float = np.inf
                     ) -> dict[tuple[int, int], np.ndarray]:
    """Matches between nearby views that move with their neighbours and agree with one
    fundamental matrix (RANSAC)."""
    import cv2

    V = len(feats)
    pairs = {}
    for i in range(V):
        for j in range(i + 1, min(V, i + 1 + cfg.pair_window)):
            if "local" in feats[i]:  # pooled over times: match the cells of each time, then pool
                ms = []
                for t in sorted(set(feats[i]["local"]) & set(feats[j]["local"])):
                    ci, cj = feats[i]["cells"][t], feats[j]["cells"][t]
                    mt = match_pair(ci, cj, cfg.ratio, cfg.self_ratio)
                    mt = mt[coherent(ci["xy"][mt[:, 0]], cj["xy"][mt[:, 1]], coherence_px)]
                    ms.append(np.stack([feats[i]["local"][t][mt[:, 0]], feats[j]["local"][t][mt[:, 1]]], 1))
                m = np.unique(np.concatenate(ms), axis=0) if ms else np.zeros((0, 2), int)
                # a pool keypoint matched to two different partners (at different times) is ambiguous
                for c in (0, 1):
                    u, cnt = np.unique(m[:, c], return_counts=True)
                    m = m[~np.isin(m[:, c], u[cnt > 1])]
            else:
                m = match_pair(feats[i], feats[j], cfg.ratio, cfg.self_ratio, fast=cfg.affine_max_tilt > 1)
                if len(m) < cfg.min_pair_inliers:
                    continue
                m = m[coherent(feats[i]["xy"][m[:, 0]], feats[j]["xy"][m[:, 1]], coherence_px)]
            if len(m) < cfg.min_pair_inliers:
                continue
            a, b = feats[i]["xy"][m[:, 0]], feats[j]["xy"][m[:, 1]]
            F = mask = None
            if cfg.robust == "magsac":
                try:  # OpenCV 5's USAC can fail an internal assertion on degenerate sets: RANSAC then
                    with seeded_cv2():
                        F, mask = cv2.findFundamentalMat(a, b, cv2.USAC_MAGSAC, thr_px, 0.999, 4000)
                except cv2.error:
                    F = mask = None
            if F is None or mask is None:
                with seeded_cv2():
                    F, mask = cv2.findFundamentalMat(a, b, cv2.FM_RANSAC, thr_px, 0.999, 4000)
            if F is None or mask is None:
                continue
            keep = mask.ravel().astype(bool)
            if keep.sum() >= cfg.min_pair_inliers:
                pairs[(i, j)] = m[keep]
    return pairs


def chain_check(pairs: dict[tuple[int, int], np.ndarray], min_frac: float = 0.25) -> dict[tuple[int, int], np.ndarray]:
    """Pairs of views further apart than neighbours checked against the chain of neighbouring
    pairs between them: a match a -> c of views i, k (k > i + 1) is confirmed when following a
    through the matches of i -> i+1 -> ... -> k ends at c and contradicted when it ends elsewhere.
    A pair is kept only when at least a quarter of its matches (and 3, and no fewer than those
    contradicted) are confirmed: after a large view change a repeated texture verifies one period
    off, with no chain to confirm it (1000000008: 14 such pairs, 0-6 confirmed each, 0-10 of
    17-28 matches right); of the pairs kept, the contradicted matches are dropped. The
    neighbouring pairs are returned as they are."""
    maps = {i: dict(map(tuple, m.tolist())) for (i, j), m in pairs.items() if j == i + 1}
    out = {}
    for (i, k), m in pairs.items():
        if k == i + 1:
            out[(i, k)] = m
            continue
        ends = []
        for a in m[:, 0].tolist():
            x = a
            for v in range(i, k):
                x = maps.get(v, {}).get(x) if x is not None else None
            ends.append(-1 if x is None else x)
        ends = np.array(ends)
        known = ends >= 0
        agree = known & (ends == m[:, 1])
        if int(agree.sum()) < max(3, min_frac * len(m), int((known & ~agree).sum())):
            continue
        out[(i, k)] = m[~known | agree]
    return out


def build_tracks(pairs: dict[tuple[int, int], np.ndarray], n_feats: list[int]) -> list[dict[int, int]]:
    """Join pairwise matches into tracks {view: keypoint}; tracks that see one view twice are dropped."""
    offs = np.concatenate([[0], np.cumsum(n_feats)])
    parent = np.arange(offs[-1])

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for (i, j), m in pairs.items():
        for a, b in m:
            ra, rb = find(offs[i] + a), find(offs[j] + b)
            if ra != rb:
                parent[rb] = ra
    groups: dict[int, dict[int, int]] = {}
    bad = set()
    for (i, j), m in pairs.items():
        for a, b in m:
            for view, k in ((i, a), (j, b)):
                root = find(offs[view] + k)
                tr = groups.setdefault(root, {})
                if tr.get(view, k) != k:
                    bad.add(root)
                tr[view] = int(k)
    return [tr for root, tr in groups.items() if root not in bad and len(tr) >= 2]


# ---------------------------------------------------------------------------------------------
# 2. Triangulation and bundle adjustment


def triangulate(P_list: list[np.ndarray], xy_list: list[np.ndarray]) -> np.ndarray:
    """Linear (DLT) triangulation of one point from normalised cameras: [3]."""
    A = []
    for P, (x, y) in zip(P_list, xy_list):
        A.append(x * P[2] - P[0])
        A.append(y * P[2] - P[1])
    _, _, vt = np.linalg.svd(np.asarray(A))
    X = vt[-1]
    return X[:3] / X[3] if abs(X[3]) > 1e-12 else np.full(3, np.nan)


class _Recon:
    """Mutable state of the incremental reconstruction."""

    def __init__(self, feats, tracks, focal, H, W):
        self.feats, self.tracks = feats, tracks
        self.focal, self.H, self.W = focal, H, W
        self.R: dict[int, np.ndarray] = {}
        self.t: dict[int, np.ndarray] = {}
        self.X = np.full((len(tracks), 3), np.nan)  # per track
        self.guided: set[int] = set()  # views placed by ``_register_guided``
        self.fixed: int | None = None  # the view whose pose holds the gauge (None: the lowest placed)

    @property
    def K(self):
        return intrinsics(self.focal, self.H, self.W)

    def norm_xy(self, view, k):
        xy = self.feats[view]["xy"][k]
        return np.array([(xy[0] - self.W / 2) / self.focal, (xy[1] - self.H / 2) / self.focal])

    def reproj_err(self, view, X, k):
        Xc = self.R[view] @ X + self.t[view]
        if Xc[2] <= 1e-9:
            return np.inf
        uv = self.focal * Xc[:2] / Xc[2] + np.array([self.W / 2, self.H / 2])
        return float(np.linalg.norm(uv - self.feats[view]["xy"][k]))

    def triangulate_tracks(self, thr_px: float, min_angle_deg: float, only_new: bool = True,
                           min_obs: int = 2) -> int:
        """Triangulate tracks seen by >= ``min_obs`` placed views; keep those that reproject within
        ``thr_px`` everywhere and have ``min_angle_deg`` of parallax."""
        n = 0
        cos_min = math.cos(math.radians(min_angle_deg))
        for ti, tr in enumerate(self.tracks):
            if only_new and np.isfinite(self.X[ti, 0]):
                continue
            views = [v for v in tr if v in self.R]
            if len(views) < max(2, min_obs):
                continue
            P = [np.hstack([self.R[v], self.t[v][:, None]]) for v in views]
            X = triangulate(P, [self.norm_xy(v, tr[v]) for v in views])
            if not np.all(np.isfinite(X)):
                continue
            if max(self.reproj_err(v, X, tr[v]) for v in views) > thr_px:
                continue
            rays = [X - (-self.R[v].T @ self.t[v]) for v in views]
            rays = [r / np.linalg.norm(r) for r in rays]
            best = min(float(rays[a] @ rays[b]) for a in range(len(rays)) for b in range(a + 1, len(rays)))
            if best > cos_min:
                continue
            self.X[ti] = X
            n += 1
        return n

    def observations(self):
        cams, pts, uv = [], [], []
        for ti, tr in enumerate(self.tracks):
            if not np.isfinite(self.X[ti, 0]):
                continue
            for v, k in tr.items():
                if v in self.R:
                    cams.append(v)
                    pts.append(ti)
                    uv.append(self.feats[v]["xy"][k])
        return np.array(cams, int), np.array(pts, int), np.array(uv, float).reshape(-1, 2)


def bundle_adjust(rec: _Recon, fixed_view: int, optimise_focal: bool, iters: int, huber_px: float,
                  vps: dict[int, np.ndarray] | None = None, vp_weight: float = 0.0) -> float:
    """Levenberg-Marquardt over poses, points and (optionally) the shared focal, with the Schur
    complement on the points and Huber weights; updates ``rec`` in place, returns the RMS error.

    ``vps`` {view: homogeneous image point [3]}: vanishing points of one shared, unknown 3D
    direction ``d`` (``vanishing.py``), which joins the unknowns; each view adds the residual
    ``vp_weight * (u_v x R_v d)``, with ``u_v`` the unit ray ``K^-1 vp_v`` (the sine of the angle
    between the ray and the direction, in pixels per radian at ``vp_weight``)."""
    cams, pts, uv = rec.observations()
    if len(cams) < 12:
        return float("nan")
    dt = torch.float64
    views = sorted(rec.R)
    vidx = {v: i for i, v in enumerate(views)}
    ci = torch.tensor([vidx[c] for c in cams])
    uniq, pi = np.unique(pts, return_inverse=True)
    pi = torch.tensor(pi)
    uv_t = torch.tensor(uv, dtype=dt)
    R = torch.tensor(np.stack([rec.R[v] for v in views]), dtype=dt)
    t = torch.tensor(np.stack([rec.t[v] for v in views]), dtype=dt)
    X = torch.tensor(rec.X[uniq], dtype=dt)
    logf = torch.tensor(math.log(rec.focal), dtype=dt)
    c0 = torch.tensor([rec.W / 2, rec.H / 2], dtype=dt)
    nv, M, O = len(views), len(uniq), len(cams)
    nf = 6 * nv  # index of the focal among the camera-side unknowns
    vp_views = [v for v in views if vps and v in vps]
    use_vp = len(vp_views) >= 2 and vp_weight > 0
    nc = 6 * nv + 1 + (2 if use_vp else 0)  # (+ the shared direction's two tangent coordinates)
    if use_vp:
        vi = torch.tensor([vidx[v] for v in vp_views])
        h = torch.tensor(np.stack([vps[v] for v in vp_views]), dtype=dt)
        hc = torch.stack([h[:, 0] - c0[0] * h[:, 2], h[:, 1] - c0[1] * h[:, 2]], 1)  # focal-free part
        # the direction starts as the mean of the views' world rays, each signed like the first
        ws = world_directions(np.stack([rec.R[v] for v in vp_views]), [rec.K] * len(vp_views),
                              [vps[v] for v in vp_views]).mean(0)
        dvec = torch.tensor(ws / np.linalg.norm(ws), dtype=dt)
        idx_vp = torch.cat([vi[:, None] * 6 + torch.arange(3), torch.arange(nf, nf + 3).expand(len(vi), 3)], 1)
    else:
        dvec = torch.zeros(3, dtype=dt)

    def vp_rays(logf):
        p = torch.cat([hc / torch.exp(logf), h[:, 2:]], 1)
        return p / p.norm(dim=1, keepdim=True), p

    def vp_residuals(R, logf, dvec):  # (residuals [n, 3], unit rays u, R d, unnormalised rays)
        u, p = vp_rays(logf)
        a = torch.einsum("kij,j->ki", R[vi], dvec)
        return vp_weight * torch.linalg.cross(u, a), u, a, p

    def residuals(R, t, X, logf):
        Xc = torch.einsum("oij,oj->oi", R[ci], X[pi]) + t[ci]
        z = Xc[:, 2].clamp_min(1e-9)
        proj = torch.exp(logf) * Xc[:, :2] / z[:, None] + c0
        return proj - uv_t, Xc

    def cost(r, Xc, e=None):
        s = r.norm(dim=1)
        rho = torch.where(s <= huber_px, 0.5 * s * s, huber_px * (s - 0.5 * huber_px))
        rho = torch.where(Xc[:, 2] > 1e-9, rho, torch.full_like(rho, 1e6))
        return float(rho.sum()) + (0.5 * float((e * e).sum()) if e is not None else 0.0)

    def skew3(a):  # [n, 3] -> [n, 3, 3] with skew3(a) @ b = a x b
        S = torch.zeros(len(a), 3, 3, dtype=dt)
        S[:, 0, 1], S[:, 0, 2], S[:, 1, 2] = -a[:, 2], a[:, 1], -a[:, 0]
        return S - S.transpose(1, 2)

    # index of the 7 camera-side unknowns of each observation (6 pose + focal)
    idx7 = torch.cat([ci[:, None] * 6 + torch.arange(6), torch.full((O, 1), nf)], dim=1)  # [O, 7]
    # observation pairs sharing a point, for the Schur complement
    order = torch.argsort(pi, stable=True)
    counts = torch.bincount(pi, minlength=M)
    starts = torch.cumsum(counts, 0) - counts
    Lmax = int(counts.max())
    slot = torch.arange(Lmax)
    table = starts[:, None] + slot[None]
    live = slot[None] < counts[:, None]
    obs_of = torch.where(live, order[table.clamp_max(O - 1)], torch.full_like(table, -1))  # [M, Lmax]
    pa, pb = [], []
    for a in range(Lmax):
        for b in range(Lmax):
            ok = (obs_of[:, a] >= 0) & (obs_of[:, b] >= 0)
            pa.append(obs_of[ok, a])
            pb.append(obs_of[ok, b])
    pa, pb = torch.cat(pa), torch.cat(pb)

    lam = 1e-3
    r, Xc = residuals(R, t, X, logf)
    e = vp_residuals(R, logf, dvec)[0] if use_vp else None
    cur = cost(r, Xc, e)
    for _ in range(iters):
        s = r.norm(dim=1)
        w = torch.where(s <= huber_px, torch.ones_like(s), huber_px / s.clamp_min(1e-12))
        w = torch.where(Xc[:, 2] > 1e-9, w, torch.zeros_like(w))
        x, y, z = Xc[:, 0], Xc[:, 1], Xc[:, 2].clamp_min(1e-9)
        f = torch.exp(logf)
        dproj = torch.zeros(O, 2, 3, dtype=dt)
        dproj[:, 0, 0] = f / z
        dproj[:, 0, 2] = -f * x / z ** 2
        dproj[:, 1, 1] = f / z
        dproj[:, 1, 2] = -f * y / z ** 2
        skew = torch.zeros(O, 3, 3, dtype=dt)  # d Xc / d omega = -[Xc]x
        skew[:, 0, 1], skew[:, 0, 2] = z, -y
        skew[:, 1, 0], skew[:, 1, 2] = -z, x
        skew[:, 2, 0], skew[:, 2, 1] = y, -x
        Jrot = dproj @ skew
        Jt = dproj
        Jf = (f * Xc[:, :2] / z[:, None])[:, :, None]  # [O, 2, 1]
        if not optimise_focal:
            Jf = torch.zeros_like(Jf)
        Jc = torch.cat([Jrot, Jt, Jf], dim=2)  # [O, 2, 7]
        Jc[ci == vidx[fixed_view], :, :6] = 0
        Jp = dproj @ R[ci]  # [O, 2, 3]
        wJc = Jc * w[:, None, None]
        wJp = Jp * w[:, None, None]
        A = wJc.transpose(1, 2) @ Jc  # [O, 7, 7]
        B = wJc.transpose(1, 2) @ Jp  # [O, 7, 3]
        gc_o = (wJc.transpose(1, 2) @ r[:, :, None])[..., 0]  # [O, 7]
        gp_o = (wJp.transpose(1, 2) @ r[:, :, None])[..., 0]  # [O, 3]
        Hcc = torch.zeros(nc, nc, dtype=dt)
        Hcc.index_put_((idx7[:, :, None].expand(O, 7, 7), idx7[:, None, :].expand(O, 7, 7)), A, accumulate=True)
        gc = torch.zeros(nc, dtype=dt).index_add_(0, idx7.reshape(-1), gc_o.reshape(-1))
        Hpp = torch.zeros(M, 3, 3, dtype=dt).index_add_(0, pi, wJp.transpose(1, 2) @ Jp)
        gp = torch.zeros(M, 3, dtype=dt).index_add_(0, pi, gp_o)
        if use_vp:
            # d/d omega of R d is -[R d]x; the focal moves the ray u; the direction moves in its
            # tangent plane (basis Bt); the rows of a fixed view's rotation are frozen below
            e, u, a, praw = vp_residuals(R, logf, dvec)
            n = len(vp_views)
            dp = torch.cat([-hc / torch.exp(logf), torch.zeros(n, 1, dtype=dt)], 1)  # d p / d log f
            pn = praw.norm(dim=1, keepdim=True)
            du = (dp - u * (u * dp).sum(1, keepdim=True)) / pn
            Bt = torch.linalg.svd(dvec[None])[2][1:].T  # [3, 2], orthogonal to d
            Jv = torch.cat([-skew3(u) @ skew3(a),
                            (-skew3(a) @ du[:, :, None]) * (1.0 if optimise_focal else 0.0),
                            skew3(u) @ R[vi] @ Bt], 2) * vp_weight  # [n, 3, 6]
            Hv = Jv.transpose(1, 2) @ Jv
            Hcc.index_put_((idx_vp[:, :, None].expand(n, 6, 6), idx_vp[:, None, :].expand(n, 6, 6)), Hv,
                           accumulate=True)
            gc.index_add_(0, idx_vp.reshape(-1), (Jv.transpose(1, 2) @ e[:, :, None])[..., 0].reshape(-1))
        while True:
            Hpp_d = Hpp + torch.diag_embed(lam * torch.diagonal(Hpp, dim1=-2, dim2=-1) + 1e-9)
            Hpp_inv = torch.linalg.inv(Hpp_d)
            E = B @ Hpp_inv[pi]  # [O, 7, 3]
            S = Hcc + torch.diag(lam * torch.diagonal(Hcc) + 1e-9)
            contrib = E[pa] @ B[pb].transpose(1, 2)  # [P, 7, 7]
            S = S.index_put((idx7[pa][:, :, None].expand(-1, 7, 7), idx7[pb][:, None, :].expand(-1, 7, 7)),
                            -contrib, accumulate=True)
            rhs = gc - torch.zeros(nc, dtype=dt).index_add_(
                0, idx7.reshape(-1), (E @ gp[pi][:, :, None])[..., 0].reshape(-1))
            # gauge: the fixed view's pose and (if fixed) the focal do not move
            frozen = torch.zeros(nc, dtype=torch.bool)
            frozen[vidx[fixed_view] * 6: vidx[fixed_view] * 6 + 6] = True
            if not optimise_focal:
                frozen[nf] = True
            S[frozen] = 0
            S[:, frozen] = 0
            S[frozen, frozen] = 1
            rhs[frozen] = 0
            try:
                dxc = torch.linalg.solve(S, -rhs)
            except RuntimeError:
                lam *= 10
                if lam > 1e8:
                    break
                continue
            back = torch.zeros(M, 3, dtype=dt).index_add_(
                0, pi, (B.transpose(1, 2) @ dxc[idx7][:, :, None])[..., 0])
            dxp = (Hpp_inv @ (-gp - back)[:, :, None])[..., 0]
            d = dxc[:nf].reshape(nv, 6)
            Rn = torch.stack([torch.tensor(rodrigues(d[k, :3].numpy()), dtype=dt) for k in range(nv)]) @ R
            tn = torch.einsum("vij,vj->vi", Rn @ R.transpose(1, 2), t) + d[:, 3:]
            Xn, logfn = X + dxp, logf + dxc[nf]
            rn, Xcn = residuals(Rn, tn, Xn, logfn)
            dn, en = dvec, None
            if use_vp:
                dn = dvec + Bt @ dxc[nf + 1:]
                dn = dn / dn.norm()
                en = vp_residuals(Rn, logfn, dn)[0]
            new = cost(rn, Xcn, en)
            if new < cur:
                R, t, X, logf, r, Xc, dvec = Rn, tn, Xn, logfn, rn, Xcn, dn
                improvement = (cur - new) / max(cur, 1e-12)
                cur = new
                lam = max(lam / 3, 1e-7)
                break
            lam *= 4
            if lam > 1e8:
                improvement = 0.0
                break
        if lam > 1e8 or improvement < 1e-6:
            break
    for k, v in enumerate(views):
        rec.R[v], rec.t[v] = R[k].numpy(), t[k].numpy()
    rec.X[uniq] = X.numpy()
    rec.focal = float(torch.exp(logf))
    return float(torch.sqrt((r.norm(dim=1) ** 2).mean()))


# ---------------------------------------------------------------------------------------------
# 3. Incremental reconstruction


def _two_view(rec: _Recon, pairs, thr_px: float, min_angle: float) -> tuple[int, int] | None:
    """Pick the verified pair with most matches that has enough parallax; place it."""
    import cv2

    K = rec.K
    best = None
    for (i, j), m in sorted(pairs.items(), key=lambda kv: -len(kv[1])):
        a, b = rec.feats[i]["xy"][m[:, 0]], rec.feats[j]["xy"][m[:, 1]]
        with seeded_cv2():
            E, mask = cv2.findEssentialMat(a, b, K, cv2.RANSAC, 0.999, thr_px)
        if E is None or E.shape != (3, 3):
            continue
        n, Rm, tv, mask2 = cv2.recoverPose(E, a, b, K, mask=mask.copy())
        if n < 12:
            continue
        inl = mask2.ravel() > 0
        P0 = np.hstack([np.eye(3), np.zeros((3, 1))])
        P1 = np.hstack([Rm, tv])
        Xh = cv2.triangulatePoints(K @ P0, K @ P1, a[inl].T, b[inl].T)
        X = (Xh[:3] / Xh[3]).T
        c1 = -Rm.T @ tv.ravel()
        r0 = X / np.linalg.norm(X, axis=1, keepdims=True)
        r1 = (X - c1) / np.linalg.norm(X - c1, axis=1, keepdims=True)
        ang = np.degrees(np.arccos(np.clip((r0 * r1).sum(1), -1, 1)))
        med = float(np.median(ang))
        score = n * min(med, 4.0)
        if best is None or score > best[0]:
            best = (score, i, j, Rm, tv.ravel(), med)
        if med >= 3.0 and n >= 60:
            break
    if best is None or best[5] < 0.5 * min_angle:
        return None
    _, i, j, Rm, tv, _ = best
    rec.R[i], rec.t[i] = np.eye(3), np.zeros(3)
    rec.R[j], rec.t[j] = Rm, tv
    return i, j


def _register_next(rec: _Recon, V: int, thr_px: float) -> int | None:
    import cv2

    cands = []
    for v in range(V):
        if v in rec.R:
            continue
        corr = [(ti, tr[v]) for ti, tr in enumerate(rec.tracks) if v in tr and np.isfinite(rec.X[ti, 0])]
        cands.append((len(corr), v, corr))
    cands.sort(reverse=True)
    for n, v, corr in cands:
        if n < 8:
            return None
        obj = np.array([rec.X[ti] for ti, _ in corr])
        img = np.array([rec.feats[v]["xy"][k] for _, k in corr])
        with seeded_cv2():
            ok, rvec, tvec, inl = cv2.solvePnPRansac(obj, img, rec.K, None, iterationsCount=2000,
                                                     reprojectionError=2 * thr_px, confidence=0.999,
                                                     flags=cv2.SOLVEPNP_EPNP)
        if not ok or inl is None or len(inl) < 8:
            continue
        inl = inl.ravel()
        rvec, tvec = cv2.solvePnPRefineLM(obj[inl], img[inl], rec.K, None, rvec, tvec)
        rec.R[v], rec.t[v] = cv2.Rodrigues(rvec)[0], tvec.ravel()
        return v
    return None


def _register_guided(rec: _Recon, V: int, cfg: SfMConfig, thr_px: float, log=None) -> int | None:
    """Place one more view when ``_register_next`` cannot (too few tracks reach it: on a checker
    floor a view 15 degrees on matches its neighbours with a few dozen right matches, few of them
    chained through three views). The unplaced views next to the placed ones are predicted along
    the orbit (``orbit.predict_poses``: the step of the placed links); the triangulated points
    (and, for this search only, the tracks two placed views see) are projected into such a view,
    each takes the keypoint near its projection (within ``cfg.guided_register_window`` x image
    size) whose descriptor is nearest its own (from the placed view nearest the new one; mutual
    best, ratio 0.9 among the candidates), and PnP (RANSAC) places the view from those matches; a second round in a window a quarter as wide
    around the PnP pose refines it. The view is kept with at least ``cfg.guided_register_min``
    inliers; its matched keypoints join their tracks. Returns the view placed, or None."""
    import cv2

    from .orbit import predict_poses

    placed = sorted(rec.R)
    if len(placed) < 2:
        return None
    Rp, tp = predict_poses(rec.R, rec.t, V)
    cands = sorted({v for u in placed for v in (u - 1, u + 1) if 0 <= v < V and v not in rec.R})
    # the points to match: the triangulated ones and, for this search only, those of two views
    X_kept = rec.X.copy()
    rec.triangulate_tracks(4 * thr_px, cfg.min_tri_angle_deg, min_obs=2)
    X_all, rec.X = rec.X, X_kept
    live = np.nonzero(np.isfinite(X_all[:, 0]))[0]
    size = max(rec.H, rec.W)
    for v in cands:
        fv = rec.feats[v]
        if len(live) < 8 or len(fv["xy"]) < 8:
            continue
        # each live track's descriptor (and time, pooled grids) from its placed view nearest v
        src = []
        for ti in live:
            tr = rec.tracks[ti]
            if v in tr:
                src.append(None)
                continue
            u = min((w for w in tr if w in rec.R), key=lambda w: abs(w - v))
            src.append((u, tr[u]))
        keep = np.array([s_ is not None for s_ in src], bool)
        tis = live[keep]
        src = [s_ for s_ in src if s_ is not None]
        if len(tis) < 8:
            continue
        desc = np.stack([rec.feats[u]["desc"][k] for u, k in src])
        time_of = np.array([rec.feats[u]["time"][k] for u, k in src]) if "time" in fv else None
        R, t = Rp[v], tp[v]
        inl_m = None
        for window in (cfg.guided_register_window, 0.25 * cfg.guided_register_window):
            m = _match_to_points(X_all[tis], desc, time_of, fv, R, t, rec.focal, rec.H, rec.W, window * size)
            if len(m) < cfg.guided_register_min:
                inl_m = None
                break
            obj = X_all[tis[m[:, 0]]]
            img = fv["xy"][m[:, 1]]
            with seeded_cv2():
                ok, rvec, tvec, inl = cv2.solvePnPRansac(obj, img, rec.K, None, iterationsCount=2000,
                                                         reprojectionError=2 * thr_px, confidence=0.999,
                                                         flags=cv2.SOLVEPNP_EPNP)
            if not ok or inl is None or len(inl) < cfg.guided_register_min:
                inl_m = None
                break
            inl = inl.ravel()
            rvec, tvec = cv2.solvePnPRefineLM(obj[inl], img[inl], rec.K, None, rvec, tvec)
            R, t = cv2.Rodrigues(rvec)[0], tvec.ravel()
            inl_m = m[inl]
        if inl_m is None:
            continue
        if log:
            d = math.degrees(math.acos(np.clip((np.trace(R @ Rp[v].T) - 1) / 2, -1, 1)))
            log(f"guided registration: view {v} from {len(inl_m)} guided matches, {d:.1f} deg from its predicted pose")
        rec.R[v], rec.t[v] = R, t
        rec.guided.add(v)
        # the tracks are shared with other runs (other focal lengths): extend copies
        used = {tr[v] for tr in rec.tracks if v in tr}
        rec.tracks = [dict(tr) for tr in rec.tracks]
        for a, k in inl_m.tolist():
            if k not in used:
                rec.tracks[tis[a]][v] = int(k)
        return v
    return None


def _sparse_ratio_test(a: np.ndarray, b: np.ndarray, d: np.ndarray, ratio: float = 0.9):
    """Candidate pairs (a[k], b[k]) at descriptor distance d[k], sorted by a then d; ``ok`` marks
    each a's nearest candidate when it beats that a's second candidate by ``ratio`` (an only
    candidate passes). Returns (a, b, d, ok), sorted."""
    o = np.lexsort((d, a))
    a, b, d = a[o], b[o], d[o]
    first = np.r_[True, a[1:] != a[:-1]]
    second = np.full(len(a), np.inf)
    has2 = first[:-1] & ~first[1:]
    second[:-1][has2] = d[1:][has2]
    return a, b, d, first & (d < ratio * second)


def _match_to_points(X: np.ndarray, desc: np.ndarray, time_of, fv: dict, R: np.ndarray, t: np.ndarray,
                     focal: float, H: int, W: int, window_px: float) -> np.ndarray:
    """Points X [n, 3] with descriptors [n, 128] (and times, pooled grids) matched to keypoints of
    one view posed (R, t): a keypoint within ``window_px`` of a point's projection is a candidate;
    the nearest descriptor wins when it beats the second candidate by 0.9 and the keypoint has no
    nearer point. Returns [m, 2] (point index, keypoint index)."""
    pc = X @ R.T + t
    front = np.nonzero(pc[:, 2] > 1e-6)[0]
    if len(front) == 0:
        return np.zeros((0, 2), int)
    uv = pc[front, :2] / pc[front, 2:3] * focal + [W / 2, H / 2]
    near = torch.cdist(torch.tensor(uv, dtype=torch.float32), torch.tensor(fv["xy"], dtype=torch.float32)) < window_px
    pi, ki = (x.numpy() for x in torch.nonzero(near, as_tuple=True))
    pi = front[pi]
    if time_of is not None:
        same = time_of[pi] == fv["time"][ki]
        pi, ki = pi[same], ki[same]
    if len(pi) == 0:
        return np.zeros((0, 2), int)
    d = np.linalg.norm(desc[pi] - fv["desc"][ki], axis=1)
    pi, ki, d, ok = _sparse_ratio_test(pi, ki, d)
    pi, ki, d = pi[ok], ki[ok], d[ok]
    o = np.lexsort((d, ki))  # a keypoint claimed by several points: the nearest descriptor
    pi, ki = pi[o], ki[o]
    firstk = np.r_[True, ki[1:] != ki[:-1]]
    return np.stack([pi[firstk], ki[firstk]], 1).astype(int)


def _sfm_with_focal(feats, tracks, pairs, focal, H, W, cfg: SfMConfig, optimise_focal: bool, log=None,
                    guided_register: bool = False):
    V = len(feats)
    scale = max(H, W) / 512.0
    thr = max(0.75, cfg.ransac_px * scale)
    rec = _Recon(feats, tracks, focal, H, W)
    first = _two_view(rec, pairs, thr, cfg.min_tri_angle_deg)
    if first is None:
        return None, "no pair of views has enough parallax"
    fixed = rec.fixed = first[0]
    rec.triangulate_tracks(4 * thr, cfg.min_tri_angle_deg)
    bundle_adjust(rec, fixed, False, cfg.ba_iters // 2, 2 * thr)
    # Once three views are placed, a point must be seen by three: a wrong match on a repeated
    # texture still fits two views (anywhere on the epipolar line) but rarely three.
    min_obs = 3 if V >= cfg.three_view_from else 2
    while len(rec.R) < V:
        v = _register_next(rec, V, thr)
        if v is None and guided_register and len(rec.R) >= 3:
            v = _register_guided(rec, V, cfg, thr, log)
        if v is None:
            break
        if len(rec.R) == 3 and min_obs == 3:
            rec.X[:] = np.nan
            rec.triangulate_tracks(4 * thr, cfg.min_tri_angle_deg, only_new=False, min_obs=3)
        rec.triangulate_tracks(4 * thr, cfg.min_tri_angle_deg, min_obs=min_obs if len(rec.R) >= 3 else 2)
        bundle_adjust(rec, fixed, False, cfg.ba_iters // 4, 2 * thr)
    # final: free focal, re-triangulate everything with the refined cameras, drop outliers, again
    optimise_focal = optimise_focal and len(rec.R) >= 3  # two views do not determine a focal length
    rms = _polish(rec, fixed, cfg, thr, min_obs, optimise_focal)
    return rec, rms


def _polish(rec: _Recon, fixed: int, cfg: SfMConfig, thr: float, min_obs: int, optimise_focal: bool,
            vps: dict[int, np.ndarray] | None = None, vp_weight: float = 0.0) -> float:
    """The last rounds of a reconstruction with every view it will have posed: bundle adjustment,
    then every track re-triangulated keeping only those whose observations all lie within 3 robust
    sigmas of the fit, twice, and a final adjustment (each with ``vps`` at ``vp_weight``, see
    ``bundle_adjust``). Returns the RMS reprojection error (px)."""
    for rnd in range(2):
        bundle_adjust(rec, fixed, optimise_focal, cfg.ba_iters, 2 * thr, vps, vp_weight)
        cams, pts, _ = rec.observations()
        err = np.array([rec.reproj_err(c, rec.X[p], rec.tracks[p][c]) for c, p in zip(cams, pts)])
        keep_px = float(np.clip(3 * 1.4826 * np.median(err), 0.5, 3 * thr)) if len(err) else 3 * thr
        rec.X[:] = np.nan
        # in the last round, with every view placed, two-view tracks come back when they fit: a
        # wrong match along the epipolar line fits with a wrong depth but does not pull the poses
        # (measured with the whole-grid pool only, so the column-0 path keeps three-view tracks)
        last_min = 2 if (rnd == 1 and cfg.final_two_view and "local" in rec.feats[0]) else min_obs
        rec.triangulate_tracks(keep_px, cfg.min_tri_angle_deg, only_new=False,
                               min_obs=last_min if len(rec.R) >= 3 else 2)
    return bundle_adjust(rec, fixed, optimise_focal, cfg.ba_iters, 2 * thr, vps, vp_weight)


def _normalise(viewmats: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray]:
    """Move the scene centre to the origin and scale the mean camera distance to it to 1.

    The centre is the point closest to all optical axes (where an orbit looks), or the points'
    median when the axes are near parallel.
    """
    C = camera_centres(viewmats)
    d = viewmats[:, 2, :3]  # optical axes in the world
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for c, di in zip(C, d):
        P = np.eye(3) - np.outer(di, di)
        A += P
        b += P @ c
    centre = None
    if np.linalg.cond(A) < 1e4:
        centre = np.linalg.solve(A, b)
        # an orbit's look-at point lies in front of the cameras
        if np.any(np.einsum("vi,vi->v", centre - C, d) <= 0):
            centre = None
    if centre is None:
        centre = np.median(points, axis=0) if len(points) else C.mean(0) + d.mean(0)
    s = float(np.mean(np.linalg.norm(C - centre, axis=1)))
    s = s if s > 1e-9 else 1.0
    out = viewmats.copy()
    # x_cam = R x + t with x = s x' + centre  ->  R (s x') + R centre + t, then divide by s
    out[:, :3, 3] = (np.einsum("vij,j->vi", viewmats[:, :3, :3], centre) + viewmats[:, :3, 3]) / s
    pts = (points - centre) / s
    up = -viewmats[:, 1, :3].mean(0)  # the mean of the cameras' "up" (-y) axes
    up /= max(np.linalg.norm(up), 1e-9)
    return out, pts, centre, s, up


def orbit_prior(views: int, height: int, width: int, fov_x_deg: float = 50.0, arc_deg: float = 30.0,
                elevation_deg: float = 15.0) -> tuple[np.ndarray, np.ndarray]:
    """Cameras evenly spaced on an arc of radius 1 around the origin, all looking at it."""
    vms = []
    for v in range(views):
        az = math.radians(-arc_deg / 2 + arc_deg * v / max(views - 1, 1))
        el = math.radians(elevation_deg)
        eye = np.array([math.sin(az) * math.cos(el), -math.sin(el), -math.cos(az) * math.cos(el)])
        f = -eye / np.linalg.norm(eye)
        r = np.cross(f, np.array([0.0, -1.0, 0.0]))
        r /= np.linalg.norm(r)
        dn = np.cross(f, r)
        R = np.stack([r, dn, f])
        m = np.eye(4)
        m[:3, :3] = R
        m[:3, 3] = -R @ eye
        vms.append(m)
    K = intrinsics(focal_from_fov(fov_x_deg, width), height, width)
    return np.stack(vms), np.repeat(K[None], views, axis=0)


def _keypoint_points(rec: _Recon, v: int, far_px: float, plane) -> tuple[np.ndarray, np.ndarray]:
    """World points for view v's keypoints, at the depth of nearby triangulated points or, far from
    them, where the ray meets the dominant plane: (index of keypoints that got one, points [n, 3])."""
    X = rec.X[np.isfinite(rec.X[:, 0])]
    R, t, f = rec.R[v], rec.t[v], rec.focal
    xy = rec.feats[v]["xy"]
    if len(xy) == 0 or len(X) < 4:
        return np.zeros(0, int), np.zeros((0, 3))
    pc = X @ R.T + t
    front = pc[:, 2] > 1e-6
    uv = pc[front, :2] / pc[front, 2:3] * f + [rec.W / 2, rec.H / 2]
    z = pc[front, 2]
    d = torch.cdist(torch.tensor(xy, dtype=torch.float32), torch.tensor(uv, dtype=torch.float32))
    dist, idx = d.topk(min(4, d.shape[1]), largest=False)
    depth = np.median(z[idx.numpy()], axis=1)
    ok = dist[:, 0].numpy() < far_px
    ray = np.stack([(xy[:, 0] - rec.W / 2) / f, (xy[:, 1] - rec.H / 2) / f, np.ones(len(xy))], 1)
    if plane is not None:
        n, d0 = plane
        centre = -R.T @ t
        denom = (ray @ R) @ n
        lam = -(n @ centre + d0) / np.where(np.abs(denom) > 1e-12, denom, np.nan)
        on_plane = ~ok & np.isfinite(lam) & (lam > 0)
        depth = np.where(on_plane, lam, depth)
        ok |= on_plane
    keep = np.nonzero(ok)[0]
    return keep, (ray[keep] * depth[keep, None] - t) @ R


def guided_matches(rec: _Recon, cfg: SfMConfig, window_px: float, epi_px: float) -> dict[tuple[int, int], np.ndarray]:
    """Matches found with the help of a first reconstruction, for textures too repetitive for
    the ratio test: a keypoint's partner must lie near where the first reconstruction predicts
    it (within ``window_px``) and near its epipolar line; among those few candidates the
    descriptors decide (mutual best, ratio 0.9)."""
    from .fit import dominant_plane  # the same floor-plane rule the Gaussian seeding uses

    X = rec.X[np.isfinite(rec.X[:, 0])]
    C = np.stack([-rec.R[v].T @ rec.t[v] for v in rec.R])
    scale = float(np.median(np.linalg.norm(C - np.median(X, axis=0), axis=1))) if len(X) else 1.0
    plane = dominant_plane(X, np.random.default_rng(0), tol=0.01 * scale)
    far_px = 0.1 * max(rec.H, rec.W)
    lifted = {v: _keypoint_points(rec, v, far_px, plane) for v in rec.R}
    K = rec.K
    Kinv = np.linalg.inv(K)
    out = {}
    views = sorted(rec.R)
    for i in views:
        for j in views:
            if not 0 < j - i <= cfg.pair_window:
                continue
            ki, Xi = lifted[i]
            xy_j = rec.feats[j]["xy"]
            if len(ki) < 8 or len(xy_j) < 8:
                continue
            pc = Xi @ rec.R[j].T + rec.t[j]
            good = pc[:, 2] > 1e-6
            ki, pc = ki[good], pc[good]
            pred = pc[:, :2] / pc[:, 2:3] * rec.focal + [rec.W / 2, rec.H / 2]
            pred_t, xy_t = torch.tensor(pred, dtype=torch.float32), torch.tensor(xy_j, dtype=torch.float32)
            ci, cj = [], []
            for a0 in range(0, len(pred_t), 2048):  # candidate pairs (sparse), in blocks
                near = torch.cdist(pred_t[a0:a0 + 2048], xy_t) < window_px
                bi, bj = torch.nonzero(near, as_tuple=True)
                ci.append(bi.numpy() + a0)
                cj.append(bj.numpy())
            ci, cj = np.concatenate(ci), np.concatenate(cj)
            # epipolar distance of each candidate to the line of its keypoint in i
            Rij = rec.R[j] @ rec.R[i].T
            tij = rec.t[j] - Rij @ rec.t[i]
            tx = np.array([[0, -tij[2], tij[1]], [tij[2], 0, -tij[0]], [-tij[1], tij[0], 0]])
            F = Kinv.T @ tx @ Rij @ Kinv
            lines = np.c_[rec.feats[i]["xy"][ki], np.ones(len(ki))] @ F.T  # [n_i, 3]
            lines /= np.linalg.norm(lines[:, :2], axis=1, keepdims=True) + 1e-12
            epi = np.abs((lines[ci] * np.c_[xy_j[cj], np.ones(len(cj))]).sum(1))
            ci, cj = ci[epi < epi_px], cj[epi < epi_px]
            if "time" in rec.feats[i]:  # pooled over times: partners come from the same time
                same = rec.feats[i]["time"][ki[ci]] == rec.feats[j]["time"][cj]
                ci, cj = ci[same], cj[same]
            if len(ci) < 8:
                continue
            desc_d = np.linalg.norm(rec.feats[i]["desc"][ki[ci]] - rec.feats[j]["desc"][cj], axis=1)
            # sparse ratio test and mutual check over the candidate pairs
            ci_s, cj_s, d_s, ok = _sparse_ratio_test(ci, cj, desc_d)
            o2 = np.lexsort((d_s, cj_s))
            best_for_j = {}
            for a, b in zip(ci_s[o2][::-1], cj_s[o2][::-1]):  # reversed: the best (first) wins
                best_for_j[int(b)] = int(a)
            ok &= np.array([best_for_j[int(b)] == int(a) for a, b in zip(ci_s, cj_s)], bool)
            m = np.stack([ki[ci_s[ok]], cj_s[ok]], 1)
            if len(m) >= cfg.min_pair_inliers:
                out[(i, j)] = m
    return out


def check_parallax(feats: list[dict], pairs: dict) -> float:
    """Median match displacement (pixels) over all verified pairs; ~0 means the views do not move."""
    d = [np.linalg.norm(feats[i]["xy"][m[:, 0]] - feats[j]["xy"][m[:, 1]], axis=1) for (i, j), m in pairs.items()]
    return float(np.median(np.concatenate(d))) if d else float("nan")


def affine_fallback_config(cfg: SfMConfig, corners_only: bool = False) -> SfMConfig:
    """The settings of the affine-feature fallback (``SfMConfig.affine_fallback``, used by
    ``api.grid_cameras``): affine-simulated SIFT at the frames' own size (upsampled to 360 rows as
    plain SIFT is, 1000000019 came out 2.33 deg off instead of 1.24, 18 0.84 instead of 5.57, at
    two to three times the time); pairs of views up to 3 apart (a window of 4 changed no pair kept
    on 1000000015, 18, 19); points seen by two views kept as well as those seen by three (affine
    features find a point again under unlike descriptors, so few tracks reach a third view: with
    three-view tracks only, about 300 points, 18 came out 5.57 deg off and 19 1.24; with two-view
    tracks, about 1,300 points, 1.81 and 1.25, 14 1.09 -> 0.88, 15 1.11 -> 0.73); far pairs kept
    only when their chain of neighbouring pairs confirms a quarter of their matches, as for plain
    SIFT (two-view tracks with any far pair the chain does not contradict: 19 2.75 deg); neither
    the guided matching round (1000000015: 0.50 deg -> 2.39, 18 3.08) nor guided registration
    (only an estimate that places every view by ordinary registration is used). ``corners_only``:
    without the keypoints on edges (``min_cornerness`` at ``cfg.affine_fallback_cornerness``)."""
    from dataclasses import replace

    return replace(cfg, affine_max_tilt=cfg.affine_fallback, min_detect_side=0, pair_window=min(cfg.pair_window, 3),
                   three_view_from=TWO_VIEW_TRACKS, guided=False, guided_register=False,
                   min_cornerness=cfg.affine_fallback_cornerness if corners_only else cfg.min_cornerness)


def flow_disagreement(frames: np.ndarray, usable: np.ndarray | None = None, threads: int = 0) -> np.ndarray:
    """How far dense optical flow disagrees with itself around each pixel: for each cell of
    ``frames`` uint8 [V, T, H, W, 3] (or [V, H, W, 3]), OpenCV's DIS flow (medium preset) to the
    next view at the same time (the last view: the one before), the distance between a pixel's
    forward flow and the backward flow where it lands, then the largest such distance within a
    square of 9 px at 512 wide (scaled). High along silhouettes, where one view sees what the other
    does not, and over repeated texture, where the flow locks onto the wrong period. Cells whose
    neighbouring views are not ``usable`` get 0 (nothing known). float32 [V, T, H, W] (or [V, H, W])."""
    import cv2

    from ..model.warp import dis_flow

    grid = frames if frames.ndim == 5 else frames[:, None]
    V, T, H, W = grid.shape[:4]
    usable = np.ones((V, T), bool) if usable is None else np.asarray(usable, bool).reshape(V, T)
    r = max(1, round(4 * max(H, W) / 512))
    kernel = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
    gx, gy = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    out = np.zeros((V, T, H, W), np.float32)

    def one(cell: tuple[int, int]) -> None:
        v, t = cell
        w = next((u for u in (v + 1, v - 1) if 0 <= u < V and usable[u, t]), None)
        if w is None or not usable[v, t]:
            return
        dis = dis_flow("medium")  # one per thread: a DIS object is not safe to share
        a = cv2.cvtColor(np.ascontiguousarray(grid[v, t]), cv2.COLOR_RGB2GRAY)
        b = cv2.cvtColor(np.ascontiguousarray(grid[w, t]), cv2.COLOR_RGB2GRAY)
        fwd, bwd = dis.calc(a, b, None), dis.calc(b, a, None)
        back = cv2.remap(bwd, gx + fwd[..., 0], gy + fwd[..., 1], cv2.INTER_LINEAR)
        out[v, t] = cv2.dilate(np.linalg.norm(fwd + back, axis=2), kernel)

    _map_threads(one, [(v, t) for v in range(V) for t in range(T)], threads)
    return out if frames.ndim == 5 else out[:, 0]


def attach_flow_disagreement(feats: list[dict], disagreement: np.ndarray) -> None:
    """Give each keypoint of ``feats`` (one set per view; pooled sets carry each keypoint's 'time')
    the ``flow_disagreement`` at its position, as 'flow_fb' [n]; ``disagreement`` [V, T, H, W] or
    [V, H, W]."""
    d = disagreement if disagreement.ndim == 4 else disagreement[:, None]
    H, W = d.shape[2:]
    for v, f in enumerate(feats):
        ij = np.clip(np.floor(f["xy"]).astype(int), 0, [W - 1, H - 1]) if len(f["xy"]) else np.zeros((0, 2), int)
        t = f["time"] if "time" in f else np.zeros(len(ij), int)
        f["flow_fb"] = d[v, t, ij[:, 1], ij[:, 0]]


def occlusion_px(cfg: SfMConfig, H: int, W: int) -> float:
    """``cfg.occlusion_fb_px`` scaled from a 512-wide frame to one of H x W."""
    return cfg.occlusion_fb_px * max(H, W) / 512.0


def match_flow_disagreement(feats: list[dict], pair: tuple[int, int], m: np.ndarray) -> np.ndarray:
    """[n]: for each match ``m`` [n, 2] of views ``pair``, the larger 'flow_fb' of its two keypoints."""
    i, j = pair
    return np.maximum(feats[i]["flow_fb"][m[:, 0]], feats[j]["flow_fb"][m[:, 1]])


def drop_flow_disagreeing(feats: list[dict], pairs: dict[tuple[int, int], np.ndarray], cfg: SfMConfig,
                          H: int, W: int) -> dict[tuple[int, int], np.ndarray]:
    """``SfMConfig.occlusion_fb_px``: drop the matches with a keypoint where the flow disagrees with
    itself (``attach_flow_disagreement``), unless that would drop more than
    ``cfg.occlusion_max_share`` of all the matches (then flow is failing over whole regions, and
    ``pairs`` come back as they are). Pairs left with too few matches are dropped."""
    if cfg.occlusion_fb_px <= 0 or not pairs or any("flow_fb" not in f for f in feats):
        return pairs
    thr = occlusion_px(cfg, H, W)
    bad = {k: match_flow_disagreement(feats, k, m) > thr for k, m in pairs.items()}
    if sum(int(b.sum()) for b in bad.values()) > cfg.occlusion_max_share * sum(len(m) for m in pairs.values()):
        return pairs
    kept = {k: m[~bad[k]] for k, m in pairs.items()}
    return {k: m for k, m in kept.items() if len(m) >= cfg.min_pair_inliers}


def checked_matches(feats: list[dict], cfg: SfMConfig, H: int, W: int) -> tuple[float, dict[tuple[int, int], np.ndarray]]:
    """The matches the camera estimate starts from: ``verified_matches`` at the epipolar threshold
    scaled to the frame size, without those where the flow disagrees with itself
    (``drop_flow_disagreeing``, when the features carry it), then the chain check. Returns
    (threshold px, pairs)."""
    thr = max(0.75, cfg.ransac_px * max(H, W) / 512.0)
    pairs = verified_matches(feats, cfg, thr, coherence_px=max(3.0, cfg.coherence * max(H, W)))
    pairs = drop_flow_disagreeing(feats, pairs, cfg, H, W)
    if cfg.chain_check:
        pairs = {k: m for k, m in chain_check(pairs, cfg.chain_min_frac).items() if len(m) >= cfg.min_pair_inliers}
    return thr, pairs


def estimate_cameras(images: np.ndarray, cfg: SfMConfig | None = None, log=None,
                     usable: np.ndarray | None = None) -> CameraEstimate:
    """Estimate the cameras of ``images``: uint8 [V, H, W, 3] (one per view, scene frozen), or a
    whole grid uint8 [V, T, H, W, 3] whose time columns all show the same cameras (each column a
    frozen instant); then ``usable`` bool [V, T] (default all) says which cells may be used, and
    views are matched within each time column with the matches pooled (``pooled_features``).

    Raises InputError when the views show no camera motion at all; falls back to the orbit
    prior (with a warning in ``.warnings``) when the features cannot place enough views.
    """
    cfg = cfg or SfMConfig()
    V, H, W = images.shape[0], images.shape[-3], images.shape[-2]
    if V < 2:
        raise InputError("a reconstruction needs at least 2 views; this grid has 1")
    if images.ndim == 5:
        usable = np.ones(images.shape[:2], bool) if usable is None else np.asarray(usable, bool)
        feats = pooled_features(images, usable, cfg)
    else:
        feats = _detect_many(list(images), cfg)
    if cfg.occlusion_fb_px > 0:
        used = usable
        if images.ndim == 5:  # only the time columns that were matched
            used = usable & np.isin(np.arange(images.shape[1]), sorted({t for f in feats for t in f["local"]}))[None]
        attach_flow_disagreement(feats, flow_disagreement(images, used, cfg.threads))
    thr, pairs = checked_matches(feats, cfg, H, W)
    warnings: list[str] = []
    par = check_parallax(feats, pairs)
    if pairs and par < 0.25:
        raise InputError("the views of the grid show no camera motion (the freeze-time column repeats one "
                         "image); a reconstruction needs views from different cameras")
    tracks = build_tracks(pairs, [len(f["xy"]) for f in feats]) if pairs else []
    best = None
    if len(tracks) >= 30:
        fovs = [cfg.fov_x_deg] if cfg.fov_x_deg else list(cfg.fov_candidates)
        for order, fov in enumerate(fovs):
            rec, rms = _sfm_with_focal(feats, tracks, pairs, focal_from_fov(fov, W), H, W, cfg,
                                       optimise_focal=cfg.fov_x_deg is None)
            if rec is None:
                continue
            n_pts = int(np.isfinite(rec.X[:, 0]).sum())
            if log:
                log(f"fov start {fov:.0f} -> {fov_from_focal(rec.focal, W):.1f} deg, {len(rec.R)}/{V} views, "
                    f"{n_pts} points, rms {rms:.3f} px")
            # more views placed wins; then the lower error (with two views the focal length is
            # not observable, so the first, default, candidate is kept)
            key = (-len(rec.R), rms if len(rec.R) >= 3 else order)
            if np.isfinite(rms) and (best is None or key < best[0]):
                best = (key, rec, rms)
            if len(rec.R) == V and rms < 0.5 * thr:  # every view placed, sub-pixel fit: done
                break
    first = best
    first_focal = best[1].focal if best is not None else float("nan")  # (later rounds may change ``first``)
    if best is not None and cfg.guided and len(best[1].R) >= 3:
        # 2. With the first cameras, match again where repeated textures defeated the ratio test.
        best, _ = _guided_round(best, pairs, feats, cfg, H, W, thr, log)
    if best is not None and cfg.guided_register and 3 <= len(best[1].R) < V and len(first[1].R) >= 3:
        # 2b. Views still unplaced: register again from the first matches, placing the views
        # that PnP from the tracks cannot reach from the points matched around their poses
        # predicted along the orbit (``_register_guided``), from each focal length candidate as
        # in the first round; then a round of guided matching around the views placed. (From the
        # guided round's matches instead, 1000000008 placed view 6 9 deg off: 21.7 deg; from
        # the best first candidate alone, fov 35 there, 7 of 8 views.)
        n0 = len(best[1].R)
        found = None
        for order, fov in enumerate(fovs):
            rec, rms = _sfm_with_focal(feats, tracks, pairs, focal_from_fov(fov, W), H, W, cfg,
                                       optimise_focal=cfg.fov_x_deg is None, log=log, guided_register=True)
            if rec is None or not np.isfinite(rms):
                continue
            if log:
                log(f"guided registration from fov {fov:.0f}: {len(rec.guided)} views -> "
                    f"{fov_from_focal(rec.focal, W):.1f} deg, {len(rec.R)}/{V} views, "
                    f"{int(np.isfinite(rec.X[:, 0]).sum())} points, rms {rms:.3f} px")
            key = (-len(rec.R), rms)
            if found is None or key < found[0]:
                found = (key, rec, rms)
            if len(rec.R) == V and rms < 0.5 * thr:
                break
        if found is not None and len(found[1].R) > n0:
            best = found
            if cfg.guided:
                best, _ = _guided_round(best, pairs, feats, cfg, H, W, thr, log)
    if best is not None and cfg.orbit_repair and V >= 5 and len(best[1].R) == V:
        # (only with every view placed: predicting unplaced views and polishing placed them wrongly)
        best = _orbit_repair(best, feats, cfg, H, W, thr, log)
    if best is not None and cfg.vanishing_weight > 0 and len(best[1].R) == V:
        if images.ndim == 5:  # a whole grid: each view's first usable cell
            view_images = [images[v, int(np.argmax(usable[v]))] for v in range(V)]
        else:
            view_images = list(images)
        held = _vanishing_round(best, view_vanishing_points(view_images), cfg, H, W, thr, log)
        if held is not best:
            # the focal length the vanishing points set is the one to check later rounds against
            # (``api.grid_cameras`` tries other features when the field of view moved far)
            best, first_focal = held, held[1].focal
    if best is not None and len(best[1].R) >= max(2, math.ceil(cfg.min_registered_frac * V)):
        rec, rms = best[1], best[2]
        n_registered = len(rec.R)
        if n_registered < V:  # views that did not register: between their registered neighbours
            _fill_missing(rec, V)
            warnings.append(f"{V - n_registered} of {V} views placed from their neighbours, not from features")
        est = _package(rec, feats, V, H, W, "features", rms, n_registered, warnings)
        est.fov_first_deg = fov_from_focal(first_focal, W)
        return est
    if best is not None and len(best[1].R) >= 2:
        # 3. Too few views for free structure from motion: repeat the motion between the views
        # that were placed (an orbit at constant speed), and let the fit refine it.
        rec, rms = best[1], best[2]
        n_registered = len(rec.R)
        _constant_motion(rec, V)
        warnings.append(f"only {n_registered} of {V} views could be placed from features; the others follow "
                        "their constant-speed path (a coarse prior that the fit refines)")
        return _package(rec, feats, V, H, W, "constant-motion prior", rms, n_registered, warnings)
    why = "too few features matched between views" if best is None else \
        f"only {len(best[1].R)} of {V} views could be placed"
    fov = cfg.fov_x_deg or 50.0
    vms, Ks = orbit_prior(V, H, W, fov_x_deg=fov)
    warnings.append(f"camera estimate from features failed ({why}); using an orbit prior")
    return CameraEstimate(viewmats=vms, Ks=Ks, points=np.zeros((0, 3)), colors=np.zeros((0, 3)),
                          source="orbit-prior", fov_x_deg=fov, warnings=warnings, scene_scale=0.5,
                          up=np.array([0.0, -1.0, 0.0]))


def _vanishing_round(best, found: list, cfg: SfMConfig, H: int, W: int, thr: float, log=None):
    """``best`` (key, reconstruction, rms), every view posed, polished once more with its views'
    rotations held to ``found``, their dominant vanishing points (``vanishing.view_vanishing_points``),
    when those look like one line family (``vanishing.one_family``) and the estimate's rays towards
    them spread by more than ``cfg.vanishing_min_spread_deg``; else ``best`` itself."""
    V = len(best[1].R)
    vps = one_family(found, H, W)
    if vps is None:
        if log:
            log("vanishing points: the views do not share one line family; not used")
        return best
    rec0 = best[1]
    spread0 = vp_spread(rec0, vps)
    if spread0 <= cfg.vanishing_min_spread_deg:
        if log:
            log(f"vanishing points: one line family in {V} views, within {spread0:.2f} deg of the estimate; not used")
        return best
    rec = _Recon(rec0.feats, rec0.tracks, rec0.focal, H, W)
    rec.R, rec.t, rec.X = dict(rec0.R), dict(rec0.t), rec0.X.copy()
    rec.guided, rec.fixed = set(rec0.guided), rec0.fixed
    fixed = rec.fixed if rec.fixed is not None else min(rec.R)
    cams, _, _ = rec.observations()
    # a turn of a view by a small angle moves each of its point observations by about focal x
    # angle: at weight 1 its vanishing point resists the turn as much as all of them together
    weight = cfg.vanishing_weight * rec.focal * math.sqrt(max(len(cams), 1) / V)
    optimise_focal = cfg.fov_x_deg is None
    min_obs = 3 if V >= cfg.three_view_from else 2
    rms = _polish(rec, fixed, cfg, thr, min_obs, optimise_focal, dict(enumerate(vps)), weight)
    fov = fov_from_focal(rec.focal, W)
    usual = cfg.fov_x_deg is not None or USUAL_FOV_DEG[0] <= fov <= USUAL_FOV_DEG[1]
    if log:
        log(f"vanishing points: one line family in {V} views; spread {spread0:.2f} -> {vp_spread(rec, vps):.2f} deg, "
            f"rms {best[2]:.3f} -> {rms:.3f} px, fov {fov_from_focal(rec0.focal, W):.1f} -> {fov:.1f} deg"
            + ("" if usual else " (outside the usual fields of view: not kept)"))
    # a field of view no video camera has: the points were a different family in some views
    # (1000000037: 56.8 deg true, 11.6 held to its vanishing points; 52: 121.9)
    return ((-V, rms), rec, rms) if np.isfinite(rms) and usual else best


def vp_spread(rec: _Recon, vps: list[np.ndarray]) -> float:
    """``vanishing.direction_spread`` of the reconstruction's views 0, 1, ... against ``vps``."""
    return direction_spread(np.stack([rec.R[v] for v in range(len(vps))]), [rec.K] * len(vps), vps)


def _guided_round(best, pairs, feats, cfg: SfMConfig, H: int, W: int, thr: float, log=None):
    """``best`` (key, reconstruction, rms) rebuilt from ``pairs`` plus the matches its cameras
    guide (``guided_matches``), kept when it places at least as many views and its RMS error
    stays within ``cfg.guided_max_rms_ratio`` of the first. Returns (the better of the two, the
    pairs it was built from)."""
    V = len(feats)
    rec0 = best[1]
    guided = guided_matches(rec0, cfg, window_px=cfg.guided_window * max(H, W), epi_px=thr)
    merged = merge_pairs(pairs, guided)
    tracks2 = build_tracks(merged, [len(f["xy"]) for f in feats])
    rec, rms = _sfm_with_focal(feats, tracks2, merged, rec0.focal, H, W, cfg,
                               optimise_focal=cfg.fov_x_deg is None, log=log)
    if rec is None or not np.isfinite(rms):
        return best, pairs
    if log:
        log(f"guided matching: {sum(map(len, guided.values()))} matches -> "
            f"{fov_from_focal(rec.focal, W):.1f} deg, {len(rec.R)}/{V} views, "
            f"{int(np.isfinite(rec.X[:, 0]).sum())} points, rms {rms:.3f} px")
    if len(rec.R) < len(rec0.R) or (len(rec.R) == len(rec0.R) and rms > cfg.guided_max_rms_ratio * best[2]):
        if log:
            log("guided matching: kept the first estimate")
        return best, pairs
    rec.guided |= rec0.guided  # matched around cameras that guided registration placed
    return ((-len(rec.R), rms), rec, rms), merged


def merge_pairs(a: dict, b: dict) -> dict:
    """Two sets of matches {(i, j): [m, 2] keypoint index pairs} as one, each pair once."""
    empty = np.zeros((0, 2), int)
    return {k: np.unique(np.concatenate([a.get(k, empty), b.get(k, empty)]), axis=0) for k in set(a) | set(b)}


def _orbit_repair(best, feats, cfg: SfMConfig, H: int, W: int, thr: float, log=None):
    """``best`` (key, reconstruction, rms) checked against the orbit prior (see ``orbit.py``):
    when every view is placed but a link breaks the smooth path, that link gets the step the
    other links predict, and the cameras are polished from there with guided matches; the result
    replaces ``best`` when every view is still seen and fewer links break the path. ``best``
    places every view (the caller checks). (Predicting unplaced views the same way was measured
    and placed them wrongly: 1000000014 8.3 deg instead of 2.8, 1000000017 kept from column 0
    at 4.6 deg where the whole grid passes.)"""
    from .orbit import orbit_kinks, polish_from_poses, predict_poses, views_seen

    V = len(feats)
    rec0 = best[1]
    kinks = orbit_kinks(rec0.R, rec0.t, V)
    if not kinks:
        return best
    Rn, tn = predict_poses(rec0.R, rec0.t, V, kinks)
    start = _Recon(feats, rec0.tracks, rec0.focal, H, W)
    start.R, start.t = Rn, tn
    # guided matches alone (the verified ones hold the wrong matches that turned the link), in
    # twice the usual window: the predicted step can be a degree or two off. 1000000012 from
    # column 0: 8.9 deg before the repair; after it 2.09 (window x1), 1.83 (x0.5), 1.96 (x2)
    rec, rms = polish_from_poses(start, {}, cfg, H, W, thr, optimise_focal=cfg.fov_x_deg is None,
                                 window_scale=2.0)
    if rec is None or not np.isfinite(rms):
        return best
    new_kinks = orbit_kinks(rec.R, rec.t, V)
    n_seen = views_seen(rec)
    if log:
        log(f"orbit prior: links {kinks} off the path, {V}/{V} views placed -> polished from predicted poses: "
            f"{n_seen}/{V} views seen, links {new_kinks} off the path, rms {rms:.3f} px")
    if not (n_seen == V and len(new_kinks) < len(kinks)):
        return best
    rec.guided = set(rec0.guided)
    return ((-V, rms), rec, rms)


def _package(rec: _Recon, feats, V: int, H: int, W: int, source: str, rms: float, n_registered: int,
             warnings: list[str]) -> CameraEstimate:
    """A CameraEstimate from a reconstruction with every view posed, in the normalised frame."""
    vms = np.zeros((V, 4, 4))
    for v in range(V):
        vms[v, :3, :3], vms[v, :3, 3], vms[v, 3, 3] = rec.R[v], rec.t[v], 1.0
    ok = np.isfinite(rec.X[:, 0])
    pts = rec.X[ok]
    cols = np.array([np.mean([feats[v]["rgb"][k] for v, k in tr.items()], axis=0)
                     for tr, good in zip(rec.tracks, ok) if good]).reshape(-1, 3)
    vms, pts, centre, s, up = _normalise(vms, pts)
    # keep the bulk of the points: far outliers would inflate the scene scale
    dist = np.linalg.norm(pts, axis=1)
    keep = dist < max(4.0, 3 * np.percentile(dist, 90)) if len(dist) else dist > 0
    pts, cols = pts[keep], cols[keep]
    scale = float(np.percentile(np.linalg.norm(pts, axis=1), 90)) if len(pts) > 4 else 0.5
    K = intrinsics(rec.focal, H, W)
    return CameraEstimate(viewmats=vms, Ks=np.repeat(K[None], V, 0), points=pts, colors=cols,
                          source=source, fov_x_deg=fov_from_focal(rec.focal, W), reproj_px=rms,
                          n_registered=n_registered, n_guided=len(rec.guided), warnings=warnings,
                          scene_centre=centre, scene_scale=max(scale, 1e-3), up=up)


def _se3_V(w: np.ndarray) -> np.ndarray:
    """The left Jacobian V of SO(3) at axis-angle ``w``: t = V u for an SE(3) tangent (w, u)."""
    th = float(np.linalg.norm(w))
    Wx = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])
    if th < 1e-9:
        Vm = np.eye(3)
    else:
        Vm = np.eye(3) + (1 - math.cos(th)) / th ** 2 * Wx + (th - math.sin(th)) / th ** 3 * Wx @ Wx
    return Vm


def _se3_log(R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    w = cv2.Rodrigues(R)[0].ravel()
    return w, np.linalg.solve(_se3_V(w), t)


def _se3_exp(w: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return rodrigues(w), _se3_V(w) @ u


def _constant_motion(rec: _Recon, V: int) -> None:
    """Pose every unplaced view by repeating the mean motion per view step between the two
    farthest-apart placed views (a screw motion: an orbit at constant speed)."""
    placed = sorted(rec.R)
    i, j = placed[0], placed[-1]
    Rij = rec.R[j] @ rec.R[i].T  # T_j = T_ij T_i
    tij = rec.t[j] - Rij @ rec.t[i]
    w, u = _se3_log(Rij, tij)
    Rs, ts = _se3_exp(w / (j - i), u / (j - i))  # one view step
    for v in range(V):
        if v in rec.R:
            continue
        k = v - i
        R, t = np.eye(3), np.zeros(3)
        step = (Rs, ts) if k > 0 else (Rs.T, -Rs.T @ ts)
        for _ in range(abs(k)):
            R, t = step[0] @ R, step[0] @ t + step[1]
        rec.R[v], rec.t[v] = R @ rec.R[i], R @ rec.t[i] + t


def _fill_missing(rec: _Recon, V: int) -> None:
    """Poses for unregistered views: interpolated from the nearest registered ones on either side;
    beyond the first or last registered view, continuing at the mean speed of the registered ones
    (``_constant_motion``; a copy of the end view put 1000000014's two first views 12 deg off)."""
    import cv2

    done = sorted(rec.R)
    ends = []
    for v in range(V):
        if v in rec.R:
            continue
        lo = max([u for u in done if u < v], default=None)
        hi = min([u for u in done if u > v], default=None)
        if lo is None or hi is None:
            ends.append(v)
            continue
        a = (v - lo) / (hi - lo)
        dr = cv2.Rodrigues(rec.R[hi] @ rec.R[lo].T)[0].ravel()
        R = cv2.Rodrigues(a * dr)[0] @ rec.R[lo]
        c = (1 - a) * (-rec.R[lo].T @ rec.t[lo]) + a * (-rec.R[hi].T @ rec.t[hi])
        rec.R[v], rec.t[v] = R, -R @ c
    if ends:
        known = {u: (rec.R.pop(u), rec.t.pop(u)) for u in range(V) if u not in done and u in rec.R}
        _constant_motion(rec, V)  # from the registered views only (the interpolated ones set aside)
        for u, (R, t) in known.items():
            rec.R[u], rec.t[u] = R, t


# ---------------------------------------------------------------------------------------------
# 4. Points of one instant with known cameras (seeds for what moves)


def triangulate_with_cameras(images: np.ndarray, viewmats: np.ndarray, Ks: np.ndarray, masks: np.ndarray | None = None,
                             cfg: SfMConfig | None = None, window: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Points seen at one instant by several views whose cameras are known: (points [M, 3], rgb [M, 3]).

    ``images`` uint8 [n, H, W, 3] (one time, n views), ``viewmats`` [n, 4, 4], ``Ks`` [n, 3, 3],
    ``masks`` bool [n, H, W] limits the keypoints (e.g. to what moved). Views i and j (j - i <=
    ``window``) are matched (mutual nearest, ratio test), kept when a match lies within the
    epipolar threshold of the known geometry, triangulated, and kept when the point is in front
    of both cameras and reprojects within the threshold.
    """
    cfg = cfg or SfMConfig()
    n, H, W = images.shape[:3]
    if n < 2:
        return np.zeros((0, 3)), np.zeros((0, 3))
    feats = detect_features(images, cfg)
    if masks is not None:
        for f, m in zip(feats, masks):
            ij = np.clip(np.floor(f["xy"]).astype(int), 0, [W - 1, H - 1])
            keep = m[ij[:, 1], ij[:, 0]] if len(ij) else np.zeros(0, bool)
            for k in ("xy", "desc", "rgb", "self"):
                if k in f:
                    f[k] = f[k][keep]
    thr = max(0.75, cfg.ransac_px * max(H, W) / 512.0)
    pts, cols = [], []
    for i in range(n):
        for j in range(i + 1, min(n, i + 1 + window)):
            m = match_pair(feats[i], feats[j], cfg.ratio)
            if len(m) == 0:
                continue
            a, b = feats[i]["xy"][m[:, 0]], feats[j]["xy"][m[:, 1]]
            Pi, Pj = Ks[i] @ viewmats[i, :3], Ks[j] @ viewmats[j, :3]
            A = np.stack([a[:, :1] * Pi[2] - Pi[0], a[:, 1:] * Pi[2] - Pi[1],
                          b[:, :1] * Pj[2] - Pj[0], b[:, 1:] * Pj[2] - Pj[1]], 1)  # [m, 4, 4] pixel DLT
            Xw = np.linalg.svd(A)[2][:, -1]  # [m, 4]
            with np.errstate(invalid="ignore", divide="ignore"):
                Xh = Xw[:, :3] / Xw[:, 3:]
            ok = np.isfinite(Xh).all(1)
            for P, uv, vm in ((Pi, a, viewmats[i]), (Pj, b, viewmats[j])):
                Xc = Xh @ vm[:3, :3].T + vm[:3, 3]
                proj = np.c_[Xh, np.ones(len(Xh))] @ P.T
                with np.errstate(invalid="ignore", divide="ignore"):
                    err = np.linalg.norm(proj[:, :2] / proj[:, 2:3] - uv, axis=1)
                ok &= (Xc[:, 2] > 1e-3) & (err < 2 * thr)
            pts.append(Xh[ok])
            cols.append(0.5 * (feats[i]["rgb"][m[ok, 0]] + feats[j]["rgb"][m[ok, 1]]))
    if not pts:
        return np.zeros((0, 3)), np.zeros((0, 3))
    return np.concatenate(pts), np.concatenate(cols)


def sampson_px(xa: np.ndarray, xb: np.ndarray, vm_a: np.ndarray, vm_b: np.ndarray,
               K_a: np.ndarray, K_b: np.ndarray) -> np.ndarray:
    """Sampson distance [m] (pixels) of matches xa [m, 2] -> xb [m, 2] from the epipolar geometry
    of two cameras (world -> camera ``vm`` [4, 4], intrinsics ``K`` [3, 3])."""
    R = vm_b[:3, :3] @ vm_a[:3, :3].T
    t = vm_b[:3, 3] - R @ vm_a[:3, 3]
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    F = np.linalg.inv(K_b).T @ tx @ R @ np.linalg.inv(K_a)
    F = F / max(np.linalg.norm(F), 1e-12)
    a = np.c_[xa, np.ones(len(xa))]
    b = np.c_[xb, np.ones(len(xb))]
    Fa, Ftb = a @ F.T, b @ F  # [m, 3]
    num = np.einsum("mi,mi->m", b, Fa) ** 2
    den = Fa[:, 0] ** 2 + Fa[:, 1] ** 2 + Ftb[:, 0] ** 2 + Ftb[:, 1] ** 2
    return np.sqrt(num / np.maximum(den, 1e-30))


def heldout_matches(frames: np.ndarray, usable: np.ndarray, cfg: SfMConfig, min_matches: int = 16
                    ) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """Matches that neither camera estimate of ``grid_cameras`` was fitted to: between views
    further apart than ``cfg.pair_window`` (never matched by the estimate) in time columns 1..
    (column 0 alone never sees them), each a frozen instant. Mutual nearest neighbours passing
    the ratio test and the motion-coherence check, with gross outliers removed by a fundamental
    matrix fitted to the matches themselves (RANSAC, 3x the estimate's threshold) — no camera
    enters. Returns [(view a, view b, xy_a [m, 2], xy_b [m, 2])]; empty when the grid has no such
    pairs (e.g. V <= pair_window + 1).

    ``frames`` uint8 [V, T, H, W, 3], ``usable`` bool [V, T]."""
    import cv2

    V, T, H, W = frames.shape[:4]
    pairs = [(i, j) for i in range(V) for j in range(i + cfg.pair_window + 1, V)]
    times = [t for t in range(1, T) if usable[:, t].sum() >= 2]
    if len(times) > cfg.max_times:
        times = [times[i] for i in np.unique(np.round(np.linspace(0, len(times) - 1, cfg.max_times)).astype(int))]
    cells = sorted({(v, t) for t in times for i, j in pairs for v in (i, j) if usable[i, t] and usable[j, t]})
    if not cells:
        return []
    det = dict(zip(cells, _detect_many([frames[v, t] for v, t in cells], cfg)))
    thr = max(0.75, cfg.ransac_px * max(H, W) / 512.0)
    out = []
    for t in times:
        for i, j in pairs:
            if (i, t) not in det or (j, t) not in det:
                continue
            fa, fb = det[(i, t)], det[(j, t)]
            m = match_pair(fa, fb, cfg.ratio)
            if len(m) < min_matches:
                continue
            a, b = fa["xy"][m[:, 0]], fb["xy"][m[:, 1]]
            ok = coherent(a, b, max(3.0, cfg.coherence * max(H, W)))
            a, b = a[ok], b[ok]
            if len(a) < min_matches:
                continue
            with seeded_cv2():
                F, mask = cv2.findFundamentalMat(a, b, cv2.FM_RANSAC, 3 * thr, 0.999, 2000)
            if F is None or mask is None or mask.sum() < min_matches:
                continue
            keep = mask.ravel().astype(bool)
            out.append((i, j, a[keep], b[keep]))
    return out


def heldout_error(matches: list[tuple[int, int, np.ndarray, np.ndarray]], est: CameraEstimate) -> float:
    """The median Sampson distance (pixels) of held-out matches under an estimate's cameras: the
    median over view pairs of each pair's median (a pair with many matches does not dominate).
    NaN without matches."""
    meds = [float(np.median(sampson_px(a, b, est.viewmats[i], est.viewmats[j], est.Ks[i], est.Ks[j])))
            for i, j, a, b in matches]
    return float(np.median(meds)) if meds else float("nan")
