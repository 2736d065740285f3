"""The Gaussian fitter: seeds a ``DeformableGaussians`` from the camera estimate and optimises it
against the grid's training cells (L1 + SSIM, regularised compensation offsets, gsplat's
``DefaultStrategy`` densification, joint camera refinement).

The loop is the same on every device; only the rasterise call differs (see ``model.make_rasterizer``).
It knows nothing about run folders: ``api.reconstruct_run`` does the I/O.
"""

from __future__ import annotations

import math
import time
import types
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import Cancelled
from .cameras import CameraEstimate
from .metrics import ssim
from .model import DeformableGaussians, Scene, make_rasterizer


@dataclass
class FitConfig:
    """Settings of one fit. ``PRESETS`` holds the named ones; fields are saved in recon.json."""

    iters: int = 3000  # optimisation steps
    time_budget_s: float | None = None  # stop early (schedules follow elapsed time) when set
    cells_per_step: int = 1  # cells rendered and averaged per step
    init_points: int = 20000  # seed Gaussians: triangulated points + depth-filled pixels of the views
    init_opacity: float = 0.1
    max_gaussians: int = 60000  # densification stops growing beyond this
    lr_means: float = 1.6e-4  # x scene extent; decays x0.01 over the fit
    lr_scales: float = 5e-3
    lr_opacities: float = 5e-2
    lr_colors: float = 1e-2
    lr_view_offsets: float = 1.6e-4  # x scene extent; decays like the means
    lr_deform: float = 1e-3  # decays x0.1
    lr_cameras: float = 2e-4  # pose twists (radians, scene units); decays x0.01
    lr_focal: float = 2e-4  # log of the shared focal length; decays with the poses
    lr_background: float = 1e-2
    camera_start: float = 0.05  # fraction of the fit before the cameras are refined
    view_offset_start: float = 0.0  # fraction of the fit before the per-view offsets may move
    moving_points: float = 0.6  # extra seeds of what moves (x init_points); 0 = none, all Gaussians static in time
    static_width: float = 1.0  # temporal width of the first cells' seeds (times in 0..1, centred at 0.5)
    moving_width: float = 0.5  # temporal width of a moving seed, in time steps
    lr_t_centres: float = 2e-3
    lr_t_widths: float = 1e-2
    ssim_weight: float = 0.2
    view_offset_weight: float = 1.0  # penalty on mean |view offset|^2 / extent^2
    background_tv_weight: float = 1e-3
    refine_start: int = 200  # densification: first step, every how many steps, until what fraction
    refine_every: int = 100
    refine_stop: float = 0.6
    grow_grad2d: float = 2e-4
    prune_opa: float = 0.005
    deform_width: int = 64
    deform_depth: int = 3
    pos_freqs: int = 6
    time_freqs: int = 4
    background_res: tuple[int, int] = (32, 64)
    tile_size: int = 8  # torch splatter only


PRESETS: dict[str, FitConfig] = {
    # CPU: a 4x4 grid at 72x128 in a few minutes on a laptop
    "cpu": FitConfig(iters=1200, init_points=12000, max_gaussians=30000, refine_start=150, refine_every=100),
    # CUDA: an 8x8 grid at 288x512 within a minute on one H100 (the loop's budget; cameras and seeding ~10 s)
    "cuda": FitConfig(iters=6000, time_budget_s=42.0, cells_per_step=2, init_points=120000,
                      max_gaussians=400000, refine_start=300, refine_every=100),
}


def _project(est, v: int, pts: np.ndarray):
    """Points ``pts [N, 3]`` in view ``v`` of the estimate: (pixel uv [M, 2], depth [M]) of the M
    points in front of the camera, or None when fewer than 4 are."""
    R, t, K = est.viewmats[v, :3, :3], est.viewmats[v, :3, 3], est.Ks[v]
    pc = pts @ R.T + t
    front = pc[:, 2] > 1e-3
    if front.sum() < 4:
        return None
    uv = pc[front, :2] / pc[front, 2:3] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
    return uv, pc[front, 2]

