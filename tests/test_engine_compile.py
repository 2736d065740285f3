"""``generate --compile`` / ``Engine(compile=True)`` on the CPU with a tiny random model: where
torch.compile cannot build (no C++ compiler) the engine warns once and makes the same grid
uncompiled; where it can, the compiled grid matches the eager one."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import launch
from core.engine import Engine, GenerateRequest
from core.grid import Grid


def _request(engine_files) -> GenerateRequest:
    return GenerateRequest(fixed_view=engine_files["fixed"], freeze_time=engine_files["orbit"], views=2, times=3,
                           height=16, width=16, steps=2)


def _eager_grid(engine_files, tmp_path) -> np.ndarray:
    Engine(engine_files["model"], "cpu", precision="fp32").generate(_request(engine_files), tmp_path / "eager")
    return Grid.load_npz(tmp_path / "eager" / "grid.npz").frames


def test_a_failing_compile_falls_back_to_the_same_grid_with_a_warning(engine_files, tmp_path, monkeypatch):
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/c++",))
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    engine = Engine(engine_files["model"], "cpu", compile=True, precision="fp32")
    steps = []
    with pytest.warns(UserWarning, match="compiling the model failed on this machine .*running it uncompiled"):
        engine.generate(_request(engine_files), tmp_path / "run", on_progress=lambda s, n, p: steps.append(s))
    torch._dynamo.reset()
    assert not engine.compile and "compiler" in engine.compile_error.lower()
    assert steps == [1, 2]  # progress reported once per step, not again for the retry
    assert np.array_equal(Grid.load_npz(tmp_path / "run" / "grid.npz").frames, _eager_grid(engine_files, tmp_path))
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["compiled"] is False
    # the engine stays uncompiled: the next grid neither retries the compile nor warns
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.generate(_request(engine_files), tmp_path / "run2")
    assert not [w for w in caught if "compil" in str(w.message)]


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="no C++ compiler for inductor's CPU code")
def test_compiled_grid_from_the_command_line_matches_eager(engine_files, tmp_path, recwarn):
    torch._dynamo.reset()
    out = tmp_path / "run"
    rc = launch.main(["generate", "--fixed-view", engine_files["fixed"], "--freeze-time", engine_files["orbit"],
                      "--model", engine_files["model"], "--out", str(out), "--views", "2", "--times", "3",
                      "--size", "16x16", "--steps", "2", "--device", "cpu", "--precision", "fp32", "--compile",
                      "--quiet"])
    torch._dynamo.reset()
    assert rc == 0
    assert not [w for w in recwarn if "compiling the model failed" in str(w.message)]  # it did compile
    assert json.loads((out / "manifest.json").read_text())["compiled"] is True
    compiled = Grid.load_npz(out / "grid.npz").frames.astype(int)
    eager = _eager_grid(engine_files, tmp_path).astype(int)
    # fused kernels round differently: a level or two of 255 at most, almost everywhere none
    assert np.abs(compiled - eager).max() <= 2 and np.abs(compiled - eager).mean() < 0.1
