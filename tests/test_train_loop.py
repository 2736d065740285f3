"""Contracts of the training loop on the tiny preset (CPU, seconds): a step learns, a killed run
resumes exactly, the replay pool hands out true grids."""

import json

import pytest
import torch

from core.errors import InputError
from core.model.pipeline import FourDModel
from core.train.config import TrainConfig
from core.train.data import Batch, ReplayPool
from core.train.flow import add_noise, masked_velocity_loss
from core.train.loop import check_config, encode_text_train, train, train_step, trainable
from core.train.masks import grid_mask, parse_families

torch.set_num_threads(1)


def _smooth_batch(B=4, V=2, T=3, H=16, W=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(B, V, T, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low.reshape(-1, 3, 4, 4), size=(H, W), mode="bilinear")
    return x.reshape(B, V, T, 3, H, W) * 2 - 1


def _fixed_loss(model, x0, known, sigma, noise, captions):
    with torch.no_grad():
        text = encode_text_train(model.text, captions, "cpu")
        xt = add_noise(x0, noise, sigma)
        v = model.transformer(xt, sigma, text, cond=x0, known=known, mode="soft")
        return masked_velocity_loss(v, noise - x0, known).item()


def test_train_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = FourDModel.from_preset("tiny")
    net = trainable(model).train()
    cfg = TrainConfig(out="unused", preset="tiny", views=2, times=3)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    x0 = _smooth_batch()
    b = Batch(x0, ["a red box on a gray floor"] * 4, torch.zeros(4, dtype=torch.long))
    known = grid_mask("row0+col0", 2, 3).expand(4, -1, -1)
    sigma = torch.tensor([0.3, 0.5, 0.7, 0.9])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    before = _fixed_loss(model, x0, known, sigma, noise, b.captions)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        train_step(model, net, opt, [b], 3, cfg, parse_families("row0+col0"), g, torch.device("cpu"))
    after = _fixed_loss(model, x0, known, sigma, noise, b.captions)
    assert after < 0.8 * before, (before, after)


def _tiny_cfg(out, **kw):
    base = dict(out=str(out), preset="tiny", views=2, times=3, minutes=10, max_steps=3, batch=2, schedule="3@16x16:1",
                eval_scenes=1, eval_steps=1, eval_size="16x16", eval_every_min=10, save_every_min=10,
                log_every=1, warmup_steps=1, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _weights(folder):
    m = FourDModel.from_pretrained(folder)
    return {**{f"t.{k}": v for k, v in m.transformer.state_dict().items()},
            **{f"e.{k}": v for k, v in m.text.encoder.state_dict().items()}}


def test_resume_continues_the_step_count_from_saved_weights(tmp_path):
    out = tmp_path / "run"
    s1 = train(_tiny_cfg(out), log=lambda s: None)
    assert s1["step"] > 0
    rec = json.loads((out / "model" / "training.json").read_text())
    assert rec["step"] == s1["step"] and len(rec["curve"]["points"]) == 1
    assert set(rec["curve"]["baselines"]) == {"copy_column0", "copy_row0"}
    saved = _weights(out / "model")
    # Resuming loads exactly the saved weights (EMA, fp16 on disk) ...
    state = torch.load(out / "state.pt", weights_only=True)
    for k, v in state["ema"]["shadow"].items():
        name = ("t." + k[len("transformer."):]) if k.startswith("transformer.") else ("e." + k[len("text_encoder."):])
        assert torch.equal(v.half().float(), saved[name].float()), k
    # ... and a second session counts on from the first one's step, in the same folder.
    lines_before = len((out / "log.jsonl").read_text().splitlines())
    s2 = train(_tiny_cfg(out, resume=str(out)), log=lambda s: None)
    assert s1["step"] == 3 and s2["step"] == 6
    rec2 = json.loads((out / "model" / "training.json").read_text())
    assert rec2["step"] == s2["step"] and len(rec2["curve"]["points"]) == 2
    assert len(rec2["sessions"]) == 2 and rec2["sessions"][1]["start_step"] == s1["step"]
    # noise levels: shift 3 from scratch, then the model's own sampling shift (the tiny preset's 1)
    assert FourDModel.from_preset("tiny").config.shift == 1.0
    assert [s["config"]["sigma_shift"] for s in rec2["sessions"]] == [3.0, 1.0]
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) > lines_before and log[lines_before]["step"] == s1["step"] + 1
    assert (out / "learning_curve.png").is_file() and list((out / "samples").glob("*.png"))
    from core.eval.run import trained_modes

    assert trained_modes(out / "model") == {"soft"}


def test_resume_from_a_bare_model_folder_starts_from_its_weights(tmp_path):
    src = tmp_path / "bare"
    m = FourDModel.from_preset("tiny", seed=3)
    m.save_pretrained(src)
    out = tmp_path / "run"
    cfg = _tiny_cfg(out, resume=str(src), max_steps=1)
    s = train(cfg, log=lambda s: None)
    assert s["step"] == 1
    # nothing trained for long: the weights stay close to the bare folder's, not a fresh init
    a, b = _weights(src), _weights(out / "model")
    fresh = {f"t.{k}": v for k, v in FourDModel.from_preset("tiny", seed=4).transformer.state_dict().items()}
    k = "t.backbone.blocks.0.attn1.to_q.weight" if "t.backbone.blocks.0.attn1.to_q.weight" in a else next(iter(fresh))
    assert (a[k].float() - b[k].float()).abs().max() < (a[k].float() - fresh[k].float()).abs().max()


def test_replay_pool_hands_out_stored_grids_flipped_or_reversed():
    src_x = _smooth_batch(B=3, V=3, T=2, H=8, W=8)
    src = iter([[Batch(src_x, ["a", "b", "c"], torch.zeros(3, dtype=torch.long))]] * 100)
    pool = ReplayPool(src, batch=5, pool_size=6, generator=torch.Generator().manual_seed(0), reverse_views=True)
    stored = ReplayPool.to_uint8(src_x).float() / 127.5 - 1
    variants = [stored, stored.flip(-1), stored.flip(1), stored.flip(-1).flip(1)]
    seen = set()
    for _ in range(10):
        (b,) = pool.__next__()
        assert b.x0.shape == (5, 3, 2, 3, 8, 8)
        for x, cap in zip(b.x0, b.captions):
            j = "abc".index(cap)
            hits = [k for k, var in enumerate(variants) if torch.equal(x, var[j])]
            assert hits, "a pooled grid must be a stored grid, mirrored and/or view-reversed"
            seen.update(hits)
    assert seen == {0, 1, 2, 3}


def test_replay_pool_renders_less_when_rendering_is_slow():
    x = _smooth_batch(B=2, V=2, T=2, H=8, W=8)
    calls = {"n": 0}

    def slow_source():
        import time

        while True:
            calls["n"] += 1
            time.sleep(0.01)
            yield [Batch(x, ["a", "b"], torch.zeros(2, dtype=torch.long))]

    pool = ReplayPool(slow_source(), batch=8, pool_size=32, generator=torch.Generator().manual_seed(0), chunks=(1, 4))
    next(pool)
    for _ in range(5):
        pool.observe(0.002)  # steps far faster than rendering: one chunk a step is enough
        next(pool)
    assert pool.k == 1 and pool.reuse > 2
    for _ in range(30):
        pool.observe(1.0)  # slow steps: render everything fresh again
        next(pool)
    assert pool.k == 4


def test_render_share_sets_how_many_fresh_chunks_a_step_renders():
    """With rendering known to take 10 ms a chunk and steps 40 ms, a share of 0.5 renders 2
    chunks a step, 0.25 one; the share reaches the pool from the training settings."""
    from core.train.data import stage_batches

    def pool_with(share):
        pool = ReplayPool(iter(()), batch=8, pool_size=32, generator=torch.Generator().manual_seed(0), chunks=(1, 8),
                          ratio=share)
        pool.render_s = 0.01
        pool.observe(0.04)
        return pool.k

    assert (pool_with(0.5), pool_with(0.25), pool_with(2.0)) == (2, 1, 8)
    it = stage_batches(3, 8, 2, 3, 8, 8, "cpu", seed=5, reuse=0.0, pool_size=16, render_share=0.3)
    assert isinstance(it, ReplayPool) and it.ratio == 0.3
    with pytest.raises(InputError, match="render share"):
        check_config(TrainConfig(out="x", render_share=0))
    for bad in (0.0, -1.0, 1000.0):
        with pytest.raises(InputError, match="sigma shift"):
            check_config(TrainConfig(out="x", sigma_shift=bad))
    check_config(TrainConfig(out="x", sigma_shift=9.0))


def test_phase_batches_keep_pixels_per_step_within_caps():
    from core.train.config import Phase
    from core.train.loop import phase_batch

    cfg = TrainConfig(out="x", batch=16, max_batch=64)
    assert phase_batch(cfg, Phase(3, 72, 128, 1.0), (72, 128)) == 16
    assert phase_batch(cfg, Phase(3, 36, 64, 1.0), (72, 128)) == 64  # 4x fewer pixels a grid
    video = phase_batch(cfg, Phase(1, 72, 128, 1.0), (72, 128))
    assert video == 64 and video % 2 == 0  # 8x fewer frames, capped at 4x the batch for planning


@pytest.mark.parametrize("stage,reuse", [(1, 1.0), (2, 1.0), (3, 1.0), (3, 0.0)])
def test_training_batches_come_from_training_seeds_only(stage, reuse):
    from core.model.config import CONTEXT_DYNAMIC, CONTEXT_FREEZE, CONTEXT_GRID
    from core.train.data import stage_batches
    from core.world.split import is_train_seed

    it = stage_batches(stage, 4, 2, 3, 8, 8, "cpu", seed=5, reuse=reuse, pool_size=8)
    for _ in range(2):
        batches = next(it)
        for b in batches:
            assert b.seeds and all(is_train_seed(s) for s in b.seeds)
            assert b.x0.min() >= -1 and b.x0.max() <= 1 and len(b.captions) == b.x0.shape[0]
            if stage == 1:
                V, T = b.x0.shape[1:3]
                want = CONTEXT_FREEZE if T == 1 else CONTEXT_DYNAMIC
                assert (V, T) in ((3, 1), (1, 3)) and bool((b.context == want).all())
            else:
                assert b.x0.shape[1:3] == (2, 3) and bool((b.context == CONTEXT_GRID).all())


@pytest.mark.parametrize("mode", ["soft", "hard", "fused"])
def test_training_forward_carries_gradients_to_every_new_layer_it_uses(mode):
    torch.manual_seed(0)
    model = FourDModel.from_preset("tiny")
    tr = model.transformer
    x0 = _smooth_batch(B=2)
    known = grid_mask("row0+col0", 2, 3).expand(2, -1, -1)
    text = encode_text_train(model.text, ["a red box", "a blue ball"], "cpu")
    sigma = torch.tensor([0.4, 0.8])
    noisy = add_noise(x0, torch.randn_like(x0), sigma)
    v = tr(noisy, sigma, text, cond=x0, known=known, mode=mode)
    masked_velocity_loss(v, torch.randn_like(v), known).backward()
    assert tr.layers.cond_embedding.weight.grad.abs().sum() > 0  # zero-init, yet it learns
    assert model.text.encoder.shared.weight.grad.abs().sum() > 0  # the text encoder trains too
    if mode != "fused":
        syncs = tr.layers.soft_sync if mode == "soft" else tr.layers.hard_sync
        assert all(s.weight_v.grad.abs().sum() > 0 for s in syncs)


def test_warm_up_ramps_a_fresh_start_and_an_exact_resume_starts_at_full_rate(tmp_path):
    out = tmp_path / "run"
    kw = dict(lr=1e-3, lr_schedule="constant", warmup_steps=100, max_steps=2)
    train(_tiny_cfg(out, **kw), log=lambda s: None)
    train(_tiny_cfg(out, resume=str(out), **kw), log=lambda s: None)
    lrs = [json.loads(l)["lr"] for l in (out / "log.jsonl").read_text().splitlines()]
    # fresh Adam moments: 1/100, 2/100 of the rate; restored ones (exact resume): the rate itself
    assert lrs == pytest.approx([1e-5, 2e-5, 1e-3, 1e-3])
    # a resume from a model folder's weights has fresh moments again, so it warms up
    out2 = tmp_path / "run2"
    train(_tiny_cfg(out2, resume=str(out / "model"), **dict(kw, max_steps=1)), log=lambda s: None)
    assert [json.loads(l)["lr"] for l in (out2 / "log.jsonl").read_text().splitlines()] == pytest.approx([1e-5])


def test_ema_start_warm_moves_at_the_full_decay_from_the_first_update():
    from core.train.ema import EMA

    net = torch.nn.Linear(3, 2)
    for warm, first_weight in ((False, 1 - 2 / 11), (True, 1 - 0.99)):  # fresh: decay_1 = min(0.99, 2/11)
        ema = EMA(net, decay=0.99)
        if warm:
            ema.start_warm()
        before = ema.shadow["weight"].clone()
        with torch.no_grad():
            net.weight.add_(1.0)
        ema.update(net)
        assert torch.allclose(ema.shadow["weight"] - before, torch.full_like(before, first_weight), atol=1e-6), warm
        with torch.no_grad():
            net.weight.sub_(1.0)


def test_a_weights_resume_with_a_warm_ema_stays_near_the_loaded_weights(tmp_path):
    src = tmp_path / "bare"
    FourDModel.from_preset("tiny", seed=3).save_pretrained(src)
    a = _weights(src)
    moved = {}
    for start in ("fresh", "warm"):
        out = tmp_path / start
        train(_tiny_cfg(out, resume=str(src), max_steps=1, lr=1e-2, ema_decay=0.9, ema_start=start), log=lambda s: None)
        b = _weights(out / "model")
        moved[start] = sum(float((a[k].float() - b[k].float()).abs().sum()) for k in a if k.startswith("t."))
        rec = json.loads((out / "model" / "training.json").read_text())
        assert rec["sessions"][-1]["config"]["ema_start"] == start
    # the same raw step (same seed); the EMA takes 1 - 0.9 of it warm, 1 - 2/11 of it fresh
    assert 0.05 < moved["warm"] / moved["fresh"] < 0.2, moved
    with pytest.raises(InputError, match="ema_start"):
        check_config(_tiny_cfg(tmp_path / "x", ema_start="lukewarm"))


def test_uncompile_undoes_module_compile():
    from core.train.loop import _uncompile

    m = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    eager = m(x)
    m.compile(backend="eager")
    assert m._compiled_call_impl is not None
    _uncompile(m)
    assert m._compiled_call_impl is None
    assert torch.equal(m(x), eager)
