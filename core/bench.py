"""Speed of the 4D transformer: seconds per denoising step for each stream mode, what each
optimisation buys, time to a whole grid, peak memory, and the ratio to DESIGN.md's floor.

On the GPU it builds a Wan2.1-1.3B-shaped backbone with random weights (speed does not depend on
the weights) and times an 8 x 8 latent grid of 288 x 512 frames (36 x 64 latents, 576 tokens a
frame, 36,864 a grid; the VAE and the text encoder are not part of the step). On the CPU it does
the same for the embedded default model's shape. Rows run in order of importance and stop when
the time budget is spent, so one call always ends with a table.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

# DESIGN.md, reference figures (one H100, 1.3B shape, 8x8 at 288x512, bf16): the floor per step.
FLOOR_S = {"soft": 0.36, "hard": 0.36, "fused": 0.30}
DESIGN_AS_IS_S = 0.742  # diffusers as is, two streams


@dataclass
class BenchConfig:
    device: str = "auto"
    preset: str | None = None  # default: wan2.1-1.3b on cuda, default on cpu
    views: int = 8
    times: int = 8  # latent times (the Wan VAE would turn 29 frames into 8)
    height: int | None = None  # pixels; default: the preset's
    width: int | None = None
    modes: tuple = ("soft", "hard", "sequential", "fused")
    compile: bool | None = None  # default: on for cuda, off for cpu
    steps: int | None = None  # timed steps per row (default 3 on cuda, 1 on cpu)
    grid_steps: int = 25
    grid: bool = True  # time whole grids
    ablations: bool = True  # eager rows showing what each optimisation buys
    budget_s: float = 400.0
    json_path: str | None = None

    def resolve(self) -> "BenchConfig":
        c = BenchConfig(**asdict(self))
        if c.device == "auto":
            c.device = "cuda" if torch.cuda.is_available() else "cpu"
        c.preset = c.preset or ("wan2.1-1.3b" if c.device == "cuda" else "default")
        c.compile = (c.device == "cuda") if c.compile is None else c.compile
        c.steps = c.steps or (3 if c.device == "cuda" else 1)
        return c


@dataclass
class Row:
    mode: str
    variant: str
    s_per_step: float | None = None
    floor_ratio: float | None = None
    peak_gb: float | None = None
    warmup_s: float | None = None  # first call (compile time when compiled)
    tflops: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


def step_flops(mode: str, V: int, T: int, P: int, D: int, F: int, L: int, blocks: int, text_len: int,
               parts: bool = False):
    """FLOPs (2 x multiply-adds) of one step: linear layers, self-attention, cross-attention.
    ``parts`` returns them separately. (``L`` is unused; kept for call symmetry.)"""
    M = V * T * P
    lin = 4 * D * D + 2 * D * D + 2 * D * F  # self qkv+out, cross q+out, ffn (per token)
    streams = 2 if mode in ("soft", "hard") else 1
    if mode == "sequential":
        lin += 4 * D * D
    if mode == "fused":
        keys = M * (V + T - 1) * P  # query-key pairs under the row-and-column mask
    else:
        keys = T * (V * P) ** 2 + V * (T * P) ** 2
    out = {"linear": 2.0 * streams * M * lin * blocks, "attention": 2.0 * 2 * D * keys * blocks,
           "cross": 2.0 * streams * 2 * D * M * text_len * blocks}
    return out if parts else sum(out.values())


def build_transformer(preset_name: str, device: str, dtype: torch.dtype):
    """A FourDTransformer of a preset's shape with random weights, built on ``device``."""
    from .model.config import preset
    from .model.transformer import FourDTransformer

    cfg = preset(preset_name)
    mask_ch = 4 if cfg.codec == "wan-vae" else 1
    with torch.device(device):
        tr = FourDTransformer.from_config(cfg, mask_channels=mask_ch)
    return cfg, tr.cast(dtype).eval()


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict:
    cfg = cfg.resolve()
    t_start = time.perf_counter()
    dev = cfg.device
    cuda = dev == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    mcfg, tr = build_transformer(cfg.preset, dev, dtype)
    space = 2 ** len(mcfg.vae["temperal_downsample"]) if mcfg.codec == "wan-vae" else 1
    H, W = cfg.height or mcfg.height, cfg.width or mcfg.width
    h, w = H // space, W // space
    V, T = cfg.views, cfg.times
    bc = tr.backbone.config
    C = bc.in_channels
    D = tr.dim
    _, ph, pw = tr.patch
    P = (h // ph) * (w // pw)
    L = mcfg.max_text_len
    g = torch.Generator("cpu").manual_seed(0)
    x = torch.randn(1, V, T, C, h, w, generator=g).to(dev, dtype)
    cond = torch.randn(1, V, T, C, h, w, generator=g).to(dev, dtype)
    known = torch.zeros(1, V, T, dtype=torch.bool, device=dev)
    known[0, 0, :] = True
    known[0, :, 0] = True
    text = torch.randn(1, L, bc.text_dim, generator=g).to(dev, dtype)
    sigma = torch.tensor([0.6])
    setup = {"device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
             "torch": torch.__version__, "preset": cfg.preset, "dtype": str(dtype).replace("torch.", ""),
             "grid": f"{V}x{T} latent cells of {h}x{w} ({H}x{W} pixels)", "tokens_per_frame": P,
             "tokens": V * T * P, "blocks": bc.num_layers, "width": D,
             "params_backbone_M": round(sum(p.numel() for p in tr.backbone.parameters()) / 1e6, 1),
             "params_new_M": round(sum(p.numel() for p in tr.layers.parameters()) / 1e6, 1),
             "compile": cfg.compile, "timed_steps": cfg.steps}
    log("bench: " + ", ".join(f"{k}={v}" for k, v in setup.items()))
    rows: list[Row] = []
    grids: list[dict] = []

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def left() -> float:
        return cfg.budget_s - (time.perf_counter() - t_start)

    threads = torch.get_num_threads()
    cpu_est: dict[int, float] = {}

    def measure(fn: Callable[[], object], n: int) -> tuple[float, float, float | None]:
        """(warm-up s, mean s per call, peak GB). On the CPU also the process time per call over
        the thread count (``cpu_est``): the wall time on an otherwise idle machine, roughly."""
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        warm = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            fn()
        sync()
        per = (time.perf_counter() - t0) / n
        cpu_est[0] = (time.process_time() - c0) / n / threads
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        return warm, per, peak

    def add(mode: str, variant: str, fn: Callable[[], object], need_s: float, n: int | None = None):
        if left() < need_s:
            rows.append(Row(mode, variant, note="skipped: time budget"))
            log(f"  {mode:10s} {variant:34s} skipped (budget)")
            return None
        try:
            with torch.no_grad():
                warm, per, peak = measure(fn, n or cfg.steps)
        except Exception as e:  # a diagnostic tool: report the row's failure and go on
            if cuda:
                torch.cuda.empty_cache()
            rows.append(Row(mode, variant, note=f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"))
            log(f"  {mode:10s} {variant:34s} FAILED {type(e).__name__}: {str(e).splitlines()[0][:160]}")
            return None
        fl = step_flops(mode if mode in ("soft", "hard", "sequential", "fused") else "soft",
                        V, T, P, D, bc.ffn_dim, L, bc.num_layers, L)
        floor = FLOOR_S.get(mode) if (cuda and cfg.preset == "wan2.1-1.3b" and (V, T, H, W) == (8, 8, 288, 512)) else None
        row = Row(mode, variant, round(per, 4), round(per / floor, 2) if floor else None,
                  round(peak, 2) if peak is not None else None, round(warm, 2), float(f"{fl / per / 1e12:.3g}"))
        if not cuda:
            row.extra["cpu_time_per_step_over_threads_s"] = round(cpu_est[0], 3)
        rows.append(row)
        log(f"  {mode:10s} {variant:34s} {per:8.4f} s/step  warm-up {warm:6.1f} s"
            + (f"  peak {peak:5.1f} GB" if peak is not None else f"  (cpu time / {threads} threads {cpu_est[0]:.3f} s)"))
        return row

    def ours(mode: str, backend: str = "auto", cache: bool = True):
        plan = tr.prepare(text, (V, T, h, w), cond=cond, known=known, mode=mode, fused_backend=backend, cache=cache)
        return lambda: tr.step(plan, x, sigma)

    est = 4.0 if cuda else 30.0  # rough seconds for an eager row
    compile_s = 90.0  # rough seconds for a compiled row (its warm-up compiles)

    # 1. What each optimisation buys (eager, soft mode; cheap, so first), and diffusers as is.
    if cfg.ablations and "soft" in cfg.modes:
        bb = tr.backbone
        seq_v = x.permute(0, 2, 3, 1, 4, 5).reshape(T, C, V, h, w)
        seq_t = x.permute(0, 1, 3, 2, 4, 5).reshape(V, C, T, h, w)
        ts = torch.full((max(V, T),), 600.0, device=dev)

        def as_is():  # the two streams, each a plain diffusers forward over its videos
            bb(seq_v, ts[:T], text.expand(T, -1, -1), return_dict=False)
            bb(seq_t, ts[:V], text.expand(V, -1, -1), return_dict=False)

        add("as-is", "diffusers forward, two streams", as_is, est * 2)
        tr.batch_streams = tr.cache_text_kv = tr.cache_time = False
        add("soft", "eager, none of the below", ours("soft", cache=False), est)
        tr.batch_streams = True
        add("soft", "eager, + streams in one batch", ours("soft", cache=False), est)
        tr.cache_text_kv = tr.cache_time = True
        add("soft", "eager, + text-K/V and time cached", ours("soft"), est)
        tr.fuse_projections()
        add("soft", "eager, + fused Q/K/V matmuls", ours("soft"), est)
    tr.fuse_projections()
    tr.batch_streams = tr.cache_text_kv = tr.cache_time = True

    # 2. Each mode with everything on (compiled unless --no-compile); whole grids after the
    #    first two modes, so the headline figures come before the budget can run out.
    if cfg.compile:
        tr.compile_blocks()
    label = "compiled" if cfg.compile else "eager"
    need = compile_s if cfg.compile else est

    def run_mode(mode: str) -> None:
        if mode == "fused":
            for b in (["flex", "split"] if cuda else ["split"]):
                add(mode, f"{label}, {b}", ours(mode, b), need)
        else:
            add(mode, label, ours(mode), need)

    def run_grid(mode: str) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        from .sampler import SampleSettings, denoise

        best = [r for r in rows if r.mode == mode and r.s_per_step
                and (r.variant == label or (mode == "fused" and r.variant.startswith(label + ", ")))]
        if not best:
            return
        best = min(best, key=lambda r: r.s_per_step)
        if left() < best.s_per_step * cfg.grid_steps * 1.2 + 5:
            grids.append({"mode": mode, "note": "skipped: time budget"})
            return
        backend = best.variant.split(", ")[-1] if mode == "fused" else "auto"
        s = SampleSettings(steps=cfg.grid_steps, mode=mode, fused_backend=backend)
        sched = FlowMatchEulerDiscreteScheduler(shift=mcfg.shift)
        mask = known[..., None].expand(-1, -1, -1, tr.mask_channels)
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            denoise(tr, sched, cond.float(), mask, text, s)
        sync()
        total = time.perf_counter() - t0
        entry = {"mode": mode, "kernels": best.variant, "steps": cfg.grid_steps, "seconds": float(f"{total:.4g}")}
        if not cuda:
            entry["cpu_time_over_threads_s"] = round((time.process_time() - c0) / threads, 2)
        grids.append(entry)
        log(f"  whole grid, {mode} ({best.variant}), {cfg.grid_steps} steps: {total:.2f} s"
            + ("" if cuda else f" (cpu time / {threads} threads {entry['cpu_time_over_threads_s']:.1f} s)"))

    first = [m for m in ("soft", "fused") if m in cfg.modes]
    for mode in first:
        run_mode(mode)
    if cfg.grid:
        for mode in first:
            run_grid(mode)
    for mode in [m for m in cfg.modes if m not in first]:
        run_mode(mode)

    result = {"setup": setup, "config": asdict(cfg), "rows": [asdict(r) for r in rows], "grids": grids,
              "floor_s": FLOOR_S if cuda else None, "elapsed_s": round(time.perf_counter() - t_start, 1)}
    if cfg.json_path:
        Path(cfg.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.json_path).write_text(json.dumps(result, indent=2) + "\n")
    log(format_table(result))
    return result


def format_table(result: dict) -> str:
    """The short table printed at the end."""
    cpu = result["floor_s"] is None
    lines = [f"{'mode':10s} {'variant':34s} {'s/step':>8s} {'÷floor':>7s} {'peak GB':>8s} {'warm s':>7s} {'TFLOP/s':>8s}"
             + ("  cpu-time/threads" if cpu else "")]
    for r in result["rows"]:
        def f(v, fmt):
            return format(v, fmt) if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) else "—"

        lines.append(f"{r['mode']:10s} {r['variant'][:34]:34s} {f(r['s_per_step'], '8.4f'):>8s} "
                     f"{f(r['floor_ratio'], '7.2f'):>7s} {f(r['peak_gb'], '8.1f'):>8s} {f(r['warmup_s'], '7.1f'):>7s} "
                     f"{f(r['tflops'], '8.3g'):>8s}"
                     + (f"  {f(r['extra'].get('cpu_time_per_step_over_threads_s'), '16.3f'):>16s}" if cpu else "")
                     + (f"  {r['note']}" if r["note"] else ""))
    for gr in result["grids"]:
        if "seconds" in gr:
            lines.append(f"whole grid, {gr['mode']}, {gr['steps']} steps ({gr['kernels']}): {gr['seconds']:.2f} s"
                         + (f" (cpu time / threads {gr['cpu_time_over_threads_s']:.1f} s)" if cpu else ""))
        else:
            lines.append(f"whole grid, {gr['mode']}: {gr['note']}")
    s = result["setup"]
    lines.append(f"{s['device']}, torch {s['torch']}, {s['preset']} ({s['params_backbone_M']} M backbone + "
                 f"{s['params_new_M']} M new), {s['dtype']}, {s['grid']}, {s['tokens']} tokens; "
                 f"floor from DESIGN.md; {result['elapsed_s']} s in all")
    return "\n".join(lines)
