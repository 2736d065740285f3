"""The evaluation of ``launch.py eval``: generated grids against the ground truth of evaluation
scenes (never seen in training), per stream mode, beside the copy baselines.

Rows of the table (each over the same scenes, given row 0 + column 0 unless said otherwise):
- ``copy_column0`` / ``copy_row0``: the baselines (no model);
- ``copy_cell0``: the baseline of image to 4D (only cell (0, 0) known, copied everywhere), in the
  table just before the ``image-to-4D`` row when that row is asked for;
- ``sequential``, ``parallel hard``, ``parallel soft untrained``, ``parallel soft trained``,
  ``fused``: the model in each mode. The default model is trained in one mode (its training
  record says which); the other modes reuse its weights, with their own new layers as they are
  in the folder (``parallel soft untrained`` resets the soft sync layers to the training-free
  weighted average);
- ``image-to-4D`` (only cell (0, 0) known) and ``text-to-4D`` (nothing known: no pixel ground
  truth, so only the consistency figure);
- ``ground truth``: the consistency figure of the real grids, the bar for every other row.
PSNR/SSIM are over unknown cells; consistency is ``consistency.epipolar_consistency`` over
columns 1..T-1 (the same columns for every row, ground truth included).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..grid import dense_every, dense_size, known_mask
from .baselines import BASELINES, IMAGE_BASELINE, baseline
from .consistency import epipolar_consistency
from .metrics import psnr_unknown, psnr_unknown_regions, ssim_unknown

ROWS = ("sequential", "parallel hard", "parallel soft untrained", "parallel soft trained", "fused")
EXTRA_ROWS = ("image-to-4D", "text-to-4D")
ROW_MODE = {"sequential": "sequential", "parallel hard": "hard", "parallel soft untrained": "soft",
            "parallel soft trained": "soft", "fused": "fused", "image-to-4D": None, "text-to-4D": None}
ROW_MASK = {"image-to-4D": "cell0", "text-to-4D": "none"}


@dataclass
class EvalScene:
    seed: int
    frames: np.ndarray  # uint8 [V, T, H, W, 3], ground truth
    caption: str


def render_eval_scenes(n: int, views: int, times: int, height: int, width: int, device="cpu") -> list[EvalScene]:
    """The first ``n`` evaluation seeds, rendered as the training data is."""
    from ..world import render_scene, sample_scene
    from ..world.split import eval_seeds

    out = []
    for seed in eval_seeds(n):
        r = render_scene(sample_scene(seed), views, times, height, width, device=device)
        out.append(EvalScene(seed, r.frames, r.caption))
    return out


def region_means(regions: list) -> dict:
    """Means over scenes of ``psnr_unknown_regions``' (changing, static) pairs, skipping empty regions."""
    out = {}
    for i, key in enumerate(("psnr_changing", "psnr_static")):
        vals = [r[i] for r in regions if r[i] is not None]
        out[key] = float(np.mean(vals)) if vals else None
    return out


def baseline_scores(scenes: list[EvalScene], mask_kind: str = "row0+col0", consistency: bool = False,
                    names: tuple = BASELINES) -> dict:
    """name -> {"psnr", "ssim", "psnr_per_scene"[, "consistency"]} means over scenes."""
    res = {}
    for name in names:
        ps, ss, cons, regions = [], [], [], []
        for sc in scenes:
            known = known_mask(sc.frames.shape[0], sc.frames.shape[1], mask_kind)
            pred = baseline(name, sc.frames, known)
            ps.append(psnr_unknown(pred, sc.frames, known))
            ss.append(ssim_unknown(pred, sc.frames, known))
            regions.append(psnr_unknown_regions(pred, sc.frames, known))
            if consistency:
                cons.append(epipolar_consistency(pred, times=consistency_times(pred.shape[1])))
        res[name] = {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "psnr_per_scene": ps,
                     **region_means(regions)}
        if consistency:
            res[name]["consistency"] = pooled(cons)
    return res


def consistency_times(T: int) -> list[int]:
    """The columns the consistency figure looks at: all but column 0 (an input) when T > 1."""
    return list(range(1, T)) if T > 1 else [0]


def pooled(cons) -> float:
    """Inlier share pooled over grids (percent), nan when nothing matched."""
    m = sum(c.matches for c in cons)
    return 100.0 * sum(c.inliers for c in cons) / m if m else float("nan")


