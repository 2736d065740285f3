"""The warp input: row 0 carried into every view by the flow between the freeze-time frames.

For a cell (v, t), the fixed-view video shows what happened by time t from view 0 only: the
frame of (0, t) at the same pixel is a different part of the scene once the camera has moved.
The freeze-time column shows where each part of view 0 lands in view v, so a dense optical flow
from (v, 0) to (0, 0) (OpenCV's DIS, chained through the neighbouring views, which are closer
than view 0 is) turns (0, t) into an estimate of the cell seen from view v: right for the
background, and for a moving object right where it was at time 0's depth. Alone it predicts the
changing pixels of the evaluation scenes better than either copy baseline (12.7 dB against 10.1
for column 0 and 11.4 for row 0, 16 scenes at 72x128); the model gets it as an input
(``FourDLayers.warp_input``): for each cell the warped (0, t) and the warped (0, 0) (their
difference is what changed by time t, in view v's pixels; the warped (0, 0) against (v, 0) shows
where the flow is wrong) and a mask that is 1 where the input is valid (all of column 0 and
(0, t) known).

Pixel-space models only (the flow needs frames). The flows are computed once per plan on the CPU
(about 7.5 ms a 8x8 grid at 72x128 on one core), in a thread pool over the batch.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

MIN_SIDE = 12  # DIS needs a frame at least 12 pixels wide or high; smaller frames get zero flow

_local = threading.local()
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _dis():
    import cv2

    d = getattr(_local, "dis", None)
    if d is None:  # one per thread: a DIS object is not safe to share
        d = _local.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return d


def _gray(frame: np.ndarray) -> np.ndarray:
    """uint8 [H, W] luminance of float [3, H, W] pixels in [-1, 1]."""
    y = 0.299 * frame[0] + 0.587 * frame[1] + 0.114 * frame[2]
    return np.clip((y + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def _resample(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``img`` [H, W, k] sampled at p + flow(p) (bilinear, edges repeated)."""
    import cv2

    H, W = flow.shape[:2]
    xx, yy = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    out = cv2.remap(img, xx + flow[..., 0], yy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(H, W, -1)


def view_flows(column0: np.ndarray) -> np.ndarray:
    """Flows ``[V, H, W, 2]`` (x, y in pixels) from each view's frame to view 0's, for the
    freeze-time frames ``column0`` float ``[V, 3, H, W]`` in [-1, 1]: view v's pixel p shows what
    view 0 shows at p + flow[v](p). View 0's flow is zero; the others chain the flows between
    neighbouring views (v → v−1 → … → 0)."""
    V, _, H, W = column0.shape
    out = np.zeros((V, H, W, 2), np.float32)
    if V < 2 or max(H, W) < MIN_SIDE:
        return out
    dis = _dis()
    gray = [_gray(column0[v]) for v in range(V)]
    for v in range(1, V):
        step = dis.calc(gray[v], gray[v - 1], None)  # v -> v-1
        out[v] = step + _resample(out[v - 1], step)  # then v-1 -> 0, read where the step lands
    return out


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(1, min(16, os.cpu_count() or 1)),
                                       thread_name_prefix="view-flow")
        return _pool


def batch_view_flows(column0: torch.Tensor, which: torch.Tensor | None = None) -> torch.Tensor:
    """``view_flows`` of a batch: ``column0 [B, V, 3, H, W]`` -> ``[B, V, H, W, 2]`` float32 on
    ``column0``'s device; only grids where ``which [B]`` (bool) is set are computed (the rest
    are zero)."""
    B, V, _, H, W = column0.shape
    out = torch.zeros(B, V, H, W, 2, dtype=torch.float32)
    idx = list(range(B)) if which is None else [int(i) for i in torch.nonzero(which.cpu()).flatten()]
    if idx:
        frames = column0[idx].detach().float().cpu().numpy()
        if len(idx) == 1:
            flows = [view_flows(frames[0])]
        else:
            flows = list(_executor().map(view_flows, frames))
        out[idx] = torch.from_numpy(np.stack(flows))
    return out.to(column0.device)


def warp_frames(frames: torch.Tensor, flows: torch.Tensor) -> torch.Tensor:
    """Sample ``frames [N, C, H, W]`` at p + ``flows [N, H, W, 2]`` (bilinear, edges repeated)."""
    N, C, H, W = frames.shape
    ys, xs = torch.meshgrid(torch.arange(H, device=flows.device, dtype=torch.float32),
                            torch.arange(W, device=flows.device, dtype=torch.float32), indexing="ij")
    x = (xs + flows[..., 0]) * (2.0 / max(W - 1, 1)) - 1.0
    y = (ys + flows[..., 1]) * (2.0 / max(H - 1, 1)) - 1.0
    grid = torch.stack([x, y], dim=-1)
    return F.grid_sample(frames.float(), grid, mode="bilinear", padding_mode="border",
                         align_corners=True).to(frames.dtype)


def warp_valid(known_cells: torch.Tensor) -> torch.Tensor:
    """``[B, V, T]`` bool: where the warp input is defined: all of column 0 known (the flows) and
    (0, t) known (the frame carried)."""
    col = known_cells[:, :, 0].all(dim=1)  # [B]
    return col[:, None, None] & known_cells[:, :1, :]


@torch.compiler.disable  # OpenCV on the CPU: a compiled forward calls it eagerly (a graph break)
def warp_inputs(cond: torch.Tensor, known_cells: torch.Tensor, flows: torch.Tensor | None = None) -> torch.Tensor:
    """The warp input channels ``[B, V, T, 2·C + 1, h, w]``: for each cell (v, t) the frame of
    (0, t) and the frame of (0, 0), both carried into view v by ``flows`` (``batch_view_flows``
    of column 0; computed here when None), and the valid mask (``warp_valid``); zero where it is
    not valid. ``cond``: clean pixels ``[B, V, T, C, h, w]`` in [-1, 1] (only known cells read)."""
    B, V, T, C, h, w = cond.shape
    valid = warp_valid(known_cells.to(torch.bool))  # [B, V, T]
    out = cond.new_zeros(B, V, T, 2 * C + 1, h, w)
    grids = valid.flatten(1).any(dim=1)  # [B]
    if not bool(grids.any()):
        return out
    if flows is None:
        flows = batch_view_flows(cond[:, :, 0], grids)
    flows = flows.to(cond.device)
    row = cond[:, 0]  # [B, T, C, h, w]
    src = row[:, None].expand(B, V, T, C, h, w).reshape(B * V * T, C, h, w)
    fl = flows[:, :, None].expand(B, V, T, h, w, 2).reshape(B * V * T, h, w, 2)
    moved = warp_frames(src, fl).reshape(B, V, T, C, h, w)
    anchor = moved[:, :, :1].expand(B, V, T, C, h, w)  # (0, 0) carried into view v
    m = valid.to(cond.dtype)[..., None, None, None]
    out[:, :, :, :C] = moved * m
    out[:, :, :, C:2 * C] = anchor * m
    out[:, :, :, 2 * C:] = m.expand(B, V, T, 1, h, w)
    return out
