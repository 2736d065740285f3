"""Scene specs of the synthetic 4D world: the seeded sampler, object motion over time, and the
camera path over views.

A ``SceneSpec`` is pure data (floats and names), independent of the grid size: time and view
are continuous parameters ``u`` in [0, 1] (time ``t`` of a T-time grid is ``u = t / (T - 1)``,
view ``v`` likewise), so a 4x4 grid and a 16x16 grid of one seed show the same scene, motion and
camera path. World frame: z up, the floor is the plane z = 0, the scene sits around the origin.
Cameras are OpenCV (x right, y down, z forward), world-to-camera ``viewmat [4, 4]``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from .captions import COLORS, FLOOR_COLORS, SHAPES, SKIES, make_caption

# Local shapes (before the per-object affine map): sphere = unit ball; box = [-1, 1]^3;
# cylinder = radius 1, |z| <= 1; capsule = radius 1 around the segment |z| <= param;
# torus = major radius 1, minor radius param, around the local z axis.
SHAPE_IDS = {name: i for i, name in enumerate(SHAPES)}
PATTERN_IDS = {"solid": 0, "striped": 1, "checker": 2, "noise": 3}

# Bump when the sampler or the renderer changes what a seed looks like: seeds are scene
# identities only within one world version (manifests and evaluations record it).
WORLD_VERSION = 1
STAGE_RADIUS = 1.8  # object paths stay within this distance of the origin
REFERENCE_ASPECT = 16 / 9  # W / H used to keep every object in frame along the camera path


@dataclass(frozen=True)
class ObjectSpec:
    """One primitive and its motion. Lengths in world units (the floor's checker is ~0.5-1)."""

    shape: str  # sphere | box | cylinder | capsule | torus
    color: str  # caption colour name
    rgb: tuple[float, float, float]  # sRGB main colour
    rgb2: tuple[float, float, float]  # sRGB second colour of the pattern
    pattern: str  # solid | striped | checker | noise
    frequency: float  # pattern cells: segments around a round shape, cells per unit on a box
    size: float  # world half-size at u = 0
    aspect: tuple[float, float, float]  # per local axis multipliers of size
    param: float  # torus minor radius / capsule half-length, local units; 0 otherwise
    lying: bool  # torus / capsule / cylinder lies with its local z axis horizontal
    position: tuple[float, float]  # floor position at u = 0 (slide: midpoint; orbit: centre)
    yaw: float  # heading at u = 0, radians
    motion: str  # static | bounce | slide | roll | orbit | spin | grow | shrink | wobble
    amount: float = 0.0  # bounce height | slide/roll length | orbit sweep (rad) | spin turns | final scale | wobble amplitude
    cycles: float = 1.0  # bounces / wobbles over the clip
    heading: float = 0.0  # slide/roll direction, orbit start angle (rad)
    radius: float = 0.0  # orbit radius


@dataclass(frozen=True)
class CameraPath:
    """Orbit arc around ``target``: azimuth, elevation and distance move linearly with u."""

    azimuth: float  # radians at u = 0
    arc: float  # signed azimuth change over the path, |arc| in [20, 120] degrees
    elevation0: float  # radians
    elevation1: float
    distance0: float
    distance1: float  # dolly: distance1 / distance0 in about [0.75, 1.25]
    fov_x: float  # horizontal field of view, radians
    target: tuple[float, float, float]


@dataclass(frozen=True)
class SceneSpec:
    """Everything that defines a scene; ``sample_scene(seed)`` makes one."""

    seed: int
    objects: tuple[ObjectSpec, ...]
    floor_color: str
    floor_rgb: tuple[float, float, float]
    floor_rgb2: tuple[float, float, float]
    floor_pattern: str  # solid | striped | checker | noise
    floor_cell: float  # world size of a checker cell / stripe / noise blob
    floor_angle: float  # orientation of the floor pattern, radians
    sky: str
    sky_zenith: tuple[float, float, float]
    sky_horizon: tuple[float, float, float]
    sun_rgb: tuple[float, float, float]
    sun_dir: tuple[float, float, float]  # unit vector towards the sun
    ambient: float  # strength of the sky's ambient light
    camera: CameraPath
    caption: str = field(default="")


# -- rotations -----------------------------------------------------------------------------------
def _rot_z(a: np.ndarray) -> np.ndarray:
    """[U] angles -> [U, 3, 3]."""
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def _rot_axis(axis: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Rodrigues: unit axis [3], angles [U] -> [U, 3, 3]."""
    x, y, z = axis
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]], dtype=np.float64)
    a = a[:, None, None]
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)


_LIE = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # local z -> world y: lying / upright ring


def _local_extent(o: ObjectSpec) -> np.ndarray:
    """Half-extents of the local shape before scaling: [3]."""
    if o.shape == "capsule":
        return np.array([1.0, 1.0, 1.0 + o.param])
    if o.shape == "torus":
        return np.array([1.0 + o.param, 1.0 + o.param, o.param])
    return np.ones(3)


def _max_stretch(o: ObjectSpec) -> float:
    if o.motion == "grow":
        return max(1.0, o.amount)
    if o.motion == "wobble":
        return 1.0 + o.amount
    return 1.0


def bounding_radius(o: ObjectSpec) -> float:
    """Radius of a sphere around the object at any time (about its centre)."""
    return float(np.linalg.norm(_local_extent(o) * np.array(o.aspect)) * o.size * _max_stretch(o))


def footprint_radius(o: ObjectSpec) -> float:
    """Radius of a circle on the floor around the object's footprint at any time and heading."""
    e = _local_extent(o) * np.array(o.aspect)
    xy = (e[0], e[2]) if o.lying else (e[0], e[1])
    return float(math.hypot(*xy) * o.size * _max_stretch(o))


def _floor_xy(o: ObjectSpec, u: np.ndarray) -> np.ndarray:
    """Object centre on the floor over time: [U] -> [U, 2]."""
    p = np.asarray(o.position, dtype=np.float64)
    if o.motion in ("slide", "roll"):
        d = np.array([math.cos(o.heading), math.sin(o.heading)])
        return p + (u[:, None] - 0.5) * o.amount * d
    if o.motion == "orbit":
        a = o.heading + o.amount * u
        return p + o.radius * np.stack([np.cos(a), np.sin(a)], -1)
    return np.broadcast_to(p, (len(u), 2)).copy()


def _stretch(o: ObjectSpec, u: np.ndarray) -> np.ndarray:
    """Per-axis scale multipliers over time: [U, 3]."""
    ones = np.ones((len(u), 3))
    if o.motion in ("grow", "shrink"):
        e = u * u * (3 - 2 * u)  # ease in and out
        return ones * (1 + (o.amount - 1) * e)[:, None]
    if o.motion == "wobble":  # volume-preserving squash and stretch along the vertical
        sz = 1 + o.amount * np.sin(2 * math.pi * o.cycles * u)
        sxy = 1 / np.sqrt(sz)
        return np.stack([sxy, sxy, sz], -1)
    return ones


def _rotation(o: ObjectSpec, u: np.ndarray) -> np.ndarray:
    """Local-to-world rotation over time: [U, 3, 3]."""
    base = _LIE if o.lying else np.eye(3)
    if o.motion == "spin":
        return _rot_z(o.yaw + 2 * math.pi * o.amount * u) @ base
    if o.motion == "orbit":
        return _rot_z(o.yaw + o.amount * u) @ base
    if o.motion == "roll":  # rolling without slipping along the heading
        axis = np.array([-math.sin(o.heading), math.cos(o.heading), 0.0])
        r = o.size * o.aspect[0]
        angle = (u - 0.5) * o.amount / r
        return _rot_axis(axis, angle) @ _rot_z(np.full_like(u, o.yaw)) @ base
    return _rot_z(np.full_like(u, o.yaw)) @ base


def object_poses(spec: SceneSpec, u) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Poses of every object at times ``u`` (floats in [0, 1]).

    Returns centres ``[U, K, 3]``, rotations ``[U, K, 3, 3]`` and per-axis scales ``[U, K, 3]``;
    the local shape maps to the world by ``x_world = centre + R @ (scale * x_local)``.
    """
    u = np.atleast_1d(np.asarray(u, dtype=np.float64))
    centres, rots, scales = [], [], []
    for o in spec.objects:
        rot = _rotation(o, u)  # [U, 3, 3]
        scale = o.size * np.array(o.aspect) * _stretch(o, u)  # [U, 3]
        m = rot * scale[:, None, :]  # R @ diag(scale)
        half_z = np.abs(m[:, 2, :]) @ _local_extent(o)  # [U] world half-height
        z = half_z.copy()
        if o.motion == "bounce":
            z += o.amount * np.abs(np.sin(math.pi * o.cycles * u))
        centres.append(np.concatenate([_floor_xy(o, u), z[:, None]], -1))
        rots.append(rot)
        scales.append(scale)
    return np.stack(centres, 1), np.stack(rots, 1), np.stack(scales, 1)


# -- cameras -------------------------------------------------------------------------------------
def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World-to-camera OpenCV viewmats looking from ``eye`` [U, 3] at ``target`` [3], z up."""
    f = target - eye
    f /= np.linalg.norm(f, axis=-1, keepdims=True)
    r = np.cross(f, np.array([0.0, 0.0, 1.0]))
    r /= np.linalg.norm(r, axis=-1, keepdims=True)
    d = np.cross(f, r)  # y down
    rot = np.stack([r, d, f], -2)  # rows: camera axes in world coordinates
    vm = np.zeros((len(eye), 4, 4))
    vm[:, :3, :3] = rot
    vm[:, :3, 3] = -np.einsum("uij,uj->ui", rot, eye)
    vm[:, 3, 3] = 1
    return vm


def camera_eyes(cam: CameraPath, u) -> np.ndarray:
    u = np.atleast_1d(np.asarray(u, dtype=np.float64))
    az = cam.azimuth + cam.arc * u
    el = cam.elevation0 + (cam.elevation1 - cam.elevation0) * u
    dist = cam.distance0 + (cam.distance1 - cam.distance0) * u
    offset = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1)
    return np.asarray(cam.target) + dist[:, None] * offset


def camera_viewmats(spec: SceneSpec, u) -> np.ndarray:
    """World-to-camera viewmats ``[U, 4, 4]`` along the path at views ``u`` in [0, 1]."""
    return look_at(camera_eyes(spec.camera, u), np.asarray(spec.camera.target, dtype=np.float64))


def intrinsics(spec: SceneSpec, height: int, width: int) -> np.ndarray:
    """OpenCV K [3, 3] for an H x W image: square pixels, principal point at the image centre
    (pixel (i, j) has its centre at x = j, y = i)."""
    f = (width / 2) / math.tan(spec.camera.fov_x / 2)
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])


