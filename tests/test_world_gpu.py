"""The world renders the same on CUDA as on the CPU (skipped without a GPU)."""

import numpy as np
import pytest
import torch

from core.world import GridBatches, render_scene, sample_scene

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cuda_render_matches_cpu():
    for seed in (3, 31, 1_000_000_008):
        spec = sample_scene(seed)
        cpu = render_scene(spec, 3, 3, 72, 128, device="cpu")
        gpu = render_scene(spec, 3, 3, 72, 128, device="cuda")
        diff = np.abs(cpu.frames.astype(int) - gpu.frames.astype(int))
        assert diff.mean() < 0.5 and (diff > 8).mean() < 0.002, (seed, diff.mean())
        both = (cpu.depth > 0) & (gpu.depth > 0)
        assert (both == (cpu.depth > 0)).mean() > 0.998
        assert np.abs(cpu.depth[both] - gpu.depth[both]).max() < 1e-2


def test_cuda_render_ignores_tf32_matmul_settings():
    """Trainers turn TF32 on; the ray caster must not go through (coarse) TF32 matmuls."""
    spec = sample_scene(31)
    cpu = render_scene(spec, 2, 2, 72, 128, device="cpu")
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        gpu = render_scene(spec, 2, 2, 72, 128, device="cuda")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    assert np.abs(cpu.frames.astype(int) - gpu.frames.astype(int)).mean() < 0.5


def test_cuda_grid_batches_stay_on_the_device_and_workers_feed_them():
    b = next(iter(GridBatches(batch=4, device="cuda", workers=2, steps=1)))
    assert b["frames"].device.type == "cuda" and b["frames"].shape == (4, 8, 8, 3, 72, 128)
