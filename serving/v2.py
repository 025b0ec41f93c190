"""Open Inference Protocol (KServe V2 / Triton) REST front end over the same runtime as ``/predict``.

One input, ``IMAGE`` (BYTES, shape [N]): encoded images. Two outputs, ``SCORE`` (FP32 [N], on the
model's scale: ``parameters.score_range``, named ``parameters.score_name``) and ``TAG_PROBS``
(FP32 [N, K]); the K tag names are in the model metadata (``parameters.tag_names``). A tags-only model
has no ``SCORE`` output (its metadata lists none, and asking for it is a 400).
Tensors travel as JSON or with the binary-data extension: a JSON header of
``Inference-Header-Content-Length`` bytes followed by raw tensor bytes (BYTES elements each prefixed
by a little-endian uint32 length). JSON cannot carry raw bytes, so in JSON an IMAGE element is the
base64 text of the encoded image (a data URL too). A gzip or deflate request body is inflated.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from serving.admission_http import ticket_of
from serving.body_codecs import BodyError, image_from_base64
from serving.disconnect import unless_client_leaves
from serving.minions import worker_down
from serving.multi import ModelSet
from serving.runtime import ApiError, InferenceRuntime, Prediction
from serving.uploads import media_type, parse_json, read_body, request_timeout
from training.predictor import Predictor

HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT_NAME = "IMAGE"
OUTPUTS = ("SCORE", "TAG_PROBS")
SERVER_VERSION = "0.1.0"
V2_CONTENT_TYPES = ("", "application/json", "application/octet-stream")


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """(JSON inference header, trailing binary data) of a request body."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        # isascii: str.isdigit() accepts Unicode digits like '²' that int() then refuses (a 500).
        if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(body):
            raise ApiError(
                400, f"{HEADER_LENGTH} {header_length!r} is not a length within the {len(body)}-byte body"
            )
        n = int(header_length)
        json_part, binary = body[:n], body[n:]
    if not json_part:
        raise ApiError(400, "empty inference request: expected a JSON inference header")
    header = parse_json(json_part, "inference header")
    if not isinstance(header, dict):
        raise ApiError(400, "inference header must be a JSON object")
    return header, binary


def deserialize_bytes(raw: bytes, count: int) -> list[bytes]:
    """Binary BYTES tensor -> ``count`` elements (each a little-endian uint32 length, then the bytes)."""
    out: list[bytes] = []
    pos = 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise ApiError(400, "BYTES tensor data ends inside an element's 4-byte length")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise ApiError(400, f"BYTES element {len(out)} claims {n} bytes; only {len(raw) - pos} remain")
        out.append(raw[pos : pos + n])
        pos += n
    if len(out) != count:
        raise ApiError(400, f"BYTES tensor holds {len(out)} elements, its shape says {count}")
    return out


def _flatten(data: Any) -> list[Any]:
    """The leaves of nested lists, in order; by a stack, not recursion: a client's nesting is no limit."""
    out: list[Any] = []
    stack = [iter([data])]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            out.append(item)
    return out


_END = object()


def _element_count(shape: Any) -> int:
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ApiError(
            400, f"input {INPUT_NAME} shape must be a list of non-negative integers, got {shape!r}"
        )
    # [N] as specified; [N, 1] too, as Triton clients often send BYTES with a trailing unit dimension.
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise ApiError(400, f"input {INPUT_NAME} must have shape [N] (or [N, 1]), got {shape}")
    return shape[0]


def parse_request(body: bytes, header_length: str | None) -> tuple[dict[str, Any], list[bytes]]:
    """(JSON inference header, its encoded images) of a request body."""
    header, binary = split_body(body, header_length)
    return header, images_from_request(header, binary)


