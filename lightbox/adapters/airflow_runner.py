"""Airflow as a subprocess: the embedded home on SQLite, `airflow dags test` for DAG runs.

The same DAG files run unchanged under a real scheduler; this module only sets the environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lightbox.settings import CODE_ROOT, Settings, settings_env


class DagRunFailed(RuntimeError):
    """A DAG run ended failed; the message carries the tail of its log."""


def airflow_env(settings: Settings) -> dict[str, str]:
    home = settings.airflow_home_path
    env = dict(os.environ) | settings_env(settings)
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


def _airflow(settings: Settings, *args: str, log: Path | None = None) -> None:
    exe = Path(sys.executable).parent / "airflow"
    cmd = [str(exe), *args]
    env = airflow_env(settings)
    if log is None:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=settings.project_dir)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        proc = subprocess.run(
            cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, text=True, cwd=settings.project_dir
        )
    if proc.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-60:])
        raise DagRunFailed(f"{' '.join(args)} failed (full log: {log}):\n{tail}")


def ensure_db(settings: Settings) -> None:
    home = settings.airflow_home_path
    home.mkdir(parents=True, exist_ok=True)
    marker = home / ".migrated"
    if not marker.exists():
        _airflow(settings, "db", "migrate")
        marker.touch()


def dags_test(settings: Settings, dag_id: str, conf: dict | None = None) -> Path:
    """Run one DAG end to end in-process (`airflow dags test`); returns its log file."""
    import json

    ensure_db(settings)
    log = settings.state / "logs" / f"{dag_id}.log"
    args = ["dags", "test", dag_id]
    if conf:
        args += ["--conf", json.dumps(conf)]
    _airflow(settings, *args, log=log)
    return log
