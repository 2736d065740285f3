"""Matches at silhouettes: dense flow that disagrees with itself marks where one view sees what
the other does not, and the camera estimate drops matches there unless flow is failing over whole
regions (repeated texture)."""

import cv2
import numpy as np

from core.recon.cameras import SfMConfig, attach_flow_disagreement, drop_flow_disagreeing, flow_disagreement


def _texture(rng, h, w, blur=2.0):
    img = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), blur)
    img = (img - img.min()) / (img.max() - img.min())
    return (img * 255).astype(np.uint8)


def _two_views():
    """A textured background that moves 3 px between the views and a textured square in front of
    it that moves 10 px the other way: the square covers background on its right and uncovers it
    on its left."""
    rng = np.random.default_rng(0)
    H, W, S = 144, 256, 64
    bg, fg = _texture(rng, H, W + 40, 2.5), _texture(rng, S, S, 2.5)
    views = []
    for shift_bg, x0 in ((0, 80), (3, 90)):
        img = bg[:, shift_bg:shift_bg + W].copy()
        img[40:40 + S, x0:x0 + S] = fg
        views.append(np.repeat(img[..., None], 3, axis=2))
    return np.stack(views)  # [2, H, W, 3]


def test_flow_disagrees_with_itself_at_the_silhouette_and_not_on_open_background():
    views = _two_views()
    d = flow_disagreement(views, threads=1)
    assert d.shape == views.shape[:3]
    covered = d[0, 50:94, 144:154].max(axis=1)  # right of the square in view 0: hidden in view 1
    inside = d[0, 50:94, 92:132]  # within the square
    open_bg = np.concatenate([d[0, 5:30, 20:240].ravel(), d[0, 115:140, 20:240].ravel()])
    assert np.median(covered) > 4.0, np.median(covered)
    assert np.percentile(open_bg, 99) < 1.0 and np.percentile(inside, 99) < 1.0
    # the same, to the last bit, from several threads; and a whole grid [V, T, ...] per cell
    assert np.array_equal(d, flow_disagreement(views, threads=2))
    grid = np.stack([views, views[:, :, ::-1]], 1)  # [2 views, 2 times, H, W, 3]
    dg = flow_disagreement(grid, threads=1)
    assert dg.shape == grid.shape[:4] and np.array_equal(dg[:, 0], d)
    # a cell whose neighbouring view is unusable has nothing to compare with
    assert not flow_disagreement(grid, np.array([[True, False], [True, True]]), threads=1)[:, 1].any()


def test_matches_where_flow_disagrees_are_dropped_unless_it_fails_over_whole_regions():
    cfg = SfMConfig(occlusion_fb_px=4.0, occlusion_max_share=0.2, min_pair_inliers=16)
    n = 100
    feats = [{"xy": np.zeros((n, 2)), "flow_fb": np.zeros(n, np.float32)} for _ in range(3)]
    ids = np.arange(n)
    pairs = {(0, 1): np.stack([ids, ids], 1), (1, 2): np.stack([ids[:17], ids[:17]], 1)}
    feats[0]["flow_fb"][:10] = 9.0  # keypoints 0-9 of view 0 sit at a silhouette
    feats[1]["flow_fb"][[15, 16]] = 9.0  # two of view 1, in both pairs: 14 of 117 matches in all
    out = drop_flow_disagreeing(feats, pairs, cfg, 288, 512)
    assert out[(0, 1)][:, 0].tolist() == [i for i in range(10, n) if i not in (15, 16)]
    assert (1, 2) not in out  # 15 matches left, fewer than a pair needs
    # the threshold is in pixels of a 512-wide frame: 3 px of disagreement is a lot at 256 wide
    feats[0]["flow_fb"][:10] = 3.0
    assert len(drop_flow_disagreeing(feats, pairs, cfg, 288, 512)[(0, 1)]) == 98
    assert len(drop_flow_disagreeing(feats, pairs, cfg, 144, 256)[(0, 1)]) == 88
    # flow failing over a whole floor (more than a fifth of the matches): it tells nothing, keep all
    feats[0]["flow_fb"][:30] = 9.0
    assert drop_flow_disagreeing(feats, pairs, cfg, 288, 512) is pairs
    # off, or features without the measure
    feats[0]["flow_fb"][:30] = 0.0
    feats[0]["flow_fb"][:5] = 9.0
    off = SfMConfig(occlusion_fb_px=0.0)
    assert drop_flow_disagreeing(feats, pairs, off, 288, 512) is pairs
    assert drop_flow_disagreeing([{"xy": f["xy"]} for f in feats], pairs, cfg, 288, 512) is pairs


def test_each_keypoint_reads_the_disagreement_of_its_own_pixel_and_time():
    d = np.zeros((2, 3, 10, 20), np.float32)
    d[1, 2, 4, 7] = 5.0
    d[0, 0, 9, 19] = 2.0
    pooled = [{"xy": np.array([[19.5, 9.5], [7.5, 4.5]]), "time": np.array([0, 2])},
              {"xy": np.array([[7.5, 4.5], [7.9, 4.1], [7.5, 4.5]]), "time": np.array([2, 2, 1])}]
    attach_flow_disagreement(pooled, d)
    assert pooled[0]["flow_fb"].tolist() == [2.0, 0.0] and pooled[1]["flow_fb"].tolist() == [5.0, 5.0, 0.0]
    column = [{"xy": np.array([[19.2, 9.9]])}, {"xy": np.zeros((0, 2))}]  # one time: [V, H, W]
    attach_flow_disagreement(column, d[:, 0])
    assert column[0]["flow_fb"].tolist() == [2.0] and column[1]["flow_fb"].shape == (0,)
