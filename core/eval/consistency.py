"""Multi-view consistency without a learned metric: the share of feature matches between views
of one time step that fit an epipolar geometry.

For each time step t and each pair of neighbouring views (v, v+1) of column t: SIFT features
(on the frames upscaled x``UPSCALE``, since 72x128 frames hold few keypoints), Lowe's ratio test,
then ``cv2.findFundamentalMat`` with RANSAC. The figure is pooled: inliers of all pairs over
matches of all pairs, in percent. A pair with fewer than ``MIN_MATCHES`` matches counts its
matches as outliers (with so few, a fundamental matrix fits chance matches). The evaluation looks
at columns 1..T-1 only: column 0 is an input in the main task, and would flatter every row. Ground truth of a rigid scene scores high; views that do not agree
(mush, flicker, objects in the wrong place) score lower.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UPSCALE = 2
RATIO = 0.8
RANSAC_PX = 1.0  # in pixels of the upscaled frame
MIN_MATCHES = 15  # below this a 7-dof fundamental matrix fits chance matches: count them as outliers


@dataclass
class Consistency:
    inlier_pct: float  # pooled inliers / matches, in percent (nan when no pair had a match)
    matches: int  # matches over all pairs
    inliers: int
    pairs: int  # view pairs looked at


def _features(cv2, sift, frame: np.ndarray):
    img = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    if UPSCALE != 1:
        img = cv2.resize(img, None, fx=UPSCALE, fy=UPSCALE, interpolation=cv2.INTER_CUBIC)
    return sift.detectAndCompute(img, None)


def pair_inliers(cv2, feats_a, feats_b, rng_seed: int = 0) -> tuple[int, int]:
    """(matches, inliers) between two frames' (keypoints, descriptors)."""
    (ka, da), (kb, db) = feats_a, feats_b
    if da is None or db is None or len(ka) < 2 or len(kb) < 2:
        return 0, 0
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    good = []
    for pair in matcher.knnMatch(da, db, k=2):
        if len(pair) == 2 and pair[0].distance < RATIO * pair[1].distance:
            good.append(pair[0])
    n = len(good)
    if n < MIN_MATCHES:
        return n, 0
    pa = np.float32([ka[m.queryIdx].pt for m in good])
    pb = np.float32([kb[m.trainIdx].pt for m in good])
    cv2.setRNGSeed(rng_seed)
    _, mask = cv2.findFundamentalMat(pa, pb, cv2.FM_RANSAC, RANSAC_PX, 0.999)
    return n, int(mask.sum()) if mask is not None else 0


def epipolar_consistency(frames: np.ndarray, times: list[int] | None = None) -> Consistency:
    """frames: uint8 [V, T, H, W, 3]; times: the columns to look at (default all)."""
    import cv2

    V, T = frames.shape[:2]
    sift = cv2.SIFT_create()
    matches = inliers = pairs = 0
    for t in range(T) if times is None else times:
        feats = [_features(cv2, sift, frames[v, t]) for v in range(V)]
        for v in range(V - 1):
            n, k = pair_inliers(cv2, feats[v], feats[v + 1], rng_seed=1000 * t + v)
            matches += n
            inliers += k
            pairs += 1
    pct = 100.0 * inliers / matches if matches else float("nan")
    return Consistency(pct, matches, inliers, pairs)
