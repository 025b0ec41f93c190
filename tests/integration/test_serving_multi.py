"""Several models in one server (serving/multi.py), in process, on real models with different tag
vocabularies that share one pretrained backbone (cheap): merged answers, V2 per model, hot swap of one,
a slow model and a failing one that do not take the others down.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from lightbox.imaging import preprocess_bytes
from lightbox.settings import Settings
from serving.app import ModelSource, PendingChallenger, create_app
from training.model import FeatureExtractor, Heads, LightboxModel, ModelConfig
from training.predictor import ModelNotFound, Predictor

pytestmark = pytest.mark.integration

TOKEN = "test-admin-token"
PETS = ("cat", "dog", "bird")
PLACES = ("beach", "city", "forest", "mountain")


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return FeatureExtractor()


def make(extractor: FeatureExtractor, name: str, tags: tuple[str, ...], version: str, seed: int) -> Predictor:
    """A real model on the shared backbone; eager (no tracing): these tests time answers, not graphs."""
    torch.manual_seed(seed)
    config = ModelConfig(tag_names=tags)
    return Predictor(LightboxModel(config, Heads(config), extractor), name, version, "cpu", trace=False)


@pytest.fixture(scope="module")
def pets(extractor: FeatureExtractor) -> Predictor:
    return make(extractor, "pets", PETS, "1", 1)


@pytest.fixture(scope="module")
def places(extractor: FeatureExtractor) -> Predictor:
    return make(extractor, "places", PLACES, "7", 2)


def settings(tmp_path, **kw) -> Settings:
    base = {
        "project_dir": tmp_path,
        "serve_admin_token": TOKEN,
        "serve_reload_interval_s": 0,
        "serve_max_batch_size": 4,
        "serve_max_wait_ms": 2,
        "serve_tag_threshold": 0.0,  # every tag in every answer: the vocabularies are what is checked
    }
    return Settings(**(base | kw))


def expected(p: Predictor, image: bytes) -> float:
    return float(p.predict(preprocess_bytes(image)[None])[0][0])


class Pinned:
    """A loader whose alias the test moves by hand."""

    def __init__(self, versions: dict[str, Predictor], version: str) -> None:
        self.versions, self.version = versions, version

    def resolve(self) -> str:
        return self.version

    def load(self, version: str | None = None) -> Predictor:
        return self.versions[version or self.version]


def with_predict(p: Predictor, wrap: Callable[[np.ndarray], None]) -> Predictor:
    """A copy of ``p`` whose predict first calls ``wrap`` (a delay, a failure)."""
    twin = Predictor(p.model, p.name, p.version, "cpu", trace=False)
    inner = twin.predict

    def predict(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        wrap(batch)
        return inner(batch)

    twin.predict = predict  # type: ignore[method-assign]
    return twin


def test_two_vocabularies_answer_with_their_own_tags(pets, places, image, tmp_path) -> None:
    app = create_app(settings(tmp_path), [ModelSource(pets), ModelSource(places)])
    with TestClient(app) as c:
        body = c.post("/predict", content=image).json()
        # Today's fields for the first model, and every model under "models".
        assert body["model"]["name"] == "pets" and body["score"] == pytest.approx(expected(pets, image), 1e-5)
        assert {t["name"] for t in body["tags"]} == set(PETS)
        assert set(body["models"]) == {"pets", "places"}
        assert {t["name"] for t in body["models"]["places"]["tags"]} == set(PLACES)
        assert body["models"]["places"]["version"] == "7"
        assert body["models"]["places"]["score"] == pytest.approx(expected(places, image), abs=1e-5)
        # ?models= chooses, in its order: the first named gives the top-level fields.
        only = c.post("/predict?models=places", content=image).json()
        assert only["model"]["name"] == "places" and set(only["models"]) == {"places"}
        both = c.post("/predict?models=places,pets", content=image).json()
        assert both["model"]["name"] == "places" and set(both["models"]) == {"pets", "places"}
        bad = c.post("/predict?models=nope", content=image)
        assert bad.status_code == 400 and "nope" in bad.json()["error"]
        # Several images: each model's predictions in its entry.
        files = [("files", ("a.jpg", image, "image/jpeg")), ("files", ("b.jpg", image, "image/jpeg"))]
        many = c.post("/predict", files=files).json()
        assert len(many["predictions"]) == 2 and len(many["models"]["places"]["predictions"]) == 2
        # Metrics: each model's under its label, the HTTP ones once.
        metrics = c.get("/metrics").text
        assert 'lightbox_model_info{model="places",name="places",version="7"} 1.0' in metrics
        assert 'lightbox_images_total{model="pets",protocol="rest"} 4.0' in metrics
        assert metrics.count("# TYPE lightbox_images_total counter") <= 1
        health = c.get("/healthz").json()
        assert health["model"]["name"] == "pets" and set(health["models"]) == {"pets", "places"}


def test_v2_serves_each_model_under_its_name(pets, places, image, tmp_path) -> None:
    import base64

    app = create_app(settings(tmp_path), [ModelSource(pets), ModelSource(places)])
    request = {
        "inputs": [
            {"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(image).decode()]}
        ]
    }
    with TestClient(app) as c:
        for p, tags in ((pets, PETS), (places, PLACES)):
            meta = c.get(f"/v2/models/{p.name}").json()
            assert meta["name"] == p.name and meta["parameters"]["tag_names"] == list(tags)
            assert c.get(f"/v2/models/{p.name}/ready").json() == {"name": p.name, "ready": True}
            out = c.post(f"/v2/models/{p.name}/infer", json=request).json()
            assert (out["model_name"], out["model_version"]) == (p.name, p.version)
            tensors = {o["name"]: o for o in out["outputs"]}
            assert tensors["TAG_PROBS"]["shape"] == [1, len(tags)]
            assert tensors["SCORE"]["data"][0] == pytest.approx(expected(p, image), abs=1e-5)
        assert c.get("/v2/models/nope").status_code == 404
        assert c.post("/v2/models/nope/infer", json=request).status_code == 404


def test_hot_swap_of_one_leaves_the_other(extractor, pets, places, image, tmp_path) -> None:
    pets2 = make(extractor, "pets", PETS, "2", 3)
    loader = Pinned({"1": pets, "2": pets2}, "1")
    app = create_app(settings(tmp_path), [ModelSource(pets, loader), ModelSource(places)])
    with TestClient(app) as c:
        before = c.post("/predict", content=image).json()
        loader.version = "2"
        r = c.post("/admin/reload?model=pets", headers={"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and r.json() == {"swapped": True, "from": "1", "version": "2"}
        after = c.post("/predict", content=image).json()
        assert after["models"]["pets"]["version"] == "2"
        assert after["models"]["pets"]["score"] == pytest.approx(expected(pets2, image), abs=1e-5)
        assert after["models"]["places"] == before["models"]["places"]  # untouched, same answer
        # The other model has no loader: asking it to reload says so.
        r = c.post("/admin/reload?model=places", headers={"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 409
        registry = c.get("/healthz").json()["models"]
        assert registry["pets"]["registry"]["served_version"] == "2"
        assert registry["places"]["model"]["version"] == "7"


def test_a_slow_model_does_not_slow_the_other(pets, places, image, tmp_path) -> None:
    delay = 1.0
    slow = with_predict(places, lambda _: time.sleep(delay))
    app = create_app(settings(tmp_path, serve_model_timeout_ms=400), [ModelSource(pets), ModelSource(slow)])

    async def main() -> tuple[list[float], list[httpx.Response]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:
            await c.post("/predict?models=pets", content=image)  # warm
            busy = [asyncio.create_task(c.post("/predict?models=places", content=image)) for _ in range(2)]
            await asyncio.sleep(0.05)  # the slow model is computing now
            fast: list[float] = []
            for _ in range(5):
                start = time.perf_counter()
                r = await c.post("/predict?models=pets", content=image)
                assert r.status_code == 200
                fast.append(time.perf_counter() - start)
            merged = [await c.post("/predict", content=image)]
            await asyncio.gather(*busy)
            return fast, merged

    fast, merged = asyncio.run(main())
    # Each answer of the fast model costs its own forward pass, never a wait on the slow one's second.
    assert max(fast) < delay / 2, fast
    # A merged answer: the fast model's part, and the slow one's deadline error; still 200.
    body = merged[0].json()
    assert merged[0].status_code == 200, body
    assert body["model"]["name"] == "pets"
    assert body["models"]["places"]["status"] == 504 and "deadline" in body["models"]["places"]["error"]


def test_a_failing_model_gives_a_partial_answer(pets, places, image, tmp_path) -> None:
    def boom(_: np.ndarray) -> None:
        raise RuntimeError("CUDA error: device-side assert")

    broken = with_predict(pets, boom)
    app = create_app(settings(tmp_path), [ModelSource(broken), ModelSource(places)])
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/predict", content=image)
        assert r.status_code == 200, r.text
        body = r.json()
        # The first model failed: the top-level fields come from the first that answered.
        assert body["model"]["name"] == "places"
        assert body["models"]["pets"] == {"error": "internal error: RuntimeError", "status": 500}
        assert {t["name"] for t in body["models"]["places"]["tags"]} == set(PLACES)
        # Only the broken one asked: its error, as a one-model server would answer.
        alone = c.post("/predict?models=pets", content=image)
        assert alone.status_code == 500 and "RuntimeError" in alone.json()["error"]


def test_admission_refused_by_one_model_is_reported(pets, places, image, tmp_path) -> None:
    app = create_app(settings(tmp_path), [ModelSource(pets), ModelSource(places)])
    models = app.state.models
    with TestClient(app) as c:
        # Fill the pets model's queue budget by hand: it refuses, places still answers.
        hold = models.get("pets").runtime.admission.admit(256)
        try:
            r = c.post("/predict", content=image)
            assert r.status_code == 200, r.text
            assert r.json()["models"]["pets"]["status"] == 429 and r.json()["model"]["name"] == "places"
            alone = c.post("/predict?models=pets", content=image)
            assert alone.status_code == 429 and "Retry-After" in alone.headers
        finally:
            hold.release()
        assert c.post("/predict", content=image).json()["model"]["name"] == "pets"


def photo(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)).save(
        buf, "PNG"
    )
    return buf.getvalue()


def test_canary_answers_a_sticky_share_of_keys_from_the_challenger(extractor, pets, image, tmp_path) -> None:
    from serving.canary import routes_to_challenger

    rival = make(extractor, "pets", PETS, "2", 5)
    app = create_app(
        settings(tmp_path, serve_canary_percent=50),
        pets,
        challenger=ModelSource(rival, name="pets@challenger"),
    )
    with TestClient(app) as c:
        seen: dict[str, set[str]] = {}
        for key in [f"user-{i}" for i in range(20)] * 2:
            body = c.post("/predict", content=image, headers={"X-Lightbox-Key": key}).json()
            seen.setdefault(key, set()).add(body["model"]["version"])
        assert all(len(v) == 1 for v in seen.values())  # one user, one model
        for key, versions in seen.items():
            assert versions == {"2" if routes_to_challenger(key, 50, "pets@challenger") else "1"}
        assert {v for vs in seen.values() for v in vs} == {"1", "2"}
        assert 'lightbox_images_total{model="pets@challenger",protocol="rest"}' in c.get("/metrics").text


def test_shadow_never_changes_an_answer_and_reports_the_agreement(extractor, pets, tmp_path) -> None:
    rival = make(extractor, "pets", PETS, "2", 5)
    recorded: list[tuple[str, dict[str, str]]] = []
    app = create_app(
        settings(
            tmp_path, serve_shadow_fraction=1.0, serve_shadow_record_interval_s=0, serve_tag_threshold=0.5
        ),
        pets,
        challenger=ModelSource(rival, name="pets@challenger"),
        record_shadow=lambda version, tags: recorded.append((version, tags)),
    )
    plain = create_app(settings(tmp_path, serve_tag_threshold=0.5), pets)
    photos = [photo(seed) for seed in range(12)]
    with TestClient(app) as c, TestClient(plain) as p:
        for data in photos:
            shadowed = c.post("/predict", content=data)
            assert shadowed.status_code == 200 and shadowed.json() == p.post("/predict", content=data).json()
        challenger = app.state.challenger
        deadline = time.monotonic() + 30
        while challenger.agreement.summary().samples < len(photos):
            assert time.monotonic() < deadline, "shadow requests never finished"
            time.sleep(0.02)
        metrics = c.get("/metrics").text
    batch = np.stack([preprocess_bytes(d) for d in photos])
    (a, ta), (b, tb) = pets.predict(batch), rival.predict(batch)
    s = challenger.agreement.summary()
    from scipy.stats import spearmanr

    assert s.score_srocc == pytest.approx(spearmanr(a, b).statistic, abs=1e-4)
    (lo_a, hi_a), (lo_b, hi_b) = pets.score_range, rival.score_range  # each on its own model's range
    assert s.score_mae_unit == pytest.approx(
        float(np.abs((a - lo_a) / (hi_a - lo_a) - (b - lo_b) / (hi_b - lo_b)).mean()), abs=1e-5
    )
    for i, tag in enumerate(PETS):
        assert s.tag_agreement[tag] == pytest.approx(np.mean((ta[:, i] >= 0.5) == (tb[:, i] >= 0.5)))
    assert f'lightbox_shadow_samples{{model="pets@challenger"}} {float(len(photos))}' in metrics
    assert challenger.record() == s.to_tags() and recorded == [("2", s.to_tags())]


class ChallengerAlias:
    """The registry's @challenger: unset (ModelNotFound) until ``version`` is set; ``rival`` its model."""

    alias = "challenger"

    def __init__(self, rival: Predictor) -> None:
        self.version: str | None = None
        self.rival = rival

    def resolve(self) -> str:
        if self.version is None:
            raise ModelNotFound("no model version at models:/pets@challenger")
        return self.version

    def load(self, version: str | None = None) -> Predictor:
        return self.rival


