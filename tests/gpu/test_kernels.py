"""GPU checks of the Q/K norm + RoPE + layout kernel (core/model/kernels.py; run on the GPU
machine, skipped elsewhere): it equals the fp32 reference up to one bf16 rounding, at a small and
at the Wan-1.3B shape, and stays one call without graph breaks under torch.compile."""

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
