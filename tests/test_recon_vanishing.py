"""Vanishing points and the bundle adjustment's vanishing-point residual (core/recon/vanishing.py,
cameras.bundle_adjust's ``vps``), on drawn lines and exact toy cameras."""

import math

import cv2
import numpy as np
import pytest

from core.recon.cameras import _Recon, bundle_adjust, vp_spread
from core.recon.geometry import intrinsics, rodrigues
from core.recon.toyscene import look_at
from core.recon.vanishing import one_family, segments, turn_steps, vanishing_point

H, W, F = 120, 200, 180.0


def test_segments_drawn_towards_a_point_vote_for_it():
    H_, W_, vp = 240, 320, np.array([410.0, 60.0])
    img = np.full((H_, W_, 3), 200, np.uint8)
    rng = np.random.default_rng(1)
    for _ in range(14):  # stripes towards vp, plus clutter in other directions
        a = rng.uniform([10, 120], [250, 230])
        b = a + 0.45 * (vp - a)
        cv2.line(img, tuple(int(round(x)) for x in a), tuple(int(round(x)) for x in b), (20, 20, 20), 3)
    for _ in range(4):
        a = rng.uniform([10, 10], [300, 230])
        cv2.line(img, tuple(int(x) for x in a), tuple(int(x) for x in a + rng.uniform(-60, 60, 2)), (90, 20, 20), 2)
    segs = segments(img)
    found, n = vanishing_point(segs, np.random.default_rng(0))
    assert n >= 14
    assert np.linalg.norm(found[:2] / found[2] - vp) < 6.0  # a few px at 100 px beyond the frame
    assert vanishing_point(segs[:1], np.random.default_rng(0)) == (None, 0)


def _cameras(V=5):
    eyes = [np.array([6 * math.cos(a), 6 * math.sin(a), 2.0]) for a in np.radians(np.linspace(-20, 20, V))]
    return [look_at(e, np.zeros(3)) for e in eyes]


def _vp_of(vm, d, focal=F):
    h = intrinsics(focal, H, W) @ vm[:3, :3] @ d
    return h / np.linalg.norm(h)


def test_one_family_accepts_a_smooth_turn_and_refuses_a_jump():
    d = np.array([1.0, 0.3, 0.0]) / np.linalg.norm([1.0, 0.3, 0.0])
    vps = [_vp_of(vm, d) for vm in _cameras()]
    steps = turn_steps(vps, H, W)
    assert steps.max() - steps.min() < 1.0
    assert one_family([(vp, 20) for vp in vps], H, W) is not None
    other = _vp_of(_cameras()[2], np.array([0.0, 0.0, 1.0]))  # view 2 picked the vertical lines
    assert one_family([(vp, 20) for vp in vps[:2] + [other] + vps[3:]], H, W) is None
    assert one_family([(vp, 20) for vp in vps[:4]] + [(None, 0)], H, W) is None
    assert one_family([(vp, 3) for vp in vps], H, W) is None  # too few segments


def _toy_recon(vms, rng, n_pts=60):
    X = rng.uniform(-1.5, 1.5, (n_pts, 3))
    K = intrinsics(F, H, W)
    feats, tracks = [], [{v: i for v in range(len(vms))} for i in range(n_pts)]
    for vm in vms:
        x = (K @ (vm[:3, :3] @ X.T + vm[:3, 3:])).T
        feats.append({"xy": x[:, :2] / x[:, 2:]})
    rec = _Recon(feats, tracks, F, H, W)
    rec.R = {v: vm[:3, :3].copy() for v, vm in enumerate(vms)}
    rec.t = {v: vm[:3, 3].copy() for v, vm in enumerate(vms)}
    rec.X = X.copy()
    return rec