def images_from_request(header: dict[str, Any], binary: bytes) -> list[bytes]:
    """The encoded images in an inference request (JSON or binary-data extension)."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ApiError(400, "inference request needs a non-empty 'inputs' list")
    images: list[bytes] | None = None
    offset = 0
    for spec in inputs:
        if not isinstance(spec, dict):
            raise ApiError(400, "each input must be a JSON object")
        name = spec.get("name")
        if name != INPUT_NAME:
            raise ApiError(400, f"unknown input {name!r}: this model takes one input, {INPUT_NAME!r}")
        if images is not None:
            raise ApiError(400, f"input {INPUT_NAME!r} given twice")
        if spec.get("datatype") != "BYTES":
            raise ApiError(400, f"input {INPUT_NAME} must have datatype BYTES, got {spec.get('datatype')!r}")
        count = _element_count(spec.get("shape"))
        params = spec.get("parameters") or {}
        if not isinstance(params, dict):
            raise ApiError(400, "input parameters must be a JSON object")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise ApiError(
                    400, f"binary_data_size {size!r} does not fit the {len(binary)} binary bytes sent"
                )
            images = deserialize_bytes(binary[offset : offset + size], count)
            offset += size
        elif "data" in spec:
            images = _decode_json_bytes(_flatten(spec["data"]), count)
        else:
            raise ApiError(400, f"input {INPUT_NAME} has neither 'data' nor parameters.binary_data_size")
    if offset != len(binary):
        raise ApiError(400, f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    assert images is not None
    return images


def _decode_json_bytes(elements: list[Any], count: int) -> list[bytes]:
    if len(elements) != count:
        raise ApiError(400, f"input {INPUT_NAME} has {len(elements)} elements, its shape says {count}")
    out = []
    for i, e in enumerate(elements):
        if not isinstance(e, str):
            raise ApiError(400, f"{INPUT_NAME}[{i}] must be a base64 string in JSON, got {type(e).__name__}")
        try:
            out.append(image_from_base64(e))
        except BodyError as exc:
            raise ApiError(
                exc.status, f"{INPUT_NAME}[{i}]: {exc} (or send raw bytes with binary data)"
            ) from None
    return out


def model_outputs(predictor: Predictor) -> tuple[str, ...]:
    """The outputs this model has: no SCORE for a tags-only model (it would be NaN, which JSON lacks)."""
    return OUTPUTS if predictor.has_score else tuple(o for o in OUTPUTS if o != "SCORE")


def requested_outputs(header: dict[str, Any], available: tuple[str, ...] = OUTPUTS) -> list[tuple[str, bool]]:
    """[(output name, as binary?)] in the order the client asked for (all ``available``, if it named
    none)."""
    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise ApiError(400, "request parameters must be a JSON object")
    default_binary = bool(params.get("binary_data_output", False))
    asked = header.get("outputs")
    if asked is None:
        return [(name, default_binary) for name in available]
    if not isinstance(asked, list):
        raise ApiError(400, "'outputs' must be a list")
    out = []
    for spec in asked:
        name = spec.get("name") if isinstance(spec, dict) else None
        if name not in available:
            raise ApiError(400, f"unknown output {name!r}: this model's outputs are {list(available)}")
        p = spec.get("parameters") or {}
        if not isinstance(p, dict):
            raise ApiError(400, "output parameters must be a JSON object")
        if p.get("classification"):
            raise ApiError(400, "the classification extension is not supported; ask for TAG_PROBS")
        out.append((name, bool(p.get("binary_data", default_binary))))
    return out


def infer_response(
    preds: list[Prediction], header: dict[str, Any], outputs: list[tuple[str, bool]], name: str | None = None
) -> Response:
    """``name``: the name the model is served under (default: the predictor's own)."""
    predictor = preds[0].predictor
    available = model_outputs(predictor)
    missing = [name for name, _ in outputs if name not in available]
    if missing:
        # The model was swapped for one without these outputs while the request waited for its batch.
        raise ApiError(
            409, f"model version {predictor.version} has no output {missing[0]}; outputs: {list(available)}"
        )
    tensors = {
        "SCORE": lambda: np.asarray([p.score for p in preds], dtype=np.float32),
        "TAG_PROBS": lambda: np.stack([p.tag_probs for p in preds]).astype(np.float32, copy=False),
    }
    body: dict[str, Any] = {
        "model_name": name or predictor.name,
        "model_version": predictor.version,
        "outputs": [],
    }
    if isinstance(header.get("id"), str):
        body["id"] = header["id"]
    chunks: list[bytes] = []
    for name, binary in outputs:
        arr = tensors[name]()
        out: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(arr.shape)}
        if binary:
            raw = arr.astype("<f4", copy=False).tobytes()
            out["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            out["data"] = [round(float(x), 7) for x in arr.reshape(-1)]
        body["outputs"].append(out)
    text = json.dumps(body, separators=(",", ":")).encode()
    if not chunks:
        return Response(text, media_type="application/json")
    return Response(
        text + b"".join(chunks),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(text))},
    )


