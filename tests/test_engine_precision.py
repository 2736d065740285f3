"""The engine's precision: 'auto' picks bf16 on CUDA and on CPUs with native bf16 (read from
cpuinfo's flags), fp32 elsewhere; 'fp32' / 'bf16' force it (generating with each, and the run
folder saying which ran: ``test_engine_generate.py``)."""

from __future__ import annotations

import pytest

from core import engine as engine_mod
from core.engine import Engine, cpu_has_bf16, resolve_precision
from core.errors import InputError

INTEL_AMX = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n"


def test_cpu_bf16_is_read_from_cpuinfo_flags(tmp_path):
    for text, expect in ((INTEL_AMX, True), (AVX2_ONLY, False),
                         ("flags\t: avx512f avx512_bf16\n", True), ("flags\t: amx_bf16\n", True),
                         ("model name\t: something\n", False)):
        f = tmp_path / "cpuinfo"
        f.write_text(text)
        assert cpu_has_bf16(f) is expect, text
    assert cpu_has_bf16(tmp_path / "missing") is False  # not Linux: the safe fp32


def test_resolve_precision(monkeypatch):
    monkeypatch.setattr(engine_mod, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(engine_mod, "cpu_has_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("fp32", "cuda") == "fp32"
    with pytest.raises(InputError, match="precision must be auto, fp32, bf16"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(InputError, match="got 'half'"):
        Engine(precision="half")
