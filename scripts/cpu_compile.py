"""Time the README's generate command eagerly or with the blocks compiled, one process per run.

    python scripts/cpu_compile.py eager|compiled OUT [--runs N] [--device cpu]

Makes the ``rolling_ball`` example's grid as ``launch.py generate`` does (``Engine.generate``), with
``Engine(compile=True)`` for ``compiled`` (torch.compile of the blocks: inductor's C++ code on the
CPU), and prints the seconds since the process started and the run manifest's timings. ``--runs N``
makes the grid N times in the one process (folders OUT_1 .. OUT_N; the later runs are warm). Run
the two in turns; set ``TORCHINDUCTOR_CACHE_DIR`` to an empty folder to include a cold compile.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.engine import Engine, GenerateRequest  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("how", choices=("eager", "compiled"))
    p.add_argument("out", type=Path, help="new run folder (must not exist)")
    p.add_argument("--runs", type=int, default=1, help="grids made one after the other in this process")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    ex = REPO / "assets" / "examples" / "rolling_ball"
    req = GenerateRequest(fixed_view=str(ex / "fixed_view.mp4"), freeze_time=str(ex / "freeze_time.mp4"))
    engine = Engine(device=args.device, compile=args.how == "compiled")
    for i in range(1, args.runs + 1):
        out = args.out if args.runs == 1 else args.out.with_name(f"{args.out.name}_{i}")
        t = time.perf_counter()
        engine.generate(req, out)
        timings = json.loads((out / "manifest.json").read_text())["timings"]
        print(f"{args.how} run {i}: {time.perf_counter() - t:.1f} s ({time.perf_counter() - T0:.1f} s since the "
              f"process started); {timings}", flush=True)


if __name__ == "__main__":
    main()
