"""The upload consumer's batch logic, without a broker or a database: which messages are poison and
why, which errors are transient, and how scores become rows."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from lightbox.adapters.queue import Delivery
from pipelines.score_uploads import Poison, fetch_image, parse, prepare, to_rows


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def _delivery(tag: int, body: object) -> Delivery:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Delivery(tag=tag, body=raw, redelivered=False, headers={})


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe not json", "not JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'{"uri": "s3://b/k"}', "image_id must be"),
        (b'{"image_id": "", "uri": "s3://b/k"}', "image_id must be"),
        (json.dumps({"image_id": "x" * 257, "uri": "s3://b/k"}).encode(), "image_id must be"),
        (b'{"image_id": "a", "uri": 3}', "uri must be"),
    ],
)
def test_malformed_messages_are_poison_with_the_reason(body: bytes, reason: str) -> None:
    with pytest.raises(Poison, match=reason):
        parse(body)


def test_prepare_separates_good_images_from_poison() -> None:
    store = {"s3://b/ok.png": _png(), "s3://b/garbage.jpg": b"not an image"}

    def fetch(uri: str) -> bytes:
        if uri not in store:
            raise FileNotFoundError(uri)
        return store[uri]

    batch = [
        _delivery(1, {"image_id": "ok", "uri": "s3://b/ok.png"}),
        _delivery(2, b"{broken"),
        _delivery(3, {"image_id": "gone", "uri": "s3://b/gone.png"}),
        _delivery(4, {"image_id": "garbage", "uri": "s3://b/garbage.jpg"}),
    ]
    plan = prepare(batch, fetch, max_pixels=10_000)
    assert [p.upload.image_id for p in plan.ready] == ["ok"]
    assert plan.ready[0].pixels.shape == (3, 224, 224) and plan.ready[0].pixels.dtype == np.uint8
    reasons = {d.tag: r for d, r in plan.poison}
    assert set(reasons) == {2, 3, 4}
    assert reasons[2].startswith("not JSON")
    assert reasons[3].startswith("image not found")
    assert reasons[4].startswith("undecodable image s3://b/garbage.jpg")


def test_a_transient_fetch_error_is_not_poison_it_propagates() -> None:
    def fetch(uri: str) -> bytes:
        raise ConnectionError("S3 endpoint down")

    with pytest.raises(ConnectionError):
        prepare([_delivery(1, {"image_id": "a", "uri": "s3://b/a.png"})], fetch, max_pixels=10_000)


def test_an_image_over_the_pixel_limit_is_poison() -> None:
    plan = prepare([_delivery(1, {"image_id": "a", "uri": "x"})], lambda _: _png(), max_pixels=100)
    assert plan.poison[0][1].startswith("undecodable image x: image has 40x30=1200 pixels")


def test_to_rows_keeps_one_row_per_image_and_every_tag_probability() -> None:
    batch = [
        _delivery(1, {"image_id": "a", "uri": "s3://b/1.png"}),
        _delivery(2, {"image_id": "b", "uri": "s3://b/2.png"}),
        _delivery(3, {"image_id": "a", "uri": "s3://b/3.png"}),  # the same image again: last one wins
    ]
    plan = prepare(batch, lambda _: _png(), max_pixels=10_000)
    scores = np.array([0.1, 0.2, 0.3], np.float32)
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]], np.float32)
    rows = to_rows(plan.ready, scores, probs, ("blurry", "animal"), "lightbox", "7")
    assert [(r.image_id, r.source_uri) for r in rows] == [("a", "s3://b/3.png"), ("b", "s3://b/2.png")]
    assert rows[0].score == pytest.approx(0.3) and rows[0].tag_probs == {"blurry": 0.2, "animal": 0.8}
    assert {r.model_version for r in rows} == {"7"}
    with pytest.raises(ValueError, match="2 scores for 3 images"):
        to_rows(plan.ready, scores[:2], probs[:2], ("blurry", "animal"), "lightbox", "7")


def test_fetch_image_reads_paths_and_refuses_other_schemes(tmp_path) -> None:
    from lightbox.settings import Settings

    settings = Settings(project_dir=tmp_path)
    (tmp_path / "a b.png").write_bytes(b"png")
    assert fetch_image(settings, str(tmp_path / "a b.png")) == b"png"
    assert fetch_image(settings, (tmp_path / "a b.png").as_uri()) == b"png"
    with pytest.raises(FileNotFoundError):
        fetch_image(settings, str(tmp_path / "missing.png"))
    with pytest.raises(Poison, match="unsupported uri"):
        fetch_image(settings, "http://example.com/a.png")
