"""Rectified flow for training: noise levels, noisy inputs, velocity targets, the masked loss.

Convention (the engine's): ``x_t = (1 - sigma) * x0 + sigma * eps``, the model predicts the
velocity ``eps - x0``; sigma = 1 is pure noise. Noise levels are drawn logit-normal and then
shifted toward high noise, as pixel-space models need (an image at 72x128 is already legible at
sigma 0.5; the structure is decided above it).
"""

from __future__ import annotations

import torch


def shift_sigma(u: torch.Tensor, shift: float) -> torch.Tensor:
    """The time shift of SD3 / FlowMatchEulerDiscreteScheduler: s*u / (1 + (s-1)*u)."""
    return shift * u / (1 + (shift - 1) * u)


def sample_sigmas(
    B: int, shift: float = 3.0, mean: float = 0.0, std: float = 1.0,
    generator: torch.Generator | None = None, device=None,
) -> torch.Tensor:
    """float [B] in (0, 1): sigmoid(N(mean, std)), then shifted."""
    u = torch.sigmoid(mean + std * torch.randn(B, generator=generator))
    return shift_sigma(u, shift).clamp(1e-4, 1 - 1e-4).to(device)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x0, noise [B, ...]; sigma [B] -> x_t [B, ...]."""
    s = sigma.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def masked_velocity_loss(pred: torch.Tensor, target: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Mean squared velocity error over the unknown cells only.

    pred, target: [B, V, T, C, H, W]; known: bool [B, V, T]. Each sample weighs by its number of
    unknown cells (a pixel is a pixel); known cells get no gradient at all.
    """
    unk = (~known).to(pred.dtype)  # [B, V, T]
    se = ((pred.float() - target.float()) ** 2).mean(dim=(3, 4, 5))  # [B, V, T]
    return (se * unk).sum() / unk.sum().clamp_min(1)


MIN_LOSS_SIGMA = 0.05  # x-prediction: the velocity error is the x0 error / σ, with σ floored here


def masked_x0_velocity_loss(x0_pred: torch.Tensor, x0: torch.Tensor, known: torch.Tensor, sigma: torch.Tensor,
                            min_sigma: float = MIN_LOSS_SIGMA) -> torch.Tensor:
    """The velocity loss of a model that predicts x0 (the residual flow): ``v − v̂ = (x̂0 − x0)/σ``,
    so this is ``masked_velocity_loss`` with σ floored at ``min_sigma`` (at σ → 0 the weight
    would explode; JiT, Li & He 2025, clip it the same way).

    x0_pred, x0: [B, V, T, C, H, W]; known: bool [B, V, T]; sigma: [B].
    """
    s = sigma.float().clamp_min(min_sigma).reshape(-1, *([1] * (x0.dim() - 1)))
    return masked_velocity_loss(x0_pred.float() / s, x0.float() / s, known)
