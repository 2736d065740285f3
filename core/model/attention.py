"""Token layouts of the 4D grid, their RoPE tables, and the attention kernels each mode needs.

Tokens of one sample are kept flat, ``[B, M, D]`` with ``M = V·T·P``, in one of two orders:
``grid`` order (v, t, p) — the time stream and the fused stream — and ``view`` order (t, v, p) —
the view stream. Attention then only reshapes (no copies) into its sequences:

    view stream   [B·T, V·P]   attends across views at one time    RoPE frame index = v
    time stream   [B·V, T·P]   attends across times in one view    RoPE frame index = t
    fused         [B, V·T·P]   own frame ∪ own row ∪ own column     RoPE frame index = v·T_max + t

Fused attention has three kernels that give the same result: a dense boolean mask (CPU, tests),
a FlexAttention block mask (GPU), and ``split``: row attention, column attention and frame
attention with dense kernels, merged exactly through their log-sum-exps (row ∪ column counts the
own frame twice, so its share is subtracted once). ``split`` is inference only (the LSE of the
fused kernels carries no gradient).

Unmasked bf16 attention on the CPU (eager inference, sequences of ``CPU_ATTENTION_MIN_KEYS`` or
more) runs as matmul, softmax, matmul (``cpu_attention``; switch ``set_cpu_matmul_attention``, on
by default) instead of torch's CPU flash-attention kernel: the default model's denoising step on a
2-core CPU takes about 20 % less time; its logits are rounded to bf16 before the softmax.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
import torch.nn.functional as F

FUSED_BACKENDS = ("auto", "dense", "flex", "split")
# Kernels for unmasked attention on CUDA (bf16/fp16): "auto" lets torch choose (FlashAttention-2
# on an H100 today); the others call that backend's aten op directly, so the choice also holds
# inside compiled code. Process-wide, like ``torch.backends`` flags; float32 and the CPU ignore it.
SDPA_BACKENDS = ("auto", "flash", "cudnn", "efficient")
_sdpa_backend = "auto"
# Unmasked bf16 attention on the CPU through batched matmuls and a softmax (``cpu_attention``)
# instead of torch's CPU flash-attention kernel; inference only.
_cpu_matmul_attention = True
# the logits of one block of query rows, all heads: a few MB, so that they stay in the cache
# between the matmul that writes them, the softmax and the matmul that reads them
CPU_ATTENTION_BLOCK_BYTES = 4 * 1024 * 1024
CPU_ATTENTION_MIN_KEYS = 256  # shorter sequences: the flash kernel (one matmul per sequence costs more)


def set_sdpa_backend(name: str) -> str:
    """Use ``name`` (one of ``SDPA_BACKENDS``) for unmasked CUDA attention; returns the previous
    choice. Compiled code guards on it (a change recompiles)."""
    global _sdpa_backend
    if name not in SDPA_BACKENDS:
        raise ValueError(f"sdpa backend must be one of {', '.join(SDPA_BACKENDS)}, got {name!r}")
    old, _sdpa_backend = _sdpa_backend, name
    return old


def get_sdpa_backend() -> str:
    return _sdpa_backend


@contextlib.contextmanager
def sdpa_backend(name: str):
    """``with sdpa_backend("cudnn"): ...`` — ``set_sdpa_backend`` for a block of code."""
    old = set_sdpa_backend(name)
    try:
        yield
    finally:
        set_sdpa_backend(old)


def set_cpu_matmul_attention(on: bool) -> bool:
    """Run unmasked bf16 attention on the CPU as matmul, softmax, matmul (``cpu_attention``)
    instead of torch's flash-attention kernel; returns the previous setting."""
    global _cpu_matmul_attention
    old, _cpu_matmul_attention = _cpu_matmul_attention, bool(on)
    return old


def get_cpu_matmul_attention() -> bool:
    return _cpu_matmul_attention


def _explicit_backend(q: torch.Tensor) -> str | None:
    """The backend to call directly for ``q``, or None for torch's own choice."""
    b = _sdpa_backend
    if b == "auto" or q.device.type != "cuda":
        return None
    if b in ("flash", "cudnn") and (q.dtype not in (torch.float16, torch.bfloat16) or q.shape[-1] > 256):
        return None
    return b


