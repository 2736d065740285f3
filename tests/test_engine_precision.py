"""The engine's precision: 'auto' picks bf16 on CUDA and on CPUs with native bf16 (read from
cpuinfo's flags), fp32 elsewhere; 'fp32' / 'bf16' force it; the run folder says which ran."""

from __future__ import annotations

import json

import pytest
import torch

import launch
from core import engine as engine_mod
from core.engine import Engine, cpu_has_bf16, resolve_precision
from core.errors import InputError
from core.model.testing import moving_square, tiny_model, write_clip

SIZE = ["--views", "2", "--times", "3", "--size", "16x16", "--steps", "2"]
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


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("precision")
    model = tiny_model(trained=True).save_pretrained(d / "model")
    fixed = write_clip(d / "fixed.mp4", moving_square(12))
    orbit = write_clip(d / "orbit.mp4", moving_square(12, seed=1)[:, :, ::-1].copy())
    return {"model": str(model), "fixed": str(fixed), "orbit": str(orbit)}


@pytest.mark.parametrize("flag, dtype", [("fp32", "float32"), ("bf16", "bfloat16")])
def test_generate_runs_and_records_the_precision(files, tmp_path, flag, dtype):
    out = tmp_path / "run"
    rc = launch.main(["generate", "--fixed-view", files["fixed"], "--freeze-time", files["orbit"],
                      "--model", files["model"], "--device", "cpu", "--precision", flag, "--quiet",
                      "--out", str(out), *SIZE])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["dtype"] == dtype


def test_auto_follows_the_cpu(files, monkeypatch):
    for native, dtype in ((False, torch.float32), (True, torch.bfloat16)):
        monkeypatch.setattr(engine_mod, "cpu_has_bf16", lambda native=native: native)
        eng = Engine(model=files["model"], device="cpu")
        assert eng.info()["precision"] == ("bf16" if native else "fp32")
        assert eng.load().dtype == dtype
        assert eng.info()["dtype"] == str(dtype).replace("torch.", "")


def test_bad_precision_on_the_command_line_exits_2(files, tmp_path, capsys):
    rc = launch.main(["generate", "--prompt", "a ball", "--model", files["model"], "--precision", "fp16",
                      "--out", str(tmp_path / "run")])
    assert rc == 2
    assert "invalid choice: 'fp16'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
