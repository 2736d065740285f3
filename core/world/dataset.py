"""Training data from the synthetic world: batches of 4D grids, and of plain rows and columns
for video pretraining, rendered batched on the training device.

Two stages per batch: a *plan* (seeds drawn, scenes sampled, cameras and object poses packed
into numpy arrays; CPU only, optionally in DataLoader worker processes) and a *render* (one
batched ray-casting pass on ``device``). With ``workers > 0`` the plans of the next batches are
made in the background while the GPU renders and trains, so the Python scene sampler never
starves the GPU.

Determinism: a stream is fixed by ``seed`` (and ``workers``: each worker draws its own seeds).
The evaluation split walks ``eval_seeds(eval_scenes)`` in order, once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .pseudo4d import pseudo4d_batch
from .render import FrameBatch, grid_u, pack_arrays, render_frames
from .scenes import sample_scene
from .split import TRAIN_SEEDS, eval_seeds

KINDS = ("synthetic", "pseudo4d")
SPLITS = ("train", "eval")


@dataclass
class _Config:
    split: str
    batch: int
    views: int
    times: int
    height: int
    width: int
    kind: str
    seed: int
    eval_scenes: int
    steps: int | None
    video: bool = False  # rows and columns instead of grids
    freeze_prob: float = 0.5


def _check(split: str, kind: str, batch: int, **sizes) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


def _seed_batches(cfg: _Config, worker: int = 0):
    """Lists of scene seeds, one per batch."""
    if cfg.split == "eval":
        seeds = eval_seeds(cfg.eval_scenes)
        for a in range(0, len(seeds), cfg.batch):
            yield seeds[a:a + cfg.batch]
        return
    rng = np.random.default_rng([cfg.seed, worker, 7])
    k = 0
    while cfg.steps is None or k < cfg.steps:
        yield [int(s) for s in rng.integers(TRAIN_SEEDS.start, TRAIN_SEEDS.stop, cfg.batch)]
        k += 1


def _plan(cfg: _Config, seeds: list[int]) -> dict:
    """Everything the render needs for one batch, as numpy arrays and lists."""
    specs = [sample_scene(s) for s in seeds]
    b = len(seeds)
    freeze = np.zeros(b, dtype=bool)
    if cfg.video:  # one row (fixed view, time runs) or one column (fixed time, view runs) per scene
        rng = np.random.default_rng([seeds[0], cfg.seed, 11])
        freeze = rng.random(b) < cfg.freeze_prob
        fixed = rng.random(b)
        run = grid_u(cfg.times)
        scene = np.repeat(np.arange(b), cfg.times)
        uv = np.where(freeze[:, None], run[None], fixed[:, None]).ravel()
        ut = np.where(freeze[:, None], fixed[:, None], run[None]).ravel()
        if cfg.kind == "pseudo4d":  # columns are a single frame swung by homographies
            uv = np.broadcast_to(np.where(freeze, 0.0, fixed)[:, None], (b, cfg.times)).ravel()
    elif cfg.kind == "pseudo4d":  # render row 0 only; the views come from 2D warps
        scene, uv, ut = np.repeat(np.arange(b), cfg.times), np.zeros(b * cfg.times), np.tile(grid_u(cfg.times), b)
    else:
        scene, uv, ut = (a.ravel() for a in np.meshgrid(np.arange(b), grid_u(cfg.views), grid_u(cfg.times), indexing="ij"))
    arrays = pack_arrays(specs, scene, uv, ut, cfg.height, cfg.width)
    return {"arrays": arrays, "seeds": list(seeds), "captions": [s.caption for s in specs], "freeze": freeze}


class _PlanStream(torch.utils.data.IterableDataset):
    def __init__(self, cfg: _Config):
        self.cfg = cfg

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        for seeds in _seed_batches(self.cfg, worker):
            yield _plan(self.cfg, seeds)


class _Batches:
    """Shared plumbing: plans in-process or in DataLoader workers, then render on ``device``."""

    def __init__(self, cfg: _Config, device, ssaa: int, workers: int):
        self.cfg = cfg
        self.device = torch.device(device)
        self.ssaa = int(ssaa)
        self.workers = int(workers) if cfg.split == "train" else 0  # eval order must be exact

    def _plans(self):
        if self.workers == 0:
            for seeds in _seed_batches(self.cfg):
                yield _plan(self.cfg, seeds)
            return
        loader = torch.utils.data.DataLoader(
            _PlanStream(self.cfg), batch_size=None, num_workers=self.workers, prefetch_factor=2,
            pin_memory=self.device.type == "cuda",
        )
        steps = self.cfg.steps
        for k, plan in enumerate(loader):
            if steps is not None and k >= steps:
                break
            yield plan

    def _render(self, plan) -> tuple[torch.Tensor, torch.Tensor, FrameBatch]:
        fb = FrameBatch.from_arrays(plan["arrays"], self.device)
        rgb, depth = render_frames(fb, self.cfg.height, self.cfg.width, ssaa=self.ssaa)
        return rgb, depth, fb


class GridBatches(_Batches):
    """Iterable of grid batches: ``{"frames": float32 [B, V, T, 3, H, W] in [0, 1] on device,
    "captions": list[str], "seeds": list[int]}``; synthetic grids also carry ``"depth"``
    [B, V, T, H, W], ``"viewmats"`` [B, V, 4, 4] and ``"Ks"`` [B, V, 3, 3] (ground truth).

    ``kind="synthetic"``: true 4D grids of the scene. ``kind="pseudo4d"``: the scene's row 0 with
    views made by 2D homographies (``pseudo4d``). ``split="train"`` draws random training seeds
    forever (or ``steps`` batches); ``split="eval"`` walks the first ``eval_scenes`` evaluation
    seeds once. ``workers`` > 0 plans batches in DataLoader worker processes.
    """

    def __init__(self, split: str = "train", batch: int = 8, views: int = 8, times: int = 8, height: int = 72,
                 width: int = 128, device="cpu", kind: str = "synthetic", seed: int = 0, ssaa: int = 1,
                 workers: int = 0, eval_scenes: int = 64, steps: int | None = None):
        _check(split, kind, batch, views=views, times=times, height=height, width=width)
        cfg = _Config(split, batch, views, times, height, width, kind, seed, eval_scenes, steps)
        super().__init__(cfg, device, ssaa, workers)

    def __iter__(self):
        c = self.cfg
        for plan in self._plans():
            rgb, depth, fb = self._render(plan)
            b = len(plan["seeds"])
            out = {"captions": list(plan["captions"]), "seeds": [int(s) for s in plan["seeds"]]}
            if c.kind == "pseudo4d":
                rows = rgb.reshape(b, c.times, c.height, c.width, 3).permute(0, 1, 4, 2, 3)
                out["frames"] = pseudo4d_batch(rows, c.views, out["seeds"]).contiguous()
            else:
                out["frames"] = rgb.reshape(b, c.views, c.times, c.height, c.width, 3).permute(0, 1, 2, 5, 3, 4).contiguous()
                out["depth"] = depth.reshape(b, c.views, c.times, c.height, c.width)
                out["viewmats"] = fb.viewmat.reshape(b, c.views, c.times, 4, 4)[:, :, 0]
                out["Ks"] = fb.K.reshape(b, c.views, c.times, 3, 3)[:, :, 0]
            yield out


class VideoBatches(_Batches):
    """Iterable of plain videos for video pretraining: ``{"frames": float32 [B, F, 3, H, W] in
    [0, 1] on device, "freeze_time": bool [B] on device, "captions": list[str], "seeds": list[int]}``.

    Each video is either a *row* (a fixed camera somewhere on the scene's path, time runs over
    the clip; ``freeze_time`` False) or a *column* (a fixed instant, the camera runs along its
    path; ``freeze_time`` True, with probability ``freeze_prob``). With ``kind="pseudo4d"`` a
    column is one frame swung by the pseudo-4D homographies instead of a true orbit.
    """

    def __init__(self, split: str = "train", batch: int = 8, frames: int = 8, height: int = 72, width: int = 128,
                 device="cpu", kind: str = "synthetic", seed: int = 0, freeze_prob: float = 0.5, ssaa: int = 1,
                 workers: int = 0, eval_scenes: int = 64, steps: int | None = None):
        _check(split, kind, batch, frames=frames, height=height, width=width)
        if not 0.0 <= freeze_prob <= 1.0:
            raise ValueError(f"freeze_prob must be in [0, 1], got {freeze_prob}")
        cfg = _Config(split, batch, 1, frames, height, width, kind, seed, eval_scenes, steps,
                      video=True, freeze_prob=freeze_prob)
        super().__init__(cfg, device, ssaa, workers)

    def __iter__(self):
        c = self.cfg
        for plan in self._plans():
            rgb, _, _ = self._render(plan)
            b = len(plan["seeds"])
            frames = rgb.reshape(b, c.times, c.height, c.width, 3).permute(0, 1, 4, 2, 3)
            freeze = torch.as_tensor(np.asarray(plan["freeze"], dtype=bool), device=self.device)
            if c.kind == "pseudo4d" and bool(freeze.any()):
                idx = torch.nonzero(freeze).flatten()
                first = frames[idx, :1]  # [b', 1, 3, H, W]: the fixed instant, seen from view 0
                swung = pseudo4d_batch(first, c.times, [plan["seeds"][int(i)] for i in idx])  # [b', F, 1, 3, H, W]
                frames = frames.clone()
                frames[idx] = swung[:, :, 0]
            yield {"frames": frames.contiguous(), "freeze_time": freeze, "captions": list(plan["captions"]),
                   "seeds": [int(s) for s in plan["seeds"]]}
