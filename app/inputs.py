"""The studio's inputs: checking uploads with the engine's own readers (so the page says exactly
what the command line would), the first-frame comparison of the two videos, the settings check
that runs before a job is queued, and the examples found in ``assets/examples``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.grid import check_grid_shape, parse_size
from core.video import IMAGE_EXTS, VIDEO_EXTS, check_shared_cell, read_image, read_video

PREVIEW_H = 180  # height of the first-frame comparison panels
MODES = ("videos", "image", "prompt")
MAX_STEPS = 1000


def _by_name(path: str, read, *args, **kw):
    """``read(path, ...)``, its InputError naming the upload by its file name: the page's files
    sit in the server's temporary folders, whose paths say nothing to the person who uploaded them."""
    try:
        return read(path, *args, **kw)
    except InputError as e:
        raise InputError(str(e).replace(str(Path(path)), Path(path).name)) from None


@dataclass
class Settings:
    """The grid settings of the page, checked."""

    views: int
    times: int
    height: int
    width: int
    steps: int
    seed: int
    mode: str
    guidance: float
    shift: float | None = None  # the noise schedule's time shift (None: the model's own)
    dense: bool = True  # a grid smaller than the model's sampled from a denser one (GenerateRequest.dense)


def _as_int(value, name: str) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a whole number, got {value!r}") from None
    if not np.isfinite(f) or f != int(f):
        raise InputError(f"{name} must be a whole number, got {value!r}")
    return int(f)


def check_settings(views, times, size, steps, seed, mode, guidance, shift=0, dense=True) -> Settings:
    """Raise InputError (one line) unless the settings describe a grid we can make."""
    V, T = _as_int(views, "views"), _as_int(times, "times")
    H, W = parse_size(str(size or ""))
    check_grid_shape(V, T, H, W)
    n = _as_int(steps, "steps")
    if not 1 <= n <= MAX_STEPS:
        raise InputError(f"steps must be between 1 and {MAX_STEPS}, got {n}")
    s = _as_int(seed, "seed")
    if not 0 <= s < 2**32:
        raise InputError(f"seed must be between 0 and {2**32 - 1}, got {s}")
    if mode not in ("soft", "hard", "sequential", "fused"):
        raise InputError(f"stream mode must be soft, hard, sequential or fused, got {mode!r}")
    try:
        g = float(guidance)
    except (TypeError, ValueError):
        raise InputError(f"guidance must be a number, got {guidance!r}") from None
    if not 0.0 <= g <= 30.0:
        raise InputError(f"guidance must be between 0 and 30, got {g}")
    from core.sampler import MAX_SHIFT  # the engine's bound (torch is loaded by the studio already)

    try:  # 0 (or empty) asks for the model's own shift
        sh = float(shift) if shift not in (None, "") else 0.0
    except (TypeError, ValueError):
        raise InputError(f"noise shift must be a number, got {shift!r}") from None
    if not (np.isfinite(sh) and 0.0 <= sh <= MAX_SHIFT):
        raise InputError(f"noise shift must be between 0 and {MAX_SHIFT:g} (0: the model's own), got {shift}")
    return Settings(V, T, H, W, n, s, mode, g, sh or None, bool(dense))


def _upscale(frame: np.ndarray, height: int) -> np.ndarray:
    import cv2

    h, w = frame.shape[:2]
    return cv2.resize(frame, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_CUBIC)


def _label(img: np.ndarray, text: str) -> np.ndarray:
    """``img`` with a caption strip underneath."""
    import cv2

    strip = np.full((24, img.shape[1], 3), 28, np.uint8)
    cv2.putText(strip, text, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (225, 225, 225), 1, cv2.LINE_AA)
    return np.concatenate([img, strip], axis=0)


def first_frame(path: str, what: str, height: int, width: int) -> np.ndarray:
    """Check a clip the way generation will read it and return its first frame at H x W.

    Reading two frames spread over the clip makes the reader walk to its end, so a truncated file,
    a clip of one frame or a picture of 1 x 1 fails here, with the reader's own message.
    """
    frames, _ = _by_name(path, read_video, 2, height, width, what=what)
    return frames[0]


