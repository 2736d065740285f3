"""Contracts of the evaluation figures: PSNR/SSIM on unknown cells, the copy baselines, and the
epipolar consistency figure."""

import math

import numpy as np
import pytest
import torch

from core.eval.baselines import copy_cell0, copy_column0, copy_row0
from core.eval.consistency import epipolar_consistency
from core.eval.metrics import PSNR_CAP, changing_pixels, psnr_batch_unknown, psnr_unknown, psnr_unknown_regions, ssim_unknown
from core.grid import known_mask


def _grid(V=3, T=4, H=16, W=20, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (V, T, H, W, 3), dtype=np.uint8)


def test_psnr_of_identical_grids_is_capped_not_inf():
    g = _grid()
    assert psnr_unknown(g, g, known_mask(3, 4, "row0+col0")) == PSNR_CAP


def test_psnr_known_value_and_only_unknown_cells_count():
    V, T, H, W = 2, 3, 8, 8
    gt = np.zeros((V, T, 3, H, W))
    pred = gt.copy()
    known = known_mask(V, T, "row0+col0")
    pred[known] = 1.0  # errors in known cells are ignored
    pred[1, 2] = 0.1  # the only other unknown cells (1,1) stay exact: MSE = 0.01 / 2
    expected = -10 * math.log10(0.01 / 2)
    assert psnr_unknown(pred, gt, known) == pytest.approx(expected, abs=1e-9)
    batch = psnr_batch_unknown(torch.tensor(pred)[None], torch.tensor(gt)[None], torch.tensor(known)[None])
    assert batch.item() == pytest.approx(expected, abs=1e-4)


def test_psnr_refuses_all_known():
    g = _grid()
    with pytest.raises(ValueError):
        psnr_unknown(g, g, np.ones((3, 4), bool))


def test_ssim_identical_is_one_and_noise_lowers_it():
    g = _grid(H=24, W=24)
    known = known_mask(3, 4, "row0+col0")
    assert ssim_unknown(g, g, known) == pytest.approx(1.0, abs=1e-9)
    noisy = np.clip(g.astype(int) + np.random.default_rng(1).integers(-60, 60, g.shape), 0, 255).astype(np.uint8)
    s = ssim_unknown(noisy, g, known)
    assert 0.0 < s < 0.95


def test_ssim_matches_reference_formula_on_constant_frames():
    # constant frames a and b: SSIM = (2ab + c1) / (a^2 + b^2 + c1) (variances vanish)
    a, b = 0.3, 0.5
    pred = np.full((1, 2, 3, 16, 16), a)
    gt = np.full((1, 2, 3, 16, 16), b)
    known = np.array([[True, False]])
    c1 = 0.01**2
    assert ssim_unknown(pred, gt, known) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)


def test_copy_baselines_are_exact_on_a_constructed_grid():
    V, T = 3, 4
    # cell (v, t) holds the value 10*v + t everywhere
    g = np.zeros((V, T, 4, 4, 3), np.uint8)
    for v in range(V):
        for t in range(T):
            g[v, t] = 10 * v + t
    known = known_mask(V, T, "row0+col0")
    c0, r0 = copy_column0(g, known), copy_row0(g, known)
    for v in range(V):
        for t in range(T):
            assert (c0[v, t] == (10 * v + t if known[v, t] else 10 * v)).all()
            assert (r0[v, t] == (10 * v + t if known[v, t] else t)).all()
    one = known_mask(V, T, "cell0")
    c00 = copy_cell0(g, one)
    assert (c00[0, 0] == 0).all() and (c00[1:] == 0).all() and (c00[:, 1:] == 0).all()
    g[0, 0] = 7
    assert (copy_cell0(g, one) == 7).all() and copy_cell0(g, one).flags.writeable