# -- sampler -------------------------------------------------------------------------------------
def _jitter(rng: np.random.Generator, rgb, amount: float = 0.035) -> tuple[float, float, float]:
    return tuple(float(c) for c in np.clip(np.asarray(rgb) + rng.normal(0, amount, 3), 0.0, 1.0))


def _second_color(rng: np.random.Generator, name: str, rgb) -> tuple[float, float, float]:
    """The pattern's other colour, never a second hue (the caption names one colour): white on
    dark colours, dark grey on white, else white or a dark shade of the colour itself."""
    rgb = np.asarray(rgb)
    if name == "white":
        return _jitter(rng, (0.16, 0.16, 0.18), 0.02)
    if name in ("black", "brown", "blue", "purple") or rng.random() < 0.5:
        return _jitter(rng, (0.94, 0.93, 0.90), 0.02)
    return tuple(float(c) for c in rgb * 0.28)


_SUBJECT_MOTIONS = ("bounce", "slide", "orbit", "spin", "grow", "shrink", "wobble", "roll")
_OTHER_MOTIONS = ("static", "static", "static", "bounce", "slide", "spin", "grow", "shrink", "wobble")


def _sample_object(rng: np.random.Generator, motion_pool) -> ObjectSpec:
    shape = str(rng.choice(SHAPES))
    motion = str(rng.choice(motion_pool))
    if motion == "roll" and shape != "sphere":
        motion = "slide"
    color = str(rng.choice(list(COLORS)))
    pattern = str(rng.choice(["solid", "striped", "checker", "noise"], p=[0.28, 0.26, 0.26, 0.20]))
    size = float(rng.uniform(0.36, 0.6))
    aspect, param, lying = (1.0, 1.0, 1.0), 0.0, False
    if shape == "box":
        aspect = tuple(float(a) for a in rng.uniform(0.7, 1.3, 3))
    elif shape == "cylinder":
        aspect = (1.0, 1.0, float(rng.uniform(0.6, 1.5)))
        lying = bool(rng.random() < 0.25)
    elif shape == "capsule":
        size *= 0.8
        param = float(rng.uniform(0.5, 1.2))
        lying = bool(rng.random() < 0.35)
    elif shape == "torus":
        param = float(rng.uniform(0.28, 0.45))
        lying = bool(rng.random() < 0.6)  # "lying" here means the ring stands upright
    if motion == "shrink":
        size *= 1.3
    if motion == "spin" and pattern == "solid" and shape != "box":
        pattern = "striped"  # a plain round shape spinning about its axis would look still
    frequency = float(rng.choice([6, 8, 10])) if shape != "box" else float(rng.choice([1.0, 1.5, 2.0]))
    amount, cycles = 0.0, 1.0
    if motion == "bounce":
        amount, cycles = float(rng.uniform(0.6, 1.2)), float(rng.choice([1.0, 1.5, 2.0]))
    elif motion in ("slide", "roll"):
        amount = float(rng.uniform(1.5, 2.4))
    elif motion == "orbit":
        amount = float(rng.uniform(2.2, 4.2)) * float(rng.choice([-1, 1]))
    elif motion == "spin":
        amount = float(rng.uniform(0.3, 0.7)) * float(rng.choice([-1, 1]))
    elif motion == "grow":
        amount = float(rng.uniform(1.5, 1.9))
    elif motion == "shrink":
        amount = float(rng.uniform(0.4, 0.6))
    elif motion == "wobble":
        amount, cycles = float(rng.uniform(0.25, 0.4)), float(rng.choice([1.0, 1.5, 2.0]))
    return ObjectSpec(
        shape=shape, color=color, rgb=_jitter(rng, COLORS[color]), rgb2=(0.0, 0.0, 0.0),
        pattern=pattern, frequency=frequency, size=size, aspect=aspect, param=param, lying=lying,
        position=(0.0, 0.0), yaw=float(rng.uniform(0, 2 * math.pi)), motion=motion,
        amount=amount, cycles=cycles, heading=float(rng.uniform(0, 2 * math.pi)),
    )


