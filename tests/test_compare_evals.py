"""scripts/compare_evals.py, the rule for shipping weights: a paired, scene-by-scene comparison of
two ``launch.py eval`` results. It reads the files the eval command writes, calls a consistent
gain "better", scene-level noise "not measurably different", and refuses results of other scenes."""

import copy
import json

import numpy as np
import pytest
import torch

import launch
from core.model.pipeline import FourDModel

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def real_eval(tmp_path_factory):
    """A result of the eval command itself (tiny model, 3 scenes of 16x16)."""
    d = tmp_path_factory.mktemp("cmp")
    FourDModel.from_preset("tiny").save_pretrained(d / "tiny")
    out = d / "eval.json"
    rc = launch.main(["eval", "--model", str(d / "tiny"), "--seeds", "3", "--size", "16x16", "--views", "2",
                      "--times", "3", "--steps", "1", "--modes", "soft", "--device", "cpu", "--precision", "fp32",
                      "--no-consistency", "--json", str(out)])
    assert rc == 0
    return json.loads(out.read_text())


def _with_scores(res, scores, path):
    res = copy.deepcopy(res)
    row = next(r for r in res["rows"] if r["row"] == "parallel soft trained")
    row["psnr_per_scene"] = list(map(float, scores))
    row["psnr"] = float(np.mean(scores))
    path.write_text(json.dumps(res))
    return path


def test_sign_test_exact_values(load_script):
    mod = load_script("compare_evals")
    assert mod.sign_test_p(8, 0) == pytest.approx(2 / 256)
    assert mod.sign_test_p(0, 8) == pytest.approx(2 / 256)
    assert mod.sign_test_p(4, 4) == 1.0
    assert mod.sign_test_p(7, 1) == pytest.approx(2 * 9 / 256)
    assert mod.sign_test_p(0, 0) == 1.0


def test_verdicts_on_the_eval_commands_own_files(real_eval, tmp_path, capsys, load_script):
    mod = load_script("compare_evals")
    per = real_eval["rows"][[r["row"] for r in real_eval["rows"]].index("parallel soft trained")]["psnr_per_scene"]
    assert len(per) == len(real_eval["seeds"]) == 3
    # the real file against itself: nothing changed
    old = _with_scores(real_eval, per, tmp_path / "old.json")
    assert mod.main([str(old), str(old)]) == 0
    text = capsys.readouterr().out
    assert "verdict: not measurably different" in text
    h = real_eval["model_info"]["hash"]
    assert f"hash {h}" in text and f"both results are of the same weights (hash {h})" in text
    # other weights scored on another device: said, not refused
    other = copy.deepcopy(real_eval)
    other["model_info"].update(hash="0123456789abcdef", device="cuda")
    other = _with_scores(other, per, tmp_path / "other.json")
    assert mod.main([str(old), str(other)]) == 0
    text = capsys.readouterr().out
    assert "same weights" not in text and "hash 0123456789abcdef" in text and "scored on cpu and on cuda" in text

    # 64 scenes: a steady +0.15 dB with scene noise of 0.1 dB is better; the same noise around 0 is not
    rng = np.random.default_rng(1)
    res = copy.deepcopy(real_eval)
    res["seeds"] = list(range(1_000_000_000, 1_000_000_064))
    base = 20 + 3 * rng.standard_normal(64)
    old = _with_scores(res, base, tmp_path / "old64.json")
    better = _with_scores(res, base + 0.15 + 0.1 * rng.standard_normal(64), tmp_path / "better.json")
    same = _with_scores(res, base + 0.1 * rng.standard_normal(64), tmp_path / "same.json")
    out = tmp_path / "stats.json"
    assert mod.main([str(old), str(better), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "verdict: better" in text and "64 scenes" in text
    stats = json.loads(out.read_text())
    assert stats["ci95"][0] > 0 and stats["sign_p"] < 0.05 and stats["up"] > stats["down"]
    assert stats["mean_diff"] == pytest.approx(stats["new_mean"] - stats["old_mean"])
    assert mod.main([str(better), str(old)]) == 0
    assert "verdict: worse" in capsys.readouterr().out
    assert mod.main([str(old), str(same)]) == 0
    assert "verdict: not measurably different" in capsys.readouterr().out


def test_refuses_results_it_cannot_pair(real_eval, tmp_path, capsys, load_script):
    mod = load_script("compare_evals")
    a = _with_scores(real_eval, [20.0, 21.0, 22.0], tmp_path / "a.json")
    other = copy.deepcopy(real_eval)
    other["seeds"] = [s + 1 for s in other["seeds"]]
    b = _with_scores(other, [20.0, 21.0, 22.0], tmp_path / "b.json")
    assert mod.main([str(a), str(b)]) == 2
    assert "different scenes" in capsys.readouterr().err
    steps = copy.deepcopy(real_eval)
    steps["settings"]["steps"] = 25
    c = _with_scores(steps, [20.0, 21.0, 22.0], tmp_path / "c.json")
    assert mod.main([str(a), str(c)]) == 2
    assert "steps (1 against 25)" in capsys.readouterr().err
    assert mod.main([str(a), str(a), "--row", "fused"]) == 2
    assert "no row 'fused'" in capsys.readouterr().err
    assert mod.main([str(a), str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "junk.json").write_text("[1, 2]")
    assert mod.main([str(a), str(tmp_path / "junk.json")]) == 2
    assert "not a result" in capsys.readouterr().err
