"""Per-browser-session state and folders: each session writes only under its own folder of the runs
root, every run gets a new folder, and the state kept between events is plain CPU data."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.runfolder import unique_path

_SAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass
class Session:
    """What one browser tab remembers between events (lives in ``gr.State``; CPU data only)."""

    key: str = ""  # this session's folder name under the runs root; set on first use
    runs: list[str] = field(default_factory=list)  # run folders made in this session, oldest first
    current: str = ""  # the run being explored ("" before the first one)
    view: Any = None  # its app.explore.RunView (paths and shape), so slider events read no files
    mode: str = "videos"  # the input tab: videos | image | prompt
    image: str | None = None  # the uploaded start image's path (see Studio.on_image)
    cancel: bool = False  # set by the generation's Cancel, read by its job's should_cancel
    cancel_recon: bool = False  # set by the reconstruction's Cancel, read by its job
    generating: bool = False  # a generation is queued or running (from its check to its end)
    reconstructing: str = ""  # the run folder being reconstructed ("" when none is queued or running)
    notes: dict = field(default_factory=dict)  # the last end-of-job status of each job kind (see Studio.job_done)


def session_key(session_hash: str | None) -> str:
    """A folder name for a browser session: its session hash made filesystem-safe, else random."""
    key = _SAFE.sub("", session_hash or "")[:40]
    return key or uuid.uuid4().hex[:16]


def session_folder(runs_root: Path, session: Session, session_hash: str | None = None) -> Path:
    """``runs_root/session-KEY``, fixing KEY on first use."""
    if not session.key:
        session.key = session_key(session_hash)
    return Path(runs_root) / f"session-{session.key}"


def new_run_path(runs_root: Path, session: Session, kind: str, session_hash: str | None = None) -> Path:
    """A fresh, not yet existing run folder path for this session, e.g. ``.../20261121-173501-grid``."""
    folder = session_folder(runs_root, session, session_hash)
    folder.mkdir(parents=True, exist_ok=True)
    return unique_path(folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{_SAFE.sub('', kind)}")


def run_of(session: Session, name: str) -> Path | None:
    """The session's own run called ``name`` (a folder name from its list), or None.

    Runs are only ever looked up in the session's list, never from a path the browser sends.
    """
    for r in session.runs:
        if Path(r).name == name:
            return Path(r)
    return None
