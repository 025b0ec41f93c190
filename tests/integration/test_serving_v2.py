"""Open Inference Protocol conformance with NVIDIA's own client (tritonclient.http) against the real
server: uvicorn on a loopback socket, the real model.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from lightbox.dataset import TAG_VOCABULARY
from lightbox.imaging import preprocess_bytes
from training.predictor import Predictor

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(server, connection_timeout=30, network_timeout=60)
    yield c
    c.close()


def photo(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)  # 640x480 blocks
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return [photo(s) for s in range(3)]


@pytest.fixture(scope="module")
def expected(predictor: Predictor, images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    return predictor.predict(np.stack([preprocess_bytes(b) for b in images]))


def image_input(images: list[bytes], binary: bool) -> triton.InferInput:
    inp = triton.InferInput("IMAGE", [len(images)], "BYTES")
    payload = images if binary else [base64.b64encode(b) for b in images]
    inp.set_data_from_numpy(np.array(payload, dtype=np.object_), binary_data=binary)
    return inp


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("lightbox")
    assert client.is_model_ready("lightbox", "3")
    assert not client.is_model_ready("other")
    server = client.get_server_metadata()
    assert "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata("lightbox")
    assert meta["versions"] == ["3"]
    assert meta["inputs"] == [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1]}]
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {
        "SCORE": [-1],
        "TAG_PROBS": [-1, len(TAG_VOCABULARY)],
    }
    assert meta["parameters"] == {
        "tag_names": list(TAG_VOCABULARY),
        "score_range": [0.0, 1.0],
        "score_name": "score",
    }


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_infer_matches_the_model(
    client: triton.InferenceServerClient, images: list[bytes], expected, binary_in: bool, binary_out: bool
) -> None:
    outputs = [
        triton.InferRequestedOutput("SCORE", binary_data=binary_out),
        triton.InferRequestedOutput("TAG_PROBS", binary_data=binary_out),
    ]
    result = client.infer("lightbox", [image_input(images, binary_in)], outputs=outputs, request_id="req-1")
    scores, probs = result.as_numpy("SCORE"), result.as_numpy("TAG_PROBS")
    assert scores.dtype == np.float32 and scores.shape == (3,)
    assert probs.dtype == np.float32 and probs.shape == (3, len(TAG_VOCABULARY))
    np.testing.assert_allclose(scores, expected[0], atol=1e-5)
    np.testing.assert_allclose(probs, expected[1], atol=1e-5)
    response = result.get_response()
    assert response["model_name"] == "lightbox" and response["model_version"] == "3"
    assert response["id"] == "req-1"


def test_infer_without_outputs_returns_all_as_binary(
    client: triton.InferenceServerClient, images, expected
) -> None:
    result = client.infer("lightbox", [image_input(images[:1], True)], model_version="3")
    outs = result.get_response()["outputs"]
    assert [o["name"] for o in outs] == ["SCORE", "TAG_PROBS"]
    assert all("binary_data_size" in o["parameters"] for o in outs)
    np.testing.assert_allclose(result.as_numpy("SCORE"), expected[0][:1], atol=1e-5)


def test_only_the_requested_output_comes_back(client: triton.InferenceServerClient, images) -> None:
    result = client.infer(
        "lightbox", [image_input(images[:2], True)], outputs=[triton.InferRequestedOutput("TAG_PROBS")]
    )
    assert result.as_numpy("SCORE") is None
    assert result.as_numpy("TAG_PROBS").shape == (2, len(TAG_VOCABULARY))


@pytest.mark.parametrize(
    ("model", "version", "payload", "needle"),
    [
        ("other", "", [b"x"], "unknown model"),
        ("lightbox", "99", [b"x"], "not loaded"),
        ("lightbox", "", [b"not an image"], "not a decodable image"),
        ("lightbox", "", [b""], "empty"),
    ],
)
def test_client_sees_protocol_errors(
    client: triton.InferenceServerClient, model: str, version: str, payload: list[bytes], needle: str
) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, [image_input(payload, True)], model_version=version)
    assert needle in info.value.message()
    assert info.value.status() in ("400", "404")


def test_json_errors_over_raw_http(server: str) -> None:
    with httpx.Client(base_url=f"http://{server}") as http:
        for resp, status in (
            (http.post("/v2/models/lightbox/infer", content=b"{"), 400),
            (http.post("/v2/models/lightbox/infer", json={"inputs": []}), 400),
            (
                http.post("/v2/models/lightbox/infer", content=b"x", headers={"content-type": "text/plain"}),
                415,
            ),
            (http.get("/v2/models/nope"), 404),
        ):
            assert resp.status_code == status, resp.text
            assert isinstance(resp.json()["error"], str)
