"""GPU benchmark of the reconstruction: gsplat vs the torch splatter, then fits of run folders.

    python -m core.recon.bench --json PATH [--grid DIR ...] [--holdout 8] [--iters N] [--toy]
    python -m core.recon.bench --cameras-only [--seeds A..B] [--size HxW] [--times T] [--column0 | --whole-grid | --choose-heldout] [--vanishing W] [--json PATH]

(a) renders one small scene with ``gsplat.rasterization`` and with our torch splatter (both on
the GPU) and reports how far images and gradients differ, and the time of gsplat's first call
(its CUDA compile); (b) reconstructs every ``--grid`` run folder (e.g. ``launch.py synth`` eval
scenes, 8x8 at 288x512) with ``--holdout`` cells held out, writing ``splats/`` and
``recon.json`` into each, and reports PSNR on fitted and held-out cells, camera errors (when the
folder has ``cameras.json``; read after the fit) and fit time. With ``--toy`` (or no ``--grid``)
it also fits the built-in toy scene at 8x8, 288x512. Prints a table at the end, writes JSON.
``--cameras-only`` (CPU or GPU) measures the camera estimate alone on synthetic scenes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch


def _small_scene(n: int = 3000, views: int = 3, height: int = 128, width: int = 192, seed: int = 0,
                 device: str = "cuda") -> dict:
    """Random Gaussians in front of a few cameras, in the layout ``rasterization`` takes."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * torch.tensor([0.8, 0.5, 0.5]) + torch.tensor([0.0, 0.0, 3.0])
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.04 + 0.005
    opac = torch.rand(n, generator=g) * 0.9 + 0.05
    cols = torch.rand(n, 3, generator=g)
    vms = torch.eye(4).repeat(views, 1, 1)
    for c in range(views):
        a = 0.15 * (c - (views - 1) / 2)
        vms[c, :3, :3] = torch.tensor([[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]])
        vms[c, 0, 3] = 0.3 * a
    f = 0.9 * width
    Ks = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]]).repeat(views, 1, 1)
    out = dict(means=means, quats=quats, scales=scales, opacities=opac, colors=cols, viewmats=vms, Ks=Ks)
    out = {k: v.to(device) for k, v in out.items()}
    out.update(width=width, height=height)
    return out


