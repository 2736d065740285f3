"""The 4D transformer is the method, not a look-alike: each stream is the pretrained backbone on
its own sequences, the sync layers start as the paper's training-free formulas, and fused
attention sees exactly a token's row and column. References are built from diffusers' own
``WanTransformer3DModel.forward`` and ``WanTransformerBlock.forward``, not from our code."""

from __future__ import annotations

import pytest
import torch

from core.model import blocks
from core.model.blocks import Layout, fold_pays, fold_text_kv, padding_rows, run_block, text_kv
from core.model.config import preset
from core.model.sync import SyncLayer, soft_sync_weight
from core.model.testing import perturb_new_layers
from core.model.transformer import FourDTransformer

B, C, H, W = 2, 3, 16, 16


def make(num_layers: int = 2, seed: int = 0) -> FourDTransformer:
    cfg = preset("tiny")
    cfg.backbone["num_layers"] = num_layers
    torch.manual_seed(seed)
    return FourDTransformer.from_config(cfg).eval()


def inputs(V, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, V, T, C, H, W, generator=g)
    sigma = torch.rand(B, generator=g)
    text = torch.randn(B, 5, 16, generator=g)
    return x, sigma, text


def backbone_on(bb, seqs, sigma_rep, text_rep):
    """diffusers' own forward on videos ``seqs [N, C, F, H, W]``."""
    return bb(seqs, sigma_rep * 1000, text_rep, return_dict=False)[0]


@pytest.mark.parametrize("V,T", [(2, 3), (3, 3)])
def test_each_stream_without_sync_reproduces_backbone_forward(V, T):
    model = make()
    x, sigma, text = inputs(V, T)
    with torch.no_grad():
        out_v, out_t = model(x, sigma, text, mode="soft", sync=False, return_streams=True)
        bb = model.backbone
        # View stream: for each time t, the video whose frames are the V views.
        seq_v = x.permute(0, 2, 3, 1, 4, 5).reshape(B * T, C, V, H, W)
        ref_v = backbone_on(bb, seq_v, sigma.repeat_interleave(T), text.repeat_interleave(T, 0))
        ref_v = ref_v.reshape(B, T, C, V, H, W).permute(0, 3, 1, 2, 4, 5)
        # Time stream: for each view v, the video whose frames are the T times.
        seq_t = x.permute(0, 1, 3, 2, 4, 5).reshape(B * V, C, T, H, W)
        ref_t = backbone_on(bb, seq_t, sigma.repeat_interleave(V), text.repeat_interleave(V, 0))
        ref_t = ref_t.reshape(B, V, C, T, H, W).permute(0, 1, 3, 2, 4, 5)
    assert (out_v - ref_v).abs().max() < 1e-5
    assert (out_t - ref_t).abs().max() < 1e-5
    assert ref_v.abs().max() > 0.1  # a real signal, not zeros


