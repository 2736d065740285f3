"""Pseudo-4D grids and the training data streams."""

import numpy as np
import pytest
import torch

from core.world import GridBatches, VideoBatches, pseudo4d_grid, pseudo4d_homographies, render_scene, sample_scene


@pytest.fixture(scope="module")
def row():
    return render_scene(sample_scene(4), 1, 6, 48, 80).frames[0]  # uint8 [T, H, W, 3]


def test_pseudo4d_view0_is_the_input_exactly(row):
    g = pseudo4d_grid(row, 5, seed=9)
    assert g.shape == (5,) + row.shape and g.dtype == np.uint8
    assert np.array_equal(g[0], row)
    x = torch.from_numpy(row).float() / 255
    gt = pseudo4d_grid(x, 5, seed=9)
    assert isinstance(gt, torch.Tensor) and gt.dtype == torch.float32 and gt.shape == (5,) + x.shape
    assert torch.equal(gt[0], x)
    assert np.abs(gt.numpy() * 255 - g).max() <= 1.0  # same warps either way


def test_pseudo4d_views_move_smoothly_and_stay_inside_the_frame():
    h, w = 72, 128
    hs = pseudo4d_homographies(8, seed=5, height=h, width=w)
    assert np.allclose(hs[0], np.eye(3))
    corners = np.array([[-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], float)
    pts = corners @ hs.transpose(0, 2, 1)
    xy = pts[..., :2] / pts[..., 2:]  # [V, 4, 2] where each output corner samples the source
    assert (np.abs(xy) <= 1 + 1e-6).all()  # never outside the source: no borders
    step = np.abs(np.diff(xy, axis=0)).max(axis=(1, 2)) * w / 2  # pixels per view step
    total = np.abs(xy[-1] - xy[0]).max() * w / 2
    assert step.max() < 0.35 * total and total > 5
    assert np.all(step > 0)


def test_pseudo4d_neighbouring_views_are_closer_than_far_ones(row):
    g = pseudo4d_grid(row, 8, seed=2).astype(np.float64)
    near = np.abs(g[1] - g[0]).mean()
    far = np.abs(g[7] - g[0]).mean()
    assert 0 < near < far


def test_pseudo4d_is_deterministic_per_seed(row):
    assert np.array_equal(pseudo4d_grid(row, 4, 1), pseudo4d_grid(row, 4, 1))
    assert not np.array_equal(pseudo4d_grid(row, 4, 1), pseudo4d_grid(row, 4, 2))


def test_grid_batches_have_contract_shapes_and_ranges():
    b = next(iter(GridBatches("train", batch=2, views=3, times=4, height=24, width=40, steps=1)))
    f = b["frames"]
    assert f.shape == (2, 3, 4, 3, 24, 40) and f.dtype == torch.float32
    assert 0 <= float(f.min()) and float(f.max()) <= 1 and f.std() > 0.05
    assert len(b["captions"]) == 2 and all(isinstance(c, str) and c for c in b["captions"])
    assert b["depth"].shape == (2, 3, 4, 24, 40) and b["viewmats"].shape == (2, 3, 4, 4) and b["Ks"].shape == (2, 3, 3, 3)


def test_grid_batches_match_render_scene():
    b = next(iter(GridBatches("eval", batch=2, views=2, times=3, height=24, width=40, eval_scenes=2)))
    gt = render_scene(sample_scene(b["seeds"][1]), 2, 3, 24, 40)
    frames = (b["frames"][1].permute(0, 1, 3, 4, 2) * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
    diff = np.abs(frames.astype(int) - gt.frames.astype(int))
    assert diff.max() <= 1 and diff.mean() < 1e-3  # same pixels; batching moves float last bits only
    assert b["captions"][1] == gt.caption


def test_pseudo4d_batches_keep_the_true_row0():
    kw = dict(split="eval", batch=2, views=3, times=4, height=24, width=40, eval_scenes=2)
    real = next(iter(GridBatches(kind="synthetic", **kw)))
    fake = next(iter(GridBatches(kind="pseudo4d", **kw)))
    assert fake["frames"].shape == real["frames"].shape
    assert torch.allclose(fake["frames"][:, 0], real["frames"][:, 0], atol=1e-5)  # batching moves last bits only
    assert not torch.allclose(fake["frames"][:, 2], real["frames"][:, 2])


def test_video_batches_rows_and_columns():
    b = next(iter(VideoBatches("train", batch=8, frames=5, height=24, width=40, seed=1, steps=1)))
    f, freeze = b["frames"], b["freeze_time"]
    assert f.shape == (8, 5, 3, 24, 40) and freeze.dtype == torch.bool and freeze.shape == (8,)
    assert 0 < int(freeze.sum()) < 8
    # a column moves the camera: nearly every pixel changes; a row only where objects move
    changed = ((f[:, -1] - f[:, 0]).abs().amax(1) > 0.02).float().mean((1, 2))
    assert changed[freeze].mean() > changed[~freeze].mean() + 0.2
    p = next(iter(VideoBatches("train", batch=4, frames=5, height=24, width=40, kind="pseudo4d", seed=1, steps=1)))
    assert p["frames"].shape == (4, 5, 3, 24, 40)


def test_bad_dataset_arguments_are_refused():
    with pytest.raises(ValueError, match="split"):
        GridBatches("test")
    with pytest.raises(ValueError, match="kind"):
        GridBatches(kind="objaverse")
    with pytest.raises(ValueError, match="views"):
        GridBatches(views=0)
