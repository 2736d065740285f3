"""Conditioning on known cells and the per-sample context flag: new weights start as the identity,
unknown cells never leak, and single rows / columns (video pretraining) run in every mode."""

from __future__ import annotations

import pytest
import torch

from core.model.config import CONTEXT_DYNAMIC, CONTEXT_FREEZE, CONTEXT_GRID, preset
from core.model.testing import perturb_new_layers
from core.model.transformer import FourDTransformer

MODES = ("soft", "hard", "sequential", "fused")


def make(trained: bool) -> FourDTransformer:
    torch.manual_seed(0)
    model = FourDTransformer.from_config(preset("tiny")).eval()
    if trained:
        perturb_new_layers(model, scale=0.2)
    return model


def batch(V, T, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, V, T, 3, 16, 16, generator=g)
    cond = torch.randn(B, V, T, 3, 16, 16, generator=g)
    return x, cond, torch.rand(B, generator=g), torch.randn(B, 5, 16, generator=g)


def test_new_input_weights_start_at_zero_so_known_cells_only_replace_the_input():
    model = make(trained=False)
    x, cond, sigma, text = batch(2, 3)
    known = torch.zeros(2, 2, 3, dtype=torch.bool)
    known[:, 0, :] = True
    with torch.no_grad():
        ours = model(x, sigma, text, cond, known, mode="soft")
        # Untrained, conditioning = the backbone seeing the clean values in the known cells.
        replaced = torch.where(known[..., None, None, None], cond, x)
        plain = model(replaced, sigma, text, mode="soft")
    assert torch.equal(ours, plain)
    assert (model.layers.cond_embedding.weight == 0).all() and (model.layers.context_embedding.weight == 0).all()


@pytest.mark.parametrize("mode", MODES)
def test_unknown_cells_of_cond_do_not_leak(mode):
    model = make(trained=True)
    x, cond, sigma, text = batch(2, 3)
    known = torch.zeros(2, 2, 3, dtype=torch.bool)
    known[:, :, 0] = True
    other = cond.clone()
    other[:, :, 1:] = torch.randn_like(other[:, :, 1:])  # change only unknown cells
    with torch.no_grad():
        a = model(x, sigma, text, cond, known, mode=mode)
        b = model(x, sigma, text, other, known, mode=mode)
        c = model(x, sigma, text, cond * 0.5, known, mode=mode)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-4  # while the known cells' values do matter


@pytest.mark.parametrize("mode", MODES)
def test_single_rows_and_columns_run_with_a_per_sample_context_flag(mode):
    model = make(trained=False)
    row, _, sigma, text = batch(1, 3)  # a dynamic video: one view, three times
    col, _, _, _ = batch(3, 1)  # a freeze-time video: three views, one time
    grid_flag = torch.tensor([CONTEXT_GRID, CONTEXT_GRID])
    with torch.no_grad():
        for x, flag in ((row, CONTEXT_DYNAMIC), (col, CONTEXT_FREEZE)):
            flags = torch.tensor([flag, CONTEXT_GRID])
            a = model(x, sigma, text, mode=mode, context=flags)
            assert a.shape == x.shape and torch.isfinite(a).all()
            assert torch.equal(a, model(x, sigma, text, mode=mode, context=grid_flag))  # zero-initialised
    perturb_new_layers(model, scale=0.2)
    with torch.no_grad():
        a = model(row, sigma, text, mode=mode, context=torch.tensor([CONTEXT_DYNAMIC, CONTEXT_GRID]))
        b = model(row, sigma, text, mode=mode, context=grid_flag)
    assert (a[0] - b[0]).abs().max() > 1e-4  # the flag acts on its own sample
    assert torch.equal(a[1], b[1])


def test_gradients_reach_backbone_and_new_layers():
    model = make(trained=True).train()
    x, cond, sigma, text = batch(2, 3)
    known = torch.zeros(2, 2, 3, dtype=torch.bool)
    known[:, 0, 0] = True
    for mode in MODES:
        model.zero_grad()
        model(x, sigma, text, cond, known, mode=mode).square().mean().backward()
        groups = model.parameter_groups()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in groups["backbone"]), mode
        if mode in ("soft", "hard"):
            sync = model.layers.soft_sync if mode == "soft" else model.layers.hard_sync
            assert sync[0].modulation.weight.grad.abs().sum() > 0, mode
        assert model.layers.cond_embedding.weight.grad.abs().sum() > 0, mode
