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
where the flow is wrong), the frame of (v, 0) moved by view 0's motion between time 0 and t (the
flow from (0, t) to (0, 0), read where view v's pixels land in view 0: the object as view v sees
it, moved; alone 11.4 dB where pixels change but 30.1 where they do not, and the mean of the two
estimates 13.0 where they change) and a mask that is 1 where the input is valid (all of column 0
and (0, t) known).

Pixel-space models only (the flow needs frames). The flows (V − 1 between views, T − 1 along row
0) are computed once per plan on the CPU, in a thread pool over the batch, or once per rendered
grid in training, in the background while the step trains (``ReplayPool``).
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


def dis_flow(preset: str = "medium"):
    """This thread's OpenCV DIS optical flow object of ``preset`` (made once per thread)."""
    import cv2

    cache = _local.__dict__.setdefault("dis", {})  # one per thread: a DIS object is not safe to share
    if preset not in cache:
        cache[preset] = cv2.DISOpticalFlow_create(getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{preset.upper()}"))
    return cache[preset]


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


def view_flows(column0: np.ndarray, preset: str = "medium", chained: bool = True) -> np.ndarray:
    """Flows ``[V, H, W, 2]`` (x, y in pixels) from each view's frame to view 0's, for the
    freeze-time frames ``column0`` float ``[V, 3, H, W]`` in [-1, 1]: view v's pixel p shows what
    view 0 shows at p + flow[v](p). View 0's flow is zero; the others chain the flows between
    neighbouring views (v → v−1 → … → 0), or with ``chained`` False are one flow straight to view
    0 (``scripts/warp_probe.py`` compares the two; ``preset``: OpenCV's DIS preset)."""
    V, _, H, W = column0.shape
    out = np.zeros((V, H, W, 2), np.float32)
    if V < 2 or max(H, W) < MIN_SIDE:
        return out
    dis = dis_flow(preset)
    gray = [_gray(column0[v]) for v in range(V)]
    for v in range(1, V):
        if not chained:
            out[v] = dis.calc(gray[v], gray[0], None)
            continue
        step = dis.calc(gray[v], gray[v - 1], None)  # v -> v-1
        out[v] = step + _resample(out[v - 1], step)  # then v-1 -> 0, read where the step lands
    return out


def time_flows(row0: np.ndarray) -> np.ndarray:
    """Flows ``[T, H, W, 2]`` from each frame of the fixed-view video ``row0`` float
    ``[T, 3, H, W]`` to its first: (0, t)'s pixel p shows what (0, 0) showed at p + flow[t](p)
    (what moved, and from where). Time 0's flow is zero."""
    T, _, H, W = row0.shape
    out = np.zeros((T, H, W, 2), np.float32)
    if T < 2 or max(H, W) < MIN_SIDE:
        return out
    dis = dis_flow()
    first = _gray(row0[0])
    for t in range(1, T):
        out[t] = dis.calc(_gray(row0[t]), first, None)
    return out


def grid_flows(column0: np.ndarray, row0: np.ndarray) -> np.ndarray:
    """``[V + T, H, W, 2]``: ``view_flows(column0)`` then ``time_flows(row0)``."""
    return np.concatenate([view_flows(column0), time_flows(row0)])


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(1, min(16, os.cpu_count() or 1)),
                                       thread_name_prefix="view-flow")
        return _pool


