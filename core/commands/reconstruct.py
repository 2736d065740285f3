"""``launch.py reconstruct DIR``: fit deformable 3D Gaussians to a run folder's grid and export splats.

    python launch.py reconstruct DIR [--iters N] [--holdout N] [--device auto|cpu|cuda] [--seed S]
                                     [--gt-cameras PATH] [--whole-grid] [--fov DEG] [--replace]

Writes ``DIR/splats/`` (canonical.ply, frame_XXX.ply, model.safetensors, renders) and
``DIR/recon.json``. Cameras are estimated from the frames; ground-truth cameras (``--gt-cameras``,
or ``DIR/cameras.json`` when present) are read only after the fit, to report their errors.
"""

from __future__ import annotations

from pathlib import Path

NAME = "reconstruct"
HELP = "fit deformable 3D Gaussians to a run folder's grid; write splats/*.ply and recon.json"


def add_arguments(p) -> None:
    p.add_argument("dir", type=Path, help="a run folder (with grid.npz)")
    p.add_argument("--iters", type=int, default=None,
                   help="optimisation steps (default: the device preset; cpu 1200, cuda 6000 within 42 s)")
    p.add_argument("--holdout", type=int, default=0,
                   help="cells held out of the fit to measure novel-view/novel-time PSNR (default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0, help="random seed of the fit (default 0)")
    p.add_argument("--gt-cameras", type=Path, default=None,
                   help="ground-truth cameras.json to report camera errors against (read after the fit)")
    p.add_argument("--whole-grid", action="store_true",
                   help="estimate cameras from every training cell, not column 0 alone (slower; more robust on "
                        "repetitive floors; column 0 falls back to it anyway when it cannot place every view)")
    p.add_argument("--replace", action="store_true",
                   help="fit again a run folder that already has a reconstruction, replacing its splats/ and "
                        "recon.json (without it, such a folder is refused and left as it is)")
    p.add_argument("--fov", type=float, default=None, metavar="DEG",
                   help="the frames' horizontal field of view in degrees, when known (e.g. the renderer's or "
                        "the camera's); held fixed instead of estimated (default: estimated from the frames)")


def _refuse_existing(run: Path) -> None:
    """InputError if ``run`` already has a reconstruction: a second fit would replace it."""
    import json

    from ..errors import InputError

    if not ((run / "splats").exists() or (run / "recon.json").exists()):
        return
    what = ""
    try:
        info = json.loads((run / "recon.json").read_text())
        what = f" (fitted PSNR {info['psnr_fit_mean']:.2f} dB, {info['fit']['steps']} steps)"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    raise InputError(f"{run} already has a reconstruction{what} in splats/ and recon.json; give --replace to fit "
                     f"it again and replace that one, or copy the run folder first to keep both")


def run(args) -> int:
    from tqdm import tqdm

    from ..recon.api import reconstruct_run
    from ..recon.cameras import SfMConfig

    if not args.replace:
        _refuse_existing(args.dir)
    bars = []  # made on the first step, so a refused input prints only its error line

    def on_progress(it: int, total: int, psnr_db: float) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="step", desc="reconstruct", dynamic_ncols=True))
        bar = bars[0]
        if bar.total != total:
            bar.total = total
        bar.n = it
        if it % 10 == 0 or it == total:
            bar.set_postfix_str(f"PSNR {psnr_db:.2f} dB", refresh=False)
            bar.refresh()

    try:
        out = reconstruct_run(args.dir, iters=args.iters, holdout=args.holdout, device=args.device,
                              on_progress=on_progress, seed=args.seed, gt_cameras=args.gt_cameras,
                              sfm=SfMConfig(whole_grid=args.whole_grid, fov_x_deg=args.fov))
    finally:
        for bar in bars:
            bar.close()
    line = (f"PSNR fitted {out['psnr_fit_mean']:.2f} dB"
            + (f", held out {out['psnr_holdout_mean']:.2f} dB" if out["psnr_holdout_mean"] is not None else "")
            + f"; {out['fit']['gaussians']} Gaussians, {out['fit']['steps']} steps, fit {out['timings']['fit_s']:.1f} s"
            + f" on {out['device']}")
    print(line)
    if "camera_errors" in out:
        e = out["camera_errors"]
        print(f"camera errors vs ground truth: rotation max {e['rot_deg_max']:.2f} deg, "
              f"translation direction max {e['tdir_deg_max']:.2f} deg")
    for w in out["warnings"]:
        print(f"warning: {w}")
    print(f"wrote {args.dir / 'splats'} and {args.dir / 'recon.json'}")
    return 0
