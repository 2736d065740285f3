"""Checkpoints of a training run: the model folder (what ships) and the exact training state.

A training folder ``OUT`` holds:

    OUT/model/            the EMA weights as a model folder (``FourDModel.save_pretrained``,
                          fp16) plus ``training.json`` (step, samples, minutes, learning curve)
    OUT/state.pt          fp32 raw and EMA weights, optimizer and RNG state (exact resume)
    OUT/log.jsonl         one JSON line per logged step
    OUT/learning_curve.json / .png, OUT/samples/*.png

Every write is atomic: a new ``model/`` is built under a temporary name and swapped in (the old
one is kept as ``model.old`` for the instant of the swap), ``state.pt`` is written to a temporary
file and renamed. Killing the process at any point leaves the last complete checkpoint loadable.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch

TRAINING_JSON = "training.json"


def model_dir_of(path: str | os.PathLike) -> Path | None:
    """The model folder inside a training folder, or the folder itself if it is a model folder."""
    path = Path(path)
    for cand in (path / "model", path / "model.old", path):
        if (cand / "transformer" / "config.json").is_file():
            return cand
    return None


def save_model_folder(model, out: Path, training: dict) -> Path:
    """Write ``model`` (a FourDModel holding the weights to ship) to ``out/model`` atomically."""
    out = Path(out)
    final = out / "model"
    tmp = out / f".model.partial-{uuid.uuid4().hex[:8]}"
    model.save_pretrained(tmp)
    with open(tmp / TRAINING_JSON, "w") as fh:
        json.dump(training, fh, indent=1)
    old = out / "model.old"
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def read_training(model_dir: Path) -> dict:
    p = Path(model_dir) / TRAINING_JSON
    if not p.is_file():
        return {}
    with open(p) as fh:
        return json.load(fh)


def save_state(out: Path, state: dict) -> None:
    out = Path(out)
    tmp = out / f".state.partial-{uuid.uuid4().hex[:8]}.pt"
    torch.save(state, tmp)
    os.replace(tmp, out / "state.pt")


def load_state(out: Path, device) -> dict | None:
    p = Path(out) / "state.pt"
    if not p.is_file():
        return None
    return torch.load(p, map_location=device, weights_only=True)


ARCH_KEYS = ("patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "ffn_dim", "num_layers",
             "text_dim")


def resume_flags(model_dir: str | os.PathLike, preset_name: str, layers: int | None = None) -> list[str] | None:
    """The ``launch.py train`` flags that resume a model folder into the shape of ``preset_name``:
    ``[]`` when it has that shape already (backbone sizes and the new layers' flags),
    ``["--anchor-input", "on"]`` when it has it but for the anchor input, which a resume adds by
    widening (zero new channels; ``loop.load_model``), likewise ``["--warp-input", "on"]`` for the
    warp input, ``["--layers", "N"]`` (possibly with the
    anchor flags) when it has fewer blocks than the preset's N, which a resume adds as identity
    blocks (``FourDTransformer.grow_layers``), None when its weights cannot load into it (other
    sizes or flags, more blocks or an anchor the preset lacks, no readable configs). ``layers``:
    the depth the training asks for (``--layers N``) in place of the preset's."""
    import dataclasses

    from ..model.config import preset

    folder = Path(model_dir)
    try:
        bb = json.loads((folder / "transformer" / "config.json").read_text())
        flags = json.loads((folder / "fourd_layers" / "config.json").read_text())
    except (OSError, ValueError):
        return None
    cfg = preset(preset_name)
    want = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.backbone.items() if k in ARCH_KEYS}
    if layers is not None:
        want["num_layers"] = int(layers)
    have = {k: bb.get(k) for k in want}
    fields = {f.name for f in dataclasses.fields(cfg)}
    flags_same = all(bool(flags.get(k, False)) == bool(getattr(cfg, k))
                     for k in ("reference_inputs", "residual") if k in fields)
    grow = []
    if isinstance(have.get("num_layers"), int) and isinstance(want.get("num_layers"), int) \
            and have["num_layers"] < want["num_layers"]:
        grow = ["--layers", str(want["num_layers"])]
        have["num_layers"] = want["num_layers"]
    if have != want or not flags_same:
        return None
    anchor_have, anchor_want = bool(flags.get("anchor_input", False)), bool(getattr(cfg, "anchor_input", False))
    if anchor_have and not anchor_want:
        return None
    out = ["--anchor-input", "on"] if anchor_want and not anchor_have else []
    # the warp input: a model without it resumes into a preset with it ('--warp-input on' adds it);
    # one with it keeps it whatever the preset says (its saved config is what loads)
    if bool(getattr(cfg, "warp_input", False)) and not bool(flags.get("warp_input", False)):
        out += ["--warp-input", "on"]
    return out + grow


def same_architecture(model_dir: str | os.PathLike, preset_name: str) -> bool:
    """Whether a model folder's weights resume into the shape a fresh model of ``preset_name``
    would have: the same backbone sizes and new-layer flags, or the same but for the anchor
    input or fewer blocks, which the resume adds (``resume_flags`` says with which flags); a resume across other
    architectures cannot load the weights."""
    return resume_flags(model_dir, preset_name) is not None
