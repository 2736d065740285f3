"""``launch.py generate`` and ``Engine.generate`` with a tiny random model saved to a folder: all
three input kinds write a whole run folder, known cells come back exactly, bad input exits 2
with one line, cancel leaves nothing behind."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import launch
from core import engine as engine_mod
from core.engine import Engine, GenerateRequest
from core.errors import Cancelled, InputError
from core.grid import Grid
from core.model.testing import tiny_model

SIZE = ["--views", "2", "--times", "3", "--size", "16x16", "--steps", "2"]


def assert_run_folder(run, V, T, known_kind):
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["command"] == "generate"
    assert manifest["model"]["hash"] and manifest["seed"] == 0
    assert manifest["timings"]["steps"] >= 2
    grid = Grid.load_npz(run / "grid.npz")
    assert grid.frames.shape == (V, T, 16, 16, 3)
    from core.grid import known_mask

    assert (grid.known == known_mask(V, T, known_kind)).all()
    for rel in ("grid.mp4", "grid.png", "views/view_00.mp4", f"views/view_{V - 1:02d}.mp4",
                "times/time_00.mp4", f"times/time_{T - 1:02d}.mp4"):
        assert (run / rel).is_file(), rel
    return manifest, grid


def test_generate_from_two_videos_writes_a_run_folder(engine_files, tmp_path, capsys):
    out = tmp_path / "run"
    rc = launch.main(["generate", "--fixed-view", engine_files["fixed"], "--freeze-time", engine_files["orbit"],
                      "--prompt", "a red ball", "--model", engine_files["model"], "--out", str(out), *SIZE])
    assert rc == 0
    assert capsys.readouterr().out.strip() == str(out)
    manifest, grid = assert_run_folder(out, 2, 3, "row0+col0")
    assert (out / "inputs" / "fixed_view.mp4").is_file() and (out / "inputs" / "freeze_time.mp4").is_file()
    assert manifest["input_kind"] == "videos" and "shared_cell_psnr" in manifest
    # Known cells are the inputs as used (resampled), exactly.
    from core.video import load_inputs

    inp = load_inputs(engine_files["fixed"], engine_files["orbit"], 2, 3, 16, 16)
    assert np.array_equal(grid.frames[0], inp["row0"])
    assert np.array_equal(grid.frames[1:, 0], inp["col0"][1:])


def test_a_grid_smaller_than_the_models_is_sampled_as_every_kth_cell_of_a_denser_one(engine_files, tmp_path):
    """The tiny model makes 3 times at once: a grid of 2 times is sampled as the first and last
    time of 3 (``grid.dense_factor``), its known cells exactly the inputs read for 2 times and the
    previews its own size; ``--no-dense`` samples 2 times."""
    from core.grid import dense_factor
    from core.video import load_inputs

    assert [dense_factor(n, 8) for n in (1, 2, 3, 4, 5, 7, 8, 9)] == [1, 7, 3, 2, 1, 1, 1, 1]
    inp = load_inputs(engine_files["fixed"], engine_files["orbit"], 2, 2, 16, 16)
    inp3 = load_inputs(engine_files["fixed"], engine_files["orbit"], 2, 2, 16, 16, every=(1, 2))
    assert inp3["row0"].shape[0] == 3 and np.array_equal(inp3["row0"][::2], inp["row0"])
    assert np.array_equal(inp3["col0"], inp["col0"]) and inp3["fps"] == inp["fps"]
    grids = {}
    for dense, sampled in ((True, [2, 3]), (False, [2, 2])):
        out = tmp_path / f"run_{dense}"
        previews = []
        req = GenerateRequest(fixed_view=engine_files["fixed"], freeze_time=engine_files["orbit"], views=2, times=2,
                              height=16, width=16, steps=2, dense=dense)
        Engine(engine_files["model"], "cpu").generate(req, out, on_progress=lambda s, t, p: previews.append(p))
        manifest, grid = assert_run_folder(out, 2, 2, "row0+col0")
        assert manifest["sampled_grid"] == sampled and manifest["asked"]["dense"] is dense
        assert np.array_equal(grid.frames[0], inp["row0"]) and np.array_equal(grid.frames[1:, 0], inp["col0"][1:])
        shown = [p for p in previews if p is not None]
        assert shown and all(p.shape == (2, 2, 16, 16, 3) for p in shown)
        grids[dense] = grid.frames
    assert not np.array_equal(grids[True][1, 1], grids[False][1, 1])  # (1, 1) came from another grid


def test_generate_from_one_image_writes_a_run_folder(engine_files, tmp_path):
    out = tmp_path / "run"
    rc = launch.main(["generate", "--image", engine_files["image"], "--model", engine_files["model"], "--out", str(out),
                      "--mode", "fused", "--quiet", *SIZE])
    assert rc == 0
    manifest, grid = assert_run_folder(out, 2, 3, "cell0")
    assert (out / "inputs" / "image.png").is_file() and manifest["asked"]["mode"] == "fused"


def test_generate_from_a_prompt_writes_a_run_folder_and_extends_in_chunks(engine_files, tmp_path):
    out = tmp_path / "run"
    rc = launch.main(["generate", "--prompt", "a blue cube spins", "--model", engine_files["model"], "--out", str(out),
                      "--guidance", "2", "--quiet", "--views", "2", "--times", "5", "--size", "16x16", "--steps", "2"])
    assert rc == 0
    manifest, grid = assert_run_folder(out, 2, 5, "none")
    assert manifest["timings"]["steps"] == 4  # two chunks of 3 times (one shared column) x 2 steps
    assert (out / "inputs" / "prompt.txt").read_text().strip() == "a blue cube spins"


@pytest.mark.parametrize("args,expect", [
    (["--fixed-view", "FIXED"], "give both --fixed-view"),
    (["--image", "IMAGE", "--fixed-view", "FIXED", "--freeze-time", "ORBIT"], "either two videos or one image"),
    (["--prompt", "  "], "nothing to generate from"),
    (["--image", "missing.png"], "does not exist"),
    (["--prompt", "x", "--size", "18x16"], "multiple of 4"),
    (["--prompt", "x", "--views", "9"], "at most 4 views"),
    (["--prompt", "x", "--views", "0"], "views must be between"),
    (["--prompt", "x", "--steps", "0"], "steps must be"),
    (["--prompt", "x", "--mode", "diagonal"], "invalid choice"),
    (["--prompt", "x", "--model", "MISSING_MODEL"], "does not exist"),
])
def test_bad_inputs_exit_2_with_one_line(engine_files, tmp_path, capsys, args, expect):
    args = [a.replace("FIXED", engine_files["fixed"]).replace("ORBIT", engine_files["orbit"])
             .replace("IMAGE", engine_files["image"]).replace("MISSING_MODEL", str(tmp_path / "nomodel")) for a in args]
    base = ["generate", "--out", str(tmp_path / "run"), "--quiet", "--times", "3"]
    if "--model" not in args:
        base += ["--model", engine_files["model"]]
    if "--size" not in args:
        base += ["--size", "16x16"]
    rc = launch.main(base + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert expect in err[-1]
    if "invalid choice" not in expect:  # argparse prints its usage first
        assert len(err) == 1 and err[0].startswith("error: ")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad", ["missing", "text"])
def test_a_bad_video_with_the_progress_bar_on_prints_only_the_error(engine_files, tmp_path, capfd, bad):
    """The bar starts with the first step and FFmpeg's own log is off, so stderr holds one line
    (read at the file descriptor: FFmpeg writes there directly)."""
    path = tmp_path / "clip.mp4"
    if bad == "text":
        path.write_text("hello, not a video\n" * 20)
    rc = launch.main(["generate", "--fixed-view", str(path), "--freeze-time", engine_files["orbit"], "--model",
                      engine_files["model"], "--out", str(tmp_path / "run"), "--size", "16x16", "--times", "3"])
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert str(path) in err[0]  # the path as given, not only its name
    assert ("does not exist" if bad == "missing" else "could not be opened") in err[0]
    assert not (tmp_path / "run").exists()


def test_existing_output_folder_is_refused_before_loading(engine_files, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    rc = launch.main(["generate", "--prompt", "x", "--model", engine_files["model"], "--out", str(tmp_path / "run"),
                      *SIZE])
    assert rc == 2 and "already exists" in capsys.readouterr().err


def test_missing_default_model_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(engine_mod, "DEFAULT_MODEL_DIR", tmp_path / "assets" / "model")
    rc = launch.main(["generate", "--prompt", "x", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "default model is missing" in err and len(err.splitlines()) == 1


def test_engine_progress_cancel_and_info(engine_files, tmp_path):
    eng = Engine(engine_files["model"], device="cpu")
    info = eng.info()
    assert info["size_multiple"] == 4 and info["chunk_times"] == 3 and info["loaded"] is False
    req = GenerateRequest(prompt="a ball", views=2, times=3, height=16, width=16, steps=3)
    seen = []
    with pytest.raises(Cancelled):
        eng.generate(req, tmp_path / "run", on_progress=lambda s, t, p: seen.append((s, t, p.shape, p.dtype)),
                     should_cancel=lambda: len(seen) >= 1)
    assert seen == [(1, 3, (2, 3, 16, 16, 3), np.uint8)]
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run*"))
    a = eng.generate(req, tmp_path / "a")
    b = eng.generate(req, tmp_path / "b")
    assert np.array_equal(Grid.load_npz(a / "grid.npz").frames, Grid.load_npz(b / "grid.npz").frames)
    info = eng.info()
    assert info["loaded"] and info["parameters"]["transformer"] > 0 and info["hash"]
    with pytest.raises(InputError, match="multiple of 4"):
        eng.check(GenerateRequest(prompt="x", views=2, times=3, height=17, width=16))


# -- precision (core.engine.resolve_precision; its rules in test_engine_precision.py) ----------------
@pytest.mark.parametrize("flag, dtype", [("fp32", "float32"), ("bf16", "bfloat16")])
def test_generate_runs_and_records_the_precision(engine_files, tmp_path, flag, dtype):
    out = tmp_path / "run"
    rc = launch.main(["generate", "--fixed-view", engine_files["fixed"], "--freeze-time", engine_files["orbit"],
                      "--model", engine_files["model"], "--device", "cpu", "--precision", flag, "--quiet",
                      "--out", str(out), *SIZE])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["dtype"] == dtype


def test_auto_follows_the_cpu(engine_files, monkeypatch):
    for native, dtype in ((False, torch.float32), (True, torch.bfloat16)):
        monkeypatch.setattr(engine_mod, "cpu_has_bf16", lambda native=native: native)
        eng = Engine(model=engine_files["model"], device="cpu")
        assert eng.info()["precision"] == ("bf16" if native else "fp32")
        assert eng.load().dtype == dtype
        assert eng.info()["dtype"] == str(dtype).replace("torch.", "")


def test_bad_precision_on_the_command_line_exits_2(engine_files, tmp_path, capsys):
    rc = launch.main(["generate", "--prompt", "a ball", "--model", engine_files["model"], "--precision", "fp16",
                      "--out", str(tmp_path / "run")])
    assert rc == 2
    assert "invalid choice: 'fp16'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# -- the noise schedule's shift (core.sampler.SampleSettings.shift) --------------------------------
def _grid_with_shift(engine_files, tmp_path, name, *shift):
    out = tmp_path / name
    rc = launch.main(["generate", "--fixed-view", engine_files["fixed"], "--freeze-time", engine_files["orbit"],
                      "--model", engine_files["model"], "--device", "cpu", "--precision", "fp32", "--quiet",
                      "--out", str(out), *SIZE, *shift])
    assert rc == 0
    return json.loads((out / "manifest.json").read_text()), Grid.load_npz(out / "grid.npz")


def test_shift_defaults_to_the_models_is_recorded_and_changes_the_grid(engine_files, tmp_path):
    from core.model.config import FourDConfig

    own = FourDConfig.load(f"{engine_files['model']}/fourd.json").shift
    m0, g0 = _grid_with_shift(engine_files, tmp_path, "own")
    m1, g1 = _grid_with_shift(engine_files, tmp_path, "same", "--shift", f"{own}")
    m2, g2 = _grid_with_shift(engine_files, tmp_path, "other", "--shift", f"{own + 8}")
    assert m0["asked"]["shift"] == m1["asked"]["shift"] == own and m2["asked"]["shift"] == own + 8
    assert np.array_equal(g0.frames, g1.frames)  # the model's own shift when none is given
    assert not np.array_equal(g0.frames, g2.frames)  # another schedule, another grid
    assert np.array_equal(g0.frames[g0.known], g2.frames[g2.known])  # the inputs stay as given
    assert Engine(model=engine_files["model"], device="cpu").info()["defaults"]["shift"] == own


@pytest.mark.parametrize("bad", ["0", "-1", "101", "nan"])
def test_bad_shift_exits_2_before_loading(engine_files, tmp_path, capsys, bad):
    rc = launch.main(["generate", "--prompt", "a ball", "--model", engine_files["model"], "--shift", bad,
                      "--out", str(tmp_path / "run")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "shift must be above 0 and at most 100" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "run").exists()


def test_scheduler_takes_the_shift_or_the_models():
    from core.sampler import make_scheduler

    model = tiny_model()
    model.config.shift = 2.0
    own, nine = make_scheduler(model), make_scheduler(model, 9.0)
    own.set_timesteps(4)
    nine.set_timesteps(4)
    assert float(own.sigmas[0]) == float(nine.sigmas[0]) == 1.0  # both from pure noise...
    assert float(own.sigmas[-1]) == float(nine.sigmas[-1]) == 0.0  # ...to the clean grid
    assert (nine.sigmas[1:-1] > own.sigmas[1:-1]).all()  # a larger shift stays at high noise longer
