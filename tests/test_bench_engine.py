"""The engine paths the speed work changed give the old results: RoPE without a stack, the
functional sync that compiled code runs, the layer loop that pairs each sync with the next block
(one shared graph, no graph break), and the inference defaults that leave the CPU and training
alone. (The CUDA kernels themselves: tests/gpu/test_engine_options.py.)"""

from __future__ import annotations

import pytest
import torch

from core.model import attention as A
from core.model import blocks
from core.model.sync import SyncLayer
from core.model.testing import rel_err as rel
from core.model.testing import tiny_transformer
from core.model.transformer import FourDTransformer

B, C, H, W = 1, 3, 16, 16


def make(num_layers: int = 4) -> FourDTransformer:
    return tiny_transformer(num_layers, fuse=True)


def stacked_rope(x, cos, sin):
    """The former RoPE of the half-precision / compiled path (torch.stack of the two halves)."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2).type_as(x)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rope_without_stack_is_bitwise_the_stacked_rope(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 40, 4, 16, generator=g).to(dtype)
    cos, sin = torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g)
    assert torch.equal(A.apply_rope(x, cos, sin), stacked_rope(x, cos, sin))


def _traced_rope(x, cos, sin):
    """``apply_rope`` as torch.compile traces it (the eager backend: the traced ops, run eagerly)."""
    torch._dynamo.reset()
    try:
        return torch.compile(A.apply_rope, backend="eager")(x, cos, sin)
    finally:
        torch._dynamo.reset()


def test_pointwise_rope_under_compile_is_bitwise_the_stacked_rope_in_half():
    # on the CPU eager takes the complex path; under compile the flip form runs (as on CUDA)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 40, 4, 16, generator=g).to(torch.bfloat16)
    cos, sin = torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g)
    out = _traced_rope(x, cos, sin)
    assert torch.equal(out, stacked_rope(x, cos, sin))


def test_compiled_rope_is_the_stacked_rope_in_float32():
    # float32 eager takes the complex path; under compile the pointwise path runs in float32
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 24, 2, 8, generator=g)
    cos, sin = torch.randn(24, 4, generator=g), torch.randn(24, 4, generator=g)
    out = _traced_rope(x, cos, sin)
    assert (out - stacked_rope(x, cos, sin)).abs().max() < 1e-6
    assert (A.apply_rope(x, cos, sin) - stacked_rope(x, cos, sin)).abs().max() < 1e-5


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_functional_sync_equals_the_in_place_sync(kind):
    # No grad, eager: out= writes into the two-stream tensor. With grad (training) and under
    # compile: the functional form. Same numbers (float32).
    D, r, V, T, P = 24, 4, 2, 3, 5
    torch.manual_seed(2)
    layer = SyncLayer(kind, D, 8, r, layer=1, num_layers=4)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2 * B, V * T * P, D)
    mod = layer.modulation_of(torch.randn(B, 8))
    with torch.no_grad():
        in_place = layer.apply_streams(x, B, V, T, P, mod)
    functional = layer.apply_streams(x, B, V, T, P, mod)  # grad on: the functional path
    assert functional.requires_grad
    assert rel(functional.detach(), in_place) < 1e-6
    # and both are the module's own forward on aligned (grid-order) streams
    yv = x[:B].view(B, T, V, P, D).transpose(1, 2)
    with torch.no_grad():
        xv, xt = layer(yv, x[B:].view(B, V, T, P, D), mod)
    assert rel(in_place[B:], xt.reshape(B, -1, D)) < 1e-6
    assert rel(in_place[:B], xv.transpose(1, 2).reshape(B, -1, D)) < 1e-6


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_compiled_layers_are_three_graphs_without_breaks_and_equal_eager(mode):
    # layer 0 (no sync before it), layers 1..L-1 (sync l-1 + block l: one shared graph), the
    # last sync alone. A graph break (the old out= sync) would add graphs.
    model = make(num_layers=4)
    model.share_equal_streams = True
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, 2, 2, C, H, W, generator=g)
    text = torch.randn(B, 5, 16, generator=g)
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        plan = model.prepare(text, (2, 2, H, W), mode=mode)
        eager = model.step(plan, x, torch.tensor([0.4]))
        model.compile_blocks(backend=counting)
        try:
            first = model.step(plan, x, torch.tensor([0.4]))
            again = model.step(plan, x, torch.tensor([0.7]))
        finally:
            model.uncompile_blocks()
            torch._dynamo.reset()
    assert len(graphs) == 3
    assert rel(first, eager) < 1e-5
    with torch.no_grad():
        assert rel(again, model.step(plan, x, torch.tensor([0.7]))) < 1e-5


def test_inference_defaults_leave_the_cpu_and_training_alone(monkeypatch):
    assert blocks._ffn_epilogue is True  # acts only on half precision (CPU: bf16) without grad
    # fused "auto": split for CUDA inference, FlexAttention with grad, the CPU as before
    with torch.no_grad():
        assert FourDTransformer._fused_backend("auto", "cuda", 10**6) == "split"
        assert FourDTransformer._fused_backend("auto", "cpu", 10**6) == "split"
        assert FourDTransformer._fused_backend("auto", "cpu", 100) == "dense"
    with torch.enable_grad():
        assert FourDTransformer._fused_backend("auto", "cuda", 10**6) == "flex"
        assert FourDTransformer._fused_backend("auto", "cpu", 10**6) == "dense"
    # shared Q/K/V "auto" (None) is off on the CPU: the plain path runs, bitwise
    calls = []
    real = blocks._shared_qkv
    monkeypatch.setattr(blocks, "_shared_qkv", lambda *a: calls.append(1) or real(*a))
    model = make(num_layers=2)
    assert model.share_equal_streams is None
    g = torch.Generator().manual_seed(4)
    x, text = torch.randn(B, 2, 3, C, H, W, generator=g), torch.randn(B, 5, 16, generator=g)
    with torch.no_grad():
        auto = model(x, torch.tensor([0.5]), text, mode="hard")
        assert calls == []
        model.share_equal_streams = False
        plain = model(x, torch.tensor([0.5]), text, mode="hard")
        model.share_equal_streams = True
        shared = model(x, torch.tensor([0.5]), text, mode="hard")
    assert torch.equal(auto, plain)
    assert len(calls) == 2 and rel(shared, plain) < 1e-5  # every hard layer shares when asked
