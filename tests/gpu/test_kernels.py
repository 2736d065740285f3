"""GPU checks of the Triton kernels (core/model/kernels.py; run on the GPU machine, skipped
elsewhere): the Q/K norm + RoPE + layout kernel and the residual + LayerNorm kernel each equal the
fp32 reference up to one bf16 rounding, at a small and at the Wan-1.3B shape, and stay one call
without graph breaks under torch.compile."""

from __future__ import annotations

import pytest
import torch

from core.model import kernels as K
from core.model.testing import rel_err

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SMALL = (384, 256, 2, 64)  # (R, D, H, seq_len): 6 sequences, 2 heads of 128
WAN_13B = (73_728, 1536, 12, 4608)  # 8x8 grid at 288x512, both streams: 16 sequences of 4608


def case(R, D, H, s, dtype=torch.bfloat16, seed=0):
    """qkv [R, 3D] on the GPU, RMSNorm weights [D], cos/sin [s, d/2] at random angles."""
    pytest.importorskip("triton")
    return K._bench_inputs(R, D, H, s, dtype, "cuda", seed)


def fp32_reference(qkv, wq, wk, cos, sin, s, H):
    return K.qkv_norm_rope_reference(qkv.float(), wq.float(), wk.float(), 1e-6, cos, sin, s, H)


@pytest.mark.parametrize("shape", [SMALL, WAN_13B], ids=["small", "wan13b"])
def test_kernel_is_the_fp32_math_rounded_once_to_bf16(shape):
    R, D, H, s = shape
    qkv, wq, wk, cos, sin = case(*shape)
    q, k, v = K.qkv_norm_rope(qkv, wq, wk, 1e-6, cos, sin, s, heads=H)
    ref = fp32_reference(qkv, wq, wk, cos, sin, s, H)
    for got, want in zip((q, k), ref):
        assert got.dtype == torch.bfloat16 and got.shape == (R, D) and got.is_contiguous()
        # round-to-nearest bf16 is within half an ulp, 2^-8 relative; fp32 order of operations
        # may move a value across a rounding boundary, hence the small extra term
        err = (got.float() - want).abs()
        assert (err <= want.abs() * (2 ** -8 + 1e-5) + 1e-6).all(), err.max().item()
        assert rel_err(got, want) < 3e-3
    assert torch.equal(v, qkv[:, 2 * D:])
    # blocks.py's bf16 path (RMSNorm rounds to bf16 before the weight and before RoPE) is close too
    torch_bf16 = K.qkv_norm_rope_reference(qkv, wq, wk, 1e-6, cos, sin, s, H)
    assert rel_err(q, torch_bf16[0]) < 1e-2 and rel_err(k, torch_bf16[1]) < 1e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_kernel_in_other_dtypes(dtype):
    R, D, H, s = SMALL
    qkv, wq, wk, cos, sin = case(*SMALL, dtype=dtype)
    q, k, v = K.qkv_norm_rope(qkv, wq, wk, 1e-6, cos, sin, s)
    ref = fp32_reference(qkv, wq, wk, cos, sin, s, H)
    tol = 1e-5 if dtype == torch.float32 else 2 ** -11 + 1e-5  # fp16: half an ulp
    for got, want in zip((q, k), ref):
        assert got.dtype == dtype
        assert ((got.float() - want).abs() <= want.abs() * tol + 1e-5).all()
    assert torch.equal(v, qkv[:, 2 * D:])


def test_strided_v_variant_gives_the_same_q_k_and_a_view_of_v():
    R, D, H, s = SMALL
    qkv, wq, wk, cos, sin = case(*SMALL)
    q, k, v = K.qkv_norm_rope(qkv, wq, wk, 1e-6, cos, sin, s)
    q2, k2, v2 = K.qkv_norm_rope(qkv, wq, wk, 1e-6, cos, sin, s, copy_v=False)
    assert torch.equal(q, q2) and torch.equal(k, k2) and torch.equal(v, v2)
    assert v2.data_ptr() == qkv.data_ptr() + 2 * D * qkv.element_size() and v2.stride() == (3 * D, 1)


