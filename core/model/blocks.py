"""One pretrained Wan block applied to our token layouts: the only place the block's math lives.

``run_block`` is ``diffusers.WanTransformerBlock.forward`` written out over the block's own
modules, with three changes that do not alter the result: self-attention goes through our layouts
(``attention.py``), the text keys/values can come precomputed (they do not change across
denoising steps), and sequential mode runs the self-attention sub-layer twice with the same
pretrained weights, across views then across times (4Real-Video Eq. 5, the "sequential"
baseline of its supplement Sec. 1.2). A test holds it to the diffusers block to 1e-5.

Inference-only speed options, all exact up to rounding: ``set_ffn_epilogue`` (on by
default; it only ever acts without grad, on CUDA in bf16/fp16 and on the CPU in bf16, so fp32 and
training never see it) makes the FFN's first matmul apply its bias and tanh-GELU in its epilogue
(cuBLASLt on CUDA, a oneDNN post-op on the CPU), so the [tokens, ffn_dim] activation is written
once instead of three times; and
``run_block(..., shared_streams=True)`` computes norm1 + modulation + Q/K/V once when both
streams hold the same tokens (every layer of hard sync, layer 0 of any parallel mode); and
``set_text_fold`` (on by default) lets a sampler hand ``run_block`` the cross-attention folded
(``fold_text_kv``): a prompt padded to the text length (Wan's umT5 states are zero after the
prompt, so every padding row gives the same key and value) attends to its distinct rows plus one
row weighted by its count, and the output projection is folded into the values, so the
cross-attention costs two thin matmuls instead of attention over all rows plus a D x D matmul.
``set_norm_kernel`` (on by default; CUDA, half precision, plain inference) runs each residual
add and the LayerNorm after it — self-attention residual + norm2, cross-attention residual + norm3
+ modulation — as one Triton kernel (``kernels.residual_norm``) that reads the residual stream and
the sub-layer's output once and writes the new residual and the next sub-layer's input once.
``set_cpu_half_norms`` (on by default; CPU, half precision, plain inference) runs the blocks'
LayerNorms with their modulation, the Q/K RMS norms and the residual adds in the tokens' own
precision instead of through fp32 copies of the [tokens, D] stream (torch's CPU kernels still
accumulate in fp32): the default model's bf16 step on a 2-core CPU spends ~0.1 s less a step on
them. This one is not exact: the modulation, the norms' outputs and each residual sum are rounded
to bf16 where the fp32 path rounds once per sub-layer.
``engine_switches`` / ``set_engine_switches`` read and set all the process-wide switches at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import attention as A

_ffn_epilogue = True  # H100, Wan-1.3B shape: -19 ms a soft step (bench); 2-core CPU, default model: ~-0.1 s a step
_text_fold = True
_qk_kernel = True
_norm_kernel = True
_cpu_half_norms = True
_QK_KERNEL_DEVICES: dict = {}  # CUDA device index -> the Triton kernels (Q/K, residual + norm) run there


def set_ffn_epilogue(on: bool) -> bool:
    """Fuse bias + tanh-GELU into the FFN up-projection (cuBLASLt epilogue on CUDA in half
    precision, oneDNN post-op on the CPU in bf16; no grad); returns the previous setting. Compiled
    code guards on it."""
    global _ffn_epilogue
    old, _ffn_epilogue = _ffn_epilogue, bool(on)
    return old


def set_text_fold(on: bool) -> bool:
    """Let samplers fold the cross-attention of padded prompts (``fold_text_kv``); returns the
    previous setting. Read when a plan is prepared."""
    global _text_fold
    old, _text_fold = _text_fold, bool(on)
    return old


def text_fold_enabled() -> bool:
    return _text_fold


def set_qk_kernel(on: bool) -> bool:
    """Run the self-attention's Q/K RMS-norm + RoPE + layout pass as one Triton kernel
    (``kernels.qkv_norm_rope``) where it applies (CUDA, half precision, no grad, fused Q/K/V
    projection); returns the previous setting. Compiled code guards on it."""
    global _qk_kernel
    old, _qk_kernel = _qk_kernel, bool(on)
    return old


def set_norm_kernel(on: bool) -> bool:
    """Run each residual add + the LayerNorm after it as one Triton kernel
    (``kernels.residual_norm``) where it applies (CUDA, half precision, no grad, no autocast);
    returns the previous setting. Compiled code guards on it."""
    global _norm_kernel
    old, _norm_kernel = _norm_kernel, bool(on)
    return old


def set_cpu_half_norms(on: bool) -> bool:
    """Run the blocks' norms, modulations and residual adds in the tokens' half precision on the
    CPU (``_cpu_half``) instead of fp32; returns the previous setting."""
    global _cpu_half_norms
    old, _cpu_half_norms = _cpu_half_norms, bool(on)
    return old


def note_qk_kernel_device(device: torch.device | str) -> None:
    """Record, outside compiled code, whether the Triton kernels (Q/K, residual + norm) can run
    on ``device``."""
    from . import kernels

    A.note_device_fact(_QK_KERNEL_DEVICES, device, lambda index: kernels.available(torch.device("cuda", index)))


def engine_switches() -> dict:
    """Every process-wide kernel switch of the engine, by name (to save and restore them)."""
    return {"sdpa": A.get_sdpa_backend(), "ffn_epilogue": _ffn_epilogue, "text_fold": _text_fold,
            "qk_kernel": _qk_kernel, "norm_kernel": _norm_kernel, "cpu_half_norms": _cpu_half_norms,
            "cpu_attention": A.get_cpu_matmul_attention()}


def set_engine_switches(switches: dict) -> dict:
    """Set the switches named in ``switches`` (keys of ``engine_switches``); returns all of them
    as they were before."""
    old = engine_switches()
    setters = {"sdpa": A.set_sdpa_backend, "ffn_epilogue": set_ffn_epilogue, "text_fold": set_text_fold,
               "qk_kernel": set_qk_kernel, "norm_kernel": set_norm_kernel, "cpu_half_norms": set_cpu_half_norms,
               "cpu_attention": A.set_cpu_matmul_attention}
    for name, value in switches.items():
        if name not in setters:
            raise ValueError(f"unknown engine switch {name!r}; known: {', '.join(setters)}")
        setters[name](value)
    return old


@torch.library.custom_op("fourd::linear_gelu_tanh", mutates_args=())
def linear_gelu_tanh(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``gelu_tanh(x @ weight.T + bias)`` for ``x [N, K]`` in one cuBLASLt call (bias and GELU in
    the epilogue). An opaque op, so inductor keeps the fused call instead of splitting it."""
    return torch._addmm_activation(bias, x, weight.t(), use_gelu=True)


