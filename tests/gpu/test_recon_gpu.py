"""GPU checks of the reconstruction: gsplat and our torch splatter form the same images and
gradients, and a fit runs on CUDA through gsplat. Run on a CUDA machine (gsplat compiles its
kernels on first use, about a minute)."""

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (gsplat)")


def test_gsplat_and_torch_splatter_agree_on_a_small_scene():
    from core.recon.bench import compare_backends

    r = compare_backends(n=2000, views=3, height=96, width=160)
    assert abs(r["visible_gsplat"] - r["visible_torch"]) <= max(3, 0.002 * r["visible_gsplat"])
    assert r["rgb_mean_abs_diff"] < 2e-4, r
    assert r["rgb_p999_abs_diff"] < 1e-2, r
    assert r["alpha_max_abs_diff"] < 5e-2, r
    assert r["psnr_between_db"] > 50, r
    for k in ("means", "scales", "opacities", "colors"):
        assert r[f"grad_cos_{k}"] > 0.99, (k, r)


def test_reconstruct_run_fits_a_toy_grid_on_cuda(tmp_path):
    from core.recon.api import reconstruct_run
    from core.recon.ply import read_splat_ply
    from core.recon.toyscene import write_toy_run

    run = write_toy_run(tmp_path / "toy", views=4, times=3, height=72, width=128, device="cuda")
    out = reconstruct_run(run, iters=600, holdout=2, device="cuda")
    assert out["device"] == "cuda" and out["fit"]["steps"] == 600
    assert out["psnr_fit_mean"] > 26, out["psnr_fit_mean"]
    assert out["psnr_holdout_mean"] > 22, out["psnr_holdout_mean"]
    assert out["camera_errors"]["rot_deg_max"] < 2.0
    ply = read_splat_ply(run / "splats" / "frame_002.ply")
    assert ply["means"].shape[0] == out["fit"]["gaussians"]
