"""The ray caster of the synthetic world: analytic ray-primitive intersections, procedural
textures, sun light with shadow rays, Lambert + ambient shading, a sky gradient; pure torch,
batched over frames, the same code on CPU and GPU.

Everything here works on *frames*: a ``FrameBatch`` holds, for N frames, the camera and every
object's pose at that frame's time, so a V x T grid, a batch of grids, a row or a column are all
just lists of frames (see ``pack_frames``). Depth is the OpenCV camera z of the visible surface
(0 where the ray sees the sky).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch

from .scenes import PATTERN_IDS, SHAPE_IDS, SceneSpec, camera_viewmats, intrinsics, object_poses

MISS = 1e10  # ray parameter of "no hit"
EPS = 1e-3  # minimum ray parameter (world units; depth is in the same units)
FLOOR_FADE = (9.0, 24.0)  # the floor fades into the horizon between these distances from the origin
TORUS_STEPS = 28
SPHERE, BOX, CYLINDER, CAPSULE, TORUS = (SHAPE_IDS[s] for s in ("sphere", "box", "cylinder", "capsule", "torus"))


@dataclass
class FrameBatch:
    """N frames to render, all tensors on one device (K = object slots, empty ones have kind -1)."""

    viewmat: torch.Tensor  # [N, 4, 4] world -> camera, OpenCV
    K: torch.Tensor  # [N, 3, 3]
    kind: torch.Tensor  # [N, K] long, SHAPE_IDS or -1
    param: torch.Tensor  # [N, K] torus minor radius / capsule half-length
    centre: torch.Tensor  # [N, K, 3]
    minv: torch.Tensor  # [N, K, 3, 3] world -> local linear map: diag(1/scale) @ R^T
    radius: torch.Tensor  # [N, K] world radius of a bounding sphere about the centre
    rgb1: torch.Tensor  # [N, K, 3] sRGB
    rgb2: torch.Tensor  # [N, K, 3]
    pattern: torch.Tensor  # [N, K] long, PATTERN_IDS
    freq: torch.Tensor  # [N, K]
    floor_rgb1: torch.Tensor  # [N, 3]
    floor_rgb2: torch.Tensor  # [N, 3]
    floor_pattern: torch.Tensor  # [N] long
    floor_cell: torch.Tensor  # [N]
    floor_angle: torch.Tensor  # [N]
    zenith: torch.Tensor  # [N, 3]
    horizon: torch.Tensor  # [N, 3]
    sun_rgb: torch.Tensor  # [N, 3]
    sun_dir: torch.Tensor  # [N, 3] unit, towards the sun
    ambient: torch.Tensor  # [N]

    def __len__(self) -> int:
        return self.viewmat.shape[0]

    @classmethod
    def from_arrays(cls, arrays: dict, device="cpu") -> "FrameBatch":
        """From ``pack_arrays`` output (numpy arrays or CPU tensors)."""
        return cls(**{k: torch.as_tensor(v).to(device, non_blocking=True) for k, v in arrays.items()})

    def slice(self, a: int, b: int) -> "FrameBatch":
        return FrameBatch(**{f.name: getattr(self, f.name)[a:b] for f in fields(self)})


_LOCAL_RADIUS = {"sphere": lambda p: 1.0, "box": lambda p: math.sqrt(3), "cylinder": lambda p: math.sqrt(2),
                 "capsule": lambda p: 1.0 + p, "torus": lambda p: 1.0 + p}


def pack_frames(specs: list[SceneSpec], scene: np.ndarray, u_view: np.ndarray, u_time: np.ndarray,
                height: int, width: int, device="cpu") -> FrameBatch:
    """Frames ``i`` = scene ``specs[scene[i]]`` seen from view ``u_view[i]`` at time ``u_time[i]``
    (both in [0, 1]), packed for the renderer on ``device``."""
    return FrameBatch.from_arrays(pack_arrays(specs, scene, u_view, u_time, height, width), device)


def pack_arrays(specs: list[SceneSpec], scene: np.ndarray, u_view: np.ndarray, u_time: np.ndarray,
                height: int, width: int) -> dict[str, np.ndarray]:
    """``pack_frames`` without torch: the FrameBatch fields as numpy arrays (float32 / int64),
    cheap to make in a data-loader worker process."""
    scene = np.asarray(scene, dtype=np.int64)
    u_view = np.asarray(u_view, dtype=np.float64)
    u_time = np.asarray(u_time, dtype=np.float64)
    n = len(scene)
    k_max = max(len(s.objects) for s in specs)
    vm = np.zeros((n, 4, 4))
    kk = np.zeros((n, 3, 3))
    kind = np.full((n, k_max), -1, np.int64)
    param = np.zeros((n, k_max))
    centre = np.zeros((n, k_max, 3))
    centre[..., 2] = -100.0  # empty slots far below the floor
    minv = np.tile(np.eye(3), (n, k_max, 1, 1))
    radius = np.zeros((n, k_max))
    rgb1 = np.zeros((n, k_max, 3))
    rgb2 = np.zeros((n, k_max, 3))
    pattern = np.zeros((n, k_max), np.int64)
    freq = np.ones((n, k_max))
    per_scene = {name: np.zeros((n, 3)) for name in ("floor_rgb1", "floor_rgb2", "zenith", "horizon", "sun_rgb", "sun_dir")}
    floor_pattern = np.zeros(n, np.int64)
    floor_cell = np.ones(n)
    floor_angle = np.zeros(n)
    ambient = np.zeros(n)
    for b, spec in enumerate(specs):
        idx = np.nonzero(scene == b)[0]
        if len(idx) == 0:
            continue
        nk = len(spec.objects)
        vm[idx] = camera_viewmats(spec, u_view[idx])
        kk[idx] = intrinsics(spec, height, width)
        c, rot, scale = object_poses(spec, u_time[idx])  # [U, k, 3], [U, k, 3, 3], [U, k, 3]
        centre[idx, :nk] = c
        minv[idx, :nk] = np.swapaxes(rot, -1, -2) / scale[..., :, None]
        for j, o in enumerate(spec.objects):
            radius[idx, j] = _LOCAL_RADIUS[o.shape](o.param) * scale[:, j].max(-1) * 1.01
            kind[idx, j] = SHAPE_IDS[o.shape]
            param[idx, j] = o.param
            rgb1[idx, j] = o.rgb
            rgb2[idx, j] = o.rgb2
            pattern[idx, j] = PATTERN_IDS[o.pattern]
            freq[idx, j] = o.frequency
        per_scene["floor_rgb1"][idx] = spec.floor_rgb
        per_scene["floor_rgb2"][idx] = spec.floor_rgb2
        per_scene["zenith"][idx] = spec.sky_zenith
        per_scene["horizon"][idx] = spec.sky_horizon
        per_scene["sun_rgb"][idx] = spec.sun_rgb
        per_scene["sun_dir"][idx] = spec.sun_dir
        floor_pattern[idx] = PATTERN_IDS[spec.floor_pattern]
        floor_cell[idx] = spec.floor_cell
        floor_angle[idx] = spec.floor_angle
        ambient[idx] = spec.ambient

    out = dict(viewmat=vm, K=kk, kind=kind, param=param, centre=centre, minv=minv, radius=radius,
               rgb1=rgb1, rgb2=rgb2, pattern=pattern, freq=freq, floor_pattern=floor_pattern,
               floor_cell=floor_cell, floor_angle=floor_angle, ambient=ambient, **per_scene)
    return {k: v if v.dtype == np.int64 else v.astype(np.float32) for k, v in out.items()}


# -- intersections in local space: o [M, P|1, 3], d [M, P|1, 3] (not unit), param [M, 1] -> t [M, P]
def _dot(a, b):
    return (a * b).sum(-1)


def _mv(m, v):
    """Matrix [..., 3, 3] times vector [..., 3], elementwise: exact fp32 on every device (a
    matmul may run in TF32 on a GPU, too coarse for ray casting)."""
    return (m * v[..., None, :]).sum(-1)


def _hit_sphere(o, d, radius=1.0):
    a = _dot(d, d)
    b = _dot(o, d)
    c = _dot(o, o) - radius * radius
    disc = b * b - a * c
    sq = disc.clamp_min(0).sqrt()
    t0, t1 = (-b - sq) / a, (-b + sq) / a
    t = torch.where(t0 > EPS, t0, t1)
    return torch.where((disc >= 0) & (t > EPS), t, MISS)


def _hit_box(o, d, param=None):
    d = torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    inv = 1.0 / d
    ta, tb = (-1 - o) * inv, (1 - o) * inv
    tn = torch.minimum(ta, tb).amax(-1)
    tf = torch.maximum(ta, tb).amin(-1)
    t = torch.where(tn > EPS, tn, tf)
    return torch.where((tf >= tn) & (t > EPS), t, MISS)


def _hit_tube(o, d, half):
    """Side of the radius-1 cylinder around z, clipped to |z| <= half ([M, 1] or float)."""
    ox, oy, oz = o.unbind(-1)
    dx, dy, dz = d.unbind(-1)
    a = (dx * dx + dy * dy).clamp_min(1e-12)
    b = ox * dx + oy * dy
    c = ox * ox + oy * oy - 1
    disc = b * b - a * c
    sq = disc.clamp_min(0).sqrt()
    t0, t1 = (-b - sq) / a, (-b + sq) / a
    ok = disc >= 0
    v0 = ok & (t0 > EPS) & ((oz + t0 * dz).abs() <= half)
    v1 = ok & (t1 > EPS) & ((oz + t1 * dz).abs() <= half)
    return torch.where(v0, t0, torch.where(v1, t1, MISS))


def _hit_caps(o, d):
    ox, oy, oz = o.unbind(-1)
    dx, dy, dz = d.unbind(-1)
    dz = torch.where(dz.abs() < 1e-9, torch.full_like(dz, 1e-9), dz)
    best = None
    for h in (-1.0, 1.0):
        t = (h - oz) / dz
        x, y = ox + t * dx, oy + t * dy
        t = torch.where((t > EPS) & (x * x + y * y <= 1), t, MISS)
        best = t if best is None else torch.minimum(best, t)
    return best


def _hit_cylinder(o, d, param=None):
    return torch.minimum(_hit_tube(o, d, 1.0), _hit_caps(o, d))


def _hit_capsule(o, d, param):
    h = param  # [M, 1]
    shift = torch.zeros_like(o)
    shift[..., 2] = 1.0
    t = _hit_tube(o, d, h)
    t = torch.minimum(t, _hit_sphere(o - shift * h[..., None], d))
    return torch.minimum(t, _hit_sphere(o + shift * h[..., None], d))


def _torus_sdf(p, r):
    q = torch.sqrt(p[..., 0] ** 2 + p[..., 1] ** 2) - 1
    return torch.sqrt(q * q + p[..., 2] ** 2) - r


def _hit_torus(o, d, param):
    """Sphere tracing from the bounding sphere, only for rays that hit the bounding sphere."""
    o, d = torch.broadcast_tensors(o, d)
    r = param.expand(o.shape[:-1])  # [M, P]
    rb = 1 + r
    a = _dot(d, d)
    b = _dot(o, d)
    c = _dot(o, o) - rb * rb
    disc = b * b - a * c
    out = torch.full(o.shape[:-1], MISS, device=o.device, dtype=o.dtype)
    cand = (disc > 0) & ((-b + disc.clamp_min(0).sqrt()) / a > EPS)
    if not bool(cand.any()):
        return out
    oc, dc, rc, ac, bc, dd = o[cand], d[cand], r[cand], a[cand], b[cand], disc[cand]
    sq = dd.sqrt()
    t = ((-bc - sq) / ac).clamp_min(EPS)
    t_exit = (-bc + sq) / ac
    dn = ac.sqrt()
    for _ in range(TORUS_STEPS):
        t = t + _torus_sdf(oc + t[:, None] * dc, rc) / dn
    hit = (_torus_sdf(oc + t[:, None] * dc, rc).abs() < 2e-3 + 0.01 * rc) & (t < t_exit) & (t > EPS)
    out[cand] = torch.where(hit, t, torch.full_like(t, MISS))
    return out


_HIT = {SPHERE: lambda o, d, p: _hit_sphere(o, d), BOX: _hit_box, CYLINDER: _hit_cylinder,
        CAPSULE: _hit_capsule, TORUS: _hit_torus}


def _cast(fb: FrameBatch, o: torch.Tensor, d: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Nearest hit of every object slot: origins o [N, P|1, 3], directions d [N, P|1, 3] (world,
    not unit), optional ray mask [N, P] -> t [N, P, K] (MISS where none).

    A bounding-sphere test against all slots (no gathers) picks the candidate (ray, slot)
    pairs; the exact intersection runs in the slot's local frame only for those.
    """
    n, k = fb.kind.shape
    p = max(o.shape[1], d.shape[1])
    c = fb.centre  # [N, K, 3]
    a = _dot(d, d)  # [N, P|1]
    b, cc = 0, 0
    for j in range(3):  # component by component: exact fp32 (a matmul may run in TF32 on a GPU)
        oc = o[..., j, None] - c[:, None, :, j]  # [N, P|1, K]
        b = b + d[..., j, None] * oc  # (o - c) . d
        cc = cc + oc * oc
    cc = cc - (fb.radius ** 2)[:, None]
    disc = b * b - a[..., None] * cc
    cand = (disc > 0) & (disc.clamp_min(0).sqrt() - b > EPS * a[..., None]) & (fb.kind >= 0)[:, None]
    if mask is not None:
        cand &= mask[..., None]
    t_all = torch.full((n, p, k), MISS, device=o.device, dtype=o.dtype)
    ni, pi, ki = torch.nonzero(cand, as_tuple=True)
    if len(ni) == 0:
        return t_all
    minv = fb.minv[ni, ki]  # [Q, 3, 3]
    oq = o[ni, pi if o.shape[1] > 1 else 0]
    dq = d[ni, pi if d.shape[1] > 1 else 0]
    ol = _mv(minv, oq - c[ni, ki])[:, None]  # [Q, 1, 3]
    dl = _mv(minv, dq)[:, None]
    kind = fb.kind[ni, ki]
    param = fb.param[ni, ki]
    t = torch.full((len(ni),), MISS, device=o.device, dtype=o.dtype)
    for kid, fn in _HIT.items():
        sel = kind == kid
        if bool(sel.any()):
            t[sel] = fn(ol[sel], dl[sel], param[sel][:, None])[:, 0]
    t_all[ni, pi, ki] = t
    return t_all


