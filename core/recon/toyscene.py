"""A small known 4D scene of Gaussians on orbit cameras, rendered with our own splatter.

It gives the reconstruction's tests and benchmark a ground truth that needs nothing else of the
project: textured Gaussian "surfaces" (a ground patch and a few balls, one of them moving along
the time axis), a sky colour behind them, and OpenCV cameras on an orbit arc looking at the
centre. Not the synthetic world (``core/synth``): only a stand-in with exact cameras.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .splat_torch import rasterization


@dataclass
class ToyScene:
    frames: np.ndarray  # uint8 [V, T, H, W, 3]
    viewmats: np.ndarray  # [V, 4, 4] world -> camera, OpenCV
    Ks: np.ndarray  # [V, 3, 3]


def look_at(eye: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """World -> camera [4, 4] (OpenCV: x right, y down, z forward) for a camera at ``eye``."""
    f = np.asarray(target, float) - np.asarray(eye, float)
    f /= np.linalg.norm(f)
    r = np.cross(f, np.asarray(up, float))
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    R = np.stack([r, d, f])
    m = np.eye(4)
    m[:3, :3] = R
    m[:3, 3] = -R @ np.asarray(eye, float)
    return m


def orbit_cameras(views: int, height: int, width: int, arc_deg: float = 40.0, radius: float = 4.0,
                  elevation_deg: float = 20.0, fov_x_deg: float = 55.0,
                  target=(0.0, 0.0, 0.4)) -> tuple[np.ndarray, np.ndarray]:
    """``views`` cameras evenly on an arc of ``arc_deg`` around ``target``: (viewmats, Ks)."""
    f = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2)
    K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    vms = []
    for v in range(views):
        az = math.radians(-arc_deg / 2 + arc_deg * v / max(views - 1, 1))
        el = math.radians(elevation_deg)
        eye = np.asarray(target) + radius * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        vms.append(look_at(eye, target))
    return np.stack(vms), np.repeat(K[None], views, axis=0)


def _surface_colors(rng: np.random.Generator, pts: np.ndarray, freq: float) -> np.ndarray:
    """A blotchy texture: a few random sinusoids mapped through a random palette, plus speckle."""
    palette = rng.uniform(0.1, 0.95, size=(4, 3))
    s = np.zeros(len(pts))
    for _ in range(4):
        k = rng.normal(size=3) * freq
        s += np.sin(pts @ k + rng.uniform(0, 2 * np.pi))
    idx = np.clip(((s / 4 + 1) / 2 * 4).astype(int), 0, 3)
    col = palette[idx] * rng.uniform(0.75, 1.0, size=(len(pts), 1))
    return np.clip(col, 0, 1)


def toy_gaussians(seed: int = 0, n_ground: int = 16000, n_ball: int = 3000) -> dict:
    """Canonical Gaussians: 'means' [N,3], 'scales' [N], 'colors' [N,3], 'opacity' [N], 'moving' bool [N]."""
    rng = np.random.default_rng(seed)
    side = int(math.sqrt(n_ground))
    g = np.linspace(-1.6, 1.6, side)
    gx, gy = np.meshgrid(g, g)
    ground = np.stack([gx.ravel(), gy.ravel(), np.zeros(side * side)], 1)
    ground[:, :2] += rng.uniform(-0.5, 0.5, size=(len(ground), 2)) * (g[1] - g[0])
    means, scales, colors, moving = [ground], [np.full(len(ground), 0.9 * (g[1] - g[0]))], \
        [_surface_colors(rng, ground, 6.0)], [np.zeros(len(ground), bool)]
    balls = [((-0.5, -0.3, 0.35), 0.35, False), ((0.45, 0.35, 0.3), 0.3, False), ((0.2, -0.6, 0.25), 0.25, True)]
    for centre, r, mov in balls:
        d = rng.normal(size=(n_ball, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        p = np.asarray(centre) + r * d
        means.append(p)
        scales.append(np.full(n_ball, r * 3.2 / math.sqrt(n_ball)))
        colors.append(_surface_colors(rng, d, 5.0))
        moving.append(np.full(n_ball, mov))
    n = sum(len(m) for m in means)
    return {"means": np.concatenate(means), "scales": np.concatenate(scales), "colors": np.concatenate(colors),
            "opacity": np.full(n, 0.95), "moving": np.concatenate(moving)}


def motion(t: int, times: int) -> np.ndarray:
    """Offset of the moving ball at time index t: a short arc on the ground."""
    s = t / max(times - 1, 1)
    return np.array([0.5 * s, 0.25 * math.sin(math.pi * s), 0.0])


def render_toy(views: int, times: int, height: int, width: int, seed: int = 0, arc_deg: float = 40.0,
               fov_x_deg: float = 55.0, sky=(0.62, 0.75, 0.92), device: str = "cpu", **gaussian_kw) -> ToyScene:
    """Render the toy scene into a grid ``frames[v, t]`` with exact cameras (the torch splatter,
    on ``device``)."""
    gs = toy_gaussians(seed, **gaussian_kw)
    viewmats, Ks = orbit_cameras(views, height, width, arc_deg=arc_deg, fov_x_deg=fov_x_deg)
    N = len(gs["means"])
    f32 = dict(dtype=torch.float32, device=device)
    quats = torch.zeros(N, 4, **f32)
    quats[:, 0] = 1
    scales = torch.tensor(gs["scales"], **f32)[:, None].expand(N, 3)
    opac = torch.tensor(gs["opacity"], **f32)
    cols = torch.tensor(gs["colors"], **f32)
    vm = torch.tensor(viewmats, **f32)
    K = torch.tensor(Ks, **f32)
    sky_t = torch.tensor(sky, **f32)
    frames = np.zeros((views, times, height, width, 3), np.uint8)
    moving = torch.tensor(gs["moving"], device=device)
    with torch.no_grad():
        for t in range(times):
            means = torch.tensor(gs["means"], **f32)
            means[moving] += torch.tensor(motion(t, times), **f32)
            rgb, alpha, _ = rasterization(means, quats, scales, opac, cols, vm, K, width, height)
            img = rgb + (1 - alpha) * sky_t
            frames[:, t] = (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
    return ToyScene(frames=frames, viewmats=viewmats, Ks=Ks)


def write_toy_run(out, views: int, times: int, height: int, width: int, seed: int = 0, **kw):
    """Render the toy scene into a run folder ``out`` with its ``cameras.json`` (like ``synth``)."""
    import json

    from ..grid import Grid
    from ..runfolder import base_manifest, write_run

    scene = render_toy(views, times, height, width, seed=seed, **kw)
    cams = {"height": height, "width": width, "convention": "opencv, world to camera",
            "views": [{"viewmat": scene.viewmats[v].tolist(), "K": scene.Ks[v].tolist()} for v in range(views)]}
    manifest = base_manifest("toy", seed=seed, views=views, times=times, size=f"{height}x{width}")
    return write_run(out, Grid(scene.frames), manifest, extra_files={"cameras.json": json.dumps(cams)}, exports=False)
