"""Reference frames of a grid's cells: the inputs that show each cell the known frames of its
own view and its own time, and the reference the residual flow subtracts.

For a cell (v, t) of a grid with known cells ``known [B, V, T]``:

* reference inputs: the clean frame of (v, 0) (column 0 of its view: the freeze-time input) and
  of (0, t) (row 0 of its time: the fixed-view input), each with its known mask (zero where that
  cell is not known for this sample); with the *anchor*, also the frame of (0, 0) and its mask,
  so that one patch embedding can form (0, t) − (0, 0) (what changed by time t, seen from view 0)
  and (v, 0) − (0, 0) (what the camera changed) at every cell;
* flow reference ``ref``: the frame of (v, 0) when known, else the first known cell in grid order
  (v-major: (0, 0) whenever it is known; the first known frame of a one-row or one-column video),
  else zero. The residual flow runs on ``x - ref`` (``FourDTransformer``), so copying column 0 of
  each view (the stronger copy baseline) is what a model with a zero output head makes, and the
  network only has to learn what moved.

Pure tensor functions; the same in training, sampling and every stream mode.
"""

from __future__ import annotations

import torch


def flow_reference(cond: torch.Tensor, known_cells: torch.Tensor) -> torch.Tensor:
    """``ref [B, V, T, C, h, w]`` for clean latents ``cond [B, V, T, C, h, w]`` (only known cells
    are read) and ``known_cells [B, V, T]`` bool."""
    B, V, T = known_cells.shape
    known_cells = known_cells.to(torch.bool)
    flat = known_cells.reshape(B, V * T)
    first = flat.to(torch.uint8).argmax(dim=1)  # [B] index of the first known cell (0 if none)
    frame = cond.reshape(B, V * T, *cond.shape[3:])[torch.arange(B, device=cond.device), first]  # [B, C, h, w]
    frame = frame * flat.any(dim=1).to(frame.dtype)[:, None, None, None]
    own = known_cells[:, :, 0][:, :, None, None, None, None]  # [B, V, 1, 1, 1, 1]
    ref = torch.where(own, cond[:, :, :1], frame[:, None, None])  # [B, V, 1, C, h, w]
    return ref.expand(B, V, T, *cond.shape[3:])


def reference_inputs(cond: torch.Tensor, mask: torch.Tensor, anchor: bool = False) -> torch.Tensor:
    """The extra input channels ``[B, V, T, G·(C + m), h, w]``: for each cell, the clean frame of
    (v, 0) and its mask, then the clean frame of (0, t) and its mask (G = 2), then with
    ``anchor`` the clean frame of (0, 0) and its mask (G = 3; the anchor group comes last, so a
    model without it widens by appending zero weights).

    cond: clean latents ``[B, V, T, C, h, w]``; mask: ``[B, V, T, m]`` bool per-channel known
    masks (the codec's; m = 1 for pixels). Frames of unknown cells are zeroed.
    """
    B, V, T, C, h, w = cond.shape
    m = mask.to(cond.dtype)[..., None, None].expand(-1, -1, -1, -1, h, w)  # [B, V, T, m, h, w]
    clean = cond * mask.any(dim=-1).to(cond.dtype)[..., None, None, None]
    cell = torch.cat([clean, m], dim=3)  # [B, V, T, C + m, h, w]
    col = cell[:, :, :1].expand(B, V, T, *cell.shape[3:])  # (v, 0)
    row = cell[:, :1].expand(B, V, T, *cell.shape[3:])  # (0, t)
    groups = [col, row]
    if anchor:
        groups.append(cell[:, :1, :1].expand(B, V, T, *cell.shape[3:]))  # (0, 0)
    return torch.cat(groups, dim=3)