def compare_backends(n: int = 3000, views: int = 3, height: int = 128, width: int = 192) -> dict:
    """Render one scene with gsplat and with the torch splatter on CUDA; image and gradient differences."""
    from gsplat import rasterization as gs_raster

    from .splat_torch import rasterization as torch_raster

    scene = _small_scene(n, views, height, width)
    W, H = scene.pop("width"), scene.pop("height")
    results = {}
    grads = {}
    for name, fn, kw in (("gsplat", gs_raster, {"packed": False, "rasterize_mode": "classic"}),
                         ("torch", torch_raster, {"packed": False})):
        leaves = {k: v.clone().requires_grad_(k in ("means", "scales", "opacities", "colors")) for k, v in scene.items()}
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        rgb, alpha, meta = fn(leaves["means"], leaves["quats"], leaves["scales"], leaves["opacities"],
                              leaves["colors"], leaves["viewmats"], leaves["Ks"], W, H, **kw)
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        loss = (rgb * torch.linspace(0.5, 1.5, 3, device=rgb.device)).square().mean() + alpha.mean()
        loss.backward()
        torch.cuda.synchronize()
        t1 = time.perf_counter()  # a second, warm call for timing
        for _ in range(3):
            fn(leaves["means"], leaves["quats"], leaves["scales"], leaves["opacities"], leaves["colors"],
               leaves["viewmats"], leaves["Ks"], W, H, **kw)
        torch.cuda.synchronize()
        results[name] = {"rgb": rgb.detach(), "alpha": alpha.detach(), "first_call_s": first,
                         "render_ms": (time.perf_counter() - t1) / 3 * 1000,
                         "radii_visible": int((meta["radii"] > 0).all(-1).sum())}
        grads[name] = {k: v.grad.detach() for k, v in leaves.items() if v.grad is not None}
    a, b = results["gsplat"], results["torch"]
    d = (a["rgb"] - b["rgb"]).abs()
    mse = float(((a["rgb"] - b["rgb"]) ** 2).mean())
    out = {
        "gaussians": n, "cameras": views, "size": f"{H}x{W}",
        "rgb_max_abs_diff": float(d.max()), "rgb_mean_abs_diff": float(d.mean()),
        "rgb_p999_abs_diff": float(torch.quantile(d.flatten()[:: max(1, d.numel() // 1_000_000)], 0.999)),
        "alpha_max_abs_diff": float((a["alpha"] - b["alpha"]).abs().max()),
        "psnr_between_db": 99.0 if mse <= 1e-12 else 10 * math.log10(1.0 / mse),
        "visible_gsplat": a["radii_visible"], "visible_torch": b["radii_visible"],
        "gsplat_first_call_s": round(a["first_call_s"], 2), "gsplat_render_ms": round(a["render_ms"], 3),
        "torch_render_ms": round(b["render_ms"], 3),
    }
    for k in grads["gsplat"]:
        ga, gb = grads["gsplat"][k].flatten(), grads["torch"][k].flatten()
        out[f"grad_cos_{k}"] = float(torch.nn.functional.cosine_similarity(ga, gb, dim=0))
        out[f"grad_relerr_{k}"] = float((ga - gb).norm() / ga.norm().clamp_min(1e-12))
    return out


def fit_grid(run: Path, holdout: int, iters: int | None, seed: int = 0, device: str = "cuda",
             whole_grid: bool = False, whole_grid_first: bool = False, choose_heldout: bool | None = None) -> dict:
    """Reconstruct one run folder and return its row of the table (``whole_grid``: cameras from
    every training cell's matches, not column 0's alone)."""
    from .api import reconstruct_run

    t0 = time.perf_counter()
    out = reconstruct_run(run, iters=iters, holdout=holdout, device=device, seed=seed,
                          sfm=_sfm(whole_grid=whole_grid, whole_grid_first=whole_grid_first,
                                   choose_heldout=choose_heldout))
    row = {
        "grid": str(run), "views": out["views"], "times": out["times"], "size": f"{out['height']}x{out['width']}",
        "psnr_fit": out["psnr_fit_mean"], "psnr_holdout": out["psnr_holdout_mean"],
        "psnr_fit_min": out["psnr_fit_min"], "psnr_holdout_min": out["psnr_holdout_min"],
        "fit_s": out["timings"]["fit_s"], "cameras_s": out["timings"]["cameras_s"],
        "seed_s": out["timings"].get("seed_s"), "loop_s": out["timings"]["loop_s"],
        "total_s": round(time.perf_counter() - t0, 2), "steps": out["fit"]["steps"], "stopped_by": out["fit"]["stopped_by"],
        "gaussians": out["fit"]["gaussians"], "camera_source": out["sfm"]["source"], "fov_est": out["sfm"]["fov_x_deg"],
        "warnings": out["warnings"],
    }
    for key in ("camera_errors", "camera_errors_initial"):
        if key in out:
            row[key] = out[key]
    row["fov_refined"] = out["sfm"].get("fov_x_deg_refined")
    row["regions"] = error_by_region(Path(run), out)
    return row


def error_by_region(run: Path, out: dict) -> dict | None:
    """Diagnosis of a synthetic run folder after its fit: PSNR and share of the error on the sky,
    the near and far floor and the objects, from the ground truth's depth and cameras."""
    import numpy as np

    from ..grid import Grid
    from .metrics import ground_truth_regions, region_report

    if not ((run / "depth.npz").is_file() and (run / "cameras.json").is_file()):
        return None
    cams = json.loads((run / "cameras.json").read_text())["views"]
    regions = ground_truth_regions(np.load(run / "depth.npz")["depth"], np.array([c["viewmat"] for c in cams]),
                                   np.array([c["K"] for c in cams]))
    frames = Grid.load_npz(run / "grid.npz").frames
    renders = np.load(run / "splats" / "renders.npz")["frames"]
    held = np.zeros(frames.shape[:2], bool)
    for v, t in out["holdout"]:
        held[v, t] = True
    return {"fit": region_report(frames, renders, regions, ~held),
            "held": region_report(frames, renders, regions, held) if held.any() else None}


def _sfm(choose_heldout: bool | None = None, **kw):
    """An SfMConfig with ``kw``; ``choose_heldout`` None keeps its default."""
    from .cameras import SfMConfig

    return SfMConfig(**kw) if choose_heldout is None else SfMConfig(choose_heldout=choose_heldout, **kw)


def _table(rows: list[dict]) -> str:
    head = (f"{'grid':<12} {'VxT HxW':<14} {'fit dB':>7} {'held dB':>8} {'rot max':>8} {'tdir max':>9} {'rot0':>6} "
            f"{'tdir0':>6} {'fit s':>6} {'cams':>5} {'seed':>5} {'loop':>5} {'steps':>6} {'gauss':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ce = r.get("camera_errors", {})
        ce0 = r.get("camera_errors_initial", {})
        lines.append(
            f"{Path(r['grid']).name[-12:]:<12} {str(r['views']) + 'x' + str(r['times']) + ' ' + r['size']:<14} "
            f"{r['psnr_fit'] or 0:>7.2f} {r['psnr_holdout'] or 0:>8.2f} "
            f"{ce.get('rot_deg_max', float('nan')):>8.2f} {ce.get('tdir_deg_max', float('nan')):>9.2f} "
            f"{ce0.get('rot_deg_max', float('nan')):>6.2f} {ce0.get('tdir_deg_max', float('nan')):>6.2f} "
            f"{r['fit_s']:>6.1f} {r['cameras_s']:>5.1f} {r.get('seed_s') or 0:>5.1f} {r['loop_s']:>5.1f} "
            f"{r['steps']:>6} {r['gaussians']:>8}")
    lines.append("fit s = cameras + seeding + loop (+ checks); gsplat's one-time CUDA compile is excluded "
                 "(it happens in the agreement check first)")
    return "\n".join(lines)


def _seed_range(text: str) -> list[int]:
    """"A..B" (inclusive) or "A,B,C" -> seeds."""
    if ".." in text:
        a, b = text.split("..")
        return list(range(int(a), int(b) + 1))
    return [int(x) for x in text.split(",") if x]


def cached_grid(cache: Path, seed: int, views: int = 8, times: int = 8, height: int = 288, width: int = 512,
                device: str = "cpu") -> Path:
    """The run folder of synthetic scene ``seed`` in the camera bench's grid cache (``cache``/
    ``s{seed}_{V}x{T}_{H}x{W}``), rendered there first (``launch.py synth``, no videos) when missing."""
    from ..commands.synth import synth_run

    run = Path(cache) / f"s{seed}_{views}x{times}_{height}x{width}"
    if not (run / "grid.npz").is_file():
        synth_run(run, seed, views, times, height, width, device=device, videos=False)
    return run


def camera_bench(seeds: list[int], size: str, views: int, times: int, cache: Path, column0: bool = False,
                 threads: int = 0, whole_grid: bool = False, whole_grid_first: bool = False,
                 choose_heldout: bool | None = None, affine_max_tilt: int = 0,
                 fov: float | None = None, true_fov: bool = False, vanishing: float | None = None) -> list[dict]:
    """The camera estimate alone (CPU) on synthetic scenes, against their ground-truth cameras
    (read only to measure): per seed the rotation / translation-direction errors (max over view
    pairs), the fov error, pass (rotation <= 2 deg and direction <= 5 deg) and the seconds the
    estimate took. Grids are rendered once into ``cache`` (``launch.py synth``) and reused.
    The estimate is ``reconstruct``'s default (``grid_cameras``, every cell usable), or from
    column 0 alone (``column0``), or from the whole grid alone (``whole_grid``); ``affine_max_tilt``
    > 1 detects affine-simulated SIFT features (``SfMConfig.affine_max_tilt``). ``fov`` holds the
    field of view at that value (``SfMConfig.fov_x_deg``); ``true_fov`` at each scene's true one, an
    experiment that reads ground truth on purpose: how much of the error the focal length makes.
    ``vanishing`` sets ``SfMConfig.vanishing_weight`` (None: its default)."""
    import numpy as np

    from ..grid import Grid, parse_size
    from .api import grid_cameras, load_gt_cameras
    from .cameras import SfMConfig, estimate_cameras, off_orbit_warnings, unusual_fov_warnings
    from .orbit import orbit_deviation
    from .metrics import camera_errors

    H, W = parse_size(size)
    rows = []
    for s in seeds:
        run = cached_grid(cache, s, views, times, H, W)
        grid = Grid.load_npz(run / "grid.npz")
        gt = load_gt_cameras(run / "cameras.json", grid.V)
        K = np.array(json.loads((run / "cameras.json").read_text())["views"][0]["K"])
        fov_true = math.degrees(2 * math.atan(W / 2 / K[0, 0]))
        fov_x = fov_true if true_fov else fov
        vp = {} if vanishing is None else {"vanishing_weight": vanishing}
        t0 = time.perf_counter()
        warns: list[str] = []
        if column0:
            est = estimate_cameras(grid.frames[:, 0], SfMConfig(threads=threads, affine_max_tilt=affine_max_tilt,
                                                                fov_x_deg=fov_x, **vp))
        else:
            est, _, _, warns = grid_cameras(
                grid.frames, np.ones(grid.frames.shape[:2], bool),
                _sfm(threads=threads, whole_grid=whole_grid, whole_grid_first=whole_grid_first,
                     choose_heldout=choose_heldout, affine_max_tilt=affine_max_tilt, fov_x_deg=fov_x, **vp),
                log=lambda m: print("  ", m, flush=True)
                if m.startswith(("held-out", "orbit", "affine", "vanishing points: one")) else None)
        # what reconstruct would tell the user
        warnings = (list(warns) + list(est.warnings) + unusual_fov_warnings(est, SfMConfig(fov_x_deg=fov_x))
                    + off_orbit_warnings(est))
        roll, aim = orbit_deviation(est.viewmats)
        sec = time.perf_counter() - t0
        e = camera_errors(est.viewmats, gt)
        rows.append({"seed": s, "rot_deg_max": round(e["rot_deg_max"], 3), "tdir_deg_max": round(e["tdir_deg_max"], 3),
                     "fov_est": round(est.fov_x_deg, 2), "fov_true": round(fov_true, 2),
                     "fov_err": round(est.fov_x_deg - fov_true, 2), "source": est.source,
                     "registered": est.n_registered, "guided": est.n_guided, "points": len(est.points),
                     "seconds": round(sec, 2), "warnings": warnings,
                     **{k: round(x, 3) if math.isfinite(x) else None for k, x in (("orbit_roll_deg", roll), ("orbit_aim_deg", aim))},
                     "pass": bool(e["rot_deg_max"] <= 2.0 and e["tdir_deg_max"] <= 5.0)})
        r = rows[-1]
        print(f"{s} {'PASS' if r['pass'] else 'FAIL'} rot {r['rot_deg_max']:.2f} tdir {r['tdir_deg_max']:.2f} "
              f"fov {r['fov_est']:.1f}/{r['fov_true']:.1f} {r['source']} {r['registered']}/{grid.V} "
              f"({r['guided']} by guided registration) "
              f"{r['seconds']:.1f} s", flush=True)
    return rows


def _camera_table(rows: list[dict]) -> str:
    head = f"{'seed':<11} {'rot max':>8} {'tdir max':>9} {'fov err':>8} {'views':>6} {'guided':>6} {'cams s':>7} pass"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['seed']:<11} {r['rot_deg_max']:>8.2f} {r['tdir_deg_max']:>9.2f} {r['fov_err']:>8.1f} "
                     f"{r['registered']:>6} {r.get('guided', 0):>6} {r['seconds']:>7.1f} {'yes' if r['pass'] else 'NO'}")
    n = sum(r["pass"] for r in rows)
    lines.append(f"passes {n}/{len(rows)} (rotation <= 2 deg and translation direction <= 5 deg, max over view pairs); "
                 f"camera estimate {sum(r['seconds'] for r in rows) / max(len(rows), 1):.1f} s mean")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.recon.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, default=None, help="where to write the results (required for fits)")
    p.add_argument("--cameras-only", action="store_true",
                   help="CPU: only the camera estimate on synthetic scenes (--seeds), against their true cameras")
    p.add_argument("--seeds", default="1000000000..1000000009", help="with --cameras-only: A..B or A,B,C")
    p.add_argument("--size", default="288x512", help="with --cameras-only: frame size HxW")
    p.add_argument("--views", type=int, default=8, help="with --cameras-only: V")
    p.add_argument("--times", type=int, default=8, help="with --cameras-only: T")
    p.add_argument("--column0", action="store_true", help="with --cameras-only: estimate from column 0 alone "
                   "(default: reconstruct's default, see api.grid_cameras)")
    p.add_argument("--threads", type=int, default=0, help="with --cameras-only: detection threads (0: per core)")
    p.add_argument("--cache", type=Path, default=None,
                   help="with --cameras-only: folder for the rendered grids (default a temporary one)")
    p.add_argument("--grid", type=Path, action="append", default=[], help="a run folder to reconstruct (repeatable)")
    p.add_argument("--holdout", type=int, default=8, help="cells held out per grid (default 8)")
    p.add_argument("--iters", type=int, default=None, help="steps (default: the CUDA preset, time-budgeted)")
    p.add_argument("--whole-grid", action="store_true",
                   help="cameras from the whole grid's pooled matches alone (fits and --cameras-only)")
    p.add_argument("--whole-grid-first", action="store_true",
                   help="cameras from the whole grid first, column 0 only when it places fewer views")
    p.add_argument("--choose-heldout", action=argparse.BooleanOptionalAction, default=None,
                   help="column 0 and the whole grid both, the better on held-out matches (default: SfMConfig's)")
    p.add_argument("--affine-tilt", type=int, default=0,
                   help="with --cameras-only: affine-simulated SIFT up to this tilt (e.g. 2; default 0: plain SIFT)")
    fov = p.add_mutually_exclusive_group()
    fov.add_argument("--fov", type=float, default=None, metavar="DEG",
                     help="with --cameras-only: hold the field of view at DEG (default: estimated)")
    fov.add_argument("--true-fov", action="store_true",
                     help="with --cameras-only: hold it at each scene's true one (reads ground truth on purpose: "
                          "an experiment on how much of the error the focal length makes, not a method)")
    p.add_argument("--vanishing", type=float, default=None, metavar="W",
                   help="with --cameras-only: hold rotations to one family of vanishing points at weight W "
                        "(SfMConfig.vanishing_weight; 0: off; default: SfMConfig's)")
    p.add_argument("--toy", action="store_true", help="also fit the built-in toy scene (8x8 at 288x512)")
    args = p.parse_args(argv)
    if args.cameras_only:
        with tempfile.TemporaryDirectory() as tmp:
            cache = args.cache or Path(tmp)
            cache.mkdir(parents=True, exist_ok=True)
            rows = camera_bench(_seed_range(args.seeds), args.size, args.views, args.times, cache,
                                column0=args.column0, threads=args.threads, whole_grid=args.whole_grid,
                                whole_grid_first=args.whole_grid_first, choose_heldout=args.choose_heldout,
                                affine_max_tilt=args.affine_tilt, fov=args.fov, true_fov=args.true_fov,
                                vanishing=args.vanishing)
        print(_camera_table(rows))
        if args.json:
            args.json.write_text(json.dumps({"cameras": rows, "threads": args.threads or None,
                                             "column0": args.column0, "whole_grid": args.whole_grid,
                                             "choose_heldout": args.choose_heldout,
                                             "affine_max_tilt": args.affine_tilt, "fov": args.fov,
                                             "true_fov": args.true_fov, "vanishing": args.vanishing}, indent=2))
            print(f"wrote {args.json}")
        return 0
    if args.json is None:
        p.error("--json is required (except with --cameras-only)")
    if not torch.cuda.is_available():
        print("error: the reconstruction benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    report: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    try:
        import gsplat

        report["gsplat"] = gsplat.__version__
    except ImportError as e:
        print(f"error: gsplat is not installed ({e})", file=sys.stderr)
        return 2

    # (a) the two rasterizers agree
    t0 = time.perf_counter()
    report["agreement"] = compare_backends()
    report["agreement"]["seconds"] = round(time.perf_counter() - t0, 2)
    report["gsplat_warmup_s"] = report["agreement"]["gsplat_first_call_s"]
    report["note"] = ("gsplat compiles its CUDA kernels on first use; that happens in the agreement check "
                      "(gsplat_warmup_s), before any fit, so no fit_s includes it. fit_s = cameras_s + seed_s + "
                      "loop_s + input checks; rendering every cell and writing files come after it.")
    print("agreement:", json.dumps(report["agreement"], indent=1), flush=True)

    # (b) fits
    rows = []
    grids = list(args.grid)
    with tempfile.TemporaryDirectory() as tmp:
        if args.toy or not grids:
            from .toyscene import write_toy_run

            t1 = time.perf_counter()
            grids.append(write_toy_run(Path(tmp) / "toy_8x8_288x512", 8, 8, 288, 512, device="cuda"))
            report["toy_render_s"] = round(time.perf_counter() - t1, 2)
        for g in grids:
            try:
                row = fit_grid(Path(g), args.holdout, args.iters, whole_grid=args.whole_grid,
                               whole_grid_first=args.whole_grid_first, choose_heldout=args.choose_heldout)
            except Exception as e:  # report and go on with the next grid
                row = {"grid": str(g), "error": f"{type(e).__name__}: {e}"}
            rows.append(row)
            print(json.dumps(row), flush=True)
            report["fits"] = rows
            args.json.write_text(json.dumps(report, indent=2))
    report["fits"] = rows
    args.json.write_text(json.dumps(report, indent=2))
    a = report["agreement"]
    print()
    print(f"gsplat vs torch splatter ({a['size']}, {a['gaussians']} Gaussians x {a['cameras']} cameras): "
          f"max |diff| {a['rgb_max_abs_diff']:.2e}, mean {a['rgb_mean_abs_diff']:.2e}, PSNR between "
          f"{a['psnr_between_db']:.1f} dB, grad cos means {a.get('grad_cos_means', float('nan')):.4f}; "
          f"gsplat first call {a['gsplat_first_call_s']} s, {a['gsplat_render_ms']} ms/render")
    ok_rows = [r for r in rows if "error" not in r]
    if ok_rows:
        print(_table(ok_rows))
        for r in ok_rows:
            for part in ("fit", "held"):
                reg = (r.get("regions") or {}).get(part)
                if reg:
                    print(f"  {Path(r['grid']).name} {part:<4} PSNR by region (share of error): " + ", ".join(
                        f"{k} {v['psnr']:.1f} dB ({100 * v['error_share']:.0f}%)" for k, v in reg.items()))
    for r in rows:
        if "error" in r:
            print(f"{r['grid']}: {r['error']}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
