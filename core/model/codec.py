"""Codecs between frames and the model's latent grid: pixels (the embedded model) and the Wan VAE.

Frames in the model are float ``[B, V, T, 3, H, W]`` in [-1, 1]. A codec maps them to latents
``[B, V, T', C, h, w]`` and back, and maps the known-cell mask ``[B, V, T]`` to per-latent-cell
mask channels ``[B, V, T', m]``. The Wan VAE compresses along time only (each row, the video of
one view, is one VAE clip); views are never mixed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError


def frames_to_model(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[V, T, H, W, 3]`` -> float ``[1, V, T, 3, H, W]`` in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 1, 4, 2, 3).float()
    return (x / 127.5 - 1.0)[None]


def model_to_frames(x: torch.Tensor) -> np.ndarray:
    """float ``[V, T, 3, H, W]`` in [-1, 1] -> uint8 ``[V, T, H, W, 3]`` (rounded, clipped)."""
    y = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return y.permute(0, 1, 3, 4, 2).cpu().numpy()


class PixelCodec:
    """The identity: the model works on pixels (the paper's own base model is pixel space)."""

    name = "pixels"
    channels = 3
    space_factor = 1
    time_factor = 1
    mask_channels = 1

    def check_times(self, T: int) -> None:
        pass

    def latent_times(self, T: int) -> int:
        return T

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return frames

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.clamp(-1, 1)

    def mask(self, known: torch.Tensor) -> torch.Tensor:
        """``[B, V, T]`` bool -> ``[B, V, T, 1]``."""
        return known[..., None]

    def to(self, device=None, dtype=None) -> "PixelCodec":
        return self


class WanVAECodec:
    """``AutoencoderKLWan`` applied to each row (view) as a clip: x8 in space, x4 in time
    (``T' = (T−1)//4 + 1``; T must be 4k+1), latents normalised as ``WanPipeline`` does."""

    name = "wan-vae"
    mask_channels = 4

    def __init__(self, vae):
        self.vae = vae.eval()
        cfg = vae.config
        self.channels = cfg.z_dim
        self.space_factor = 2 ** len(cfg.temperal_downsample)
        self.time_factor = 2 ** sum(bool(x) for x in cfg.temperal_downsample)
        self.mask_channels = self.time_factor
        self._mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)

    @classmethod
    def load(cls, folder: str | Path, dtype=torch.float32) -> "WanVAECodec":
        from diffusers import AutoencoderKLWan

        return cls(AutoencoderKLWan.from_pretrained(Path(folder), local_files_only=True).to(dtype))

    @classmethod
    def build(cls, **config) -> "WanVAECodec":
        from diffusers import AutoencoderKLWan

        return cls(AutoencoderKLWan(**config))

    def to(self, device=None, dtype=None) -> "WanVAECodec":
        self.vae.to(device=device)  # the VAE stays float32: its convolutions are cheap next to the DiT
        return self

    def check_times(self, T: int) -> None:
        if (T - 1) % self.time_factor:
            raise InputError(f"times must be {self.time_factor}k+1 for the Wan VAE (e.g. 5, 9, 13), got {T}")

    def latent_times(self, T: int) -> int:
        return (T - 1) // self.time_factor + 1

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, V, T, 3, H, W]`` -> ``[B, V, T', C, h, w]`` (one clip per row)."""
        B, V, T = frames.shape[:3]
        self.check_times(T)
        dev = next(self.vae.parameters()).device
        rows = frames.permute(0, 1, 3, 2, 4, 5).reshape(B * V, 3, T, *frames.shape[-2:])
        out = []
        for r in rows:  # one clip at a time bounds the VAE's memory
            z = self.vae.encode(r[None].to(dev, torch.float32)).latent_dist.mode()
            out.append((z - self._mean.to(dev)) / self._std.to(dev))
        z = torch.cat(out)  # [B·V, C, T', h, w]
        return z.reshape(B, V, *z.shape[1:]).permute(0, 1, 3, 2, 4, 5)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``[B, V, T', C, h, w]`` -> frames ``[B, V, T, 3, H, W]`` in [-1, 1]."""
        B, V, Tl, C, h, w = latents.shape
        dev = next(self.vae.parameters()).device
        rows = latents.permute(0, 1, 3, 2, 4, 5).reshape(B * V, C, Tl, h, w)
        out = []
        for z in rows:
            z = z[None].to(dev, torch.float32) * self._std.to(dev) + self._mean.to(dev)
            out.append(self.vae.decode(z).sample.clamp(-1, 1))
        x = torch.cat(out)  # [B·V, 3, T, H, W]
        return x.reshape(B, V, *x.shape[1:]).permute(0, 1, 3, 2, 4, 5)

    def mask(self, known: torch.Tensor) -> torch.Tensor:
        """``[B, V, T]`` -> ``[B, V, T', f]``: latent frame 0 holds frame 0 (repeated f times),
        latent frame j ≥ 1 holds frames f(j−1)+1 … f·j — Wan's image-to-video mask layout."""
        f = self.time_factor
        first = known[..., :1].expand(*known.shape[:2], f)
        rest = known[..., 1:].reshape(*known.shape[:2], -1, f)
        return torch.cat([first[:, :, None], rest], dim=2)
