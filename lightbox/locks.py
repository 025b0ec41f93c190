"""One writer at a time: for a project's stages that rewrite several of its folders together, and for a
bulk-scoring results folder.

An import reads the golden set and the dataset, then swaps in new ones. Two imports at once had each
read the other's half of the picture: the second, reading before the first had set the golden slice
aside, swapped in a data/ that held every golden photo (trained on, while the gates judged on them).
Two bulk jobs into one results folder each scored every image (two rows per image), and the second's
start removed the first's part being written as a killed job's leftover.

A lock is an advisory ``flock`` on a file: the kernel drops it when its process ends, however it ends
(SIGKILL included), so a killed writer never leaves anything locked. The holder writes who it is into
the file, for the refusal to name it.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from lightbox.owner import this_host
from lightbox.settings import Settings


class Busy(RuntimeError):
    """Another process holds the lock (the message names it and what to do)."""


# Locks this process holds: path -> (descriptor, holds). A flock is per open file, so the same process
# opening the file again would be refused by itself; within one process the lock is counted instead.
_held: dict[Path, tuple[int, int]] = {}
_lock = threading.Lock()


def acquire(path: Path, what: str) -> int:
    """Take the lock at ``path`` (created if need be) and return its descriptor, to give to release();
    raises Busy at once, naming the holder, when another process holds it. No waiting: an import can
    take hours, and the user should know why nothing happens. ``what``: "another <what> is running"."""
    path = Path(os.path.abspath(path))
    with _lock:
        if path in _held:
            fd, holds = _held[path]
            _held[path] = (fd, holds + 1)
            return fd
        fd = _take(path, what)
        _held[path] = (fd, 1)
        return fd


def holds(fd: int) -> int:
    """How many holds this process has on the lock of ``fd`` (0: none)."""
    with _lock:
        return next((n for f, n in _held.values() if f == fd), 0)


def release(fd: int) -> None:
    """Give back one hold; the last one drops the lock. The file stays (a holder that wants it gone, as
    a results folder does, removes it before its last release, while it still holds the lock)."""
    with _lock:
        path = next((p for p, (f, _) in _held.items() if f == fd), None)
        if path is not None and _held[path][1] > 1:
            _held[path] = (fd, _held[path][1] - 1)
            return
        _held.pop(path, None)  # type: ignore[arg-type]
    os.close(fd)  # closing the descriptor drops the flock


def _take(path: Path, what: str) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise Busy(
            f"another {what} is running ({holder}): wait for it to end, then run this one again"
        ) from None
    holder_info = {"pid": os.getpid(), "host": this_host(), "started": datetime.now(UTC).isoformat()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder_info).encode(), 0)
    return fd


@contextmanager
def exclusive(settings: Settings, stage: str) -> Iterator[None]:
    """Hold the project's ``stage`` lock (under its state folder) for the block; Busy when held."""
    fd = acquire(settings.state / "locks" / f"{stage}.lock", f"{stage} in this project")
    try:
        yield
    finally:
        release(fd)


def _holder(fd: int) -> str:
    """Who holds the lock, as its holder wrote it (best effort: it may be between truncate and write)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        started = datetime.fromisoformat(info["started"]).astimezone().strftime("%H:%M:%S")
        return f"process {info['pid']} on {info['host']}, since {started}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