# -- textures ------------------------------------------------------------------------------------
def _hash(ix, iy, iz):
    h = ix * 73856093 ^ iy * 19349663 ^ iz * 83492791
    h = h ^ (h >> 13)
    h = h * 1274126177
    h = h ^ (h >> 16)
    return (h & 0xFFFF).to(torch.float32) / 65535.0


def value_noise(p: torch.Tensor) -> torch.Tensor:
    """Smooth value noise in [0, 1] of points [..., 3] (integer lattice, trilinear, smoothstep)."""
    f = torch.floor(p)
    i = f.to(torch.int64)
    w = p - f
    w = w * w * (3 - 2 * w)
    out = 0
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                h = _hash(i[..., 0] + dx, i[..., 1] + dy, i[..., 2] + dz)
                wx = w[..., 0] if dx else 1 - w[..., 0]
                wy = w[..., 1] if dy else 1 - w[..., 1]
                wz = w[..., 2] if dz else 1 - w[..., 2]
                out = out + h * wx * wy * wz
    return out


def _parity(x):
    return torch.remainder(torch.floor(x), 2.0)


def _fract(x):
    return x - torch.floor(x)


def _filtered_square(x, w):
    """Box-filtered square wave of period 2 (values +1 / -1) over a footprint ``w`` (iq)."""
    w = w + 1e-3
    return 2 * ((_fract((x - 0.5 * w) * 0.5) - 0.5).abs() - (_fract((x + 0.5 * w) * 0.5) - 0.5).abs()) / w


