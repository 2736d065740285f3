"""Pseudo-4D grids: any ordinary video becomes a V x T grid through smooth per-view 2D
homographies (as in 4Real-Video's pretraining data).

Row 0 is the video itself (view 0 is the identity, bit for bit). Row v is the same video warped
by one homography ``H_v`` for all times, and ``H_v`` moves smoothly with v: a pan with a matching
perspective tilt (as if the camera swung sideways around the scene), a little roll, zoom and
vertical drift. Each view is zoomed in just enough that it never samples outside the source
frame, so no borders appear. Column 0 then imitates a freeze-time orbit of the first frame.
The warp is a 2D imitation of a camera move: no parallax, which is what the paper warns about.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _param_path(rng: np.random.Generator, views: int) -> np.ndarray:
    """[V, 6] (tx, ty, roll, log_zoom, px, py) in normalised image units, 0 at view 0, moving
    smoothly (a straight path plus one smooth bulge)."""
    s = np.linspace(0.0, 1.0, views) if views > 1 else np.zeros(1)
    sign = rng.choice([-1.0, 1.0])
    swing = rng.uniform(0.35, 1.0)
    end = np.array([
        sign * swing * 0.22,  # pan
        rng.uniform(-0.08, 0.08),  # vertical drift
        math.radians(rng.uniform(-6, 6)),  # roll
        rng.uniform(-0.12, 0.15),  # zoom
        -sign * swing * rng.uniform(0.1, 0.25),  # perspective tilt matching the pan
        rng.uniform(-0.08, 0.08),
    ])
    bulge = rng.normal(0, 1, 6) * np.array([0.05, 0.03, math.radians(2), 0.04, 0.04, 0.03])
    return s[:, None] * end + np.sin(math.pi * s)[:, None] * bulge


def _homography(p: np.ndarray, aspect: float) -> np.ndarray:
    """Output -> source map in grid_sample coordinates ([-1, 1] on both axes) for one view."""
    tx, ty, roll, log_zoom, px, py = p
    a = np.diag([aspect, 1.0, 1.0])  # work in square units so a roll is a rotation
    a_inv = np.diag([1 / aspect, 1.0, 1.0])
    c, s = math.cos(roll), math.sin(roll)
    z = math.exp(-log_zoom)
    rot = np.array([[c * z, -s * z, tx * aspect], [s * z, c * z, ty], [0, 0, 1]])
    persp = np.array([[1, 0, 0], [0, 1, 0], [px / aspect, py, 1]])
    return a_inv @ rot @ a @ persp


def _corners_inside(h: np.ndarray, zoom: float) -> bool:
    corners = np.array([[-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], dtype=np.float64)
    corners[:, :2] *= zoom
    q = corners @ h.T
    if (q[:, 2] <= 1e-6).any():
        return False
    xy = q[:, :2] / q[:, 2:]
    return bool((np.abs(xy) <= 1.0 + 1e-9).all())


def pseudo4d_homographies(views: int, seed: int, height: int, width: int) -> np.ndarray:
    """The V output->source homographies [V, 3, 3] (grid_sample coordinates); view 0 is I."""
    rng = np.random.default_rng([int(seed), 4])
    params = _param_path(rng, views)
    aspect = width / height
    out = np.zeros((views, 3, 3))
    for v in range(views):
        h = _homography(params[v], aspect) if v else np.eye(3)
        lo, hi = 0.3, 1.0  # largest zoom-in factor that keeps the view inside the source
        if not _corners_inside(h, hi):
            for _ in range(24):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if _corners_inside(h, mid) else (lo, mid)
            hi = lo
        out[v] = h @ np.diag([hi, hi, 1.0])
    return out


def warp_homography(frames: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Warp float frames [N, C, H, W] by output->source homographies [N, 3, 3] (bilinear)."""
    n, _, hh, ww = frames.shape
    ys = (torch.arange(hh, device=frames.device, dtype=frames.dtype) + 0.5) / hh * 2 - 1
    xs = (torch.arange(ww, device=frames.device, dtype=frames.dtype) + 0.5) / ww * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    gx, gy = gx.reshape(1, -1), gy.reshape(1, -1)  # [1, HW]
    h = h.to(frames.dtype)[..., None]  # [N, 3, 3, 1]; products written out: exact fp32, no TF32 matmul
    qx, qy, qz = (h[:, i, 0] * gx + h[:, i, 1] * gy + h[:, i, 2] for i in range(3))  # [N, HW]
    grid = torch.stack([qx, qy], -1) / qz.clamp_min(1e-6)[..., None]
    grid = grid.reshape(n, hh, ww, 2)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=False)


def pseudo4d_batch(videos: torch.Tensor, views: int, seeds) -> torch.Tensor:
    """Batched: float videos [B, T, C, H, W] -> grids [B, V, T, C, H, W] (view 0 = input)."""
    b, t, c, hh, ww = videos.shape
    hs = np.stack([pseudo4d_homographies(views, s, hh, ww) for s in seeds])  # [B, V, 3, 3]
    hs = torch.as_tensor(hs, dtype=torch.float32, device=videos.device)
    src = videos[:, None].expand(b, views, t, c, hh, ww).reshape(-1, c, hh, ww)
    hh_ = hs[:, :, None].expand(b, views, t, 3, 3).reshape(-1, 3, 3)
    out = warp_homography(src, hh_).reshape(b, views, t, c, hh, ww)
    out[:, 0] = videos  # exact identity, not a resampled copy
    return out


def pseudo4d_grid(video, views: int, seed: int):
    """A video ``[T, H, W, 3]`` (uint8 numpy, or a float torch tensor) -> a pseudo-4D grid
    ``[V, T, H, W, 3]`` of the same type; row 0 equals the input exactly."""
    if views < 1:
        raise ValueError(f"views must be at least 1, got {views}")
    is_numpy = isinstance(video, np.ndarray)
    if is_numpy:
        if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"video must be uint8 [T, H, W, 3], got {video.dtype} {video.shape}")
        x = torch.from_numpy(video).float() / 255.0
    else:
        if video.ndim != 4 or video.shape[-1] != 3 or not video.is_floating_point():
            raise ValueError(f"video must be a float tensor [T, H, W, 3], got {video.dtype} {tuple(video.shape)}")
        x = video
    grid = pseudo4d_batch(x.permute(0, 3, 1, 2)[None], views, [seed])[0].permute(0, 1, 3, 4, 2)
    if is_numpy:
        out = (grid * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
        out[0] = video
        return out
    grid = grid.to(video.dtype).contiguous()
    grid[0] = video
    return grid
