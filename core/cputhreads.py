"""Torch's CPU threads matched to the cores other processes leave free.

Torch's OpenMP threads spin while they wait for one another. On a 2-core machine where another
process keeps one core busy, every parallel region then waits for the thread that lost its core:
a 3D fit of a 4 x 4 grid at 72x128 (300 steps) took 113 s with two threads against 42 s with one,
where on the idle machine two threads take 30 s. ``CpuThreads.update()``, called once per step of
a long CPU loop, measures over the time since its last measurement how much CPU the rest of the
machine used (``/proc/stat`` less this process's own time) and sets ``torch.set_num_threads`` to
the cores left free, between 1 and the count it started with. It does nothing where /proc/stat
cannot be read, and restores the starting count on ``close()``.
"""

from __future__ import annotations

import os
import time

# re-measure at most this often: long enough for the counters (10 ms ticks) to mean something
CHECK_EVERY_S = 2.0


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _machine_busy_s() -> float | None:
    """Seconds of CPU the whole machine has spent busy since boot (all cores), or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 5:
        return None
    ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def free_cores(busy_other: float, cores: int) -> int:
    """Threads for ``cores`` cores of which other processes keep ``busy_other`` busy (at least 1)."""
    return max(1, min(cores, int(round(cores - busy_other))))


class CpuThreads:
    """See the module's docstring. ``threads_used`` lists every count it set, in order."""

    def __init__(self, every_s: float = CHECK_EVERY_S):
        import torch

        self.torch = torch
        self.every_s = every_s
        self.start_threads = torch.get_num_threads()
        self.cores = min(_cpu_count(), self.start_threads)
        self.threads_used = [self.start_threads]
        self._mark = self._sample()

    def _sample(self):
        busy = _machine_busy_s()
        return None if busy is None else (time.perf_counter(), busy, _own_cpu_s())

    def update(self) -> int:
        """Set the thread count for the CPU load of the last interval; returns the count in use."""
        if self._mark is None or self.cores < 2:
            return self.torch.get_num_threads()
        now = time.perf_counter()
        if now - self._mark[0] < self.every_s:
            return self.torch.get_num_threads()
        sample = self._sample()
        if sample is None:
            return self.torch.get_num_threads()
        wall = sample[0] - self._mark[0]
        other = ((sample[1] - self._mark[1]) - (sample[2] - self._mark[2])) / wall  # cores busy elsewhere
        self._mark = sample
        n = free_cores(other, self.cores)
        if n != self.torch.get_num_threads():
            self.torch.set_num_threads(n)
            self.threads_used.append(n)
        return n

    def close(self) -> None:
        if self.torch.get_num_threads() != self.start_threads:
            self.torch.set_num_threads(self.start_threads)