def test_bundle_adjustment_with_vanishing_points_converges_to_the_true_cameras():
    rng = np.random.default_rng(1)
    vms = _cameras()
    d = np.array([0.8, -0.5, 0.33]) / np.linalg.norm([0.8, -0.5, 0.33])
    vps = {v: _vp_of(vm, d) for v, vm in enumerate(vms)}
    rec = _toy_recon(vms, rng)
    for v in range(1, len(vms)):  # every view but the fixed one turned by ~1 deg, points moved
        rec.R[v] = rodrigues(rng.normal(0, 0.01, 3)) @ rec.R[v]
    rec.X += rng.normal(0, 0.02, rec.X.shape)
    assert vp_spread(rec, list(vps.values())) > 0.5
    rms = bundle_adjust(rec, 0, False, 60, 4.0, vps=vps, vp_weight=F)
    assert rms < 1e-3
    for v, vm in enumerate(vms):
        dR = rec.R[v] @ vm[:3, :3].T
        assert math.degrees(math.acos(np.clip((np.trace(dR) - 1) / 2, -1, 1))) < 0.01
    assert vp_spread(rec, list(vps.values())) < 0.01


def test_vanishing_points_pull_the_rotations_against_the_points():
    # the points say the cameras are the true ones; the vanishing points say view 3 is turned by
    # 1 deg: with a strong weight view 3 follows them, with none it stays where the points are
    rng = np.random.default_rng(2)
    vms = _cameras()
    d = np.array([0.2, 0.9, 0.1]) / np.linalg.norm([0.2, 0.9, 0.1])
    turned = np.eye(4)
    turned[:3, :3] = rodrigues(np.radians([0.0, 1.0, 0.0])) @ vms[3][:3, :3]
    vps = {v: _vp_of(turned if v == 3 else vm, d) for v, vm in enumerate(vms)}

    def view3_off(weight):
        rec = _toy_recon(vms, rng)
        bundle_adjust(rec, 0, False, 40, 4.0, vps=vps, vp_weight=weight)
        r = rec.R[3] @ vms[3][:3, :3].T
        return math.degrees(math.acos(np.clip((np.trace(r) - 1) / 2, -1, 1)))

    assert view3_off(0.0) < 1e-4
    assert 0.3 < view3_off(1e5) < 1.05


def test_vanishing_round_turns_an_estimate_that_disagrees_and_keeps_one_that_agrees():
    from core.recon.cameras import SfMConfig, _vanishing_round

    rng = np.random.default_rng(3)
    vms = _cameras()
    d = np.array([0.1, 0.9, 0.05]) / np.linalg.norm([0.1, 0.9, 0.05])  # sideways: in the image, near its edge
    found = [(_vp_of(vm, d), 30) for vm in vms]
    vps = [vp for vp, _ in found]
    cfg = SfMConfig(vanishing_weight=1.0)
    best = ((-5, 0.1), _toy_recon(vms, rng), 0.1)
    assert _vanishing_round(best, found, cfg, H, W, 1.0) is best  # agrees: kept as it is
    # cameras each turned 1.5 deg more than the one before, and points seen exactly by them: the
    # points alone keep the turn, the vanishing points take most of it out
    turned = []
    for v, vm in enumerate(vms):
        m = vm.copy()
        m[:3, :3] = rodrigues(np.radians([0.0, 0.0, 1.5 * v])) @ vm[:3, :3]
        turned.append(m)
    bad = _toy_recon(turned, rng)
    before = vp_spread(bad, vps)
    assert before > 2.0
    assert _vanishing_round(((-5, 0.0), bad, 0.0), found, SfMConfig(vanishing_weight=1e-9), H, W, 1.0)[1].R[4] \
        @ turned[4][:3, :3].T == pytest.approx(np.eye(3), abs=1e-6)  # (no weight: the points keep the turn)
    key, rec, rms = _vanishing_round(((-5, 0.0), bad, 0.0), found, cfg, H, W, 1.0)
    assert rec is not bad and key == (-5, rms) and rms > 0.0
    assert vp_spread(rec, vps) < 0.5 * before
    assert vp_spread(bad, vps) == before  # (it works on a copy)
