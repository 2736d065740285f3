"""The pure-torch splatter: the same image formation as gsplat's classic rasterizer, with gradients
and the meta that gsplat's densification strategy reads."""

import types

import pytest
import torch

from core.recon.splat_torch import project, quat_scale_to_covar, rasterization


def _scene(n=200, seed=0, H=40, W=56):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * 0.5 + torch.tensor([0.0, 0.0, 3.0])
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.08 + 0.01
    opac = torch.rand(n, generator=g) * 0.9 + 0.05
    cols = torch.rand(n, 3, generator=g)
    vm = torch.eye(4)[None]
    K = torch.tensor([[50.0, 0, W / 2], [0, 50.0, H / 2], [0, 0, 1]])[None]
    return means, quats, scales, opac, cols, vm, K, W, H


def _brute_force(means, quats, scales, opac, cols, vm, K, W, H):
    """Per-pixel front-to-back compositing written out sequentially, as gsplat's CUDA kernel does."""
    radii, m2, depth, con = project(means, quat_scale_to_covar(quats, scales), opac, vm, K, W, H)
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    out, T = torch.zeros(H, W, 3), torch.ones(H, W)
    done = torch.zeros(H, W, dtype=torch.bool)
    for g in torch.argsort(depth[0]).tolist():
        if not (radii[0, g] > 0).all():
            continue
        dx, dy, c = m2[0, g, 0] - xs, m2[0, g, 1] - ys, con[0, g]
        sigma = 0.5 * (c[0] * dx * dx + c[2] * dy * dy) + c[1] * dx * dy
        alpha = torch.clamp_max(opac[g] * torch.exp(-sigma), 0.999)
        ok = (sigma >= 0) & (alpha >= 1 / 255) & ~done
        next_T = T * (1 - alpha)
        finish = ok & (next_T <= 1e-4)
        done |= finish
        ok &= ~finish
        out += torch.where(ok[..., None], cols[g] * (alpha * T)[..., None], 0.0)
        T = torch.where(ok, next_T, T)
    return out, 1 - T


def test_torch_splatter_equals_sequential_front_to_back_compositing():
    scene = _scene()
    rgb, alpha, meta = rasterization(*scene)
    ref_rgb, ref_alpha = _brute_force(*scene)
    assert rgb.shape == (1, scene[-1], scene[-2], 3) and alpha.shape == (1, scene[-1], scene[-2], 1)
    assert (rgb[0] - ref_rgb).abs().max() < 1e-5
    assert (alpha[0, ..., 0] - ref_alpha).abs().max() < 1e-5
    assert ref_alpha.max() > 0.9  # the scene actually covers pixels


def test_torch_projection_equals_gsplats_reference_projection():
    from gsplat.cuda._torch_impl import _fully_fused_projection  # pure torch; no CUDA is touched

    means, quats, scales, opac, cols, vm, K, W, H = _scene(300, seed=1)
    covars = quat_scale_to_covar(quats, scales)
    radii, m2, depth, con = project(means, covars, opac, vm, K, W, H)
    _, m2_ref, depth_ref, con_ref, _ = _fully_fused_projection(means, covars, vm, K, W, H)
    ok = (radii > 0).all(-1)
    assert ok.sum() > 100
    assert (m2 - m2_ref)[ok].abs().max() < 1e-4
    assert (con - con_ref)[ok].abs().max() < 1e-4
    assert (depth - depth_ref).abs().max() < 1e-6


def test_torch_splatter_batches_cells_like_separate_calls():
    means, quats, scales, opac, cols, vm, K, W, H = _scene(120, seed=2)
    vm2 = vm.clone()
    vm2[0, 0, 3] = 0.2
    batched, _, meta = rasterization(torch.stack([means, means + 0.05]), quats.expand(2, -1, -1),
                                     scales.expand(2, -1, -1), opac.expand(2, -1), cols.expand(2, -1, -1),
                                     torch.stack([vm, vm2]), K.expand(2, 1, 3, 3), W, H)
    one, _, _ = rasterization(means + 0.05, quats, scales, opac, cols, vm2, K, W, H)
    assert batched.shape == (2, 1, H, W, 3) and meta["means2d"].shape == (2, 1, 120, 2)
    assert (batched[1] - one).abs().max() < 1e-6


def test_torch_splatter_gives_finite_gradients_to_gaussians_and_camera():
    means, quats, scales, opac, cols, vm, K, W, H = _scene(150, seed=3)
    leaves = [t.clone().requires_grad_() for t in (means, scales, opac, cols, vm)]
    rgb, alpha, meta = rasterization(leaves[0], quats, leaves[1], leaves[2], leaves[3], leaves[4], K, W, H)
    meta["means2d"].retain_grad()
    (rgb.square().mean() + alpha.mean()).backward()
    for t in leaves:
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    assert meta["means2d"].grad.abs().sum() > 0


def test_torch_splatter_meta_drives_gsplats_default_strategy_on_cpu():
    from gsplat.strategy import DefaultStrategy

    means, quats, scales, opac, cols, vm, K, W, H = _scene(100, seed=4)
    params = torch.nn.ParameterDict({
        "means": torch.nn.Parameter(means), "scales": torch.nn.Parameter(torch.log(scales[:, :1])),
        "quats": torch.nn.Parameter(quats, requires_grad=False),
        "opacities": torch.nn.Parameter(torch.logit(opac)), "colors": torch.nn.Parameter(cols)})
    opts = {k: torch.optim.Adam([params[k]], lr=1e-3) for k in ("means", "scales", "opacities", "colors")}
    strategy = DefaultStrategy(refine_start_iter=0, refine_every=2, grow_grad2d=1e-9)
    strategy.check_sanity(params, opts)
    state = strategy.initialize_state(scene_scale=1.0)
    target = torch.rand(1, 1, H, W, 3)
    for step in range(3):
        N = params["means"].shape[0]
        rgb, _, meta = rasterization(params["means"], params["quats"], torch.exp(params["scales"]).expand(N, 3),
                                     torch.sigmoid(params["opacities"]), params["colors"], vm, K, W, H)
        meta["means2d"].retain_grad()
        (rgb - target).abs().mean().backward()
        for o in opts.values():
            o.step()
            o.zero_grad()
        info = {"means2d": types.SimpleNamespace(grad=meta["means2d"].grad), "radii": meta["radii"],  # [C, N, 2]
                "width": W, "height": H, "n_cameras": 1, "gaussian_ids": None}
        strategy.step_post_backward(params, opts, state, step, info, packed=False)
    assert params["means"].shape[0] > 100  # visible Gaussians were duplicated or split
    assert params["scales"].shape[1] == 1  # isotropic Gaussians stay isotropic


def test_torch_splatter_refuses_packed_mode():
    with pytest.raises(ValueError, match="packed"):
        rasterization(*_scene(5), packed=True)
