"""Video and image input: probe, validate, and resample a clip to T frames of H x W, streaming.

Decoding streams frame by frame through OpenCV (FFmpeg backend), keeping only the frames that are
picked, so a ten-minute 4K clip never sits in memory whole. Every failure a user can cause becomes
one ``InputError`` saying what was wrong and what is allowed.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .grid import dense_size

VIDEO_EXTS = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".gif")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_INPUT_SIDE = 8192  # 8K; larger inputs are refused before decoding
MIN_INPUT_SIDE = 8
MAX_INPUT_PIXELS = 64_000_000


def _cv2():
    # FFmpeg's own log ("moov atom not found", ...) would precede our one-line message; it is read
    # at the first capture, so this holds unless the process opened a video before.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    import cv2

    cv2.setNumThreads(max(1, min(4, os.cpu_count() or 1)))
    return cv2


@dataclass
class VideoInfo:
    path: Path
    frames: int  # as the container reports it (may be an estimate; checked while decoding)
    fps: float
    width: int
    height: int


def _check_file(path: str | os.PathLike, exts: tuple[str, ...], what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} {path} does not exist")
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder, not a file")
    if path.suffix.lower() not in exts:
        raise InputError(f"{what} {path} has an unsupported type; allowed: {', '.join(exts)}")
    if path.stat().st_size == 0:
        raise InputError(f"{what} {path} is empty (0 bytes)")
    return path


def _check_size(w: int, h: int, path: Path, what: str) -> None:
    if w <= 0 or h <= 0:
        raise InputError(f"{what} {path} has no picture (size {w}x{h})")
    if min(w, h) < MIN_INPUT_SIDE:
        raise InputError(f"{what} {path} is {w}x{h}; each side must be at least {MIN_INPUT_SIDE} pixels")
    if max(w, h) > MAX_INPUT_SIDE or w * h > MAX_INPUT_PIXELS:
        raise InputError(
            f"{what} {path} is {w}x{h}; the largest allowed is {MAX_INPUT_SIDE} pixels a side "
            f"and {MAX_INPUT_PIXELS // 1_000_000} megapixels"
        )


def probe_video(path: str | os.PathLike, what: str = "video") -> VideoInfo:
    """Open a clip without decoding it whole; raise InputError if it is not a readable video."""
    path = _check_file(path, VIDEO_EXTS, what)
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise InputError(f"{what} {path} could not be opened as a video (corrupt, truncated or not a video)")
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
    finally:
        cap.release()
    _check_size(w, h, path, what)
    if not (0 < fps < 1000):
        fps = 24.0
    return VideoInfo(path, max(n, 0), fps, w, h)


def pick_indices(n_frames: int, count: int) -> np.ndarray:
    """``count`` frame indices spread evenly over ``n_frames`` (first and last included)."""
    if count == 1:
        return np.zeros(1, dtype=np.int64)
    return np.round(np.linspace(0, n_frames - 1, count)).astype(np.int64)


def resize_crop(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale ``frame`` [h, w, 3] to cover H x W, then centre-crop; area filter when shrinking."""
    cv2 = _cv2()
    h, w = frame.shape[:2]
    s = max(height / h, width / w)
    nh, nw = max(height, round(h * s)), max(width, round(w * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    out = cv2.resize(frame, (nw, nh), interpolation=interp)
    y0, x0 = (nh - height) // 2, (nw - width) // 2
    return np.ascontiguousarray(out[y0:y0 + height, x0:x0 + width])


def to_rgb(img: np.ndarray, bgr: bool = True) -> np.ndarray:
    """Grey, grey+alpha, BGR or BGRA (uint8 or uint16) -> uint8 RGB; alpha is composited on white."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = img[..., None]
    c = img.shape[2]
    if c in (2, 4):
        color, alpha = img[..., :-1].astype(np.float32), img[..., -1:].astype(np.float32) / 255.0
        img = np.round(color * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
        c -= 1
    if c == 1:
        return np.repeat(img, 3, axis=2)
    if c != 3:
        raise InputError(f"images must have 1 to 4 channels, got {c}")
    return np.ascontiguousarray(img[..., ::-1] if bgr else img)


def read_video(path: str | os.PathLike, times: int, height: int, width: int,
               what: str = "video", every: int = 1) -> tuple[np.ndarray, float]:
    """Read ``times`` frames spread evenly over the clip, each resized and centre-cropped.

    Returns (frames uint8 [T, H, W, 3], fps of the resampled clip). Streams: only picked frames
    are kept. A clip whose container claims more frames than decode (a truncated file) is refused.
    ``every`` > 1 reads (times - 1) * every + 1 frames instead, of which every ``every``-th is one
    of the ``times`` (the fps stays that of ``times`` frames).
    """
    if times < 1:
        raise InputError(f"times must be at least 1, got {times}")
    info = probe_video(path, what)
    frames = _decode_picked(info, dense_size(times, every), height, width, what)
    duration = info.frames / info.fps if info.frames else times / info.fps
    # Play the resampled clip over about the source's duration, within a watchable range.
    fps = (times - 1) / duration if duration > 0 and times > 1 else info.fps
    return frames, float(min(30.0, max(4.0, fps)))


# Picks further apart than this many frames are reached by seeking (to the previous keyframe, then
# decoding forward) instead of decoding every frame in between.
SEEK_GAP = 150


def _decode_by_seeking(info: VideoInfo, want: np.ndarray, height: int, width: int) -> np.ndarray | None:
    """Frames at ``want`` by seeking; None if the container does not seek frame-accurately."""
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(info.path))
    out = []
    try:
        for idx in want.tolist():
            if not cap.set(cv2.CAP_PROP_POS_FRAMES, idx):
                return None
            if int(cap.get(cv2.CAP_PROP_POS_FRAMES)) != idx:
                return None
            ok, fr = cap.read()
            if not ok or fr is None:
                return None
            out.append(resize_crop(to_rgb(fr), height, width))
    finally:
        cap.release()
    return np.stack(out)


def _decode_picked(info: VideoInfo, times: int, height: int, width: int, what: str) -> np.ndarray:
    cv2 = _cv2()
    if info.frames >= 2 and times > 1 and info.frames / times > SEEK_GAP:
        frames = _decode_by_seeking(info, pick_indices(info.frames, times), height, width)
        if frames is not None:
            return frames
    n_claimed = info.frames
    for attempt in range(2):
        want = pick_indices(n_claimed, times) if n_claimed >= 2 else None
        cap = cv2.VideoCapture(str(info.path))
        picked: dict[int, np.ndarray] = {}
        wanted = None if want is None else set(want.tolist())
        i = 0
        try:
            while True:
                if want is not None and i > want[-1]:
                    break
                if not cap.grab():
                    break
                if wanted is None or i in wanted:
                    ok, fr = cap.retrieve()
                    if not ok or fr is None:
                        break
                    picked[i] = resize_crop(to_rgb(fr), height, width)
                i += 1
        finally:
            cap.release()
        n_decoded = i
        if n_decoded < 2:
            raise InputError(
                f"{what} {info.path} has {n_decoded} readable frame(s); at least 2 are needed "
                "(is the file truncated or a still image?)"
            )
        if want is None:
            # The container gave no count: we kept every frame (small clips only reach here
            # through formats without an index); pick from what decoded.
            idx = pick_indices(n_decoded, times)
            return np.stack([picked[j] for j in idx.tolist()])
        if n_decoded > want[-1]:
            return np.stack([picked[j] for j in want.tolist()])
        # Fewer frames decoded than the header claims.
        if n_decoded < 0.9 * n_claimed - 1:
            raise InputError(
                f"{what} {info.path} is truncated or corrupt: its header says {n_claimed} frames but only "
                f"{n_decoded} decode"
            )
        n_claimed = n_decoded  # off by a few (variable frame rate): pick again from the true count
    raise InputError(f"{what} {info.path} could not be decoded consistently")


def read_image(path: str | os.PathLike, height: int, width: int, what: str = "image") -> np.ndarray:
    """Read one image (png, jpg, webp, bmp; grey, RGBA, 16-bit) as uint8 [H, W, 3]."""
    path = _check_file(path, IMAGE_EXTS, what)
    cv2 = _cv2()
    # Read only the header first so a 10,000 x 10,000 image is refused before it is decoded.
    w, h = _image_size(path)
    if w and h:
        _check_size(w, h, path, what)
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(f"{what} {path} could not be decoded as an image (corrupt or not an image)")
    _check_size(img.shape[1], img.shape[0], path, what)
    return resize_crop(to_rgb(img), height, width)


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header without decoding pixels; (0, 0) if unknown."""
    try:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None  # we check the size ourselves, with a clearer message
        with Image.open(path) as im:
            return im.size
    except Exception:  # not a format PIL knows: fall back to decoding with OpenCV
        return 0, 0


def frame_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 frames of the same size (inf when identical)."""
    d = np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2)
    return float("inf") if d == 0 else float(10 * np.log10(255.0**2 / d))


# Below this PSNR the two clips' first frames are unlikely to show the same moment and view.
SHARED_CELL_MIN_PSNR = 18.0


def check_shared_cell(fixed_view_first: np.ndarray, freeze_time_first: np.ndarray) -> tuple[float, str | None]:
    """Compare the two inputs' first frames (they are the same grid cell (0, 0)).

    Returns (psnr_db, warning or None) and emits the warning through ``warnings``.
    """
    psnr = frame_similarity(fixed_view_first, freeze_time_first)
    msg = None
    if psnr < SHARED_CELL_MIN_PSNR:
        msg = (f"the first frames of the fixed-view and freeze-time videos differ (PSNR {psnr:.1f} dB < "
               f"{SHARED_CELL_MIN_PSNR:.0f} dB); they should show the same moment from the same camera")
        warnings.warn(msg, stacklevel=2)
    return psnr, msg


def load_inputs(fixed_view: str | os.PathLike, freeze_time: str | os.PathLike, views: int, times: int,
                height: int, width: int, every: tuple[int, int] = (1, 1)) -> dict:
    """Read both input clips for a grid: row 0 from ``fixed_view``, column 0 from ``freeze_time``.

    Returns dict(row0 [T,H,W,3], col0 [V,H,W,3], fps, shared_cell_psnr, warning). ``every`` =
    (kv, kt): column 0 and row 0 of the denser grid whose every kv-th view and kt-th time is this
    one's ((V - 1) * kv + 1 views, ``grid.dense_factor``); fps is this grid's.
    """
    row0, fps = read_video(fixed_view, times, height, width, what="fixed-view video", every=every[1])
    col0, _ = read_video(freeze_time, views, height, width, what="freeze-time video", every=every[0])
    psnr, warning = check_shared_cell(row0[0], col0[0])
    return {"row0": row0, "col0": col0, "fps": fps, "shared_cell_psnr": psnr, "warning": warning}