def preset_for(device: torch.device, iters: int | None = None) -> FitConfig:
    cfg = PRESETS["cuda" if device.type == "cuda" else "cpu"]
    return replace(cfg, iters=iters) if iters else replace(cfg)


# ---------------------------------------------------------------------------------------------
# Seeding


def _knn_scale(points: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Mean distance to the k nearest other points: [M] (on the points' device: 120k seeds take
    ~20 s on a CPU, well under a second on a GPU)."""
    out = []
    for chunk in points.split(2048):
        d = torch.cdist(chunk, points)
        out.append(d.topk(k + 1, largest=False).values[:, 1:].mean(1))
    return torch.cat(out) if out else points.new_zeros(0)


def dominant_plane(points: np.ndarray, rng: np.random.Generator, tol: float, iters: int = 300
                   ) -> tuple[np.ndarray, float] | None:
    """RANSAC plane (unit normal n, offset d: n.x + d = 0) holding at least a fifth of the points."""
    if len(points) < 12:
        return None
    best, best_n = None, 0
    for _ in range(iters):
        a, b, c = points[rng.choice(len(points), 3, replace=False)]
        n = np.cross(b - a, c - a)
        if np.linalg.norm(n) < 1e-9:
            continue
        n /= np.linalg.norm(n)
        k = int((np.abs(points @ n - n @ a) < tol).sum())
        if k > best_n:
            best, best_n = (n, -float(n @ a)), k
    if best is None or best_n < max(12, 0.2 * len(points)):
        return None
    inl = points[np.abs(points @ best[0] + best[1]) < tol]
    centre = inl.mean(0)
    n = np.linalg.svd(inl - centre)[2][-1]
    return n, -float(n @ centre)


def seed_points(est: CameraEstimate, images: np.ndarray, views: list[int], count: int,
                rng: np.random.Generator, device: torch.device | str = "cpu"
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seed Gaussians: (means [N,3], rgb [N,3], scales [N]).

    The triangulated points, plus pixels of the given views back-projected at the depth of the
    nearest triangulated points in that view. Pixels far from any point (a plain floor, the sky)
    take the depth of the points' dominant plane (a floor) where their ray meets it in front of
    the camera, and are otherwise left to the background. With no triangulated points: a random
    ball around the scene centre.
    """
    pts, cols = est.points, est.colors
    H, W = images.shape[1:3]
    if len(pts) < 8:
        n = count
        d = rng.normal(size=(n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        means = d * est.scene_scale * rng.uniform(0, 1, size=(n, 1)) ** (1 / 3)
        return means, rng.uniform(0.3, 0.7, size=(n, 3)), np.full(n, est.scene_scale * 0.02)
    means, rgbs = [pts], [cols]
    per_view = max(0, count - len(pts)) // max(len(views), 1)
    if per_view > 0:
        stride = max(1.0, math.sqrt(H * W / per_view))
        far_px = 0.1 * max(H, W)
        plane = dominant_plane(pts, rng, tol=0.01)
        for v, img in zip(views, images):
            seen = _project(est, v, pts)
            if seen is None:
                continue
            uv, z = seen
            R, t, K = est.viewmats[v, :3, :3], est.viewmats[v, :3, 3], est.Ks[v]
            ys = np.arange(stride / 2, H, stride)
            xs = np.arange(stride / 2, W, stride)
            gx, gy = np.meshgrid(xs, ys)
            q = np.stack([gx.ravel(), gy.ravel()], 1) + rng.uniform(-0.5, 0.5, size=(gx.size, 2)) * stride
            q = np.clip(q, 0, [W - 1e-3, H - 1e-3])
            d = torch.cdist(torch.tensor(q, dtype=torch.float32), torch.tensor(uv, dtype=torch.float32))
            kk = min(4, d.shape[1])
            dist, idx = d.topk(kk, largest=False)
            depth = np.median(z[idx.numpy()], axis=1)
            far = dist[:, 0].numpy() >= far_px
            ray = np.stack([(q[:, 0] - K[0, 2]) / K[0, 0], (q[:, 1] - K[1, 2]) / K[1, 1], np.ones(len(q))], 1)
            if plane is not None:  # where the ray meets the floor: centre + lambda * R^T ray
                n, d0 = plane
                centre = -R.T @ t
                denom = (ray @ R) @ n
                lam = -(n @ centre + d0) / np.where(np.abs(denom) > 1e-9, denom, np.nan)
                on_plane = far & np.isfinite(lam) & (lam > 0.05) & (lam < 4.0)
                depth = np.where(on_plane, lam, depth)
                far &= ~on_plane
            q, ray, depth = q[~far], ray[~far], depth[~far]
            Xc = ray * depth[:, None]
            means.append((Xc - t) @ R)  # camera -> world: R^T (x - t)
            rgbs.append(img[q[:, 1].astype(int), q[:, 0].astype(int)] / 255.0)
    means, rgbs = np.concatenate(means), np.concatenate(rgbs)
    # 3DGS's rule: a seed's size is the distance to its nearest neighbours (seeds of all views together)
    scales = 0.7 * _knn_scale(torch.tensor(means, dtype=torch.float32, device=device)).cpu().numpy()
    return means, rgbs, np.clip(scales, 1e-4 * est.scene_scale, 0.05 * est.scene_scale)


def seed_moving(est: CameraEstimate, frames: np.ndarray, train: np.ndarray, count: int, rng: np.random.Generator,
                device: torch.device | str = "cpu", diff_level: float = 16.0
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeds for what moves: (means [M,3], rgb [M,3], scales [M], time of each seed [M] in 0..1).

    In every training cell (v, t) after a view's first one, pixels that differ from that first
    cell (mean |difference| above ``diff_level`` of 255, dilated) are what moved. Their keypoints
    are matched across the views of column t - one instant - and triangulated with the
    estimated cameras; moving pixels near those points are back-projected at their depth.
    """
    import cv2

    from .cameras import triangulate_with_cameras

    V, T, H, W = frames.shape[:4]
    empty = (np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0))
    if T < 2:
        return empty
    first = [int(np.nonzero(train[v])[0][0]) if train[v].any() else -1 for v in range(V)]
    r = max(1, round(0.01 * max(H, W)))
    kernel = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
    moving = {}
    for v in range(V):
        for t in range(T):
            if train[v, t] and first[v] >= 0 and t != first[v]:
                d = np.abs(frames[v, t].astype(np.int16) - frames[v, first[v]].astype(np.int16)).mean(-1)
                m = cv2.dilate((d > diff_level).astype(np.uint8), kernel) > 0
                if m.mean() > 1e-3:
                    moving[(v, t)] = m
    if not moving:
        return empty
    per_cell = max(1, count // len(moving))
    far_px = 0.04 * max(H, W)
    means, rgbs, times = [], [], []
    for t in range(T):
        views = [v for v in range(V) if (v, t) in moving]
        if len(views) < 2:
            continue
        pts, cols = triangulate_with_cameras(frames[views, t], est.viewmats[views], est.Ks[views],
                                             np.stack([moving[(v, t)] for v in views]))
        if len(pts) < 4:
            continue
        means.append(pts)
        rgbs.append(cols)
        times.append(np.full(len(pts), t / (T - 1)))
        for v in views:
            seen = _project(est, v, pts)
            if seen is None:
                continue
            uv, z = seen
            R, tt, K = est.viewmats[v, :3, :3], est.viewmats[v, :3, 3], est.Ks[v]
            ys, xs = np.nonzero(moving[(v, t)])
            pick = rng.choice(len(xs), size=min(per_cell, len(xs)), replace=False)
            q = np.stack([xs[pick], ys[pick]], 1) + rng.uniform(0, 1, size=(len(pick), 2))
            d = torch.cdist(torch.tensor(q, dtype=torch.float32), torch.tensor(uv, dtype=torch.float32))
            dist, idx = d.topk(min(4, d.shape[1]), largest=False)
            near = dist[:, 0].numpy() < far_px
            depth = np.median(z[idx.numpy()], axis=1)[near]
            q = q[near]
            ray = np.stack([(q[:, 0] - K[0, 2]) / K[0, 0], (q[:, 1] - K[1, 2]) / K[1, 1], np.ones(len(q))], 1)
            means.append((ray * depth[:, None] - tt) @ R)
            rgbs.append(frames[v, t][q[:, 1].astype(int), q[:, 0].astype(int)] / 255.0)
            times.append(np.full(len(q), t / (T - 1)))
    if not means:
        return empty
    means, rgbs, times = np.concatenate(means), np.concatenate(rgbs), np.concatenate(times)
    scales = 0.7 * _knn_scale(torch.tensor(means, dtype=torch.float32, device=device)).cpu().numpy()
    return means, rgbs, np.clip(scales, 1e-4 * est.scene_scale, 0.05 * est.scene_scale), times


def build_model(est: CameraEstimate, frames: np.ndarray, train: np.ndarray, cfg: FitConfig,
                device: torch.device, seed: int) -> DeformableGaussians:
    """A model seeded from the camera estimate and the first training cell of every view."""
    V, T, H, W = frames.shape[:4]
    rng = np.random.default_rng(seed)
    seed_views, seed_imgs = [], []
    for v in range(V):
        ts = np.nonzero(train[v])[0]
        if len(ts):
            seed_views.append(v)
            seed_imgs.append(frames[v, ts[0]])
    means, rgb, scales = seed_points(est, np.stack(seed_imgs), seed_views, cfg.init_points, rng, device)
    t_centres = t_widths = None
    if cfg.moving_points > 0 and T > 1:  # seeds of what moves, each alive around its own time
        m2, c2, s2, tc = seed_moving(est, frames, train, int(cfg.moving_points * cfg.init_points), rng, device)
        t_centres = np.concatenate([np.full(len(means), 0.5), tc])
        t_widths = np.concatenate([np.full(len(means), cfg.static_width), np.full(len(tc), cfg.moving_width / (T - 1))])
        means, rgb, scales = np.concatenate([means, m2]), np.concatenate([rgb, c2]), np.concatenate([scales, s2])
        t_centres, t_widths = torch.tensor(t_centres), torch.tensor(t_widths)
    scene = Scene(viewmats=torch.tensor(est.viewmats, dtype=torch.float32),
                  Ks=torch.tensor(est.Ks, dtype=torch.float32), height=H, width=W, times=T,
                  extent=float(est.scene_scale))
    # background starts at the colour of the top image rows of the training cells
    top = frames[:, :, : max(1, H // 10)][train].reshape(-1, 3)
    bg = torch.tensor(np.median(top, axis=0) / 255.0 if len(top) else np.full(3, 0.5))
    model = DeformableGaussians(
        scene, torch.tensor(means), torch.tensor(rgb), torch.tensor(scales), cfg.init_opacity,
        up=torch.tensor(est.up), bg_rgb=bg, deform_width=cfg.deform_width, deform_depth=cfg.deform_depth,
        pos_freqs=cfg.pos_freqs, time_freqs=cfg.time_freqs, bg_res=tuple(cfg.background_res),
        t_centres=t_centres, t_widths=t_widths)
    return model.to(device)


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class FitResult:
    model: DeformableGaussians
    steps: int
    seconds: float
    stopped_by: str  # "iters" or "time"
    train_psnr: float
    skipped_steps: int = 0
    history: list[tuple[int, float, int]] = field(default_factory=list)  # (step, psnr, n_gaussians)
    first_step_s: float = 0.0  # includes gsplat's one-time CUDA compile on a fresh machine


def _optimizers(model: DeformableGaussians, cfg: FitConfig) -> tuple[dict, list]:
    ext = model.scene.extent
    lrs = {"means": cfg.lr_means * ext, "scales": cfg.lr_scales, "opacities": cfg.lr_opacities,
           "colors": cfg.lr_colors, "view_offsets": cfg.lr_view_offsets * ext,
           "t_centres": cfg.lr_t_centres, "t_log_widths": cfg.lr_t_widths}
    gauss = {k: torch.optim.Adam([{"params": model.params[k], "lr": lr, "name": k}], eps=1e-15)
             for k, lr in lrs.items()}
    others = [
        torch.optim.Adam(model.deform.parameters(), lr=cfg.lr_deform),
        torch.optim.Adam([{"params": [model.cam_deltas], "lr": cfg.lr_cameras},
                          {"params": [model.log_focal], "lr": cfg.lr_focal}]),
        torch.optim.Adam(model.background.parameters(), lr=cfg.lr_background),
    ]
    for opt in list(gauss.values()) + others:
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"]
    return gauss, others


def fit(
    model: DeformableGaussians,
    frames: np.ndarray,  # uint8 [V, T, H, W, 3]
    train: np.ndarray,  # bool [V, T]: cells the fit may look at
    cfg: FitConfig,
    seed: int = 0,
    on_progress: Callable[[int, int, float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> FitResult:
    """Optimise ``model`` on the training cells of ``frames``; returns when ``cfg.iters`` steps or
    ``cfg.time_budget_s`` seconds are spent. Raises ``Cancelled`` when ``should_cancel()`` is true.
    On the CPU, torch's threads follow the cores other processes leave free (``CpuThreads``), and
    freed memory stays with the process for the next step (``keep_freed_memory``)."""
    from ..cpumem import keep_freed_memory
    from ..cputhreads import CpuThreads

    threads = None
    if model.params["means"].device.type == "cpu":
        keep_freed_memory()
        threads = CpuThreads()
    try:
        return _fit(model, frames, train, cfg, seed, on_progress, should_cancel, threads)
    finally:
        if threads is not None:
            threads.close()


def _fit(model, frames, train, cfg: FitConfig, seed, on_progress, should_cancel, threads) -> FitResult:
    from gsplat.strategy import DefaultStrategy  # pure torch; nothing here reaches gsplat's CUDA code

    device = model.params["means"].device
    rasterize, rkw = make_rasterizer(device, cfg.tile_size)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    target = torch.tensor(frames, device=device)  # uint8 [V, T, H, W, 3], converted per step
    cells = [tuple(map(int, c)) for c in np.argwhere(train)]
    strategy = DefaultStrategy(prune_opa=cfg.prune_opa, grow_grad2d=cfg.grow_grad2d, grow_scale3d=0.01,
                               refine_start_iter=cfg.refine_start, refine_stop_iter=10 ** 9,
                               reset_every=10 ** 9, refine_every=cfg.refine_every)
    gauss_opt, other_opt = _optimizers(model, cfg)
    strategy.check_sanity(model.params, gauss_opt)
    state = strategy.initialize_state(scene_scale=model.scene.extent)
    extent2 = model.scene.extent ** 2
    order: list[int] = []
    t0 = time.perf_counter()
    psnr_ema, skipped, history = None, 0, []
    step, progress, stopped_by = 0, 0.0, "iters"
    B = max(1, min(cfg.cells_per_step, len(cells)))
    first_step_s = 0.0
    while True:
        progress = step / cfg.iters
        if cfg.time_budget_s and step > 0:  # the clock starts after step 0 (gsplat may compile there)
            progress = max(progress, (time.perf_counter() - t0) / cfg.time_budget_s)
        if progress >= 1.0:
            stopped_by = "iters" if step >= cfg.iters else "time"
            break
        if should_cancel is not None and should_cancel():
            raise Cancelled("reconstruction cancelled")
        if threads is not None:
            threads.update()
        # 1. Learning rates follow the progress of the fit (so a time budget keeps them sane).
        for opt in gauss_opt.values():
            g = opt.param_groups[0]
            decay = 0.01 ** progress if g["name"] in ("means", "view_offsets") else 1.0
            if g["name"] == "view_offsets" and progress < cfg.view_offset_start:
                decay = 0.0  # cameras first: free offsets would absorb their misalignment
            g["lr"] = g["initial_lr"] * decay
        other_opt[0].param_groups[0]["lr"] = cfg.lr_deform * 0.1 ** progress
        cam_on = 0.01 ** progress if progress >= cfg.camera_start else 0.0
        for g in other_opt[1].param_groups:
            g["lr"] = g["initial_lr"] * cam_on

        # 2. A batch of training cells, each visited once per epoch.
        if len(order) < B:
            order += torch.randperm(len(cells), generator=gen).tolist()
        batch = [cells[order.pop()] for _ in range(B)]
        gt = torch.stack([target[v, t] for v, t in batch]).float() / 255.0  # [B, H, W, 3]

        # 3. Render and compare.
        rgb, alpha, meta = model.render(batch, rasterize, rkw)
        meta["means2d"].retain_grad()
        l1 = (rgb - gt).abs().mean()
        loss = (1 - cfg.ssim_weight) * l1 + cfg.ssim_weight * (1 - ssim(rgb, gt))
        vo = model.params["view_offsets"]
        loss = loss + cfg.view_offset_weight * vo.pow(2).sum(-1).mean() / extent2
        loss = loss + cfg.background_tv_weight * model.background.tv()

        # 4. Step (a non-finite loss skips the step instead of poisoning the parameters).
        for opt in list(gauss_opt.values()) + other_opt:
            opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            skipped += 1
            if skipped > 20:
                raise RuntimeError("the fit diverged (non-finite loss in 20 steps)")
            step += 1
            continue
        loss.backward()
        for opt in list(gauss_opt.values()) + other_opt:
            opt.step()

        # 5. Densify and prune (gsplat's DefaultStrategy; our meta is unpacked, one camera per cell).
        if progress < cfg.refine_stop and meta["means2d"].grad is not None:
            N = model.num_gaussians
            info = {"means2d": types.SimpleNamespace(grad=meta["means2d"].grad.reshape(B, N, 2)),
                    "radii": meta["radii"].reshape(B, N, 2), "width": model.scene.width,
                    "height": model.scene.height, "n_cameras": B, "gaussian_ids": None}
            will_refine = step > cfg.refine_start and step % cfg.refine_every == 0
            if not (will_refine and N >= cfg.max_gaussians):
                strategy.step_post_backward(model.params, gauss_opt, state, step, info, packed=False)
            else:  # at the cap: prune only, and restart the gradient statistics
                state["grad2d"].zero_()
                state["count"].zero_()
                strategy._prune_gs(model.params, gauss_opt, state, step)

        if step % 10 == 0 or psnr_ema is None:  # a host sync: only every 10 steps
            with torch.no_grad():
                mse = F.mse_loss(rgb.clamp(0, 1), gt).item()
            p = 10 * math.log10(1.0 / max(mse, 1e-10))
            psnr_ema = p if psnr_ema is None else 0.7 * psnr_ema + 0.3 * p
        step += 1
        if step == 1:
            first_step_s = time.perf_counter() - t0
            t0 = time.perf_counter()
        if step % 100 == 0:
            history.append((step, round(psnr_ema, 3), model.num_gaussians))
        if on_progress is not None:  # with a time budget the total is the projected step count
            total = cfg.iters if not cfg.time_budget_s else min(cfg.iters, max(step, round(step / max(progress, 1e-6))))
            on_progress(step, total, psnr_ema)
    return FitResult(model=model, steps=step, seconds=time.perf_counter() - t0 + first_step_s, stopped_by=stopped_by,
                     train_psnr=float(psnr_ema or 0.0), skipped_steps=skipped, history=history,
                     first_step_s=first_step_s)


@torch.no_grad()
def render_all(model: DeformableGaussians, V: int, T: int, batch: int = 4, tile_size: int = 8) -> np.ndarray:
    """Render every cell: uint8 [V, T, H, W, 3]."""
    device = model.params["means"].device
    rasterize, rkw = make_rasterizer(device, tile_size)
    H, W = model.scene.height, model.scene.width
    out = np.zeros((V, T, H, W, 3), np.uint8)
    cells = [(v, t) for v in range(V) for t in range(T)]
    for k in range(0, len(cells), batch):
        chunk = cells[k:k + batch]
        rgb, _, _ = model.render(chunk, rasterize, rkw)
        img = (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
        for (v, t), im in zip(chunk, img):
            out[v, t] = im
    return out
