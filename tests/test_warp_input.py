"""The warp input (core/model/warp.py): row 0 carried into each view by the optical flow of the
freeze-time column. The flow follows a known shift, the warp moves frames by it, the valid mask
follows the known cells, a model given the input later computes exactly what it did, the new
weights change the output only where the input is defined, and training adds and keeps it."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from core.errors import InputError
from core.model.config import preset
from core.model.pipeline import FourDModel
from core.model.warp import (batch_grid_flows, grid_flows, mirror_flows, time_flows, view_flows, warp_frames,
                             warp_inputs, warp_valid)
from core.train.config import TrainConfig
from core.train.loop import train

torch.set_num_threads(1)


def _texture(H, W, seed=0):
    """Smooth random texture [3, H, W] in [-1, 1] (blobs a few pixels wide: DIS can follow it)."""
    import cv2

    rng = np.random.default_rng(seed)
    img = rng.uniform(-1, 1, (H, W, 3)).astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), 2.0)
    img = img / np.abs(img).max()
    return img.transpose(2, 0, 1)


def _shifted_frames(H, W, step, n):
    """``n`` frames [n, 3, H, W] of one texture, frame k moved left by k * step: frame k's pixel p
    shows frame 0's p + (k * step, 0)."""
    big = _texture(H, W + (n + 1) * step)
    return np.stack([big[:, :, k * step:k * step + W] for k in range(n)])


def _assert_follows_shift(fl, step):
    assert fl.shape[0] == 3 and np.all(fl[0] == 0)
    inner = (slice(8, -8), slice(8, -8 - 2 * step))
    for k in (1, 2):
        err = np.abs(fl[k][inner][..., 0] - k * step)
        assert np.median(err) < 0.3, (k, np.median(err))
        assert np.median(np.abs(fl[k][inner][..., 1])) < 0.3


def test_view_flows_follow_a_known_shift_through_the_chain():
    fl = view_flows(_shifted_frames(48, 80, 3, 3))
    assert fl.shape == (3, 48, 80, 2)
    _assert_follows_shift(fl, 3)


def test_warp_frames_moves_by_the_flow_and_keeps_the_dtype():
    x = torch.arange(2 * 1 * 5 * 7, dtype=torch.float32).reshape(2, 1, 5, 7)
    fl = torch.zeros(2, 5, 7, 2)
    fl[..., 0] = 2.0  # read two pixels to the right
    y = warp_frames(x, fl)
    assert torch.allclose(y[..., :5], x[..., 2:])
    assert torch.allclose(y[..., 5:], x[..., 6:7].expand(-1, -1, -1, 2))  # edges repeated
    assert warp_frames(x.to(torch.bfloat16), fl).dtype == torch.bfloat16


def test_time_flows_follow_what_moved_since_time_0():
    fl = time_flows(_shifted_frames(40, 64, 2, 3))
    assert fl.shape == (3, 40, 64, 2)
    _assert_follows_shift(fl, 2)


def test_warp_inputs_carry_row0_move_column0_and_mark_where_they_are_defined():
    B, V, T, H, W, dx, mv = 2, 3, 2, 24, 32, 2, 3
    rng = torch.Generator().manual_seed(0)
    cond = torch.rand(B, V, T, 3, H, W, generator=rng) * 2 - 1
    known = torch.zeros(B, V, T, dtype=torch.bool)
    known[:, 0, :] = True
    known[:, :, 0] = True
    known[1, 2, 0] = False  # grid 1 lacks part of column 0: no flows, no warp input
    flows = torch.zeros(B, V + T, H, W, 2)
    flows[:, :V, :, :, 0] = torch.arange(V, dtype=torch.float32)[None, :, None, None] * dx  # view v -> 0
    flows[:, V + 1:, :, :, 1] = mv  # what moved by time 1 came from mv rows further down
    out = warp_inputs(cond, known, flows)
    assert out.shape == (B, V, T, 10, H, W)
    valid = warp_valid(known)
    assert valid[0].all() and not valid[1].any()
    assert torch.all(out[1] == 0)
    assert torch.all(out[0, :, :, 9] == 1)
    for v in range(V):
        s = v * dx
        for t in range(T):
            assert torch.allclose(out[0, v, t, :3, :, :W - s], cond[0, 0, t, :, :, s:], atol=1e-4)
            assert torch.allclose(out[0, v, t, 3:6, :, :W - s], cond[0, 0, 0, :, :, s:], atol=1e-4)
        # (v, 0) moved by view 0's motion: unmoved at time 0, read mv rows down at time 1
        assert torch.allclose(out[0, v, 0, 6:9], cond[0, v, 0], atol=1e-4)
        assert torch.allclose(out[0, v, 1, 6:9, :H - mv], cond[0, v, 0, :, mv:], atol=1e-4)
    # with the flows computed here: view 0 is row 0 itself, and (0, 0) moved along row 0
    own = warp_inputs(cond, known)
    assert torch.allclose(own[0, 0, :, :3], cond[0, 0, :], atol=1e-4)
    # no known cell at all: all zeros, nothing computed
    assert torch.all(warp_inputs(cond, torch.zeros_like(known)) == 0)


