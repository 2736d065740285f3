"""Small camera-geometry helpers shared by the camera estimate, the fit and the metrics.

Conventions: OpenCV cameras, world -> camera ``viewmat [4, 4]`` (x right, y down, z forward),
intrinsics ``K [3, 3]``; rotations as axis-angle vectors where a vector is needed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def rodrigues(r: np.ndarray) -> np.ndarray:
    """Axis-angle [3] -> rotation matrix [3, 3] (numpy, float64)."""
    r = np.asarray(r, dtype=np.float64)
    th = float(np.linalg.norm(r))
    if th < 1e-12:
        k = np.array([[0, -r[2], r[1]], [r[2], 0, -r[0]], [-r[1], r[0], 0]])
        return np.eye(3) + k
    k = r / th
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(th) * Kx + (1 - math.cos(th)) * Kx @ Kx


def rotation_angle_deg(R: np.ndarray) -> float:
    """The angle of a rotation matrix in degrees."""
    c = (np.trace(R) - 1.0) / 2.0
    return math.degrees(math.acos(float(np.clip(c, -1.0, 1.0))))


def intrinsics(focal: float, height: int, width: int) -> np.ndarray:
    """Pinhole K [3, 3] with square pixels and the principal point at the image centre."""
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def focal_from_fov(fov_x_deg: float, width: int) -> float:
    return 0.5 * width / math.tan(math.radians(fov_x_deg) / 2.0)


def fov_from_focal(focal: float, width: int) -> float:
    return math.degrees(2.0 * math.atan(0.5 * width / focal))


def camera_centres(viewmats: np.ndarray) -> np.ndarray:
    """[V, 4, 4] world -> camera  ->  centres in the world [V, 3]."""
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    return -np.einsum("vji,vj->vi", R, t)


def se3_exp(xi: Tensor) -> Tensor:
    """Twists [..., 6] (rotation vector, translation) -> [..., 4, 4] transforms, differentiable.

    The translation part is applied as is (``[exp(w) | v]``): for the small pose corrections of
    the fit the distinction from the true SE(3) exponential does not matter, and this keeps the
    map simple and exact at zero.
    """
    w, v = xi[..., :3], xi[..., 3:]
    th2 = (w * w).sum(-1, keepdim=True)[..., None]  # [..., 1, 1]
    th = torch.sqrt(th2.clamp_min(1e-24))
    small = th2 < 1e-8
    a = torch.where(small, 1.0 - th2 / 6.0, torch.sin(th) / th)
    b = torch.where(small, 0.5 - th2 / 24.0, (1.0 - torch.cos(th)) / th2.clamp_min(1e-24))
    zero = torch.zeros_like(w[..., 0])
    Kx = torch.stack([zero, -w[..., 2], w[..., 1], w[..., 2], zero, -w[..., 0], -w[..., 1], w[..., 0], zero],
                     dim=-1).reshape(w.shape[:-1] + (3, 3))
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device).expand_as(Kx)
    R = eye + a * Kx + b * (Kx @ Kx)
    top = torch.cat([R, v[..., :, None]], dim=-1)  # [..., 3, 4]
    bottom = torch.zeros(xi.shape[:-1] + (1, 4), dtype=xi.dtype, device=xi.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def ray_directions(viewmats: Tensor, Ks: Tensor, height: int, width: int) -> Tensor:
    """World-space unit ray directions through pixel centres: [..., H, W, 3]."""
    dev, dt = viewmats.device, viewmats.dtype
    ys, xs = torch.meshgrid(torch.arange(height, device=dev, dtype=dt) + 0.5,
                            torch.arange(width, device=dev, dtype=dt) + 0.5, indexing="ij")
    fx, fy = Ks[..., 0, 0, None, None], Ks[..., 1, 1, None, None]
    cx, cy = Ks[..., 0, 2, None, None], Ks[..., 1, 2, None, None]
    d_cam = torch.stack([(xs - cx) / fx, (ys - cy) / fy, torch.ones_like(xs - cx)], dim=-1)  # [..., H, W, 3]
    R = viewmats[..., :3, :3]  # world -> camera; camera -> world is R^T
    d = torch.einsum("...ji,...hwj->...hwi", R, d_cam)
    return torch.nn.functional.normalize(d, dim=-1)
