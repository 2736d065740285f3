"""Resuming into the anchor input: ``launch.py train --resume MODEL --anchor-input on`` widens a
model folder without it, trains, keeps the training history and saves a folder with it that loads
back and resumes exactly; what it refuses; the resume decision behind scripts/gpu_train.sh."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.errors import InputError
from core.model.config import preset
from core.model.pipeline import FourDModel
from core.train.checkpoint import resume_flags, same_architecture
from core.train.config import TrainConfig
from core.train.loop import train

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def _cfg(out, **kw):
    base = dict(out=str(out), preset="tiny", views=2, times=3, minutes=10, max_steps=1, batch=2,
                schedule="3@16x16:1", eval_scenes=1, eval_steps=1, eval_size="16x16", eval_every_min=10,
                save_every_min=10, log_every=1, warmup_steps=1, device="cpu",
                reference_inputs=True, residual=True, anchor_input=False)
    base.update(kw)
    return TrainConfig(**base)


def _training(folder: Path) -> dict:
    return json.loads((folder / "training.json").read_text())


def test_train_resumes_a_folder_without_the_anchor_and_saves_one_with_it(tmp_path):
    narrow = tmp_path / "narrow"
    train(_cfg(narrow), log=lambda s: None)
    assert json.loads((narrow / "model" / "fourd_layers" / "config.json").read_text())["anchor_input"] is False
    wide = tmp_path / "wide"
    cmd = [sys.executable, "launch.py", "train", "--out", str(wide), "--resume", str(narrow / "model"),
           "--anchor-input", "on", "--stage", "3@16x16:1", "--views", "2", "--times", "3", "--batch", "2",
           "--max-steps", "2", "--warmup", "1", "--device", "cpu", "--eval-scenes", "1", "--eval-steps", "1",
           "--eval-size", "16x16", "--log-every", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "widened with anchor_input" in res.stdout
    m = FourDModel.from_pretrained(wide / "model")
    assert m.transformer.anchor_input and m.config.anchor_input
    assert (m.transformer.layers.ref_embedding.weight[:, 8:] != 0).any()  # the new channels trained
    rec = _training(wide / "model")
    assert rec["step"] == 3 and len(rec["sessions"]) == 2  # the history goes on
    assert rec["widened"] == [{"step": 1, "added": "anchor_input"}]
    assert rec["sessions"][-1]["widened"] == ["anchor_input"]
    # an exact resume of the widened run keeps the anchor without being told
    s = train(_cfg(wide, resume=str(wide), max_steps=1, reference_inputs=None, residual=None, anchor_input=None),
              log=lambda s: None)
    assert s["step"] == 4 and FourDModel.from_pretrained(wide / "model").transformer.anchor_input
    assert _training(wide / "model")["widened"] == rec["widened"]


def test_widening_refuses_an_exact_state_and_a_model_without_reference_inputs(tmp_path):
    narrow = tmp_path / "narrow"
    train(_cfg(narrow), log=lambda s: None)
    with pytest.raises(InputError, match="exact training state"):
        train(_cfg(narrow, resume=str(narrow), anchor_input=True), log=lambda s: None)
    plain = FourDModel.from_preset("tiny").save_pretrained(tmp_path / "plain")
    with pytest.raises(InputError, match="no reference inputs"):
        train(_cfg(tmp_path / "o1", resume=str(plain), anchor_input=True), log=lambda s: None)
    wide = FourDModel.from_config(dataclasses.replace(preset("tiny"), reference_inputs=True, residual=True,
                                                      anchor_input=True)).save_pretrained(tmp_path / "w")
    with pytest.raises(InputError, match="anchor-input off"):
        train(_cfg(tmp_path / "o2", resume=str(wide), anchor_input=False), log=lambda s: None)


def test_fresh_start_follows_the_preset_and_the_flags():
    from core.train.loop import load_model

    m = load_model(_cfg("unused", anchor_input=True))[0]
    assert m.transformer.anchor_input and m.config.anchor_input
    m = load_model(_cfg("unused", preset="tiny", reference_inputs=None, residual=None, anchor_input=None))[0]
    assert not m.transformer.anchor_input
    with pytest.raises(InputError, match="reference-inputs on"):
        load_model(_cfg("unused", reference_inputs=False, anchor_input=True))


def test_resume_decision_widens_default_weights_without_the_anchor(tmp_path):
    narrow_cfg = dataclasses.replace(preset("default"), anchor_input=False)
    narrow = FourDModel.from_config(narrow_cfg).save_pretrained(tmp_path / "narrow")
    wide = FourDModel.from_preset("default").save_pretrained(tmp_path / "wide")
    assert resume_flags(narrow, "default") == ["--anchor-input", "on"] and same_architecture(narrow, "default")
    assert resume_flags(wide, "default") == [] and same_architecture(wide, "default")
    tiny = FourDModel.from_preset("tiny").save_pretrained(tmp_path / "tiny")
    assert resume_flags(tiny, "default") is None and resume_flags(wide, "tiny") is None
    # the shipped weights resume into the default preset (with or without the anchor yet)
    assert same_architecture(ROOT / "assets" / "model", "default")
