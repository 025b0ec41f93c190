"""Fixtures shared by the integration tests: a real model (with and without a registry), and the
serving app under uvicorn on a loopback socket."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import uvicorn
from PIL import Image

from lightbox.dataset import TAG_VOCABULARY
from lightbox.settings import Settings
from serving.app import create_app
from training.model import Heads, LightboxModel, ModelConfig
from training.predictor import Predictor


@pytest.fixture(scope="module")
def image() -> bytes:
    """A 640x480 JPEG of blocky noise: what the serving tests post."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8).repeat(10, 0).repeat(10, 1)
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """The real pretrained extractor with seeded, untrained heads: a real model, no registry needed."""
    torch.manual_seed(0)
    config = ModelConfig(tag_names=TAG_VOCABULARY)
    return Predictor.from_model(LightboxModel(config, Heads(config)), "lightbox", "3", device="cpu")


@contextlib.contextmanager
def uvicorn_serving(app: Any) -> Iterator[str]:
    """``app`` under uvicorn on 127.0.0.1:<free port>, in a thread; yields "host:port"."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield f"{host}:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def server(predictor: Predictor, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app under uvicorn on 127.0.0.1:<free port>, in a thread; yields "host:port"."""
    settings = Settings(
        project_dir=tmp_path_factory.mktemp("serve"), serve_reload_interval_s=0, serve_max_wait_ms=2
    )
    with uvicorn_serving(create_app(settings, predictor)) as address:
        yield address


@pytest.fixture(scope="module")
def serve() -> Callable[[Any], contextlib.AbstractContextManager[str]]:
    """Serve another app the same way: ``with serve(app) as address: ...``."""
    return uvicorn_serving


@dataclass(frozen=True)
class Registered:
    settings: Settings  # project_dir: a temp folder with its own MLflow store
    version: str  # the version at settings.champion_alias


@pytest.fixture(scope="session")
def registered_champion(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registered]:
    """A registry in a temp folder with one judged model at @champion (tests/registry_samples.py)."""
    from registry_samples import register_champion

    import mlflow

    settings = Settings(project_dir=tmp_path_factory.mktemp("champion"))
    previous = mlflow.get_tracking_uri()
    version = register_champion(settings)
    yield Registered(settings, version)
    mlflow.set_tracking_uri(previous)
