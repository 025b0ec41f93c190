"""Isolated models (serving/minions.py) in process with real worker processes and real small models: the
same numbers as in process, a SIGKILLed worker restarted while the other model answers, hot swap into a
new worker, and no process left once the app stops."""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import os
import re
import signal
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from minion_models import dies_at_load, never_loads, refused_once_flagged, seeded

from lightbox.imaging import preprocess_bytes
from lightbox.settings import Settings
from serving.app import ModelSource, create_app
from serving.minions import IsolatedLoader, IsolatedPredictor, WorkerFailed
from training.predictor import Predictor

pytestmark = pytest.mark.integration

TOKEN = "test-admin-token"
PETS = ("cat", "dog", "bird")
PLACES = ("beach", "city", "forest", "mountain")
PLACES_SEEDS = {"7": 2, "8": 3}


def places_factory() -> functools.partial[Predictor]:
    return functools.partial(seeded, "places", PLACES, PLACES_SEEDS)


@pytest.fixture(scope="module")
def pets() -> Predictor:
    return seeded("pets", PETS, {"1": 1}, None)


def settings(tmp_path) -> Settings:
    return Settings(
        project_dir=tmp_path,
        serve_admin_token=TOKEN,
        serve_reload_interval_s=0,
        serve_max_batch_size=4,
        serve_max_wait_ms=2,
        serve_tag_threshold=0.0,
    )


def isolated(version: str = "7", backoff_s: tuple[float, float] = (0.2, 5.0)) -> IsolatedPredictor:
    return IsolatedPredictor(
        places_factory(), version, streams=1, threads=1, call_timeout_s=20, backoff_s=backoff_s
    )