def _object_mix(kind, pattern, freq, pl, salt):
    """How much of colour 2 (0..1) on an object at local points pl [Q, 3]."""
    x, y, z = pl.unbind(-1)
    ang = torch.atan2(y, x) / (2 * math.pi)  # [-0.5, 0.5]
    tube = torch.atan2(z, torch.sqrt(x * x + y * y) - 1) / (2 * math.pi)
    band = torch.where(kind == TORUS, tube * 4, z * 1.5)
    is_round = kind != BOX
    # Box faces lie at +-1: the 0.25 offset keeps every face off a cell boundary.
    stripes = torch.where(is_round, _parity(ang * freq), _parity(x * freq + 0.25))
    checker = torch.where(is_round, _parity(_parity(ang * freq) + torch.floor(band)),
                          _parity(torch.floor(x * freq + 0.25) + torch.floor(y * freq + 0.25) + torch.floor(z * freq + 0.25)))
    mix = torch.zeros_like(x)
    mix = torch.where(pattern == PATTERN_IDS["striped"], stripes, mix)
    mix = torch.where(pattern == PATTERN_IDS["checker"], checker, mix)
    noisy = pattern == PATTERN_IDS["noise"]
    if bool(noisy.any()):
        q = pl[noisy] * 2.2 + salt[noisy, None] * 17.0
        nv = 0.65 * value_noise(q) + 0.35 * value_noise(q * 2.3 + 5.1)
        mix = mix.masked_scatter(noisy, ((nv - 0.42) / 0.16).clamp(0, 1))
    return mix


