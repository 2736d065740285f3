"""The default model in bf16 against fp32 on the CPU, in one process:
`python scripts/cpu_precision.py [--seeds N] [--model DIR]` scores both on the first N (default 8)
evaluation scenes as `launch.py eval` does (given row 0 + column 0, 25 steps, soft, PSNR and
SSIM over the unknown cells) and times a grid each
(generation and scoring). On a CPU with native bf16 the studio runs bf16 (`--precision auto`),
elsewhere fp32; this measures what that costs and saves (bf16 needs the patch embedding of
`FourDTransformer._patch_conv`)."""

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.eval.run import render_eval_scenes, score_scenes  # noqa: E402
from core.model.pipeline import FourDModel  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description="bf16 against fp32 on the CPU, the default model's evaluation row")
    p.add_argument("--seeds", type=int, default=8, help="evaluation scenes (default 8)")
    p.add_argument("--model", default=str(ROOT / "assets" / "model"), help="model folder (default assets/model)")
    args = p.parse_args()
    scenes = render_eval_scenes(args.seeds, 8, 8, 72, 128)
    for dt in (torch.bfloat16, torch.float32):
        m = FourDModel.from_pretrained(args.model, device="cpu", dtype=dt)
        m.transformer.fuse_projections()  # as the studio loads it
        r = score_scenes(m, scenes, "row0+col0", 25, "soft")
        print(f"{str(dt).replace('torch.', '')}: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f}, "
              f"{r['seconds']:.1f} s a grid; per scene {[round(x, 2) for x in r['psnr_per_scene']]}", flush=True)


if __name__ == "__main__":
    main()