def compare_first_frames(fixed: str | None, freeze: str | None, height: int = 72, width: int = 128):
    """The comparison panel of the two inputs: (image or None, note, kind) for the page.

    kind is ok | warn | error | info. Both clips are checked even when only one is given.
    """
    panels, notes, kind = [], [], "ok"
    frames = {}
    for path, what in ((fixed, "fixed-view video"), (freeze, "freeze-time video")):
        if not path:
            continue
        try:
            frames[what] = first_frame(path, what, height, width)
        except InputError as e:
            notes.append(str(e))
            kind = "error"
    for what, f in frames.items():
        panels.append(_label(_upscale(f, PREVIEW_H), what.replace(" video", "") + ", first frame"))
    if len(frames) == 2:
        a, b = frames["fixed-view video"], frames["freeze-time video"]
        psnr, warning = check_shared_cell(a, b)
        diff = np.clip(np.abs(a.astype(np.int16) - b.astype(np.int16)) * 3, 0, 255).astype(np.uint8)
        panels.append(_label(_upscale(diff, PREVIEW_H), "difference x3"))
        if warning:
            notes.append(warning[0].upper() + warning[1:] + ".")
            kind = "warn" if kind == "ok" else kind
        else:
            ps = "identical" if np.isinf(psnr) else f"PSNR {psnr:.1f} dB"
            notes.append(f"The first frames agree ({ps}): they are the shared cell (view 0, time 0).")
    elif kind == "ok":
        kind = "info"
        missing = "freeze-time" if fixed else "fixed-view"
        notes.append(f"Now add the {missing} video." if (fixed or freeze) else
                     "Upload a fixed-view video (camera still) and a freeze-time video (world frozen, camera moving).")
    image = None
    if panels:
        gap = np.full((panels[0].shape[0], 6, 3), 16, np.uint8)
        parts = []
        for p in panels:
            parts += [p, gap]
        image = np.concatenate(parts[:-1], axis=1)
    return image, " ".join(notes), kind


def check_image_input(path: str | None, height: int = 72, width: int = 128) -> np.ndarray:
    """The start image as the model will see it (H x W), or InputError."""
    if not path:
        raise InputError("add a start image (png, jpg, webp or bmp)")
    return _by_name(path, read_image, height, width, what="start image")


def check_sources(mode: str, fixed: str | None, freeze: str | None, image: str | None, prompt: str,
                  height: int, width: int) -> None:
    """Raise InputError unless the chosen input tab has what generation needs."""
    if mode == "videos":
        if not fixed or not freeze:
            raise InputError("add both videos: a fixed-view video (row 0) and a freeze-time video (column 0)")
        first_frame(fixed, "fixed-view video", height, width)
        first_frame(freeze, "freeze-time video", height, width)
    elif mode == "image":
        check_image_input(image, height, width)
    elif mode == "prompt":
        if not (prompt or "").strip():
            raise InputError("type a prompt describing the scene, e.g. 'a red ball bouncing on a checkered floor'")
    else:
        raise InputError(f"unknown input mode {mode!r}; allowed: {', '.join(MODES)}")


@dataclass
class Example:
    name: str
    fixed_view: str | None = None
    freeze_time: str | None = None
    image: str | None = None
    prompt: str = ""


def _role(path: Path) -> str | None:
    n = path.stem.lower().replace("-", "_")
    if path.suffix.lower() in VIDEO_EXTS:
        if "fixed" in n:
            return "fixed_view"
        if "freeze" in n:
            return "freeze_time"
    if path.suffix.lower() in IMAGE_EXTS and "thumb" not in n:
        return "image"
    return None


def find_examples(folder: str | Path | None) -> list[Example]:
    """Examples under ``folder``: each sub-folder (or the folder itself) holding a ``*fixed*``
    video and a ``*freeze*`` video, or an image, optionally with ``prompt.txt``/``caption.txt``.

    Loose files pair up by name: ``walk_fixed_view.mp4`` + ``walk_freeze_time.mp4``.
    """
    if not folder or not Path(folder).is_dir():
        return []
    folder = Path(folder)
    groups: dict[tuple[Path, str], Example] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or len(path.relative_to(folder).parts) > 3 or path.name.startswith("."):
            continue
        role = _role(path)
        if role is None:
            continue
        if path.parent == folder:  # loose files: the name without the role words is the example
            stem = path.stem.lower().replace("-", "_")
            for word in ("fixed_view", "freeze_time", "fixed", "freeze", "image"):
                stem = stem.replace(word, "")
            key = (path.parent, stem.strip("_ .") or path.stem)
        else:
            key = (path.parent, "")
        ex = groups.setdefault(key, Example(name=key[1] or path.parent.name))
        if getattr(ex, role) is None:
            setattr(ex, role, str(path.resolve()))
    out = []
    for (parent, _), ex in sorted(groups.items(), key=lambda kv: kv[1].name):
        for txt in ("prompt.txt", "caption.txt"):
            if parent != folder and (parent / txt).is_file():
                ex.prompt = (parent / txt).read_text().strip()[:500]
                break
        if (ex.fixed_view and ex.freeze_time) or ex.image:
            if ex.fixed_view and ex.freeze_time:
                ex.image = None  # a video pair is the example; a stray still would be confusing
            out.append(ex)
    return out
