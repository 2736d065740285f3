"""GPU checks of the engine's speed options (skipped without CUDA): each attention backend, the
FFN bias+GELU epilogue, shared Q/K/V, the Q/K and residual + norm Triton kernels and whole-step
compile (plain and reduce-overhead) give the fp32 eager velocity within bf16 rounding, on a small
Wan-shaped model; under autocast with float32 weights the options stand aside."""

from __future__ import annotations

import copy

import pytest
import torch

from core.model.testing import grid_inputs, rel_err

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

V = T = 4
h = w = 16


@pytest.fixture(autouse=True)
def restore_kernel_switches():
    """The speed options are process-wide switches: each test leaves them as it found them."""
    from core.model import blocks

    found = blocks.engine_switches()
    yield
    blocks.set_engine_switches(found)


def small_model(layers: int = 2):
    """Wan-architecture model, heads 2 x 128 (the 1.3B head size), trained-like new layers, bf16."""
    from core.model.config import preset
    from core.model.testing import perturb_new_layers
    from core.model.transformer import FourDTransformer

    cfg = preset("tiny")
    cfg.backbone.update(num_attention_heads=2, attention_head_dim=128, ffn_dim=512, num_layers=layers,
                        patch_size=[1, 2, 2], in_channels=16, out_channels=16, rope_max_seq_len=64)
    cfg.chunk_times = 4
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = FourDTransformer.from_config(cfg).eval()
    perturb_new_layers(model)
    model.fuse_projections()
    return model.cast(torch.bfloat16)


def inputs():
    return grid_inputs(1, V, T, 16, h, w, device="cuda", dtype=torch.bfloat16)


@pytest.mark.parametrize("backend", ["flash", "cudnn", "efficient"])
def test_each_sdpa_backend_gives_attention_and_its_log_sum_exp(backend):
    from core.model import attention as A

    g = torch.Generator("cpu").manual_seed(2)
    q, k, v = (torch.randn(3, 300, 4, 128, generator=g).cuda().bfloat16() for _ in range(3))
    s = torch.einsum("nqhd,nkhd->nhqk", q.float(), k.float()) / 128 ** 0.5
    ref = torch.einsum("nhqk,nkhd->nqhd", s.softmax(-1), v.float())
    with A.sdpa_backend(backend):
        o = A.sdpa(q, k, v)
        o2, lse = A.sdpa_lse(q, k, v)
    assert rel_err(o, ref) < 1e-2 and rel_err(o2, ref) < 1e-2
    assert lse.shape == (3, 4, 300) and (lse - s.logsumexp(-1)).abs().max() < 2e-2


@pytest.mark.parametrize("backend", ["flash", "cudnn", "efficient"])
def test_fused_split_with_each_backend_equals_the_dense_mask(backend):
    from core.model import attention as A

    Vq, Tq, P = 4, 3, 64
    g = torch.Generator("cpu").manual_seed(3)
    q, k, v = (torch.randn(1, Vq * Tq * P, 2, 128, generator=g).cuda().bfloat16() for _ in range(3))
    dense = A.sdpa(q, k, v, A.fused_dense_mask(Vq, Tq, P, "cuda"))
    with A.sdpa_backend(backend):
        split = A.fused_split(q, k, v, 1, Vq, Tq, P)
    assert rel_err(split, dense) < 1e-2


def test_linear_gelu_epilogue_is_the_tanh_gelu():
    from core.model.blocks import linear_gelu_tanh

    g = torch.Generator("cpu").manual_seed(4)
    x, wt, b = torch.randn(512, 256, generator=g), torch.randn(384, 256, generator=g) / 16, torch.randn(384, generator=g)
    lin = x.double() @ wt.double().T + b.double()
    tanh_ref = torch.nn.functional.gelu(lin, approximate="tanh")
    erf_ref = torch.nn.functional.gelu(lin)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        out32 = linear_gelu_tanh(x.cuda(), wt.cuda(), b.cuda()).double().cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    assert (out32 - tanh_ref).abs().max() < 1e-4 < (out32 - erf_ref).abs().max()
    out16 = linear_gelu_tanh(x.cuda().bfloat16(), wt.cuda().bfloat16(), b.cuda().bfloat16())
    assert rel_err(out16.cpu(), tanh_ref) < 1e-2


