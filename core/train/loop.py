"""The training loop: rectified-flow velocity matching of a 4D model on the synthetic world, in a
wall-clock budget, with EMA weights, checkpoints that survive a kill, a loss log, a learning curve
on fixed evaluation scenes and sample mosaics.

One call of ``train(cfg)`` is one session: it starts fresh from a preset or resumes (exactly from
a training folder's ``state.pt``, or from the weights of any model folder), walks the phases of
``cfg.schedule`` by elapsed time, and ends with a checkpoint and a last learning-curve point.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from .checkpoint import load_state, model_dir_of, read_training, save_model_folder, save_state
from .config import FRESH_SIGMA_SHIFT, STAGE_NAMES, Phase, TrainConfig
from .curve import draw_curve, save_curve, save_png
from .data import Batch, stage_batches
from .ema import EMA
from .flow import add_noise, masked_velocity_loss, masked_x0_velocity_loss, sample_sigmas
from .masks import parse_families, sample_grid_masks, sample_video_masks

ProgressFn = Callable[[dict], None]


# -- setup ------------------------------------------------------------------------------------
def check_config(cfg: TrainConfig) -> list[Phase]:
    """Raise InputError for settings that cannot run; return the phases."""
    phases = cfg.phases()
    if cfg.ema_start not in ("fresh", "warm"):
        raise InputError(f"ema_start must be 'fresh' or 'warm', got {cfg.ema_start!r}")
    if not 0 < cfg.minutes <= 24 * 60:
        raise InputError(f"minutes must be in (0, 1440], got {cfg.minutes}")
    if not 1 <= cfg.batch <= 4096:
        raise InputError(f"batch must be between 1 and 4096, got {cfg.batch}")
    for m in cfg.modes():
        if m not in ("soft", "hard", "sequential", "fused"):
            raise InputError(f"mode must be soft, hard, sequential or fused (or a comma list), got {m!r}")
    if cfg.lr_schedule not in ("cosine", "constant"):
        raise InputError(f"lr schedule must be cosine or constant, got {cfg.lr_schedule!r}")
    if not 0 < cfg.render_share <= 10:
        raise InputError(f"render share must be in (0, 10] (a share of a step's time), got {cfg.render_share}")
    if cfg.sigma_shift is not None and not 0 < cfg.sigma_shift <= 100:
        raise InputError(f"sigma shift must be in (0, 100] (1 = no shift; the default model samples at 9), "
                         f"got {cfg.sigma_shift:g}")
    if not 0 <= cfg.text_drop <= 1:
        raise InputError(f"text drop must be in [0, 1], got {cfg.text_drop}")
    try:
        parse_families(cfg.masks)
    except ValueError as e:
        raise InputError(str(e)) from None
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("device cuda asked but no CUDA GPU is available; use --device cpu")
    return phases


def prepare_out(cfg: TrainConfig) -> Path:
    """The training folder: new, empty, or the one being resumed."""
    out = Path(cfg.out)
    if out.exists():
        if not out.is_dir():
            raise InputError(f"--out {out} is a file, not a folder")
        same = cfg.resume is not None and Path(cfg.resume).resolve() == out.resolve()
        if any(out.iterdir()) and not same:
            raise InputError(f"--out {out} already holds files; pass --resume {out} to continue it, or a new folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples").mkdir(exist_ok=True)
    return out


def _weights_only(has_state: bool, what: str, src) -> None:
    """Refuse to change the shape of an exact training state (its optimizer moments would not fit)."""
    if has_state:
        raise InputError(f"{what} a model's weights, not an exact training state: "
                         f"pass --resume {src} (its model folder) with a new --out")


def load_model(cfg: TrainConfig):
    """(FourDModel on the CPU in fp32, exact state or None, training record, what was widened).

    A resume with ``cfg.anchor_input`` True widens a model without the anchor input
    (``FourDTransformer.add_anchor_input``: zero new channels of the reference embedding, so the
    model's outputs are unchanged at the start); ``cfg.warp_input`` True adds the warp input the
    same way (``add_warp_input``: a zero new embedding); the record then lists ``widened``. Only from a
    model folder's weights: the optimizer starts fresh (as for every weights resume), and an
    exact ``state.pt`` of the narrow model is refused.
    """
    from ..model.pipeline import FourDModel

    if cfg.resume is None:
        import dataclasses

        from ..model.config import preset

        mcfg = preset(cfg.preset)
        flags = {k: getattr(cfg, k) for k in ("reference_inputs", "residual", "anchor_input", "warp_input")
                 if getattr(cfg, k) is not None}
        if flags.get("reference_inputs") is False and cfg.anchor_input is None:
            flags["anchor_input"] = False  # the anchor is part of the reference inputs
        if flags.get("anchor_input") and not flags.get("reference_inputs", mcfg.reference_inputs):
            raise InputError("--anchor-input on needs the reference inputs (--reference-inputs on)")
        if flags.get("warp_input") and mcfg.codec != "pixels":
            raise InputError(f"--warp-input on needs a pixel-space model; preset {cfg.preset} uses {mcfg.codec}")
        if cfg.layers is not None:
            mcfg = dataclasses.replace(mcfg, backbone={**mcfg.backbone, "num_layers": int(cfg.layers)})
        return FourDModel.from_config(dataclasses.replace(mcfg, **flags), seed=cfg.seed), None, {}, []
    src = model_dir_of(cfg.resume)
    if src is None:
        raise InputError(f"--resume {cfg.resume} is neither a training folder nor a model folder")
    model = FourDModel.from_pretrained(src, device="cpu", dtype=torch.float32)
    has_state = (Path(cfg.resume) / "state.pt").is_file()
    record = read_training(src)
    tr, widened = model.transformer, []
    if cfg.anchor_input is False and tr.anchor_input:
        raise InputError(f"--anchor-input off: the model in {src} has the anchor input; a resume keeps it")
    if cfg.anchor_input and not tr.anchor_input:
        if not tr.reference_inputs:
            raise InputError(f"--anchor-input on: the model in {src} has no reference inputs to widen")
        _weights_only(has_state, "--anchor-input on widens", src)
        tr.add_anchor_input()
        model.config.anchor_input = True
        widened.append("anchor_input")
    if cfg.warp_input is False and tr.warp_input:
        raise InputError(f"--warp-input off: the model in {src} has the warp input; a resume keeps it")
    if cfg.warp_input and not tr.warp_input:
        if model.config.codec != "pixels":
            raise InputError(f"--warp-input on: the model in {src} is not pixel-space ({model.config.codec})")
        _weights_only(has_state, "--warp-input on adds to", src)
        tr.add_warp_input()
        model.config.warp_input = True
        widened.append("warp_input")
    if cfg.layers is not None and cfg.layers != tr.num_layers:
        if cfg.layers < tr.num_layers:
            raise InputError(f"--layers {cfg.layers}: the model in {src} has {tr.num_layers} blocks; "
                             f"a resume can keep them or add blocks, not remove them")
        _weights_only(has_state, f"--layers {cfg.layers} grows", src)
        before = tr.num_layers
        tr.grow_layers(int(cfg.layers))
        model.config.backbone = {**model.config.backbone, "num_layers": int(cfg.layers)}
        widened.append(f"layers {before}->{cfg.layers}")
    if widened:  # the history lists each change of shape with the step it came at
        record = {**record, "widened": list(record.get("widened", [])) + [
            {"step": int(record.get("step", 0)), "added": w} for w in widened]}
    state = load_state(cfg.resume, "cpu") if has_state else None
    return model, state, record, widened


def _uncompile(module: nn.Module) -> None:
    """Undo ``nn.Module.compile`` (torch has no public call for it in every version we run)."""
    if hasattr(module, "uncompile"):
        module.uncompile()
    else:
        module._compiled_call_impl = None


def trainable(model) -> nn.ModuleDict:
    """The modules that train: the 4D transformer (backbone + new layers) and the text encoder."""
    return nn.ModuleDict({"transformer": model.transformer, "text_encoder": model.text.encoder})


def phase_batch(cfg: TrainConfig, ph: Phase, ref_hw: tuple[int, int]) -> int:
    """Grids per step for a phase: same pixels per step as ``cfg.batch`` grids at the model's
    size, capped at ``cfg.max_batch`` grid-equivalents."""
    cells = cfg.views * cfg.times
    frames = max(cfg.views, cfg.times) if ph.stage == 1 else cells
    ratio = cells * ref_hw[0] * ref_hw[1] / (frames * ph.height * ph.width)
    cap = cfg.max_batch * cells // frames
    if ph.stage == 1:  # short warm-up: scene planning on the CPU, not the GPU, bounds it
        cap = min(cap, 4 * cfg.batch)
    b = max(1, min(int(round(cfg.batch * ratio)), cap))
    return b + (b % 2 if ph.stage == 1 else 0)  # stage 1: rows and columns in equal halves


def lr_at(cfg: TrainConfig, session_step: int, frac: float, warmup: int | None = None) -> float:
    """The learning rate of this session's step ``session_step`` at ``frac`` of its time budget.

    ``warmup`` (default ``cfg.warmup_steps``) ramps it up linearly from the session's first step;
    an exact resume, whose optimizer moments are restored, passes 0.
    """
    warmup = cfg.warmup_steps if warmup is None else warmup
    warm = min(1.0, (session_step + 1) / warmup) if warmup > 0 else 1.0
    if cfg.lr_schedule == "constant":
        return cfg.lr * warm
    lo = cfg.lr * cfg.min_lr_ratio
    return warm * (lo + (cfg.lr - lo) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


# -- one step ---------------------------------------------------------------------------------
def encode_text_train(text, captions: list[str], device) -> torch.Tensor:
    """``TextEncoder.encode`` with gradients (the tiny encoder trains with the transformer)."""
    enc = text.tokenizer(list(captions), padding="max_length", max_length=text.max_len, truncation=True,
                         add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    ids, mask = enc.input_ids.to(device), enc.attention_mask.to(device)
    states = text.encoder(ids, mask).last_hidden_state  # [B, L, D]
    return states * mask[..., None].to(states.dtype)


def batch_masks(b: Batch, stage: int, families: dict, gen: torch.Generator) -> torch.Tensor:
    """Known cells ``[B, V, T]`` for a batch of the given stage."""
    B, V, T = b.x0.shape[:3]
    if stage == 1:
        F = max(V, T)
        m = sample_video_masks(B, F, generator=gen)  # [B, F]
        return m.reshape(B, V, T)
    return sample_grid_masks(B, V, T, families, generator=gen)[0]


def noise_shift(cfg: TrainConfig, model) -> float:
    """The time shift of the training noise levels: the setting, else the model's own sampling shift
    when resuming (train where the sampler spends its steps), else FRESH_SIGMA_SHIFT from scratch."""
    if cfg.sigma_shift is not None:
        return float(cfg.sigma_shift)
    return float(model.config.shift) if cfg.resume else FRESH_SIGMA_SHIFT


def train_step(model, net: nn.Module, opt: torch.optim.Optimizer, batches: list[Batch], stage: int,
               cfg: TrainConfig, families: dict, gen: torch.Generator, device: torch.device,
               mode: str | None = None) -> dict:
    """One optimizer step over ``batches`` (several shapes in stage 1) in stream ``mode``
    (default: the config's main mode); returns loss and norms."""
    mode = mode or cfg.modes()[0]
    opt.zero_grad(set_to_none=True)
    knowns = [batch_masks(b, stage, families, gen).to(device) for b in batches]
    n_unknown = sum(int((~k).sum()) for k in knowns)
    amp = device.type == "cuda" and cfg.bf16
    total = 0.0
    for b, known in zip(batches, knowns):
        B = b.x0.shape[0]
        x0 = b.x0.to(device, torch.float32)
        noise = torch.randn(x0.shape, generator=None, device=device)
        sigma = sample_sigmas(B, noise_shift(cfg, model), cfg.sigma_mean, cfg.sigma_std, generator=gen).to(device)
        ref = model.transformer.flow_reference(x0, known)  # residual flow: x_1 = ref + ε
        xt = add_noise(x0, noise if ref is None else noise + ref, sigma)
        drop = (torch.rand(B, generator=gen) < cfg.text_drop).tolist()
        caps = ["" if d else c for c, d in zip(b.captions, drop)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            text = encode_text_train(model.text, caps, device)
            out = model.transformer(xt, sigma, text, cond=x0, known=known, mode=mode, context=b.context,
                                    output="velocity" if ref is None else "x0",
                                    flows=None if b.flows is None else b.flows.to(device))
        if ref is None:
            loss = masked_velocity_loss(out, noise - x0, known)
        else:  # the same velocity loss, from the exact x0 estimate, 1/σ floored (x-prediction)
            loss = masked_x0_velocity_loss(out, x0, known, sigma)
        w = int((~known).sum()) / max(1, n_unknown)
        (loss * w).backward()
        total += loss.item() * w
    gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
    opt.step()
    return {"loss": total, "grad_norm": float(gnorm)}


# -- evaluation during training ----------------------------------------------------------------
def curve_point(ema_model, scenes, cfg: TrainConfig, device, out: Path, tag: str) -> dict:
    """Score the EMA model on the fixed scenes; write a sample mosaic; return the point."""
    from ..eval.run import score_scenes

    amp = device.type == "cuda" and cfg.bf16
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        res = score_scenes(ema_model, scenes, "row0+col0", steps=cfg.eval_steps, mode=cfg.modes()[0], keep_first=True)
    write_sample_png(out / "samples" / f"{tag}.png", scenes[0], res["first"])
    return {"psnr": res["psnr"], "ssim": res["ssim"], "eval_seconds": res["seconds"]}


def write_sample_png(path: Path, scene, generated: np.ndarray) -> None:
    """Ground-truth contact sheet above the generated one (known cells outlined)."""
    from ..export import contact_sheet
    from ..grid import Grid, known_mask

    known = known_mask(scene.frames.shape[0], scene.frames.shape[1], "row0+col0")
    gt = contact_sheet(Grid(scene.frames, known), mark_known=True)
    gen = contact_sheet(Grid(generated, known), mark_known=True)
    sep = np.full((6, gt.shape[1], 3), 255, np.uint8)
    save_png(path, np.concatenate([gt, sep, gen]))


# -- the loop -----------------------------------------------------------------------------------
def train(cfg: TrainConfig, on_progress: ProgressFn | None = None,
          should_cancel: Callable[[], bool] | None = None, log: Callable[[str], None] = print) -> dict:
    """Run one training session; returns a summary (steps, minutes, last curve point, paths)."""
    # 1. Check settings, prepare the folder and the device
    phases = check_config(cfg)
    out = prepare_out(cfg)
    device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    t_start = time.perf_counter()
    budget = cfg.minutes * 60.0

    # 2. The model: fresh, or resumed (exactly from state.pt, or from a model folder's weights)
    model, state, record, widened = load_model(cfg)
    mult = model.size_multiple
    for ph in phases:
        if ph.height % mult or ph.width % mult:
            raise InputError(f"schedule size {ph.height}x{ph.width} is not a multiple of {mult} for this model "
                             f"(e.g. 40x72 or 72x128)")
    ref_hw = (model.config.height, model.config.width)
    model.config.mode = cfg.modes()[0]  # what generate uses by default: the mode it was trained in
    cfg = dataclasses.replace(cfg, sigma_shift=noise_shift(cfg, model))  # recorded with the session
    net = trainable(model).to(device).train()
    model.device, model.dtype = device, torch.float32
    ema_model = copy.deepcopy(model)
    ema_net = trainable(ema_model).eval()
    ema = EMA(net, cfg.ema_decay)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay,
                            fused=device.type == "cuda")
    gen = torch.Generator().manual_seed(cfg.seed)
    step = int(record.get("step", 0))
    samples = int(record.get("samples", 0))
    minutes_before = float(record.get("train_minutes", 0.0))
    if state is not None:
        net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu())
        torch.set_rng_state(state["cpu_rng"])
        step, samples, minutes_before = int(state["step"]), int(state["samples"]), float(state["train_minutes"])
        warmup = 0  # the warm-up protects fresh Adam moments; an exact resume restored them
    else:
        warmup = cfg.warmup_steps
        torch.manual_seed(cfg.seed + step)
        if cfg.resume and cfg.ema_start == "warm":
            ema.start_warm()
    ema.copy_to(ema_net)
    if cfg.compile:
        from torch import _dynamo

        for name in ("recompile_limit", "cache_size_limit"):  # renamed across torch versions
            if hasattr(_dynamo.config, name):
                setattr(_dynamo.config, name, max(32, getattr(_dynamo.config, name)))
    families = parse_families(cfg.masks)
    curve = record.get("curve") or {"points": [], "baselines": {}}
    sessions = list(record.get("sessions", []))
    session = {"device": str(device), "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
               "config": cfg.to_dict(), "start_step": step}
    if widened:
        session["widened"] = widened
    n_params = sum(p.numel() for p in net.parameters())
    log(f"training {model.config.name}: {n_params / 1e6:.2f} M parameters on {device}, "
        f"{cfg.minutes:g} min, noise shift {cfg.sigma_shift:g}, resume={'exact' if state else ('weights' if cfg.resume else 'no')}, step {step}"
        + (f", widened with {', '.join(widened)} (new weights zero: outputs unchanged)" if widened else ""))

    # 3. Fixed evaluation scenes and their baselines
    from ..eval.run import baseline_scores, render_eval_scenes

    eh, ew = (int(x) for x in cfg.eval_size.lower().split("x"))
    scenes = render_eval_scenes(cfg.eval_scenes, cfg.views, cfg.times, eh, ew, device=device)
    curve["baselines"] = {k: v["psnr"] for k, v in baseline_scores(scenes, "row0+col0").items()}
    curve["eval"] = {"scenes": cfg.eval_scenes, "size": cfg.eval_size, "steps": cfg.eval_steps, "mode": cfg.modes()[0]}

    # 4. Checkpoint and curve helpers
    step_seconds = 0.0
    timings = {"eval": 0.0, "save": 0.0}  # measured; reserved before the budget ends

    def train_minutes() -> float:
        return minutes_before + step_seconds / 60.0

    def training_record() -> dict:
        rec = {"step": step, "samples": samples, "train_minutes": round(train_minutes(), 3),
               "curve": curve, "sessions": sessions + [{**session, "end_step": step,
                                                        "minutes": round(step_seconds / 60, 3)}]}
        if record.get("widened"):
            rec["widened"] = record["widened"]
        return rec

    def checkpoint() -> None:
        t = time.perf_counter()
        ema.copy_to(ema_net)
        save_model_folder(ema_model, out, training_record())
        st = {"net": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
              "cpu_rng": torch.get_rng_state(), "step": step, "samples": samples,
              "train_minutes": train_minutes()}
        if device.type == "cuda":
            st["cuda_rng"] = torch.cuda.get_rng_state()
        save_state(out, st)
        timings["save"] = time.perf_counter() - t
        log(f"  checkpoint at step {step}: {timings['save']:.1f} s")

    def add_curve_point(stage: int, size: str) -> dict:
        t = time.perf_counter()
        ema.copy_to(ema_net)
        pt = curve_point(ema_model, scenes, cfg, device, out, f"step_{step:07d}")
        pt.update(step=step, samples=samples, train_minutes=round(train_minutes(), 3), stage=stage, size=size,
                  device=session["gpu"] or str(device))
        curve["points"].append(pt)
        save_curve(out / "learning_curve.json", curve)
        try:
            save_png(out / "learning_curve.png", draw_curve(curve))
        except ImportError:  # no Pillow: the JSON is the curve
            pass
        timings["eval"] = time.perf_counter() - t
        log(f"  eval step {step}: PSNR {pt['psnr']:.2f} dB, SSIM {pt['ssim']:.3f} "
            f"(baselines {', '.join(f'{k} {v:.2f}' for k, v in curve['baselines'].items())}; "
            f"{timings['eval']:.1f} s with the sample mosaic)")
        return pt

    # 5. Phases by elapsed time
    bounds = np.cumsum([p.share for p in phases]) * budget
    t0 = time.perf_counter()
    last_eval = last_save = t0
    session_step = 0
    stopped = "budget"
    loss_acc, n_acc, t_log = 0.0, 0, time.perf_counter()
    data_acc = 0.0  # seconds spent waiting for batches since the last log line
    log_path = out / "log.jsonl"
    it, cur = None, -1
    rebuild, batch_scale, compiled = False, 1.0, False
    compile_failed = False
    while True:
        now = time.perf_counter() - t0
        reserve = timings["eval"] + timings["save"]
        if now + reserve >= budget:
            break
        if cfg.max_steps is not None and session_step >= cfg.max_steps:
            stopped = "max_steps"
            break
        if should_cancel is not None and should_cancel():
            stopped = "cancelled"
            break
        k = int(np.searchsorted(bounds, now, side="right"))
        k = min(k, len(phases) - 1)
        ph = phases[k]
        if k != cur or rebuild:
            cur, rebuild = k, False
            b = max(2 if ph.stage == 1 else 1, int(phase_batch(cfg, ph, ref_hw) * batch_scale))
            b += b % 2 if ph.stage == 1 else 0
            it = stage_batches(ph.stage, b, cfg.views, cfg.times, ph.height, ph.width, device,
                               seed=cfg.seed * 1_000_003 + step, workers=cfg.workers,
                               reuse=cfg.reuse, pool_size=cfg.pool_grids * 64 // (cfg.views * cfg.times)
                               * (ref_hw[0] * ref_hw[1]) // (ph.height * ph.width), render_share=cfg.render_share,
                               flows=model.transformer.warp_input)
            # Compiling costs tens of seconds a shape: only for phases long enough to win it back.
            want = cfg.compile and not compile_failed and ph.share * budget >= cfg.compile_min_minutes * 60
            if want != compiled:
                model.transformer.compile() if want else _uncompile(model.transformer)
            compiled = want
            log(f"phase {k + 1}/{len(phases)}: stage {ph.stage} ({STAGE_NAMES[ph.stage]}) at "
                f"{ph.height}x{ph.width}, batch {b}, until minute {bounds[k] / 60:.1f}"
                + (", compiled" if compiled else ""))
        td = time.perf_counter()
        batches = next(it)
        data_acc += time.perf_counter() - td
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, session_step, now / budget, warmup)
        ts = time.perf_counter()
        try:
            modes = cfg.modes()
            res = train_step(model, net, opt, batches, ph.stage, cfg, families, gen, device,
                             mode=modes[step % len(modes)])
        except torch.cuda.OutOfMemoryError:
            if batch_scale < 1 / 16:
                raise
            opt.zero_grad(set_to_none=True)
            del batches
            torch.cuda.empty_cache()
            batch_scale /= 2
            rebuild = True
            log(f"out of GPU memory at batch {b}: halving the batch")
            continue
        except Exception as e:  # a compiler failure must not cost the session: go on eagerly
            if not compiled:
                raise  # (an error that is not the compiler's comes back in eager mode and ends here)
            log(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                "training eagerly")
            _uncompile(model.transformer)
            compiled, compile_failed = False, True
            opt.zero_grad(set_to_none=True)
            continue
        ema.update(net)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt_step = time.perf_counter() - ts
        step_seconds += dt_step
        if hasattr(it, "observe"):
            it.observe(dt_step)
        step += 1
        session_step += 1
        samples += sum(bb.x0.shape[0] for bb in batches)
        loss_acc += res["loss"]
        n_acc += 1
        if not math.isfinite(res["loss"]):
            raise RuntimeError(f"loss is {res['loss']} at step {step}; lower --lr")
        if step % cfg.log_every == 0:
            dt = time.perf_counter() - t_log
            line = {"step": step, "loss": loss_acc / n_acc, "lr": opt.param_groups[0]["lr"],
                    "grad_norm": res["grad_norm"], "stage": ph.stage, "size": f"{ph.height}x{ph.width}",
                    "batch": sum(bb.x0.shape[0] for bb in batches), "steps_per_s": n_acc / dt,
                    "train_minutes": round(train_minutes(), 3), "wall_s": round(time.perf_counter() - t_start, 1),
                    "data_s": round(data_acc, 3)}
            if hasattr(it, "reuse"):
                line["reuse"] = round(it.reuse, 2)
            with open(log_path, "a") as fh:
                fh.write(json.dumps(line) + "\n")
            log(f"step {step}  loss {line['loss']:.4f}  lr {line['lr']:.2e}  {line['steps_per_s']:.2f} it/s  "
                f"stage {ph.stage} {line['size']}  {line['train_minutes']:.1f} min")
            if on_progress is not None:
                on_progress(line)
            loss_acc, n_acc, t_log, data_acc = 0.0, 0, time.perf_counter(), 0.0
        tnow = time.perf_counter()
        if tnow - last_eval >= cfg.eval_every_min * 60:
            add_curve_point(ph.stage, f"{ph.height}x{ph.width}")
            last_eval = time.perf_counter()
        if tnow - last_save >= cfg.save_every_min * 60:
            checkpoint()
            last_save = time.perf_counter()

    # 6. Last curve point and checkpoint
    ph = phases[max(cur, 0)]
    pts = curve["points"]
    if pts and pts[-1]["step"] == step:
        point = pts[-1]
    else:
        point = add_curve_point(ph.stage, f"{ph.height}x{ph.width}") if step > 0 else None
    checkpoint()
    summary = {"stopped": stopped, "step": step, "session_steps": session_step, "samples": samples,
               "train_minutes": round(train_minutes(), 3), "session_minutes": round(step_seconds / 60, 3),
               "wall_minutes": round((time.perf_counter() - t_start) / 60, 3), "point": point,
               "baselines": curve["baselines"], "model": str(out / "model")}
    with open(out / "summary.json", "w") as fh:
        json.dump(summary, fh, indent=1)
    return summary
