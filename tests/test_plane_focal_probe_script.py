"""scripts/plane_focal_probe.py: from the true floor homographies of an orbit looking at one point,
the scan finds the field of view it was made with; a wrong focal length spreads the floor normals."""

import numpy as np

from core.recon.geometry import focal_from_fov, intrinsics


def _orbit_cams(fov: float, V: int = 6, H: int = 96, W: int = 160) -> dict:
    K = intrinsics(focal_from_fov(fov, W), H, W)
    views = []
    for v in range(V):
        az = np.radians(-20 + 8 * v)
        el = np.radians(20 + 2 * v)  # some change of elevation: not a pure turntable
        eye = 5.0 * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        target = np.array([0.0, 0.0, 0.4])
        f = (target - eye) / np.linalg.norm(target - eye)
        r = np.cross(f, [0.0, 0.0, 1.0])
        r /= np.linalg.norm(r)
        d = np.cross(f, r)  # OpenCV: x right, y down, z forward
        R = np.stack([r, d, f])
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = R, -R @ eye
        views.append({"viewmat": m.tolist(), "K": K.tolist()})
    return {"views": views}


def test_true_floor_homographies_give_back_the_field_of_view(load_script):
    probe = load_script("plane_focal_probe")
    for fov in (50.0, 62.0):
        links = probe.true_floor_hs(_orbit_cams(fov), 6)
        assert abs(probe.best_fov(links, 160, 96) - fov) <= 1.0
        # at the true focal length the views agree on one normal; far from it they do not
        assert probe.normal_spread(probe._chain(links), 160, 96, fov) < 0.1
        assert probe.normal_spread(probe._chain(links), 160, 96, fov + 20) > 1.0
