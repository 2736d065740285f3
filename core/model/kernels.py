"""Hand-written GPU kernels of the engine: the self-attention's Q/K RMS-norm + RoPE + layout pass,
and the residual + LayerNorm (+ adaLN modulation) pass between a block's sub-layers.

``qkv_norm_rope`` takes the fused projection ``qkv [R, 3D]`` (R tokens, sequences of ``seq_len``
tokens one after another) and returns ``q, k, v [R, D]``: q and k RMS-normed over the whole D
(``torch.nn.RMSNorm``, as diffusers' ``WanAttention`` does) and rotated by Wan's interleaved-pair
RoPE at position ``row % seq_len`` (``attention.apply_rope``); v copied into its own buffer. Each
output is contiguous, so ``q.view(n, s, H, d).transpose(1, 2)`` is the ``[n, H, s, d]`` view the
attention kernels take. On CUDA it is one Triton launch that reads qkv once and writes q, k, v
once (fp32 math inside); under torch.compile it stays one opaque call (``fourd::qkv_norm_rope``).
``qkv_norm_rope_reference`` is the same contract in plain torch (the CPU path and the tests).

``residual_norm(x, y, gate, y_bias, weight, bias, shift, scale, eps)`` takes the residual stream
``x [N, M, D]`` and a sub-layer's output ``y`` and returns ``x_new = x + gate·(y + y_bias)``
(fp32 math, rounded once to x's dtype) and ``h = (LN(x_new)·weight + bias)·(1 + scale) + shift``
(LN of the ROUNDED x_new, as ``blocks.run_block`` does): the self-attention residual + norm2, or
the cross-attention residual + norm3 + modulation (the FFN input). One Triton launch reads x and y
once and writes x_new and h once (``fourd::residual_norm``); ``residual_norm_reference`` is the
same contract in torch.

Triton is imported lazily, on the first launch: importing this module never needs it.
``available(device)`` says whether the kernels can run there (CUDA with triton, or the CPU under
``TRITON_INTERPRET=1`` for tests). ``python -m core.model.kernels --bench`` times them on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F

from . import attention as A

# Launch shape of the kernel: rows per program, warps. The --bench sweep on an H100 (Wan-1.3B
# shape, 73,728 rows) had 8 rows / 4 warps at 0.531 ms against 0.561 for 2 / 4, but inside the
# soft step 8 rows took 14.3 ms a step and 2 rows 13.5 (kernel profiles of the bench): 2 / 4.
BLOCK_ROWS = 2
NUM_WARPS = 4
_MAX_D = 8192  # the whole (padded) row of q and of k sits in registers

_kernel_fn = None  # the @triton.jit kernel, built on first use


# -- contract --------------------------------------------------------------------------------
def _check(qkv, weight_q, weight_k, cos, sin, seq_len: int, heads: int | None) -> tuple[int, int, int]:
    """Validate the arguments; returns (R, D, heads)."""
    if qkv.dim() != 2 or qkv.shape[1] % 3:
        raise ValueError(f"qkv must be [R, 3D], got shape {tuple(qkv.shape)}")
    R, D = qkv.shape[0], qkv.shape[1] // 3
    if cos.dim() != 2 or cos.shape != sin.shape or cos.shape[0] != seq_len:
        raise ValueError(f"cos and sin must both be [seq_len={seq_len}, d/2], got {tuple(cos.shape)} and {tuple(sin.shape)}")
    half = cos.shape[1]
    if half == 0 or D % (2 * half):
        raise ValueError(f"head dim 2*{half} from cos does not divide D={D}")
    derived = D // (2 * half)
    if heads is not None and heads != derived:
        raise ValueError(f"heads={heads} but D={D} and cos [.., {half}] give {derived} heads of dim {2 * half}")
    if seq_len <= 0 or R % seq_len:
        raise ValueError(f"R={R} tokens is not a whole number of sequences of seq_len={seq_len}")
    if weight_q.shape != (D,) or weight_k.shape != (D,):
        raise ValueError(f"weights must be [D={D}], got {tuple(weight_q.shape)} and {tuple(weight_k.shape)}")
    return R, D, derived


def qkv_norm_rope_reference(qkv: torch.Tensor, weight_q: torch.Tensor, weight_k: torch.Tensor, eps: float,
                            cos: torch.Tensor, sin: torch.Tensor, seq_len: int, heads: int | None = None,
                            copy_v: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``qkv [R, 3D]`` -> ``q, k, v [R, D]`` in plain torch: ``F.rms_norm`` (= ``torch.nn.RMSNorm``)
    then ``attention.apply_rope`` on ``[R/seq_len, seq_len, H, d]``, exactly as ``blocks.py``
    composes them (so in bf16 it rounds where they round; call it on ``qkv.float()`` and float
    weights for the fp32 result). ``copy_v=False`` returns v as the strided slice of qkv."""
    R, D, H = _check(qkv, weight_q, weight_k, cos, sin, seq_len, heads)
    q, k, v = qkv.split(D, dim=-1)
    q, k = F.rms_norm(q, (D,), weight_q, eps), F.rms_norm(k, (D,), weight_k, eps)

    def rope(x):  # [R, D] -> [n, s, H, d] rotated -> [R, D]
        return A.apply_rope(x.reshape(R // seq_len, seq_len, H, D // H), cos, sin).reshape(R, D)

    return rope(q), rope(k), (v.contiguous() if copy_v else v)


# -- the kernel ------------------------------------------------------------------------------
def _build_kernel():
    """Define the Triton kernel (imports triton; called on first launch)."""
    import triton
    import triton.language as tl

    @triton.jit
    def qkv_norm_rope_kernel(qkv_ptr, wq_ptr, wk_ptr, cos_ptr, sin_ptr, q_ptr, k_ptr, v_ptr,
                             R, stride_row, seq_len, eps,
                             D: tl.constexpr, HALF: tl.constexpr, BLOCK_R: tl.constexpr,
                             BLOCK_D: tl.constexpr, COPY_V: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BR]
        rmask = rows < R
        cols = tl.arange(0, BLOCK_D)  # D padded to a power of two
        cmask = cols < D
        m = rmask[:, None] & cmask[None, :]
        base = qkv_ptr + rows.to(tl.int64)[:, None] * stride_row  # [BR, 1]: start of each row
        dst = rows.to(tl.int64)[:, None] * D + cols[None, :]
        # cos/sin at each row's position, [BR, 1, HALF]: the angle depends on the pair, not the head
        tab = ((rows % seq_len) * HALF)[:, None] + tl.arange(0, HALF)[None, :]
        c = tl.load(cos_ptr + tab, mask=rmask[:, None], other=0.0)[:, None, :]
        s = tl.load(sin_ptr + tab, mask=rmask[:, None], other=0.0)[:, None, :]
        for part in tl.static_range(2):  # q, then k: RMS-norm over D, weight, rotate pairs, cast
            if part == 0:
                w_ptr, out_ptr = wq_ptr, q_ptr
            else:
                w_ptr, out_ptr = wk_ptr, k_ptr
            x = tl.load(base + part * D + cols[None, :], mask=m, other=0.0).to(tl.float32)  # [BR, BD]
            rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / D + eps)  # [BR]
            w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)  # [BD]
            y = x * rstd[:, None] * w[None, :]
            # (heads padded to a power of two) x pairs x (x[2i], x[2i+1]), all in registers
            a, b = tl.split(tl.reshape(y, (BLOCK_R, BLOCK_D // (2 * HALF), HALF, 2)))  # [BR, HB, HALF]
            out = tl.reshape(tl.join(a * c - b * s, b * c + a * s), (BLOCK_R, BLOCK_D))
            tl.store(out_ptr + dst, out.to(out_ptr.dtype.element_ty), mask=m)
        if COPY_V:
            tl.store(v_ptr + dst, tl.load(base + 2 * D + cols[None, :], mask=m), mask=m)

    return qkv_norm_rope_kernel


def _kernel():
    global _kernel_fn
    if _kernel_fn is None:
        _kernel_fn = _build_kernel()
    return _kernel_fn


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def available(device: torch.device | str) -> bool:
    """Whether the Triton kernel runs on ``device``: CUDA with triton installed, or the CPU under
    the Triton interpreter (``TRITON_INTERPRET=1``, tests only). Call it outside compiled code."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and _triton_importable()
    if device.type == "cpu":
        return os.environ.get("TRITON_INTERPRET") == "1" and _triton_importable()
    return False


def supports(D: int, heads: int) -> bool:
    """Shapes the kernel takes: power-of-two head dim, D up to 8192 (Wan: D = 1536, d = 128)."""
    d = D // heads if heads > 0 else 0
    return D % heads == 0 and d >= 2 and d & (d - 1) == 0 and D <= _MAX_D


def _launch(qkv, weight_q, weight_k, eps, cos, sin, seq_len, copy_v, block_rows=None, num_warps=None):
    """Run the kernel: returns (q, k, v or None). ``block_rows`` / ``num_warps`` override the
    module's launch shape (the bench's sweep)."""
    import triton

    R, D = qkv.shape[0], qkv.shape[1] // 3
    half = cos.shape[1]
    if qkv.stride(1) != 1:
        qkv = qkv.contiguous()
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    q, k = torch.empty(R, D, dtype=qkv.dtype, device=qkv.device), torch.empty(R, D, dtype=qkv.dtype, device=qkv.device)
    v = torch.empty(R, D, dtype=qkv.dtype, device=qkv.device) if copy_v else q  # (v_ptr unused without copy)
    br = block_rows or BLOCK_ROWS
    if R > 0:
        with torch.cuda.device(qkv.device) if qkv.is_cuda else contextlib.nullcontext():  # triton launches on the current device
            _kernel()[(triton.cdiv(R, br),)](
                qkv, weight_q.contiguous(), weight_k.contiguous(), cos, sin, q, k, v, R, qkv.stride(0), seq_len, eps,
                D=D, HALF=half, BLOCK_R=br, BLOCK_D=triton.next_power_of_2(D), COPY_V=copy_v,
                num_warps=num_warps or NUM_WARPS)
    return q, k, (v if copy_v else None)


# -- registered ops (opaque to torch.compile: one call in the graph) ---------------------------
@torch.library.custom_op("fourd::qkv_norm_rope", mutates_args=())
def _qkv_norm_rope_op(qkv: torch.Tensor, weight_q: torch.Tensor, weight_k: torch.Tensor, cos: torch.Tensor,
                      sin: torch.Tensor, eps: float, seq_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _launch(qkv, weight_q, weight_k, eps, cos, sin, seq_len, copy_v=True)


@_qkv_norm_rope_op.register_fake
def _(qkv, weight_q, weight_k, cos, sin, eps, seq_len):
    R, D = qkv.shape[0], qkv.shape[1] // 3
    return qkv.new_empty(R, D), qkv.new_empty(R, D), qkv.new_empty(R, D)


@torch.library.custom_op("fourd::qk_norm_rope", mutates_args=())
def _qk_norm_rope_op(qkv: torch.Tensor, weight_q: torch.Tensor, weight_k: torch.Tensor, cos: torch.Tensor,
                     sin: torch.Tensor, eps: float, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, _ = _launch(qkv, weight_q, weight_k, eps, cos, sin, seq_len, copy_v=False)
    return q, k


@_qk_norm_rope_op.register_fake
def _(qkv, weight_q, weight_k, cos, sin, eps, seq_len):
    R, D = qkv.shape[0], qkv.shape[1] // 3
    return qkv.new_empty(R, D), qkv.new_empty(R, D)


def qkv_norm_rope(qkv: torch.Tensor, weight_q: torch.Tensor, weight_k: torch.Tensor, eps: float,
                  cos: torch.Tensor, sin: torch.Tensor, seq_len: int, heads: int | None = None,
                  copy_v: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``qkv [R, 3D]`` (bf16/fp16/fp32, last dim contiguous) -> ``q, k, v [R, D]`` contiguous, in
    qkv's dtype, by the Triton kernel (fp32 math; see the module docstring for the math).

    weight_q, weight_k: ``[D]`` RMSNorm weights; cos, sin: ``[seq_len, d/2]`` float32 by position
    in the sequence; rows are sequences of ``seq_len`` tokens one after another. heads: checked
    against ``D / (2 · cos.shape[1])`` when given. copy_v=False leaves v as the strided slice
    ``qkv[:, 2D:]`` (row stride 3D) instead of copying it. Needs ``available(qkv.device)`` and
    ``supports(D, heads)``; otherwise use ``qkv_norm_rope_reference``.
    """
    R, D, H = _check(qkv, weight_q, weight_k, cos, sin, seq_len, heads)
    if not supports(D, H):
        raise ValueError(f"the kernel needs a power-of-two head dim and D <= {_MAX_D}; got D={D}, heads={H}")
    if qkv.stride(-1) != 1:
        raise ValueError("qkv must have a contiguous last dim")
    if copy_v:
        return _qkv_norm_rope_op(qkv, weight_q, weight_k, cos, sin, float(eps), int(seq_len))
    q, k = _qk_norm_rope_op(qkv, weight_q, weight_k, cos, sin, float(eps), int(seq_len))
    return q, k, qkv[:, 2 * D:]


# -- residual + LayerNorm (+ modulation) -----------------------------------------------------
# Launch shape: a program takes RN_ROWS rows of one n (its gate/shift/scale/affine loaded once),
# RN_BLOCK_ROWS of them at a time, on RN_NUM_WARPS warps (the --bench sweep picks them).
RN_BLOCK_ROWS = 4
RN_NUM_WARPS = 4
RN_ROWS = 8
RN_MAX_D = 4096  # the whole (padded) row sits in registers

_rn_kernel_fn = None


def _check_rn(x, y, gate, y_bias, weight, bias, shift, scale) -> tuple[int, int, int]:
    """Validate ``residual_norm``'s arguments; returns (N, M, D)."""
    if x.dim() != 3 or y.shape != x.shape:
        raise ValueError(f"x and y must both be [N, M, D], got {tuple(x.shape)} and {tuple(y.shape)}")
    N, M, D = x.shape
    for name, t in (("gate", gate), ("shift", shift), ("scale", scale)):
        if t is not None and (t.dim() != 3 or t.shape[0] not in (1, N) or t.shape[1:] != (1, D)):
            raise ValueError(f"{name} must be [N={N} or 1, 1, D={D}], got {tuple(t.shape)}")
    for name, t in (("y_bias", y_bias), ("weight", weight), ("bias", bias)):
        if t is not None and t.shape != (D,):
            raise ValueError(f"{name} must be [D={D}], got {tuple(t.shape)}")
    if (shift is None) != (scale is None):
        raise ValueError("shift and scale come together (the adaLN modulation) or not at all")
    return N, M, D


def residual_norm_reference(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None,
                            y_bias: torch.Tensor | None, weight: torch.Tensor | None, bias: torch.Tensor | None,
                            shift: torch.Tensor | None, scale: torch.Tensor | None,
                            eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``residual_norm`` in torch, with ``blocks.run_block``'s own ops and roundings:
    ``x_new = addcmul(x.float(), y + y_bias, gate).to(x.dtype)`` (``x.float() + (y + y_bias)``
    without a gate; y_bias added in fp32), ``h = addcmul(shift, layer_norm(x_new.float(), weight,
    bias, eps), 1 + scale).to(x.dtype)`` — diffusers' ``FP32LayerNorm`` (biased variance, eps
    inside the rsqrt) on the rounded residual, the affine and modulation only where given."""
    _check_rn(x, y, gate, y_bias, weight, bias, shift, scale)
    D = x.shape[-1]
    yy = y if y_bias is None else y.float() + y_bias.float()
    s = x.float() + yy if gate is None else torch.addcmul(x.float(), yy, gate)
    x_new = s.to(x.dtype)
    h = F.layer_norm(x_new.float(), (D,), weight.float() if weight is not None else None,
                     bias.float() if bias is not None else None, eps)
    if shift is not None:
        h = torch.addcmul(shift, h, 1 + scale)
    return x_new, h.to(x.dtype)


def _build_rn_kernel():
    """Define the residual + LayerNorm Triton kernel (imports triton; called on first launch)."""
    import triton
    import triton.language as tl

    @triton.jit
    def residual_norm_kernel(x_ptr, y_ptr, gate_ptr, yb_ptr, w_ptr, b_ptr, shift_ptr, scale_ptr, xo_ptr, h_ptr,
                             M, sx_n, sx_m, sy_n, sy_m, sg_n, ssh_n, ssc_n, eps,
                             D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr, ROWS: tl.constexpr,
                             HAS_GATE: tl.constexpr, HAS_YB: tl.constexpr, HAS_W: tl.constexpr,
                             HAS_B: tl.constexpr, HAS_MOD: tl.constexpr):
        n = tl.program_id(1).to(tl.int64)
        start = tl.program_id(0) * ROWS
        cols = tl.arange(0, BLOCK_D)  # D padded to a power of two
        cmask = cols < D
        # this program's parameters, fp32 [1, BD], loaded once for its ROWS rows
        if HAS_GATE:
            g = tl.load(gate_ptr + n * sg_n + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if HAS_YB:
            yb = tl.load(yb_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if HAS_W:
            w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if HAS_B:
            b = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if HAS_MOD:
            sh = tl.load(shift_ptr + n * ssh_n + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
            sc = 1 + tl.load(scale_ptr + n * ssc_n + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        for i in range(ROWS // BLOCK_R):
            rows = start + i * BLOCK_R + tl.arange(0, BLOCK_R)  # [BR]
            m = (rows < M)[:, None] & cmask[None, :]
            r64 = rows.to(tl.int64)[:, None]
            x = tl.load(x_ptr + n * sx_n + r64 * sx_m + cols[None, :], mask=m, other=0.0).to(tl.float32)
            y = tl.load(y_ptr + n * sy_n + r64 * sy_m + cols[None, :], mask=m, other=0.0).to(tl.float32)
            if HAS_YB:
                y = y + yb
            if HAS_GATE:
                y = y * g
            xr = (x + y).to(xo_ptr.dtype.element_ty)  # the residual stream, rounded once
            dst = (n * M + r64) * D + cols[None, :]
            tl.store(xo_ptr + dst, xr, mask=m)
            xf = xr.to(tl.float32)  # LayerNorm of the rounded value, over D
            mean = tl.sum(xf, axis=1) / D  # (padding columns load 0)
            diff = tl.where(m, xf - mean[:, None], 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=1) / D + eps)  # biased variance
            h = diff * rstd[:, None]
            if HAS_W:
                h = h * w
            if HAS_B:
                h = h + b
            if HAS_MOD:
                h = h * sc + sh
            tl.store(h_ptr + dst, h.to(h_ptr.dtype.element_ty), mask=m)

    return residual_norm_kernel


def _rn_kernel():
    global _rn_kernel_fn
    if _rn_kernel_fn is None:
        _rn_kernel_fn = _build_rn_kernel()
    return _rn_kernel_fn


def _rn_launch(x, y, gate, y_bias, weight, bias, shift, scale, eps, block_rows=None, num_warps=None, rows=None):
    """Run the residual + norm kernel: returns (x_new, h), contiguous, in x's dtype. The launch
    shape arguments override the module's (the bench's sweep)."""
    import triton

    N, M, D = x.shape

    def last_contiguous(t):
        return t if t is None or t.stride(-1) == 1 else t.contiguous()

    def n_stride(t):  # [N or 1, 1, D]: 0 broadcasts one row of parameters over every n
        return 0 if t is None or t.shape[0] == 1 else t.stride(0)

    x, y, gate, y_bias, weight, bias, shift, scale = map(last_contiguous,
                                                         (x, y, gate, y_bias, weight, bias, shift, scale))
    x_new, h = (torch.empty(N, M, D, dtype=x.dtype, device=x.device) for _ in range(2))
    br, rows = block_rows or RN_BLOCK_ROWS, rows or RN_ROWS
    rows = max(br, rows // br * br)  # a whole number of blocks
    if N * M > 0:
        with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
            _rn_kernel()[(triton.cdiv(M, rows), N)](
                x, y, gate if gate is not None else x, y_bias if y_bias is not None else x,
                weight if weight is not None else x, bias if bias is not None else x,
                shift if shift is not None else x, scale if scale is not None else x, x_new, h,
                M, x.stride(0), x.stride(1), y.stride(0), y.stride(1), n_stride(gate), n_stride(shift),
                n_stride(scale), eps,
                D=D, BLOCK_D=triton.next_power_of_2(D), BLOCK_R=br, ROWS=rows, HAS_GATE=gate is not None,
                HAS_YB=y_bias is not None, HAS_W=weight is not None, HAS_B=bias is not None,
                HAS_MOD=shift is not None, num_warps=num_warps or RN_NUM_WARPS)
    return x_new, h


@torch.library.custom_op("fourd::residual_norm", mutates_args=())
def _residual_norm_op(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, y_bias: torch.Tensor | None,
                      weight: torch.Tensor | None, bias: torch.Tensor | None, shift: torch.Tensor | None,
                      scale: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _rn_launch(x, y, gate, y_bias, weight, bias, shift, scale, eps)


@_residual_norm_op.register_fake
def _(x, y, gate, y_bias, weight, bias, shift, scale, eps):
    return x.new_empty(x.shape), x.new_empty(x.shape)


def supports_residual_norm(D: int) -> bool:
    """Rows the residual + norm kernel takes: D up to 4096 (Wan: 1536, 5120 for 14B is refused)."""
    return 0 < D <= RN_MAX_D


def residual_norm(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, y_bias: torch.Tensor | None,
                  weight: torch.Tensor | None, bias: torch.Tensor | None, shift: torch.Tensor | None,
                  scale: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``x, y [N, M, D]`` (half precision or fp32, last dim contiguous) -> ``(x_new, h)``, both
    ``[N, M, D]`` contiguous in x's dtype, by one Triton launch (fp32 math):
    ``x_new = x + gate·(y + y_bias)`` rounded to x's dtype, ``h = (LN(x_new)·weight + bias)·(1 +
    scale) + shift``. gate, shift, scale: ``[N or 1, 1, D]`` (fp32, per stream) or None (gate 1,
    no modulation; shift and scale go together); y_bias, weight, bias: ``[D]`` or None. LN is
    over D with the biased variance, eps inside the rsqrt. Needs ``available(x.device)`` and
    ``supports_residual_norm(D)``; otherwise use ``residual_norm_reference`` (same contract)."""
    _check_rn(x, y, gate, y_bias, weight, bias, shift, scale)
    if not supports_residual_norm(x.shape[-1]):
        raise ValueError(f"the residual + norm kernel takes D up to {RN_MAX_D}; got D={x.shape[-1]}")
    return _residual_norm_op(x, y, gate, y_bias, weight, bias, shift, scale, float(eps))


# -- bench (GPU) -----------------------------------------------------------------------------
def _time_ms(fn, warmup: int = 5, reps: int = 20) -> float:
    """Median milliseconds of ``fn()`` over ``reps`` runs (CUDA events), after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _bench_inputs(R: int, D: int, H: int, s: int, dtype, device, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    qkv = (torch.randn(R, 3 * D, generator=g) * 2).to(device=device, dtype=dtype)
    wq = (1 + 0.3 * torch.randn(D, generator=g)).to(device=device, dtype=dtype)
    wk = (1 + 0.3 * torch.randn(D, generator=g)).to(device=device, dtype=dtype)
    angles = torch.rand(s, D // H // 2, generator=g) * 2 * torch.pi
    return qkv, wq, wk, angles.cos().to(device), angles.sin().to(device)


def _errors(out: torch.Tensor, ref: torch.Tensor) -> dict:
    diff = (out.float() - ref).abs()
    return {"max_abs": diff.max().item(), "max_rel": (diff.max() / ref.abs().max()).item(),
            "rel_l2": (diff.norm() / ref.norm()).item()}


def bench(R: int = 73_728, D: int = 1536, H: int = 12, s: int = 4608, dtype=torch.bfloat16,
          eps: float = 1e-6, sweep: bool = True) -> dict:
    """Time the eager reference, the compiled reference, the kernel and the kernel with v left
    strided; check the kernel against the fp32 reference; time cuDNN attention on contiguous and
    on strided v. Returns a JSON-able dict."""
    dev = torch.device("cuda")
    qkv, wq, wk, cos, sin = _bench_inputs(R, D, H, s, dtype, dev)
    elem = qkv.element_size()
    full_bytes = 2 * R * 3 * D * elem  # read q, k, v once, write them once
    qk_bytes = 2 * R * 2 * D * elem
    res = {"shape": {"R": R, "D": D, "H": H, "seq_len": s, "dtype": str(dtype).removeprefix("torch.")},
           "device": torch.cuda.get_device_name(), "torch": torch.__version__}
    import triton

    res["triton"] = triton.__version__

    # correctness first: kernel (and the bf16 torch path) against fp32
    ref32 = qkv_norm_rope_reference(qkv.float(), wq.float(), wk.float(), eps, cos, sin, s, H)
    out = qkv_norm_rope(qkv, wq, wk, eps, cos, sin, s, H)
    ref16 = qkv_norm_rope_reference(qkv, wq, wk, eps, cos, sin, s, H)
    res["errors_vs_fp32"] = {
        "kernel": {n: _errors(o, r) for n, o, r in zip("qk", out[:2], ref32[:2])},
        "torch_bf16": {n: _errors(o, r) for n, o, r in zip("qk", ref16[:2], ref32[:2])},
        "v_copy_exact": bool(torch.equal(out[2], qkv[:, 2 * D:])),
    }
    del ref32, ref16, out

    compiled = torch.compile(qkv_norm_rope_reference, dynamic=False)
    cases = {
        "a_eager_reference": (lambda: qkv_norm_rope_reference(qkv, wq, wk, eps, cos, sin, s, H), full_bytes),
        "b_compiled_reference": (lambda: compiled(qkv, wq, wk, eps, cos, sin, s, H), full_bytes),
        "c_kernel": (lambda: qkv_norm_rope(qkv, wq, wk, eps, cos, sin, s, H), full_bytes),
        "d_kernel_v_strided": (lambda: qkv_norm_rope(qkv, wq, wk, eps, cos, sin, s, H, copy_v=False), qk_bytes),
    }
    res["times"] = {}
    for name, (fn, nbytes) in cases.items():
        ms = _time_ms(fn)
        res["times"][name] = {"ms": ms, "GB_per_s": nbytes / ms / 1e6}

    if sweep:  # launch shapes of the kernel
        res["sweep"] = []
        for br in (1, 2, 4, 8):
            for nw in (2, 4, 8, 16):
                row = {"block_rows": br, "num_warps": nw}
                try:
                    ms = _time_ms(lambda: _launch(qkv, wq, wk, eps, cos, sin, s, True, br, nw), 2, 10)
                except Exception as e:  # noqa: BLE001 (a launch shape may not compile: record why)
                    res["sweep"].append({**row, "error": str(e)[:200]})
                    continue
                res["sweep"].append({**row, "ms": ms, "GB_per_s": full_bytes / ms / 1e6})

    # does cuDNN attention take v strided (row stride 3D) as fast as a contiguous v?
    q, k, v = qkv_norm_rope(qkv, wq, wk, eps, cos, sin, s, H)
    v_strided = qkv[:, 2 * D:]
    n = R // s

    def heads_first(x):  # [R, D] -> [n, H, s, d]
        return x.view(n, s, H, D // H).transpose(1, 2)

    res["attention"] = {}
    for name, vv in (("cudnn_v_contiguous", v), ("cudnn_v_strided", v_strided)):
        try:
            fn = lambda vv=vv: A._sdpa_op(heads_first(q), heads_first(k), heads_first(vv), "cudnn", False)  # noqa: E731
            o = fn()[0]
            res["attention"][name] = {"ms": _time_ms(fn, 3, 10)}
            if name == "cudnn_v_strided":
                o_ref = A._sdpa_op(heads_first(q), heads_first(k), heads_first(v), "cudnn", False)[0]
                res["attention"][name]["equal_to_contiguous"] = bool(torch.equal(o, o_ref))
        except Exception as e:  # noqa: BLE001 (cuDNN may refuse the layout: that is the answer)
            res["attention"][name] = {"error": str(e)[:300]}
    return res


def _print_table(res: dict) -> None:
    sh = res["shape"]
    print(f"\nqkv_norm_rope  R={sh['R']} D={sh['D']} H={sh['H']} s={sh['seq_len']} {sh['dtype']}  "
          f"{res['device']}  torch {res['torch']}  triton {res['triton']}")
    print(f"{'case':<24}{'ms':>9}{'GB/s':>9}   x30 blocks")
    for name, t in res["times"].items():
        print(f"{name:<24}{t['ms']:>9.3f}{t['GB_per_s']:>9.0f}   {30 * t['ms']:>7.1f} ms")
    if res.get("sweep"):
        ok = [r for r in res["sweep"] if "ms" in r]
        best = min(ok, key=lambda r: r["ms"])
        print(f"sweep: best block_rows={best['block_rows']} num_warps={best['num_warps']}: {best['ms']:.3f} ms "
              f"({best['GB_per_s']:.0f} GB/s); default {BLOCK_ROWS}/{NUM_WARPS}")
        print("  rows/warps:ms  " + "  ".join(f"{r['block_rows']}/{r['num_warps']}:"
                                             + (f"{r['ms']:.3f}" if "ms" in r else "err") for r in res["sweep"]))
    e = res["errors_vs_fp32"]
    for who in ("kernel", "torch_bf16"):
        print(f"vs fp32 reference, {who:<10}: " + "  ".join(
            f"{n}: max_abs {x['max_abs']:.2e} max_rel {x['max_rel']:.2e} rel_l2 {x['rel_l2']:.2e}"
            for n, x in e[who].items()))
    print(f"v copy exact: {e['v_copy_exact']}")
    for name, a in res["attention"].items():
        print(f"attention {name:<20}: " + (f"{a['ms']:.3f} ms" if "ms" in a else f"error {a['error']}")
              + (f"  equal_to_contiguous={a['equal_to_contiguous']}" if "equal_to_contiguous" in a else ""))


def _rn_bench_inputs(N: int, M: int, D: int, dtype, device, seed: int = 0) -> dict:
    """The two calls of a block at shape [N, M, D]: ``self`` (gated residual + norm2's affine) and
    ``cross`` (residual + to_out's bias + norm3 + modulation), as keyword arguments."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def r(*shape, s=1.0, dt=torch.float32):
        return (torch.randn(*shape, generator=g) * s).to(device=device, dtype=dt)

    x, y = r(N, M, D, s=4.0, dt=dtype), r(N, M, D, dt=dtype)
    common = dict(x=x, y=y, eps=1e-6)
    return {"self": dict(common, gate=r(N, 1, D, s=0.1), y_bias=None, weight=1 + r(D, s=0.3), bias=r(D, s=0.1),
                         shift=None, scale=None),
            "cross": dict(common, gate=None, y_bias=r(D, s=0.1, dt=dtype), weight=None, bias=None,
                          shift=r(N, 1, D, s=0.1), scale=r(N, 1, D, s=0.1))}


def bench_residual_norm(N: int = 2, M: int = 36_864, D: int = 1536, dtype=torch.bfloat16, sweep: bool = True) -> dict:
    """Time ``residual_norm`` (both calls of a block) against the eager and the compiled torch
    reference and check it against the fp32 math. GB/s counts the 4 passes (read x, y; write
    x_new, h). Returns a JSON-able dict."""
    dev = torch.device("cuda")
    cases = _rn_bench_inputs(N, M, D, dtype, dev)
    nbytes = 4 * N * M * D * torch.empty((), dtype=dtype).element_size()
    res = {"shape": {"N": N, "M": M, "R": N * M, "D": D, "dtype": str(dtype).removeprefix("torch.")},
           "device": torch.cuda.get_device_name(), "torch": torch.__version__, "errors_vs_fp32": {}, "times": {}}
    compiled = torch.compile(residual_norm_reference, dynamic=False)
    for name, kw in cases.items():
        # the fp32 math on the same inputs, with the residual rounded where run_block rounds it
        x_new, h = residual_norm(**kw)
        x32, h32 = residual_norm_reference(**{**kw, "x": kw["x"].float()})
        _, h_torch = residual_norm_reference(**kw)
        res["errors_vs_fp32"][name] = {
            "x_new_max_abs_vs_bf16_of_fp32": (x_new.float() - x32.to(dtype).float()).abs().max().item(),
            "h_kernel": _errors(h, h32), "h_torch_bf16": _errors(h_torch, h32)}
        del x_new, h, x32, h32, h_torch
        for how, fn in (("a_eager_reference", lambda: residual_norm_reference(**kw)),
                        ("b_compiled_reference", lambda: compiled(**kw)),
                        ("c_kernel", lambda: residual_norm(**kw))):
            ms = _time_ms(fn)
            res["times"][f"{name}/{how}"] = {"ms": ms, "GB_per_s": nbytes / ms / 1e6}
    if sweep:
        res["sweep"] = []
        kw = cases["cross"]
        for br in (1, 2, 4):
            for nw in (4, 8, 16):
                for rows in (8, 32, 128):
                    row = {"block_rows": br, "num_warps": nw, "rows": rows}
                    if rows < br:
                        continue
                    try:
                        ms = _time_ms(lambda: _rn_launch(kw["x"], kw["y"], kw["gate"], kw["y_bias"], kw["weight"],
                                                         kw["bias"], kw["shift"], kw["scale"], kw["eps"], br, nw, rows), 2, 10)
                    except Exception as e:  # noqa: BLE001 (a launch shape may not compile: record why)
                        res["sweep"].append({**row, "error": str(e)[:200]})
                        continue
                    res["sweep"].append({**row, "ms": ms, "GB_per_s": nbytes / ms / 1e6})
    return res


def _print_rn_table(res: dict) -> None:
    sh = res["shape"]
    print(f"\nresidual_norm  N={sh['N']} M={sh['M']} (R={sh['R']}) D={sh['D']} {sh['dtype']}  {res['device']}  "
          f"torch {res['torch']}")
    print(f"{'case':<30}{'ms':>9}{'GB/s':>9}   x30 blocks")
    for name, t in res["times"].items():
        print(f"{name:<30}{t['ms']:>9.3f}{t['GB_per_s']:>9.0f}   {30 * t['ms']:>7.1f} ms")
    if res.get("sweep"):
        ok = [r for r in res["sweep"] if "ms" in r]
        best = min(ok, key=lambda r: r["ms"])
        print(f"sweep (cross call): best block_rows={best['block_rows']} num_warps={best['num_warps']} "
              f"rows={best['rows']}: {best['ms']:.3f} ms ({best['GB_per_s']:.0f} GB/s); "
              f"default {RN_BLOCK_ROWS}/{RN_NUM_WARPS}/{RN_ROWS}")
        print("  rows/warps/rows-per-program:ms  " + "  ".join(
            f"{r['block_rows']}/{r['num_warps']}/{r['rows']}:" + (f"{r['ms']:.3f}" if "ms" in r else "err")
            for r in res["sweep"]))
    for name, e in res["errors_vs_fp32"].items():
        print(f"{name}: x_new vs bf16(fp32) max_abs {e['x_new_max_abs_vs_bf16_of_fp32']:.2e}; h vs fp32: "
              + "  ".join(f"{who} max_abs {x['max_abs']:.2e} rel_l2 {x['rel_l2']:.2e}"
                          for who, x in (("kernel", e["h_kernel"]), ("torch bf16", e["h_torch_bf16"]))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.model.kernels", description=__doc__.split("\n")[0])
    p.add_argument("--bench", action="store_true", help="time the kernel against torch (needs CUDA)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--rows", type=int, default=73_728)
    p.add_argument("--seq-len", type=int, default=4608)
    p.add_argument("--no-sweep", action="store_true", help="skip the launch-shape sweeps")
    p.add_argument("--only", choices=("qk", "norm"), help="bench one kernel (default: both)")
    args = p.parse_args(argv)
    if not args.bench:
        p.print_help()
        return 0
    if not available("cuda"):
        print("error: --bench needs a CUDA GPU and triton", file=sys.stderr)
        return 2
    res = {}
    if args.only != "norm":
        res = bench(R=args.rows, s=args.seq_len, sweep=not args.no_sweep)
        _print_table(res)
    if args.only != "qk":  # both streams' rows, [2, R/2, D]
        res["residual_norm"] = bench_residual_norm(N=2, M=args.rows // 2, sweep=not args.no_sweep)
        _print_rn_table(res["residual_norm"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