@linear_gelu_tanh.register_fake
def _(x, weight, bias):
    return x.new_empty(x.shape[0], weight.shape[0])


_CPU_EPILOGUE = {"ok": None}  # oneDNN's fused linear + tanh-GELU: untried (None), works, or failed


def _epilogue(up, h: torch.Tensor) -> str | None:
    """Which fused bias + tanh-GELU serves ``up`` (diffusers' GELU module) on ``h``: "cuda" (the
    cuBLASLt epilogue, half precision), "cpu" (oneDNN's post-op, bf16, eager: under compile
    inductor fuses on its own; until it fails here once), or None (the module's own path). Both
    need the switch on, weights of h's dtype, no grad and no autocast (the fused ops do not cast)."""
    if not (_ffn_epilogue and up.proj.weight.dtype == h.dtype and A.plain_inference(h)
            and getattr(up, "approximate", None) == "tanh" and up.proj.bias is not None):
        return None
    if h.is_cuda and h.dtype in (torch.float16, torch.bfloat16):
        return "cuda"
    if (h.device.type == "cpu" and h.dtype == torch.bfloat16 and _CPU_EPILOGUE["ok"] is not False
            and not torch.compiler.is_compiling() and torch.backends.mkldnn.is_available()):
        return "cpu"
    return None


def _cpu_linear_gelu_tanh(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor | None:
    """``gelu_tanh(x @ weight.T + bias)`` for ``x [N, K]`` as one oneDNN matmul with the GELU as
    its post-op (the activation is written once, from the fp32 accumulator); None where this
    torch or CPU lacks it (then never tried again in this process)."""
    try:
        out = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [None], "tanh")
    except (RuntimeError, AttributeError, NotImplementedError):
        _CPU_EPILOGUE["ok"] = False
        return None
    _CPU_EPILOGUE["ok"] = True
    return out


