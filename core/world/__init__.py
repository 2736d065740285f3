"""The synthetic 4D world: seeded procedural scenes rendered by a pure-torch ray caster into
ground-truth grids (frames, depth, cameras, caption), pseudo-4D grids from ordinary videos, and
batched training data.

    spec = sample_scene(seed)                                   # a SceneSpec; seed = identity
    gt = render_scene(spec, views=8, times=8, height=72, width=128)
    gt.frames  # uint8 [V, T, H, W, 3]; gt.depth, gt.viewmats, gt.Ks, gt.caption

Modules: ``scenes`` (specs, sampler, motion, camera paths), ``render`` (the ray caster),
``captions`` (grammar and VOCABULARY), ``split`` (train / eval seeds), ``pseudo4d``,
``dataset`` (GridBatches, VideoBatches), ``examples`` (the studio's example inputs),
``bench`` (throughput). What it does not own: video files (core.video, core.export) and run
folders (core.runfolder).
"""

from .captions import VOCABULARY, make_caption
from .dataset import GridBatches, VideoBatches
from .pseudo4d import pseudo4d_batch, pseudo4d_grid, pseudo4d_homographies
from .render import FrameBatch, SceneRender, pack_frames, render_frames, render_grids, render_scene
from .scenes import WORLD_VERSION, CameraPath, ObjectSpec, SceneSpec, camera_viewmats, intrinsics, object_poses, sample_scene, scene_caption
from .split import EVAL_SEEDS, TRAIN_SEEDS, eval_seeds, is_eval_seed, is_train_seed, split_of

__all__ = [
    "VOCABULARY", "make_caption", "GridBatches", "VideoBatches", "pseudo4d_batch", "pseudo4d_grid",
    "pseudo4d_homographies", "FrameBatch", "SceneRender", "pack_frames", "render_frames", "render_grids",
    "render_scene", "CameraPath", "ObjectSpec", "SceneSpec", "camera_viewmats", "intrinsics", "object_poses",
    "sample_scene", "scene_caption", "EVAL_SEEDS", "TRAIN_SEEDS", "eval_seeds", "is_eval_seed", "is_train_seed",
    "split_of", "WORLD_VERSION",
]
