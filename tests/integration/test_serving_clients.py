"""What real clients send besides a plain photo: compressed bodies (Triton's and KServe's clients), base64
images in JSON and data URLs (browsers), the threshold as a form field, HEAD and OPTIONS (load
balancers, uptime monitors), CORS preflights (a web page on another origin), and clients that give up
while their images wait."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import json
import socket
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
from fastapi.testclient import TestClient
from PIL import Image

from lightbox.settings import Settings
from serving.app import create_app
from serving.cors import cors_headers
from serving.runtime import InferenceRuntime
from training.predictor import Predictor

pytestmark = pytest.mark.integration

INFER = "/v2/models/lightbox/infer"


@pytest.fixture(scope="module")
def client(predictor: Predictor, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    settings = Settings(
        project_dir=tmp_path_factory.mktemp("clients"),
        serve_reload_interval_s=0,
        serve_max_wait_ms=1,
        serve_max_body_bytes=2_000_000,
        max_pixels=4_000_000,
        serve_cors_origins="https://app.example.com, http://localhost:3000/",
    )
    with TestClient(create_app(settings, predictor), raise_server_exceptions=False) as c:
        yield c


def _scores(resp) -> list[float]:  # noqa: ANN001
    assert resp.status_code == 200, resp.text
    body = resp.json()
    if "predictions" in body:
        return [p["score"] for p in body["predictions"]]
    if "outputs" in body:
        return next(o["data"] for o in body["outputs"] if o["name"] == "SCORE")
    return [body["score"]]


def _v2_json(*texts: str) -> dict:
    return {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [len(texts)], "data": list(texts)}]}


def test_compressed_bodies_are_inflated_within_the_limit(client: TestClient, image: bytes) -> None:
    plain = _scores(client.post("/predict", content=image))
    assert (
        _scores(client.post("/predict", content=gzip.compress(image), headers={"content-encoding": "gzip"}))
        == plain
    )
    deflated = zlib.compress(image)
    assert (
        _scores(client.post("/predict", content=deflated, headers={"content-encoding": "deflate"})) == plain
    )
    # Triton's Python client compresses the whole V2 body and names its header's length uncompressed.
    doc = json.dumps(_v2_json(base64.b64encode(image).decode())).encode()
    resp = client.post(
        INFER,
        content=gzip.compress(doc),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert _scores(resp) == pytest.approx(plain, abs=1e-6)
    # A gzip bomb: 10 kB that would inflate to 50 MB is refused at the limit, not inflated.
    bomb = gzip.compress(b"\0" * 50_000_000)
    assert len(bomb) < 100_000
    resp = client.post("/predict", content=bomb, headers={"content-encoding": "gzip"})
    assert resp.status_code == 413 and "inflates past the limit" in resp.json()["error"]
    resp = client.post("/predict", content=image, headers={"content-encoding": "gzip"})
    assert resp.status_code == 400 and "not valid gzip" in resp.json()["error"]
    resp = client.post("/predict", content=gzip.compress(image)[:-20], headers={"content-encoding": "gzip"})
    assert resp.status_code == 400 and "cut short" in resp.json()["error"]
    for coding in ("br", "zstd"):
        resp = client.post(INFER, content=image, headers={"content-encoding": coding})
        assert resp.status_code == 415 and "gzip or deflate" in resp.json()["error"], coding
    # What costs the inflating CPU without a limit: many tiny members, layer upon layer of codings.
    resp = client.post("/predict", content=gzip.compress(b"") * 100_000, headers={"content-encoding": "gzip"})
    assert resp.status_code == 400 and "more than 64 members" in resp.json()["error"]
    layers = {"content-encoding": ", ".join(["gzip"] * 3)}
    resp = client.post("/predict", content=gzip.compress(gzip.compress(gzip.compress(image))), headers=layers)
    assert resp.status_code == 415 and "3 content codings" in resp.json()["error"]
    twice = gzip.compress(zlib.compress(image))
    headers = {"content-encoding": "deflate, gzip"}
    assert _scores(client.post("/predict", content=twice, headers=headers)) == plain
    padded = gzip.compress(image) + b"\0" * 512  # tape-block padding, as gzip -d accepts it
    assert _scores(client.post("/predict", content=padded, headers={"content-encoding": "gzip"})) == plain


def test_base64_images_in_json_and_data_urls(client: TestClient, image: bytes) -> None:
    plain = _scores(client.post("/predict", content=image))
    text = base64.b64encode(image).decode()
    data_url = "data:image/jpeg;base64," + text
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))  # the base64 command's lines
    for sent in (text, data_url, wrapped, base64.urlsafe_b64encode(image).decode().rstrip("=")):
        assert _scores(client.post("/predict", json={"image": sent})) == plain
    assert _scores(client.post("/predict", json={"images": [text, data_url]})) == plain * 2
    assert _scores(client.post(INFER, json=_v2_json(data_url))) == pytest.approx(plain, abs=1e-6)
    for doc, status, words in (
        ({"image": "data:image/jpeg,%FF%D8"}, 400, "must carry the image as base64"),
        ({"image": "***"}, 400, "not valid base64"),
        ({"url": "http://x/y.jpg"}, 400, 'send one "image"'),
        ({"image": text, "images": [text]}, 400, 'send one "image"'),
        ({"images": []}, 400, "non-empty list"),
        ({"images": ["AA=="] * 65}, 413, "more than 64 images"),
        ({"image": 12}, 400, "must be the image as base64 text"),
        ({"image": text, "threshold": 2}, 422, "threshold must be a number from 0 to 1"),
        ([text], 400, "must be an object"),
    ):
        resp = client.post("/predict", json=doc)
        assert resp.status_code == status and words in resp.json()["error"], (
            doc if len(str(doc)) < 80 else "",
            resp.text,
        )
    resp = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]
    for empty in ("", "data:image/png;base64,"):
        resp = client.post("/predict", json={"image": empty})
        assert resp.status_code == 400 and "holds no image bytes" in resp.json()["error"], empty
    # JSON the parser itself cannot take (nesting past its recursion, a number past Python's digit
    # limit) is the client's mistake: a 400 on both protocols, never a 500.
    deep = b'{"image": "' + text.encode() + b'", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    huge = b'{"image": "' + text.encode() + b'", "threshold": ' + b"9" * 5000 + b"}"
    v2_deep = b'{"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": ' + b"[" * 900
    v2_deep += b'"' + text.encode() + b'"' + b"]" * 900 + b"}]}"
    for path, body in (("/predict", deep), ("/predict", huge), (INFER, deep), (INFER, huge)):
        resp = client.post(path, content=body, headers={"content-type": "application/json"})
        assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"], (path, resp.text[:200])
    # Nested as deep as the parser allows: flattened without recursion.
    resp = client.post(INFER, content=v2_deep, headers={"content-type": "application/json"})
    assert _scores(resp) == pytest.approx(plain, abs=1e-6)


def test_threshold_from_a_form_field_or_json_key(client: TestClient, image: bytes) -> None:
    """A form posts its fields beside the file, a JSON client puts everything in the body: both set the
    tag threshold as ``?threshold=`` does (which wins when both are given)."""
    every = client.post("/predict?threshold=0", content=image).json()["tags"]
    none = client.post("/predict?threshold=1", content=image).json()["tags"]
    assert len(every) > len(none)
    text = base64.b64encode(image).decode()
    assert (
        client.post("/predict", files={"file": ("a.jpg", image)}, data={"threshold": "0"}).json()["tags"]
        == every
    )
    assert client.post("/predict", json={"image": text, "threshold": 0}).json()["tags"] == every
    query_wins = client.post("/predict?threshold=1", json={"image": text, "threshold": 0}).json()["tags"]
    assert query_wins == none
    for bad in ("high", "1.5", "nan"):
        resp = client.post("/predict", files={"file": ("a.jpg", image)}, data={"threshold": bad})
        assert resp.status_code == 422 and "threshold must be a number" in resp.json()["error"], bad
    as_file = client.post("/predict", files={"file": ("a.jpg", image), "threshold": ("t.txt", b"0.3")})
    assert as_file.status_code == 422 and as_file.json()["error"].endswith("got a UploadFile")


def test_an_image_over_the_pixel_limit_is_too_large(client: TestClient) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((1000, 4100, 3), np.uint8)).save(buf, "PNG")  # 4.1 MP, a few kB of PNG
    resp = client.post("/predict", content=buf.getvalue())
    assert resp.status_code == 413 and "over the limit of 4000000" in resp.json()["error"]
    broken = client.post("/predict", content=b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    assert broken.status_code == 400


def test_head_and_options_on_every_route(client: TestClient) -> None:
    for path in ("/healthz", "/metrics", "/", "/v2/health/ready", "/v2/models/lightbox"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == 200 and head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
    options = client.options("/predict")
    assert options.status_code == 204 and options.headers["allow"] == "OPTIONS, POST"
    assert client.options("/healthz").headers["allow"] == "GET, HEAD, OPTIONS"
    assert client.options("/nowhere").status_code == 404
    assert client.head("/nowhere").status_code == 404


def test_cors_for_the_configured_origins_only(client: TestClient, image: bytes) -> None:
    preflight = {"origin": "https://app.example.com", "access-control-request-method": "POST"}
    resp = client.options("/predict", headers=preflight | {"access-control-request-headers": "content-type"})
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "POST" in resp.headers["access-control-allow-methods"]
    # The answer carries the header, an error too: the page reads the 400's message, not a CORS failure.
    for sent, status in ((image, 200), (b"not an image", 400)):
        resp = client.post("/predict", content=sent, headers={"origin": "http://localhost:3000"})
        assert (
            resp.status_code == status
            and resp.headers["access-control-allow-origin"] == "http://localhost:3000"
        )
    stranger = client.post("/predict", content=image, headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in stranger.headers
    refused = client.options("/predict", headers=preflight | {"origin": "https://evil.example"})
    assert refused.status_code == 400 and "LIGHTBOX_SERVE_CORS_ORIGINS" in refused.json()["error"]
    assert refused.headers["content-type"] == "application/json"
    # A 500 is answered outside every middleware: it carries the headers itself.
    assert cors_headers(["http://localhost:3000"], "http://localhost:3000")["Access-Control-Allow-Origin"]
    assert cors_headers(["*"], "https://any.example")["Access-Control-Allow-Origin"] == "*"
    assert cors_headers(["http://localhost:3000"], "https://evil.example") == {}
    assert cors_headers([], "http://localhost:3000") == {}


def test_load_balancer_checks_over_a_real_socket(server: str) -> None:
    """HAProxy's ``OPTIONS *`` and ``OPTIONS / HTTP/1.0``, a monitor's HEAD: answered, and counted under
    their own method and route."""
    host, port = server.split(":")
    for request, allow in (
        (b"OPTIONS * HTTP/1.1\r\nHost: www\r\n\r\n", b"allow: GET, HEAD, OPTIONS, POST"),
        (b"OPTIONS / HTTP/1.0\r\n\r\n", b"allow: GET, HEAD, OPTIONS"),
    ):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(request)
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 204") and allow in answer, answer
    head = requests.head(f"http://{server}/healthz", timeout=10)
    assert head.status_code == 200 and head.content == b""
    assert (
        head.headers["content-length"]
        == requests.get(f"http://{server}/healthz", timeout=10).headers["content-length"]
    )
    metrics = requests.get(f"http://{server}/metrics", timeout=10).text
    for series in (
        'lightbox_http_requests_total{method="OPTIONS",route="*",status="204"}',
        'lightbox_http_requests_total{method="HEAD",route="/healthz",status="200"}',
    ):
        assert series in metrics, series


def test_no_cors_unless_configured(predictor: Predictor, tmp_path, image: bytes) -> None:  # noqa: ANN001
    settings = Settings(project_dir=tmp_path, serve_reload_interval_s=0, serve_max_wait_ms=1)
    with TestClient(create_app(settings, predictor)) as plain:
        resp = plain.post("/predict", content=image, headers={"origin": "https://app.example.com"})
        assert resp.status_code == 200 and "access-control-allow-origin" not in resp.headers


def _gated(p: Predictor, gate: threading.Event, entered: threading.Event, sizes: list[int]) -> Predictor:
    """A copy of ``p`` whose first batch waits for ``gate``; ``sizes`` gets every batch's size."""
    twin = Predictor(p.model, p.name, p.version, "cpu", trace=False)
    inner = twin.predict

    def predict(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sizes.append(len(batch))
        entered.set()
        assert gate.wait(30)
        return inner(batch)

    twin.predict = predict  # type: ignore[method-assign]
    return twin


def _one_batch_at_a_time(project: Path) -> Settings:
    """One batch at a time, a roomy budget: what queues behind a held batch stays queued."""
    return Settings(
        project_dir=project,
        serve_reload_interval_s=0,
        serve_max_wait_ms=1,
        serve_max_batch_size=8,
        serve_max_concurrent_batches=1,
        serve_max_latency_ms=60_000,
    )


def _raw_post(address: str, body: bytes) -> socket.socket:
    host, port = address.split(":")
    sock = socket.create_connection((host, int(port)))
    head = f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n"
    sock.sendall(head.encode() + body)
    return sock


def test_a_client_that_leaves_takes_its_images_out_of_the_queue(
    predictor: Predictor,
    serve,
    image: bytes,
    tmp_path,  # noqa: ANN001
) -> None:
    """Requests queued behind a busy batch whose clients give up are not computed, and count as 499s;
    the ones still waited for are answered."""
    gate, entered = threading.Event(), threading.Event()
    sizes: list[int] = []
    app = create_app(_one_batch_at_a_time(tmp_path), _gated(predictor, gate, entered, sizes))
    with serve(app) as address:
        first: list[requests.Response] = []
        waiter = threading.Thread(
            target=lambda: first.append(requests.post(f"http://{address}/predict", data=image, timeout=60))
        )
        waiter.start()
        assert entered.wait(30)  # the first batch computes, and holds the only batch slot
        leavers = [_raw_post(address, image) for _ in range(3)]
        deadline = time.monotonic() + 10
        while app.state.runtime.batcher.queue_depth < 3:  # the three wait in the queue
            assert time.monotonic() < deadline, app.state.runtime.batcher.queue_depth
            time.sleep(0.02)
        for sock in leavers:
            sock.close()
        while app.state.runtime.batcher.queue_depth > 0:  # ... and leave it as their clients go
            assert time.monotonic() < deadline, app.state.runtime.batcher.queue_depth
            time.sleep(0.02)
        gate.set()
        waiter.join(60)
        assert first[0].status_code == 200
        assert requests.post(f"http://{address}/predict", data=image, timeout=60).status_code == 200
        metrics = requests.get(f"http://{address}/metrics", timeout=10).text
    assert sizes == [1, 1]  # the first request and the last: none of the three that left
    assert 'lightbox_http_requests_total{method="POST",route="/predict",status="499"} 3.0' in metrics


def test_a_request_cancelled_while_its_photos_decode_ends_with_the_running_decode(
    predictor: Predictor,
    image: bytes,
    tmp_path,  # noqa: ANN001
) -> None:
    """A client gone mid-decode: the decodes not started are dropped, and the request ends (releasing
    its admission) only once the running one has, so admission never counts cores that are busy as free."""
    settings = Settings(project_dir=tmp_path, serve_reload_interval_s=0, serve_decode_workers=1)
    runtime = InferenceRuntime(settings, predictor)
    gate, started, calls = threading.Event(), threading.Event(), []
    real = runtime._decode_timed

    def gated(blob: bytes, max_pixels: int) -> np.ndarray:
        calls.append(1)
        started.set()
        assert gate.wait(10)
        return real(blob, max_pixels)

    runtime._decode_timed = gated  # type: ignore[method-assign]

    async def main() -> None:
        task = asyncio.create_task(runtime.decode([image, image, image], runtime.admission.admit(1)))
        assert await asyncio.to_thread(started.wait, 10)
        task.cancel()
        await asyncio.sleep(0.2)
        assert not task.done()  # the running decode holds it
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        await runtime.aclose()

    asyncio.run(main())
    assert len(calls) == 1  # the two not started never ran


def test_a_request_timeout_fails_it_rather_than_answer_late(
    predictor: Predictor,
    serve,  # noqa: ANN001
    image: bytes,
    tmp_path,  # noqa: ANN001
) -> None:
    """Clients that say when they give up (``?timeout_ms=``, Triton's ``parameters.timeout`` in
    microseconds, a proxy's ``x-envoy-expected-rq-timeout-ms``) and wait past it behind a busy batch get
    a 503 at their deadline, and their images are never computed; a malformed timeout is a 422."""
    gate, entered = threading.Event(), threading.Event()
    sizes: list[int] = []
    app = create_app(_one_batch_at_a_time(tmp_path), _gated(predictor, gate, entered, sizes))
    with serve(app) as address:
        url = f"http://{address}"
        for params, headers in (({"timeout_ms": "soon"}, {}), ({}, {"x-envoy-expected-rq-timeout-ms": "-5"})):
            resp = requests.post(f"{url}/predict", params=params, headers=headers, data=image, timeout=30)
            assert resp.status_code == 422 and "must be a positive number" in resp.json()["error"], resp.text
        answers: dict[str, requests.Response] = {}

        def post(name: str, path: str, **kw: object) -> None:
            answers[name] = requests.post(f"{url}{path}", timeout=60, **kw)  # type: ignore[arg-type]

        first = threading.Thread(target=post, args=("first", "/predict"), kwargs={"data": image})
        first.start()
        assert entered.wait(30)  # the first batch computes, and holds the only batch slot
        v2 = _v2_json(base64.b64encode(image).decode()) | {"parameters": {"timeout": 300_000}}
        hasty = [
            threading.Thread(
                target=post, args=("query", "/predict"), kwargs={"data": image, "params": {"timeout_ms": 300}}
            ),
            threading.Thread(
                target=post,
                args=("proxy", "/predict"),
                kwargs={"data": image, "headers": {"x-envoy-expected-rq-timeout-ms": "300"}},
            ),
            threading.Thread(target=post, args=("triton", INFER), kwargs={"json": v2}),
        ]
        for t in hasty:
            t.start()
        time.sleep(0.8)  # past their deadlines, still queued
        gate.set()
        for t in [first, *hasty]:
            t.join(60)
        assert answers["first"].status_code == 200
        for name in ("query", "proxy", "triton"):
            resp = answers[name]
            assert resp.status_code == 503 and "request's timeout" in resp.json()["error"], (name, resp.text)
            assert resp.headers["retry-after"] == "1"
    assert sizes == [1]  # none of the three was computed