def v2_router(models: ModelSet, registry_status: Callable[[], dict[str, Any]] | None = None) -> APIRouter:
    """Each served model under its own name. ``registry_status``: the alias and reload state the
    readiness answer adds (serving.app's)."""
    router = APIRouter(prefix="/v2", tags=["open-inference-protocol"])

    def runtime_of(name: str, version: str | None) -> InferenceRuntime:
        runtime = models.get(name).runtime
        current = runtime.predictor
        if version is not None and version != current.version:
            raise ApiError(
                404, f"model {name!r} version {version!r} is not loaded (serving {current.version!r})"
            )
        return runtime

    def metadata(name: str, version: str | None) -> dict[str, Any]:
        p = runtime_of(name, version).predictor
        shapes = {"SCORE": [-1], "TAG_PROBS": [-1, p.num_tags]}
        rng = p.score_range
        return {
            "name": name,
            "versions": [p.version],
            "platform": "pytorch",
            "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": o, "datatype": "FP32", "shape": shapes[o]} for o in model_outputs(p)],
            "parameters": {
                "tag_names": list(p.tag_names),
                "score_range": list(rng) if rng is not None else None,
                "score_name": p.score_name,
            },
        }

    @router.get("")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "lightbox", "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]}

    @router.get("/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @router.get("/health/ready", response_model=None)
    async def ready() -> dict[str, Any] | JSONResponse:
        # Ready while a model answers: a predictor is loaded before the app exists, and only an isolated
        # model's worker can be down (restarting; "down" says which and why). The protocol reads the
        # status code and "ready"; the rest says which version serves, where the alias points and why
        # they differ.
        down = {m.name: why for m in models if (why := worker_down(m.runtime.predictor)) is not None}
        body = {"ready": len(down) < len(models)} | (registry_status() if registry_status is not None else {})
        if down:
            body["down"] = down
        return body if body["ready"] else JSONResponse(body, status_code=503)

    @router.get("/models/{name}")
    async def model_metadata(name: str) -> dict[str, Any]:
        return metadata(name, None)

    @router.get("/models/{name}/versions/{version}")
    async def model_version_metadata(name: str, version: str) -> dict[str, Any]:
        return metadata(name, version)

    def model_readiness(name: str, version: str | None) -> dict[str, Any] | JSONResponse:
        """Ready, or 503 with the reason while the model's isolated worker is down."""
        why = worker_down(runtime_of(name, version).predictor)
        if why is None:
            return {"name": name, "ready": True}
        return JSONResponse({"name": name, "ready": False, "reason": why}, status_code=503)

    @router.get("/models/{name}/ready", response_model=None)
    async def model_ready(name: str) -> dict[str, Any] | JSONResponse:
        return model_readiness(name, None)

    @router.get("/models/{name}/versions/{version}/ready", response_model=None)
    async def model_version_ready(name: str, version: str) -> dict[str, Any] | JSONResponse:
        return model_readiness(name, version)

    async def infer(request: Request, name: str, version: str | None) -> Response:
        runtime = runtime_of(name, version)
        ctype = media_type(request)
        if ctype not in V2_CONTENT_TYPES:
            raise ApiError(415, f"unsupported content type {ctype!r}: send application/json (or binary data)")
        body = await read_body(
            request, runtime.settings.serve_max_body_bytes, runtime.settings.serve_body_timeout_s
        )
        # In a thread: parsing megabytes of JSON and base64 must not stall the other requests.
        header, blobs = await asyncio.to_thread(parse_request, body, request.headers.get(HEADER_LENGTH))
        # Checked against the model now; a hot swap before the batch runs is caught in infer_response.
        outputs = requested_outputs(header, model_outputs(runtime.predictor))
        # Triton's schedule-policy "timeout" (microseconds), as tritonclient's infer(timeout=...) sends it.
        params = header.get("parameters") or {}
        timeout = request_timeout(request, ("parameters.timeout", params.get("timeout"), 1e-6))
        if timeout is not None:
            ticket_of(request.scope).set_timeout(timeout)

        async def answer() -> Response:
            ticket = ticket_of(request.scope)
            images = await runtime.decode(blobs, ticket)
            preds = await runtime.infer(images, "v2", ticket, version)
            return infer_response(preds, header, outputs, name)

        return await unless_client_leaves(request, answer())

    @router.post("/models/{name}/infer")
    async def model_infer(request: Request, name: str) -> Response:
        return await infer(request, name, None)

    @router.post("/models/{name}/versions/{version}/infer")
    async def model_version_infer(request: Request, name: str, version: str) -> Response:
        return await infer(request, name, version)

    return router
