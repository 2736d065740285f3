"""The anchor input (core/model/reference.py, FourDLayers.with_anchor_input): every cell also sees
the clean (0, 0) frame and its mask; a model without it widens into it exactly (zero channels,
bit-identical outputs) and the new channels then train; folders round-trip; image-to-4D and
text-to-4D still sample."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from core.grid import known_mask
from core.model.config import FourDConfig, preset
from core.model.pipeline import FourDModel
from core.model.reference import reference_inputs
from core.model.testing import TEST_WORDS, perturb_new_layers
from core.model.transformer import FourDLayers
from core.sampler import SampleSettings, sample_grid

torch.set_num_threads(1)
MODES = ("soft", "hard", "sequential", "fused")
MASKS = ("row0+col0", "cell0", "col0", "none")


def default_like(seed: int = 0, anchor: bool = False) -> FourDModel:
    """The tiny preset with the default model's inductive biases and "trained" weights: new layers
    perturbed and a nonzero residual head (a zero head would hide every input)."""
    cfg = dataclasses.replace(preset("tiny"), reference_inputs=True, residual=True, anchor_input=anchor)
    model = FourDModel.from_config(cfg, words=TEST_WORDS, seed=seed)
    perturb_new_layers(model.transformer, seed=seed + 1)
    torch.nn.init.normal_(model.transformer.backbone.proj_out.weight, std=0.2)
    return model


def step_inputs(model, mask: str, seed: int = 0, B: int = 1):
    g = torch.Generator().manual_seed(seed)
    V, T, C, h, w = model.latent_shape(2, 3, 16, 16)
    x = torch.randn(B, V, T, C, h, w, generator=g)
    cond = torch.randn(B, V, T, C, h, w, generator=g)
    known = torch.from_numpy(known_mask(V, T, mask))[None].expand(B, -1, -1).clone()
    return x, cond, known, model.text.encode(["a red ball rolls"] * B)


def test_anchor_channels_hold_the_cell00_frame_and_mask_where_known_and_zeros_where_not():
    cond = torch.randn(1, 3, 4, 2, 2, 2)
    G = 2 + 1  # frame channels + mask channel of one group
    for mask in ("row0+col0", "cell0", "row0", "col0"):  # (0, 0) known
        known = torch.from_numpy(known_mask(3, 4, mask))[None, ..., None]  # [1, V, T, 1]
        r = reference_inputs(cond, known, anchor=True)
        assert r.shape == (1, 3, 4, 3 * G, 2, 2)
        assert torch.equal(r[..., :2 * G, :, :], reference_inputs(cond, known))  # (v, 0), (0, t) first
        for v in range(3):
            for t in range(4):
                assert torch.equal(r[0, v, t, 2 * G:2 * G + 2], cond[0, 0, 0]), (mask, v, t)
                assert (r[0, v, t, 2 * G + 2] == 1).all()
    # (0, 0) unknown: the anchor group is all zeros though other cells are known
    known = torch.zeros(1, 3, 4, 1, dtype=torch.bool)
    known[0, 1, :] = known[0, 2, 3] = True
    r = reference_inputs(cond, known, anchor=True)
    assert (r[..., 2 * G:, :, :] == 0).all() and (r[..., :2 * G, :, :] != 0).any()
    assert (reference_inputs(cond, torch.zeros_like(known), anchor=True) == 0).all()  # text to 4D


def test_widened_model_predicts_bit_identical_velocities_in_every_mode(tmp_path):
    folder = default_like(seed=3).save_pretrained(tmp_path / "narrow")  # saved WITHOUT the anchor
    assert json.loads((folder / "fourd_layers" / "config.json").read_text())["anchor_input"] is False
    narrow = FourDModel.from_pretrained(folder)
    wide = FourDModel.from_pretrained(folder)
    assert wide.transformer.add_anchor_input() and not wide.transformer.add_anchor_input()
    emb = wide.transformer.layers.ref_embedding
    assert emb.weight.shape[1] == 3 * 4 and (emb.weight[:, 8:] == 0).all()
    assert torch.equal(emb.weight[:, :8], narrow.transformer.layers.ref_embedding.weight)
    with torch.no_grad():
        for mask in MASKS:
            x, cond, known, text = step_inputs(narrow, mask, seed=1, B=2)
            for mode in MODES:
                a = narrow.transformer(x, torch.tensor([0.6, 0.2]), text, cond, known, mode=mode)
                b = wide.transformer(x, torch.tensor([0.6, 0.2]), text, cond, known, mode=mode)
                assert torch.equal(a, b), (mask, mode)
    frames = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    kn = torch.from_numpy(known_mask(2, 3, "row0+col0"))
    s = SampleSettings(steps=2, seed=4)
    assert torch.equal(sample_grid(narrow, frames, kn, "", s), sample_grid(wide, frames, kn, "", s))


def test_anchor_weights_get_gradient_and_leave_zero_after_one_optimizer_step():
    model = default_like(seed=5)
    tr = model.transformer
    tr.add_anchor_input()
    tr.train()
    opt = torch.optim.AdamW(tr.parameters(), lr=1e-3)
    x, cond, known, text = step_inputs(model, "row0+col0", seed=2)
    out = tr(x, torch.tensor([0.5]), text, cond, known, output="x0")
    ((out - cond) ** 2)[~known].mean().backward()
    w = tr.layers.ref_embedding.weight
    assert w.grad[:, 8:].abs().max() > 0
    opt.step()
    assert (w[:, 8:] != 0).any()
    # and once trained, the anchor changes what the model makes when (0, 0) is known ...
    with torch.no_grad():
        tr.eval()
        narrow_like = tr(x, torch.tensor([0.5]), text, cond, known)
        w[:, 8:].zero_()
        assert not torch.equal(narrow_like, tr(x, torch.tensor([0.5]), text, cond, known))


def test_anchor_weights_change_nothing_when_cell00_is_unknown():
    model = default_like(seed=6, anchor=True)
    tr = model.transformer
    x, cond, known, text = step_inputs(model, "none", seed=3)
    known[0, 1, 2] = True  # other cells known, (0, 0) not
    with torch.no_grad():
        a = tr(x, torch.tensor([0.7]), text, cond, known)
        tr.layers.ref_embedding.weight[:, 8:].normal_()
        assert torch.equal(a, tr(x, torch.tensor([0.7]), text, cond, known))
        k00 = known.clone()
        k00[0, 0, 0] = True
        b = tr(x, torch.tensor([0.7]), text, cond, k00)
        tr.layers.ref_embedding.weight[:, 8:].zero_()
        assert not torch.equal(b, tr(x, torch.tensor([0.7]), text, cond, k00))


def test_anchored_model_saves_and_loads_with_its_flag(tmp_path):
    m0 = default_like(seed=7)
    m0.transformer.add_anchor_input()
    m0.config.anchor_input = True
    with torch.no_grad():
        m0.transformer.layers.ref_embedding.weight[:, 8:].normal_(std=0.05)
    folder = m0.save_pretrained(tmp_path / "wide")
    assert json.loads((folder / "fourd_layers" / "config.json").read_text())["anchor_input"] is True
    assert json.loads((folder / "fourd.json").read_text())["anchor_input"] is True
    m1 = FourDModel.from_pretrained(folder)
    assert m1.transformer.anchor_input and m1.config.anchor_input
    x, cond, known, text = step_inputs(m0, "row0+col0", seed=4)
    with torch.no_grad():
        for mode in ("soft", "fused"):
            a = m0.transformer(x, torch.tensor([0.5]), text, cond, known, mode=mode)
            b = m1.transformer(x, torch.tensor([0.5]), text, cond, known, mode=mode)
            assert (a - b).abs().max() < 2e-2 * max(1.0, a.abs().max().item()), mode  # fp16 on disk


@pytest.mark.parametrize("mask", ["row0+col0", "cell0", "none"])
def test_anchored_model_samples_grids_image_to_4d_and_text_to_4d(mask):
    model = default_like(seed=8, anchor=True)
    with torch.no_grad():
        model.transformer.layers.ref_embedding.weight[:, 8:].normal_(std=0.05)
    frames = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    known = torch.from_numpy(known_mask(2, 3, mask))
    out = sample_grid(model, frames, known, "a red ball", SampleSettings(steps=2, seed=1))
    assert out.shape == frames.shape and torch.isfinite(out).all()
    assert torch.equal(out[known], frames[known])


def test_anchor_runs_with_the_wan_vae_codec():
    cfg = dataclasses.replace(preset("tiny-vae"), reference_inputs=True, residual=True, anchor_input=True)
    model = FourDModel.from_config(cfg, words=TEST_WORDS, seed=0)
    torch.nn.init.normal_(model.transformer.layers.ref_embedding.weight, std=0.05)
    frames = torch.rand(2, 5, 3, 16, 16) * 2 - 1
    known = torch.from_numpy(known_mask(2, 5, "row0+col0"))
    out = sample_grid(model, frames, known, "", SampleSettings(steps=1, seed=0))
    assert out.shape == frames.shape and torch.isfinite(out).all()


def test_default_preset_has_the_anchor_and_the_anchor_needs_reference_inputs():
    assert preset("default").anchor_input and preset("default").reference_inputs
    assert not FourDConfig().anchor_input  # folders without the key load as before
    with pytest.raises(ValueError, match="reference_inputs"):
        dataclasses.replace(preset("tiny"), anchor_input=True)
    with pytest.raises(ValueError, match="reference_inputs"):
        FourDLayers(dim=24, num_layers=1, in_channels=3, anchor_input=True)
    plain = FourDModel.from_preset("tiny", words=TEST_WORDS)
    with pytest.raises(ValueError, match="reference inputs"):
        plain.transformer.add_anchor_input()