def _attention_layer(x, w, b, wq, wk, cos, sin, s, H, copy_v):
    """Projection -> the op -> cuDNN-shaped views -> SDPA, as a block would use it."""
    R, D = x.shape[0], w.shape[1]
    qkv = torch.nn.functional.linear(x, w, b)  # [R, 3D]
    q, k, v = K.qkv_norm_rope(qkv, wq, wk, 1e-6, cos, sin, s, heads=H, copy_v=copy_v)
    n, d = R // s, D // H
    q, k, v = (t.reshape(n, s, H, d).transpose(1, 2) for t in (q, k, v))  # [n, H, s, d]
    return torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(R, D)


@pytest.mark.parametrize("copy_v", [True, False])
@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_op_inside_compiled_code_is_one_call_and_gives_the_eager_result(copy_v, mode):
    R, D, H, s = SMALL
    g = torch.Generator().manual_seed(3)
    x = torch.randn(R, D, generator=g).cuda().bfloat16()
    w = (torch.randn(3 * D, D, generator=g) / D ** 0.5).cuda().bfloat16()
    b = torch.randn(3 * D, generator=g).cuda().bfloat16()
    _, wq, wk, cos, sin = case(*SMALL)
    args = (x, w, b, wq, wk, cos, sin, s, H, copy_v)
    with torch.no_grad():
        eager = _attention_layer(*args)
        explain = torch._dynamo.explain(_attention_layer)(*args)
        assert explain.graph_break_count == 0 and explain.graph_count == 1
        ops = [str(n.target) for gm in explain.graphs for n in gm.graph.nodes if n.op == "call_function"]
        assert sum("qkv_norm_rope" in o or "qk_norm_rope" in o for o in ops) == 1, ops
        torch._dynamo.reset()
        compiled = torch.compile(_attention_layer, fullgraph=True, mode=mode)
        for _ in range(3):  # (reduce-overhead: warm-up, record, replay)
            out = compiled(*args).clone()
    assert rel_err(out, eager) < 1e-3


# -- residual + LayerNorm (+ modulation) ---------------------------------------------------------
RN_SMALL = (2, 300, 256)  # (N, M, D): a last program's rows cut short
RN_WAN_13B = (2, 36_864, 1536)  # both streams of the 8x8 grid at 288x512


def rn_case(N, M, D, dtype=torch.bfloat16, seed=0):
    """The block's two calls on the GPU: {"self": kwargs, "cross": kwargs} (kernels._rn_bench_inputs)."""
    pytest.importorskip("triton")
    return K._rn_bench_inputs(N, M, D, dtype, "cuda", seed)


def check_residual_norm(kw, dtype):
    """x_new: the fp32 sum rounded once; h: the fp32 LayerNorm (+ affine, + modulation) of the
    rounded x_new, rounded once (half an ulp; fp32 order of operations may cross a boundary)."""
    x_new, h = K.residual_norm(**kw)
    shape = kw["x"].shape
    assert x_new.dtype == h.dtype == dtype and x_new.shape == h.shape == shape
    assert x_new.is_contiguous() and h.is_contiguous()
    want_x, _ = K.residual_norm_reference(**{**kw, "x": kw["x"].float()})
    half_ulp = {torch.bfloat16: 2 ** -8, torch.float16: 2 ** -11, torch.float32: 2 ** -24}[dtype]
    yb = 0 if kw["y_bias"] is None else kw["y_bias"].float()
    terms = kw["x"].float().abs() + (kw["y"].float() + yb).abs() * (1 if kw["gate"] is None else kw["gate"].abs())
    assert ((x_new.float() - want_x).abs() <= want_x.abs() * half_ulp + terms * 2 ** -22).all()
    _, want_h = K.residual_norm_reference(**{**kw, "x": x_new.float(), "y": torch.zeros_like(want_x), "gate": None,
                                             "y_bias": None})
    err = (h.float() - want_h).abs()
    assert (err <= want_h.abs() * (half_ulp + 1e-5) + 1e-5).all(), err.max().item()
    return x_new, h


