"""The MLflow tracking URI, checked once at start: what is wrong with it in one line, within seconds.

MLflow takes a wrong URI badly: a word that is no URI becomes a local file store (and then "lightbox has
no @previous"), a SQLite path in a missing folder or a mistyped file name silently starts an empty
registry, an unreachable PostgreSQL is retried for about 100 s with hundreds of lines of traceback, and
an unreachable tracking server for minutes. Each entry point that uses MLflow calls
``check_tracking_uri`` first; each check has a short timeout.
"""

from __future__ import annotations

import http.client
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit

from lightbox.adapters import ServiceUnavailable
from lightbox.settings import redact_url

if TYPE_CHECKING:
    from lightbox.settings import Settings

TIMEOUT_S = 3.0  # per step (TCP connect, login, HTTP request): a healthy backend answers in milliseconds
SUPPORTED = "sqlite:///PATH/mlflow.db, postgresql://USER@HOST:PORT/DB or http(s)://HOST:PORT"
_SQLITE_HEADER = b"SQLite format 3\x00"
_HOSTED = ("databricks", "databricks-uc", "uc")  # MLflow's words for Databricks workspaces


class TrackingUnavailable(RuntimeError):
    """The tracking URI is malformed, unsupported or unreachable; the message says which, in one line."""


def check_tracking_uri(settings: Settings, timeout_s: float = TIMEOUT_S, *, read_only: bool = False) -> None:
    """Raise TrackingUnavailable unless ``settings.tracking_uri`` names a usable MLflow backend.

    ``read_only``: the caller only reads the registry (serve, promote, lineage, ...), so even the
    project's own default SQLite file must exist: missing, it means the command runs from the wrong
    folder, and MLflow would create an empty registry there to read nothing from."""
    uri = settings.tracking_uri
    if settings.mlflow_tracking_uri is None:
        label = f"the default tracking URI {uri}"
    else:
        label = f"LIGHTBOX_MLFLOW_TRACKING_URI={redact_url(uri)}"
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    dialect = scheme.split("+", 1)[0]  # SQLAlchemy URLs may name a driver: postgresql+psycopg2://
    if uri.split(":", 1)[0].lower() in _HOSTED:
        raise TrackingUnavailable(f"{label}: Databricks tracking is not supported; use {SUPPORTED}")
    if "://" not in uri or not scheme or scheme == "file":
        raise TrackingUnavailable(
            f"{label}: not a supported URI: MLflow would take it for a local mlruns folder (a file store, "
            f"which lightbox does not use); use {SUPPORTED}"
        )
    if dialect == "sqlite":
        _check_sqlite(uri, settings, label, read_only=read_only)
    elif dialect == "postgresql":
        _check_postgresql(uri, label, timeout_s)
    elif scheme in ("http", "https"):
        _check_http(uri, label, timeout_s)
    elif scheme == "postgres":
        raise TrackingUnavailable(f"{label}: SQLAlchemy does not accept postgres://; write postgresql://")
    else:
        raise TrackingUnavailable(f"{label}: the {scheme}:// scheme is not supported; use {SUPPORTED}")


def _check_sqlite(uri: str, settings: Settings, label: str, *, read_only: bool) -> None:
    # SQLAlchemy's form: sqlite:///relative/path or sqlite:////absolute/path; sqlite:// is in memory.
    rest = uri.split("://", 1)[1].split("?", 1)[0]
    if rest in ("", "/", "/:memory:"):
        raise TrackingUnavailable(
            f"{label}: an in-memory database keeps nothing; use sqlite:///PATH/mlflow.db"
        )
    path = Path(rest[1:] if rest.startswith("/") else rest)
    if path.is_dir():
        raise TrackingUnavailable(f"{label}: {path} is a folder, not a database file")
    if path.exists():
        with path.open("rb") as f:
            header = f.read(len(_SQLITE_HEADER))
        if header and header != _SQLITE_HEADER:  # an empty file is a valid, empty SQLite database
            raise TrackingUnavailable(f"{label}: {path} is not a SQLite database")
        return
    # MLflow creates a missing database (and its folders): right for the project's own default, which
    # a new project starts with, and a silent empty registry for a mistyped path anywhere else.
    if path.absolute() == (settings.state / "mlflow.db").absolute():
        if not read_only:
            return
        raise TrackingUnavailable(
            f"nothing trained yet in {settings.project_dir} (no registry at {path.absolute()}): import "
            "your photos and train (`lightbox data import SOURCE`, then `lightbox train`), or `make demo`; "
            "a model trained in another project: run from its folder, or set LIGHTBOX_PROJECT_DIR or "
            "LIGHTBOX_MLFLOW_TRACKING_URI"
        )
    if not path.parent.is_dir():
        raise TrackingUnavailable(f"{label}: folder {path.parent.absolute()} does not exist")
    raise TrackingUnavailable(
        f"{label}: no database at {path.absolute()} (MLflow would start an empty registry there); "
        f"to start one on purpose, create the empty file first"
    )


