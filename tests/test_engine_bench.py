"""``launch.py bench`` on the CPU at a tiny size: every row measured, a table printed, JSON written."""

from __future__ import annotations

import json

import launch
from core.bench import step_flops


def test_bench_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = launch.main(["bench", "--device", "cpu", "--preset", "tiny", "--views", "2", "--times", "3",
                      "--grid-steps", "2", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    result = json.loads(out.read_text())
    rows = {(r["mode"], r["variant"]): r for r in result["rows"]}
    for mode in ("soft", "hard", "sequential"):
        assert rows[(mode, "eager")]["s_per_step"] > 0
    assert rows[("fused", "eager, split")]["s_per_step"] > 0
    assert rows[("as-is", "diffusers forward, two streams")]["s_per_step"] > 0
    for variant in ("none of the below", "+ streams in one batch", "+ text-K/V and time cached",
                    "+ fused Q/K/V matmuls"):
        assert rows[("soft", f"eager, {variant}")]["s_per_step"] > 0
    assert {g["mode"] for g in result["grids"]} == {"soft", "fused"}
    assert all(g["seconds"] > 0 for g in result["grids"])
    assert "whole grid, soft, 2 steps" in text and "s/step" in text


def test_step_flops_counts_two_streams_for_parallel_modes():
    soft = step_flops("soft", 8, 8, 576, 1536, 8960, 512, 30, 512)
    soft_linear = step_flops("soft", 8, 8, 576, 1536, 8960, 512, 30, 512, parts=True)["linear"]
    fused = step_flops("fused", 8, 8, 576, 1536, 8960, 512, 30, 512)
    # DESIGN.md: the linear work of two 1.3B streams over 36,864 tokens is ~0.24 s at 778 TFLOP/s.
    assert 0.22 < soft_linear / 778e12 < 0.25
    assert soft_linear < soft < 1.5 * soft_linear and fused < soft
