"""The engine's speed options give the same velocity as the plain path (exact up to rounding), the
kernel switches reach compiled code, and ``launch.py bench`` times every option row in one call
that survives failing rows and respects its time budget. (CUDA-only kernels: tests/gpu.)"""

from __future__ import annotations

import copy
import json

import pytest
import torch

import launch
from core.model import attention as A
from core.model import blocks
from core.model.testing import grid_inputs, tiny_transformer
from core.model.testing import rel_err as rel
from core.model.transformer import FourDTransformer

B, C, H, W = 2, 3, 16, 16


def make(num_layers: int = 3) -> FourDTransformer:
    return tiny_transformer(num_layers)  # sync layers away from their identity start, as after training


def inputs(V=2, T=3):
    return grid_inputs(B, V, T, C, H, W, text_len=5, sigma=None, seed=3)


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_shared_qkv_of_equal_streams_gives_the_same_velocity(mode):
    model = make()
    x, sigma, text, cond, known = inputs()
    with torch.no_grad():
        ref = model(x, sigma, text, cond, known, mode=mode)
        model.share_equal_streams = True
        shared = model(x, sigma, text, cond, known, mode=mode)
    assert rel(shared, ref) < 1e-5


def test_shared_qkv_is_not_applied_where_the_streams_differ():
    # With sync off the streams differ after layer 0, so sharing there would change the result:
    # the model must only share layer 0 (a check that the promise is kept, not assumed).
    model = make()
    x, sigma, text, cond, known = inputs()
    with torch.no_grad():
        ref = model(x, sigma, text, cond, known, mode="hard", sync=False, return_streams=True)
        model.share_equal_streams = True
        shared = model(x, sigma, text, cond, known, mode="hard", sync=False, return_streams=True)
    for a, b in zip(shared, ref):
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize("mode,backend", [("soft", "auto"), ("hard", "auto"), ("fused", "dense")])
def test_whole_step_compile_equals_eager(mode, backend):
    # aot_eager: dynamo + AOTAutograd trace the whole block stack as one graph (what inductor
    # compiles on the GPU) without needing a C++ compiler run per kernel.
    torch._dynamo.reset()
    model = make(num_layers=2)
    model.share_equal_streams = mode == "hard"
    x, sigma, text, cond, known = inputs()
    with torch.no_grad():
        plan = model.prepare(text, (2, 3, H, W), cond=cond, known=known, mode=mode, fused_backend=backend)
        eager = model.step(plan, x, sigma)
        model.compile_step(backend="aot_eager")
        try:
            compiled = model.step(plan, x, sigma)
        finally:
            model.uncompile_blocks()
            torch._dynamo.reset()
    assert rel(compiled, eager) < 1e-5


def test_kernel_switches_are_checked_and_recompile_compiled_code():
    with pytest.raises(ValueError, match="sdpa backend"):
        A.set_sdpa_backend("fastest")
    frames = []

    def counting(gm, example_inputs):
        frames.append(gm)
        return gm.forward

    torch._dynamo.reset()
    fn = torch.compile(lambda q: A.sdpa(q, q, q), backend=counting)
    q = torch.randn(1, 8, 2, 4)
    try:
        fn(q)
        with A.sdpa_backend("cudnn"):  # the CPU ignores it, but compiled code must see the change
            assert A.get_sdpa_backend() == "cudnn"
            fn(q)
        assert A.get_sdpa_backend() == "auto"
    finally:
        torch._dynamo.reset()
    assert len(frames) == 2


def test_ffn_epilogue_is_ignored_off_cuda_in_fp32():
    # The CPU kernel of _addmm_activation applies the erf GELU, not Wan's tanh GELU; the switch
    # must leave the CPU's fp32 path on the module's own FeedForward.
    model = make(num_layers=1)
    ffn = model.backbone.blocks[0].ffn
    h = torch.randn(2, 7, ffn.net[0].proj.in_features)
    up = ffn.net[0].proj
    erf_fused = blocks.linear_gelu_tanh(h.reshape(-1, h.shape[-1]), up.weight, up.bias)
    tanh_ref = torch.nn.functional.gelu(up(h), approximate="tanh").reshape(erf_fused.shape)
    assert (erf_fused - tanh_ref).abs().max() > 1e-6  # so a CPU fallback would be visible
    old = blocks.set_ffn_epilogue(True)
    try:
        with torch.no_grad():
            assert torch.equal(blocks._ffn(ffn, h), ffn(h))
    finally:
        blocks.set_ffn_epilogue(old)


