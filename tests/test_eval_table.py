"""Contracts of ``launch.py eval`` and ``launch.py train`` at the command line: the table runs on a
tiny model folder, its baseline rows are the baselines, bad arguments exit 2 with one line."""

import json

import numpy as np
import pytest
import torch

import launch
from core.eval.baselines import copy_cell0, copy_column0
from core.eval.metrics import psnr_unknown
from core.eval.run import render_eval_scenes, untrained_soft
from core.grid import known_mask
from core.model.pipeline import FourDModel
from core.model.sync import soft_sync_weight

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("m") / "tiny"
    FourDModel.from_preset("tiny").save_pretrained(folder)
    return folder


def test_eval_command_writes_the_table_with_true_baselines(tiny_folder, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = launch.main(["eval", "--model", str(tiny_folder), "--seeds", "2", "--size", "16x16", "--views", "2",
                      "--times", "3", "--steps", "1", "--modes", "soft,soft-untrained,fused,image,text",
                      "--device", "cpu", "--precision", "bf16", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["model_info"]["precision"] == "bf16" and res["model_info"]["dtype"] == "bfloat16"
    assert "--precision bf16" in res["command"]
    rows = {r["row"]: r for r in res["rows"]}
    assert set(rows) == {"ground truth", "copy_column0", "copy_row0", "parallel soft trained",
                         "parallel soft untrained", "fused", "copy_cell0", "image-to-4D", "text-to-4D"}
    names = [r["row"] for r in res["rows"]]
    assert names.index("copy_cell0") == names.index("image-to-4D") - 1  # image to 4D's own bar, beside it
    scenes = render_eval_scenes(2, 2, 3, 16, 16)
    known = known_mask(2, 3, "row0+col0")
    expect = np.mean([psnr_unknown(copy_column0(s.frames, known), s.frames, known) for s in scenes])
    assert rows["copy_column0"]["psnr"] == pytest.approx(expect)
    one = known_mask(2, 3, "cell0")
    per = [psnr_unknown(copy_cell0(s.frames, one), s.frames, one) for s in scenes]
    assert rows["copy_cell0"]["psnr_per_scene"] == pytest.approx(per) and rows["copy_cell0"]["mask"] == "cell0"
    assert rows["copy_cell0"]["psnr"] != pytest.approx(rows["copy_column0"]["psnr"])
    assert rows["text-to-4D"]["psnr"] is None and rows["image-to-4D"]["psnr"] is not None
    assert "| parallel soft trained |" in capsys.readouterr().out
    assert res["command"].startswith("python launch.py eval --model")


def test_eval_shift_reaches_the_sampler_and_is_recorded(tiny_folder, tmp_path):
    def soft_psnr(*shift):
        out = tmp_path / f"eval{len(shift)}{'_'.join(shift)}.json"
        rc = launch.main(["eval", "--model", str(tiny_folder), "--seeds", "1", "--size", "16x16", "--views", "2",
                          "--times", "3", "--steps", "2", "--modes", "soft", "--device", "cpu", "--precision", "fp32",
                          "--no-consistency", "--json", str(out), *shift])
        assert rc == 0
        res = json.loads(out.read_text())
        return res, {r["row"]: r for r in res["rows"]}["parallel soft trained"]["psnr"]

    own = FourDModel.from_pretrained(tiny_folder).config.shift
    res0, p0 = soft_psnr()
    res1, p1 = soft_psnr("--shift", "9")
    assert res0["shift"] == own and res1["shift"] == 9.0
    assert "--shift 9" in res1["command"] and "--shift" not in res0["command"]
    assert p0 != p1  # another schedule samples other grids


def test_eval_of_a_grid_smaller_than_the_models_samples_it_densely_as_generate_does(tiny_folder, tmp_path):
    """The tiny model makes 3 times at once: 2 times are sampled as the first and last of 3, and
    only those are scored; the baselines are those of the 2-time grid either way."""
    res = {}
    for flag in ("--dense", "--no-dense"):
        out = tmp_path / f"eval{flag}.json"
        rc = launch.main(["eval", "--model", str(tiny_folder), "--seeds", "2", "--size", "16x16", "--views", "2",
                          "--times", "2", "--steps", "1", "--modes", "soft", "--device", "cpu", "--precision", "fp32",
                          "--no-consistency", "--json", str(out), flag])
        assert rc == 0
        res[flag] = json.loads(out.read_text())
    rows = {f: {r["row"]: r for r in res[f]["rows"]} for f in res}
    scenes = render_eval_scenes(2, 2, 2, 16, 16)
    assert all(np.array_equal(a.frames, b.frames[:, ::2]) for a, b in zip(scenes, render_eval_scenes(2, 2, 3, 16, 16)))
    known = known_mask(2, 2, "row0+col0")
    expect = np.mean([psnr_unknown(copy_column0(s.frames, known), s.frames, known) for s in scenes])
    for f in res:
        assert rows[f]["copy_column0"]["psnr"] == pytest.approx(expect)
    assert res["--dense"]["settings"]["dense"] and "--no-dense" in res["--no-dense"]["command"]
    dense, direct = (rows[f]["parallel soft trained"]["psnr"] for f in ("--dense", "--no-dense"))
    assert dense != direct  # the unknown cell (1, 1) came from another grid


def test_untrained_soft_resets_only_the_soft_sync_layers(tiny_folder):
    m = FourDModel.from_pretrained(tiny_folder)
    with torch.no_grad():
        for p in m.transformer.parameters():
            p.add_(0.01)
    u = untrained_soft(m)
    L = len(u.transformer.layers.soft_sync)
    for l, layer in enumerate(u.transformer.layers.soft_sync):
        assert torch.allclose(layer.weight_v, torch.full_like(layer.weight_v, soft_sync_weight(l, L)))
    assert torch.equal(u.transformer.layers.cond_embedding.weight, m.transformer.layers.cond_embedding.weight)
    assert not torch.equal(m.transformer.layers.soft_sync[0].weight_v, u.transformer.layers.soft_sync[0].weight_v)


@pytest.mark.parametrize("argv", [
    ["eval", "--seeds", "0"],
    ["eval", "--modes", "diagonal"],
    ["eval", "--size", "72by128"],
    ["eval", "--shift", "0"],
    ["eval", "--model", "/nonexistent/model"],
    ["train", "--out", "X", "--minutes", "0"],
    ["train", "--out", "X", "--stage", "5"],
    ["train", "--out", "X", "--batch", "0"],
    ["train", "--out", "X", "--resume", "/nonexistent/run"],
    ["train", "--out", "X", "--preset", "huge"],
    ["train", "--out", "X", "--reuse", "0.5"],
    ["train"],
])
def test_bad_arguments_exit_2_with_one_line(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert launch.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(("error:", "launch.py")), err
    if argv != ["train"]:
        assert len(err) == 1, err


def test_tune_shift_scores_each_shift_on_seeds_outside_the_evaluation_range(tiny_folder, capsys, load_script):
    mod = load_script("tune_shift")
    base = ["--model", str(tiny_folder), "--device", "cpu", "--precision", "fp32", "--steps", "3"]
    assert mod.main([*base, "--first", "1001000100", "--scenes", "1", "--shifts", "1,9"]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(("| 1 |", "| 9 |"))]
    assert len(rows) == 2 and rows[0].split("|")[2] != rows[1].split("|")[2]  # each shift scored
    assert mod.main([*base, "--first", "999999999", "--scenes", "2"]) == 2  # reaches an evaluation seed
    assert "overlap the evaluation seeds" in capsys.readouterr().err
