"""keep_freed_memory: a CPU loop's large temporaries stop faulting their pages in at every step."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import cpumem

REPO = Path(__file__).resolve().parents[1]

# Steps of a CPU loop on activations of the default model's size ([2, 9216, 192] in fp32,
# temporaries of 14-57 MB), run in the main thread or, as the studio runs them, in a worker
# thread; prints page faults per step after five steps of warm-up.
LOOP = """
import resource, sys, threading
import torch
import torch.nn.functional as F
sys.path.insert(0, {repo!r})
from core.cpumem import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.set_num_threads(1)
x = torch.randn(2, 9216, 192)
def step():
    h = F.layer_norm(x * 1.5, (192,))
    u = torch.cat([h, h], -1) * 2
    return float(F.gelu(u, approximate="tanh")[0, 0, 0])
faults = []
def work():
    for _ in range(5):
        step()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10)
if sys.argv[2] == "thread":
    t = threading.Thread(target=work)
    t.start()
    t.join()
else:
    work()
print(faults[0])
"""


def _faults_per_step(how: str, where: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", LOOP.format(repo=str(REPO)), how, where], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(cpumem._mallopt() is None, reason="glibc's mallopt is not available here")
@pytest.mark.parametrize("where", ["main", "thread"])
def test_keeping_freed_memory_stops_the_page_faults(where):
    default = _faults_per_step("default", where)
    kept = _faults_per_step("keep", where)
    # by default glibc hands the temporaries back (heap trimmed, a thread's arena unmapped) and the
    # next step faults them in again: 3,400-21,000 pages a step here; kept, 0-1,400
    assert default > 2000, default
    assert kept < 0.5 * default, (kept, default)


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
