"""scripts/match_probe.py: a keypoint lifted with its true depth and carried into another view lands
where that view sees the same 3D point; a match one stripe off is measured that far off."""

import numpy as np

from core.recon.geometry import focal_from_fov
from core.recon.toyscene import look_at


def _project(X: np.ndarray, vm: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = X @ vm[:3, :3].T + vm[:3, 3]
    return q[:, :2] / q[:, 2:3] @ K[:2, :2].T + K[:2, 2] + 0.5, q[:, 2]  # keypoint convention: centres at +0.5


def test_transfer_carries_keypoints_with_their_true_depth(load_script):
    probe = load_script("match_probe")
    H, W = 96, 160
    f = focal_from_fov(55.0, W)
    K = np.array([[f, 0, W / 2 - 0.5], [0, f, H / 2 - 0.5], [0, 0, 1.0]])  # the synthetic world's intrinsics
    a = look_at(np.array([6.0, -1.0, 2.0]), np.zeros(3))
    b = look_at(np.array([5.5, 1.5, 2.3]), np.zeros(3))
    X = np.random.default_rng(0).uniform(-1.5, 1.5, (50, 3))
    xa, za = _project(X, a, K)
    xb, _ = _project(X, b, K)
    assert np.abs(probe.transfer(xa, za, a, b, K) - xb).max() < 1e-6
    # the same keypoint at a wrong depth (a match that slid along its epipolar line) lands elsewhere
    moved = np.linalg.norm(probe.transfer(xa, 1.3 * za, a, b, K) - xb, axis=1)
    assert np.median(moved) > 2.0
