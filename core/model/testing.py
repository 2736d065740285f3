"""Small real instances for tests and benchmarks: tiny models of the real classes, "trained-like"
new layers (random instead of identity), and little input clips. No mocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

TEST_WORDS = ["a", "the", "red", "blue", "green", "ball", "cube", "rolls", "spins", "on", "floor", "sky"]


def tiny_model(seed: int = 0, name: str = "tiny", trained: bool = False):
    """A ``FourDModel`` from preset ``name`` with random weights (float32, CPU)."""
    from .pipeline import FourDModel

    model = FourDModel.from_preset(name, words=TEST_WORDS, seed=seed)
    if trained:
        perturb_new_layers(model.transformer, seed=seed + 1)
    return model


@torch.no_grad()
def perturb_new_layers(transformer, seed: int = 1, scale: float = 0.05) -> None:
    """Give the new layers (sync, conditioning, context) random values, as training would, so
    tests can see them act; their identity start is tested separately."""
    g = torch.Generator().manual_seed(seed)
    for p in transformer.layers.parameters():
        p.add_(torch.randn(p.shape, generator=g).to(p.device, p.dtype) * scale)


def tiny_transformer(num_layers: int = 2, fuse: bool = False, seed: int = 0, **flags):
    """A bare ``FourDTransformer`` of the ``tiny`` preset with ``num_layers`` blocks and trained-like
    new layers (float32, CPU, eval mode); ``fuse``: Q/K/V fused into one matmul; ``flags``: config
    fields set before building (e.g. ``warp_input=True``)."""
    from .config import preset
    from .transformer import FourDTransformer

    cfg = preset("tiny")
    cfg.backbone["num_layers"] = num_layers
    for key, value in flags.items():
        if not hasattr(cfg, key):
            raise TypeError(f"tiny_transformer: the model config has no field {key!r}")
        setattr(cfg, key, value)
    torch.manual_seed(seed)
    model = FourDTransformer.from_config(cfg).eval()
    perturb_new_layers(model)
    if fuse:
        model.fuse_projections()
    return model


def grid_inputs(B: int = 1, V: int = 4, T: int = 4, C: int = 16, h: int = 16, w: int = 16, *,
                text_len: int = 8, text_dim: int = 16, sigma: float | None = 0.6, seed: int = 1,
                device="cpu", dtype=torch.float32):
    """Random inputs of one model step with row 0 + column 0 known: ``(x, sigma [B], text, cond,
    known)``. Drawn in the order x, cond, sigma (``sigma=None``: uniform per sample), text."""
    from ..grid import known_mask

    g = torch.Generator("cpu").manual_seed(seed)
    x = torch.randn(B, V, T, C, h, w, generator=g).to(device, dtype)
    cond = torch.randn(B, V, T, C, h, w, generator=g).to(device, dtype)
    sig = torch.rand(B, generator=g) if sigma is None else torch.full((B,), float(sigma))
    text = torch.randn(B, text_len, text_dim, generator=g).to(device, dtype)
    known = torch.from_numpy(known_mask(V, T, "row0+col0")).to(device).expand(B, V, T).clone()
    return x, sig, text, cond, known


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 difference ``|a − b| / |b|`` (in float32)."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def moving_square(n: int, h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    """n frames of a white square sliding over a colour gradient: uint8 [n, h, w, 3]."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 40 + 20 * seed)], -1).astype(np.uint8)
    out = np.repeat(base[None], n, 0)
    for i in range(n):
        x0 = int(i * (w - 8) / max(1, n - 1))
        out[i, h // 3:h // 3 + 8, x0:x0 + 8] = 255
    return out


def write_clip(path: str | Path, frames: np.ndarray, fps: float = 8.0) -> Path:
    from ..export import write_mp4

    return write_mp4(path, frames, fps)