def _floor_mix(fb: FrameBatch, frame, pw, footprint):
    """Colour-2 amount of the floor at world points pw [Q, 3] (frame index per point) with
    texture footprint ``footprint`` [Q] in world units."""
    cell = fb.floor_cell[frame]
    ang = fb.floor_angle[frame]
    c, s = torch.cos(ang), torch.sin(ang)
    x = (c * pw[:, 0] + s * pw[:, 1]) / cell
    y = (-s * pw[:, 0] + c * pw[:, 1]) / cell
    w = footprint / cell
    sx, sy = _filtered_square(x, w), _filtered_square(y, w)
    pat = fb.floor_pattern[frame]
    mix = torch.full_like(x, 0.0)
    mix = torch.where(pat == PATTERN_IDS["checker"], 0.5 - 0.5 * sx * sy, mix)
    mix = torch.where(pat == PATTERN_IDS["striped"], 0.5 - 0.5 * sx, mix)
    noisy = pat == PATTERN_IDS["noise"]
    if bool(noisy.any()):
        q = torch.stack([x[noisy], y[noisy], torch.zeros_like(x[noisy])], -1) * 1.3
        nv = 0.6 * value_noise(q) + 0.4 * value_noise(q * 2.7 + 3.3)
        contrast = (1 - 0.5 * w[noisy]).clamp(0, 1)
        mix = mix.masked_scatter(noisy, 0.5 + contrast * (((nv - 0.45) / 0.2).clamp(0, 1) - 0.5))
    solid = pat == PATTERN_IDS["solid"]
    if bool(solid.any()):  # a faint large-scale mottling so a plain floor still shows motion
        q = torch.stack([x[solid], y[solid], torch.zeros_like(x[solid])], -1) * 0.5
        mix = mix.masked_scatter(solid, 0.6 * value_noise(q))
    return mix


