"""Sampling a 4D grid: the denoising loop over ``FlowMatchEulerDiscreteScheduler``, written out,
and the autoregressive extension of a grid along time.

Rectified flow: ``x_σ = (1−σ)·x0 + σ·ε``, the model predicts ``v = ε − x0``; an Euler step is
``x ← x + (σ_next − σ)·v`` and the running estimate of the clean grid is ``x0 = x_σ − σ·v``.
Known cells are held at their clean latents throughout (and the caller pastes the exact input
frames back after decoding). A residual model (``FourDTransformer.residual``) starts from
``ref + ε`` instead of ``ε``; everything else is the same loop. Text guidance: ``v = v_uncond + g·(v_cond − v_uncond)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .errors import Cancelled, InputError
from .model.config import MODES

# on_step(step: int, total: int, preview: Tensor [V, T, 3, H, W] in [-1, 1] | None)
StepCallback = Callable[[int, int, "torch.Tensor | None"], None]


@dataclass
class SampleSettings:
    steps: int = 25
    guidance: float = 1.0
    seed: int = 0
    mode: str = "soft"
    fused_backend: str = "auto"
    negative_prompt: str = ""
    preview_every: int = 1  # decode an x0 preview every N steps for the callback (0: never)
    shift: float | None = None  # the noise schedule's time shift (None: the model's ``config.shift``)

    def check(self) -> None:
        if not 1 <= self.steps <= 1000:
            raise InputError(f"steps must be between 1 and 1000, got {self.steps}")
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0.0 <= self.guidance <= 30.0:
            raise InputError(f"guidance must be between 0 and 30, got {self.guidance}")
        if not 0 <= self.seed < 2**63:
            raise InputError(f"seed must be between 0 and 2^63-1, got {self.seed}")
        check_shift(self.shift)


MAX_SHIFT = 100.0


def check_shift(shift: float | None) -> None:
    """InputError unless ``shift`` is None (the model's) or in (0, MAX_SHIFT]: the flow-matching
    time shift s, sigma -> s*sigma / (1 + (s - 1)*sigma); above 1 more steps go to high noise."""
    if shift is not None and not (math.isfinite(shift) and 0 < shift <= MAX_SHIFT):
        raise InputError(f"shift must be above 0 and at most {MAX_SHIFT:g} (1 = no shift; the default model "
                         f"samples with 9), got {shift}")


def make_scheduler(model, shift: float | None = None):
    """The flow-matching Euler scheduler at ``shift`` (None: the model's ``config.shift``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=model.config.num_train_timesteps,
                                           shift=model.config.shift if shift is None else float(shift))


def initial_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Gaussian noise from a CPU generator: the same seed gives the same grid on any device."""
    g = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=g, dtype=torch.float32)


@torch.no_grad()
def sample_grid(model, frames: torch.Tensor, known: torch.Tensor, prompt: str, s: SampleSettings,
                on_step: StepCallback | None = None, should_cancel: Callable[[], bool] | None = None,
                text_states: torch.Tensor | None = None, step_offset: int = 0,
                total_steps: int | None = None) -> torch.Tensor:
    """One pass of the model over a grid of at most ``chunk_times`` times.

    frames: ``[V, T, 3, H, W]`` in [-1, 1] (only known cells are read); known: ``[V, T]`` bool.
    Returns the generated frames ``[V, T, 3, H, W]`` in [-1, 1] (known cells: decoded clean
    latents; the caller pastes the exact inputs). Raises ``Cancelled`` between steps.
    """
    # 1. Check inputs
    s.check()
    V, T = frames.shape[:2]
    model.codec.check_times(T)
    dev = model.device

    # 2. Encode the prompt (and the negative prompt when guiding)
    if text_states is None:
        text_states = encode_prompts(model, prompt, s.negative_prompt if s.guidance != 1.0 else None)

    # 3. Conditioning latents and mask
    known = known.to(torch.bool)
    clean = frames.to(dev, torch.float32) * known[:, :, None, None, None].to(dev)
    cond = model.codec.encode(clean[None])  # [1, V, T', C, h, w]
    mask = model.codec.mask(known[None].to(dev))  # [1, V, T', m]

    # 4.-6. Noise, timesteps, denoising loop
    preview = None
    if on_step is not None and s.preview_every:
        preview = lambda x0: model.codec.decode(x0)[0]  # noqa: E731
    x = denoise(model.transformer, make_scheduler(model, s.shift), cond, mask, text_states.to(dev, model.dtype), s,
                on_step=on_step, should_cancel=should_cancel, preview=preview, step_offset=step_offset,
                total_steps=total_steps)

    # 7. Decode
    return model.codec.decode(x)[0]


@torch.no_grad()
def denoise(transformer, scheduler, cond: torch.Tensor, mask: torch.Tensor, text_states: torch.Tensor,
            s: SampleSettings, on_step: StepCallback | None = None, should_cancel: Callable[[], bool] | None = None,
            preview: Callable[[torch.Tensor], torch.Tensor] | None = None, step_offset: int = 0,
            total_steps: int | None = None) -> torch.Tensor:
    """The loop in latent space: ``cond [1, V, T', C, h, w]`` clean latents, ``mask [1, V, T', m]``
    known channels, ``text_states [G, L, D]`` (G = 2 with guidance: prompt, then negative).
    Returns the final latents ``[1, V, T', C, h, w]`` (float32)."""
    dev = cond.device
    dtype = text_states.dtype
    G = text_states.shape[0]
    guided = G == 2
    total = total_steps or s.steps
    known_cells = mask.all(dim=-1)[..., None, None, None]  # [1, V, T', 1, 1, 1]

    # 4. Everything that does not change across steps
    V, Tl, _, h, w = cond.shape[1:]
    plan = transformer.prepare(text_states, (V, Tl, h, w), cond=cond.expand(G, -1, -1, -1, -1, -1).to(dtype),
                               known=mask.expand(G, -1, -1, -1), mode=s.mode, fused_backend=s.fused_backend)

    # 5. Noise (a residual model's flow starts at ref + ε) and timesteps
    x = initial_noise(tuple(cond.shape), s.seed).to(dev)
    ref = getattr(plan, "ref", None)  # [G, V, T', C, h, w] or None (plain flow)
    if ref is not None:
        x = x + ref[:1].float()
    x = torch.where(known_cells, cond, x)
    scheduler.set_timesteps(s.steps, device="cpu")
    sigmas = scheduler.sigmas  # [steps + 1], float32 on the CPU, last = 0

    # 6. Denoising loop
    for i, t in enumerate(scheduler.timesteps):
        if should_cancel is not None and should_cancel():
            raise Cancelled("generation cancelled")
        sigma = sigmas[i]
        v = transformer.step(plan, x.to(dtype).expand(G, -1, -1, -1, -1, -1), sigma.expand(G)).float()
        if guided:
            v = v[1:] + s.guidance * (v[:1] - v[1:])
        x0 = x - sigma.to(dev) * v
        x = scheduler.step(v, t, x, return_dict=False)[0]
        x = torch.where(known_cells, cond, x)
        if on_step is not None:
            want = preview is not None and ((i + 1) % s.preview_every == 0 or i + 1 == s.steps)
            on_step(step_offset + i + 1, total, preview(torch.where(known_cells, cond, x0)) if want else None)
    return x


def encode_prompts(model, prompt: str, negative: str | None) -> torch.Tensor:
    """``[1 or 2, L, D_text]``: the prompt, then the negative prompt when guiding."""
    prompts = [prompt] if negative is None else [prompt, negative]
    return model.text.encode(prompts, device=model.device, dtype=model.dtype)


def chunk_windows(T_total: int, chunk: int) -> list[tuple[int, int]]:
    """Time windows ``[start, end)`` of at most ``chunk`` times; each after the first overlaps
    the previous one by at least one column (its known first column)."""
    if T_total <= chunk:
        return [(0, T_total)]
    wins = [(0, chunk)]
    while wins[-1][1] < T_total:
        start = min(wins[-1][1] - 1, T_total - chunk)
        wins.append((start, start + chunk))
    return wins


@torch.no_grad()
def sample_long(model, frames: torch.Tensor, known: torch.Tensor, prompt: str, s: SampleSettings,
                on_step: StepCallback | None = None, should_cancel: Callable[[], bool] | None = None) -> torch.Tensor:
    """A grid of any number of times, ``chunk_times`` at a time (4Real-Video supplement Sec. 2,
    "Generate long duration videos"): chunk k+1 takes its first column(s) from chunk k's output.

    frames ``[V, T, 3, H, W]``, known ``[V, T]`` as in ``sample_grid``; returns ``[V, T, 3, H, W]``.
    """
    V, T = known.shape
    wins = chunk_windows(T, model.config.chunk_times)
    out = frames.clone().float()
    done = known.clone().to(torch.bool)
    total = s.steps * len(wins)
    guided = s.guidance != 1.0
    text_states = encode_prompts(model, prompt, s.negative_prompt if guided else None)
    for k, (a, b) in enumerate(wins):
        sk = SampleSettings(**{**s.__dict__, "seed": s.seed + k})

        def step_cb(step, tot, preview, a=a, b=b):
            if on_step is None:
                return
            if preview is not None:
                full = out.clone()
                full[:, a:b] = preview.to(full.device, full.dtype)
                preview = full
            on_step(step, tot, preview)

        win_known = done[:, a:b].clone()
        if k > 0:
            win_known[:, : wins[k - 1][1] - a] = True  # the columns the previous chunk made
        res = sample_grid(model, out[:, a:b], win_known, prompt, sk, on_step=step_cb if on_step else None,
                          should_cancel=should_cancel, text_states=text_states, step_offset=k * s.steps,
                          total_steps=total)
        res = res.to(out.device, out.dtype)
        keep = win_known[:, :, None, None, None]
        out[:, a:b] = torch.where(keep, out[:, a:b], res)
        done[:, a:b] = True
    return out


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``[V, T, 3, H, W]`` in [-1, 1] -> uint8 ``[V, T, H, W, 3]``."""
    from .model.codec import model_to_frames

    return model_to_frames(x)
