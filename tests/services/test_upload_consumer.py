"""The upload consumer against the real broker (RabbitMQ), the real results database (PostgreSQL) and an
S3 API (moto's server): normal flow, poison messages to the dead-letter queue, and restarts (a crash
between commit and ack, and a SIGKILL mid-stream) with exactly one row per (image, model name, version)
and no message lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow.pytorch
import numpy as np
import pytest
import torch
from conftest import S3_ENV, PgDatabase, S3Server, unique
from PIL import Image

import mlflow
from lightbox.adapters import mlflow_registry, postgres, queue
from lightbox.adapters.mlflow_registry import log_lightbox_model
from lightbox.dataset import TAG_VOCABULARY
from lightbox.imaging import preprocess_bytes
from lightbox.photos import content_id
from lightbox.settings import Settings, settings_env
from pipelines import score_uploads
from training.model import Heads, LightboxModel, ModelConfig
from training.predictor import Predictor, load_predictor

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow registry (SQLite: this test is about the queue) holding a champion, logged like training."""
    root = tmp_path_factory.mktemp("registry")
    settings = Settings(project_dir=root)
    previous = mlflow.get_tracking_uri()
    mlflow_registry.configure(settings)  # the URIs and experiment that training uses
    config = ModelConfig(tag_names=TAG_VOCABULARY)
    torch.manual_seed(0)
    model = LightboxModel(config, Heads(config)).eval()
    example = np.zeros((1, 3, 224, 224), np.uint8)
    with mlflow.start_run():
        # pickle: no graph tracing, faster, and the loader takes either format
        version = log_lightbox_model(
            model, example, settings.model_name, serialization_format="pickle", with_input_example=False
        )
    mlflow_registry.set_alias(settings, version, settings.champion_alias)
    # Loaders refuse a version whose artifacts the gates never recorded: record them as the gates do.
    mlflow_registry.set_version_tags(
        settings, version, mlflow_registry.version_digest(settings, version).tags()
    )
    mlflow.set_tracking_uri(previous)
    return root


@pytest.fixture(scope="module")
def champion(registry_dir: Path) -> Predictor:
    return load_predictor(Settings(project_dir=registry_dir))


@pytest.fixture
def settings(registry_dir: Path, pg_database: PgDatabase, amqp_url: str, queue_name: str) -> Settings:
    return Settings(
        project_dir=registry_dir,
        results_dsn=pg_database.dsn,
        queue_url=amqp_url,
        queue_name=queue_name,
        consume_batch_size=4,
        consume_max_wait_s=0.2,
    )


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(12):
        path = tmp_path / f"upload-{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
        out.append(path)
    return out


def _messages(paths: list[Path]) -> list[dict[str, str]]:
    return [{"image_id": p.stem, "uri": str(p)} for p in paths]  # as older producers sent them


def _id(path: Path) -> str:
    """The row's image id: the content hash of the bytes scored, whatever id the message carried."""
    return content_id(path.read_bytes())


def _rows(settings: Settings) -> list[dict]:
    conn = postgres.connect(settings.results_dsn or "")
    try:
        return postgres.fetch_results(conn, settings.results_table)
    finally:
        conn.close()


def test_scores_good_images_and_dead_letters_poison(
    settings: Settings, champion: Predictor, images: list[Path], s3_server: S3Server, bucket: str
) -> None:
    settings = settings.model_copy(update={"s3_endpoint_url": s3_server.endpoint_url})
    s3 = s3_server.client()
    s3.put_object(Bucket=bucket, Key="in/from-s3.png", Body=images[0].read_bytes())
    s3.put_object(Bucket=bucket, Key="in/garbage.jpg", Body=b"\xff\xd8 not really a jpeg")
    good = [*_messages(images[:9]), {"image_id": "from-s3", "uri": f"s3://{bucket}/in/from-s3.png"}]
    poison = [
        {"image_id": "gone", "uri": f"s3://{bucket}/in/gone.png"},
        {"image_id": "garbage", "uri": f"s3://{bucket}/in/garbage.jpg"},
        {"image_id": "missing-file", "uri": str(images[0].parent / "nope.png")},
        {"no_image_id": True},
    ]
    queue.publish(settings, [*good[:5], *poison[:2], *good[5:], *poison[2:]])

    stats = score_uploads.run(settings, predictor=champion, idle_timeout_s=1.5)

    assert (stats.messages, stats.scored, stats.dead) == (14, 10, 4)
    rows = _rows(settings)
    # from-s3.png holds the bytes of upload-00.png: one image, one row (the last message's)
    assert sorted(r["image_id"] for r in rows) == sorted(_id(p) for p in images[:9])
    assert {(r["model_name"], r["model_version"]) for r in rows} == {("lightbox", "1")}
    attempts = {r["image_id"]: r["attempts"] for r in rows}  # upload-00.png came twice, in two batches
    assert attempts.pop(_id(images[0])) == 2 and set(attempts.values()) == {1}
    # The stored numbers are the champion's answers for those images.
    want_scores, want_probs = champion.predict(np.stack([preprocess_bytes(images[3].read_bytes())]))
    row = next(r for r in rows if r["image_id"] == _id(images[3]))
    assert row["score"] == pytest.approx(float(want_scores[0]), abs=1e-5)
    assert row["tag_probs"] == pytest.approx(
        dict(zip(TAG_VOCABULARY, want_probs[0].tolist(), strict=True)), abs=1e-5
    )

    dead = queue.drain(settings, queue.dead_letter_queue(settings))
    reasons = {json.loads(d.body).get("image_id"): d.headers[queue.REASON_HEADER] for d in dead}
    assert set(reasons) == {"gone", "garbage", "missing-file", None}
    assert reasons["gone"] == f"image not found: no object at s3://{bucket}/in/gone.png"
    assert reasons["garbage"].startswith(f"undecodable image s3://{bucket}/in/garbage.jpg")
    assert reasons["missing-file"].startswith("image not found") and "nope.png" in reasons["missing-file"]
    assert reasons[None].startswith("uri must be")
    assert queue.depth(settings, settings.queue_name) == 0


