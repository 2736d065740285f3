"""The 3D viewer: splat parameters to viser arrays, scene normalisation (float16 covariances),
grid cameras to poses, and a real viser server playing splats over time."""

from __future__ import annotations

import time

import numpy as np
import pytest

from viewer.splats import (
    Normaliser, camera_pose, covariances, fit_normaliser, matrix_to_quat, quat_to_matrix, scene_up, splat_arrays,
)


def rot_y(a: float) -> np.ndarray:
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def orbit_viewmat(angle: float, radius: float = 4.0) -> np.ndarray:
    """World-to-camera for a camera on a circle around the origin, looking at it (OpenCV)."""
    C = np.array([radius * np.sin(angle), 0.0, -radius * np.cos(angle)])
    R_wc = rot_y(-angle)  # camera +Z points from C to the origin
    vm = np.eye(4)
    vm[:3, :3] = R_wc.T
    vm[:3, 3] = -R_wc.T @ C
    return vm


def test_quaternion_and_matrix_round_trip():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(20, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q *= np.sign(q[:, :1])
    R = quat_to_matrix(q)
    assert np.allclose(R @ np.transpose(R, (0, 2, 1)), np.eye(3), atol=1e-9)
    assert np.allclose(np.stack([matrix_to_quat(r) for r in R]), q, atol=1e-9)


def test_covariance_is_rotated_squared_scales():
    q = matrix_to_quat(rot_y(np.pi / 2))[None]
    cov = covariances(q, np.array([[3.0, 1.0, 0.5]]))[0]
    # a 90 degree turn about y swaps the x and z axes
    assert np.allclose(cov, np.diag([0.25, 1.0, 9.0]), atol=1e-9)


def test_splat_arrays_read_3dgs_parameters():
    n = 5
    f = splat_arrays({"means": np.zeros((n, 3)), "f_dc": np.zeros((n, 3)), "log_scales": np.log(np.full((n, 3), 0.1)),
                      "quats": np.tile([2.0, 0, 0, 0], (n, 1)), "opacity_logits": np.zeros(n)})
    assert np.allclose(f.rgbs, 0.5) and np.allclose(f.opacities, 0.5)
    assert np.allclose(f.covariances, np.eye(3) * 0.01, atol=1e-7)  # unnormalised quaternions are fine
    assert f.opacities.shape == (n, 1) and f.centers.dtype == np.float32
    g = splat_arrays({"means": np.ones((n, 3)), "rgb": np.full((n, 3), 2.0), "scales": np.full((n, 1), 0.2)})
    assert np.allclose(g.rgbs, 1.0) and np.allclose(g.opacities, 1.0)  # clipped; isotropic; opaque
    with pytest.raises(ValueError, match="means"):
        splat_arrays({"rgb": np.zeros((1, 3))})


@pytest.mark.parametrize("units", [1e-3, 1e3])  # a scene in millimetres, and in kilometres
def test_normalised_scene_is_unit_sized_and_keeps_small_gaussians_in_float16(units):
    rng = np.random.default_rng(0)
    n = 1000
    f = splat_arrays({"means": rng.normal(size=(n, 3)) * units + 7 * units,
                      "scales": np.full((n, 3), 0.004 * units)})
    norm = fit_normaliser(f.centers)
    g = norm.apply(f)
    r = np.linalg.norm(g.centers, axis=1)
    assert 0.8 < np.percentile(r, 90) < 1.2 and np.abs(np.median(g.centers, axis=0)).max() < 0.1
    assert np.all(g.covariances.astype(np.float16)[:, 0, 0] > 0)  # what viser sends survives
    if units < 1:
        assert np.all(f.covariances.astype(np.float16)[:, 0, 0] == 0)  # without normalising it would not


def test_camera_pose_inverts_the_viewmat_and_reads_the_fov():
    K = np.array([[100.0, 0, 64], [0, 100.0, 36], [0, 0, 1]])
    vm = orbit_viewmat(0.4)
    pose = camera_pose(vm, K, 72, 128)
    assert np.allclose(pose.position, [4 * np.sin(0.4), 0, -4 * np.cos(0.4)])
    R_wc = quat_to_matrix(pose.wxyz[None])[0]
    assert np.allclose(R_wc @ [0, 0, 1], -pose.position / 4)  # looks at the origin
    assert np.isclose(pose.fov, 2 * np.arctan(36 / 100)) and np.isclose(pose.aspect, 128 / 72)
    shifted = camera_pose(vm, K, 72, 128, Normaliser(np.array([1.0, 0, 0]), 0.5))
    assert np.allclose(shifted.position, (pose.position - [1, 0, 0]) * 0.5)
    assert np.allclose(scene_up([pose]), [0, -1, 0])  # OpenCV: up is -Y


def test_viewer_binds_locally_and_plays_one_splat_node_per_time():
    from viewer.server import ViewerServer

    rng = np.random.default_rng(0)
    T, V, n = 4, 3, 200
    frames = [{"means": rng.normal(size=(n, 3)) + [0.2 * t, 0, 0], "rgb": rng.random((n, 3)),
               "log_scales": np.full((n, 3), -3.0), "opacity_logits": np.full(n, 2.0)} for t in range(T)]
    cams = [{"viewmat": orbit_viewmat(a), "K": [[64, 0, 32], [0, 64, 18], [0, 0, 1]]} for a in (-0.3, 0, 0.3)]
    images = (rng.random((V, T, 36, 64, 3)) * 255).astype(np.uint8)
    viewer = ViewerServer(port=0)
    try:
        assert viewer.server.get_host() == "127.0.0.1" and viewer.url.startswith("http://127.0.0.1:")
        viewer.show_splats(frames, cameras=cams, images=images, fps=8)
        assert viewer.times == T and len(viewer._frusta) == V
        assert [h.visible for h in viewer._splats] == [True, False, False, False]
        viewer.set_time(2)
        assert [h.visible for h in viewer._splats] == [False, False, True, False]
        assert np.array_equal(viewer._frusta[1].image, images[1, 2])  # frusta show the current time
        viewer._gui_time.value = 3  # the GUI slider drives the same path
        deadline = time.time() + 2
        while viewer.time != 3 and time.time() < deadline:
            time.sleep(0.02)
        assert viewer.time == 3 and viewer._splats[3].visible and not viewer._splats[2].visible
        pose = viewer.look_through(2)  # no browser connected: moves nobody, returns the pose
        assert np.isclose(pose.aspect, 64 / 36)
        viewer.show_splats(frames[:1])  # a new run replaces the old one
        assert viewer.times == 1 and viewer._frusta == [] and viewer._gui_play.disabled
    finally:
        viewer.stop()
