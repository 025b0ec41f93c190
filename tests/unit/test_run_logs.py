"""The log of a `dags test` run: every line on disk as it arrives (a kill loses nothing already printed),
one file per run, the newest few kept, `<dag>.log` pointing at the latest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lightbox.adapters.airflow_runner import KEEP_LOGS, new_run_log

# A runner that streams a child's output to a log, as dags_test does, then waits to be killed.
RUNNER = """
import os, sys
from pathlib import Path
from lightbox.adapters.airflow_runner import stream_to_log

child = "import time; print('loading dags'); print('starting task_id=ingest', flush=True); time.sleep(60)"
stream_to_log([sys.executable, "-c", child], env=dict(os.environ), cwd=Path.cwd(), log_file=Path(sys.argv[1]))
"""


def test_a_killed_runner_loses_no_line_already_printed(tmp_path: Path) -> None:
    log = tmp_path / "lightbox_data-1.log"
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(log)], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and "starting task_id=ingest" in log.read_text()):
            assert runner.poll() is None, "the runner ended before printing"
            assert time.monotonic() < deadline, f"the log still holds {log.read_text()!r}: lines are buffered"
            time.sleep(0.05)
    finally:
        os.killpg(runner.pid, signal.SIGKILL)  # as the OOM killer or a cancelled job would: no cleanup
        runner.wait()
    assert log.read_text() == "loading dags\nstarting task_id=ingest\n"


def test_each_run_keeps_its_own_log_and_the_newest_few_are_kept(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "lightbox_data.log").write_text("a run before per-run logs\n")  # what older versions left
    (logs / "lightbox_data-nightly-20260101T000000.000000Z.log").write_text("another DAG's\n")
    start = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    made = []
    for i in range(KEEP_LOGS + 2):
        path = new_run_log(logs, "lightbox_data", now=start + timedelta(minutes=i))
        path.write_text(f"run {i}\n")
        made.append(path)
    assert made[0].name == "lightbox_data-20261123T090000.000000Z.log"
    kept = sorted(p.name for p in logs.glob("lightbox_data-2*.log"))
    assert kept == [p.name for p in made[2:]]
    latest = logs / "lightbox_data.log"
    assert latest.is_symlink() and latest.resolve() == made[-1].resolve()
    assert latest.read_text() == f"run {KEEP_LOGS + 1}\n"
    assert (logs / "lightbox_data-nightly-20260101T000000.000000Z.log").exists()
