"""Quality measures of a reconstruction: PSNR, SSIM and gauge-free camera errors."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import rotation_angle_deg


def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, peak: float | None = None) -> float:
    """PSNR in dB between two images of the same shape (uint8 arrays: peak 255; floats: peak 1)."""
    if isinstance(a, torch.Tensor):
        mse = float(((a.float() - b.float()) ** 2).mean())
        peak = 1.0 if peak is None else peak
    else:
        if peak is None:
            peak = 255.0 if np.asarray(a).dtype == np.uint8 else 1.0
        mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 99.0 if mse <= 1e-12 else 10.0 * math.log10(peak * peak / mse)


def _gauss_window(size: int = 11, sigma: float = 1.5, device=None, dtype=None) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, size: int = 11) -> torch.Tensor:
    """Mean SSIM of images [B, H, W, C] in 0..1 (Gaussian window 11, sigma 1.5), differentiable."""
    C = a.shape[-1]
    x = a.permute(0, 3, 1, 2)
    y = b.permute(0, 3, 1, 2)
    g = _gauss_window(size, device=a.device, dtype=a.dtype)
    wx = g.view(1, 1, 1, size).expand(C, 1, 1, size)
    wy = g.view(1, 1, size, 1).expand(C, 1, size, 1)

    def blur(z):
        z = F.conv2d(z, wx, padding=(0, size // 2), groups=C)
        return F.conv2d(z, wy, padding=(size // 2, 0), groups=C)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean()


def _relative(viewmats: np.ndarray, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Pose of camera j in camera i's frame: (R_ij, t_ij) with x_i = R_ij x_j + t_ij."""
    Ri, ti = viewmats[i, :3, :3], viewmats[i, :3, 3]
    Rj, tj = viewmats[j, :3, :3], viewmats[j, :3, 3]
    R = Ri @ Rj.T
    return R, ti - R @ tj


def camera_errors(est_viewmats, gt_viewmats) -> dict:
    """Gauge-free camera errors over all pairs of views (degrees).

    For every pair (i, j): the angle between the estimated and true relative rotations, and the
    angle between the estimated and true directions of the relative translation (scale-free).
    Neither depends on the world frame or scale either reconstruction chose. Returns
    ``rot_deg_max, rot_deg_mean, tdir_deg_max, tdir_deg_mean`` and ``pairs``.
    """
    est = np.asarray(est_viewmats, np.float64)
    gt = np.asarray(gt_viewmats, np.float64)
    if est.shape != gt.shape or est.ndim != 3 or est.shape[1:] != (4, 4):
        raise ValueError(f"camera_errors needs two [V, 4, 4] arrays of one shape, got {est.shape} and {gt.shape}")
    rot, tdir = [], []
    V = len(est)
    for i in range(V):
        for j in range(i + 1, V):
            Re, te = _relative(est, i, j)
            Rg, tg = _relative(gt, i, j)
            rot.append(rotation_angle_deg(Re.T @ Rg))
            ne, ng = np.linalg.norm(te), np.linalg.norm(tg)
            if ne < 1e-12 or ng < 1e-12:
                continue
            c = float(np.clip(te @ tg / (ne * ng), -1.0, 1.0))
            tdir.append(math.degrees(math.acos(c)))
    if not rot:
        return {"rot_deg_max": 0.0, "rot_deg_mean": 0.0, "tdir_deg_max": 0.0, "tdir_deg_mean": 0.0, "pairs": 0}
    return {
        "rot_deg_max": float(np.max(rot)), "rot_deg_mean": float(np.mean(rot)),
        "tdir_deg_max": float(np.max(tdir)) if tdir else 0.0, "tdir_deg_mean": float(np.mean(tdir)) if tdir else 0.0,
        "pairs": len(rot),
    }