# -- shading -------------------------------------------------------------------------------------
def _lin(c):
    return c.clamp(0, 1) ** 2.2


def _object_normals(kind, param, pl):
    """Local-space normals (unnormalised) at local points pl [Q, 3]."""
    x, y, z = pl.unbind(-1)
    zero = torch.zeros_like(x)
    ax = pl.abs()
    m = ax.argmax(-1, keepdim=True)
    box_n = torch.zeros_like(pl).scatter(-1, m, torch.sign(pl.gather(-1, m)))
    rxy = torch.sqrt(x * x + y * y).clamp_min(1e-6)
    side = torch.stack([x, y, zero], -1)
    cap = torch.stack([zero, zero, torch.sign(z)], -1)
    cyl_n = torch.where(((z.abs() - 1).abs() < (rxy - 1).abs())[:, None], cap, side)
    caps_n = pl - torch.stack([zero, zero, z.clamp(-param, param)], -1)
    ring = torch.stack([x / rxy, y / rxy, zero], -1)
    tor_n = pl - ring
    n = pl
    n = torch.where((kind == BOX)[:, None], box_n, n)
    n = torch.where((kind == CYLINDER)[:, None], cyl_n, n)
    n = torch.where((kind == CAPSULE)[:, None], caps_n, n)
    n = torch.where((kind == TORUS)[:, None], tor_n, n)
    return n


