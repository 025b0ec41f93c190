"""The process that owns a piece of running state (an MLflow run, an `airflow dags test` run).

Recorded when the state is created (pid and host), so a later process can tell what a killed run left
behind from what a live one is still writing: a SIGKILL runs no cleanup, so only the next start can.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

# Longer than any stage runs (a demo trains in minutes, a big import in hours). Past it, state whose owner
# cannot be checked (another host, no pid recorded) is abandoned. No setting: a wrong guess here only
# delays a repair, and a setting would be one more thing to get wrong.
ABANDONED_AFTER = timedelta(hours=48)


@dataclass(frozen=True)
class Owner:
    pid: int | None  # None: not recorded (state from before owners were recorded)
    host: str | None
    started: datetime  # timezone-aware


def this_host() -> str:
    return socket.gethostname()


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs on this host (a zombie, killed but not yet reaped, is not running)."""
    if pid <= 0:  # os.kill(0, ...) would signal our own process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    try:  # Linux: a zombie (killed, not yet reaped: a container's pid 1 may never reap) is not running
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS): kill(0) is all we know
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def gone(
    owner: Owner, *, now: datetime | None = None, alive: Callable[[int], bool] = process_alive
) -> str | None:
    """Why ``owner`` is certainly gone (a reason to record), or None while it may still be running."""
    if owner.pid is not None and owner.host == this_host() and not alive(owner.pid):
        return f"its process {owner.pid} on {owner.host} is gone"
    age = (now or datetime.now(UTC)) - owner.started
    if age > ABANDONED_AFTER:
        return f"started {age.days} days {age.seconds // 3600} h ago, longer than any stage runs"
    return None
