"""The upload consumer's batch logic, without a broker or a database: which messages are poison and
why, which errors are transient, and how scores become rows."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from lightbox.adapters.queue import Delivery
from lightbox.photos import content_id
from pipelines.score_uploads import Poison, fetch_image, parse, prepare, to_rows


def _png(color: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, format="PNG")
    return buf.getvalue()


def _delivery(tag: int, body: object) -> Delivery:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Delivery(tag=tag, body=raw, redelivered=False, headers={})


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe not json", "not JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'{"image_id": "a"}', "uri must be"),
        (b'{"image_id": "a", "uri": 3}', "uri must be"),
    ],
)
def test_malformed_messages_are_poison_with_the_reason(body: bytes, reason: str) -> None:
    with pytest.raises(Poison, match=reason):
        parse(body)


def test_a_message_needs_only_its_uri_and_its_image_id_is_not_the_rows() -> None:
    assert parse(b'{"uri": "s3://b/k.jpg"}').uri == "s3://b/k.jpg"
    assert parse(json.dumps({"image_id": "x" * 300, "uri": "s3://b/k.jpg"}).encode()).uri == "s3://b/k.jpg"


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
    assert [p.image_id for p in plan.ready] == [content_id(store["s3://b/ok.png"])]
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


def test_a_file_that_cannot_be_read_is_poison_not_storage_trouble(tmp_path) -> None:
    (tmp_path / "a.jpg").symlink_to(tmp_path / "b.jpg")
    (tmp_path / "b.jpg").symlink_to(tmp_path / "a.jpg")

    def fetch(uri: str) -> bytes:
        if uri == "denied":
            raise PermissionError(13, "Permission denied", uri)
        with open(uri, "rb") as f:
            return f.read()

    batch = [_delivery(1, {"uri": str(tmp_path / "a.jpg")}), _delivery(2, {"uri": "denied"})]
    plan = prepare(batch, fetch, max_pixels=10_000)
    reasons = [r for _, r in plan.poison]
    assert reasons[0].startswith("image unreadable: [Errno 40]") and "symbolic links" in reasons[0]
    assert reasons[1].startswith("image unreadable: [Errno 13] Permission denied")


def test_an_image_over_the_pixel_limit_is_poison() -> None:
    plan = prepare([_delivery(1, {"image_id": "a", "uri": "x"})], lambda _: _png(), max_pixels=100)
    assert plan.poison[0][1].startswith("undecodable image x: image has 40x30=1200 pixels")


def test_to_rows_keys_each_image_by_its_content_and_keeps_every_tag_probability() -> None:
    red, blue = _png((200, 10, 10)), _png((10, 10, 200))
    store = {"/a/img_000.jpg": red, "/b/img_000.jpg": blue, "/c/copy.jpg": red}
    batch = [  # what `lightbox enqueue` sent: the file name as image_id
        _delivery(1, {"image_id": "img_000", "uri": "/a/img_000.jpg"}),
        _delivery(2, {"image_id": "img_000", "uri": "/b/img_000.jpg"}),  # another photo, the same name
        _delivery(3, {"uri": "/c/copy.jpg"}),  # the first photo again, another name: last one wins
    ]
    plan = prepare(batch, store.__getitem__, max_pixels=10_000)
    scores = np.array([0.1, 0.2, 0.3], np.float32)
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]], np.float32)
    rows = to_rows(plan.ready, scores, probs, ("blurry", "animal"), "lightbox", "7")
    # The ids bulk scoring and the importer give the same bytes (lightbox.photos.content_id).
    assert [(r.image_id, r.source_uri) for r in rows] == [
        (content_id(red), "/c/copy.jpg"),
        (content_id(blue), "/b/img_000.jpg"),
    ]
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


def test_enqueue_sends_absolute_paths_and_refuses_a_missing_file(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from lightbox.adapters import queue
    from lightbox.cli import app

    sent: list[dict[str, str]] = []
    monkeypatch.setattr(queue, "publish", lambda settings, messages: sent.extend(messages) or len(sent))
    (tmp_path / "x.jpg").write_bytes(_png())
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    env = {"LIGHTBOX_PROJECT_DIR": str(tmp_path)}
    ok = CliRunner().invoke(
        app, ["enqueue", "../x.jpg", (tmp_path / "x.jpg").as_uri(), "s3://b/k.jpg"], env=env
    )
    assert ok.exit_code == 0, ok.output
    assert sent == [
        {"uri": str(tmp_path / "x.jpg")},
        {"uri": str(tmp_path / "x.jpg")},
        {"uri": "s3://b/k.jpg"},
    ]

    sent.clear()
    for arg in ("../gone.jpg", "http://example.com/a.jpg"):
        refused = CliRunner().invoke(app, ["enqueue", "../x.jpg", arg], env=env)
        assert refused.exit_code == 2 and sent == []  # nothing published when one is wrong
        assert refused.output.startswith(f"enqueue: {arg}") and len(refused.output.splitlines()) == 1
