"""Airflow as a subprocess: the embedded home on SQLite, `airflow dags test` for DAG runs.

The same DAG files run unchanged under a real scheduler; this module only sets the environment.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lightbox.owner import Owner, gone, process_alive, this_host
from lightbox.settings import CODE_ROOT, Settings, settings_env

log = logging.getLogger(__name__)

KEEP_LOGS = 10  # per DAG: the last few runs, enough to compare a failure with the run before it


class DagRunFailed(RuntimeError):
    """A DAG run ended failed; the message carries the tail of its log."""


# The last line of a Python traceback (continuation lines indented): a builtin "SomeError: message", or
# any class a module defines, "package.module.NotTrainable: message" (lightbox's errors say what to do
# in their names' words, not always ending in Error).
_EXC_LINE = re.compile(
    r"^(?:(?:[A-Za-z_][\w.]*\.)?\w*(?:Error|Exception|Failed|Exit|Interrupt)\w*"
    r"|(?:[a-z_]\w*\.)+[A-Z]\w*): .*$"
)


def task_errors(log_text: str) -> list[str]:
    """The exceptions that failed tasks in a `dags test` log, each with its indented continuation
    lines (a gate verdict lists its reasons there), in order, once each."""
    lines = log_text.splitlines()
    found: dict[str, str] = {}  # the message without its class -> the exception's line(s)
    for i, line in enumerate(lines):
        if not _EXC_LINE.match(line):
            continue
        message = [line]
        for nxt in lines[i + 1 :]:
            if not nxt.startswith((" ", "\t")) or nxt.lstrip().startswith("File "):
                break
            message.append(nxt)
        # One error re-raised as another with the same words (a verdict as AirflowFailException) is
        # said once, as the first one.
        found.setdefault("\n".join([line.split(": ", 1)[1], *message[1:]]), "\n".join(message))
    # A task that failed fast (lightbox.adapters.airflow_tasks) raised its line as AirflowFailException:
    # the line is the message, the class only Airflow's way of saying "no retry".
    return [m.removeprefix(_FAIL_FAST) for m in found.values()]


_FAIL_FAST = "airflow.sdk.exceptions.AirflowFailException: "


LOOPBACK = "127.0.0.1"
API_PORT = 8280  # not 8080 (`lightbox serve`), 8793/8794 (log servers) or 8974 (scheduler health)
# The log servers bind every interface whatever the config says (airflow.utils.serve_logs), so the
# embedded home never starts them: its task logs are local files the API server reads directly.
SKIP_SERVE_LOGS = "--skip-serve-logs"


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
        # Only our DAGs in the UI, not Airflow's ~100 examples.
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # Every listener on loopback, and the API off 8080 (`lightbox serve`'s port): the UI and the
        # endpoint run side by side on a laptop, and neither is reachable from the network.
        "AIRFLOW__API__HOST": LOOPBACK,
        "AIRFLOW__API__PORT": str(API_PORT),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": LOOPBACK,
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


def _airflow(settings: Settings, *args: str) -> None:
    exe = Path(sys.executable).parent / "airflow"
    cmd = [str(exe), *args]
    done = subprocess.run(
        cmd, env=airflow_env(settings), capture_output=True, text=True, cwd=settings.project_dir
    )
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-4000:]}")


def stream_to_log(
    cmd: Sequence[str],
    *,
    env: dict[str, str],
    cwd: Path,
    log_file: Path,
    progress: Callable[[str, str], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> int:
    """Run ``cmd`` with its output written to ``log_file`` a line at a time; returns its exit status
    (negative: the signal that killed it). Task starts and ends go to ``progress``, the child's pid to
    ``on_start``."""
    # Line-buffered: each line reaches the file as it arrives, so a kill loses nothing already printed
    # (a block buffer lost the last seconds, the ones that say what was running).
    with (
        log_file.open("w", buffering=1) as fh,
        subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd
        ) as proc,
    ):
        if on_start is not None:
            on_start(proc.pid)
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
            if progress is not None and (event := task_event(line)) is not None:
                progress(*event)
    return proc.returncode


# --- the UI on the embedded home -------------------------------------------------------------------


def ui_commands() -> dict[str, list[str]]:
    """The processes behind the Airflow UI on the embedded home, by name: the API server (UI and
    execution API), the scheduler, the DAG processor and the triggerer (the promotion DAG's approval
    step defers to it). Not `airflow standalone`: it starts the log servers, which bind 0.0.0.0."""
    exe = str(Path(sys.executable).parent / "airflow")
    return {
        "api-server": [exe, "api-server"],
        "scheduler": [exe, "scheduler", SKIP_SERVE_LOGS],
        "dag-processor": [exe, "dag-processor"],
        "triggerer": [exe, "triggerer", SKIP_SERVE_LOGS],
    }


def ui_env(settings: Settings) -> dict[str, str]:
    """airflow_env for the long-running UI processes: LocalExecutor (what `airflow standalone` uses on
    SQLite too) and the simple auth manager, whose generated admin password is in password_file."""
    return airflow_env(settings) | {
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # Task runners reach the execution API here; without it they try port 8080 and fail.
        "AIRFLOW__API__BASE_URL": ui_url(),
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
    }


def password_file(settings: Settings) -> Path:
    """Where Airflow 3's simple auth manager writes the generated passwords (JSON: user -> password)."""
    return settings.airflow_home_path / "simple_auth_manager_passwords.json.generated"