def _render_chunk(fb: FrameBatch, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """rgb [N, H, W, 3] in [0, 1] and depth [N, H, W] for a chunk of frames."""
    dev = fb.viewmat.device
    n = len(fb)
    p = height * width
    # 1. Camera rays through pixel centres; with d_cam.z = 1 the ray parameter is the depth.
    jj, ii = torch.meshgrid(torch.arange(width, device=dev, dtype=torch.float32),
                            torch.arange(height, device=dev, dtype=torch.float32), indexing="xy")
    fx, fy = fb.K[:, 0, 0, None], fb.K[:, 1, 1, None]
    cx, cy = fb.K[:, 0, 2, None], fb.K[:, 1, 2, None]
    d_cam = torch.stack([(jj.reshape(1, p) - cx) / fx, (ii.reshape(1, p) - cy) / fy, torch.ones(n, p, device=dev)], -1)
    rot = fb.viewmat[:, :3, :3]  # [N, 3, 3] world -> camera
    rot_t = rot.transpose(1, 2)
    eye = -_mv(rot_t, fb.viewmat[:, :3, 3])  # [N, 3]
    d = _mv(rot_t[:, None], d_cam)  # [N, P, 3] world directions (R^T d_cam)
    # 2. Nearest surface: objects or the floor (z = 0); else sky.
    t_best, k_best = _cast(fb, eye[:, None], d).min(-1)  # [N, P]
    dz = d[..., 2]
    t_floor = torch.where(dz < -1e-6, -eye[:, 2:3] / dz.clamp(max=-1e-6), torch.full_like(dz, MISS))
    t_floor = torch.where(t_floor > EPS, t_floor, torch.full_like(dz, MISS))
    is_obj = t_best < torch.minimum(t_floor, torch.full_like(t_floor, MISS * 0.5))
    is_floor = ~is_obj & (t_floor < MISS * 0.5)
    t_hit = torch.where(is_obj, t_best, torch.where(is_floor, t_floor, torch.zeros_like(t_best)))
    pw = eye[:, None] + t_hit[..., None] * d  # [N, P, 3]

    normal = torch.zeros_like(pw)
    normal[..., 2] = 1.0
    mix = torch.zeros_like(t_hit)
    base1 = fb.floor_rgb1[:, None].expand(n, p, 3).clone()
    base2 = fb.floor_rgb2[:, None].expand(n, p, 3).clone()
    # 3. Objects: local point, normal and texture at the winning slot.
    if bool(is_obj.any()):
        fo, po = torch.nonzero(is_obj, as_tuple=True)
        ko = k_best[fo, po]
        kind = fb.kind[fo, ko]
        minv = fb.minv[fo, ko]  # [Q, 3, 3]
        pl = _mv(minv, pw[fo, po] - fb.centre[fo, ko])
        param = fb.param[fo, ko]
        nl = _object_normals(kind, param, pl)
        nw = _mv(minv.transpose(1, 2), nl)  # inverse transpose of the local->world map
        nw = nw / nw.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        normal[fo, po] = nw
        mix[fo, po] = _object_mix(kind, fb.pattern[fo, ko], fb.freq[fo, ko], pl, ko.to(torch.float32))
        base1[fo, po] = fb.rgb1[fo, ko]
        base2[fo, po] = fb.rgb2[fo, ko]
    # 4. Floor texture, filtered by the pixel footprint on the floor.
    if bool(is_floor.any()):
        ff, pf = torch.nonzero(is_floor, as_tuple=True)
        dn = d[ff, pf]
        cos = (dn[:, 2].abs() / dn.norm(dim=-1)).clamp_min(0.02)
        footprint = t_hit[ff, pf] / fx[ff, 0] / cos.sqrt()
        mix[ff, pf] = _floor_mix(fb, ff, pw[ff, pf], footprint)
    albedo = _lin(base1 + (base2 - base1) * mix[..., None])
    # 5. Sun: Lambert term and a shadow ray towards the sun from every lit surface point.
    sun = fb.sun_dir[:, None]  # [N, 1, 3]
    lambert = (normal * sun).sum(-1).clamp_min(0) * (is_obj | is_floor)
    t_shadow = _cast(fb, pw + normal * 2e-3, sun, mask=lambert > 0).amin(-1)  # [N, P]
    lit = (t_shadow >= MISS * 0.5).float()
    sky_mid = _lin(0.5 * (fb.zenith + fb.horizon))  # [N, 3]
    amb_rgb = sky_mid / sky_mid.mean(-1, keepdim=True).clamp_min(1e-3) * fb.ambient[:, None]
    ambient = amb_rgb[:, None] * (0.7 + 0.3 * normal[..., 2:3])
    colour = albedo * (ambient + _lin(fb.sun_rgb)[:, None] * (lambert * lit)[..., None])
    colour = colour.clamp(0, 1) ** (1 / 2.2)
    # 6. Sky gradient with a soft sun glow; the floor fades into the horizon far away.
    dn = d / d.norm(dim=-1, keepdim=True)
    elev = dn[..., 2].clamp(0, 1) ** 0.5
    sky = fb.horizon[:, None] + (fb.zenith - fb.horizon)[:, None] * elev[..., None]
    glow = (dn * sun).sum(-1).clamp_min(0) ** 48
    sky = sky + 0.35 * glow[..., None] * fb.sun_rgb[:, None]
    fade = ((pw[..., :2].norm(dim=-1) - FLOOR_FADE[0]) / (FLOOR_FADE[1] - FLOOR_FADE[0])).clamp(0, 1)
    fade = (fade * fade * (3 - 2 * fade)) * is_floor
    colour = colour + (fb.horizon[:, None] - colour) * fade[..., None]
    colour = torch.where((is_obj | is_floor)[..., None], colour, sky).clamp(0, 1)
    depth = torch.where(is_obj | is_floor, t_hit, torch.zeros_like(t_hit))
    return colour.reshape(n, height, width, 3), depth.reshape(n, height, width)


def default_max_rays(device) -> int:
    return 1 << (23 if torch.device(device).type == "cuda" else 19)


def render_frames(fb: FrameBatch, height: int, width: int, ssaa: int = 1, max_rays: int | None = None,
                  on_progress=None, should_cancel=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Render every frame of ``fb``: rgb float [N, H, W, 3] in [0, 1], depth float [N, H, W].

    ``ssaa`` > 1 casts ssaa x ssaa rays per pixel and averages the colours (depth is the nearest
    of the pixel's samples). Frames are rendered in chunks of about ``max_rays`` rays;
    ``on_progress(done, total)`` is called after each chunk and ``should_cancel()`` before it.
    """
    from ..errors import Cancelled

    s = int(ssaa)
    if s > 1:
        k = fb.K.clone()
        k[:, 0, 0] *= s
        k[:, 1, 1] *= s
        k[:, 0, 2] = s * (k[:, 0, 2] + 0.5) - 0.5
        k[:, 1, 2] = s * (k[:, 1, 2] + 0.5) - 0.5
        fb = FrameBatch(**{**{f.name: getattr(fb, f.name) for f in fields(fb)}, "K": k})
    hs, ws = height * s, width * s
    per = max(1, (max_rays or default_max_rays(fb.viewmat.device)) // (hs * ws))
    rgbs, depths = [], []
    with torch.no_grad():
        for a in range(0, len(fb), per):
            if should_cancel is not None and should_cancel():
                raise Cancelled("rendering cancelled")
            rgb, depth = _render_chunk(fb.slice(a, a + per), hs, ws)
            if s > 1:
                n = rgb.shape[0]
                rgb = rgb.reshape(n, height, s, width, s, 3).mean((2, 4))
                dd = depth.reshape(n, height, s, width, s).permute(0, 1, 3, 2, 4).reshape(n, height, width, s * s)
                dd = torch.where(dd > 0, dd, torch.full_like(dd, MISS)).amin(-1)
                depth = torch.where(dd < MISS * 0.5, dd, torch.zeros_like(dd))
            rgbs.append(rgb)
            depths.append(depth)
            if on_progress is not None:
                on_progress(min(a + per, len(fb)), len(fb))
    return torch.cat(rgbs), torch.cat(depths)


# -- grids ---------------------------------------------------------------------------------------
@dataclass
class SceneRender:
    """The ground truth of one scene as a V x T grid."""

    frames: np.ndarray  # uint8 [V, T, H, W, 3]
    depth: np.ndarray  # float32 [V, T, H, W], camera z; 0 where the ray sees the sky
    viewmats: np.ndarray  # float32 [V, 4, 4] world -> camera, OpenCV (x right, y down, z forward)
    Ks: np.ndarray  # float32 [V, 3, 3]
    caption: str
    spec: SceneSpec | None = None


def grid_u(n: int) -> np.ndarray:
    """Parameters in [0, 1] of n evenly spaced samples (0 alone when n == 1)."""
    return np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)


def grid_frames(batch: int, views: int, times: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scene, u_view, u_time) of every cell of ``batch`` V x T grids, in [B, V, T] order."""
    b, v, t = np.meshgrid(np.arange(batch), grid_u(views), grid_u(times), indexing="ij")
    return b.ravel(), v.ravel(), t.ravel()


def render_grids(specs: list[SceneSpec], views: int, times: int, height: int, width: int, device="cpu",
                 ssaa: int = 1, max_rays: int | None = None, on_progress=None,
                 should_cancel=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The batched path: rgb float [B, V, T, H, W, 3] in [0, 1] and depth [B, V, T, H, W] on ``device``."""
    scene, uv, ut = grid_frames(len(specs), views, times)
    fb = pack_frames(specs, scene, uv, ut, height, width, device)
    rgb, depth = render_frames(fb, height, width, ssaa=ssaa, max_rays=max_rays, on_progress=on_progress,
                               should_cancel=should_cancel)
    shape = (len(specs), views, times, height, width)
    return rgb.reshape(*shape, 3), depth.reshape(shape)


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    return (rgb * 255 + 0.5).clamp(0, 255).to(torch.uint8).cpu().numpy()


def render_scene(spec: SceneSpec, views: int, times: int, height: int, width: int, device="cpu",
                 ssaa: int = 1, on_progress=None, should_cancel=None) -> SceneRender:
    """Render the V x T ground-truth grid of one scene (see ``SceneRender``)."""
    rgb, depth = render_grids([spec], views, times, height, width, device, ssaa=ssaa, on_progress=on_progress,
                              should_cancel=should_cancel)
    k = intrinsics(spec, height, width)
    return SceneRender(
        frames=to_uint8(rgb[0]),
        depth=depth[0].cpu().numpy().astype(np.float32),
        viewmats=camera_viewmats(spec, grid_u(views)).astype(np.float32),
        Ks=np.repeat(k[None], views, 0).astype(np.float32),
        caption=spec.caption,
        spec=spec,
    )
