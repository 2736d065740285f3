"""Cameras from frames alone: a known orbit is recovered, errors are measured gauge-free, and a
grid whose views do not move is refused."""

import dataclasses

import numpy as np
import pytest
import torch

from core.errors import InputError
from core.recon.cameras import SfMConfig, coherent, estimate_cameras, orbit_prior, unusual_fov_warnings
from core.recon.geometry import camera_centres, se3_exp
from core.recon.metrics import camera_errors
from core.recon.toyscene import render_toy


@pytest.fixture(scope="module")
def toy_column():
    return render_toy(views=6, times=1, height=96, width=176, arc_deg=40.0, fov_x_deg=55.0)


def test_camera_estimate_recovers_a_known_orbit_from_frames(toy_column):
    est = estimate_cameras(toy_column.frames[:, 0], SfMConfig())
    assert est.source == "features" and est.n_registered == 6
    err = camera_errors(est.viewmats, toy_column.viewmats)
    assert err["rot_deg_max"] < 2.0, err
    assert err["tdir_deg_max"] < 5.0, err
    assert abs(est.fov_x_deg - 55.0) < 5.0
    # the first fit's field of view is kept (``api.grid_cameras`` tries affine features when the
    # later rounds moved it far); on this clean orbit they move it less than that (2.5 deg)
    assert abs(est.fov_first_deg - 55.0) < 5.0
    assert abs(est.fov_first_deg - est.fov_x_deg) < SfMConfig().affine_fallback_fov_shift
    assert est.reproj_px < 1.0
    # normalised: scene centre at the origin, mean camera distance 1, points around the centre
    assert abs(np.linalg.norm(camera_centres(est.viewmats), axis=1).mean() - 1.0) < 1e-6
    assert len(est.points) > 30 and np.median(np.linalg.norm(est.points, axis=1)) < 1.0
    # a usual field of view raises no doubt; the same cameras at 92 deg or 16 deg do, unless it was given
    assert unusual_fov_warnings(est, SfMConfig()) == []
    for fov in (92.4, 16.2):
        (w,) = unusual_fov_warnings(dataclasses.replace(est, fov_x_deg=fov), SfMConfig())
        assert f"{fov:.1f} deg" in w and "--fov" in w
    assert unusual_fov_warnings(dataclasses.replace(est, fov_x_deg=92.4), SfMConfig(fov_x_deg=92.4)) == []


def test_camera_errors_ignore_the_world_frame_and_scale():
    vms, _ = orbit_prior(5, 64, 96, arc_deg=50.0)
    # the same cameras in another world frame and scale: x_world' = s R x_world + t
    R = se3_exp(torch.tensor([0.3, -0.2, 0.5, 0, 0, 0], dtype=torch.float64)).numpy()[:3, :3]
    s, t = 3.7, np.array([1.0, -2.0, 0.5])
    moved = vms.copy()
    moved[:, :3, :3] = vms[:, :3, :3] @ R.T
    moved[:, :3, 3] = s * vms[:, :3, 3] - np.einsum("vij,j->vi", moved[:, :3, :3], t)
    assert camera_errors(moved, vms)["rot_deg_max"] < 1e-4
    assert camera_errors(moved, vms)["tdir_deg_max"] < 1e-4
    other, _ = orbit_prior(5, 64, 96, arc_deg=40.0)
    e = camera_errors(other, vms)
    assert 2.0 < e["rot_deg_max"] < 15.0


def test_a_column_of_one_repeated_image_is_refused(toy_column):
    same = np.repeat(toy_column.frames[:1, 0], 4, axis=0)
    with pytest.raises(InputError, match="no camera motion"):
        estimate_cameras(same)


def test_motion_coherence_rejects_matches_one_period_off():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 200, size=(200, 2))
    b = a + np.array([5.0, 1.0])
    b[:10] += np.array([12.0, 0.0])  # a repeated texture matched to the neighbouring tile
    keep = coherent(a, b, tol_px=3.0)
    assert not keep[:10].any() and keep[10:].all()


def test_constant_motion_prior_completes_a_constant_speed_orbit_from_two_views():
    from core.recon.cameras import _constant_motion, _Recon

    vms, _ = orbit_prior(7, 64, 96, arc_deg=60.0, elevation_deg=20.0)
    rec = _Recon(feats=[], tracks=[], focal=80.0, H=64, W=96)
    for v in (2, 4):  # only two views were placed from features
        rec.R[v], rec.t[v] = vms[v, :3, :3], vms[v, :3, 3]
    _constant_motion(rec, 7)
    for v in range(7):
        np.testing.assert_allclose(rec.R[v], vms[v, :3, :3], atol=1e-9)
        np.testing.assert_allclose(rec.t[v], vms[v, :3, 3], atol=1e-9)


def test_fill_missing_continues_a_constant_speed_orbit_beyond_the_placed_views():
    from core.recon.cameras import _fill_missing, _Recon

    vms, _ = orbit_prior(8, 64, 96, arc_deg=70.0, elevation_deg=20.0)
    rec = _Recon(feats=[], tracks=[], focal=80.0, H=64, W=96)
    for v in range(2, 7):  # views 0, 1 and 7 beyond the placed ones
        rec.R[v], rec.t[v] = vms[v, :3, :3], vms[v, :3, 3]
    _fill_missing(rec, 8)
    est = np.stack([np.block([[rec.R[v], rec.t[v][:, None]], [np.zeros((1, 3)), np.ones((1, 1))]]) for v in range(8)])
    err = camera_errors(est, vms)
    assert err["rot_deg_max"] < 1e-4 and err["tdir_deg_max"] < 1e-4, err
