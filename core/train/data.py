"""Training batches for each stage, from the synthetic world, on the training device.

Stage 1 (video): rows (dynamic, camera still) and columns (freeze-time) of training scenes, as
``[B, 1, F]`` and ``[B, F, 1]`` grids with the context flag of each. Stage 2: pseudo-4D grids
(2D homographies of videos). Stage 3: synthetic 4D grids. Only training seeds are ever drawn.
Frames come as float [B, V, T, 3, H, W] in [-1, 1] (the model's pixel convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """One model-ready batch (a video batch is split by context into two of these)."""

    x0: torch.Tensor  # [B, V, T, 3, H, W] in [-1, 1]
    captions: list[str]
    context: torch.Tensor  # [B] long, CONTEXT_*


def stage_batches(stage: int, batch: int, views: int, times: int, height: int, width: int, device,
                  seed: int):
    """An endless iterator of lists of ``Batch`` (one list per training step)."""
    from ..model.config import CONTEXT_DYNAMIC, CONTEXT_FREEZE, CONTEXT_GRID
    from ..world.dataset import GridBatches, VideoBatches

    if stage in (2, 3):
        kind = "pseudo4d" if stage == 2 else "synthetic"
        src = GridBatches("train", batch, views, times, height, width, device=device, kind=kind, seed=seed)
        for b in src:
            x0 = b["frames"] * 2 - 1
            yield [Batch(x0, list(b["captions"]), torch.full((x0.shape[0],), CONTEXT_GRID, device=x0.device))]
        return
    if stage != 1:
        raise ValueError(f"stage must be 1, 2 or 3, got {stage}")
    # Rows and columns are queued apart and emitted in halves of fixed size, so every step has
    # the same two shapes (a compiled model would recompile for each new split otherwise).
    frames_per_video = max(views, times)
    half = max(1, batch // 2)
    src = VideoBatches("train", batch, frames_per_video, height, width, device=device, seed=seed)
    queues = {False: ([], []), True: ([], [])}  # freeze flag -> (videos [F, 3, H, W], captions)
    for b in src:
        x = b["frames"] * 2 - 1  # [B, F, 3, H, W]
        freeze = torch.as_tensor(b["freeze_time"], dtype=torch.bool).tolist()
        for i, flag in enumerate(freeze):
            queues[flag][0].append(x[i])
            queues[flag][1].append(b["captions"][i])
        if all(len(q[0]) >= half for q in queues.values()):
            out = []
            for flag, ctx in ((False, CONTEXT_DYNAMIC), (True, CONTEXT_FREEZE)):
                vids, caps = queues[flag]
                v = torch.stack(vids[:half])  # [half, F, 3, H, W]
                v = v[:, :, None] if flag else v[:, None]  # freeze: [B, F, 1] column; dynamic: [B, 1, F] row
                out.append(Batch(v, caps[:half], torch.full((half,), ctx, dtype=torch.long, device=v.device)))
                del vids[:half], caps[:half]
            yield out