_PATH_U = np.linspace(0.0, 1.0, 17)


def _place(rng: np.random.Generator, objs: list[ObjectSpec]) -> list[ObjectSpec]:
    """Positions without collisions along the motion paths; objects that find no room are
    dropped (object 0, the subject, is placed first and always kept). Candidate positions are
    drawn 64 at a time and tested together; the first that fits wins."""
    placed: list[ObjectSpec] = []
    objs = list(objs)
    if objs[0].motion == "orbit":  # the subject circles object 1
        centre = tuple(float(c) for c in rng.uniform(-0.4, 0.4, 2))
        hub = dataclasses.replace(objs[1], position=centre)
        radius = footprint_radius(objs[0]) + footprint_radius(hub) + float(rng.uniform(0.2, 0.5))
        radius = min(radius, STAGE_RADIUS - 0.3)
        placed = [dataclasses.replace(objs[0], position=centre, radius=radius), hub]
        objs = objs[2:]
    paths = [_floor_xy(p, _PATH_U) for p in placed]  # each [U, 2]
    radii = [footprint_radius(p) for p in placed]
    for o in objs:
        r = footprint_radius(o)
        rel = _floor_xy(dataclasses.replace(o, position=(0.0, 0.0)), _PATH_U)  # [U, 2]
        reach = STAGE_RADIUS - (0.5 * o.amount if o.motion in ("slide", "roll") else 0.0)
        xy = rng.uniform(-1, 1, (64, 2)) * max(reach, 0.2)  # [C, 2]
        cand = xy[:, None] + rel  # [C, U, 2]
        ok = np.linalg.norm(cand, axis=-1).max(-1) + 0.5 * r <= STAGE_RADIUS + 0.4
        for path, rp in zip(paths, radii):
            ok &= np.linalg.norm(cand - path, axis=-1).min(-1) >= r + rp + 0.15
        hits = np.nonzero(ok)[0]
        if len(hits):
            c = xy[hits[0]]
            placed.append(dataclasses.replace(o, position=(float(c[0]), float(c[1]))))
            paths.append(cand[hits[0]])
            radii.append(r)
    return placed


