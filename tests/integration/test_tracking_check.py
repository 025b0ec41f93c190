"""The tracking URI is checked at start against real loopback servers and ports: every wrong URI is one
line within seconds, a SQLite typo never creates an empty registry, and good URIs pass."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lightbox.adapters.tracking_check import TrackingUnavailable, check_tracking_uri
from lightbox.cli import app
from lightbox.settings import Settings

pytestmark = pytest.mark.integration

MAX_SECONDS = 15.0  # loose: the check's own timeouts are 3 s a step


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word (a hung server, a black-holed proxy)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)  # the kernel completes the handshakes; nobody ever accepts or answers
        yield int(s.getsockname()[1])


@pytest.fixture
def http_server() -> Iterator[tuple[str, dict[str, int]]]:
    """A real HTTP server on loopback; the test sets the status each path answers (default 404)."""
    statuses: dict[str, int] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(statuses.get(self.path, 404))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", statuses
    server.shutdown()
    server.server_close()


def _problem(tmp_path: Path, uri: str | None) -> str | None:
    """The check's one line for this URI (None: it passes), answered within MAX_SECONDS."""
    start = time.monotonic()
    try:
        check_tracking_uri(Settings(project_dir=tmp_path, mlflow_tracking_uri=uri))
        line = None
    except TrackingUnavailable as exc:
        line = str(exc)
        assert "\n" not in line
    assert time.monotonic() - start < MAX_SECONDS, f"{uri}: {time.monotonic() - start:.1f} s"
    return line


def test_wrong_tracking_uris_are_one_line_within_seconds(
    tmp_path: Path, silent_port: int, http_server: tuple[str, dict[str, int]]
) -> None:
    closed = _unused_port()
    url, statuses = http_server
    (tmp_path / "notes.db").write_text("not a database")
    (tmp_path / "existing").mkdir()
    expected = {
        # Not what lightbox can use: MLflow would quietly make a file store of these.
        "not-a-uri": "not a supported URI",
        "./mlruns": "not a supported URI",
        f"file://{tmp_path}/mlruns": "not a supported URI",
        "databricks": "Databricks tracking is not supported",
        "mysql://u@127.0.0.1/mlflow": "the mysql:// scheme is not supported",
        "postgres://u@127.0.0.1/mlflow": "write postgresql://",
        # SQLite typos: MLflow would start an empty registry.
        f"sqlite:///{tmp_path}/missing/mlflow.db": f"folder {tmp_path}/missing does not exist",
        f"sqlite:///{tmp_path}/existing/mlfow.db": f"no database at {tmp_path}/existing/mlfow.db",
        f"sqlite:///{tmp_path}/notes.db": "is not a SQLite database",
        f"sqlite:///{tmp_path}/existing": "is a folder, not a database file",
        "sqlite://": "an in-memory database keeps nothing",
        # Nothing listens, or something listens and never answers.
        f"postgresql://mlflow:pw@127.0.0.1:{closed}/mlflow": f"cannot reach 127.0.0.1:{closed}",
        f"postgresql+psycopg2://mlflow@127.0.0.1:{silent_port}/mlflow": "timeout expired",
        f"http://127.0.0.1:{closed}": f"cannot reach http://127.0.0.1:{closed}/health",
        f"http://127.0.0.1:{silent_port}": "no answer from",
    }
    for uri, problem in expected.items():
        line = _problem(tmp_path, uri)
        assert line is not None and problem in line, (uri, line)
        assert line.startswith("LIGHTBOX_MLFLOW_TRACKING_URI=")
    assert "pw@" not in str(_problem(tmp_path, f"postgresql://mlflow:pw@127.0.0.1:{closed}/mlflow"))
    # Nothing was created by looking.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "notes.db"]
    assert not any((tmp_path / "existing").iterdir())

    statuses["/health"] = 503
    assert "answers HTTP 503" in str(_problem(tmp_path, url))


def test_good_tracking_uris_pass(tmp_path: Path, http_server: tuple[str, dict[str, int]]) -> None:
    url, statuses = http_server
    # A new project: its own default database does not exist yet, and MLflow will create it.
    assert _problem(tmp_path, None) is None
    assert not (tmp_path / ".lightbox").exists()
    # ... but a command that only reads the registry is in the wrong folder, and says which project it used.
    with pytest.raises(TrackingUnavailable, match=f"nothing trained yet in {tmp_path} .no registry at"):
        check_tracking_uri(Settings(project_dir=tmp_path), read_only=True)
    sqlite3.connect(tmp_path / "registry.db").close()  # an existing (even empty) SQLite file
    assert _problem(tmp_path, f"sqlite:///{tmp_path}/registry.db") is None
    statuses["/health"] = 200  # MLflow's tracking server
    assert _problem(tmp_path, url) is None
    del statuses["/health"]
    statuses["/mlflow/"] = 200  # a web server that is not MLflow (or a proxy routing no API): refused
    assert "not MLflow's API" in str(_problem(tmp_path, f"{url}/mlflow"))
    # Behind a proxy that routes no /health: MLflow's API answers (or asks for a login).
    for status in (200, 401):
        statuses["/mlflow/api/2.0/mlflow/experiments/search?max_results=1"] = status
        assert _problem(tmp_path, f"{url}/mlflow") is None


def test_commands_that_use_mlflow_refuse_a_bad_uri_in_one_red_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow itself would make a ./not-a-uri file store here
    env = {"LIGHTBOX_PROJECT_DIR": str(tmp_path), "LIGHTBOX_MLFLOW_TRACKING_URI": "not-a-uri"}
    start = time.monotonic()
    result = CliRunner().invoke(app, ["lineage", "models:/lightbox/1"], env=env, color=True)
    assert time.monotonic() - start < MAX_SECONDS
    assert result.exit_code == 2, result.output
    assert "\x1b[31m" in result.stderr
    assert result.stderr.strip().splitlines() == [
        "\x1b[31mLIGHTBOX_MLFLOW_TRACKING_URI=not-a-uri: not a supported URI: MLflow would take it for a "
        "local mlruns folder (a file store, which lightbox does not use); use sqlite:///PATH/mlflow.db, "
        "postgresql://USER@HOST:PORT/DB or http(s)://HOST:PORT\x1b[0m"
    ]
    assert list(tmp_path.iterdir()) == []
