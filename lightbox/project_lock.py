"""One writer at a time for a project's stages that rewrite several of its folders together.

An import reads the golden set and the dataset, then swaps in new ones. Two imports at once had each
read the other's half of the picture: the second, reading before the first had set the golden slice
aside, swapped in a data/ that held every golden photo (trained on, while the gates judged on them).
The lock is an advisory ``flock`` on a file under the project's state: the kernel drops it when its
process ends, however it ends (SIGKILL included), so a killed import never leaves the project locked.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from lightbox.owner import this_host
from lightbox.settings import Settings


class ProjectBusy(RuntimeError):
    """Another process holds the project's lock for the same stage (the message names it)."""


@contextmanager
def exclusive(settings: Settings, stage: str) -> Iterator[None]:
    """Hold the project's ``stage`` lock for the block; raises ProjectBusy at once when another process
    holds it (no waiting: an import can take hours, and the user should know why nothing happens)."""
    path = settings.state / "locks" / f"{stage}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ProjectBusy(
                f"another {stage} is running in this project ({_holder(fd)}): wait for it to end, then run "
                "this one again"
            ) from None
        holder = {"pid": os.getpid(), "host": this_host(), "started": datetime.now(UTC).isoformat()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """Who holds the lock, as its holder wrote it (best effort: it may be between truncate and write)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        started = datetime.fromisoformat(info["started"]).astimezone().strftime("%H:%M:%S")
        return f"process {info['pid']} on {info['host']}, since {started}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
