"""Video input: every container we accept, odd inputs (grey, RGBA, odd sizes), streaming, and
each bad input from the Foundation issue giving one clear InputError."""

from __future__ import annotations

import tracemalloc

import cv2
import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from core.errors import InputError
from core.video import check_shared_cell, load_inputs, pick_indices, read_image, read_video


def moving_square(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    """n frames of a white square sliding over a colour gradient: uint8 [n, h, w, 3]."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 90)], -1).astype(np.uint8)
    out = np.repeat(base[None], n, 0)
    for i in range(n):
        x0 = int(i * (w - 12) / max(1, n - 1))
        out[i, h // 3:h // 3 + 12, x0:x0 + 12] = 255
    return out


def square_centre_x(frame: np.ndarray) -> float:
    """x centre of the white square (the only near-white pixels)."""
    return float(np.nonzero(frame.min(-1) > 180)[1].mean())


def write_clip(path, frames, fps=10, **kw):
    kw.setdefault("macro_block_size", 1)
    iio.imwrite(path, frames, fps=fps, ffmpeg_log_level="error", **kw)
    return path


@pytest.mark.parametrize("ext,kw", [
    (".mp4", dict(codec="libx264")),
    (".mov", dict(codec="libx264")),
    (".mkv", dict(codec="libx264")),
    (".webm", dict(codec="libvpx-vp9")),
    (".avi", dict(codec="mjpeg", pixelformat="yuvj420p")),
])
def test_reads_each_container_resampled_to_t_frames(tmp_path, ext, kw):
    src = moving_square(20)
    p = write_clip(tmp_path / f"clip{ext}", src, **kw)
    frames, fps = read_video(p, times=5, height=24, width=32)
    assert frames.shape == (5, 24, 32, 3) and frames.dtype == np.uint8
    # The square moves left to right: the bright column's centre must increase over the picks.
    centres = [square_centre_x(f) for f in frames]
    assert all(b > a for a, b in zip(centres, centres[1:])), centres
    assert 0 < fps <= 60


def test_reads_gif(tmp_path):
    p = tmp_path / "clip.gif"
    iio.imwrite(p, moving_square(8), extension=".gif", duration=100, loop=0)
    frames, _ = read_video(p, times=4, height=24, width=32)
    assert frames.shape == (4, 24, 32, 3)
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 2  # it moves


def test_grey_video_becomes_rgb(tmp_path):
    grey = moving_square(10)[..., 0]
    p = write_clip(tmp_path / "grey.mkv", np.repeat(grey[..., None], 3, -1), codec="ffv1", pixelformat="gray")
    frames, _ = read_video(p, times=3, height=48, width=64)
    assert frames.shape == (3, 48, 64, 3)
    assert np.abs(frames[..., 0].astype(int) - frames[..., 2].astype(int)).max() <= 2


def test_odd_size_video_is_resized_and_centre_cropped(tmp_path):
    src = moving_square(6, h=77, w=101)
    p = write_clip(tmp_path / "odd.mkv", src, codec="ffv1")
    frames, _ = read_video(p, times=6, height=32, width=32)
    assert frames.shape == (6, 32, 32, 3)


def test_centre_crop_keeps_the_middle(tmp_path):
    # A wide frame with red on the left third, green middle, blue right: a square crop is green.
    f = np.zeros((8, 60, 180, 3), np.uint8)
    f[:, :, :60, 0] = 255
    f[:, :, 60:120, 1] = 255
    f[:, :, 120:, 2] = 255
    p = write_clip(tmp_path / "wide.mkv", f, codec="ffv1")
    frames, _ = read_video(p, times=2, height=16, width=16)
    assert frames[..., 1].mean() > 200 and frames[..., 0].mean() < 30 and frames[..., 2].mean() < 30


def test_images_grey_rgba_and_16bit(tmp_path):
    grey = (np.arange(40 * 50) % 256).reshape(40, 50).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0  # fully transparent: composited on white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    cv2.imwrite(str(tmp_path / "d.png"), (np.ones((40, 50, 3)) * 65535).astype(np.uint16))
    assert read_image(tmp_path / "g.png", 16, 16).shape == (16, 16, 3)
    assert (read_image(tmp_path / "a.png", 16, 16) == 255).all()
    assert (read_image(tmp_path / "d.png", 16, 16) == 255).all()


def test_decoding_streams_instead_of_loading_the_clip(tmp_path):
    n, h, w = 240, 240, 320
    frames = np.repeat(moving_square(n, 60, 80), 4, 1).repeat(4, 2)[:, :h, :w]
    p = write_clip(tmp_path / "long.mp4", frames, codec="libx264")
    whole_clip = n * h * w * 3
    tracemalloc.start()
    out, _ = read_video(p, times=4, height=24, width=32)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert out.shape == (4, 24, 32, 3)
    assert peak < whole_clip / 10, f"peak {peak} bytes for a {whole_clip}-byte clip"


def test_pick_indices_spread_evenly_with_both_ends():
    assert pick_indices(100, 5).tolist() == [0, 25, 50, 74, 99]
    assert pick_indices(3, 5).tolist() == [0, 0, 1, 2, 2]


def test_shared_cell_check_warns_only_when_first_frames_differ():
    a = moving_square(1)[0]
    assert check_shared_cell(a, a)[1] is None
    with pytest.warns(UserWarning, match="first frames"):
        _, msg = check_shared_cell(a, 255 - a)
    assert msg


def test_load_inputs_reads_row0_and_col0(tmp_path):
    row = moving_square(12)
    col = moving_square(12)[:, :, ::-1]
    col[0] = row[0]
    a = write_clip(tmp_path / "fixed.mp4", row)
    b = write_clip(tmp_path / "freeze.mp4", col)
    got = load_inputs(a, b, views=4, times=6, height=24, width=32)
    assert got["row0"].shape == (6, 24, 32, 3) and got["col0"].shape == (4, 24, 32, 3)
    assert got["warning"] is None and got["shared_cell_psnr"] > 25


# --- bad input: one clear InputError each --------------------------------------------------

def _put(path, data: bytes):
    path.write_bytes(data)
    return path


def _truncated(tmp_path):
    p = write_clip(tmp_path / "full.mp4", moving_square(30), codec="libx264")
    data = p.read_bytes()
    q = tmp_path / "truncated.mp4"
    q.write_bytes(data[: len(data) // 2])
    return q


def _faststart_truncated(tmp_path):
    p = tmp_path / "fs.mp4"
    write_clip(p, moving_square(60), codec="libx264", output_params=["-movflags", "+faststart"])
    data = p.read_bytes()
    q = tmp_path / "fs_truncated.mp4"
    q.write_bytes(data[: len(data) // 3])
    return q


BAD_VIDEOS = {
    "missing file": (lambda d: d / "nope.mp4", "does not exist"),
    "empty file": (lambda d: _put(d / "empty.mp4", b""), "empty"),
    "text file named .mp4": (lambda d: _put(d / "t.mp4", b"hello, not a video\n" * 20), "could not be opened"),
    "truncated mp4": (_truncated, "could not be opened|truncated"),
    "truncated faststart mp4": (_faststart_truncated, "truncated"),
    "one frame": (lambda d: write_clip(d / "one.mkv", moving_square(1), codec="ffv1"), "at least 2"),
    "1x1 video": (lambda d: write_clip(d / "px.mkv", np.zeros((5, 1, 1, 3), np.uint8), codec="ffv1"),
                  "at least"),
    "folder": (lambda d: (d / "dir.mp4").mkdir() or d / "dir.mp4", "folder"),
    "wrong type": (lambda d: _put(d / "x.txt", b"x"), "unsupported type"),
}


@pytest.mark.parametrize("case", list(BAD_VIDEOS))
def test_bad_video_gives_one_clear_error(tmp_path, case):
    make, pattern = BAD_VIDEOS[case]
    path = make(tmp_path)
    with pytest.raises(InputError, match=pattern) as err:
        read_video(path, times=4, height=32, width=32)
    assert "\n" not in str(err.value)


def test_huge_image_is_refused_before_decoding(tmp_path):
    p = tmp_path / "huge.png"
    Image.new("1", (10_000, 10_000)).save(p)
    tracemalloc.start()
    with pytest.raises(InputError, match="10000x10000"):
        read_image(p, 32, 32)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 50_000_000


def test_corrupt_image_is_refused(tmp_path):
    p = tmp_path / "bad.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(InputError, match="could not be decoded"):
        read_image(p, 32, 32)


def test_seeking_picks_the_same_frames_as_decoding_everything(tmp_path, monkeypatch):
    import core.video as video

    p = write_clip(tmp_path / "seek.mp4", moving_square(90), codec="libx264")
    monkeypatch.setattr(video, "SEEK_GAP", 5)  # 90 frames / 6 picks > 5: the seeking path
    seeked, _ = read_video(p, times=6, height=24, width=32)
    monkeypatch.setattr(video, "SEEK_GAP", 10**9)  # never seek: decode every frame
    decoded, _ = read_video(p, times=6, height=24, width=32)
    assert np.array_equal(seeked, decoded)
