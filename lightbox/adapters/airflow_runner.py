"""Airflow as a subprocess: the embedded home on SQLite, `airflow dags test` for DAG runs.

The same DAG files run unchanged under a real scheduler; this module only sets the environment.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from lightbox.settings import CODE_ROOT, Settings, settings_env


class DagRunFailed(RuntimeError):
    """A DAG run ended failed; the message carries the tail of its log."""


# The last line of a Python traceback: "package.module.SomeError: message" (continuation lines indented).
_EXC_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?\w*(?:Error|Exception|Failed)\w*: .*$")


def task_errors(log_text: str) -> list[str]:
    """The exceptions that failed tasks in a `dags test` log, each with its indented continuation
    lines (a gate verdict lists its reasons there), in order, once each."""
    lines = log_text.splitlines()
    found: dict[str, None] = {}
    for i, line in enumerate(lines):
        if not _EXC_LINE.match(line):
            continue
        message = [line]
        for nxt in lines[i + 1 :]:
            if not nxt.startswith((" ", "\t")) or nxt.lstrip().startswith("File "):
                break
            message.append(nxt)
        found.setdefault("\n".join(message), None)
    return list(found)


def airflow_env(settings: Settings) -> dict[str, str]:
    home = settings.airflow_home_path
    env = dict(os.environ) | settings_env(settings)
    if settings.airflow_database_url:  # PostgreSQL in production (LocalExecutor needs a real database)
        url = settings.airflow_database_url
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = url
        if url.startswith(("postgresql://", "postgresql+psycopg2://")):
            # Airflow 3 also opens an async engine and would derive it with asyncpg (not installed);
            # psycopg 3 (installed with Feast's postgres extra) speaks async to the same URL.
            async_url = "postgresql+psycopg://" + url.split("://", 1)[1]
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = async_url
    env.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home / 'airflow.db'}")
    env |= {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(CODE_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": env.get("AIRFLOW__CORE__PARALLELISM", "4"),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        # `airflow standalone` starts its parts by name: the venv's bin must come first on PATH.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "GX_ANALYTICS_ENABLED": "False",
        "TQDM_MININTERVAL": "2",
    }
    return env


def service_env(settings: Settings, api_port: int, host: str = "127.0.0.1") -> dict[str, str]:
    """airflow_env plus what a long-running scheduler, dag-processor and api-server need.

    LocalExecutor on the metadata database of ``settings.airflow_database_url`` (PostgreSQL: SQLite
    cannot take the scheduler's concurrent writers), parallelism sized for this machine, the API bound
    to ``host``. Secrets are not set here: AIRFLOW__API_AUTH__JWT_SECRET (the same on every component,
    or task tokens fail) and the auth manager's users come from the deployment's environment.
    """
    if not settings.airflow_database_url:
        raise ValueError("a real scheduler needs airflow_database_url (PostgreSQL), not the SQLite default")
    env = airflow_env(settings)
    env |= {
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # One task process per core: each imports the ML stack (~800 MB); more only thrash.
        "AIRFLOW__CORE__PARALLELISM": os.environ.get(
            "AIRFLOW__CORE__PARALLELISM", str(max(2, os.cpu_count() or 2))
        ),
        "AIRFLOW__API__HOST": host,
        "AIRFLOW__API__PORT": str(api_port),
        # Task runners reach the execution API here; without it they try the default port and fail.
        "AIRFLOW__API__BASE_URL": f"http://{host}:{api_port}",
    }
    return env


_TASK_EVENT = re.compile(r"\[DAG TEST\] (?P<event>starting|end task) task_id=(?P<task>\S+)")


def task_event(line: str) -> tuple[str, str] | None:
    """("start" | "end", task_id) for a `dags test` line that starts or ends a task, else None."""
    m = _TASK_EVENT.search(line)
    if m is None:
        return None
    return ("start" if m["event"] == "starting" else "end"), m["task"]


def _airflow(
    settings: Settings,
    *args: str,
    log: Path | None = None,
    progress: Callable[[str, str], None] | None = None,
) -> None:
    exe = Path(sys.executable).parent / "airflow"
    cmd = [str(exe), *args]
    env = airflow_env(settings)
    if log is None:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=settings.project_dir)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-4000:]}")
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with (
        log.open("w") as fh,
        subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=settings.project_dir,
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:  # the full log to the file; task starts and ends to the caller
            fh.write(line)
            if progress is not None and (event := task_event(line)) is not None:
                progress(*event)
    if proc.returncode:
        text = log.read_text()
        why = task_errors(text) or ["".join(text.splitlines(keepends=True)[-60:])]
        raise DagRunFailed(f"{' '.join(args)} failed (full log: {log}):\n" + "\n".join(why))


def ensure_db(settings: Settings) -> None:
    home = settings.airflow_home_path
    home.mkdir(parents=True, exist_ok=True)
    marker = home / ".migrated"
    if not marker.exists():
        _airflow(settings, "db", "migrate")
        marker.touch()


def dags_test(
    settings: Settings,
    dag_id: str,
    conf: dict | None = None,
    progress: Callable[[str, str], None] | None = None,
) -> Path:
    """Run one DAG end to end in-process (`airflow dags test`); returns its log file."""

    ensure_db(settings)
    log = settings.state / "logs" / f"{dag_id}.log"
    args = ["dags", "test", dag_id]
    if conf:
        args += ["--conf", json.dumps(conf)]
    _airflow(settings, *args, log=log, progress=progress)
    return log
