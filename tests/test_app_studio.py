"""The studio's handlers called directly (no browser): explore cache and scrub widget, exports,
upload checks with the Foundation issue's bad inputs, settings checks, sessions, jobs and cancel,
and the page building. Grids are drawn procedurally (moving shapes seen from moving cameras) so a
slider move really changes the frame."""

from __future__ import annotations

import json
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core.errors import Cancelled, InputError
from core.export import write_mp4
from core.grid import Grid, known_mask
from core.runfolder import base_manifest, write_run


# -- procedural 4D scenes (shared with the browser and viewer tests) ------------------------------
def procedural_grid(V: int, T: int, H: int, W: int, seed: int = 0) -> np.ndarray:
    """uint8 [V, T, H, W, 3]: sky, a checkered floor, a ball crossing and a box sliding back; the
    camera slides sideways along the view axis, so near things shift more (parallax)."""
    rng = np.random.default_rng(seed)
    hue = rng.uniform(0.8, 1.2, 3)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    y, x = y / H, x / W
    aspect = W / H
    frames = np.empty((V, T, H, W, 3), np.uint8)
    horizon = 0.42
    for v in range(V):
        cam = v / max(V - 1, 1) - 0.5  # -0.5 .. 0.5
        for t in range(T):
            tau = t / max(T - 1, 1)
            sky = np.stack([40 + 120 * y, 90 + 110 * y, 170 + 60 * y], -1) * hue
            depth = 1.0 / np.maximum(y - horizon + 0.02, 0.02)
            u = (x - 0.5) * depth * 0.5 - cam * 1.2
            w = depth * 0.5
            checker = ((np.floor(u * 2) + np.floor(w * 2)) % 2)[..., None]
            ground = np.where(checker > 0, [200, 200, 190], [70, 80, 90]) * np.clip(1.2 - 0.1 * depth, 0.4, 1)[..., None]
            img = np.where((y > horizon)[..., None], ground, sky)
            # a ball crossing left to right, bouncing; near, so it shifts most between views
            bx, by = 0.12 + 0.76 * tau - 0.35 * cam, 0.70 - 0.22 * abs(np.sin(np.pi * 2 * tau))
            r = 0.11
            d2 = ((x - bx) * aspect) ** 2 + (y - by) ** 2
            shade = np.clip(1.1 - 0.6 * (((x - bx + 0.03) * aspect) ** 2 + (y - by + 0.04) ** 2) / r**2, 0.3, 1.2)
            img = np.where((d2 < r * r)[..., None], np.array([225, 60, 50]) * shade[..., None], img)
            # a blue box sliding back, further away
            cx, cy, s = 0.82 - 0.55 * tau - 0.15 * cam, 0.56, 0.07
            box = (np.abs((x - cx) * aspect) < s) & (np.abs(y - cy) < s)
            img = np.where(box[..., None], [50, 110, 230], img)
            # a thin far pole for depth
            pole = (np.abs(x - 0.5 + 0.04 * cam) < 0.008) & (y > 0.2) & (y < horizon + 0.03)
            img = np.where(pole[..., None], [240, 220, 120], img)
            frames[v, t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def write_procedural_run(out: Path, V: int = 4, T: int = 5, H: int = 36, W: int = 64, seed: int = 0) -> Path:
    grid = Grid(procedural_grid(V, T, H, W, seed), known_mask(V, T, "row0+col0"), fps=8.0,
                caption="a red ball crossing a checkered floor")
    return write_run(out, grid, base_manifest("generate", views=V, times=T, seed=seed))


def write_input_videos(folder: Path, V: int = 6, T: int = 10, H: int = 72, W: int = 128) -> tuple[Path, Path]:
    """A fixed-view and a freeze-time clip of the procedural scene (they share their first frame)."""
    g = procedural_grid(V, T, H, W)
    folder.mkdir(parents=True, exist_ok=True)
    return (write_mp4(folder / "ball_fixed_view.mp4", g[0], 8.0),
            write_mp4(folder / "ball_freeze_time.mp4", g[:, 0], 8.0))


def write_3dgs_ply(path: Path, means: np.ndarray, rgb: np.ndarray, log_scales: np.ndarray,
                   quats: np.ndarray, opacity_logits: np.ndarray) -> Path:
    """Standard 3DGS binary .ply (x y z nx ny nz f_dc_0..2 opacity scale_0..2 rot_0..3)."""
    n = len(means)
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    cols = np.concatenate([means, np.zeros((n, 3)), (rgb - 0.5) / 0.28209479177387814,
                           opacity_logits.reshape(n, 1), log_scales, quats], axis=1).astype("<f4")
    header = "ply\nformat binary_little_endian 1.0\nelement vertex %d\n" % n
    header += "".join(f"property float {c}\n" for c in names) + "end_header\n"
    path.write_bytes(header.encode() + cols.tobytes())
    return path


def write_png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims width x height (a 10,000 x 10,000 image costs 300 MB to draw; the header
    is what a size check reads first)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def make_bad_input(kind: str, folder: Path) -> Path:
    """The Foundation issue's bad inputs, as files a user could upload."""
    import imageio.v3 as iio

    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f"{kind}.mp4"
    if kind == "missing":
        return p
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("these are notes, not a video\n")
    elif kind == "truncated":
        frames = procedural_grid(1, 30, 72, 128)[0]
        full = write_mp4(folder / "full.mp4", frames, 8.0)
        data = full.read_bytes()
        p.write_bytes(data[: len(data) * 6 // 10])
    elif kind == "one_frame":
        iio.imwrite(p, procedural_grid(1, 1, 72, 128)[0], extension=".mp4", fps=8, codec="libx264",
                    macro_block_size=1, pixelformat="yuv420p")
    elif kind == "one_pixel":
        iio.imwrite(p, np.zeros((5, 1, 1, 3), np.uint8), extension=".mp4", fps=8, codec="libx264",
                    macro_block_size=1, pixelformat="yuv444p")
    elif kind == "huge_image":
        return write_png_header_only(folder / "huge.png", 10_000, 10_000)
    return p


def gr_request(session_hash: str = "testsession01"):
    import gradio as gr

    return gr.Request(session_hash=session_hash)


@pytest.fixture(scope="module")
def _base_run(tmp_path_factory) -> Path:
    return write_procedural_run(tmp_path_factory.mktemp("base") / "run", V=4, T=5, H=36, W=64)


@pytest.fixture()
def run_dir(tmp_path, _base_run) -> Path:
    """A fresh copy of a small finished run (4 views x 5 times at 36x64) for each test."""
    import shutil

    return Path(shutil.copytree(_base_run, tmp_path / "runs" / "session-a" / "run1"))


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from app.studio import Studio, StudioConfig, build_demo

    s = Studio(StudioConfig(runs=tmp_path_factory.mktemp("studio") / "runs", examples=None, viewer_port=0))
    build_demo(s)  # fills studio.c, which the handlers' dict updates are keyed by
    yield s
    s.close()


# -- explore: cached cells, scrub widget, contact sheet, exports ---------------------------------
def test_prepare_run_caches_one_image_per_cell_once(run_dir):
    from PIL import Image

    from app.explore import prepare_run

    view = prepare_run(run_dir)
    assert (view.V, view.T, view.H, view.W) == (4, 5, 36, 64)
    cells = [p for row in view.cells for p in row]
    assert len(cells) == 20 and all(p.is_file() for p in cells)
    a = np.asarray(Image.open(view.cells[0][0]), np.float32)
    b = np.asarray(Image.open(view.cells[3][4]), np.float32)
    assert a.shape == (36, 64, 3) and np.abs(a - b).mean() > 5  # a slider move shows another frame
    stamp = view.cells[2][2].stat().st_mtime_ns
    again = prepare_run(run_dir)
    assert again.cells[2][2].stat().st_mtime_ns == stamp  # cached, not redrawn


def test_scrub_html_stacks_every_cell_with_only_the_first_shown(run_dir):
    import re

    from app.explore import prepare_run, scrub_html

    view = prepare_run(run_dir)
    page = scrub_html(view)
    cells = re.findall(r'<img class="cell( on)?" data-v="(\d+)" data-t="(\d+)" src="([^"]+)"', page)
    assert len(cells) == 20
    assert [c for c in cells if c[0]] == [(" on", "0", "0", cells[0][3])]
    assert {(int(v), int(t)) for _, v, t, _ in cells} == {(v, t) for v in range(4) for t in range(5)}
    assert all(src.startswith("gradio_api/file=") and str(run_dir.resolve()) in src for *_, src in cells)
    assert 'max="3"' in page and 'max="4"' in page  # view and time sliders span the grid
    assert page.count('class="sheet-known"') == 4 + 5 - 1  # row 0 and column 0 are outlined as given
    assert "appears here" in scrub_html(None)


def test_sheet_highlight_geometry_lands_on_the_cell(run_dir):
    """The widget's highlight box (fractions of the sheet) must frame exactly cell (v, t)."""
    import re

    from app.explore import prepare_run, scrub_html
    from core.export import contact_sheet

    view = prepare_run(run_dir)
    page = scrub_html(view)
    g = {k: float(re.search(rf'data-{k}="([0-9.]+)"', page).group(1)) for k in ("cw", "ch", "sx", "sy")}
    grid = Grid.load_npz(run_dir / "grid.npz")
    sheet = contact_sheet(grid)
    sh, sw = sheet.shape[:2]
    assert (sh, sw) == view.sheet_size
    for v, t in [(0, 0), (2, 3), (3, 4)]:
        y0, x0 = round(v * g["sy"] * sh), round(t * g["sx"] * sw)
        y1, x1 = round(y0 + g["ch"] * sh), round(x0 + g["cw"] * sw)
        assert np.array_equal(sheet[y0:y1, x0:x1], grid.frames[v, t])


def test_exports_zip_every_row_and_column_video_and_every_frame(run_dir):
    from io import BytesIO

    from PIL import Image

    from app.explore import prepare_run

    view = prepare_run(run_dir)
    with zipfile.ZipFile(view.downloads["videos_zip"]) as z:
        names = set(z.namelist())
    assert {"grid.mp4", "spiral.mp4"} <= names
    assert {f"views/view_{v:02d}.mp4" for v in range(4)} <= names
    assert {f"times/time_{t:02d}.mp4" for t in range(5)} <= names
    grid = Grid.load_npz(run_dir / "grid.npz")
    with zipfile.ZipFile(view.downloads["frames_zip"]) as z:
        assert len(z.namelist()) == 20
        png = np.asarray(Image.open(BytesIO(z.read("frames/view_02/time_03.png"))))
    assert np.array_equal(png, grid.frames[2, 3])  # lossless
    assert json.loads(view.downloads["manifest"].read_text())["status"] == "done"
    assert view.downloads["grid_mp4"] == run_dir / "grid.mp4"


def test_show_run_puts_videos_and_downloads_of_that_run_on_the_page(studio, run_dir):
    from app.session import Session

    state = Session(runs=[str(run_dir)])
    upd = studio._show_run(state, run_dir)
    c = studio.c
    assert state.current == str(run_dir)
    assert upd[c["row_video"]]["value"].endswith("views/view_00.mp4")
    assert upd[c["col_video"]]["value"].endswith("times/time_00.mp4")
    for k in ("dl_grid", "dl_videos", "dl_frames", "dl_manifest"):
        assert upd[c[k]]["interactive"] and Path(upd[c[k]]["value"]).resolve().is_relative_to(run_dir)
    assert upd[c["recon"]]["interactive"]


def test_scrub_release_swaps_the_row_and_column_videos(studio, run_dir):
    import gradio as gr

    from app.session import Session

    state = Session(runs=[str(run_dir)])
    assert studio.on_cell(state, gr.EventData(None, {"view": 2, "time": 3})) == (gr.skip(), gr.skip())
    studio._show_run(state, run_dir)
    row, col = studio.on_cell(state, gr.EventData(None, {"view": 2, "time": 3}))
    assert row["value"].endswith("view_02.mp4") and "view 2" in row["label"]
    assert col["value"].endswith("time_03.mp4") and "time 3" in col["label"]
    row, col = studio.on_cell(state, gr.EventData(None, {"view": 99, "time": -5}))  # clamped, never a path
    assert row["value"].endswith("view_03.mp4") and col["value"].endswith("time_00.mp4")


# -- inputs: the Foundation issue's bad inputs give a readable line -------------------------------
BAD_VIDEOS = {
    "missing": "does not exist",
    "empty": "is empty (0 bytes)",
    "text": "could not be opened as a video",
    "truncated": "truncated or corrupt",
    "one_frame": "at least 2 are needed",
    "one_pixel": "each side must be at least 8 pixels",
}


@pytest.mark.parametrize("kind", sorted(BAD_VIDEOS))
def test_bad_video_upload_says_what_is_wrong(studio, tmp_path, kind):
    bad = make_bad_input(kind, tmp_path / "bad")
    good_fixed, _ = write_input_videos(tmp_path / "good")
    compare, note = studio.on_videos(str(good_fixed), str(bad), "72x128")
    assert "status-error" in note and BAD_VIDEOS[kind] in note and "freeze-time video" in note
    # named as the person knows it: the upload's file name, not the server's temporary folder
    assert f"freeze-time video {bad.name} " in note and str(bad.parent) not in note
    assert compare["visible"]  # the good clip's first frame is still shown


def test_huge_image_upload_is_refused_before_decoding(studio, tmp_path):
    bad = make_bad_input("huge_image", tmp_path / "bad")
    from app.session import Session

    state = Session()
    t0 = time.perf_counter()
    note = studio.on_image(state, {"path": str(bad)}, "72x128")
    assert "status-error" in note and "10000x10000" in note and "largest allowed" in note
    assert time.perf_counter() - t0 < 2.0
    assert state.image == str(bad)  # kept, so Generate refuses it with the same words
    import gradio as gr

    state.mode = "image"
    with pytest.raises(gr.Error, match="10000x10000"):
        studio.check_generate(state, None, None, "", 8, 8, "72x128", 25, 0, "soft", 1.0)


def test_matching_inputs_show_their_first_frames_and_agree(studio, tmp_path):
    fixed, freeze = write_input_videos(tmp_path / "in")
    compare, note = studio.on_videos(str(fixed), str(freeze), "72x128")
    assert compare["visible"] and compare["value"].shape[1] > 3 * 200  # three panels side by side
    assert "status-ok" in note and "agree" in note


def test_mismatched_first_frames_warn(studio, tmp_path):
    fixed, _ = write_input_videos(tmp_path / "a")
    other = write_mp4(tmp_path / "other_freeze.mp4", 255 - procedural_grid(6, 1, 72, 128, seed=3)[:, 0], 8.0)
    with pytest.warns(UserWarning):
        _, note = studio.on_videos(str(fixed), str(other), "72x128")
    assert "status-warn" in note and "differ" in note


@pytest.mark.parametrize("views,times,size,needle", [
    (0, 8, "72x128", "views must be between 1 and 64, got 0"),
    (1000, 8, "72x128", "views must be between 1 and 64, got 1000"),
    (8, 0, "72x128", "times must be between 1 and 256, got 0"),
    (8, 8, "72 by 128", "size must look like HxW"),
    (8, 8, "8x8", "height must be between 16 and 4096"),
    (2.5, 8, "72x128", "views must be a whole number"),
])
def test_generate_refuses_bad_settings_before_queueing(studio, tmp_path, views, times, size, needle):
    import gradio as gr

    from app.session import Session

    fixed, freeze = write_input_videos(tmp_path / "in")
    c = studio.c
    # through the page's own boxes first: they hand the value on as typed (2.5 is not rounded to 2)
    views, times = c["views"].preprocess(views), c["times"].preprocess(times)
    with pytest.raises(gr.Error) as e:
        studio.check_generate(Session(), str(fixed), str(freeze), "", views, times, size, 25, 0, "soft", 1.0)
    assert needle in e.value.message


@pytest.mark.parametrize("shift,needle", [
    (-1, "noise shift must be between 0 and 100 (0: the model's own), got -1"),
    (101, "noise shift must be between 0 and 100 (0: the model's own), got 101"),
    (float("nan"), "noise shift must be between 0 and 100"),
    ("fast", "noise shift must be a number, got 'fast'"),
])
def test_generate_refuses_a_bad_noise_shift_before_queueing(studio, tmp_path, shift, needle):
    import gradio as gr

    from app.session import Session

    fixed, freeze = write_input_videos(tmp_path / "in")
    with pytest.raises(gr.Error) as e:
        studio.check_generate(Session(), str(fixed), str(freeze), "", 8, 8, "72x128", 25, 0, "soft", 1.0, shift)
    assert needle in e.value.message


def test_check_settings_reads_the_noise_shift():
    from app.inputs import check_settings

    assert check_settings(8, 8, "72x128", 25, 0, "soft", 1.0, 0).shift is None  # the model's own
    assert check_settings(8, 8, "72x128", 25, 0, "soft", 1.0, "").shift is None
    assert check_settings(8, 8, "72x128", 25, 0, "soft", 1.0, 3.5).shift == 3.5
    assert check_settings(8, 8, "72x128", 25, 0, "soft", 1.0).shift is None


def test_generate_refuses_missing_sources_per_tab(studio):
    import gradio as gr

    from app.session import Session

    for mode, needle in (("videos", "add both videos"), ("image", "add a start image"), ("prompt", "type a prompt")):
        with pytest.raises(gr.Error) as e:
            studio.check_generate(Session(mode=mode), None, None, "  ", 8, 8, "72x128", 25, 0, "soft", 1.0)
        assert needle in e.value.message


def test_good_settings_queue_the_job_and_clear_an_old_cancel(studio, tmp_path):
    from app.session import Session

    fixed, freeze = write_input_videos(tmp_path / "in")
    state = Session(cancel=True)
    upd = studio.check_generate(state, str(fixed), str(freeze), "", 4, 4, "72x128", 10, 7, "fused", 2.0)
    assert not state.cancel and "Waiting for the GPU" in upd[studio.c["status"]]


def test_find_examples_pairs_clips_by_folder_and_by_name(tmp_path):
    from app.inputs import find_examples

    write_input_videos(tmp_path / "ex" / "ball")
    (tmp_path / "ex" / "ball" / "prompt.txt").write_text("a red ball\n")
    a, b = write_input_videos(tmp_path / "loose")
    a.rename(tmp_path / "ex" / "walk_fixed_view.mp4")
    b.rename(tmp_path / "ex" / "walk_freeze_time.mp4")
    (tmp_path / "ex" / "lonely_fixed_view.mp4").write_bytes(b"x")  # no partner: not an example
    examples = find_examples(tmp_path / "ex")
    assert [e.name for e in examples] == ["ball", "walk"]
    assert examples[0].prompt == "a red ball"
    assert examples[1].fixed_view.endswith("walk_fixed_view.mp4")
    assert examples[1].freeze_time.endswith("walk_freeze_time.mp4")
    assert find_examples(tmp_path / "nowhere") == []


# -- sessions and jobs ----------------------------------------------------------------------------
def test_sessions_write_to_their_own_folders_and_never_reuse_a_run(tmp_path):
    from app.session import Session, new_run_path, run_of, session_key

    a, b = Session(), Session()
    pa = new_run_path(tmp_path, a, "grid", "hashA")
    pb = new_run_path(tmp_path, b, "grid", "hashB")
    assert pa.parent != pb.parent and pa.parent.name == "session-hashA"
    pa.mkdir()
    pa2 = new_run_path(tmp_path, a, "grid", "hashA")
    assert pa2 != pa and not pa2.exists()
    assert session_key("../../etc/passwd") == "etcpasswd"
    a.runs.append(str(pa))
    assert run_of(a, pa.name) == pa and run_of(b, pa.name) is None and run_of(a, "../x") is None


def test_job_streams_the_newest_progress_and_returns_the_result():
    from app.jobs import Job

    def work(on_progress, should_cancel):
        for i in range(1, 6):
            on_progress(i, 5, None)
            time.sleep(0.03)
        return "done"

    with Job(work, poll_s=0.01) as job:
        seen = [r[0] for r in job.reports()]
        assert job.result() == "done"
    assert seen and seen == sorted(seen) and seen[-1] == 5


def test_cancel_stops_the_job_with_cancelled():
    from app.jobs import Job, explain_failure
    from app.session import Session

    state = Session()

    def work(on_progress, should_cancel):
        for i in range(200):
            if should_cancel():
                raise Cancelled("stopped")
            on_progress(i, 200, None)
            time.sleep(0.01)
        return "finished"

    with Job(work, lambda: state.cancel, poll_s=0.01) as job:
        for step, *_ in job.reports():
            if step >= 3:
                state.cancel = True  # what the Cancel button does
        with pytest.raises(Cancelled) as e:
            job.result()
    assert explain_failure(e.value, "x") is None


def test_leaving_a_job_early_cancels_it_and_waits():
    from app.jobs import Job

    stopped = threading.Event()

    def work(on_progress, should_cancel):
        while not should_cancel():
            on_progress(1, 2, None)
            time.sleep(0.01)
        stopped.set()
        raise Cancelled("page closed")

    with Job(work, poll_s=0.01) as job:
        next(job.reports())
    assert stopped.is_set()


def test_gpu_lock_runs_two_sessions_jobs_one_after_the_other():
    from app.jobs import Job

    lock, spans = threading.Lock(), []

    def work(on_progress, should_cancel):
        t0 = time.perf_counter()
        time.sleep(0.15)
        spans.append((t0, time.perf_counter()))

    def session():
        with Job(work, gpu_lock=lock) as job:
            list(job.reports())
            job.result()

    threads = [threading.Thread(target=session) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    (a0, a1), (b0, b1) = sorted(spans)
    assert a1 <= b0  # never mixed


def test_out_of_memory_says_what_to_lower():
    import torch

    from app.jobs import explain_failure

    msg = explain_failure(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                          "the frame size (now 288x512), the views (now 8) or the times (now 8)")
    assert msg.startswith("The GPU ran out of memory. Lower the frame size (now 288x512)")
    assert explain_failure(InputError("height must be a multiple of 8, got 70"), "x") == \
        "height must be a multiple of 8, got 70"


# -- reconstruction files for the viewer ----------------------------------------------------------
def write_procedural_splats(run: Path, T: int, n: int = 300, V: int = 4) -> None:
    rng = np.random.default_rng(1)
    (run / "splats").mkdir()
    base = rng.normal(size=(n, 3))
    for t in range(T):
        write_3dgs_ply(run / "splats" / f"frame_{t:03d}.ply", base + [0.1 * t, 0, 0], rng.random((n, 3)),
                       np.full((n, 3), -2.0), np.tile([1.0, 0, 0, 0], (n, 1)), np.full(n, 1.5))
    write_3dgs_ply(run / "splats" / "canonical.ply", base, rng.random((n, 3)), np.full((n, 3), -2.0),
                   np.tile([1.0, 0, 0, 0], (n, 1)), np.full(n, 1.5))
    cams = [{"viewmat": np.eye(4).tolist(), "K": [[64, 0, 32], [0, 64, 18], [0, 0, 1]]} for _ in range(V)]
    (run / "recon.json").write_text(json.dumps({"cameras": cams, "scene_scale": 1.0, "psnr_db": 21.5}))


def test_reconstruction_loads_per_frame_splats_cameras_and_zips_them(run_dir):
    from app.splats import find_reconstruction, read_splats, splats_zip

    assert find_reconstruction(run_dir) is None
    write_procedural_splats(run_dir, T=5)
    recon = find_reconstruction(run_dir)
    assert [p.name for p in recon.frame_files] == [f"frame_{t:03d}.ply" for t in range(5)]
    assert len(recon.cameras) == 4 and recon.cameras[0]["viewmat"].shape == (4, 4)
    frames = recon.frames()
    assert len(frames) == 5
    assert np.allclose(frames[3]["means"] - frames[0]["means"], [0.3, 0, 0], atol=1e-5)
    f = read_splats(run_dir / "splats" / "canonical.ply")
    assert np.allclose(f["log_scales"], -2.0) and np.allclose(f["opacity_logits"], 1.5)
    assert f["rgb"].min() >= 0 and f["rgb"].max() <= 1
    with zipfile.ZipFile(splats_zip(run_dir, recon)) as z:
        assert sorted(z.namelist()) == sorted(["splats/canonical.ply"] + [f"splats/frame_{t:03d}.ply" for t in range(5)])


def test_reconstruction_reaches_this_sessions_viewer_and_unload_stops_it(studio, run_dir):
    from app.session import Session
    from viewer.server import ViewerServer

    write_procedural_splats(run_dir, T=5)
    state = Session(key="abc", runs=[str(run_dir)], current=str(run_dir))
    studio.viewer_factory = ViewerServer
    try:
        updates = list(studio._show_reconstruction(state, run_dir, "abc", {"psnr_db": 21.5}, 3.0))
    finally:
        studio.viewer_factory = None
    final = updates[-1]
    viewer = studio._viewers["abc"]
    assert viewer.times == 5 and f'data-port="{viewer.port}"' in final[studio.c["viewer"]]
    assert "PSNR 21.50 dB" in final[studio.c["recon_status"]]
    assert final[studio.c["dl_splats"]]["value"].endswith("splats.zip")
    studio.on_unload(gr_request("abc"))
    assert "abc" not in studio._viewers


def test_the_camera_estimates_warnings_stay_in_the_reconstruction_status(studio, run_dir):
    from app.session import Session

    write_procedural_splats(run_dir, T=5)
    state = Session(key="w", runs=[str(run_dir)], current=str(run_dir))
    assert studio.viewer_factory is None  # the no-viewer branch of the page
    warned = list(studio._show_reconstruction(state, run_dir, "w", {"psnr_db": 21.5, "warnings": [
        "only 4 of 8 views could be placed from features"]}, 3.0))[-1][studio.c["recon_status"]]
    assert "status-warn" in warned and "Check the cameras: only 4 of 8 views" in warned
    # a saved reconstruction brings its warnings back from recon.json; none: an "ok" line
    info = json.loads((run_dir / "recon.json").read_text())
    (run_dir / "recon.json").write_text(json.dumps({**info, "warnings": ["the estimated field of view"]}))
    saved = list(studio._show_reconstruction(state, run_dir, "w", None, None))[-1][studio.c["recon_status"]]
    assert "status-warn" in saved and "the estimated field of view" in saved
    clean = list(studio._show_reconstruction(state, run_dir, "w", {"psnr_db": 21.5, "warnings": []}, 3.0)
                 )[-1][studio.c["recon_status"]]
    assert "status-ok" in clean and "Check the cameras" not in clean


def test_the_field_of_view_control_reaches_the_reconstruction_and_absurd_values_are_refused(
        studio, run_dir, monkeypatch):
    import gradio as gr

    from app.session import Session
    from core.engine import Engine
    from core.recon import api

    asked = []

    def fake_reconstruct_run(run, iters=None, holdout=None, device="auto", sfm=None, **kw):
        asked.append(None if sfm is None else sfm.fov_x_deg)
        if not (Path(run) / "splats").is_dir():
            write_procedural_splats(Path(run), T=5)
        return {"psnr_db": 30.0, "warnings": []}

    monkeypatch.setattr(api, "reconstruct_run", fake_reconstruct_run)
    monkeypatch.setattr(studio, "engine", lambda model: Engine("default", "cpu"))  # not loaded: no weights read
    state = Session(key="fov", runs=[str(run_dir)], current=str(run_dir))
    for fov in (0, 47.5):
        studio.check_reconstruct(state, fov)
        final = list(studio.reconstruct(state, 0, fov, "default", gr_request("fov")))[-1]
        assert "status-ok" in final[studio.c["recon_status"]]
    assert asked == [None, 47.5]  # 0 = estimated from the frames
    for bad in (5, 200, 1000, -3):  # through the page's own box, which hands them on for our message
        with pytest.raises(gr.Error, match="between 10 and 150 degrees"):
            studio.check_reconstruct(state, studio.c["recon_fov"].preprocess(bad))


def test_each_cancel_stops_only_its_own_job_and_an_idle_one_changes_nothing(studio):
    import gradio as gr

    from app.session import Session

    state = Session()
    assert studio.on_cancel(state) == gr.skip() and studio.on_cancel_recon(state) == gr.skip()
    assert not state.cancel and not state.cancel_recon
    state.reconstructing = "/runs/a"
    assert "Cancelling" in studio.on_cancel_recon(state) and state.cancel_recon
    assert studio.on_cancel(state) == gr.skip() and not state.cancel  # the fit's Cancel is not the grid's
    state.generating = True
    assert "Cancelling" in studio.on_cancel(state) and state.cancel


def test_a_cancellation_is_said_again_when_its_job_ends(studio):
    import gradio as gr

    from app.session import Session

    c = studio.c
    state = Session(generating=True, reconstructing="/runs/a", current="/runs/a")
    state.notes["generate"] = "<cancelled>"
    done = studio.job_done(state)
    assert done[c["status"]] == "<cancelled>" and not state.generating
    assert done[c["recon"]]["interactive"] is False  # the fit still runs
    assert studio.job_done(state)[c["status"]] == gr.skip()  # said once; a finished grid's line stays
    state.notes["reconstruct"] = "<fit cancelled>"
    done = studio.recon_done(state)
    assert done[c["recon_status"]] == "<fit cancelled>" and done[c["recon"]]["interactive"]
    assert state.reconstructing == ""


def test_a_reconstruction_fits_the_run_shown_when_pressed_and_leaves_another_page_alone(
        studio, run_dir, _base_run, monkeypatch):
    import shutil

    from app.session import Session
    from core.engine import Engine
    from core.recon import api

    fitted = []

    def fake_reconstruct_run(run, **kw):
        fitted.append(Path(run).name)
        write_procedural_splats(Path(run), T=5)
        return {"psnr_db": 30.0, "warnings": []}

    monkeypatch.setattr(api, "reconstruct_run", fake_reconstruct_run)
    monkeypatch.setattr(studio, "engine", lambda model: Engine("default", "cpu"))
    other = Path(shutil.copytree(_base_run, run_dir.parent / "other"))
    shutil.rmtree(run_dir / "splats", ignore_errors=True)
    state = Session(key="switch", runs=[str(run_dir), str(other)])
    studio._show_run(state, run_dir)
    studio.check_reconstruct(state, 0)
    c = studio.c
    shown = studio._show_run(state, other)  # picked while the fit waits for the GPU
    assert shown[c["recon"]]["interactive"] is False and c["recon_status"] not in shown
    final = list(studio.reconstruct(state, 0, 0, "default", gr_request("switch")))[-1]
    assert fitted == [run_dir.name] and not (other / "splats").exists()
    assert f"Reconstructed {run_dir.name}" in final[c["recon_status"]] and "pick it under Run" in final[c["recon_status"]]
    assert c["viewer"] not in final and c["dl_canonical"] not in final  # the other run's page is left as it is
    studio.recon_done(state)
    assert studio._show_run(state, run_dir)[c["recon"]]["interactive"]


def test_unload_removes_an_empty_session_folder_but_keeps_runs(studio, tmp_path):
    from app.session import Session, new_run_path

    empty = new_run_path(studio.config.runs, Session(), "grid", "emptysession").parent
    kept = write_procedural_run(new_run_path(studio.config.runs, Session(), "grid", "busysession"), V=2, T=2)
    studio.on_unload(gr_request("emptysession"))
    studio.on_unload(gr_request("busysession"))
    assert not empty.exists() and kept.is_dir()


def test_picking_an_earlier_run_brings_back_its_grid_and_reconstruction(studio, run_dir, tmp_path, _base_run):
    import shutil

    from app.session import Session

    other = Path(shutil.copytree(_base_run, run_dir.parent / "run2"))
    write_procedural_splats(other, T=5)
    state = Session(key="picker", runs=[str(run_dir), str(other)])
    studio._show_run(state, run_dir)
    # already shown, or not this session's: one empty update (yielding nothing would blank every output)
    assert list(studio.on_pick_run(state, run_dir.name, gr_request("picker"))) == [{}]
    assert list(studio.on_pick_run(state, "../../elsewhere", gr_request("picker"))) == [{}]
    updates = list(studio.on_pick_run(state, other.name, gr_request("picker")))
    c = studio.c
    assert state.current == str(other)
    assert updates[0][c["run_pick"]]["visible"] and updates[0][c["run_pick"]]["value"] == "run2"
    assert updates[-1][c["dl_canonical"]]["interactive"]  # its saved splats are offered again
    assert "saved reconstruction · PSNR 21.50 dB" in updates[-1][c["recon_status"]]


# -- the page --------------------------------------------------------------------------------------
def test_page_queues_every_gpu_job_on_one_queue_and_binds_locally(tmp_path):
    import argparse

    from app.studio import GPU, Studio, StudioConfig, build_demo

    args = argparse.Namespace(host="127.0.0.1", port=7860, viewer_port=8080, model="default", device="auto",
                              precision="auto", compile=False, runs=str(tmp_path / "runs"))
    cfg = StudioConfig.from_args(args)
    assert cfg.host == "127.0.0.1" and cfg.max_file_size and cfg.precision == "auto" and not cfg.compile
    args.precision, args.compile = "fp32", True
    engine = Studio(StudioConfig.from_args(args)).engine("default")
    assert engine.precision_name == "fp32" and engine.compile
    studio = Studio(cfg)
    demo = build_demo(studio)
    fns = {f.name: f for f in demo.fns.values()}
    for name in ("generate", "generate_inputs", "reconstruct"):
        assert fns[name].concurrency_id == GPU and fns[name].concurrency_limit == 1
    assert fns["on_cancel"].concurrency_id != GPU  # Cancel never waits behind the job it cancels
    assert not list((Path(__file__).resolve().parents[1] / "app").glob("*.pyi"))  # gradio writes these for
    # subclassed components at import time: the page must not need one


def test_header_shows_the_device_and_precision_generation_runs_with(monkeypatch):
    import core.engine as engine
    from app.studio import runtime_labels
    from app.web import header_html

    monkeypatch.setattr(engine, "cpu_has_bf16", lambda *a: True)
    assert runtime_labels("cpu", "auto") == ("cpu", "bf16 (auto)")
    monkeypatch.setattr(engine, "cpu_has_bf16", lambda *a: False)
    assert runtime_labels("cpu", "auto") == ("cpu", "fp32 (auto)")
    assert runtime_labels("cpu", "bf16") == ("cpu", "bf16")
    dev, prec = runtime_labels("auto", "fp32")
    assert dev in ("cpu (auto)", "cuda (auto)") and prec == "fp32"
    assert runtime_labels("tpu", "auto") == ("tpu", "auto")  # not resolvable: shown as given
    page = header_html("default", "cpu", "bf16 (auto)")
    assert "device · cpu" in page and "precision · bf16 (auto)" in page
    assert "precision" not in header_html("default", "cpu")


# -- with the engine (skipped until core.engine is in the checkout) ------------------------------
def _engine_missing() -> str | None:
    try:
        import core.engine  # noqa: F401
    except ImportError as e:
        return f"core.engine cannot be imported yet ({e})"
    return None


needs_engine = pytest.mark.skipif(_engine_missing() is not None, reason=str(_engine_missing()))


def _generate(studio, state, fixed, freeze, session, size="72x128", views=4, times=4, steps=2, shift=0, dense=True):
    state.mode = "videos"
    return list(studio.generate(state, str(fixed), str(freeze), "", views, times, size, steps, 0, "soft", 1.0,
                                shift, dense, "default", gr_request(session)))


@needs_engine
def test_the_noise_shift_and_dense_sampling_controls_reach_the_engine(studio, tmp_path):
    from app.session import Session
    from core.model.config import preset

    fixed, freeze = write_input_videos(tmp_path / "in")
    asked, sampled, done = [], [], []
    for shift, dense in ((0, True), (12.5, False)):
        state = Session()
        updates = _generate(studio, state, fixed, freeze, f"shift{shift}", shift=shift, dense=dense)
        manifest = json.loads((Path(state.current) / "manifest.json").read_text())
        asked.append(manifest["asked"]["shift"])
        sampled.append(manifest["sampled_grid"])
        done.append([u[studio.c["status"]] for u in updates if studio.c["status"] in u][-1])
    assert asked == [preset("default").shift, 12.5]  # 0 = the model's own, recorded as what ran
    assert sampled == [[7, 7], [4, 4]]  # 4 x 4 as the even cells of 7 x 7, unless switched off
    assert "denser 7 × 7 grid" in done[0] and "denser" not in done[1]


@needs_engine
def test_generate_streams_progress_then_shows_the_grid(studio, tmp_path):
    from app.session import Session

    fixed, freeze = write_input_videos(tmp_path / "in")
    state = Session()
    updates = _generate(studio, state, fixed, freeze, "enginesession")
    c = studio.c
    statuses = [u[c["status"]] for u in updates if c["status"] in u]
    assert any("Denoising · step" in s for s in statuses) and "Done in" in statuses[-1]
    assert state.current and Path(state.current).is_relative_to(studio.config.runs / "session-enginesession")
    assert updates[-1][c["scrub"]]["value"].count('class="cell') == 16
    assert Grid.load_npz(Path(state.current) / "grid.npz").frames.shape == (4, 4, 72, 128, 3)


@needs_engine
def test_cancel_before_the_job_starts_saves_nothing(studio, tmp_path):
    from app.session import Session

    fixed, freeze = write_input_videos(tmp_path / "in")
    state = Session(cancel=True)
    updates = _generate(studio, state, fixed, freeze, "cancelsession")
    assert "Cancelled" in updates[-1][studio.c["status"]] and not state.runs
    folder = studio.config.runs / f"session-{state.key}"
    assert not any(p for p in folder.iterdir() if not p.name.startswith("."))


@needs_engine
def test_a_size_the_model_cannot_take_is_explained_in_the_page(studio, tmp_path):
    import gradio as gr

    from app.session import Session

    fixed, freeze = write_input_videos(tmp_path / "in")
    with pytest.raises(gr.Error) as e:
        _generate(studio, Session(), fixed, freeze, "sizesession", size="70x130")
    assert "multiple" in e.value.message