def test_canary_without_a_challenger_waits_for_its_alias(extractor, pets, image, tmp_path, caplog) -> None:
    """No @challenger yet: the champion serves alone; the challenger is picked up when the alias is set
    (by the follower, or at once by an admin reload), paused in one log line when the alias is removed,
    and /healthz says which."""
    alias = ChallengerAlias(make(extractor, "pets", PETS, "2", 5))
    headers = {"authorization": f"Bearer {TOKEN}"}

    def answered_by(c: TestClient) -> str:
        return c.post("/predict", content=image).json()["model"]["version"]

    app = create_app(
        settings(tmp_path, serve_canary_percent=100, serve_reload_interval_s=0.05),
        pets,
        challenger=PendingChallenger(alias, "pets@challenger"),
    )
    with TestClient(app) as c, caplog.at_level(logging.INFO, logger="serving.reload"):
        assert answered_by(c) == "1"
        assert c.get("/healthz").json()["challenger"]["state"] == "off until @challenger is set"
        refused = c.post("/admin/reload?model=pets@challenger", headers=headers)
        assert refused.status_code == 409 and "no model version" in refused.json()["error"]
        alias.version = "2"
        deadline = time.monotonic() + 30
        while app.state.challenger is None:
            assert time.monotonic() < deadline, "the challenger was never picked up"
            time.sleep(0.02)
        assert answered_by(c) == "2"
        assert c.get("/healthz").json()["challenger"]["state"] == "serving"
        alias.version = None  # removed: the champion answers everyone again
        while answered_by(c) != "1":
            assert time.monotonic() < deadline + 30, "the canary never paused"
            time.sleep(0.02)
        assert c.get("/healthz").json()["challenger"]["state"].startswith("paused")
        lines = [r for r in caplog.records if r.name == "serving.reload"]
        assert len(lines) == 1 and lines[0].exc_info is None and "no model version" in lines[0].getMessage()
        alias.version = "2"
        while answered_by(c) != "2":
            assert time.monotonic() < deadline + 60, "the canary never resumed"
            time.sleep(0.02)
    # Without a follower, an admin reload of the challenger starts the canary at once.
    alias.version = "2"
    manual = create_app(
        settings(tmp_path, serve_canary_percent=100),
        pets,
        challenger=PendingChallenger(alias, "pets@challenger"),
    )
    with TestClient(manual) as c:
        assert answered_by(c) == "1"
        r = c.post("/admin/reload?model=pets@challenger", headers=headers)
        assert r.status_code == 200 and r.json()["version"] == "2"
        assert answered_by(c) == "2"
        again = c.post("/admin/reload?model=pets@challenger&force=true", headers=headers)
        assert again.status_code == 200, again.text
