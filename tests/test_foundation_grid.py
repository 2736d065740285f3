"""The grid type, run folders (atomic, never clobbered), exports that decode back, and the
`launch.py` contract (--help, exit 2 with one line on bad input)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from core.errors import InputError
from core.export import contact_sheet, export_grid, spiral_cells
from core.grid import Grid, check_grid_shape, known_mask, parse_size
from core.runfolder import base_manifest, new_run_folder, open_run, write_run

ROOT = Path(__file__).resolve().parents[1]


def make_grid(V=3, T=4, H=20, W=30, seed=0) -> Grid:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (V, T, H, W, 3), dtype=np.uint8)
    return Grid(frames, known_mask(V, T, "row0+col0"), fps=6.0, caption="a red ball")


def launch(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_grid_round_trip_through_run_folder_is_bit_identical(tmp_path):
    g = make_grid()
    run = write_run(tmp_path / "run", g, base_manifest("test"), exports=False)
    path, manifest, back = open_run(run)
    assert np.array_equal(back.frames, g.frames) and back.frames.dtype == np.uint8
    assert np.array_equal(back.known, g.known)
    assert back.fps == g.fps and back.caption == g.caption
    assert manifest["status"] == "done" and manifest["grid"]["views"] == 3


def test_run_folder_refuses_existing_output_and_keeps_it(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="already exists"):
        write_run(out, make_grid(), base_manifest("test"), exports=False)
    assert (out / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_run_folder_inside_a_file_is_refused(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(InputError, match="is a file"):
        write_run(f / "run", make_grid(), base_manifest("test"), exports=False)


def test_crash_while_writing_leaves_no_folder(tmp_path):
    with pytest.raises(RuntimeError):
        with new_run_folder(tmp_path / "run") as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_every_export_decodes_with_the_right_frames_and_size(tmp_path):
    g = make_grid(V=3, T=5, H=21, W=31)  # odd sizes: exports are padded to even
    written = export_grid(g, tmp_path)
    def check(rel, n, h, w):
        frames = iio.imread(tmp_path / rel)
        assert frames.shape[0] == n, rel
        assert frames.shape[1:] == (h, w, 3), rel
        meta = iio.immeta(tmp_path / rel)
        assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p"), rel
    # grid.mp4: the 3 views tiled in one frame, padded to even sides
    grid_frames = iio.imread(tmp_path / "grid.mp4")
    assert grid_frames.shape[0] == g.T and grid_frames.shape[1] % 2 == 0 and grid_frames.shape[2] % 2 == 0
    for v in range(g.V):
        check(f"views/view_{v:02d}.mp4", g.T, 22, 32)
    for t in range(g.T):
        check(f"times/time_{t:02d}.mp4", g.V, 22, 32)
    check("spiral.mp4", len(spiral_cells(g.V, g.T)), 22, 32)
    sheet = iio.imread(tmp_path / "grid.png")
    assert sheet.shape == (3 * 21 + 2 * 2, 5 * 31 + 4 * 2, 3)
    assert np.array_equal(sheet[:21, :31], g.frames[0, 0])  # contact sheet is lossless
    assert sum(len(v) for v in written.values()) == 1 + 3 + 5 + 1 + 1


def test_row_video_plays_the_row_and_column_video_plays_the_column(tmp_path):
    # Flat colours per cell survive H.264: view videos vary with t, time videos vary with v.
    V, T = 3, 4
    frames = np.zeros((V, T, 16, 16, 3), np.uint8)
    for v in range(V):
        for t in range(T):
            frames[v, t] = (40 + 60 * v, 40 + 50 * t, 128)
    export_grid(Grid(frames), tmp_path)
    row = iio.imread(tmp_path / "views" / "view_02.mp4").astype(float)
    col = iio.imread(tmp_path / "times" / "time_01.mp4").astype(float)
    assert np.allclose(row[:, 8, 8, 0], 160, atol=6) and np.allclose(row[:, 8, 8, 1], [40, 90, 140, 190], atol=6)
    assert np.allclose(col[:, 8, 8, 0], [40, 100, 160], atol=6) and np.allclose(col[:, 8, 8, 1], 90, atol=6)


def test_spiral_walks_time_forward_and_sweeps_views():
    cells = spiral_cells(8, 8)
    ts = [t for _, t in cells]
    vs = [v for v, _ in cells]
    assert ts[0] == 0 and ts[-1] == 7 and ts == sorted(ts)
    assert vs[0] == 0 and max(vs) == 7 and vs[-1] == 0


def test_contact_sheet_highlight_marks_one_cell():
    g = make_grid(V=2, T=2, H=24, W=24)
    plain, marked = contact_sheet(g), contact_sheet(g, highlight=(1, 0))
    diff = np.nonzero(np.any(plain != marked, -1))
    assert diff[0].min() >= 24 + 2 and diff[1].max() < 24  # only inside cell (1, 0)


@pytest.mark.parametrize("views,times,h,w,multiple,pattern", [
    (0, 8, 72, 128, 1, "views must be between"),
    (1000, 8, 72, 128, 1, "views must be between"),
    (8, 0, 72, 128, 1, "times must be between"),
    (8, 8, 70, 128, 8, "multiple of 8"),
    (8, 8, 8, 128, 1, "between 16"),
])
def test_absurd_grid_shapes_are_refused(views, times, h, w, multiple, pattern):
    with pytest.raises(InputError, match=pattern):
        check_grid_shape(views, times, h, w, multiple)


def test_grid_rejects_wrong_dtype_and_shape():
    with pytest.raises(InputError, match="uint8"):
        Grid(np.zeros((2, 2, 8, 8, 3), np.float32))
    with pytest.raises(InputError, match=r"\[V, T, H, W, 3\]"):
        Grid(np.zeros((2, 8, 8, 3), np.uint8))


def test_parse_size():
    assert parse_size("72x128") == (72, 128)
    with pytest.raises(InputError, match="HxW"):
        parse_size("72by128")


def test_corrupt_grid_file_is_a_clear_error(tmp_path):
    p = tmp_path / "grid.npz"
    p.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable grid"):
        Grid.load_npz(p)


# --- the command line -----------------------------------------------------------------------

def test_help_lists_subcommands():
    r = launch("--help")
    assert r.returncode == 0
    for cmd in ("app", "export"):
        assert cmd in r.stdout


def test_export_command_writes_all_exports(tmp_path):
    run = write_run(tmp_path / "run", make_grid(), base_manifest("test"), exports=False)
    r = launch("export", run)
    assert r.returncode == 0, r.stderr
    for rel in ("grid.mp4", "spiral.mp4", "grid.png", "views/view_02.mp4", "times/time_03.mp4"):
        assert (run / rel).is_file(), rel
    assert "export_s" in json.loads((run / "manifest.json").read_text())["timings"]
    # Exporting again replaces the exports in place and leaves no temporary folders behind.
    assert launch("export", run).returncode == 0
    assert not [p for p in os.listdir(run) if p.startswith(".")]


@pytest.mark.parametrize("make,pattern", [
    (lambda d: d / "missing", "does not exist"),
    (lambda d: (d / "f.txt").write_text("x") and d / "f.txt", "is a file"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "not a run folder"),
])
def test_export_bad_input_exits_2_with_one_line(tmp_path, make, pattern):
    r = launch("export", make(tmp_path))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and __import__("re").search(pattern, lines[0])


def test_unknown_command_exits_2():
    assert launch("frobnicate").returncode == 2