def _ffn(ffn, h: torch.Tensor) -> torch.Tensor:
    """diffusers ``FeedForward`` (Linear -> tanh-GELU -> Linear) on ``h [N, M, D]``."""
    up = ffn.net[0]
    kind = _epilogue(up, h)
    if kind is not None:
        # (the CPU kernel of _addmm_activation uses the erf GELU, hence oneDNN's on the CPU)
        fused = linear_gelu_tanh if kind == "cuda" else _cpu_linear_gelu_tanh
        a = fused(h.reshape(-1, h.shape[-1]), up.proj.weight, up.proj.bias)
        if a is not None:
            return ffn.net[2](a.view(*h.shape[:-1], -1))
    return ffn(h)


@dataclass(frozen=True)
class Layout:
    """Where the tokens of ``x [N, M, D]`` sit (ints only: a compiled block guards on them).

    kind: ``streams`` (N = 2B: view stream in view order, then time stream in grid order),
    ``sequential`` (N = B, grid order; view attention then time attention), ``fused`` (N = B,
    grid order), ``time`` / ``view`` (one stream alone, N = B, its own order).
    """

    kind: str
    B: int
    V: int
    T: int
    P: int
    fused_backend: str = "dense"


def _qkv(attn, h: torch.Tensor):
    if getattr(attn, "fused_projections", False):
        q, k, v = attn.to_qkv(h).chunk(3, dim=-1)
    else:
        q, k, v = attn.to_q(h), attn.to_k(h), attn.to_v(h)
    if _cpu_half(h):
        q, k = _rms_norm(attn.norm_q, q), _rms_norm(attn.norm_k, k)
    else:
        q, k = attn.norm_q(q), attn.norm_k(k)
    H = attn.heads
    return q.unflatten(2, (H, -1)), k.unflatten(2, (H, -1)), v.unflatten(2, (H, -1))