def test_batch_grid_flows_computes_only_the_grids_asked():
    V, T, H, W = 2, 3, 16, 24
    grid = torch.rand(3, V, T, 3, H, W, generator=torch.Generator().manual_seed(2)) * 2 - 1
    for b in range(3):
        for v in range(V):
            grid[b, v, 0] = torch.from_numpy(_texture(H, W, 10 * b + v))
        for t in range(1, T):
            grid[b, 0, t] = torch.from_numpy(_texture(H, W, 10 * b + 5 + t))
    out = batch_grid_flows(grid, torch.tensor([True, False, True]))
    assert out.shape == (3, V + T, H, W, 2) and torch.all(out[1] == 0)
    want = grid_flows(grid[2, :, 0].numpy(), grid[2, 0].numpy())
    assert torch.allclose(out[2], torch.from_numpy(want))
    assert torch.allclose(out[0, V:], torch.from_numpy(time_flows(grid[0, 0].numpy())))
    # mirrored flows: the field mirrored, x negated
    m = mirror_flows(out)
    assert torch.equal(m[..., 0], -out.flip(-2)[..., 0]) and torch.equal(m[..., 1], out.flip(-2)[..., 1])


def _grid_inputs(m, known_kind):
    cfg = m.config
    V, T, H, W = cfg.views, cfg.times, cfg.height, cfg.width
    g = torch.Generator().manual_seed(1)
    cond = torch.rand(1, V, T, 3, H, W, generator=g) * 2 - 1
    noisy = torch.randn(1, V, T, 3, H, W, generator=g)
    known = torch.zeros(1, V, T, dtype=torch.bool)
    if known_kind == "row0+col0":
        known[:, 0, :] = True
        known[:, :, 0] = True
    return cond, noisy, known, None


def _velocity(m, cond, noisy, known):
    tr = m.transformer
    text = torch.zeros(1, 4, tr.backbone.config.text_dim)
    sigma = torch.tensor([0.7])
    with torch.no_grad():
        return tr(noisy, sigma, text, cond, known)


def test_a_model_given_the_warp_input_computes_the_same_until_it_trains():
    cfg = dataclasses.replace(preset("tiny"), views=3, times=3, reference_inputs=True, residual=True)
    m = FourDModel.from_config(cfg, seed=0)
    m.transformer.eval()
    with torch.no_grad():  # a fresh residual model's head is zero: give it one that shows its tokens
        m.transformer.backbone.proj_out.weight.normal_(0, 0.05)
    cond, noisy, known, _ = _grid_inputs(m, "row0+col0")
    before = _velocity(m, cond, noisy, known)
    assert m.transformer.add_warp_input() and not m.transformer.add_warp_input()
    assert m.transformer.warp_input and m.transformer.layers.config.warp_input
    assert torch.equal(_velocity(m, cond, noisy, known), before)
    # trained weights change the output where row 0 and column 0 are known, and nowhere else
    with torch.no_grad():
        m.transformer.layers.warp_embedding.weight.normal_(0, 0.05)
    assert not torch.allclose(_velocity(m, cond, noisy, known), before)
    none = torch.zeros_like(known)
    plain = FourDModel.from_config(cfg, seed=0)
    plain.transformer.eval()
    plain.transformer.backbone.proj_out.weight.data.copy_(m.transformer.backbone.proj_out.weight)
    m.transformer.layers.warp_embedding.bias.data.zero_()
    assert torch.equal(_velocity(m, cond, noisy, none), _velocity(plain, cond, noisy, none))


