"""Diagnosis of a reconstruction's error by region of a synthetic ground truth (sky, floor,
objects), from its depth and cameras."""

import numpy as np

from core.recon.metrics import REGIONS, ground_truth_regions, region_report
from core.world import render_scene, sample_scene


def test_ground_truth_regions_split_sky_floor_and_objects():
    gt = render_scene(sample_scene(1000000001), views=2, times=1, height=36, width=64)
    reg = ground_truth_regions(gt.depth, gt.viewmats, gt.Ks)
    assert reg.shape == gt.depth.shape
    assert np.array_equal(reg == 0, gt.depth <= 0)  # the sky is where the ray hits nothing
    counts = np.bincount(reg.ravel(), minlength=len(REGIONS))
    assert (counts > 0).all(), counts  # this scene shows sky, near and far floor and objects
    # the top rows see the sky or the far floor, never the near floor; the bottom row never the sky
    assert set(np.unique(reg[:, :, 0])) <= {0, 2} and (reg[:, :, -1] != 0).all()


def test_region_report_shares_add_up_and_a_perfect_render_scores_99():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(2, 2, 8, 8, 3), dtype=np.uint8)
    regions = rng.integers(0, 4, size=(2, 2, 8, 8)).astype(np.int8)
    cells = np.ones((2, 2), bool)
    assert all(r["psnr"] == 99.0 for r in region_report(frames, frames, regions, cells).values())
    noisy = np.clip(frames.astype(int) + rng.integers(-20, 21, size=frames.shape), 0, 255).astype(np.uint8)
    rep = region_report(frames, noisy, regions, cells)
    assert abs(sum(r["error_share"] for r in rep.values()) - 1) < 1e-3
    assert abs(sum(r["pixels"] for r in rep.values()) - 1) < 1e-3