def until(check, timeout_s: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, f"{what} not reached in {timeout_s} s"
        time.sleep(0.05)
    return result


def test_isolated_model_answers_as_in_process_and_leaves_no_process(pets, image, tmp_path) -> None:
    places = isolated()
    worker = places._worker
    assert worker is not None and worker.alive
    try:
        app = create_app(settings(tmp_path), [ModelSource(pets), ModelSource(places)])
        with TestClient(app) as c:
            body = c.post("/predict", content=image).json()
            entry = body["models"]["places"]
            assert entry["version"] == "7" and entry["model"]["runtime"] == "torch-eager (isolated)"
            # The same numbers as the same model computed here.
            local = seeded("places", PLACES, PLACES_SEEDS, "7")
            scores, tags = local.predict(preprocess_bytes(image)[None])
            assert entry["score"] == pytest.approx(float(scores[0]), abs=1e-5)
            got = {t["name"]: t["confidence"] for t in entry["tags"]}
            assert got == pytest.approx(dict(zip(PLACES, tags[0].tolist(), strict=True)), abs=1e-5)
            files = [("files", (f"{i}.jpg", image, "image/jpeg")) for i in range(3)]
            many = c.post("/predict?models=places", files=files).json()
            assert [p["score"] for p in many["predictions"]] == [entry["score"]] * 3
            assert c.get("/healthz").json()["models"]["places"]["model"]["runtime"].endswith("(isolated)")
        # The app stopped: its worker with it.
        assert not worker.alive and mp.active_children() == []
    finally:
        places.close()


def test_killed_worker_restarts_and_the_other_model_answers_meanwhile(pets, image, tmp_path) -> None:
    places = isolated(backoff_s=(1.0, 5.0))  # a restart window long enough to be seen from the test
    try:
        app = create_app(settings(tmp_path), [ModelSource(pets), ModelSource(places)])
        with TestClient(app) as c:
            assert c.post("/predict", content=image).json()["models"]["places"]["version"] == "7"
            first = places.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            # Until it is back: 200 with pets' answer and places' error, never a 5xx for the request and
            # never a hang; asked alone, places says 503 at once.
            partial = 0
            while places.restarts == 0:
                start = time.monotonic()
                r = c.post("/predict", content=image)
                assert r.status_code == 200, r.text
                assert time.monotonic() - start < 5
                body = r.json()
                assert body["model"]["name"] == "pets" and "score" in body["models"]["pets"]
                if "error" in body["models"]["places"]:
                    assert body["models"]["places"]["status"] == 503, body
                    partial += 1
                    alone = c.post("/predict?models=places", content=image)
                    if places.restarts == 0:  # (else it came back in between)
                        assert alone.status_code == 503 and "places" in alone.json()["error"]
                time.sleep(0.05)
                assert partial < 2000
            assert partial > 0
            until(lambda: places.pid not in (None, first), 10, "the new worker")
            after = c.post("/predict", content=image).json()
            assert after["models"]["places"]["version"] == "7" and "score" in after["models"]["places"]
        assert mp.active_children() == []
    finally:
        places.close()


def test_a_worker_that_cannot_restart_is_not_ready_and_says_why(pets, image, tmp_path, caplog) -> None:
    """Its artifact corrupted, the killed worker's restarts are refused: the model is not ready (503),
    /healthz and /metrics show its worker down and why, its 503 says why, each refused restart is one
    log line (a known error, no traceback), and it is retried until the model loads again."""
    flag = tmp_path / "corrupted"
    factory = functools.partial(refused_once_flagged, str(flag), "places", PLACES, PLACES_SEEDS)
    places = IsolatedPredictor(factory, "7", streams=1, threads=1, call_timeout_s=20, backoff_s=(0.2, 0.4))
    try:
        app = create_app(settings(tmp_path), [ModelSource(pets), ModelSource(places)])
        with TestClient(app) as c, caplog.at_level(logging.INFO, logger="serving.minions"):
            assert c.get("/v2/models/places/ready").json() == {"name": "places", "ready": True}
            assert c.get("/healthz").json()["models"]["places"]["worker"]["worker"] == "up"
            flag.write_text("")
            first = places.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            until(lambda: "ArtifactMismatch" in (places.down_reason or ""), 60, "a refused restart")
            r = c.get("/v2/models/places/ready")
            assert r.status_code == 503 and r.json()["ready"] is False
            assert "ArtifactMismatch" in r.json()["reason"] and "model.onnx" in r.json()["reason"]
            assert c.get("/v2/models/pets/ready").status_code == 200
            server = c.get("/v2/health/ready")  # pets still answers: the server is ready, places is down
            assert server.status_code == 200 and "ArtifactMismatch" in server.json()["down"]["places"]
            health = c.get("/healthz").json()
            assert health["status"] == "degraded"
            worker = health["models"]["places"]["worker"]
            assert worker["worker"] == "restarting" and "ArtifactMismatch" in worker["reason"]
            metrics = c.get("/metrics").text
            assert re.search(r'lightbox_model_worker_up\{model="places"\} 0\.0', metrics)
            assert re.search(
                r'lightbox_model_worker_down_info\{model="places",reason="[^"]*ArtifactMis', metrics
            )
            alone = c.post("/predict?models=places", content=image)
            assert alone.status_code == 503 and "ArtifactMismatch" in alone.json()["error"], alone.text
            assert c.post("/predict", content=image).json()["models"]["pets"]["score"] is not None
            # Retried with backoff, each refusal one line without a traceback.
            until(lambda: len(refusals(caplog)) >= 2, 60, "a second refused restart")
            assert all(r.exc_info is None and "\n" not in r.getMessage() for r in refusals(caplog))
            flag.unlink()  # the artifact repaired: the next try loads
            until(lambda: places.ready, 60, "the restart")
            assert c.get("/v2/models/places/ready").status_code == 200
            assert c.get("/healthz").json()["status"] == "ok"
            assert re.search(r'lightbox_model_worker_up\{model="places"\} 1\.0', c.get("/metrics").text)
    finally:
        places.close()


def refusals(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("restarting the worker of places")]


class Pinned:
    def __init__(self, version: str) -> None:
        self.version, self.alias = version, "champion"

    def resolve(self) -> str:
        return self.version


def test_hot_swap_loads_the_new_version_in_a_new_worker(pets, image, tmp_path) -> None:
    places = isolated("7")
    resolver = Pinned("7")
    loader = IsolatedLoader(resolver, places_factory(), threads=1, call_timeout_s=20)
    try:
        app = create_app(settings(tmp_path), [ModelSource(pets), ModelSource(places, loader)])
        with TestClient(app) as c:
            old_worker = places._worker
            resolver.version = "8"
            r = c.post("/admin/reload?model=places", headers={"authorization": f"Bearer {TOKEN}"})
            assert r.json() == {"swapped": True, "from": "7", "version": "8"}
            entry = c.post("/predict", content=image).json()["models"]["places"]
            local = seeded("places", PLACES, PLACES_SEEDS, "8")
            assert entry["version"] == "8"
            assert entry["score"] == pytest.approx(
                float(local.predict(preprocess_bytes(image)[None])[0][0]), abs=1e-5
            )
            # The old version's worker is retired once idle.
            assert old_worker is not None
            until(lambda: not old_worker.alive, 30, "the old worker's exit")
        until(lambda: mp.active_children() == [], 10, "no worker left")
    finally:
        places.close()


def test_a_worker_that_cannot_load_says_why() -> None:
    with pytest.raises(FileNotFoundError, match="no files for version 3"):
        IsolatedPredictor(never_loads, "3")
    with pytest.raises(WorkerFailed, match="exited with -9"):
        IsolatedPredictor(dies_at_load, "3")
    assert mp.active_children() == []


def test_a_registry_model_isolated_in_its_worker_answers_as_in_process(registered_champion) -> None:
    """The production path: `lightbox serve` with the model in LIGHTBOX_SERVE_ISOLATED_MODELS resolves
    the alias in the server, then the worker loads that version through the same verified loader (and
    picks the same runtime) as an in-process model."""
    import os

    from serving.server import _load

    settings = registered_champion.settings
    in_process, _ = _load(settings, settings.champion_alias, "cpu")
    isolated, _ = _load(settings, settings.champion_alias, "cpu", isolated=True)
    try:
        assert isolated.pid != os.getpid()
        assert isolated.version == registered_champion.version
        assert isolated.runtime == f"{in_process.runtime} (isolated)"  # the same runtime, in its worker
        batch = np.random.default_rng(3).integers(0, 256, (3, 3, 224, 224), dtype=np.uint8)
        (s1, t1), (s2, t2) = isolated.predict(batch), in_process.predict(batch)
        np.testing.assert_allclose(s1, s2, atol=1e-5)
        np.testing.assert_allclose(t1, t2, atol=1e-5)
    finally:
        isolated.close()
