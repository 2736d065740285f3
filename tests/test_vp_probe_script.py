"""scripts/vp_probe.py: segments drawn towards a known point find it; cameras that see one 3D
direction at their vanishing points agree on it, and a rotation 3 degrees off shows."""

import numpy as np

from core.recon.geometry import focal_from_fov
from core.recon.toyscene import look_at


def test_segments_drawn_towards_a_point_vote_for_it(load_script):
    import cv2

    probe = load_script("vp_probe")
    H, W, vp = 240, 320, np.array([410.0, 60.0])
    img = np.full((H, W, 3), 200, np.uint8)
    rng = np.random.default_rng(1)
    for _ in range(14):  # stripes towards vp, plus clutter in other directions
        a = rng.uniform([10, 120], [250, 230])
        b = a + 0.45 * (vp - a)
        cv2.line(img, tuple(int(round(x)) for x in a), tuple(int(round(x)) for x in b), (20, 20, 20), 3)
    for _ in range(4):
        a = rng.uniform([10, 10], [300, 230])
        cv2.line(img, tuple(int(x) for x in a), tuple(int(x) for x in a + rng.uniform(-60, 60, 2)), (90, 20, 20), 2)
    segs = probe.segments(img)
    found, n = probe.vanishing_point(segs, np.random.default_rng(0))
    assert n >= 14
    assert np.linalg.norm(found[:2] / found[2] - vp) < 6.0  # a few px at 100 px beyond the frame
    assert probe.vanishing_point(segs[:1], np.random.default_rng(0)) == (None, 0)


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