def _textured_views(V, H=72, W=128, seed=0, consistent=True):
    """A random-textured plane seen by a camera that slides sideways (a true homography between
    views) or, when not consistent, views whose parts move independently."""
    import cv2

    rng = np.random.default_rng(seed)
    tex = cv2.resize(rng.integers(0, 256, (H // 4, W // 2 + 40, 3), dtype=np.uint8), (W + 160, H * 2),
                     interpolation=cv2.INTER_NEAREST)
    tex = cv2.GaussianBlur(tex, (3, 3), 0)
    frames = []
    for v in range(V):
        if consistent:
            M = np.float32([[1, 0.002 * v, -6 * v - 20], [0, 1, -H // 2], [0, 0, 1]])
            frames.append(cv2.warpPerspective(tex, M, (W, H)))
        else:
            f = np.empty((H, W, 3), np.uint8)
            for by in range(0, H, 18):
                for bx in range(0, W, 16):
                    dx, dy = rng.integers(0, 150), rng.integers(0, H)
                    f[by:by + 18, bx:bx + 16] = tex[dy:dy + 18, dx:dx + 16][: min(18, H - by), : min(16, W - bx)]
            frames.append(f)
    return np.stack(frames)[:, None]  # [V, 1, H, W, 3]


def test_epipolar_consistency_high_for_rigid_views_low_for_scrambled():
    good = epipolar_consistency(_textured_views(4, consistent=True))
    bad = epipolar_consistency(_textured_views(4, consistent=False))
    assert good.pairs == 3 and good.matches > 50
    assert good.inlier_pct > 80
    assert bad.inlier_pct < good.inlier_pct - 20 or bad.matches < good.matches / 3


def test_psnr_regions_split_what_changes_since_time_zero_from_what_stays():
    rng = np.random.default_rng(0)
    V, T, H, W = 3, 4, 8, 10
    gt = np.repeat(rng.integers(0, 256, (V, 1, H, W, 3), dtype=np.uint8), T, axis=1)
    gt[:, 1:, 2:5, 3:7] = 200  # a block appears after time 0 in every view
    gt[:, 0, 2:5, 3:7] = 10
    known = known_mask(V, T, "row0+col0")
    moving = changing_pixels(gt)
    assert moving.shape == (V, T, H, W) and not moving[:, 0].any()
    assert moving[:, 1:, 2:5, 3:7].all() and moving.sum() == V * (T - 1) * 12
    # copying column 0 is exact where nothing changes and wrong by 190/255 where the block is
    pred = np.repeat(gt[:, :1], T, axis=1)
    changing, static = psnr_unknown_regions(pred, gt, known)
    assert static == PSNR_CAP
    assert changing == pytest.approx(-10 * np.log10((190 / 255) ** 2), abs=1e-9)
    # an error only in the static part leaves the changing region exact
    pred2 = gt.copy()
    pred2[:, :, 0, 0] = 255 - pred2[:, :, 0, 0]
    changing2, static2 = psnr_unknown_regions(pred2, gt, known)
    assert changing2 == PSNR_CAP and static2 < 40
    # a grid where nothing changes has no changing region
    still = np.repeat(gt[:, :1], T, axis=1)
    assert psnr_unknown_regions(still, still, known) == (None, PSNR_CAP)


def test_ssim_equals_the_2d_gaussian_window_computation():
    """The separable blur gives what an 11x11 Gaussian window (sigma 1.5) by 2-D depthwise
    convolution gives, the usual way of writing SSIM, on textured frames of two sizes."""
    import torch.nn.functional as F

    from core.eval.metrics import ssim_frames

    def reference(a, b):
        size = min(11, *a.shape[-2:])
        x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        g = torch.exp(-(x**2) / (2 * 1.5**2))
        win = (g[:, None] * g[None, :] / g.sum() ** 2).expand(3, 1, size, size)

        def blur(t):
            return F.conv2d(t, win, groups=3)

        mu_a, mu_b = blur(a), blur(b)
        s_aa, s_bb, s_ab = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
        c1, c2 = 0.01**2, 0.03**2
        return ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2) / ((mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2))).mean(dim=(1, 2, 3))

    gen = torch.Generator().manual_seed(0)
    for shape in ((5, 3, 72, 128), (2, 3, 9, 20)):
        a = torch.rand(shape, generator=gen, dtype=torch.float64)
        b = (a + 0.2 * torch.randn(shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
        got, want = ssim_frames(a, b), reference(a, b)
        assert got.shape == (shape[0],)
        assert torch.allclose(got, want, rtol=0, atol=1e-12)
        assert (got < 0.99).all()
