"""Growing a trained model deeper (FourDTransformer.grow_layers): new blocks go in between the
trained ones as the identity (zero output projections, soft sync of weight 0, hard sync of ½·I on
equal streams), so every stream mode predicts the same as before until they train; they then get
gradient and change what the model makes; the deeper model saves and loads."""

from __future__ import annotations

import json

import pytest
import torch

from core.model.pipeline import FourDModel
from tests.test_model_anchor import default_like, step_inputs

torch.set_num_threads(1)
MODES = ("soft", "hard", "sequential", "fused")


def test_grown_model_predicts_the_same_in_every_mode_and_keeps_the_trained_blocks(tmp_path):
    folder = default_like(seed=11, anchor=True).save_pretrained(tmp_path / "shallow")
    shallow = FourDModel.from_pretrained(folder)
    deep = FourDModel.from_pretrained(folder)
    assert deep.transformer.grow_layers(2) == []  # the tiny preset has 2 blocks already
    added = deep.transformer.grow_layers(5)
    assert deep.transformer.num_layers == 5 and len(added) == 3 and 0 not in added
    kept = [i for i in range(5) if i not in added]
    for old, new in zip(range(2), kept):  # trained blocks and their syncs keep their weights, in order
        a, b = shallow.transformer.backbone.blocks[old], deep.transformer.backbone.blocks[new]
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
        assert torch.equal(shallow.transformer.layers.soft_sync[old].weight_v, deep.transformer.layers.soft_sync[new].weight_v)
    for i in added:
        assert (deep.transformer.backbone.blocks[i].ffn.net[-1].weight == 0).all()
    with torch.no_grad():
        for mask in ("row0+col0", "cell0", "none"):
            x, cond, known, text = step_inputs(shallow, mask, seed=2, B=2)
            for mode in MODES:
                a = shallow.transformer(x, torch.tensor([0.6, 0.2]), text, cond, known, mode=mode)
                b = deep.transformer(x, torch.tensor([0.6, 0.2]), text, cond, known, mode=mode)
                assert torch.equal(a, b), (mask, mode)
    # the deeper model saves with its depth and loads back into the same predictions
    deep.config.backbone = {**deep.config.backbone, "num_layers": 5}
    again = FourDModel.from_pretrained(deep.save_pretrained(tmp_path / "deep"))
    assert json.loads((tmp_path / "deep" / "transformer" / "config.json").read_text())["num_layers"] == 5
    assert again.transformer.num_layers == 5 and len(again.transformer.layers.soft_sync) == 5
    x, cond, known, text = step_inputs(shallow, "row0+col0", seed=3)
    with torch.no_grad():
        assert torch.equal(again.transformer(x, torch.tensor([0.4]), text, cond, known),
                           deep.transformer(x, torch.tensor([0.4]), text, cond, known))


def test_new_blocks_train_and_then_change_the_prediction():
    model = default_like(seed=12, anchor=True)
    tr = model.transformer
    added = tr.grow_layers(3)
    tr.train()
    opt = torch.optim.AdamW(tr.parameters(), lr=1e-2)
    x, cond, known, text = step_inputs(model, "row0+col0", seed=4)
    with torch.no_grad():
        before = tr(x, torch.tensor([0.5]), text, cond, known)
    for _ in range(2):  # the zero output projections learn first, then the rest of the block
        opt.zero_grad()
        out = tr(x, torch.tensor([0.5]), text, cond, known, output="x0")
        ((out - cond) ** 2)[~known].mean().backward()
        assert tr.backbone.blocks[added[0]].ffn.net[-1].weight.grad.abs().max() > 0
        opt.step()
    assert tr.backbone.blocks[added[0]].attn1.to_q.weight.grad.abs().max() > 0
    with torch.no_grad():
        assert not torch.allclose(tr(x, torch.tensor([0.5]), text, cond, known), before, atol=1e-4)


def test_a_model_cannot_shrink():
    with pytest.raises(ValueError, match="only grow"):
        default_like(seed=13).transformer.grow_layers(1)
