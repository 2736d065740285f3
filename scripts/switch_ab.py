"""Time one engine switch on and off in turns, in one process, on the README's generate command.

    python scripts/switch_ab.py SWITCH [--pairs 8] [--steps 8] [--device cpu]

SWITCH is a name of ``blocks.engine_switches()`` with an on/off value (``cpu_attention``,
``ffn_epilogue``, ``cpu_half_norms``, ...). Makes the ``rolling_ball`` example's grid as
``launch.py generate`` does (``Engine.generate``, 8 x 8 at 72 x 128) once to warm up, then
``--pairs`` times with the switch on and off in turn, and prints for each grid the median time of
its steps after the first, and at the end the medians and the median of the pairs' on/off ratios.
Switching in one process compares both sides under the same load: on a shared machine whole runs
drift by 10-20 % within an hour. Nothing is written outside a temporary folder.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("switch")
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)

    from core.cpumem import keep_freed_memory
    from core.engine import Engine, GenerateRequest
    from core.model import blocks

    found = blocks.engine_switches()
    if a.switch not in found or not isinstance(found[a.switch], bool):
        p.error(f"switch must be one of {', '.join(k for k, v in found.items() if isinstance(v, bool))}")
    if a.pairs < 1 or a.steps < 3:
        p.error("--pairs must be at least 1 and --steps at least 3")
    if a.device == "cpu":
        keep_freed_memory()
    ex = REPO / "assets" / "examples" / "rolling_ball"
    req = GenerateRequest(fixed_view=str(ex / "fixed_view.mp4"), freeze_time=str(ex / "freeze_time.mp4"),
                          steps=a.steps)
    eng = Engine(device=a.device)
    times: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        def grid(name: str) -> float:
            stamps: list[float] = []
            eng.generate(req, Path(tmp) / name, on_progress=lambda step, total, preview: stamps.append(time.perf_counter()))
            return statistics.median(b - a for a, b in zip(stamps, stamps[1:]))

        try:
            grid("warm")
            for i in range(a.pairs):
                for on in (True, False):
                    blocks.set_engine_switches({a.switch: on})
                    times[on].append(grid(f"{i}_{int(on)}"))
                    print(f"pair {i + 1}: {a.switch} {'on ' if on else 'off'} {times[on][-1]:.3f} s a step", flush=True)
        finally:
            blocks.set_engine_switches(found)
    ratios = [x / y for x, y in zip(times[True], times[False])]
    out = {"switch": a.switch, "on_s": statistics.median(times[True]), "off_s": statistics.median(times[False]),
           "ratio": statistics.median(ratios), "ratio_range": (min(ratios), max(ratios))}
    print(f"{a.switch}: on {out['on_s']:.3f} s a step ({min(times[True]):.3f}-{max(times[True]):.3f}), "
          f"off {out['off_s']:.3f} s ({min(times[False]):.3f}-{max(times[False]):.3f}); on/off by the median "
          f"of {a.pairs} pairs {out['ratio']:.3f} ({min(ratios):.2f}-{max(ratios):.2f})")
    return out


if __name__ == "__main__":
    main()
