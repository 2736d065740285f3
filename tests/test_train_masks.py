"""Contracts of the training masks and the rectified-flow loss."""

import pytest
import torch

from core.train.config import parse_schedule
from core.train.flow import add_noise, masked_velocity_loss, sample_sigmas, velocity_target
from core.train.masks import MASK_FAMILIES, grid_mask, parse_families, sample_grid_masks, sample_video_masks
from core.errors import InputError


def test_grid_masks_come_from_the_named_families_with_their_frequencies():
    g = torch.Generator().manual_seed(0)
    masks, names = sample_grid_masks(4000, 8, 8, generator=g)
    assert masks.shape == (4000, 8, 8) and masks.dtype == torch.bool
    for m, n in zip(masks[:200], names[:200]):
        assert torch.equal(m, grid_mask(n, 8, 8))
    for fam, w in MASK_FAMILIES.items():
        share = names.count(fam) / len(names)
        assert share == pytest.approx(w, abs=0.03), fam
    assert max(MASK_FAMILIES, key=lambda f: names.count(f)) == "row0+col0"


def test_grid_mask_families_have_their_shapes():
    assert grid_mask("row0+col0", 3, 4).sum() == 3 + 4 - 1
    assert grid_mask("cell0", 3, 4).sum() == 1 and grid_mask("cell0", 3, 4)[0, 0]
    assert grid_mask("none", 3, 4).sum() == 0
    assert grid_mask("col0", 3, 4)[:, 0].all() and grid_mask("col0", 3, 4).sum() == 3
    with pytest.raises(ValueError):
        grid_mask("diagonal", 3, 4)
    assert parse_families("row0+col0:3,none") == {"row0+col0": 3.0, "none": 1.0}


def test_video_masks_keep_leading_frames_or_random_and_never_all():
    g = torch.Generator().manual_seed(1)
    m = sample_video_masks(5000, 8, generator=g)
    assert m.shape == (5000, 8)
    assert not m.all(dim=1).any()
    leading = torch.tensor([torch.equal(r, torch.arange(8) < r.sum()) for r in m])
    k = m.sum(dim=1)
    # K in [0, 4] leading frames for ~70% (random masks are sometimes leading-shaped too)
    assert 0.7 <= leading.float().mean() <= 0.85
    assert k[leading].max() <= 8
    for K in range(5):
        assert ((k == K) & leading).float().mean() > 0.1
    assert (~leading).float().mean() > 0.12  # random masks exist


def test_loss_ignores_known_cells():
    B, V, T, C, H, W = 2, 3, 4, 3, 4, 4
    pred = torch.randn(B, V, T, C, H, W, requires_grad=True)
    target = torch.randn(B, V, T, C, H, W)
    known = torch.zeros(B, V, T, dtype=torch.bool)
    known[:, 0] = True
    known[:, :, 0] = True
    loss = masked_velocity_loss(pred, target, known)
    loss.backward()
    assert torch.all(pred.grad[known] == 0)
    assert torch.all(pred.grad[~known].abs().sum(dim=(1, 2, 3)) > 0)
    # changing a known cell's output does not change the loss
    p2 = pred.detach().clone()
    p2[known] += 5.0
    assert masked_velocity_loss(p2, target, known).item() == pytest.approx(loss.item())


def test_flow_interpolates_and_target_is_velocity():
    x0, eps = torch.randn(3, 5), torch.randn(3, 5)
    s = torch.tensor([0.0, 0.5, 1.0])
    xt = add_noise(x0, eps, s)
    assert torch.allclose(xt[0], x0[0]) and torch.allclose(xt[2], eps[2])
    # d x_t / d sigma = eps - x0
    assert torch.allclose(add_noise(x0, eps, s + 1e-3) - xt, 1e-3 * velocity_target(x0, eps), atol=1e-5)


def test_sigmas_are_shifted_toward_noise():
    g = torch.Generator().manual_seed(0)
    plain = sample_sigmas(20000, shift=1.0, generator=g)
    shifted = sample_sigmas(20000, shift=3.0, generator=g)
    assert 0 < plain.min() and plain.max() < 1
    assert plain.mean() == pytest.approx(0.5, abs=0.01)
    assert shifted.mean() > 0.65


def test_schedule_parses_and_normalises():
    ph = parse_schedule("1@36x64:1,3@72x128:3")
    assert [(p.stage, p.height, p.width) for p in ph] == [(1, 36, 64), (3, 72, 128)]
    assert [p.share for p in ph] == [0.25, 0.75]
    for bad in ("4@72x128:1", "3@72by128:1", "3:-1", ""):
        with pytest.raises(InputError):
            parse_schedule(bad)
