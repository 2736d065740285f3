"""GPU checks of the 4D transformer (run on the GPU machine; skipped elsewhere): the FlexAttention
fused mask and the split kernels equal the dense mask in bf16, and the compiled forward equals
the eager one."""

from __future__ import annotations

import pytest
import torch

from core.model.testing import grid_inputs, rel_err

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def small_model(layers: int = 2, trained: bool = True):
    """Wan-architecture model with FlexAttention-friendly heads (2 x 64), bf16 on the GPU."""
    from core.model.config import preset
    from core.model.transformer import FourDTransformer

    cfg = preset("tiny")
    cfg.backbone.update(num_attention_heads=2, attention_head_dim=64, ffn_dim=256, num_layers=layers,
                        patch_size=[1, 2, 2], in_channels=16, out_channels=16, rope_max_seq_len=64)
    cfg.chunk_times = 4
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = FourDTransformer.from_config(cfg).eval()
    from core.model.testing import perturb_new_layers

    if trained:
        perturb_new_layers(model)
    return model.cast(torch.bfloat16)


def inputs(V=4, T=4, h=16, w=16):
    return grid_inputs(1, V, T, 16, h, w, device="cuda", dtype=torch.bfloat16)


@pytest.mark.parametrize("backend", ["flex", "split"])
def test_fused_kernels_equal_the_dense_mask_in_bf16(backend):
    model = small_model()
    x, sigma, text, cond, known = inputs()
    with torch.no_grad():
        dense = model(x, sigma, text, cond, known, mode="fused", fused_backend="dense")
        other = model(x, sigma, text, cond, known, mode="fused", fused_backend=backend)
    assert torch.isfinite(other).all()
    assert rel_err(other, dense) < 2e-2


def test_fused_attention_kernels_alone_agree():
    from core.model import attention as A

    V, T, P, H, d = 4, 3, 64, 2, 64
    g = torch.Generator("cpu").manual_seed(2)
    q, k, v = (torch.randn(1, V * T * P, H, d, generator=g).cuda().bfloat16() for _ in range(3))
    dense = A.sdpa(q, k, v, A.fused_dense_mask(V, T, P, "cuda"))
    flex = A.flex(q, k, v, A.fused_block_mask(V, T, P, "cuda"))
    split = A.fused_split(q, k, v, 1, V, T, P)
    assert rel_err(flex, dense) < 1e-2 and rel_err(split, dense) < 1e-2


@pytest.mark.parametrize("mode,backend", [("soft", "auto"), ("hard", "auto"), ("sequential", "auto"),
                                          ("fused", "flex"), ("fused", "split")])
def test_compiled_forward_equals_eager(mode, backend):
    import copy

    model = small_model()
    model.fuse_projections()
    ref_model = copy.deepcopy(model).float()  # float32 eager: the reference both are held to
    x, sigma, text, cond, known = inputs()
    with torch.no_grad():
        ref = ref_model(x.float(), sigma, text.float(), cond.float(), known, mode=mode,
                        fused_backend="dense" if mode == "fused" else "auto")
        plan = model.prepare(text, (4, 4, 16, 16), cond=cond, known=known, mode=mode, fused_backend=backend)
        eager = model.step(plan, x, sigma)
        model.compile_blocks()
        try:
            compiled = model.step(plan, x, sigma)
            again = model.step(plan, x, sigma)
        finally:
            model.uncompile_blocks()
    # Compiled bf16 is as close to the float32 result as eager bf16 is (bf16 rounding only).
    assert rel_err(compiled, ref) < max(2 * rel_err(eager, ref), 1e-2)
    assert torch.equal(compiled, again)


def test_streams_reproduce_backbone_forward_in_bf16():
    model = small_model(trained=False)
    x, sigma, text, _, _ = inputs(V=3, T=4)
    B, V, T, C, H, W = x.shape
    with torch.no_grad():
        _, out_t = model(x, sigma.cuda(), text, mode="soft", sync=False, return_streams=True)
        seq_t = x.permute(0, 1, 3, 2, 4, 5).reshape(V, C, T, H, W)
        ref = model.backbone(seq_t, (sigma * 1000).cuda().expand(V), text.expand(V, -1, -1), return_dict=False)[0]
        ref = ref.reshape(1, V, C, T, H, W).permute(0, 1, 3, 2, 4, 5)
    assert rel_err(out_t, ref) < 2e-2
