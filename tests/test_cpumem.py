"""keep_freed_memory: large blocks come from the heap and stay there when freed, for the next step."""

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import cpumem

REPO = Path(__file__).resolve().parents[1]

# A 20 MB tensor made and freed in a fresh process, in the main thread or, as the studio makes
# them, in a worker thread; prints what glibc's mallinfo2 says about it (whole-process figures).
PROBE = """
import ctypes, sys, threading
import torch
sys.path.insert(0, {repo!r})
from core.cpumem import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
out = []
def probe():
    before = libc.mallinfo2()
    t = torch.empty(5 * 2 ** 20).fill_(1)
    during = libc.mallinfo2()
    del t
    after = libc.mallinfo2()
    out.append((during.hblkhd - before.hblkhd, after.fordblks))
if sys.argv[2] == "thread":
    th = threading.Thread(target=probe)
    th.start()
    th.join()
else:
    probe()
print(*out[0])
"""


def _probe(how: str, where: str) -> tuple[int, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", PROBE.format(repo=str(REPO)), how, where], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    mapped, free = out.stdout.split()[-2:]
    return int(mapped), int(free)


def _has_mallinfo2() -> bool:
    try:
        return cpumem._mallopt() is not None and hasattr(ctypes.CDLL(None), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _has_mallinfo2(), reason="glibc's mallopt and mallinfo2 are not available here")
@pytest.mark.parametrize("where", ["main", "thread"])
def test_freed_memory_stays_with_the_process(where):
    MB = 2 ** 20
    # glibc by default: a fresh 20 MB block is mapped on its own and unmapped when freed, so the
    # next one faults in 5,000 pages again
    mapped, free = _probe("default", where)
    assert mapped >= 20 * MB and free < 4 * MB, (mapped, free)
    # kept: it comes from the heap and stays there, in a worker thread too
    mapped, free = _probe("keep", where)
    assert mapped < MB and free >= 20 * MB, (mapped, free)


def test_the_environment_settings_stand(monkeypatch):
    monkeypatch.setattr(cpumem, "_state", None)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    called = []
    monkeypatch.setattr(cpumem, "_mallopt", lambda: called.append(1))
    assert cpumem.keep_freed_memory() is True
    assert called == []  # the user's thresholds are not overridden


def test_launch_keeps_freed_memory_only_for_cpu_runs():
    from argparse import Namespace

    import torch

    import launch

    assert launch._runs_on_cpu(Namespace(device="cpu"))
    assert not launch._runs_on_cpu(Namespace(device="cuda"))
    assert launch._runs_on_cpu(Namespace(device="auto")) == (not torch.cuda.is_available())
    assert not launch._runs_on_cpu(Namespace())  # commands without a model or a fit (export, ...)
