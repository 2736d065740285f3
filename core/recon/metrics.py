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


REGIONS = ("sky", "floor_near", "floor_far", "objects")


def ground_truth_regions(depth: np.ndarray, viewmats: np.ndarray, Ks: np.ndarray, near: float = 3.0) -> np.ndarray:
    """Region of every pixel of a synthetic grid from its ground truth (for diagnosis only):
    int8 [V, T, H, W] indexing ``REGIONS``: 0 sky (no hit), 1 floor (world z = 0) within ``near``
    of the origin, 2 floor beyond, 3 objects. ``depth`` [V, T, H, W] is camera z (0 on the sky);
    ``Ks`` use the synthetic world's convention (pixel (i, j) centred at x = j, y = i)."""
    V, T, H, W = depth.shape
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    out = np.zeros((V, T, H, W), np.int8)
    for v in range(V):
        R, t, K = viewmats[v, :3, :3], viewmats[v, :3, 3], Ks[v]
        d_cam = np.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], np.ones_like(xs)], -1)
        for k in range(T):
            z = depth[v, k].astype(np.float64)
            X = (d_cam * z[..., None] - t) @ R  # camera -> world
            floor = (np.abs(X[..., 2]) < 2e-3 * np.maximum(z, 1.0)) & (z > 0)
            far = np.linalg.norm(X[..., :2], axis=-1) > near
            r = np.full((H, W), 3, np.int8)
            r[z <= 0] = 0
            r[floor & ~far] = 1
            r[floor & far] = 2
            out[v, k] = r
    return out


def region_report(frames: np.ndarray, renders: np.ndarray, regions: np.ndarray, cells: np.ndarray) -> dict:
    """Per region of ``regions`` over the cells where ``cells`` [V, T] is True: the fraction of
    pixels, the share of the total squared error and the PSNR (uint8 images)."""
    se = ((frames[cells].astype(np.float64) - renders[cells].astype(np.float64)) ** 2).mean(-1)
    reg = regions[cells]
    total = float(se.sum()) or 1e-12
    out = {}
    for k, name in enumerate(REGIONS):
        sel = reg == k
        if not sel.any():
            continue
        mse = float(se[sel].mean())
        out[name] = {"pixels": round(float(sel.mean()), 4), "error_share": round(float(se[sel].sum()) / total, 4),
                     "psnr": round(99.0 if mse <= 1e-12 else 10 * math.log10(255.0 ** 2 / mse), 2)}
    return out