def test_online_publishes_each_upload_to_feast_in_redis(
    settings: Settings, champion: Predictor, images: list[Path], redis_addr: str, tmp_path: Path
) -> None:
    """With score_online, a search service reads each upload's score, tags and embedding by (image id,
    model name, version) from the production online store as soon as the consumer committed it."""
    from lightbox.adapters import feast_store
    from lightbox.feature_schema import EMBEDDING_DIM

    settings = settings.model_copy(
        update={
            "score_online": True,
            "feast_project": unique(),
            "feast_online_store": "redis",
            "feast_redis": redis_addr,
            "feast_registry": str(tmp_path / "feast" / "registry.db"),
            "feast_offline_dir": str(tmp_path / "feast" / "offline"),
        }
    )
    queue.publish(settings, [*_messages(images[:5]), {"image_id": "gone", "uri": str(tmp_path / "no.png")}])
    try:
        stats = score_uploads.run(settings, predictor=champion, idle_timeout_s=1.5)
        assert (stats.scored, stats.dead, stats.online) == (5, 1, 5)
        committed = {r["image_id"]: r for r in _rows(settings)}
        keys = [(_id(p), champion.name, champion.version) for p in images[:5]]
        keys.append(("0" * 16, champion.name, champion.version))
        online = feast_store.online_scores(settings, keys)
        for i, path in enumerate(images[:5]):
            assert online["score"][i] == pytest.approx(committed[_id(path)]["score"], abs=1e-6)
            assert online["tag_probs"][i] == pytest.approx(committed[_id(path)]["tag_probs"], abs=1e-6)
        assert online["score"][5] is None  # dead-lettered: nothing published
        # The embedding is the champion's own extractor output for the uploaded pixels.
        pixels = np.stack([preprocess_bytes(images[2].read_bytes())])
        with torch.inference_mode():
            expected = champion.model.extractor(torch.from_numpy(pixels))[:, :EMBEDDING_DIM].numpy()
        np.testing.assert_allclose(np.array(online["embedding"][2:3], np.float32), expected, atol=1e-4)
    finally:
        feast_store.teardown(settings)


class _CrashAfterCommit(RuntimeError):
    pass


def test_a_crash_between_commit_and_ack_redelivers_without_duplicates(
    settings: Settings, champion: Predictor, images: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pika.adapters.blocking_connection import BlockingChannel

    queue.publish(settings, _messages(images[:8]))
    real_ack = BlockingChannel.basic_ack
    acks = {"n": 0}

    def ack_then_crash(self, delivery_tag=0, multiple=False):
        acks["n"] += 1
        if acks["n"] == 2:  # the second batch is committed, then the process "dies" before its ack
            raise _CrashAfterCommit
        return real_ack(self, delivery_tag, multiple)

    monkeypatch.setattr(BlockingChannel, "basic_ack", ack_then_crash)
    with pytest.raises(_CrashAfterCommit):
        score_uploads.run(settings, predictor=champion)
    monkeypatch.setattr(BlockingChannel, "basic_ack", real_ack)
    assert len(_rows(settings)) == 8  # both batches were committed

    stats = score_uploads.run(settings, predictor=champion, idle_timeout_s=1.5)
    assert stats.messages == 4  # the unacknowledged batch came back, and only it
    rows = _rows(settings)
    assert sorted(r["image_id"] for r in rows) == sorted(_id(p) for p in images[:8])
    assert sorted(r["attempts"] for r in rows) == [1] * 4 + [2] * 4  # upserted again, not duplicated
    assert queue.depth(settings, settings.queue_name) == 0


def _consumer(settings: Settings, log: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ) | settings_env(settings) | S3_ENV
    return subprocess.Popen(
        [sys.executable, "-m", "lightbox.cli", "consume", *args],
        env=env,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        cwd=settings.project_dir,
    )


@pytest.fixture
def many_images(tmp_path: Path) -> Iterator[list[Path]]:
    # 48 distinct photos: enough batches that a kill lands mid-stream.
    rng = np.random.default_rng(1)
    out = []
    for i in range(48):
        path = tmp_path / f"many-{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
        out.append(path)
    yield out


def test_killed_consumer_restarts_without_losing_or_duplicating(
    settings: Settings, many_images: list[Path], tmp_path: Path
) -> None:
    queue.publish(settings, _messages(many_images))
    conn = postgres.connect(settings.results_dsn or "")
    postgres.ensure_results_table(conn, settings.results_table)  # idempotent: we poll it from the start
    conn.close()
    log = tmp_path / "consumer.log"
    first = _consumer(settings, log)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(_rows(settings)) < 8:
            assert first.poll() is None, log.read_text()[-3000:]
            time.sleep(0.05)
    finally:
        first.kill()  # SIGKILL: no handler runs, whatever was in flight is unacknowledged
        first.wait(timeout=30)
    done_before = len(_rows(settings))
    assert 8 <= done_before < len(many_images), "kill mid-stream: some rows written, not all"

    second = _consumer(settings, log, "--idle-timeout", "2")
    assert second.wait(timeout=180) == 0, log.read_text()[-3000:]

    rows = _rows(settings)
    assert sorted(r["image_id"] for r in rows) == sorted(_id(p) for p in many_images)
    assert queue.depth(settings, settings.queue_name) == 0
    assert queue.depth(settings, queue.dead_letter_queue(settings)) == 0
