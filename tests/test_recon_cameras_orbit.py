"""The orbit prior of the camera estimate: a link that breaks the smooth path is found, missing or
dropped links are predicted from the others, and polishing from the predicted poses undoes a
view chain placed a few degrees off; a view that no track reaches is placed from the points
matched around its pose predicted along the orbit."""

import math

import numpy as np
import pytest

from core.recon.cameras import (OFF_ORBIT_DEG, CameraEstimate, SfMConfig, _detect_many, _guided_round, _orbit_repair, _Recon,
                                _register_guided, _register_next, _sfm_with_focal, build_tracks, off_orbit_warnings,
                                verified_matches)
from core.recon.geometry import focal_from_fov, rodrigues
from core.recon.metrics import camera_errors
from core.recon.orbit import orbit_deviation, orbit_kinks, predict_poses, views_seen
from core.recon.toyscene import look_at, orbit_cameras, render_toy


def _poses(vms: np.ndarray, views=None):
    views = range(len(vms)) if views is None else views
    return {v: vms[v, :3, :3].copy() for v in views}, {v: vms[v, :3, 3].copy() for v in views}


def _accelerating_orbit() -> np.ndarray:
    """8 cameras whose azimuth steps grow and shrink (3.9 .. 18.5 deg) while they rise and close in,
    like the synthetic world's evaluation orbits."""
    az = np.radians(np.cumsum([0, 3.9, 5.9, 8.9, 12.9, 17.1, 18.5, 15.7]))
    el = np.radians(np.linspace(10, 40, 8))
    r = np.linspace(7.0, 5.5, 8)
    return np.stack([look_at(r[v] * np.array([math.cos(el[v]) * math.cos(az[v]), math.cos(el[v]) * math.sin(az[v]),
                                              math.sin(el[v])]), np.zeros(3)) for v in range(8)])


def _turn_views_after(vms: np.ndarray, link: int, deg: float) -> np.ndarray:
    """The views after ``link`` all turned by ``deg`` about the world's vertical: only that link's
    step changes (the later views keep their relative poses)."""
    out = vms.copy()
    Q = rodrigues(np.array([0.0, 0.0, math.radians(deg)]))
    out[link + 1:, :3, :3] = vms[link + 1:, :3, :3] @ Q
    return out


def test_orbit_kinks_accept_a_smooth_accelerating_orbit_and_flag_the_one_link_turned_off_it():
    vms = _accelerating_orbit()
    assert orbit_kinks(*_poses(vms), 8) == []
    assert orbit_kinks(*_poses(_turn_views_after(vms, 4, 7.0)), 8) == [4]
    assert orbit_kinks(*_poses(_turn_views_after(vms, 1, -6.0)), 8) == [1]


def test_predict_poses_completes_a_constant_speed_orbit_from_its_middle_with_a_link_dropped():
    vms, _ = orbit_cameras(8, 64, 96, arc_deg=80.0, elevation_deg=25.0)
    placed = [1, 2, 3, 4, 5, 6]  # views 0 and 7 unplaced, and the link 3 -> 4 distrusted
    wrong = _turn_views_after(vms, 3, 9.0)
    Rn, tn = predict_poses(*_poses(wrong, placed), 8, drop_links=[3])
    for v in range(8):
        np.testing.assert_allclose(Rn[v], vms[v, :3, :3], atol=1e-6)
        np.testing.assert_allclose(tn[v], vms[v, :3, 3], atol=1e-6)


@pytest.fixture(scope="module")
def toy_sfm():
    scene = render_toy(views=7, times=1, height=96, width=176, arc_deg=48.0, fov_x_deg=55.0)
    cfg = SfMConfig(threads=1)
    H, W = 96, 176
    thr = max(0.75, cfg.ransac_px * max(H, W) / 512.0)
    feats = _detect_many(list(scene.frames[:, 0]), cfg)
    pairs = verified_matches(feats, cfg, thr, coherence_px=max(3.0, cfg.coherence * max(H, W)))
    tracks = build_tracks(pairs, [len(f["xy"]) for f in feats])
    rec, rms = _sfm_with_focal(feats, tracks, pairs, focal_from_fov(55.0, W), H, W, cfg, optimise_focal=True)
    return scene, cfg, feats, pairs, rec, rms, thr


def _viewmats(rec: _Recon, V: int) -> np.ndarray:
    out = np.repeat(np.eye(4)[None], V, 0)
    for v in range(V):
        out[v, :3, :3], out[v, :3, 3] = rec.R[v], rec.t[v]
    return out


def test_orbit_repair_undoes_a_chain_of_views_turned_off_the_path(toy_sfm):
    scene, cfg, feats, pairs, rec, rms, thr = toy_sfm
    assert len(rec.R) == 7
    good = camera_errors(_viewmats(rec, 7), scene.viewmats)["rot_deg_max"]
    assert good < 2.0
    # views 4.. turned by 6 degrees about the first camera's vertical axis (a view placed one
    # texture period off turns the chain after it)
    bad = _Recon(feats, rec.tracks, rec.focal, 96, 176)
    Q = rodrigues(np.array([0.0, math.radians(6.0), 0.0]))
    bad.R = {v: (rec.R[v] @ rec.R[0].T @ Q @ rec.R[0] if v >= 4 else rec.R[v].copy()) for v in rec.R}
    bad.t = {v: rec.t[v].copy() for v in rec.t}
    bad.X = rec.X.copy()
    assert camera_errors(_viewmats(bad, 7), scene.viewmats)["rot_deg_max"] > 4.0
    assert orbit_kinks(bad.R, bad.t, 7) == [3]
    out = _orbit_repair(((-7, rms), bad, rms), feats, cfg, 96, 176, thr)
    assert out[1] is not bad and views_seen(out[1]) == 7
    assert camera_errors(_viewmats(out[1], 7), scene.viewmats)["rot_deg_max"] < 2.5


