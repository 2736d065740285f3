"""Throughput of the synthetic world: how many ground-truth grids per second it renders, and
whether the training streams keep up with a GPU.

    python -m core.world.bench --device cuda --json world_bench.json
    python -m core.world.bench --device cpu --json /tmp/world_bench.json     # small, for a check

Cases (V = T = 8): the renderer alone on pre-sampled scenes (``render``), the CPU-side planning
alone (``plan``: scene sampling + packing, per batch), and the full ``GridBatches`` /
``VideoBatches`` streams with and without planning workers. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, iters: int, warmup: int = 1) -> float:
    """Seconds per call, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / iters


def bench_render(device, batch: int, height: int, width: int, views: int = 8, times: int = 8, iters: int = 3,
                 ssaa: int = 1) -> dict:
    from .render import render_grids
    from .scenes import sample_scene

    specs = [sample_scene(s) for s in range(batch)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sec = _timed(lambda: render_grids(specs, views, times, height, width, device=device, ssaa=ssaa), device, iters)
    out = {"case": "render", "batch": batch, "views": views, "times": times, "size": f"{height}x{width}", "ssaa": ssaa,
           "s_per_batch": sec, "grids_per_s": batch / sec,
           "mrays_per_s": batch * views * times * height * width * ssaa * ssaa / sec / 1e6}
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def bench_plan(batch: int, height: int, width: int, views: int = 8, times: int = 8, iters: int = 3) -> dict:
    from .dataset import _Config, _plan

    cfg = _Config("train", batch, views, times, height, width, "synthetic", 0, 0, None)
    rng = np.random.default_rng(0)
    sec = _timed(lambda: _plan(cfg, [int(s) for s in rng.integers(0, 10**9, batch)]), torch.device("cpu"), iters)
    return {"case": "plan (CPU)", "batch": batch, "views": views, "times": times, "size": f"{height}x{width}",
            "s_per_batch": sec, "grids_per_s": batch / sec}


def bench_stream(device, cls: str, batch: int, height: int, width: int, workers: int, kind: str = "synthetic",
                 iters: int = 20) -> dict:
    """Steady-state batches per second of a stream: ``iters`` is more than twice what the
    workers can queue ahead (2 per worker), so a slow planner shows."""
    from .dataset import GridBatches, VideoBatches

    if cls == "GridBatches":
        it = iter(GridBatches("train", batch=batch, height=height, width=width, device=device, kind=kind,
                              workers=workers))
    else:
        it = iter(VideoBatches("train", batch=batch, frames=8, height=height, width=width, device=device, kind=kind,
                               workers=workers))
    next(it)  # start-up (workers spawn) is not throughput
    sec = _timed(lambda: next(it), device, iters, warmup=1)
    per = "grids_per_s" if cls == "GridBatches" else "videos_per_s"
    return {"case": f"{cls}({kind}, workers={workers})", "batch": batch, "size": f"{height}x{width}",
            "s_per_batch": sec, per: batch / sec}


def run(device: str, quick: bool) -> list[dict]:
    dev = torch.device(device)
    rows: list[dict] = []
    if dev.type == "cuda":
        small = [8, 32, 64] if not quick else [8]
        for b in small:
            rows.append(bench_render(dev, b, 72, 128))
        rows.append(bench_render(dev, 32, 72, 128, ssaa=2))
        for b in ([2, 8] if not quick else [2]):
            rows.append(bench_render(dev, b, 288, 512))
        rows.append(bench_plan(32, 72, 128))
        for w in (0, 4, 8):
            rows.append(bench_stream(dev, "GridBatches", 32, 72, 128, w))
        rows.append(bench_stream(dev, "GridBatches", 32, 72, 128, 4, kind="pseudo4d"))
        rows.append(bench_stream(dev, "VideoBatches", 64, 72, 128, 4))
    else:
        rows.append(bench_render(dev, 1, 72, 128, iters=2))
        rows.append(bench_render(dev, 1, 288, 512, views=2, times=2, iters=1))
        rows.append(bench_plan(8, 72, 128))
        rows.append(bench_stream(dev, "GridBatches", 1, 72, 128, 0, iters=1))
        rows.append(bench_stream(dev, "GridBatches", 1, 72, 128, 0, kind="pseudo4d", iters=1))
        rows.append(bench_stream(dev, "VideoBatches", 4, 72, 128, 0, iters=1))
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'case':<40} {'batch':>5} {'grid':>5} {'size':>8} {'s/batch':>8} {'per s':>9} {'Mray/s':>7}"]
    for r in rows:
        per = r.get("grids_per_s", r.get("videos_per_s", 0))
        unit = "grids" if "grids_per_s" in r else "videos"
        grid = f"{r.get('views', 8)}x{r.get('times', 8)}" if unit == "grids" else "1x8"
        case = r["case"] + (f" ssaa={r['ssaa']}" if r.get("ssaa", 1) > 1 else "")
        lines.append(f"{case:<40} {r['batch']:>5} {grid:>5} {r['size']:>8} {r['s_per_batch']:>8.3f} "
                     f"{per:>7.1f} {unit[0]} {r.get('mrays_per_s', 0):>6.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.world.bench", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--quick", action="store_true", help="fewer cases")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA GPU is available")
        return 2
    rows = run(args.device, args.quick)
    info = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    print(f"world bench on {info['device']} (torch {info['torch']}, {info['threads']} threads)")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"info": info, "rows": rows}, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
