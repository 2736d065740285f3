"""PSNR and SSIM over the unknown cells of a grid, on frames in [0, 1] or uint8.

Conventions: a grid's error is pooled over all pixels of its unknown cells (one MSE per grid, then
PSNR), and figures over several grids are the mean of the per-grid figures. Identical frames give
``PSNR_CAP`` dB, never ``inf``, so means stay finite. SSIM is the usual Gaussian-window SSIM
(11 taps, sigma 1.5, K1 0.01, K2 0.03) per channel and averaged, computed per unknown cell.
"""

from __future__ import annotations

import math

import numpy as np
import torch

PSNR_CAP = 100.0  # dB, given for identical frames


def as_float_frames(frames) -> torch.Tensor:
    """uint8 [..., H, W, 3] (numpy or torch) or float in [0, 1] -> float64 [..., 3, H, W] in [0, 1].

    Channel-last input is recognised by a last axis of 3; channel-first float input passes as is.
    """
    x = torch.as_tensor(np.asarray(frames)) if not torch.is_tensor(frames) else frames
    if x.dtype == torch.uint8:
        x = x.to(torch.float64) / 255.0
    else:
        x = x.to(torch.float64)
    if x.shape[-1] == 3 and x.shape[-3] != 3:
        x = x.movedim(-1, -3)
    return x


def _unknown(known, V: int, T: int) -> torch.Tensor:
    k = torch.as_tensor(np.asarray(known) if not torch.is_tensor(known) else known, dtype=torch.bool)
    if tuple(k.shape) != (V, T):
        raise ValueError(f"known mask must be [V, T] = ({V}, {T}), got {tuple(k.shape)}")
    return ~k


def mse_to_psnr(mse: float) -> float:
    if mse <= 10 ** (-PSNR_CAP / 10):
        return PSNR_CAP
    return float(-10.0 * math.log10(mse))


def _grids_to_score(pred, target, known) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One predicted and one true grid as float [V, T, 3, H, W], and the unknown cells' mask [V, T]."""
    p, g = as_float_frames(pred), as_float_frames(target)
    if p.shape != g.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(p.shape)} vs {tuple(g.shape)}")
    unk = _unknown(known, p.shape[0], p.shape[1])
    if not unk.any():
        raise ValueError("every cell is known: nothing to score")
    return p, g, unk


def _unknown_cells(pred, target, known) -> tuple[torch.Tensor, torch.Tensor]:
    """The unknown cells of one predicted and one true grid, as float [N, 3, H, W] each."""
    p, g, unk = _grids_to_score(pred, target, known)
    return p[unk], g[unk]


def psnr_unknown(pred, target, known) -> float:
    """PSNR in dB of ``pred`` against ``target`` over the cells where ``known`` is False.

    pred, target: one grid, uint8 [V, T, H, W, 3] or float [V, T, 3, H, W] in [0, 1];
    known: bool [V, T]. Raises ValueError if every cell is known (nothing to score).
    """
    p, g = _unknown_cells(pred, target, known)
    mse = ((p - g) ** 2).mean().item()
    return mse_to_psnr(mse)


CHANGE_THRESHOLD = 8 / 255  # a pixel "changes" when a channel moves by more than this


def changing_pixels(target, threshold: float = CHANGE_THRESHOLD) -> torch.Tensor:
    """bool [V, T, H, W]: where the true cell (v, t) differs from (v, 0), the same view at time 0
    (any channel by more than ``threshold``): what moved since time 0, as view v sees it. Copying
    column 0 is exact everywhere else."""
    g = as_float_frames(target)
    return ((g - g[:, :1]).abs() > threshold).any(dim=-3)


def psnr_unknown_regions(pred, target, known, threshold: float = CHANGE_THRESHOLD) -> tuple[float | None, float | None]:
    """PSNR over the unknown cells split into the pixels that change since time 0
    (``changing_pixels``) and those that do not: (changing, static), None for an empty region."""
    p, g, unk = _grids_to_score(pred, target, known)
    moving = changing_pixels(g, threshold)[unk]  # [N, H, W]
    err = ((p - g) ** 2)[unk].mean(dim=-3)  # [N, H, W], mean over channels
    out = []
    for region in (moving, ~moving):
        out.append(mse_to_psnr(err[region].mean().item()) if region.any() else None)
    return out[0], out[1]


def _gaussian_1d(size: int = 11, sigma: float = 1.5, dtype=torch.float64) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _valid_blur_matrix(n: int, g: torch.Tensor) -> torch.Tensor:
    """[n, n - size + 1]: ``x @ M`` is the 'valid' correlation of the last axis of x with g."""
    size = len(g)
    m = torch.zeros(n, n - size + 1, dtype=g.dtype)
    j = torch.arange(n - size + 1)
    for k in range(size):
        m[j + k, j] = g[k]
    return m


def ssim_frames(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM of each pair of frames: a, b float [N, 3, H, W] in [0, 1] -> [N].

    'valid' windows only (as in the reference implementation), so frames must be >= 11 pixels.
    The 11x11 Gaussian window (sigma 1.5) is the outer product of two 1-D ones, so the five
    blurs run as two banded matrix products each, all five at once: the same numbers as a 2-D
    depthwise convolution (to rounding), which in float64 on a CPU took ~10 x as long.
    """
    n, c, h, w = a.shape
    size = min(11, h, w)
    g = _gaussian_1d(size, 1.5, a.dtype)
    mh = _valid_blur_matrix(h, g).to(a.device)
    mw = _valid_blur_matrix(w, g).to(a.device)
    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b, e_aa, e_bb, e_ab = mh.T @ (torch.stack([a, b, a * a, b * b, a * b]) @ mw)
    s_aa = e_aa - mu_a**2
    s_bb = e_bb - mu_b**2
    s_ab = e_ab - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * s_ab + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2)
    return (num / den).mean(dim=(1, 2, 3))


def ssim_unknown(pred, target, known) -> float:
    """Mean SSIM over the unknown cells of one grid (same inputs as ``psnr_unknown``)."""
    p, g = _unknown_cells(pred, target, known)
    return float(ssim_frames(p, g).mean().item())


def psnr_batch_unknown(pred: torch.Tensor, target: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Per-grid PSNR for a batch on any device: pred, target float [B, V, T, C, H, W] in [0, 1],
    known bool [B, V, T] -> float [B] (dB, capped). Used by the training loop's learning curve."""
    unk = (~known).float()  # [B, V, T]
    n_pix = unk.sum(dim=(1, 2)) * pred[0, 0, 0].numel()  # [B]
    se = ((pred.float() - target.float()) ** 2).sum(dim=(3, 4, 5))  # [B, V, T]
    mse = (se * unk).sum(dim=(1, 2)) / n_pix.clamp_min(1)
    return (-10.0 * torch.log10(mse.clamp_min(10 ** (-PSNR_CAP / 10)))).clamp_max(PSNR_CAP)
