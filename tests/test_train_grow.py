"""Growing a model while resuming it: ``launch.py train --resume MODEL --layers N`` deepens a model
folder (new blocks start as the identity), trains them, keeps the history, and saves a folder of
the new depth; it refuses to shrink or to grow an exact training state."""

import json

import pytest
import torch

from core.errors import InputError
from core.model.pipeline import FourDModel
from core.train.loop import train
from tests.test_train_anchor import ROOT, _cfg, _training

torch.set_num_threads(1)


def test_resume_with_more_layers_grows_trains_and_saves_the_deeper_model(tmp_path):
    shallow = tmp_path / "shallow"
    train(_cfg(shallow), log=lambda s: None)
    assert FourDModel.from_pretrained(shallow / "model").transformer.num_layers == 2  # the tiny preset
    deep = tmp_path / "deep"
    lines = []
    train(_cfg(deep, resume=str(shallow / "model"), layers=3, max_steps=2, reference_inputs=None,
               residual=None, anchor_input=None), log=lines.append)
    assert any("widened with layers 2->3" in s for s in lines)
    m = FourDModel.from_pretrained(deep / "model")
    assert m.transformer.num_layers == 3 and m.config.backbone["num_layers"] == 3
    assert json.loads((deep / "model" / "fourd_layers" / "config.json").read_text())["num_layers"] == 3
    new = m.transformer.backbone.blocks[2]  # 2 -> 3 puts the new block after the last trained one
    assert (new.ffn.net[-1].weight != 0).any()  # it trained away from zero
    rec = _training(deep / "model")
    assert rec["step"] == 3 and len(rec["sessions"]) == 2
    assert rec["widened"] == [{"step": 1, "added": "layers 2->3"}]
    # the training folder resumes exactly at its depth; growing it again needs its model folder
    with pytest.raises(InputError, match="not an exact training state"):
        train(_cfg(deep, resume=str(deep), layers=4, reference_inputs=None, residual=None, anchor_input=None),
              log=lambda s: None)
    with pytest.raises(InputError, match="not remove them"):
        train(_cfg(tmp_path / "less", resume=str(deep / "model"), layers=2, reference_inputs=None,
                   residual=None, anchor_input=None), log=lambda s: None)


def test_fresh_start_takes_its_depth_from_layers(tmp_path):
    train(_cfg(tmp_path / "f", layers=3), log=lambda s: None)
    assert FourDModel.from_pretrained(tmp_path / "f" / "model").transformer.num_layers == 3


def test_resume_decision_grows_shallower_default_weights(tmp_path):
    import dataclasses

    from core.model.config import preset
    from core.train.checkpoint import resume_flags, same_architecture

    base = preset("default")
    depth = base.backbone["num_layers"]
    shallow_cfg = dataclasses.replace(base, backbone={**base.backbone, "num_layers": depth - 2})
    shallow = FourDModel.from_config(shallow_cfg).save_pretrained(tmp_path / "shallow")
    assert resume_flags(shallow, "default") == ["--layers", str(depth)] and same_architecture(shallow, "default")
    both = FourDModel.from_config(dataclasses.replace(shallow_cfg, anchor_input=False)).save_pretrained(tmp_path / "b")
    assert resume_flags(both, "default") == ["--anchor-input", "on", "--layers", str(depth)]
    deeper_cfg = dataclasses.replace(base, backbone={**base.backbone, "num_layers": depth + 1})
    deeper = FourDModel.from_config(deeper_cfg).save_pretrained(tmp_path / "deeper")
    assert resume_flags(deeper, "default") is None  # a resume never removes blocks
    # ... unless the training asks for that depth ('--layers N'): then it resumes as it is, or grows to it
    assert resume_flags(deeper, "default", layers=depth + 1) == []
    assert resume_flags(shallow, "default", layers=depth + 1) == ["--layers", str(depth + 1)]
    assert resume_flags(deeper, "default", layers=depth) is None
    assert resume_flags(ROOT / "assets" / "model", "default") == []  # the shipped weights have its depth
