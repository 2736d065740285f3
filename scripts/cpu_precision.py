"""The default model in bf16 against fp32 on the CPU, in one process: `python scripts/cpu_precision.py [SEEDS]`
scores both on the first SEEDS (default 8) evaluation scenes as `launch.py eval` does (given
row 0 + column 0, 25 steps, soft, PSNR and SSIM over the unknown cells) and times a grid each
(generation and scoring). The studio runs fp32 on the CPU; this measures what bf16 would give
(it needs the bf16 patch embedding of `FourDTransformer._patch_conv`)."""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.eval.run import render_eval_scenes, score_scenes  # noqa: E402
from core.model.pipeline import FourDModel  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    scenes = render_eval_scenes(n, 8, 8, 72, 128)
    for dt in (torch.bfloat16, torch.float32):
        m = FourDModel.from_pretrained(str(ROOT / "assets" / "model"), device="cpu", dtype=dt)
        m.transformer.fuse_projections()  # as the studio loads it
        r = score_scenes(m, scenes, "row0+col0", 25, "soft")
        print(f"{str(dt).replace('torch.', '')}: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f}, "
              f"{r['seconds']:.1f} s a grid; per scene {[round(x, 2) for x in r['psnr_per_scene']]}", flush=True)


if __name__ == "__main__":
    main()