def _bf16_ffn():
    model = make(num_layers=1)
    ffn = model.backbone.blocks[0].ffn.to(torch.bfloat16)
    g = torch.Generator().manual_seed(3)
    h = torch.randn(2, 33, ffn.net[0].proj.in_features, generator=g).to(torch.bfloat16)
    return ffn, h


def test_ffn_epilogue_on_the_cpu_fuses_the_tanh_gelu_into_onednn_for_bf16_inference(monkeypatch):
    ffn, h = _bf16_ffn()
    calls = []
    real = blocks._cpu_linear_gelu_tanh
    monkeypatch.setattr(blocks, "_cpu_linear_gelu_tanh", lambda *a: calls.append(a[0].shape) or real(*a))
    old = blocks.set_ffn_epilogue(True)
    try:
        with torch.no_grad():
            fused, plain = blocks._ffn(ffn, h), ffn(h)
            assert calls == [(66, h.shape[-1])] and blocks._CPU_EPILOGUE["ok"] is True
            ref = copy.deepcopy(ffn).float()(h.float())
        assert torch.equal(blocks._ffn(ffn, h), ffn(h))  # with grad: the module's own path
        blocks.set_ffn_epilogue(False)
        with torch.no_grad():
            assert torch.equal(blocks._ffn(ffn, h), plain)
        assert len(calls) == 1
    finally:
        blocks.set_ffn_epilogue(old)
    assert fused.shape == plain.shape and fused.dtype == torch.bfloat16
    err, err_plain = (fused.float() - ref).abs().mean(), (plain.float() - ref).abs().mean()
    assert err < 1.5 * err_plain  # one rounding fewer: no less accurate than the module
    assert (fused.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_ffn_epilogue_on_the_cpu_falls_back_once_where_onednn_lacks_it(monkeypatch):
    import types

    ffn, h = _bf16_ffn()

    def missing(*a):
        raise RuntimeError("no such kernel")

    monkeypatch.setattr(torch.ops, "mkldnn", types.SimpleNamespace(_linear_pointwise=missing))
    monkeypatch.setitem(blocks._CPU_EPILOGUE, "ok", None)
    with torch.no_grad():
        assert torch.equal(blocks._ffn(ffn, h), ffn(h))
        assert blocks._CPU_EPILOGUE["ok"] is False
        assert blocks._epilogue(ffn.net[0], h) is None  # not tried again


def test_bench_option_rows_compare_to_the_baseline(tmp_path, capsys):
    out = tmp_path / "bench.json"
    # T=4 > the tiny preset's 3 times per fused pass: every fused row fails, the bench goes on.
    rc = launch.main(["bench", "--device", "cpu", "--preset", "tiny", "--views", "2", "--times", "4",
                      "--modes", "soft", "hard", "fused", "--options", "quick", "--no-ablations",
                      "--grid-steps", "1", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    result = json.loads(out.read_text())
    rows = {(r["mode"], r["variant"]): r for r in result["rows"]}
    assert rows[("soft", "eager")]["extra"]["vs_base"] == 1.0
    for key in [("soft", "eager, sdpa=cudnn"), ("soft", "eager, ffn-epilogue"), ("hard", "eager, shared-qkv")]:
        assert rows[key]["s_per_step"] > 0 and rows[key]["extra"]["vs_base"] > 0
    assert rows[("fused", "eager, split")]["note"].startswith("failed: ValueError")
    # Compiled-only rows (whole-step, CUDA graphs) do not run on the cpu without --compile.
    assert not any("cuda-graph" in v or "whole-step" in v for _, v in rows)
    assert result["grids"][0]["mode"] == "soft" and result["grids"][0]["seconds"] > 0
    assert "×base" in text and "FAILED ValueError" in text


def test_bench_respects_its_budget(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = launch.main(["bench", "--device", "cpu", "--preset", "tiny", "--views", "2", "--times", "2",
                      "--budget-s", "0.001", "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["rows"] and all(r["note"] == "skipped: time budget" for r in result["rows"])
    assert all(r["s_per_step"] is None for r in result["rows"])
    assert "s/step" in capsys.readouterr().out


def test_profile_sorts_kernels_by_kind():
    from core.bench import kernel_kind

    assert kernel_kind("nvjet_tst_256x128_64x4_1x2_h_bz_coopA_TNT") == "matmul"
    assert kernel_kind("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3") == "attention"
    assert kernel_kind("triton_tem_fused_flex_attention_0") == "attention"
    assert kernel_kind("triton_tem_fused_addmm_gelu_2") == "matmul"
    # an inductor kernel named after the attention op it feeds is still elementwise work
    assert kernel_kind("triton_poi_fused__scaled_dot_product_cudnn_attention_transpose_5") == "elementwise (triton)"
    assert kernel_kind("Memcpy DtoD (Device -> Device)") == "copy"


def test_bench_quick_has_reference_baseline_and_defaults_rows(tmp_path, capsys):
    out = tmp_path / "quick.json"
    rc = launch.main(["bench", "--device", "cpu", "--preset", "tiny", "--views", "2", "--times", "3",
                      "--quick", "--grid-steps", "1", "--prompt-tokens", "3", "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["setup"]["text"] == "3 prompt tokens of 8"
    rows = {(r["mode"], r["variant"]): r for r in result["rows"]}
    # (on the cpu without --compile every row is eager; of the defaults only the folded
    # cross-attention of the padded prompt acts there, exact up to float32 rounding)
    for mode, ref in [("soft", "eager"), ("hard", "eager"), ("fused", "eager, split")]:
        d = rows[(mode, ref + ", text-fold [defaults]")]
        assert d["s_per_step"] > 0 and 0.0 < d["extra"]["rel_err_vs_base"] < 1e-5
        assert rows[(mode, ref)]["extra"]["vs_base"] == 1.0
    assert rows[("soft", "eager, text-fold, 8-token prompt")]["s_per_step"] > 0
    assert [g["mode"] for g in result["grids"]] == ["soft", "fused"]
    assert all("[defaults]" in g["kernels"] and g["seconds"] > 0 for g in result["grids"])
    assert not result["partial"] and "[defaults]" in capsys.readouterr().out
    # the bench leaves the process-wide switches as found
    assert blocks.engine_switches() == {"sdpa": "auto", "ffn_epilogue": True, "text_fold": True,
                                        "qk_kernel": True, "norm_kernel": True, "cpu_half_norms": True,
                                        "cpu_attention": True}


def test_engine_switches_round_trip_and_refuse_unknown_names():
    with pytest.raises(ValueError, match="unknown engine switch"):
        blocks.set_engine_switches({"fastest": True})
    old = blocks.set_engine_switches({"sdpa": "efficient", "ffn_epilogue": False, "text_fold": False,
                                      "qk_kernel": False, "norm_kernel": False, "cpu_half_norms": False, "cpu_attention": False})
    try:
        assert blocks.engine_switches() == {"sdpa": "efficient", "ffn_epilogue": False, "text_fold": False,
                                            "qk_kernel": False, "norm_kernel": False, "cpu_half_norms": False, "cpu_attention": False}
    finally:
        back = blocks.set_engine_switches(old)
    assert back == {"sdpa": "efficient", "ffn_epilogue": False, "text_fold": False, "qk_kernel": False,
                    "norm_kernel": False, "cpu_half_norms": False, "cpu_attention": False}
    assert blocks.engine_switches() == old


def test_plain_inference_means_no_grad_and_no_autocast():
    t = torch.zeros(2)
    assert not A.plain_inference(t)
    with torch.no_grad():
        assert A.plain_inference(t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not A.plain_inference(t)
