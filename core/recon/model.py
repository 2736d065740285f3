"""The deformable-Gaussian model of a grid and how one of its cells is rendered.

Pieces (each starts as the identity, so an untrained model is the static canonical set seen
through the estimated cameras):
- canonical isotropic Gaussians: ``means [N,3]``, ``log_scales [N,1]``, ``opacities [N]``
  (logits), ``colors [N,3]`` (logits of rgb), plus fixed identity ``quats [N,4]`` that gsplat's
  densification expects;
- ``view_offsets [N,V,3]``: the per-view compensation offset (starts at 0, regularised);
- ``t_centres [N]``, ``t_log_widths [N]``: when a Gaussian exists. Its opacity at time t is scaled
  by ``exp(-(t - centre)^2 / 2 width^2)`` (t in 0..1): seeds of the first cells start wide (about
  static), seeds of a moving object at time t start narrow around t, so large motions that a
  smooth deformation cannot reach from time 0 are still covered where the other views saw them;
- ``Deformation``: an MLP of (position, t) -> offset whose last layer starts at zero;
- ``EnvBackground``: the colour of the sky/far background as a function of ray direction;
- ``cam_deltas [V,6]``: small pose corrections of the estimated cameras (view 0 stays fixed);
- ``log_focal``: one correction of the shared focal length (a pose cannot undo a wrong focal).
A cell (v, t) is rendered with the Gaussians at ``means + Deformation(means, t) + view_offsets[:, v]``.

The only device-specific line is the rasterise call: ``gsplat.rasterization`` on CUDA, our torch
splatter elsewhere, with the same arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .geometry import ray_directions, se3_exp


def fourier(x: Tensor, n_freqs: int) -> Tensor:
    """[..., D] -> [..., D * (1 + 2 n)]: x, sin(2^k pi x), cos(2^k pi x)."""
    if n_freqs <= 0:
        return x
    f = (2.0 ** torch.arange(n_freqs, device=x.device, dtype=x.dtype)) * math.pi
    xf = x[..., None] * f  # [..., D, n]
    return torch.cat([x, torch.sin(xf).flatten(-2), torch.cos(xf).flatten(-2)], dim=-1)


class Deformation(nn.Module):
    """Temporal deformation: offset = MLP(fourier(x / extent), fourier(t)) * extent; zero at init."""

    def __init__(self, extent: float, width: int = 64, depth: int = 3, pos_freqs: int = 6, time_freqs: int = 4):
        super().__init__()
        self.extent, self.pos_freqs, self.time_freqs = float(extent), pos_freqs, time_freqs
        d_in = 3 * (1 + 2 * pos_freqs) + (1 + 2 * time_freqs)
        layers: list[nn.Module] = []
        for k in range(depth):
            layers += [nn.Linear(d_in if k == 0 else width, width), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 3)
        nn.init.zeros_(self.head.weight)  # starts static: the deformation is exactly zero
        nn.init.zeros_(self.head.bias)

    def forward(self, means: Tensor, t: float) -> Tensor:  # [N, 3], t in [0, 1] -> [N, 3]
        x = fourier(means / (2 * self.extent), self.pos_freqs)
        tt = fourier(torch.full_like(means[:, :1], float(t)), self.time_freqs)
        return self.head(self.body(torch.cat([x, tt], dim=-1))) * self.extent


class EnvBackground(nn.Module):
    """Background colour by world ray direction: an equirectangular texture about the scene's up
    axis, its seam behind the cameras."""

    def __init__(self, up: Tensor, forward: Tensor, init_rgb: Tensor, res: tuple[int, int] = (32, 64)):
        super().__init__()
        up = F.normalize(up.float(), dim=0)
        e1 = forward.float() - (forward.float() @ up) * up
        e1 = F.normalize(e1 if e1.norm() > 1e-6 else torch.tensor([1.0, 0.0, 0.0]) - up[0] * up, dim=0)
        e2 = torch.linalg.cross(up, e1)
        self.register_buffer("basis", torch.stack([e1, e2, up]))  # [3, 3]
        logit = torch.logit(init_rgb.float().clamp(0.02, 0.98))
        self.texture = nn.Parameter(logit.view(1, 3, 1, 1).expand(1, 3, *res).clone())

    def forward(self, dirs: Tensor) -> Tensor:  # [..., 3] unit -> [..., 3] rgb
        local = dirs @ self.basis.T
        az = torch.atan2(local[..., 1], local[..., 0]) / math.pi  # [-1, 1], 0 = forward
        el = torch.asin(local[..., 2].clamp(-1, 1)) / (math.pi / 2)  # [-1, 1], 1 = up
        grid = torch.stack([az, -el], dim=-1).reshape(1, -1, 1, 2)
        rgb = F.grid_sample(self.texture, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return torch.sigmoid(rgb[0, :, :, 0].T).reshape(dirs.shape)

    def tv(self) -> Tensor:
        tex = self.texture
        return (tex[..., 1:, :] - tex[..., :-1, :]).pow(2).mean() + (tex[..., :, 1:] - tex[..., :, :-1]).pow(2).mean()


@dataclass
class Scene:
    """Fixed facts the model renders against: the estimated cameras and the grid's size."""

    viewmats: Tensor  # [V, 4, 4] world -> camera, estimated (never ground truth)
    Ks: Tensor  # [V, 3, 3]
    height: int
    width: int
    times: int
    extent: float  # scene scale (radius holding most of the content)


