"""Pure numpy geometry for the viewer: splat parameters to viser's arrays, scene normalisation,
and grid cameras (OpenCV world-to-camera ``viewmat`` + ``K``) to poses and fields of view.

Nothing here touches a server, so every function is testable on its own. Cameras follow OpenCV
(+X right, +Y down, +Z forward), which is also viser's camera convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SH_C0 = 0.28209479177387814  # f_dc = (rgb - 0.5) / SH_C0 in 3DGS files


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def quat_to_matrix(quats: np.ndarray) -> np.ndarray:
    """Unit quaternions wxyz ``[N, 4]`` (normalised here) to rotation matrices ``[N, 3, 3]``."""
    q = np.asarray(quats, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], axis=1)


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """One rotation matrix ``[3, 3]`` to a unit quaternion wxyz ``[4]`` (w >= 0)."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R)
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(max(1.0 + R[i, i] - R[j, j] - R[k, k], 1e-12))
        q = [0.0, 0.0, 0.0, 0.0]
        q[0] = (R[k, j] - R[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (R[j, i] + R[i, j]) / s
        q[1 + k] = (R[k, i] + R[i, k]) / s
    q = np.asarray(q)
    q = q / np.linalg.norm(q)
    return -q if q[0] < 0 else q


def covariances(quats: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Sigma = R diag(s^2) R^T from wxyz ``quats [N, 4]`` and linear ``scales [N, 3]`` -> ``[N, 3, 3]``."""
    R = quat_to_matrix(quats)  # [N, 3, 3]
    M = R * np.asarray(scales, dtype=np.float64)[:, None, :]  # R @ diag(s)
    return M @ np.transpose(M, (0, 2, 1))


@dataclass
class SplatArrays:
    """What ``scene.add_gaussian_splats`` takes, float32."""

    centers: np.ndarray  # [N, 3]
    covariances: np.ndarray  # [N, 3, 3]
    rgbs: np.ndarray  # [N, 3] in 0..1
    opacities: np.ndarray  # [N, 1] in 0..1

    def __len__(self) -> int:
        return len(self.centers)


def _pick(frame: dict, *names: str):
    for n in names:
        if n in frame and frame[n] is not None:
            return np.asarray(frame[n])
    return None


def splat_arrays(frame: dict) -> SplatArrays:
    """One time step of Gaussians as a dict of raw parameters -> ``SplatArrays``.

    Accepted keys (the names of ``core.recon.ply.read_splat_ply`` and of 3DGS files):
    ``means [N,3]``; colour as ``rgb [N,3]`` (0..1) or ``f_dc``/``sh0`` ``[N,3]``; scales as
    ``log_scales`` or ``scales`` ``[N,3]``; ``quats [N,4]`` wxyz (identity if absent); opacity as
    ``opacity_logits`` or ``opacities`` ``[N]``/``[N,1]`` (1 if absent).
    """
    means = _pick(frame, "means", "centers", "xyz")
    if means is None:
        raise ValueError(f"a splat frame needs 'means' [N, 3]; got keys {sorted(frame)}")
    means = means.reshape(-1, 3).astype(np.float64)
    n = len(means)
    rgb = _pick(frame, "rgb", "rgbs", "colors")
    if rgb is None:
        dc = _pick(frame, "f_dc", "sh0")
        rgb = 0.5 + SH_C0 * dc.reshape(n, 3) if dc is not None else np.full((n, 3), 0.7)
    rgb = np.clip(rgb.reshape(n, 3).astype(np.float64), 0.0, 1.0)
    log_s = _pick(frame, "log_scales")
    scales = np.exp(log_s) if log_s is not None else _pick(frame, "scales")
    if scales is None:
        raise ValueError("a splat frame needs 'log_scales' or 'scales' [N, 3]")
    scales = scales.reshape(n, -1).astype(np.float64)
    if scales.shape[1] == 1:  # isotropic Gaussians store one scale
        scales = np.repeat(scales, 3, axis=1)
    quats = _pick(frame, "quats", "rotations")
    quats = np.tile([1.0, 0, 0, 0], (n, 1)) if quats is None else quats.reshape(n, 4)
    logits = _pick(frame, "opacity_logits")
    op = _sigmoid(logits.astype(np.float64)) if logits is not None else _pick(frame, "opacities", "opacity")
    op = np.ones(n) if op is None else op
    return SplatArrays(
        centers=means.astype(np.float32),
        covariances=covariances(quats, scales).astype(np.float32),
        rgbs=rgb.astype(np.float32),
        opacities=np.clip(op.reshape(n, 1), 0.0, 1.0).astype(np.float32),
    )


@dataclass
class Normaliser:
    """x -> (x - center) * scale: brings a scene to about unit size.

    viser ships covariances as float16, whose smallest normal value is 6e-5: a scene in
    millimetres or kilometres would lose its small Gaussians, so every position, covariance and
    camera goes through the same map.
    """

    center: np.ndarray  # [3]
    scale: float

    def points(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float64) - self.center) * self.scale).astype(np.float32)

    def covariances(self, cov: np.ndarray) -> np.ndarray:
        return (np.asarray(cov, np.float64) * self.scale**2).astype(np.float32)

    def apply(self, s: SplatArrays) -> SplatArrays:
        return SplatArrays(self.points(s.centers), self.covariances(s.covariances), s.rgbs, s.opacities)


def fit_normaliser(points: np.ndarray, radius: float = 1.0) -> Normaliser:
    """Centre on the median and scale so 90% of ``points [N, 3]`` lie within ``radius``.

    The median and a percentile ignore the few floaters a fit always leaves far away.
    """
    p = np.asarray(points, np.float64).reshape(-1, 3)
    p = p[np.all(np.isfinite(p), axis=1)]
    if len(p) == 0:
        return Normaliser(np.zeros(3), 1.0)
    center = np.median(p, axis=0)
    extent = float(np.percentile(np.linalg.norm(p - center, axis=1), 90))
    return Normaliser(center, radius / extent if extent > 1e-12 else 1.0)


@dataclass
class CameraPose:
    """A grid camera as viser wants it: ``T_world_camera`` as (wxyz, position), vertical fov."""

    wxyz: np.ndarray  # [4]
    position: np.ndarray  # [3]
    fov: float  # vertical, radians
    aspect: float  # width / height


def camera_pose(viewmat: np.ndarray, K: np.ndarray, height: int, width: int,
                normaliser: Normaliser | None = None) -> CameraPose:
    """World-to-camera ``viewmat [4, 4]`` and intrinsics ``K [3, 3]`` of an H x W image -> pose."""
    viewmat = np.asarray(viewmat, np.float64)
    R_cw, t_cw = viewmat[:3, :3], viewmat[:3, 3]
    R_wc = R_cw.T  # T_world_camera = inverse(viewmat)
    position = -R_wc @ t_cw
    if normaliser is not None:
        position = normaliser.points(position[None])[0].astype(np.float64)
    fy = float(np.asarray(K)[1, 1])
    fov = 2.0 * np.arctan2(height / 2.0, fy)
    return CameraPose(matrix_to_quat(R_wc), position, float(fov), width / height)


def scene_up(poses: list[CameraPose]) -> np.ndarray:
    """The world's up direction as the grid cameras see it: the mean of their -Y axes."""
    if not poses:
        return np.array([0.0, -1.0, 0.0])
    ups = [-quat_to_matrix(p.wxyz[None])[0][:, 1] for p in poses]
    up = np.mean(ups, axis=0)
    n = np.linalg.norm(up)
    return up / n if n > 1e-6 else np.array([0.0, -1.0, 0.0])
