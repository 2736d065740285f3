"""The engine's Triton ops (core/model/kernels.py) on the CPU: the Q/K norm + RoPE + layout op
(its torch reference is the blocks.py math: torch.nn.RMSNorm + attention.apply_rope) and the
residual + LayerNorm op (its reference is run_block's residual and norm lines, roundings
included); their checks, their compile-time (fake) shapes, run_block unchanged on the CPU, and —
where triton is importable — the Triton kernels themselves under the interpreter, the norm kernel
also wired into run_block."""

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
def test_triton_kernels_under_the_interpreter_in_a_child_process():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "interpreted"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and " passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]


@pytest.fixture
def interpreter():
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs in the child process of test_triton_kernels_under_the_interpreter_in_a_child_process")
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


# -- the residual + LayerNorm op (kernels.residual_norm) ---------------------------------------
def rn_case(N=2, M=10, D=24, dtype=torch.float32, seed=0):
    """x, y [N, M, D] in ``dtype``; gate, shift, scale [N, 1, D] fp32; y_bias, weight, bias [D]."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=1.0):
        return torch.randn(*shape, generator=g) * s

    return dict(x=r(N, M, D, s=4.0).to(dtype), y=r(N, M, D).to(dtype), gate=r(N, 1, D, s=0.3),
                y_bias=r(D, s=0.2).to(dtype), weight=1 + r(D, s=0.3), bias=r(D, s=0.2),
                shift=r(N, 1, D, s=0.2), scale=r(N, 1, D, s=0.2))


def block_and_modulation(dtype):
    """Block 0 of a tiny model (norm2 with a non-trivial affine), its adaLN chunks for random
    tproj, and the residual x with a sub-layer output y, [2, 20, D] in ``dtype``."""
    from core.model.testing import tiny_transformer

    blk = tiny_transformer(num_layers=1).backbone.blocks[0]
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        blk.norm2.weight.normal_(1.0, 0.3, generator=g)
        blk.norm2.bias.normal_(0.0, 0.2, generator=g)
    D = blk.norm2.weight.shape[0]
    tproj = torch.randn(2, 6, D, generator=g) * 0.3
    chunks = (blk.scale_shift_table + tproj.float()).chunk(6, dim=1)  # as run_block takes them
    x, y = (torch.randn(2, 20, D, generator=g) * 3).to(dtype), torch.randn(2, 20, D, generator=g).to(dtype)
    return blk, chunks, x, y


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_residual_norm_reference_is_run_blocks_self_attention_residual_and_norm2(dtype):
    blk, (shift, scale, gate, c_shift, c_scale, c_gate), x, o = block_and_modulation(dtype)
    with torch.no_grad():
        want_x = torch.addcmul(x.float(), o, gate).type_as(x)  # run_block's lines, by hand
        want_h = blk.norm2(want_x.float()).type_as(x)
        got_x, got_h = K.residual_norm_reference(x, o, gate, None, blk.norm2.weight, blk.norm2.bias, None, None,
                                                 blk.norm2.eps)
    assert got_x.dtype == got_h.dtype == dtype
    assert torch.equal(got_x, want_x) and torch.equal(got_h, want_h)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_residual_norm_reference_is_run_blocks_cross_attention_residual_norm3_and_modulation(dtype):
    blk, (shift, scale, gate, c_shift, c_scale, c_gate), x, y = block_and_modulation(dtype)
    b_o = (torch.randn(y.shape[-1], generator=torch.Generator().manual_seed(6)) * 0.2).to(dtype)  # to_out's bias
    with torch.no_grad():
        want_x = x + (y + b_o)  # _folded_cross: in the tokens' dtype
        want_h = torch.addcmul(c_shift, blk.norm3(want_x.float()), 1 + c_scale).type_as(x)
        # the bias summed beforehand: exactly run_block's roundings
        pre_x, pre_h = K.residual_norm_reference(x, y + b_o, None, None, None, None, c_shift, c_scale, blk.norm3.eps)
        # the bias as y_bias: x + (y + b) in fp32, rounded once (bf16: within one rounding of run_block)
        got_x, got_h = K.residual_norm_reference(x, y, None, b_o, None, None, c_shift, c_scale, blk.norm3.eps)
    assert torch.equal(pre_x, want_x) and torch.equal(pre_h, want_h)
    if dtype == torch.float32:
        assert torch.equal(got_x, want_x) and torch.equal(got_h, want_h)
    else:  # the fp32 sum rounded once; run_block rounds y + b first, then the sum
        exact = x.float() + (y.float() + b_o.float())
        assert torch.equal(got_x, exact.to(dtype))
        yb = (y + b_o).float()
        assert ((want_x.float() - exact).abs() <= (yb.abs() + exact.abs()) * 2 ** -8 + 1e-6).all()
        assert ((got_h.float() - want_h.float()).abs() <= want_h.float().abs() * 2 ** -6 + 0.05).all()


def test_residual_norm_reference_is_a_biased_variance_layer_norm_with_eps_inside():
    x = torch.tensor([[[1.0, 2.0, 3.0, 6.0]]])
    eps = 0.5
    x_new, h = K.residual_norm_reference(x, torch.zeros_like(x), None, None, None, None, None, None, eps)
    mean, var = 3.0, (4 + 1 + 0 + 9) / 4  # biased: divided by D
    assert torch.equal(x_new, x)
    torch.testing.assert_close(h, (x - mean) / (var + eps) ** 0.5, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad", ["y", "gate", "y_bias", "weight", "shift_alone", "x"])
def test_residual_norm_bad_shapes_raise_value_error(bad):
    args = rn_case()
    args["eps"] = 1e-6
    if bad == "y":
        args["y"] = args["y"][:, :5]
    elif bad == "gate":
        args["gate"] = args["gate"][:, :, :12]
    elif bad == "y_bias":
        args["y_bias"] = args["y_bias"][:12]
    elif bad == "weight":
        args["weight"] = args["weight"][None]
    elif bad == "shift_alone":
        args["scale"] = None
    else:
        args["x"], args["y"] = args["x"][0], args["y"][0]  # [M, D]: not 3-d
    with pytest.raises(ValueError):
        K.residual_norm_reference(**args)
    with pytest.raises(ValueError):
        K.residual_norm(**args)


def test_residual_norm_refuses_rows_wider_than_the_registers_hold():
    args = rn_case(N=1, M=2, D=K.RN_MAX_D + 8)
    assert K.supports_residual_norm(1536) and not K.supports_residual_norm(K.RN_MAX_D + 8)
    with pytest.raises(ValueError, match="D up to"):
        K.residual_norm(**args, eps=1e-6)


def test_residual_norm_compile_time_shapes_come_from_the_fake_kernel_without_triton():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        args = {k: mode.from_tensor(v) for k, v in rn_case(dtype=torch.bfloat16).items()}
        x_new, h = K.residual_norm(**args, eps=1e-6)
        x2, h2 = K.residual_norm(args["x"], args["y"][:, :, :], None, None, None, None, None, None, 1e-6)
    assert all(t.shape == (2, 10, 24) and t.dtype == torch.bfloat16 and t.is_contiguous() for t in (x_new, h, x2, h2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_run_block_on_the_cpu_never_takes_the_norm_kernel_and_the_switch_changes_nothing(dtype, monkeypatch):
    from core.model import blocks
    from core.model.testing import grid_inputs, tiny_transformer

    model = tiny_transformer().to(dtype)
    x, sigma, text, cond, known = grid_inputs(1, 2, 3, 3, 16, 16, text_len=8, seed=2, dtype=dtype)
    text[:, 3:] = 0  # a padded prompt: the folded cross-attention
    calls = []
    monkeypatch.setattr(K, "residual_norm", lambda *a, **kw: calls.append(1))
    old = blocks.set_norm_kernel(True)
    try:
        with torch.no_grad():
            on = model(x, sigma, text, cond, known, mode="soft")
            blocks.set_norm_kernel(False)
            off = model(x, sigma, text, cond, known, mode="soft")
    finally:
        blocks.set_norm_kernel(old)
    assert not calls and torch.equal(on, off)


def rn_kwargs(case: dict, kind: str) -> dict:
    """The arguments of one call kind: ``self`` (gate, LayerNorm affine: the residual after
    self-attention + norm2), ``cross`` (y_bias, modulation: after the folded cross-attention +
    norm3), ``plain`` (x + y, bare LayerNorm)."""
    keep = {"self": ("gate", "weight", "bias"), "cross": ("y_bias", "shift", "scale"), "plain": ()}[kind]
    return {"x": case["x"], "y": case["y"], "eps": 1e-6,
            **{k: (case[k] if k in keep else None) for k in ("gate", "y_bias", "weight", "bias", "shift", "scale")}}


ULP = {torch.float32: 2 ** -23, torch.float16: 2 ** -10, torch.bfloat16: 2 ** -7}


@pytest.mark.parametrize("shape", [(2, 10, 24), (2, 37, 96), (1, 6, 1536)])  # (N, M, D)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["self", "cross", "plain"])
def test_interpreted_residual_norm_matches_the_reference(interpreter, shape, dtype, kind):
    # D = 24, 96: padded to 32, 128; M = 37: a last block of rows cut short; 1536: Wan's D
    kw = rn_kwargs(rn_case(*shape, dtype=dtype), kind)
    x_new, h = K.residual_norm(**kw)
    want_x, _ = K.residual_norm_reference(**{**kw, "x": kw["x"].float()})  # the fp32 sum, unrounded
    assert x_new.dtype == h.dtype == dtype and x_new.shape == h.shape == shape
    assert x_new.is_contiguous() and h.is_contiguous()
    # x_new: the fp32 sum rounded once (the interpreter truncates bf16: up to one ulp; fp32: the
    # product may be fused into the add or not, an ulp of the terms)
    terms = kw["x"].float().abs() + (kw["y"].float() + (0 if kw["y_bias"] is None else kw["y_bias"].float())).abs() \
        * (1 if kw["gate"] is None else kw["gate"].abs())
    assert ((x_new.float() - want_x).abs() <= terms * ULP[dtype]).all()
    # h: the LayerNorm (+ affine, + modulation) of the rounded x_new, rounded once
    _, want_h = K.residual_norm_reference(**{**kw, "x": x_new.float(), "y": torch.zeros(shape), "gate": None,
                                             "y_bias": None})
    tol = 1e-5 if dtype == torch.float32 else ULP[dtype]
    assert ((h.float() - want_h).abs() <= want_h.abs() * tol + 1e-5).all()


def test_interpreted_residual_norm_takes_strided_rows_and_per_stream_or_shared_parameters(interpreter):
    case = rn_case(N=2, M=12, D=40)
    big = torch.randn(2, 24, 40)
    x = big[:, ::2]  # rows 2D apart
    table = torch.randn(2, 6, 40)
    shift, scale, gate = table.chunk(6, dim=1)[:3]  # [2, 1, D] views, n-stride 6D: as run_block has them
    for g in (gate, gate[:1]):  # per stream, then one gate for both
        got = K.residual_norm(x, case["y"], g, case["y_bias"], case["weight"], case["bias"], shift, scale, 1e-6)
        want = K.residual_norm_reference(x, case["y"], g, case["y_bias"], case["weight"], case["bias"], shift, scale,
                                         1e-6)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_interpreted_residual_norm_passes_torch_opcheck(interpreter):
    case = rn_case(dtype=torch.bfloat16)
    for kind in ("self", "cross", "plain"):
        kw = rn_kwargs(case, kind)
        args = tuple(kw[k] for k in ("x", "y", "gate", "y_bias", "weight", "bias", "shift", "scale", "eps"))
        torch.library.opcheck(torch.ops.fourd.residual_norm.default, args,
                              test_utils=("test_schema", "test_faketensor"))


def test_interpreted_residual_norm_is_one_call_without_graph_breaks_under_dynamo(interpreter):
    case = rn_case(dtype=torch.bfloat16)

    def layer(x, y):  # the op between ordinary torch ops, as a block uses it
        x_new, h = K.residual_norm(x * 1.5, y, case["gate"], None, case["weight"], case["bias"], None, None, 1e-6)
        return x_new.float().sum() + (h * 2).float().sum()

    explain = torch._dynamo.explain(layer)(case["x"], case["y"])
    assert explain.graph_break_count == 0 and explain.graph_count == 1
    targets = [str(n.target) for gm in explain.graphs for n in gm.graph.nodes if n.op == "call_function"]
    assert sum("residual_norm" in t for t in targets) == 1, targets
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(case["x"], case["y"]), layer(case["x"], case["y"]), rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["soft", "sequential"])
@pytest.mark.parametrize("padded", [True, False])
def test_interpreted_norm_kernel_wired_into_run_block_gives_the_torch_velocity(interpreter, monkeypatch, mode, padded):
    # the kernel engages only on CUDA half precision; here it is let in on the CPU in float32,
    # so run_block's wiring (which gate, bias, norm, modulation goes where) is held to 1e-5
    from core.model import blocks
    from core.model.testing import grid_inputs, tiny_transformer

    model = tiny_transformer()
    x, sigma, text, cond, known = grid_inputs(1, 2, 3, 3, 16, 16, text_len=8, seed=2)
    if padded:  # the folded cross-attention; else the plain one
        text[:, 3:] = 0
    calls = []
    real = K.residual_norm

    def counted(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(K, "residual_norm", counted)
    with torch.no_grad():
        off = model(x, sigma, text, cond, known, mode=mode)
        monkeypatch.setattr(blocks, "_norm_kernel_applies", lambda blk, x: True)
        on = model(x, sigma, text, cond, known, mode=mode)
    assert len(calls) == 2 * 2  # two calls a block, two blocks
    assert (on - off).abs().max() < 1e-5 and (off - x).abs().max() > 1e-2


# -- the CPU's half-precision norms (blocks.set_cpu_half_norms) ---------------------------------

def _tiny_soft(dtype, grad: bool = False):
    from core.model.testing import grid_inputs, tiny_transformer

    model = tiny_transformer().to(dtype)
    x, sigma, text, cond, known = grid_inputs(1, 2, 3, 3, 16, 16, text_len=8, seed=2, dtype=dtype)
    text[:, 3:] = 0  # a padded prompt: the folded cross-attention
    with torch.set_grad_enabled(grad):
        return model(x, sigma, text, cond, known, mode="soft")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_half_norms_take_the_half_path_and_agree_with_the_fp32_norms_to_rounding(dtype, monkeypatch):
    from core.model import blocks

    calls = {"layer": [], "rms": []}
    real_ln, real_rms = blocks._layer_norm, blocks._rms_norm
    monkeypatch.setattr(blocks, "_layer_norm", lambda n, x: calls["layer"].append(x.dtype) or real_ln(n, x))
    monkeypatch.setattr(blocks, "_rms_norm", lambda n, x: calls["rms"].append(x.dtype) or real_rms(n, x))
    old = blocks.set_cpu_half_norms(True)
    try:
        on = _tiny_soft(dtype).float()
        n_on = {k: len(v) for k, v in calls.items()}
        blocks.set_cpu_half_norms(False)
        off = _tiny_soft(dtype).float()
    finally:
        blocks.set_cpu_half_norms(old)
    # every block: norm1, norm2 and norm3 in the tokens' dtype, Q and K normed without fp32 copies
    layers = 2  # tiny_transformer's blocks
    assert n_on["layer"] >= 3 * layers and n_on["rms"] >= 2 * layers
    assert set(calls["layer"]) == set(calls["rms"]) == {dtype}
    assert {k: len(v) for k, v in calls.items()} == n_on  # off: neither is called
    assert not torch.equal(on, off)  # a different rounding, so a different path was taken ...
    rel = ((on - off).norm() / off.norm()).item()
    assert rel < (2e-2 if dtype == torch.bfloat16 else 3e-3)  # ... that agrees to its precision


def test_cpu_half_norms_leave_fp32_and_training_exactly_as_they_were():
    from core.model import blocks

    old = blocks.set_cpu_half_norms(True)
    try:
        on32, on_grad = _tiny_soft(torch.float32), _tiny_soft(torch.bfloat16, grad=True)
        blocks.set_cpu_half_norms(False)
        off32, off_grad = _tiny_soft(torch.float32), _tiny_soft(torch.bfloat16, grad=True)
    finally:
        blocks.set_cpu_half_norms(old)
    assert torch.equal(on32, off32) and torch.equal(on_grad, off_grad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_layer_and_rms_norms_match_the_fp32_modules(dtype):
    from diffusers.models.normalization import FP32LayerNorm

    from core.model import blocks

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 40, 24, generator=g) * 3 + 1).to(dtype)
    ln = FP32LayerNorm(24, eps=1e-6, elementwise_affine=True)
    rms = torch.nn.RMSNorm(24, eps=1e-6)
    with torch.no_grad():
        for p in (ln.weight, ln.bias, rms.weight):
            p.copy_(torch.randn(24, generator=g))
        ln, rms = ln.to(dtype), rms.to(dtype)
        ref_ln = ln.float()(x.float())
        ref_rms = rms.float()(x.float())
        tol = 2 * torch.finfo(dtype).eps  # a rounding or two of the output
        for got, ref in ((blocks._layer_norm(ln.to(dtype), x), ref_ln), (blocks._rms_norm(rms.to(dtype), x[:, :, :]), ref_rms)):
            assert got.dtype == dtype
            assert ((got.float() - ref).abs() / (ref.abs() + 1)).max().item() < 4 * tol
        # a strided input (a chunk of a fused Q/K/V projection) is normed the same
        wide = torch.cat([x, x, x], dim=-1)
        assert torch.equal(blocks._rms_norm(rms, wide[..., 24:48]), blocks._rms_norm(rms, x))


# -- the CPU's matmul attention (attention.set_cpu_matmul_attention) ----------------------------

def _strided_qkv(N, S, H, d, dtype=torch.bfloat16, L=None, seed=0):
    """q [N, S, H, d] and k, v [N, L, H, d] as the blocks pass them: head views of fused rows."""
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(N, S, 3 * H * d, generator=g) * 1.5).to(dtype).unflatten(-1, (3 * H, d))[:, :, :H]
    kv = (torch.randn(N, L or S, 3 * H * d, generator=g) * 1.5).to(dtype).unflatten(-1, (3 * H, d))
    return q, kv[:, :, H:2 * H], kv[:, :, 2 * H:]


def _fp32_reference(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(
        *(t.float().transpose(1, 2) for t in (q, k, v))).transpose(1, 2)


@pytest.mark.parametrize("S,L,block_rows", [(40, 40, None), (40, 40, 7), (24, 56, 5)])
def test_cpu_attention_agrees_with_fp32_attention_in_any_block_of_query_rows(S, L, block_rows, monkeypatch):
    q, k, v = _strided_qkv(3, S, 4, 16, L=L)
    assert not q.is_contiguous()
    if block_rows is not None:  # logits of `block_rows` query rows a block: several blocks
        monkeypatch.setattr(A, "CPU_ATTENTION_BLOCK_BYTES", block_rows * 4 * L * 2)
    with torch.no_grad():
        out = A.cpu_attention(q, k, v)
    ref = _fp32_reference(q, k, v)
    assert out.shape == (3, S, 4, 16) and out.dtype == torch.bfloat16
    err = (out.float() - ref).abs()
    assert err.max() < 3e-2 and err.mean() < 3e-3  # bf16 logits and weights
    assert (out.float() - ref.roll(1, dims=1)).abs().mean() > 10 * err.mean()  # rows are not mixed up


def test_sdpa_takes_the_cpu_matmul_path_only_for_bf16_inference_on_long_sequences(monkeypatch):
    calls = []
    real = A.cpu_attention
    monkeypatch.setattr(A, "cpu_attention", lambda *a: calls.append(a[0].dtype) or real(*a))
    monkeypatch.setattr(A, "CPU_ATTENTION_MIN_KEYS", 32)
    old = A.set_cpu_matmul_attention(True)
    try:
        q, k, v = _strided_qkv(2, 40, 4, 16)
        with torch.no_grad():
            on = A.sdpa(q, k, v)
            assert calls == [torch.bfloat16]
            A.sdpa(q.float(), k.float(), v.float())  # fp32
            A.sdpa(*_strided_qkv(2, 20, 4, 16))  # shorter than CPU_ATTENTION_MIN_KEYS
            A.sdpa(q, k, v, torch.ones(40, 40, dtype=torch.bool))  # a mask
        A.sdpa(q, k, v)  # grad enabled
        assert len(calls) == 1
        A.set_cpu_matmul_attention(False)
        with torch.no_grad():
            off = A.sdpa(q, k, v)
        assert len(calls) == 1
    finally:
        A.set_cpu_matmul_attention(old)
    ref = _fp32_reference(q, k, v)
    assert not torch.equal(on, off)
    assert (on.float() - ref).abs().mean() < 3 * (off.float() - ref).abs().mean() + 1e-3


def test_cpu_matmul_attention_in_the_model_agrees_with_the_flash_kernel_to_rounding(monkeypatch):
    monkeypatch.setattr(A, "CPU_ATTENTION_MIN_KEYS", 1)  # the tiny grid's sequences are short
    calls = []
    real = A.cpu_attention
    monkeypatch.setattr(A, "cpu_attention", lambda *a: calls.append(1) or real(*a))
    old = A.set_cpu_matmul_attention(True)
    try:
        on = _tiny_soft(torch.bfloat16).float()
        A.set_cpu_matmul_attention(False)
        n_on = len(calls)
        off = _tiny_soft(torch.bfloat16).float()
    finally:
        A.set_cpu_matmul_attention(old)
    assert n_on >= 2 and len(calls) == n_on  # once a block at least; not at all when off
    assert not torch.equal(on, off)
    assert ((on - off).norm() / off.norm()).item() < 2e-2
