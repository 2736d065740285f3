"""The learning curve: PSNR on fixed evaluation scenes against training time, as JSON and PNG.

The JSON is a list of points ``{"step", "train_minutes", "samples", "psnr", "ssim", "stage",
"size"}`` plus the baselines' PSNR on the same scenes, so a curve read alone says whether the
model beats them. The PNG is drawn with PIL (no plotting library on the machines).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

PLOT_W, PLOT_H, MARGIN = 640, 360, 48
COLORS = {"model": (40, 110, 220), "copy_column0": (220, 120, 30), "copy_row0": (120, 120, 120)}


def load_curve(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        return {"points": [], "baselines": {}}
    with open(path) as fh:
        return json.load(fh)


def save_curve(path: str | os.PathLike, curve: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w") as fh:
        json.dump(curve, fh, indent=1)
    os.replace(tmp, path)


def save_png(path: str | os.PathLike, image: np.ndarray) -> bool:
    """Write uint8 [H, W, 3] as PNG atomically with Pillow (a diffusers dependency, so present on
    the GPU machine, which lacks imageio), else imageio; False if neither can."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial.png")
    try:
        from PIL import Image

        Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(tmp, format="PNG")
    except ImportError:
        try:
            from ..export import write_png

            write_png(path, image)
            return True
        except ImportError:
            return False
    os.replace(tmp, path)
    return True


def draw_curve(curve: dict) -> np.ndarray:
    """uint8 [H, W, 3]: model PSNR (blue) over training minutes; baselines as flat lines."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (PLOT_W, PLOT_H), (255, 255, 255))
    d = ImageDraw.Draw(img)
    pts = [(p["train_minutes"], p["psnr"]) for p in curve.get("points", []) if p.get("psnr") is not None]
    base = {k: v for k, v in curve.get("baselines", {}).items() if v is not None}
    ys = [y for _, y in pts] + list(base.values())
    if not ys:
        d.text((MARGIN, PLOT_H // 2), "no points yet", fill=(0, 0, 0))
        return np.asarray(img)
    y0, y1 = np.floor(min(ys) - 1), np.ceil(max(ys) + 1)
    x1 = max([x for x, _ in pts] + [1.0])
    x0 = 0.0

    def to_px(x, y):
        px = MARGIN + (x - x0) / (x1 - x0) * (PLOT_W - 2 * MARGIN)
        py = PLOT_H - MARGIN - (y - y0) / (y1 - y0) * (PLOT_H - 2 * MARGIN)
        return px, py

    d.rectangle([MARGIN, MARGIN, PLOT_W - MARGIN, PLOT_H - MARGIN], outline=(0, 0, 0))
    for k in range(5):
        y = y0 + (y1 - y0) * k / 4
        _, py = to_px(0, y)
        d.line([MARGIN - 4, py, MARGIN, py], fill=(0, 0, 0))
        d.text((4, py - 6), f"{y:.1f}", fill=(0, 0, 0))
        x = x0 + (x1 - x0) * k / 4
        px, _ = to_px(x, y0)
        d.line([px, PLOT_H - MARGIN, px, PLOT_H - MARGIN + 4], fill=(0, 0, 0))
        d.text((px - 8, PLOT_H - MARGIN + 8), f"{x:.0f}" if x1 >= 10 else f"{x:.2g}", fill=(0, 0, 0))
    d.text((PLOT_W // 2 - 60, PLOT_H - 18), "training minutes", fill=(0, 0, 0))
    d.text((MARGIN, 8), "PSNR (dB) on unknown cells, evaluation scenes", fill=(0, 0, 0))
    legend = []  # one line above the plot box, so it never covers the curve
    for name, y in base.items():
        _, py = to_px(0, y)
        col = COLORS.get(name, (0, 160, 0))
        d.line([MARGIN, py, PLOT_W - MARGIN, py], fill=col, width=1)
        legend.append((f"{name} {y:.1f}", col))
    if pts:
        xy = [to_px(x, y) for x, y in pts]
        if len(xy) > 1:
            d.line(xy, fill=COLORS["model"], width=2)
        for px, py in xy:
            d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=COLORS["model"])
        legend.append((f"model {pts[-1][1]:.1f}", COLORS["model"]))
    lx = MARGIN
    for text, col in legend:
        d.text((lx, 22), text, fill=col)
        lx += int(d.textlength(text)) + 18
    return np.asarray(img)