def _qkv_kernel(attn, h: torch.Tensor, lay: Layout, ropes: dict):
    """Q/K/V of ``h [N, M, D]`` through the Triton kernel — projection, RMS-norm and RoPE, each
    ``[N, M, H, d]`` in the layout attention takes — or None where it does not apply (then
    ``_qkv`` and ``_attend`` do the same math in torch)."""
    if not (_qk_kernel and h.is_cuda and h.dtype in (torch.float16, torch.bfloat16)
            and _QK_KERNEL_DEVICES.get(h.device.index, False) and A.plain_inference(h)
            and getattr(attn, "fused_projections", False)):
        return None
    nq, nk = attn.norm_q, attn.norm_k
    if getattr(nq, "eps", None) is None or getattr(nq, "weight", None) is None or nk.weight is None \
            or nq.weight.dtype != h.dtype:
        return None
    from . import kernels

    N, M, D = h.shape
    H = attn.heads
    if not kernels.supports(D, H):
        return None
    if lay.kind == "streams":
        B, V, T, P = lay.B, lay.V, lay.T, lay.P
        parts = [(slice(0, B), ropes["view"], V * P), (slice(B, N), ropes["time"], T * P)]
        if V == T:  # both streams: sequences of V·P tokens with the same positions
            parts = [(slice(0, N), ropes["view"], V * P)]
    elif lay.kind in ("view", "time"):
        s = lay.V * lay.P if lay.kind == "view" else lay.T * lay.P
        parts = [(slice(0, N), ropes[lay.kind], s)]
    elif lay.kind == "fused":
        parts = [(slice(0, N), ropes["fused"], M)]
    else:
        return None
    qkv = attn.to_qkv(h)  # [N, M, 3D]
    outs = []
    for rows, (cos, sin), s in parts:
        part = qkv[rows].reshape(-1, 3 * D)
        outs.append(kernels.qkv_norm_rope(part, nq.weight, nk.weight, nq.eps, cos, sin, s, heads=H))
    q, k, v = (torch.cat([o[i] for o in outs]) if len(outs) > 1 else outs[0][i] for i in range(3))
    return tuple(t.view(N, M, H, D // H) for t in (q, k, v))


def _attend(q, k, v, lay: Layout, ropes: dict, mask, roped: bool = False):
    """Self-attention of ``q, k, v [N, M, H, d]`` in layout ``lay`` (RoPE applied here unless
    ``roped``: q and k come rotated, from ``_qkv_kernel``)."""
    B, V, T, P = lay.B, lay.V, lay.T, lay.P
    N, M, H, d = q.shape

    def seq(x, n, s, rope):  # reshape into n sequences of s tokens, rotate
        x = x.reshape(n, s, H, d)
        return x if rope is None or roped else A.apply_rope(x, *rope)

    if lay.kind == "streams":
        if V == T:  # both streams have T·B = V·B sequences of the same length and positions
            qs, ks = seq(q, 2 * B * T, V * P, ropes["view"]), seq(k, 2 * B * T, V * P, ropes["view"])
            return A.sdpa(qs, ks, v.reshape(2 * B * T, V * P, H, d)).reshape(N, M, H, d)
        ov = A.sdpa(seq(q[:B], B * T, V * P, ropes["view"]), seq(k[:B], B * T, V * P, ropes["view"]),
                    v[:B].reshape(B * T, V * P, H, d))
        ot = A.sdpa(seq(q[B:], B * V, T * P, ropes["time"]), seq(k[B:], B * V, T * P, ropes["time"]),
                    v[B:].reshape(B * V, T * P, H, d))
        return torch.cat([ov.reshape(B, M, H, d), ot.reshape(B, M, H, d)])
    if lay.kind == "view":  # one stream in view order
        o = A.sdpa(seq(q, B * T, V * P, ropes["view"]), seq(k, B * T, V * P, ropes["view"]),
                   v.reshape(B * T, V * P, H, d))
        return o.reshape(N, M, H, d)
    if lay.kind == "time":  # one stream in grid order
        o = A.sdpa(seq(q, B * V, T * P, ropes["time"]), seq(k, B * V, T * P, ropes["time"]),
                   v.reshape(B * V, T * P, H, d))
        return o.reshape(N, M, H, d)
    if lay.kind == "view_of_grid":  # grid order in, attention across views, grid order out
        def cols(x):
            return x.view(B, V, T, P, H, d).transpose(1, 2).reshape(N, M, H, d)

        o = _attend(cols(q), cols(k), cols(v), Layout("view", B, V, T, P), ropes, None)
        return o.reshape(B, T, V, P, H, d).transpose(1, 2).reshape(N, M, H, d)
    if lay.kind == "fused":
        if not roped:
            q, k = A.apply_rope(q, *ropes["fused"]), A.apply_rope(k, *ropes["fused"])
        if lay.fused_backend == "split":
            return A.fused_split(q, k, v, B, V, T, P)
        if lay.fused_backend == "flex":
            return A.flex(q, k, v, mask)
        return A.sdpa(q, k, v, mask)
    raise ValueError(f"unknown layout {lay.kind!r}")


def text_kv(blk, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cross-attention keys and values of one block for projected text ``[B, L, D]``:
    ``[B, L, H, d]`` each. They depend on the text only, so a sampler computes them once."""
    attn = blk.attn2
    if attn.add_k_proj is not None:
        raise ValueError("image-conditioned Wan backbones (added K/V) are not supported; use a T2V backbone")
    if getattr(attn, "fused_projections", False):
        k, v = attn.to_kv(text).chunk(2, dim=-1)
    else:
        k, v = attn.to_k(text), attn.to_v(text)
    k = attn.norm_k(k)
    return k.unflatten(2, (attn.heads, -1)), v.unflatten(2, (attn.heads, -1))


FOLD_ALIGN = 8  # on CUDA, kept rows per head padded to a multiple of this: 16-byte aligned matmul rows


def padding_rows(text: torch.Tensor) -> tuple[int, int]:
    """``text [B, L, D]`` -> ``(J, count)``: in every sample rows ``J−1 … L−1`` are equal (the
    padding after the longest prompt, with its first row), so the first J rows, the last of them
    counted ``count = L − J + 1`` times, stand for all L in attention. ``count`` 1: no padding."""
    B, L, _ = text.shape
    same = (text == text[:, -1:]).all(dim=-1)  # [B, L] rows equal to the last one
    run = same.flip(1).to(torch.int64).cumprod(dim=1).sum(dim=1)  # [B] trailing run lengths (>= 1)
    start = int((L - run).max())
    return start + 1, L - start


def folded_width(J: int, align: int = 1) -> int:
    """Columns a head takes in the folded cross-attention: J rounded up to ``align``
    (``FOLD_ALIGN`` on CUDA: an H100 ran the unaligned matmuls on a slow kernel)."""
    return -(-J // align) * align


def fold_pays(heads: int, dim: int, rows: int, J: int, align: int = 1) -> bool:
    """Whether the folded cross-attention (``2·D·H·J'`` multiply-adds a token, J' =
    ``folded_width(J, align)``) costs less than attention over ``rows`` keys plus the output
    projection (``2·rows·D + D²``), with a margin (two thin matmuls run below the big ones'
    rate): fold when ``2·H·J' <= D``."""
    return 2 * heads * folded_width(J, align) <= dim and J < rows


def fold_text_kv(blk, text: torch.Tensor, J: int, count: int, align: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cross-attention of block ``blk`` for projected text ``[B, L, D]`` folded into
    ``(kbd [B, D, H·J], u [B, H·J, D], bias [B, 1, H·J] fp32)`` (``padding_rows`` gives J, count).

    With q the normed query, k_j, v_j the keys/values of the J kept rows and w_j = log(count)
    for the last row (0 for the others), attention is
    ``o_h = Σ_j softmax_j(q_h·k_hj/√d + w_j) v_hj`` — exactly the attention over all L rows, since
    the padding rows are equal — and the output projection ``W_o·concat_h(o_h) + b_o`` equals
    ``Σ_h Σ_j p_hj (W_o,h v_hj) + b_o``. So ``scores = q @ kbd`` (kbd block-diagonal over heads,
    1/√d folded in), softmax per head over its J columns, ``out = p @ u + b_o`` with
    ``u_hj = W_o,h v_hj``; norm_q's weight multiplies kbd's rows, its RMS scale the logits
    (``_folded_cross``). Each head's columns are padded to ``folded_width(J, align)`` with zero
    keys and values of weight −inf (so the matmuls run on aligned rows); they take no probability."""
    k, v = text_kv(blk, text[:, :J])  # [B, J, H, d]
    B, _, H, d = k.shape
    Jp = folded_width(J, align)
    k = torch.nn.functional.pad(k.float(), (0, 0, 0, 0, 0, Jp - J))  # [B, Jp, H, d]
    v = torch.nn.functional.pad(v.float(), (0, 0, 0, 0, 0, Jp - J))
    eye = torch.eye(H, device=k.device, dtype=torch.float32)
    kbd = torch.einsum("bjhe,hg->bhegj", k / math.sqrt(d), eye).reshape(B, H * d, H * Jp)
    g = blk.attn2.norm_q.weight
    if g is not None:  # norm_q's weight: q̂·k = Σ_i (q_i·r)·(g_i·k_i)
        kbd = kbd * g.float()[None, :, None]
    w_o = blk.attn2.to_out[0].weight.float()  # [D_out, H·d]
    u = torch.einsum("bjhe,fhe->bhjf", v, w_o.view(w_o.shape[0], H, d)).reshape(B, H * Jp, -1)
    bias = torch.zeros(Jp, device=k.device, dtype=torch.float32)
    bias[J - 1] = math.log(count)
    bias[J:] = float("-inf")
    return kbd.to(text.dtype), u.to(text.dtype), bias.repeat(H).view(1, 1, H * Jp).expand(B, 1, H * Jp).contiguous()


def _folded_cross(attn, x: torch.Tensor, h: torch.Tensor, kv) -> torch.Tensor:
    """``x`` plus the cross-attention (after ``to_out``) of ``h [N, M, D]`` (norm2's output)
    through a folded ``kv = (kbd, u, bias)`` (``fold_text_kv``, norm_q's weight folded into kbd).
    (The residual as the C input of the values matmul — ``baddbmm`` — measured 2.6 ms a step
    slower on an H100: inductor copies C into the output buffer first.)"""
    return x + (_folded_cross_values(attn, h, kv) + attn.to_out[0].bias)


def _folded_cross_values(attn, h: torch.Tensor, kv) -> torch.Tensor:
    """The folded cross-attention of ``h [N, M, D]`` before ``to_out``'s bias: ``p @ u``.

    norm_q's RMS scale multiplies the logits instead of the queries, so the normed queries are
    never written."""
    kbd, u, bias = kv
    H = attn.heads
    q = attn.to_q(h)  # [N, M, D] before norm_q
    if _cpu_half(q):  # the same fp32 mean square, without an fp32 copy of q
        r = torch.rsqrt(_mean_square(q).add_(attn.norm_q.eps))
    else:
        r = torch.rsqrt(q.float().pow(2).mean(dim=-1, keepdim=True) + attn.norm_q.eps)  # [N, M, 1]
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        s = torch.bmm(q, kbd, out_dtype=torch.float32)  # logits kept in fp32, as attention kernels do
    else:
        s = torch.bmm(q, kbd).float()
    p = torch.softmax((s * r + bias).unflatten(-1, (H, -1)), dim=-1).flatten(2).type_as(q)  # [N, M, H·J']
    return torch.bmm(p, u)


def _is_layer_norm(norm, D: int) -> bool:
    """A LayerNorm over the last dim D (diffusers' ``FP32LayerNorm`` is one), not ``Identity``."""
    return isinstance(norm, torch.nn.LayerNorm) and tuple(norm.normalized_shape) == (D,)


def _norm_kernel_applies(blk, x: torch.Tensor) -> bool:
    """The residual + norm kernel serves block ``blk`` on ``x [N, M, D]``: CUDA half precision
    where triton runs, plain inference (no grad, no autocast), norm2 and norm3 LayerNorms over D."""
    if not (_norm_kernel and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)
            and _QK_KERNEL_DEVICES.get(x.device.index, False) and A.plain_inference(x)):
        return False
    from . import kernels

    D = x.shape[-1]
    return kernels.supports_residual_norm(D) and _is_layer_norm(blk.norm2, D) and _is_layer_norm(blk.norm3, D)


def _residual_norm(x, y, gate, y_bias, norm, shift, scale):
    """``kernels.residual_norm`` with ``norm``'s affine and eps: the new residual and the next
    sub-layer's input, ``[N, M, D]`` each."""
    from . import kernels

    return kernels.residual_norm(x, y, gate, y_bias, norm.weight, norm.bias, shift, scale, norm.eps)


def _cpu_half(x: torch.Tensor) -> bool:
    """The norms around ``x`` run in its own half precision (``set_cpu_half_norms``): CPU, fp16 or
    bf16, plain inference."""
    return (_cpu_half_norms and x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16)
            and A.plain_inference(x))


def _cpu_half_norms_apply(blk, x: torch.Tensor) -> bool:
    """``_cpu_half`` for block ``blk`` on ``x [N, M, D]``: its norm1-3 are LayerNorms over D."""
    D = x.shape[-1]
    return (_cpu_half(x) and _is_layer_norm(blk.norm1, D) and _is_layer_norm(blk.norm2, D)
            and _is_layer_norm(blk.norm3, D))


def _layer_norm(norm, x: torch.Tensor) -> torch.Tensor:
    """``norm`` (diffusers' ``FP32LayerNorm``: fp32 in and out) on ``x`` in x's own dtype: torch's
    CPU kernel accumulates half-precision input in fp32 and rounds the output once."""
    w = norm.weight.to(x.dtype) if norm.weight is not None else None
    b = norm.bias.to(x.dtype) if norm.bias is not None else None
    return torch.nn.functional.layer_norm(x, norm.normalized_shape, w, b, norm.eps)


def _mean_square(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x``'s squares over its last dim, ``[..., 1]`` fp32, accumulated in fp32
    without an fp32 copy of a half-precision ``x``."""
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32).square_().div_(x.shape[-1])


def _rms_norm(norm, x: torch.Tensor) -> torch.Tensor:
    """``torch.nn.RMSNorm`` ``norm`` on half-precision ``x``: the mean square accumulated in fp32
    without an fp32 copy of x, the scale and the weight applied in x's dtype (torch's own upcasts
    x and runs four fp32 passes: 4-6 ms against 1.7 for this on [2, 9216, 192], 2 CPU cores)."""
    if not isinstance(norm, torch.nn.RMSNorm) or norm.eps is None:
        return norm(x)
    y = x * torch.rsqrt(_mean_square(x).add_(norm.eps)).to(x.dtype)
    return y.mul_(norm.weight.to(x.dtype)) if norm.weight is not None else y


def _shared_qkv(blk, x, shift, scale, lay: Layout):
    """Q/K/V of both streams when they hold the same tokens: computed on the time stream (grid
    order) and re-laid-out for the view stream, ``[2B, M, H, d]`` each."""
    B, V, T, P = lay.B, lay.V, lay.T, lay.P
    xt = x[B:]
    h = torch.addcmul(shift[B:], blk.norm1(xt.float()), 1 + scale[B:]).type_as(x)
    out = []
    for t in _qkv(blk.attn1, h):  # [B, M, H, d] grid order
        H, d = t.shape[-2:]
        tv = t.view(B, V, T, P, H, d).transpose(1, 2).reshape(B, V * T * P, H, d)  # view order
        out.append(torch.cat([tv, t]))
    return out


def run_block(blk, x: torch.Tensor, tproj: torch.Tensor, kv: tuple, lay: Layout, ropes: dict,
              mask=None, shared_streams: bool = False) -> torch.Tensor:
    """``x [N, M, D]`` -> ``[N, M, D]`` through Wan block ``blk``.

    tproj: ``[N, 6, D]`` timestep projection (adaLN shift/scale/gate), kv: this block's text keys
    and values ``(k, v)``, ``[N, L, H, d]`` each (``text_kv``), or its folded cross-attention
    ``(kbd, u, bias)`` (``fold_text_kv``), ropes: layout name -> (cos, sin), mask: fused-mode mask.
    shared_streams (``streams`` layout): the caller promises that both streams hold the same
    tokens with the same ``tproj`` (view stream = time stream re-laid-out), so Q/K/V are computed
    once.
    """
    shift, scale, gate, c_shift, c_scale, c_gate = (blk.scale_shift_table + tproj.float()).chunk(6, dim=1)
    fuse = _norm_kernel_applies(blk, x)
    half = not fuse and _cpu_half_norms_apply(blk, x)
    if half:  # the modulation rounded to the tokens' dtype once: every pass below stays in it
        h_shift, h_scale, h_gate, h_cshift, h_cscale, h_cgate = (
            t.to(x.dtype) for t in (shift, 1 + scale, gate, c_shift, 1 + c_scale, c_gate))

    # 1. Self-attention (twice in sequential mode: across views, then across times)
    sub_layouts = ([Layout("view_of_grid", lay.B, lay.V, lay.T, lay.P), Layout("time", lay.B, lay.V, lay.T, lay.P)]
                   if lay.kind == "sequential" else [lay])
    for i, sub in enumerate(sub_layouts):
        roped = False
        if shared_streams and sub.kind == "streams":
            q, k, v = _shared_qkv(blk, x, shift, scale, sub)
        elif half:
            q, k, v = _qkv(blk.attn1, torch.addcmul(h_shift, _layer_norm(blk.norm1, x), h_scale))
        else:
            h = torch.addcmul(shift, blk.norm1(x.float()), 1 + scale).type_as(x)
            qkv = _qkv_kernel(blk.attn1, h, sub, ropes)
            roped = qkv is not None
            q, k, v = qkv if roped else _qkv(blk.attn1, h)
        o = _attend(q, k, v, sub, ropes, mask, roped).flatten(2).type_as(q)
        o = blk.attn1.to_out[0](o)
        if fuse and i == len(sub_layouts) - 1:  # the residual and norm2 in one pass
            x, h = _residual_norm(x, o, gate, None, blk.norm2, None, None)
        elif half:
            x = torch.addcmul(x, o, h_gate)
        else:
            x = torch.addcmul(x.float(), o, gate).type_as(x)

    # 2. Cross-attention to the text
    if half:
        h = _layer_norm(blk.norm2, x)
    elif not fuse:
        h = blk.norm2(x.float()).type_as(x)
    attn = blk.attn2
    if len(kv) == 3:
        if fuse:  # the residual, norm3 and the modulation in one pass (to_out's bias inside)
            x, h = _residual_norm(x, _folded_cross_values(attn, h, kv), None, attn.to_out[0].bias, blk.norm3,
                                  c_shift, c_scale)
        else:
            x = _folded_cross(attn, x, h, kv)
    else:
        q = attn.norm_q(attn.to_q(h))
        o = A.sdpa(q.unflatten(2, (attn.heads, -1)), *kv).flatten(2).type_as(q)
        if fuse:
            x, h = _residual_norm(x, attn.to_out[0](o), None, None, blk.norm3, c_shift, c_scale)
        else:
            x = x + attn.to_out[0](o)

    # 3. Feed-forward
    if half:
        return torch.addcmul(x, _ffn(blk.ffn, torch.addcmul(h_cshift, _layer_norm(blk.norm3, x), h_cscale)), h_cgate)
    if not fuse:
        h = torch.addcmul(c_shift, blk.norm3(x.float()), 1 + c_scale).type_as(x)
    x = torch.addcmul(x.float(), _ffn(blk.ffn, h), c_gate).type_as(x)
    return x
