"""The sampling loop: seeds, known cells, cancel, progress with x0 previews, guidance, and the
autoregressive extension along time (chunk k+1's first column is chunk k's last)."""

from __future__ import annotations

import pytest
import torch

from core.errors import Cancelled, InputError
from core.model.testing import tiny_model
from core.sampler import SampleSettings, chunk_windows, sample_grid, sample_long


@pytest.fixture(scope="module")
def model():
    return tiny_model(trained=True)


def grid_inputs(V=2, T=3, seed=0, kind="row0+col0"):
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(V, T, 3, 16, 16, generator=g) * 2 - 1
    known = torch.zeros(V, T, dtype=torch.bool)
    if kind == "row0+col0":
        known[0, :] = True
        known[:, 0] = True
    elif kind == "cell0":
        known[0, 0] = True
    return frames, known


def test_same_seed_same_grid_other_seed_other_grid(model):
    frames, known = grid_inputs()
    s = SampleSettings(steps=3, seed=7)
    a = sample_grid(model, frames, known, "a red ball", s)
    b = sample_grid(model, frames, known, "a red ball", s)
    c = sample_grid(model, frames, known, "a red ball", SampleSettings(steps=3, seed=8))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["soft", "hard", "sequential", "fused"])
def test_known_cells_are_returned_exactly(model, mode):
    frames, known = grid_inputs(seed=1)
    out = sample_grid(model, frames, known, "", SampleSettings(steps=2, mode=mode))
    assert torch.equal(out[known], frames[known])
    assert (out[~known] - frames[~known]).abs().max() > 1e-2  # the rest is generated


def test_cancel_stops_within_one_step(model):
    frames, known = grid_inputs()
    calls = []
    original = model.transformer.step

    def counting_step(*a, **k):
        calls.append(1)
        return original(*a, **k)

    seen = []
    model.transformer.step = counting_step
    try:
        with pytest.raises(Cancelled):
            sample_grid(model, frames, known, "", SampleSettings(steps=10),
                        on_step=lambda s, t, p: seen.append(s), should_cancel=lambda: len(seen) >= 2)
    finally:
        model.transformer.step = original
    assert seen == [1, 2] and len(calls) == 2  # no model call after the flag went up


def test_progress_reports_every_step_with_an_x0_preview(model):
    frames, known = grid_inputs()
    got = []
    out = sample_grid(model, frames, known, "blue cube", SampleSettings(steps=4),
                      on_step=lambda s, t, p: got.append((s, t, p)))
    assert [(s, t) for s, t, _ in got] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(p.shape == frames.shape for _, _, p in got)
    # At the last step σ_next = 0, so the Euler step lands exactly on the x0 estimate.
    assert torch.allclose(got[-1][2], out, atol=1e-6)
    assert (got[0][2] - out).abs().max() > 1e-3  # early previews are rougher


def test_guidance_mixes_conditional_and_unconditional(model):
    frames, known = grid_inputs(kind="none")
    a = sample_grid(model, frames, known, "a red ball", SampleSettings(steps=2, guidance=1.0))
    b = sample_grid(model, frames, known, "a red ball", SampleSettings(steps=2, guidance=4.0))
    c = sample_grid(model, frames, known, "a blue cube", SampleSettings(steps=2, guidance=1.0))
    assert (a - b).abs().max() > 1e-4 and (a - c).abs().max() > 1e-4  # the text matters


def test_bad_settings_are_refused(model):
    frames, known = grid_inputs()
    for s in (SampleSettings(steps=0), SampleSettings(mode="both"), SampleSettings(guidance=-1)):
        with pytest.raises(InputError):
            sample_grid(model, frames, known, "", s)


def test_chunk_windows_overlap_by_the_known_column():
    assert chunk_windows(3, 3) == [(0, 3)]
    assert chunk_windows(5, 3) == [(0, 3), (2, 5)]
    assert chunk_windows(6, 3) == [(0, 3), (2, 5), (3, 6)]
    assert chunk_windows(9, 5) == [(0, 5), (4, 9)]


def test_extension_takes_each_chunks_first_column_from_the_previous_chunk(model):
    frames, known = grid_inputs(V=2, T=5, kind="row0+col0")  # chunk_times = 3: windows (0,3), (2,5)
    s = SampleSettings(steps=2, seed=3)
    long = sample_long(model, frames, known, "a ball", s)
    first = sample_grid(model, frames[:, :3], known[:, :3], "a ball", SampleSettings(steps=2, seed=3))
    assert torch.equal(long[:, :3], first)
    # Chunk 2 = a grid whose column 0 is chunk 1's last column (plus row 0 of the input video).
    second_in = frames[:, 2:5].clone()
    second_in[:, 0] = first[:, 2]
    second_known = known[:, 2:5].clone()
    second_known[:, 0] = True
    second = sample_grid(model, second_in, second_known, "a ball", SampleSettings(steps=2, seed=4))
    assert torch.equal(long[:, 2:5], second)
    assert torch.equal(long[known], frames[known])


class ExactVelocity:
    """The ideal model when the data is one grid ``target``: ``v = ε − x0 = (x_σ − target) / σ``.
    It stands in for the transformer so the loop's rectified-flow conventions can be checked."""

    def __init__(self, target):
        self.target = target

    def prepare(self, text_states, grid, **kw):
        return None

    def step(self, plan, x, sigma):
        return (x - self.target) / sigma.view(-1, 1, 1, 1, 1, 1)


def test_loop_follows_rectified_flow_to_the_target_with_an_exact_velocity():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from core.sampler import denoise

    g = torch.Generator().manual_seed(0)
    target = torch.rand(1, 2, 3, 3, 8, 8, generator=g) * 2 - 1
    cond = torch.zeros_like(target)
    mask = torch.zeros(1, 2, 3, 1, dtype=torch.bool)
    previews = []
    out = denoise(ExactVelocity(target), FlowMatchEulerDiscreteScheduler(shift=3.0), cond, mask,
                  torch.zeros(1, 4, 8), SampleSettings(steps=5, preview_every=1),
                  on_step=lambda s, t, p: previews.append(p), preview=lambda x0: x0)
    assert torch.allclose(out, target, atol=1e-5)
    assert all(torch.allclose(p, target, atol=1e-5) for p in previews)  # x0 = x_σ − σ·v is exact
