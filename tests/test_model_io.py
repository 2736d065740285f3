"""Model folders: save / load round trips, fp16 files under 16 MB, one loading path for our folders
and plain Wan folders, the word-level tokenizer, the Wan VAE codec (time-only compression)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from core.errors import InputError
from core.model.codec import WanVAECodec
from core.model.pipeline import FourDModel, model_hash
from core.model.testing import TEST_WORDS, tiny_model
from core.model.text import TextEncoder, build_word_tokenizer


def forward_all_modes(model: FourDModel, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    V, T, C, h, w = model.latent_shape(2, 3 if model.codec.name == "pixels" else 5, 16, 16)
    x = torch.randn(1, V, T, C, h, w, generator=g)
    cond = torch.randn(1, V, T, C, h, w, generator=g)
    known = torch.zeros(1, V, T, dtype=torch.bool)
    known[0, 0, :] = True
    text = model.text.encode(["a red ball rolls"])
    with torch.no_grad():
        return {m: model.transformer(x, torch.tensor([0.7]), text, cond, known, mode=m)
                for m in ("soft", "hard", "sequential", "fused")}


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    m0 = tiny_model(trained=True)
    m1 = FourDModel.from_pretrained(m0.save_pretrained(tmp_path / "a"))
    m2 = FourDModel.from_pretrained(m1.save_pretrained(tmp_path / "b"))
    o0, o1, o2 = forward_all_modes(m0), forward_all_modes(m1), forward_all_modes(m2)
    for mode in o0:
        assert torch.equal(o1[mode], o2[mode]), mode  # a loaded model saves and loads exactly
        assert (o0[mode] - o1[mode]).abs().max() < 2e-2, mode  # fp16 storage of float32 weights
    assert m1.text.tokenizer.get_vocab() == m0.text.tokenizer.get_vocab()
    assert model_hash(tmp_path / "a") == model_hash(tmp_path / "b")


def test_saved_weights_are_fp16_safetensors_under_16mb(tmp_path):
    folder = tiny_model().save_pretrained(tmp_path / "m")
    files = list(folder.rglob("*.safetensors"))
    assert {f.parent.name for f in files} >= {"transformer", "fourd_layers", "text_encoder"}
    for f in files:
        assert f.stat().st_size <= 16 * 2**20
        with safe_open(f, "pt") as st:
            assert {st.get_slice(k).get_dtype() for k in st.keys()} == {"F16"}, f
    cfg = json.loads((folder / "fourd.json").read_text())
    assert cfg["codec"] == "pixels" and cfg["chunk_times"] == 3


def test_plain_wan_folder_loads_through_the_same_path_with_identity_new_layers(tmp_path):
    ours = tiny_model(seed=1)
    folder = ours.save_pretrained(tmp_path / "wan")
    (folder / "fourd.json").unlink()  # a diffusers Wan folder has neither of these
    import shutil

    shutil.rmtree(folder / "fourd_layers")
    loaded = FourDModel.from_pretrained(folder)
    assert loaded.config.text_encoder == "umt5" and loaded.config.codec == "pixels"
    loaded.text.max_len = 8  # our tiny settings instead of Wan's (512 text tokens, 8-time chunks)
    loaded.transformer.chunk_times = 3
    reference = FourDModel.from_pretrained(ours.save_pretrained(tmp_path / "ours"))
    a, b = forward_all_modes(loaded), forward_all_modes(reference)
    for mode in a:  # fresh new layers = identity / training-free formulas, as in a fresh model
        tol = 1e-5 if mode == "soft" else 0.0  # the saved soft weights w_l are fp16-rounded
        assert (a[mode] - b[mode]).abs().max() <= tol, mode


def test_loading_refuses_missing_or_broken_folders(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        FourDModel.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a model folder"):
        FourDModel.from_pretrained(tmp_path / "empty")
    folder = tiny_model().save_pretrained(tmp_path / "m")
    for f in (folder / "transformer").glob("*.safetensors"):
        f.write_bytes(b"not weights")
    with pytest.raises(InputError, match="could not be loaded"):
        FourDModel.from_pretrained(folder)


def test_word_tokenizer_round_trips_through_save_pretrained(tmp_path):
    from transformers import AutoTokenizer

    tok = build_word_tokenizer(TEST_WORDS)
    ids = tok(["A red ball rolls on the floor"]).input_ids[0]
    assert tok.convert_ids_to_tokens(ids) == ["a", "red", "ball", "rolls", "on", "the", "floor", "</s>"]
    assert tok(["purple"]).input_ids[0][0] == tok.unk_token_id
    tok.save_pretrained(tmp_path / "tok")
    back = AutoTokenizer.from_pretrained(tmp_path / "tok", local_files_only=True)
    assert back(["A red ball rolls on the floor"]).input_ids[0] == ids


def test_text_encoder_pads_with_zeros_like_wan():
    enc = TextEncoder.build_tiny(TEST_WORDS, max_len=8, d_model=16, d_kv=4, d_ff=24, num_heads=4)
    states = enc.encode(["red ball", "a blue cube spins on the floor"])
    assert states.shape == (2, 8, 16)
    assert (states[0, 3:] == 0).all() and (states[0, :3] != 0).any()  # "red ball </s>" then zeros
    assert enc.unknown_words("a purple ball") == ["purple"]


def test_wan_vae_codec_compresses_time_only():
    torch.manual_seed(0)
    codec = WanVAECodec.build(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                              temperal_downsample=[False, True, True])
    frames = torch.rand(1, 2, 5, 3, 16, 16) * 2 - 1  # V=2 views, T=5 times
    z = codec.encode(frames)
    assert z.shape == (1, 2, 2, 16, 2, 2)  # views kept, times (5-1)//4+1, space /8
    assert codec.decode(z).shape == frames.shape
    # Each view is its own clip: changing view 1 leaves view 0's latents alone.
    other = frames.clone()
    other[:, 1] = -other[:, 1]
    assert torch.equal(codec.encode(other)[:, 0], z[:, 0])
    known = torch.tensor([[[True, True, False, False, False], [True, False, False, False, False]]])
    mask = codec.mask(known)
    assert mask.shape == (1, 2, 2, 4)
    assert mask[0, 0, 0].all() and mask[0, 0, 1].tolist() == [True, False, False, False]
    with pytest.raises(InputError, match="4k\\+1"):
        codec.check_times(8)


def test_vae_model_saves_loads_and_runs(tmp_path):
    m0 = tiny_model(name="tiny-vae", trained=True)
    m1 = FourDModel.from_pretrained(m0.save_pretrained(tmp_path / "vae-model"))
    assert isinstance(m1.codec, WanVAECodec) and m1.transformer.mask_channels == 4
    o0, o1 = forward_all_modes(m0), forward_all_modes(m1)
    for mode in o0:
        assert o1[mode].shape == (1, 2, 2, 16, 2, 2)
        assert (o0[mode] - o1[mode]).abs().max() < 2e-2


def test_parameter_groups_split_backbone_from_new_layers():
    model = tiny_model()
    groups = model.transformer.parameter_groups()
    ids_b = {id(p) for p in groups["backbone"]}
    ids_n = {id(p) for p in groups["new"]}
    assert not ids_b & ids_n
    assert len(ids_b) + len(ids_n) == len(list(model.transformer.parameters()))
    assert model.transformer.layers.cond_embedding.weight is not None
    assert id(model.transformer.layers.cond_embedding.weight) in ids_n