def _check_postgresql(uri: str, label: str, timeout_s: float) -> None:
    from lightbox.adapters import postgres

    parts = urlsplit(uri)
    hosts = parts.netloc.rpartition("@")[2]
    # TCP first: it tells "nothing listens there" and "no answer" apart, within the timeout. No host (or
    # several): libpq's own rules (a Unix socket, ?host=), left to its connect_timeout below.
    if hosts and "," not in hosts:
        try:
            host, port = parts.hostname or "", parts.port or 5432
        except ValueError:
            raise TrackingUnavailable(f"{label}: the port in {hosts} is not a number") from None
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                pass
        except TimeoutError:
            raise TrackingUnavailable(
                f"{label}: no answer from {host}:{port} within {timeout_s:g} s"
            ) from None
        except OSError as exc:
            raise TrackingUnavailable(f"{label}: cannot reach {host}:{port} ({socket_reason(exc)})") from None
    # Then a login, as MLflow will do it: wrong user, password or database fail here, in one line.
    query = dict(parse_qsl(parts.query)) | {"connect_timeout": str(max(2, round(timeout_s)))}
    # Spelled out, not urlunsplit: that drops the // of a URL without a host (postgresql:///db?host=).
    dsn = f"postgresql://{parts.netloc}{parts.path}?{urlencode(query)}"
    try:
        conn = postgres.connect(dsn)
    except ServiceUnavailable as exc:  # the login failed: the driver's own words say what is wrong
        raise TrackingUnavailable(f"{label}: {exc.reason}") from None
    # psycopg2's other errors (imported only in adapters.postgres): whatever the login raised is what
    # is wrong with the URI, and it is reported, not swallowed.
    except Exception as exc:
        raise TrackingUnavailable(f"{label}: {_first_line(exc)}") from None
    conn.close()


def _check_http(uri: str, label: str, timeout_s: float) -> None:
    # MLflow's tracking server answers /health; behind a proxy that does not route it, any answer from
    # the root under 500 shows a server is there (a wrong password is MLflow's own, quick, error).
    base = uri.rstrip("/")
    status = _http_status(f"{base}/health", label, timeout_s)
    if status == 404:
        # No /health: MLflow's own REST API must be there (401/403: it is, behind a login), or this is
        # some other web server, and every command would fail later with MLflow's API errors.
        status = _http_status(f"{base}/api/2.0/mlflow/experiments/search?max_results=1", label, timeout_s)
        if status == 404:
            raise TrackingUnavailable(
                f"{label}: a web server answers there, but not MLflow's API (/api/2.0/mlflow): check the "
                "host and port (`lightbox mlflow` serves the project's tracking server)"
            )
    if status >= 500:
        raise TrackingUnavailable(f"{label}: the server answers HTTP {status}")


def _http_status(url: str, label: str, timeout_s: float) -> int:
    request = urllib.request.Request(url, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:  # an answer, only not a 2xx/3xx one
        return int(exc.code)
    except TimeoutError:
        raise TrackingUnavailable(f"{label}: no answer from {url} within {timeout_s:g} s") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise TrackingUnavailable(f"{label}: no answer from {url} within {timeout_s:g} s") from None
        raise TrackingUnavailable(f"{label}: cannot reach {url} ({socket_reason(exc.reason)})") from None
    except http.client.InvalidURL as exc:  # a port that is no number, ...
        raise TrackingUnavailable(f"{label}: malformed URL ({exc})") from None
    except OSError as exc:  # a reset or refused connection after the request was sent
        raise TrackingUnavailable(f"{label}: cannot reach {url} ({socket_reason(exc)})") from None


def socket_reason(exc: object) -> str:
    """Why a connection failed, in a few words ("connection refused", "unknown host")."""
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[0].split()) if lines else type(exc).__name__
