"""Connect to Ray: the cluster at ``settings.ray_address`` (LIGHTBOX_RAY_ADDRESS), or a local one on
the loopback address (Ray listens on every interface by default)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lightbox.adapters import ServiceUnavailable
from lightbox.adapters.tracking_check import socket_reason
from lightbox.settings import Settings, ray_endpoint

# The packages a task or actor imports: shipped to a remote cluster's workers with the job, so the
# nodes need the dependencies installed but not this checkout.
CODE_PACKAGES = ("lightbox", "pipelines", "training", "serving")
# A live head accepts a TCP connection in milliseconds; Ray's own retries take minutes (or forever).
CONNECT_TIMEOUT_S = 3.0


class RayUnreachable(ServiceUnavailable):
    """Nothing answers at LIGHTBOX_RAY_ADDRESS: one line saying what to do (exit 2 in the CLI)."""


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise RayUnreachable unless something accepts a TCP connection where ``address`` points: the
    GCS port for HOST:PORT, the Ray Client port for ray://HOST:PORT. Why first: with nothing there,
    ray.init retries a GCS address forever and a ray:// one fails after ~40 s with a long traceback.
    ``auto`` is left to Ray, which looks for a cluster started on this machine."""
    endpoint = ray_endpoint(address)
    if endpoint is None:
        return
    try:
        with socket.create_connection(endpoint, timeout=timeout_s):
            return
    except TimeoutError:
        why = f"no answer within {timeout_s:g} s"
    except OSError as exc:
        why = socket_reason(exc)
    raise RayUnreachable(
        f"cannot reach the Ray cluster at {address} ({why}): start it with `ray start --head` "
        "or unset LIGHTBOX_RAY_ADDRESS"
    )


def start_ray(settings: Settings, *, ship_code: bool = True) -> bool:
    """Connect (or start a local Ray); True if this call started it, so the caller shuts it down."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return False
    if settings.ray_address:
        check_reachable(settings.ray_address)
        runtime_env: dict[str, Any] = {}
        if ship_code:
            import importlib

            runtime_env["py_modules"] = [importlib.import_module(p) for p in CODE_PACKAGES]
        ray.init(address=settings.ray_address, log_to_driver=False, runtime_env=runtime_env or None)
    else:
        ray.init(
            num_cpus=settings.ray_num_cpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
        )
    return True


@contextmanager
def ray_session(settings: Settings) -> Iterator[None]:
    """Ray for the length of a block; shut down after only if the block's own call started it."""
    import ray

    started = start_ray(settings)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