def test_the_warp_input_needs_pixels():
    with pytest.raises(ValueError, match="pixels codec"):
        dataclasses.replace(preset("tiny-vae"), warp_input=True)


def _cfg(out, **kw):
    base = dict(out=str(out), preset="tiny", views=2, times=3, minutes=10, max_steps=1, batch=2,
                schedule="3@16x16:1", eval_scenes=1, eval_steps=1, eval_size="16x16", eval_every_min=10,
                save_every_min=10, log_every=1, warmup_steps=1, device="cpu",
                reference_inputs=True, residual=True)
    base.update(kw)
    return TrainConfig(**base)


def test_training_adds_the_warp_input_to_saved_weights_and_keeps_it(tmp_path):
    narrow = tmp_path / "narrow"
    train(_cfg(narrow), log=lambda s: None)
    assert not json.loads((narrow / "model" / "fourd_layers" / "config.json").read_text()).get("warp_input")
    with pytest.raises(InputError, match="exact training state"):
        train(_cfg(narrow, resume=str(narrow), warp_input=True), log=lambda s: None)
    wide = tmp_path / "wide"
    train(_cfg(wide, resume=str(narrow / "model"), warp_input=True, max_steps=2,
               masks="row0+col0:1", reuse=0), log=lambda s: None)  # the replay pool, keeping flows
    m = FourDModel.from_pretrained(wide / "model")
    assert m.transformer.warp_input and m.config.warp_input
    assert (m.transformer.layers.warp_embedding.weight != 0).any()  # the new weights trained
    rec = json.loads((wide / "model" / "training.json").read_text())
    assert rec["widened"][-1]["added"] == "warp_input"
    # an exact resume keeps it without being told; asking it off is refused
    s = train(_cfg(wide, resume=str(wide), max_steps=1, reference_inputs=None, residual=None), log=lambda s: None)
    assert s["step"] == 4 and FourDModel.from_pretrained(wide / "model").transformer.warp_input
    with pytest.raises(InputError, match="warp-input off"):
        train(_cfg(tmp_path / "o", resume=str(wide / "model"), warp_input=False), log=lambda s: None)


def test_resume_decision_adds_the_warp_input_when_the_preset_has_it(tmp_path, monkeypatch):
    import core.model.config as mc
    from core.train.checkpoint import resume_flags

    assert preset("default").warp_input  # the shipped weights have it
    plain = FourDModel.from_config(dataclasses.replace(preset("default"), warp_input=False)).save_pretrained(
        tmp_path / "plain")
    warped = FourDModel.from_preset("default").save_pretrained(tmp_path / "warped")
    assert resume_flags(plain, "default") == ["--warp-input", "on"]
    assert resume_flags(warped, "default") == []
    # a preset without it: weights without it resume as they are, and weights with it keep it
    real = mc.preset
    monkeypatch.setattr(mc, "preset", lambda name: dataclasses.replace(real(name), warp_input=False)
                        if name == "default" else real(name))
    assert resume_flags(plain, "default") == []
    assert resume_flags(warped, "default") == []


def test_the_replay_pool_keeps_each_grids_flows_and_mirrors_them():
    from core.train.data import Batch, ReplayPool

    V, T, H, W, dx = 3, 2, 24, 40, 2

    def source():
        k = 0
        while True:
            big = torch.from_numpy(_texture(H, W + 2 * dx * V, seed=k))
            k += 1
            frames = torch.stack([big[:, :, v * dx:v * dx + W] for v in range(V)])  # [V, 3, H, W]
            x0 = frames[None, :, None].expand(1, V, T, 3, H, W).clone()
            x0[0, 0, 1] = torch.from_numpy(_texture(H, W + 2 * dx * V, seed=k + 100))[:, :, :W]
            yield [Batch(x0, ["a grid"], torch.zeros(1, dtype=torch.long), [k])]

    pool = ReplayPool(source(), batch=6, pool_size=8, generator=torch.Generator().manual_seed(0), flows=True)
    signs = set()
    for _ in range(4):
        b = next(pool)[0]
        assert b.flows is not None and b.flows.shape == (6, V + T, H, W, 2)
        fresh = batch_grid_flows(b.x0)  # what the model would compute from the drawn frames
        inner = (slice(None), slice(1, V), slice(6, -6), slice(6, -6))
        assert float((b.flows[inner] - fresh[inner]).abs().median()) < 0.3
        signs |= set(torch.sign(b.flows[:, 1, 6:-6, 6:-6, 0].median(dim=-1).values.median(dim=-1).values).tolist())
    assert signs == {-1.0, 1.0}  # both mirrored and plain grids were drawn
    plain = ReplayPool(source(), batch=2, pool_size=4, generator=torch.Generator().manual_seed(0))
    assert next(plain)[0].flows is None


