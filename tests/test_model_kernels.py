"""The Q/K norm + RoPE + layout op (core/model/kernels.py) on the CPU: its torch reference is the
blocks.py math (torch.nn.RMSNorm + attention.apply_rope), its checks, its compile-time (fake)
shapes, and — where triton is importable — the Triton kernel itself under the interpreter."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from core.model import attention as A
from core.model import kernels as K


def tiny_case(R=48, D=64, H=4, s=24, dtype=torch.float32, seed=0):
    """qkv [R, 3D], RMSNorm weights [D], cos/sin [s, d/2] at random angles."""
    g = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(R, 3 * D, generator=g) * 2).to(dtype)
    wq = (1 + 0.3 * torch.randn(D, generator=g)).to(dtype)
    wk = (1 + 0.3 * torch.randn(D, generator=g)).to(dtype)
    angles = torch.rand(s, D // H // 2, generator=g) * 2 * torch.pi
    return qkv, wq, wk, angles.cos(), angles.sin()


def test_reference_equals_rmsnorm_and_rope_composed_as_blocks_does():
    from diffusers.models.transformers.transformer_wan import WanAttention, WanRotaryPosEmbed

    from core.model.blocks import _qkv

    torch.manual_seed(0)
    D, H, d = 64, 4, 16
    attn = WanAttention(dim=D, heads=H, dim_head=d, eps=1e-6).eval()
    with torch.no_grad():
        for norm in (attn.norm_q, attn.norm_k):
            norm.weight.normal_(1.0, 0.3)
    attn.fuse_projections()
    rope = WanRotaryPosEmbed(attention_head_dim=d, patch_size=(1, 2, 2), max_seq_len=32)
    cos, sin = A.rope_table(rope, torch.tensor([0, 3]), 2, 2)  # sequences of s = 2 frames x 2 x 2
    s, N, M = cos.shape[0], 2, 24  # 2 streams of 3 sequences
    h = torch.randn(N, M, D)
    with torch.no_grad():
        q, k, v = _qkv(attn, h)  # [N, M, H, d], normed as blocks.py does
        want_q = A.apply_rope(q.reshape(N * M // s, s, H, d), cos, sin).reshape(N * M, D)
        want_k = A.apply_rope(k.reshape(N * M // s, s, H, d), cos, sin).reshape(N * M, D)
        got = K.qkv_norm_rope_reference(attn.to_qkv(h).reshape(N * M, 3 * D), attn.norm_q.weight,
                                        attn.norm_k.weight, attn.norm_q.eps, cos, sin, s, heads=H)
    torch.testing.assert_close(got[0], want_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], want_k, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[2], v.reshape(N * M, D))
    assert all(t.is_contiguous() and t.shape == (N * M, D) for t in got)


def test_reference_leaves_v_as_the_strided_slice_when_asked():
    qkv, wq, wk, cos, sin = tiny_case()
    D = qkv.shape[1] // 3
    copied = K.qkv_norm_rope_reference(qkv, wq, wk, 1e-6, cos, sin, 24)
    strided = K.qkv_norm_rope_reference(qkv, wq, wk, 1e-6, cos, sin, 24, copy_v=False)
    assert copied[2].data_ptr() != qkv.data_ptr() + 2 * D * qkv.element_size()
    assert strided[2].data_ptr() == qkv.data_ptr() + 2 * D * qkv.element_size()
    assert strided[2].stride() == (3 * D, 1)
    assert all(torch.equal(a, b) for a, b in zip(copied, strided))


@pytest.mark.parametrize("bad", ["rows", "cos", "heads", "weight", "qkv"])
def test_bad_shapes_raise_value_error(bad):
    qkv, wq, wk, cos, sin = tiny_case()
    args = dict(qkv=qkv, weight_q=wq, weight_k=wk, eps=1e-6, cos=cos, sin=sin, seq_len=24, heads=4)
    if bad == "rows":
        args["qkv"] = qkv[:40]  # not a whole number of 24-token sequences
    elif bad == "cos":
        args["cos"] = cos[:, :4]  # cos and sin disagree
    elif bad == "heads":
        args["heads"] = 2
    elif bad == "weight":
        args["weight_k"] = wk[:32]
    else:
        args["qkv"] = qkv[:, :100]  # not 3D wide
    with pytest.raises(ValueError):
        K.qkv_norm_rope_reference(**args)
    with pytest.raises(ValueError):
        K.qkv_norm_rope(**args)


def test_kernel_refuses_a_head_dim_that_is_not_a_power_of_two():
    qkv, wq, wk, cos, sin = tiny_case(D=48, H=4)  # d = 12
    assert not K.supports(48, 4) and K.supports(1536, 12)
    with pytest.raises(ValueError, match="power-of-two"):
        K.qkv_norm_rope(qkv, wq, wk, 1e-6, cos, sin, 24)


def test_compile_time_shapes_come_from_the_fake_kernel_without_triton():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        qkv, wq, wk, cos, sin = (mode.from_tensor(t) for t in tiny_case(R=48 * 4, dtype=torch.bfloat16))
        q, k, v = K.qkv_norm_rope(qkv, wq, wk, 1e-6, cos, sin, 24)
        q2, k2, v2 = K.qkv_norm_rope(qkv, wq, wk, 1e-6, cos, sin, 24, copy_v=False)
    assert all(t.shape == (192, 64) and t.dtype == torch.bfloat16 and t.is_contiguous() for t in (q, k, v, q2, k2))
    assert v2.stride() == (192, 1)


# -- the Triton kernel under the interpreter (needs triton; CI has none) -----------------------
# triton decides at import time whether its own helpers interpret, and torch or diffusers may
# import it early: so these run in a child pytest started with TRITON_INTERPRET=1.
def test_triton_kernel_under_the_interpreter_in_a_child_process():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "interpreted"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and " passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]


@pytest.fixture
def interpreter():
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs in the child process of test_triton_kernel_under_the_interpreter_in_a_child_process")
    pytest.importorskip("triton")
    assert K.available("cpu")


@pytest.mark.parametrize("shape", [(48, 64, 4, 24), (18, 96, 3, 6), (16, 1536, 12, 8)])  # (R, D, H, s)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_interpreted_kernel_matches_the_reference(interpreter, shape, dtype):
    # (18, 96, 3, 6): 3 heads padded to 4 and a last block of rows cut short; (.., 1536, 12, ..): Wan's D
    R, D, H, s = shape
    qkv, wq, wk, cos, sin = tiny_case(R, D, H, s, dtype)
    q, k, v = K.qkv_norm_rope(qkv, wq, wk, 1e-6, cos, sin, s, heads=H)
    ref = K.qkv_norm_rope_reference(qkv.float(), wq.float(), wk.float(), 1e-6, cos, sin, s, heads=H)
    for got, want in zip((q, k), ref):
        assert got.dtype == dtype and got.shape == (R, D) and got.is_contiguous()
        if dtype == torch.float32:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        else:  # one rounding to bf16 (the interpreter truncates: up to one ulp, 2^-7 relative)
            assert ((got.float() - want).abs() <= want.abs() * 2 ** -7 + 1e-6).all()
    assert torch.equal(v, qkv[:, 2 * D:])
    q2, k2, v2 = K.qkv_norm_rope(qkv, wq, wk, 1e-6, cos, sin, s, copy_v=False)
    assert torch.equal(q2, q) and torch.equal(k2, k)
    assert v2.data_ptr() == qkv.data_ptr() + 2 * D * qkv.element_size()


def test_interpreted_op_passes_torch_opcheck(interpreter):
    qkv, wq, wk, cos, sin = tiny_case(dtype=torch.bfloat16)
    for op in (torch.ops.fourd.qkv_norm_rope.default, torch.ops.fourd.qk_norm_rope.default):
        torch.library.opcheck(op, (qkv, wq, wk, cos, sin, 1e-6, 24),
                              test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("copy_v", [True, False])
def test_interpreted_op_is_one_call_without_graph_breaks_under_dynamo(interpreter, copy_v):
    qkv, wq, wk, cos, sin = tiny_case(dtype=torch.bfloat16)

    def layer(qkv):  # the op between ordinary torch ops, as a block uses it
        q, k, v = K.qkv_norm_rope(qkv * 1.5, wq, wk, 1e-6, cos, sin, 24, heads=4, copy_v=copy_v)
        return (q.view(2, 24, 4, 16).transpose(1, 2) + k.view(2, 24, 4, 16).transpose(1, 2)).sum() + v.sum()

    explain = torch._dynamo.explain(layer)(qkv)
    assert explain.graph_break_count == 0 and explain.graph_count == 1
    targets = [str(n.target) for gm in explain.graphs for n in gm.graph.nodes if n.op == "call_function"]
    assert sum("norm_rope" in t for t in targets) == 1, targets
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(qkv), layer(qkv), rtol=0, atol=0)
