"""Connect to Ray: the cluster at ``settings.ray_address`` (LIGHTBOX_RAY_ADDRESS), or a local one on
the loopback address (Ray listens on every interface by default)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lightbox.settings import Settings

# The packages a task or actor imports: shipped to a remote cluster's workers with the job, so the
# nodes need the dependencies installed but not this checkout.
CODE_PACKAGES = ("lightbox", "pipelines", "training", "serving")


def start_ray(settings: Settings, *, ship_code: bool = True) -> bool:
    """Connect (or start a local Ray); True if this call started it, so the caller shuts it down."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return False
    if settings.ray_address:
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