VARIANTS = [
    dict(mode="soft", compile="eager", sdpa="cudnn"),
    dict(mode="soft", compile="eager", sdpa="efficient"),
    dict(mode="soft", compile="eager", ffn_epilogue=True),
    dict(mode="hard", compile="eager", share=True),
    dict(mode="fused", compile="eager", backend="split", sdpa="cudnn"),
    dict(mode="soft", compile="blocks", ffn_epilogue=True, sdpa="cudnn"),
    dict(mode="hard", compile="blocks", share=True),
    dict(mode="soft", compile="step"),
    dict(mode="fused", compile="step", backend="flex"),
    dict(mode="soft", compile="step", compile_mode="reduce-overhead"),
    # the engine's inference defaults (compiled): what generate and the bench's headline rows run
    dict(mode="soft", compile="blocks", ffn_epilogue=True, share=True, text_fold=True, qk_kernel=True,
         norm_kernel=True, defaults=True),
    dict(mode="hard", compile="blocks", ffn_epilogue=True, share=True, text_fold=True, qk_kernel=True,
         norm_kernel=True, defaults=True),
    dict(mode="fused", compile="blocks", backend="split", ffn_epilogue=True, text_fold=True, qk_kernel=True,
         norm_kernel=True, defaults=True),
    dict(mode="soft", compile="eager", qk_kernel=True),
    dict(mode="soft", compile="eager", norm_kernel=True),
    dict(mode="sequential", compile="eager", norm_kernel=True),
    dict(mode="soft", compile="step", ffn_epilogue=True, share=True),
]


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_each_speed_option_gives_the_eager_velocity(kw):
    from core.bench import Variant, configure

    model = small_model()
    ref_model = copy.deepcopy(model).float()  # float32 eager: the reference both are held to
    x, sigma, text, cond, known = inputs()
    v = Variant(**kw)
    backend = v.backend if v.mode == "fused" else "auto"
    with torch.no_grad():
        ref = ref_model(x.float(), sigma, text.float(), cond.float(), known, mode=v.mode,
                        fused_backend="dense" if v.mode == "fused" else "auto")
        plan = model.prepare(text, (V, T, h, w), cond=cond, known=known, mode=v.mode, fused_backend=backend)
        configure(model, Variant(v.mode, "eager"), cuda=True)
        eager = model.step(plan, x, sigma).clone()
        try:
            configure(model, v, cuda=True)
            fn = (lambda: model.step(plan, x, sigma))
            first = fn().clone()
            again = fn().clone()
        finally:
            configure(model, Variant(v.mode, "eager"), cuda=True)
    tol = max(2 * rel_err(eager, ref), 1e-2)
    assert rel_err(first, ref) < tol and rel_err(again, ref) < tol


def test_qk_kernel_runs_in_the_soft_step_and_matches_torch():
    from core.model import blocks, kernels

    model = small_model()
    x, sigma, text, cond, known = inputs()
    calls = []
    real = kernels.qkv_norm_rope

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    kernels.qkv_norm_rope = spy
    try:
        with torch.no_grad():
            on = model(x, sigma, text, cond, known, mode="soft")
            blocks.set_qk_kernel(False)
            off = model(x, sigma, text, cond, known, mode="soft")
    finally:
        kernels.qkv_norm_rope = real
    assert len(calls) == 1  # layer 1 (layer 0's equal streams share one torch Q/K/V)
    assert rel_err(on, off) < 1e-2