def test_orbit_repair_keeps_an_estimate_that_follows_the_path(toy_sfm):
    _, cfg, feats, pairs, rec, rms, thr = toy_sfm
    best = ((-7, rms), rec, rms)
    assert _orbit_repair(best, feats, cfg, 96, 176, thr) is best


def test_guided_registration_places_a_view_that_no_track_reaches(toy_sfm):
    """View 6 taken out of every track (as when its matches to its neighbours failed): PnP from
    the tracks cannot place it, guided registration does, near its true pose, and its matched
    keypoints join the tracks."""
    scene, cfg, feats, pairs, rec, rms, thr = toy_sfm
    tracks = [{v: k for v, k in tr.items() if v != 6} for tr in rec.tracks]
    part = _Recon(feats, tracks, rec.focal, 96, 176)
    part.R = {v: rec.R[v].copy() for v in range(6)}
    part.t = {v: rec.t[v].copy() for v in range(6)}
    part.triangulate_tracks(4 * thr, cfg.min_tri_angle_deg, only_new=False, min_obs=2)
    assert _register_next(part, 7, thr) is None
    assert _register_guided(part, 7, cfg, thr) == 6
    assert part.guided == {6} and sum(6 in tr for tr in part.tracks) >= cfg.guided_register_min
    assert all(6 not in tr for tr in tracks)  # the tracks it was given are left as they were
    assert camera_errors(_viewmats(part, 7), scene.viewmats)["rot_deg_max"] < 2.0


def test_guided_round_keeps_the_first_estimate_when_its_fit_gets_much_worse(toy_sfm):
    """The guided round places no more views here, so its RMS error decides: within
    ``guided_max_rms_ratio`` of the first estimate's it replaces it, beyond that it does not."""
    from dataclasses import replace

    _, cfg, feats, pairs, rec, rms, thr = toy_sfm
    best = ((-7, rms), rec, rms)
    taken, merged = _guided_round(best, pairs, feats, replace(cfg, guided_max_rms_ratio=float("inf")), 96, 176, thr)
    assert taken is not best and len(taken[1].R) == 7 and sum(map(len, merged.values())) >= sum(map(len, pairs.values()))
    ratio = taken[2] / rms
    kept, same_pairs = _guided_round(best, pairs, feats, replace(cfg, guided_max_rms_ratio=0.5 * ratio), 96, 176, thr)
    assert kept is best and same_pairs is pairs


def _turned(vm: np.ndarray, view: int, axis: int, deg: float) -> np.ndarray:
    """``vm`` with one camera turned by ``deg`` about its own x (0), y (1) or optical (2) axis."""
    out = vm.copy()
    out[view, :3, :] = rodrigues(np.eye(3)[axis] * math.radians(deg)) @ vm[view, :3, :]
    return out


def test_orbit_deviation_is_zero_on_an_orbit_and_measures_a_roll_or_an_axis_turned_off_it():
    vm, _ = orbit_cameras(7, 96, 176, arc_deg=48.0, fov_x_deg=55.0)
    roll, aim = orbit_deviation(vm)
    assert roll < 1e-6 and aim < 1e-6
    assert orbit_deviation(_accelerating_orbit()) == pytest.approx((0.0, 0.0), abs=1e-6)  # uneven steps are still one orbit
    roll, aim = orbit_deviation(_turned(vm, 3, 2, 1.5))  # view 3 rolled
    assert 1.0 < roll <= 1.5 + 1e-6 and aim < 1e-6
    roll, aim = orbit_deviation(_turned(vm, 5, 1, 2.0))  # view 5 aimed 2 deg to the side
    assert 1.0 < aim <= 2.0 + 1e-6
    # the deviation does not depend on the world frame or scale
    M = np.eye(4)
    M[:3, :3] = rodrigues(np.array([0.3, -0.2, 0.5]))
    M[:3, 3] = [1.0, 2.0, -3.0]
    moved = _turned(vm, 3, 2, 1.5) @ np.linalg.inv(M)
    moved[:, :3, 3] *= 2.5
    assert orbit_deviation(moved) == pytest.approx(orbit_deviation(_turned(vm, 3, 2, 1.5)), abs=1e-4)
    # parallel axes (a sideways dolly) have no common point; two views say nothing
    dolly = np.repeat(np.eye(4)[None], 4, 0)
    dolly[:, 0, 3] = -np.arange(4.0)
    assert np.isnan(orbit_deviation(dolly)[1])
    assert all(np.isnan(orbit_deviation(vm[:2])))


def test_off_orbit_warnings_name_a_rolled_camera_of_a_feature_estimate_only():
    vm, Ks = orbit_cameras(7, 96, 176, arc_deg=48.0, fov_x_deg=55.0)

    def est(viewmats, source="features"):
        return CameraEstimate(viewmats=viewmats, Ks=Ks, points=np.zeros((0, 3)), colors=np.zeros((0, 3)),
                              source=source, fov_x_deg=55.0)

    assert off_orbit_warnings(est(vm)) == []
    assert off_orbit_warnings(est(_turned(vm, 3, 2, 0.5 * OFF_ORBIT_DEG))) == []
    (w,) = off_orbit_warnings(est(_turned(vm, 3, 2, 3.0)))
    assert "turned" in w and "level arc" in w
    (w,) = off_orbit_warnings(est(_turned(vm, 5, 1, 4.0)))
    assert "off the point the others look at" in w
    assert off_orbit_warnings(est(_turned(vm, 3, 2, 3.0), source="orbit-prior")) == []
