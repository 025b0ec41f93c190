"""LIGHTBOX_RAY_ADDRESS: a malformed one is refused at settings load, an unreachable one within seconds,
each in one line (exit 2), before Ray retries forever or prints a traceback."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from lightbox import ray_cluster
from lightbox.cli import known_error
from lightbox.ray_cluster import RayUnreachable, check_reachable, ray_session, start_ray
from lightbox.settings import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("LIGHTBOX_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LIGHTBOX_PROJECT_DIR", str(tmp_path))


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("", None),  # empty: the local Ray, as unset
        ("auto", "auto"),
        ("127.0.0.1:6379", "127.0.0.1:6379"),
        ("head.internal:6379", "head.internal:6379"),
        ("ray://head:10001", "ray://head:10001"),
        ("[::1]:6379", "[::1]:6379"),
    ],
)
def test_the_accepted_ray_addresses(monkeypatch: pytest.MonkeyPatch, value: str, kept: str | None) -> None:
    monkeypatch.setenv("LIGHTBOX_RAY_ADDRESS", value)
    assert load_settings().ray_address == kept


@pytest.mark.parametrize(
    "value",
    ["foo", "ray://head", "head:0", "head:99999", "head:port", "http://head:6379", "head:6379/x", "a@head:1"],
)
def test_a_malformed_ray_address_is_refused_at_load_in_one_line(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("LIGHTBOX_RAY_ADDRESS", value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value) == (
        f"LIGHTBOX_RAY_ADDRESS={value}: not a Ray address: use auto, HOST:PORT (the head's GCS port, "
        "6379) or ray://HOST:PORT (Ray Client, 10001), or leave it empty for a local Ray"
    )
    assert known_error(caught.value) == (str(caught.value), 2)


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_nothing_listening_is_one_line_within_seconds(closed_port: int, scheme: str) -> None:
    address = f"{scheme}127.0.0.1:{closed_port}"
    began = time.monotonic()
    with pytest.raises(RayUnreachable) as caught:
        check_reachable(address)
    assert time.monotonic() - began < ray_cluster.CONNECT_TIMEOUT_S + 1
    line = (
        f"cannot reach the Ray cluster at {address} (connection refused): start it with `ray start --head` "
        "or unset LIGHTBOX_RAY_ADDRESS"
    )
    assert str(caught.value) == line
    assert known_error(caught.value) == (line, 2)  # the CLI's one red line, exit code 2


def test_a_listening_port_passes_and_auto_is_left_to_ray() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_reachable(f"127.0.0.1:{server.getsockname()[1]}")
        check_reachable(f"ray://127.0.0.1:{server.getsockname()[1]}")
    check_reachable("auto")  # no connection tried: Ray finds a cluster started on this machine


def test_every_way_into_ray_checks_before_ray_init(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, closed_port: int
) -> None:
    # Training and fine-tuning call start_ray; features and bulk scoring ray_session (which calls it).
    import ray

    def init(*args: object, **kwargs: object) -> None:
        raise AssertionError("ray.init must not be reached with nothing listening")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    settings = Settings(project_dir=tmp_path, ray_address=f"127.0.0.1:{closed_port}")
    with pytest.raises(RayUnreachable):
        start_ray(settings, ship_code=False)
    with pytest.raises(RayUnreachable), ray_session(settings):
        pass