def untrained_soft(model):
    """A copy of ``model`` whose soft sync layers are back at the training-free weighted average."""
    from ..model.transformer import FourDTransformer

    m = copy.copy(model)
    tr = copy.deepcopy(model.transformer)
    fresh = FourDTransformer.new_layers_for(tr.backbone, model.config, tr.mask_channels)
    tr.layers.soft_sync.load_state_dict(fresh.soft_sync.state_dict())
    tr.to(model.device)
    tr.cast(model.dtype)
    m.transformer = tr
    return m


def score_scenes(model, scenes: list[EvalScene], mask_kind: str, steps: int, mode: str,
                 guidance: float | None = None, consistency: bool = False, keep_first: bool = False,
                 should_cancel=None, shift: float | None = None, every: tuple[int, int] = (1, 1)) -> dict:
    """Generate each scene's grid from its known cells and score it against the ground truth.
    ``every`` = (kv, kt): the scenes are the denser grids of ``Engine.generate``'s dense sampling,
    and only their every kv-th view and kt-th time is scored."""
    from ..cpumem import keep_freed_memory
    from ..model.codec import frames_to_model
    from ..sampler import SampleSettings, sample_grid, to_uint8

    if model.device.type == "cpu":
        keep_freed_memory()
    ps, ss, cons, secs, regions = [], [], [], [], []
    first = None
    for k, sc in enumerate(scenes):
        V, T = sc.frames.shape[:2]
        known = known_mask(V, T, mask_kind)
        x = frames_to_model(sc.frames)[0]  # [V, T, 3, H, W]
        s = SampleSettings(steps=steps, guidance=model.config.guidance if guidance is None else guidance,
                           seed=k, mode=mode, preview_every=0, shift=shift)
        t = time.perf_counter()
        y = sample_grid(model, x, torch.from_numpy(known), sc.caption, s, should_cancel=should_cancel)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        secs.append(time.perf_counter() - t)
        gen = to_uint8(y)
        gen[known] = sc.frames[known]
        truth = sc.frames
        if every != (1, 1):
            gen, truth, known = gen[::every[0], ::every[1]], truth[::every[0], ::every[1]], known[::every[0], ::every[1]]
            T = truth.shape[1]
        if keep_first and first is None:
            first = gen
        if known.all():
            continue
        if mask_kind != "none":
            ps.append(psnr_unknown(gen, truth, known))
            ss.append(ssim_unknown(gen, truth, known))
            regions.append(psnr_unknown_regions(gen, truth, known))
        if consistency:
            cons.append(epipolar_consistency(gen, times=consistency_times(T)))
    out = {"psnr": float(np.mean(ps)) if ps else None, "ssim": float(np.mean(ss)) if ss else None,
           "seconds": float(np.mean(secs)), "psnr_per_scene": ps, "first": first, **region_means(regions)}
    if consistency:
        out["consistency"] = pooled(cons)
    return out


@dataclass
class EvalSettings:
    model: str = "default"
    seeds: int = 16
    views: int = 8
    times: int = 8
    height: int = 72
    width: int = 128
    steps: int = 25
    rows: tuple = ROWS + EXTRA_ROWS
    device: str = "auto"
    precision: str = "auto"  # Engine's: auto, fp32 or bf16
    guidance: float | None = None
    shift: float | None = None  # the noise schedule's time shift (None: the model's)
    consistency: bool = True
    dense: bool = True  # a grid smaller than the model's sampled densely, as ``Engine.generate`` does
    extra: dict = field(default_factory=dict)