def interrupt_on_sigterm(signum: int, frame: object) -> None:
    """A SIGTERM handler that stops a foreground command the way Ctrl-C does."""
    raise KeyboardInterrupt


def ui_url() -> str:
    return f"http://{LOOPBACK}:{API_PORT}"


def run_ui(settings: Settings, on_ready: Callable[[], None]) -> int:
    """Start the UI processes with their output interleaved on ours; returns when one exits (its
    status) or on Ctrl-C (0), stopping the others. ``on_ready`` runs once the API answers."""
    import time
    import urllib.error
    import urllib.request

    ensure_db(settings)
    env = ui_env(settings)
    # A service manager's stop (SIGTERM) is handled like Ctrl-C, so the children are stopped too
    # (measured: without it, `timeout` left the API server running, orphaned).
    previous = signal.signal(signal.SIGTERM, interrupt_on_sigterm)
    procs = {
        name: subprocess.Popen(cmd, env=env, cwd=settings.project_dir) for name, cmd in ui_commands().items()
    }
    ready = False
    try:
        while True:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    log.error("airflow %s exited with %s", name, proc.returncode)
                    return proc.returncode or 1
            if not ready:
                try:
                    urllib.request.urlopen(f"{ui_url()}/api/v2/monitor/health", timeout=1).close()
                except (urllib.error.URLError, OSError):  # not listening yet: the API takes ~20 s
                    pass
                else:
                    ready = True
                    on_ready()
            time.sleep(1)
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


# --- one log file per run --------------------------------------------------------------------------------

_STAMP = "%Y%m%dT%H%M%S.%fZ"
_RUN_LOG = re.compile(r"\d{8}T\d{6}\.\d{6}Z\.log")


def new_run_log(logs_dir: Path, dag_id: str, now: datetime | None = None) -> Path:
    """A fresh ``<dag>-<UTC time>.log`` for one run; ``<dag>.log`` is re-pointed at it (a symlink, so
    ``tail -f`` on it follows the run in progress) and all but the newest KEEP_LOGS of the DAG's are
    removed."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    path = logs_dir / f"{dag_id}-{(now or datetime.now(UTC)).strftime(_STAMP)}.log"
    path.touch()
    link = logs_dir / f".{dag_id}.log.{os.getpid()}"
    link.unlink(missing_ok=True)
    link.symlink_to(path.name)
    os.replace(link, logs_dir / f"{dag_id}.log")  # atomic; also replaces the plain file older runs wrote
    runs = sorted(
        p for p in logs_dir.glob(f"{dag_id}-*.log") if _RUN_LOG.fullmatch(p.name[len(dag_id) + 1 :])
    )
    for old in runs[:-KEEP_LOGS]:
        old.unlink(missing_ok=True)
    return path


# --- `dags test` runs a killed process left `running` -------------------------------------------------


@dataclass(frozen=True)
class DagTestRun:
    """A DagRun that `airflow dags test` started (its triggered_by is TEST) and that is still running."""

    dag_id: str
    run_id: str
    started: datetime


@dataclass(frozen=True)
class Runner:
    """A `dags test` process this module started, from its marker file (removed when it ends)."""

    marker: Path
    dag_id: str
    owner: Owner


# Run with Airflow's environment: its ORM needs its configuration, and importing Airflow here would cost
# every `lightbox` command seconds. The DAG run is failed the way the UI's "mark failed" does (running
# tasks failed, pending ones skipped) and the reason is its note.
_TEST_RUNS_SCRIPT = """
import json, sys
from airflow.api.common.mark_tasks import set_dag_run_state_to_failed
from airflow.models.dagbag import DBDagBag
from airflow.models.dagrun import DagRun
from airflow.utils.session import create_session
from airflow.utils.state import DagRunState
from airflow.utils.types import DagRunTriggeredByType