class DeformableGaussians(nn.Module):
    """Everything that is optimised; ``params`` holds the per-Gaussian tensors (densified by the strategy)."""

    def __init__(self, scene: Scene, means: Tensor, rgb: Tensor, scales: Tensor, init_opacity: float,
                 up: Tensor, bg_rgb: Tensor, deform_width: int = 64, deform_depth: int = 3,
                 pos_freqs: int = 6, time_freqs: int = 4, bg_res: tuple[int, int] = (32, 64),
                 t_centres: Tensor | None = None, t_widths: Tensor | None = None):
        super().__init__()
        V = scene.viewmats.shape[0]
        N = means.shape[0]
        self.scene = scene
        quats = torch.zeros(N, 4)
        quats[:, 0] = 1.0
        self.params = nn.ParameterDict({
            "means": nn.Parameter(means.float().clone()),
            "scales": nn.Parameter(torch.log(scales.float().clamp_min(1e-6)).reshape(N, 1)),
            "quats": nn.Parameter(quats, requires_grad=False),
            "opacities": nn.Parameter(torch.logit(torch.full((N,), float(init_opacity)))),
            "colors": nn.Parameter(torch.logit(rgb.float().clamp(0.02, 0.98))),
            "view_offsets": nn.Parameter(torch.zeros(N, V, 3)),
            "t_centres": nn.Parameter(torch.full((N,), 0.5) if t_centres is None else t_centres.float().clone()),
            "t_log_widths": nn.Parameter(torch.log(torch.full((N,), 1e3) if t_widths is None
                                                   else t_widths.float().clamp_min(1e-3))),
        })
        # the estimated cameras move with the model (.to(device)); ``scene`` keeps the sizes
        self.register_buffer("viewmats0", scene.viewmats.float().clone())  # [V, 4, 4]
        self.register_buffer("Ks", scene.Ks.float().clone())  # [V, 3, 3]
        self.deform = Deformation(scene.extent, deform_width, deform_depth, pos_freqs, time_freqs)
        forward = scene.viewmats[:, 2, :3].mean(0)
        self.background = EnvBackground(up, forward, bg_rgb, bg_res)
        self.cam_deltas = nn.Parameter(torch.zeros(V, 6))
        self.log_focal = nn.Parameter(torch.zeros(()))

    @property
    def num_gaussians(self) -> int:
        return self.params["means"].shape[0]

    def time_value(self, t: int) -> float:
        return t / max(self.scene.times - 1, 1)

    def camera(self, views: Tensor) -> Tensor:
        """Refined world -> camera matrices of ``views`` [B] -> [B, 4, 4]; view 0 never moves."""
        delta = self.cam_deltas[views] * (views != 0).to(self.cam_deltas.dtype)[:, None]
        return se3_exp(delta) @ self.viewmats0[views]

    def intrinsics(self, views: Tensor) -> Tensor:
        """Refined K of ``views`` [B] -> [B, 3, 3]: the focal lengths scaled by ``exp(log_focal)``."""
        K = self.Ks[views]
        f = torch.exp(self.log_focal)
        return torch.cat([torch.cat([K[:, :2, :2] * f, K[:, :2, 2:]], dim=2), K[:, 2:]], dim=1)

    def means_at(self, t: int, view: int | None = None) -> Tensor:
        """Gaussian centres at time index ``t`` (and with view ``view``'s compensation): [N, 3]."""
        m = self.params["means"]
        if self.scene.times > 1:
            m = m + self.deform(m, self.time_value(t))
        if view is not None:
            m = m + self.params["view_offsets"][:, view]
        return m

    def opacities_at(self, t: int) -> Tensor:
        """Opacities [N] in 0..1 at time index ``t`` (the temporal window applied)."""
        p = self.params
        dt = (self.time_value(t) - p["t_centres"]) * torch.exp(-p["t_log_widths"])
        return torch.sigmoid(p["opacities"]) * torch.exp(-0.5 * dt * dt)

    def render(self, cells: list[tuple[int, int]], rasterize, raster_kwargs: dict) -> tuple[Tensor, Tensor, dict]:
        """Render cells [(v, t)] -> rgb [B, H, W, 3] (background composited), alpha [B, H, W, 1], meta."""
        p = self.params
        dev = p["means"].device
        N, B = self.num_gaussians, len(cells)
        H, W = self.scene.height, self.scene.width
        by_t: dict[int, Tensor] = {}
        for _, t in cells:
            if t not in by_t:
                by_t[t] = self.means_at(t)
        means = torch.stack([by_t[t] + p["view_offsets"][:, v] for v, t in cells])  # [B, N, 3]
        views = torch.tensor([v for v, _ in cells], device=dev)
        viewmats = self.camera(views)  # [B, 4, 4]
        Ks = self.intrinsics(views)
        scales = torch.exp(p["scales"]).expand(N, 3)
        rgb, alpha, meta = rasterize(
            means,
            p["quats"].expand(B, N, 4),
            scales.expand(B, N, 3),
            torch.stack([self.opacities_at(t) for _, t in cells]),  # [B, N]
            torch.sigmoid(p["colors"]).expand(B, N, 3),
            viewmats[:, None],  # [B, 1, 4, 4]: one camera per cell
            Ks[:, None],
            W,
            H,
            **raster_kwargs,
        )
        rgb, alpha = rgb[:, 0], alpha[:, 0]  # [B, H, W, 3], [B, H, W, 1]
        # the background sees the refined cameras too: the horizon and the sky pin down rotations
        dirs = ray_directions(viewmats, Ks, H, W)  # [B, H, W, 3]
        bg = self.background(dirs)
        return rgb + (1.0 - alpha) * bg, alpha, meta


def make_rasterizer(device: torch.device, tile_size: int = 8):
    """(rasterize function, its keyword arguments) for ``device``: gsplat on CUDA, torch elsewhere.

    Both are called unpacked (``packed=False``), as the densification strategy is told.
    """
    common = {"near_plane": 0.01, "far_plane": 1e10, "packed": False, "render_mode": "RGB"}
    if device.type == "cuda":
        from gsplat import rasterization  # imported here: gsplat compiles CUDA code on first use

        return rasterization, {**common, "rasterize_mode": "classic"}
    from .splat_torch import rasterization

    return rasterization, {**common, "tile_size": tile_size}