def test_run_block_equals_diffusers_block():
    model = make(num_layers=1)
    blk, bb = model.backbone.blocks[0], model.backbone
    g = torch.Generator().manual_seed(3)
    video = torch.randn(2, C, 3, H, W, generator=g)
    text = bb.condition_embedder.text_embedder(torch.randn(2, 5, 16, generator=g))
    tproj = torch.randn(2, 6, model.dim, generator=g) * 0.1
    x = bb.patch_embedding(video).flatten(2).transpose(1, 2)  # [2, 3·P, D]
    with torch.no_grad():
        ref = blk(x, text, tproj, bb.rope(video))
        from core.model.attention import rope_table

        ropes = {"time": rope_table(bb.rope, torch.arange(3), H // 4, W // 4)}
        k, v = text_kv(blk, text)
        ours = run_block(blk, x, tproj, (k, v), Layout("time", 2, 1, 3, (H // 4) * (W // 4)), ropes)
    assert (ours - ref).abs().max() < 1e-5


def reference_parallel(model, x, sigma, text, merge):
    """Two streams through diffusers' blocks with ``merge(l, yv, yt) -> (xv, xt)`` between
    blocks (grid-aligned ``[B, V, T, P, D]``), averaged, then Wan's output head."""
    bb = model.backbone
    B_, V, T = x.shape[:3]
    hp, wp = H // 4, W // 4
    P, D = hp * wp, model.dim

    def embed(seqs, rep):
        rope = bb.rope(seqs)
        tok = bb.patch_embedding(seqs).flatten(2).transpose(1, 2)
        temb, tproj, txt, _ = bb.condition_embedder(sigma.repeat_interleave(rep) * 1000,
                                                   text.repeat_interleave(rep, 0), None)
        return tok, rope, temb, tproj.unflatten(1, (6, -1)), txt

    tv, rv, _, pv, txv = embed(x.permute(0, 2, 3, 1, 4, 5).reshape(B_ * T, C, V, H, W), T)
    tt, rt, _, pt, txt = embed(x.permute(0, 1, 3, 2, 4, 5).reshape(B_ * V, C, T, H, W), V)
    for l, blk in enumerate(bb.blocks):
        yv = blk(tv, txv, pv, rv).reshape(B_, T, V, P, D).transpose(1, 2)
        yt = blk(tt, txt, pt, rt).reshape(B_, V, T, P, D)
        xv, xt = merge(l, yv, yt)
        tv = xv.transpose(1, 2).reshape(B_ * T, V * P, D)
        tt = xt.reshape(B_ * V, T * P, D)
    tokens = ((xv + xt) / 2).reshape(B_, V * T * P, D)
    temb, _, _, _ = bb.condition_embedder(sigma * 1000, text, None)
    shift, scale = (bb.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
    out = bb.proj_out(bb.norm_out(tokens) * (1 + scale) + shift)
    out = out.reshape(B_, V, T, hp, wp, 4, 4, C).permute(0, 1, 2, 7, 3, 5, 4, 6)
    return out.reshape(B_, V, T, C, H, W)


def test_soft_sync_untrained_equals_weighted_average():
    model = make(num_layers=3)
    x, sigma, text = inputs(2, 3)
    L = 3

    def weighted(l, yv, yt):  # supplement Eq. 2, w_l = 0.1 + 0.4 l / L
        w = 0.1 + 0.4 * l / L
        return (1 - w) * yv + w * yt, (1 - w) * yt + w * yv

    with torch.no_grad():
        ours = model(x, sigma, text, mode="soft")
        ref = reference_parallel(model, x, sigma, text, weighted)
        unsynced = model(x, sigma, text, mode="soft", sync=False)
    assert (ours - ref).abs().max() < 1e-5
    assert (ours - unsynced).abs().max() > 1e-3  # the sync layers do act


def test_hard_sync_at_init_averages_the_streams():
    model = make(num_layers=2)
    x, sigma, text = inputs(3, 3, seed=1)

    def average(l, yv, yt):  # supplement Eq. 1
        m = (yv + yt) / 2
        return m, m

    with torch.no_grad():
        ours = model(x, sigma, text, mode="hard")
        ref = reference_parallel(model, x, sigma, text, average)
    assert (ours - ref).abs().max() < 1e-5


def test_sync_layer_formulas_and_noise_conditioning():
    g = torch.Generator().manual_seed(0)
    yv, yt = torch.randn(2, 2, 3, 5, 8, generator=g), torch.randn(2, 2, 3, 5, 8, generator=g)
    e = torch.randn(2, 4, generator=g)
    soft = SyncLayer("soft", 8, 4, rank=3, layer=2, num_layers=4)
    hard = SyncLayer("hard", 8, 4, rank=3, layer=2, num_layers=4)
    w = soft_sync_weight(2, 4)
    assert w == pytest.approx(0.3)
    xv, xt = soft(yv, yt, soft.modulation_of(e))
    assert torch.allclose(xv, (1 - w) * yv + w * yt, atol=1e-6) and torch.allclose(xt, (1 - w) * yt + w * yv, atol=1e-6)
    xv, xt = hard(yv, yt, hard.modulation_of(e))
    assert torch.allclose(xv, (yv + yt) / 2, atol=1e-6) and torch.equal(xv, xt)
    # Once trained (non-zero modulation), the merge depends on the noise level.
    for layer in (soft, hard):
        with torch.no_grad():
            layer.modulation.weight.normal_(0, 0.5, generator=g)
            layer.up.weight.normal_(0, 0.5, generator=g)
        a = layer(yv, yt, layer.modulation_of(e))[0]
        b = layer(yv, yt, layer.modulation_of(e.flip(0)))[0]
        assert (a - b).abs().max() > 1e-3


def test_noise_level_reaches_the_sync_layers_through_the_model():
    model = make()
    perturb_new_layers(model, scale=0.5)
    x, _, text = inputs(2, 3)
    with torch.no_grad():
        a = model(x, torch.tensor([0.2, 0.2]), text, mode="soft")
        b = model(x, torch.tensor([0.8, 0.8]), text, mode="soft")
        a0 = model(x, torch.tensor([0.2, 0.2]), text, mode="soft", sync=False)
        b0 = model(x, torch.tensor([0.8, 0.8]), text, mode="soft", sync=False)
    # How much σ changes the output differs with and without sync: the sync layers see σ.
    assert ((a - b) - (a0 - b0)).abs().max() > 1e-3


def one_block_change(model, mode, cell, V=3, T=3, backend="dense"):
    """Max change of the output at cell (0, 0) when input cell ``cell`` changes (one block)."""
    x, sigma, text = inputs(V, T, seed=5)
    y = x.clone()
    y[:, cell[0], cell[1]] += torch.randn_like(y[:, cell[0], cell[1]])
    with torch.no_grad():
        a = model(x, sigma, text, mode=mode, fused_backend=backend)
        b = model(y, sigma, text, mode=mode, fused_backend=backend)
    return (a[:, 0, 0] - b[:, 0, 0]).abs().max().item()


def test_fused_token_sees_only_its_row_and_column():
    model = make(num_layers=1)
    assert one_block_change(model, "fused", (1, 1)) == 0.0  # neither its view nor its time
    assert one_block_change(model, "fused", (2, 2)) == 0.0
    assert one_block_change(model, "fused", (0, 2)) > 1e-4  # same view (its row)
    assert one_block_change(model, "fused", (2, 0)) > 1e-4  # same time (its column)


def test_sequential_block_attends_across_views_then_times():
    model = make(num_layers=1)
    # (1, 1) reaches (0, 0) in one block: across views to (0, 1), then across times to (0, 0).
    assert one_block_change(model, "sequential", (1, 1)) > 1e-4


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("backend", ["split", "flex"])
def test_fused_kernels_agree_with_the_dense_mask(backend):
    model = make()
    x, sigma, text = inputs(2, 3, seed=2)
    with torch.no_grad():
        dense = model(x, sigma, text, mode="fused", fused_backend="dense")
        other = model(x, sigma, text, mode="fused", fused_backend=backend)
    assert (dense - other).abs().max() < 1e-5


def test_modes_share_one_backbone_and_differ():
    model = make()
    x, sigma, text = inputs(2, 3)
    with torch.no_grad():
        outs = {m: model(x, sigma, text, mode=m) for m in ("soft", "hard", "sequential", "fused")}
    for m, o in outs.items():
        assert o.shape == x.shape and torch.isfinite(o).all(), m
    assert (outs["soft"] - outs["fused"]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="mode must be one of"):
        model(x, sigma, text, mode="diagonal")


def padded_text(lengths, L=8, dim=16, seed=5):
    """Text-encoder states as Wan's pipeline hands them over: zeros after each prompt."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(len(lengths), L, dim, generator=g)
    for b, n in enumerate(lengths):
        text[b, n:] = 0
    return text


def test_padding_rows_find_the_padding_after_the_longest_prompt():
    text = padded_text([2, 3])
    assert padding_rows(text) == (4, 5)  # rows 3..7 are zero in both samples: keep 0..3, count 5
    assert padding_rows(padded_text([8, 3])) == (8, 1)  # one prompt fills the text: no padding
    assert padding_rows(torch.zeros(1, 8, 4)) == (1, 8)  # an empty prompt: one row, counted 8 times


def test_folded_cross_attention_equals_attention_over_all_rows():
    model = make(num_layers=1)
    blk, bb = model.backbone.blocks[0], model.backbone
    V, T = 2, 3
    P = (H // 4) * (W // 4)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(B, V * T * P, model.dim, generator=g)
    tproj = torch.randn(B, 6, model.dim, generator=g) * 0.1
    text = bb.condition_embedder.text_embedder(padded_text([2, 3]))
    from core.model.attention import rope_table

    ropes = {"time": rope_table(bb.rope, torch.arange(T), H // 4, W // 4)}
    lay = Layout("time", B, V, T, P)
    with torch.no_grad():
        plain = run_block(blk, x, tproj, text_kv(blk, text), lay, ropes)
        J, count = padding_rows(text)
        assert (J, count) == (4, 5) and fold_pays(blk.attn2.heads, model.dim, text.shape[1], J)
        folded = run_block(blk, x, tproj, fold_text_kv(blk, text, J, count), lay, ropes)
        # (on CUDA each head's columns are padded to 8 with keys of weight −inf: no probability)
        padded = run_block(blk, x, tproj, fold_text_kv(blk, text, J, count, align=8), lay, ropes)
    assert (folded - plain).abs().max() < 1e-5 and (padded - plain).abs().max() < 1e-5
    assert (plain - x).abs().max() > 1e-2  # the block does change the tokens


def test_samplers_fold_padded_prompts_and_results_do_not_change():
    model = make(num_layers=2)
    V, T = 2, 3
    x, sigma, _ = inputs(V, T)
    text = padded_text([2, 3])
    with torch.no_grad():
        plan = model.prepare(text, (V, T, H, W), mode="soft")
        assert all(len(kv) == 3 for kv in plan.kv)  # folded
        folded = model.step(plan, x, sigma)
        old = blocks.set_text_fold(False)
        try:
            plan_off = model.prepare(text, (V, T, H, W), mode="soft")
            assert all(len(kv) == 2 for kv in plan_off.kv)
            plain = model.step(plan_off, x, sigma)
        finally:
            blocks.set_text_fold(old)
        # a prompt that fills the text (no padding) is never folded
        assert all(len(kv) == 2 for kv in model.prepare(padded_text([8, 8]), (V, T, H, W), mode="soft").kv)
    assert (folded - plain).abs().max() < 1e-5
    # training (with grad) always takes the plain path
    assert all(len(kv) == 2 for kv in model.text_kv(model._embed_text(text), 2, padding_rows(text)))
