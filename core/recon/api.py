"""``reconstruct_run``: a run folder's grid -> cameras, deformable Gaussians, ``splats/`` and ``recon.json``.

This is the one entry point the CLI, the studio and the benchmark call. It owns the I/O; the
camera estimate (``cameras``), the model (``model``) and the loop (``fit``) know nothing of files.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from ..errors import InputError
from .cameras import (USUAL_FOV_DEG, CameraEstimate, SfMConfig, affine_fallback_config, estimate_cameras,
                      heldout_error, heldout_matches, off_orbit_warnings, unusual_fov_warnings)
from .checks import check_fov, check_grid_for_recon
from .fit import FitConfig, build_model, fit, preset_for, render_all
from .metrics import camera_errors, psnr
from .ply import write_splat_ply

HOLDOUT_SEED = 20250611  # fixed: the same grid size always holds out the same cells


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; asking for CUDA without one is an InputError."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("device 'cuda' was asked for but no CUDA device is available; use --device cpu or auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise InputError(f"unknown device {name!r}; allowed: auto, cpu, cuda")


def choose_holdout(V: int, T: int, n: int) -> list[tuple[int, int]]:
    """``n`` cells to hold out, chosen deterministically and never (0, 0).

    Interior cells (neither row 0 nor column 0: those are a generator's inputs) come first, spread
    so that held-out cells share no row or column while that is possible; each view keeps at
    least one training cell.
    """
    if n < 0:
        raise InputError(f"holdout must be 0 or more cells, got {n}")
    limit = V * T - V if T > 1 else 0
    limit = min(limit, V * T - 1)
    if n > limit:
        raise InputError(f"holdout {n} leaves a view with no cell to fit; allowed 0..{limit} for a {V}x{T} grid")
    if n == 0:
        return []
    rng = np.random.default_rng(HOLDOUT_SEED)
    interior = [(v, t) for v in range(1, V) for t in range(1, T)]
    edge = [(v, 0) for v in range(1, V)] + [(0, t) for t in range(1, T)]
    cands = [tuple(interior[i]) for i in rng.permutation(len(interior))] + \
            [tuple(edge[i]) for i in rng.permutation(len(edge))]
    chosen: list[tuple[int, int]] = []
    used_v, used_t = set(), set()
    for c in cands:  # first pass: distinct rows and columns
        if len(chosen) == n:
            break
        if c[0] not in used_v and c[1] not in used_t:
            chosen.append(c)
            used_v.add(c[0])
            used_t.add(c[1])
    left = {v: T for v in range(V)}
    for c in chosen:
        left[c[0]] -= 1
    for c in cands:  # then the rest, keeping a cell per view
        if len(chosen) == n:
            break
        if c not in chosen and left[c[0]] > 1:
            chosen.append(c)
            left[c[0]] -= 1
    return sorted(chosen)


def holdout_mask(V: int, T: int, holdout: int | Iterable | None) -> np.ndarray:
    """bool [V, T]: True for cells held out of the fit."""
    mask = np.zeros((V, T), bool)
    if holdout is None:
        return mask
    if isinstance(holdout, (int, np.integer)):
        cells = choose_holdout(V, T, int(holdout))
    else:
        cells = [tuple(int(x) for x in c) for c in holdout]
    for c in cells:
        if len(c) != 2 or not (0 <= c[0] < V and 0 <= c[1] < T):
            raise InputError(f"held-out cell {c} is outside the {V}x{T} grid")
        mask[c] = True
    empty = [v for v in range(V) if mask[v].all()]
    if empty:
        raise InputError(f"holdout leaves view {empty[0]} with no cell to fit; keep at least one cell per view")
    return mask


def camera_images(frames: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """One frame per view for the camera estimate: column 0 (the frozen orbit) where it is in the
    training set, else that view's earliest training cell. Returns (images [V,H,W,3], times used)."""
    V = frames.shape[0]
    ts = [0 if train[v, 0] else int(np.nonzero(train[v])[0][0]) for v in range(V)]
    return np.stack([frames[v, t] for v, t in enumerate(ts)]), ts


def grid_cameras(frames: np.ndarray, train: np.ndarray, cfg: SfMConfig,
                 log: Callable[[str], None] | None = None):
    """The grid's cameras from its training cells. Only the whole grid's pooled matches when
    ``cfg.whole_grid``; else, with several time columns and ``cfg.whole_grid_first``, the whole
    grid first and column 0 (one frame per view, ``camera_images``) only when the whole grid
    could not place every view; else column 0 first and, with ``cfg.choose_heldout`` and every
    view placed, the whole grid too and the better of the two on held-out matches
    (``choose_by_heldout``), and with ``cfg.whole_grid_fallback`` the whole grid when column 0
    could not place every view (or placed some only by guided registration). Of two estimates the
    one that places more views wins, then the one with fewer placed by guided registration (a tie:
    the first). Returns (estimate, times used per view or None, whether
    the whole grid was used, warnings)."""
    V, T = frames.shape[:2]
    warnings: list[str] = []

    @functools.cache
    def whole():
        # every time column is a frozen multi-view snapshot with the same cameras: match within
        # each (training cells only) and pool the matches; made at most once
        return estimate_cameras(frames, replace(cfg, whole_grid=True), log=log, usable=train)

    if cfg.whole_grid:
        return whole(), None, True, warnings
    images, cam_times = camera_images(frames, train)
    col0_note = ("cameras of views " + ", ".join(str(v) for v, t in enumerate(cam_times) if t) +
                 " were estimated from a later time (their column-0 cell is held out)") if any(cam_times) else None
    if T > 1 and cfg.whole_grid_first:
        pooled = whole()
        if pooled.n_registered == V:
            return pooled, None, True, warnings
        if log:
            log(f"the whole grid placed {pooled.n_registered} of {V} views from features; trying column 0 alone")
        est = estimate_cameras(images, cfg, log=log)
        if est.n_registered > pooled.n_registered:
            warnings.append(f"the whole grid placed only {pooled.n_registered} of {V} views; the cameras come "
                            "from column 0 alone")
            return est, cam_times, False, warnings + ([col0_note] if col0_note else [])
        return pooled, None, True, warnings
    warnings += [col0_note] if col0_note else []
    affine_on = cfg.affine_fallback > 1 and cfg.affine_max_tilt <= 1
    tried: list[str] = []  # what the affine features did when they were tried and not kept

    def affine():
        # column 0 again with affine-simulated features (floors seen at grazing angles,
        # ``cameras.affine_fallback_config``); None unless they place every view by ordinary
        # registration
        if log:
            log("trying affine-simulated features on column 0")
        est_a = estimate_cameras(images, affine_fallback_config(cfg), log=log)
        if log:
            log(f"affine features: {est_a.n_registered} of {V} views placed ({est_a.n_guided} by guided registration)")
        if est_a.n_registered == V and est_a.n_guided == 0:
            return corners_only(est_a)
        tried.append(f"affine-simulated features on column 0 placed only {est_a.n_registered - est_a.n_guided} "
                     f"of {V} views by ordinary registration (not used)")
        return None

    def corners_only(est_a: CameraEstimate) -> CameraEstimate:
        # the affine features again without the keypoints on edges, kept when they place every
        # view as well and fit clearly better (``SfMConfig.affine_fallback_cornerness``)
        if cfg.affine_fallback_cornerness <= 0:
            return est_a
        est_c = estimate_cameras(images, affine_fallback_config(cfg, corners_only=True), log=log)
        better = (est_c.n_registered == V and est_c.n_guided == 0
                  and est_c.reproj_px < cfg.affine_cornerness_rms_ratio * est_a.reproj_px)
        if log:
            log(f"affine features without edge keypoints: {est_c.n_registered} of {V} views placed, rms "
                f"{est_c.reproj_px:.3f} px against {est_a.reproj_px:.3f}" + (" (used)" if better else " (not used)"))
        return est_c if better else est_a

    def fov_disagreement(kept_est: CameraEstimate, other: CameraEstimate, used: str = "the whole grid's is used"
                         ) -> list[str]:
        # the two estimates' focal lengths far apart: the cameras may be several degrees off
        if cfg.fov_cross_check is None or abs(kept_est.fov_x_deg - other.fov_x_deg) <= cfg.fov_cross_check:
            return []
        return [f"column 0 and the whole grid disagree on the field of view ({other.fov_x_deg:.1f} against "
                f"{kept_est.fov_x_deg:.1f} deg; {used}): the cameras may be several degrees "
                "off; give the field of view if it is known (reconstruct --fov)"]

    def moved(e: CameraEstimate) -> bool:
        # the later rounds (guided matching, guided registration, orbit repair) pulled the focal
        # length far from the first fit: the affine features are tried (1000000015's whole grid)
        shift = abs(e.fov_x_deg - e.fov_first_deg)
        if log and np.isfinite(shift):
            log(f"affine check: field of view {e.fov_first_deg:.1f} -> {e.fov_x_deg:.1f} deg in the later rounds")
        return affine_on and cfg.affine_fallback_fov_shift is not None and bool(shift > cfg.affine_fallback_fov_shift)

    def kept(e: CameraEstimate, result):
        # ``result`` unless ``e`` moved its focal length and the affine features place every view
        if moved(e):
            est_a = affine()
            if est_a is not None:
                note = (f"the cameras' field of view moved {abs(e.fov_x_deg - e.fov_first_deg):.1f} deg after their "
                        "first fit; they come from column 0 with affine-simulated features")
                return est_a, cam_times, False, warnings + [note]  # warnings: the column-0 note alone here
        return (*result[:3], result[3] + tried)

    est = estimate_cameras(images, cfg, log=log)
    # column 0 is complete when ordinary registration placed every view; views it could place only
    # by guided registration (``cameras._register_guided``) send it to the whole grid as well, and
    # of two estimates placing as many views the one with fewer guided views wins. (Column 0 kept
    # with guided views lost 1000000001, 04 and 17, where the whole grid passes.)
    complete = est.n_registered == V and est.n_guided == 0
    if cfg.choose_heldout and complete and T > 1:
        chosen = choose_by_heldout(frames, train, est, whole, cfg, log=log)
        if chosen is not None and chosen is not est:
            # the column-0 note is moot: no later time was used for it
            return kept(chosen, (chosen, None, True, fov_disagreement(chosen, est)))
    if complete and T > 1 and cfg.fov_cross_check is not None and cfg.fov_x_deg is None:
        pooled = whole()
        if pooled.n_registered == V and pooled.n_guided == 0:
            if log:
                log(f"field of view cross-check: column 0 {est.fov_x_deg:.1f} deg, whole grid {pooled.fov_x_deg:.1f} deg")
            notes = fov_disagreement(pooled, est)
            lo, hi = USUAL_FOV_DEG
            if notes and not lo <= pooled.fov_x_deg <= hi and lo <= est.fov_x_deg <= hi:
                # the whole grid's field of view is itself implausible: column 0 stays (1000000059
                # with the flow check: the whole grid's first fit 8.8 deg, then 5.8, 68.6 deg off)
                warnings += fov_disagreement(pooled, est, f"column 0's is used, the other is outside the {lo:g}-{hi:g} "
                                             "deg of most video cameras")
            elif notes:
                return kept(pooled, (pooled, None, True, notes))
    if complete:
        return kept(est, (est, cam_times, False, warnings))
    pooled = None
    if cfg.whole_grid_fallback and T > 1:
        if log:
            log(f"column 0 placed {est.n_registered} of {V} views from features ({est.n_guided} by guided "
                "registration); trying the whole grid")
        pooled = whole()
        if pooled.n_registered == V and pooled.n_guided == 0:
            return kept(pooled, (pooled, None, True, warnings + [_pooled_note(est, V)]))
    if affine_on:
        # neither column 0 nor the whole grid placed every view by ordinary registration: the
        # affine features, kept when they place every view that way (1000000014, 19: 8.3 / 5.3
        # deg -> 1.1 / 1.2). Not held against a whole grid that places every view: held-out
        # matches on checker floors (median 37 px) chose them on 1000000004, 3.4 deg where the
        # whole grid passes
        est_a = affine()
        if est_a is not None:
            return est_a, cam_times, False, warnings + ["column 0 placed every view only with affine-simulated features"]
    if pooled is not None and (pooled.n_registered, -pooled.n_guided) > (est.n_registered, -est.n_guided):
        return pooled, None, True, warnings + [_pooled_note(est, V)] + tried
    return est, cam_times, False, warnings + tried


def _pooled_note(col0: CameraEstimate, V: int) -> str:
    return (f"column 0 placed only {col0.n_registered - col0.n_guided} of {V} views by ordinary registration; "
            "the cameras come from matches pooled over the whole grid")


def choose_by_heldout(frames: np.ndarray, train: np.ndarray, col0: CameraEstimate,
                      whole: Callable[[], CameraEstimate], cfg: SfMConfig,
                      log: Callable[[str], None] | None = None) -> CameraEstimate | None:
    """Of column 0's estimate ``col0`` (every view placed) and the whole grid's (``whole()``,
    computed here only when there is held-out evidence), the one whose cameras fit held-out
    matches better (lower ``heldout_error``: matches between views further apart than
    ``cfg.pair_window`` in columns 1.., which neither estimate was fitted to). None when there
    are no such matches or the whole grid does not place every view (the caller keeps its rule)."""
    V = frames.shape[0]
    matches = heldout_matches(frames, train, cfg)
    if not matches:
        return None
    pooled = whole()
    if pooled.n_registered < V:
        return None
    e0, ep = heldout_error(matches, col0), heldout_error(matches, pooled)
    if log:
        log(f"held-out matches ({len(matches)} view pairs): column 0 {e0:.3f} px, whole grid {ep:.3f} px")
    if not np.isfinite(e0) or not np.isfinite(ep):
        return None
    return pooled if ep < e0 else col0


def load_gt_cameras(path: str | Path, V: int) -> np.ndarray:
    """Ground-truth viewmats [V, 4, 4] from a synth ``cameras.json`` (for measuring only)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        vms = np.array([v["viewmat"] for v in data["views"]], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"cannot read ground-truth cameras from {path} ({type(e).__name__}: {e})") from None
    if vms.shape != (V, 4, 4):
        raise InputError(f"{path} has cameras of shape {vms.shape}; the grid has {V} views")
    return vms


SETUP_ALLOWANCE_S = 10.0  # cameras + seeding that the CUDA preset's loop budget leaves room for


def loop_budget(budget_s: float, setup_s: float) -> float:
    """The fit loop's time budget after ``setup_s`` seconds of cameras + seeding: what the setup
    took beyond ``SETUP_ALLOWANCE_S`` comes off the preset's budget, down to half of it."""
    return max(0.5 * budget_s, budget_s - max(0.0, setup_s - SETUP_ALLOWANCE_S))


def reconstruct_run(
    run,
    iters: int | None = None,
    holdout=None,
    device: str = "auto",
    on_progress: Callable[[int, int, float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    seed: int = 0,
    *,
    gt_cameras: str | Path | None = None,
    config: FitConfig | None = None,
    sfm: SfMConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Fit deformable Gaussians to the grid of run folder ``run`` and write the results into it.

    Writes ``run/splats/`` (``canonical.ply``, ``frame_XXX.ply`` per time, ``model.safetensors``
    with the deformation weights, ``renders.npz`` of every cell, ``renders.png`` and
    ``compare.png``) - swapped in only when complete, replacing an earlier reconstruction - and
    then ``run/recon.json``, which is also returned.

    Cameras are estimated from the frames only. Ground-truth cameras (``gt_cameras``, or
    ``run/cameras.json`` when present) are read only AFTER the fit, to report
    ``camera_errors`` (of the initial estimate and of the refined cameras).

    ``holdout``: an int n (n cells chosen by ``choose_holdout``) or a list of (v, t) cells the
    fit never sees; their PSNR measures novel-view / novel-time quality. ``iters`` overrides the
    preset's step count; ``config`` replaces the whole preset. Raises InputError for bad grids
    or settings, ``Cancelled`` when ``should_cancel()`` turns true (nothing is written then).
    """
    from ..runfolder import new_subfolder, open_run, write_json

    t_start = time.perf_counter()
    # 1. Check inputs
    run, _manifest, grid = open_run(run)
    frames = grid.frames  # uint8 [V, T, H, W, 3]
    V, T, H, W = frames.shape[:4]
    check_grid_for_recon(frames)
    dev = resolve_device(device)
    cfg = replace(config) if config is not None else preset_for(dev)
    if iters is not None:
        if iters < 1:
            raise InputError(f"iters must be at least 1, got {iters}")
        cfg = replace(cfg, iters=int(iters), time_budget_s=None if config is None else cfg.time_budget_s)
    held = holdout_mask(V, T, holdout)
    train = ~held
    warnings: list[str] = []
    if sfm is not None and sfm.fov_x_deg is not None:
        check_fov(sfm.fov_x_deg)
        cfg = replace(cfg, lr_focal=0.0)  # a known field of view stays as given in the fit too

    # 2. Cameras from the frames (never from ground truth)
    t0 = time.perf_counter()
    sfm_cfg = sfm or SfMConfig()
    est, cam_times, used_grid, cam_warnings = grid_cameras(frames, train, sfm_cfg, log=log)
    warnings += cam_warnings
    warnings += est.warnings + unusual_fov_warnings(est, sfm_cfg) + off_orbit_warnings(est)
    cameras_s = time.perf_counter() - t0
    if should_cancel is not None and should_cancel():
        from ..errors import Cancelled

        raise Cancelled("reconstruction cancelled")

    # 3. Seed and fit
    t0 = time.perf_counter()
    model = build_model(est, frames, train, cfg, dev, seed)
    seed_s = time.perf_counter() - t0
    if cfg.time_budget_s and config is None:
        # The preset's loop budget assumes ~SETUP_ALLOWANCE_S of cameras + seeding (the minute of an
        # 8x8 grid on the H100): a slower camera estimate (e.g. both column 0 and the whole grid,
        # compared on held-out matches) comes out of the loop, not on top of the minute.
        cfg = replace(cfg, time_budget_s=loop_budget(cfg.time_budget_s, cameras_s + seed_s))
    result = fit(model, frames, train, cfg, seed=seed, on_progress=on_progress, should_cancel=should_cancel)
    fit_s = time.perf_counter() - t_start

    # 4. Render every cell and measure
    t1 = time.perf_counter()
    renders = render_all(model, V, T, batch=4 if dev.type == "cuda" else 1, tile_size=cfg.tile_size)
    render_s = time.perf_counter() - t1
    cell_psnr = np.array([[psnr(renders[v, t], frames[v, t]) for t in range(T)] for v in range(V)])
    exported = _export_arrays(model)

    # 5. Write splats/ (atomically swapped in), then recon.json
    t2 = time.perf_counter()
    with new_subfolder(run, "splats", replace=True) as tmp:
        files = _write_splats(tmp, model, exported, renders, frames, held, cell_psnr, cfg)
    write_s = time.perf_counter() - t2

    with torch.no_grad():
        refined = model.camera(torch.arange(V, device=dev)).cpu().double().numpy()
        Ks = model.intrinsics(torch.arange(V, device=dev)).cpu().double().numpy()
    out = {
        "version": 1,
        "status": "done",
        "views": V, "times": T, "height": H, "width": W,
        "device": dev.type,
        "seed": seed,
        "holdout": [[int(v), int(t)] for v, t in np.argwhere(held)],
        "psnr": np.round(cell_psnr, 3).tolist(),
        "psnr_fit_mean": _mean(cell_psnr[train]),
        "psnr_fit_min": _min(cell_psnr[train]),
        "psnr_holdout_mean": _mean(cell_psnr[held]),
        "psnr_holdout_min": _min(cell_psnr[held]),
        "timings": {"cameras_s": round(cameras_s, 3), "seed_s": round(seed_s, 3), "fit_s": round(fit_s, 3), "loop_s": round(result.seconds, 3),
                    "first_step_s": round(result.first_step_s, 3),
                    "render_s": round(render_s, 3), "write_s": round(write_s, 3),
                    "total_s": round(time.perf_counter() - t_start, 3)},
        "fit": {"steps": result.steps, "stopped_by": result.stopped_by, "gaussians": model.num_gaussians,
                "train_psnr_running": round(result.train_psnr, 3), "skipped_steps": result.skipped_steps,
                "history": result.history},
        "settings": asdict(cfg),
        "sfm": {"source": est.source, "fov_x_deg": round(est.fov_x_deg, 3),
                "fov_x_deg_refined": round(float(np.degrees(2 * np.arctan(W / (2 * Ks[0, 0, 0])))), 3), "reproj_px": _num(est.reproj_px),
                "registered_views": est.n_registered, "points": int(len(est.points)),
                "times_used": cam_times, "whole_grid": used_grid, "settings": asdict(sfm or SfMConfig())},
        "cameras": [{"viewmat": refined[v].tolist(), "K": Ks[v].tolist()} for v in range(V)],
        "cameras_initial": [{"viewmat": est.viewmats[v].tolist()} for v in range(V)],
        "scene_centre": [0.0, 0.0, 0.0],
        "scene_scale": float(model.scene.extent),
        "up": np.asarray(est.up, float).tolist(),
        "files": files,
        "warnings": warnings,
    }
    # 6. Only now, and only to measure: ground-truth cameras
    gt_path = Path(gt_cameras) if gt_cameras else (run / "cameras.json")
    if gt_cameras or gt_path.is_file():
        gt = load_gt_cameras(gt_path, V)
        out["camera_errors"] = _rounded(camera_errors(refined, gt))
        out["camera_errors_initial"] = _rounded(camera_errors(est.viewmats, gt))
        out["gt_cameras"] = str(gt_path)
    write_json(run / "recon.json", out)
    return out


def _mean(x) -> float | None:
    return round(float(np.mean(x)), 3) if np.size(x) else None


def _min(x) -> float | None:
    return round(float(np.min(x)), 3) if np.size(x) else None


def _num(x) -> float | None:
    return round(float(x), 4) if np.isfinite(x) else None


def _rounded(d: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


@torch.no_grad()
def _export_arrays(model) -> dict:
    """Canonical and per-time Gaussians as numpy arrays; refuses to go on with non-finite values."""
    p = model.params
    T = model.scene.times
    base = {
        "log_scales": p["scales"].detach().float().cpu().numpy().repeat(3, axis=1),
        "quats_wxyz": p["quats"].detach().float().cpu().numpy(),
        "opacity_logits": p["opacities"].detach().float().cpu().numpy(),
        "rgb": torch.sigmoid(p["colors"]).detach().float().cpu().numpy(),
    }
    means = {"canonical": p["means"].detach().float().cpu().numpy()}
    opacity = {}  # per time: the temporal window folded into the opacity
    for t in range(T):
        means[t] = model.means_at(t).detach().float().cpu().numpy()
        opacity[t] = torch.logit(model.opacities_at(t).clamp(1e-6, 1 - 1e-6)).detach().float().cpu().numpy()
    for name, arr in list(base.items()) + list(means.items()) + list(opacity.items()):
        if not np.isfinite(arr).all():
            raise RuntimeError(f"the fit produced non-finite Gaussians ({name}); nothing was written")
    return {"base": base, "means": means, "opacity_logits": opacity}


def _write_splats(folder: Path, model, exported, renders, frames, held, cell_psnr, cfg) -> dict:
    from safetensors.torch import save_file

    from ..export import write_png

    V, T, H, W = frames.shape[:4]
    base = exported["base"]
    write_splat_ply(folder / "canonical.ply", exported["means"]["canonical"], **base)
    names = []
    for t in range(T):
        name = f"frame_{t:03d}.ply"
        write_splat_ply(folder / name, exported["means"][t], **{**base, "opacity_logits": exported["opacity_logits"][t]})
        names.append(f"splats/{name}")
    # the deformation weights and everything else needed to re-render the fit
    tensors = {f"deform.{k}": v.detach().float().cpu().contiguous() for k, v in model.deform.state_dict().items()}
    tensors["view_offsets"] = model.params["view_offsets"].detach().float().cpu().contiguous()
    tensors["background.texture"] = model.background.texture.detach().float().cpu().contiguous()
    tensors["background.basis"] = model.background.basis.detach().float().cpu().contiguous()
    tensors["cam_deltas"] = model.cam_deltas.detach().float().cpu().contiguous()
    tensors["log_focal"] = model.log_focal.detach().float().cpu().reshape(1).contiguous()
    tensors["t_centres"] = model.params["t_centres"].detach().float().cpu().contiguous()
    tensors["t_log_widths"] = model.params["t_log_widths"].detach().float().cpu().contiguous()
    meta = {"extent": str(model.scene.extent), "times": str(T), "views": str(V),
            "deform": json.dumps({"width": cfg.deform_width, "depth": cfg.deform_depth,
                                  "pos_freqs": cfg.pos_freqs, "time_freqs": cfg.time_freqs}),
            "note": "offset(x, t) = head(body([fourier(x / (2 extent), pos_freqs), fourier(t, time_freqs)])) * extent,"
                    " t = index / (times - 1); canonical Gaussians in canonical.ply; opacity at t = sigmoid(logit) *"
                    " exp(-((t - t_centres) / exp(t_log_widths))^2 / 2) (folded into frame_XXX.ply)"}
    save_file(tensors, str(folder / "model.safetensors"), metadata=meta)
    np.savez_compressed(folder / "renders.npz", frames=renders, psnr=cell_psnr.astype(np.float32), holdout=held)
    write_png(folder / "renders.png", _sheet(renders, held))
    write_png(folder / "compare.png", _compare(frames, renders, held))
    return {"canonical": "splats/canonical.ply", "frames": names, "weights": "splats/model.safetensors",
            "renders": "splats/renders.npz", "renders_png": "splats/renders.png", "compare_png": "splats/compare.png"}


def _sheet(frames: np.ndarray, held: np.ndarray, max_w: int = 256) -> np.ndarray:
    """Contact sheet of [V, T, H, W, 3] (cells scaled to at most ``max_w`` wide); held-out cells framed in orange."""
    import cv2

    from ..export import mosaic

    V, T, H, W = frames.shape[:4]
    s = min(1.0, max_w / W)
    h, w = max(1, round(H * s)), max(1, round(W * s))
    tiles = np.zeros((V * T, h, w, 3), np.uint8)
    for k, (v, t) in enumerate((v, t) for v in range(V) for t in range(T)):
        img = frames[v, t] if s == 1.0 else cv2.resize(frames[v, t], (w, h), interpolation=cv2.INTER_AREA)
        if held[v, t]:
            img = img.copy()
            b = max(1, h // 24)
            img[:b], img[-b:], img[:, :b], img[:, -b:] = (255, 140, 0), (255, 140, 0), (255, 140, 0), (255, 140, 0)
        tiles[k] = img
    return mosaic(tiles, V, T)


def _compare(frames: np.ndarray, renders: np.ndarray, held: np.ndarray) -> np.ndarray:
    """Ground truth sheet | rendered sheet, side by side."""
    a, b = _sheet(frames, held, 160), _sheet(renders, held, 160)
    gap = np.full((a.shape[0], 8, 3), 255, np.uint8)
    return np.concatenate([a, gap, b], axis=1)
