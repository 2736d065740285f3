"""Image (or text) to 4D in two passes, measured against one: does the row0+col0 mode, the one
the default model is trained in most, fill a grid better from the fixed-view and freeze-time
videos that a one-image grid made than the one-image pass did itself?

    python scripts/two_pass_probe.py [--given cell0|none] [--model assets/model] [--seeds 8] [--steps 25] [--device cpu]

For each evaluation scene (as ``launch.py eval`` renders them): pass 1 samples the grid from cell
(0, 0) alone (the image-to-4D row of ``eval``, same seed; ``--given none``: from the caption alone,
text to 4D); pass 2 takes pass 1's row 0 and column 0 as its known cells (as two input videos are)
and samples the rest again. Both are scored on the cells pass 1 did not know (PSNR, SSIM,
consistency as ``eval`` computes them; text to 4D has no pixel ground truth, so consistency only),
and the per-scene PSNRs are printed. (The 4Real-Video pipeline takes its two input videos from a
video model when there are none; here the grid model makes them.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.engine import Engine  # noqa: E402
from core.eval.consistency import epipolar_consistency  # noqa: E402
from core.eval.metrics import psnr_unknown, ssim_unknown  # noqa: E402
from core.eval.run import consistency_times, pooled, render_eval_scenes  # noqa: E402
from core.grid import known_mask  # noqa: E402
from core.model.codec import frames_to_model  # noqa: E402
from core.sampler import SampleSettings, sample_grid, to_uint8  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--given", default="cell0", choices=["cell0", "none"], help="what pass 1 knows")
    ap.add_argument("--model", default="default")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="write the result here")
    args = ap.parse_args()

    model = Engine(args.model, args.device).load()
    if model.device.type == "cpu":
        from core.cpumem import keep_freed_memory

        keep_freed_memory()
    cfg = model.config
    scenes = render_eval_scenes(args.seeds, 8, 8, 72, 128, device=model.device)
    scores = {"one pass": [], "two passes": []}
    cons = {"one pass": [], "two passes": []}
    for k, sc in enumerate(scenes):
        V, T = sc.frames.shape[:2]
        one, refs = known_mask(V, T, args.given), known_mask(V, T, "row0+col0")
        t0 = time.perf_counter()
        with torch.inference_mode():
            s1 = SampleSettings(steps=args.steps, guidance=cfg.guidance, seed=k, mode="soft", preview_every=0)
            g1 = to_uint8(sample_grid(model, frames_to_model(sc.frames)[0], torch.from_numpy(one), sc.caption, s1))
            g1[one] = sc.frames[one]
            s2 = SampleSettings(steps=args.steps, guidance=cfg.guidance, seed=k + 1000, mode="soft", preview_every=0)
            g2 = to_uint8(sample_grid(model, frames_to_model(g1)[0], torch.from_numpy(refs), sc.caption, s2))
            g2[refs] = g1[refs]
        for name, g in (("one pass", g1), ("two passes", g2)):
            if args.given != "none":
                scores[name].append((psnr_unknown(g, sc.frames, one), ssim_unknown(g, sc.frames, one)))
            cons[name].append(epipolar_consistency(g, times=consistency_times(T)))
        if args.given != "none":
            print(f"scene {sc.seed}: one pass {scores['one pass'][-1][0]:.2f} dB, two passes "
                  f"{scores['two passes'][-1][0]:.2f} dB ({time.perf_counter() - t0:.0f} s)", flush=True)
        else:
            print(f"scene {sc.seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    out = {}
    for name in scores:
        ps = [p for p, _ in scores[name]]
        out[name] = {"psnr": float(np.mean(ps)) if ps else None,
                     "ssim": float(np.mean([s for _, s in scores[name]])) if ps else None,
                     "consistency": pooled(cons[name]), "psnr_per_scene": ps}
        figures = f"PSNR {out[name]['psnr']:.2f} dB, SSIM {out[name]['ssim']:.3f}, " if ps else ""
        print(f"{name}: {figures}consistency {out[name]['consistency']:.1f}")
    if args.given != "none":
        d = np.subtract(out["two passes"]["psnr_per_scene"], out["one pass"]["psnr_per_scene"])
        print(f"two passes - one pass: {d.mean():+.3f} dB, {int((d > 0).sum())} of {len(d)} scenes up")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