def column_row_flows(col: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """``grid_flows`` of a batch from its column 0 ``[B, V, 3, H, W]`` and row 0 ``[B, T, 3, H, W]``
    (in [-1, 1], any device) -> ``[B, V + T, H, W, 2]`` float32 on the CPU, the grids spread over
    the flow threads."""
    col = col.detach().float().cpu().numpy()
    row = row.detach().float().cpu().numpy()
    flows = [grid_flows(col[0], row[0])] if len(col) == 1 else list(_executor().map(grid_flows, col, row))
    return torch.from_numpy(np.stack(flows))


@torch.compiler.disable  # OpenCV on the CPU: a compiled forward calls it eagerly (a graph break)
def batch_grid_flows(grid: torch.Tensor, which: torch.Tensor | None = None) -> torch.Tensor:
    """``grid_flows`` of a batch of grids ``[B, V, T, 3, H, W]`` in [-1, 1] (only column 0 and
    row 0 are read) -> ``[B, V + T, H, W, 2]`` float32 on ``grid``'s device; only grids where
    ``which [B]`` (bool) is set are computed (the rest are zero)."""
    B, V, T, _, H, W = grid.shape
    out = torch.zeros(B, V + T, H, W, 2, dtype=torch.float32)
    idx = list(range(B)) if which is None else [int(i) for i in torch.nonzero(which.cpu()).flatten()]
    if idx:  # only column 0 and row 0 leave the device
        out[idx] = column_row_flows(grid[:, :, 0][idx], grid[:, 0][idx])
    return out.to(grid.device)


def mirror_flows(flows: torch.Tensor) -> torch.Tensor:
    """The flows ``[..., H, W, 2]`` of the left-right mirrored frames: the field mirrored, its x
    component negated."""
    return flows.flip(-2) * torch.tensor([-1.0, 1.0], device=flows.device, dtype=flows.dtype)


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


def warp_inputs(cond: torch.Tensor, known_cells: torch.Tensor, flows: torch.Tensor | None = None) -> torch.Tensor:
    """The warp input channels ``[B, V, T, 3·C + 1, h, w]`` for each cell (v, t): the frame of
    (0, t) and the frame of (0, 0), both carried into view v by the view flows; the frame of
    (v, 0) moved by what moved in view 0 between time 0 and t (the time flow of row 0, read where
    view v's pixels land in view 0); and the valid mask (``warp_valid``); zero where not valid.
    ``flows``: ``batch_grid_flows`` of the grid ``[B, V + T, h, w, 2]`` (computed here when None).
    ``cond``: clean pixels ``[B, V, T, C, h, w]`` in [-1, 1] (only known cells read). With the
    flows given (training) it is torch alone and compiles into the forward's graph."""
    B, V, T, C, h, w = cond.shape
    valid = warp_valid(known_cells.to(torch.bool))  # [B, V, T]
    out = cond.new_zeros(B, V, T, 3 * C + 1, h, w)
    grids = valid.flatten(1).any(dim=1)  # [B]
    if not torch.compiler.is_compiling() and not bool(grids.any()):
        return out  # (compiled, it goes on: every product below is masked to zero there)
    if flows is None:
        flows = batch_grid_flows(cond, grids)
    flows = flows.to(cond.device, torch.float32)
    view = flows[:, :V, None].expand(B, V, T, h, w, 2).reshape(B * V * T, h, w, 2)
    times = flows[:, None, V:].expand(B, V, T, h, w, 2).reshape(B * V * T, h, w, 2)
    row = cond[:, :1].expand(B, V, T, C, h, w).reshape(B * V * T, C, h, w)
    moved = warp_frames(row, view).reshape(B, V, T, C, h, w)  # (0, t) carried into view v
    anchor = moved[:, :, :1].expand(B, V, T, C, h, w)  # (0, 0) carried into view v
    # view 0's motion since time 0, at the view-0 partner of each of view v's pixels
    motion = warp_frames(times.permute(0, 3, 1, 2), view).permute(0, 2, 3, 1)
    own = cond[:, :, :1].expand(B, V, T, C, h, w).reshape(B * V * T, C, h, w)
    transferred = warp_frames(own, motion).reshape(B, V, T, C, h, w)  # (v, 0) moved that way
    m = valid.to(cond.dtype)[..., None, None, None]
    out[:, :, :, :C] = moved * m
    out[:, :, :, C:2 * C] = anchor * m
    out[:, :, :, 2 * C:3 * C] = transferred * m
    out[:, :, :, 3 * C:] = m.expand(B, V, T, 1, h, w)
    return out
