"""``launch.py synth`` run folders, the shipped examples and the bench's CPU path."""

import json
from pathlib import Path

import numpy as np
import pytest

import launch
from core.grid import Grid
from core.world import VOCABULARY, render_scene, sample_scene

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"


def test_synth_writes_a_complete_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    rc = launch.main(["synth", "--seed", "5", "--views", "3", "--times", "2", "--size", "32x48", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    for rel in ("manifest.json", "grid.npz", "depth.npz", "cameras.json", "caption.txt", "scene.json",
                "inputs/fixed_view.mp4", "inputs/freeze_time.mp4", "grid.mp4", "grid.png", "spiral.mp4",
                "views/view_00.mp4", "views/view_02.mp4", "times/time_01.mp4"):
        assert (out / rel).is_file() and (out / rel).stat().st_size > 0, rel
    grid = Grid.load_npz(out / "grid.npz")
    gt = render_scene(sample_scene(5), 3, 2, 32, 48)
    assert np.array_equal(grid.frames, gt.frames)
    assert grid.known[0].all() and grid.known[:, 0].all() and not grid.known[1:, 1:].any()
    caption = (out / "caption.txt").read_text().strip()
    assert caption == gt.caption == grid.caption and set(caption.split()) <= set(VOCABULARY)
    cams = json.loads((out / "cameras.json").read_text())
    assert (cams["height"], cams["width"], len(cams["views"])) == (32, 48, 3)
    assert np.allclose(np.array(cams["views"][1]["viewmat"]), gt.viewmats[1], atol=1e-6)
    assert np.allclose(np.array(cams["views"][1]["K"]), gt.Ks[1], atol=1e-6)
    with np.load(out / "depth.npz") as z:
        assert np.array_equal(z["depth"], gt.depth)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["seed"] == 5 and manifest["split"] == "train"


@pytest.mark.parametrize("args, says", [
    (["--views", "0"], "views must be between"),
    (["--size", "72by128"], "size must look like HxW"),
    (["--seed", "-3"], "seed must be between"),
    (["--size", "8x8"], "height must be between"),
])
def test_synth_refuses_bad_arguments_with_one_line(tmp_path, capsys, args, says):
    out = tmp_path / "run"
    rc = launch.main(["synth", "--out", str(out), "--times", "2"] + args)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("error:") and says in err, err
    assert not out.exists()


def test_synth_refuses_an_existing_folder(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc = launch.main(["synth", "--out", str(out), "--views", "2", "--times", "2", "--size", "32x48"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "already exists" in err
    assert (out / "keep.txt").read_text() == "mine"


def test_shipped_examples_are_small_readable_and_reproducible():
    import imageio.v3 as iio

    from core.world.examples import EXAMPLES as SEEDS
    from core.world.examples import FRAMES, example_inputs

    names = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())
    assert names == sorted(SEEDS) and 3 <= len(names) <= 5
    total = sum(f.stat().st_size for f in EXAMPLES.rglob("*") if f.is_file())
    assert total < 600_000, total
    clips = {}
    for name in names:
        for clip in ("fixed_view", "freeze_time"):
            clips[name, clip] = iio.imread(EXAMPLES / name / f"{clip}.mp4").astype(int)
            assert clips[name, clip].shape == (FRAMES, 72, 128, 3), (name, clip)
        assert np.abs(clips[name, "fixed_view"][0] - clips[name, "freeze_time"][0]).mean() < 3.0  # shared cell
        caption = (EXAMPLES / name / "caption.txt").read_text().strip()
        assert caption == sample_scene(SEEDS[name]).caption
    name = names[0]
    row, column, _ = example_inputs(SEEDS[name])  # the clips hold these renders, up to H.264 loss
    assert np.abs(clips[name, "fixed_view"] - row).mean() < 4.0  # yuv420p + quality 8: ~2-3 levels
    assert np.abs(clips[name, "freeze_time"] - column).mean() < 4.0


def test_bench_runs_on_cpu_and_writes_json(tmp_path):
    from core.world import bench

    row = bench.bench_render(__import__("torch").device("cpu"), 1, 24, 40, views=2, times=2, iters=1)
    assert row["grids_per_s"] > 0 and row["size"] == "24x40"
    assert "render" in bench.table([row])


def test_synth_without_video_writes_no_mp4(tmp_path):
    from core.commands.synth import synth_run

    run = synth_run(tmp_path / "run", seed=1_000_000_001, views=2, times=2, height=32, width=48, videos=False)
    assert (run / "grid.npz").is_file() and (run / "cameras.json").is_file()
    assert not list(run.rglob("*.mp4"))