reasons = {(d, r): why for d, r, why in json.loads(sys.argv[1])}
out = []
with create_session() as session:
    runs = session.query(DagRun).filter(
        DagRun.state == DagRunState.RUNNING, DagRun.triggered_by == DagRunTriggeredByType.TEST
    )
    for run in runs.all():
        why = reasons.get((run.dag_id, run.run_id))
        if why is None:
            started = run.start_date or run.run_after
            out.append({"dag_id": run.dag_id, "run_id": run.run_id, "started": started.isoformat()})
            continue
        dag = DBDagBag().get_dag_for_run(run, session=session)
        if dag is None:
            run.set_state(DagRunState.FAILED)
        else:
            set_dag_run_state_to_failed(dag=dag, run_id=run.run_id, commit=True, session=session)
        run.note = why
print(json.dumps(out))
"""


def _test_runs(settings: Settings, fail: Sequence[tuple[DagTestRun, str]] = ()) -> list[DagTestRun]:
    """The running `dags test` runs, after failing those in ``fail`` (with their reasons)."""
    payload = json.dumps([[r.dag_id, r.run_id, why] for r, why in fail])
    done = subprocess.run(
        [sys.executable, "-c", _TEST_RUNS_SCRIPT, payload],
        env=airflow_env(settings),
        capture_output=True,
        text=True,
        cwd=settings.project_dir,
    )
    if done.returncode:
        raise RuntimeError(
            f"reading the DAG runs of {settings.airflow_home_path} failed:\n{done.stderr[-4000:]}"
        )
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    return [DagTestRun(r["dag_id"], r["run_id"], datetime.fromisoformat(r["started"])) for r in rows]


def _runners_dir(settings: Settings) -> Path:
    return settings.airflow_home_path / "dags-test"


def _runners(settings: Settings) -> list[Runner]:
    found = []
    for marker in sorted(_runners_dir(settings).glob("*.json")):
        meta = json.loads(marker.read_text())
        owner = Owner(meta["pid"], meta["host"], datetime.fromisoformat(meta["started"]))
        found.append(Runner(marker, meta["dag_id"], owner))
    return found


def orphans(
    runs: Sequence[DagTestRun],
    runners: Sequence[Runner],
    *,
    now: datetime | None = None,
    alive: Callable[[int], bool] = process_alive,
) -> list[tuple[DagTestRun, str]]:
    """The runs nobody will finish, each with why: the `dags test` process that started it (the newest
    runner of its DAG started before it) is gone; with no runner recorded (a run from before runners
    were recorded, or a `dags test` started by hand), only when it is older than any stage runs."""
    found = []
    for run in runs:
        mine = [r for r in runners if r.dag_id == run.dag_id and r.owner.started <= run.started]
        owner = max(mine, key=lambda r: r.owner.started).owner if mine else Owner(None, None, run.started)
        why = gone(owner, now=now, alive=alive)
        if why is not None:
            found.append((run, f"left running by a killed `dags test`: {why}"))
    return found


def orphaned_test_runs(settings: Settings) -> list[tuple[DagTestRun, str]]:
    """The `dags test` runs left `running` by a process that is gone, each with why. Nothing (and no
    database created) when the Airflow home was never set up."""
    if not (settings.airflow_home_path / ".migrated").exists():
        return []
    return orphans(_test_runs(settings), _runners(settings))


def fail_test_runs(settings: Settings, runs: Sequence[tuple[DagTestRun, str]]) -> None:
    """Mark these runs failed (their reason as the run's note), and forget runners that are gone."""
    if runs:
        _test_runs(settings, runs)
    for runner in _runners(settings):
        if runner.owner.host == this_host() and not process_alive(runner.owner.pid or 0):
            runner.marker.unlink(missing_ok=True)


def recover_test_runs(settings: Settings) -> list[tuple[DagTestRun, str]]:
    """Fail the runs a killed `dags test` left running; returns them with why."""
    found = orphaned_test_runs(settings)
    fail_test_runs(settings, found)
    for run, why in found:
        log.warning("marked %s %s failed: %s", run.dag_id, run.run_id, why)
    return found


def ensure_db(settings: Settings) -> None:
    home = settings.airflow_home_path
    home.mkdir(parents=True, exist_ok=True)
    marker = home / ".migrated"
    if not marker.exists():
        _airflow(settings, "db", "migrate")
        marker.touch()


class BadConf(ValueError):
    """A DAG run's --conf that the DAG cannot take: one line naming what is wrong."""


def dag_params(dag_file: Path) -> set[str]:
    """The params a DAG file declares (``params={"name": Param(...), ...}``), read with ``ast``: no
    Airflow import. Empty when it declares none."""
    import ast

    for node in ast.walk(ast.parse(dag_file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.keyword) and node.arg == "params" and isinstance(node.value, ast.Dict):
            return {
                k.value for k in node.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)
            }
    return set()


def parse_conf(dag_id: str, conf: str | None, dags_folder: Path | None = None) -> dict | None:
    """A DAG run's params from its JSON ``--conf``, refused before any run starts when it is not a JSON
    object or names a param the DAG does not have (a typo would otherwise run with the default: the
    demo set instead of your photos)."""
    folder = dags_folder or CODE_ROOT / "dags"
    dag_file = folder / f"{dag_id}.py"
    if not dag_file.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")))
        raise BadConf(f"no DAG {dag_id!r} (DAGs: {known})")
    if conf is None:
        return None
    try:
        params = json.loads(conf)
    except json.JSONDecodeError as exc:
        raise BadConf(f"--conf is not JSON: {exc.msg} at character {exc.pos}: {conf[:80]}") from None
    if not isinstance(params, dict):
        raise BadConf(f"--conf must be a JSON object of params, like '{{\"trials\": 8}}', not {conf[:80]}")
    refusal = unknown_params(dag_id, params, dag_params(dag_file))
    if refusal is not None:
        raise BadConf(refusal)
    return params


def unknown_params(dag_id: str, given: Iterable[str], declared: Iterable[str]) -> str | None:
    """The line refusing the params of ``given`` that the DAG does not declare, with the nearest declared
    name of each, or None when all are declared (or the DAG declares none: nothing to check)."""
    import difflib

    known = sorted(declared)
    unknown = sorted(set(given) - set(known)) if known else []
    if not unknown:
        return None
    hints = [
        f"{u} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(u, known, n=1)) else u
        for u in unknown
    ]
    return f"{dag_id} has no param {', '.join(hints)}; its params: {', '.join(known)}"


def forget_queued_runs(settings: Settings) -> int:
    """Drop the runs that Asset events queued on this home; returns how many.

    The asset-scheduled DAGs are unpaused from creation, so that in the UI lightbox_data's features
    start lightbox_train by themselves. A `dags test` run is a run by hand, though: the events it
    emits would otherwise wait in the queue and start a training (or a rescoring) the moment a
    scheduler next starts on this home, long after the user ran the next stage by hand."""
    from sqlalchemy import create_engine, text

    engine = create_engine(airflow_env(settings)["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    try:
        with engine.begin() as conn:
            return conn.execute(text("DELETE FROM asset_dag_run_queue")).rowcount or 0
    except Exception as exc:  # noqa: BLE001 - a home too old or too new for the table: nothing queued there
        log.debug("asset_dag_run_queue not cleared: %s", exc)
        return 0
    finally:
        engine.dispose()


def dags_test(
    settings: Settings,
    dag_id: str,
    conf: dict | None = None,
    progress: Callable[[str, str], None] | None = None,
) -> Path:
    """Run one DAG end to end in-process (`airflow dags test`); returns its log file.

    First fails the runs a killed `dags test` left running. The running process is recorded in a marker
    file (pid, host, start) until it ends, so the next start can tell a dead run from a live one."""
    ensure_db(settings)
    recover_test_runs(settings)
    log_file = new_run_log(settings.state / "logs", dag_id)
    args = ["dags", "test", dag_id]
    if conf:
        args += ["--conf", json.dumps(conf)]
    cmd = [str(Path(sys.executable).parent / "airflow"), *args]
    # Unbuffered: the child's lines reach the log as they are printed, not when a block fills.
    env = airflow_env(settings) | {"PYTHONUNBUFFERED": "1"}
    markers = _runners_dir(settings)
    markers.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def started(pid: int) -> None:
        marker = markers / f"{pid}.json"
        now = datetime.now(UTC).isoformat()
        marker.write_text(json.dumps({"dag_id": dag_id, "pid": pid, "host": this_host(), "started": now}))
        written.append(marker)

    # An exception here (Ctrl-C) leaves the marker: the next start judges the run by it.
    code = stream_to_log(
        cmd, env=env, cwd=settings.project_dir, log_file=log_file, progress=progress, on_start=started
    )
    if code < 0:  # killed by a signal, this process alive: fail its run now rather than at the next start
        recover_test_runs(settings)
    forget_queued_runs(settings)
    for marker in written:
        marker.unlink(missing_ok=True)
    if code:
        text = log_file.read_text()
        why = task_errors(text) or ["".join(text.splitlines(keepends=True)[-60:])]
        if code < 0:
            why.insert(0, f"`airflow dags test` was killed by signal {-code}; its run is marked failed")
        raise DagRunFailed(f"{' '.join(args)} failed (full log: {log_file}):\n" + "\n".join(why))
    return log_file
