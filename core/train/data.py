"""Training batches for each stage, from the synthetic world, on the training device.

Stage 1 (video): rows (dynamic, camera still) and columns (freeze-time) of training scenes, as
``[B, 1, F]`` and ``[B, F, 1]`` grids with the context flag of each. Stage 2: pseudo-4D grids
(2D homographies of videos). Stage 3: synthetic 4D grids. Only training seeds are ever drawn.
Frames come as float [B, V, T, 3, H, W] in [-1, 1] (the model's pixel convention).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """One model-ready batch (a video batch is split by context into two of these)."""

    x0: torch.Tensor  # [B, V, T, 3, H, W] in [-1, 1]
    captions: list[str]
    context: torch.Tensor  # [B] long, CONTEXT_*
    seeds: list[int] | None = None  # scene identities (provenance: training seeds only)
    flows: torch.Tensor | None = None  # [B, V + T, H, W, 2] warp-input flows (None: computed later)


def stage_batches(stage: int, batch: int, views: int, times: int, height: int, width: int, device,
                  seed: int, workers: int = 0, reuse: float = 1.0, pool_size: int = 0, render_share: float = 0.5,
                  flows: bool = False):
    """An endless iterator of lists of ``Batch`` (one list per training step). ``workers`` > 0
    plans scenes in background processes (the GPU renders and trains meanwhile). In stages 2
    and 3, ``reuse`` > 1 draws from a ``ReplayPool`` of ``pool_size`` grids with about
    ``batch / reuse`` fresh grids a step; ``reuse`` 0 lets the pool choose (``ReplayPool.observe``:
    rendering takes about ``render_share`` of a step's time)."""
    if stage in (2, 3) and reuse != 1:
        gen = torch.Generator().manual_seed(seed)
        if reuse == 0:
            chunk = max(1, math.ceil(batch / 8))
            src = rendered_batches(stage, chunk, views, times, height, width, device, seed, workers)
            return ReplayPool(src, batch, max(pool_size, 2 * batch), gen, chunks=(1, math.ceil(batch / chunk)),
                              ratio=render_share, flows=flows)
        fresh = max(1, math.ceil(batch / reuse))
        src = rendered_batches(stage, fresh, views, times, height, width, device, seed, workers)
        return ReplayPool(src, batch, max(pool_size, 2 * batch), gen, flows=flows)
    return rendered_batches(stage, batch, views, times, height, width, device, seed, workers)


def rendered_batches(stage: int, batch: int, views: int, times: int, height: int, width: int, device,
                     seed: int, workers: int = 0):
    """Freshly rendered batches, no reuse (see ``stage_batches``)."""
    from ..model.config import CONTEXT_DYNAMIC, CONTEXT_FREEZE, CONTEXT_GRID
    from ..world.dataset import GridBatches, VideoBatches

    if stage in (2, 3):
        kind = "pseudo4d" if stage == 2 else "synthetic"
        src = GridBatches("train", batch, views, times, height, width, device=device, kind=kind, seed=seed,
                          workers=workers)
        for b in src:
            x0 = b["frames"] * 2 - 1
            yield [Batch(x0, list(b["captions"]), torch.full((x0.shape[0],), CONTEXT_GRID, device=x0.device),
                         list(b["seeds"]))]
        return
    if stage != 1:
        raise ValueError(f"stage must be 1, 2 or 3, got {stage}")
    # Rows and columns are queued apart and emitted in halves of fixed size, so every step has
    # the same two shapes (a compiled model would recompile for each new split otherwise).
    frames_per_video = max(views, times)
    half = max(1, batch // 2)
    src = VideoBatches("train", batch, frames_per_video, height, width, device=device, seed=seed, workers=workers)
    queues = {False: ([], [], []), True: ([], [], [])}  # freeze flag -> (videos [F, 3, H, W], captions, seeds)
    for b in src:
        x = b["frames"] * 2 - 1  # [B, F, 3, H, W]
        freeze = torch.as_tensor(b["freeze_time"], dtype=torch.bool).tolist()
        for i, flag in enumerate(freeze):
            queues[flag][0].append(x[i])
            queues[flag][1].append(b["captions"][i])
            queues[flag][2].append(int(b["seeds"][i]))
        if all(len(q[0]) >= half for q in queues.values()):
            out = []
            for flag, ctx in ((False, CONTEXT_DYNAMIC), (True, CONTEXT_FREEZE)):
                vids, caps, seeds = queues[flag]
                v = torch.stack(vids[:half])  # [half, F, 3, H, W]
                v = v[:, :, None] if flag else v[:, None]  # freeze: [B, F, 1] column; dynamic: [B, 1, F] row
                out.append(Batch(v, caps[:half], torch.full((half,), ctx, dtype=torch.long, device=v.device),
                                 seeds[:half]))
                del vids[:half], caps[:half], seeds[:half]
            yield out


class ReplayPool:
    """Reuse rendered grids: a pool of grids (uint8, on the device) refreshed by fresh ones every
    step, from which each step draws ``batch`` at random, each mirrored left-right at random (a
    valid 4D grid of the mirrored scene; the caption stays true). With ``reverse_views`` the view
    order is also reversed at random (a valid grid of the reversed camera path, but one the
    world's paths never start from, so off by default).

    Rendering 8x8 grids can cost more than a training step of a small model. Each step pulls
    ``k`` source batches (``chunks = (lo, hi)`` bounds k; fixed at 1 by default). With a range,
    ``observe(step_seconds)`` adapts k so that rendering takes about ``ratio`` of the time of a
    training step. The known-cell masks are drawn per step, so a reused grid still poses a new task.
    With ``flows`` it also keeps each grid's warp-input flows (``core.model.warp``), computed once
    per grid rendered (not per grid drawn) and mirrored with it. They are computed on the CPU in
    the background while the step trains, so a fresh grid enters the pool one step later (the
    first step waits for its batch).
    """

    def __init__(self, source, batch: int, pool_size: int, generator: torch.Generator,
                 chunks: tuple[int, int] = (1, 1), ratio: float = 0.5, reverse_views: bool = False,
                 flows: bool = False):
        self.source = source  # iterator of [Batch]
        self.batch = batch
        self.gen = generator
        self.frames: torch.Tensor | None = None  # uint8 [N, V, T, 3, H, W]
        self.keep_flows = flows
        self.flows: torch.Tensor | None = None  # float16 [N, V + T, H, W, 2] with keep_flows
        self.captions: list[str] = []
        self.seeds: list[int] = []
        self.context = None
        self.filled = 0
        self.pool_size = pool_size
        self.lo, self.hi = chunks
        self.k = self.hi  # start all fresh; observe() lowers it if rendering is slow
        self.ratio = ratio
        self.reverse_views = reverse_views
        self.render_s: float | None = None  # smoothed seconds per source batch
        self.step_s: float | None = None
        self.fresh_seen = 0
        self.drawn = 0
        self._pending: list = []  # grids whose flows are being computed: (frames, captions, seeds, future)
        self._flow_worker: ThreadPoolExecutor | None = None

    @staticmethod
    def to_uint8(x0: torch.Tensor) -> torch.Tensor:
        return ((x0 + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)

    def _pull(self) -> None:
        t = time.perf_counter()
        b = next(self.source)[0]
        if self.context is None:
            self.context = b.context[:1]
        if b.x0.device.type == "cuda":
            torch.cuda.synchronize(b.x0.device)
        dt = time.perf_counter() - t
        self.render_s = dt if self.render_s is None else 0.9 * self.render_s + 0.1 * dt
        self._add(b)

    def _add(self, b: Batch) -> None:
        x = self.to_uint8(b.x0)
        if not self.keep_flows:
            self._insert(x, b.captions, b.seeds, None)
            return
        # the flows of the stored uint8 frames, as the grid will be drawn (only column 0 and row 0
        # are read), computed in the background while the GPU trains; the grid enters the pool
        # once they are ready (``_settle``)
        from ..model.warp import column_row_flows

        if self._flow_worker is None:
            self._flow_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pool-flows")
        col, row = x[:, :, 0].cpu().float() / 127.5 - 1, x[:, 0].cpu().float() / 127.5 - 1
        self._pending.append((x, b.captions, b.seeds, self._flow_worker.submit(column_row_flows, col, row)))

    def _settle(self, n: int | None = None) -> None:
        """Put the first ``n`` pending grids (all by default) into the pool, waiting for their
        flows if need be; always in the order they came, so a run is the same however fast the
        flows are."""
        for _ in range(len(self._pending) if n is None else min(n, len(self._pending))):
            x, captions, seeds, flows = self._pending.pop(0)
            self._insert(x, captions, seeds, flows.result())

    def _insert(self, x: torch.Tensor, captions: list[str], seeds, flows: torch.Tensor | None) -> None:
        n = x.shape[0]
        self.fresh_seen += n
        if self.frames is None:
            self.frames = torch.empty((self.pool_size,) + tuple(x.shape[1:]), dtype=torch.uint8, device=x.device)
            self.captions = [""] * self.pool_size
            self.seeds = [-1] * self.pool_size
            if self.keep_flows:
                V, T, _, H, W = x.shape[1:]
                self.flows = torch.zeros((self.pool_size, V + T, H, W, 2), dtype=torch.float16, device=x.device)
        if self.filled < self.pool_size:
            idx = torch.arange(self.filled, min(self.pool_size, self.filled + n))
            self.filled += len(idx)
        else:
            idx = torch.randperm(self.pool_size, generator=self.gen)[:n]
        self.frames[idx.to(x.device)] = x[: len(idx)]
        if flows is not None:
            self.flows[idx.to(x.device)] = flows[: len(idx)].to(x.device, self.flows.dtype)
        for j, i in enumerate(idx.tolist()):
            self.captions[i] = captions[j]
            self.seeds[i] = seeds[j] if seeds is not None else -1

    def observe(self, step_seconds: float) -> None:
        """Tell the pool how long the last training step took (adapts the fresh share)."""
        self.step_s = step_seconds if self.step_s is None else 0.9 * self.step_s + 0.1 * step_seconds
        if self.hi > self.lo and self.render_s:
            self.k = int(min(self.hi, max(self.lo, round(self.ratio * self.step_s / self.render_s))))

    @property
    def reuse(self) -> float:
        """Grids drawn per grid rendered so far."""
        return self.drawn / max(1, self.fresh_seen)

    def __iter__(self):
        return self

    def __next__(self) -> list[Batch]:
        earlier = len(self._pending)  # with flows: grids of the steps before enter now, this step's next time
        for _ in range(self.k):  # fresh grids every step
            self._pull()
        self._settle(earlier)
        while self.filled < min(self.pool_size, self.batch):  # the first step fills one batch
            self._pull()
            self._settle()
        idx = torch.randint(0, self.filled, (self.batch,), generator=self.gen)
        self.drawn += self.batch
        x = self.frames[idx.to(self.frames.device)].float() / 127.5 - 1  # [B, V, T, 3, H, W]
        flip = (torch.rand(self.batch, generator=self.gen) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None, None, None], x.flip(-1), x)
        flows = None
        if self.keep_flows:
            from ..model.warp import mirror_flows

            fl = self.flows[idx.to(self.flows.device)].float()  # [B, V + T, H, W, 2]
            flows = torch.where(flip[:, None, None, None, None], mirror_flows(fl), fl)
        if self.reverse_views:
            rev = (torch.rand(self.batch, generator=self.gen) < 0.5).to(x.device)
            x = torch.where(rev[:, None, None, None, None, None], x.flip(1), x)
            if flows is not None and bool(rev.any()):  # another view 0: flows computed afresh
                from ..model.warp import batch_grid_flows

                flows = torch.where(rev[:, None, None, None, None], batch_grid_flows(x, rev), flows)
        caps = [self.captions[i] for i in idx.tolist()]
        return [Batch(x, caps, self.context.expand(self.batch).clone(), [self.seeds[i] for i in idx.tolist()],
                      flows)]
