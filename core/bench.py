"""Speed of the 4D transformer: seconds per denoising step for each stream mode, what each
optimisation buys, time to a whole grid, peak memory, and the ratio to DESIGN.md's floor.

On the GPU it builds a Wan2.1-1.3B-shaped backbone with random weights (speed does not depend on
the weights) and times an 8 x 8 latent grid of 288 x 512 frames (36 x 64 latents, 576 tokens a
frame, 36,864 a grid; the VAE and the text encoder are not part of the step). The text states
are a prompt of ``prompt_tokens`` (default 24) random rows, zero after it up to the model's text
length (512 for Wan), as Wan's pipeline pads its umT5 output; quick runs also time the soft
defaults with random rows filling the whole text (no padding, so no folded cross-attention). On
the CPU it does the same for the embedded default model's shape. Rows run in order of importance and stop when
the time budget is spent, so one call always ends with a table.

Speed options (``--options quick|all``, default ``all`` on CUDA): each row changes one thing
against the compiled baseline of its mode — the attention kernel (cuDNN / flash / efficient, for
the parallel streams and the exact ``split`` fused kernel), the FFN's bias+GELU in the matmul
epilogue, Q/K/V shared between equal streams, compiling the whole step instead of each block,
CUDA graphs (``reduce-overhead``), ``max-autotune`` — then a
"combined" row per family applies every option that won, and the whole-grid timings use it. A
failing row prints its error and the bench goes on; warm-ups (compile) are timed apart.

``--quick`` (about 5 minutes on an H100): per mode (soft, hard, fused) an eager row (the
reference of the Δrel column), the old compiled baseline (no speed options; fused: flex) and the
engine's defaults (``[defaults]``: FFN epilogue, shared Q/K/V, folded cross-attention of the
padded prompt, fused split on cuDNN), then whole
grids of soft and fused with the defaults and the kernel profile of the soft default step; last,
budget permitting, the soft defaults compiled as one whole-step graph.
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
# A variant whose velocity differs from its mode's baseline by more than this (relative L2) is
# flagged (and never chosen as a winner): bf16 rounding of a 30-block step gives about 1e-2
# between kernel choices (the eager ablation rows show the level); a layout bug gives ~1.
MISMATCH = 0.1


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
    budget_s: float | None = None  # default 480 on cuda, 400 on cpu
    json_path: str | None = None
    options: str | None = None  # speed-option rows: none | quick | all (default: all on cuda, none on cpu)
    quick: bool = False  # eager reference, old baseline and defaults per mode, two grids, soft profile
    profile: bool | None = None  # kernel-time table of the fastest soft variant (default: on for cuda)
    prompt_tokens: int = 24  # rows of the text states before the zero padding (clipped to the text length)

    def resolve(self) -> "BenchConfig":
        c = BenchConfig(**asdict(self))
        if c.device == "auto":
            c.device = "cuda" if torch.cuda.is_available() else "cpu"
        c.preset = c.preset or ("wan2.1-1.3b" if c.device == "cuda" else "default")
        c.compile = (c.device == "cuda") if c.compile is None else c.compile
        c.steps = c.steps or (3 if c.device == "cuda" else 1)
        c.budget_s = c.budget_s or (480.0 if c.device == "cuda" else 400.0)
        c.profile = (c.device == "cuda") if c.profile is None else c.profile
        if c.options is None:
            c.options = "quick" if c.quick else ("all" if c.device == "cuda" else "none")
        if c.options not in OPTION_SETS:
            raise ValueError(f"options must be one of {', '.join(OPTION_SETS)}, got {c.options!r}")
        return c


OPTION_SETS = ("none", "quick", "all")


@dataclass(frozen=True)
class Variant:
    """One way of running a mode: how it is compiled and which speed options are on."""

    mode: str
    compile: str = "blocks"  # eager | blocks (each layer, shared graph) | step (the whole block stack)
    compile_mode: str | None = None  # torch.compile mode: max-autotune-no-cudagraphs, reduce-overhead
    sdpa: str = "auto"  # attention kernel: auto | flash | cudnn | efficient
    ffn_epilogue: bool = False  # bias + tanh-GELU in the FFN matmul's epilogue
    share: bool = False  # Q/K/V once where both streams hold the same tokens
    text_fold: bool = False  # the padded prompt's cross-attention folded (blocks.fold_text_kv)
    qk_kernel: bool = False  # Q/K RMS-norm + RoPE + layout as one Triton kernel (kernels.qkv_norm_rope)
    norm_kernel: bool = False  # each residual + LayerNorm as one Triton kernel (kernels.residual_norm)
    backend: str = "auto"  # fused-mode kernel: flex | split (auto: flex on cuda, split on cpu)
    defaults: bool = False  # the engine's inference defaults (only marks the label)

    def label(self) -> str:
        parts = [{"eager": "eager", "blocks": "compiled", "step": "whole-step compiled"}[self.compile]
                 + (f" {self.compile_mode}" if self.compile_mode else "")]
        if self.mode == "fused":
            parts.append(self.backend)
        if self.sdpa != "auto":
            parts.append(f"sdpa={self.sdpa}")
        if self.ffn_epilogue:
            parts.append("ffn-epilogue")
        if self.share:
            parts.append("shared-qkv")
        if self.text_fold:
            parts.append("text-fold")
        if self.qk_kernel:
            parts.append("qk-kernel")
        if self.norm_kernel:
            parts.append("norm-kernel")
        return ", ".join(parts) + (" [defaults]" if self.defaults else "")

    @property
    def needs_cuda_compile(self) -> bool:
        return self.compile == "step" or self.compile_mode is not None


def kernel_profile(fn: Callable[[], object], top: int = 30) -> dict:
    """CUDA kernel time of one call of ``fn`` (already warm): the ``top`` kernels by total time,
    their sum, and the wall time of the same call (the difference is launch gaps and idle GPU)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0

    def dev_us(e) -> float:
        return float(getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0) or 0.0)

    # Only CUDA activity is recorded, so every event is a kernel (or a copy) and counts once.
    evs = sorted((e for e in prof.key_averages() if dev_us(e) > 0), key=dev_us, reverse=True)
    total = sum(dev_us(e) for e in evs)
    kinds: dict[str, float] = {}
    for e in evs:
        kinds[kernel_kind(e.key)] = kinds.get(kernel_kind(e.key), 0.0) + dev_us(e) / 1000
    return {"wall_ms": round(1000 * wall, 2), "kernel_sum_ms": round(total / 1000, 2),
            "launches": int(sum(e.count for e in evs)),
            "by_kind_ms": {k: round(v, 2) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "top": [{"kernel": e.key[:120], "ms": round(dev_us(e) / 1000, 3), "calls": e.count} for e in evs[:top]]}


def kernel_kind(name: str) -> str:
    """A rough class of a CUDA kernel from its name: matmul, attention, elementwise (Triton), copy, other."""
    n = name.lower()
    if n.startswith("triton_tem"):  # inductor templates: FlexAttention or max-autotune matmuls
        return "attention" if "flex" in n else "matmul"
    if n.startswith("triton"):  # (a fused name may mention the attention op it feeds)
        return "elementwise (triton)"
    if any(k in n for k in ("attention", "fmha", "flash", "cudnn", "sdpa", "flex")):
        return "attention"
    if any(k in n for k in ("gemm", "nvjet", "cutlass", "xmma", "cublas", "_mm_", "matmul")) or n.startswith("sm90"):
        return "matmul"
    if "memcpy" in n or "copy" in n or "memset" in n:
        return "copy"
    return "other"


def configure(tr, v: Variant, cuda: bool) -> None:
    """Set ``tr`` (and the process-wide kernel switches) up for variant ``v``; compiled variants
    start from a clean dynamo cache so that no earlier graph is reused."""
    from .model.blocks import set_engine_switches

    tr.uncompile_blocks()
    if cuda or v.compile != "eager":
        torch._dynamo.reset()
    set_engine_switches({"sdpa": v.sdpa, "ffn_epilogue": v.ffn_epilogue, "text_fold": v.text_fold,
                         "qk_kernel": v.qk_kernel, "norm_kernel": v.norm_kernel})
    tr.share_equal_streams = v.share
    kw = {"mode": v.compile_mode} if v.compile_mode else {}
    if v.compile == "blocks":
        tr.compile_blocks(**kw)
    elif v.compile == "step":
        tr.compile_step(**kw)


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
    from .model.blocks import engine_switches, set_engine_switches

    cfg = cfg.resolve()
    t_start = time.perf_counter()
    found = engine_switches()
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
    full_text = torch.randn(1, L, bc.text_dim, generator=g).to(dev, dtype)
    n_prompt = max(1, min(cfg.prompt_tokens, L))
    text = full_text.clone()
    text[:, n_prompt:] = 0  # [1, L, D_text] a prompt, then Wan's zero padding
    sigma = torch.tensor([0.6])
    setup = {"device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
             "torch": torch.__version__, "preset": cfg.preset, "dtype": str(dtype).replace("torch.", ""),
             "grid": f"{V}x{T} latent cells of {h}x{w} ({H}x{W} pixels)", "tokens_per_frame": P,
             "tokens": V * T * P, "blocks": bc.num_layers, "width": D,
             "params_backbone_M": round(sum(p.numel() for p in tr.backbone.parameters()) / 1e6, 1),
             "params_new_M": round(sum(p.numel() for p in tr.layers.parameters()) / 1e6, 1),
             "compile": cfg.compile, "timed_steps": cfg.steps, "options": cfg.options,
             "text": f"{n_prompt} prompt tokens of {L}"}
    log("bench: " + ", ".join(f"{k}={v}" for k, v in setup.items()))
    rows: list[Row] = []
    grids: list[dict] = []
    variants: dict[tuple[str, str], Variant] = {}  # (mode, label) -> variant, for measured rows
    ref_out: dict[str, torch.Tensor] = {}  # mode -> velocity of its first measured row
    profiles: dict[str, dict] = {}

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def left() -> float:
        return cfg.budget_s - (time.perf_counter() - t_start)

    threads = torch.get_num_threads()
    cpu_est: dict[int, float] = {}

    first_out: dict[int, torch.Tensor] = {}

    def measure(fn: Callable[[], object], n: int) -> tuple[float, float, float | None]:
        """(warm-up s, mean s per call, peak GB). On the CPU also the process time per call over
        the thread count (``cpu_est``): the wall time on an otherwise idle machine, roughly. The
        warm-up's output goes to ``first_out`` (to compare variants)."""
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        warm = time.perf_counter() - t0
        first_out.pop(0, None)
        if isinstance(out, torch.Tensor):
            first_out[0] = out.detach().float().clone()
        del out
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            fn()
        sync()
        per = (time.perf_counter() - t0) / n
        cpu_est[0] = (time.process_time() - c0) / n / threads
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        return warm, per, peak

    def result(partial: bool) -> dict:
        return {"setup": setup, "config": asdict(cfg), "rows": [asdict(r) for r in rows], "grids": grids,
                "profiles": profiles, "floor_s": FLOOR_S if cuda else None,
                "elapsed_s": round(time.perf_counter() - t_start, 1), "partial": partial}

    def checkpoint() -> None:
        """Write what is measured so far, so a run killed from outside still leaves its rows."""
        if cfg.json_path:
            Path(cfg.json_path).parent.mkdir(parents=True, exist_ok=True)
            Path(cfg.json_path).write_text(json.dumps(result(True), indent=2) + "\n")

    def finish() -> dict:
        configure(tr, Variant("soft", "eager"), cuda)
        set_engine_switches(found)  # leave the process-wide switches as found
        compare_to_baselines(rows, base_compile, default_fused)
        final = result(False)
        if cfg.json_path:
            Path(cfg.json_path).parent.mkdir(parents=True, exist_ok=True)
            Path(cfg.json_path).write_text(json.dumps(final, indent=2) + "\n")
        log(format_table(final))
        return final

    def add(mode: str, variant: str, make: Callable[[], Callable[[], object]], need_s: float,
            n: int | None = None, v: Variant | None = None, compare: bool = True):
        """Time one row: ``make()`` sets up (and may fail), the first call of what it returns is
        the warm-up; ``compare``: its velocity is held to the mode's first row (False for rows of
        other inputs). Returns the row, or None when skipped or failed."""
        if any(r.mode == mode and r.variant == variant for r in rows):
            return next(r for r in rows if r.mode == mode and r.variant == variant)
        if left() < need_s:
            rows.append(Row(mode, variant, note="skipped: time budget"))
            log(f"  {mode:10s} {variant:56s} skipped (budget)")
            return None
        try:
            with torch.no_grad():
                warm, per, peak = measure(make(), n or cfg.steps)
        except Exception as e:  # a diagnostic tool: report the row's failure and go on
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
            msg = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
            rows.append(Row(mode, variant, note=f"failed: {msg}"))
            log(f"  {mode:10s} {variant:56s} FAILED {msg}")
            return None
        fl = step_flops(mode if mode in ("soft", "hard", "sequential", "fused") else "soft",
                        V, T, P, D, bc.ffn_dim, L, bc.num_layers, L)
        floor = FLOOR_S.get(mode) if (cuda and cfg.preset == "wan2.1-1.3b" and (V, T, H, W) == (8, 8, 288, 512)) else None
        row = Row(mode, variant, round(per, 4), round(per / floor, 2) if floor else None,
                  round(peak, 2) if peak is not None else None, round(warm, 2), float(f"{fl / per / 1e12:.3g}"))
        if not cuda:
            row.extra["cpu_time_per_step_over_threads_s"] = round(cpu_est[0], 3)
        out = first_out.pop(0, None)
        if out is not None and compare:  # same velocity as the mode's first (baseline) row, up to rounding?
            if mode not in ref_out:
                ref_out[mode] = out
            else:
                ref = ref_out[mode]
                row.extra["rel_err_vs_base"] = float(f"{((out - ref).norm() / ref.norm()).item():.3g}")
                if not row.extra["rel_err_vs_base"] < MISMATCH:
                    row.note = f"MISMATCH: output differs from the baseline by {row.extra['rel_err_vs_base']:.3g}"
        rows.append(row)
        if v is not None:
            variants[(mode, variant)] = v
        checkpoint()
        log(f"  {mode:10s} {variant:56s} {per:8.4f} s/step  warm-up {warm:6.1f} s"
            + (f"  peak {peak:5.1f} GB" if peak is not None else f"  (cpu time / {threads} threads {cpu_est[0]:.3f} s)"))
        return row

    def ours(mode: str, backend: str = "auto", cache: bool = True, states=None):
        states = text if states is None else states
        plan = tr.prepare(states, (V, T, h, w), cond=cond, known=known, mode=mode, fused_backend=backend, cache=cache)
        return lambda: tr.step(plan, x, sigma)

    est = 4.0 if cuda else 30.0  # rough seconds for an eager row
    compile_s = 60.0  # rough seconds for a compiled row (its warm-up compiles)
    default_fused = "flex" if cuda else "split"
    base_compile = "blocks" if cfg.compile else "eager"

    def need_of(v: Variant) -> float:
        if v.compile == "eager":
            return est
        if v.compile_mode is not None and v.compile_mode.startswith("max-autotune"):
            return 240.0
        return 150.0 if v.compile == "step" else compile_s

    def run_variant(v: Variant):
        """Time variant ``v`` (a compiled row on the cpu without --compile runs eager; rows that
        only make sense compiled on cuda are skipped there)."""
        if v.compile != "eager" and not cfg.compile:
            if v.needs_cuda_compile:
                return None
            v = Variant(**{**asdict(v), "compile": "eager"})
        if v.needs_cuda_compile and not cuda:
            return None
        if v.mode == "fused" and v.backend == "auto":
            v = Variant(**{**asdict(v), "backend": default_fused})

        def make():
            use(v)
            fn = ours(v.mode, v.backend if v.mode == "fused" else "auto")
            return fn

        return add(v.mode, v.label(), make, need_of(v), v=v)

    current: dict[str, Variant | None] = {"v": None}

    def use(v: Variant) -> None:
        """``configure`` for ``v`` unless it is already set up (so a grid or a profile right
        after its row reuses the compiled code instead of compiling it again)."""
        if current["v"] != v:
            current["v"] = None
            configure(tr, v, cuda)
            current["v"] = v

    def base(mode: str, **kw) -> Variant:
        return Variant(mode, compile=base_compile, **kw)

    def s_of(mode: str, v: Variant) -> float | None:
        if v.mode == "fused" and v.backend == "auto":
            v = Variant(**{**asdict(v), "backend": default_fused})
        if v.compile != "eager" and not cfg.compile:
            v = Variant(**{**asdict(v), "compile": "eager"})
        r = next((r for r in rows if r.mode == mode and r.variant == v.label()), None)
        return r.s_per_step if r and not r.note.startswith("MISMATCH") else None

    def helps(mode: str, v: Variant, than: Variant) -> bool:
        a, b = s_of(mode, v), s_of(mode, than)
        return a is not None and b is not None and a < 0.99 * b

    def fastest(mode: str, options: list[Variant], than: Variant) -> Variant:
        """The fastest of ``options`` that beats ``than`` by more than 1 %, else ``than``."""
        won = [o for o in options if helps(mode, o, than)]
        return min(won, key=lambda o: s_of(mode, o)) if won else than

    def defaults(mode: str) -> Variant:
        """How the engine runs ``mode`` now (inference, half precision on CUDA): FFN epilogue on,
        Q/K/V shared where the streams are equal, the padded prompt's cross-attention folded,
        the Q/K and residual + norm Triton kernels, fused mode on the split kernel (cuDNN)."""
        return Variant(mode, compile=base_compile, ffn_epilogue=cuda, share=mode in ("soft", "hard") and cuda,
                       text_fold=True, qk_kernel=cuda, norm_kernel=cuda, backend="split" if mode == "fused" else "auto",
                       defaults=True)

    def eager_ref(mode: str) -> Variant:
        """The reference of the Δrel column in quick runs: eager, plain (fused: split)."""
        return Variant(mode, "eager", backend="split" if mode == "fused" else "auto")

    def combined(mode: str) -> Variant:
        """Every single option that beat its baseline (by >1 %), together."""
        soft_base = base("soft")
        sdpa = fastest("soft", [base("soft", sdpa=b) for b in ("cudnn", "flash", "efficient")], soft_base).sdpa
        ffn = helps("soft", base("soft", ffn_epilogue=True), soft_base) or \
            helps("fused", base("fused", ffn_epilogue=True), base("fused"))
        share = helps("hard", base("hard", share=True), base("hard"))
        comp = fastest("soft", [Variant("soft", "step"),
                                Variant("soft", "step", "reduce-overhead"),
                                Variant("soft", "blocks", "max-autotune-no-cudagraphs")], soft_base)
        kw = dict(compile=comp.compile, compile_mode=comp.compile_mode, ffn_epilogue=ffn)
        if mode != "fused":
            return Variant(mode, sdpa=sdpa, share=share, **kw)
        # fused: the exact split kernel (with the best attention kernel for it) or FlexAttention
        split_sdpa = fastest("fused", [base("fused", backend="split", sdpa=b) for b in ("cudnn", "flash", "efficient")],
                             base("fused", backend="split")).sdpa
        flex_s = s_of("fused", base("fused"))
        split_s = s_of("fused", base("fused", backend="split", sdpa=split_sdpa))
        if cuda and split_s is not None and (flex_s is None or split_s < flex_s):
            return Variant("fused", backend="split", sdpa=split_sdpa, **kw)
        return Variant("fused", backend=default_fused, sdpa=sdpa, **kw)

    def run_grid(mode: str, only: str | None = None) -> None:
        """A whole grid with the fastest variant of ``mode`` (or the row labelled ``only``)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        from .sampler import SampleSettings, denoise

        cands = [(r, variants[(r.mode, r.variant)]) for r in rows
                 if r.mode == mode and r.s_per_step and (r.mode, r.variant) in variants
                 and not r.note.startswith("MISMATCH") and (only is None or r.variant == only)]
        if not cands:
            return
        best, v = min(cands, key=lambda c: c[0].s_per_step)
        if left() < best.s_per_step * cfg.grid_steps * 1.2 + 20:
            grids.append({"mode": mode, "note": "skipped: time budget"})
            return
        try:
            use(v)
            s = SampleSettings(steps=cfg.grid_steps, mode=mode, fused_backend=v.backend if mode == "fused" else "auto")
            sched = FlowMatchEulerDiscreteScheduler(shift=mcfg.shift)
            mask = known[..., None].expand(-1, -1, -1, tr.mask_channels)
            with torch.no_grad():  # warm-up (compiles) on a one-step grid, timed apart
                sync()
                t0 = time.perf_counter()
                denoise(tr, sched, cond.float(), mask, text, SampleSettings(**{**asdict(s), "steps": 1}))
                sync()
                warm = time.perf_counter() - t0
                sched = FlowMatchEulerDiscreteScheduler(shift=mcfg.shift)
                t0, c0 = time.perf_counter(), time.process_time()
                denoise(tr, sched, cond.float(), mask, text, s)
                sync()
        except Exception as e:  # report and go on
            grids.append({"mode": mode, "kernels": best.variant, "note": f"failed: {type(e).__name__}: {str(e)[:200]}"})
            log(f"  whole grid, {mode} ({best.variant}) FAILED {type(e).__name__}: {str(e)[:200]}")
            return
        total = time.perf_counter() - t0
        entry = {"mode": mode, "kernels": best.variant, "steps": cfg.grid_steps, "seconds": float(f"{total:.4g}"),
                 "warmup_s": round(warm, 2)}
        if not cuda:
            entry["cpu_time_over_threads_s"] = round((time.process_time() - c0) / threads, 2)
        grids.append(entry)
        checkpoint()
        log(f"  whole grid, {mode} ({best.variant}), {cfg.grid_steps} steps: {total:.2f} s"
            + ("" if cuda else f" (cpu time / {threads} threads {entry['cpu_time_over_threads_s']:.1f} s)"))

    def ablations() -> None:
        """What each optimisation buys (eager, soft mode), and diffusers as is."""
        use(Variant("soft", "eager"))
        current["v"] = None  # the rows below change the model's switches
        for blk in tr.backbone.blocks:  # the last ablation row fuses them again
            blk.attn1.unfuse_projections()
            blk.attn2.unfuse_projections()
        bb = tr.backbone
        seq_v = x.permute(0, 2, 3, 1, 4, 5).reshape(T, C, V, h, w)
        seq_t = x.permute(0, 1, 3, 2, 4, 5).reshape(V, C, T, h, w)
        ts = torch.full((max(V, T),), 600.0, device=dev)

        def as_is():  # the two streams, each a plain diffusers forward over its videos
            bb(seq_v, ts[:T], text.expand(T, -1, -1), return_dict=False)
            bb(seq_t, ts[:V], text.expand(V, -1, -1), return_dict=False)

        try:
            add("as-is", "diffusers forward, two streams", lambda: as_is, est * 2)
            tr.batch_streams = tr.cache_text_kv = tr.cache_time = False
            add("soft", "eager, none of the below", lambda: ours("soft", cache=False), est)
            tr.batch_streams = True
            add("soft", "eager, + streams in one batch", lambda: ours("soft", cache=False), est)
            tr.cache_text_kv = tr.cache_time = True
            add("soft", "eager, + text-K/V and time cached", lambda: ours("soft"), est)
        finally:
            tr.batch_streams = tr.cache_text_kv = tr.cache_time = True
        tr.fuse_projections()
        add("soft", "eager, + fused Q/K/V matmuls", lambda: ours("soft"), est)

    def profile(mode: str, only: str | None = None) -> None:
        """Where the fastest step of ``mode`` (or the row labelled ``only``) spends its GPU time."""
        cands = [(r, variants[(r.mode, r.variant)]) for r in rows
                 if r.mode == mode and r.s_per_step and (r.mode, r.variant) in variants
                 and not r.note.startswith("MISMATCH") and (only is None or r.variant == only)]
        if not cands or left() < 60:
            return
        best, v = min(cands, key=lambda c: c[0].s_per_step)
        try:
            use(v)
            with torch.no_grad():  # (the plan too: prepared with grad it would not fold the text)
                fn = ours(mode, v.backend if mode == "fused" else "auto")
                fn()
                fn()
                profiles[mode] = {"variant": best.variant, **kernel_profile(fn)}
            p = profiles[mode]
            log(f"  profile {mode} ({best.variant}): wall {p['wall_ms']:.1f} ms, kernels {p['kernel_sum_ms']:.1f} ms "
                f"in {p['launches']} launches; "
                + ", ".join(f"{k} {ms:.1f}" for k, ms in p["by_kind_ms"].items()))
            for k in p["top"]:
                log(f"    {k['ms']:8.2f} ms {k['calls']:5d}x  {k['kernel'][:120]}")
        except Exception as e:  # report and go on
            profiles[mode] = {"variant": best.variant, "note": f"failed: {type(e).__name__}: {str(e)[:200]}"}
            log(f"  profile {mode} FAILED {type(e).__name__}: {str(e)[:200]}")
        checkpoint()

    def run_combined(mode: str) -> None:
        v = combined(mode)
        if v != base(mode) and v != base(mode, backend=default_fused):
            run_variant(v)

    # The projections are fused for every row but the ablations (which show what fusing buys);
    # on the cpu the ablations come first, as before (they are the rows that matter there).
    if cfg.ablations and "soft" in cfg.modes and not cuda and not cfg.quick:
        ablations()
    tr.fuse_projections()
    opts = cfg.options != "none"
    full = cfg.options == "all"

    if cfg.quick:  # eager reference, old baseline, defaults; grids and the soft profile
        for mode in [m for m in ("soft", "hard", "fused") if m in cfg.modes]:
            run_variant(eager_ref(mode))
            run_variant(base(mode))
            run_variant(defaults(mode))
            d = defaults(mode)
            if not cfg.compile:
                d = Variant(**{**asdict(d), "compile": "eager"})
            if cfg.grid and mode in ("soft", "fused"):
                run_grid(mode, only=d.label())
            if cfg.profile and cuda and mode == "soft":
                profile(mode, only=d.label())
            if mode == "soft" and cuda:  # what the Q/K and the norm kernels buy: the defaults without each
                run_variant(Variant(**{**asdict(d), "qk_kernel": False, "defaults": False}))
                run_variant(Variant(**{**asdict(d), "norm_kernel": False, "defaults": False}))
            if mode == "soft" and n_prompt < L:  # the same defaults on a prompt that fills the text
                add("soft", d.label().replace(" [defaults]", "") + f", {L}-token prompt",
                    lambda: (use(d), ours("soft", states=full_text))[1], need_of(d), compare=False)
        if cuda and cfg.compile and "soft" in cfg.modes:  # last, if the budget allows: the whole
            # step as one graph now that the sync no longer breaks it (inductor may then fuse the
            # FFN residual of block l into sync l as well)
            run_variant(Variant(**{**asdict(defaults("soft")), "compile": "step", "defaults": False}))
        return finish()

    # 1. Baselines: the headline modes with no speed option, then as the engine runs them.
    first = [m for m in ("soft", "fused") if m in cfg.modes]
    for mode in first:
        run_variant(base(mode))
        if mode == "fused" and cuda:
            run_variant(base(mode, backend="split"))
        if opts:
            run_variant(defaults(mode))
    if opts and "hard" in cfg.modes:
        run_variant(base("hard"))
        run_variant(defaults("hard"))

    # 2. Candidate options, one change each against its mode's baseline.
    if opts:
        cand = []
        if "soft" in cfg.modes:
            cand += [base("soft", sdpa="cudnn"), base("soft", ffn_epilogue=True)]
        if "fused" in cfg.modes and cuda:
            cand += [base("fused", backend="split", sdpa="cudnn")]
        if "hard" in cfg.modes:
            cand += [base("hard", share=True)]
        if "soft" in cfg.modes:
            cand += [Variant("soft", "step")]
        for v in cand:
            run_variant(v)

    # 3. Per headline mode: every winner together, a whole grid with the fastest variant, and
    #    where that variant's step spends its GPU time (the grid and the profile reuse its compile).
    for mode in first:
        if opts:
            run_combined(mode)
        if cfg.grid:
            run_grid(mode)
        if cfg.profile and cuda:
            profile(mode)
    if opts and "hard" in cfg.modes:
        run_combined("hard")

    # 4. The rest: ablations, the other modes, and the slower-to-try options.
    if cfg.ablations and "soft" in cfg.modes and cuda and not cfg.quick:
        ablations()
        tr.fuse_projections()
    if not cfg.quick:
        for mode in cfg.modes:
            if mode not in first:
                run_variant(base(mode))
    if full:
        more = []
        if "soft" in cfg.modes:
            more += [base("soft", sdpa="efficient"), base("soft", sdpa="flash")]
        if "fused" in cfg.modes and cuda:
            more += [base("fused", backend="split", sdpa="efficient"), base("fused", ffn_epilogue=True)]
        if "soft" in cfg.modes:
            more += [Variant("soft", "step", "reduce-overhead"), Variant("soft", "blocks", "max-autotune-no-cudagraphs")]
        if "fused" in cfg.modes:
            more += [Variant("fused", "blocks", "max-autotune-no-cudagraphs")]
        for v in more:
            run_variant(v)
        for mode in first:  # the winners may have changed with the rows above
            run_variant(combined(mode))
    return finish()


def compare_to_baselines(rows: list[Row], base_compile: str, default_fused: str) -> None:
    """Each row's speed-up over the baseline of its mode (``extra["vs_base"]``: baseline s /
    row s, so > 1 is faster)."""
    name = "compiled" if base_compile == "blocks" else "eager"
    for r in rows:
        ref = name + (f", {default_fused}" if r.mode == "fused" else "")
        b = next((x for x in rows if x.mode == r.mode and x.variant == ref and x.s_per_step), None)
        if b is not None and r.s_per_step:
            r.extra["vs_base"] = round(b.s_per_step / r.s_per_step, 3)
            r.extra["saved_ms"] = round(1000 * (b.s_per_step - r.s_per_step), 1)


def format_table(result: dict) -> str:
    """The short table printed at the end."""
    cpu = result["floor_s"] is None
    lines = [f"{'mode':10s} {'variant':56s} {'s/step':>8s} {'×base':>6s} {'Δrel':>7s} {'÷floor':>7s} {'peak GB':>8s} "
             f"{'warm s':>7s} "
             f"{'TFLOP/s':>8s}" + ("  cpu-time/threads" if cpu else "")]
    for r in result["rows"]:
        def f(v, fmt):
            return format(v, fmt) if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) else "—"

        lines.append(f"{r['mode']:10s} {r['variant'][:56]:56s} {f(r['s_per_step'], '8.4f'):>8s} "
                     f"{f(r['extra'].get('vs_base'), '6.3f'):>6s} {f(r['extra'].get('rel_err_vs_base'), '7.1e'):>7s} "
                     f"{f(r['floor_ratio'], '7.2f'):>7s} {f(r['peak_gb'], '8.1f'):>8s} {f(r['warmup_s'], '7.1f'):>7s} "
                     f"{f(r['tflops'], '8.3g'):>8s}"
                     + (f"  {f(r['extra'].get('cpu_time_per_step_over_threads_s'), '16.3f'):>16s}" if cpu else "")
                     + (f"  {r['note']}" if r["note"] else ""))
    for gr in result["grids"]:
        if "seconds" in gr:
            lines.append(f"whole grid, {gr['mode']}, {gr['steps']} steps ({gr['kernels']}): {gr['seconds']:.2f} s"
                         + (f" (+{gr['warmup_s']:.1f} s warm-up)" if gr.get("warmup_s") is not None else "")
                         + (f" (cpu time / threads {gr['cpu_time_over_threads_s']:.1f} s)" if cpu else ""))
        else:
            lines.append(f"whole grid, {gr['mode']}" + (f" ({gr['kernels']})" if "kernels" in gr else "")
                         + f": {gr['note']}")
    s = result["setup"]
    lines.append(f"{s['device']}, torch {s['torch']}, {s['preset']} ({s['params_backbone_M']} M backbone + "
                 f"{s['params_new_M']} M new), {s['dtype']}, {s['grid']}, {s['tokens']} tokens; "
                 f"floor from DESIGN.md; ×base = baseline s/step / this row's, Δrel = "
                 f"relative L2 difference of the velocity from the mode's first row; "
                 f"{result['elapsed_s']} s in all")
    return "\n".join(lines)