def _sdpa_op(qt, kt, vt, backend: str, lse: bool):
    """``[N, H, S, d]`` tensors through one backend's aten op: (output, log-sum-exp or None)."""
    ops = torch.ops.aten
    if backend == "flash":
        out = ops._scaled_dot_product_flash_attention(qt, kt, vt)
    elif backend == "cudnn":
        out = ops._scaled_dot_product_cudnn_attention(qt, kt, vt, None, lse)
    elif backend == "efficient":
        out = ops._scaled_dot_product_efficient_attention(qt, kt, vt, None, lse)
    else:
        raise ValueError(f"unknown sdpa backend {backend!r}")
    return out[0], (out[1] if lse else None)


# -- RoPE ------------------------------------------------------------------------------------
def rope_table(rope, frame_pos: torch.Tensor, hp: int, wp: int,
               max_pos: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin ``[F·hp·wp, d/2]`` (float32) for frames at positions ``frame_pos [F]``.

    ``rope`` is the backbone's ``WanRotaryPosEmbed``: head_dim split into (frame, height, width)
    parts; tokens are frame-major, then row, then column, as in ``WanTransformer3DModel``.
    ``max_pos``: the largest of ``frame_pos`` when the caller knows it (reading it off the tensor
    is a graph break in a compiled forward).
    """
    limit = rope.max_seq_len
    top = int(frame_pos.max()) if max_pos is None else int(max_pos)
    if top >= limit or max(hp, wp) > limit:
        raise ValueError(
            f"RoPE positions up to {top} (frames) and {max(hp, wp)} (patches) exceed "
            f"the backbone's rope_max_seq_len {limit}: use a smaller grid"
        )
    split = [rope.t_dim, rope.h_dim, rope.w_dim]
    n = frame_pos.numel()
    parts_c, parts_s = [], []
    for table, out in ((rope.freqs_cos, parts_c), (rope.freqs_sin, parts_s)):
        ft, fh, fw = table.split(split, dim=1)
        ft = ft[frame_pos.to(table.device)]
        out.append(ft[:, None, None, :].expand(n, hp, wp, -1))
        out.append(fh[:hp][None, :, None, :].expand(n, hp, wp, -1))
        out.append(fw[:wp][None, None, :, :].expand(n, hp, wp, -1))
    cos = torch.cat(parts_c, dim=-1).reshape(n * hp * wp, -1)
    sin = torch.cat(parts_s, dim=-1).reshape(n * hp * wp, -1)
    # Wan rotates interleaved pairs (x[2i], x[2i+1]); its tables repeat each angle twice.
    return cos[:, 0::2].float().contiguous(), sin[:, 1::2].float().contiguous()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [N, S, H, d]`` by per-token angles ``cos, sin [S, d/2]`` (Wan's pairing)."""
    if (x.dtype == torch.float32 or x.device.type == "cpu") and not torch.compiler.is_compiling():
        # Eager float32, and anything on the CPU: one complex multiply instead of six elementwise
        # passes (bf16 on the CPU: 3.3 x faster than the flip form below, bitwise equal).
        xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
        return torch.view_as_real(xc * torch.complex(cos, sin)[:, None, :]).flatten(-2).type_as(x)
    # (x1, x2) -> (x1·c − x2·s, x2·c + x1·s), written without stack/cat: the pair swap is a
    # flip, the sign a ±1 factor on s. Under compile this stays one pointwise expression, so
    # inductor fuses norm + RoPE + cast into the kernel that writes q/k in the layout the
    # attention kernel takes (a stack made it realize an fp32 buffer and copy it again).
    # The same products and sums as the stacked form: bitwise equal.
    xr = x.float().unflatten(-1, (-1, 2))  # [N, S, H, d/2, 2]
    sign = torch.arange(2, device=sin.device, dtype=sin.dtype) * 2 - 1  # (−1, +1)
    c, s = cos[:, None, :, None], sin[:, None, :, None] * sign
    out = (xr * c + xr.flip(-1) * s).flatten(-2)
    return out.type_as(x)


def plain_inference(t: torch.Tensor) -> bool:
    """True where the inference-only speed options may act on ``t``: no grad and no autocast
    (under autocast, e.g. the evaluation inside training, weights stay float32 while activations
    are half, and the engine's custom ops do not cast like torch's own ops do)."""
    return not torch.is_grad_enabled() and not torch.is_autocast_enabled(t.device.type)


# -- kernels ---------------------------------------------------------------------------------
def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention over ``[N, S, H, d]`` tensors (torch SDPA: flash / memory-efficient / math, or
    the backend ``set_sdpa_backend`` chose, when there is no mask)."""
    if mask is None and _cpu_matmul_attention and q.device.type == "cpu" and q.dtype == torch.bfloat16 \
            and k.shape[1] >= CPU_ATTENTION_MIN_KEYS and plain_inference(q) and not torch.compiler.is_compiling():
        return cpu_attention(q, k, v)
    backend = _explicit_backend(q) if mask is None else None
    if backend is not None:
        return _sdpa_op(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), backend, False)[0].transpose(1, 2)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return o.transpose(1, 2)


def cpu_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention over ``[N, S, H, d]`` tensors as one sequence at a time, all heads in one batched
    matmul: logits ``q·kᵀ/√d`` in q's precision (the matmul accumulates in fp32 and rounds once),
    softmax (computed in fp32, rounded to q's dtype), then the weights times v. Query rows go in
    even blocks whose logits take at most ``CPU_ATTENTION_BLOCK_BYTES``.

    On a 2-core AVX-512 CPU in bf16, the default model's self-attention (16 sequences of 1,152
    tokens, 4 heads of 48) takes 87-91 ms in blocks of 384 rows against the flash kernel's
    124-144 ms, the matmuls running at the speed of the linear layers. A whole sequence's 10.6 MB
    of logits at once took 145-179 ms at the same time (95 ms on a quieter occasion): the blocks
    must stay in a cache that other processes share. Not exact: the logits are rounded to bf16
    before the softmax (the flash kernel keeps them in fp32)."""
    N, S, H, d = q.shape
    L = k.shape[1]
    out = torch.empty((N, S, H, v.shape[-1]), dtype=q.dtype, device=q.device)
    blocks = -(-H * S * L * q.element_size() // CPU_ATTENTION_BLOCK_BYTES)  # ceil
    rows = max(16, -(-S // blocks))  # even blocks
    qs = q * (d ** -0.5)  # scaled before the product: d/L times less work than scaling the logits
    for n in range(N):
        kt, vn = k[n].permute(1, 2, 0), v[n].transpose(0, 1)  # [H, d, L], [H, L, dv]
        for r in range(0, S, rows):
            w = torch.softmax(torch.bmm(qs[n, r:r + rows].transpose(0, 1), kt), dim=-1)  # [H, rows, L]
            out[n, r:r + rows] = torch.bmm(w, vn).transpose(0, 1)
    return out


def sdpa_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention and its log-sum-exp: ``o [N, S, H, d]``, ``lse [N, H, S]`` (float32)."""
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    N, S, H = q.shape[:3]
    backend = _explicit_backend(q)
    if backend is not None:
        o, lse = _sdpa_op(qt, kt, vt, backend, True)
        return o.transpose(1, 2), lse.reshape(N, H, -1)[..., :S].float()
    if q.device.type == "cpu":
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qt, kt, vt)
    elif q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256:
        if _cudnn_lse_ok(q):  # H100: the split fused kernel is 20 % faster on cuDNN than on flash
            o, lse = _sdpa_op(qt, kt, vt, "cudnn", True)
            return o.transpose(1, 2), lse.reshape(N, H, -1)[..., :S].float()
        qt, kt, vt = qt.contiguous(), kt.contiguous(), vt.contiguous()
        out = torch.ops.aten._scaled_dot_product_flash_attention(qt, kt, vt)
        o, lse = out[0], out[1]
    else:
        s = (qt.float() @ kt.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
        lse = torch.logsumexp(s, dim=-1)
        o = (torch.softmax(s, dim=-1) @ vt.float()).type_as(q)
    return o.transpose(1, 2), lse[..., :S].float()


def _cudnn_lse_ok(q: torch.Tensor) -> bool:
    """cuDNN attention for ``sdpa_lse`` under the "auto" backend: CUDA half precision, head
    dim <= 128, an Ampere-or-newer GPU with cuDNN (else the flash kernel, as before). The device
    facts come from ``note_cuda_device`` (called eagerly by ``prepare``): querying them here,
    inside compiled code, would break the graph."""
    return q.shape[-1] <= 128 and q.shape[-1] % 8 == 0 and _CUDNN_LSE_DEVICES.get(q.device.index, False)


_CUDNN_LSE_DEVICES: dict = {}  # CUDA device index -> cuDNN attention usable for sdpa_lse


def note_device_fact(table: dict, device: torch.device | str, probe) -> None:
    """Record ``probe(index)`` for a CUDA ``device`` in ``table`` (device index -> bool) once,
    outside compiled code, so compiled code reads a plain dict instead of querying the device."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in table:
        table[index] = bool(probe(index))


def note_cuda_device(device: torch.device | str) -> None:
    """Record, outside compiled code, whether ``device`` can run cuDNN attention (Ampere or newer)."""
    note_device_fact(_CUDNN_LSE_DEVICES, device, lambda index: torch.backends.cudnn.is_available()
                     and torch.cuda.get_device_capability(index) >= (8, 0))


@functools.lru_cache(maxsize=8)  # one per grid shape: training steps reuse it
def fused_dense_mask(V: int, T: int, P: int, device) -> torch.Tensor:
    """Boolean ``[M, M]`` mask over grid-ordered tokens: True where key is in the query's row or
    column (own frame included). Density (V+T−1)/(V·T)."""
    f = torch.arange(V * T, device=device).repeat_interleave(P)
    v, t = f // T, f % T
    return (v[:, None] == v[None, :]) | (t[:, None] == t[None, :])


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=8)
def fused_block_mask(V: int, T: int, P: int, device):
    """FlexAttention ``BlockMask`` of the same pattern as ``fused_dense_mask``."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        fq, fk = q_idx // P, kv_idx // P
        return ((fq // T) == (fk // T)) | ((fq % T) == (fk % T))

    M = V * T * P
    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=M, KV_LEN=M, device=device)


def flex(q, k, v, block_mask) -> torch.Tensor:
    """FlexAttention over ``[N, S, H, d]`` with a block mask (compiled kernel on CUDA; inside a
    compiled region the surrounding compile makes the kernel)."""
    from torch.nn.attention.flex_attention import flex_attention as fn

    if q.device.type == "cuda" and not torch.compiler.is_compiling():
        fn = _compiled_flex()
    # FlexAttention's kernels want plain [N, H, S, d] tensors (under compile the copy fuses
    # into the RoPE kernel that makes q and k).
    qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    return fn(qt, kt, vt, block_mask=block_mask).transpose(1, 2)


def fused_split(q, k, v, B: int, V: int, T: int, P: int) -> torch.Tensor:
    """Exact row ∪ column attention from three dense attentions, merged by log-sum-exp.

    With ``Z_s = Σ_{j∈s} exp(q·k_j)`` and ``O_s`` the attention output over set s,
    ``O_{row∪col} = (Z_row·O_row + Z_col·O_col − Z_frame·O_frame) / (Z_row + Z_col − Z_frame)``.
    """
    H, d = q.shape[-2:]
    g = (B, V, T, P, H, d)

    def to_cols(x):  # grid order -> [B·T, V·P, H, d]
        return x.view(g).transpose(1, 2).reshape(B * T, V * P, H, d)

    o_r, l_r = sdpa_lse(q.view(B * V, T * P, H, d), k.view(B * V, T * P, H, d), v.view(B * V, T * P, H, d))
    o_c, l_c = sdpa_lse(to_cols(q), to_cols(k), to_cols(v))
    o_f, l_f = sdpa_lse(q.view(B * V * T, P, H, d), k.view(B * V * T, P, H, d), v.view(B * V * T, P, H, d))
    o_r, o_c, o_f = o_r.view(g), o_c.view(B, T, V, P, H, d).transpose(1, 2), o_f.view(g)
    l_r = l_r.view(B, V, H, T, P).permute(0, 1, 3, 4, 2)  # [B, V, T, P, H]
    l_c = l_c.view(B, T, H, V, P).permute(0, 3, 1, 4, 2)
    l_f = l_f.view(B, V, T, H, P).permute(0, 1, 2, 4, 3)
    m = torch.maximum(l_r, l_c)
    w_r, w_c, w_f = (torch.exp(x - m)[..., None] for x in (l_r, l_c, l_f))
    out = (w_r * o_r.float() + w_c * o_c.float() - w_f * o_f.float()) / (w_r + w_c - w_f)
    return out.type_as(q).reshape(B, V * T * P, H, d)
