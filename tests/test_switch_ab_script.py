"""scripts/switch_ab.py: one engine switch on and off in turns in one process, on the README's
generate command (a 3-step pair here), leaving every switch as it found it."""

import pytest

from core.model import attention as A
from core.model import blocks


def test_switch_ab_times_both_sides_in_turns_and_restores_the_switches(load_script, monkeypatch, capsys):
    mod = load_script("switch_ab")
    seen = []
    real = A.cpu_attention
    monkeypatch.setattr(A, "cpu_attention", lambda *a: seen.append(A.get_cpu_matmul_attention()) or real(*a))
    sets = []
    real_set = blocks.set_engine_switches
    monkeypatch.setattr(blocks, "set_engine_switches", lambda sw: sets.append(dict(sw)) or real_set(sw))
    before = blocks.engine_switches()
    out = mod.main(["cpu_attention", "--pairs", "1", "--steps", "3"])
    assert sets[:2] == [{"cpu_attention": True}, {"cpu_attention": False}] and sets[2] == before
    assert blocks.engine_switches() == before
    assert out["switch"] == "cpu_attention" and out["on_s"] > 0 and out["off_s"] > 0
    assert out["ratio"] == pytest.approx(out["on_s"] / out["off_s"])
    assert seen and set(seen) == {True}  # the matmul attention ran, and only while switched on
    printed = capsys.readouterr().out
    assert "pair 1: cpu_attention on " in printed and "pair 1: cpu_attention off" in printed


def test_switch_ab_refuses_a_switch_that_is_not_on_off(load_script, capsys):
    mod = load_script("switch_ab")
    for bad in ("sdpa", "fastest"):
        with pytest.raises(SystemExit):
            mod.main([bad])
        assert "switch must be one of" in capsys.readouterr().err
