"""Known-cell masks for training, one sampler per stage of the paper's recipe.

- Video stage (rows and columns of scenes): keep the first K frames, K uniform in [0, 4], or a
  random subset of frames; at least one frame stays unknown so there is something to learn.
- 4D stages: a family per sample, drawn with ``MASK_FAMILIES`` weights: row 0 + column 0 (the main
  task, most often), cell (0, 0) only (image to 4D), none (text to 4D), column 0 only (extension:
  the previous chunk's last column placed as the new chunk's first column, as the engine extends).
"""

from __future__ import annotations

import torch

from ..grid import known_mask

# family -> weight; the eval task (row0+col0) gets most of the steps
MASK_FAMILIES = {"row0+col0": 0.7, "cell0": 0.1, "none": 0.1, "col0": 0.1}
LEAD_MAX = 4  # video stage: keep K in [0, LEAD_MAX] leading frames
LEAD_SHARE = 0.7  # video stage: share of samples masked by leading frames (the rest: random)


def grid_mask(family: str, V: int, T: int, device=None) -> torch.Tensor:
    """One named family (``core.grid.known_mask``) as bool [V, T]."""
    return torch.from_numpy(known_mask(V, T, family)).to(device)


def parse_families(text: str) -> dict[str, float]:
    """'row0+col0:0.6,cell0:0.2,none:0.2' -> weights; a bare name means weight 1."""
    out = {}
    for part in text.split(","):
        name, _, w = part.strip().partition(":")
        grid_mask(name, 1, 1)  # validates the name
        out[name] = float(w) if w else 1.0
        if out[name] < 0:
            raise ValueError(f"mask weight must be >= 0, got {w}")
    if sum(out.values()) <= 0:
        raise ValueError("mask weights sum to 0")
    return out


def sample_grid_masks(
    B: int, V: int, T: int, families: dict[str, float] | None = None, generator: torch.Generator | None = None,
    device=None,
) -> tuple[torch.Tensor, list[str]]:
    """B masks for 4D training: (bool [B, V, T], family name of each)."""
    families = families or MASK_FAMILIES
    names = list(families)
    w = torch.tensor([families[n] for n in names], dtype=torch.float64)
    idx = torch.multinomial(w, B, replacement=True, generator=generator)
    chosen = [names[i] for i in idx.tolist()]
    masks = torch.stack([grid_mask(n, V, T) for n in chosen])
    return masks.to(device), chosen


def sample_video_masks(
    B: int, F: int, generator: torch.Generator | None = None, device=None,
    lead_max: int = LEAD_MAX, lead_share: float = LEAD_SHARE,
) -> torch.Tensor:
    """B masks over F frames of a video: bool [B, F]; never all known."""
    lead = torch.rand(B, generator=generator) < lead_share  # [B]
    k = torch.randint(0, min(lead_max, F - 1) + 1, (B,), generator=generator)  # [B]
    leading = torch.arange(F)[None, :] < k[:, None]  # [B, F]
    rate = torch.rand(B, 1, generator=generator) * 0.5
    random = torch.rand(B, F, generator=generator) < rate  # [B, F]
    m = torch.where(lead[:, None], leading, random)
    full = m.all(dim=1)
    if full.any():  # keep one frame to predict
        drop = torch.randint(0, F, (B,), generator=generator)
        m[full, drop[full]] = False
    return m.to(device)
