"""``POST /predict`` and friends, in process (ASGI transport, no socket), on the real model.

Integration-marked: it loads the real pretrained backbone (~1 s, once per module).
"""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import zlib

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from lightbox.dataset import TAG_VOCABULARY
from lightbox.imaging import preprocess_bytes
from lightbox.settings import Settings
from serving.app import create_app
from training.model import Heads, LightboxModel, ModelConfig
from training.predictor import Predictor

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    config = ModelConfig(tag_names=TAG_VOCABULARY)
    return Predictor.from_model(LightboxModel(config, Heads(config)), "lightbox", "1", device="cpu")


def make_settings(tmp_path, **overrides) -> Settings:
    base = {"project_dir": tmp_path, "serve_reload_interval_s": 0.0, "serve_max_wait_ms": 2.0}
    return Settings(**(base | overrides))


@pytest.fixture(scope="module")
def client(predictor: Predictor, tmp_path_factory) -> TestClient:
    settings = make_settings(
        tmp_path_factory.mktemp("app"), serve_max_body_bytes=2_000_000, max_pixels=4_000_000
    )
    with TestClient(create_app(settings, predictor), raise_server_exceptions=False) as c:
        yield c


def photo(seed: int = 0, size: tuple[int, int] = (640, 480), fmt: str = "JPEG") -> bytes:
    """A smooth gradient with noise: photo-like enough for JPEG, deterministic per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, np.full_like(xx, 40 * (seed % 6))], axis=-1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def png_header_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (decompression-bomb shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def assert_error(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert isinstance(body["error"], str) and body["error"]
    return body["error"]


def test_raw_jpeg_gets_score_tags_and_model(client: TestClient, predictor: Predictor) -> None:
    data = photo(1)
    resp = client.post("/predict", content=data, headers={"content-type": "image/jpeg"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == {
        "name": "lightbox",
        "version": "1",
        "runtime": "torchscript",  # a model built in process has no verified export: the graph serves
        "score_name": "score",
        "score_range": [0.0, 1.0],
    }
    scores, probs = predictor.predict(preprocess_bytes(data)[None])
    assert body["score"] == pytest.approx(float(scores[0]), abs=1e-5)
    expected = sorted(
        ((n, float(p)) for n, p in zip(TAG_VOCABULARY, probs[0], strict=True) if p >= 0.5),
        key=lambda t: -t[1],
    )
    assert [t["name"] for t in body["tags"]] == [n for n, _ in expected]
    for tag, (_, p) in zip(body["tags"], expected, strict=True):
        assert tag["confidence"] == pytest.approx(p, abs=1e-5)


def test_threshold_query_parameter(client: TestClient) -> None:
    data = photo(2)
    everything = client.post("/predict?threshold=0", content=data).json()
    assert sorted(t["name"] for t in everything["tags"]) == sorted(TAG_VOCABULARY)
    confidences = [t["confidence"] for t in everything["tags"]]
    assert confidences == sorted(confidences, reverse=True)
    assert client.post("/predict?threshold=1", content=data).json()["tags"] == [
        t for t in everything["tags"] if t["confidence"] >= 1.0
    ]
    assert "threshold" in assert_error(client.post("/predict?threshold=1.5", content=data), 422)
    assert_error(client.post("/predict?threshold=abc", content=data), 422)


def test_multipart_file_and_files(client: TestClient) -> None:
    images = [photo(s) for s in (3, 4, 5)]
    singles = [
        client.post("/predict", content=img, headers={"content-type": "application/octet-stream"}).json()
        for img in images
    ]
    one = client.post("/predict", files={"file": ("a.jpg", images[0], "image/jpeg")})
    assert one.status_code == 200, one.text
    assert one.json()["score"] == pytest.approx(singles[0]["score"], abs=1e-5)

    many = client.post(
        "/predict", files=[("files", (f"{i}.jpg", img, "image/jpeg")) for i, img in enumerate(images)]
    )
    assert many.status_code == 200, many.text
    body = many.json()
    assert body["model"] == {
        "name": "lightbox",
        "version": "1",
        "runtime": "torchscript",
        "score_name": "score",
        "score_range": [0.0, 1.0],
    }
    assert [p["score"] for p in body["predictions"]] == pytest.approx([s["score"] for s in singles], abs=1e-5)


def test_png_webp_and_phone_formats_are_accepted(client: TestClient) -> None:
    formats = (("PNG", "image/png"), ("WEBP", "image/webp"), ("HEIF", "image/heic"), ("AVIF", "image/avif"))
    for fmt, ctype in formats:
        resp = client.post("/predict", content=photo(6, (320, 240), fmt), headers={"content-type": ctype})
        assert resp.status_code == 200, (fmt, resp.text)


@pytest.mark.parametrize(
    ("name", "kwargs", "status"),
    [
        ("empty body", {"content": b"", "headers": {"content-type": "image/jpeg"}}, 400),
        ("text body", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415),
        ("json image not base64", {"json": {"image": "x"}}, 400),
        ("form-urlencoded", {"data": {"file": "x"}}, 415),
        ("not an image", {"content": b"\x00" * 1000, "headers": {"content-type": "image/jpeg"}}, 400),
        ("truncated jpeg", {"content": photo(7)[:3000], "headers": {"content-type": "image/jpeg"}}, 400),
        (
            "pixel bomb",
            {"content": png_header_bomb(30_000, 30_000), "headers": {"content-type": "image/png"}},
            413,
        ),
        ("over body limit", {"content": b"\xff" * 2_000_001, "headers": {"content-type": "image/jpeg"}}, 413),
        ("multipart without file", {"files": {"other": ("a.jpg", b"x", "image/jpeg")}}, 400),
        ("multipart text field", {"files": {"file": (None, "just text")}}, 400),
        ("multipart two 'file'", {"files": [("file", ("a", b"1")), ("file", ("b", b"2"))]}, 400),
        ("multipart bad image", {"files": {"files": ("a.jpg", b"GIF89a-nope", "image/gif")}}, 400),
    ],
)
def test_bad_input_is_a_json_4xx(client: TestClient, name: str, kwargs: dict, status: int) -> None:
    assert_error(client.post("/predict", **kwargs), status)


def test_pixel_bomb_message_names_the_limit(client: TestClient) -> None:
    msg = assert_error(client.post("/predict", content=png_header_bomb(30_000, 30_000)), 413)
    assert "over the limit" in msg


def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    assert_error(client.get("/nope"), 404)
    assert_error(client.get("/predict"), 405)


def test_healthz_metrics_and_page(client: TestClient) -> None:
    client.post("/predict", content=photo(8))
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["model"] == {
        "name": "lightbox",
        "version": "1",
        "runtime": "torchscript",
        "score_name": "score",
        "score_range": [0.0, 1.0],
    }
    text = client.get("/metrics").text
    for needle in (
        "lightbox_batcher_queue_depth",
        "lightbox_batcher_batch_size_bucket",
        "lightbox_batcher_batch_latency_seconds_bucket",
        "lightbox_batcher_rejections_total",
        'lightbox_model_info{name="lightbox",version="1"} 1.0',
        'lightbox_http_requests_total{method="POST",route="/predict",status="200"}',
        "lightbox_http_request_latency_seconds_bucket",
        'lightbox_prediction_score_unit_bucket{le="1.0",version="1"}',  # what the model answers (drift)
        'lightbox_prediction_images_total{version="1"}',
    ):
        assert needle in text, needle
    page = client.get("/")
    assert page.status_code == 200 and "<title>lightbox</title>" in page.text
    # Every tag comes back (threshold=0) and the page marks the threshold; the score's name and range
    # and the model version come from the response's model object.
    assert "predict?threshold=0" in page.text and "class='cut'" in page.text
    assert "model.score_range" in page.text and "body.model.version" in page.text


def test_admin_reload_is_off_without_a_token(client: TestClient) -> None:
    assert_error(client.post("/admin/reload", headers={"authorization": "Bearer x"}), 404)


def test_admin_reload_needs_the_token(predictor: Predictor, tmp_path) -> None:
    app = create_app(make_settings(tmp_path, serve_admin_token="s3cret"), predictor)
    with TestClient(app) as c:
        assert_error(c.post("/admin/reload"), 401)
        assert_error(c.post("/admin/reload", headers={"authorization": "Bearer wrong"}), 401)
        # Right token, but this app was built without a loader: nothing to reload from.
        assert_error(c.post("/admin/reload", headers={"authorization": "Bearer s3cret"}), 409)


def test_overload_answers_429_with_retry_after(predictor: Predictor, tmp_path) -> None:
    settings = make_settings(tmp_path, serve_max_queue=2, serve_max_batch_size=2, serve_max_wait_ms=50.0)
    app = create_app(settings, predictor)
    data = photo(9, (320, 240))

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:
            return await asyncio.gather(*(c.post("/predict", content=data) for _ in range(24)))

    responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    assert 200 in statuses and 429 in statuses, statuses
    rejected = next(r for r in responses if r.status_code == 429)
    assert int(rejected.headers["retry-after"]) >= 1
    assert "overloaded" in assert_error(rejected, 429)


def _app_for(predictor: Predictor, config: ModelConfig, tmp_path) -> TestClient:
    """A server for another head layout on the same (already loaded) feature extractor."""
    torch.manual_seed(0)
    model = LightboxModel(config, Heads(config), predictor.model.extractor)
    other = Predictor.from_model(model, "lightbox", "7", device="cpu")
    return TestClient(create_app(make_settings(tmp_path), other), raise_server_exceptions=False)


def _v2_infer(c: TestClient, data: bytes, outputs: list[str] | None = None) -> httpx.Response:
    body: dict = {
        "inputs": [
            {"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(data).decode()]}
        ]
    }
    if outputs is not None:
        body["outputs"] = [{"name": o} for o in outputs]
    return c.post("/v2/models/lightbox/infer", json=body)


def test_a_1_to_10_model_answers_on_its_scale(predictor: Predictor, tmp_path) -> None:
    config = ModelConfig(tag_names=("cat", "sky"), score_low=1, score_high=10, score_name="aesthetic")
    data = photo(3)
    with _app_for(predictor, config, tmp_path) as c:
        body = c.post("/predict", content=data).json()
        assert body["model"]["score_range"] == [1.0, 10.0] and body["model"]["score_name"] == "aesthetic"
        assert 1.0 <= body["score"] <= 10.0
        # The same heads on [0, 1] (same seed): the served score is their affine map onto 1-10.
        unit_config = ModelConfig(tag_names=("cat", "sky"))
        torch.manual_seed(0)
        unit = LightboxModel(unit_config, Heads(unit_config), predictor.model.extractor)
        (u,), _ = Predictor(unit, "u", "1", "cpu", trace=False).predict(preprocess_bytes(data)[None])
        assert body["score"] == pytest.approx(1 + 9 * float(u), abs=1e-4)
        meta = c.get("/v2/models/lightbox").json()
        assert meta["parameters"] == {
            "tag_names": ["cat", "sky"],
            "score_range": [1.0, 10.0],
            "score_name": "aesthetic",
        }
        v2 = _v2_infer(c, data).json()
        (score,) = next(o for o in v2["outputs"] if o["name"] == "SCORE")["data"]
        assert score == pytest.approx(body["score"], abs=1e-5)


def test_a_tags_only_model_answers_no_score(predictor: Predictor, tmp_path) -> None:
    config = ModelConfig(tag_names=("cat", "sky"), has_score=False)
    data = photo(4)
    with _app_for(predictor, config, tmp_path) as c:
        resp = c.post("/predict?threshold=0", content=data)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["score"] is None and body["model"]["score_range"] is None
        assert {t["name"] for t in body["tags"]} == {"cat", "sky"}  # threshold 0: every tag
        meta = c.get("/v2/models/lightbox").json()
        assert [o["name"] for o in meta["outputs"]] == ["TAG_PROBS"]
        assert meta["parameters"]["score_range"] is None and meta["parameters"]["score_name"] is None
        v2 = _v2_infer(c, data)
        assert v2.status_code == 200, v2.text
        assert [o["name"] for o in v2.json()["outputs"]] == ["TAG_PROBS"]
        assert "outputs are ['TAG_PROBS']" in assert_error(_v2_infer(c, data, ["SCORE"]), 400)


def test_a_score_only_model_answers_no_tags(predictor: Predictor, tmp_path) -> None:
    with _app_for(predictor, ModelConfig(tag_names=()), tmp_path) as c:
        body = c.post("/predict?threshold=0", content=photo(5)).json()
        assert 0.0 <= body["score"] <= 1.0 and body["tags"] == []
        v2 = _v2_infer(c, photo(5)).json()
        probs = next(o for o in v2["outputs"] if o["name"] == "TAG_PROBS")
        assert probs["shape"] == [1, 0] and probs["data"] == []