def evaluate(es: EvalSettings, log=print, should_cancel=None) -> dict:
    """Run the table; returns the JSON-ready result (``rows`` in table order)."""
    from ..engine import Engine

    # 1. The model, as the studio and the command line load it
    if es.consistency:
        try:
            import cv2  # noqa: F401
        except ImportError:
            log("warning: OpenCV (cv2) is not installed: no consistency figure")
            es.consistency = False
    eng = Engine(es.model, es.device, precision=es.precision)
    model = eng.load()
    dev = model.device
    # 2. Ground truth of the evaluation scenes (rendered at the denser grid when it is sampled
    # densely: the world spaces views and times evenly whatever their number, so the asked grid
    # is its every kv-th view and kt-th time)
    every = dense_every(es.views, es.times, model.config) if es.dense else (1, 1)
    t0 = time.perf_counter()
    dense = render_eval_scenes(es.seeds, dense_size(es.views, every[0]), dense_size(es.times, every[1]),
                               es.height, es.width, device=dev)
    scenes = [EvalScene(sc.seed, np.ascontiguousarray(sc.frames[::every[0], ::every[1]]), sc.caption) for sc in dense]
    log(f"rendered {len(scenes)} evaluation scenes in {time.perf_counter() - t0:.1f} s"
        + (f" (sampled as {dense[0].frames.shape[0]} x {dense[0].frames.shape[1]})" if every != (1, 1) else ""))
    rows = []
    gt_cons = (pooled([epipolar_consistency(sc.frames, times=consistency_times(es.times)) for sc in scenes])
               if es.consistency else None)
    rows.append({"row": "ground truth", "psnr": None, "ssim": None, "consistency": gt_cons, "seconds": None})
    # 3. Baselines
    for name, r in baseline_scores(scenes, "row0+col0", consistency=es.consistency).items():
        rows.append({"row": name, **r, "seconds": 0.0})
        log(f"{name}: PSNR {r['psnr']:.2f} dB")
    # 4. The model in each mode, then image- and text-to-4D
    trained_mode = model.config.mode
    trained = trained_modes(eng.path)
    for row in es.rows:
        if row == "image-to-4D":
            # Its own bar: the one given image copied into every cell (views identical: no consistency)
            r = baseline_scores(scenes, ROW_MASK[row], names=(IMAGE_BASELINE,))[IMAGE_BASELINE]
            rows.append({"row": IMAGE_BASELINE, "mask": ROW_MASK[row], **r, "seconds": 0.0})
            log(f"{IMAGE_BASELINE} (image to 4D's baseline): PSNR {r['psnr']:.2f} dB")
        mode = ROW_MODE[row] or trained_mode
        m = untrained_soft(model) if row == "parallel soft untrained" else model
        r = score_scenes(m, dense, ROW_MASK.get(row, "row0+col0"), es.steps, mode, guidance=es.guidance,
                         consistency=es.consistency, should_cancel=should_cancel, shift=es.shift, every=every)
        r.pop("first")
        was = None if trained is None else (mode in trained and row != "parallel soft untrained")
        rows.append({"row": row, "mode": mode, "trained_in_mode": was, **r})
        log(f"{row}: PSNR {r['psnr'] if r['psnr'] is None else round(r['psnr'], 2)} dB, "
            f"{r['seconds']:.2f} s a grid")
    return {"model": es.model, "model_info": eng.info(), "device": str(dev),
            "trained_modes": sorted(trained) if trained is not None else None,
            "training": training_facts(eng.path),
            "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
            "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in es.__dict__.items()},
            "shift": model.config.shift if es.shift is None else es.shift,
            "seeds": [sc.seed for sc in scenes], "rows": rows}


def training_facts(model_dir) -> dict | None:
    """Step, samples and minutes of training behind a model folder (``training.json``), or None."""
    import json
    from pathlib import Path

    p = Path(model_dir) / "training.json"
    if not p.is_file():
        return None
    rec = json.loads(p.read_text())
    return {"step": rec.get("step"), "samples": rec.get("samples"), "train_minutes": rec.get("train_minutes"),
            "sessions": [{"device": s.get("gpu") or s.get("device"), "minutes": s.get("minutes"),
                          "steps": (s.get("end_step") or 0) - (s.get("start_step") or 0)}
                         for s in rec.get("sessions", [])]}


def trained_modes(model_dir) -> set[str] | None:
    """The stream modes a model folder was trained in (from its ``training.json``), or None."""
    import json
    from pathlib import Path

    p = Path(model_dir) / "training.json"
    if not p.is_file():
        return None
    modes = set()
    for sess in json.loads(p.read_text()).get("sessions", []):
        modes.update(m.strip() for m in str(sess.get("config", {}).get("mode", "")).split(",") if m.strip())
    return modes


def format_table(result: dict) -> str:
    """A markdown table of ``evaluate``'s result."""
    lines = ["| row | PSNR (dB) | PSNR where it changes / static | SSIM | consistency (% inliers) | s / grid "
             "| trained in this mode |",
             "|---|---|---|---|---|---|---|"]

    def f(x, fmt):
        return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, fmt)

    for r in result["rows"]:
        lines.append(f"| {r['row']} | {f(r.get('psnr'), '.2f')} | "
                     f"{f(r.get('psnr_changing'), '.2f')} / {f(r.get('psnr_static'), '.2f')} | {f(r.get('ssim'), '.3f')} | "
                     f"{f(r.get('consistency'), '.1f')} | {f(r.get('seconds'), '.2f')} | "
                     f"{ {True: 'yes', False: 'no', None: '–'}[r.get('trained_in_mode')] } |")
    return "\n".join(lines)
