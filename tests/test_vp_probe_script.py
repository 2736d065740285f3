"""scripts/vp_probe.py: cameras that see one 3D direction at their vanishing points agree on it,
and a rotation 3 degrees off shows (finding the points: tests/test_recon_vanishing.py)."""

import numpy as np

from core.recon.geometry import focal_from_fov
from core.recon.toyscene import look_at


def test_right_rotations_agree_on_the_direction_and_a_wrong_one_does_not(load_script):
    probe = load_script("vp_probe")
    W = 512
    f = focal_from_fov(56.0, W)
    K = np.array([[f, 0, W / 2], [0, f, 144.0], [0, 0, 1.0]])
    d = np.array([0.8, 0.6, 0.0])  # the stripes' direction, on the floor
    vms = [look_at(np.array([6 * np.cos(a), 6 * np.sin(a), 2.0]), np.zeros(3)) for a in np.radians([0, 9, 18, 27])]
    vps = [K @ (vm[:3, :3] @ d) for vm in vms]  # homogeneous: also right for a point far off the frame
    Ks = np.stack([K] * 4)
    assert probe.direction_spread(np.stack(vms), Ks, vps) < 1e-6
    wrong = [vm.copy() for vm in vms]
    c, s = np.cos(np.radians(3.0)), np.sin(np.radians(3.0))
    wrong[2][:3, :3] = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]) @ wrong[2][:3, :3]  # a 3 deg pan
    assert 1.5 < probe.direction_spread(np.stack(wrong), Ks, vps) < 3.0
