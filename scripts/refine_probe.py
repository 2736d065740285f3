"""Does the fit's photometric camera refinement pull a wrong camera estimate toward the truth?

    python scripts/refine_probe.py SEED [--cache DIR] [--scale 0.25] [--lr 1,10] [--iters 600] [--set FIELD=VALUE ...]

Renders (or reads from ``--cache``) evaluation scene SEED as an 8x8 grid at 288x512, estimates its
cameras as ``reconstruct`` does (``api.grid_cameras``, default ``SfMConfig``), then fits the
Gaussians on the CPU to the grid shrunk by ``--scale`` with the CPU preset, once per ``--lr``
factor (applied to both the pose and the focal-length learning rates), and prints the camera
errors (``metrics.camera_errors``, max and mean over view pairs) of the estimate and of each fit's
refined cameras against ground truth, which is read only to measure. ``--set`` changes other
``FitConfig`` fields of the preset (e.g. ``view_offset_start=1`` keeps the per-view offsets at zero).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.recon.api import grid_cameras, load_gt_cameras  # noqa: E402
from core.recon.bench import cached_grid  # noqa: E402
from core.grid import Grid  # noqa: E402
from core.recon.cameras import SfMConfig  # noqa: E402
from core.recon.fit import PRESETS, build_model, fit  # noqa: E402
from core.recon.metrics import camera_errors  # noqa: E402


def _errors(vms: np.ndarray, gt: np.ndarray) -> str:
    e = camera_errors(vms, gt)
    return (f"rotation {e['rot_deg_max']:.2f} deg max ({e['rot_deg_mean']:.2f} mean), "
            f"translation direction {e['tdir_deg_max']:.2f} ({e['tdir_deg_mean']:.2f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("seed", type=int)
    p.add_argument("--cache", type=Path, default=Path("/tmp/camcache"),
                   help="the camera bench's grid folder (rendered here when missing)")
    p.add_argument("--scale", type=float, default=0.25, help="size of the fitted grid, x 288x512")
    p.add_argument("--lr", default="1,10", help="factors on the camera and focal learning rates, one fit each")
    p.add_argument("--iters", type=int, default=600)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="another numeric FitConfig field of the CPU preset, repeatable")
    args = p.parse_args()

    run = cached_grid(args.cache, args.seed)
    frames = Grid.load_npz(run / "grid.npz").frames
    V, T, H, W = frames.shape[:4]
    gt = load_gt_cameras(run / "cameras.json", V)
    train = np.ones((V, T), bool)
    t0 = time.perf_counter()
    est, *_ = grid_cameras(frames, train, SfMConfig())
    print(f"{args.seed} estimate: {_errors(est.viewmats, gt)}, fov {est.fov_x_deg:.1f} deg "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    h, w = round(H * args.scale), round(W * args.scale)
    small = np.stack([[cv2.resize(frames[v, t], (w, h), interpolation=cv2.INTER_AREA) for t in range(T)]
                      for v in range(V)])
    Ks = est.Ks.copy()
    Ks[:, 0] *= w / W
    Ks[:, 1] *= h / H
    est_small = dataclasses.replace(est, Ks=Ks)
    base = PRESETS["cpu"]
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in {f.name for f in dataclasses.fields(base)}:
            p.error(f"--set {item}: FitConfig has no field {name!r}")
        kind = type(getattr(base, name))  # int, float (or bool) as the preset has it
        base = dataclasses.replace(base, **{name: kind(float(value))})
    for factor in (float(f) for f in args.lr.split(",")):
        cfg = dataclasses.replace(base, iters=args.iters, lr_cameras=base.lr_cameras * factor,
                                  lr_focal=base.lr_focal * factor)
        torch.manual_seed(0)
        model = build_model(est_small, small, train, cfg, torch.device("cpu"), 0)
        t1 = time.perf_counter()
        fit(model, small, train, cfg, seed=0)
        with torch.no_grad():
            vms = model.camera(torch.arange(V)).double().numpy()
            K = model.intrinsics(torch.arange(V)).double().numpy()
        fov = float(np.degrees(2 * np.arctan(w / (2 * K[0, 0, 0]))))
        print(f"{args.seed} fit at {h}x{w}, learning rates x{factor:g}: {_errors(vms, gt)}, fov {fov:.1f} deg "
              f"({time.perf_counter() - t1:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