@pytest.mark.parametrize("shape", [RN_SMALL, RN_WAN_13B], ids=["small", "wan13b"])
@pytest.mark.parametrize("kind", ["self", "cross"])
def test_residual_norm_kernel_is_the_fp32_math_rounded_once_to_bf16(shape, kind):
    kw = rn_case(*shape)[kind]
    x_new, h = check_residual_norm(kw, torch.bfloat16)
    # run_block's torch bf16 path is the same up to rounding
    t_x, t_h = K.residual_norm_reference(**kw)
    assert rel_err(x_new, t_x) < 1e-3 and rel_err(h, t_h) < 1e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_residual_norm_kernel_in_other_dtypes(dtype):
    for kw in rn_case(*RN_SMALL, dtype=dtype).values():
        check_residual_norm(kw, dtype)


def test_residual_norm_kernel_takes_run_blocks_strided_modulation_chunks():
    N, M, D = RN_SMALL
    kw = rn_case(*RN_SMALL)["cross"]
    table = torch.randn(N, 6, D, device="cuda")
    shift, scale, gate = table.chunk(6, dim=1)[:3]  # [N, 1, D] views with n-stride 6D
    x = torch.randn(N, 2 * M, D, device="cuda").bfloat16()[:, ::2]  # rows 2D apart
    got = K.residual_norm(x, kw["y"], gate, kw["y_bias"], None, None, shift, scale, 1e-6)
    want = K.residual_norm_reference(x, kw["y"], gate, kw["y_bias"], None, None, shift, scale, 1e-6)
    assert rel_err(got[0], want[0]) < 1e-3 and rel_err(got[1], want[1]) < 1e-2


def _two_sublayers(x, w1, w2, gate, nw, nb, shift, scale):
    """A matmul, the self-attention residual + norm, a matmul, the cross residual + norm3 + modulation.
    The outputs are concatenated, not added: a sum of bf16 tensors rounds once when inductor fuses
    it and twice in eager mode (2.7e-3 apart on an H100), which would hide what the test measures."""
    o = torch.nn.functional.linear(x, w1)
    x1, h = K.residual_norm(x, o, gate, None, nw, nb, None, None, 1e-6)
    y = torch.nn.functional.linear(h, w2)
    x2, h3 = K.residual_norm(x1, y, None, None, None, None, shift, scale, 1e-6)
    return torch.cat([x2, h3, o])


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_residual_norm_inside_compiled_code_has_no_graph_break_and_gives_the_eager_result(mode):
    N, M, D = RN_SMALL
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, M, D, generator=g).cuda().bfloat16()
    w1, w2 = ((torch.randn(D, D, generator=g) / D ** 0.5).cuda().bfloat16() for _ in range(2))
    gate, shift, scale = (torch.randn(N, 1, D, generator=g).cuda() * 0.1 for _ in range(3))
    nw, nb = (1 + torch.randn(D, generator=g) * 0.1).cuda(), (torch.randn(D, generator=g) * 0.1).cuda()
    args = (x, w1, w2, gate, nw, nb, shift, scale)
    with torch.no_grad():
        eager = _two_sublayers(*args)
        explain = torch._dynamo.explain(_two_sublayers)(*args)
        assert explain.graph_break_count == 0 and explain.graph_count == 1
        ops = [str(n.target) for gm in explain.graphs for n in gm.graph.nodes if n.op == "call_function"]
        assert sum("residual_norm" in o for o in ops) == 2, ops
        torch._dynamo.reset()
        compiled = torch.compile(_two_sublayers, fullgraph=True, mode=mode)
        for _ in range(3):  # (reduce-overhead: warm-up, record, replay)
            out = compiled(*args).clone()
    assert rel_err(out, eager) < 1e-3