@pytest.mark.parametrize("padded", [True, False], ids=["folded-cross", "plain-cross"])
def test_norm_kernel_runs_in_the_soft_step_and_matches_torch(padded):
    from core.model import blocks, kernels

    model = small_model()
    x, sigma, text, cond, known = inputs()
    if padded:
        text = text.clone()
        text[:, 3:] = 0
    calls = []
    real = kernels.residual_norm

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    kernels.residual_norm = spy
    try:
        with torch.no_grad():
            blocks.set_norm_kernel(True)
            on = model(x, sigma, text, cond, known, mode="soft")
            blocks.set_norm_kernel(False)
            off = model(x, sigma, text, cond, known, mode="soft")
    finally:
        kernels.residual_norm = real
    assert len(calls) == 2 * 2  # after self- and after cross-attention, 2 layers
    assert rel_err(on, off) < 1e-2


def test_compiled_soft_step_with_the_norm_kernel_on_and_off():
    """The engine's compiled defaults with the residual + norm kernel, and without it (each a
    fresh compile: the switch is guarded on), give the fp32 eager velocity within rounding."""
    from core.bench import Variant, configure

    model = small_model()
    ref_model = copy.deepcopy(model).float()
    x, sigma, text, cond, known = inputs()
    text = text.clone()
    text[:, 3:] = 0  # the folded cross-attention, as generate's prompts are
    out = {}
    with torch.no_grad():
        ref = ref_model(x.float(), sigma, text.float(), cond.float(), known, mode="soft")
        for on in (True, False):
            configure(model, Variant("soft", "blocks", ffn_epilogue=True, share=True, text_fold=True, qk_kernel=True,
                                     norm_kernel=on), cuda=True)
            plan = model.prepare(text, (V, T, h, w), cond=cond, known=known, mode="soft")
            model.step(plan, x, sigma)
            out[on] = model.step(plan, x, sigma).clone()
        configure(model, Variant("soft", "eager"), cuda=True)
    assert rel_err(out[True], out[False]) < 1e-2
    tol = max(2 * rel_err(out[False], ref), 1e-2)
    assert rel_err(out[True], ref) < tol


def test_kernel_profile_counts_the_step_kernels():
    from core.bench import kernel_profile

    a = torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16)
    p = kernel_profile(lambda: torch.nn.functional.gelu(a @ a, approximate="tanh"))
    assert p["kernel_sum_ms"] > 0 and p["wall_ms"] >= p["kernel_sum_ms"] * 0.5
    assert "matmul" in p["by_kind_ms"] and p["top"][0]["calls"] >= 1


def test_split_log_sum_exps_use_cudnn_by_default_and_match_flash():
    from core.model import attention as A

    g = torch.Generator("cpu").manual_seed(5)
    q, k, v = (torch.randn(2, 256, 2, 128, generator=g).cuda().bfloat16() for _ in range(3))
    A.note_cuda_device(q.device)  # what prepare() does before any compiled call
    assert A.get_sdpa_backend() == "auto" and A._cudnn_lse_ok(q) == torch.backends.cudnn.is_available()
    o, lse = A.sdpa_lse(q, k, v)
    with A.sdpa_backend("flash"):
        o_f, lse_f = A.sdpa_lse(q, k, v)
    assert rel_err(o, o_f) < 1e-2 and (lse - lse_f).abs().max() < 2e-2 and lse.shape == lse_f.shape


def test_engine_defaults_are_on_for_cuda_half_inference():
    from core.model import blocks

    model = small_model()
    x, sigma, text, cond, known = inputs()
    assert blocks._ffn_epilogue and model.share_equal_streams is None
    assert blocks.engine_switches() == {"sdpa": "auto", "ffn_epilogue": True, "text_fold": True,
                                        "qk_kernel": True, "norm_kernel": True, "cpu_half_norms": True,
                                        "cpu_attention": True}
    calls = []
    real = blocks._shared_qkv

    def spy(*a):
        calls.append(1)
        return real(*a)

    blocks._shared_qkv = spy
    try:
        with torch.no_grad():
            plan = model.prepare(text, (V, T, h, w), cond=cond, known=known, mode="fused")
            assert plan.layout.fused_backend == "split"
            auto = model(x, sigma, text, cond, known, mode="hard")
            model.share_equal_streams = True
            shared = model(x, sigma, text, cond, known, mode="hard")
    finally:
        blocks._shared_qkv = real
    assert len(calls) == 2 * 2 and torch.equal(auto, shared)  # 2 layers, twice
    with torch.enable_grad():
        plan = model.prepare(text, (V, T, h, w), cond=cond, known=known, mode="fused")
    assert plan.layout.fused_backend == "flex"