def _fit_camera(spec: SceneSpec) -> CameraPath:
    """Dolly ``spec.camera`` out until every object's bounding sphere stays in frame (at a
    16:9 reference aspect) along the whole path and over the whole clip."""
    cam = spec.camera
    fx = 0.5 / math.tan(cam.fov_x / 2)  # normalised: x in [-0.5, 0.5]
    half_y = 0.5 / REFERENCE_ASPECT
    centres, _, _ = object_poses(spec, np.linspace(0, 1, 9))  # [U, K, 3]
    radii = np.array([bounding_radius(o) for o in spec.objects]) * 0.6
    for _ in range(12):
        vms = look_at(camera_eyes(cam, np.linspace(0, 1, 5)), np.asarray(cam.target))
        pc = np.einsum("vij,ukj->vuki", vms[:, :3, :3], centres) + vms[:, None, None, :3, 3]
        z = np.maximum(pc[..., 2], 1e-3)
        rx = np.abs(pc[..., 0]) / z * fx + radii / z * fx
        ry = np.abs(pc[..., 1]) / z * fx + 1.4 * radii / z * fx  # cut at the top or bottom looks worse
        if rx.max() <= 0.5 and ry.max() <= half_y and z.min() > 1.0:
            break
        cam = dataclasses.replace(cam, distance0=cam.distance0 * 1.08, distance1=cam.distance1 * 1.08)
    return cam