def test_the_pools_background_flows_change_nothing_but_when_a_grid_enters(monkeypatch):
    """The flows are computed while the step trains: a fresh grid enters the pool one step later,
    and what is drawn does not depend on how long the flows take."""
    import time as _time

    import core.model.warp as warp
    from core.train.data import Batch, ReplayPool

    V, T, H, W = 2, 2, 16, 24

    def source():
        k = 0
        while True:
            k += 1
            g = torch.Generator().manual_seed(k)
            yield [Batch(torch.rand(2, V, T, 3, H, W, generator=g) * 2 - 1, [f"grid {k}"] * 2,
                         torch.zeros(2, dtype=torch.long), [2 * k, 2 * k + 1])]

    def draws(delay):
        real = warp.column_row_flows

        def slow(col, row):
            _time.sleep(delay)
            return real(col, row)

        monkeypatch.setattr(warp, "column_row_flows", slow)
        pool = ReplayPool(source(), batch=3, pool_size=6, generator=torch.Generator().manual_seed(0), flows=True)
        out = []
        for step in range(5):
            b = next(pool)[0]
            out.append((b.x0, b.flows, b.seeds))
            # the first step waits to fill a batch; after it, each step's fresh grids wait for their flows
            assert len(pool._pending) == (0 if step == 0 else 1)
        return out, pool

    fast, pool = draws(0.0)
    slow, _ = draws(0.05)
    for (x, f, s), (x2, f2, s2) in zip(fast, slow):
        assert torch.equal(x, x2) and torch.equal(f, f2) and s == s2
    # the first step filled the pool from two source batches (4 grids); after it one batch a step,
    # entering a step late: the third to fifth steps put in batches 3-5, batch 6 waits
    assert pool.fresh_seen == 4 + 2 * 3 and max(max(s) for _, _, s in fast) <= 2 * 5 + 1
    # each stored grid's flows are those of its frames
    stored = pool.frames[: pool.filled].float() / 127.5 - 1
    assert torch.allclose(pool.flows[: pool.filled].float(), batch_grid_flows(stored).half().float(), atol=1e-2)


@pytest.mark.parametrize("mode, times", [("soft", 3), ("hard", 3), ("sequential", 3), ("fused", 3), ("soft", 5)])
def test_a_model_with_the_warp_input_generates_in_every_mode_and_in_chunks(engine_files, tmp_path, mode, times):
    """The studio's path: a saved model with (trained, non-zero) warp weights loads and generates
    from two videos in every stream mode and past its chunk of times; the known cells come back
    exactly as read."""
    from core.engine import Engine, GenerateRequest
    from core.grid import Grid
    from core.model.testing import tiny_model
    from core.video import load_inputs

    m = tiny_model(trained=True)
    assert m.transformer.add_warp_input()
    m.config.warp_input = True
    with torch.no_grad():
        m.transformer.layers.warp_embedding.weight.normal_(0, 0.05)
    folder = m.save_pretrained(tmp_path / "model")
    assert FourDModel.from_pretrained(folder).transformer.warp_input
    req = GenerateRequest(fixed_view=engine_files["fixed"], freeze_time=engine_files["orbit"], views=2, times=times,
                          height=16, width=16, steps=2, mode=mode, dense=False)
    out = tmp_path / "run"
    Engine(str(folder), "cpu").generate(req, out)
    assert json.loads((out / "manifest.json").read_text())["status"] == "done"
    grid = Grid.load_npz(out / "grid.npz")
    assert grid.frames.shape == (2, times, 16, 16, 3) and (out / "grid.png").is_file()
    inp = load_inputs(engine_files["fixed"], engine_files["orbit"], 2, times, 16, 16)
    assert np.array_equal(grid.frames[0], inp["row0"]) and np.array_equal(grid.frames[1:, 0], inp["col0"][1:])
