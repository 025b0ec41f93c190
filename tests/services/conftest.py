"""Fixtures for tests against real servers: PostgreSQL, Redis, RabbitMQ, and an S3 API (moto's server).

Every fixture creates its own namespace (a database, a Feast project, queues, a bucket) under a random
name and drops it afterwards, so runs on a shared machine never collide. A server that does not answer
skips the test, except in CI (``CI=true``) where .ci/run has started them and a silent skip would hide
a broken setup: there it fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

PG_ADMIN_DSN = os.environ.get("LIGHTBOX_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_ADDR = os.environ.get("LIGHTBOX_TEST_REDIS", "127.0.0.1:6379")
AMQP_URL = os.environ.get("LIGHTBOX_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F")
# moto accepts any credentials; set them so nothing ever reads a real AWS profile.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def unique(prefix: str = "lb_test") -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require(name: str, host: str, port: int) -> None:
    if _answers(host, port):
        return
    message = f"{name} does not answer on {host}:{port} (.ci/run has the commands that start it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI: {message}")
    pytest.skip(message)


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


# --- PostgreSQL --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PgDatabase:
    name: str
    dsn: str  # libpq URL (psycopg2, MLflow, Airflow with the +psycopg2 form)

    def sqlalchemy_url(self) -> str:
        """The SQLAlchemy form with the driver the design names, and no SSL on loopback."""
        return self.dsn.replace("postgresql://", "postgresql+psycopg2://", 1) + "?sslmode=disable"


def _admin():
    import psycopg2

    conn = psycopg2.connect(PG_ADMIN_DSN, sslmode="disable")
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    return conn


def create_database() -> PgDatabase:
    require("PostgreSQL", *_host_port(PG_ADMIN_DSN, 5432))
    name = unique()
    conn = _admin()  # not `with conn`: psycopg2 opens a transaction block there even in autocommit
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    return PgDatabase(name=name, dsn=f"{base}/{name}")


def drop_database(db: PgDatabase) -> None:
    conn = _admin()
    try:
        with conn.cursor() as cur:
            # FORCE: servers we started (MLflow, Airflow) may still hold pooled connections.
            cur.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
    finally:
        conn.close()


@pytest.fixture
def pg_database() -> Iterator[PgDatabase]:
    db = create_database()
    yield db
    drop_database(db)


# --- Redis ---------------------------------------------------------------------------------------------


@pytest.fixture
def redis_addr() -> str:
    host, port = REDIS_ADDR.rsplit(":", 1)
    require("Redis", host, int(port))
    return REDIS_ADDR


# --- RabbitMQ ----------------------------------------------------------------------------------------


@pytest.fixture
def amqp_url() -> str:
    require("RabbitMQ", *_host_port(AMQP_URL, 5672))
    return AMQP_URL


@pytest.fixture
def queue_name(amqp_url: str) -> Iterator[str]:
    """A random queue name; the queue and its dead-letter queue are deleted afterwards."""
    import pika

    name = unique("lb_test_uploads")
    yield name
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        for q in (name, f"{name}.dead"):
            ch.queue_delete(q)
    finally:
        conn.close()


# --- S3 (moto's standalone server) ----------------------------------------------------------------------


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, **_boto_kwargs())


def _boto_kwargs() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_ENV["AWS_DEFAULT_REGION"],
    }


def start_process(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A server in its own process group, so stopping it stops the workers it forks too."""
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120, ok=(200,)) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code in ok:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not up after {timeout:.0f}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("moto_server is not installed: pip install -r requirements/dev.txt")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = start_process([exe, "-H", "127.0.0.1", "-p", str(port)], log, env=dict(os.environ) | S3_ENV)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/moto-api/", proc, log, timeout=60)
        yield S3Server(url)
    finally:
        stop_process(proc)


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials in the environment: DVC, MLflow and the adapters read them like real ones."""
    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def bucket(s3_server: S3Server, s3_env: None) -> Iterator[str]:
    name = unique("lb-test").replace("_", "-")
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    yield name
    # A bucket must be empty before it can be deleted.
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=obj["Key"])
    client.delete_bucket(Bucket=name)
