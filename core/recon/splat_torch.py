"""A small pure-torch Gaussian splatter that reproduces ``gsplat.rasterization`` on any device.

It follows gsplat 1.5.3's "classic" pinhole path step by step (EWA projection with the same
frustum clamp of the Jacobian, ``eps2d`` blur, opacity-aware bounding radii, per-pixel
front-to-back compositing with alpha clamped at 0.999, skipped below 1/255, and the pixel done
once transmittance would fall to 1e-4), so a CPU fit and a CUDA fit optimise the same image
formation. gsplat's tiles only batch its GPU work and change nothing in the image; here the work
is a sparse list of (Gaussian, pixel) pairs. Gradients come from autograd. It returns the meta entries that gsplat's densification
strategies read (``means2d``, ``radii``, ``width``, ``height``, ``n_cameras``, ``gaussian_ids``).

What it does not do: packed mode, spherical harmonics, depth modes, distortion, antialiasing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0
TRANSMITTANCE_STOP = 1e-4
MAX_ALPHA = 0.999


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """Covariances ``R S S^T R^T`` from wxyz quaternions [..., 4] (any norm) and scales [..., 3]."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    R = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(quats.shape[:-1] + (3, 3))
    M = R * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def project(
    means: Tensor,  # [..., N, 3]
    covars: Tensor,  # [..., N, 3, 3]
    opacities: Tensor,  # [..., N]
    viewmats: Tensor,  # [..., C, 4, 4] world -> camera, OpenCV
    Ks: Tensor,  # [..., C, 3, 3]
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EWA projection as gsplat's fused CUDA kernel does it.

    Returns ``radii`` int32 [..., C, N, 2] (0 = culled), ``means2d`` [..., C, N, 2],
    ``depths`` [..., C, N] and ``conics`` [..., C, N, 3] (upper triangle of the inverse 2D
    covariance).
    """
    R = viewmats[..., :3, :3]  # [..., C, 3, 3]
    t = viewmats[..., :3, 3]  # [..., C, 3]
    means_c = torch.einsum("...cij,...nj->...cni", R, means) + t[..., :, None, :]  # [..., C, N, 3]
    covars_c = R[..., :, None, :, :] @ covars[..., None, :, :, :] @ R[..., :, None, :, :].transpose(-1, -2)
    fx, fy = Ks[..., 0, 0, None], Ks[..., 1, 1, None]  # [..., C, 1]
    cx, cy = Ks[..., 0, 2, None], Ks[..., 1, 2, None]
    x, y, z = means_c.unbind(-1)  # [..., C, N]
    # Near-plane and behind-camera Gaussians are culled below; keep their arithmetic finite.
    z_safe = torch.where(z > near_plane, z, torch.full_like(z, 1.0))
    rz = 1.0 / z_safe
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = z_safe * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x * rz))
    ty = z_safe * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y * rz))
    zeros = torch.zeros_like(rz)
    J = torch.stack([
        fx * rz, zeros, -fx * tx * rz * rz,
        zeros, fy * rz, -fy * ty * rz * rz,
    ], dim=-1).reshape(rz.shape + (2, 3))  # [..., C, N, 2, 3]
    cov2d = J @ covars_c @ J.transpose(-1, -2)  # [..., C, N, 2, 2]
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)  # [..., C, N, 2]

    a = cov2d[..., 0, 0] + eps2d
    b = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + eps2d
    det = a * c - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)  # [..., C, N, 3]

    with torch.no_grad():
        op = opacities[..., None, :].expand(z.shape)
        extend = torch.sqrt(2.0 * torch.log(op.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp_max(3.33)
        rx = torch.ceil(extend * torch.sqrt(a.clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(c.clamp_min(0)))
        mx, my = means2d[..., 0], means2d[..., 1]
        valid = (
            (z >= near_plane) & (z <= far_plane) & (det > 0) & (op >= ALPHA_THRESHOLD)
            & ~((rx <= radius_clip) & (ry <= radius_clip))
            & (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        )
        radii = torch.stack([rx, ry], dim=-1) * valid[..., None]
        radii = radii.to(torch.int32)
    return radii, means2d, z, conics


def _pair_alpha(m2: Tensor, con: Tensor, op: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """sigma and alpha of Gaussians (means2d [S,2], conics [S,3], opacities [S]) at pixels (x, y) [S]."""
    dx = m2[:, 0] - (x.to(m2.dtype) + 0.5)
    dy = m2[:, 1] - (y.to(m2.dtype) + 0.5)
    sigma = 0.5 * (con[:, 0] * dx * dx + con[:, 2] * dy * dy) + con[:, 1] * dx * dy
    return sigma, torch.clamp_max(op * torch.exp(-sigma), MAX_ALPHA)


def rasterize_to_pixels(
    means2d: Tensor,  # [I, N, 2]
    conics: Tensor,  # [I, N, 3]
    colors: Tensor,  # [I, N, D]
    opacities: Tensor,  # [I, N]
    radii: Tensor,  # [I, N, 2] int32
    depths: Tensor,  # [I, N]
    width: int,
    height: int,
) -> tuple[Tensor, Tensor]:
    """Front-to-back alpha compositing per pixel; returns colors [I, H, W, D] and alphas [I, H, W, 1].

    Works on the sparse list of (Gaussian, pixel) pairs inside each Gaussian's bounding radius
    (which holds every pixel where its alpha can pass 1/255), sorted by pixel and then depth.
    Transmittance is a segmented cumulative sum of log(1 - alpha) in float64, so autograd's
    backward is cheap and exact.
    """
    I, N, D = colors.shape
    device, dtype = means2d.device, means2d.dtype

    # 1. Pairs: every visible Gaussian with every pixel centre within its radii, front to back.
    with torch.no_grad():
        visible = (radii > 0).all(dim=-1)  # [I, N]
        img_id, g_id = visible.nonzero(as_tuple=True)  # [M]
        order = torch.argsort(depths.detach()[img_id, g_id], stable=True)
        img_id, g_id = img_id[order], g_id[order]
        vis_flat = img_id * N + g_id
        m2 = means2d.detach().reshape(I * N, 2).index_select(0, vis_flat)  # [M, 2]
        r = radii.reshape(I * N, 2).index_select(0, vis_flat).to(dtype)
        x0 = torch.ceil(m2[:, 0] - r[:, 0] - 0.5).clamp(0, width).long()
        x1 = torch.floor(m2[:, 0] + r[:, 0] - 0.5).clamp(-1, width - 1).long() + 1
        y0 = torch.ceil(m2[:, 1] - r[:, 1] - 0.5).clamp(0, height).long()
        y1 = torch.floor(m2[:, 1] + r[:, 1] - 0.5).clamp(-1, height - 1).long() + 1
        nx, ny = (x1 - x0).clamp_min(0), (y1 - y0).clamp_min(0)
        owner = torch.repeat_interleave(torch.arange(len(nx), device=device), nx * ny)  # [S]
        local = torch.arange(len(owner), device=device) - (torch.cumsum(nx * ny, 0) - nx * ny).index_select(0, owner)
        nxo = nx.index_select(0, owner).clamp_min(1)
        px = x0.index_select(0, owner) + local % nxo
        py = y0.index_select(0, owner) + local // nxo
        flat = vis_flat.index_select(0, owner)  # [S] index into [I * N]
        pix = (img_id.index_select(0, owner) * height + py) * width + px  # [S] index into [I * H * W]

        # 2. Keep the pairs gsplat would composite; sort them by pixel (stable: depth order stays).
        sig0, a0 = _pair_alpha(means2d.detach().reshape(I * N, 2).index_select(0, flat),
                              conics.detach().reshape(I * N, 3).index_select(0, flat),
                              opacities.detach().reshape(I * N).index_select(0, flat), px, py)
        idx = ((sig0 >= 0) & (a0 >= ALPHA_THRESHOLD)).nonzero(as_tuple=True)[0]
        idx = idx[torch.argsort(pix.index_select(0, idx), stable=True)]
        pix_s, flat_s = pix.index_select(0, idx), flat.index_select(0, idx)
        px_s, py_s = px.index_select(0, idx), py.index_select(0, idx)
        _, inverse, counts = torch.unique_consecutive(pix_s, return_inverse=True, return_counts=True)
        seg_start = (torch.cumsum(counts, 0) - counts).index_select(0, inverse)  # [K] first pair of its pixel

    _, alpha = _pair_alpha(means2d.reshape(I * N, 2).index_select(0, flat_s),
                          conics.reshape(I * N, 3).index_select(0, flat_s),
                          opacities.reshape(I * N).index_select(0, flat_s), px_s, py_s)

    def transmittance(a: Tensor) -> tuple[Tensor, Tensor]:
        """Per pair: T before it and T after it, within its pixel (float64 segmented cumsum)."""
        la = torch.log1p(-a.double())
        cs = torch.cumsum(la, 0)
        base = cs.index_select(0, seg_start) - la.index_select(0, seg_start)
        return torch.exp(cs - la - base), torch.exp(cs - base)

    # 3. A pixel is done before the Gaussian that would drop its transmittance to 1e-4.
    with torch.no_grad():
        alive = transmittance(alpha.detach())[1] > TRANSMITTANCE_STOP
    alpha = alpha * alive
    t_before, _ = transmittance(alpha)
    weights = (alpha.double() * t_before).to(dtype)  # [K]
    n_pix = I * height * width
    rgb = colors.new_zeros(n_pix, D).index_add(0, pix_s, weights[:, None] * colors.reshape(I * N, D).index_select(0, flat_s))
    log_t = torch.zeros(n_pix, dtype=torch.float64, device=device).index_add(0, pix_s, torch.log1p(-alpha.double()))
    alph = (1.0 - torch.exp(log_t)).to(dtype)
    return rgb.reshape(I, height, width, D), alph.reshape(I, height, width, 1)


def rasterization(
    means: Tensor,  # [..., N, 3]
    quats: Tensor,  # [..., N, 4] wxyz
    scales: Tensor,  # [..., N, 3] linear
    opacities: Tensor,  # [..., N] in 0..1
    colors: Tensor,  # [..., N, D]
    viewmats: Tensor,  # [..., C, 4, 4]
    Ks: Tensor,  # [..., C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
    **unused,
) -> tuple[Tensor, Tensor, dict]:
    """The subset of ``gsplat.rasterization`` we use (RGB, unpacked, per-Gaussian colors).

    Returns colors [..., C, H, W, D], alphas [..., C, H, W, 1] and a meta dict shaped like
    gsplat's unpacked one. Extra gsplat keyword arguments (``packed``, ``render_mode``,
    ``tile_size`` ...) are accepted so one call site serves both; only their defaults matter.
    """
    if unused.get("packed"):
        raise ValueError("the torch splatter has no packed mode; call it with packed=False")
    if unused.get("render_mode", "RGB") != "RGB" or unused.get("sh_degree") is not None:
        raise ValueError("the torch splatter renders RGB from per-Gaussian colors only")
    batch = means.shape[:-2]
    N = means.shape[-2]
    C = viewmats.shape[-3]
    covars = quat_scale_to_covar(quats, scales)
    radii, means2d, depths, conics = project(
        means, covars, opacities, viewmats, Ks, width, height, eps2d, near_plane, far_plane, radius_clip)
    I = math.prod(batch) * C
    opac = opacities[..., None, :].expand(batch + (C, N))
    cols = colors[..., None, :, :].expand(batch + (C, N, colors.shape[-1]))
    rgb, alpha = rasterize_to_pixels(
        means2d.reshape(I, N, 2), conics.reshape(I, N, 3), cols.reshape(I, N, -1), opac.reshape(I, N),
        radii.reshape(I, N, 2), depths.reshape(I, N), width, height)
    meta = {
        "radii": radii, "means2d": means2d, "depths": depths, "conics": conics, "opacities": opac,
        "gaussian_ids": None, "camera_ids": None, "batch_ids": None,
        "width": width, "height": height, "n_cameras": C, "n_batches": math.prod(batch),
    }
    return rgb.reshape(batch + (C, height, width, -1)), alpha.reshape(batch + (C, height, width, 1)), meta
