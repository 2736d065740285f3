"""``core.cputhreads``: torch's CPU threads follow the cores other processes leave free."""

from __future__ import annotations

import torch

import core.cputhreads as ct


def test_free_cores_leaves_what_others_use_and_keeps_one():
    assert [ct.free_cores(b, 2) for b in (0.0, 0.4, 0.6, 1.0, 1.9, 5.0)] == [2, 2, 1, 1, 1, 1]
    assert ct.free_cores(1.2, 8) == 7 and ct.free_cores(-0.3, 4) == 4


def test_threads_drop_while_another_process_is_busy_and_come_back(monkeypatch):
    clock, busy, own = [100.0], [0.0], [0.0]  # seconds: wall, whole machine busy, this process
    monkeypatch.setattr(ct.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(ct, "_machine_busy_s", lambda: busy[0])
    monkeypatch.setattr(ct, "_own_cpu_s", lambda: own[0])
    monkeypatch.setattr(ct, "_cpu_count", lambda: 2)
    start = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        th = ct.CpuThreads(every_s=2.0)

        def run(seconds, ours, others):  # ``ours`` and ``others`` cores busy for ``seconds``
            clock[0] += seconds
            own[0] += ours * seconds
            busy[0] += (ours + others) * seconds
            return th.update()

        assert run(1.0, 2.0, 1.0) == 2  # too soon to measure again
        assert run(2.0, 2.0, 1.0) == 1 and torch.get_num_threads() == 1  # 3 s with another core busy
        assert run(3.0, 1.0, 1.0) == 1
        assert run(3.0, 1.0, 0.0) == 2 and torch.get_num_threads() == 2  # the other process ended
        assert th.threads_used == [2, 1, 2]
        run(3.0, 2.0, 1.0)
        th.close()
        assert torch.get_num_threads() == 2  # as it started
    finally:
        torch.set_num_threads(start)


def test_without_proc_stat_nothing_changes(monkeypatch):
    monkeypatch.setattr(ct, "_machine_busy_s", lambda: None)
    n = torch.get_num_threads()
    th = ct.CpuThreads(every_s=0.0)
    assert th.update() == n and th.threads_used == [n]
    th.close()
    assert torch.get_num_threads() == n
