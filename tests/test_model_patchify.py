"""The patch embedding (``FourDTransformer._patch_conv``, which ``_patchify`` and the reference
embedding use): in bf16 on the CPU it must agree with fp32. torch's CPU conv3d in bf16 gives wrong
results with the patch stride on a contiguous input, so that case runs as a matmul; fp32 keeps the
convolution, bit for bit."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from core.model.config import preset
from core.model.pipeline import FourDModel
from core.model.transformer import FourDTransformer

torch.set_num_threads(1)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / a.float().norm())


@pytest.mark.parametrize("C, h, w", [(3, 16, 24), (12, 72, 128)])
def test_bf16_patch_embedding_agrees_with_fp32(C, h, w):
    torch.manual_seed(0)
    x = torch.randn(1, 2, 3, C, h, w)
    weight = torch.randn(32, C, 1, 8, 8) * 0.1
    bias = torch.randn(32)
    ref = FourDTransformer._patch_conv(x, weight, bias, (1, 8, 8))
    assert ref.shape == (1, 2, 3, (h // 8) * (w // 8), 32)
    half = FourDTransformer._patch_conv(x, weight.bfloat16(), bias.bfloat16(), (1, 8, 8))
    assert half.dtype == torch.bfloat16 and half.shape == ref.shape
    assert rel(ref, half) < 0.01


def test_fp32_patch_embedding_is_the_convolution():
    torch.manual_seed(1)
    x = torch.randn(1, 2, 3, 3, 16, 24)
    conv = nn.Conv3d(3, 16, (1, 8, 8), (1, 8, 8))
    y = FourDTransformer._patch_conv(x, conv.weight, conv.bias, conv.stride)
    direct = conv(x.permute(0, 1, 3, 2, 4, 5).reshape(2, 3, 3, 16, 24))  # [B·V, D, T, hp, wp]
    assert torch.equal(y, direct.flatten(3).permute(0, 2, 3, 1).reshape(1, 2, 3, -1, 16))


@torch.no_grad()
def test_bf16_model_step_on_cpu_follows_fp32():
    """A whole model step of the tiny preset with reference inputs and the anchor: bf16 weights
    on the CPU give the fp32 velocity up to bf16 rounding (the default's 8x8 patches of 72x128
    frames, where torch's bf16 conv3d went wrong)."""
    tiny = preset("tiny")
    cfg = dataclasses.replace(tiny, reference_inputs=True, residual=True, anchor_input=True,
                              backbone={**tiny.backbone, "patch_size": [1, 8, 8]})  # the default's patches
    torch.manual_seed(0)
    m32 = FourDModel.from_config(cfg)
    for p in m32.transformer.parameters():  # zero-initialised layers would hide the inputs
        p.data += 0.02 * torch.randn_like(p)
    m16 = FourDModel.from_config(cfg)
    m16.transformer.load_state_dict(m32.transformer.state_dict())
    m16.to("cpu", torch.bfloat16)
    V, T, H, W = 2, 2, 72, 128
    cond = torch.randn(1, V, T, 3, H, W)
    known = torch.zeros(1, V, T, dtype=torch.bool)  # row 0 + column 0
    known[:, 0] = True
    known[:, :, 0] = True
    noisy = torch.randn(1, V, T, 3, H, W)
    text = torch.randn(1, 4, m32.transformer.backbone.config.text_dim)
    outs = []
    for m in (m32, m16):
        dt = m.dtype
        plan = m.transformer.prepare(text.to(dt), (V, T, H, W), cond=cond.to(dt), known=known, mode="soft")
        outs.append(m.transformer.step(plan, noisy.to(dt), torch.tensor([0.7])))
    assert rel(outs[0], outs[1]) < 0.05
