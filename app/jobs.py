"""Long engine calls from the studio: run one in a worker thread, hand its newest progress report
to the event handler (a generator that streams it to the page), honour Cancel, and turn failures
into one line a person can act on.

The worker holds ``gpu_lock`` for the whole call, so even a job whose page went away (its handler
closed early) finishes or cancels before the next one touches the GPU.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterator

from core.errors import Cancelled, InputError

log = logging.getLogger("studio")

Work = Callable[[Callable[..., None], Callable[[], bool]], Any]  # work(on_progress, should_cancel)


class Job:
    """``with Job(work, should_cancel, lock) as job: for args in job.reports(): ...; job.result()``.

    ``reports`` yields the arguments of the newest ``on_progress`` call whenever a new one arrived
    (older ones are dropped: the page only needs the latest); ``result`` returns the work's value or
    raises its exception. Leaving the ``with`` block early cancels the work and waits for it.
    """

    def __init__(self, work: Work, should_cancel: Callable[[], bool] = lambda: False,
                 gpu_lock: threading.Lock | None = None, poll_s: float = 0.1):
        self._work = work
        self._should_cancel = should_cancel
        self._lock = gpu_lock
        self._poll_s = poll_s
        self._latest: tuple | None = None
        self._done = threading.Event()
        self._abandoned = False
        self._result: Any = None
        self._error: BaseException | None = None
        self.started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="studio-job", daemon=True)

    def cancelled(self) -> bool:
        return self._abandoned or bool(self._should_cancel())

    def _on_progress(self, *args) -> None:
        self._latest = args

    def _run(self) -> None:
        try:
            if self._lock is not None:
                with self._lock:
                    self.started = time.perf_counter()  # waiting for the GPU is not work
                    self._result = self._work(self._on_progress, self.cancelled)
            else:
                self._result = self._work(self._on_progress, self.cancelled)
        except BaseException as e:  # handed to the handler thread by result()
            self._error = e
        finally:
            self._done.set()

    def __enter__(self) -> "Job":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        if not self._done.is_set():
            self._abandoned = True
            self._thread.join()
        return False

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def reports(self) -> Iterator[tuple]:
        seen = None
        while True:
            finished = self._done.wait(self._poll_s)
            latest = self._latest
            if latest is not None and latest is not seen:
                seen = latest
                yield latest
            if finished:
                return

    def result(self) -> Any:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._result


def clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def time_left(elapsed: float, step: int, total: int) -> str:
    """'about 0:12 left' from the pace so far ('' until there is a pace to go by)."""
    if step <= 0 or total <= 0 or step >= total:
        return ""
    return f"about {clock(elapsed / step * (total - step))} left"


def is_out_of_memory(e: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA or MPS) without importing torch here."""
    return type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower()


def explain_failure(e: BaseException, lower: str) -> str | None:
    """One line for the page, or None for a cancellation. ``lower`` says what to lower on OOM."""
    if isinstance(e, Cancelled):
        return None
    if isinstance(e, InputError):
        return str(e)
    if is_out_of_memory(e):
        return f"The GPU ran out of memory. Lower {lower} and try again."
    log.exception("engine call failed", exc_info=e)
    return f"Something went wrong inside the engine ({type(e).__name__}: {e}). Nothing was saved; details are in the terminal."