@pytest.mark.parametrize("compiled", [False, True])
def test_folded_cross_attention_gives_the_plain_velocity(compiled):
    from core.bench import Variant, configure
    from core.model import blocks

    model = small_model()
    ref_model = copy.deepcopy(model).float()
    x, sigma, text, cond, known = inputs()
    text = text.clone()
    text[:, 3:] = 0  # a 3-token prompt, then Wan's zero padding
    how = "blocks" if compiled else "eager"
    with torch.no_grad():
        blocks.set_text_fold(False)
        ref = ref_model(x.float(), sigma, text.float(), cond.float(), known, mode="soft")
        out = {}
        for fold in (False, True):
            configure(model, Variant("soft", how, ffn_epilogue=True, share=True, text_fold=fold), cuda=True)
            plan = model.prepare(text, (V, T, h, w), cond=cond, known=known, mode="soft")
            assert all(len(kv) == (3 if fold else 2) for kv in plan.kv)
            out[fold] = model.step(plan, x, sigma).clone()
        configure(model, Variant("soft", "eager"), cuda=True)
    tol = max(2 * rel_err(out[False], ref), 1e-2)
    assert rel_err(out[True], ref) < tol


@pytest.mark.parametrize("padded", [False, True])
def test_compiled_soft_step_has_no_graph_break_on_cuda(padded):
    model = small_model(layers=3)
    x, sigma, text, cond, known = inputs()
    if padded:  # the folded cross-attention
        text = text.clone()
        text[:, 3:] = 0
    torch._dynamo.reset()
    with torch.no_grad():
        plan = model.prepare(text, (V, T, h, w), cond=cond, known=known, mode="soft")
        tokens = torch.randn(1, V * T * plan.P, model.dim, device="cuda", dtype=torch.bfloat16)
        temb, tproj, syncs = model._time(plan, sigma)
        x2, tp2 = torch.cat([tokens, tokens]), tproj.repeat(2, 1, 1)
        blk, sl = model.backbone.blocks[1], model.layers.soft_sync[0]
        assert len(plan.kv[1]) == (3 if padded else 2)
        ex = torch._dynamo.explain(model._parallel_layer)(blk, sl, x2, tp2, plan.kv[1], syncs[0],
                                                          plan.layout, plan.ropes, False)
    torch._dynamo.reset()
    assert ex.graph_break_count == 0 and ex.graph_count == 1


def test_split_attention_compiles_without_a_graph_break():
    """The cuDNN choice in sdpa_lse reads device facts noted eagerly, so dynamo sees one graph."""
    import torch._dynamo

    from core.model import attention as A

    q, k, v = (torch.randn(2, 256, 2, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    A.note_cuda_device(q.device)
    explained = torch._dynamo.explain(lambda a, b, c: A.sdpa_lse(a, b, c)[0] * 2)(q, k, v)
    assert explained.graph_break_count == 0, explained.break_reasons


@pytest.mark.parametrize("compiled", [False, True])
def test_speed_options_stand_aside_under_autocast_with_float32_weights(compiled):
    """The evaluation inside training runs float32 weights under bf16 autocast without grad: the
    FFN epilogue is on but may not act (its custom op does not cast), and the velocity is
    autocast's own."""
    from core.model import blocks

    model = copy.deepcopy(small_model()).float()
    x, sigma, text, cond, known = inputs()
    blocks.set_engine_switches({"ffn_epilogue": True, "qk_kernel": True, "norm_kernel": True})
    if compiled:
        model.compile_blocks()
    try:
        with torch.no_grad():
            ref = model(x.float(), sigma, text.float(), cond.float(), known, mode="soft")
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(x.float(), sigma, text.float(), cond.float(), known, mode="soft")
    finally:
        if compiled:
            model.uncompile_blocks()
    assert torch.isfinite(out).all() and rel_err(out, ref) < 3e-2
