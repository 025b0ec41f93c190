"""Bad input on both protocols: a corpus of broken images and broken requests, then random bytes from
hypothesis. Every answer must be a JSON 4xx (2xx where random bytes happen to be an image), never a 5xx,
and the server must keep serving good requests afterwards.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import struct
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from PIL import Image

from lightbox.dataset import TAG_VOCABULARY
from lightbox.settings import Settings
from serving.app import create_app
from training.model import Heads, LightboxModel, ModelConfig
from training.predictor import Predictor

pytestmark = pytest.mark.integration

MAX_BODY = 1_000_000
INFER = "/v2/models/lightbox/infer"


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[TestClient]:
    torch.manual_seed(0)
    config = ModelConfig(tag_names=TAG_VOCABULARY)
    predictor = Predictor.from_model(LightboxModel(config, Heads(config)), "lightbox", "1", device="cpu")
    settings = Settings(
        project_dir=tmp_path_factory.mktemp("bad"),
        serve_reload_interval_s=0,
        serve_max_wait_ms=1,
        serve_max_body_bytes=MAX_BODY,
        max_pixels=5_000_000,
    )
    with TestClient(create_app(settings, predictor), raise_server_exceptions=False) as c:
        yield c


def _encode(fmt: str, size: tuple[int, int] = (64, 48)) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, idat: bool = True) -> bytes:
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    body = _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) if idat else b""
    return b"\x89PNG\r\n\x1a\n" + ihdr + body + _png_chunk(b"IEND", b"")


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header (SOF0) is patched to claim width x height."""
    data = bytearray(_encode("JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


JPEG = _encode("JPEG", (320, 240))
PNG = _encode("PNG")
GIF = _encode("GIF")
WEBP = _encode("WEBP")
BMP = _encode("BMP")
TIFF = _encode("TIFF")
_bad_crc_png = bytearray(PNG)
_bad_crc_png[29:33] = b"\0\0\0\0"  # IHDR's CRC

# (name, payload): bytes that must not decode to an image within the limits.
BAD_IMAGES: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("one zero byte", b"\x00"),
    ("plain text", b"hello, world"),
    ("json text", b'{"image": "cat.jpg"}'),
    ("html", b"<!doctype html><html><body>hi</body></html>"),
    ("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'),
    ("utf-16 text", "hello".encode("utf-16")),
    ("zeros 1k", b"\x00" * 1024),
    ("0xff 1k", b"\xff" * 1024),
    ("jpeg soi only", b"\xff\xd8"),
    ("jpeg soi app0", JPEG[:20]),
    ("jpeg 10%", JPEG[: len(JPEG) // 10]),
    ("jpeg 50%", JPEG[: len(JPEG) // 2]),
    ("jpeg 90%", JPEG[: len(JPEG) * 9 // 10]),
    ("jpeg headers only", JPEG[: JPEG.index(b"\xff\xda") + 2]),
    ("jpeg claims 60000x60000", _jpeg_claiming(60_000, 60_000)),
    ("jpeg claims 0x0", _jpeg_claiming(0, 0)),
    ("png signature only", b"\x89PNG\r\n\x1a\n"),
    ("png truncated", PNG[: len(PNG) // 2]),
    ("png bad ihdr crc", bytes(_bad_crc_png)),
    ("png bomb 30000x30000", _png(30_000, 30_000)),
    ("png bomb 100000x100", _png(100_000, 100)),
    ("png 0x0", _png(0, 0)),
    ("png without idat", _png(8, 8, idat=False)),
    ("png idat garbage", PNG[:33] + _png_chunk(b"IDAT", b"not zlib") + _png_chunk(b"IEND", b"")),
    ("gif header only", b"GIF89a"),
    ("gif truncated", GIF[: len(GIF) // 3]),
    ("bmp header only", b"BM"),
    ("bmp truncated", BMP[:60]),
    ("tiff header only", b"II*\x00"),
    ("tiff truncated", TIFF[: len(TIFF) // 4]),
    ("webp riff header only", b"RIFF\x00\x00\x00\x00WEBP"),
    ("webp truncated", WEBP[: len(WEBP) // 3]),
    ("zip", b"PK\x03\x04" + b"\x00" * 60),
    ("pdf", b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n"),
    ("gzip of a jpeg", gzip.compress(JPEG)),
    ("base64 text of a jpeg", base64.b64encode(JPEG)),
    ("ico header", b"\x00\x00\x01\x00\x01\x00" + b"\x00" * 10),
    ("elf binary", b"\x7fELF" + b"\x02\x01\x01" + b"\x00" * 57),
]


def assert_json_4xx(resp, name: str) -> None:
    assert 400 <= resp.status_code < 500, (name, resp.status_code, resp.text[:200])
    assert resp.headers["content-type"].startswith("application/json"), name
    assert isinstance(resp.json()["error"], str), name


def v2_binary_request(images: list[bytes]) -> tuple[bytes, dict[str, str]]:
    raw = b"".join(struct.pack("<I", len(b)) + b for b in images)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "IMAGE",
                    "datatype": "BYTES",
                    "shape": [len(images)],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def still_serving(client: TestClient) -> None:
    assert client.post("/predict", content=JPEG, headers={"content-type": "image/jpeg"}).status_code == 200
    body, headers = v2_binary_request([JPEG])
    assert client.post(INFER, content=body, headers=headers).status_code == 200


def test_good_inputs_pass(client: TestClient) -> None:
    """The corpus' source images themselves are fine: the failures below come from the damage."""
    for fmt, data in (
        ("jpeg", JPEG),
        ("png", PNG),
        ("gif", GIF),
        ("webp", WEBP),
        ("bmp", BMP),
        ("tiff", TIFF),
    ):
        assert client.post("/predict", content=data).status_code == 200, fmt
    still_serving(client)


@pytest.mark.parametrize(("name", "payload"), BAD_IMAGES, ids=[n for n, _ in BAD_IMAGES])
def test_bad_image_on_both_protocols(client: TestClient, name: str, payload: bytes) -> None:
    assert_json_4xx(client.post("/predict", content=payload, headers={"content-type": "image/jpeg"}), name)
    assert_json_4xx(client.post("/predict", files={"file": ("x.jpg", payload, "image/jpeg")}), name)
    body, headers = v2_binary_request([payload])
    assert_json_4xx(client.post(INFER, content=body, headers=headers), name)
    if payload:  # JSON mode carries the same bytes as base64
        doc = {
            "inputs": [
                {
                    "name": "IMAGE",
                    "datatype": "BYTES",
                    "shape": [1],
                    "data": [base64.b64encode(payload).decode()],
                }
            ]
        }
        assert_json_4xx(client.post(INFER, json=doc), name)


def _v2(
    header: object, binary: bytes = b"", header_length: str | None = "auto"
) -> tuple[bytes, dict[str, str]]:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    headers = {}
    if header_length == "auto" and binary:
        headers["Inference-Header-Content-Length"] = str(len(text))
    elif header_length not in (None, "auto"):
        headers["Inference-Header-Content-Length"] = header_length
    return text + binary, headers


def _inp(**kw: object) -> dict:
    return {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1]} | kw]}


_one = struct.pack("<I", len(JPEG)) + JPEG
# (name, body, headers): broken Open Inference Protocol requests around a valid image.
BAD_V2: list[tuple[str, bytes, dict[str, str]]] = [
    ("empty body", *_v2(b"")),
    ("not json", *_v2(b"{{{")),
    ("json array", *_v2([1, 2])),
    ("no inputs", *_v2({})),
    ("inputs not a list", *_v2({"inputs": {"name": "IMAGE"}})),
    ("input not an object", *_v2({"inputs": ["IMAGE"]})),
    (
        "unknown input",
        *_v2({"inputs": [{"name": "PIXELS", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}]}),
    ),
    ("wrong datatype", *_v2(_inp(datatype="FP32", data=[1.0]))),
    ("shape not a list", *_v2(_inp(shape="1", data=["AA=="]))),
    ("negative shape", *_v2(_inp(shape=[-1], data=["AA=="]))),
    ("3-d shape", *_v2(_inp(shape=[1, 1, 1], data=["AA=="]))),
    ("shape/data mismatch", *_v2(_inp(shape=[2], data=[base64.b64encode(JPEG).decode()]))),
    ("data not base64", *_v2(_inp(data=["***"]))),
    ("data not strings", *_v2(_inp(data=[12345]))),
    ("no data", *_v2(_inp())),
    ("input twice", *_v2({"inputs": _inp(data=["AA=="])["inputs"] * 2})),
    ("binary size too large", *_v2(_inp(parameters={"binary_data_size": len(_one) + 10}), _one)),
    ("binary size negative", *_v2(_inp(parameters={"binary_data_size": -4}), _one)),
    ("binary size a string", *_v2(_inp(parameters={"binary_data_size": "12"}), _one)),
    ("unclaimed binary bytes", *_v2(_inp(parameters={"binary_data_size": len(_one)}), _one + b"extra")),
    (
        "element length overflow",
        *_v2(_inp(parameters={"binary_data_size": 8}), struct.pack("<I", 999) + b"abcd"),
    ),
    ("element length cut", *_v2(_inp(parameters={"binary_data_size": 2}), b"\x01\x00")),
    ("element count mismatch", *_v2(_inp(shape=[3], parameters={"binary_data_size": len(_one)}), _one)),
    ("header length past body", *_v2(_inp(data=["AA=="]), header_length="99999")),
    ("header length not a number", *_v2(_inp(data=["AA=="]), header_length="ten")),
    # '\xb2' decodes (Latin-1) to '²', which str.isdigit() accepts and int() refuses.
    (
        "header length a unicode digit",
        _v2(_inp(data=["AA=="]))[0],
        {"Inference-Header-Content-Length": b"\xb2"},
    ),
    (
        "unknown output",
        *_v2(_inp(data=[base64.b64encode(JPEG).decode()]) | {"outputs": [{"name": "LOGITS"}]}),
    ),
    (
        "classification ext",
        *_v2(
            _inp(data=[base64.b64encode(JPEG).decode()])
            | {"outputs": [{"name": "TAG_PROBS", "parameters": {"classification": 3}}]}
        ),
    ),
    ("parameters not an object", *_v2(_inp(data=[base64.b64encode(JPEG).decode()]) | {"parameters": [1]})),
]


@pytest.mark.parametrize(("name", "body", "headers"), BAD_V2, ids=[n for n, *_ in BAD_V2])
def test_bad_v2_request(client: TestClient, name: str, body: bytes, headers: dict[str, str]) -> None:
    assert_json_4xx(client.post(INFER, content=body, headers=headers), name)


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/predict", {"content-type": "text/plain"}),
        ("/predict", {"content-type": "application/json"}),
        ("/predict", {"content-type": "application/xml"}),
        ("/predict", {"content-type": "multipart/form-data"}),  # no boundary
        ("/predict", {"content-type": "multipart/form-data; boundary=xyz"}),  # body is not multipart
        (INFER, {"content-type": "text/plain"}),
        (INFER, {"content-type": "image/jpeg"}),
        (INFER, {"content-encoding": "gzip"}),
    ],
)
def test_wrong_content_type_or_encoding(client: TestClient, path: str, headers: dict[str, str]) -> None:
    assert_json_4xx(client.post(path, content=JPEG, headers=headers), f"{path} {headers}")


def test_body_over_the_limit_on_both_protocols(client: TestClient) -> None:
    big = b"\xff\xd8" + b"\x00" * MAX_BODY
    resp = client.post("/predict", content=big, headers={"content-type": "image/jpeg"})
    assert resp.status_code == 413 and "limit" in resp.json()["error"]
    body, headers = v2_binary_request([big])
    assert client.post(INFER, content=body, headers=headers).status_code == 413
    still_serving(client)


def test_multipart_as_sdks_send_it(client: TestClient, tmp_path) -> None:  # noqa: ANN001
    """A photo part without a filename (``requests`` with ``(None, data)``, ``curl -F 'file=<x'``, or
    RFC 5987's ``filename*`` alone) is a text field to the parser: its photo is still scored, not
    refused by a 1 MB part limit that does not exist, and a text part gets one clear line; one file
    over the per-request limit is a 413 like the rest, and the body limit still closes the connection."""
    torch.manual_seed(0)
    config = ModelConfig(tag_names=TAG_VOCABULARY)
    predictor = Predictor.from_model(LightboxModel(config, Heads(config)), "lightbox", "1", device="cpu")
    settings = Settings(project_dir=tmp_path, serve_reload_interval_s=0, serve_max_wait_ms=1)
    big = _encode("PNG", (800, 600))  # about 1.4 MB: past the multipart parser's default 1 MB part cap
    assert len(big) > 1_048_576
    with TestClient(create_app(settings, predictor), raise_server_exceptions=False) as roomy:
        by_name = roomy.post("/predict", files={"file": ("big.png", big, "image/png")})
        assert by_name.status_code == 200
        for payload in (JPEG, big):
            resp = roomy.post("/predict", files={"file": (None, payload, "image/jpeg")})
            assert resp.status_code == 200, resp.text
        assert resp.json() == by_name.json()
        boundary = "b0undary"
        rfc5987 = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                "filename*=UTF-8''caf%C3%A9.jpg\r\nContent-Type: image/jpeg\r\n\r\n"
            ).encode()
            + JPEG
            + f"\r\n--{boundary}--\r\n".encode()
        )
        ctype = {"content-type": f"multipart/form-data; boundary={boundary}"}
        assert roomy.post("/predict", content=rfc5987, headers=ctype).status_code == 200
        for text in ("hello", "photo.jpg", "café"):
            resp = roomy.post("/predict", files={"file": (None, text.encode())})
            assert resp.status_code == 400, resp.text
            assert "must hold the image's bytes" in resp.json()["error"]
    tiny = _encode("JPEG", (16, 16))
    many = [("files", (f"{i}.jpg", tiny, "image/jpeg")) for i in range(65)]
    resp = client.post("/predict", files=many)
    assert resp.status_code == 413 and "more than 64 images" in resp.json()["error"], resp.text
    resp = client.post(
        "/predict", content=b"\xff\xd8" + b"\x00" * MAX_BODY, headers={"content-type": "image/jpeg"}
    )
    assert resp.status_code == 413 and resp.headers.get("connection") == "close"
    garbage = client.post("/predict", content=b"not an image at all", headers={"content-type": "image/jpeg"})
    assert garbage.status_code == 400 and "object at 0x" not in garbage.json()["error"]
    still_serving(client)


def test_a_cut_multipart_body_is_called_truncated(client: TestClient) -> None:
    """A multipart body cut mid-part, or missing its closing boundary, is said to be cut: not a form
    without its 'file' field (what the parser makes of it)."""
    boundary = "cutb0undary"
    whole = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + JPEG
    ctype = {"content-type": f"multipart/form-data; boundary={boundary}"}
    for cut in (whole[: len(whole) // 2], whole + b"\r\n", whole + f"\r\n--{boundary}\r\n".encode()):
        resp = client.post("/predict", content=cut, headers=ctype)
        assert resp.status_code == 400, resp.text
        assert "multipart body is truncated or malformed" in resp.json()["error"], resp.text
    closed = whole + f"\r\n--{boundary}--\r\n".encode()
    assert client.post("/predict", content=closed, headers=ctype).status_code == 200
    still_serving(client)


def _check_answer(resp) -> None:
    assert resp.status_code < 500, resp.text[:300]
    assert resp.headers["content-type"].startswith(("application/json", "application/octet-stream"))
    if resp.status_code >= 400:
        assert isinstance(resp.json()["error"], str)


@hsettings(
    max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=4096),
    prefix=st.sampled_from([b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a"]),
)
def test_random_bytes_never_break_either_protocol(client: TestClient, data: bytes, prefix: bytes) -> None:
    payload = prefix + data
    _check_answer(
        client.post("/predict", content=payload, headers={"content-type": "application/octet-stream"})
    )
    _check_answer(client.post(INFER, content=payload))  # random bytes as the inference header
    body, headers = v2_binary_request([payload])
    _check_answer(client.post(INFER, content=body, headers=headers))


def test_still_serving_after_everything(client: TestClient) -> None:
    still_serving(client)