def sample_scene(seed: int) -> SceneSpec:
    """The scene with identity ``seed`` (deterministic on every machine, at every grid size)."""
    rng = np.random.default_rng(int(seed))
    n = int(rng.integers(2, 6))
    objs = [_sample_object(rng, _SUBJECT_MOTIONS)] + [_sample_object(rng, _OTHER_MOTIONS) for _ in range(n - 1)]
    shrink = 1.0 - 0.07 * (n - 2)  # more objects, smaller objects: they must fit on the stage
    objs = [dataclasses.replace(o, size=o.size * shrink) for o in objs]
    objs = [dataclasses.replace(o, rgb2=_second_color(rng, o.color, o.rgb)) for o in objs]
    objs = _place(rng, objs)
    while len(objs) < 2:  # never happens with these sizes, but keep the 2..5 promise
        extra = dataclasses.replace(_sample_object(rng, ("static",)), size=0.3)
        objs = _place(rng, objs + [extra])

    floor_color = str(rng.choice(list(FLOOR_COLORS)))
    floor_pattern = str(rng.choice(["checker", "striped", "noise", "solid"], p=[0.42, 0.16, 0.24, 0.18]))
    floor_rgb = _jitter(rng, FLOOR_COLORS[floor_color], 0.03)
    if rng.random() < 0.5:
        floor_rgb2 = tuple(float(c) for c in np.asarray(floor_rgb) * rng.uniform(0.55, 0.72))
    else:
        floor_rgb2 = tuple(float(c) for c in np.asarray(floor_rgb) * 0.55 + 0.45 * rng.uniform(0.85, 1.0))
    sky = str(rng.choice(list(SKIES), p=[0.5, 0.2, 0.15, 0.15]))
    zenith, horizon, sun_rgb = (_jitter(rng, c, 0.025) for c in SKIES[sky])
    sun_az, sun_el = rng.uniform(0, 2 * math.pi), rng.uniform(math.radians(30), math.radians(60))
    sun_dir = (math.cos(sun_el) * math.cos(sun_az), math.cos(sun_el) * math.sin(sun_az), math.sin(sun_el))

    arc = math.radians(rng.uniform(20, 120)) * float(rng.choice([-1, 1]))
    el0 = math.radians(rng.uniform(8, 38))
    el1 = float(np.clip(el0 + math.radians(rng.uniform(-15, 15)), math.radians(6), math.radians(45)))
    d0 = float(rng.uniform(4.2, 5.4))
    azimuth = float(rng.uniform(0, 2 * math.pi))
    if objs[0].motion in ("slide", "roll"):  # the first camera sees the subject slide past, not towards it
        azimuth = objs[0].heading + math.pi / 2 * float(rng.choice([-1, 1])) + float(rng.uniform(-0.6, 0.6))
    cam = CameraPath(
        azimuth=azimuth, arc=arc, elevation0=el0, elevation1=el1,
        distance0=d0, distance1=d0 * float(rng.uniform(0.75, 1.25)), fov_x=math.radians(rng.uniform(50, 62)),
        target=(0.0, 0.0, float(rng.uniform(0.35, 0.6))),
    )
    spec = SceneSpec(
        seed=int(seed), objects=tuple(objs), floor_color=floor_color, floor_rgb=floor_rgb,
        floor_rgb2=floor_rgb2, floor_pattern=floor_pattern, floor_cell=float(rng.uniform(0.45, 0.9)),
        floor_angle=float(rng.uniform(0, math.pi)), sky=sky, sky_zenith=zenith, sky_horizon=horizon,
        sun_rgb=sun_rgb, sun_dir=sun_dir, ambient=float(rng.uniform(0.28, 0.4)), camera=cam,
    )
    # Look at the middle of where the objects go, then dolly out until all of them stay in frame.
    paths = np.concatenate([_floor_xy(o, _PATH_U) for o in spec.objects])
    mid = 0.5 * (paths.min(0) + paths.max(0))
    cam = dataclasses.replace(cam, target=(float(mid[0]), float(mid[1]), cam.target[2]))
    spec = dataclasses.replace(spec, camera=cam)
    spec = dataclasses.replace(spec, camera=_fit_camera(spec))
    return dataclasses.replace(spec, caption=scene_caption(spec))


def scene_caption(spec: SceneSpec) -> str:
    """The caption of ``spec`` (a pure function of the spec; see ``captions``)."""
    objs = [(o.color, o.pattern, o.shape, o.motion) for o in spec.objects]
    return make_caption(objs, (spec.floor_color, spec.floor_pattern), spec.sky)
